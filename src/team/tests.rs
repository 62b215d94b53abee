//! Tests of the step team: tilings, the barrier, and members that fail, lag or never start.
use super::*;

#[test]
fn small_steps_get_one_tile() {
    assert_eq!(plan(8, 1, 64, 4 * 64).len(), 1);
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
    // Units first: 2 members over 64 rows and 1024 units take 512 units each.
    let tiles = split(2, 64, 1024);
    assert!(tiles
        .iter()
        .all(|t| t.rows == (0..64) && t.units.len() == 512));
    // Units first below: 16 threads over 1024 units take 64 units each, all rows.
    let tiles = split(16, 64, 1024);
    assert_eq!(tiles.len(), 16);
    assert!(tiles
        .iter()
        .all(|t| t.rows == (0..64) && t.units.len() == 64));
}

#[test]
fn whole_rows_while_every_member_gets_eight_and_the_weights_are_small() {
    // The tiling for a given team size: what the threading policy answers (the machine's
    // cores, a process-wide back-off that other tests may set) is kept out of it.
    // LSTM hidden 128 (weights 2^16): whole rows; hidden 1024 (2^22): none.
    assert!(groups_of_rows(2, 64, 1024, 4 * 1024).is_none());
    assert!(
        groups_of_rows(2, 15, 128, 4 * 128).is_none(),
        "fewer than 8 rows each"
    );
    assert!(groups_of_rows(1, 64, 128, 4 * 128).is_none());
    assert!(row_groups(1, 64, 128, 4 * 128).is_none(), "one thread");
    assert_eq!(
        groups_of_rows(2, 40, 128, 4 * 128),
        Some(vec![0..20, 20..40])
    );
    assert_eq!(groups_of_rows(2, 17, 128, 4 * 128), Some(vec![0..9, 9..17]));
    assert_eq!(
        groups_of_rows(3, 40, 128, 4 * 128),
        Some(vec![0..14, 14..28, 28..40])
    );
    let tiles = tiles_for(2, 16, 128, 4 * 128);
    assert_eq!(tiles.len(), 2);
    assert!(tiles
        .iter()
        .all(|t| t.rows.len() == 8 && t.units == (0..128)));
    // Above the weights' bound the same team splits units instead.
    let tiles = tiles_for(2, 16, 1024, 4 * 1024);
    assert_eq!(tiles.len(), 2);
    assert!(tiles
        .iter()
        .all(|t| t.rows == (0..16) && t.units.len() == 512));
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
        run(&tiles, |m| {
            for step in 1..200 {
                for t in m.tiles() {
                    let i = t.rows.start;
                    // SAFETY: each tile writes its own element, then all are read
                    // after the barrier.
                    unsafe { shared.part(i..i + 1)[0] = step };
                }
                if !m.sync() {
                    return;
                }
                // SAFETY: nobody writes until the next barrier.
                let all = unsafe { shared.read(0..n) };
                assert!(all.iter().all(|&v| v == step));
                if !m.sync() {
                    return;
                }
            }
        })
    });
}

#[test]
fn a_panicking_member_does_not_hang_the_others() {
    let tiles = split(2, 8, 128);
    assert!(tiles.iter().any(|t| t.units.start > 0), "{tiles:?}");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let caught = pool.install(|| {
        std::panic::catch_unwind(|| {
            run(&tiles, |m| {
                if m.tiles().iter().any(|t| t.units.start > 0) {
                    panic!("the member with the second tile fails");
                }
                m.sync();
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
        run(&tiles, |m| {
            seen.fetch_add(m.tiles().len(), Ordering::Relaxed);
            m.sync();
        })
    });
    assert_eq!(seen.into_inner(), tiles.len());
}

/// Runs a team of `tiles` on a pool of two threads: `member(m, leader, done)` is each
/// member's work, which counts the tiles it runs per step in `done` (`steps` of them);
/// returns the counts.
fn on_two_threads(
    tiles: &[StateTile],
    steps: usize,
    member: impl Fn(&Member<'_>, bool, &[AtomicUsize]) + Sync,
) -> Vec<usize> {
    let done: Vec<AtomicUsize> = (0..steps).map(|_| AtomicUsize::new(0)).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let here = std::thread::current().id();
        run(tiles, |m| {
            member(m, std::thread::current().id() == here, &done)
        })
    });
    done.into_iter().map(AtomicUsize::into_inner).collect()
}

#[test]
fn members_owning_whole_rows_do_not_wait_for_each_other() {
    // The second member starts its steps only after the leader has finished all of
    // its own: with whole-row tiles `end_step` must not wait (a barrier would hang,
    // which the receive's timeout turns into a failure).
    let tiles: Vec<_> = [0..8, 8..16]
        .into_iter()
        .map(|rows| StateTile {
            rows,
            units: 0..128,
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let done = on_two_threads(&tiles, 50, |m, leader, done| {
        if !leader {
            let rx = rx.lock().unwrap();
            rx.recv_timeout(Duration::from_secs(60))
                .expect("the leader waited for this member");
        }
        for d in done {
            for _ in m.tiles() {
                d.fetch_add(1, Ordering::Relaxed);
            }
            assert!(m.end_step());
        }
        if leader {
            // Lets the other member go (if it joined; else nobody receives).
            let _ = tx.send(());
        }
    });
    assert!(done.iter().all(|&d| d == 2));
}

#[test]
fn a_member_that_keeps_losing_its_core_is_retired_and_every_tile_still_runs_once() {
    // The second member sleeps 2 ms per step (as if another process had its core):
    // the team shrinks to the leader, which then runs both tiles of every step.
    let tiles = split(2, 16, 2 * UNIT_ALIGN);
    assert_eq!(tiles.len(), 2);
    let leader_tiles = AtomicUsize::new(0);
    let done = on_two_threads(&tiles, 40, |m, leader, done| {
        for d in done {
            for _ in m.tiles() {
                d.fetch_add(1, Ordering::Relaxed);
            }
            if leader {
                leader_tiles.fetch_max(m.tiles().len(), Ordering::Relaxed);
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
            if !m.sync() {
                return;
            }
        }
    });
    assert!(done.iter().all(|&d| d == 2));
    assert_eq!(leader_tiles.into_inner(), 2, "the team never shrank");
}
