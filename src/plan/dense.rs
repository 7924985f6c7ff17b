//! Counts and sums per day or period without a hash table.
//!
//! Grouping 10 million rows by a date costs DataFusion a hash-table probe per row, a third
//! of a whole daily query. Dates of one query span a few hundred or thousand days, so
//! `tally_dense(key, value₁, mask₁, value₂, mask₂, ...)` keeps one slot per day from the
//! first to the last date it meets (one per day met, when they are thousands of years
//! apart), adds each run of equal keys into its slot at once, and returns the days seen with
//! their sums as a list of structs, which the plan unnests into the rows a `GROUP BY key`
//! would have given: the same keys (every date with a row), counts (0 where no row passes
//! the mask) and sums (null where no value is summed).
//!
//! The key is a Date32, or an Int64 of a day and a group of the day's rows in its low
//! `group_bits` bits (a period and the classes of a row's filter columns, see
//! [`super::classes`]): each day met gets a block of slots, one per group, and the rows,
//! whose groups change from row to row, are added row by row, without looking for runs.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, ListArray,
    StructArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Expr, Signature, Volatility};
use std::collections::HashMap;
use std::sync::Arc;

/// What one aggregate adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Rows whose value is not null (a count of rows passes no value: see [`dense`]).
    Count,
    /// A sum of integers, as Int64.
    SumInt,
    /// A sum of floating-point numbers, as Float64.
    SumFloat,
    /// A sum of decimals, as DataFusion's `sum` types it: Decimal128(min(38, p + 10), s).
    SumDecimal(u8, i8),
}

impl Kind {
    /// The kind of `count` or `sum` over a value of this type; `None` where the dense path
    /// does not apply (the plan then groups as usual).
    pub fn of(sum: bool, ty: &DataType) -> Option<Kind> {
        if !sum {
            return Some(Kind::Count);
        }
        match ty {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Some(Kind::SumInt),
            DataType::Float32 | DataType::Float64 => Some(Kind::SumFloat),
            DataType::Decimal128(p, s) => Some(Kind::SumDecimal((*p + 10).min(38), *s)),
            _ => None,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Count | Kind::SumInt => DataType::Int64,
            Kind::SumFloat => DataType::Float64,
            Kind::SumDecimal(p, s) => DataType::Decimal128(p, s),
        }
    }
}

/// The name of the key field, and of the value fields, in the returned structs.
pub const KEY: &str = "key";

pub fn value_field(i: usize) -> String {
    format!("v{i}")
}

/// `tally_dense(key, value, mask, ...)`: after the key (of type `key`: a Date32, or an
/// Int64 of a day and, in its low `group_bits`, a group), per aggregate its value and its
/// mask, or only its mask for a count of rows (`rows`: a literal value would be made into an
/// array for every batch). `None` for a key of another type, or too many group bits.
pub fn dense(key: &DataType, group_bits: u32, kinds: Vec<Kind>, rows: Vec<bool>, args: Vec<Expr>) -> Option<Expr> {
    let valid = match key {
        DataType::Date32 => group_bits == 0,
        DataType::Int64 => group_bits <= MAX_GROUP_BITS,
        _ => false,
    };
    valid.then(|| AggregateUDF::from(Dense::new(key.clone(), group_bits, kinds, rows)).call(args))
}

/// More group bits than this would give each day met a block of mostly empty slots (here
/// 256 slots a day).
pub const MAX_GROUP_BITS: u32 = 8;

#[derive(Debug, PartialEq, Eq, Hash)]
struct Dense {
    key: DataType,
    /// The key's low bits that number a group within a day (0: the key is a day).
    group_bits: u32,
    kinds: Vec<Kind>,
    rows: Vec<bool>,
    signature: Signature,
}

impl Dense {
    fn new(key: DataType, group_bits: u32, kinds: Vec<Kind>, rows: Vec<bool>) -> Self {
        Dense {
            key,
            group_bits,
            kinds,
            rows,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    fn item(&self) -> DataType {
        let mut fields = vec![Field::new(KEY, self.key.clone(), false)];
        fields.extend(
            self.kinds
                .iter()
                .enumerate()
                .map(|(i, k)| Field::new(value_field(i), k.data_type(), true)),
        );
        DataType::Struct(Fields::from(fields))
    }

    /// Empty slots for these aggregates.
    fn slots(&self) -> Slots {
        Slots {
            key: self.key.clone(),
            kinds: self.kinds.clone(),
            rows: self.rows.clone(),
            item: self.item(),
            index: match self.group_bits {
                0 => Index::Dense { lo: 0 },
                bits => Index::Blocks {
                    bits,
                    blocks: HashMap::new(),
                    days: Vec::new(),
                },
            },
            present: Vec::new(),
            sums: self.kinds.iter().map(|k| Sums::new(*k)).collect(),
        }
    }

    fn list(&self) -> DataType {
        DataType::List(Arc::new(Field::new_list_field(self.item(), true)))
    }
}

impl AggregateUDFImpl for Dense {
    fn name(&self) -> &str {
        "tally_dense"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.list())
    }

    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(self.slots()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}_days", args.name),
            self.list(),
            true,
        ))])
    }
}

