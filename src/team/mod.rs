//! The step team: a few threads that run the time loop of one segment together.
//!
//! A recurrence cannot be split across time, and one step is short (a 128-unit LSTM over 16
//! rows is about 1M multiply-adds, some microseconds), so handing each step's work to a
//! thread pool costs as much as it saves. The team instead splits the *state*: each
//! member owns a tile (a range of batch rows × a range of hidden units, see [`plan`]) for
//! the whole segment and computes the recurrent product and the cell update of that tile
//! at every step. Where the recurrent weights are small, tiles are whole rows
//! ([`row_groups`]): a member's next step then reads only the state it wrote, and the
//! members never meet. Otherwise a tile is a range of hidden units, each member reads only
//! its own columns of the recurrent weights (which stay in its core's cache from step to
//! step), and the members meet at a spinning [`Barrier`] once per step, because the next
//! step reads the whole state.
//!
//! Members are threads of the rayon pool (already running, one per core); a member that
//! the pool cannot start in time has its tiles taken over by the leader (see [`run`]), so
//! the spinning barrier never waits for a task that has not started. The tiling never
//! changes what is computed for an element, so results are bitwise the same for any team
//! size.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::recurrent::UNIT_ALIGN;

/// The part of a step one member computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTile {
    /// Batch rows.
    pub rows: Range<usize>,
    /// Hidden units (in every gate block).
    pub units: Range<usize>,
}

/// Tiles for the step team of a step over `batch` rows and `hidden` units with `gates`
/// gate rows (`G·H`), when `threads` are allowed: whole rows when [`row_groups`] gives
/// some, else as many members as the threading policy gives for the step's
/// `batch · hidden · gates` multiply-adds (`parallel::team_members`), split by [`split`].
pub fn plan(threads: usize, batch: usize, hidden: usize, gates: usize) -> Vec<StateTile> {
    let members = crate::parallel::team_members(threads, batch * hidden * gates);
    tiles_for(members, batch, hidden, gates)
}

/// [`plan`] for a team of at most `members` members (the threading policy's answer kept
/// apart, so the tiling itself is a pure function of the shape).
fn tiles_for(members: usize, batch: usize, hidden: usize, gates: usize) -> Vec<StateTile> {
    if let Some(groups) = groups_of_rows(members, batch, hidden, gates) {
        return groups
            .into_iter()
            .map(|rows| StateTile {
                rows,
                units: 0..hidden,
            })
            .collect();
    }
    split(members, batch, hidden)
}

/// Recurrent weights (elements) up to which a step is split into whole rows: every member
/// then reads all of the weights each step, which pays while they stay near its core.
/// Measured on 2 threads against the unit split (its barrier per step included), LSTM
/// float32: H = 128 and 256 (`2^16`, `2^18`) 0.58–0.98 of its time, H = 1024 (`2^22`)
/// 1.09–1.10.
const ROWS_MAX_WEIGHTS: usize = 1 << 18;

/// Groups of whole rows for a step over `batch` rows, `hidden` units and `gates` gate
/// rows when `threads` are allowed: one per member the threading policy gives the step
/// (`parallel::team_members`), each of at least [`ROW_BLOCK`] rows, as even as the rows
/// allow; `None` below two groups and for recurrent weights above [`ROWS_MAX_WEIGHTS`].
/// A member that owns all the units of its rows reads only the state it wrote itself, so
/// the members run their steps without meeting (see [`Member::end_step`]); inference
/// runs such groups as passes of their own (`sequence::rows`).
pub(crate) fn row_groups(
    threads: usize,
    batch: usize,
    hidden: usize,
    gates: usize,
) -> Option<Vec<Range<usize>>> {
    let members = crate::parallel::team_members(threads, batch * hidden * gates);
    groups_of_rows(members, batch, hidden, gates)
}

