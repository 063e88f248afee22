// EXPERIMENT (not committed): cold-weights Q8xQ8 matvec speed by call size.
use emberlm_runtime::kernels::{Kernels, Q8Matrix};
use half::f16;
use std::time::Instant;
fn main() {
    let c: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(768);
    let r = 2304 * 768 / c;
    let nm = 48usize;
    let k = Kernels::detect();
    let nb = c / 32;
    let q: Vec<Vec<i8>> = (0..nm)
        .map(|m| (0..r * c).map(|i| ((i * 7 + m) % 251) as i8).collect())
        .collect();
    let s: Vec<Vec<f16>> = (0..nm).map(|_| vec![f16::from_f32(0.01); r * nb]).collect();
    let x: Vec<f32> = (0..c).map(|i| (i as f32).sin()).collect();
    let mut xq = vec![0i8; c];
    let mut xd = vec![0f32; nb];
    k.quantize_q8(&x, &mut xq, &mut xd);
    let mut y = vec![0f32; r];
    let sizes = [16usize, 32, 64, 96, 128, 192, 288, 384, 576];
    let mut res: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    for rep in 0..15 {
        for (si, &n) in sizes.iter().enumerate() {
            let t = Instant::now();
            for it in 0..20 {
                let mat = Q8Matrix::new(&q[it % nm], &s[it % nm], r, c).unwrap();
                for i in 0..r / n {
                    k.matvec_q8q8_rows(mat, &xq, &xd, &mut y[i * n..(i + 1) * n], i * n);
                }
            }
            let dt = t.elapsed().as_secs_f64();
            if rep > 0 {
                res[si].push(20.0 * ((r / n * n) * (c + nb * 2)) as f64 / dt / 1e9);
            }
        }
    }
    for (n, mut v) in sizes.iter().zip(res) {
        v.sort_by(f64::total_cmp);
        println!("cols {c} rows/call {n}: median {:.1} GB/s", v[v.len() / 2]);
    }
}