/// One aggregate's slots, and whether each has a value (sums of nothing are null).
#[derive(Debug)]
struct Sums {
    values: Values,
    seen: Vec<bool>,
}

#[derive(Debug)]
enum Values {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Decimal(Vec<i128>),
}

impl Sums {
    fn new(kind: Kind) -> Sums {
        let values = match kind {
            Kind::Count | Kind::SumInt => Values::Int(Vec::new()),
            Kind::SumFloat => Values::Float(Vec::new()),
            Kind::SumDecimal(..) => Values::Decimal(Vec::new()),
        };
        Sums {
            values,
            seen: Vec::new(),
        }
    }

    /// Keeps the slots where `keep` is true, in order.
    fn compact(&mut self, keep: &[bool]) {
        compact(&mut self.seen, keep);
        match &mut self.values {
            Values::Int(v) => compact(v, keep),
            Values::Float(v) => compact(v, keep),
            Values::Decimal(v) => compact(v, keep),
        }
    }

    /// Makes room for `before` slots in front and `len` in all.
    fn grow(&mut self, before: usize, len: usize) {
        grow(&mut self.seen, before, len);
        match &mut self.values {
            Values::Int(v) => grow(v, before, len),
            Values::Float(v) => grow(v, before, len),
            Values::Decimal(v) => grow(v, before, len),
        }
    }
}

fn compact<T: Copy>(v: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, before: usize, len: usize) {
    if before > 0 {
        v.splice(0..0, std::iter::repeat_n(T::default(), before));
    }
    v.resize(len, T::default());
}

/// Which slot holds a day (or key).
#[derive(Debug)]
enum Index {
    /// Slot `i` holds day `lo + i`.
    Dense { lo: i64 },
    /// For days too far apart to keep a slot for every day between them (placeholder
    /// dates such as 0001-01-01 among today's): a slot per day met.
    Sparse { slots: HashMap<i64, usize>, days: Vec<i64> },
    /// Keys of a day and a group (its low `bits`): a block of 2^`bits` slots per day met,
    /// in the order met (`days`, `blocks` the reverse); slot `i` holds group `i % 2^bits` of
    /// day `days[i >> bits]`.
    Blocks {
        bits: u32,
        blocks: HashMap<i64, usize>,
        days: Vec<i64>,
    },
}

/// The slots of every aggregate.
#[derive(Debug)]
struct Slots {
    /// The keys' type (the days are Date32's numbers).
    key: DataType,
    kinds: Vec<Kind>,
    /// Which aggregates count rows (they have a mask and no value argument).
    rows: Vec<bool>,
    item: DataType,
    index: Index,
    /// Whether a row had this day as its key.
    present: Vec<bool>,
    sums: Vec<Sums>,
}

/// Adds up `value` of the rows that `take` keeps (every row when it is `None`) over runs of
/// equal keys, and calls `add` once per run: rows come in time order, so runs are long, and
/// adding in a register avoids a read and a write of the slot per row.
#[inline]
fn runs<T: Copy + Plus>(
    take: &Option<NullBuffer>,
    keys: &[i64],
    value: impl Fn(usize) -> T,
    mut add: impl FnMut(i64, T),
) {
    let mut run: Option<(i64, T)> = None;
    let mut step = |i: usize| {
        let (key, x) = (keys[i], value(i));
        run = match run {
            Some((k, total)) if k == key => Some((k, total.plus(x))),
            Some((k, total)) => {
                add(k, total);
                Some((key, x))
            }
            None => Some((key, x)),
        };
    };
    match take {
        None => (0..keys.len()).for_each(&mut step),
        Some(t) => t.valid_indices().for_each(&mut step),
    }
    if let Some((k, total)) = run {
        add(k, total);
    }
}

/// The rows of a batch that an aggregate adds: their keys, the rows that count (`take`:
/// every row when it is `None`), and whether the keys come in runs.
struct Rows<'a> {
    keys: &'a [i64],
    take: Option<NullBuffer>,
    in_runs: bool,
}

