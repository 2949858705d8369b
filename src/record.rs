//! The per-row output record both backends produce, its status (a code and a
//! column), and the decoding of a status into the crate's [`Error`].

use crate::error::{Arg, BadValue, Error, Setting};
use crate::measure::Reduction;

/// One row's result, as the kernels write it (24 bytes, `#[repr(C)]`, the
/// same on both backends and on the GPU-resident path).
///
/// Its twin is `struct Record` in `shaders/rows.wgsl` and
/// `shaders/total.wgsl` (tests read the shaders and compare field by field).
///
/// | field | per-row record | batch record (sum, mean) |
/// |---|---|---|
/// | `value` | the measure in the chosen base; ±inf where a term is infinite; NaN when `code` ≠ 0 | the sum or mean; NaN when `code` ≠ 0 or a mean over no counted weight |
/// | `aux_p` | Σ p (probabilities, log-probabilities taken as given), the row's log-sum-exp (logits, renormalised log-probabilities), or the row's weight wₜ (0 when ignored) for a negative log-likelihood | the number of rows counted (Σ wₜ for a negative log-likelihood) |
/// | `aux_q` | the same for `q` | 0 |
/// | `code` | the problem's code: 0 when the row is good (see [`Status`]) | the first bad row's code |
/// | `column` | the first bad column, `u32::MAX` for a row's problem (a sum, a target) | the first bad row's column |
/// | `index` | a negative log-likelihood's out-of-range target, its bits as the caller's i32 or u32 (0 otherwise) | the first bad row |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Record {
    /// The measure's value.
    pub value: f32,
    /// Row sum (or log-sum-exp, or weight) of `p`; see the table above.
    pub aux_p: f32,
    /// Row sum (or log-sum-exp) of `q`; see the table above.
    pub aux_q: f32,
    /// The problem's code, 0 when good. See [`Status`].
    pub code: u32,
    /// The first bad column, or `u32::MAX` for a problem of the whole row.
    pub column: u32,
    /// An out-of-range target (per-row record) or the first bad row (batch record).
    pub index: u32,
}

impl Record {
    /// Whether the row is good.
    pub fn is_ok(&self) -> bool {
        self.code == code::OK
    }
    /// The record's status: its code and column.
    pub fn status(&self) -> Status {
        Status {
            code: self.code,
            column: self.column,
        }
    }
    /// A record with only the status of `key` set (NaN value).
    pub(crate) fn from_key(key: u64) -> Record {
        let (code, column) = key_parts(key);
        Record {
            value: f32::NAN,
            code,
            column,
            ..Record::default()
        }
    }
    /// The status as one number for tests: 0 when good, else its key.
    #[cfg(test)]
    pub(crate) fn word(&self) -> u64 {
        if self.is_ok() {
            0
        } else {
            status_key(self.column, self.code)
        }
    }
}

/// Size of a [`Record`] in bytes.
pub const RECORD_SIZE: u64 = std::mem::size_of::<Record>() as u64;

/// The codes of [`Record::code`], written into the shaders as their `ST_*`
/// constants by `gpu::wgsl` (the only definition).
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
    /// A target outside [0, classes); the target's bits are in `index`.
    pub(crate) const TARGET: u32 = 9;
    /// The same for a negative target of i32 targets.
    pub(crate) const TARGET_NEGATIVE: u32 = 10;
    pub(crate) const P_SUM: u32 = 16;
    pub(crate) const Q_SUM: u32 = 17;
    pub(crate) const P_ZERO_SUM: u32 = 18;
    pub(crate) const Q_ZERO_SUM: u32 = 19;
    pub(crate) const P_ALL_MASKED: u32 = 20;
    pub(crate) const Q_ALL_MASKED: u32 = 21;
    /// Loss and gradient (src/train): the loss is infinite at `column`. The
    /// target class has a −inf logit,
    pub(crate) const INF_TARGET: u32 = 22;
    /// label smoothing puts mass on a class with a −inf logit,
    pub(crate) const INF_SMOOTHING: u32 = 23;
    /// the teacher on a column the student masks (forward KL),
    pub(crate) const INF_TEACHER_MASS: u32 = 24;
    /// or the student on one the teacher masks (reverse KL).
    pub(crate) const INF_STUDENT_MASS: u32 = 25;
    /// A sparse teacher (GPU-resident): the index at position `column` is
    /// outside [0, classes) (its bits in `index`; i32 below 0 for the next),
    pub(crate) const TEACHER_INDEX: u32 = 26;
    pub(crate) const TEACHER_INDEX_NEGATIVE: u32 = 27;
    /// the index at position `column` (in `index`) repeats the one at the
    /// position whose bits are in `aux_q`,
    pub(crate) const TEACHER_INDEX_REPEAT: u32 = 28;
    /// every student logit at the indices is −inf (renormalised tail),
    pub(crate) const INDEX_ALL_MASKED: u32 = 29;
    /// every teacher log-probability is −inf (renormalised tail),
    pub(crate) const TEACHER_ALL_MASKED: u32 = 30;
    /// tail mass beyond the tolerance with every column indexed.
    pub(crate) const INF_TAIL: u32 = 31;
    /// Column of row-level problems.
    pub(crate) const COL_NONE: u32 = u32::MAX;
}

