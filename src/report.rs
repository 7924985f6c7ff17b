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

/// Computes and writes a version as of a day.
pub async fn run(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    as_of: NaiveDate,
) -> Result<Written, Diagnostic> {
    let calendar = settings.calendar();
    let mut rows = Vec::new();
    for r in &model.reports {
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
    let targets = crate::targets::evaluate(ctx, model, files, settings, as_of).await?;
    let alerts = crate::alerts::evaluate(ctx, model, files, settings, as_of).await?;
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
    let results = results_json(&rows, model, &targets);
    let mut outputs: Vec<(&str, Vec<u8>)> = vec![
        ("manifest.json", pretty(&manifest)),
        ("results.json", pretty(&results)),
        ("alerts.json", pretty(&alerts_json(&alerts))),
        ("results.parquet", results_parquet(&results)?),
    ];
    outputs.push((
        "index.html",
        page(model, &rows, &targets, &alerts, as_of, &version).into_bytes(),
    ));
    write_version(&settings.reports, &version, &outputs)?;
    write_index(&settings.reports)?;
    Ok(Written {
        version,
        folder,
        new: true,
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

/// Text for HTML: every user-written string goes through here.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The version's page: one self-contained file (no network), every user text escaped.
fn page(
    model: &Model,
    rows: &[Row],
    targets: &[TargetResult],
    alerts: &[AlertResult],
    as_of: NaiveDate,
    version: &str,
) -> String {
    let mut h = String::new();
    h.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str(&format!("<title>tally report {}</title>\n", escape(version)));
    h.push_str("<style>body{font-family:system-ui,sans-serif;margin:1rem;max-width:70rem}table{border-collapse:collapse;margin:.5rem 0 1.5rem;display:block;overflow-x:auto}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:right}th:first-child,td:first-child{text-align:left}.firing{color:#b00020}</style>\n</head>\n<body>\n");
    h.push_str(&format!(
        "<h1>Reports as of {as_of}</h1>\n<p>version {}</p>\n",
        escape(version)
    ));
    let firing: Vec<&AlertResult> = alerts.iter().filter(|a| a.firing.is_some()).collect();
    h.push_str(&format!("<h2>Alerts: {} firing</h2>\n<ul>\n", firing.len()));
    for a in &firing {
        h.push_str(&format!(
            "<li class=\"firing\">{}: {}</li>\n",
            a.firing.map(|s| s.name()).unwrap_or(""),
            escape(&a.message)
        ));
    }
    h.push_str("</ul>\n");
    for r in &model.reports {
        let title = r.title.clone().unwrap_or_else(|| r.name.clone());
        h.push_str(&format!("<h2>{}</h2>\n", escape(&title)));
        let periods: Vec<NaiveDate> = {
            let mut p: Vec<NaiveDate> = rows.iter().filter(|x| x.report == r.name).map(|x| x.period).collect();
            p.sort();
            p.dedup();
            p
        };
        h.push_str("<table>\n<tr><th>metric</th>");
        for p in &periods {
            h.push_str(&format!("<th>{p}</th>"));
        }
        h.push_str("</tr>\n");
        for &m in &r.metrics {
            let metric = &model.metrics[m];
            let label = metric.label.clone().unwrap_or_else(|| metric.name.clone());
            h.push_str(&format!("<tr><td>{}</td>", escape(&label)));
            for p in &periods {
                let v = rows
                    .iter()
                    .find(|x| {
                        x.report == r.name && x.metric == metric.name && x.period == *p && x.dimensions.is_empty()
                    })
                    .and_then(|x| x.value);
                h.push_str(&format!(
                    "<td>{}</td>",
                    escape(&crate::output::format_value(v, &metric.format))
                ));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    if !targets.is_empty() {
        h.push_str("<h2>Targets</h2>\n<ul>\n");
        for t in targets {
            h.push_str(&format!(
                "<li>{}: {}</li>\n",
                escape(&model.targets[t.target].text),
                t.status.name()
            ));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<h2>Definitions</h2>\n<dl>\n");
    for m in &model.metrics {
        h.push_str(&format!(
            "<dt>{}</dt><dd><code>{}</code>{}</dd>\n",
            escape(&m.name),
            escape(&m.text),
            m.description
                .as_deref()
                .map(|d| format!(" — {}", escape(d)))
                .unwrap_or_default()
        ));
    }
    h.push_str("</dl>\n</body>\n</html>\n");
    h
}

/// Writes a version's files into a temporary folder and renames it into place; a version
/// that appeared meanwhile (another run) is left as it is.
fn write_version(reports: &Path, version: &str, outputs: &[(&str, Vec<u8>)]) -> Result<(), Diagnostic> {
    let fail = |e: std::io::Error, what: &Path| {
        Diagnostic::data("E0807", format!("cannot write the report to {}: {e}", what.display()))
            .note("nothing of this version was left behind")
    };
    std::fs::create_dir_all(reports).map_err(|e| fail(e, reports))?;
    let tmp = reports.join(format!(".{version}.{}.tmp", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(&tmp)?;
        for (name, bytes) in outputs {
            std::fs::write(tmp.join(name), bytes)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(fail(e, &tmp));
    }
    let target = reports.join(version);
    match std::fs::rename(&tmp, &target) {
        Ok(()) => Ok(()),
        Err(_) if target.join("manifest.json").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(fail(e, &target))
        }
    }
}

/// `reports/index.html`: every version, newest as-of first; written atomically.
fn write_index(reports: &Path) -> Result<(), Diagnostic> {
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
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>tally reports</title>\n</head>\n<body>\n<h1>Report versions</h1>\n<table>\n<tr><th>as of</th><th>version</th><th>definitions</th><th>commit</th><th>alerts firing</th></tr>\n",
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
    std::fs::write(&tmp, h).map_err(fail)?;
    std::fs::rename(&tmp, reports.join("index.html")).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}