impl Rows<'_> {
    /// Calls `add` with a key and the `value`s of its rows: once per run of equal keys (see
    /// [`runs`]), or, for keys that change from row to row (where looking for runs costs a
    /// mispredicted branch per row), once per row.
    #[inline]
    fn by_key<T: Copy + Plus>(&self, value: impl Fn(usize) -> T, mut add: impl FnMut(i64, T)) {
        let keys = self.keys;
        match (self.in_runs, &self.take) {
            (true, take) => runs(take, keys, value, add),
            (false, None) => (0..keys.len()).for_each(|i| add(keys[i], value(i))),
            (false, Some(t)) => t.valid_indices().for_each(|i| add(keys[i], value(i))),
        }
    }
}

/// Adds the values of the rows that count into their keys' slots (see [`Rows::by_key`]),
/// or, when every row of a run counts (`whole`: no mask, no null), each run in one loop.
fn add_sums<T: Copy + Plus>(
    x: &[T],
    v: &mut [T],
    seen: &mut [bool],
    rows: &Rows,
    whole: Option<&Vec<(i64, usize, usize)>>,
    slot: impl Fn(i64) -> usize,
) {
    let mut add = |key: i64, total: T| {
        let s = slot(key);
        v[s] = v[s].plus(total);
        seen[s] = true;
    };
    match whole {
        Some(runs) => {
            for &(key, start, end) in runs {
                let mut total = x[start];
                for &y in &x[start + 1..end] {
                    total = total.plus(y);
                }
                add(key, total);
            }
        }
        None => rows.by_key(|i| x[i], add),
    }
}

/// Addition that wraps for integers (as the slots do) and is plain for floats.
trait Plus {
    fn plus(self, other: Self) -> Self;
}

impl Plus for i64 {
    fn plus(self, other: i64) -> i64 {
        self.wrapping_add(other)
    }
}

impl Plus for i128 {
    fn plus(self, other: i128) -> i128 {
        self.wrapping_add(other)
    }
}

impl Plus for f64 {
    fn plus(self, other: f64) -> f64 {
        self + other
    }
}

impl Plus for () {
    fn plus(self, _: ()) {}
}

/// More days than this (about 2,900 years) between the first and the last key is not a
/// dense range.
const MAX_DAYS: i64 = 1 << 20;

/// Keys of a day and a group are counted per key in a batch when their slots are less than
/// this apart.
const MAX_SPREAD: i64 = 1 << 16;

/// The number of rows per key from `min` to `min + spread - 1`. Four counters per key,
/// taken in turn: a row adds to a counter that the row before did not, so the additions
/// do not wait for each other (keys out of runs still repeat a few often).
fn rows_per_key(keys: &[i64], min: i64, spread: usize) -> Vec<u32> {
    let mut lanes = vec![0u32; 4 * spread];
    let (l0, rest) = lanes.split_at_mut(spread);
    let (l1, rest) = rest.split_at_mut(spread);
    let (l2, l3) = rest.split_at_mut(spread);
    let at = |k: i64| (k - min) as usize;
    let mut four = keys.chunks_exact(4);
    for c in &mut four {
        l0[at(c[0])] += 1;
        l1[at(c[1])] += 1;
        l2[at(c[2])] += 1;
        l3[at(c[3])] += 1;
    }
    for &k in four.remainder() {
        l0[at(k)] += 1;
    }
    for (((a, b), c), d) in l0.iter_mut().zip(&*l1).zip(&*l2).zip(&*l3) {
        *a += b + c + d;
    }
    lanes.truncate(spread);
    lanes
}

