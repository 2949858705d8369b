//! Rows read once before the tiles: checked, normalised, and turned into the
//! per-element fields the kernels read (a weight, its log, ...), packed in
//! panels (groups of rows interleaved column by column) for the
//! micro-kernels.
//!
//! The rules are the per-row measures': a probability whose bits are zero
//! (or a log value of −inf) is p = 0; `Validate` checks the row sum,
//! `Renormalize` divides probabilities by it (in f64: subnormal counts and
//! sums beyond f32 are fine) and subtracts (max, ln Σ e^(x − max)) from log
//! values; logits are always normalised. Logs are taken once per element,
//! here, as the f32 nearest ln p (`ln_hilo` added once, or f64 where the
//! row's normaliser is subtracted): the kernels then never take a log of an
//! input, only JS one of each mixture element.

use std::mem::MaybeUninit;

use crate::cpu::ln::{Arith, LN2_LO, exp, ln_hilo, ln_parts};
use crate::error::{Arg, Result};
use crate::measure::Measure;
use crate::pairs::{RowMode, Side};
use crate::record::{Record, code};

/// The element is a zero probability (bits zero, or a log value of −inf).
pub(super) const F_ZERO: u8 = 1;
/// The element is a log value more than f32::MAX below its row's maximum:
/// its log does not fit f32 (weight 0, but p > 0 for the zero rules).
pub(super) const F_FAR: u8 = 2;
/// The element's weight is below f32::MIN_POSITIVE (zero, far, subnormal).
pub(super) const F_SMALL: u8 = 4;

/// Fields per element each measure's kernel reads.
pub(super) fn field_count(m: Measure) -> usize {
    match m {
        Measure::Js => 3,
        Measure::Kl | Measure::CrossEntropy => 2,
        _ => 1,
    }
}

/// Rows packed in panels of `group` rows: field `f` of (row r, column k) is at
/// `fields[f][((r / group) * cols + k) * group + r % group]`; the rows that
/// pad the last group are zeros.
#[derive(Debug)]
pub(super) struct Packed {
    pub group: usize,
    pub cols: usize,
    pub fields: Vec<Vec<f32>>,
}

impl Packed {
    fn new(rows: usize, cols: usize, group: usize, nf: usize) -> Result<Packed> {
        let groups = rows.div_ceil(group);
        let len = groups * group * cols;
        let mut fields = Vec::with_capacity(nf);
        for _ in 0..nf {
            let mut v = crate::error::try_vec(len, "the prepared rows of an all-pairs call")?;
            v.resize(len, 0.0f32);
            fields.push(v);
        }
        Ok(Packed {
            group,
            cols,
            fields,
        })
    }

    /// Field `f` of group `g`, columns `k0..k1` (`group` values per column).
    #[inline(always)]
    pub(super) fn panel(&self, f: usize, g: usize, k0: usize, k1: usize) -> &[f32] {
        let base = g * self.cols;
        &self.fields[f][(base + k0) * self.group..(base + k1) * self.group]
    }
}

/// What the zero rules need of a row: its flags (`F_*`, or-ed over its
/// elements) and, when any is set, four bit masks over its columns: p ≠ 0,
/// p = 0, weight ≥ f32::MIN_POSITIVE, far.
#[derive(Clone, Debug, Default)]
pub(super) struct RowInfo {
    pub flags: u8,
    pub masks: Option<Box<[u64]>>,
}

/// Mask `which` (0 nonzero, 1 zero, 2 normal weight, 3 far) of a row that has them.
fn mask(m: &[u64], which: usize) -> &[u64] {
    let w = m.len() / 4;
    &m[which * w..(which + 1) * w]
}

fn any_and(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).any(|(x, y)| x & y != 0)
}

/// Whether the pair (p row, q row) has p > 0 where q = 0 (or q far under a p
/// of normal weight): KL and cross-entropy are then +inf.
pub(super) fn violates(p: &RowInfo, q: &RowInfo) -> bool {
    let zero = q.flags & F_ZERO != 0
        && match (&p.masks, &q.masks) {
            (Some(pm), Some(qm)) if p.flags & F_ZERO != 0 => any_and(mask(pm, 0), mask(qm, 1)),
            _ => true,
        };
    let far = q.flags & F_FAR != 0
        && match (&p.masks, &q.masks) {
            (Some(pm), Some(qm)) if p.flags & F_SMALL != 0 => any_and(mask(pm, 2), mask(qm, 3)),
            _ => true,
        };
    zero || far
}

