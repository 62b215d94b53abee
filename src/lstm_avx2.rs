//! The `f32` LSTM kernels written with AVX2+FMA intrinsics (used at the AVX2 and AVX-512
//! levels; the portable kernels of `cell.rs` serve the baseline level and `f64`).
//!
//! The portable kernels compute each activation as a Horner polynomial followed by a
//! quotient, one long dependency chain per vector; with five activations per unit the
//! LSTM cell cost as much as a third of the per-step product. Here the exponential's
//! polynomial is evaluated in Estrin's scheme and all the vectors of a kernel iteration
//! go through the activations stage by stage, so their short chains overlap; `tanh` comes
//! from `expm1` (no second polynomial for small arguments); and the quotients are
//! hardware divisions, which run beside the multiply-add units. Measured on one core
//! (AMD EPYC, AVX2): 3.6 ns per unit for the forward cell against 5.8 ns before; on the
//! AVX-512 host (`tests::cell_rate`, alternating blocks), with each kernel's body inlined
//! (see [`lanes`]) and the AVX-512 level's exact scaling (`vscalefps`): forward 3.3 →
//! 2.7 ns per unit, backward 1.7 (AVX2 level on the same host: 3.2 and 2.0). NaN
//! propagates through the arithmetic. Results differ from the baseline level by a few ulp
//! (each activation stays within 4 ulp of the correctly rounded value over the whole
//! range, 2 seen, tested below with the baseline's sweep), and stay the same for any
//! number of threads (every unit is computed by the same instructions wherever a tile
//! boundary falls: row tails go through a padded vector).
//!
//! Forward, the rebuilt state `h = o·tanh(c)` and backward's recomputation of `tanh(c')`
//! all use the functions here at these levels, so they agree bitwise with each other.

use std::arch::x86_64::*;

/// Lanes of a `__m256` of `f32`.
const L: usize = 8;

/// `1.5 · 2^23`, `log2 e`, `ln 2` split as in `simd::exp_neg`.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
const LN2_LO: f32 = 1.428_606_8e-6;

/// `f` lane-wise over two arrays of vectors.
#[inline(always)]
fn zip<const N: usize>(
    a: [__m256; N],
    b: [__m256; N],
    f: impl Fn(__m256, __m256) -> __m256,
) -> [__m256; N] {
    std::array::from_fn(|j| f(a[j], b[j]))
}