impl Slots {
    /// Makes slots for every day from `min` to `max` (dense), or for every day of `keys`
    /// (sparse, which the slots become when the days are too far apart).
    fn cover(&mut self, min: i64, max: i64, keys: &[i64], nulls: Option<&NullBuffer>) {
        if let Index::Dense { lo: old } = self.index {
            let (lo, hi) = if self.present.is_empty() {
                (min, max)
            } else {
                (min.min(old), max.max(old + self.present.len() as i64 - 1))
            };
            if (hi as i128 - lo as i128) < MAX_DAYS as i128 {
                let before = if self.present.is_empty() {
                    0
                } else {
                    (old - lo) as usize
                };
                let len = (hi - lo + 1) as usize;
                if before > 0 || len > self.present.len() {
                    grow(&mut self.present, before, len);
                    for s in &mut self.sums {
                        s.grow(before, len);
                    }
                }
                self.index = Index::Dense { lo };
                return;
            }
            // Too far apart: a slot per day met so far.
            let days: Vec<i64> = (0..self.present.len())
                .filter(|&i| self.present[i])
                .map(|i| old + i as i64)
                .collect();
            for s in &mut self.sums {
                s.compact(&self.present);
            }
            self.present = vec![true; days.len()];
            let slots = days.iter().enumerate().map(|(i, d)| (*d, i)).collect();
            self.index = Index::Sparse { slots, days };
        }
        if let Index::Sparse { slots, days } = &mut self.index {
            let present = &mut self.present;
            let sums = &mut self.sums;
            runs(
                &nulls.cloned(),
                keys,
                |_| (),
                |day, _| {
                    if let std::collections::hash_map::Entry::Vacant(e) = slots.entry(day) {
                        e.insert(days.len());
                        days.push(day);
                        present.push(true);
                        for s in sums.iter_mut() {
                            s.grow(0, days.len());
                        }
                    }
                },
            );
        }
    }

    /// The slot of each row's key of a day and a group (0 for a row without a key), with a
    /// block of slots for each day met.
    fn place(&mut self, keys: &Int64Array) -> Vec<i64> {
        let Index::Blocks { bits, blocks, days } = &mut self.index else {
            unreachable!("keys of a day and a group")
        };
        let bits = *bits;
        let group = (1i64 << bits) - 1;
        let mut out = vec![0i64; keys.len()];
        {
            // Rows come in about time order: the day of the row before is mostly the row's.
            let mut last: Option<(i64, i64)> = None;
            let mut place = |key: i64| {
                let day = key >> bits;
                let first = match last {
                    Some((d, first)) if d == day => first,
                    _ => {
                        let block = *blocks.entry(day).or_insert_with(|| {
                            days.push(day);
                            days.len() - 1
                        });
                        let first = (block as i64) << bits;
                        last = Some((day, first));
                        first
                    }
                };
                first | (key & group)
            };
            match keys.nulls() {
                None => out.iter_mut().zip(keys.values()).for_each(|(o, &k)| *o = place(k)),
                Some(valid) => valid.valid_indices().for_each(|i| out[i] = place(keys.value(i))),
            }
        }
        let len = days.len() << bits;
        if len > self.present.len() {
            grow(&mut self.present, 0, len);
            for s in &mut self.sums {
                s.grow(0, len);
            }
        }
        out
    }

