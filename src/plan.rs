//! Plan: a query of the model to DataFusion logical plans, built with its API.
//!
//! Measures that read the same source are computed in one scan of that source: one
//! aggregate, grouped by period and breakdown, with one filtered aggregate expression per
//! measure. Derived metrics are not planned here; [`crate::run`] computes them from the
//! measures' results. No user text ever becomes SQL.

use crate::ast::{BinOp, Expr as AstExpr};
use crate::diagnostic::Diagnostic;
use crate::model::{Agg, DimensionId, Func, MeasureId, MetricId, Model, RowExpr, RowKind, SourceId, ValueType};
use crate::span::Files;
use crate::time::{Calendar, Grain, to_days};
use chrono::{NaiveDate, TimeZone};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, JoinType, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::functions::expr_fn as func;
use datafusion::functions_aggregate::expr_fn as agg;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, lit};
use datafusion::prelude::SessionContext;

/// Names of the columns a scan produces.
pub const PERIOD: &str = "__period";

pub fn dim_column(i: usize) -> String {
    format!("__dim{i}")
}

pub fn measure_column(m: MeasureId) -> String {
    format!("__measure{m}")
}

/// What to compute.
#[derive(Debug, Clone)]
pub struct Query {
    pub metrics: Vec<MetricId>,
    /// `None`: one total over the whole range.
    pub grain: Option<Grain>,
    pub dimensions: Vec<DimensionId>,
    /// First day included.
    pub from: Option<NaiveDate>,
    /// Last day included.
    pub to: Option<NaiveDate>,
    /// `--where`, parsed; resolved against each scanned source.
    pub filter: Option<AstExpr>,
}

/// The plans of a query: one scan per source, and the key checks of the joins it uses.
#[derive(Debug)]
pub struct QueryPlan {
    pub query: Query,
    pub scans: Vec<Scan>,
    pub key_checks: Vec<KeyCheck>,
}

/// One aggregate over one source (and the sources it joins).
#[derive(Debug)]
pub struct Scan {
    pub source: SourceId,
    pub measures: Vec<MeasureId>,
    pub plan: LogicalPlan,
}

/// Finds a duplicate key on the "one" side of a many-to-one join, if there is one.
#[derive(Debug)]
pub struct KeyCheck {
    /// The source that declares the join, and the join's index in it.
    pub source: SourceId,
    pub join: usize,
    pub plan: LogicalPlan,
}

type Result<T> = std::result::Result<T, Diagnostic>;

fn internal(e: datafusion::error::DataFusionError) -> Diagnostic {
    Diagnostic::data("E0701", format!("cannot plan the query: {}", e.strip_backtrace()))
}

/// Plans a query.
pub fn build(model: &Model, files: &Files, calendar: &Calendar, query: Query) -> Result<QueryPlan> {
    let mut measures: Vec<MeasureId> = Vec::new();
    for &m in &query.metrics {
        model.measures_of(m, &mut measures);
    }
    let mut by_source: Vec<(SourceId, Vec<MeasureId>)> = Vec::new();
    for m in measures {
        let s = model.measures[m].source;
        match by_source.iter_mut().find(|(x, _)| *x == s) {
            Some((_, v)) => v.push(m),
            None => by_source.push((s, vec![m])),
        }
    }
    let mut scans = Vec::new();
    let mut key_checks: Vec<KeyCheck> = Vec::new();
    for (source, ms) in by_source {
        let (plan, joins) = scan_plan(model, files, calendar, &query, source, &ms)?;
        for (s, j) in joins {
            if !key_checks.iter().any(|k| k.source == s && k.join == j) {
                key_checks.push(KeyCheck {
                    source: s,
                    join: j,
                    plan: key_check_plan(model, s, j)?,
                });
            }
        }
        scans.push(Scan {
            source,
            measures: ms,
            plan,
        });
    }
    Ok(QueryPlan {
        query,
        scans,
        key_checks,
    })
}

