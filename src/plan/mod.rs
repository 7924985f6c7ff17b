//! Plan: a query of the model to DataFusion logical plans, built with its API.
//!
//! Measures that read the same source are computed in one scan of that source: one
//! aggregate, grouped by period and breakdown, with one filtered aggregate expression per
//! measure. Derived metrics are not planned here; [`crate::run`] computes them from the
//! measures' results. No user text ever becomes SQL.

use crate::ast::{BinOp, Expr as AstExpr};
use crate::diagnostic::Diagnostic;
use crate::model::{
    Agg, Conversion, DimensionId, Func, MeasureId, MetricId, Model, RowExpr, RowKind, Snapshot, SourceId, ValueType,
    Window,
};
use crate::span::Files;
use crate::time::{Calendar, Grain, from_days, to_days};

mod classes;
mod dense;
pub mod terms;

use chrono::{NaiveDate, TimeZone};
use classes::Classes;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, DFSchema, JoinType, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::functions::expr_fn as func;
use datafusion::functions_aggregate::expr_fn as agg;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, cast, lit, when};
use datafusion::prelude::SessionContext;
pub use terms::{Compare, Output, Series, SeriesKind, Shift, Term};

/// Names of the columns a scan produces.
pub const PERIOD: &str = "__period";

pub fn dim_column(i: usize) -> String {
    format!("__dim{i}")
}

pub fn measure_column(m: MeasureId) -> String {
    format!("__measure{m}")
}

/// What to compute.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub metrics: Vec<MetricId>,
    /// `None`: one total over the whole range.
    pub grain: Option<Grain>,
    pub dimensions: Vec<DimensionId>,
    /// First day included.
    pub from: Option<NaiveDate>,
    /// Last day included; no row after it is read.
    pub to: Option<NaiveDate>,
    /// `--where`, parsed; resolved against each scanned source.
    pub filter: Option<AstExpr>,
    /// `--compare`: each metric next to an earlier period's value.
    pub compare: Option<Compare>,
}

/// The first and the last day with data, over the sources of a query.
pub type DataRange = (NaiveDate, NaiveDate);

/// The plans of a query: the scans, the key checks of the joins they use, and how the
/// result's columns are computed from the scans' series.
#[derive(Debug)]
pub struct QueryPlan {
    pub query: Query,
    pub outputs: Vec<Output>,
    /// The periods shown, fixed before running when a metric reads other periods or windows.
    pub periods: Option<Vec<NaiveDate>>,
    /// The first period, when `--from` cuts it short: an offset that lands on it reads the
    /// value shown for it, not the whole period.
    pub cut_period: Option<NaiveDate>,
    pub scans: Vec<Scan>,
    pub key_checks: Vec<KeyCheck>,
}

/// One aggregate over one source (and the sources it joins): a series per measure.
#[derive(Debug)]
pub struct Scan {
    pub source: SourceId,
    pub measures: Vec<MeasureId>,
    pub kind: SeriesKind,
    pub plan: LogicalPlan,
    /// The same aggregate as one plain `Aggregate`, to write as SQL; `None` for windows,
    /// snapshots and conversions, which have no single-statement form here.
    pub sql: Option<LogicalPlan>,
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
    Diagnostic::internal("E0701", format!("cannot plan the query: {}", e.strip_backtrace()))
}

/// The sources whose first and last day of data a query needs before it can be planned
/// (windows and offsets without `--from` or `--to`, cumulative windows), if any.
pub fn range_sources(model: &Model, query: &Query) -> Result<Option<Vec<SourceId>>> {
    let outputs = terms::columns(model, &query.metrics, query.grain, query.compare)?;
    let mut sources = Vec::new();
    let mut timed = false;
    let mut cumulative = false;
    for o in &outputs {
        timed |= o.term.is_timed();
        o.term.walk(&mut |t| {
            if let Term::Series((m, kind), _) = t {
                cumulative |= kind.window == Some(Window::Cumulative);
                let s = model.measures[*m].source;
                if !sources.contains(&s) {
                    sources.push(s);
                }
            }
        });
    }
    let needed = timed && (query.from.is_none() || query.to.is_none() || cumulative);
    Ok(needed.then_some(sources))
}

/// The first and last time value of a source, as UTC timestamps (dates at midnight).
pub fn range_plan(model: &Model, source: SourceId) -> Result<Option<LogicalPlan>> {
    let Some(t) = &model.sources[source].time else {
        return Ok(None);
    };
    let tv = time_value(model, source, &t.name);
    let utc = |e: Expr| utc_micros(e, &tv.data_type);
    let plan = scan(model, source)?
        .aggregate(
            Vec::<Expr>::new(),
            vec![
                agg::min(tv.expr.clone()).alias("first"),
                agg::max(tv.expr.clone()).alias("last"),
            ],
        )
        .and_then(|b| {
            b.project(vec![
                utc(Expr::Column(Column::from_name("first"))).alias("first"),
                utc(Expr::Column(Column::from_name("last"))).alias("last"),
            ])
        })
        .and_then(|b| b.build())
        .map_err(internal)?;
    Ok(Some(plan))
}