    /// Adds rows: `keys` with, per aggregate, a value (or `None`: merged partial sums, which
    /// are added as they are) and a mask.
    fn add(&mut self, keys: &Int64Array, values: &[(ArrayRef, Option<&BooleanArray>)]) -> Result<()> {
        let key_nulls = keys.nulls();
        // Keys of a day and a group stand for their slots from here on.
        let placed;
        let k = match self.index {
            Index::Blocks { .. } => {
                placed = self.place(keys);
                &placed[..]
            }
            _ => keys.values(),
        };
        let (min, max) = match key_nulls {
            None => k
                .iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x))),
            Some(valid) => valid
                .valid_indices()
                .fold((i64::MAX, i64::MIN), |(lo, hi), i| (lo.min(k[i]), hi.max(k[i]))),
        };
        if min > max {
            return Ok(());
        }
        self.cover(min, max, k, key_nulls);
        let index = &self.index;
        let slot = |day: i64| match index {
            Index::Dense { lo } => (day - lo) as usize,
            Index::Sparse { slots, .. } => slots[&day],
            Index::Blocks { .. } => day as usize,
        };
        // Days come in runs (rows in time order); the groups of a day change from row to row.
        let in_runs = !matches!(index, Index::Blocks { .. });
        // Keys of a day and a group, all there: the rows per key, counted once for the
        // counts of rows and for the keys present.
        let rows_per_key = match index {
            Index::Blocks { .. } if key_nulls.is_none() && max - min < MAX_SPREAD => {
                Some(rows_per_key(k, min, (max - min + 1) as usize))
            }
            _ => None,
        };
        let present = &mut self.present;
        match &rows_per_key {
            Some(rows) => {
                let first = slot(min);
                for (p, &n) in present[first..first + rows.len()].iter_mut().zip(rows) {
                    *p |= n > 0;
                }
            }
            None => {
                let keyed = Rows {
                    keys: k,
                    take: key_nulls.cloned(),
                    in_runs,
                };
                keyed.by_key(|_| (), |key, _| present[slot(key)] = true)
            }
        }
        // Runs of equal keys (when no key is null): counts of rows and of mask bits per run
        // need no pass over the rows.
        let key_runs: Option<Vec<(i64, usize, usize)>> = (in_runs && key_nulls.is_none()).then(|| {
            let mut out = Vec::new();
            let mut start = 0;
            for i in 1..=k.len() {
                if i == k.len() || k[i] != k[start] {
                    out.push((k[start], start, i));
                    start = i;
                }
            }
            out
        });
        for ((kind, sums), (value, mask)) in self.kinds.iter().zip(&mut self.sums).zip(values) {
            // The rows that count: a key, a true mask, a value.
            let nulls = NullBuffer::union(key_nulls, value.nulls());
            let bits = mask
                .filter(|m| m.null_count() > 0 || m.true_count() < m.len())
                .map(|m| match m.nulls() {
                    // True and not null.
                    Some(n) => m.values() & n.inner(),
                    None => m.values().clone(),
                });
            let take = match &bits {
                Some(b) => NullBuffer::union(nulls.as_ref(), Some(&NullBuffer::new(b.clone()))),
                None => nulls.clone(),
            };
            let whole_runs = key_runs.as_ref().filter(|_| value.nulls().is_none());
            // Runs whose every row's value is added.
            let whole_sums = whole_runs.filter(|_| bits.is_none());
            let rows = Rows { keys: k, take, in_runs };
            let Sums { values: slots, seen } = sums;
            match (kind, slots) {
                // A count of rows with keys and values: each run's length, or the number of
                // its mask's bits that are set.
                (Kind::Count, Values::Int(v)) if mask.is_some() && whole_runs.is_some() => {
                    for &(key, start, end) in whole_runs.into_iter().flatten() {
                        let n = match &bits {
                            Some(b) => b.slice(start, end - start).count_set_bits(),
                            None => end - start,
                        };
                        v[slot(key)] += n as i64;
                    }
                }
                // Every row with a key counts: the rows per key.
                (Kind::Count, Values::Int(v))
                    if mask.is_some() && bits.is_none() && value.nulls().is_none() && rows_per_key.is_some() =>
                {
                    let rows = rows_per_key.as_deref().unwrap_or_default();
                    let first = slot(min);
                    for (v, &n) in v[first..first + rows.len()].iter_mut().zip(rows) {
                        *v += n as i64;
                    }
                }
                (Kind::Count, Values::Int(v)) if mask.is_none() => {
                    // Merged partial counts.
                    let x = value.as_primitive::<Int64Type>().values();
                    rows.by_key(|i| x[i], |key, n| v[slot(key)] += n);
                }
                (Kind::Count, Values::Int(v)) => rows.by_key(|_| 1i64, |key, n| v[slot(key)] += n),
                (Kind::SumInt, Values::Int(v)) => {
                    let x = cast(value, &DataType::Int64)?;
                    let x = x.as_primitive::<Int64Type>().values();
                    add_sums(x, v, seen, &rows, whole_sums, slot);
                }
                (Kind::SumFloat, Values::Float(v)) => {
                    let x = cast(value, &DataType::Float64)?;
                    let x = x.as_primitive::<Float64Type>().values();
                    add_sums(x, v, seen, &rows, whole_sums, slot);
                }
                (Kind::SumDecimal(..), Values::Decimal(v)) => {
                    let x = value.as_primitive::<Decimal128Type>().values();
                    add_sums(x, v, seen, &rows, whole_sums, slot);
                }
                _ => return exec_err!("tally_dense: slots of another kind"),
            }
        }
        Ok(())
    }

    /// The days seen with their values, as one list of structs.
    fn result(&self) -> Result<ScalarValue> {
        let (days, keys): (Vec<usize>, Vec<i64>) = match &self.index {
            Index::Dense { lo } => (0..self.present.len())
                .filter(|&i| self.present[i])
                .map(|i| (i, lo + i as i64))
                .unzip(),
            Index::Sparse { days, .. } => {
                let mut order: Vec<(usize, i64)> = days.iter().copied().enumerate().collect();
                order.sort_by_key(|x| x.1);
                order.into_iter().unzip()
            }
            Index::Blocks { bits, days, .. } => {
                let group = (1usize << bits) - 1;
                let mut order: Vec<(usize, i64)> = (0..self.present.len())
                    .filter(|&i| self.present[i])
                    .map(|i| (i, days[i >> bits] << bits | (i & group) as i64))
                    .collect();
                order.sort_by_key(|x| x.1);
                order.into_iter().unzip()
            }
        };
        let keys: ArrayRef = match self.key {
            DataType::Date32 => Arc::new(Date32Array::from_iter_values(keys.iter().map(|&k| k as i32))),
            _ => Arc::new(Int64Array::from(keys)),
        };
        let mut columns: Vec<ArrayRef> = vec![keys];
        for (kind, Sums { values, seen }) in self.kinds.iter().zip(&self.sums) {
            let column: ArrayRef = match (kind, values) {
                (Kind::Count, Values::Int(v)) => Arc::new(Int64Array::from_iter_values(days.iter().map(|&i| v[i]))),
                (_, Values::Int(v)) => Arc::new(Int64Array::from_iter(days.iter().map(|&i| seen[i].then_some(v[i])))),
                (_, Values::Float(v)) => {
                    Arc::new(Float64Array::from_iter(days.iter().map(|&i| seen[i].then_some(v[i]))))
                }
                (Kind::SumDecimal(p, s), Values::Decimal(v)) => Arc::new(
                    Decimal128Array::from_iter(days.iter().map(|&i| seen[i].then_some(v[i])))
                        .with_precision_and_scale(*p, *s)?,
                ),
                _ => return exec_err!("tally_dense: slots of another kind"),
            };
            columns.push(column);
        }
        let DataType::Struct(fields) = &self.item else {
            return exec_err!("tally_dense: a struct was expected");
        };
        let structs = StructArray::try_new(fields.clone(), columns, None)?;
        let list = ListArray::try_new(
            Arc::new(Field::new_list_field(self.item.clone(), true)),
            OffsetBuffer::from_lengths([structs.len()]),
            Arc::new(structs),
            None,
        )?;
        Ok(ScalarValue::List(Arc::new(list)))
    }
}

