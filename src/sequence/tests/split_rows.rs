//! Inference split by groups of rows against the tape pass, which does not split.
use super::*;

#[test]
fn inference_split_by_rows_gives_the_bits_of_one_thread() {
    // Batch 40 at hidden 128: on two or more threads inference runs as groups of rows
    // (see `rows`); its outputs and final state must equal the tape pass's, which does
    // not split, bitwise, for every cell, layout, lengths and an initial state.
    for kind in KINDS {
        for batch_first in [false, true] {
            let cfg = Config {
                input_size: 5,
                hidden_size: 128,
                ..config(kind, 2, false, true, batch_first)
            };
            let lengths: Vec<usize> = (0..40).map(|b| 1 + (b * 7) % 9).collect();
            let p = Problem::new(cfg, 9, 40, Some(lengths), 17);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            let (want_out, want_st, _) = p.run(Keep::Everything);
            // The groups given, not asked of the threading policy (which answers one
            // member while a process-wide back-off another test set is running).
            let wv = views(&p.w);
            let st = StateView {
                h: p.h0.view(),
                c: p.c0.as_ref().map(|c| c.view()),
            };
            let ctl = Control::default();
            let lengths = p.lengths.as_deref();
            for groups in [vec![0..20, 20..40], vec![0..14, 14..28, 28..40]] {
                let (out, st, tape) = pool
                    .install(|| {
                        rows::forward(
                            &cfg,
                            &wv,
                            p.x.view(),
                            Some(st.clone()),
                            lengths,
                            &ctl,
                            &groups,
                        )
                    })
                    .expect("valid problem");
                assert!(tape.is_none());
                assert_eq!(
                    out, want_out,
                    "{kind:?} batch_first={batch_first} {groups:?}"
                );
                assert_eq!(st, want_st, "{kind:?} batch_first={batch_first} {groups:?}");
            }
            // And the public path, whichever route the policy takes.
            let (out, st, _) = pool.install(|| p.run(Keep::Nothing));
            assert_eq!(out, want_out, "{kind:?} batch_first={batch_first}");
            assert_eq!(st, want_st, "{kind:?} batch_first={batch_first}");
        }
    }
    // Too few rows, or a bidirectional stack: no split.
    let cfg = Config {
        hidden_size: 128,
        ..config(CellKind::Lstm, 1, false, true, false)
    };
    assert!(rows::groups(&cfg, 15, 2).is_none());
    assert!(rows::groups(&cfg, 40, 1).is_none());
    let bi = Config {
        bidirectional: true,
        ..cfg
    };
    assert!(rows::groups(&bi, 40, 2).is_none());
    // Weights above `ROWS_MAX_WEIGHTS` (4·1024·1024): the step team splits units instead.
    let large = Config {
        hidden_size: 1024,
        ..cfg
    };
    assert!(rows::groups(&large, 64, 2).is_none());
}