/// Defines `$activate`, the activations of `N` vectors at once, with the CPU features
/// `$feat` and the powers of two of `$pow2` (see [`pow2_int`], [`pow2_scalef`]).
macro_rules! activations {
    ($activate:ident, $feat:literal, $pow2:ident) => {
        /// The activations of `N` vectors at once: `tanh` where `is_tanh(j)`, the logistic
        /// sigmoid elsewhere. Both reduce `y = −|x|` (sigmoid) or `y = −2|x|` (`tanh`) to
        /// `y = k·ln 2 + r`, `|r| ≤ ln2/2`, and take `expm1(r) = r + r²·P(r)` from one degree-5
        /// polynomial (the Taylor series to `r⁷`, truncation < 6e-9 relative), evaluated in
        /// Estrin's scheme, whose short dependency chains let the vectors' chains overlap.
        ///
        /// Sigmoid: `e = exp(y) = 2^k·(1 + expm1(r))` (`$pow2`: rounded once, where it is
        /// normal with either), then `1 / (1 + e)` for `x ≥ 0`,
        /// `e / (1 + e)` below. `tanh(|x|) = −m / (2 + m)` with `m = expm1(y) = 2^k·expm1(r) +
        /// (2^k − 1)` (one rounding; `y` is clamped at −20, below which `tanh` is ±1 in f32),
        /// which does not cancel for small `|x|`; the sign of `x` (±0 included) is put back.
        /// The quotients are correctly rounded divisions (the divider runs beside the
        /// multiply-add units). A lane's result does not depend on `N` or on the other vectors.
        #[inline]
        #[target_feature(enable = $feat)]
        fn $activate<const N: usize>(
            x: [__m256; N],
            is_tanh: impl Fn(usize) -> bool,
        ) -> [__m256; N] {
            let c = |v: f32| _mm256_set1_ps(v);
            let fma = |a, b, c| _mm256_fmadd_ps(a, b, c);
            let sign = c(-0.0);
            let one = c(1.0);
            let a = x.map(|x| _mm256_andnot_ps(sign, x));
            // `max(c, y)` returns `y` when it is NaN.
            let y: [__m256; N] = std::array::from_fn(|j| {
                if is_tanh(j) {
                    _mm256_max_ps(c(-20.0), _mm256_mul_ps(c(-2.0), a[j]))
                } else {
                    _mm256_max_ps(c(-110.0), _mm256_or_ps(x[j], sign))
                }
            });
            // Stage by stage over all the vectors, so that their chains interleave.
            let t = y.map(|y| fma(y, c(LOG2E), c(ROUND_MAGIC)));
            let k = t.map(|t| _mm256_sub_ps(t, c(ROUND_MAGIC)));
            let r = zip(k, y, |k, y| _mm256_fnmadd_ps(k, c(LN2_HI), y));
            let r = zip(k, r, |k, r| _mm256_fnmadd_ps(k, c(LN2_LO), r));
            let r2 = r.map(|r| _mm256_mul_ps(r, r));
            let lo = r.map(|r| fma(r, c(1.0 / 6.0), c(0.5)));
            let mid = r.map(|r| fma(r, c(1.0 / 120.0), c(1.0 / 24.0)));
            let hi = r.map(|r| fma(r, c(1.0 / 5040.0), c(1.0 / 720.0)));
            let r4 = r2.map(|r2| _mm256_mul_ps(r2, r2));
            let b = std::array::from_fn::<_, N, _>(|j| fma(r2[j], mid[j], lo[j]));
            let p = std::array::from_fn::<_, N, _>(|j| fma(r4[j], hi[j], b[j]));
            let em1_r = std::array::from_fn::<_, N, _>(|j| fma(r2[j], p[j], r[j]));
            // tanh: `m = expm1(y)`; sigmoid: `e = exp(y)`.
            let m: [__m256; N] = std::array::from_fn(|j| $pow2(t[j], k[j], em1_r[j], is_tanh(j)));
            let q: [__m256; N] = std::array::from_fn(|j| {
                if is_tanh(j) {
                    _mm256_div_ps(_mm256_xor_ps(m[j], sign), _mm256_add_ps(c(2.0), m[j]))
                } else {
                    let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(x[j], _mm256_setzero_ps());
                    _mm256_div_ps(_mm256_blendv_ps(one, m[j], neg), _mm256_add_ps(one, m[j]))
                }
            });
            std::array::from_fn(|j| {
                if is_tanh(j) {
                    _mm256_or_ps(_mm256_andnot_ps(sign, q[j]), _mm256_and_ps(x[j], sign))
                } else {
                    q[j]
                }
            })
        }
    };
}

activations!(activate, "avx2,fma", pow2_int);
activations!(activate_avx512, "avx2,fma,avx512f,avx512vl", pow2_scalef);

/// `m = expm1(y) = 2^k·expm1(r) + (2^k − 1)` where `tanh`, else `e = exp(y) =
/// 2^k·(1 + expm1(r))`, each as one fused multiply-add (one rounding), from `t`, the
/// rounding of `y·log2 e` (`k` in its low bits, see [`activate`]), and `em1 = expm1(r)`;
/// `2^k` built in the exponent field. Sigmoid's `k` in [−159, 0] takes two normal powers
/// of two, whose product is exact also as a subnormal; `tanh`'s `k ≥ −29` one.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn pow2_int(t: __m256, _k: __m256, em1: __m256, is_tanh: bool) -> __m256 {
    let bias = _mm256_set1_epi32(127);
    let pow2 = |e: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(e, bias)));
    let ki = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32),
    );
    if is_tanh {
        let scale = pow2(ki);
        _mm256_fmadd_ps(scale, em1, _mm256_sub_ps(scale, _mm256_set1_ps(1.0)))
    } else {
        let k1 = _mm256_srai_epi32::<1>(ki);
        let scale = _mm256_mul_ps(pow2(k1), pow2(_mm256_sub_epi32(ki, k1)));
        _mm256_fmadd_ps(scale, em1, scale)
    }
}

