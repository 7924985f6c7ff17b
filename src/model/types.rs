//! The typed model: every name resolved, every expression typed.

use crate::ast::{BinOp, Direction, Format};
use crate::data::SourceData;
use crate::span::Span;
use crate::time::Grain;
use chrono::NaiveDate;
use std::collections::HashMap;

pub type SourceId = usize;
pub type DimensionId = usize;
pub type MetricId = usize;
pub type MeasureId = usize;

/// The type of a value in the expression language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Number,
    String,
    Bool,
    Date,
    Timestamp,
    /// A `null` literal: fits anywhere.
    Null,
    /// A column type the expression language does not handle (lists, structs, binary).
    Other,
}

impl ValueType {
    pub fn of(dt: &datafusion::arrow::datatypes::DataType) -> ValueType {
        use datafusion::arrow::datatypes::DataType as D;
        match dt {
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
                ValueType::Number
            }
            D::Float16 | D::Float32 | D::Float64 => ValueType::Number,
            D::Decimal32(..) | D::Decimal64(..) | D::Decimal128(..) | D::Decimal256(..) => ValueType::Number,
            D::Utf8 | D::LargeUtf8 | D::Utf8View => ValueType::String,
            D::Dictionary(_, v) => ValueType::of(v),
            D::Boolean => ValueType::Bool,
            D::Date32 | D::Date64 => ValueType::Date,
            D::Timestamp(..) => ValueType::Timestamp,
            D::Null => ValueType::Null,
            _ => ValueType::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::Number => "number",
            ValueType::String => "string",
            ValueType::Bool => "boolean",
            ValueType::Date => "date",
            ValueType::Timestamp => "timestamp",
            ValueType::Null => "null",
            ValueType::Other => "unsupported type",
        }
    }

    /// Whether values of the two types can be compared.
    pub fn comparable(self, other: ValueType) -> bool {
        use ValueType::*;
        match (self, other) {
            (Null, _) | (_, Null) => true,
            (Date | Timestamp, Date | Timestamp) => true,
            (a, b) => a == b && a != Other,
        }
    }

    pub fn is_temporal(self) -> bool {
        matches!(self, ValueType::Date | ValueType::Timestamp)
    }
}

/// The whole project, resolved.
#[derive(Debug)]
pub struct Model {
    pub sources: Vec<Source>,
    pub dimensions: Vec<Dimension>,
    pub metrics: Vec<Metric>,
    pub measures: Vec<Measure>,
    pub targets: Vec<Target>,
    pub alerts: Vec<Alert>,
    pub reports: Vec<Report>,
    pub(crate) source_index: HashMap<String, SourceId>,
    pub(crate) dimension_index: HashMap<String, DimensionId>,
    pub(crate) metric_index: HashMap<String, MetricId>,
}

impl Model {
    pub fn source(&self, name: &str) -> Option<SourceId> {
        self.source_index.get(name).copied()
    }
    pub fn dimension(&self, name: &str) -> Option<DimensionId> {
        self.dimension_index.get(name).copied()
    }
    pub fn metric(&self, name: &str) -> Option<MetricId> {
        self.metric_index.get(name).copied()
    }

    /// The measures a metric needs, directly or through other metrics, in a stable order.
    pub fn measures_of(&self, metric: MetricId, out: &mut Vec<MeasureId>) {
        fn walk(model: &Model, f: &Formula, out: &mut Vec<MeasureId>) {
            match f {
                Formula::Measure(m) => {
                    if !out.contains(m) {
                        out.push(*m)
                    }
                }
                Formula::Metric(id) => walk(model, &model.metrics[*id].formula, out),
                Formula::Number(_) => {}
                Formula::Neg(a) | Formula::Window(_, a) | Formula::Offset(_, a) | Formula::Share(a) => {
                    walk(model, a, out)
                }
                Formula::Binary(_, a, b) => {
                    walk(model, a, out);
                    walk(model, b, out);
                }
            }
        }
        walk(self, &self.metrics[metric].formula, out)
    }

