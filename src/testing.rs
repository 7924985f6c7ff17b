//! Tests of definitions: each test's fixture rows become a small Parquet file per source,
//! the project's definitions are resolved over them, and the metrics and alerts are
//! compared with what the test expects. No data file of the project is needed: a source's
//! columns come from its data file when it can be read, else from the fixture rows.

use crate::ast::{Definitions, TestDef};
use crate::diagnostic::Diagnostic;
use crate::model::Model;
use crate::plan::Query;
use crate::project::Project;
use crate::span::{Span, Spanned};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// How one test went.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    pub span: Span,
    /// Expectations checked.
    pub checks: usize,
    /// What did not hold: expected against actual.
    pub failures: Vec<String>,
}

/// Runs every test. Problems with the tests themselves (an unknown source, metric, alert or
/// column) are returned as diagnostics.
pub async fn run(project: &Project, tests: &[TestDef]) -> Result<Vec<TestOutcome>, Vec<Diagnostic>> {
    let schemas = schemas(project, tests).await?;
    let mut out = Vec::new();
    for (i, test) in tests.iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("tally-test-{}-{i}", std::process::id()));
        let outcome = run_one(project, test, &schemas, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        out.push(outcome?);
    }
    Ok(out)
}

/// Each source's columns: from its data file, else inferred from the fixture rows of every
/// test; fixture columns a source does not have are errors.
async fn schemas(project: &Project, tests: &[TestDef]) -> Result<HashMap<String, SchemaRef>, Vec<Diagnostic>> {
    let defs = &project.definitions;
    let settings = &project.settings;
    let ctx = crate::data::session(settings).map_err(|d| vec![d])?;
    let mut diags = Vec::new();
    let mut out = HashMap::new();
    for s in &defs.sources {
        let from_file = match &s.file {
            Some(f) => crate::data::open(
                &ctx,
                settings,
                &s.name.value,
                &f.value,
                s.format.as_ref().map(|f| f.value.as_str()),
                f.span,
            )
            .await
            .ok()
            .map(|d| d.schema),
            None => None,
        };
        let schema = match from_file {
            Some(schema) => Some(plain(&schema)),
            None => {
                let rows: Vec<serde_json::Value> = tests
                    .iter()
                    .flat_map(|t| t.rows.iter().filter(|(n, _)| n.value == s.name.value))
                    .flat_map(|(_, rows)| rows.iter().cloned().map(serde_json::Value::Object))
                    .collect();
                if rows.is_empty() {
                    diags.push(
                        Diagnostic::error(
                            "E0596",
                            format!(
                                "source `{}` has no data file here and no rows in any test: its columns are unknown",
                                s.name.value
                            ),
                        )
                        .at(s.name.span, "this source")
                        .note(
                            "give it rows in a test (an empty list is not enough), or run the tests where its data is",
                        ),
                    );
                    None
                } else {
                    match arrow::json::reader::infer_json_schema_from_iterator(rows.clone().into_iter().map(Ok)) {
                        Ok(schema) => Some(with_times(&schema, &rows)),
                        Err(e) => {
                            diags.push(
                                Diagnostic::error(
                                    "E0591",
                                    format!(
                                        "the fixture rows of `{}` do not fit one type per column: {e}",
                                        s.name.value
                                    ),
                                )
                                .at(s.name.span, "this source"),
                            );
                            None
                        }
                    }
                }
            }
        };
        if let Some(schema) = schema {
            out.insert(s.name.value.clone(), schema);
        }
    }
    for t in tests {
        for (source, rows) in &t.rows {
            let Some(schema) = out.get(&source.value) else {
                if !defs.sources.iter().any(|s| s.name.value == source.value) {
                    diags.push(
                        Diagnostic::error("E0503", format!("unknown source `{}`", source.value))
                            .at(source.span, "no source of this name")
                            .suggest(&source.value, defs.sources.iter().map(|s| s.name.value.as_str())),
                    );
                }
                continue;
            };
            let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let mut reported = Vec::new();
            for row in rows {
                for key in row.keys() {
                    if !columns.contains(&key.as_str()) && !reported.contains(key) {
                        reported.push(key.clone());
                        diags.push(
                            Diagnostic::error("E0590", format!("source `{}` has no column `{key}`", source.value))
                                .at(source.span, "in these fixture rows")
                                .suggest(key, columns.iter().copied())
                                .note(format!("columns of `{}`: {}", source.value, columns.join(", "))),
                        );
                    }
                }
            }
        }
    }
    if diags.is_empty() { Ok(out) } else { Err(diags) }
}