/// [`row_groups`] for a team of at most `members` members.
fn groups_of_rows(
    members: usize,
    batch: usize,
    hidden: usize,
    gates: usize,
) -> Option<Vec<Range<usize>>> {
    let n = members.min(batch / ROW_BLOCK);
    if n < 2 || hidden * gates > ROWS_MAX_WEIGHTS {
        return None;
    }
    let per = batch.div_ceil(n);
    Some(
        (0..batch)
            .step_by(per)
            .map(|r0| r0..(r0 + per).min(batch))
            .collect(),
    )
}

/// Tiles for at most `members` members over `batch` rows and `hidden` units (one tile
/// below two): units in blocks of [`UNIT_ALIGN`] first (each member then reads a disjoint
/// part of the weights), rows (in blocks of 8 where the batch allows) when there are
/// fewer unit blocks than members; the split with the smallest largest tile wins, among
/// equals the one with fewer members, then the one with more rows per member.
fn split(members: usize, batch: usize, hidden: usize) -> Vec<StateTile> {
    let whole = vec![StateTile {
        rows: 0..batch,
        units: 0..hidden,
    }];
    let threads = members;
    if threads < 2 {
        return whole;
    }
    let blocks = hidden.div_ceil(UNIT_ALIGN);
    // (largest tile in rows × unit blocks, members, unit blocks per member, rows per member)
    let mut best: Option<(usize, usize, usize, usize)> = None;
    for pu in 1..=threads.min(blocks) {
        let per_u = blocks.div_ceil(pu);
        let pu = blocks.div_ceil(per_u);
        for pr in 1..=(threads / pu).min(batch) {
            let mut per_r = batch.div_ceil(pr);
            if batch >= 8 * pr {
                per_r = per_r.div_ceil(8) * 8;
            }
            let pr = batch.div_ceil(per_r);
            let cand = (per_u * per_r, pu * pr, per_u, per_r);
            let key = |c: (usize, usize, usize, usize)| (c.0, c.1, usize::MAX - c.3);
            if best.is_none_or(|b| key(cand) < key(b)) {
                best = Some(cand);
            }
        }
    }
    let Some((_, members, per_u, per_r)) = best else {
        return whole;
    };
    if members < 2 {
        return whole;
    }
    let mut tiles = Vec::with_capacity(members);
    for r0 in (0..batch).step_by(per_r) {
        for b0 in (0..blocks).step_by(per_u) {
            tiles.push(StateTile {
                rows: r0..(r0 + per_r).min(batch),
                units: b0 * UNIT_ALIGN..((b0 + per_u) * UNIT_ALIGN).min(hidden),
            });
        }
    }
    tiles
}

/// Rows per member below which a step is not split into whole rows (see [`row_groups`]).
const ROW_BLOCK: usize = 8;

/// How long a member spins at the barrier before it sleeps. Steps that the team is worth
/// running take a few microseconds to tens of them, so members that are all running meet
/// within this; a member that takes longer has most likely lost its core, and the waiter
/// then frees its own core (which lets the scheduler move the late member there).
const SPIN_LIMIT: Duration = Duration::from_micros(50);

/// A barrier generation is decided after at least this many, so that one slow step (a
/// page fault, an interrupt) does not shrink the team.
const MIN_GENERATIONS: usize = 4;