/// One argument prepared: its rows packed for the p side (groups of `MR`)
/// and/or the q side (groups of `NR`), the zero-rule info and the status of
/// each row (a [`Record`] as the per-row path's: code, column, and the row
/// sum in `aux_p` / `aux_q`).
#[derive(Debug)]
pub(super) struct Prepared {
    pub packs: Vec<Packed>,
    pub info: Vec<RowInfo>,
    pub status: Vec<Record>,
}

/// Scratch of one worker: a row's fields, unpacked.
struct RowBuf {
    w: Vec<f32>,
    l: Vec<f32>,
    f: [Vec<f32>; 3],
    cls: Vec<u8>,
}

impl RowBuf {
    fn new(cols: usize) -> Result<RowBuf> {
        let z = || -> Result<Vec<f32>> {
            let mut v = crate::error::try_vec(cols, "a row buffer of an all-pairs call")?;
            v.resize(cols, 0.0);
            Ok(v)
        };
        Ok(RowBuf {
            w: z()?,
            l: z()?,
            f: [z()?, z()?, z()?],
            cls: vec![0u8; cols],
        })
    }
}

/// Σ x in f64, in eight lanes added in a fixed order (vectorised; the
/// same bits whatever the thread).
#[inline(always)]
fn sum64(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v as f64;
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += v as f64;
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// Column problems: 0 good, else 1 NaN, 2 negative, 3 infinite, 4 positive log
/// (to add to the argument's `*_NAN - 1`), as the per-row kernels classify.
#[inline(always)]
fn classify(b: u32, log: bool, pos_ok: bool) -> u32 {
    let abs = b & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        1
    } else if log {
        if b == 0x7f80_0000 {
            3
        } else if !pos_ok && (b >> 31) == 0 && b != 0 {
            4
        } else {
            0
        }
    } else if abs == 0x7f80_0000 {
        3
    } else if (b >> 31) != 0 && abs != 0 {
        2
    } else {
        0
    }
}

/// The codes of `arg`: (column base, sum, zero sum, all masked).
fn codes(arg: Arg) -> (u32, u32, u32, u32) {
    if arg == Arg::P {
        (
            code::P_NAN - 1,
            code::P_SUM,
            code::P_ZERO_SUM,
            code::P_ALL_MASKED,
        )
    } else {
        (
            code::Q_NAN - 1,
            code::Q_SUM,
            code::Q_ZERO_SUM,
            code::Q_ALL_MASKED,
        )
    }
}

fn bad_record(code: u32, column: u32, sum: f32, arg: Arg) -> Record {
    Record {
        value: f32::NAN,
        aux_p: if arg == Arg::P { sum } else { 0.0 },
        aux_q: if arg == Arg::Q { sum } else { 0.0 },
        code,
        column,
        index: 0,
    }
}

/// How a side is prepared.
#[derive(Clone, Copy, Debug)]
pub(super) struct Recipe {
    pub measure: Measure,
    pub check_sums: bool,
    pub tolerance: f32,
}

