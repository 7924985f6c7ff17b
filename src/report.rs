//! Report versions: `tally run` computes every report's metrics, the targets and the alerts
//! as of a day and writes them to `reports/<version>/`, where the version id is a hash of
//! the inputs (definitions, data contents, as-of day, tool version). A version, once
//! written, is never changed: it is written to a temporary folder and renamed into place.

use crate::alerts::AlertResult;
use crate::diagnostic::Diagnostic;
use crate::model::Model;
use crate::plan::Query;
use crate::settings::Settings;
use crate::span::Files;
use crate::targets::TargetResult;
use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a run wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub version: String,
    pub folder: PathBuf,
    /// `false` when this version was already there (and was left as it was).
    pub new: bool,
}

/// One value of a report's results.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    report: String,
    metric: String,
    grain: &'static str,
    period: NaiveDate,
    dimensions: BTreeMap<String, Option<String>>,
    value: Option<f64>,
}

/// Where a run is: about to do step `step` (from 0) of `steps`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    pub what: String,
}

/// What a page is made of: the reports' values, the targets and the alerts as of a day.
struct Computed {
    rows: Vec<Row>,
    targets: Vec<TargetResult>,
    alerts: Vec<AlertResult>,
}

/// Computes the reports `shown` (indices into the model's reports), every target and every
/// alert as of a day, telling `progress` before each step; the last step (writing) is the
/// caller's.
async fn compute(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    as_of: NaiveDate,
    shown: &[usize],
    progress: &dyn Fn(Progress),
) -> Result<Computed, Diagnostic> {
    let calendar = settings.calendar();
    let mut rows = Vec::new();
    let steps = shown
        .iter()
        .map(|&r| 1 + model.reports[r].dimensions.len())
        .sum::<usize>()
        + 3;
    let mut step = 0;
    let mut tell = |what: String| {
        progress(Progress { step, steps, what });
        step += 1;
    };
    for r in shown.iter().map(|&r| &model.reports[r]) {
        let (from, to) = match &r.range {
            Some(text) => {
                let (f, t) = crate::time::relative_range(text, as_of, &calendar)
                    .map_err(|why| Diagnostic::error("E0584", why).at(r.span, "this report"))?;
                (Some(f), Some(t))
            }
            None => (None, Some(as_of)),
        };
        // Totals, then each breakdown.
        let mut breakdowns = vec![Vec::new()];
        breakdowns.extend(r.dimensions.iter().map(|&d| vec![d]));
        for dims in breakdowns {
            tell(match dims.first() {
                Some(&d) => format!("report {} by {}", r.name, model.dimensions[d].name),
                None => format!("report {}", r.name),
            });
            let query = Query {
                metrics: r.metrics.clone(),
                grain: Some(r.grain),
                dimensions: dims,
                from,
                to,
                ..Query::default()
            };
            let table = crate::run::query(ctx, model, files, settings, query).await?;
            for row in &table.rows {
                for (i, metric) in table.metrics.iter().enumerate() {
                    rows.push(Row {
                        report: r.name.clone(),
                        metric: metric.clone(),
                        grain: r.grain.name(),
                        period: row.period.expect("a period"),
                        dimensions: table.dimensions.iter().cloned().zip(row.dimensions.clone()).collect(),
                        value: row.values[i],
                    });
                }
            }
        }
    }
    tell("targets".into());
    let targets = crate::targets::evaluate(ctx, model, files, settings, as_of).await?;
    tell("alerts".into());
    let alerts = crate::alerts::evaluate(ctx, model, files, settings, as_of).await?;
    tell("writing".into());
    Ok(Computed { rows, targets, alerts })
}

