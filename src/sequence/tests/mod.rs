//! Tests of the sequence driver without Python: central finite differences in f64 for
//! every cell and option, variable lengths, and the errors bad shapes give.

use super::*;
use crate::buffer::Control;
use crate::cell::CellKind;
use crate::model::LayerWeights;
use ndarray::{Array, Array1, Array2, Array3};

/// A small deterministic generator (xorshift), so the tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn array<Sh: ndarray::ShapeBuilder>(&mut self, shape: Sh, scale: f64) -> Array<f64, Sh::Dim> {
        Array::from_shape_simple_fn(shape, || self.uniform(-scale, scale))
    }
}

struct Owned {
    w_ih: Array2<f64>,
    w_hh: Array2<f64>,
    b_ih: Option<Array1<f64>>,
    b_hh: Option<Array1<f64>>,
}

fn make_weights(cfg: &Config, rng: &mut Rng) -> Vec<Owned> {
    (0..cfg.num_stacks())
        .map(|k| {
            let li = cfg.layer_input_size(k / cfg.num_directions());
            let gh = cfg.gate_size();
            Owned {
                w_ih: rng.array((gh, li), 0.6),
                w_hh: rng.array((gh, cfg.hidden_size), 0.6),
                b_ih: cfg.bias.then(|| rng.array(gh, 0.3)),
                b_hh: cfg.bias.then(|| rng.array(gh, 0.3)),
            }
        })
        .collect()
}

fn views(w: &[Owned]) -> Vec<LayerWeights<'_, f64>> {
    w.iter()
        .map(|o| LayerWeights {
            w_ih: o.w_ih.view(),
            w_hh: o.w_hh.view(),
            b_ih: o.b_ih.as_ref().map(|b| b.view()),
            b_hh: o.b_hh.as_ref().map(|b| b.view()),
            w_hr: None,
        })
        .collect()
}

struct Problem {
    cfg: Config,
    w: Vec<Owned>,
    x: Array3<f64>,
    h0: Array3<f64>,
    c0: Option<Array3<f64>>,
    lengths: Option<Vec<usize>>,
    /// Loss weights: `L = Σ r_out·out + Σ r_h·h_n (+ Σ r_c·c_n)`.
    r_out: Array3<f64>,
    r_h: Array3<f64>,
    r_c: Option<Array3<f64>>,
}

impl Problem {
    fn new(cfg: Config, t: usize, b: usize, lengths: Option<Vec<usize>>, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let w = make_weights(&cfg, &mut rng);
        let xs = if cfg.batch_first {
            (b, t, cfg.input_size)
        } else {
            (t, b, cfg.input_size)
        };
        let os = if cfg.batch_first {
            (b, t, cfg.output_size())
        } else {
            (t, b, cfg.output_size())
        };
        let ss = cfg.state_shape(b);
        let lstm = cfg.kind.has_cell_state();
        Problem {
            x: rng.array(xs, 1.0),
            h0: rng.array(ss, 0.5),
            c0: lstm.then(|| rng.array(ss, 0.5)),
            r_out: rng.array(os, 1.0),
            r_h: rng.array(ss, 1.0),
            r_c: lstm.then(|| rng.array(ss, 1.0)),
            cfg,
            w,
            lengths,
        }
    }

    fn run(&self, keep: Keep) -> ForwardOutput<f64> {
        let wv = views(&self.w);
        let st = StateView {
            h: self.h0.view(),
            c: self.c0.as_ref().map(|c| c.view()),
        };
        forward(
            &self.cfg,
            &wv,
            self.x.view(),
            Some(st),
            self.lengths.as_deref(),
            keep,
            &Control::default(),
        )
        .expect("valid problem")
    }

    fn loss(&self) -> f64 {
        let (out, st, _) = self.run(Keep::Nothing);
        let mut l = (&out * &self.r_out).sum() + (&st.h * &self.r_h).sum();
        if let (Some(c), Some(r)) = (&st.c, &self.r_c) {
            l += (c * r).sum();
        }
        l
    }

    fn grads(&self) -> Grads<f64> {
        self.grads_with(Keep::Everything).0
    }

