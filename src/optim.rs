//! The update steps of the optimizers (SGD, RMSprop, Adam, AdamW), elementwise over one
//! parameter's flat values and its buffers, in the parameter's float type, with
//! `torch.optim`'s formulas (single-tensor path). Python keeps the step counts, the
//! buffers and the hyperparameter checks; this is the arithmetic.
//!
//! A large parameter is split into blocks of [`OPTIM_BLOCK`] values run on the pool
//! (`rayon::join`, inside `parallel::run`); every element's arithmetic is the same
//! whatever the split, so results do not depend on the number of threads.

use crate::error::{Error, Result};
use crate::float::Float;

/// Values per block of parallel work.
pub const OPTIM_BLOCK: usize = 1 << 14;

/// A parameter, its gradient and up to three buffers, all of the same length.
struct Lanes<'a, T> {
    p: &'a mut [T],
    g: &'a [T],
    b: [Option<&'a mut [T]>; 3],
}

impl<'a, T> Lanes<'a, T> {
    fn split(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let mut left: [Option<&'a mut [T]>; 3] = [None, None, None];
        let mut right: [Option<&'a mut [T]>; 3] = [None, None, None];
        for (i, b) in self.b.into_iter().enumerate() {
            if let Some(b) = b {
                let (l, r) = b.split_at_mut(mid);
                left[i] = Some(l);
                right[i] = Some(r);
            }
        }
        (
            Lanes {
                p: p0,
                g: g0,
                b: left,
            },
            Lanes {
                p: p1,
                g: g1,
                b: right,
            },
        )
    }
}

fn run_blocks<T: Float, F: Fn(Lanes<'_, T>) + Sync>(lanes: Lanes<'_, T>, f: &F) {
    let n = lanes.p.len();
    if n <= OPTIM_BLOCK || crate::parallel::current_threads() < 2 {
        f(lanes);
        return;
    }
    let mid = (n / 2).div_ceil(OPTIM_BLOCK) * OPTIM_BLOCK;
    let (a, b) = lanes.split(mid.min(n));
    rayon::join(|| run_blocks(a, f), || run_blocks(b, f));
}

fn lanes<'a, T: Float>(
    p: &'a mut [T],
    g: &'a [T],
    bufs: [(&str, Option<&'a mut [T]>); 3],
) -> Result<Lanes<'a, T>> {
    let n = p.len();
    if g.len() != n {
        return Err(Error::shape("grad", format!("({n},)"), &[g.len()]));
    }
    let mut b: [Option<&'a mut [T]>; 3] = [None, None, None];
    for (i, (name, buf)) in bufs.into_iter().enumerate() {
        if let Some(buf) = buf {
            if buf.len() != n {
                return Err(Error::shape(name, format!("({n},)"), &[buf.len()]));
            }
            b[i] = Some(buf);
        }
    }
    Ok(Lanes { p, g, b })
}

fn t<T: Float>(v: f64) -> T {
    T::from(v).unwrap_or_else(T::nan)
}

/// SGD's hyperparameters (`torch.optim.SGD`).
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// One SGD step. `momentum_buffer` is required when `momentum > 0`; `first` says it holds
/// nothing yet (it is then set to the gradient, as PyTorch does on the first step).
pub fn sgd_step<T: Float>(
    h: &Sgd,
    p: &mut [T],
    g: &[T],
    momentum_buffer: Option<&mut [T]>,
    first: bool,
) -> Result<()> {
    if h.momentum != 0.0 && momentum_buffer.is_none() {
        return Err(Error::value(
            "momentum_buffer",
            "required when momentum > 0",
        ));
    }
    let l = lanes(
        p,
        g,
        [("momentum_buffer", momentum_buffer), ("", None), ("", None)],
    )?;
    let (lr, wd, mom, damp) = (
        t::<T>(h.lr),
        t::<T>(h.weight_decay),
        t::<T>(h.momentum),
        t::<T>(1.0 - h.dampening),
    );
    let (decay, use_mom, nesterov) = (h.weight_decay != 0.0, h.momentum != 0.0, h.nesterov);
    run_blocks(l, &|l: Lanes<'_, T>| {
        let [buf, _, _] = l.b;
        let mut buf = buf;
        for (i, (pv, &gv)) in l.p.iter_mut().zip(l.g).enumerate() {
            let mut d = if decay { gv + wd * *pv } else { gv };
            if use_mom {
                if let Some(b) = buf.as_deref_mut() {
                    b[i] = if first { d } else { mom * b[i] + damp * d };
                    d = if nesterov { d + mom * b[i] } else { b[i] };
                }
            }
            *pv -= lr * d;
        }
    });
    Ok(())
}

/// RMSprop's hyperparameters (`torch.optim.RMSprop`).
#[derive(Debug, Clone, Copy)]
pub struct RmsProp {
    pub lr: f64,
    pub alpha: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub centered: bool,
}

/// One RMSprop step; `grad_avg` is required when centered, `momentum_buffer` when
/// `momentum > 0`.
pub fn rmsprop_step<T: Float>(
    h: &RmsProp,
    p: &mut [T],
    g: &[T],
    square_avg: &mut [T],
    grad_avg: Option<&mut [T]>,
    momentum_buffer: Option<&mut [T]>,
) -> Result<()> {
    if h.centered && grad_avg.is_none() {
        return Err(Error::value("grad_avg", "required when centered"));
    }
    if h.momentum > 0.0 && momentum_buffer.is_none() {
        return Err(Error::value(
            "momentum_buffer",
            "required when momentum > 0",
        ));
    }
    let l = lanes(
        p,
        g,
        [
            ("square_avg", Some(square_avg)),
            ("grad_avg", grad_avg),
            ("momentum_buffer", momentum_buffer),
        ],
    )?;
    let (lr, alpha, one_m_alpha, eps, wd, mom) = (
        t::<T>(h.lr),
        t::<T>(h.alpha),
        t::<T>(1.0 - h.alpha),
        t::<T>(h.eps),
        t::<T>(h.weight_decay),
        t::<T>(h.momentum),
    );
    let (decay, centered, use_mom) = (h.weight_decay != 0.0, h.centered, h.momentum > 0.0);
    run_blocks(l, &|l: Lanes<'_, T>| {
        let [v, m, buf] = l.b;
        let (Some(v), mut m, mut buf) = (v, m, buf) else {
            return;
        };
        for (i, (pv, &gv)) in l.p.iter_mut().zip(l.g).enumerate() {
            let d = if decay { gv + wd * *pv } else { gv };
            v[i] = alpha * v[i] + one_m_alpha * d * d;
            let avg = match m.as_deref_mut() {
                Some(m) if centered => {
                    m[i] += one_m_alpha * (d - m[i]);
                    (v[i] - m[i] * m[i]).sqrt() + eps
                }
                _ => v[i].sqrt() + eps,
            };
            match buf.as_deref_mut() {
                Some(b) if use_mom => {
                    b[i] = mom * b[i] + d / avg;
                    *pv -= lr * b[i];
                }
                _ => *pv -= lr * (d / avg),
            }
        }
    });
    Ok(())
}

/// Adam's (and AdamW's) hyperparameters and the parameter's step count `step` (from 1).
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW: `p *= 1 − lr · weight_decay` first instead of L2 in the gradient.
    pub decoupled: bool,
    pub amsgrad: bool,
    pub step: u64,
}

