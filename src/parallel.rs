//! The thread pool: one rayon pool for all of bptt's work, its size, and fork safety.
//!
//! Work splits across directions, batch and hidden units (inside faer's GEMMs), never
//! across time. The pool is built on first use with `BPTT_NUM_THREADS`, else
//! `RAYON_NUM_THREADS`, else the number of CPUs, and rebuilt by [`set_num_threads`]. A
//! child process made by `fork()` inherits no threads: [`pool`] notices the new process
//! id and builds the child its own pool (the parent's, whose threads do not exist in the
//! child, is leaked rather than touched). With one thread, [`run`] keeps the work on the
//! calling thread.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

struct Team {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static TEAM: Mutex<Option<Team>> = Mutex::new(None);

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

fn build(threads: usize) -> Arc<rayon::ThreadPool> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("bptt-{i}"))
        .build();
    // Building a pool only fails when the OS refuses threads; fall back to running on
    // the calling thread alone rather than failing the computation.
    Arc::new(pool.unwrap_or_else(|_| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread pool on the current thread")
    }))
}

fn lock() -> std::sync::MutexGuard<'static, Option<Team>> {
    TEAM.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool to run on (built, or rebuilt after a fork, as needed).
pub fn pool() -> Arc<rayon::ThreadPool> {
    let mut team = lock();
    let pid = std::process::id();
    match team.as_ref() {
        Some(t) if t.pid == pid => t.pool.clone(),
        stale => {
            let threads = stale.map_or_else(default_num_threads, |t| t.threads);
            if let Some(old) = team.take() {
                // Its worker threads belong to the parent process.
                std::mem::forget(old);
            }
            let pool = build(threads);
            *team = Some(Team {
                pid,
                threads,
                pool: pool.clone(),
            });
            pool
        }
    }
}

/// The CPUs this process may run on. Parallel work never uses more threads at once (a
/// larger pool is allowed, but its extra threads would only take turns on the same cores,
/// and a member of a step team waiting for one that has no core stalls every step).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

thread_local! {
    /// Set while [`run`] runs work on the calling thread alone.
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the configured number of threads: on the pool, or, with one thread or
/// when `parallel` says the work cannot use more, directly on the calling thread (no
/// hand-over to a pool thread and back, which costs two thread wake-ups per call: a large
/// share of a small model's call).
pub fn run<R: Send>(parallel: bool, f: impl FnOnce() -> R + Send) -> R {
    if parallel && num_threads() > 1 {
        return pool().install(f);
    }
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

/// Sets the number of threads for all later calls (at least 1).
pub fn set_num_threads(threads: usize) {
    let threads = threads.max(1);
    let mut team = lock();
    *team = Some(Team {
        pid: std::process::id(),
        threads,
        pool: build(threads),
    });
}

/// The number of threads later calls will use.
pub fn num_threads() -> usize {
    let team = lock();
    match team.as_ref() {
        Some(t) => t.threads,
        None => default_num_threads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_follows_set_num_threads() {
        set_num_threads(3);
        assert_eq!(num_threads(), 3);
        assert_eq!(pool().install(rayon::current_num_threads), 3);
        assert_eq!(run(true, current_threads), 3);
        assert_eq!(run(false, current_threads), 1);
        set_num_threads(0);
        assert_eq!(num_threads(), 1);
        assert_eq!(run(true, current_threads), 1);
        let here = std::thread::current().id();
        assert_eq!(run(true, || std::thread::current().id()), here);
    }
}