/// A reusable barrier for the members of one team: spins briefly, then sleeps, and
/// shrinks the team to its leader when the members lose more time waiting for each other
/// than the split saves (a member keeps losing its core to another process).
pub struct Barrier {
    members: AtomicUsize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Set when a member panicked, so the others stop waiting for it.
    poisoned: AtomicBool,
    /// Set when the team shrank to its leader for the rest of the run.
    retired: AtomicBool,
    /// The team's clock, and in nanoseconds of it: the earliest arrival of the current
    /// generation (`u64::MAX` before the first), the release of the previous one, and the
    /// sums of the work before the first arrival and of the waits after it.
    clock: Instant,
    first_arrival: AtomicU64,
    released: AtomicU64,
    work_ns: AtomicU64,
    wait_ns: AtomicU64,
    /// `(work + wait) / work` above which one member alone would be about as fast.
    worth: f64,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

impl Barrier {
    fn new(members: usize, worth: f64) -> Self {
        Barrier {
            members: AtomicUsize::new(members),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            clock: Instant::now(),
            first_arrival: AtomicU64::new(u64::MAX),
            released: AtomicU64::new(0),
            work_ns: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            worth,
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Waits until every member has called `wait` as often as this one. Everything a
    /// member wrote before its call is visible to every member after theirs.
    ///
    /// # Panics
    /// When another member panicked (instead of waiting forever).
    fn wait(&self) {
        let members = self.members.load(Ordering::Acquire);
        if members < 2 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        self.first_arrival
            .fetch_min(self.now_ns(), Ordering::Relaxed);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == members {
            self.release(generation);
            return;
        }
        let spin_start = Instant::now();
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("a member of the step team panicked");
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || spin_start.elapsed() < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            while self.generation.load(Ordering::SeqCst) == generation
                && !self.poisoned.load(Ordering::Relaxed)
            {
                // The timeout only guards against a lost wake-up; `release` notifies.
                guard = self
                    .wake
                    .wait_timeout(guard, Duration::from_millis(1))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            drop(guard);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The last arrival of a generation: accounts its work and wait, shrinks the team if
    /// it does not pay, and lets the members go.
    fn release(&self, generation: usize) {
        let now = self.now_ns();
        let first = self
            .first_arrival
            .swap(u64::MAX, Ordering::Relaxed)
            .min(now);
        let work = first.saturating_sub(self.released.load(Ordering::Relaxed));
        let work = self.work_ns.fetch_add(work, Ordering::Relaxed) + work;
        let wait = self.wait_ns.fetch_add(now - first, Ordering::Relaxed) + (now - first);
        if generation + 1 >= MIN_GENERATIONS && (work + wait) as f64 > self.worth * work as f64 {
            self.retired.store(true, Ordering::Release);
            self.members.store(1, Ordering::Release);
            crate::parallel::note_contention();
        }
        self.released.store(now, Ordering::Relaxed);
        self.arrived.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }
}

/// One member's view of the team: its tiles, and the barrier.
pub struct Member<'a> {
    own: &'a [StateTile],
    all: &'a [StateTile],
    leader: bool,
    /// Every tile covers the same units (see [`end_step`](Self::end_step)).
    rows_only: bool,
    barrier: &'a Barrier,
}

impl Member<'_> {
    /// The tiles this member computes now: its own, or every tile once the team shrank to
    /// its leader.
    pub fn tiles(&self) -> &[StateTile] {
        if self.leader && self.barrier.retired.load(Ordering::Acquire) {
            self.all
        } else {
            self.own
        }
    }

    /// Waits for the other members (see [`Barrier`]); `false` when the team shrank and this
    /// member is no longer part of it: it must return without touching the buffers again.
    pub fn sync(&self) -> bool {
        self.barrier.wait();
        self.leader || !self.barrier.retired.load(Ordering::Acquire)
    }

    /// The end of one step of a recurrence, whose rows never read each other: waits for
    /// the other members like [`sync`](Self::sync) when the team splits units, and returns
    /// at once when every member owns whole rows (all tiles cover the same units), since
    /// a member's next step then reads only the state it wrote itself.
    pub fn end_step(&self) -> bool {
        if self.rows_only {
            return true;
        }
        self.sync()
    }
}

/// Marks the barrier poisoned if its member unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::SeqCst);
            let _guard = self.0.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.0.wake.notify_all();
        }
    }
}

/// How long the leader waits for pool threads to join before it takes their tiles itself
/// (they are busy elsewhere: another caller's work, or the other direction's team).
const JOIN_TIMEOUT: Duration = Duration::from_micros(500);

