//! Run: execute a [`QueryPlan`] and assemble the [`ResultTable`].
//!
//! Every period of the range is present, for every breakdown value seen; counts and sums
//! over no rows are 0, other aggregates null. Derived metrics are computed here from the
//! measures' values, in Float64, with null-safe division.

use crate::ast::BinOp;
use crate::data::clean_error;
use crate::diagnostic::Diagnostic;
use crate::model::{Formula, MeasureId, MetricId, Model};
use crate::plan::{self, QueryPlan};
use crate::settings::Settings;
use crate::time::{Grain, from_days};
use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
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
    /// Metric names, in column order.
    pub metrics: Vec<String>,
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
    let mut values: HashMap<Key, HashMap<MeasureId, Option<f64>>> = HashMap::new();
    for (scan, batches) in plan.scans.iter().zip(results) {
        let has_period = plan.query.grain.is_some();
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
            let dim_arrays: Vec<_> = (0..ndims).map(|i| batch.column(col + i).clone()).collect();
            let formatters = dim_arrays
                .iter()
                .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow_error)?;
            col += ndims;
            let measure_arrays = (0..scan.measures.len())
                .map(|i| cast(batch.column(col + i), &DataType::Float64))
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow_error)?;
            for row in 0..batch.num_rows() {
                let period = periods.as_ref().and_then(|p| {
                    let p = p.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
                    p.is_valid(row).then(|| p.value(row))
                });
                let dims = dim_arrays
                    .iter()
                    .zip(&formatters)
                    .map(|(a, f)| a.is_valid(row).then(|| f.value(row).to_string()))
                    .collect();
                let entry = values.entry((period, dims)).or_default();
                for (i, &m) in scan.measures.iter().enumerate() {
                    let a = measure_arrays[i].as_primitive::<Float64Type>();
                    entry.insert(m, a.is_valid(row).then(|| a.value(row)));
                }
            }
        }
    }

    // Every period of the range, for every breakdown value seen.
    let periods: Vec<Option<i32>> = match plan.query.grain {
        None => vec![None],
        Some(g) => {
            let seen: Vec<i32> = values.keys().filter_map(|k| k.0).collect();
            let from = plan.query.from.or_else(|| seen.iter().min().map(|&d| from_days(d)));
            let to = plan.query.to.or_else(|| seen.iter().max().map(|&d| from_days(d)));
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
    let mut tuples: BTreeSet<Vec<Option<String>>> = values.keys().map(|k| k.1.clone()).collect();
    if tuples.is_empty() && ndims == 0 {
        tuples.insert(Vec::new());
    }
    let mut rows = Vec::new();
    for p in &periods {
        for t in &tuples {
            let measured = values.get(&(*p, t.clone()));
            let mut memo: HashMap<MetricId, Option<f64>> = HashMap::new();
            let vals = plan
                .query
                .metrics
                .iter()
                .map(|&m| metric_value(model, m, measured, &mut memo))
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
        metrics: plan
            .query
            .metrics
            .iter()
            .map(|&m| model.metrics[m].name.clone())
            .collect(),
        rows,
    })
}

fn metric_value(
    model: &Model,
    metric: MetricId,
    measured: Option<&HashMap<MeasureId, Option<f64>>>,
    memo: &mut HashMap<MetricId, Option<f64>>,
) -> Option<f64> {
    if let Some(v) = memo.get(&metric) {
        return *v;
    }
    let v = formula_value(model, &model.metrics[metric].formula, measured, memo);
    memo.insert(metric, v);
    v
}

fn formula_value(
    model: &Model,
    f: &Formula,
    measured: Option<&HashMap<MeasureId, Option<f64>>>,
    memo: &mut HashMap<MetricId, Option<f64>>,
) -> Option<f64> {
    match f {
        Formula::Measure(m) => {
            let zero = model.measures[*m].agg.zero_when_empty();
            match measured.and_then(|v| v.get(m)).copied().flatten() {
                Some(v) => Some(v),
                None if zero => Some(0.0),
                None => None,
            }
        }
        Formula::Metric(id) => metric_value(model, *id, measured, memo),
        Formula::Number(n) => Some(*n),
        Formula::Neg(a) => formula_value(model, a, measured, memo).map(|v| -v),
        Formula::Binary(op, a, b) => {
            let x = formula_value(model, a, measured, memo)?;
            let y = formula_value(model, b, measured, memo)?;
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

/// Plans and executes a query in one step.
pub async fn query(
    ctx: &SessionContext,
    model: &Model,
    files: &crate::span::Files,
    settings: &Settings,
    query: plan::Query,
) -> Result<ResultTable, Diagnostic> {
    let plan = plan::build(model, files, &settings.calendar(), query)?;
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