/// The files of a bundle: results, alerts and the page.
fn outputs(
    model: &Model,
    settings: &Settings,
    c: &Computed,
    shown: &[usize],
    as_of: NaiveDate,
    version: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>, Diagnostic> {
    let results = results_json(&c.rows, model, &c.targets);
    Ok(vec![
        ("results.json", pretty(&results)),
        ("alerts.json", pretty(&alerts_json(&c.alerts))),
        ("results.parquet", results_parquet(&results)?),
        (
            "index.html",
            page(model, settings, c, shown, as_of, version)?.into_bytes(),
        ),
    ])
}

/// Computes and writes a version as of a day, telling `progress` before each step.
pub async fn run(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    as_of: NaiveDate,
    progress: &dyn Fn(Progress),
) -> Result<Written, Diagnostic> {
    let all: Vec<usize> = (0..model.reports.len()).collect();
    let computed = compute(ctx, model, files, settings, as_of, &all, progress).await?;
    let manifest = manifest(model, files, settings, as_of);
    let version = manifest["version"].as_str().unwrap_or_default().to_string();
    let folder = settings.reports.join(&version);
    if folder.join("manifest.json").exists() {
        return Ok(Written {
            version,
            folder,
            new: false,
        });
    }
    let mut outputs = vec![("manifest.json", pretty(&manifest))];
    outputs.extend(self::outputs(model, settings, &computed, &all, as_of, &version)?);
    let new = write_version(&settings.reports, &version, &outputs, &write_durably)?;
    write_index(&settings.reports, &write_durably)?;
    Ok(Written { version, folder, new })
}

/// Computes the reports `shown` (indices into the model's reports) as of a day and writes
/// their bundle — page, results and alerts; no manifest, not a version — to `out`, replacing
/// an earlier bundle there as a whole. A folder that holds anything else is left alone.
#[allow(clippy::too_many_arguments)]
pub async fn bundle(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    as_of: NaiveDate,
    shown: &[usize],
    out: &Path,
    progress: &dyn Fn(Progress),
) -> Result<(), Diagnostic> {
    const FILES: [&str; 4] = ["index.html", "results.json", "results.parquet", "alerts.json"];
    let fail = |e: std::io::Error| {
        Diagnostic::data(
            "E0807",
            format!("cannot write the report bundle {}: {e}", out.display()),
        )
        .note("the bundle that was there (if any) is as it was")
    };
    if out.exists() {
        let foreign = !out.is_dir()
            || std::fs::read_dir(out)
                .map_err(fail)?
                .flatten()
                .any(|e| !FILES.contains(&e.file_name().to_string_lossy().as_ref()));
        if foreign {
            return Err(Diagnostic::usage(
                "E0808",
                format!(
                    "{} is not a report bundle (a folder of index.html, results and alerts only); it was not replaced",
                    out.display()
                ),
            )
            .note("name an empty or new folder with --out"));
        }
    }
    let computed = compute(ctx, model, files, settings, as_of, shown, progress).await?;
    let outputs = outputs(model, settings, &computed, shown, as_of, "")?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or("bundle".into());
    std::fs::create_dir_all(parent).map_err(fail)?;
    let fresh = parent.join(format!(".{name}.{}.new", std::process::id()));
    write_folder(&fresh, &outputs, &write_durably).map_err(fail)?;
    let old = parent.join(format!(".{name}.{}.old", std::process::id()));
    let swap = (|| {
        if out.exists() {
            std::fs::rename(out, &old)?;
        }
        std::fs::rename(&fresh, out)
    })();
    let _ = std::fs::remove_dir_all(&old);
    swap.map_err(|e| {
        let _ = std::fs::remove_dir_all(&fresh);
        fail(e)
    })
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Version id, definition hashes, data content hashes, as-of day, git commit, tool version.
/// The id hashes all of them, so the same inputs give the same id and the same files.
fn manifest(model: &Model, files: &Files, settings: &Settings, as_of: NaiveDate) -> Value {
    let hex = |bytes: &[u8]| format!("{:x}", Sha256::digest(bytes));
    let mut definitions = Sha256::new();
    let mut names: Vec<(String, String)> = files
        .iter()
        .filter(|(_, f)| f.path.starts_with(&settings.definitions))
        .map(|(_, f)| (f.name.clone(), f.text.clone()))
        .collect();
    names.sort();
    for (name, text) in &names {
        definitions.update(format!("{name}\0{}\0", text.len()).as_bytes());
        definitions.update(text.as_bytes());
    }
    let definitions = format!("{:x}", definitions.finalize());
    let metrics: BTreeMap<&str, String> = model
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), hex(m.text.as_bytes())))
        .collect();
    let data: BTreeMap<&str, String> = model
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.data.content_hash()))
        .collect();
    let tool = env!("CARGO_PKG_VERSION");
    let commit = git_commit(&settings.root);
    let mut id = Sha256::new();
    id.update(
        format!(
            "tally {tool}\0{as_of}\0{definitions}\0{}\0",
            commit.as_deref().unwrap_or("")
        )
        .as_bytes(),
    );
    for (s, h) in &data {
        id.update(format!("{s}\0{h}\0").as_bytes());
    }
    let version = format!("{}-{}", as_of, &format!("{:x}", id.finalize())[..12]);
    json!({
        "version": version,
        "as_of": as_of.to_string(),
        "definitions_hash": definitions,
        "metric_hashes": metrics,
        "data": data,
        "git_commit": commit,
        "tool_version": tool,
    })
}