/// Prepares one row into `rb.f` (fields) and returns its status and info.
#[inline(always)]
fn prep_row<A: Arith>(
    x: &[f32],
    side: &Side<'_>,
    r: &Recipe,
    rb: &mut RowBuf,
) -> (Record, RowInfo) {
    let n = x.len();
    let mode = side.mode;
    let (base, sum_code, zero_code, masked_code) = codes(side.arg);
    let log = mode.is_log();
    let pos_ok = mode == RowMode::LogNorm;
    // 1. bad values: a branch-free test of the row, then the first one
    let any_bad = x
        .iter()
        .fold(false, |a, v| a | (classify(v.to_bits(), log, pos_ok) != 0));
    if any_bad {
        let (c, k) = x
            .iter()
            .enumerate()
            .map(|(c, v)| (c, classify(v.to_bits(), log, pos_ok)))
            .find(|&(_, k)| k != 0)
            .unwrap_or((0, 1));
        for f in rb.f.iter_mut() {
            f[..n].fill(0.0);
        }
        return (
            bad_record(base + k, c as u32, 0.0, side.arg),
            RowInfo::default(),
        );
    }
    let (w, l, cls) = (&mut rb.w[..n], &mut rb.l[..n], &mut rb.cls[..n]);
    let mut sum = 0.0f64;
    let mut problem = None;
    match mode {
        RowMode::Probs => {
            // (the floats and the classes in loops of their own: each vectorises)
            for ((wi, li), &xi) in w.iter_mut().zip(l.iter_mut()).zip(x) {
                let zero = xi.to_bits() & 0x7fff_ffff == 0;
                let (hi, lo) = ln_hilo::<A>(xi);
                *wi = if zero { 0.0 } else { xi };
                *li = if zero { 0.0 } else { hi + lo };
            }
            for (ci, &xi) in cls.iter_mut().zip(x) {
                let b = xi.to_bits() & 0x7fff_ffff;
                let zero = (b == 0) as u8;
                let small = (b < 0x0080_0000) as u8;
                *ci = (zero * F_ZERO) | (small * F_SMALL);
            }
            sum = sum64(x);
        }
        RowMode::ProbsDiv => {
            sum = sum64(x);
            if sum == 0.0 {
                problem = Some(zero_code);
            } else {
                let ls = sum.ln();
                for ((wi, li), (&xi, ci)) in w
                    .iter_mut()
                    .zip(l.iter_mut())
                    .zip(x.iter().zip(cls.iter_mut()))
                {
                    let zero = xi.to_bits() & 0x7fff_ffff == 0;
                    let (hi, lo) = ln_hilo::<A>(xi);
                    let y = (xi as f64 / sum) as f32;
                    *wi = if zero { 0.0 } else { y };
                    *li = if zero {
                        0.0
                    } else {
                        ((hi as f64 + lo as f64) - ls) as f32
                    };
                    *ci = if zero {
                        F_ZERO | F_SMALL
                    } else if y < f32::MIN_POSITIVE {
                        F_SMALL
                    } else {
                        0
                    };
                }
            }
        }
        RowMode::Log => {
            for ((wi, li), (&xi, ci)) in w
                .iter_mut()
                .zip(l.iter_mut())
                .zip(x.iter().zip(cls.iter_mut()))
            {
                let zero = xi.to_bits() == 0xff80_0000;
                let e = exp::<A>(xi);
                *wi = if zero { 0.0 } else { e };
                *li = if zero { 0.0 } else { xi };
                *ci = if zero {
                    F_ZERO | F_SMALL
                } else if e < f32::MIN_POSITIVE {
                    F_SMALL
                } else {
                    0
                };
            }
            sum = sum64(w);
        }
        RowMode::LogNorm => {
            let m = x
                .iter()
                .filter(|v| v.to_bits() != 0xff80_0000)
                .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            if m == f32::NEG_INFINITY {
                problem = Some(masked_code);
            } else {
                // Σ e^(x − m) in f64 of f32 exps (x − m may overflow to −inf: e^ = 0)
                let s = x.iter().fold(0.0f64, |s, &v| s + exp::<A>(v - m) as f64);
                let ls = s.ln();
                let (m64, lim) = (m as f64, -(f32::MAX as f64));
                for ((wi, li), (&xi, ci)) in w
                    .iter_mut()
                    .zip(l.iter_mut())
                    .zip(x.iter().zip(cls.iter_mut()))
                {
                    let zero = xi.to_bits() == 0xff80_0000;
                    let l64 = (xi as f64 - m64) - ls;
                    let far = !zero & (l64 < lim);
                    let off = zero | far;
                    let lf = if off { 0.0 } else { l64 as f32 };
                    let e = exp::<A>(lf);
                    *wi = if off { 0.0 } else { e };
                    *li = lf;
                    *ci = if zero {
                        F_ZERO | F_SMALL
                    } else if far {
                        F_FAR | F_SMALL
                    } else if e < f32::MIN_POSITIVE {
                        F_SMALL
                    } else {
                        0
                    };
                }
                sum = s.ln() + m64; // the log-sum-exp, as the per-row records keep it
            }
        }
    }
    if problem.is_none() && r.check_sums && matches!(mode, RowMode::Probs | RowMode::Log) {
        let s = sum as f32;
        if (s - 1.0).abs() > r.tolerance {
            problem = Some(sum_code);
        }
    }
    if let Some(c) = problem {
        for f in rb.f.iter_mut() {
            f[..n].fill(0.0);
        }
        return (
            bad_record(c, code::COL_NONE, sum as f32, side.arg),
            RowInfo::default(),
        );
    }
    // 2. the fields of the measure
    let [f0, f1, f2] = &mut rb.f;
    let (f0, f1, f2) = (&mut f0[..n], &mut f1[..n], &mut f2[..n]);
    match r.measure {
        Measure::Kl | Measure::CrossEntropy => {
            f0.copy_from_slice(w);
            f1.copy_from_slice(l);
        }
        Measure::Js => {
            // ln 2w = (e + 1)·LN2_HI + (lo + LN2_LO), the parts of the
            // kernel's log of the mixture (see `kernel::Js`)
            for (((a, b), c), &wi) in f0
                .iter_mut()
                .zip(f1.iter_mut())
                .zip(f2.iter_mut())
                .zip(w.iter())
            {
                let (e, lo) = ln_parts::<A>(wi);
                let zero = wi == 0.0;
                *a = wi;
                *b = if zero { 0.0 } else { e + 1.0 };
                *c = if zero { 0.0 } else { lo + LN2_LO };
            }
        }
        Measure::Hellinger => {
            for (a, &wi) in f0.iter_mut().zip(w.iter()) {
                *a = wi.sqrt();
            }
        }
        _ => f0.copy_from_slice(w),
    }
    // 3. the zero rules
    let flags = cls.iter().fold(0u8, |a, &c| a | c);
    let masks = (flags != 0).then(|| {
        let words = n.div_ceil(64);
        let mut m = vec![0u64; 4 * words].into_boxed_slice();
        for (k, &c) in cls.iter().enumerate() {
            let bit = 1u64 << (k % 64);
            let wd = k / 64;
            if c & F_ZERO == 0 {
                m[wd] |= bit;
            } else {
                m[words + wd] |= bit;
            }
            if c & F_SMALL == 0 {
                m[2 * words + wd] |= bit;
            }
            if c & F_FAR != 0 {
                m[3 * words + wd] |= bit;
            }
        }
        m
    });
    let ok = Record {
        value: 0.0,
        aux_p: if side.arg == Arg::P { sum as f32 } else { 0.0 },
        aux_q: if side.arg == Arg::Q { sum as f32 } else { 0.0 },
        code: code::OK,
        column: 0,
        index: 0,
    };
    (ok, RowInfo { flags, masks })
}