    fn grads_with(&self, keep: Keep) -> (Grads<f64>, Tape<f64>) {
        let (_, _, tape) = self.run(keep);
        let tape = tape.expect("kept");
        let wv = views(&self.w);
        let ds = StateView {
            h: self.r_h.view(),
            c: self.r_c.as_ref().map(|c| c.view()),
        };
        let g = backward(
            &self.cfg,
            &wv,
            &tape,
            Some(self.x.view()),
            self.r_out.view(),
            Some(ds),
            &Control::default(),
        )
        .expect("valid problem");
        (g, tape)
    }
}

/// The entries of one input of the loss, addressed by number, so one loop checks them all:
/// 0 `x`, 1 `h0`, 2 `c0`, then per layer-direction `k`: `4 + 4k + {0: w_ih, 1: w_hh,
/// 2: b_ih, 3: b_hh}`.
fn entries(p: &mut Problem, which: usize) -> &mut [f64] {
    let a = match which {
        0 => p.x.as_slice_mut(),
        1 => p.h0.as_slice_mut(),
        2 => p.c0.as_mut().and_then(|c| c.as_slice_mut()),
        _ => {
            let o = &mut p.w[(which - 4) / 4];
            match (which - 4) % 4 {
                0 => o.w_ih.as_slice_mut(),
                1 => o.w_hh.as_slice_mut(),
                2 => o.b_ih.as_mut().and_then(|b| b.as_slice_mut()),
                _ => o.b_hh.as_mut().and_then(|b| b.as_slice_mut()),
            }
        }
    };
    a.unwrap_or(&mut [])
}

fn analytic(g: &Grads<f64>, which: usize) -> Vec<f64> {
    let a: Option<Vec<f64>> = match which {
        0 => Some(g.dx.iter().copied().collect()),
        1 => Some(g.dstate.h.iter().copied().collect()),
        2 => g.dstate.c.as_ref().map(|c| c.iter().copied().collect()),
        _ => {
            let o = &g.params[(which - 4) / 4];
            match (which - 4) % 4 {
                0 => Some(o.w_ih.iter().copied().collect()),
                1 => Some(o.w_hh.iter().copied().collect()),
                2 => o.b_ih.as_ref().map(|b| b.to_vec()),
                _ => o.b_hh.as_ref().map(|b| b.to_vec()),
            }
        }
    };
    a.unwrap_or_default()
}

fn gradcheck(cfg: Config, t: usize, b: usize, lengths: Option<Vec<usize>>) {
    let mut p = Problem::new(cfg, t, b, lengths, 0x9e37_79b9_7f4a_7c15);
    let g = p.grads();
    let eps = 1e-6;
    for which in (0..3).chain(4..4 + 4 * cfg.num_stacks()) {
        let an = analytic(&g, which);
        assert_eq!(an.len(), entries(&mut p, which).len(), "input {which}");
        for (i, &an) in an.iter().enumerate() {
            let orig = entries(&mut p, which)[i];
            entries(&mut p, which)[i] = orig + eps;
            let lp = p.loss();
            entries(&mut p, which)[i] = orig - eps;
            let lm = p.loss();
            entries(&mut p, which)[i] = orig;
            let fd = (lp - lm) / (2.0 * eps);
            assert!(
                (fd - an).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{cfg:?} input {which} entry {i}: finite difference {fd}, backward {an}"
            );
        }
    }
}

const KINDS: [CellKind; 4] = [
    CellKind::RnnTanh,
    CellKind::RnnRelu,
    CellKind::Lstm,
    CellKind::Gru,
];

fn config(
    kind: CellKind,
    layers: usize,
    bidirectional: bool,
    bias: bool,
    batch_first: bool,
) -> Config {
    Config {
        kind,
        input_size: 3,
        hidden_size: 4,
        num_layers: layers,
        bidirectional,
        bias,
        batch_first,
        proj_size: 0,
    }
}

#[test]
fn gradients_match_finite_differences_every_cell_and_option() {
    for kind in KINDS {
        for (layers, bi, bias, bf) in [
            (1, false, true, false),
            (2, true, true, true),
            (2, false, false, false),
            (1, true, false, true),
        ] {
            gradcheck(config(kind, layers, bi, bias, bf), 4, 2, None);
        }
    }
}

