//! Run: execute a [`QueryPlan`] and assemble the [`ResultTable`].
//!
//! Every period of the range is present, for every breakdown value seen; counts and sums
//! over no rows are 0, other aggregates null. Derived metrics are computed here from the
//! measures' values, in Float64, with null-safe division.

use crate::ast::BinOp;
use crate::ast::Format;
use crate::data::clean_error;
use crate::diagnostic::Diagnostic;
use crate::model::{Model, SourceId, ValueType};
use crate::plan::{self, QueryPlan, Series, SeriesKind, Term};
use crate::settings::Settings;
use crate::time::{Grain, from_days, to_days};
use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, TimestampMicrosecondType};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use std::collections::{BTreeSet, HashMap};

/// The values of some metrics, per period and breakdown value.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultTable {
    pub grain: Option<Grain>,
    /// Dimension names, in breakdown order.
    pub dimensions: Vec<String>,
    /// Column names, in order: the metrics, and with `--compare` their comparisons.
    pub metrics: Vec<String>,
    /// How each column's values are shown.
    pub formats: Vec<Format>,
    pub rows: Vec<ResultRow>,
}

/// One period and breakdown value.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub period: Option<NaiveDate>,
    pub dimensions: Vec<Option<String>>,
    pub values: Vec<Option<f64>>,
}

type Key = (Option<i32>, Vec<Option<String>>);

/// Executes a plan: key checks of joins, then every scan, at once.
pub async fn execute(
    ctx: &SessionContext,
    model: &Model,
    settings: &Settings,
    plan: &QueryPlan,
) -> Result<ResultTable, Diagnostic> {
    let calendar = &settings.calendar();
    let checks = plan.key_checks.iter().map(|k| async move {
        let remembered = KeyCheckCache::new(settings, model, k);
        if remembered.as_ref().is_some_and(|c| c.passed()) {
            return Ok(());
        }
        let batches = collect(ctx, k.plan.clone(), model, k.source, settings.memory_limit).await?;
        let join = &model.sources[k.source].joins[k.join];
        let target = &model.sources[join.target];
        if let Some(b) = batches.iter().find(|b| b.num_rows() > 0) {
            let value = ArrayFormatter::try_new(b.column(0).as_ref(), &FormatOptions::default())
                .map(|f| f.value(0).to_string())
                .unwrap_or_default();
            return Err(Diagnostic::data(
                "E0801",
                format!(
                    "source `{}` has more than one row with {} = {value}; the join from `{}` would count rows twice",
                    target.name, join.target_column, model.sources[k.source].name
                ),
            )
            .at(join.span, "a join must be many-to-one")
            .file(target.data.display.clone())
            .note(format!(
                "make `{}` unique in {}, or join on a column that is",
                join.target_column, target.data.display
            )));
        }
        if let Some(c) = remembered {
            c.remember();
        }
        Ok(())
    });
    futures::future::try_join_all(checks).await?;

    let scans = plan
        .scans
        .iter()
        .map(|s| collect(ctx, s.plan.clone(), model, s.source, settings.memory_limit));
    let results = futures::future::try_join_all(scans).await?;

    let ndims = plan.query.dimensions.len();
    let mut values: HashMap<Series, HashMap<Key, Option<f64>>> = HashMap::new();
    let mut seen_periods: BTreeSet<i32> = BTreeSet::new();
    let mut tuples: BTreeSet<Vec<Option<String>>> = BTreeSet::new();
    for (scan, batches) in plan.scans.iter().zip(results) {
        let has_period = plan.query.grain.is_some();
        let width = if scan.kind.total { 0 } else { ndims };
        for batch in batches {
            let mut col = 0;
            let periods = if has_period {
                col += 1;
                // A timestamp or a date: the day it starts on.
                let day = cast(batch.column(0), &DataType::Date32).map_err(arrow_error)?;
                Some(cast(&day, &DataType::Int32).map_err(arrow_error)?)
            } else {
                None
            };
            let options = FormatOptions::default();
            let dim_arrays: Vec<_> = (0..width).map(|i| batch.column(col + i).clone()).collect();
            let formatters = dim_arrays
                .iter()
                .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow_error)?;
            col += width;
            let measure_arrays = (0..scan.measures.len())
                .map(|i| cast(batch.column(col + i), &DataType::Float64))
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow_error)?;
            for row in 0..batch.num_rows() {
                let period = periods.as_ref().and_then(|p| {
                    let p = p.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
                    p.is_valid(row).then(|| p.value(row))
                });
                let dims: Vec<Option<String>> = dim_arrays
                    .iter()
                    .zip(&formatters)
                    .map(|(a, f)| a.is_valid(row).then(|| f.value(row).to_string()))
                    .collect();
                let plain = scan.kind.window.is_none() && !scan.kind.extended;
                if plain && let Some(p) = period {
                    seen_periods.insert(p);
                }
                if !scan.kind.total {
                    tuples.insert(dims.clone());
                }
                for (i, &m) in scan.measures.iter().enumerate() {
                    let a = measure_arrays[i].as_primitive::<Float64Type>();
                    values
                        .entry((m, scan.kind))
                        .or_default()
                        .insert((period, dims.clone()), a.is_valid(row).then(|| a.value(row)));
                }
            }
        }
    }

    // Every period of the range, for every breakdown value seen.
    let periods: Vec<Option<i32>> = match (plan.query.grain, &plan.periods) {
        (None, _) => vec![None],
        (Some(_), Some(fixed)) => fixed.iter().map(|&d| Some(crate::time::to_days(d))).collect(),
        (Some(g), None) => {
            let from = plan.query.from.or_else(|| seen_periods.first().map(|&d| from_days(d)));
            let to = plan.query.to.or_else(|| seen_periods.last().map(|&d| from_days(d)));
            match (from, to) {
                (Some(f), Some(t)) => calendar
                    .periods(f, t, g)
                    .into_iter()
                    .map(|d| Some(crate::time::to_days(d)))
                    .collect(),
                _ => Vec::new(),
            }
        }
    };
    if tuples.is_empty() && ndims == 0 {
        tuples.insert(Vec::new());
    }
    let cut = plan.cut_period.map(to_days);
    let mut rows = Vec::new();
    for p in &periods {
        for t in &tuples {
            let vals = plan
                .outputs
                .iter()
                .map(|o| term_value(model, &values, cut, &o.term, *p, t))
                .collect();
            rows.push(ResultRow {
                period: p.map(from_days),
                dimensions: t.clone(),
                values: vals,
            });
        }
    }
    // Nulls of a breakdown sort last.
    rows.sort_by(|a, b| {
        a.period.cmp(&b.period).then_with(|| {
            let key = |r: &ResultRow| {
                r.dimensions
                    .iter()
                    .map(|d| (d.is_none(), d.clone()))
                    .collect::<Vec<_>>()
            };
            key(a).cmp(&key(b))
        })
    });
    Ok(ResultTable {
        grain: plan.query.grain,
        dimensions: plan
            .query
            .dimensions
            .iter()
            .map(|&d| model.dimensions[d].name.clone())
            .collect(),
        metrics: plan.outputs.iter().map(|o| o.name.clone()).collect(),
        formats: plan.outputs.iter().map(|o| o.format.clone()).collect(),
        rows,
    })
}