/// The rows of a source in a range of days and its last time value, as a UTC timestamp
/// (see [`range_plan`]); the range's bounds cut at local midnight.
pub fn activity_plan(
    model: &Model,
    calendar: &Calendar,
    source: SourceId,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<Option<LogicalPlan>> {
    let Some(t) = &model.sources[source].time else {
        return Ok(None);
    };
    let tv = time_value(model, source, &t.name);
    let mut conditions = vec![tv.expr.clone().is_not_null()];
    if let Some(f) = from {
        conditions.push(tv.expr.clone().gt_eq(day_starts(&tv, f, calendar)));
    }
    if let Some(to) = to {
        conditions.push(tv.expr.clone().lt(day_starts(&tv, to + chrono::Days::new(1), calendar)));
    }
    let utc = utc_micros(Expr::Column(Column::from_name("last")), &tv.data_type);
    let plan = scan(model, source)?
        .filter(conditions.into_iter().reduce(Expr::and).expect("a condition"))
        .and_then(|b| {
            b.aggregate(
                Vec::<Expr>::new(),
                vec![
                    agg::count(lit(1i64)).alias("rows"),
                    agg::max(tv.expr.clone()).alias("last"),
                ],
            )
        })
        .and_then(|b| b.project(vec![Expr::Column(Column::from_name("rows")), utc.alias("last")]))
        .and_then(|b| b.build())
        .map_err(internal)?;
    Ok(Some(plan))
}

/// A time value as a naive timestamp in microseconds: a zoned one at UTC, a naive one (or a
/// date at midnight) as stored.
fn utc_micros(e: Expr, data_type: &DataType) -> Expr {
    match data_type {
        DataType::Timestamp(unit, Some(_)) => cast(
            cast(e, DataType::Timestamp(*unit, Some("UTC".into()))),
            DataType::Timestamp(TimeUnit::Microsecond, None),
        ),
        _ => cast(e, DataType::Timestamp(TimeUnit::Microsecond, None)),
    }
}

/// Plans a query that needs no data range (see [`range_sources`]).
pub fn build(model: &Model, files: &Files, calendar: &Calendar, query: Query) -> Result<QueryPlan> {
    build_with_range(model, files, calendar, query, None)
}

/// How the measures of a scan are aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Plain,
    Snapshot(Snapshot),
    /// A conversion measure: its rows are joined to the converting source first.
    Conversion(MeasureId),
    /// A distinct count over windows: planned alone (see [`windowed_distinct`]).
    Distinct(MeasureId),
}

/// The measures of one scan, and every shift their values are read at.
type ScanGroup = ((SourceId, SeriesKind, Group), Vec<MeasureId>, Vec<Shift>);

/// Plans a query; `range` is the data's first and last day where [`range_sources`] asks.
pub fn build_with_range(
    model: &Model,
    files: &Files,
    calendar: &Calendar,
    query: Query,
    range: Option<DataRange>,
) -> Result<QueryPlan> {
    let mut outputs = terms::columns(model, &query.metrics, query.grain, query.compare)?;
    let timed = outputs.iter().any(|o| o.term.is_timed());
    let periods = match query.grain {
        Some(g) if timed => {
            let from = query.from.or(range.map(|r| r.0));
            let to = query.to.or(range.map(|r| r.1));
            Some(match (from, to) {
                (Some(f), Some(t)) => calendar.periods(f, t, g),
                _ => Vec::new(),
            })
        }
        _ => None,
    };
    // When --from cuts its period short, earlier periods are read whole, in series of their
    // own; the cut period itself is read from the unshifted series (see `cut_period`).
    let mut cut_period = None;
    if let (Some(g), Some(f)) = (query.grain, query.from)
        && timed
        && calendar.period_start(f, g) != f
    {
        cut_period = Some(calendar.period_start(f, g));
        for o in &mut outputs {
            o.term = terms::extend_shifted(std::mem::replace(&mut o.term, Term::Number(0.0)));
        }
    }
    // The series each output reads, and the shifts it reads them at.
    let mut series: Vec<(Series, Vec<Shift>)> = Vec::new();
    for o in &outputs {
        o.term.walk(&mut |t| {
            if let Term::Series(s, shift) = t {
                match series.iter_mut().find(|(x, _)| x == s) {
                    Some((_, shifts)) => {
                        if !shifts.contains(shift) {
                            shifts.push(*shift)
                        }
                    }
                    None => series.push((*s, vec![*shift])),
                }
            }
        });
    }
    if cut_period.is_some() {
        let extended: Vec<Series> = series.iter().map(|x| x.0).filter(|(_, k)| k.extended).collect();
        for (m, kind) in extended {
            let plain = (
                m,
                SeriesKind {
                    extended: false,
                    ..kind
                },
            );
            match series.iter_mut().find(|(x, _)| *x == plain) {
                Some((_, shifts)) if shifts.contains(&Shift::default()) => {}
                Some((_, shifts)) => shifts.push(Shift::default()),
                None => series.push((plain, vec![Shift::default()])),
            }
        }
    }
    // Scans: by source, kind and group, in the order first needed.
    let mut groups: Vec<ScanGroup> = Vec::new();
    for ((m, kind), shifts) in series {
        let ms = &model.measures[m];
        let group = match (ms.snapshot, &ms.conversion) {
            (_, Some(_)) => Group::Conversion(m),
            (Some(s), None) => Group::Snapshot(s),
            (None, None) if kind.window.is_some() && ms.agg == Agg::CountDistinct => Group::Distinct(m),
            (None, None) => Group::Plain,
        };
        let key = (ms.source, kind, group);
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, measures, all)) => {
                measures.push(m);
                for s in shifts {
                    if !all.contains(&s) {
                        all.push(s);
                    }
                }
            }
            None => groups.push((key, vec![m], shifts)),
        }
    }
    let mut scans = Vec::new();
    let mut key_checks: Vec<KeyCheck> = Vec::new();
    for ((source, kind, group), ms, shifts) in groups {
        let dims: &[DimensionId] = if kind.total { &[] } else { &query.dimensions };
        // Every period this scan's values are read at.
        let mut needed: Vec<NaiveDate> = periods
            .iter()
            .flatten()
            .flat_map(|&p| shifts.iter().map(move |s| s.apply(p)))
            .collect();
        needed.sort();
        needed.dedup();
        let (from, to, shape) = match kind.window {
            None => {
                // Offsets read earlier periods whole; unshifted values start at --from.
                let earliest = periods
                    .iter()
                    .flatten()
                    .flat_map(|&p| shifts.iter().filter(|s| !s.is_zero()).map(move |s| s.apply(p)))
                    .min();
                let from = if kind.extended {
                    needed.first().copied()
                } else {
                    query.from.map(|f| earliest.map_or(f, |e| e.min(f)))
                };
                let shape = match group {
                    Group::Snapshot(s) => Shape::Snapshot(s),
                    _ => Shape::Plain,
                };
                (from, query.to, shape)
            }
            Some(w) => {
                let grain = query.grain.expect("windows are lowered with a grain");
                let days = window_days(calendar, w, grain, &needed, query.to, range.map(|r| r.0));
                let Some((from, to)) = days.read else {
                    continue;
                };
                // The join with the window days keeps the days of the windows only; a range
                // condition that all the data passes would cost two comparisons per row.
                let from = from.filter(|&f| range.is_none_or(|r| r.0 < f));
                let to = Some(to).filter(|&t| range.is_none_or(|r| r.1 > t));
                (from, to, Shape::Window(w, days))
            }
        };
        let spec = ScanSpec {
            source,
            measures: &ms,
            dims,
            grain: query.grain,
            from,
            to,
            shape,
            conversion: match group {
                Group::Conversion(m) => model.measures[m].conversion.as_ref(),
                _ => None,
            },
        };
        let (plan, joins) = scan_plan(model, files, calendar, &query, &spec, false)?;
        // The same numbers as one aggregate, for SQL (the unparser loses stacked aggregates).
        let sql = match (&spec.shape, spec.conversion) {
            (Shape::Plain, None) => Some(scan_plan(model, files, calendar, &query, &spec, true)?.0),
            _ => None,
        };
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
            kind,
            plan,
            sql,
        });
    }
    Ok(QueryPlan {
        query,
        outputs,
        periods,
        cut_period,
        scans,
        key_checks,
    })
}

