//! Filters that compare columns with literals, evaluated once per class of rows.
//!
//! The metrics of a KPI pack filter a few columns against literals (`status = "paid"`,
//! `amount > 100`, `created_at >= 2024-01-01`). Every such comparison gives the same answer
//! for all the values of a column between two consecutive literals it meets, so a row needs
//! only its column's *class*: null, below the first literal, equal to it, between it and the
//! next, and so on. `tally_classes(c₁, c₂, ...)` packs the classes of a row's filter columns
//! into one UInt64; the scan groups by that (a few hundred values) next to the period and
//! breakdown, and each filter, rewritten into comparisons of class numbers
//! ([`Classes::filter`]), is evaluated on that small table instead of on every row.
//!
//! Classes of a column with the sorted literals t₀ < t₁ < ... < tₙ₋₁, as stored:
//! 0 null, 1 below t₀, 2 equal to t₀, 3 between t₀ and t₁, ..., 2n + 1 above tₙ₋₁.
//! `c > tⱼ` is then `class > 2j + 2`, `c = tⱼ` is `class = 2j + 2`, and so on; a null class
//! (0 read back as null) keeps SQL's answer for nulls, also under `not`.
//!
//! Combinations of classes that every filter answers alike are then one group (see
//! [`Classes::canonical`]), and by period alone the groups are numbered for dense slots
//! ([`Classes::keyed`]).

use super::integral;
use crate::ast::BinOp;
use crate::model::{Model, RowExpr, RowKind, SourceId};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int32Type, Int64Type, Schema, TimeUnit, UInt64Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{Column, DFSchema, Result, exec_err};
use datafusion::functions::expr_fn as func;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
    binary_expr, lit,
};
use datafusion::physical_expr::create_physical_expr;
use std::collections::HashMap;
use std::sync::Arc;

/// How a column's values are compared with its literals.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Domain {
    /// Integers (and booleans as 0 and 1), as Int64.
    Int,
    /// Floating-point numbers in IEEE total order, as DataFusion compares them.
    Float,
    /// Dates, as days since 1970-01-01.
    Days,
    /// Timestamps without a time zone, in their unit; a date literal is its midnight.
    Time(TimeUnit),
    /// Strings, byte by byte.
    Str,
}

/// A column's literals, sorted and without duplicates, and its classes.
///
/// With `n` literals t₀ < … < tₙ₋₁, a value's *raw* class is 0 for null, `2i + 1` between
/// tᵢ₋₁ and tᵢ (below t₀ for `i` = 0, above tₙ₋₁ for `i` = n), `2i + 2` for tᵢ itself.
/// Filters need fewer: `x > t` tells apart only the values up to t from those above, so
/// the value t can share the class below it. `compact[raw]` numbers the classes the
/// filters tell apart (see [`compact`]): fewer classes, fewer groups of rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Literals {
    /// Integers, days, timestamps, or the total-order keys of floats, with their index.
    Keys(KeyIndex),
    Strings {
        strings: Vec<String>,
        compact: Vec<u32>,
    },
}

impl Literals {
    fn compact(&self) -> &[u32] {
        match self {
            Literals::Keys(k) => &k.compact,
            Literals::Strings { compact, .. } => compact,
        }
    }
}

/// Which sides of a literal a filter tells apart from the literal itself.
#[derive(Debug, Clone, Copy, Default)]
struct Sides {
    /// The values below it (`x < t`, `x >= t`, `=`, `between t and …`).
    below: bool,
    /// The values above it (`x > t`, `x <= t`, `=`, `between … and t`).
    above: bool,
}

const BOTH: Sides = Sides {
    below: true,
    above: true,
};

impl Sides {
    fn of(op: BinOp) -> Sides {
        match op {
            BinOp::Lt | BinOp::Ge => Sides {
                below: true,
                above: false,
            },
            BinOp::Gt | BinOp::Le => Sides {
                below: false,
                above: true,
            },
            _ => BOTH,
        }
    }
}

/// The classes of raw classes 0 ..= 2n + 1 of literals that are told apart from their
/// sides as `sides` say: a new class starts at every side told apart (and null is a class
/// of its own).
fn compact(sides: &[Sides]) -> Vec<u32> {
    let mut class = 0;
    let mut out = vec![0];
    for raw in 1..=2 * sides.len() + 1 {
        let starts = match raw {
            1 => true,
            r if r % 2 == 0 => sides[(r - 2) / 2].below,
            r => sides[(r - 3) / 2].above,
        };
        class += starts as u32;
        out.push(class);
    }
    out
}

/// Literals (sorted by `key`) met with the same key as one, told apart on the sides any of
/// them is.
fn merged<K: Ord>(mut lits: Vec<(K, Sides)>) -> (Vec<K>, Vec<Sides>) {
    lits.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut keys, mut sides): (Vec<K>, Vec<Sides>) = (Vec::new(), Vec::new());
    for (k, s) in lits {
        match (keys.last(), sides.last_mut()) {
            (Some(last), Some(t)) if *last == k => {
                t.below |= s.below;
                t.above |= s.above;
            }
            _ => {
                keys.push(k);
                sides.push(s);
            }
        }
    }
    (keys, sides)
}

/// One filter column: where its classes are in the packed number, and how they are found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassColumn {
    source: SourceId,
    name: String,
    domain: Domain,
    literals: Literals,
    shift: u32,
    bits: u32,
}

/// The filter columns of a scan, their literals and their places in the packed classes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Classes {
    columns: Vec<ClassColumn>,
    /// The packed classes that every filter answers alike, numbered (see
    /// [`Classes::canonical`]), when the classes take at most [`CANONICAL_BITS`] bits.
    canonical: Option<Arc<Canonical>>,
}

/// Packed classes numbered by the filters' answers.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Canonical {
    /// Per packed classes, the number of its answers.
    number: Vec<u32>,
    /// Per number, the first packed classes with those answers.
    first: Vec<u32>,
}

