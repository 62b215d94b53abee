//! Threads: the one rayon pool of bptt, its size and fork safety, and the one threading
//! policy — every decision of how many threads a piece of work gets is made here.
//!
//! Work splits across directions, batch and hidden units (the step team, faer's GEMMs),
//! never across time. The pool is built on first use with `BPTT_NUM_THREADS`, else
//! `RAYON_NUM_THREADS`, else the number of CPUs, and rebuilt by [`set_num_threads`]. A
//! child process made by `fork()` inherits no threads: [`pool`] notices the new process
//! id and builds the child its own pool (the parent's, whose threads do not exist in the
//! child, is leaked rather than touched). With one thread, [`run`] keeps the work on the
//! calling thread.
//!
//! # The policy
//! Thresholds are in multiply-adds, measured on a 16-core Xeon (AVX-512) and a 2-core
//! EPYC (AVX2) against the same work on one thread (`benches/scaling.py`; the runs are in
//! `benches/results/`). Below each, one more thread cost more than it saved:
//! - [`GEMM_WORK_PER_THREAD`]: a batched GEMM (input projection, weight gradients, `dx`)
//!   gets one thread per 4M multiply-adds;
//! - [`TEAM_MIN_WORK`], [`MEMBER_MIN_WORK`]: the step team runs when one step's
//!   recurrent product has 512K multiply-adds, with one member per 128K (a step is a few
//!   microseconds; the per-step barrier costs about one);
//! - [`PARALLEL_SUM_MIN_ELEMS`]: bias-gradient column sums split over 64K elements;
//! - a call runs on the pool only when [`uses_threads`] says some part of it can use a
//!   second thread; otherwise on the calling thread (no hand-over: two thread wake-ups,
//!   a large share of a small model's call);
//! - the readout's and the optimizers' calls go to the pool from 256K values (a loss,
//!   `readout::LOSS_PARALLEL_MIN`), 32M multiply-adds (`Linear`,
//!   `readout::linear_parallel`) and 1M values (one parameter's step,
//!   `optim::OPTIM_PARALLEL_MIN`): below, the hand-over (0.1–0.2 ms on the 2-core EPYC
//!   VM) cost more than the second thread saved;
//! - nothing uses more threads at once than the CPUs of the process ([`cores`]): extra
//!   threads would take turns on the same cores, and a team member without a core stalls
//!   every step;
//! - the two directions of a bidirectional layer run concurrently, each with half of the
//!   threads ([`per_direction`]);
//! - a call uses no more threads than there are CPUs other processes leave idle when it
//!   starts ([`call_threads`]): on a busy machine a thread without a CPU of its own makes
//!   every other thread of the call wait for it;
//! - a step team that loses more time at its barrier than its split saves (a member keeps
//!   losing its core to another process that started meanwhile) shrinks to its leader for
//!   the rest of the chunk, and the process forms no teams for a back-off period
//!   ([`note_contention`]).

use crate::model::Config;
use crate::sequence::CHUNK_STEPS;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Multiply-adds per GEMM thread.
pub(crate) const GEMM_WORK_PER_THREAD: usize = 1 << 22;

/// Below this many multiply-adds in one step's recurrent product the time loop runs on one
/// thread: the barrier would cost more than the split saves.
pub(crate) const TEAM_MIN_WORK: usize = 1 << 19;

/// A step team has at most one member per this many multiply-adds of one step's product,
/// so that each member's share of a step outweighs its share of the barrier.
pub(crate) const MEMBER_MIN_WORK: usize = 1 << 17;

/// Elements of a `[rows, cols]` matrix below which its column sums run on one thread.
pub(crate) const PARALLEL_SUM_MIN_ELEMS: usize = 1 << 16;