/// What each period's window holds.
#[derive(Debug)]
struct WindowDays {
    /// `(key, period)` pairs as days since 1970: a row of that key counts in that period's
    /// window. The key is a row's day, or for a cumulative window its period (the window is
    /// every period up to its own), so that the windows cost the periods they span squared,
    /// not the days since the first row.
    mapping: Vec<(i32, i32)>,
    /// Keys are periods of the query's grain rather than days.
    by_period: bool,
    /// A cumulative window's history: the day before the first period shown, the key of
    /// every row before that period (those rows are in every window).
    history: Option<i32>,
    /// The first day of rows read (`None`: from the first row) and the last; `None` when no
    /// window holds a day.
    read: Option<(Option<NaiveDate>, NaiveDate)>,
}

/// For each period, what its window holds. A window ends with its period (or with `to`),
/// and starts `rolling` units before that end, at the start of the `to_date` period, or at
/// the first day of data.
fn window_days(
    calendar: &Calendar,
    window: Window,
    grain: Grain,
    periods: &[NaiveDate],
    to: Option<NaiveDate>,
    first_day: Option<NaiveDate>,
) -> WindowDays {
    let last_day = |p: NaiveDate| {
        let end = calendar.next(p, grain) - chrono::Days::new(1);
        to.map_or(end, |t| end.min(t))
    };
    if window == Window::Cumulative {
        let (Some(&first), Some(&last)) = (periods.first(), periods.last()) else {
            return WindowDays {
                mapping: Vec::new(),
                by_period: true,
                history: None,
                read: None,
            };
        };
        let history = first_day.filter(|&f| f < first).map(|_| first - chrono::Days::new(1));
        // Rows between the periods read count in the windows after them.
        let keys: Vec<NaiveDate> = history
            .into_iter()
            .chain(calendar.periods(first, last, grain))
            .collect();
        let mut mapping = Vec::new();
        for &p in periods {
            for &k in keys.iter().take_while(|&&k| k <= p) {
                mapping.push((to_days(k), to_days(p)));
            }
        }
        return WindowDays {
            mapping,
            by_period: true,
            history: history.map(to_days),
            read: Some((if history.is_some() { None } else { Some(first) }, last_day(last))),
        };
    }
    let mut mapping = Vec::new();
    for &p in periods {
        let end = calendar.next(p, grain);
        let start = match window {
            Window::Rolling { amount, unit } => match unit {
                Grain::Day => end - chrono::Days::new(amount as u64),
                Grain::Week => end - chrono::Days::new(7 * amount as u64),
                Grain::Month => end - chrono::Months::new(amount),
                Grain::Quarter => end - chrono::Months::new(3 * amount),
                Grain::Year => end - chrono::Months::new(12 * amount),
            },
            Window::Cumulative => unreachable!("cumulative windows are keyed by period above"),
            Window::ToDate(g) => calendar.period_start(end - chrono::Days::new(1), g),
        };
        let start = first_day.map_or(start, |f| start.max(f));
        let end = to.map_or(end, |t| end.min(t + chrono::Days::new(1)));
        let mut d = start;
        while d < end {
            mapping.push((to_days(d), to_days(p)));
            d = d + chrono::Days::new(1);
        }
    }
    let first = mapping.iter().map(|x| x.0).min();
    let last = mapping.iter().map(|x| x.0).max();
    WindowDays {
        read: first.zip(last).map(|(f, l)| (Some(from_days(f)), from_days(l))),
        mapping,
        by_period: false,
        history: None,
    }
}

/// How a scan aggregates its rows.
#[derive(Debug)]
enum Shape {
    /// By period (and breakdown value).
    Plain,
    /// By window: rows are aggregated by day, joined to the days of each period's window,
    /// and aggregated again by period.
    Window(Window, WindowDays),
    /// The aggregate of each period's last (or first) day that has rows.
    Snapshot(Snapshot),
}

/// One scan to plan.
struct ScanSpec<'a> {
    source: SourceId,
    measures: &'a [MeasureId],
    dims: &'a [DimensionId],
    grain: Option<Grain>,
    /// First and last day of rows read.
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    shape: Shape,
    conversion: Option<&'a Conversion>,
}