impl Canonical {
    /// The bits that hold the numbers (one at least: in a key of [`Classes::keyed`], no
    /// bits would be a key of days alone).
    fn bits(&self) -> u32 {
        bits_for(self.first.len() as u32 - 1).max(1)
    }
}

/// Classes of more bits than this are not made canonical: a table of 2¹⁶ entries is
/// 256 KiB, and its making evaluates every filter on every entry.
const CANONICAL_BITS: u32 = 16;

/// The packed classes' column in the batch that [`Classes::canonical`] evaluates filters on.
const CANONICAL_COLUMN: &str = "classes";

/// A literal met by a column, as written.
#[derive(Clone, Copy)]
enum Lit<'a> {
    Number(f64),
    String(&'a str),
    Bool(bool),
    Date(chrono::NaiveDate),
}

impl<'a> Lit<'a> {
    fn of(e: &'a RowExpr) -> Option<Lit<'a>> {
        match &e.kind {
            RowKind::Number(n) => Some(Lit::Number(*n)),
            // `-n`: the negation of the literal as the plan writes it (`-0` is the integer 0).
            RowKind::Neg(a) => match a.kind {
                RowKind::Number(n) if integral(n) => Some(Lit::Number(-(n as i64) as f64)),
                RowKind::Number(n) => Some(Lit::Number(-n)),
                _ => None,
            },
            RowKind::String(s) => Some(Lit::String(s)),
            RowKind::Bool(b) => Some(Lit::Bool(*b)),
            RowKind::Date(d) => Some(Lit::Date(*d)),
            _ => None,
        }
    }
}

/// The column an expression is, if it is one.
fn column_of(e: &RowExpr) -> Option<(SourceId, &str)> {
    match &e.kind {
        RowKind::Column { source, name } => Some((*source, name)),
        _ => None,
    }
}

fn flip(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::Le => BinOp::Ge,
        BinOp::Gt => BinOp::Lt,
        BinOp::Ge => BinOp::Le,
        other => other,
    }
}

/// A comparison of a column with a literal, column first: `literal < column` is
/// `column > literal`.
fn comparison(e: &RowExpr) -> Option<(BinOp, (SourceId, &str), &RowExpr)> {
    let RowKind::Binary(op, a, b) = &e.kind else {
        return None;
    };
    if !matches!(
        op,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
    ) {
        return None;
    }
    match (column_of(a), column_of(b)) {
        (Some(c), None) if Lit::of(b).is_some() => Some((*op, c, b)),
        (None, Some(c)) if Lit::of(a).is_some() => Some((flip(*op), c, a)),
        _ => None,
    }
}

/// The literals a column meets, each with the sides a filter tells apart from it.
type Met<'a> = Vec<(Lit<'a>, Sides)>;