/// Text columns whose every value is an ISO date (or date and time) become dates (or
/// timestamps), as they would in a CSV file.
fn with_times(schema: &Schema, rows: &[serde_json::Value]) -> SchemaRef {
    let all = |name: &str, ok: &dyn Fn(&str) -> bool| {
        let mut seen = false;
        for r in rows {
            match r.get(name) {
                Some(serde_json::Value::String(s)) => {
                    if !ok(s) {
                        return false;
                    }
                    seen = true;
                }
                Some(serde_json::Value::Null) | None => {}
                Some(_) => return false,
            }
        }
        seen
    };
    let date = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok();
    let time = |s: &str| {
        [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ]
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(s, f).is_ok())
    };
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let dt = match f.data_type() {
                DataType::Utf8 if all(f.name(), &date) => DataType::Date32,
                DataType::Utf8 if all(f.name(), &time) => {
                    DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None)
                }
                other => other.clone(),
            };
            Field::new(f.name(), dt, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Column types a fixture can be written in: views and dictionaries as plain strings.
fn plain(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let dt = match f.data_type() {
                DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                DataType::BinaryView => DataType::Binary,
                DataType::Dictionary(_, v) => match v.as_ref() {
                    DataType::Utf8View => DataType::Utf8,
                    other => other.clone(),
                },
                other => other.clone(),
            };
            Field::new(f.name(), dt, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

async fn run_one(
    project: &Project,
    test: &TestDef,
    schemas: &HashMap<String, SchemaRef>,
    dir: &Path,
) -> Result<TestOutcome, Vec<Diagnostic>> {
    let fail = |why: String| vec![Diagnostic::data("E0592", why).at(test.name.span, "in this test")];
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot write fixtures to {}: {e}", dir.display())))?;
    // The fixture of every source: its rows, or none.
    let mut defs: Definitions = project.definitions.clone();
    for s in &mut defs.sources {
        let Some(schema) = schemas.get(&s.name.value) else {
            continue;
        };
        let rows: Vec<&serde_json::Map<String, serde_json::Value>> = test
            .rows
            .iter()
            .filter(|(n, _)| n.value == s.name.value)
            .flat_map(|(_, r)| r.iter())
            .collect();
        let mut json = Vec::new();
        for r in &rows {
            json.extend(serde_json::to_vec(r).unwrap_or_default());
            json.push(b'\n');
        }
        let reader = arrow::json::ReaderBuilder::new(schema.clone())
            .build(std::io::Cursor::new(json))
            .map_err(|e| {
                fail(format!(
                    "the fixture rows of `{}` do not fit its columns: {e}",
                    s.name.value
                ))
            })?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b.map_err(|e| {
                fail(format!(
                    "the fixture rows of `{}` do not fit its columns: {e}",
                    s.name.value
                ))
            })?);
        }
        let file = format!("{}.parquet", s.name.value);
        let out = std::fs::File::create(dir.join(&file)).map_err(|e| fail(format!("cannot write a fixture: {e}")))?;
        let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(out, schema.clone(), None)
            .map_err(|e| fail(format!("cannot write a fixture: {e}")))?;
        for b in &batches {
            writer
                .write(b)
                .map_err(|e| fail(format!("cannot write a fixture: {e}")))?;
        }
        writer
            .close()
            .map_err(|e| fail(format!("cannot write a fixture: {e}")))?;
        let span = s.file.as_ref().map(|f| f.span).unwrap_or(s.span);
        s.file = Some(Spanned::new(file, span));
        s.format = None;
    }
    let mut settings = project.settings.clone();
    settings.data = dir.to_path_buf();
    settings.allow_paths = Vec::new();
    settings.cache = None;
    let ctx = crate::data::session(&settings).map_err(|d| vec![d])?;
    let files = &project.files;
    let (model, diags) = crate::model::resolve(&ctx, &settings, files, defs).await;
    let Some(model) = model else {
        return Err(diags
            .into_iter()
            .filter(|d| d.severity == crate::diagnostic::Severity::Error)
            .collect());
    };
    let mut outcome = TestOutcome {
        name: test.name.value.clone(),
        span: test.name.span,
        checks: 0,
        failures: Vec::new(),
    };
    for e in &test.expect {
        outcome.checks += 1;
        let Some(metric) = model.metric(&e.metric.value) else {
            return Err(vec![
                Diagnostic::error("E0521", format!("unknown metric `{}`", e.metric.value))
                    .at(e.metric.span, "no metric of this name")
                    .suggest(&e.metric.value, model.metrics.iter().map(|m| m.name.as_str())),
            ]);
        };
        let grain = e
            .per
            .as_ref()
            .map(crate::model::grain_of)
            .transpose()
            .map_err(|d| vec![d])?;
        let dims = dimension_ids(&model, &e.by)?;
        let calendar = settings.calendar();
        let (from, to) = match (grain, &e.period) {
            (Some(g), Some(p)) => {
                let start = calendar.period_start(p.value, g);
                (Some(start), Some(calendar.next(start, g) - chrono::Days::new(1)))
            }
            (Some(_), None) => {
                return Err(vec![
                    Diagnostic::error("E0593", "an expectation per period needs `period`").at(e.span, "which period?"),
                ]);
            }
            _ => (None, test.as_of.as_ref().map(|a| a.value)),
        };
        let to = match (to, &test.as_of) {
            (Some(t), Some(a)) => Some(t.min(a.value)),
            (t, _) => t,
        };
        let query = Query {
            metrics: vec![metric],
            grain,
            dimensions: dims.clone(),
            from,
            to,
            ..Query::default()
        };
        let table = crate::run::query(&ctx, &model, files, &settings, query)
            .await
            .map_err(|d| vec![d])?;
        let wanted: Vec<Option<String>> = e.by.iter().map(|(_, v)| v.clone()).collect();
        let row = table
            .rows
            .iter()
            .find(|r| r.dimensions == wanted && (grain.is_none() || r.period == from));
        let actual = row.and_then(|r| r.values[0]);
        let close = match (actual, e.value) {
            (None, None) => true,
            (Some(a), Some(x)) => (a - x).abs() <= e.tolerance.unwrap_or(1e-9 * x.abs().max(1.0)),
            _ => false,
        };
        if !close {
            let show = |v: Option<f64>| {
                v.map(|v| crate::output::machine_value(Some(v)))
                    .unwrap_or_else(|| "no value".into())
            };
            let mut at = match (grain, from) {
                (Some(g), Some(p)) => format!(" for the {} of {p}", g.name()),
                _ => String::new(),
            };
            if !e.by.is_empty() {
                let by: Vec<String> =
                    e.by.iter()
                        .map(|(d, v)| format!("{} {}", d.value, v.as_deref().unwrap_or("(none)")))
                        .collect();
                at.push_str(&format!(" ({})", by.join(", ")));
            }
            outcome.failures.push(format!(
                "{}{at}: expected {}, got {}",
                e.metric.value,
                show(e.value),
                show(actual)
            ));
        }
    }
    let mut evaluated: HashMap<chrono::NaiveDate, Vec<crate::alerts::AlertResult>> = HashMap::new();
    for a in &test.alerts {
        outcome.checks += 1;
        let Some(as_of) = a.as_of.as_ref().or(test.as_of.as_ref()).map(|d| d.value) else {
            return Err(vec![
                Diagnostic::error("E0594", "an expected alert state needs an `as_of` day")
                    .at(a.span, "evaluated as of which day?")
                    .note("give the test (or this expectation) `as_of: YYYY-MM-DD`"),
            ]);
        };
        if !model.alerts.iter().any(|x| x.name == a.alert.value) {
            return Err(vec![
                Diagnostic::error("E0595", format!("unknown alert `{}`", a.alert.value))
                    .at(a.alert.span, "no alert of this name")
                    .suggest(&a.alert.value, model.alerts.iter().map(|x| x.name.as_str())),
            ]);
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = evaluated.entry(as_of) {
            let results = crate::alerts::evaluate(&ctx, &model, files, &settings, as_of)
                .await
                .map_err(|d| vec![d])?;
            slot.insert(results);
        }
        let results = &evaluated[&as_of];
        let firing = results.iter().any(|r| {
            r.name == a.alert.value
                && r.firing.is_some()
                && a.by
                    .iter()
                    .all(|(d, v)| r.dimensions.iter().any(|(n, x)| *n == d.value && x == v))
        });
        if firing != a.firing {
            let word = |f: bool| if f { "firing" } else { "not firing" };
            outcome.failures.push(format!(
                "alert {} as of {as_of}: expected {}, got {}",
                a.alert.value,
                word(a.firing),
                word(firing)
            ));
        }
    }
    Ok(outcome)
}

fn dimension_ids(model: &Model, by: &[(crate::ast::Name, Option<String>)]) -> Result<Vec<usize>, Vec<Diagnostic>> {
    by.iter()
        .map(|(d, _)| {
            model.dimension(&d.value).ok_or_else(|| {
                vec![
                    Diagnostic::error("E0576", format!("unknown dimension `{}`", d.value))
                        .at(d.span, "no dimension of this name")
                        .suggest(&d.value, model.dimensions.iter().map(|x| x.name.as_str())),
                ]
            })
        })
        .collect()
}
