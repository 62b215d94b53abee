//! The step team: a few threads that run the time loop of one segment together.
//!
//! A recurrence cannot be split across time, and one step is short (a 128-unit LSTM over 16
//! rows is about 1M multiply-adds, some microseconds), so handing each step's work to a
//! thread pool costs as much as it saves. The team instead splits the *state*: each
//! member owns a tile (a range of batch rows × a range of hidden units, see [`plan`]) for
//! the whole segment, computes the recurrent product and the cell update of that tile at
//! every step, and meets the others at a spinning [`Barrier`] once per step, because the
//! next step reads the whole state. A member reads only its own columns of the recurrent
//! weights, which stay in its core's cache from step to step.
//!
//! Members are threads of the rayon pool (already running, one per core); a member that
//! the pool cannot start in time has its tiles taken over by the leader (see [`run`]), so
//! the spinning barrier never waits for a task that has not started. The tiling never
//! changes what is computed for an element, so results are bitwise the same for any team
//! size.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::recurrent::UNIT_ALIGN;

/// The part of a step one member computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTile {
    /// Batch rows.
    pub rows: Range<usize>,
    /// Hidden units (in every gate block).
    pub units: Range<usize>,
}

/// Tiles for the step team of a step of `work` multiply-adds over `batch` rows and
/// `hidden` units, when `threads` are allowed: as many members as the threading policy
/// gives (`parallel::team_members`), split by [`split`].
pub fn plan(threads: usize, batch: usize, hidden: usize, work: usize) -> Vec<StateTile> {
    split(crate::parallel::team_members(threads, work), batch, hidden)
}

/// Tiles for at most `members` members over `batch` rows and `hidden` units (one tile
/// below two). Units are split in blocks of [`UNIT_ALIGN`] first (each member then reads
/// a disjoint part of the weights), rows (in blocks of 8 where the batch allows) when
/// there are fewer unit blocks than members; the split with the smallest largest tile
/// wins, among equals the one with fewer members, then the one with more rows per member.
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

/// A reusable spinning barrier for the members of one team.
pub struct Barrier {
    members: AtomicUsize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Set when a member panicked, so the others stop waiting for it.
    poisoned: AtomicBool,
}

impl Barrier {
    fn new(members: usize) -> Self {
        Barrier {
            members: AtomicUsize::new(members),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Waits until every member has called `wait` as often as this one. Everything a
    /// member wrote before its call is visible to every member after theirs.
    ///
    /// # Panics
    /// When another member panicked (instead of waiting forever).
    pub fn wait(&self) {
        let members = self.members.load(Ordering::Relaxed);
        if members < 2 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == members {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("a member of the step team panicked");
            }
            spins = spins.saturating_add(1);
            if spins < 1 << 10 {
                std::hint::spin_loop();
            } else {
                // Oversubscribed machine: let the members that are behind run.
                std::thread::yield_now();
            }
        }
    }
}

/// Marks the barrier poisoned if its member unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// How long the leader waits for pool threads to join before it takes their tiles itself
/// (they are busy elsewhere: another caller's work, or the other direction's team).
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_micros(500);

/// Runs `member(tiles, barrier)` once per member, each on its own thread of the rayon
/// pool, with the tiles that member owns, and returns when all have returned. The calling
/// thread leads: it asks the pool for one thread per further tile, and takes itself the
/// tiles of those that have not started within [`JOIN_TIMEOUT`] (a late one then returns
/// at once), so the team never waits for a thread the pool cannot give. A single tile
/// runs on the calling thread with a barrier that does not wait.
pub fn run<F>(tiles: &[StateTile], member: F)
where
    F: Fn(&[StateTile], &Barrier) + Sync,
{
    let n = tiles.len();
    let barrier = Barrier::new(1);
    if n < 2 {
        member(tiles, &barrier);
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
                member(std::slice::from_ref(&tiles[i]), barrier);
            });
        }
        let start = std::time::Instant::now();
        while claimed.load(Ordering::Acquire) < n - 1 && start.elapsed() < JOIN_TIMEOUT {
            std::hint::spin_loop();
        }
        // Close the team: a thread that starts from now on finds no tile.
        let joined = claimed.swap(usize::MAX / 2, Ordering::AcqRel).min(n - 1);
        barrier.members.store(joined + 1, Ordering::Relaxed);
        ready.store(true, Ordering::Release);
        let mine: Vec<StateTile> = std::iter::once(tiles[0].clone())
            .chain(tiles[joined + 1..].iter().cloned())
            .collect();
        let _guard = PoisonOnPanic(barrier);
        member(&mine, barrier);
    });
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
mod tests {
    use super::*;