/// Collects the columns and the literals they meet in `e`; false when `e` is anything but
/// `and`, `or`, `not` over comparisons of a column with literals (`=`, `<`, ..., `in`,
/// `between`, `is null`, or a boolean column alone).
fn atoms<'a>(e: &'a RowExpr, out: &mut Vec<((SourceId, &'a str), Met<'a>)>) -> bool {
    let mut add = |c: (SourceId, &'a str), lits: Met<'a>| match out.iter_mut().find(|(k, _)| *k == c) {
        Some((_, l)) => l.extend(lits),
        None => out.push((c, lits)),
    };
    match &e.kind {
        RowKind::Binary(BinOp::And | BinOp::Or, a, b) => atoms(a, out) && atoms(b, out),
        RowKind::Not(a) => atoms(a, out),
        RowKind::Binary(..) => match comparison(e) {
            Some((op, c, l)) => {
                add(c, vec![(Lit::of(l).expect("a literal"), Sides::of(op))]);
                true
            }
            None => false,
        },
        RowKind::Column { source, name } => {
            add((*source, name), vec![(Lit::Bool(true), BOTH)]);
            true
        }
        RowKind::IsNull { expr, .. } => match column_of(expr) {
            Some(c) => {
                add(c, vec![]);
                true
            }
            None => false,
        },
        RowKind::InList { expr, list, .. } => {
            let lits = list.iter().map(|l| Some((Lit::of(l)?, BOTH)));
            match (column_of(expr), lits.collect::<Option<Met>>()) {
                (Some(c), Some(lits)) => {
                    add(c, lits);
                    true
                }
                _ => false,
            }
        }
        RowKind::Between { expr, low, high, .. } => match (column_of(expr), Lit::of(low), Lit::of(high)) {
            (Some(c), Some(l), Some(h)) => {
                let (below, above) = (Sides::of(BinOp::Ge), Sides::of(BinOp::Le));
                add(c, vec![(l, below), (h, above)]);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// The key of a float that orders as DataFusion compares floats: IEEE total order (as
/// `f64::total_cmp`: NaN above infinity), with -0.0 equal to 0.0.
fn float_key(x: f64) -> i64 {
    let x = if x == 0.0 { 0.0 } else { x };
    let bits = x.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

/// The domain of a column of this type, meeting these literals; `None` when the classes
/// would not give the answers DataFusion's own comparisons give.
fn domain(ty: &DataType, lits: &[Lit]) -> Option<Domain> {
    use DataType as D;
    let all = |f: fn(&Lit) -> bool| lits.iter().all(f);
    match ty {
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 => {
            if all(|l| matches!(l, Lit::Number(n) if integral(*n))) {
                Some(Domain::Int)
            } else if all(|l| matches!(l, Lit::Number(_))) {
                // DataFusion compares the column with a fractional literal as Float64, and
                // with an integral one (below 2⁵³) as Int64; comparing all in Float64 gives
                // the same answers: integers up to 2⁵³ are exact, larger ones stay above
                // every integral literal when rounded.
                Some(Domain::Float)
            } else {
                None
            }
        }
        D::Float32 | D::Float64 if all(|l| matches!(l, Lit::Number(_))) => Some(Domain::Float),
        D::Boolean if all(|l| matches!(l, Lit::Bool(_))) => Some(Domain::Int),
        D::Date32 if all(|l| matches!(l, Lit::Date(_))) => Some(Domain::Days),
        D::Timestamp(unit, None) if all(|l| matches!(l, Lit::Date(_))) => Some(Domain::Time(*unit)),
        D::Utf8 | D::LargeUtf8 | D::Utf8View if all(|l| matches!(l, Lit::String(_))) => Some(Domain::Str),
        // Dictionaries compare as their values do.
        D::Dictionary(_, values) if matches!(**values, D::Utf8 | D::LargeUtf8 | D::Utf8View) => domain(values, lits),
        _ => None,
    }
}

/// A literal's key in a domain.
fn key(domain: &Domain, l: &Lit) -> Option<i64> {
    let days = |d: &chrono::NaiveDate| crate::time::to_days(*d) as i64;
    match (domain, l) {
        (Domain::Int, Lit::Number(n)) => Some(*n as i64),
        (Domain::Int, Lit::Bool(b)) => Some(*b as i64),
        (Domain::Float, Lit::Number(n)) => Some(float_key(*n)),
        (Domain::Days, Lit::Date(d)) => Some(days(d)),
        (Domain::Time(unit), Lit::Date(d)) => {
            let per_day: i64 = match unit {
                TimeUnit::Second => 86_400,
                TimeUnit::Millisecond => 86_400_000,
                TimeUnit::Microsecond => 86_400_000_000,
                TimeUnit::Nanosecond => 86_400_000_000_000,
            };
            days(d).checked_mul(per_day)
        }
        _ => None,
    }
}

/// Bits that hold classes 0 ..= `last`.
fn bits_for(last: u32) -> u32 {
    u32::BITS - last.leading_zeros()
}

impl Classes {
    /// The classes of the filters of `filters` over rows of `schema`, when every filter is
    /// `and`, `or`, `not` over comparisons of columns with literals of their type, and the
    /// classes of all their columns fit in 64 bits.
    pub fn of(model: &Model, filters: &[&RowExpr], schema: &DFSchema) -> Option<Classes> {
        let mut found = Vec::new();
        for f in filters {
            if !atoms(f, &mut found) {
                return None;
            }
        }
        let mut columns = Vec::new();
        let mut shift = 0;
        for ((source, name), lits) in found {
            let expr = super::column(model, source, name);
            let ty = expr.get_type(schema).ok()?;
            let domain = domain(&ty, &lits.iter().map(|(l, _)| *l).collect::<Vec<_>>())?;
            let literals = match domain {
                Domain::Str => {
                    let strings = lits.iter().map(|(l, sides)| match l {
                        Lit::String(s) => (s.to_string(), *sides),
                        _ => unreachable!("a string domain has string literals"),
                    });
                    let (strings, sides) = merged(strings.collect());
                    Literals::Strings {
                        strings,
                        compact: compact(&sides),
                    }
                }
                _ => {
                    let keys = lits.iter().map(|(l, sides)| Some((key(&domain, l)?, *sides)));
                    let (keys, sides) = merged(keys.collect::<Option<Vec<_>>>()?);
                    Literals::Keys(KeyIndex::new(&keys, compact(&sides)))
                }
            };
            let bits = bits_for(*literals.compact().last().expect("the null class and one more"));
            columns.push(ClassColumn {
                source,
                name: name.to_string(),
                domain,
                literals,
                shift,
                bits,
            });
            shift += bits;
            if shift > u64::BITS {
                return None;
            }
        }
        let mut classes = Classes {
            columns,
            canonical: None,
        };
        classes.canonical = classes.canonical(filters).map(Arc::new);
        Some(classes)
    }

    /// Rows whose classes every filter answers alike are counted alike: the product of the
    /// columns' classes has more combinations than the filters tell apart (`channel =
    /// "phone" and amount > 100`: a phone call of 50 is no more a match than a visit of
    /// 500). Each packed classes is mapped to the first packed classes with the same
    /// answers, so the rows fall into as few groups as the filters need. `None` when the
    /// classes take too many bits (or a filter cannot be evaluated here: the classes are
    /// then used as they are).
    fn canonical(&self, filters: &[&RowExpr]) -> Option<Canonical> {
        let bits = self.bits();
        if bits > CANONICAL_BITS || filters.is_empty() {
            return None;
        }
        let n = 1usize << bits;
        let schema = Arc::new(Schema::new(vec![Field::new(CANONICAL_COLUMN, DataType::UInt64, false)]));
        let every = UInt64Array::from_iter_values(0..n as u64);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(every)]).ok()?;
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).ok()?;
        let packed = Expr::Column(Column::from_name(CANONICAL_COLUMN));
        let (props, context) = (ExecutionProps::new(), PhysicalPlanningContext::default());
        let words = filters.len().div_ceil(64);
        let mut answers = vec![0u64; n * words];
        for (j, f) in filters.iter().enumerate() {
            let e = create_physical_expr(&self.filter(f, &packed), &df_schema, &props, &context).ok()?;
            let values = e.evaluate(&batch).ok()?.into_array(n).ok()?;
            let values = values.as_boolean_opt()?;
            // A filter keeps a row when it is true (not false, not null).
            let keeps = match values.nulls() {
                Some(valid) => values.values() & valid.inner(),
                None => values.values().clone(),
            };
            for t in keeps.set_indices() {
                answers[t * words + j / 64] |= 1 << (j % 64);
            }
        }
        let mut numbers: HashMap<&[u64], u32> = HashMap::new();
        let mut first = Vec::new();
        let number = answers
            .chunks(words)
            .enumerate()
            .map(|(t, a)| {
                *numbers.entry(a).or_insert_with(|| {
                    first.push(t as u32);
                    first.len() as u32 - 1
                })
            })
            .collect();
        Some(Canonical { number, first })
    }

    /// `tally_classes([period,] columns...)`: a row's classes, packed; with a period (a
    /// Date32, for classes of [`Classes::bits`] ≤ 32), its days in the upper 32 bits.
    pub fn packed(&self, model: &Model, period: Option<Expr>) -> Expr {
        let packing = match period {
            Some(_) => Packing::Period,
            None => Packing::Classes,
        };
        self.pack(model, period, packing)
    }

    fn pack(&self, model: &Model, period: Option<Expr>, packing: Packing) -> Expr {
        let args = period
            .into_iter()
            .chain(self.columns.iter().map(|c| super::column(model, c.source, &c.name)))
            .collect();
        ScalarUDF::from(Packer::new(self.clone(), packing)).call(args)
    }

    /// `tally_classes(period, columns...)` as an Int64 of the period's days and, in the
    /// returned number of low bits, the number of the row's canonical classes: the groups of
    /// a period's rows, for a block of dense slots per period (no hash table: see
    /// [`super::dense`]); null without a period. [`Classes::unkey`] gives back what
    /// [`Classes::packed`] would have given. `None` without canonical classes, or with more
    /// than a block holds.
    pub fn keyed(&self, model: &Model, period: Expr) -> Option<(Expr, u32)> {
        let bits = self.group_bits()?;
        Some((self.pack(model, Some(period), Packing::Keyed), bits))
    }

    /// The bits that number the canonical classes in a key of [`Classes::keyed`], when
    /// there are few enough of them.
    fn group_bits(&self) -> Option<u32> {
        Some(self.canonical.as_ref()?.bits()).filter(|&b| b <= super::dense::MAX_GROUP_BITS)
    }

    /// The packed period and classes of a key of [`Classes::keyed`].
    pub fn unkey(&self, key: Expr) -> Expr {
        let unkey = Unkey {
            canonical: self.canonical.clone().expect("keyed classes are canonical"),
            signature: Signature::any(1, Volatility::Immutable),
        };
        ScalarUDF::from(unkey).call(vec![key])
    }

    /// The string columns of `source` among the filter columns.
    pub fn string_columns(&self, source: SourceId) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(move |c| c.source == source && c.domain == Domain::Str)
            .map(|c| c.name.as_str())
    }

    /// The bits the classes take.
    pub fn bits(&self) -> u32 {
        self.columns.iter().map(|c| c.bits).sum()
    }

    /// The period (Date32) packed with the classes.
    pub fn period(packed: &Expr) -> Expr {
        let days = binary_expr(packed.clone(), Operator::BitwiseShiftRight, lit(32u64));
        let days = func::nullif(days, lit(0u64));
        let days = datafusion::logical_expr::cast(days, DataType::Int64) - lit(PERIOD_OFFSET);
        datafusion::logical_expr::cast(datafusion::logical_expr::cast(days, DataType::Int32), DataType::Date32)
    }

    /// `filter` (one the classes were made of) as comparisons of the classes in `packed`.
    pub fn filter(&self, e: &RowExpr, packed: &Expr) -> Expr {
        let r = |x: &RowExpr| self.filter(x, packed);
        let class = |c: (SourceId, &str)| self.class(c, packed);
        let code = |c: (SourceId, &str), l: &RowExpr| lit(self.equal_class(c, l));
        match &e.kind {
            RowKind::Binary(BinOp::And, a, b) => r(a).and(r(b)),
            RowKind::Binary(BinOp::Or, a, b) => r(a).or(r(b)),
            RowKind::Not(a) => datafusion::logical_expr::not(r(a)),
            RowKind::Binary(..) => {
                let (op, c, l) = comparison(e).expect("a comparison of a column with a literal");
                let (x, k) = (class(c), code(c, l));
                match op {
                    BinOp::Eq => x.eq(k),
                    BinOp::Ne => x.not_eq(k),
                    BinOp::Lt => x.lt(k),
                    BinOp::Le => x.lt_eq(k),
                    BinOp::Gt => x.gt(k),
                    BinOp::Ge => x.gt_eq(k),
                    _ => unreachable!("comparisons only"),
                }
            }
            RowKind::Column { source, name } => class((*source, name)).eq(lit(self.class_of_true((*source, name)))),
            RowKind::IsNull { expr, negated } => {
                let x = class(column_of(expr).expect("a column"));
                if *negated { x.is_not_null() } else { x.is_null() }
            }
            RowKind::InList { expr, list, negated } => {
                let c = column_of(expr).expect("a column");
                class(c).in_list(list.iter().map(|l| code(c, l)).collect(), *negated)
            }
            RowKind::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let c = column_of(expr).expect("a column");
                let (x, lo, hi) = (class(c), code(c, low), code(c, high));
                if *negated {
                    x.not_between(lo, hi)
                } else {
                    x.between(lo, hi)
                }
            }
            _ => unreachable!("filters the classes were made of"),
        }
    }

    fn column(&self, c: (SourceId, &str)) -> &ClassColumn {
        self.columns
            .iter()
            .find(|x| x.source == c.0 && x.name == c.1)
            .expect("a filter column")
    }

    /// A column's class in `packed`, null for a null value.
    fn class(&self, c: (SourceId, &str), packed: &Expr) -> Expr {
        let col = self.column(c);
        let shifted = binary_expr(packed.clone(), Operator::BitwiseShiftRight, lit(col.shift as u64));
        let mask = (1u64 << col.bits) - 1;
        func::nullif(binary_expr(shifted, Operator::BitwiseAnd, lit(mask)), lit(0u64))
    }

    /// The class of the values equal to literal `l`: comparisons of the class with it are
    /// comparisons of the values with `l`, for the sides of `l` the filters tell apart.
    fn equal_class(&self, c: (SourceId, &str), l: &RowExpr) -> u64 {
        let col = self.column(c);
        let i = match (&col.literals, Lit::of(l).expect("a literal")) {
            (Literals::Strings { strings, .. }, Lit::String(x)) => strings.binary_search_by(|t| t.as_str().cmp(x)),
            (Literals::Keys(k), l) => k
                .keys
                .binary_search(&key(&col.domain, &l).expect("a literal of the domain")),
            _ => unreachable!("literals of the column's domain"),
        };
        col.literals.compact()[2 * i.expect("a literal of the column") + 2] as u64
    }

    fn class_of_true(&self, c: (SourceId, &str)) -> u64 {
        let Literals::Keys(k) = &self.column(c).literals else {
            unreachable!("a boolean column")
        };
        k.compact[2 * k.keys.binary_search(&1).expect("true among the literals") + 2] as u64
    }
}

/// Added to a period's days (an i32) to pack them as an unsigned number (0: no period).
const PERIOD_OFFSET: i64 = 1 << 31;

/// A period's days in the upper 32 bits of packed classes (read back by [`Classes::period`]).
fn packed_period(days: i64) -> u64 {
    ((days + PERIOD_OFFSET) as u64) << 32
}

/// The number of sorted keys below `v`: a binary search without branches (values of a
/// column are in no order, so a branch per step would be mispredicted half the time).
#[inline]
fn below(keys: &[i64], v: i64) -> usize {
    if keys.is_empty() {
        return 0;
    }
    let (mut base, mut size) = (0, keys.len());
    while size > 1 {
        let half = size / 2;
        base = std::hint::select_unpredictable(keys[base + half] < v, base + half, base);
        size -= half;
    }
    base + (keys[base] < v) as usize
}

/// The class of `v` with `i` keys below it.
#[inline]
fn class_at(keys: &[i64], i: usize, v: i64) -> u64 {
    let equal = i < keys.len() && keys[i] == v;
    2 * i as u64 + 1 + equal as u64
}

#[cfg(test)]
fn key_class(keys: &[i64], v: i64) -> u64 {
    class_at(keys, below(keys, v), v)
}

/// Sorted keys, with where each of [`KeyIndex::SLICES`] equal slices of their range starts
/// among them: a value's slice leaves a search among the few keys of that slice, mostly
/// none (a search among all the keys is a chain of dependent loads per row).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KeyIndex {
    keys: Vec<i64>,
    /// The least key; slice `b` holds the values from `lo + (b << shift)` on.
    lo: i64,
    shift: u32,
    /// `starts[b]`: the number of keys below slice `b` (SLICES + 1 of them).
    starts: Vec<u32>,
    /// The class of every value below the keys, of each slice (`direct[b + 1]` for slice
    /// `b`, 0 when a key is in it) and above the slices: one load for most values, and no
    /// branch between below, within and above (values are in no order).
    direct: Vec<u32>,
    /// The class of each raw class (see [`Literals`]).
    compact: Vec<u32>,
}

