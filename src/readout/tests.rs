use super::*;
use ndarray::{array, Array2};

fn wave(n: usize, seed: f64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as f64 + seed) * 0.731).sin() * 1.7)
        .collect()
}

#[test]
fn linear_matches_the_definition_and_its_gradients() {
    let x = Array2::from_shape_vec((5, 3), wave(15, 0.0)).unwrap();
    let w = Array2::from_shape_vec((4, 3), wave(12, 3.0)).unwrap();
    let b = array![0.5, -1.0, 2.0, 0.25];
    let y = linear_forward(x.view(), w.view(), Some(b.view()), 2).unwrap();
    let want = x.dot(&w.t()) + &b;
    assert!((&y - &want).iter().all(|d| d.abs() < 1e-12));
    let dy = Array2::from_shape_vec((5, 4), wave(20, 7.0)).unwrap();
    let (dx, dw, db) = linear_backward(x.view(), w.view(), dy.view(), true, 1).unwrap();
    assert!((&dx - &dy.dot(&w)).iter().all(|d| d.abs() < 1e-12));
    assert!((&dw - &dy.t().dot(&x)).iter().all(|d| d.abs() < 1e-12));
    let db = db.unwrap();
    assert!((&db - &dy.sum_axis(Axis(0)))
        .iter()
        .all(|d| d.abs() < 1e-12));
    let err = linear_forward(x.view(), w.t(), None, 1).unwrap_err();
    assert!(
        err.to_string().starts_with("x: expected shape (N, 4)"),
        "{err}"
    );
}

#[test]
fn embedding_gradient_adds_rows_by_token_and_skips_padding() {
    let d = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
    let g = embedding_backward(&[2, 0, 2, 1], d.view(), 4, Some(1)).unwrap();
    assert_eq!(g, array![[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [0.0, 0.0]]);
    let err = embedding_backward(&[2, 0, 4, 1], d.view(), 4, None).unwrap_err();
    assert_eq!(err.to_string(), "x: expected token ids in [0, 4), got 4");
}

#[test]
fn mse_with_mask_and_empty_selection() {
    let p = [1.0, 2.0, 3.0, 4.0];
    let t = [0.0, 0.0, 1.0, 1.0];
    let r = mse(&p, &t, 2, Some(&[false, true])).unwrap();
    assert!((r.loss - (4.0 + 9.0) / 2.0).abs() < 1e-15);
    assert_eq!(r.grad, vec![0.0, 0.0, 2.0, 3.0]);
    let none = mse(&p, &t, 2, Some(&[false, false])).unwrap();
    assert_eq!((none.loss, none.grad), (0.0, vec![0.0; 4]));
}

fn ce_reference(z: &[f64], c: usize, labels: &[i64]) -> (f64, Vec<f64>) {
    let n = labels.len() as f64;
    let mut loss = 0.0;
    let mut g = vec![0.0; z.len()];
    for (r, &l) in labels.iter().enumerate() {
        let row = &z[r * c..(r + 1) * c];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        loss -= row[l as usize] - m - s.ln();
        for k in 0..c {
            g[r * c + k] = ((row[k] - m).exp() / s - f64::from(k == l as usize)) / n;
        }
    }
    (loss / n, g)
}

#[test]
fn cross_entropy_matches_a_plain_reference_and_finite_differences() {
    let (rows, c) = (700, 13);
    let z = wave(rows * c, 1.0)
        .iter()
        .map(|v| v * 3.0)
        .collect::<Vec<_>>();
    let labels: Vec<i64> = (0..rows).map(|r| (r * 7 % c) as i64).collect();
    let got = cross_entropy(&z, c, &labels, None).unwrap();
    let (loss, g) = ce_reference(&z, c, &labels);
    assert!((got.loss - loss).abs() < 1e-12);
    assert!(got.grad.iter().zip(&g).all(|(a, b)| (a - b).abs() < 1e-15));
    // central differences on a few logits
    for &i in &[0usize, 5, 13 * 300 + 2, rows * c - 1] {
        let h = 1e-6;
        let mut zp = z.clone();
        zp[i] += h;
        let mut zm = z.clone();
        zm[i] -= h;
        let fd = (cross_entropy(&zp, c, &labels, None).unwrap().loss
            - cross_entropy(&zm, c, &labels, None).unwrap().loss)
            / (2.0 * h);
        assert!((fd - got.grad[i]).abs() < 1e-9, "{fd} vs {}", got.grad[i]);
    }
    // f32 within f32 rounding of the f64 result
    let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
    let g32 = cross_entropy(&z32, c, &labels, None).unwrap();
    let (l64, _) = ce_reference(
        &z32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        c,
        &labels,
    );
    assert!((g32.loss - l64).abs() < 1e-6 * l64.abs());
}

#[test]
fn cross_entropy_mask_labels_and_threads() {
    let (rows, c) = (3000, 40);
    let z: Vec<f32> = wave(rows * c, 2.0).iter().map(|&v| v as f32).collect();
    let mut labels: Vec<i64> = (0..rows).map(|r| (r % c) as i64).collect();
    let mask: Vec<bool> = (0..rows).map(|r| r % 3 != 0).collect();
    labels[0] = -1; // unselected: not read
    let one = crate::parallel::run(false, || cross_entropy(&z, c, &labels, Some(&mask))).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let three = pool
        .install(|| cross_entropy(&z, c, &labels, Some(&mask)))
        .unwrap();
    assert_eq!(one.loss.to_bits(), three.loss.to_bits());
    assert_eq!(one.grad, three.grad);
    assert!(one.grad[..c].iter().all(|&v| v == 0.0));
    labels[1] = c as i64;
    let err = cross_entropy(&z, c, &labels, Some(&mask)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "labels: expected values in [0, 40), got 40"
    );
    let none = cross_entropy(&z, c, &labels, Some(&vec![false; rows])).unwrap();
    assert_eq!(none.loss, 0.0);
}