    /// Whether a metric can be broken down by a dimension: every source its measures read
    /// joins every source the dimension reads. Otherwise the first pair that does not, as
    /// (the measure's source, the dimension's).
    pub fn unjoined(&self, metric: MetricId, dimension: DimensionId) -> Option<(SourceId, SourceId)> {
        let mut measures = Vec::new();
        self.measures_of(metric, &mut measures);
        measures.iter().find_map(|&m| {
            let from = self.measures[m].source;
            self.unreachable(from, dimension).map(|to| (from, to))
        })
    }

    /// The first source a dimension reads that `from` does not join, if any.
    pub fn unreachable(&self, from: SourceId, dimension: DimensionId) -> Option<SourceId> {
        let mut used = Vec::new();
        self.dimensions[dimension].expr.sources(&mut used);
        used.into_iter().find(|&to| self.join_path(from, to).is_none())
    }

    /// The sources a metric reads, directly or through other metrics, each once.
    pub fn sources_of(&self, metric: MetricId) -> Vec<SourceId> {
        let mut measures = Vec::new();
        self.measures_of(metric, &mut measures);
        let mut sources: Vec<SourceId> = Vec::new();
        for m in measures {
            let s = self.measures[m].source;
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        sources
    }

    /// Whether a metric adds up over time (counts and sums, added or subtracted).
    pub fn is_additive(&self, metric: MetricId) -> bool {
        additive(
            &self.measures,
            &|id| self.metrics.get(id).map(|m| &m.formula),
            &self.metrics[metric].formula,
        )
    }

    /// The join path from `from` to `to` (edges as (source, join index)), shortest first.
    pub fn join_path(&self, from: SourceId, to: SourceId) -> Option<Vec<(SourceId, usize)>> {
        if from == to {
            return Some(Vec::new());
        }
        let mut prev: HashMap<SourceId, (SourceId, usize)> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(s) = queue.pop_front() {
            for (i, j) in self.sources[s].joins.iter().enumerate() {
                if j.target != from && !prev.contains_key(&j.target) {
                    prev.insert(j.target, (s, i));
                    if j.target == to {
                        let mut path = Vec::new();
                        let mut cur = to;
                        while cur != from {
                            let (p, i) = prev[&cur];
                            path.push((p, i));
                            cur = p;
                        }
                        path.reverse();
                        return Some(path);
                    }
                    queue.push_back(j.target);
                }
            }
        }
        None
    }
}

/// A page of metrics: a grain, a range relative to the day it is made, a breakdown.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub span: Span,
    pub title: Option<String>,
    pub description: Option<String>,
    /// Default: week.
    pub grain: Grain,
    /// `last 26 weeks` (see [`crate::time::relative_range`]); `None`: all the data.
    pub range: Option<String>,
    pub metrics: Vec<MetricId>,
    pub dimensions: Vec<DimensionId>,
}

/// A condition over a metric's series (or a source's freshness) that fires an alert.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    pub span: Span,
    pub condition: Condition,
    /// The period the condition is evaluated per.
    pub grain: Grain,
    /// Fires only after the condition held this many periods in a row.
    pub periods: u32,
    /// Once firing, keeps firing until the condition has been false this many periods.
    pub keep: u32,
    /// Not evaluated in periods where this metric is below this volume.
    pub volume: Option<(MetricId, f64)>,
    /// Where its changes of state are posted.
    pub webhook: Option<String>,
    /// The severity of a condition without levels.
    pub severity: AlertSeverity,
    /// A minijinja template.
    pub message: Option<String>,
    /// One alert per value of these.
    pub dimensions: Vec<DimensionId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertSeverity {
    Warning,
    Critical,
}

