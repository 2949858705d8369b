//! Error positions beyond 2^24 (hardening issue, item 9): the record keeps
//! the column and the row in u32 fields of their own, so a NaN at column
//! 16,800,000 of a 17,000,000-column row, or in row 16,800,000 of a sum over
//! 17,000,000 rows, is named exactly on every backend.

mod common;

use common::*;
use kullback::{Arg, BadValue, Batch, Error, Options, Reduction};

#[test]
fn columns_beyond_2_pow_24_are_named() {
    let cols = 17_000_000usize;
    let mut p = vec![1.0f32 / cols as f32; cols];
    p[16_800_000] = f32::NAN;
    for bk in backends() {
        let e = bk
            .ctx
            .entropy(&Batch::new(&p, 1, cols), &Options::default())
            .expect_err("NaN");
        assert!(
            matches!(
                e,
                Error::BadValue {
                    arg: Arg::P,
                    row: 0,
                    col: Some(16_800_000),
                    what: BadValue::Nan
                }
            ),
            "{}: {e:?}",
            bk.name
        );
    }
}

/// The GPU path keeps one record per row in one binding, so on devices with
/// 128 MiB bindings (lavapipe) a call has at most 5.5 M rows; the row there
/// is 5,000,001, a bit pattern that is a subnormal f32 (what records held
/// before, and what GPUs that flush subnormals destroy).
#[test]
fn rows_beyond_2_pow_24_are_named_in_a_sum() {
    for bk in backends() {
        let (rows, bad) = if bk.name == "cpu" {
            (17_000_000usize, 16_800_001usize)
        } else {
            (5_000_002, 5_000_001)
        };
        let mut p = vec![1.0f32; rows];
        p[bad] = -1.0;
        for reduction in [Reduction::Sum, Reduction::None] {
            let e = bk
                .ctx
                .entropy(
                    &Batch::new(&p, rows, 1),
                    &Options::default().reduction(reduction),
                )
                .expect_err("negative");
            assert!(
                matches!(
                    e,
                    Error::BadValue {
                        arg: Arg::P,
                        row,
                        col: Some(0),
                        what: BadValue::Negative
                    } if row == bad
                ),
                "{} {reduction:?}: {e:?}",
                bk.name
            );
        }
    }
}