/// The pool and what it was built for.
struct Pool {
    pid: u32,
    threads: usize,
    /// `None` with one thread: the work runs on the calling thread.
    pool: Option<Arc<rayon::ThreadPool>>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// The thread count used when none was set: `BPTT_NUM_THREADS`, `RAYON_NUM_THREADS`, or
/// the number of CPUs available to this process.
pub fn default_num_threads() -> usize {
    ["BPTT_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .filter_map(|v| v.trim().parse::<usize>().ok())
        .find(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The most threads [`set_num_threads`] accepts from the bindings: `4 × max(CPUs, 16)`.
/// More only take turns on the same cores, and each costs a stack and a start-up.
pub fn max_threads() -> usize {
    4 * cores().max(16)
}

/// A pool of `threads` threads, or of fewer when the OS refuses some (halving); `None`
/// when it gives none, and the work then runs on the calling thread. Returns the number
/// of threads the work gets, so [`num_threads`] never overstates it.
fn build(threads: usize) -> (Option<Arc<rayon::ThreadPool>>, usize) {
    let mut n = threads.max(1);
    while n > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("bptt-{i}"))
            .start_handler(|_| own_threads(|t| t.register()))
            .exit_handler(|_| own_threads(|t| t.unregister()))
            .build();
        match pool {
            Ok(pool) => return (Some(Arc::new(pool)), n),
            Err(_) => n /= 2,
        }
    }
    // One thread: the calling thread does the work (see `run`), no pool is needed.
    (None, 1)
}

fn lock() -> std::sync::MutexGuard<'static, Option<Pool>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool to run on (built, or rebuilt after a fork, as needed); `None` with one
/// thread.
pub fn pool() -> Option<Arc<rayon::ThreadPool>> {
    let mut current = lock();
    let pid = std::process::id();
    match current.as_ref() {
        Some(p) if p.pid == pid => p.pool.clone(),
        stale => {
            let threads = stale.map_or_else(default_num_threads, |p| p.threads);
            if let Some(old) = current.take() {
                // Its worker threads belong to the parent process.
                std::mem::forget(old);
            }
            let (pool, threads) = build(threads);
            *current = Some(Pool {
                pid,
                threads,
                pool: pool.clone(),
            });
            pool
        }
    }
}

/// The call thread: one long-lived thread (a rayon pool of one, named `bptt-call`) that
/// runs a call the bindings watch for signals while the calling thread polls. Built on
/// first use and again in a child after `fork()` (the parent's is leaked, as in [`pool`]).
/// A thread of its own per call costs its start and an allocator heap that starts empty
/// every call, so every buffer of the call lands on fresh pages (alternating the two in
/// one process: 7% of a character model's 1-thread training step; between whole builds
/// the difference is within the machine's noise).
struct CallThread {
    pid: u32,
    pool: Arc<rayon::ThreadPool>,
}

/// Whether a call holds the call thread (cleared when the thread is built anew).
static CALL_THREAD_BUSY: AtomicBool = AtomicBool::new(false);

/// The call thread, held by one call until dropped.
pub struct CallThreadClaim {
    pool: Arc<rayon::ThreadPool>,
}

impl CallThreadClaim {
    /// The one-thread pool to spawn the call on.
    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }
}

impl Drop for CallThreadClaim {
    fn drop(&mut self) {
        CALL_THREAD_BUSY.store(false, Ordering::Release);
    }
}

/// The call thread for one call, or `None` when another call holds it (calls from several
/// Python threads at once then run on threads of their own, concurrently, as they would
/// without it) or the OS gives no thread.
pub fn claim_call_thread() -> Option<CallThreadClaim> {
    static CALL: Mutex<Option<CallThread>> = Mutex::new(None);
    let mut current = CALL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if current.as_ref().is_none_or(|c| c.pid != pid) {
        if let Some(old) = current.take() {
            // Its thread belongs to the parent process, and so does any claim on it.
            std::mem::forget(old);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "bptt-call".to_owned())
            .start_handler(|_| own_threads(|t| t.register()))
            .exit_handler(|_| own_threads(|t| t.unregister()))
            .build()
            .ok()?;
        *current = Some(CallThread {
            pid,
            pool: Arc::new(pool),
        });
        CALL_THREAD_BUSY.store(false, Ordering::Release);
    }
    let call = current.as_ref()?;
    if CALL_THREAD_BUSY.swap(true, Ordering::Acquire) {
        return None;
    }
    Some(CallThreadClaim {
        pool: Arc::clone(&call.pool),
    })
}

/// The CPUs this process may run on. Parallel work never uses more threads at once.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

thread_local! {
    /// Set while [`run`] runs work on the calling thread alone.
    static ALONE: Cell<bool> = const { Cell::new(false) };
    /// While [`run`] runs work on the pool: [`idle_cpus`] as read when the call started.
    static CALL_IDLE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` with the configured number of threads: on the pool, or, with one thread or
/// when `parallel` says the work cannot use more, directly on the calling thread.
pub fn run<R: Send>(parallel: bool, f: impl FnOnce() -> R + Send) -> R {
    plan_call(parallel).run(f)
}

/// Where a call will run, decided when it is asked for (see [`plan_call`]).
pub struct CallPlan {
    /// The pool, when the call runs on it.
    pool: Option<Arc<rayon::ThreadPool>>,
    /// [`idle_cpus`] as read by [`plan_call`].
    idle: Option<usize>,
}

/// Decides where a call runs (as [`run`] does) and reads the idle CPUs now, on the thread
/// that asks for the call: before the pool's threads wake for it, and before the caller
/// hands the call to another thread (the bindings' call thread), so that neither the
/// waking threads nor the handing-over caller count as another program's. A reading
/// less than [`IDLE_REUSE`] old is used again ([`idle_cpus_for_call`]). Run it with
/// [`CallPlan::run`], on any thread.
pub fn plan_call(parallel: bool) -> CallPlan {
    let pool = if parallel && num_threads() > 1 {
        pool()
    } else {
        None
    };
    let idle = pool.as_ref().and_then(|_| idle_cpus_for_call());
    CallPlan { pool, idle }
}

/// How long a call on the pool uses the idle CPUs read for an earlier one. Right after a
/// call the pool's threads still spin, so a reading then reads them too (some tens of
/// microseconds) and often waits out [`SETTLE`]: measured in a loop of 2-thread calls of
/// one LSTM step (16 × 128), [`idle_cpus`] took 22% of the process's CPU time, ~75 µs a
/// call. A program that starts keeping a core busy is seen within this time.
const IDLE_REUSE: Duration = Duration::from_millis(10);

/// The process clock at the last reading [`idle_cpus_for_call`] took (0: none yet), and
/// that reading (`usize::MAX`: unknown).
static IDLE_READ_AT: AtomicU64 = AtomicU64::new(0);
static IDLE_READ: AtomicUsize = AtomicUsize::new(usize::MAX);

/// [`idle_cpus`] for a call: read afresh at most every [`IDLE_REUSE`] (concurrent calls
/// may both read; either reading is kept).
fn idle_cpus_for_call() -> Option<usize> {
    let at = IDLE_READ_AT.load(Ordering::Acquire);
    if at != 0 && clock_ns().saturating_sub(at) < IDLE_REUSE.as_nanos() as u64 {
        let idle = IDLE_READ.load(Ordering::Relaxed);
        return (idle != usize::MAX).then_some(idle);
    }
    let idle = idle_cpus();
    IDLE_READ.store(idle.unwrap_or(usize::MAX), Ordering::Relaxed);
    IDLE_READ_AT.store(clock_ns().max(1), Ordering::Release);
    idle
}

impl CallPlan {
    /// The pool the call runs on, `None` when it runs on the calling thread alone. A thread
    /// that hands the call over should spawn it on this pool itself (see
    /// `python::run_released`) rather than through a thread of another rayon pool.
    pub fn pool(&self) -> Option<&Arc<rayon::ThreadPool>> {
        self.pool.as_ref()
    }

    /// Runs `f` as planned.
    pub fn run<R: Send>(self, f: impl FnOnce() -> R + Send) -> R {
        if let Some(pool) = self.pool {
            let idle = self.idle;
            let result = pool.install(move || {
                CALL_IDLE.with(|c| c.set(idle));
                let result = f();
                CALL_IDLE.with(|c| c.set(None));
                result
            });
            LAST_POOL_END.store(clock_ns(), Ordering::Relaxed);
            return result;
        }
        alone(f)
    }
}

/// Runs `f` on the calling thread as work that may use no other thread
/// ([`current_threads`] is 1 inside, also on a thread of the pool).
pub(crate) fn alone<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            ALONE.with(|a| a.set(self.0));
        }
    }
    let _reset = Reset(ALONE.with(|a| a.replace(true)));
    f()
}

/// The number of threads the work running on this thread may use: 1 inside [`run`] on
/// the calling thread, else the size of the current rayon pool.
pub fn current_threads() -> usize {
    if ALONE.with(Cell::get) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// The threads a forward or backward pass uses: [`current_threads`], but no more than the
/// CPUs other threads left idle when [`run`] started the call ([`idle_cpus`], at least
/// one). A member
/// of a step team or a GEMM's share that has no idle CPU waits for another process's
/// time slice, and every other thread of the call waits for it; on one thread the call
/// takes its single-thread time instead. Results do not depend on the thread count, so
/// this changes only the speed.
pub fn call_threads() -> usize {
    let threads = current_threads();
    if threads == 1 {
        return 1;
    }
    CALL_IDLE
        .with(Cell::get)
        .map_or(threads, |idle| threads.min(idle.max(1)))
}

/// CPUs that no other thread is running or waiting to run on at this moment (Linux: the
/// machine's runnable threads in `/proc/loadavg` less this process's own, against the
/// online CPUs); `None` where that is not known. Read by [`plan_call`] before a call wakes
/// the pool. The runnable count includes the thread asking; when it shows nothing else,
/// that is the answer (one small read). Otherwise, shortly after a call on the pool
/// ([`POOL_SPIN`]), the threads of bptt's pools (which spin for a while after a call
/// before they sleep) are read from `/proc/self/task` before and after the count, and
/// only the runnable threads beyond them count as taking a CPU
/// (of another process, or of this one: another library's pool); while some do, the
/// count is read again for up to [`SETTLE`], then once more with bptt's threads read, and
/// the smallest count is kept: a thread that is runnable only for a moment (one that has
/// just woken another, or is about to sleep, a pool thread that went to sleep between
/// the readings) is not a program keeping a CPU busy, which stays runnable throughout; a
/// call on a busy machine pays the whole `SETTLE`. (Measured on an idle
/// 2-core machine, a character model's 2-thread training step: with one reading, taken
/// after the hand-over to the call thread, 38% of its LSTM calls read one idle CPU and
/// ran on one thread; with this and [`plan_call`], 6%. Right after a call, with one of
/// the two cores busy: reading all of the process's threads and subtracting the larger
/// of the two readings, 9–57 of 400 readings saw the busy core as idle, each 0.29–0.32
/// ms; reading bptt's threads and subtracting the smaller, none, in 0.22 ms.)
pub fn idle_cpus() -> Option<usize> {
    let online = online_cpus()?;
    if runnable_threads()? <= 1 {
        return Some(online);
    }
    // A pool thread runnable at one reading of its own and asleep at the other may or
    // may not be in the machine's count: counting it as another's only overstates.
    // bptt's threads are read only shortly after a call on the pool ended ([`POOL_SPIN`]);
    // later they sleep (reading them costs some tens of microseconds each).
    let since_pool = clock_ns().saturating_sub(LAST_POOL_END.load(Ordering::Relaxed));
    let own = || match since_pool < POOL_SPIN.as_nanos() as u64 {
        true => own_threads(|t| t.runnable()),
        false => 0,
    };
    let others_now = || -> Option<usize> {
        let before = own();
        let now = runnable_threads()?;
        let after = own();
        Some(now.saturating_sub(1 + before.min(after)))
    };
    let start = Instant::now();
    let mut others = others_now()?;
    while others > 0 && start.elapsed() < SETTLE {
        std::hint::spin_loop();
        others = others.min(runnable_threads()?.saturating_sub(1));
    }
    if others > 0 {
        others = others.min(others_now()?);
    }
    Some(online.saturating_sub(others))
}

/// How long the pool's threads may keep spinning after a call on the pool ends (rayon's
/// idle threads spin for some microseconds before they sleep; with margin).
const POOL_SPIN: Duration = Duration::from_millis(2);

/// The process clock when the last call on the pool ended.
static LAST_POOL_END: AtomicU64 = AtomicU64::new(0);

/// How long [`idle_cpus`] keeps reading when other threads are runnable.
const SETTLE: Duration = Duration::from_micros(100);

/// The machine's runnable threads: `/proc/loadavg`'s "3/456" field (runnable/total).
fn runnable_threads() -> Option<usize> {
    let load = std::fs::read_to_string("/proc/loadavg").ok()?;
    load.split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The thread ids of bptt's own threads (its pool's and the call thread), registered by
/// each thread as it starts and removed as it ends.
struct OwnThreads {
    tids: Vec<u32>,
}

impl OwnThreads {
    /// The calling thread's id (Linux: `/proc/thread-self` links to `<pid>/task/<tid>`).
    fn current() -> Option<u32> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        link.file_name()?.to_str()?.parse().ok()
    }

    fn register(&mut self) {
        if let Some(tid) = Self::current() {
            self.tids.push(tid);
        }
    }

    fn unregister(&mut self) {
        if let Some(tid) = Self::current() {
            self.tids.retain(|&t| t != tid);
        }
    }

    /// How many of them, other than the calling thread, are running or runnable (state
    /// `R` in `/proc/self/task/<tid>/stat`; a thread that has ended counts as not).
    fn runnable(&self) -> usize {
        let me = Self::current();
        self.tids
            .iter()
            .filter(|&&tid| Some(tid) != me)
            .filter(|tid| {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        // "tid (name) S ...": the state follows the name.
                        Some(stat.rsplit_once(") ")?.1.starts_with('R'))
                    })
                    .unwrap_or(false)
            })
            .count()
    }
}

/// `f` on the registry of bptt's own threads.
fn own_threads<R>(f: impl FnOnce(&mut OwnThreads) -> R) -> R {
    static OWN: Mutex<OwnThreads> = Mutex::new(OwnThreads { tids: Vec::new() });
    f(&mut OWN.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The machine's online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-3,8-11`): the
/// CPUs `/proc/loadavg` counts for, which may be more than this process may use.
fn online_cpus() -> Option<usize> {
    static ONLINE: OnceLock<Option<usize>> = OnceLock::new();
    *ONLINE.get_or_init(|| {
        let list = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
        list.trim().split(',').try_fold(0usize, |n, part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
            Some(n + hi.checked_sub(lo)? + 1)
        })
    })
}