fn scan_plan(
    model: &Model,
    files: &Files,
    calendar: &Calendar,
    query: &Query,
    spec: &ScanSpec,
    simple: bool,
) -> Result<(LogicalPlan, Vec<(SourceId, usize)>)> {
    let (source, measures) = (spec.source, spec.measures);
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
    for &d in spec.dims {
        let dim = &model.dimensions[d];
        if let Some(s) = model.unreachable(source, d) {
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
        dim.expr.sources(&mut needed);
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
    let timed = !matches!(spec.shape, Shape::Plain) || spec.conversion.is_some();
    if (spec.from.is_some() || spec.to.is_some() || spec.grain.is_some() || timed) && time.is_none() {
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
        if let Some(from) = spec.from {
            conditions.push(tv.expr.clone().gt_eq(day_starts(&tv, from, calendar)));
        }
        if let Some(to) = spec.to {
            let next = to + chrono::Days::new(1);
            conditions.push(tv.expr.clone().lt(day_starts(&tv, next, calendar)));
        }
    }
    if let Some(f) = &filter {
        conditions.push(row_expr(model, f));
    }
    let condition = conditions.into_iter().reduce(Expr::and);
    let period_key = match (spec.grain, time) {
        (Some(g), Some(t)) => Some(period_expr(&time_of(t), g, calendar)),
        _ => None,
    };
    let period = period_key.clone().map(|p| p.alias(PERIOD));
    let day = time.map(|t| period_expr(&time_of(t), Grain::Day, calendar));

    let plain = matches!(spec.shape, Shape::Plain) && spec.conversion.is_none();
    let reads = Reads {
        measures,
        dims: &dims,
        filter: filter.as_ref(),
        edges: &edges,
    };
    if plain && !simple && aggregates_before_joins(model, source, &edges, measures, filter.as_ref()) {
        let plan = aggregate_then_join(model, source, &reads, condition, period)?;
        return Ok((plan, edges));
    }

    // The scan, its joins and its conditions, with some string columns read as dictionaries.
    let rows = |dictionary: &[String]| {
        let mut builder = scan_reading(model, source, dictionary)?;
        for &(from, j) in &edges {
            builder = join(model, builder, from, j)?;
        }
        if let Some(c) = &condition {
            builder = builder.filter(c.clone()).map_err(internal)?;
        }
        if let (Some(c), Some(t)) = (spec.conversion, time) {
            builder = converting(model, calendar, builder, source, &time_of(t), c, spec.to)?;
        }
        Ok(builder)
    };
    let mut builder = rows(&[])?;
    let dim_exprs: Vec<Expr> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| row_expr(model, d).alias(dim_column(i)))
        .collect();
    let plan = match &spec.shape {
        Shape::Plain => {
            let mut group: Vec<Expr> = period.into_iter().collect();
            group.extend(dim_exprs);
            let aggs = measures
                .iter()
                .map(|&m| measure_expr(model, m).alias(measure_column(m)))
                .collect::<Vec<_>>();
            // By period alone: counts and sums in dense slots per day.
            let by_period = match (&group[..], spec.grain, time) {
                ([_], Some(g), Some(t)) if spec.dims.is_empty() && !simple => {
                    Some(period_expr(&time_of(t), g, calendar))
                }
                _ => None,
            };
            // Many filters over a few columns are cheaper on rows grouped by those columns
            // (or by the columns' classes) first than evaluated on every row.
            let regroup = match simple || spec.conversion.is_some() {
                true => Regroup::None,
                false => regroup(model, measures, builder.schema()),
            };
            let dictionary = dictionary_reads(model, source, &regroup, &reads);
            if !dictionary.is_empty() {
                builder = rows(&dictionary)?;
            }
            let dense = match (&by_period, &regroup) {
                (Some(key), Regroup::None) => dense_aggregate(builder.clone(), (key.clone(), 0), PERIOD, &aggs)?,
                _ => None,
            };
            match (regroup, dense) {
                (Regroup::Classes(classes), _) => by_classes(model, builder, group, by_period, &classes, measures)?,
                (Regroup::Columns(columns), _) => {
                    let keys = names_of(&group);
                    let mut first = group;
                    first.extend(columns.iter().map(|(s, c)| column(model, *s, c)));
                    pre_aggregated(model, builder, first, None, keys, &|f| row_expr(model, f), measures)?
                }
                (_, Some(b)) => b.build().map_err(internal)?,
                _ => builder
                    .aggregate(group, aggs)
                    .and_then(|b| b.build())
                    .map_err(internal)?,
            }
        }
        Shape::Window(window, days) => {
            let resets = match window {
                Window::Rolling { .. } => None,
                Window::Cumulative => Some(lit(0i32)),
                Window::ToDate(g) => time.map(|t| period_expr(&time_of(t), *g, calendar)),
            };
            let mut day = match days.by_period {
                true => period_key.expect("windows have a grain and a time column"),
                false => day.expect("a time column"),
            };
            if let Some(h) = days.history {
                // Every earlier day counts as the history day.
                let history = cast(
                    lit(ScalarValue::Date32(Some(h))),
                    day.get_type(builder.schema()).map_err(internal)?,
                );
                day = when(day.clone().lt(history.clone()), history)
                    .otherwise(day)
                    .map_err(internal)?;
            }
            let spec = WindowSpec {
                mapping: &days.mapping,
                resets,
            };
            windowed(model, builder, day, dim_exprs, spec, measures)?
        }
        Shape::Snapshot(s) => snapshot(
            model,
            builder,
            period,
            day.expect("a time column"),
            dim_exprs,
            *s,
            measures,
        )?,
    };
    Ok((plan, edges))
}

/// Keeps the rows of `source` that a row of the conversion's target follows, with the same
/// entity, within the window (from the same moment on).
fn converting(
    model: &Model,
    calendar: &Calendar,
    builder: LogicalPlanBuilder,
    source: SourceId,
    time: &TimeValue,
    c: &Conversion,
    to: Option<NaiveDate>,
) -> Result<LogicalPlanBuilder> {
    let target = &model.sources[c.target];
    let Some(target_time) = &target.time else {
        return Err(Diagnostic::usage(
            "E0703",
            format!("source `{}` has no time column", target.name),
        ));
    };
    let tt = time_value(model, c.target, &target_time.name);
    let mut needed = Vec::new();
    if let Some(f) = &c.target_filter {
        f.sources(&mut needed);
    }
    let mut right = scan(model, c.target)?;
    for s in needed {
        for (from, j) in model.join_path(c.target, s).unwrap_or_default() {
            right = join(model, right, from, j)?;
        }
    }
    let mut conditions = vec![tt.expr.clone().is_not_null()];
    if let Some(f) = &c.target_filter {
        conditions.push(row_expr(model, f));
    }
    if let Some(to) = to {
        conditions.push(tt.expr.clone().lt(day_starts(&tt, to + chrono::Days::new(1), calendar)));
    }
    let right = right
        .filter(conditions.into_iter().reduce(Expr::and).expect("a condition"))
        .and_then(|b| {
            b.project(vec![
                column(model, c.target, &c.entity).alias("__entity"),
                epoch_seconds(tt.expr.clone(), ValueType::of(&tt.data_type)).alias("__converted_at"),
            ])
        })
        .and_then(|b| b.build())
        .map_err(internal)?;
    let at = epoch_seconds(time.expr.clone(), ValueType::of(&time.data_type));
    let converted_at = Expr::Column(Column::from_name("__converted_at"));
    let within = converted_at
        .clone()
        .gt_eq(at.clone())
        .and(converted_at.lt_eq(at + lit(c.within_seconds as f64)));
    builder
        .join(
            right,
            JoinType::LeftSemi,
            (
                vec![column_ref(model, source, &c.entity)],
                vec![Column::from_name("__entity")],
            ),
            Some(within),
        )
        .map_err(internal)
}

/// Aggregates by window: re-aggregatable measures by day first (then each window adds up
/// its days), distinct counts over distinct values (see [`windowed_distinct`]), the others
/// over the rows of each window.
fn windowed(
    model: &Model,
    builder: LogicalPlanBuilder,
    day: Expr,
    dims: Vec<Expr>,
    window: WindowSpec,
    measures: &[MeasureId],
) -> Result<LogicalPlan> {
    let names: Vec<String> = std::iter::once(PERIOD.to_string())
        .chain((0..dims.len()).map(dim_column))
        .collect();
    let second_group: Vec<Expr> = names
        .iter()
        .map(|n| Expr::Column(Column::from_name(n.clone())))
        .collect();
    if measures.iter().all(|&m| model.measures[m].agg.reaggregatable()) {
        let split = two_phase(model, measures, FilterIn::First);
        let dense = match dims.is_empty() {
            true => dense_aggregate(builder.clone(), (day.clone(), 0), "__day", &split.first)?,
            false => None,
        };
        let b = match dense {
            Some(b) => b,
            None => {
                let mut first_group = vec![day.alias("__day")];
                first_group.extend(dims);
                builder.aggregate(first_group, split.first).map_err(internal)?
            }
        };
        let b = join_windows(b, Expr::Column(Column::from_name("__day")), window.mapping)?
            .aggregate(second_group, split.second)
            .map_err(internal)?;
        return finish_averages(b, &names, measures, &split.averages);
    }
    if let [m] = measures
        && model.measures[*m].agg == Agg::CountDistinct
    {
        return windowed_distinct(model, builder, day, dims, window, *m);
    }
    let mut group = vec![window_period().alias(PERIOD)];
    group.extend(dims);
    let aggs = measures
        .iter()
        .map(|&m| measure_expr(model, m).alias(measure_column(m)))
        .collect::<Vec<_>>();
    join_windows(builder, day, window.mapping)?
        .aggregate(group, aggs)
        .and_then(|b| b.build())
        .map_err(internal)
}

/// The windows of a scan: which period each day counts in, and, for a to-date window, the
/// period the window resets at.
struct WindowSpec<'a> {
    mapping: &'a [(i32, i32)],
    /// The start of the period a to-date window resets at; `lit(0)` for a cumulative window
    /// (it never resets); `None` for a rolling window.
    resets: Option<Expr>,
}