fn scan_plan(
    model: &Model,
    files: &Files,
    calendar: &Calendar,
    query: &Query,
    source: SourceId,
    measures: &[MeasureId],
) -> Result<(LogicalPlan, Vec<(SourceId, usize)>)> {
    let src = &model.sources[source];
    let metric_names = || {
        query
            .metrics
            .iter()
            .filter(|&&m| {
                let mut v = Vec::new();
                model.measures_of(m, &mut v);
                v.iter().any(|x| measures.contains(x))
            })
            .map(|&m| format!("`{}`", model.metrics[m].name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Which other sources this scan reads.
    let mut needed: Vec<SourceId> = Vec::new();
    for &m in measures {
        let ms = &model.measures[m];
        if let Some(a) = &ms.arg {
            a.sources(&mut needed);
        }
        if let Some(f) = &ms.filter {
            f.sources(&mut needed);
        }
    }
    let mut dims = Vec::new();
    for &d in &query.dimensions {
        let dim = &model.dimensions[d];
        let mut used = Vec::new();
        dim.expr.sources(&mut used);
        if let Some(&s) = used.iter().find(|&&s| model.join_path(source, s).is_none()) {
            return Err(Diagnostic::usage(
                "E0702",
                format!(
                    "dimension `{}` reads source `{}`, which source `{}` (of metric {}) does not join",
                    dim.name,
                    model.sources[s].name,
                    src.name,
                    metric_names()
                ),
            )
            .at(dim.span, "this dimension")
            .also(src.span, "declare a many-to-one join in this source"));
        }
        needed.extend(used);
        dims.push(&dim.expr);
    }
    let filter = match &query.filter {
        Some(f) => {
            let r = crate::model::resolve_filter(model, files, source, f).map_err(|d| {
                d.note(format!(
                    "the filter applies to source `{}`, read by metric {}",
                    src.name,
                    metric_names()
                ))
            })?;
            r.sources(&mut needed);
            Some(r)
        }
        None => None,
    };

    // Joins along the shortest path to every needed source.
    let mut edges: Vec<(SourceId, usize)> = Vec::new();
    for s in needed {
        for e in model.join_path(source, s).unwrap_or_default() {
            if !edges.contains(&e) {
                edges.push(e);
            }
        }
    }
    let mut conditions = Vec::new();
    let time = src.time.as_ref();
    if (query.from.is_some() || query.to.is_some() || query.grain.is_some()) && time.is_none() {
        return Err(Diagnostic::usage(
            "E0703",
            format!(
                "source `{}` (of metric {}) has no time column",
                src.name,
                metric_names()
            ),
        )
        .at(src.span, "declare `time: COLUMN` to break it down by period")
        .note("query it without --by, --from and --to"));
    }
    let time_of = |t: &crate::model::TimeColumn| time_value(model, source, &t.name);
    if let Some(t) = time {
        let tv = time_of(t);
        if let Some(from) = query.from {
            conditions.push(tv.expr.clone().gt_eq(day_starts(&tv, from, calendar)));
        }
        if let Some(to) = query.to {
            let next = to + chrono::Days::new(1);
            conditions.push(tv.expr.clone().lt(day_starts(&tv, next, calendar)));
        }
    }
    if let Some(f) = &filter {
        conditions.push(row_expr(model, f));
    }
    let condition = conditions.into_iter().reduce(Expr::and);
    let period = match (query.grain, time) {
        (Some(g), Some(t)) => Some(period_expr(&time_of(t), g, calendar).alias(PERIOD)),
        _ => None,
    };

    if aggregates_before_joins(model, source, &edges, measures, filter.as_ref()) {
        let plan = aggregate_then_join(model, source, &edges, condition, period, &dims, measures)?;
        return Ok((plan, edges));
    }

    let mut builder = scan(model, source)?;
    for &(from, j) in &edges {
        builder = join(model, builder, from, j)?;
    }
    if let Some(c) = condition {
        builder = builder.filter(c).map_err(internal)?;
    }
    let mut group: Vec<Expr> = period.into_iter().collect();
    for (i, d) in dims.into_iter().enumerate() {
        group.push(row_expr(model, d).alias(dim_column(i)));
    }
    let plan = match filter_columns(model, measures) {
        Some(columns) => pre_aggregated(model, builder, group, columns, measures)?,
        None => {
            let aggs = measures
                .iter()
                .map(|&m| measure_expr(model, m).alias(measure_column(m)))
                .collect::<Vec<_>>();
            builder
                .aggregate(group, aggs)
                .and_then(|b| b.build())
                .map_err(internal)?
        }
    };
    Ok((plan, edges))
}

/// Left-joins the target of join `j` of source `from`.
fn join(model: &Model, builder: LogicalPlanBuilder, from: SourceId, j: usize) -> Result<LogicalPlanBuilder> {
    let join = &model.sources[from].joins[j];
    let target = scan(model, join.target)?.build().map_err(internal)?;
    builder
        .join(
            target,
            JoinType::Left,
            (
                vec![column_ref(model, from, &join.column)],
                vec![column_ref(model, join.target, &join.target_column)],
            ),
            None,
        )
        .map_err(internal)
}

/// Lookup tables this small are joined after the aggregate (their files' total size).
const SMALL_LOOKUP_BYTES: u64 = 4 * 1024 * 1024;

/// A breakdown by a lookup table (`channels.channel`) joined to every one of 10 million
/// rows costs a hash probe per row. When the joined sources are small lookups, every
/// measure can be re-aggregated and reads only the scanned source, the rows are aggregated
/// first by period, the join keys and the source's own breakdown columns; the lookups are
/// joined to that small table; and a second aggregate sums it up by breakdown.
fn aggregates_before_joins(
    model: &Model,
    source: SourceId,
    edges: &[(SourceId, usize)],
    measures: &[MeasureId],
    filter: Option<&RowExpr>,
) -> bool {
    let only_source = |e: &RowExpr| {
        let mut used = Vec::new();
        e.sources(&mut used);
        used.iter().all(|&s| s == source)
    };
    !edges.is_empty()
        && edges
            .iter()
            .all(|&(from, j)| model.sources[model.sources[from].joins[j].target].data.size() < SMALL_LOOKUP_BYTES)
        && filter.is_none_or(only_source)
        && measures.iter().all(|&m| {
            let ms = &model.measures[m];
            ms.agg.reaggregatable()
                && ms.arg.as_ref().is_none_or(only_source)
                && ms.filter.as_ref().is_none_or(only_source)
        })
}

fn aggregate_then_join(
    model: &Model,
    source: SourceId,
    edges: &[(SourceId, usize)],
    condition: Option<Expr>,
    period: Option<Expr>,
    dims: &[&RowExpr],
    measures: &[MeasureId],
) -> Result<LogicalPlan> {
    let mut builder = scan(model, source)?;
    if let Some(c) = condition {
        builder = builder.filter(c).map_err(internal)?;
    }
    // First aggregate: by period, join keys and the source's columns the breakdowns read.
    let mut first_group: Vec<Expr> = period.iter().cloned().collect();
    let mut keys: Vec<String> = Vec::new();
    let mut key = |name: &str, group: &mut Vec<Expr>| {
        if !keys.iter().any(|k| k == name) {
            keys.push(name.to_string());
            group.push(column(model, source, name));
        }
    };
    for &(from, j) in edges {
        if from == source {
            key(&model.sources[from].joins[j].column, &mut first_group);
        }
    }
    for d in dims {
        d.walk(&mut |x| {
            if let RowKind::Column { source: s, name } = &x.kind
                && *s == source
            {
                key(name, &mut first_group);
            }
        });
    }
    let split = two_phase(model, measures, FilterIn::First);
    builder = builder.aggregate(first_group, split.first).map_err(internal)?;
    for &(from, j) in edges {
        builder = join(model, builder, from, j)?;
    }
    let mut second_group: Vec<Expr> = period.iter().map(|_| Expr::Column(Column::from_name(PERIOD))).collect();
    let mut names: Vec<String> = period.iter().map(|_| PERIOD.to_string()).collect();
    for (i, d) in dims.iter().enumerate() {
        second_group.push(row_expr(model, d).alias(dim_column(i)));
        names.push(dim_column(i));
    }
    builder = builder.aggregate(second_group, split.second).map_err(internal)?;
    finish_averages(builder, &names, measures, &split.averages)
}

/// Where a measure's filter goes when it is computed in two aggregates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FilterIn {
    /// On the rows, in the first aggregate (its partials are the measure's own).
    First,
    /// On the first aggregate's groups, in the second (partials are shared between
    /// measures that aggregate the same thing).
    Second,
}

/// A measure split into partial aggregates (first) and their combination (second).
struct TwoPhase {
    first: Vec<Expr>,
    second: Vec<Expr>,
    averages: Vec<MeasureId>,
}

/// Splits re-aggregatable measures (count, sum, min, max, avg) into two aggregates: count
/// and sum add up, min and max take the min and max, and an average is a summed sum over a
/// summed count (see [`finish_averages`]).
fn two_phase(model: &Model, measures: &[MeasureId], filter_in: FilterIn) -> TwoPhase {
    let mut first: Vec<(String, Expr)> = Vec::new();
    let mut second = Vec::new();
    let mut averages = Vec::new();
    for &m in measures {
        let ms = &model.measures[m];
        let out = measure_column(m);
        let arg = ms.arg.as_ref().map(|a| row_expr(model, a)).unwrap_or_else(|| lit(1i64));
        let key = arg.schema_name().to_string();
        // Adds a partial (once per name) and returns the second-phase aggregate over it.
        let mut partial = |kind: &str, e: Expr, combine: fn(Expr) -> Expr| -> Expr {
            let name = match filter_in {
                FilterIn::First => format!("{out}_{kind}"),
                FilterIn::Second => format!("__{kind}({key})"),
            };
            if !first.iter().any(|(n, _)| *n == name) {
                let e = if filter_in == FilterIn::First {
                    with_filter(model, e, ms.filter.as_ref())
                } else {
                    e
                };
                first.push((name.clone(), e));
            }
            let combined = combine(Expr::Column(Column::from_name(name)));
            if filter_in == FilterIn::Second {
                with_filter(model, combined, ms.filter.as_ref())
            } else {
                combined
            }
        };
        match ms.agg {
            Agg::Count => second.push(partial("count", agg::count(arg), agg::sum).alias(out)),
            Agg::Sum => second.push(partial("sum", agg::sum(arg), agg::sum).alias(out)),
            Agg::Min => second.push(partial("min", agg::min(arg), agg::min).alias(out)),
            Agg::Max => second.push(partial("max", agg::max(arg), agg::max).alias(out)),
            Agg::Avg => {
                let x = cast(arg, DataType::Float64);
                second.push(partial("fsum", agg::sum(x.clone()), agg::sum).alias(format!("{out}_sum")));
                second.push(partial("count", agg::count(x), agg::sum).alias(format!("{out}_count")));
                averages.push(m);
            }
            _ => unreachable!("only re-aggregatable measures are split"),
        }
    }
    let first = first.into_iter().map(|(n, e)| e.alias(n)).collect();
    TwoPhase {
        first,
        second,
        averages,
    }
}

/// Attaches a measure's filter to its aggregate. Set on the aggregate itself: DataFusion's
/// `ExprFunctionExt` builder would reset `distinct` and the ordering of the aggregate.
fn with_filter(model: &Model, e: Expr, filter: Option<&RowExpr>) -> Expr {
    match (e, filter) {
        (Expr::AggregateFunction(mut f), Some(filter)) => {
            f.params.filter = Some(Box::new(row_expr(model, filter)));
            Expr::AggregateFunction(f)
        }
        (e, _) => e,
    }
}

/// After a re-aggregation, an average is its summed sum over its summed count (null for
/// none); the other measures pass through.
fn finish_averages(
    builder: LogicalPlanBuilder,
    keys: &[String],
    measures: &[MeasureId],
    averages: &[MeasureId],
) -> Result<LogicalPlan> {
    let named = |n: String| Expr::Column(Column::from_name(n));
    if averages.is_empty() {
        return builder.build().map_err(internal);
    }
    let mut projection: Vec<Expr> = keys.iter().map(|k| named(k.clone())).collect();
    for &m in measures {
        let out = measure_column(m);
        if averages.contains(&m) {
            let sum = named(format!("{out}_sum"));
            let count = cast(named(format!("{out}_count")), DataType::Float64);
            projection.push((sum / func::nullif(count, lit(0.0))).alias(out));
        } else {
            projection.push(named(out));
        }
    }
    builder.project(projection).and_then(|b| b.build()).map_err(internal)
}

fn key_check_plan(model: &Model, source: SourceId, j: usize) -> Result<LogicalPlan> {
    let join = &model.sources[source].joins[j];
    let key = column(model, join.target, &join.target_column);
    scan(model, join.target)?
        .filter(key.clone().is_not_null())
        .and_then(|b| b.aggregate(vec![key.alias("key")], vec![agg::count(lit(1)).alias("n")]))
        .and_then(|b| b.filter(Expr::Column(Column::from_name("n")).gt(lit(1i64))))
        .and_then(|b| b.limit(0, Some(1)))
        .and_then(|b| b.build())
        .map_err(internal)
}

fn scan(model: &Model, source: SourceId) -> Result<LogicalPlanBuilder> {
    let src = &model.sources[source];
    let table = src.data.table().map_err(internal)?;
    LogicalPlanBuilder::scan(TableReference::bare(src.name.as_str()), provider_as_source(table), None).map_err(internal)
}

fn column_ref(model: &Model, source: SourceId, name: &str) -> Column {
    Column::new(Some(TableReference::bare(model.sources[source].name.as_str())), name)
}

fn column(model: &Model, source: SourceId, name: &str) -> Expr {
    Expr::Column(column_ref(model, source, name))
}

fn date_lit(d: NaiveDate) -> Expr {
    lit(ScalarValue::Date32(Some(to_days(d))))
}

/// A time column as the planner sees it: its expression and type.
struct TimeValue {
    expr: Expr,
    data_type: DataType,
}

fn time_value(model: &Model, source: SourceId, name: &str) -> TimeValue {
    let data_type = model.sources[source]
        .data
        .schema
        .field_with_name(name)
        .map(|f| f.data_type().clone())
        .unwrap_or(DataType::Date32);
    TimeValue {
        expr: column(model, source, name),
        data_type,
    }
}

/// `time >= first moment of day` as an expression on the raw column, so that no per-row
/// conversion is needed and Parquet statistics can prune row groups. With a project time
/// zone, a day starts at local midnight (naive timestamps are UTC instants).
fn day_starts(t: &TimeValue, day: NaiveDate, calendar: &Calendar) -> Expr {
    match &t.data_type {
        DataType::Timestamp(unit, stored) => {
            let midnight = day.and_hms_opt(0, 0, 0).expect("midnight");
            let instant = match calendar.time_zone {
                Some(tz) => tz
                    .from_local_datetime(&midnight)
                    .earliest()
                    .map(|d| d.naive_utc())
                    .unwrap_or(midnight),
                None => midnight,
            };
            let micros = instant.and_utc().timestamp_micros();
            let value = match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(Some(micros / 1_000_000), stored.clone()),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(micros / 1_000), stored.clone()),
                TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(micros), stored.clone()),
                TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(micros * 1_000), stored.clone()),
            };
            lit(value)
        }
        DataType::Date64 => lit(ScalarValue::Date64(Some(
            day.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis(),
        ))),
        _ => date_lit(day),
    }
}