impl Accumulator for Slots {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let keys = cast(&values[0], &DataType::Int64)?;
        let keys = keys.as_primitive::<Int64Type>();
        let mut pairs: Vec<(ArrayRef, Option<&BooleanArray>)> = Vec::with_capacity(self.kinds.len());
        let mut at = 1;
        for &rows in &self.rows {
            if rows {
                // A row counts when it has a key: the keys stand in for the value.
                pairs.push((values[0].clone(), Some(values[at].as_boolean())));
                at += 1;
            } else {
                pairs.push((values[at].clone(), Some(values[at + 1].as_boolean())));
                at += 2;
            }
        }
        self.add(keys, &pairs)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for i in (0..lists.len()).filter(|&i| lists.is_valid(i)) {
            let item = lists.value(i);
            let structs = item.as_struct();
            let keys = cast(structs.column(0), &DataType::Int64)?;
            let pairs: Vec<(ArrayRef, Option<&BooleanArray>)> =
                structs.columns()[1..].iter().map(|c| (c.clone(), None)).collect();
            self.add(keys.as_primitive::<Int64Type>(), &pairs)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.result()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.result()
    }

    fn size(&self) -> usize {
        let per_slot: usize = 1 + self
            .sums
            .iter()
            .map(|s| match s.values {
                Values::Int(_) | Values::Float(_) => 9,
                Values::Decimal(_) => 17,
            })
            .sum::<usize>();
        std::mem::size_of_val(self) + self.present.len() * per_slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::Date32Type;

    fn slots(kinds: Vec<Kind>) -> Box<dyn Accumulator> {
        let rows = vec![false; kinds.len()];
        Box::new(Dense::new(DataType::Date32, 0, kinds, rows).slots())
    }

    /// The (day, values as text) rows of a result.
    fn rows(v: ScalarValue) -> Vec<(i32, Vec<String>)> {
        let ScalarValue::List(list) = v else { panic!("a list") };
        let item = list.value(0);
        let s = item.as_struct();
        let keys = s.column(0).as_primitive::<Date32Type>();
        (0..s.len())
            .map(|i| {
                let values = s.columns()[1..]
                    .iter()
                    .map(|c| datafusion::arrow::util::display::array_value_to_string(c, i).unwrap_or_default())
                    .collect();
                (keys.value(i), values)
            })
            .collect()
    }

    fn date32(v: Vec<Option<i32>>) -> ArrayRef {
        Arc::new(Date32Array::from(v))
    }

    /// By hand: keys out of order with a null, a count with a filter (null as false), a
    /// count of a column with nulls, a sum of integers with nulls and a sum of decimals.
    #[test]
    fn counts_and_sums_per_day_as_a_group_by_would() {
        let mut acc = slots(vec![Kind::Count, Kind::Count, Kind::SumInt, Kind::SumDecimal(20, 2)]);
        let keys = date32(vec![Some(10), Some(12), Some(10), None, Some(12), Some(11), Some(10)]);
        let mask: ArrayRef = Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(true),
            Some(false),
            Some(true),
        ]));
        let all: ArrayRef = Arc::new(BooleanArray::from(vec![true; 7]));
        let names: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            None,
            Some("b"),
            Some("c"),
            Some("d"),
            None,
            Some("e"),
        ]));
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![
            Some(1),
            Some(2),
            None,
            Some(4),
            Some(5),
            None,
            Some(7),
        ]));
        let cents: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(150), Some(250), Some(1), None, Some(5), None, Some(-1)])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        );
        let one: ArrayRef = Arc::new(Int64Array::from(vec![1; 7]));
        acc.update_batch(&[keys, one, mask, names, all.clone(), ints, all.clone(), cents, all])
            .unwrap();
        // Day 10: rows 0, 2, 6; day 11: row 5; day 12: rows 1, 4; the null key is left out.
        assert_eq!(
            rows(acc.evaluate().unwrap()),
            vec![
                (10, vec!["2".into(), "3".into(), "8".into(), "1.50".into()]),
                (11, vec!["0".into(), "0".into(), "".into(), "".into()]),
                (12, vec!["1".into(), "1".into(), "7".into(), "2.55".into()]),
            ]
        );
    }

    /// Partial results merge into the whole, and days too far apart for a slot per day
    /// between them get a slot each.
    #[test]
    fn partials_merge_and_far_apart_days_get_their_own_slots() {
        let far = 2_932_896; // 9999-12-31, more than MAX_DAYS after 2024
        assert!(far - 20_000 > MAX_DAYS as i32);
        let batch = |keys: Vec<Option<i32>>, x: Vec<f64>| -> Vec<ArrayRef> {
            let n = keys.len();
            vec![
                date32(keys),
                Arc::new(Int64Array::from(vec![1; n])),
                Arc::new(BooleanArray::from(vec![true; n])),
                Arc::new(Float64Array::from(x)),
                Arc::new(BooleanArray::from(vec![true; n])),
            ]
        };
        let mut a = slots(vec![Kind::Count, Kind::SumFloat]);
        a.update_batch(&batch(vec![Some(20_000), Some(20_001)], vec![1.5, 2.0]))
            .unwrap();
        let mut b = slots(vec![Kind::Count, Kind::SumFloat]);
        b.update_batch(&batch(vec![Some(far), Some(20_000)], vec![0.25, 4.0]))
            .unwrap();
        let mut whole = slots(vec![Kind::Count, Kind::SumFloat]);
        let to_array = |v: ScalarValue| v.to_array().unwrap();
        let states: Vec<ArrayRef> = [a.state().unwrap(), b.state().unwrap()]
            .into_iter()
            .map(|s| to_array(s[0].clone()))
            .collect();
        let merged = datafusion::arrow::compute::concat(&[states[0].as_ref(), states[1].as_ref()]).unwrap();
        whole.merge_batch(&[merged]).unwrap();
        assert_eq!(
            rows(whole.evaluate().unwrap()),
            vec![
                (20_000, vec!["2".into(), "5.5".into()]),
                (20_001, vec!["1".into(), "2.0".into()]),
                (far, vec!["1".into(), "0.25".into()]),
            ]
        );
    }

    /// Keys and values all there: counts of mask bits and sums per run of equal keys.
    #[test]
    fn runs_of_keys_count_bits_and_sum_whole_runs() {
        let mut acc = slots(vec![Kind::Count, Kind::SumInt, Kind::SumFloat]);
        let keys = date32(vec![Some(5), Some(5), Some(5), Some(6), Some(6), Some(5)]);
        let mask: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true, true, false, true]));
        let all: ArrayRef = Arc::new(BooleanArray::from(vec![true; 6]));
        let one: ArrayRef = Arc::new(Int64Array::from(vec![1; 6]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![0.5, 0.25, 0.125, 1.0, 2.0, 4.0]));
        acc.update_batch(&[keys, one, mask, ints, all.clone(), floats, all])
            .unwrap();
        assert_eq!(
            rows(acc.evaluate().unwrap()),
            vec![
                (5, vec!["3".into(), "12".into(), "4.875".into()]),
                (6, vec!["1".into(), "9".into(), "3.0".into()]),
            ]
        );
    }

    /// Int64 keys that change from row to row, in batches with and without null keys, in
    /// two partial states merged: the counts and sums a table per key gives, as keys with a
    /// slot each from the least to the greatest (added over runs), and as keys of a day and
    /// a group in blocks per day (64 groups, days before 1970 too; added row by row).
    #[test]
    fn keys_out_of_runs_add_up_row_by_row() {
        use std::collections::BTreeMap;
        for group_bits in [0, 6] {
            let d = Dense::new(
                DataType::Int64,
                group_bits,
                vec![Kind::Count, Kind::Count, Kind::Count, Kind::SumInt, Kind::SumFloat],
                vec![true, true, false, false, false],
            );
            // Row i of a batch: its key (three stretches apart, 37 keys each), mask, value.
            let row = |b: usize, i: usize| {
                let x = (i * 7919 + i * i * 31 + b) % 41;
                // Odd batches have null keys.
                let null = !b.is_multiple_of(2) && (x >= 37 || i.is_multiple_of(13));
                let base = match i {
                    0..300 => -3000,
                    300..700 => 1000,
                    _ => 4000,
                };
                let key = (!null).then_some(base + (x % 37) as i64);
                let value = (!i.is_multiple_of(5)).then_some(i as i64 - 300);
                (key, !i.is_multiple_of(3), value)
            };
            let mut expected: BTreeMap<i64, (i64, i64, i64, Option<i64>)> = BTreeMap::new();
            let mut partials = Vec::new();
            for part in 0..2 {
                let mut acc = d.slots();
                for b in [2 * part, 2 * part + 1] {
                    let rows: Vec<_> = (0..1000).map(|i| row(b, i)).collect();
                    for &(key, mask, value) in &rows {
                        let Some(k) = key else { continue };
                        let e = expected.entry(k).or_default();
                        e.0 += 1;
                        e.1 += mask as i64;
                        e.2 += value.is_some() as i64;
                        if let Some(v) = value {
                            e.3 = Some(e.3.unwrap_or(0) + v);
                        }
                    }
                    let keys: ArrayRef = Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0)));
                    let mask: ArrayRef = Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.1))));
                    let all: ArrayRef = Arc::new(BooleanArray::from(vec![true; rows.len()]));
                    let ints: ArrayRef = Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2)));
                    let floats: ArrayRef =
                        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2.map(|v| v as f64))));
                    let args = [
                        all.clone(),
                        mask,
                        ints.clone(),
                        all.clone(),
                        ints,
                        all.clone(),
                        floats,
                        all,
                    ];
                    acc.update_batch(&[vec![keys], args.to_vec()].concat()).unwrap();
                }
                partials.push(acc.state().unwrap()[0].to_array().unwrap());
            }
            let mut whole = d.slots();
            let merged = datafusion::arrow::compute::concat(&[partials[0].as_ref(), partials[1].as_ref()]).unwrap();
            whole.merge_batch(&[merged]).unwrap();
            let ScalarValue::List(list) = whole.evaluate().unwrap() else {
                panic!("a list")
            };
            let item = list.value(0);
            let got = item.as_struct();
            let text = |c: usize, i: usize| {
                datafusion::arrow::util::display::array_value_to_string(got.column(c), i).unwrap_or_default()
            };
            let keys = got.column(0).as_primitive::<Int64Type>();
            let want: Vec<i64> = expected.keys().copied().collect();
            assert_eq!(keys.values().to_vec(), want, "group bits {group_bits}");
            for (i, (_, (rows, masked, values, sum))) in expected.iter().enumerate() {
                let sum = sum.map(|s| s.to_string()).unwrap_or_default();
                let float = sum.parse::<f64>().map(|s| format!("{s:.1}")).unwrap_or_default();
                assert_eq!(
                    (1..6).map(|c| text(c, i)).collect::<Vec<_>>(),
                    vec![rows.to_string(), masked.to_string(), values.to_string(), sum, float],
                    "key {}, group bits {group_bits}",
                    keys.value(i)
                );
            }
        }
    }

    /// A count of rows has only a mask: a row counts when it has a key and its mask is true.
    #[test]
    fn counts_of_rows_take_a_mask_only() {
        let d = Dense::new(DataType::Date32, 0, vec![Kind::Count, Kind::SumInt], vec![true, false]);
        let mut acc = d.slots();
        let keys = date32(vec![Some(1), Some(1), None, Some(2)]);
        let mask: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true, true]));
        let all: ArrayRef = Arc::new(BooleanArray::from(vec![true; 4]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![10, 20, 30, 40]));
        acc.update_batch(&[keys, mask, ints, all]).unwrap();
        assert_eq!(
            rows(acc.evaluate().unwrap()),
            vec![(1, vec!["1".into(), "30".into()]), (2, vec!["1".into(), "40".into()])]
        );
    }
}