/// `__windows.__period`: the period a window belongs to.
fn window_period() -> Expr {
    Expr::Column(Column::new(Some(TableReference::bare("__windows")), PERIOD))
}

/// Joins rows to the days of each window: a row of day `day` appears once per window that
/// holds its day. The days are compared in the type of `day` (a timestamp truncated to its
/// day, or a date): casting every row to a date would cost more than the join.
fn join_windows(builder: LogicalPlanBuilder, day: Expr, mapping: &[(i32, i32)]) -> Result<LogicalPlanBuilder> {
    use datafusion::arrow::array::{Date32Array, RecordBatch};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::logical_expr::ExprSchemable;
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("__window_day", DataType::Date32, false),
        Field::new(PERIOD, DataType::Date32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(Date32Array::from_iter_values(mapping.iter().map(|x| x.0))),
            std::sync::Arc::new(Date32Array::from_iter_values(mapping.iter().map(|x| x.1))),
        ],
    )
    .map_err(|e| internal(e.into()))?;
    let table = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]]).map_err(internal)?;
    let windows = LogicalPlanBuilder::scan(
        TableReference::bare("__windows"),
        provider_as_source(std::sync::Arc::new(table)),
        None,
    )
    .and_then(|b| b.build())
    .map_err(internal)?;
    let day_type = day.get_type(builder.schema()).map_err(internal)?;
    let window_day = cast(
        Expr::Column(Column::new(Some(TableReference::bare("__windows")), "__window_day")),
        day_type,
    );
    builder
        .join_with_expr_keys(windows, JoinType::Inner, (vec![day], vec![window_day]), None)
        .map_err(internal)
}

/// A distinct count over windows, as grouping rather than as sets of values per group
/// (those do not spill): a rolling window takes the distinct values of each day, joins them
/// to the windows and counts the distinct values of each window; a cumulative or to-date
/// window counts each value once, on the first day it appears since the window's reset,
/// and adds those counts up over the window's days.
fn windowed_distinct(
    model: &Model,
    builder: LogicalPlanBuilder,
    day: Expr,
    dims: Vec<Expr>,
    window: WindowSpec,
    m: MeasureId,
) -> Result<LogicalPlan> {
    let ms = &model.measures[m];
    let arg = ms.arg.as_ref().map(|a| row_expr(model, a)).unwrap_or_else(|| lit(1i64));
    let mut condition = arg.clone().is_not_null();
    if let Some(f) = &ms.filter {
        condition = condition.and(row_expr(model, f));
    }
    let dim_names: Vec<Expr> = (0..dims.len())
        .map(|i| Expr::Column(Column::from_name(dim_column(i))))
        .collect();
    let named = |n: &str| Expr::Column(Column::from_name(n));
    let mut builder = builder.filter(condition).map_err(internal)?;
    let out = measure_column(m);
    match window.resets {
        None => {
            let mut by_day = vec![day.alias("__day")];
            by_day.extend(dims);
            by_day.push(arg.alias("__value"));
            builder = builder.aggregate(by_day, Vec::<Expr>::new()).map_err(internal)?;
            let mut by_window = vec![window_period().alias(PERIOD)];
            by_window.extend(dim_names.clone());
            by_window.push(named("__value"));
            let mut group = vec![named(PERIOD)];
            group.extend(dim_names);
            join_windows(builder, named("__day"), window.mapping)?
                .aggregate(by_window, Vec::<Expr>::new())
                .and_then(|b| b.aggregate(group, vec![agg::count(lit(1i64)).alias(out)]))
                .and_then(|b| b.build())
                .map_err(internal)
        }
        Some(reset) => {
            let mut by_value = vec![reset.alias("__reset")];
            by_value.extend(dims);
            by_value.push(arg.alias("__value"));
            let mut by_first = vec![named("__day")];
            by_first.extend(dim_names.clone());
            let mut group = vec![named(PERIOD)];
            group.extend(dim_names);
            let firsts = builder
                .aggregate(by_value, vec![agg::min(day).alias("__day")])
                .and_then(|b| b.aggregate(by_first, vec![agg::count(lit(1i64)).alias("__firsts")]))
                .map_err(internal)?;
            join_windows(firsts, named("__day"), window.mapping)?
                .aggregate(group, vec![agg::sum(named("__firsts")).alias(out)])
                .and_then(|b| b.build())
                .map_err(internal)
        }
    }
}