/// The period key of a time value: the start of its period, as a timestamp or a date
/// (`run` reads either as a date). Truncating the raw timestamp is several times cheaper
/// than converting every row to a date first.
fn period_expr(t: &TimeValue, grain: Grain, calendar: &Calendar) -> Expr {
    let local = match (&t.data_type, calendar.time_zone) {
        (DataType::Timestamp(unit, stored), Some(tz)) => {
            let utc = match stored {
                Some(_) => t.expr.clone(),
                None => cast(t.expr.clone(), DataType::Timestamp(*unit, Some("UTC".into()))),
            };
            let zoned = cast(utc, DataType::Timestamp(*unit, Some(tz.name().into())));
            // to_local_time: the wall-clock time in that zone, as a naive timestamp.
            func::to_local_time(vec![zoned])
        }
        (DataType::Timestamp(..), None) => t.expr.clone(),
        _ => cast(t.expr.clone(), DataType::Timestamp(TimeUnit::Second, None)),
    };
    let trunc = |unit: &str, e: Expr| func::date_trunc(lit(unit), e);
    match grain {
        Grain::Day => trunc("day", local),
        Grain::Week if calendar.week_start == chrono::Weekday::Mon => trunc("week", local),
        Grain::Week => {
            // Days since 1970-01-01, stepped back to the configured first day of the week.
            let n = cast(cast(local, DataType::Date32), DataType::Int32);
            let anchor = 4 + calendar.week_start.num_days_from_monday() as i32; // 1970-01-05 is a Monday
            let back = ((n.clone() - lit(anchor)) % lit(7) + lit(7)) % lit(7);
            cast(n - back, DataType::Date32)
        }
        Grain::Month | Grain::Quarter | Grain::Year => {
            let months = match grain {
                Grain::Month => 1,
                Grain::Quarter => 3,
                _ => 12,
            };
            let unit = match grain {
                Grain::Month => "month",
                Grain::Quarter => "quarter",
                _ => "year",
            };
            // A fiscal year starting in April: shift back 3 months, truncate, shift forward.
            let shift = (calendar.fiscal_year_start as i32 - 1) % months;
            if shift == 0 {
                trunc(unit, local)
            } else {
                let months = |n| lit(ScalarValue::IntervalYearMonth(Some(n)));
                trunc(unit, local - months(shift)) + months(shift)
            }
        }
    }
}

