//! The batch total of `Reduction::Sum` / `Mean` from per-row records, in f64:
//! the CPU twin of `shaders/total.wgsl`, writing the same two records (the
//! batch record, then a copy of the first bad row's record). Same rules: bad
//! rows are left out and the first is kept, +inf rows make the total +inf and
//! -inf rows (a log base below 1) -inf (both: NaN), a mean over no counted
//! weight is NaN.

use crate::record::{Record, code};

/// The two output records of a sum (`mean` false) or mean of `records`;
/// `weighted`: a row weighs its record's `aux_p` (else 1).
pub(super) fn reduce(records: &[Record], mean: bool, weighted: bool) -> [Record; 2] {
    let mut sum = 0.0f64;
    let mut weight = 0.0f64;
    let (mut inf, mut neg_inf) = (false, false);
    for (i, r) in records.iter().enumerate() {
        if !r.is_ok() {
            let total = Record {
                value: f32::NAN,
                aux_p: 0.0,
                aux_q: 0.0,
                code: r.code,
                column: r.column,
                index: i as u32,
            };
            return [
                total,
                Record {
                    value: f32::NAN,
                    ..*r
                },
            ];
        }
        weight += if weighted { r.aux_p as f64 } else { 1.0 };
        if r.value == f32::INFINITY {
            inf = true;
        } else if r.value == f32::NEG_INFINITY {
            neg_inf = true;
        } else {
            sum += r.value as f64;
        }
    }
    let mut value = if mean { sum / weight } else { sum };
    if value == 0.0 {
        value = 0.0;
    }
    match (inf, neg_inf) {
        (true, true) => value = f64::NAN,
        (true, false) => value = f64::INFINITY,
        (false, true) => value = f64::NEG_INFINITY,
        (false, false) => {}
    }
    if mean && weight == 0.0 {
        value = f64::NAN;
    }
    let total = Record {
        value: value as f32,
        aux_p: weight as f32,
        aux_q: 0.0,
        code: code::OK,
        column: 0,
        index: 0,
    };
    [total, Record::default()]
}