/// Sets the number of threads for all later calls (at least 1; fewer when the OS refuses
/// threads, which [`num_threads`] then reports).
pub fn set_num_threads(threads: usize) {
    let (pool, threads) = build(threads);
    let mut current = lock();
    *current = Some(Pool {
        pid: std::process::id(),
        threads,
        pool,
    });
}

/// The number of threads later calls will use.
pub fn num_threads() -> usize {
    let current = lock();
    match current.as_ref() {
        Some(p) => p.threads,
        None => default_num_threads(),
    }
}

/// Whether a forward or backward pass over `seq_len × batch` gains from more than one
/// thread: a bidirectional layer (directions run concurrently), a step big enough for the
/// step team, or batched products big enough for several threads each.
pub fn uses_threads(cfg: &Config, seq_len: usize, batch: usize) -> bool {
    let (h, gh) = (cfg.hidden_size, cfg.gate_size());
    let widest_input = cfg.input_size.max(cfg.num_directions() * h);
    cfg.bidirectional
        || batch * h * gh >= TEAM_MIN_WORK
        || seq_len.min(CHUNK_STEPS) * batch * widest_input * gh >= 8 * GEMM_WORK_PER_THREAD
}

/// Calls of at least this many multiply-adds (some tens of milliseconds) can be
/// interrupted: the bindings then watch for signals while they run (a thread hand-over,
/// some microseconds, that a shorter call does not pay).
pub const INTERRUPTIBLE_WORK: usize = 1 << 27;