    #[test]
    fn small_steps_get_one_tile() {
        assert_eq!(plan(8, 1, 64, 4 * 64 * 64).len(), 1);
        assert_eq!(split(1, 64, 1024).len(), 1);
        let tiles = split(8, 16, 128);
        assert!(tiles.len() >= 2 && tiles.len() <= 8, "{tiles:?}");
    }

    #[test]
    fn tiles_cover_the_state_once() {
        for (threads, batch, hidden) in [
            (2, 16, 128),
            (16, 32, 256),
            (16, 64, 1024),
            (3, 40, 96),
            (4, 5, 40),
        ] {
            let tiles = split(threads, batch, hidden);
            assert!(tiles.len() <= threads && tiles.len() >= 2, "{tiles:?}");
            let mut seen = vec![0u8; batch * hidden];
            for t in &tiles {
                assert_eq!(t.units.start % UNIT_ALIGN, 0);
                for b in t.rows.clone() {
                    for u in t.units.clone() {
                        seen[b * hidden + u] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "{threads} {batch} {hidden}: {tiles:?}"
            );
        }
        // Units first: 16 threads over 1024 units take 64 units each, all rows.
        let tiles = split(16, 64, 1024);
        assert_eq!(tiles.len(), 16);
        assert!(tiles
            .iter()
            .all(|t| t.rows == (0..64) && t.units.len() == 64));
    }

    #[test]
    fn the_barrier_orders_the_phases_of_every_step() {
        // One row per tile.
        let tiles = split(4, 4, UNIT_ALIGN);
        let n = tiles.len();
        assert_eq!(n, 4);
        let mut buf = vec![0usize; n];
        let shared = Shared::new(&mut buf);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        pool.install(|| {
            run(&tiles, |mine, barrier| {
                for step in 1..200 {
                    for t in mine {
                        let i = t.rows.start;
                        // SAFETY: each tile writes its own element, then all are read
                        // after the barrier.
                        unsafe { shared.part(i..i + 1)[0] = step };
                    }
                    barrier.wait();
                    // SAFETY: nobody writes until the next barrier.
                    let all = unsafe { shared.read(0..n) };
                    assert!(all.iter().all(|&v| v == step));
                    barrier.wait();
                }
            })
        });
    }

    #[test]
    fn a_panicking_member_does_not_hang_the_others() {
        let tiles = split(2, 16, 128);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let caught = pool.install(|| {
            std::panic::catch_unwind(|| {
                run(&tiles, |mine, barrier| {
                    if mine.iter().any(|t| t.units.start > 0) {
                        panic!("the member with the second tile fails");
                    }
                    barrier.wait();
                })
            })
        });
        assert!(caught.is_err());
    }

    #[test]
    fn a_busy_pool_leaves_the_tiles_to_the_leader() {
        // A pool of one thread: nobody can join, the leader runs every tile.
        let tiles = split(4, 64, 4 * UNIT_ALIGN);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let seen = AtomicUsize::new(0);
        pool.install(|| {
            run(&tiles, |mine, barrier| {
                seen.fetch_add(mine.len(), Ordering::Relaxed);
                barrier.wait();
            })
        });
        assert_eq!(seen.into_inner(), tiles.len());
    }
}