/// A term's value for a period and breakdown value: a series is read at the shifted period;
/// a measure over no rows is 0 or null (see [`crate::model::Measure::zero_when_empty`]).
fn term_value(
    model: &Model,
    values: &HashMap<Series, HashMap<Key, Option<f64>>>,
    cut: Option<i32>,
    term: &Term,
    period: Option<i32>,
    dims: &[Option<String>],
) -> Option<f64> {
    match term {
        Term::Series((m, kind), shift) => {
            let p = period.map(|d| to_days(shift.apply(from_days(d))));
            let key = (p, if kind.total { Vec::new() } else { dims.to_vec() });
            // The period --from cuts short has the value shown for it.
            let kind = match (cut, p) {
                (Some(c), Some(p)) if c == p && kind.extended => SeriesKind {
                    extended: false,
                    ..*kind
                },
                _ => *kind,
            };
            match values.get(&(*m, kind)).and_then(|v| v.get(&key)).copied().flatten() {
                Some(v) => Some(v),
                None if model.measures[*m].zero_when_empty() => Some(0.0),
                None => None,
            }
        }
        Term::Number(n) => Some(*n),
        Term::Neg(a) => term_value(model, values, cut, a, period, dims).map(|v| -v),
        Term::Binary(op, a, b) => {
            let x = term_value(model, values, cut, a, period, dims)?;
            let y = term_value(model, values, cut, b, period, dims)?;
            let v = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div if y == 0.0 => return None,
                _ => x / y,
            };
            v.is_finite().then_some(v)
        }
    }
}

async fn collect(
    ctx: &SessionContext,
    plan: datafusion::logical_expr::LogicalPlan,
    model: &Model,
    source: crate::model::SourceId,
    memory_limit: Option<usize>,
) -> Result<Vec<RecordBatch>, Diagnostic> {
    let fail = |e| execution_error(e, model, source, memory_limit);
    let df = ctx.execute_logical_plan(plan).await.map_err(fail)?;
    df.collect().await.map_err(fail)
}

/// `2000000000` → `2.0 GB`.
fn human_bytes(n: usize) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn arrow_error(e: datafusion::arrow::error::ArrowError) -> Diagnostic {
    Diagnostic::data("E0802", format!("cannot read query results: {e}"))
}