/// Multiply-adds of a forward pass over `seq_len × batch` (saturating), the size
/// [`INTERRUPTIBLE_WORK`] is compared with.
pub fn call_work(cfg: &Config, seq_len: usize, batch: usize) -> usize {
    let gh = cfg.gate_size();
    let per_step = (cfg.input_size + cfg.hidden_size)
        .saturating_add(cfg.num_layers.saturating_sub(1) * (cfg.output_size() + cfg.hidden_size))
        .saturating_mul(gh)
        .saturating_mul(cfg.num_directions());
    per_step.saturating_mul(seq_len).saturating_mul(batch)
}

/// Threads for a GEMM of `work` multiply-adds when `threads` are allowed.
/// While the process backs off from step teams ([`note_contention`]: another process keeps
/// taking a core), a GEMM runs on one thread too: its halves would wait for each other
/// the same way.
pub(crate) fn gemm_threads(threads: usize, work: usize) -> usize {
    if clock_ns() < NO_TEAMS_UNTIL.load(Ordering::Relaxed) {
        return threads.min(1);
    }
    threads.min(work / GEMM_WORK_PER_THREAD).min(cores())
}

/// The shortest and longest time a process runs without step teams after one shrank.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Nanoseconds of the process clock until which step teams are not formed, and the
/// current back-off (doubled each time a team shrinks again, halved when one pays).
static NO_TEAMS_UNTIL: AtomicU64 = AtomicU64::new(0);
static BACKOFF_NS: AtomicU64 = AtomicU64::new(0);