/// Most filters of a KPI pack test categories (`status = "completed"`, `channel in (...)`).
/// Evaluated per row, twenty of them cost four times one. When every measure of a scan can
/// be re-aggregated and every filter reads only a few string or boolean columns, the rows
/// are first aggregated by period, breakdown and those columns, and the filters are
/// evaluated on that small table instead. Returns the columns, when that plan applies.
fn filter_columns(model: &Model, measures: &[MeasureId]) -> Option<Vec<(SourceId, String)>> {
    /// More columns would risk a first aggregate nearly as large as the data.
    const MAX_COLUMNS: usize = 3;
    let filtered = measures.iter().filter(|&&m| model.measures[m].filter.is_some()).count();
    if filtered < 2 {
        return None;
    }
    let mut columns = Vec::new();
    for &m in measures {
        let ms = &model.measures[m];
        if !ms.agg.reaggregatable() {
            return None;
        }
        if let Some(f) = &ms.filter
            && !categorical(f, &mut columns)
        {
            return None;
        }
    }
    (columns.len() <= MAX_COLUMNS).then_some(columns)
}

/// Whether an expression reads only string and boolean columns (collected into `out`).
fn categorical(e: &RowExpr, out: &mut Vec<(SourceId, String)>) -> bool {
    let mut ok = true;
    let mut visit = |x: &RowExpr| {
        if let RowKind::Column { source, name } = &x.kind {
            if !matches!(x.ty, ValueType::String | ValueType::Bool) {
                ok = false;
            }
            let key = (*source, name.clone());
            if !out.contains(&key) {
                out.push(key);
            }
        }
    };
    e.walk(&mut visit);
    ok
}