/// "No problem yet" while reducing: above every key.
pub(crate) const KEY_NONE: u64 = u64::MAX;

/// A problem as one ordered key, (column, code): the smallest is the first
/// bad column (for one column the problem of p before that of q), and a row's
/// problems (column `COL_NONE`) come after every column's. The shaders keep the
/// same order with the two words side by side.
#[inline(always)]
pub(crate) fn status_key(col: u32, code: u32) -> u64 {
    ((col as u64) << 8) | code as u64
}

/// [`status_key`] of a `usize` column (tests).
#[cfg(test)]
pub(crate) fn status_word(col: usize, code: u32) -> u64 {
    status_key(col as u32, code)
}

/// `(code, column)` of a key ([`code::OK`] for [`KEY_NONE`]).
#[inline(always)]
pub(crate) fn key_parts(key: u64) -> (u32, u32) {
    if key == KEY_NONE {
        (code::OK, 0)
    } else {
        ((key & 0xff) as u32, (key >> 8) as u32)
    }
}

/// A row's status: a problem's code and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    code: u32,
    column: u32,
}

impl Status {
    /// Whether the row is good.
    pub fn is_ok(self) -> bool {
        self.code == code::OK
    }
    /// The problem's code (0 when good).
    pub fn code(self) -> u32 {
        self.code
    }
    /// The first bad column, where the problem is an element's.
    pub fn column(self) -> Option<usize> {
        (self.column != code::COL_NONE && !self.is_ok()).then_some(self.column as usize)
    }
}

/// Why a row whose values are all −inf cannot be normalised (the rows
/// kernel's status, and the loss gradients' on both backends).
pub(crate) const ALL_MASKED: &str = "every value is -inf (probability 0)";

/// Why a sparse teacher's row cannot be normalised or has an infinite loss
/// (the CPU's errors and the GPU-resident path's status codes).
pub(crate) const WHY_INDEX_ALL_MASKED: &str =
    "every student logit at the teacher's indices is -inf";
pub(crate) const WHY_TEACHER_ALL_MASKED: &str = "every teacher log-probability is -inf";
pub(crate) const WHY_TAIL_UNCOVERED: &str =
    "the teacher's tail mass (1 - Σ exp(l)) > 0, but its k indices cover every column";

/// [`Error::TeacherIndex`]'s reason for an index outside [0, `cols`).
pub(crate) fn why_index_range(cols: usize) -> String {
    format!("is outside [0, {cols})")
}

/// [`Error::TeacherIndex`]'s reason for an index repeated from `position`.
pub(crate) fn why_index_repeat(position: u32) -> String {
    format!("repeats the index at position {position}")
}

/// What the decoder needs besides the record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecodeCtx {
    pub tolerance: f32,
    pub classes: usize,
}

/// How a call's output records are laid out and read: one record per row
/// (`Reduction::None`), or the batch record followed by a copy of the first
/// bad row's record (sum, mean). Both executors and the GPU-resident path
/// write this layout; [`decode_output`] is its one reader.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputDesc {
    pub reduction: Reduction,
    /// Rows weigh by their record's `aux_p` (a negative log-likelihood's wₜ).
    pub weighted: bool,
    pub ctx: DecodeCtx,
}

/// Values decoded from a call's output records.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub values: Vec<f32>,
    /// Rows counted by the reduction (Σ wₜ for a negative log-likelihood).
    pub counted: f64,
}

/// The values of a call's output records, or the error of its first bad row.
pub(crate) fn decode_output(records: &[Record], d: &OutputDesc) -> Result<Decoded, Error> {
    if d.reduction == Reduction::None {
        let n = records.len();
        let mut values = crate::error::try_vec(n, "the output values")?;
        write_values(records, &mut values.spare_capacity_mut()[..n])
            .map_err(|i| decode(i, &records[i], &d.ctx))?;
        // SAFETY: `write_values` wrote all n values (it returned Ok).
        unsafe { values.set_len(n) };
        let counted = if d.weighted {
            records.iter().map(|x| x.aux_p as f64).sum()
        } else {
            records.len() as f64
        };
        return Ok(Decoded { values, counted });
    }
    let [total, bad, ..] = records else {
        return Err(Error::InvalidOption {
            option: Setting::Reduction,
            message: format!(
                "a {} output has 2 records, got {}",
                d.reduction.name(),
                records.len()
            ),
        });
    };
    if !total.is_ok() {
        return Err(decode(total.index as usize, bad, &d.ctx));
    }
    Ok(Decoded {
        values: vec![total.value],
        counted: total.aux_p as f64,
    })
}