#[test]
fn gradients_match_finite_differences_with_lengths() {
    for kind in KINDS {
        for bi in [false, true] {
            gradcheck(config(kind, 2, bi, true, false), 5, 3, Some(vec![2, 5, 1]));
        }
    }
}

#[test]
fn padded_steps_keep_state_and_output_zero() {
    for kind in KINDS {
        let cfg = config(kind, 1, true, true, false);
        let p = Problem::new(cfg, 4, 2, Some(vec![4, 2]), 7);
        let (out, _, _) = p.run(Keep::Nothing);
        assert!(out.slice(s![2.., 1, ..]).iter().all(|&v| v == 0.0));
        assert!(out.slice(s![.., 0, ..]).iter().any(|&v| v != 0.0));
        // Sequence 1 alone gives the same final state.
        let alone = Problem {
            x: p.x.slice(s![..2, 1..2, ..]).to_owned(),
            h0: p.h0.slice(s![.., 1..2, ..]).to_owned(),
            c0: p.c0.as_ref().map(|c| c.slice(s![.., 1..2, ..]).to_owned()),
            lengths: None,
            ..Problem::new(cfg, 2, 1, None, 7)
        };
        let alone = Problem {
            w: make_weights(&cfg, &mut Rng(7)),
            ..alone
        };
        let (_, st_alone, _) = alone.run(Keep::Nothing);
        let (_, st, _) = p.run(Keep::Nothing);
        let diff = (&st.h.slice(s![.., 1..2, ..]) - &st_alone.h).mapv(f64::abs);
        assert!(diff.iter().all(|&d| d < 1e-14), "{kind:?}: {diff}");
    }
}

#[test]
fn bad_shapes_name_the_argument() {
    let cfg = config(CellKind::Lstm, 1, false, true, false);
    let p = Problem::new(cfg, 3, 2, None, 1);
    let wv = views(&p.w);
    let bad_x = Array3::<f64>::zeros((3, 2, 5));
    let err = forward(
        &cfg,
        &wv,
        bad_x.view(),
        None,
        None,
        Keep::Nothing,
        &Control::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "x: expected shape (T, B, 3), got (3, 2, 5)"
    );
    let empty = Array3::<f64>::zeros((0, 2, 3));
    let err = forward(
        &cfg,
        &wv,
        empty.view(),
        None,
        None,
        Keep::Nothing,
        &Control::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("x: expected at least one time step"),
        "{err}"
    );
    let h = Array3::<f64>::zeros((1, 3, 4));
    let st = StateView {
        h: h.view(),
        c: Some(h.view()),
    };
    let err = forward(
        &cfg,
        &wv,
        p.x.view(),
        Some(st),
        None,
        Keep::Nothing,
        &Control::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "state[0]: expected shape (1, 2, 4), got (1, 3, 4)"
    );
    let err = forward(
        &cfg,
        &wv,
        p.x.view(),
        None,
        Some(&[3, 4]),
        Keep::Nothing,
        &Control::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("lengths: expected every length in [1, 3]"),
        "{err}"
    );
    let err = forward(
        &cfg,
        &wv[..0],
        p.x.view(),
        None,
        None,
        Keep::Nothing,
        &Control::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("weights:"), "{err}");
    let (_, _, tape) = p.run(Keep::Everything);
    let bad_d = Array3::<f64>::zeros((3, 2, 5));
    let err = backward(
        &cfg,
        &wv,
        tape.as_ref().unwrap(),
        Some(p.x.view()),
        bad_d.view(),
        None,
        &Control::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "d_out: expected shape (3, 2, 4), got (3, 2, 5)"
    );
    let other = Config {
        hidden_size: 4,
        bidirectional: false,
        kind: CellKind::Gru,
        ..cfg
    };
    let err = backward(
        &other,
        &wv,
        tape.as_ref().unwrap(),
        Some(p.x.view()),
        p.r_out.view(),
        None,
        &Control::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("tape:"), "{err}");
}