/// Two aggregates: by period, breakdown and the filters' columns, without filters; then by
/// period and breakdown, each measure re-aggregated with its filter. The filter expressions
/// are unchanged: the first aggregate keeps the columns' qualified names.
fn pre_aggregated(
    model: &Model,
    builder: LogicalPlanBuilder,
    group: Vec<Expr>,
    columns: Vec<(SourceId, String)>,
    measures: &[MeasureId],
) -> Result<LogicalPlan> {
    let keys: Vec<String> = group.iter().map(|g| g.schema_name().to_string()).collect();
    let mut first_group = group;
    first_group.extend(columns.iter().map(|(s, c)| column(model, *s, c)));
    let split = two_phase(model, measures, FilterIn::Second);
    let second_group: Vec<Expr> = keys
        .iter()
        .map(|k| Expr::Column(Column::from_name(k.clone())))
        .collect();
    let b = builder
        .aggregate(first_group, split.first)
        .and_then(|b| b.aggregate(second_group, split.second))
        .map_err(internal)?;
    finish_averages(b, &keys, measures, &split.averages)
}

fn measure_expr(model: &Model, m: MeasureId) -> Expr {
    let ms = &model.measures[m];
    let arg = ms.arg.as_ref().map(|a| row_expr(model, a));
    let float = |e: Expr| cast(e, DataType::Float64);
    let one = || lit(1i64);
    let e = match ms.agg {
        Agg::Count => agg::count(arg.unwrap_or_else(one)),
        Agg::CountDistinct => agg::count_distinct(arg.unwrap_or_else(one)),
        Agg::Sum => agg::sum(arg.unwrap_or_else(one)),
        // Averages and percentiles in Float64: decimals would truncate.
        Agg::Avg => agg::avg(float(arg.unwrap_or_else(one))),
        Agg::Min => agg::min(arg.unwrap_or_else(one)),
        Agg::Max => agg::max(arg.unwrap_or_else(one)),
        Agg::Median => agg::median(float(arg.unwrap_or_else(one))),
        Agg::Percentile(p) => crate::percentile::percentile(float(arg.unwrap_or_else(one)), p),
    };
    with_filter(model, e, ms.filter.as_ref())
}