/// The commit the project is at, when it is a git repository and git is there.
fn git_commit(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
}

fn results_json(rows: &[Row], model: &Model, targets: &[TargetResult]) -> Value {
    let level = |metric: &str, grain: &str, period: NaiveDate| {
        targets.iter().find(|t| {
            let target = &model.targets[t.target];
            t.metric == metric && target.grain.name() == grain && target.deadline.is_none() && t.period == period
        })
    };
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let t = if r.dimensions.is_empty() {
                level(&r.metric, r.grain, r.period)
            } else {
                None
            };
            json!({
                "report": r.report,
                "metric": r.metric,
                "grain": r.grain,
                "period": r.period.to_string(),
                "dimensions": r.dimensions,
                "value": r.value,
                "target": t.and_then(|t| t.level),
                "status": t.map(|t| t.status.name()),
            })
        })
        .collect();
    json!({ "results": items })
}

/// The results in long form as Parquet: report, metric, grain, period, dimensions (JSON),
/// value, target, status.
fn results_parquet(results: &Value) -> Result<Vec<u8>, Diagnostic> {
    use datafusion::arrow::array::{ArrayRef, Date32Array, Float64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let items = results["results"].as_array().cloned().unwrap_or_default();
    let text = |key: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter(
            items.iter().map(|r| r[key].as_str().map(str::to_string)),
        ))
    };
    let number = |key: &str| -> ArrayRef { Arc::new(Float64Array::from_iter(items.iter().map(|r| r[key].as_f64()))) };
    let period: ArrayRef = Arc::new(Date32Array::from_iter(items.iter().map(|r| {
        r["period"]
            .as_str()
            .and_then(|p| p.parse::<NaiveDate>().ok())
            .map(crate::time::to_days)
    })));
    let dimensions: ArrayRef = Arc::new(StringArray::from_iter_values(
        items.iter().map(|r| r["dimensions"].to_string()),
    ));
    let schema = Arc::new(Schema::new(vec![
        Field::new("report", DataType::Utf8, true),
        Field::new("metric", DataType::Utf8, true),
        Field::new("grain", DataType::Utf8, true),
        Field::new("period", DataType::Date32, true),
        Field::new("dimensions", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("target", DataType::Float64, true),
        Field::new("status", DataType::Utf8, true),
    ]));
    let columns = vec![
        text("report"),
        text("metric"),
        text("grain"),
        period,
        dimensions,
        number("value"),
        number("target"),
        text("status"),
    ];
    let fail = |e: String| Diagnostic::data("E0807", format!("cannot write results.parquet: {e}"));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::new();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).map_err(|e| fail(e.to_string()))?;
    writer.write(&batch).map_err(|e| fail(e.to_string()))?;
    writer.close().map_err(|e| fail(e.to_string()))?;
    Ok(out)
}