/// Semi-additive measures: each measure's aggregate per day, then the value of the last (or
/// first) day of each period and breakdown value that has rows.
fn snapshot(
    model: &Model,
    builder: LogicalPlanBuilder,
    period: Option<Expr>,
    day: Expr,
    dims: Vec<Expr>,
    which: Snapshot,
    measures: &[MeasureId],
) -> Result<LogicalPlan> {
    let mut names: Vec<String> = period.iter().map(|_| PERIOD.to_string()).collect();
    names.extend((0..dims.len()).map(dim_column));
    let mut first_group: Vec<Expr> = period.into_iter().collect();
    first_group.extend(dims);
    first_group.push(day.alias("__day"));
    let firsts = measures
        .iter()
        .map(|&m| {
            let e = measure_expr(model, m);
            // A day with rows but none that pass the filter: a sum of nothing is 0.
            let e = if model.measures[m].agg.zero_when_empty() {
                func::coalesce(vec![cast(e, DataType::Float64), lit(0.0)])
            } else {
                cast(e, DataType::Float64)
            };
            e.alias(measure_column(m))
        })
        .collect::<Vec<_>>();
    let by_day = || {
        vec![datafusion::logical_expr::SortExpr::new(
            Expr::Column(Column::from_name("__day")),
            true,
            false,
        )]
    };
    let seconds = measures
        .iter()
        .map(|&m| {
            let x = Expr::Column(Column::from_name(measure_column(m)));
            let e = match which {
                Snapshot::Last => agg::last_value(x, by_day()),
                Snapshot::First => agg::first_value(x, by_day()),
            };
            e.alias(measure_column(m))
        })
        .collect::<Vec<_>>();
    let second_group: Vec<Expr> = names
        .iter()
        .map(|n| Expr::Column(Column::from_name(n.clone())))
        .collect();
    builder
        .aggregate(first_group, firsts)
        .and_then(|b| b.aggregate(second_group, seconds))
        .and_then(|b| b.build())
        .map_err(internal)
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
    reads: &Reads,
    condition: Option<Expr>,
    period: Option<Expr>,
) -> Result<LogicalPlan> {
    let Reads {
        measures, dims, edges, ..
    } = *reads;
    let rows = |dictionary: &[String]| {
        let builder = scan_reading(model, source, dictionary)?;
        match &condition {
            Some(c) => builder.filter(c.clone()).map_err(internal),
            None => Ok(builder),
        }
    };
    let mut builder = rows(&[])?;
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
    // Many filters are evaluated on the first aggregate's groups, as in a scan without
    // joins (see [`regroup`]).
    let packed = Expr::Column(Column::from_name(CLASSES));
    let regrouped = regroup(model, measures, builder.schema());
    let filter = |f: &RowExpr| match &regrouped {
        Regroup::Classes(c) => c.filter(f, &packed),
        _ => row_expr(model, f),
    };
    let dictionary = dictionary_reads(model, source, &regrouped, reads);
    if !dictionary.is_empty() {
        builder = rows(&dictionary)?;
    }
    let filter_in = match &regrouped {
        Regroup::Classes(c) => {
            first_group.push(c.packed(model, None).alias(CLASSES));
            FilterIn::Second(&filter)
        }
        Regroup::Columns(columns) => {
            for (_, name) in columns {
                key(name, &mut first_group);
            }
            FilterIn::Second(&filter)
        }
        Regroup::None => FilterIn::First,
    };
    let split = two_phase(model, measures, filter_in);
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
#[derive(Clone, Copy)]
enum FilterIn<'a> {
    /// On the rows, in the first aggregate (its partials are the measure's own).
    First,
    /// On the first aggregate's groups, in the second, as this function writes it over
    /// the groups' columns (partials are shared between measures that aggregate the same
    /// thing).
    Second(&'a dyn Fn(&RowExpr) -> Expr),
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
                FilterIn::Second(_) => format!("__{kind}({key})"),
            };
            if !first.iter().any(|(n, _)| *n == name) {
                let e = match filter_in {
                    FilterIn::First => with_filter(model, e, ms.filter.as_ref()),
                    FilterIn::Second(_) => e,
                };
                first.push((name.clone(), e));
            }
            let combined = combine(Expr::Column(Column::from_name(name)));
            match filter_in {
                FilterIn::Second(filter) => with_filter_expr(combined, ms.filter.as_ref().map(filter)),
                FilterIn::First => combined,
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

/// `builder.aggregate([key AS name], aggs)` when every aggregate is a count or a sum (with
/// or without a filter) of a type [`dense`] adds up: one pass into slots per day (and
/// group, in the key's low `group_bits`) instead of a hash table, then a row per key seen,
/// as the aggregate would give. `None` otherwise.
fn dense_aggregate(
    builder: LogicalPlanBuilder,
    (key, group_bits): (Expr, u32),
    name: &str,
    aggs: &[Expr],
) -> Result<Option<LogicalPlanBuilder>> {
    let schema = builder.schema().clone();
    let (mut kinds, mut rows, mut args, mut names) = (Vec::new(), Vec::new(), vec![key], Vec::new());
    for a in aggs {
        let Expr::Alias(alias) = a else { return Ok(None) };
        let Expr::AggregateFunction(f) = alias.expr.as_ref() else {
            return Ok(None);
        };
        let sum = match f.func.name() {
            "count" => false,
            "sum" => true,
            _ => return Ok(None),
        };
        let [arg] = &f.params.args[..] else { return Ok(None) };
        if f.params.distinct || !f.params.order_by.is_empty() {
            return Ok(None);
        }
        let ty = datafusion::logical_expr::ExprSchemable::get_type(arg, &schema).map_err(internal)?;
        let Some(kind) = dense::Kind::of(sum, &ty) else {
            return Ok(None);
        };
        // `count(1)`: rows, with no value argument.
        let counts_rows = !sum && matches!(arg, Expr::Literal(v, _) if !v.is_null());
        kinds.push(kind);
        rows.push(counts_rows);
        if !counts_rows {
            args.push(arg.clone());
        }
        args.push(f.params.filter.as_deref().cloned().unwrap_or_else(|| lit(true)));
        names.push(alias.name.clone());
    }
    let key_type = datafusion::logical_expr::ExprSchemable::get_type(&args[0], &schema).map_err(internal)?;
    let Some(dense) = dense::dense(&key_type, group_bits, kinds, rows, args) else {
        return Ok(None);
    };
    let list = "__dense";
    let field = |f: String| datafusion::functions::core::expr_fn::get_field(Expr::Column(Column::from_name(list)), f);
    let columns = std::iter::once(field(dense::KEY.to_string()).alias(name)).chain(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| field(dense::value_field(i)).alias(n)),
    );
    builder
        .aggregate(Vec::<Expr>::new(), vec![dense.alias(list)])
        .and_then(|b| b.unnest_column(list))
        .and_then(|b| b.project(columns))
        .map(Some)
        .map_err(internal)
}

/// Attaches a measure's filter to its aggregate. Set on the aggregate itself: DataFusion's
/// `ExprFunctionExt` builder would reset `distinct` and the ordering of the aggregate.
fn with_filter(model: &Model, e: Expr, filter: Option<&RowExpr>) -> Expr {
    with_filter_expr(e, filter.map(|f| row_expr(model, f)))
}

fn with_filter_expr(e: Expr, filter: Option<Expr>) -> Expr {
    match (e, filter) {
        (Expr::AggregateFunction(mut f), Some(filter)) => {
            f.params.filter = Some(Box::new(filter));
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
    scan_reading(model, source, &[])
}

/// The scan of a source that reads the named columns as dictionaries.
fn scan_reading(model: &Model, source: SourceId, dictionary: &[String]) -> Result<LogicalPlanBuilder> {
    let src = &model.sources[source];
    let table = src.data.table_reading(dictionary).map_err(internal)?;
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
                TimeUnit::Nanosecond => {
                    ScalarValue::TimestampNanosecond(Some(micros.saturating_mul(1_000)), stored.clone())
                }
            };
            lit(value)
        }
        DataType::Date64 => lit(ScalarValue::Date64(Some(
            day.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis(),
        ))),
        _ => date_lit(day),
    }
}