fn clock_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A step team shrank to its leader because its members kept waiting for one that had
/// lost its core (another process is busy): later calls run their time loops on one
/// thread for a while (10 ms, doubling up to 1 s while it keeps happening) instead of
/// stalling again.
pub(crate) fn note_contention() {
    let min = BACKOFF_MIN.as_nanos() as u64;
    let backoff = (BACKOFF_NS.load(Ordering::Relaxed).saturating_mul(2))
        .clamp(min, BACKOFF_MAX.as_nanos() as u64);
    BACKOFF_NS.store(backoff, Ordering::Relaxed);
    NO_TEAMS_UNTIL.store(clock_ns().saturating_add(backoff), Ordering::Relaxed);
}

/// A step team ran to its end without shrinking: the back-off halves (down to none), so
/// that one lucky chunk on a machine that stays busy does not undo what the shrinking
/// teams learnt, while an idle machine gets its teams back after a few chunks.
pub(crate) fn note_team_paid() {
    let backoff = BACKOFF_NS.load(Ordering::Relaxed);
    if backoff != 0 {
        let half = backoff / 2;
        BACKOFF_NS.store(
            if half < BACKOFF_MIN.as_nanos() as u64 {
                0
            } else {
                half
            },
            Ordering::Relaxed,
        );
    }
}