/// [`pow2_int`] with AVX-512's `vscalefps`, which multiplies by `2^k` exactly (`k` as a
/// float) in one instruction: `tanh`'s `2^k` is the same, sigmoid's `e` is `1 + em1`
/// rounded, then scaled, which is the same rounding for a normal result (and at most one
/// unit of the last place more where `e` is subnormal, `x < −87`). Measured per forward
/// unit: see `tests::cell_rate`.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
fn pow2_scalef(_t: __m256, k: __m256, em1: __m256, is_tanh: bool) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    if is_tanh {
        let scale = _mm256_scalef_ps(one, k);
        _mm256_fmadd_ps(scale, em1, _mm256_sub_ps(scale, one))
    } else {
        _mm256_scalef_ps(_mm256_add_ps(one, em1), k)
    }
}

/// Zero for lanes below `min_positive / epsilon` in magnitude (see `cell::ftz`); NaN stays.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn ftz(v: __m256) -> __m256 {
    let tiny = _mm256_set1_ps(f32::MIN_POSITIVE / f32::EPSILON);
    let small = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(_mm256_set1_ps(-0.0), v), tiny);
    _mm256_andnot_ps(small, v)
}

/// Runs `body` over the rows' units `U` vectors of 8 at a time: whole groups in place,
/// the tail (fewer than `U · 8`) copied into zero-padded vectors and back, so that every
/// unit goes through the same instructions. `ins` are read, `outs` read and written; the
/// body sees slot `q`'s vectors as `x[q]` / `y[q]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lanes<const I: usize, const O: usize, const U: usize>(
    n: usize,
    ins: [&[f32]; I],
    outs: [&mut [f32]; O],
    mut body: impl FnMut([[__m256; U]; I], &mut [[__m256; U]; O]),
) {
    const { assert!(U * L <= 64) };
    let w = U * L;
    assert!(
        ins.iter().all(|s| s.len() >= n) && outs.iter().all(|s| s.len() >= n),
        "LSTM kernel: a row is shorter than its units"
    );
    let whole = n - n % w;
    let mut outs = outs;
    let load = |p: *const f32| -> [__m256; U] {
        // SAFETY: the callers pass pointers valid for `U · L` reads.
        std::array::from_fn(|u| unsafe { _mm256_loadu_ps(p.add(u * L)) })
    };
    // One call of `body` for the whole groups and the tail alike: a closure called from
    // one place is inlined, one called from two was left as a call (its vectors then went
    // through the stack, and the caller's wide reloads of the body's narrow stores
    // stalled on store forwarding: 38% of the forward kernel's time).
    for j in (0..n).step_by(w) {
        let tail = j == whole;
        let pad = |s: &[f32]| {
            let mut b = [0.0f32; 64];
            b[..n - whole].copy_from_slice(&s[whole..n]);
            load(b.as_ptr())
        };
        // Whole groups are read and written in place: every slice holds at least `n`
        // elements (asserted above) and `j + w <= whole <= n`.
        let x = ins.map(|s| if tail { pad(s) } else { load(s[j..].as_ptr()) });
        let mut y = std::array::from_fn(|q| {
            if tail {
                pad(outs[q])
            } else {
                load(outs[q][j..].as_ptr())
            }
        });
        body(x, &mut y);
        for (o, v) in outs.iter_mut().zip(y) {
            if tail {
                let mut b = [0.0f32; 64];
                for (u, v) in v.into_iter().enumerate() {
                    // SAFETY: `b` holds 64 >= `U · L` floats (asserted above).
                    unsafe { _mm256_storeu_ps(b.as_mut_ptr().add(u * L), v) };
                }
                o[whole..n].copy_from_slice(&b[..n - whole]);
            } else {
                for (u, v) in v.into_iter().enumerate() {
                    // SAFETY: as above, in place.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(j + u * L), v) };
                }
            }
        }
    }
}