/// The period key of a time value: the start of its period, as a date, by tally's own
/// period function (see [`crate::period`]), which is several times cheaper than
/// `date_trunc` per row. Timestamps are cut at midnight of the project's time zone (stored
/// without a zone: as UTC); dates are local days already.
fn period_expr(t: &TimeValue, grain: Grain, calendar: &Calendar) -> Expr {
    let (value, zoned) = match &t.data_type {
        DataType::Timestamp(..) => (t.expr.clone(), true),
        DataType::Date32 | DataType::Date64 => (t.expr.clone(), false),
        // (Other types are cut as stored, as they always were.)
        _ => (cast(t.expr.clone(), DataType::Timestamp(TimeUnit::Second, None)), false),
    };
    let calendar = Calendar {
        time_zone: calendar.time_zone.filter(|_| zoned),
        ..*calendar
    };
    crate::period::period(value, grain, &calendar)
}

/// A plan with tally's period function written as portable SQL (`date_trunc` and interval
/// arithmetic), for `explain`.
pub fn portable(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    plan.transform_up(|node| {
        node.map_expressions(|e| {
            e.transform_up(|x| match &x {
                Expr::ScalarFunction(f) => match crate::period::parts(&f.func, &f.args) {
                    Some((grain, calendar)) => {
                        // A zone is given for timestamps only: their wall-clock time there.
                        let local = match calendar.time_zone {
                            Some(tz) => {
                                let utc = cast(
                                    f.args[0].clone(),
                                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                                );
                                let zoned =
                                    cast(utc, DataType::Timestamp(TimeUnit::Microsecond, Some(tz.name().into())));
                                func::to_local_time(vec![zoned])
                            }
                            None => f.args[0].clone(),
                        };
                        Ok(Transformed::yes(cast(
                            truncate(local, grain, &calendar),
                            DataType::Date32,
                        )))
                    }
                    None => Ok(Transformed::no(x)),
                },
                _ => Ok(Transformed::no(x)),
            })
        })
    })
    .map(|t| t.data)
    .map_err(internal)
}