fn alerts_json(alerts: &[AlertResult]) -> Value {
    let items: Vec<Value> = alerts
        .iter()
        .map(|a| {
            json!({
                "alert": a.name,
                "dimensions": a.dimensions.iter().map(|(d, v)| (d.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "period": a.period.to_string(),
                "firing": a.firing.is_some(),
                "severity": a.firing.map(|s| s.name()),
                "value": a.value,
                "level": a.level,
                "message": a.message,
            })
        })
        .collect();
    json!({ "alerts": items })
}

/// Text for HTML and XML (the index of versions, JUnit output; the page escapes through its
/// template).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The version's page: one self-contained file (no network, no script), rendered from
/// `report.html` with minijinja, which escapes every value (all user text is a value).
fn page(
    model: &Model,
    settings: &Settings,
    computed: &Computed,
    shown: &[usize],
    as_of: NaiveDate,
    version: &str,
) -> Result<String, Diagnostic> {
    let Computed { rows, targets, alerts } = computed;
    use crate::ast::Direction;
    use crate::model::Condition;
    let show = |v: Option<f64>, f: &crate::ast::Format| match v {
        Some(_) => crate::output::format_value(v, f),
        None => "–".to_string(),
    };
    let percent = crate::ast::Format::Percent;
    let calendar = settings.calendar();
    let mut reports = Vec::new();
    for r in shown.iter().map(|&r| &model.reports[r]) {
        let mine: Vec<&Row> = rows.iter().filter(|x| x.report == r.name).collect();
        let mut periods: Vec<NaiveDate> = mine.iter().map(|x| x.period).collect();
        periods.sort();
        periods.dedup();
        let total = |metric: &str, p: NaiveDate| {
            mine.iter()
                .find(|x| x.metric == metric && x.period == p && x.dimensions.is_empty())
                .and_then(|x| x.value)
        };
        let mut tiles = Vec::new();
        let mut table = Vec::new();
        for &m in &r.metrics {
            let metric = &model.metrics[m];
            let label = metric.label.clone().unwrap_or_else(|| metric.name.clone());
            let series: Vec<Option<f64>> = periods.iter().map(|&p| total(&metric.name, p)).collect();
            // Tiles show the last complete period: a month under way is not compared with a
            // whole one.
            let at = periods
                .iter()
                .rposition(|&p| calendar.next(p, r.grain) - chrono::Days::new(1) <= as_of)
                .unwrap_or(periods.len().saturating_sub(1));
            let shown = periods.get(at).copied();
            let last = series.get(at).copied().flatten();
            let before = at.checked_sub(1).and_then(|i| series[i]);
            let (change, direction) = match (last, before) {
                (Some(v), Some(b)) => {
                    // Percents change in points; other values relatively.
                    let rel = (b != 0.0 && metric.format != percent).then(|| v / b - 1.0);
                    let good = match metric.good {
                        Some(Direction::Down) => v <= b,
                        _ => v >= b,
                    };
                    let text = match rel {
                        Some(x) => format!("{} vs the {} before", show(Some(x), &percent), r.grain.name()),
                        None if metric.format == percent => {
                            format!("{:+.1} points vs the {} before", (v - b) * 100.0, r.grain.name())
                        }
                        None => format!("{} vs the {} before", show(Some(v - b), &metric.format), r.grain.name()),
                    };
                    (
                        text,
                        if v == b {
                            ""
                        } else if good {
                            "up"
                        } else {
                            "down"
                        },
                    )
                }
                _ => (String::new(), ""),
            };
            // A target of the report's grain for the period shown.
            let target = shown.and_then(|p| {
                model
                    .targets
                    .iter()
                    .find(|t| t.metric == m && t.grain == r.grain && t.deadline.is_none())
                    .map(|t| (t, p))
            });
            let (target_text, attainment, status, level) = match target {
                Some((t, p)) => {
                    let level = t.level.at(p);
                    let high = t.high.as_ref().and_then(|h| h.at(p));
                    let status = crate::targets::status(t, last, level, high);
                    let attainment = match (last, level) {
                        (Some(v), Some(l)) if l != 0.0 => Some(show(Some(v / l), &percent)),
                        _ => None,
                    };
                    (
                        level.map(|l| show(Some(l), &metric.format)),
                        attainment,
                        status.name(),
                        level,
                    )
                }
                None => (None, None, "", None),
            };
            // The chart: the series scaled into 300 x 80, the target level as a line, and a
            // dot where an alert on this metric fires.
            let (width, height) = (300.0, 80.0);
            let values: Vec<f64> = series.iter().flatten().copied().chain(level).collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() {
                (lo.min(0.0), if hi > lo { hi } else { lo + 1.0 })
            } else {
                (0.0, 1.0)
            };
            let x = |i: usize| {
                if series.len() > 1 {
                    i as f64 * width / (series.len() - 1) as f64
                } else {
                    width / 2.0
                }
            };
            let y = |v: f64| height - 2.0 - (v - lo) / (hi - lo) * (height - 14.0);
            let points: Vec<String> = series
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect();
            let markers: Vec<Value> = alerts
                .iter()
                .filter(|a| a.firing.is_some() && a.dimensions.is_empty())
                .filter(|a| match &model.alerts[a.alert].condition {
                    Condition::Threshold { metric, .. }
                    | Condition::Change { metric, .. }
                    | Condition::Anomaly { metric, .. }
                    | Condition::OffTarget { metric, .. } => *metric == m,
                    _ => false,
                })
                .filter_map(|a| {
                    let i = periods.iter().position(|&p| p == a.period)?;
                    let v = series[i]?;
                    Some(json!({"x": format!("{:.1}", x(i)), "y": format!("{:.1}", y(v))}))
                })
                .collect();
            tiles.push(json!({
                "metric": metric.name,
                "label": label,
                "period": shown.map(|p| p.to_string()),
                "value": show(last, &metric.format),
                "change": change,
                "direction": direction,
                "target": target_text,
                "attainment": attainment,
                "status": status.replace(' ', "-"),
                "chart": {
                    "width": width,
                    "height": height,
                    "points": points.join(" "),
                    "target_y": level.map(|l| format!("{:.1}", y(l))),
                    "alerts": markers,
                    "low": show(Some(lo), &metric.format),
                    "high": show(Some(hi), &metric.format),
                    "first": periods.first().map(|p| p.to_string()).unwrap_or_default(),
                },
            }));
            table.push(json!({
                "name": label,
                "values": series.iter().map(|v| show(*v, &metric.format)).collect::<Vec<_>>(),
            }));
        }
        // Breakdowns: each dimension's values at the last period.
        let mut breakdowns = Vec::new();
        if let Some(&last) = periods.last() {
            for &d in &r.dimensions {
                let name = &model.dimensions[d].name;
                let mut values: Vec<Option<String>> = mine
                    .iter()
                    .filter(|x| x.period == last && x.dimensions.contains_key(name))
                    .map(|x| x.dimensions[name].clone())
                    .collect();
                values.sort_by(|a, b| (a.is_none(), a).cmp(&(b.is_none(), b)));
                values.dedup();
                let rows_out: Vec<Value> = values
                    .iter()
                    .map(|v| {
                        let cells: Vec<String> = r
                            .metrics
                            .iter()
                            .map(|&m| {
                                let metric = &model.metrics[m];
                                let value = mine
                                    .iter()
                                    .find(|x| {
                                        x.metric == metric.name && x.period == last && x.dimensions.get(name) == Some(v)
                                    })
                                    .and_then(|x| x.value);
                                show(value, &metric.format)
                            })
                            .collect();
                        json!({"name": v.clone().unwrap_or_else(|| "(none)".into()), "values": cells})
                    })
                    .collect();
                breakdowns.push(json!({
                    "dimension": model.dimensions[d].label.clone().unwrap_or_else(|| name.clone()),
                    "period": last.to_string(),
                    "header": r.metrics.iter().map(|&m| model.metrics[m].label.clone().unwrap_or_else(|| model.metrics[m].name.clone())).collect::<Vec<_>>(),
                    "rows": rows_out,
                }));
            }
        }
        reports.push(json!({
            "name": r.name,
            "title": r.title.clone().unwrap_or_else(|| r.name.clone()),
            "description": r.description,
            "grain": r.grain.name(),
            "range": r.range,
            "tiles": tiles,
            "breakdowns": breakdowns,
            "periods": periods.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "table": table,
        }));
    }
    let firing: Vec<Value> = alerts
        .iter()
        .filter_map(|a| a.firing.map(|s| json!({"severity": s.name(), "message": a.message})))
        .collect();
    let hex = |t: &str| format!("{:x}", Sha256::digest(t.as_bytes()))[..12].to_string();
    let definitions: Vec<Value> = model
        .metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "label": m.label.clone().unwrap_or_else(|| m.name.clone()),
                "text": m.text,
                "owner": m.owner,
                "description": m.description,
                "hash": hex(&m.text),
            })
        })
        .collect();
    let context = json!({
        "title": format!("Reports as of {as_of}"),
        "as_of": as_of.to_string(),
        "version": version,
        "alerts": firing,
        "reports": reports,
        "targets": targets.iter().map(|t| json!({"text": model.targets[t.target].text, "status": t.status.name()})).collect::<Vec<_>>(),
        "definitions": definitions,
    });
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", include_str!("report.html"))
        .and_then(|_| env.get_template("report.html"))
        .and_then(|t| t.render(context))
        .map_err(|e| Diagnostic::data("E0808", format!("cannot write the report page: {e}")))
}