/// The largest step team for a step of `work` multiply-adds when `threads` are allowed
/// (1: no team, also while the process backs off after a team shrank).
pub(crate) fn team_members(threads: usize, work: usize) -> usize {
    if work < TEAM_MIN_WORK || clock_ns() < NO_TEAMS_UNTIL.load(Ordering::Relaxed) {
        return 1;
    }
    threads.min(cores()).min(work / MEMBER_MIN_WORK).max(1)
}

/// Runs `f` on each direction's job: both at once, each with half the threads, when
/// there are two and more than one thread; in order otherwise.
pub(crate) fn per_direction<A: Send, R: Send>(
    jobs: Vec<A>,
    threads: usize,
    f: impl Fn(A, usize) -> R + Sync,
) -> Vec<R> {
    let mut jobs = jobs.into_iter();
    match (jobs.next(), jobs.next()) {
        (Some(a), Some(b)) if threads > 1 => {
            let half = threads / 2;
            let (ra, rb) = rayon::join(|| f(a, threads - half), || f(b, half));
            vec![ra, rb]
        }
        (Some(a), Some(b)) => vec![f(a, 1), f(b, 1)],
        (Some(a), None) => vec![f(a, threads)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_follows_set_num_threads() {
        set_num_threads(3);
        assert_eq!(num_threads(), 3);
        assert_eq!(
            pool().map(|p| p.install(rayon::current_num_threads)),
            Some(3)
        );
        assert_eq!(run(true, current_threads), 3);
        assert_eq!(run(false, current_threads), 1);
        set_num_threads(0);
        assert_eq!(num_threads(), 1);
        assert_eq!(run(true, current_threads), 1);
        let here = std::thread::current().id();
        assert_eq!(run(true, || std::thread::current().id()), here);
    }

    #[test]
    fn small_work_stays_on_one_thread() {
        // A 64-unit RNN step at batch 1 is far below a team's worth.
        assert_eq!(team_members(8, 4 * 64 * 64), 1);
        assert_eq!(team_members(1, 1 << 30), 1);
        // A small LSTM step (16 × 128 × 512) takes at most 8 members.
        assert!(team_members(16, 16 * 128 * 512) <= 8);
        assert_eq!(gemm_threads(16, GEMM_WORK_PER_THREAD - 1), 0);
        assert!(gemm_threads(16, 1 << 30) <= cores());
    }

    #[test]
    fn idle_cpus_are_known_on_linux_and_never_exceed_the_online_ones() {
        if cfg!(target_os = "linux") {
            let online = online_cpus().expect("online CPUs on Linux");
            assert!(online >= 1);
            let idle = idle_cpus().expect("idle CPUs on Linux");
            assert!(idle <= online);
        }
        assert!(call_threads() >= 1);
    }

    #[test]
    fn the_pools_threads_are_known_and_another_librarys_busy_thread_is_not_one() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let (pool, _) = build(2);
        let pool = pool.expect("a pool of two threads");
        let (tid, known) = pool.install(|| {
            let tid = OwnThreads::current().expect("a thread id");
            (tid, own_threads(|t| t.tids.contains(&tid)))
        });
        assert!(known, "pool thread {tid} is registered");
        drop(pool);
        // A thread bptt did not start, kept busy: always runnable, so never idle.
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let online = online_cpus().expect("online CPUs on Linux");
        let seen: Vec<usize> = (0..20).map(|_| idle_cpus().expect("idle CPUs")).collect();
        stop.store(true, Ordering::Relaxed);
        busy.join().expect("the busy thread");
        // A reading may undercount by one when a pool thread of another test is runnable
        // at both readings of bptt's threads but not at the count between them: most
        // readings, not all.
        let as_idle = seen.iter().filter(|&&idle| idle >= online).count();
        assert!(as_idle <= seen.len() / 4, "{seen:?} of {online}");
    }
}
