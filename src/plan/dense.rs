//! Counts and sums per day or period without a hash table.
//!
//! Grouping 10 million rows by a date costs DataFusion a hash-table probe per row, a third
//! of a whole daily query. Dates of one query span a few hundred or thousand days, so
//! `tally_dense(key, value₁, mask₁, value₂, mask₂, ...)` keeps one slot per day from the
//! first to the last date it meets, adds each row into its slot, and returns the days seen
//! with their sums as a list of structs, which the plan unnests into the rows a
//! `GROUP BY key` would have given: the same keys (every date with a row), counts (0 where
//! no row passes the mask) and sums (null where no value is summed).

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, ListArray,
    StructArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, FieldRef, Fields, Float64Type, Int64Type,
};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Expr, Signature, Volatility};
use std::sync::Arc;

/// What one aggregate adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Rows whose value is not null (`count(*)` passes a literal).
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

/// `tally_dense(key, value, mask, ...)` with one (value, mask) pair per kind.
pub fn dense(kinds: Vec<Kind>, args: Vec<Expr>) -> Expr {
    AggregateUDF::from(Dense::new(kinds)).call(args)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Dense {
    kinds: Vec<Kind>,
    signature: Signature,
}

impl Dense {
    fn new(kinds: Vec<Kind>) -> Self {
        Dense {
            kinds,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    fn item(&self) -> DataType {
        let mut fields = vec![Field::new(KEY, DataType::Date32, false)];
        fields.extend(
            self.kinds
                .iter()
                .enumerate()
                .map(|(i, k)| Field::new(value_field(i), k.data_type(), true)),
        );
        DataType::Struct(Fields::from(fields))
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
        Ok(Box::new(Slots {
            kinds: self.kinds.clone(),
            item: self.item(),
            lo: 0,
            present: Vec::new(),
            sums: self.kinds.iter().map(|k| Sums::new(*k)).collect(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}_days", args.name), self.list(), true))])
    }
}

/// One aggregate's slots, and whether each has a value (sums of nothing are null).
#[derive(Debug)]
enum Sums {
    Int(Vec<i64>, Vec<bool>),
    Float(Vec<f64>, Vec<bool>),
    Decimal(Vec<i128>, Vec<bool>),
}

impl Sums {
    fn new(kind: Kind) -> Sums {
        match kind {
            Kind::Count | Kind::SumInt => Sums::Int(Vec::new(), Vec::new()),
            Kind::SumFloat => Sums::Float(Vec::new(), Vec::new()),
            Kind::SumDecimal(..) => Sums::Decimal(Vec::new(), Vec::new()),
        }
    }

    /// Makes room for `before` slots in front and `len` in all.
    fn grow(&mut self, before: usize, len: usize) {
        fn grow<T: Copy + Default>(v: &mut Vec<T>, before: usize, len: usize) {
            if before > 0 {
                v.splice(0..0, std::iter::repeat_n(T::default(), before));
            }
            v.resize(len, T::default());
        }
        match self {
            Sums::Int(v, s) => {
                grow(v, before, len);
                grow(s, before, len);
            }
            Sums::Float(v, s) => {
                grow(v, before, len);
                grow(s, before, len);
            }
            Sums::Decimal(v, s) => {
                grow(v, before, len);
                grow(s, before, len);
            }
        }
    }
}

/// The slots of every aggregate, from day `lo` on.
#[derive(Debug)]
struct Slots {
    kinds: Vec<Kind>,
    item: DataType,
    lo: i32,
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
    keys: &[i32],
    value: impl Fn(usize) -> T,
    mut add: impl FnMut(i32, T),
) {
    let mut run: Option<(i32, T)> = None;
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

/// More days than this between the first and the last key is not a dense range.
const MAX_DAYS: i64 = 1 << 23;

impl Slots {
    /// Makes slots for every day from `min` to `max`.
    fn cover(&mut self, min: i32, max: i32) -> Result<()> {
        let (lo, hi) = if self.present.is_empty() {
            (min, max)
        } else {
            (min.min(self.lo), max.max(self.lo + self.present.len() as i32 - 1))
        };
        if hi as i64 - lo as i64 >= MAX_DAYS {
            return exec_err!("the dates of the data span more than {MAX_DAYS} days");
        }
        let before = if self.present.is_empty() { 0 } else { (self.lo - lo) as usize };
        let len = (hi - lo + 1) as usize;
        if before > 0 || len > self.present.len() {
            if before > 0 {
                self.present.splice(0..0, std::iter::repeat_n(false, before));
            }
            self.present.resize(len, false);
            for s in &mut self.sums {
                s.grow(before, len);
            }
        }
        self.lo = lo;
        Ok(())
    }

    /// Adds rows: `keys` with, per aggregate, a value (or `None`: merged partial sums, which
    /// are added as they are) and a mask.
    fn add(&mut self, keys: &Date32Array, values: &[(ArrayRef, Option<&BooleanArray>)]) -> Result<()> {
        let (mut min, mut max) = (i32::MAX, i32::MIN);
        for k in keys.iter().flatten() {
            min = min.min(k);
            max = max.max(k);
        }
        if min > max {
            return Ok(());
        }
        self.cover(min, max)?;
        let lo = self.lo;
        let slot = |k: i32| (k - lo) as usize;
        let key_nulls = keys.nulls();
        let k = keys.values();
        let present = &mut self.present;
        runs(&key_nulls.cloned(), k, |_| (), |key, _| present[slot(key)] = true);
        for ((kind, sums), (value, mask)) in self.kinds.iter().zip(&mut self.sums).zip(values) {
            // The rows that count: a key, a true mask, a value.
            let mut take = NullBuffer::union(key_nulls, value.nulls());
            if let Some(m) = mask.filter(|m| m.null_count() > 0 || m.true_count() < m.len()) {
                // True and not null.
                let bits = match m.nulls() {
                    Some(n) => m.values() & n.inner(),
                    None => m.values().clone(),
                };
                take = NullBuffer::union(take.as_ref(), Some(&NullBuffer::new(bits)));
            }
            match (kind, sums) {
                (Kind::Count, Sums::Int(v, _)) if mask.is_none() => {
                    // Merged partial counts.
                    let x = value.as_primitive::<Int64Type>().values();
                    runs(&take, k, |i| x[i], |key, n| v[slot(key)] += n);
                }
                (Kind::Count, Sums::Int(v, _)) => runs(&take, k, |_| 1i64, |key, n| v[slot(key)] += n),
                (Kind::SumInt, Sums::Int(v, seen)) => {
                    let x = cast(value, &DataType::Int64)?;
                    let x = x.as_primitive::<Int64Type>().values();
                    runs(&take, k, |i| x[i], |key, total: i64| {
                        let s = slot(key);
                        v[s] = v[s].wrapping_add(total);
                        seen[s] = true;
                    });
                }
                (Kind::SumFloat, Sums::Float(v, seen)) => {
                    let x = cast(value, &DataType::Float64)?;
                    let x = x.as_primitive::<Float64Type>().values();
                    runs(&take, k, |i| x[i], |key, total: f64| {
                        let s = slot(key);
                        v[s] += total;
                        seen[s] = true;
                    });
                }
                (Kind::SumDecimal(..), Sums::Decimal(v, seen)) => {
                    let x = value.as_primitive::<Decimal128Type>().values();
                    runs(&take, k, |i| x[i], |key, total: i128| {
                        let s = slot(key);
                        v[s] = v[s].wrapping_add(total);
                        seen[s] = true;
                    });
                }
                _ => return exec_err!("tally_dense: slots of another kind"),
            }
        }
        Ok(())
    }

    /// The days seen with their values, as one list of structs.
    fn result(&self) -> Result<ScalarValue> {
        let days: Vec<usize> = (0..self.present.len()).filter(|&i| self.present[i]).collect();
        let keys = Date32Array::from_iter_values(days.iter().map(|&i| self.lo + i as i32));
        let mut columns: Vec<ArrayRef> = vec![Arc::new(keys)];
        for (kind, sums) in self.kinds.iter().zip(&self.sums) {
            let column: ArrayRef = match (kind, sums) {
                (Kind::Count, Sums::Int(v, _)) => Arc::new(Int64Array::from_iter_values(days.iter().map(|&i| v[i]))),
                (_, Sums::Int(v, seen)) => Arc::new(Int64Array::from_iter(days.iter().map(|&i| seen[i].then_some(v[i])))),
                (_, Sums::Float(v, seen)) => {
                    Arc::new(Float64Array::from_iter(days.iter().map(|&i| seen[i].then_some(v[i]))))
                }
                (Kind::SumDecimal(p, s), Sums::Decimal(v, seen)) => Arc::new(
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
        let keys = cast(&values[0], &DataType::Date32)?;
        let keys = keys.as_primitive::<Date32Type>();
        let pairs: Vec<(ArrayRef, Option<&BooleanArray>)> = values[1..]
            .chunks(2)
            .map(|c| (c[0].clone(), Some(c[1].as_boolean())))
            .collect();
        self.add(keys, &pairs)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for i in (0..lists.len()).filter(|&i| lists.is_valid(i)) {
            let item = lists.value(i);
            let structs = item.as_struct();
            let keys = structs.column(0).as_primitive::<Date32Type>().clone();
            let pairs: Vec<(ArrayRef, Option<&BooleanArray>)> =
                structs.columns()[1..].iter().map(|c| (c.clone(), None)).collect();
            self.add(&keys, &pairs)?;
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
            .map(|s| match s {
                Sums::Int(..) | Sums::Float(..) => 9,
                Sums::Decimal(..) => 17,
            })
            .sum::<usize>();
        std::mem::size_of_val(self) + self.present.len() * per_slot
    }
}