/// Execution errors name the source and its data file; memory errors name the limit.
fn execution_error(
    e: DataFusionError,
    model: &Model,
    source: crate::model::SourceId,
    memory_limit: Option<usize>,
) -> Diagnostic {
    let src = &model.sources[source];
    let msg = e.strip_backtrace();
    if msg.contains("Resources exhausted") || matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        return Diagnostic::data(
            "E0803",
            format!(
                "the query needs more memory than the memory limit of {} allows: {}",
                memory_limit.map(human_bytes).unwrap_or_else(|| "this machine".into()),
                clean_error(&msg)
            ),
        )
        .note("raise `memory_limit` in tally.yaml or --memory-limit, or query fewer breakdowns");
    }
    Diagnostic::data(
        "E0804",
        format!("cannot read source `{}`: {}", src.name, clean_error(&msg)),
    )
    .at(src.span, "reading this source failed")
    .file(src.data.display.clone())
}

/// Plans a query; when its windows or offsets need the data's first and last day, they are
/// read first (from Parquet statistics where the files have them).
pub async fn prepare(
    ctx: &SessionContext,
    model: &Model,
    files: &crate::span::Files,
    settings: &Settings,
    query: plan::Query,
) -> Result<QueryPlan, Diagnostic> {
    let calendar = settings.calendar();
    let range = match plan::range_sources(model, &query)? {
        Some(sources) => data_range(ctx, model, settings, &sources).await?,
        None => None,
    };
    plan::build_with_range(model, files, &calendar, query, range)
}

/// The first and last local day with data over some sources; `None` when they are empty.
pub(crate) async fn data_range(
    ctx: &SessionContext,
    model: &Model,
    settings: &Settings,
    sources: &[SourceId],
) -> Result<Option<plan::DataRange>, Diagnostic> {
    let calendar = settings.calendar();
    let mut range: Option<plan::DataRange> = None;
    for &s in sources {
        let Some(p) = plan::range_plan(model, s)? else {
            continue;
        };
        let dated = model.sources[s].time.as_ref().is_some_and(|t| t.ty == ValueType::Date);
        let local = |micros: i64| {
            let utc = chrono::DateTime::from_timestamp_micros(micros)?;
            Some(match calendar.time_zone {
                Some(tz) if !dated => utc.with_timezone(&tz).date_naive(),
                _ => utc.naive_utc().date(),
            })
        };
        for b in collect(ctx, p, model, s, settings.memory_limit).await? {
            if b.num_rows() == 0 {
                continue;
            }
            let first = b.column(0).as_primitive::<TimestampMicrosecondType>();
            let last = b.column(1).as_primitive::<TimestampMicrosecondType>();
            if let (true, true) = (first.is_valid(0), last.is_valid(0))
                && let (Some(f), Some(l)) = (local(first.value(0)), local(last.value(0)))
            {
                range = Some(match range {
                    Some((a, b)) => (a.min(f), b.max(l)),
                    None => (f, l),
                });
            }
        }
    }
    Ok(range)
}

/// A source's rows in a range of days, and its last time value there (a UTC instant, or a
/// date's midnight).
pub async fn activity(
    ctx: &SessionContext,
    model: &Model,
    settings: &Settings,
    source: SourceId,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<(u64, Option<chrono::NaiveDateTime>), Diagnostic> {
    let Some(p) = plan::activity_plan(model, &settings.calendar(), source, from, to)? else {
        return Ok((0, None));
    };
    let mut rows = 0;
    let mut last = None;
    for b in collect(ctx, p, model, source, settings.memory_limit).await? {
        if b.num_rows() == 0 {
            continue;
        }
        let n = cast(b.column(0), &DataType::Int64).map_err(arrow_error)?;
        rows += n.as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0) as u64;
        let l = b.column(1).as_primitive::<TimestampMicrosecondType>();
        if l.is_valid(0) {
            last = chrono::DateTime::from_timestamp_micros(l.value(0)).map(|d| d.naive_utc());
        }
    }
    Ok((rows, last))
}

/// Plans and executes a query in one step.
pub async fn query(
    ctx: &SessionContext,
    model: &Model,
    files: &crate::span::Files,
    settings: &Settings,
    query: plan::Query,
) -> Result<ResultTable, Diagnostic> {
    let plan = prepare(ctx, model, files, settings, query).await?;
    execute(ctx, model, settings, &plan).await
}

/// Passed key checks, remembered per data fingerprint: a check of unchanged data (same
/// files, sizes and modification times) is not run again. Failures are never remembered.
struct KeyCheckCache {
    file: std::path::PathBuf,
}

impl KeyCheckCache {
    fn new(settings: &Settings, model: &Model, k: &plan::KeyCheck) -> Option<KeyCheckCache> {
        use sha2::{Digest, Sha256};
        let dir = settings.cache.as_ref()?;
        let join = &model.sources[k.source].joins[k.join];
        let target = &model.sources[join.target];
        let mut hash = Sha256::new();
        hash.update(format!("unique-key v1\0{}\0{}", target.data.fingerprint(), join.target_column).as_bytes());
        Some(KeyCheckCache {
            file: dir.join("key-checks").join(format!("{:x}", hash.finalize())),
        })
    }

    fn passed(&self) -> bool {
        self.file.exists()
    }

    fn remember(&self) {
        // A cache that cannot be written only costs time.
        if let Some(dir) = self.file.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            let _ = std::fs::write(&self.file, b"unique\n");
        }
    }
}