/// Vectors per slot in the forward kernel's first pass (the gates: `4 · U_GATES`
/// independent chains through [`activate`] at once) and in the passes that take `tanh` of
/// the cell state alone (forward's second pass, [`lstm_output`]). The activations are
/// dependency chains (a range reduction, a polynomial, a division), so a few vectors at a
/// time leave the core waiting on latency, and too many spill registers. Measured per
/// forward unit: AVX2 host, one pass: 3.9 ns at one vector per slot, 3.6 at two, 7.1 at
/// four (spilled); AVX-512 host (AMD EPYC, 32 `ymm` registers, alternating blocks in one
/// process): 4.6 ns for the one pass of two vectors, 3.7 for these two passes; three gate
/// vectors, or six or eight state vectors, per slot spill.
const U_GATES: usize = 2;
const U_STATE: usize = 4;

/// The kernels, compiled once per level: `$feat` adds AVX-512F and AVX-512VL at the
/// AVX-512 level, which gives the compiler 32 `ymm` registers instead of 16 and `$activate`
/// its exact scaling instruction (the arithmetic stays 8 lanes wide, and both copies give
/// the same bits except sigmoid's subnormal results, see [`pow2_scalef`]); `$u_backward`
/// vectors per slot in the backward kernel (see [`U_BACKWARD`]).
macro_rules! lstm_kernels {
    ($feat:literal, $activate:ident, $u_backward:expr, $forward:ident, $output:ident, $backward:ident) => {
        /// Forward step of a row's units in place: the pre-activations in `gi, gf, gg,
        /// go` become the activated gates, `c` becomes `c' = f·c + i·g` and `h` becomes
        /// `o·tanh(c')`. Two passes over the row: the gates and `c'` (the four gates of
        /// `U_GATES` vectors through the activations together), then `o·tanh(c')` over
        /// `U_STATE` vectors at a time, so that neither pass waits on a few long chains.
        ///
        /// # Safety
        /// The CPU must have the features `$feat`.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $forward(
            gi: &mut [f32],
            gf: &mut [f32],
            gg: &mut [f32],
            go: &mut [f32],
            c: &mut [f32],
            h: &mut [f32],
        ) {
            let n = h.len();
            let (gi, gf, gg, go, c) = (
                &mut gi[..n],
                &mut gf[..n],
                &mut gg[..n],
                &mut go[..n],
                &mut c[..n],
            );
            lanes::<0, 5, U_GATES>(n, [], [gi, gf, gg, go, c], |[], [i, f, g, o, c]| {
                // The closure inherits the function's target features (so the
                // activations inline into it); `g` is the tanh gate.
                let pre: [__m256; 4 * U_GATES] =
                    std::array::from_fn(|j| [*i, *f, *g, *o][j % 4][j / 4]);
                let act = $activate(pre, |j| j % 4 == 2);
                for u in 0..U_GATES {
                    [i[u], f[u], g[u], o[u]] = std::array::from_fn(|k| act[4 * u + k]);
                    c[u] = cell(f[u], c[u], i[u], g[u]);
                }
            });
            lanes::<2, 1, U_STATE>(n, [&*go, &*c], [h], |[o, c], [h]| {
                *h = zip(o, $activate(c, |_| true), |o, t| _mm256_mul_ps(o, t));
            });
        }

        /// `h = o·tanh(c)` over a row (the state a tape left out, rebuilt bitwise as
        /// forward computed it).
        ///
        /// # Safety
        /// The CPU must have the features `$feat`.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $output(o: &[f32], c: &[f32], h: &mut [f32]) {
            let n = h.len();
            lanes::<2, 1, U_STATE>(n, [&o[..n], &c[..n]], [h], |[o, c], [h]| {
                *h = zip(o, $activate(c, |_| true), |o, t| _mm256_mul_ps(o, t));
            });
        }

        /// Backward step of a row's units (the equations of
        /// `cell::lstm_backward_kernel`), with `tanh(c')` recomputed as forward computed
        /// it.
        ///
        /// # Safety
        /// The CPU must have the features `$feat`.
        #[allow(clippy::too_many_arguments)] // one slice per gate, as the portable kernel
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $backward(
            gi: &[f32],
            gf: &[f32],
            gg: &[f32],
            go: &[f32],
            c_prev: &[f32],
            dh: &mut [f32],
            dc: &mut [f32],
            di: &mut [f32],
            df: &mut [f32],
            dg: &mut [f32],
            d_o: &mut [f32],
        ) {
            const V: usize = $u_backward;
            let n = dh.len();
            let ins = [&gi[..n], &gf[..n], &gg[..n], &go[..n], &c_prev[..n]];
            let outs = [
                dh,
                &mut dc[..n],
                &mut di[..n],
                &mut df[..n],
                &mut dg[..n],
                &mut d_o[..n],
            ];
            lanes::<5, 6, V>(
                n,
                ins,
                outs,
                |[i, f, g, o, cp], [dh, dc, di, df, dg, d_o]| {
                    // The closure inherits the function's target features.
                    let one = _mm256_set1_ps(1.0);
                    let mul = |a, b| _mm256_mul_ps(a, b);
                    let tcs: [__m256; V] = $activate(
                        std::array::from_fn(|u| cell(f[u], cp[u], i[u], g[u])),
                        |_| true,
                    );
                    for u in 0..V {
                        let (i, f, g, o, cp, d, tc) =
                            (i[u], f[u], g[u], o[u], cp[u], dh[u], tcs[u]);
                        let dct =
                            _mm256_add_ps(dc[u], mul(mul(d, o), _mm256_sub_ps(one, mul(tc, tc))));
                        di[u] = ftz(mul(mul(mul(dct, g), i), _mm256_sub_ps(one, i)));
                        df[u] = ftz(mul(mul(mul(dct, cp), f), _mm256_sub_ps(one, f)));
                        dg[u] = ftz(mul(mul(dct, i), _mm256_sub_ps(one, mul(g, g))));
                        d_o[u] = ftz(mul(mul(mul(d, tc), o), _mm256_sub_ps(one, o)));
                        dc[u] = ftz(mul(dct, f));
                        dh[u] = _mm256_setzero_ps();
                    }
                },
            );
        }
    };
}

/// Vectors per slot in the AVX-512 level's backward kernel (one `tanh` per vector among
/// many products): four spill even with 32 registers (2.7 → 4.3 ns per unit); two with
/// them: 2.6 → 2.5. With 16 registers (the AVX2 level) two spill (1.97 → 3.26 ns per
/// unit against one), so that level runs one.
const U_BACKWARD: usize = 2;

lstm_kernels!(
    "avx2,fma",
    activate,
    1,
    lstm_forward,
    lstm_output,
    lstm_backward
);
lstm_kernels!(
    "avx2,fma,avx512f,avx512vl",
    activate_avx512,
    U_BACKWARD,
    lstm_forward_avx512,
    lstm_output_avx512,
    lstm_backward_avx512
);

/// `c' = f·c + i·g` as forward computes it (backward recomputes it the same way).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn cell(f: __m256, c: __m256, i: __m256, g: __m256) -> __m256 {
    _mm256_fmadd_ps(f, c, _mm256_mul_ps(i, g))
}

#[cfg(test)]
mod tests;