impl AlertSeverity {
    pub fn name(self) -> &'static str {
        match self {
            AlertSeverity::Warning => "warning",
            AlertSeverity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<AlertSeverity> {
        match text {
            "warning" => Some(AlertSeverity::Warning),
            "critical" => Some(AlertSeverity::Critical),
            _ => None,
        }
    }
}

/// What fires an alert.
#[derive(Debug, Clone)]
pub enum Condition {
    /// The metric compared with levels, the most severe first.
    Threshold {
        metric: MetricId,
        levels: Vec<(BinOp, f64, AlertSeverity)>,
    },
    /// The change against the period before (or the same period a year before): relative
    /// (a share) or absolute.
    Change {
        metric: MetricId,
        year: bool,
        op: BinOp,
        value: f64,
        relative: bool,
    },
    /// The value is more than `threshold` spreads from the center of the `window` periods
    /// before it (the same weekday only, with `weekday`): mean and standard deviation, or
    /// median and median absolute deviation (scaled by 1.4826) with `mad`.
    Anomaly {
        metric: MetricId,
        mad: bool,
        threshold: f64,
        window: u32,
        weekday: bool,
    },
    /// The metric misses its target (`pace`: its deadline target is off pace).
    OffTarget {
        metric: MetricId,
        target: usize,
        pace: bool,
    },
    /// The source's latest time value is older than this many seconds.
    Stale { source: SourceId, seconds: i64 },
    /// The source has no rows in the period.
    Empty { source: SourceId },
}

impl Condition {
    /// The metric a condition is about; `None` for conditions on a source.
    pub fn metric(&self) -> Option<MetricId> {
        match self {
            Condition::Threshold { metric, .. }
            | Condition::Change { metric, .. }
            | Condition::Anomaly { metric, .. }
            | Condition::OffTarget { metric, .. } => Some(*metric),
            Condition::Stale { .. } | Condition::Empty { .. } => None,
        }
    }
}

/// A goal for a metric, per period or by a deadline.
#[derive(Debug, Clone)]
pub struct Target {
    pub metric: MetricId,
    pub span: Span,
    /// The definition as written.
    pub text: String,
    pub direction: TargetDirection,
    pub level: Level,
    /// The upper level of `between`.
    pub high: Option<Level>,
    /// The period the target is for (default: month).
    pub grain: Grain,
    /// The first day the target applies from.
    pub from: Option<NaiveDate>,
    /// With a deadline the metric adds up from the start (`from`, or the start of the year
    /// that holds the deadline) to the deadline.
    pub deadline: Option<NaiveDate>,
    /// Short of the level by at most this share is "near".
    pub tolerance: f64,
}

/// Which side of the level is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetDirection {
    AtLeast,
    AtMost,
    Between,
}

/// A target's level: one value, or one per period (keyed by the period's first day).
#[derive(Debug, Clone, PartialEq)]
pub enum Level {
    Constant(f64),
    Schedule(std::collections::BTreeMap<NaiveDate, f64>),
}

impl Level {
    /// The level of the period that starts on `period`.
    pub fn at(&self, period: NaiveDate) -> Option<f64> {
        match self {
            Level::Constant(v) => Some(*v),
            Level::Schedule(s) => s.get(&period).copied(),
        }
    }
}

/// A table of rows.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub span: Span,
    pub data: SourceData,
    pub time: Option<TimeColumn>,
    pub key: Option<String>,
    pub joins: Vec<Join>,
    pub label: Option<String>,
    pub description: Option<String>,
}

impl Source {
    pub fn column_type(&self, name: &str) -> Option<ValueType> {
        self.data
            .schema
            .field_with_name(name)
            .ok()
            .map(|f| ValueType::of(f.data_type()))
    }
}

/// A source's time column.
#[derive(Debug, Clone)]
pub struct TimeColumn {
    pub name: String,
    pub ty: ValueType,
}

/// A many-to-one join: `column` of this source matches `target_column` of `target`.
#[derive(Debug, Clone)]
pub struct Join {
    pub target: SourceId,
    pub column: String,
    pub target_column: String,
    pub span: Span,
}