/// The values of per-row records into `values` (as long), in one pass that
/// stops at the first bad record: `Err` with its index (all of `values` is
/// written when `Ok`). The one reading of per-row records: the decoder's, and
/// the CPU's, which decodes each chunk of rows as it is made.
pub(crate) fn write_values(
    records: &[Record],
    values: &mut [std::mem::MaybeUninit<f32>],
) -> Result<(), usize> {
    debug_assert_eq!(records.len(), values.len());
    for (i, (x, v)) in records.iter().zip(values).enumerate() {
        if !x.is_ok() {
            return Err(i);
        }
        v.write(x.value);
    }
    Ok(())
}

/// Why a row's loss is infinite (the message of [`Error::InfiniteLoss`]):
/// one wording for the CPU's training kernels and the GPU's status codes.
pub(crate) const WHY_TARGET: &str = "the target class has a -inf logit";
pub(crate) const WHY_SMOOTHING: &str = "label smoothing puts mass on a class with a -inf logit";
pub(crate) const WHY_TEACHER_MASS: &str =
    "the teacher puts mass on a column the student masks with -inf";
pub(crate) const WHY_STUDENT_MASS: &str =
    "the student puts mass on a column where the teacher has probability 0";

/// The wording of an infinite-loss code.
fn infinite_why(c: u32) -> &'static str {
    match c {
        code::INF_TARGET => WHY_TARGET,
        code::INF_SMOOTHING => WHY_SMOOTHING,
        code::INF_TEACHER_MASS => WHY_TEACHER_MASS,
        _ => WHY_STUDENT_MASS,
    }
}

/// Turns a bad row's record into the error the host path returns.
pub(crate) fn decode(row: usize, rec: &Record, ctx: &DecodeCtx) -> Error {
    let st = rec.status();
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
            target: rec.index as i64,
            classes: ctx.classes,
        },
        code::TARGET_NEGATIVE => Error::TargetOutOfRange {
            row,
            target: rec.index as i32 as i64,
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
            why: ALL_MASKED,
        },
        c @ (code::INF_TARGET
        | code::INF_SMOOTHING
        | code::INF_TEACHER_MASS
        | code::INF_STUDENT_MASS) => Error::InfiniteLoss {
            row,
            col: col.unwrap_or(0),
            why: infinite_why(c),
        },
        c @ (code::TEACHER_INDEX | code::TEACHER_INDEX_NEGATIVE) => Error::TeacherIndex {
            row,
            position: rec.column as usize,
            index: if c == code::TEACHER_INDEX {
                rec.index as i64
            } else {
                rec.index as i32 as i64
            },
            why: why_index_range(ctx.classes),
        },
        code::TEACHER_INDEX_REPEAT => Error::TeacherIndex {
            row,
            position: rec.column as usize,
            index: rec.index as i64,
            why: why_index_repeat(rec.aux_q.to_bits()),
        },
        code::INDEX_ALL_MASKED => Error::CannotNormalize {
            arg: Arg::Q,
            row,
            why: WHY_INDEX_ALL_MASKED,
        },
        code::TEACHER_ALL_MASKED => Error::CannotNormalize {
            arg: Arg::P,
            row,
            why: WHY_TEACHER_ALL_MASKED,
        },
        code::INF_TAIL => Error::InfiniteLoss {
            row,
            col: 0,
            why: WHY_TAIL_UNCOVERED,
        },
        other => Error::Device(format!("row {row}: unknown status word {other:#x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::wgsl_fields;

    #[test]
    fn record_layout_equals_the_shaders() {
        let want = [
            "value: f32",
            "aux_p: f32",
            "aux_q: f32",
            "code: u32",
            "column: u32",
            "index: u32",
        ];
        for src in [
            include_str!("../shaders/rows.wgsl"),
            include_str!("../shaders/total.wgsl"),
            include_str!("../shaders/train.wgsl"),
        ] {
            assert_eq!(wgsl_fields(src, "Record"), want);
        }
        // the Rust struct: the same fields, 4 bytes each, in this order
        assert_eq!(RECORD_SIZE, 4 * want.len() as u64);
        let r = Record {
            value: 1.0,
            aux_p: 2.0,
            aux_q: 3.0,
            code: 4,
            column: 5,
            index: 6,
        };
        let words: &[u32] = bytemuck::cast_slice(std::slice::from_ref(&r));
        assert_eq!(
            words,
            [1f32.to_bits(), 2f32.to_bits(), 3f32.to_bits(), 4, 5, 6]
        );
    }
}