/// Prepares the rows `r0..` of `side` whose packed parts are `parts[layout][field]`
/// (each starting at a group boundary); infos and statuses go to `info`, `status`.
#[inline(always)]
fn prep_rows<A: Arith>(
    side: &Side<'_>,
    recipe: &Recipe,
    cols: usize,
    r0: usize,
    parts: &mut [(usize, Vec<&mut [f32]>)],
    info: &mut [RowInfo],
    status: &mut [Record],
) -> Result<()> {
    let mut rb = RowBuf::new(cols)?;
    let mut conv = Vec::new();
    if side.data.is_converted() {
        conv = crate::error::try_vec(cols, "a row buffer of an all-pairs call")?;
        conv.resize(cols, MaybeUninit::uninit());
    }
    let nf = field_count(recipe.measure);
    // UNIT rows at a time into a row-major buffer, then each panel written
    // column by column (whole groups of values: no store strided by a row)
    let mut unit = crate::error::try_vec(UNIT * nf * cols, "a row buffer of an all-pairs call")?;
    unit.resize(UNIT * nf * cols, 0.0f32);
    for (u, (infs, sts)) in info
        .chunks_mut(UNIT)
        .zip(status.chunks_mut(UNIT))
        .enumerate()
    {
        for (i, (inf, st)) in infs.iter_mut().zip(sts.iter_mut()).enumerate() {
            let row = r0 + u * UNIT + i;
            let x = side.data.f32s(row * cols..(row + 1) * cols, &mut conv);
            let (s, ri) = prep_row::<A>(x, side, recipe, &mut rb);
            *st = s;
            *inf = ri;
            for f in 0..nf {
                unit[(f * UNIT + i) * cols..][..cols].copy_from_slice(&rb.f[f][..cols]);
            }
        }
        let rows = infs.len();
        for (group, fields) in parts.iter_mut() {
            let g = *group;
            for (f, dst) in fields.iter_mut().enumerate().take(nf) {
                for lg in 0..UNIT / g {
                    // the last task's part ends with the argument's last group
                    let start = (u * UNIT / g + lg) * cols * g;
                    if start >= dst.len() {
                        break;
                    }
                    let panel = &mut dst[start..start + cols * g];
                    // (rows past the argument's last stay zero, as made)
                    for r in 0..g.min(rows.saturating_sub(lg * g)) {
                        let i = lg * g + r;
                        let row = &unit[(f * UNIT + i) * cols..][..cols];
                        for (c, &x) in panel.chunks_exact_mut(g).zip(row) {
                            c[r] = x;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Rows a task of the preparation takes at a time (a multiple of every
/// panel's group).
const UNIT: usize = 16;

/// Prepares every row of `side` into the layouts of `groups` (each 4 or 16
/// rows per panel), on `threads` workers over whole groups of 16 rows.
pub(super) fn prepare(
    side: &Side<'_>,
    recipe: &Recipe,
    cols: usize,
    groups: &[usize],
    threads: usize,
    fused: bool,
) -> Result<Prepared> {
    let rows = side.rows;
    let nf = field_count(recipe.measure);
    let mut packs = Vec::with_capacity(groups.len());
    for &g in groups {
        packs.push(Packed::new(rows, cols, g, nf)?);
    }
    let mut info = vec![RowInfo::default(); rows];
    let mut status = vec![Record::default(); rows];
    // tasks of whole UNIT-row groups
    let units = rows.div_ceil(UNIT);
    let per = units.div_ceil(threads.max(1) * 4).max(1) * UNIT;
    struct Task<'t> {
        r0: usize,
        parts: Vec<(usize, Vec<&'t mut [f32]>)>,
        info: &'t mut [RowInfo],
        status: &'t mut [Record],
    }
    let mut tasks: Vec<Task<'_>> = Vec::new();
    {
        let mut iters: Vec<(usize, Vec<std::slice::ChunksMut<'_, f32>>)> = packs
            .iter_mut()
            .map(|p| {
                let g = p.group;
                let chunk = per * cols;
                (
                    g,
                    p.fields.iter_mut().map(|f| f.chunks_mut(chunk)).collect(),
                )
            })
            .collect();
        for (k, (inf, st)) in info.chunks_mut(per).zip(status.chunks_mut(per)).enumerate() {
            let parts = iters
                .iter_mut()
                .map(|(g, fs)| (*g, fs.iter_mut().filter_map(Iterator::next).collect()))
                .collect();
            tasks.push(Task {
                r0: k * per,
                parts,
                info: inf,
                status: st,
            });
        }
    }
    super::run_tasks(tasks, threads, |mut t: Task<'_>| {
        let (parts, info, status) = (&mut t.parts, &mut *t.info, &mut *t.status);
        #[cfg(target_arch = "x86_64")]
        if fused {
            // SAFETY: `fused` is set only where AVX2 and FMA were detected
            // (`Isa::chosen` is Avx2 or above).
            return unsafe { prep_rows_avx2(side, recipe, cols, t.r0, parts, info, status) };
        }
        let _ = fused;
        prep_rows::<crate::cpu::ln::Plain>(side, recipe, cols, t.r0, parts, info, status)
    })?;
    Ok(Prepared {
        packs,
        info,
        status,
    })
}

/// [`prep_rows`] compiled for AVX2 + FMA (the log and exp fused).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn prep_rows_avx2(
    side: &Side<'_>,
    recipe: &Recipe,
    cols: usize,
    r0: usize,
    parts: &mut [(usize, Vec<&mut [f32]>)],
    info: &mut [RowInfo],
    status: &mut [Record],
) -> Result<()> {
    prep_rows::<crate::cpu::ln::Fused>(side, recipe, cols, r0, parts, info, status)
}
