//! The CPU all-pairs drivers: bit-identical whatever the thread count and
//! the tile shape, for every instruction set; the portable and AVX2
//! kernels within the accuracy bound of each other.

use super::*;
use crate::batch::Batch;
use crate::pairs::PairwiseOptions;

const MEASURES: [Measure; 5] = [
    Measure::Kl,
    Measure::CrossEntropy,
    Measure::Js,
    Measure::Hellinger,
    Measure::TotalVariation,
];

fn rows(n: usize, k: usize, seed: u32, zeros: bool) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * k);
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    for _ in 0..n {
        let row: Vec<f64> = (0..k)
            .map(|c| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                if zeros && (s.is_multiple_of(7) || c == 0) {
                    0.0
                } else {
                    (s % 1000) as f64 + 1.0
                }
            })
            .collect();
        let t: f64 = row.iter().sum();
        v.extend(row.iter().map(|x| (x / t) as f32));
    }
    v
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn same_bits_for_every_thread_count_and_tile_shape() {
    let (m, n, k) = (150, 77, 300);
    let p = rows(m, k, 1, true);
    let q = rows(n, k, 2, true);
    for isa in Isa::available() {
        for measure in MEASURES {
            for self_mode in [false, true] {
                let pb = Batch::new(&p, m, k);
                let qb = Batch::new(&q, n, k);
                let job = PairJob::new(
                    measure,
                    &pb,
                    (!self_mode).then_some(&qb),
                    &PairwiseOptions::default(),
                )
                .expect("job");
                let nn = job.n();
                let mut want = vec![0.0f32; m * nn];
                full_with(&job, &mut want, Some(1), isa).expect("full");
                for threads in [2, 3, 5] {
                    let mut got = vec![0.0f32; m * nn];
                    full_with(&job, &mut got, Some(threads), isa).expect("full");
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{isa:?} {measure:?} {threads} threads"
                    );
                }
                for (shape, threads) in [(TileShape::new(33, 20), 3), (TileShape::full_rows(64), 2)]
                {
                    let mut got = vec![f32::NAN; m * nn];
                    tiles_with::<Error>(
                        &job,
                        shape,
                        &mut |t| {
                            let w = t.cols.len();
                            for (r, i) in t.rows.clone().enumerate() {
                                got[i * nn + t.cols.start..i * nn + t.cols.end]
                                    .copy_from_slice(&t.values[r * w..(r + 1) * w]);
                            }
                            Ok(())
                        },
                        Some(threads),
                        isa,
                    )
                    .expect("tiles");
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{isa:?} {measure:?} tiles {shape:?}"
                    );
                }
                let kk = 9;
                let (mut v1, mut i1) = (vec![0.0; m * kk], vec![0u32; m * kk]);
                let (mut v2, mut i2) = (vec![0.0; m * kk], vec![0u32; m * kk]);
                top_k_with(&job, kk, self_mode, &mut v1, &mut i1, Some(1), isa).expect("top");
                top_k_with(&job, kk, self_mode, &mut v2, &mut i2, Some(3), isa).expect("top");
                assert_eq!(
                    (bits(&v1), &i1),
                    (bits(&v2), &i2),
                    "{isa:?} {measure:?} top-k"
                );
            }
        }
    }
}

#[test]
fn portable_and_vector_kernels_agree() {
    let (m, n, k) = (21, 35, 517);
    let p = rows(m, k, 3, false);
    let q = rows(n, k, 4, false);
    let isas = Isa::available();
    for measure in MEASURES {
        let pb = Batch::new(&p, m, k);
        let qb = Batch::new(&q, n, k);
        let job = PairJob::new(measure, &pb, Some(&qb), &PairwiseOptions::default()).expect("job");
        let mut base = vec![0.0f32; m * n];
        full_with(&job, &mut base, Some(2), Isa::Base).expect("base");
        for &isa in &isas {
            let mut got = vec![0.0f32; m * n];
            full_with(&job, &mut got, Some(2), isa).expect("isa");
            for (a, b) in got.iter().zip(&base) {
                let tol = 2e-6 + 2e-5 * b.abs();
                assert!((a - b).abs() <= tol, "{measure:?} {isa:?}: {a} vs {b}");
            }
        }
    }
}