impl KeyIndex {
    const SLICES: usize = 1024;

    fn new(keys: &[i64], compact: Vec<u32>) -> KeyIndex {
        let (lo, hi) = (keys.first().copied().unwrap_or(0), keys.last().copied().unwrap_or(0));
        let span = hi.wrapping_sub(lo) as u64;
        let shift = (0..64).find(|s| span >> s < Self::SLICES as u64).unwrap_or(63);
        let starts: Vec<u32> = (0..=Self::SLICES)
            .map(|b| {
                let start = lo as i128 + ((b as i128) << shift);
                keys.partition_point(|&k| (k as i128) < start) as u32
            })
            .collect();
        let within = starts.windows(2).map(|w| match w[0] == w[1] {
            true => compact[2 * w[0] as usize + 1],
            false => 0,
        });
        let above = compact[2 * keys.len() + 1];
        let direct = std::iter::once(compact[1]).chain(within).chain([above]).collect();
        KeyIndex {
            keys: keys.to_vec(),
            lo,
            shift,
            starts,
            direct,
            compact,
        }
    }

    #[inline(always)]
    fn class(&self, v: i64) -> u64 {
        // Exact for v ≥ lo: the difference of two i64 fits in a u64.
        let slice = (v.wrapping_sub(self.lo) as u64 >> self.shift).min(Self::SLICES as u64) as usize;
        let d = std::hint::select_unpredictable(v < self.lo, 0, slice + 1);
        match self.direct[d] {
            0 => self.search(slice, v),
            class => class as u64,
        }
    }

