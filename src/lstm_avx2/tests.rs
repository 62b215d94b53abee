//! Tests of the AVX2 / AVX-512 LSTM kernels: accuracy over the whole range, agreement
//! with the portable kernels and between the levels, and their speed (ignored).

use super::*;
use crate::simd::testing::{sweep, ulp_diff};

fn have_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn have_avx512() -> bool {
    have_avx2() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
}

/// `f` applied to 8 lanes at once, one lane read back.
fn one_lane(f: unsafe fn(__m256) -> __m256, x: f32) -> f32 {
    let mut out = [0.0f32; L];
    // SAFETY: the tests pass only functions whose CPU features they detected.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), f(_mm256_set1_ps(x))) };
    out[3]
}

#[target_feature(enable = "avx2,fma")]
fn sigmoid_v(x: __m256) -> __m256 {
    activate([x], |_| false)[0]
}

#[target_feature(enable = "avx2,fma")]
fn tanh_v(x: __m256) -> __m256 {
    activate([x], |_| true)[0]
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
fn sigmoid_v512(x: __m256) -> __m256 {
    activate_avx512([x], |_| false)[0]
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
fn tanh_v512(x: __m256) -> __m256 {
    activate_avx512([x], |_| true)[0]
}

/// The activations of each level this CPU has: (name, sigmoid, tanh).
#[allow(clippy::type_complexity)]
fn levels() -> Vec<(
    &'static str,
    unsafe fn(__m256) -> __m256,
    unsafe fn(__m256) -> __m256,
)> {
    let mut v: Vec<(
        &str,
        unsafe fn(__m256) -> __m256,
        unsafe fn(__m256) -> __m256,
    )> = Vec::new();
    if have_avx2() {
        v.push(("AVX2", sigmoid_v, tanh_v));
    }
    if have_avx512() {
        v.push(("AVX-512", sigmoid_v512, tanh_v512));
    }
    v
}

#[test]
fn activations_within_four_ulp_over_the_whole_range() {
    if !have_avx2() {
        eprintln!("skipped: no AVX2+FMA on this CPU");
        return;
    }
    for (name, sigmoid_v, tanh_v) in levels() {
        let mut worst = (0u32, 0u32);
        let mut check = |x: f32| {
            let want_t = (x as f64).tanh() as f32;
            let want_s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            let (t, s) = (one_lane(tanh_v, x), one_lane(sigmoid_v, x));
            let (dt, ds) = (ulp_diff(t, want_t), ulp_diff(s, want_s));
            assert!(dt <= 4, "{name}: tanh({x:e}) = {t:e}, want {want_t:e}");
            assert!(ds <= 4, "{name}: sigmoid({x:e}) = {s:e}, want {want_s:e}");
            worst = (worst.0.max(dt), worst.1.max(ds));
        };
        sweep(&mut check);
        check(-1e-45);
        eprintln!(
            "max ulp error ({name}): tanh {}, sigmoid {}",
            worst.0, worst.1
        );
        assert!(one_lane(tanh_v, -0.0).is_sign_negative());
        assert_eq!(one_lane(tanh_v, f32::NEG_INFINITY), -1.0);
        assert_eq!(one_lane(sigmoid_v, f32::NEG_INFINITY), 0.0);
        assert_eq!(one_lane(sigmoid_v, f32::INFINITY), 1.0);
        assert!(one_lane(sigmoid_v, f32::NAN).is_nan() && one_lane(tanh_v, f32::NAN).is_nan());
    }
}

/// The AVX-512 activations differ from the AVX2 ones only where sigmoid's result is
/// subnormal (by at most one unit there), as `pow2_scalef` says.
#[test]
fn avx512_activations_match_avx2_where_normal() {
    if !have_avx512() {
        eprintln!("skipped: no AVX-512F+VL on this CPU");
        return;
    }
    let mut differ = 0usize;
    sweep(&mut |x: f32| {
        let (t2, t5) = (one_lane(tanh_v, x), one_lane(tanh_v512, x));
        assert!(
            t2.to_bits() == t5.to_bits() || (t2.is_nan() && t5.is_nan()),
            "tanh({x:e})"
        );
        let (s2, s5) = (one_lane(sigmoid_v, x), one_lane(sigmoid_v512, x));
        if s2.is_nan() {
            assert!(s5.is_nan(), "sigmoid({x:e})");
        } else if s2.to_bits() != s5.to_bits() {
            assert!(
                s2 < f32::MIN_POSITIVE && ulp_diff(s2, s5) <= 1,
                "sigmoid({x:e})"
            );
            differ += 1;
        }
    });
    eprintln!("sigmoid: {differ} subnormal results differ by one unit");
}

type Forward = unsafe fn(&mut [f32], &mut [f32], &mut [f32], &mut [f32], &mut [f32], &mut [f32]);
type Output = unsafe fn(&[f32], &[f32], &mut [f32]);
type Backward = unsafe fn(
    &[f32],
    &[f32],
    &[f32],
    &[f32],
    &[f32],
    &mut [f32],
    &mut [f32],
    &mut [f32],
    &mut [f32],
    &mut [f32],
    &mut [f32],
);

/// The kernels of each level this CPU has.
fn kernel_levels() -> Vec<(&'static str, Forward, Output, Backward)> {
    let mut v: Vec<(&str, Forward, Output, Backward)> = Vec::new();
    if have_avx2() {
        v.push(("AVX2", lstm_forward, lstm_output, lstm_backward));
    }
    if have_avx512() {
        v.push((
            "AVX-512",
            lstm_forward_avx512,
            lstm_output_avx512,
            lstm_backward_avx512,
        ));
    }
    v
}

#[test]
fn kernels_agree_with_the_portable_ones_and_tails_with_whole_vectors() {
    if !have_avx2() {
        eprintln!("skipped: no AVX2+FMA on this CPU");
        return;
    }
    for (name, lstm_forward, lstm_output, lstm_backward) in kernel_levels() {
        eprintln!("{name}");
        let n = 21; // two whole vectors and a tail of 5
        let v = |s: f32| {
            (0..n)
                .map(|j| (j as f32 * 0.37 + s).sin() * 3.0)
                .collect::<Vec<_>>()
        };
        let (pi, pf, pg, po, c0) = (v(0.1), v(0.7), v(1.3), v(2.9), v(4.1));
        let run = |m: usize| {
            let (mut i, mut f, mut g, mut o, mut c) = (
                pi[..m].to_vec(),
                pf[..m].to_vec(),
                pg[..m].to_vec(),
                po[..m].to_vec(),
                c0[..m].to_vec(),
            );
            let mut h = vec![0.0; m];
            // SAFETY: the level's CPU features were detected (`kernel_levels`).
            unsafe { lstm_forward(&mut i, &mut f, &mut g, &mut o, &mut c, &mut h) };
            (i, f, g, o, c, h)
        };
        let (i, f, g, o, c, h) = run(n);
        // A tail element gets the same bits as the same element in a whole vector.
        let short = run(13);
        assert_eq!(&h[..13], &short.5[..]);
        assert_eq!(&c[..13], &short.4[..]);
        for j in 0..n {
            let s = |x: f32| 1.0 / (1.0 + (-(x as f64)).exp());
            let (ei, ef, eg, eo) = (s(pi[j]), s(pf[j]), (pg[j] as f64).tanh(), s(po[j]));
            let ec = ef * c0[j] as f64 + ei * eg;
            let eh = eo * ec.tanh();
            for (got, want) in [
                (i[j], ei),
                (f[j], ef),
                (g[j], eg),
                (o[j], eo),
                (c[j], ec),
                (h[j], eh),
            ] {
                assert!(
                    (got as f64 - want).abs() <= 4e-7 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
        let mut rebuilt = vec![0.0; n];
        // SAFETY: as above.
        unsafe { lstm_output(&o, &c, &mut rebuilt) };
        assert_eq!(rebuilt, h);
        // Backward: the same equations as the portable kernel, to rounding.
        let dh0 = v(5.3);
        let dc0 = v(6.7);
        let (mut dh, mut dc) = (dh0.clone(), dc0.clone());
        let mut d = [vec![0.0f32; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        let [di, df, dg, d_o] = d.each_mut();
        // SAFETY: as above.
        unsafe { lstm_backward(&i, &f, &g, &o, &c0, &mut dh, &mut dc, di, df, dg, d_o) };
        for j in 0..n {
            let (i, f, g, o, cp) = (
                i[j] as f64,
                f[j] as f64,
                g[j] as f64,
                o[j] as f64,
                c0[j] as f64,
            );
            let tc = (f * cp + i * g).tanh();
            let dct = dc0[j] as f64 + dh0[j] as f64 * o * (1.0 - tc * tc);
            let want = [
                dct * g * i * (1.0 - i),
                dct * cp * f * (1.0 - f),
                dct * i * (1.0 - g * g),
                dh0[j] as f64 * tc * o * (1.0 - o),
            ];
            for (got, want) in [di[j], df[j], dg[j], d_o[j]].into_iter().zip(want) {
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
            assert!((dc[j] as f64 - dct * f).abs() <= 1e-5 * (dct * f).abs().max(1.0));
            assert_eq!(dh[j], 0.0);
        }
    }
}

/// The cell kernels' time per unit on one core, at each level, in alternating blocks,
/// for measuring them (not a check):
/// `cargo test --release --lib -- --exact lstm_avx2::tests::cell_rate --ignored --nocapture`
/// (a batch of 16 rows of 128 units, the small benchmark shape's step).
#[test]
#[ignore]
fn cell_rate() {
    let (rows, n) = (16, 128);
    let v = |s: f32| {
        (0..rows * n)
            .map(|j| (j as f32 * 0.37 + s).sin() * 3.0)
            .collect::<Vec<_>>()
    };
    let gates = [v(0.1), v(0.7), v(1.3), v(2.9)];
    let (c0, dh0) = (v(4.1), v(5.3));
    let levels = kernel_levels();
    // Per level: forward and backward ns per unit of each round.
    let mut times = vec![(Vec::new(), Vec::new()); levels.len()];
    let per_unit = |f: &mut dyn FnMut()| {
        let reps = 2000;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        t0.elapsed().as_secs_f64() * 1e9 / (reps * rows * n) as f64
    };
    for _ in 0..7 {
        for ((_, forward, _, backward), (tf, tb)) in levels.iter().zip(&mut times) {
            let [mut i, mut f, mut g, mut o] = gates.clone();
            let (mut c, mut h) = (c0.clone(), vec![0.0f32; rows * n]);
            tf.push(per_unit(&mut || {
                i.copy_from_slice(&gates[0]);
                f.copy_from_slice(&gates[1]);
                g.copy_from_slice(&gates[2]);
                o.copy_from_slice(&gates[3]);
                c.copy_from_slice(&c0);
                for r in (0..rows * n).step_by(n) {
                    let row = r..r + n;
                    // SAFETY: the level's CPU features were detected.
                    unsafe {
                        forward(
                            &mut i[row.clone()],
                            &mut f[row.clone()],
                            &mut g[row.clone()],
                            &mut o[row.clone()],
                            &mut c[row.clone()],
                            &mut h[row],
                        )
                    };
                }
            }));
            let (mut dh, mut dc) = (dh0.clone(), dh0.clone());
            let mut d: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0.0; rows * n]);
            tb.push(per_unit(&mut || {
                dh.copy_from_slice(&dh0);
                let [di, df, dg, d_o] = d.each_mut();
                for r in (0..rows * n).step_by(n) {
                    let row = r..r + n;
                    // SAFETY: as above.
                    unsafe {
                        backward(
                            &i[row.clone()],
                            &f[row.clone()],
                            &g[row.clone()],
                            &o[row.clone()],
                            &c0[row.clone()],
                            &mut dh[row.clone()],
                            &mut dc[row.clone()],
                            &mut di[row.clone()],
                            &mut df[row.clone()],
                            &mut dg[row.clone()],
                            &mut d_o[row],
                        )
                    };
                }
            }));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for ((name, ..), (tf, tb)) in levels.iter().zip(&mut times) {
        let (f, b) = (median(tf), median(tb));
        println!("LSTM cell {name}, ns per unit (copies of the inputs included): forward {f:.2}, backward {b:.2}");
    }
}
