use super::*;

fn wave(n: usize, seed: f64) -> Vec<f64> {
    (0..n).map(|i| ((i as f64 + seed) * 0.377).sin()).collect()
}

#[test]
fn sgd_momentum_nesterov_by_hand() {
    let h = Sgd {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.5,
        nesterov: true,
    };
    let mut p = vec![1.0f64, -2.0];
    let mut buf = vec![0.0; 2];
    sgd_step(&h, &mut p, &[0.5, 1.0], Some(&mut buf), true).unwrap();
    // d = g + 0.5 p = [1.0, 0.0]; buf = d; step = d + 0.9 buf = [1.9, 0]
    assert_eq!(buf, vec![1.0, 0.0]);
    assert!((p[0] - 0.81).abs() < 1e-15 && p[1] == -2.0);
    let err = sgd_step(&h, &mut p, &[0.5], Some(&mut buf), false).unwrap_err();
    assert_eq!(err.to_string(), "grad: expected shape (2,), got (1,)");
}

#[test]
fn adam_first_step_moves_by_lr() {
    let h = Adam {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 0.0,
        weight_decay: 0.0,
        decoupled: false,
        amsgrad: true,
        step: 1,
    };
    let mut p = vec![0.0f32, 1.0, 2.0];
    let (mut m, mut v, mut vm) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
    adam_step(
        &h,
        &mut p,
        &[3.0, -0.5, 1e-3],
        &mut m,
        &mut v,
        Some(&mut vm),
    )
    .unwrap();
    for (got, want) in p.iter().zip([-0.01f32, 1.01, 1.99]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}

#[test]
fn results_do_not_depend_on_threads() {
    let n = 5 * OPTIM_BLOCK + 17;
    let g = wave(n, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut p = wave(n, 0.0);
            let (mut a, mut b, mut c) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            let h = RmsProp {
                lr: 0.01,
                alpha: 0.9,
                eps: 1e-8,
                weight_decay: 0.1,
                momentum: 0.5,
                centered: true,
            };
            for _ in 0..3 {
                rmsprop_step(&h, &mut p, &g, &mut a, Some(&mut b), Some(&mut c)).unwrap();
            }
            let h = Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.01,
                decoupled: true,
                amsgrad: false,
                step: 1,
            };
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            adam_step(&h, &mut p, &g, &mut m, &mut v, None).unwrap();
            p.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        })
    };
    let one = run(1);
    assert!(one.iter().all(|&b| f64::from_bits(b).is_finite()));
    assert_eq!(one, run(3));
}