    /// The class of `v` in slice `b`, among the keys of that slice.
    #[inline(never)]
    fn search(&self, b: usize, v: i64) -> u64 {
        let (a, z) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        self.compact[class_at(&self.keys, a + below(&self.keys[a..z], v), v) as usize] as u64
    }
}

/// The classes of keys without nulls, by blocks: where a block's least and greatest keys
/// are in one class, every key between them is (blocks of time columns mostly are: rows come
/// in about time order); otherwise key by key. After a block that is not, the next few are
/// taken key by key without looking (twice as many after each such block in a row): keys
/// in no order pay little for the look.
/// Returns the number of blocks taken whole.
fn add_key_classes(index: &KeyIndex, x: &[i64], shift: u32, packed: &mut [u64]) -> usize {
    const BLOCK: usize = 256;
    let (mut skip, mut unlook, mut whole) = (0, 1, 0);
    for (xs, ps) in x.chunks(BLOCK).zip(packed.chunks_mut(BLOCK)) {
        let one = match skip {
            0 => {
                let (lo, hi) = xs.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &v| {
                    use std::hint::select_unpredictable as pick;
                    (pick(v < lo, v, lo), pick(v > hi, v, hi))
                });
                let one = Some(index.class(lo)).filter(|&c| c == index.class(hi));
                (skip, unlook) = match one {
                    Some(_) => (0, 1),
                    None => (unlook, (unlook * 2).min(64)),
                };
                one
            }
            _ => {
                skip -= 1;
                None
            }
        };
        match one {
            Some(class) => {
                ps.iter_mut().for_each(|p| *p |= class << shift);
                whole += 1;
            }
            None => ps.iter_mut().zip(xs).for_each(|(p, &v)| *p |= index.class(v) << shift),
        }
    }
    whole
}