#[test]
fn nan_input_propagates_without_panic() {
    let cfg = config(CellKind::Gru, 2, true, true, false);
    let mut p = Problem::new(cfg, 3, 2, None, 3);
    p.x[[1, 0, 0]] = f64::NAN;
    let (out, _, _) = p.run(Keep::Nothing);
    assert!(out.iter().any(|v| v.is_nan()));
    let g = p.grads();
    assert!(g.params[0].w_ih.iter().any(|v| v.is_nan()));
}

#[test]
fn tape_reports_its_size() {
    let cfg = config(CellKind::Lstm, 2, true, true, false);
    let p = Problem::new(cfg, 5, 3, None, 5);
    let (_, _, tape) = p.run(Keep::Everything);
    let tape = tape.unwrap();
    // Layer 1's input [T,B,2H] (layer 0's is the caller's x, not copied); per direction:
    // gates [T,B,4H] and c_prev [T,B,H], and h0 [B,H] in place of h_prev (rebuilt).
    assert!(tape.needs_x());
    let elems = 5 * 3 * 8 + 4 * (5 * 3 * (16 + 4) + 3 * 4);
    assert_eq!(tape.nbytes(), elems * 8);
}

/// Every level gives the scalar level's bits, except the f32 LSTM at the vector levels
/// (whose cell kernel divides by a refined reciprocal estimate, `lstm_avx2`): there the
/// two vector levels agree bitwise with each other and with the scalar level to rounding.
#[test]
fn simd_levels_give_identical_bits_or_the_lstm_within_rounding() {
    use crate::simd::{set_level, Level};
    for kind in KINDS {
        let cfg = config(kind, 2, true, true, false);
        // f32 exercises the fast activations; the result must not depend on the level.
        let p = Problem::new(cfg, 6, 5, Some(vec![6, 3, 1, 6, 2]), 11);
        let w32: Vec<_> =
            p.w.iter()
                .map(|o| {
                    (
                        o.w_ih.mapv(|v| v as f32),
                        o.w_hh.mapv(|v| v as f32),
                        o.b_ih.as_ref().unwrap().mapv(|v| v as f32),
                        o.b_hh.as_ref().unwrap().mapv(|v| v as f32),
                    )
                })
                .collect();
        let wv: Vec<_> = w32
            .iter()
            .map(|(a, b, c, d)| LayerWeights {
                w_ih: a.view(),
                w_hh: b.view(),
                b_ih: Some(c.view()),
                b_hh: Some(d.view()),
                w_hr: None,
            })
            .collect();
        let x = p.x.mapv(|v| v as f32);
        let d_out = p.r_out.mapv(|v| v as f32);
        let run = || {
            let (out, st, tape) = forward(
                &cfg,
                &wv,
                x.view(),
                None,
                p.lengths.as_deref(),
                Keep::Everything,
                &Control::default(),
            )
            .unwrap();
            let g = backward(
                &cfg,
                &wv,
                &tape.unwrap(),
                Some(x.view()),
                d_out.view(),
                None,
                &Control::default(),
            )
            .unwrap();
            (out, st, g)
        };
        let _guard = crate::simd::tests_lock();
        set_level(Some(Level::Scalar)).unwrap();
        let want = run();
        let mut vector = None;
        for level in [Level::Avx2, Level::Avx512] {
            if set_level(Some(level)).is_ok() {
                let got = run();
                if kind != CellKind::Lstm {
                    assert!(got == want, "{kind:?} at {level:?} differs from scalar");
                    continue;
                }
                let close = |a: &Array3<f32>, b: &Array3<f32>| {
                    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale)
                };
                assert!(close(&got.0, &want.0), "LSTM out at {level:?}");
                assert!(close(&got.2.dx, &want.2.dx), "LSTM dx at {level:?}");
                for (a, b) in got.2.params.iter().zip(&want.2.params) {
                    let (ga, gb) = (&a.w_hh, &b.w_hh);
                    let scale = gb.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    assert!(ga
                        .iter()
                        .zip(gb)
                        .all(|(x, y)| (x - y).abs() <= 1e-4 * scale));
                }
                if let Some(v) = &vector {
                    assert!(&got == v, "LSTM at {level:?} differs from AVX2");
                }
                vector = Some(got);
            }
        }
        set_level(None).unwrap();
    }
}