/// A typed row expression as a DataFusion expression.
pub fn row_expr(model: &Model, e: &RowExpr) -> Expr {
    let r = |x: &RowExpr| row_expr(model, x);
    match &e.kind {
        RowKind::Column { source, name } => column(model, *source, name),
        RowKind::Number(n) => {
            if n.fract() == 0.0 && n.abs() < 9e15 {
                lit(*n as i64)
            } else {
                lit(*n)
            }
        }
        RowKind::String(s) => lit(s.clone()),
        RowKind::Bool(b) => lit(*b),
        RowKind::Date(d) => date_lit(*d),
        RowKind::Null => lit(ScalarValue::Null),
        RowKind::Binary(op, a, b) => {
            let (a2, b2) = (r(a), r(b));
            match op {
                BinOp::Or => a2.or(b2),
                BinOp::And => a2.and(b2),
                BinOp::Eq => a2.eq(b2),
                BinOp::Ne => a2.not_eq(b2),
                BinOp::Lt => a2.lt(b2),
                BinOp::Le => a2.lt_eq(b2),
                BinOp::Gt => a2.gt(b2),
                BinOp::Ge => a2.gt_eq(b2),
                BinOp::Add => a2 + b2,
                BinOp::Sub => a2 - b2,
                BinOp::Mul => a2 * b2,
                // Row-level division in Float64; a zero divisor gives null.
                BinOp::Div => {
                    let d = cast(b2, DataType::Float64);
                    cast(a2, DataType::Float64) / func::nullif(d, lit(0.0))
                }
            }
        }
        RowKind::Not(a) => datafusion::logical_expr::not(r(a)),
        RowKind::Neg(a) => Expr::Negative(Box::new(r(a))),
        RowKind::IsNull { expr, negated } => {
            if *negated {
                r(expr).is_not_null()
            } else {
                r(expr).is_null()
            }
        }
        RowKind::InList { expr, list, negated } => r(expr).in_list(list.iter().map(r).collect(), *negated),
        RowKind::Between {
            expr,
            low,
            high,
            negated,
        } => {
            if *negated {
                r(expr).not_between(r(low), r(high))
            } else {
                r(expr).between(r(low), r(high))
            }
        }
        RowKind::Func(f, args) => match f {
            Func::DaysBetween | Func::HoursBetween => {
                let per = if *f == Func::DaysBetween { 86400.0 } else { 3600.0 };
                let secs = |x: &RowExpr| epoch_seconds(r(x), x.ty);
                (secs(&args[1]) - secs(&args[0])) / lit(per)
            }
            Func::Coalesce => func::coalesce(args.iter().map(r).collect()),
            Func::Lower => func::lower(r(&args[0])),
            Func::Upper => func::upper(r(&args[0])),
        },
    }
}

/// Seconds since 1970-01-01 UTC, as Float64.
fn epoch_seconds(e: Expr, ty: ValueType) -> Expr {
    match ty {
        ValueType::Date => cast(cast(e, DataType::Date32), DataType::Int32) * lit(86400.0),
        _ => {
            cast(
                cast(e, DataType::Timestamp(TimeUnit::Millisecond, None)),
                DataType::Int64,
            ) / lit(1000.0)
        }
    }
}

/// The session a plan runs in, for `explain` (optimizing needs one).
pub fn optimize(ctx: &SessionContext, plan: &LogicalPlan) -> Result<LogicalPlan> {
    ctx.state().optimize(plan).map_err(internal)
}