fn string_class(strings: &[String], v: &str) -> u64 {
    let i = strings.partition_point(|t| t.as_str() < v);
    let equal = i < strings.len() && strings[i] == v;
    2 * i as u64 + 1 + equal as u64
}

/// What the packing function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Packing {
    /// The classes (UInt64).
    Classes,
    /// The first argument, a period (Date32), above the classes (UInt64).
    Period,
    /// The period's days with the number of the row's canonical classes in the low bits
    /// (Int64; null without a period): see [`Classes::keyed`].
    Keyed,
}

/// The packing function itself.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Packer {
    classes: Classes,
    packing: Packing,
    signature: Signature,
}

impl Packer {
    fn new(classes: Classes, packing: Packing) -> Packer {
        Packer {
            classes,
            packing,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Packer {
    fn name(&self) -> &str {
        "tally_classes"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(match self.packing {
            Packing::Keyed => DataType::Int64,
            _ => DataType::UInt64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let mut packed = vec![0u64; n];
        let mut args = args.args.iter();
        let period = match self.packing {
            Packing::Classes => None,
            Packing::Period | Packing::Keyed => Some(args.next().expect("a period").to_array(n)?),
        };
        let days = match &period {
            Some(p) => match p.as_primitive_opt::<Date32Type>() {
                Some(days) => Some(days),
                None => return exec_err!("tally_classes: a period of type Date32 was expected"),
            },
            None => None,
        };
        for (col, arg) in self.classes.columns.iter().zip(args) {
            add_classes(col, &arg.to_array(n)?, &mut packed)?;
        }
        let canonical = self.classes.canonical.as_deref();
        match (self.packing, days, canonical) {
            (Packing::Keyed, Some(days), Some(c)) => {
                let bits = c.bits();
                let keys = days.values().iter().zip(&packed);
                let keys = keys.map(|(&d, &p)| (d as i64) << bits | c.number[p as usize] as i64);
                let keys = Int64Array::new(keys.collect(), days.nulls().cloned());
                return Ok(ColumnarValue::Array(Arc::new(keys)));
            }
            (Packing::Keyed, ..) => return exec_err!("tally_classes: keyed classes without canonical classes"),
            (_, _, Some(c)) => packed
                .iter_mut()
                .for_each(|p| *p = c.first[c.number[*p as usize] as usize] as u64),
            _ => {}
        }
        if let Some(days) = days {
            for (i, (p, &d)) in packed.iter_mut().zip(days.values().iter()).enumerate() {
                // 0 stands for a row without a period (no time).
                if days.is_valid(i) {
                    *p |= packed_period(d as i64);
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(UInt64Array::from(packed))))
    }
}

/// `tally_unkey(key)`: the packed period and classes of a key of [`Classes::keyed`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct Unkey {
    canonical: Arc<Canonical>,
    signature: Signature,
}

impl ScalarUDFImpl for Unkey {
    fn name(&self) -> &str {
        "tally_unkey"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let keys = args.args[0].to_array(args.number_rows)?;
        let Some(keys) = keys.as_primitive_opt::<Int64Type>() else {
            return exec_err!("tally_unkey: a key of type Int64 was expected");
        };
        let bits = self.canonical.bits();
        let group = (1i64 << bits) - 1;
        let packed = keys
            .unary::<_, UInt64Type>(|k| packed_period(k >> bits) | self.canonical.first[(k & group) as usize] as u64);
        Ok(ColumnarValue::Array(Arc::new(packed)))
    }
}

/// Adds the classes of a column's values into `packed`, shifted to the column's place.
fn add_classes(col: &ClassColumn, array: &ArrayRef, packed: &mut [u64]) -> Result<()> {
    let shift = col.shift;
    if let Some(dictionary) = array.as_any_dictionary_opt() {
        // The classes of the distinct values, then a row's is its value's.
        let mut of_value = vec![0u64; dictionary.values().len()];
        add_classes(col, dictionary.values(), &mut of_value)?;
        // The key of a null row may be any number.
        let class = |k: usize| of_value.get(k).copied().unwrap_or(0);
        let nulls = array.logical_nulls().filter(|n| n.null_count() > 0);
        match (nulls, array.as_dictionary_opt::<Int32Type>()) {
            (None, Some(d)) => {
                // Every key is one of the dictionary's.
                let keys = d.keys().values();
                packed
                    .iter_mut()
                    .zip(keys)
                    .for_each(|(p, &k)| *p |= of_value[k as usize]);
            }
            (Some(nulls), Some(d)) => {
                // 64 rows at a time, without a branch per row.
                let words = nulls.inner().bit_chunks().iter_padded();
                let rows = packed.chunks_mut(64).zip(d.keys().values().chunks(64)).zip(words);
                for ((ps, ks), valid) in rows {
                    for (j, (p, &k)) in ps.iter_mut().zip(ks).enumerate() {
                        *p |= class(k as usize) & 0u64.wrapping_sub((valid >> j) & 1);
                    }
                }
            }
            (nulls, None) => {
                let keys = dictionary.normalized_keys();
                for (i, (p, k)) in packed.iter_mut().zip(keys).enumerate() {
                    if nulls.as_ref().is_none_or(|n| n.is_valid(i)) {
                        *p |= class(k);
                    }
                }
            }
        }
        return Ok(());
    }
    let nulls = array.logical_nulls();
    let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
    match (&col.domain, &col.literals) {
        (Domain::Str, Literals::Strings { strings, compact }) => {
            let string_class = |strings: &[String], v: &str| compact[string_class(strings, v) as usize] as u64;
            if let Some(views) = array.as_string_view_opt() {
                // Rows of a batch repeat a few views (a short string is its view; a long
                // one points into the batch's buffers): each distinct view is looked up once.
                let mut cache = ViewCache::new();
                let rows = packed.iter_mut().zip(views.views().iter()).enumerate();
                for (i, (p, &view)) in rows {
                    if valid(i) {
                        *p |= cache.get(view, || string_class(strings, views.value(i))) << shift;
                    }
                }
            } else {
                let utf8 = cast(array, &DataType::Utf8)?;
                let s = utf8.as_string::<i32>();
                for (i, p) in packed.iter_mut().enumerate() {
                    if valid(i) {
                        *p |= string_class(strings, s.value(i)) << shift;
                    }
                }
            }
        }
        (domain, Literals::Keys(index)) => {
            let keys = match domain {
                Domain::Float => {
                    let x = cast(array, &DataType::Float64)?;
                    Arc::new(x.as_primitive::<Float64Type>().unary::<_, Int64Type>(float_key))
                }
                Domain::Days => {
                    cast(&cast(array, &DataType::Date32)?, &DataType::Int32).and_then(|a| cast(&a, &DataType::Int64))?
                }
                _ => cast(array, &DataType::Int64)?,
            };
            let x = keys.as_primitive::<Int64Type>().values();
            match nulls {
                None => {
                    add_key_classes(index, x, shift, packed);
                }
                Some(_) => {
                    for (i, p) in packed.iter_mut().enumerate() {
                        if valid(i) {
                            *p |= index.class(x[i]) << shift;
                        }
                    }
                }
            }
        }
        _ => return exec_err!("tally_classes: literals of another domain"),
    }
    Ok(())
}

/// A small direct-mapped cache from string views to classes.
struct ViewCache {
    slots: Vec<(u128, u64)>,
}

impl ViewCache {
    const SIZE: usize = 256;

    fn new() -> ViewCache {
        // Class 0 (null) never comes from a lookup: it marks an empty slot.
        ViewCache {
            slots: vec![(0, 0); Self::SIZE],
        }
    }

    #[inline]
    fn get(&mut self, view: u128, compute: impl FnOnce() -> u64) -> u64 {
        let h = ((view as u64) ^ ((view >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = &mut self.slots[(h >> 56) as usize];
        if slot.1 != 0 && slot.0 == view {
            return slot.1;
        }
        let class = compute();
        *slot = (view, class);
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_keys_follow_the_literals() {
        let keys = [10, 20, 30];
        let got: Vec<u64> = [5, 10, 15, 20, 25, 30, 35]
            .iter()
            .map(|&v| key_class(&keys, v))
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(key_class(&[], 42), 1);
        // Against a plain search, for every length and every place of the value.
        for n in 0..9 {
            let keys: Vec<i64> = (0..n).map(|k| k * 10).collect();
            for v in -5..n * 10 + 5 {
                let i = keys.partition_point(|t| *t < v);
                let want = 2 * i as u64 + 1 + (i < keys.len() && keys[i] == v) as u64;
                assert_eq!(key_class(&keys, v), want, "{v} among {keys:?}");
            }
        }
        assert_eq!(bits_for(1), 1);
        assert_eq!(bits_for(7), 3, "classes 0..=7");
        assert_eq!(bits_for(9), 4, "classes 0..=9");
    }

    /// Every raw class its own: no merging.
    fn every_class(n: usize) -> Vec<u32> {
        compact(&vec![BOTH; n])
    }

    /// For literals compared in every way on one side only, or both: the compact classes
    /// compare with a literal's as the values compare with the literal.
    #[test]
    fn compact_classes_answer_the_comparisons_they_were_made_for() {
        assert_eq!(every_class(2), vec![0, 1, 2, 3, 4, 5]);
        let above = Sides::of(BinOp::Gt);
        let below = Sides::of(BinOp::Lt);
        // `x > 10`, `x < 20`, `x = 30`: 10 goes with the values below it, 20 with those above.
        assert_eq!(compact(&[above, below, BOTH]), vec![0, 1, 1, 2, 3, 3, 4, 5]);
        let keys = [10, 20, 30];
        let ops = [BinOp::Eq, BinOp::Ne, BinOp::Lt, BinOp::Le, BinOp::Gt, BinOp::Ge];
        for a in ops {
            for b in ops {
                let (sa, sb) = (Sides::of(a), Sides::of(b));
                let merge = |x: Sides, y: Sides| Sides {
                    below: x.below || y.below,
                    above: x.above || y.above,
                };
                // 10 met by `a`, 20 by `b`, 30 by both.
                let sides = [sa, sb, merge(sa, sb)];
                let c = compact(&sides);
                for v in 0..40 {
                    let class = c[key_class(&keys, v) as usize];
                    for (j, op) in [(0, a), (1, b), (2, a), (2, b)] {
                        let t = keys[j];
                        let k = c[2 * j + 2];
                        let (want, got) = match op {
                            BinOp::Eq => (v == t, class == k),
                            BinOp::Ne => (v != t, class != k),
                            BinOp::Lt => (v < t, class < k),
                            BinOp::Le => (v <= t, class <= k),
                            BinOp::Gt => (v > t, class > k),
                            _ => (v >= t, class >= k),
                        };
                        assert_eq!(got, want, "{v} {op:?} {t} with {sides:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn classes_by_blocks_equal_classes_key_by_key() {
        let keys = [0, 100, 1000];
        // Sorted (whole blocks in one class), random, and one block that ends on a literal.
        let mut x: Vec<i64> = (0..600).map(|i| i * 3).collect();
        x.extend((0..600).map(|i: i64| (i * 7919) % 1500 - 100));
        x.extend(std::iter::repeat_n(100, 200).chain([101]));
        let mut packed = vec![1u64; x.len()];
        add_key_classes(&KeyIndex::new(&keys, every_class(3)), &x, 2, &mut packed);
        for (p, v) in packed.iter().zip(&x) {
            assert_eq!(*p, 1 | key_class(&keys, *v) << 2, "{v}");
        }
        // Sorted keys with a block across a literal: the blocks after it are looked at
        // again (one is skipped), and taken whole.
        let x: Vec<i64> = (0..40 * 256).collect();
        let mut packed = vec![0u64; x.len()];
        let index = KeyIndex::new(&[1000], every_class(1));
        assert_eq!(add_key_classes(&index, &x, 0, &mut packed), 38);
        assert!(packed.iter().zip(&x).all(|(p, &v)| *p == key_class(&[1000], v)));
        // Keys in no order are looked at less and less: 1 + 2 + 4 + ... blocks skipped.
        let x: Vec<i64> = (0..64 * 256).map(|i| (i * 7919) % 2000).collect();
        let mut packed = vec![0u64; x.len()];
        assert_eq!(add_key_classes(&index, &x, 0, &mut packed), 0);
        assert!(packed.iter().zip(&x).all(|(p, &v)| *p == key_class(&[1000], v)));
    }

    #[test]
    fn the_index_of_keys_finds_the_classes_a_search_finds() {
        // Clustered and spread keys, extremes of i64, and values around every key.
        let sets: Vec<Vec<i64>> = vec![
            vec![0, 1, 5, 9, 13, 17, 400, 800, 1200, 1600, 999_981, 999_985, 999_998],
            (0..40).map(|k| k * k * 37 - 500).collect(),
            vec![i64::MIN, -1, 0, 1, 2, 3, 4, 5, i64::MAX],
            vec![7; 1].into_iter().chain(8..20).collect(),
        ];
        for keys in sets {
            let index = KeyIndex::new(&keys, every_class(keys.len()));
            let mut values: Vec<i64> = keys
                .iter()
                .flat_map(|&k| [k.saturating_sub(1), k, k.saturating_add(1)])
                .collect();
            values.extend([i64::MIN, i64::MAX, 0, 123_456, -123_456]);
            values.extend((0..2000).map(|i: i64| i * 613 - 100_000));
            for v in values {
                assert_eq!(index.class(v), key_class(&keys, v), "{v} among {keys:?}");
            }
        }
    }

    #[test]
    fn float_keys_order_as_total_order() {
        let mut xs = [
            3.5,
            0.0,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            -1e300,
            f64::NEG_INFINITY,
            1e-300,
        ];
        let mut by_key = xs;
        xs.sort_by(f64::total_cmp);
        by_key.sort_by_key(|x| float_key(*x));
        assert_eq!(xs.map(f64::to_bits), by_key.map(f64::to_bits));
        assert_eq!(float_key(-0.0), float_key(0.0), "-0.0 = 0.0, as DataFusion compares");
    }

    /// A dictionary's rows get the classes of their values, nulls (of keys or of values)
    /// the null class, as the same strings read plainly do.
    #[test]
    fn dictionaries_get_the_classes_of_their_values() {
        use datafusion::arrow::array::{DictionaryArray, Int32Array, StringArray};
        let col = ClassColumn {
            source: 0,
            name: "s".into(),
            domain: Domain::Str,
            literals: Literals::Strings {
                strings: vec!["b".into(), "d".into()],
                compact: every_class(2),
            },
            shift: 3,
            bits: 3,
        };
        let values = StringArray::from(vec![Some("d"), Some("a"), None, Some("b")]);
        // 150 rows: nulls are taken 64 rows at a time.
        let rows = |x: Vec<Option<i32>>| x.into_iter().cycle().take(150).collect::<Vec<_>>();
        let keys = Int32Array::from(rows(vec![Some(0), Some(3), None, Some(2), Some(1), Some(0)]));
        let dictionary: ArrayRef = Arc::new(DictionaryArray::try_new(keys, Arc::new(values)).unwrap());
        let strings = [Some("d"), Some("b"), None, None, Some("a"), Some("d")];
        let plain: ArrayRef = Arc::new(StringArray::from(
            strings.iter().cycle().take(150).copied().collect::<Vec<_>>(),
        ));
        let (mut a, mut b) = (vec![1u64; 150], vec![1u64; 150]);
        add_classes(&col, &dictionary, &mut a).unwrap();
        add_classes(&col, &plain, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[144..], [1 | 4 << 3, 1 | 2 << 3, 1, 1, 1 | 1 << 3, 1 | 4 << 3]);
        // Without nulls, the rows' keys are looked up directly.
        let keys = Int32Array::from(vec![0, 1, 0]);
        let values = StringArray::from(vec!["c", "e"]);
        let dictionary: ArrayRef = Arc::new(DictionaryArray::try_new(keys, Arc::new(values)).unwrap());
        let mut c = vec![0u64; 3];
        let unshifted = ClassColumn { shift: 0, ..col };
        add_classes(&unshifted, &dictionary, &mut c).unwrap();
        assert_eq!(c, [3, 5, 3]);
    }

    #[test]
    fn string_classes_and_the_view_cache() {
        let s = vec!["b".to_string(), "d".to_string()];
        let got: Vec<u64> = ["a", "b", "c", "d", "e"].iter().map(|v| string_class(&s, v)).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        let mut cache = ViewCache::new();
        assert_eq!(cache.get(7, || 3), 3);
        assert_eq!(cache.get(7, || unreachable!("cached")), 3);
    }
}