/// Runs `member` once per member, each on its own thread of the rayon pool, and returns
/// when all have returned. The calling thread leads: it asks the pool for one thread per
/// further tile, and takes itself the tiles of those that have not started within
/// [`JOIN_TIMEOUT`] (a late one then returns at once), so the team never waits for a
/// thread the pool cannot give; and it takes every tile when the team shrinks (see
/// [`Barrier`]). A single tile runs on the calling thread with a barrier that does not
/// wait.
pub fn run<F>(tiles: &[StateTile], member: F)
where
    F: Fn(&Member<'_>) + Sync,
{
    let n = tiles.len();
    let area = |t: &StateTile| (t.rows.len() * t.units.len()).max(1) as f64;
    let smallest = tiles.iter().map(area).fold(f64::INFINITY, f64::min);
    let total: f64 = tiles.iter().map(area).sum();
    // One member alone would take about `total / smallest` times the first arrival's
    // work; the team is kept while it takes less than 90% of that.
    let barrier = Barrier::new(1, 0.9 * total / smallest);
    let rows_only = tiles.iter().all(|t| t.units == tiles[0].units);
    if n < 2 {
        member(&Member {
            own: tiles,
            all: tiles,
            leader: true,
            rows_only,
            barrier: &barrier,
        });
        return;
    }
    let claimed = AtomicUsize::new(0);
    let ready = AtomicBool::new(false);
    let (barrier, member, claimed, ready) = (&barrier, &member, &claimed, &ready);
    rayon::scope(|s| {
        for _ in 1..n {
            s.spawn(move |_| {
                let i = claimed.fetch_add(1, Ordering::AcqRel) + 1;
                if i >= n {
                    return;
                }
                while !ready.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let _guard = PoisonOnPanic(barrier);
                member(&Member {
                    own: std::slice::from_ref(&tiles[i]),
                    all: tiles,
                    leader: false,
                    rows_only,
                    barrier,
                });
            });
        }
        let start = Instant::now();
        while claimed.load(Ordering::Acquire) < n - 1 && start.elapsed() < JOIN_TIMEOUT {
            std::hint::spin_loop();
        }
        // Close the team: a thread that starts from now on finds no tile.
        let joined = claimed.swap(usize::MAX / 2, Ordering::AcqRel).min(n - 1);
        barrier.members.store(joined + 1, Ordering::Release);
        ready.store(true, Ordering::Release);
        let mine: Vec<StateTile> = std::iter::once(tiles[0].clone())
            .chain(tiles[joined + 1..].iter().cloned())
            .collect();
        let _guard = PoisonOnPanic(barrier);
        member(&Member {
            own: &mine,
            all: tiles,
            leader: true,
            rows_only,
            barrier,
        });
    });
    if !barrier.retired.load(Ordering::Acquire) && barrier.members.load(Ordering::Relaxed) > 1 {
        crate::parallel::note_team_paid();
    }
}

/// A buffer shared by the members of a team, each of which reads and writes only the
/// elements its tile owns (or reads elements nobody writes in the same phase).
#[derive(Clone, Copy)]
pub struct Shared<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: members access disjoint elements between barriers (the contract of the
// accessors below), and the barrier orders the phases.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Shares `s` for the duration of its borrow (the team is scoped inside it).
    pub fn new(s: &mut [T]) -> Self {
        Shared {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// Shares the strided elements of a view: `len` elements from `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay valid and not otherwise accessed while the team runs.
    pub unsafe fn from_raw(ptr: *mut T, len: usize) -> Self {
        Shared { ptr, len }
    }

    /// The elements `r`, to write.
    ///
    /// # Safety
    /// The buffer is alive for `'a`, and no other member accesses these elements until
    /// the next barrier.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part<'a>(&self, r: Range<usize>) -> &'a mut [T] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "team buffer: {r:?} of {}",
            self.len
        );
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }

    /// The elements `r`, to read.
    ///
    /// # Safety
    /// The buffer is alive for `'a`, and no member writes these elements until the next
    /// barrier.
    pub unsafe fn read<'a>(&self, r: Range<usize>) -> &'a [T] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "team buffer: {r:?} of {}",
            self.len
        );
        // SAFETY: in bounds (asserted); no concurrent writer by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(r.start), r.len()) }
    }

    /// The start of the buffer, for the recurrent product's tiles.
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }

    /// Whether the buffer is empty (the cell has no such buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests;