#[test]
fn budgets_give_the_full_tape_gradients() {
    for kind in KINDS {
        for (layers, bi, lengths, bf) in [
            (1, false, None, false),
            (2, true, None, false),
            (3, true, Some(vec![7, 3, 1]), false),
            (2, false, Some(vec![2, 7, 5]), true),
        ] {
            let cfg = config(kind, layers, bi, true, bf);
            let p = Problem::new(cfg, 7, 3, lengths.clone(), 21);
            let (want, full) = p.grads_with(Keep::Everything);
            assert_eq!(full.segment(), None);
            let copies_x = bf || lengths.is_some();
            let (min, full_bytes) = budget_range::<f64>(&cfg, 7, 3, copies_x, lengths.is_some());
            assert_eq!(
                full.nbytes(),
                full_bytes + lengths.as_ref().map_or(0, |l| l.len() * 8)
            );
            for budget in [min, (min + full_bytes) / 2, full_bytes - 1, 10 * full_bytes] {
                let (got, tape) = p.grads_with(Keep::Budget(budget));
                assert!(
                    tape.nbytes() <= budget.max(full.nbytes()),
                    "{kind:?}: {} > {budget}",
                    tape.nbytes()
                );
                if budget < full_bytes {
                    assert!(tape.segment().is_some());
                    assert!(tape.nbytes() < full.nbytes());
                }
                let close = |a: &ndarray::ArrayViewD<'_, f64>, b: &ndarray::ArrayViewD<'_, f64>| {
                    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
                    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * scale)
                };
                assert!(
                    close(&got.dx.view().into_dyn(), &want.dx.view().into_dyn()),
                    "{kind:?} dx at {budget}"
                );
                assert!(close(
                    &got.dh_norm.view().into_dyn(),
                    &want.dh_norm.view().into_dyn()
                ));
                assert!(close(
                    &got.dstate.h.view().into_dyn(),
                    &want.dstate.h.view().into_dyn()
                ));
                for (a, b) in got.params.iter().zip(&want.params) {
                    assert!(
                        close(&a.w_ih.view().into_dyn(), &b.w_ih.view().into_dyn()),
                        "{kind:?} w_ih at {budget}"
                    );
                    assert!(
                        close(&a.w_hh.view().into_dyn(), &b.w_hh.view().into_dyn()),
                        "{kind:?} w_hh at {budget}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_smallest_budget_checkpoints_often_and_a_smaller_one_is_refused() {
    let cfg = config(CellKind::Lstm, 1, false, true, false);
    let p = Problem::new(cfg, 50, 2, None, 5);
    let (min, _) = budget_range::<f64>(&cfg, 50, 2, false, false);
    let (_, _, tape) = p.run(Keep::Budget(min));
    let k = tape.unwrap().segment().unwrap();
    assert!(k > 1 && k < 50, "segment {k}");
    let wv = views(&p.w);
    let err = forward(
        &cfg,
        &wv,
        p.x.view(),
        None,
        None,
        Keep::Budget(min - 1),
        &Control::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("memory_budget: expected at least"), "{msg}");
    assert!(msg.contains(&min.to_string()), "{msg}");
}

#[test]
fn a_changed_or_missing_x_is_refused() {
    let cfg = config(CellKind::Gru, 1, false, true, false);
    let mut p = Problem::new(cfg, 4, 2, None, 5);
    let (_, _, tape) = p.run(Keep::Everything);
    let tape = tape.unwrap();
    assert!(tape.needs_x());
    let wv = views(&p.w);
    let err = backward(
        &cfg,
        &wv,
        &tape,
        None,
        p.r_out.view(),
        None,
        &Control::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("x:"), "{err}");
    p.x[[0, 0, 0]] += 1.0;
    let wv = views(&p.w);
    let err = backward(
        &cfg,
        &wv,
        &tape,
        Some(p.x.view()),
        p.r_out.view(),
        None,
        &Control::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("x: differs"), "{err}");
}

mod split_rows;