/// Writes one file: the real one writes it whole and flushes it to the disk before the
/// folder is renamed into place; tests pass one that fails.
type WriteFile<'a> = &'a dyn Fn(&Path, &[u8]) -> std::io::Result<()>;

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes files into a new folder; on failure nothing of it is left.
fn write_folder(folder: &Path, outputs: &[(&str, Vec<u8>)], write: WriteFile) -> std::io::Result<()> {
    let result = (|| {
        std::fs::create_dir_all(folder)?;
        for (name, bytes) in outputs {
            write(&folder.join(name), bytes)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(folder);
    }
    result
}

/// Writes a version's files into a temporary folder and renames it into place; a version
/// that appeared meanwhile (another run) is left as it is. Whether this call wrote it.
fn write_version(
    reports: &Path,
    version: &str,
    outputs: &[(&str, Vec<u8>)],
    write: WriteFile,
) -> Result<bool, Diagnostic> {
    let target = reports.join(version);
    let fail = |e: std::io::Error| {
        Diagnostic::data(
            "E0807",
            format!("cannot write the report version {}: {e}", target.display()),
        )
        .note("nothing of this version was left behind; the versions before it are as they were")
    };
    std::fs::create_dir_all(reports).map_err(fail)?;
    let tmp = reports.join(format!(".{version}.{}.tmp", std::process::id()));
    write_folder(&tmp, outputs, write).map_err(fail)?;
    match std::fs::rename(&tmp, &target) {
        Ok(()) => Ok(true),
        // Another run wrote the same version first: the same bytes.
        Err(_) if target.join("manifest.json").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(fail(e))
        }
    }
}

fn write_index(reports: &Path, write: WriteFile) -> Result<(), Diagnostic> {
    let mut versions: Vec<(String, Value, usize)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(reports) {
        for e in entries.flatten() {
            let manifest = e.path().join("manifest.json");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let firing = std::fs::read_to_string(e.path().join("alerts.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|a| {
                    a["alerts"]
                        .as_array()
                        .map(|xs| xs.iter().filter(|x| x["firing"] == true).count())
                })
                .unwrap_or(0);
            versions.push((e.file_name().to_string_lossy().to_string(), v, firing));
        }
    }
    versions.sort_by(|a, b| b.1["as_of"].as_str().cmp(&a.1["as_of"].as_str()).then(a.0.cmp(&b.0)));
    let mut h = String::from(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n<title>tally reports</title>\n</head>\n<body>\n<h1>Report versions</h1>\n<table>\n<tr><th>as of</th><th>version</th><th>definitions</th><th>commit</th><th>alerts firing</th></tr>\n",
    );
    for (folder, v, firing) in &versions {
        let short = |key: &str| {
            v[key]
                .as_str()
                .map(|s| s.chars().take(12).collect::<String>())
                .unwrap_or_default()
        };
        h.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"{}/index.html\">{}</a></td><td>{}</td><td>{}</td><td>{firing}</td></tr>\n",
            escape(v["as_of"].as_str().unwrap_or("")),
            escape(folder),
            escape(folder),
            escape(&short("definitions_hash")),
            escape(&short("git_commit")),
        ));
    }
    h.push_str("</table>\n</body>\n</html>\n");
    let tmp = reports.join(format!(".index.{}.tmp", std::process::id()));
    let fail = |e: std::io::Error| {
        Diagnostic::data(
            "E0807",
            format!("cannot write {}: {e}", reports.join("index.html").display()),
        )
    };
    write(&tmp, h.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, reports.join("index.html")))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk that fills up on the third file: the run fails with the system's reason, and
    /// neither the version nor a temporary folder is left; the index is not touched.
    #[test]
    fn a_full_disk_leaves_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let reports = dir.path().join("reports");
        let count = std::cell::Cell::new(0);
        let full = |path: &Path, bytes: &[u8]| {
            count.set(count.get() + 1);
            if count.get() == 3 {
                std::fs::write(path, &bytes[..bytes.len() / 2])?;
                return Err(std::io::Error::from_raw_os_error(28));
            }
            write_durably(path, bytes)
        };
        let outputs: Vec<(&str, Vec<u8>)> = ["manifest.json", "results.json", "alerts.json", "index.html"]
            .iter()
            .map(|n| (*n, vec![b'x'; 100]))
            .collect();
        let err = write_version(&reports, "2026-01-01-abc", &outputs, &full).unwrap_err();
        assert_eq!(err.code, "E0807");
        assert!(err.message.contains("2026-01-01-abc"), "{}", err.message);
        assert!(err.message.contains("No space left on device"), "{}", err.message);
        let left: Vec<_> = std::fs::read_dir(&reports)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");

        count.set(0);
        write_version(&reports, "2026-01-01-abc", &outputs, &full).unwrap_err();
        write_version(&reports, "2026-01-01-abc", &outputs[..2], &full).unwrap();
        write_index(&reports, &write_durably).unwrap();
        let before = std::fs::read(reports.join("index.html")).unwrap();
        count.set(2);
        assert!(write_index(&reports, &full).is_err());
        assert_eq!(std::fs::read(reports.join("index.html")).unwrap(), before);
        let mut left: Vec<_> = std::fs::read_dir(&reports)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["2026-01-01-abc", "index.html"]);
    }
}