/// One Adam/AdamW step; `max_exp_avg_sq` is required with `amsgrad`.
pub fn adam_step<T: Float>(
    h: &Adam,
    p: &mut [T],
    g: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    max_exp_avg_sq: Option<&mut [T]>,
) -> Result<()> {
    if h.amsgrad && max_exp_avg_sq.is_none() {
        return Err(Error::value("max_exp_avg_sq", "required with amsgrad"));
    }
    if h.step == 0 {
        return Err(Error::value("step", "expected the step count, from 1"));
    }
    let l = lanes(
        p,
        g,
        [
            ("exp_avg", Some(exp_avg)),
            ("exp_avg_sq", Some(exp_avg_sq)),
            ("max_exp_avg_sq", max_exp_avg_sq),
        ],
    )?;
    let tn = i32::try_from(h.step).unwrap_or(i32::MAX);
    let step_size = t::<T>(h.lr / (1.0 - h.beta1.powi(tn)));
    let bc2 = t::<T>((1.0 - h.beta2.powi(tn)).sqrt());
    let (b2, one_m_b1, one_m_b2, eps, wd) = (
        t::<T>(h.beta2),
        t::<T>(1.0 - h.beta1),
        t::<T>(1.0 - h.beta2),
        t::<T>(h.eps),
        t::<T>(h.weight_decay),
    );
    let shrink = t::<T>(1.0 - h.lr * h.weight_decay);
    let (decay, decoupled, ams) = (h.weight_decay != 0.0, h.decoupled, h.amsgrad);
    run_blocks(l, &|l: Lanes<'_, T>| {
        let [m, v, vmax] = l.b;
        let (Some(m), Some(v), mut vmax) = (m, v, vmax) else {
            return;
        };
        for (i, (pv, &gv)) in l.p.iter_mut().zip(l.g).enumerate() {
            let mut d = gv;
            if decay {
                if decoupled {
                    *pv *= shrink;
                } else {
                    d = gv + wd * *pv;
                }
            }
            m[i] += one_m_b1 * (d - m[i]);
            v[i] = b2 * v[i] + one_m_b2 * d * d;
            let second = match vmax.as_deref_mut() {
                Some(x) if ams => {
                    if v[i] > x[i] || v[i].is_nan() {
                        x[i] = v[i];
                    }
                    x[i]
                }
                _ => v[i],
            };
            let denom = second.sqrt() / bc2 + eps;
            *pv -= step_size * (m[i] / denom);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests;
