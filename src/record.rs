//! The per-row output record both backends produce, its status word, and the
//! decoding of a status into the crate's [`Error`].

use crate::error::{Arg, BadValue, Error};

/// One row's result, as the kernels write it (16 bytes, `#[repr(C)]`).
///
/// Keep in sync with `struct Record` in `shaders/rows.wgsl` and `shaders/total.wgsl`.
///
/// | field | per-row record | batch record (sum, mean) |
/// |---|---|---|
/// | `value` | the measure in the chosen base; +inf where a term is infinite; NaN when `status` ≠ 0 | the sum or mean; NaN when `status` ≠ 0 or a mean over no counted row |
/// | `aux_p` | Σ p (probabilities, log-probabilities taken as given), the row's log-sum-exp (logits, renormalised log-probabilities), or the row's weight wₜ (0 when ignored) for a negative log-likelihood (the target's bits as i32 when it is out of range) | the number of rows counted (Σ wₜ for a negative log-likelihood) |
/// | `aux_q` | the same for `q` | the first bad row, as `f32::from_bits` |
/// | `status` | [`Status`] word: 0 when the row is good | the first bad row's status |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Record {
    /// The measure's value.
    pub value: f32,
    /// Row sum (or log-sum-exp, or weight) of `p`; see the table above.
    pub aux_p: f32,
    /// Row sum (or log-sum-exp) of `q`; see the table above.
    pub aux_q: f32,
    /// Status word: `(column << 8) | code`, 0 when good. See [`Status`].
    pub status: u32,
}

/// Size of a [`Record`] in bytes.
pub const RECORD_SIZE: u64 = std::mem::size_of::<Record>() as u64;

/// The code in the low 8 bits of a status word. Keep in sync with `shaders/common.wgsl`.
#[allow(missing_docs, reason = "the names say what each code is")]
pub(crate) mod code {
    pub(crate) const OK: u32 = 0;
    pub(crate) const P_NAN: u32 = 1;
    pub(crate) const P_NEGATIVE: u32 = 2;
    pub(crate) const P_INFINITE: u32 = 3;
    pub(crate) const P_POSITIVE_LOG: u32 = 4;
    pub(crate) const Q_NAN: u32 = 5;
    pub(crate) const Q_NEGATIVE: u32 = 6;
    pub(crate) const Q_INFINITE: u32 = 7;
    pub(crate) const Q_POSITIVE_LOG: u32 = 8;
    pub(crate) const TARGET: u32 = 9;
    pub(crate) const P_SUM: u32 = 16;
    pub(crate) const Q_SUM: u32 = 17;
    pub(crate) const P_ZERO_SUM: u32 = 18;
    pub(crate) const Q_ZERO_SUM: u32 = 19;
    pub(crate) const P_ALL_MASKED: u32 = 20;
    pub(crate) const Q_ALL_MASKED: u32 = 21;
    /// Column field of row-level problems.
    pub(crate) const COL_NONE: u32 = 0xff_ffff;
}

/// Builds a status word; columns beyond 2^24 − 2 are stored as "unknown".
pub(crate) fn status_word(col: usize, code: u32) -> u32 {
    ((col.min(code::COL_NONE as usize) as u32) << 8) | code
}

/// A decoded status word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    /// Whether the row is good.
    pub fn is_ok(self) -> bool {
        self.0 == 0
    }
    /// The problem's code (low 8 bits).
    pub fn code(self) -> u32 {
        self.0 & 0xff
    }
    /// The first bad column, where the problem is an element's and the column fits 24 bits.
    pub fn column(self) -> Option<usize> {
        let c = self.0 >> 8;
        (c != code::COL_NONE && !self.is_ok()).then_some(c as usize)
    }
}

/// What the decoder needs besides the record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecodeCtx {
    pub tolerance: f32,
    pub classes: usize,
}

/// Turns a bad row's record into the error the host path returns.
pub(crate) fn decode(row: usize, rec: &Record, ctx: &DecodeCtx) -> Error {
    let st = Status(rec.status);
    let col = st.column();
    let bad = |arg, what| Error::BadValue {
        arg,
        row,
        col,
        what,
    };
    match st.code() {
        code::P_NAN => bad(Arg::P, BadValue::Nan),
        code::P_NEGATIVE => bad(Arg::P, BadValue::Negative),
        code::P_INFINITE => bad(Arg::P, BadValue::Infinite),
        code::P_POSITIVE_LOG => bad(Arg::P, BadValue::PositiveLog),
        code::Q_NAN => bad(Arg::Q, BadValue::Nan),
        code::Q_NEGATIVE => bad(Arg::Q, BadValue::Negative),
        code::Q_INFINITE => bad(Arg::Q, BadValue::Infinite),
        code::Q_POSITIVE_LOG => bad(Arg::Q, BadValue::PositiveLog),
        code::TARGET => Error::TargetOutOfRange {
            row,
            // the kernel leaves the target's bits in aux_p (as i32)
            target: rec.aux_p.to_bits() as i32 as i64,
            classes: ctx.classes,
        },
        code::P_SUM => Error::NotNormalized {
            arg: Arg::P,
            row,
            sum: rec.aux_p,
            tolerance: ctx.tolerance,
        },
        code::Q_SUM => Error::NotNormalized {
            arg: Arg::Q,
            row,
            sum: rec.aux_q,
            tolerance: ctx.tolerance,
        },
        code::P_ZERO_SUM | code::Q_ZERO_SUM => Error::CannotNormalize {
            arg: if st.code() == code::P_ZERO_SUM {
                Arg::P
            } else {
                Arg::Q
            },
            row,
            why: "every value is 0",
        },
        code::P_ALL_MASKED | code::Q_ALL_MASKED => Error::CannotNormalize {
            arg: if st.code() == code::P_ALL_MASKED {
                Arg::P
            } else {
                Arg::Q
            },
            row,
            why: "every value is -inf (probability 0)",
        },
        other => Error::Device(format!("row {row}: unknown status word {other:#x}")),
    }
}

/// The first bad row of a batch of records, decoded.
pub(crate) fn first_error(records: &[Record], row0: usize, ctx: &DecodeCtx) -> Option<Error> {
    records
        .iter()
        .position(|r| r.status != 0)
        .map(|i| decode(row0 + i, &records[i], ctx))
}

/// The batch record of `Reduction::Sum` / `Mean` from per-row records, in f64
/// (the CPU path; the GPU path has `shaders/total.wgsl`). Same rules: bad rows
/// are left out and the first is kept, +inf rows make the total +inf and -inf
/// rows (a log base below 1) -inf (both: NaN), a mean over no counted weight is
/// NaN.
pub(crate) fn reduce_records(records: &[Record], mean: bool, weighted: bool) -> Record {
    let mut sum = 0.0f64;
    let mut weight = 0.0f64;
    let (mut inf, mut neg_inf) = (false, false);
    for (i, r) in records.iter().enumerate() {
        if r.status != 0 {
            return Record {
                value: f32::NAN,
                aux_p: 0.0,
                aux_q: f32::from_bits(i as u32),
                status: r.status,
            };
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
    Record {
        value: value as f32,
        aux_p: weight as f32,
        aux_q: f32::from_bits(0),
        status: 0,
    }
}