/// `date_trunc` to a grain's period start, with the week start and the fiscal year.
fn truncate(local: Expr, grain: Grain, calendar: &Calendar) -> Expr {
    let local = cast(local, DataType::Timestamp(TimeUnit::Second, None));
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

/// The column of a scan's first aggregate that holds the rows' packed classes.
const CLASSES: &str = "__classes";

/// How the rows of a scan are grouped before its measures' filters are evaluated.
enum Regroup {
    /// Not at all: each filter is evaluated on every row.
    None,
    /// By the classes of the filter columns (see [`classes`]).
    Classes(Classes),
    /// By the values of a few string or boolean columns.
    Columns(Vec<(SourceId, String)>),
}

/// The filters of a KPI pack compare a few columns with literals (`status = "completed"`,
/// `channel in (...)`, `amount > 100`). Evaluated per row, twenty of them cost four times
/// one. When the measures of a scan have two different filters or more (one filter is
/// evaluated once, however many measures share it) and every measure can be
/// re-aggregated, the rows are first aggregated by period, breakdown and the classes of the
/// filter columns (when every filter compares columns with literals) or the values of those
/// columns (when they are a few string or boolean columns), and the filters are evaluated
/// on that small table instead.
fn regroup(model: &Model, measures: &[MeasureId], schema: &DFSchema) -> Regroup {
    /// More columns would risk a first aggregate nearly as large as the data.
    const MAX_COLUMNS: usize = 3;
    let mut filters: Vec<&RowExpr> = Vec::new();
    for f in measures.iter().filter_map(|&m| model.measures[m].filter.as_ref()) {
        if !filters.contains(&f) {
            filters.push(f);
        }
    }
    if filters.len() < 2 || !measures.iter().all(|&m| model.measures[m].agg.reaggregatable()) {
        return Regroup::None;
    }
    if let Some(c) = Classes::of(model, &filters, schema) {
        return Regroup::Classes(c);
    }
    let mut columns = Vec::new();
    match filters.iter().all(|f| categorical(f, &mut columns)) && columns.len() <= MAX_COLUMNS {
        true => Regroup::Columns(columns),
        false => Regroup::None,
    }
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

/// The measures aggregated by period, breakdown and the classes of their filters' columns,
/// then re-aggregated with their filters over the classes. By period alone, the period goes
/// into the packed number too: grouping by one integer is the cheapest grouping there is,
/// and when the canonical classes number a period's groups, counts and sums go into dense
/// slots by that number, with no hash table at all.
fn by_classes(
    model: &Model,
    builder: LogicalPlanBuilder,
    group: Vec<Expr>,
    by_period: Option<Expr>,
    classes: &Classes,
    measures: &[MeasureId],
) -> Result<LogicalPlan> {
    let packed = Expr::Column(Column::from_name(CLASSES));
    let filter = |f: &RowExpr| classes.filter(f, &packed);
    let days = by_period.filter(|p| {
        let ty = datafusion::logical_expr::ExprSchemable::get_type(p, builder.schema());
        matches!(ty, Ok(DataType::Date32)) && classes.bits() <= 32
    });
    let (first, keyed, second) = match days {
        Some(p) => {
            let keyed = classes.keyed(model, p.clone()).map(|key| Keyed {
                key,
                unkey: classes.unkey(Expr::Column(Column::from_name(KEY))).alias(CLASSES),
            });
            let first = vec![classes.packed(model, Some(p)).alias(CLASSES)];
            (first, keyed, vec![Classes::period(&packed).alias(PERIOD)])
        }
        None => {
            let keys = names_of(&group);
            let mut first = group;
            first.push(classes.packed(model, None).alias(CLASSES));
            (first, None, keys)
        }
    };
    pre_aggregated(model, builder, first, keyed, second, &filter, measures)
}

/// The name of a [`Keyed`] key.
const KEY: &str = "__key";

/// What a scan reads besides its measures' filters.
#[derive(Clone, Copy)]
struct Reads<'a> {
    measures: &'a [MeasureId],
    dims: &'a [&'a RowExpr],
    filter: Option<&'a RowExpr>,
    edges: &'a [(SourceId, usize)],
}

/// The string columns of `source` that only the filters read, when they are classes, among
/// those its files store as dictionaries: read as dictionaries, their classes are found
/// once per distinct value of a page instead of once per row, and no string is made per row.
fn dictionary_reads(model: &Model, source: SourceId, regroup: &Regroup, reads: &Reads) -> Vec<String> {
    let Regroup::Classes(classes) = regroup else {
        return Vec::new();
    };
    let mut candidates = classes.string_columns(source).peekable();
    if candidates.peek().is_none() {
        return Vec::new();
    }
    let src = &model.sources[source];
    let mut elsewhere: Vec<String> = src.time.iter().map(|t| t.name.clone()).collect();
    let mut visit = |e: &RowExpr| {
        e.walk(&mut |x| {
            if let RowKind::Column { source: s, name } = &x.kind
                && *s == source
            {
                elsewhere.push(name.clone());
            }
        })
    };
    for &m in reads.measures {
        if let Some(a) = &model.measures[m].arg {
            visit(a);
        }
    }
    reads.dims.iter().for_each(|d| visit(d));
    if let Some(f) = reads.filter {
        visit(f);
    }
    for &(from, j) in reads.edges {
        if from == source {
            elsewhere.push(src.joins[j].column.clone());
        }
    }
    let stored = src.data.dictionary_columns();
    candidates
        .filter(|c| stored.iter().any(|s| s == c) && !elsewhere.iter().any(|e| e == c))
        .map(str::to_string)
        .collect()
}

/// Columns named as these expressions' outputs.
fn names_of(exprs: &[Expr]) -> Vec<Expr> {
    exprs
        .iter()
        .map(|e| Expr::Column(Column::from_name(e.schema_name().to_string())))
        .collect()
}

/// The first aggregate of [`pre_aggregated`] in dense slots by a key of a day and a group
/// ([`dense_aggregate`], named [`KEY`]), turned back by `unkey` into the column the first
/// aggregate would have grouped by.
struct Keyed {
    key: (Expr, u32),
    unkey: Expr,
}

/// Two aggregates: by `first` (period, breakdown and the filters' columns or classes), or
/// `keyed` when every partial is a count or a sum, without filters; then by `second`
/// (period and breakdown, named as the scan names them), each measure re-aggregated with
/// its filter as `filter` writes it over the first's groups.
fn pre_aggregated(
    model: &Model,
    builder: LogicalPlanBuilder,
    first: Vec<Expr>,
    keyed: Option<Keyed>,
    second: Vec<Expr>,
    filter: &dyn Fn(&RowExpr) -> Expr,
    measures: &[MeasureId],
) -> Result<LogicalPlan> {
    let keys: Vec<String> = second.iter().map(|g| g.schema_name().to_string()).collect();
    let split = two_phase(model, measures, FilterIn::Second(filter));
    let dense = match keyed {
        Some(Keyed { key, unkey }) => dense_aggregate(builder.clone(), key, KEY, &split.first)?
            .map(|dense| dense.project(std::iter::once(unkey).chain(names_of(&split.first)))),
        None => None,
    };
    let b = match dense {
        Some(dense) => dense,
        None => builder.aggregate(first, split.first),
    }
    .and_then(|b| b.aggregate(second, split.second))
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

/// Whether a number literal goes into plans as an Int64 (otherwise as a Float64).
fn integral(n: f64) -> bool {
    n.fract() == 0.0 && n.abs() < 9e15
}

/// A typed row expression as a DataFusion expression.
pub fn row_expr(model: &Model, e: &RowExpr) -> Expr {
    let r = |x: &RowExpr| row_expr(model, x);
    match &e.kind {
        RowKind::Column { source, name } => column(model, *source, name),
        RowKind::Number(n) => {
            if integral(*n) {
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