/// A named breakdown.
#[derive(Debug)]
pub struct Dimension {
    pub name: String,
    pub span: Span,
    pub source: SourceId,
    pub expr: RowExpr,
    /// The expression as written.
    pub text: String,
    pub label: Option<String>,
    pub description: Option<String>,
}

/// A KPI: a formula over measures, other metrics and numbers.
#[derive(Debug)]
pub struct Metric {
    pub name: String,
    pub span: Span,
    pub label: Option<String>,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub unit: Option<String>,
    pub format: Format,
    pub good: Option<Direction>,
    pub formula: Formula,
    /// The definition as written.
    pub text: String,
}

/// How a metric is computed from the results of the scans.
#[derive(Debug, Clone, PartialEq)]
pub enum Formula {
    Measure(MeasureId),
    Metric(MetricId),
    Number(f64),
    Neg(Box<Formula>),
    /// `+ - * /`; division by zero or null gives null.
    Binary(BinOp, Box<Formula>, Box<Formula>),
    /// The formula with each of its measures computed over a window of time: a rolling
    /// ratio is the rolling numerator over the rolling denominator.
    Window(Window, Box<Formula>),
    /// The formula's value in an earlier (or later) period.
    Offset(Offset, Box<Formula>),
    /// The formula's value over its value for all breakdown values of the period together.
    Share(Box<Formula>),
}

impl Formula {
    /// Calls `f` on this formula and every formula inside it (not through other metrics).
    pub fn walk(&self, f: &mut dyn FnMut(&Formula)) {
        f(self);
        match self {
            Formula::Neg(a) | Formula::Window(_, a) | Formula::Offset(_, a) | Formula::Share(a) => a.walk(f),
            Formula::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Formula::Measure(_) | Formula::Metric(_) | Formula::Number(_) => {}
        }
    }
}

/// A window of time that ends with each period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The last `amount` units up to the end of each period: `rolling(revenue, 7 days)`.
    Rolling { amount: u32, unit: Grain },
    /// From the first row of data to the end of each period.
    Cumulative,
    /// From the start of the `Grain` period that holds each period's last day.
    ToDate(Grain),
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Window::Rolling { amount, unit } => write!(f, "rolling {amount} {}s", unit.name()),
            Window::Cumulative => write!(f, "cumulative"),
            Window::ToDate(g) => write!(f, "{}-to-date", g.name()),
        }
    }
}

/// `[-1 year]`: `amount` units of time; a unit of `None` is one period of the query's grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offset {
    pub amount: i32,
    pub unit: Option<Grain>,
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = self.unit.map(|g| g.name()).unwrap_or("period");
        write!(f, "[{:+} {unit}]", self.amount)
    }
}

/// Semi-additive measures: the value at the last (or first) day of each period that has
/// rows, never added up across time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Snapshot {
    First,
    Last,
}

/// The base rows of a measure that are followed, within a window, by a row of `target`
/// with the same entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    pub target: SourceId,
    pub target_filter: Option<RowExpr>,
    /// The entity column, in the base source and in the target.
    pub entity: String,
    pub within_seconds: i64,
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agg {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    Median,
    Percentile(f64),
}

impl Agg {
    /// Over no rows, additive aggregates give 0; the others give null.
    pub fn zero_when_empty(self) -> bool {
        matches!(self, Agg::Count | Agg::CountDistinct | Agg::Sum)
    }

    /// Whether partial results combine into the whole (sum of counts, min of mins, a summed
    /// sum over a summed count); distinct counts, medians and percentiles do not.
    pub fn reaggregatable(self) -> bool {
        matches!(self, Agg::Count | Agg::Sum | Agg::Min | Agg::Max | Agg::Avg)
    }
}

/// One aggregate over one source's rows, with an optional filter. Metrics share measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub source: SourceId,
    pub agg: Agg,
    /// `None` counts rows.
    pub arg: Option<RowExpr>,
    pub filter: Option<RowExpr>,
    /// `last(...)`, `first(...)`: the aggregate over the rows of one day of the period.
    pub snapshot: Option<Snapshot>,
    /// `conversions(...)`: counts only the rows that convert.
    pub conversion: Option<Conversion>,
}

impl Measure {
    /// Over no rows: 0 for counts and sums, null for the others and for snapshots (no
    /// balance is known for a period without one).
    pub fn zero_when_empty(&self) -> bool {
        self.snapshot.is_none() && self.agg.zero_when_empty()
    }
}

/// A typed row-level expression.
#[derive(Debug, Clone, PartialEq)]
pub struct RowExpr {
    pub kind: RowKind,
    pub ty: ValueType,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowKind {
    Column {
        source: SourceId,
        name: String,
    },
    Number(f64),
    String(String),
    Bool(bool),
    Date(NaiveDate),
    Null,
    Binary(BinOp, Box<RowExpr>, Box<RowExpr>),
    Not(Box<RowExpr>),
    Neg(Box<RowExpr>),
    IsNull {
        expr: Box<RowExpr>,
        negated: bool,
    },
    InList {
        expr: Box<RowExpr>,
        list: Vec<RowExpr>,
        negated: bool,
    },
    Between {
        expr: Box<RowExpr>,
        low: Box<RowExpr>,
        high: Box<RowExpr>,
        negated: bool,
    },
    Func(Func, Vec<RowExpr>),
}

/// Row-level functions of the expression language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    DaysBetween,
    HoursBetween,
    Coalesce,
    Lower,
    Upper,
}

impl RowExpr {
    /// Calls `f` on this expression and every expression inside it.
    pub fn walk(&self, f: &mut dyn FnMut(&RowExpr)) {
        f(self);
        match &self.kind {
            RowKind::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            RowKind::Not(a) | RowKind::Neg(a) | RowKind::IsNull { expr: a, .. } => a.walk(f),
            RowKind::InList { expr, list, .. } => {
                expr.walk(f);
                list.iter().for_each(|x| x.walk(f));
            }
            RowKind::Between { expr, low, high, .. } => {
                expr.walk(f);
                low.walk(f);
                high.walk(f);
            }
            RowKind::Func(_, args) => args.iter().for_each(|x| x.walk(f)),
            _ => {}
        }
    }

    /// Every source this expression reads a column of.
    pub fn sources(&self, out: &mut Vec<SourceId>) {
        self.walk(&mut |x| {
            if let RowKind::Column { source, .. } = &x.kind
                && !out.contains(source)
            {
                out.push(*source)
            }
        });
    }
}

/// Whether a formula adds up over time: counts and sums, added, subtracted or scaled.
/// Metrics nest only so deep; a cycle (an error of its own) is not additive.
pub(crate) fn additive<'a>(
    measures: &[Measure],
    formula_of: &dyn Fn(MetricId) -> Option<&'a Formula>,
    f: &Formula,
) -> bool {
    fn go<'a>(
        measures: &[Measure],
        formula_of: &dyn Fn(MetricId) -> Option<&'a Formula>,
        f: &Formula,
        depth: u32,
    ) -> bool {
        let rec = |g: &Formula| depth < 64 && go(measures, formula_of, g, depth + 1);
        match f {
            Formula::Measure(m) => {
                let m = &measures[*m];
                matches!(m.agg, Agg::Count | Agg::Sum) && m.snapshot.is_none()
            }
            Formula::Metric(id) => formula_of(*id).is_some_and(rec),
            Formula::Neg(a) => rec(a),
            Formula::Binary(BinOp::Add | BinOp::Sub, a, b) => rec(a) && rec(b),
            Formula::Binary(BinOp::Mul, a, b) => match (a.as_ref(), b.as_ref()) {
                (Formula::Number(_), x) | (x, Formula::Number(_)) => rec(x),
                _ => false,
            },
            _ => false,
        }
    }
    go(measures, formula_of, f, 0)
}
