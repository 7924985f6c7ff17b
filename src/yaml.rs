//! The YAML front end: `.yaml` files to the same [`ast::Definitions`] the DSL produces.
//!
//! serde_yaml appears in this module only (and in the settings loader). Structure comes from
//! serde with unknown keys refused; places come from [`Locator`], which maps key paths to
//! byte offsets so that expressions inside YAML report `file:line:col` of the YAML file.

use crate::ast::{
    AlertDef, Amount, Definitions, DimensionDef, Format, GoalDef, JoinDef, LevelDef, LevelKind, Meta, MetricDef,
    SourceDef, TargetDef,
};
use crate::diagnostic::Diagnostic;
use crate::span::{FileId, Span, Spanned};
use crate::syntax;
use chrono::NaiveDate;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;

/// A YAML definition file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "tally definitions")]
pub struct YamlFile {
    /// Tables the metrics are computed from.
    #[serde(default)]
    pub sources: IndexMap<String, YamlSource>,
    /// Named columns or expressions to break metrics down by.
    #[serde(default)]
    pub dimensions: IndexMap<String, YamlDimension>,
    /// KPIs: simple aggregates or arithmetic over other metrics.
    #[serde(default)]
    pub metrics: IndexMap<String, YamlMetric>,
    /// Goals for metrics.
    #[serde(default)]
    pub targets: Vec<YamlTarget>,
    /// The place of each target in the file's list (entries that did not read are skipped).
    #[serde(skip)]
    #[schemars(skip)]
    pub target_index: Vec<usize>,
    /// Conditions over metric series.
    #[serde(default)]
    pub alerts: IndexMap<String, YamlAlert>,
    /// Report pages.
    #[serde(default)]
    pub reports: IndexMap<String, YamlReport>,
}

/// A file of tests: `tests:` maps names to tests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlTestFile {
    tests: IndexMap<String, serde_yaml::Value>,
}

/// One test: fixture rows, an as-of day, expected values and alert states.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlTest {
    as_of: Option<YamlDate>,
    #[serde(default)]
    rows: IndexMap<String, Vec<serde_yaml::Value>>,
    #[serde(default)]
    expect: Vec<YamlExpect>,
    #[serde(default)]
    alerts: Vec<YamlAlertExpect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlExpect {
    metric: String,
    per: Option<String>,
    period: Option<YamlDate>,
    #[serde(default)]
    by: IndexMap<String, Option<String>>,
    value: Option<f64>,
    tolerance: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlAlertExpect {
    alert: String,
    firing: bool,
    as_of: Option<YamlDate>,
    #[serde(default)]
    by: IndexMap<String, Option<String>>,
}

/// Reads a test file (`*.test.yaml`): every test, or the problems found.
pub fn parse_tests(file: FileId, text: &str) -> (Vec<crate::ast::TestDef>, Vec<Diagnostic>) {
    use crate::ast::{AlertExpectDef, ExpectDef, TestDef};
    let mut out = Vec::new();
    let mut diags = Vec::new();
    let loc = Locator::new(text);
    let ctx = Ctx { file, text, loc: &loc };
    let parsed: YamlTestFile = match serde_yaml::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            diags.push(yaml_error(file, text, &e));
            return (out, diags);
        }
    };
    for (name, value) in parsed.tests {
        let base = ["tests", name.as_str()];
        let t: YamlTest = match serde_yaml::from_value(value) {
            Ok(t) => t,
            Err(e) => {
                diags.push(entry_error(file, &loc, &base, &e));
                continue;
            }
        };
        let date = |path: &[&str], d: &YamlDate| {
            let text = match d {
                YamlDate::Text(t) => t.clone(),
                YamlDate::Number(n) => n.to_string(),
            };
            let span = ctx.value_span(path, &text);
            date_value(&text, span, false).map(|d| Spanned::new(d, span))
        };
        let as_of = match &t.as_of {
            Some(d) => match date(&[&base[..], &["as_of"]].concat(), d) {
                Ok(d) => Some(d),
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            },
            None => None,
        };
        let mut rows = Vec::new();
        for (source, list) in &t.rows {
            let span = ctx.key_span(&[&base[..], &["rows", source.as_str()]].concat());
            let mut objects = Vec::new();
            for (i, row) in list.iter().enumerate() {
                match serde_json::to_value(row) {
                    Ok(serde_json::Value::Object(m)) => objects.push(m),
                    _ => diags.push(
                        Diagnostic::error(
                            "E0207",
                            format!("row {} of `{source}` is not a mapping of columns", i + 1),
                        )
                        .at(span, "expected `- {column: value, ...}`"),
                    ),
                }
            }
            rows.push((Spanned::new(source.clone(), span), objects));
        }
        let names = |by: &IndexMap<String, Option<String>>, span: Span| {
            by.iter()
                .map(|(k, v)| (Spanned::new(k.clone(), span), v.clone()))
                .collect::<Vec<_>>()
        };
        let mut expect = Vec::new();
        for (i, e) in t.expect.iter().enumerate() {
            let idx = i.to_string();
            let path = [&base[..], &["expect", idx.as_str()]].concat();
            let span = ctx.key_span(&path);
            let period = match &e.period {
                Some(d) => match date(&[&path[..], &["period"]].concat(), d) {
                    Ok(d) => Some(d),
                    Err(d) => {
                        diags.push(d);
                        continue;
                    }
                },
                None => None,
            };
            expect.push(ExpectDef {
                metric: Spanned::new(
                    e.metric.clone(),
                    ctx.value_span(&[&path[..], &["metric"]].concat(), &e.metric),
                ),
                per: e
                    .per
                    .as_ref()
                    .map(|p| Spanned::new(p.clone(), ctx.value_span(&[&path[..], &["per"]].concat(), p))),
                period,
                by: names(&e.by, span),
                value: e.value,
                tolerance: e.tolerance,
                span,
            });
        }
        let mut alerts = Vec::new();
        for (i, a) in t.alerts.iter().enumerate() {
            let idx = i.to_string();
            let path = [&base[..], &["alerts", idx.as_str()]].concat();
            let span = ctx.key_span(&path);
            let as_of = match &a.as_of {
                Some(d) => match date(&[&path[..], &["as_of"]].concat(), d) {
                    Ok(d) => Some(d),
                    Err(d) => {
                        diags.push(d);
                        continue;
                    }
                },
                None => None,
            };
            alerts.push(AlertExpectDef {
                alert: Spanned::new(
                    a.alert.clone(),
                    ctx.value_span(&[&path[..], &["alert"]].concat(), &a.alert),
                ),
                firing: a.firing,
                as_of,
                by: names(&a.by, span),
                span,
            });
        }
        out.push(TestDef {
            name: Spanned::new(name.clone(), ctx.key_span(&base)),
            as_of,
            rows,
            expect,
            alerts,
            span: ctx.key_span(&base),
        });
    }
    (out, diags)
}

/// A page of metrics.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YamlReport {
    pub title: Option<String>,
    pub description: Option<String>,
    /// day, week (default), month, quarter or year.
    pub grain: Option<String>,
    /// A range relative to the day the report is made: `last 26 weeks`, `this quarter`, ...
    pub range: Option<String>,
    /// The metrics shown, in order.
    pub metrics: Vec<String>,
    /// Breakdowns.
    #[serde(default)]
    pub by: YamlNames,
}

/// A condition over a metric's series (or a source's freshness).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YamlAlert {
    /// `conversion < 20%`, `cpa > 50 warning, > 80 critical`, `revenue change vs last year
    /// < -10%`, `revenue off target`, `won_jobs off pace`, `source jobs older than 2 days`,
    /// `source jobs empty`.
    pub when: String,
    /// `3 days`: fires only after the condition held this many periods in a row.
    #[serde(rename = "for")]
    pub for_periods: Option<String>,
    /// The period the condition is evaluated per (default: the unit of `for`, else day).
    pub per: Option<String>,
    /// One alert per value of these dimensions.
    #[serde(default)]
    pub by: YamlNames,
    /// `warning` (default) or `critical`.
    pub severity: Option<String>,
    /// A template: `{{ value }}`, `{{ period }}`, `{{ level }}`, `{{ earlier }}`, ...
    pub message: Option<String>,
    /// `2 days`: once firing, keeps firing until the condition has been false this long.
    pub keep: Option<String>,
    /// `enquiries >= 30`: not evaluated in periods where this metric is smaller.
    pub volume: Option<String>,
    /// Where the alert's changes of state are posted (a URL).
    pub webhook: Option<String>,
}

/// A name, or a list of names.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum YamlNames {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// A goal for a metric: one of `at_least`, `at_most`, `between`, `reach` (with `by`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YamlTarget {
    /// The metric's name.
    pub metric: String,
    /// The metric should be at least this (a number, `25%`, a schedule or `{file: ...}`).
    pub at_least: Option<YamlLevel>,
    /// The metric should be at most this.
    pub at_most: Option<YamlLevel>,
    /// The metric should be between these two.
    pub between: Option<[YamlAmount; 2]>,
    /// The metric, added up from the start, should reach this by the deadline `by`.
    pub reach: Option<YamlLevel>,
    /// The period the target is for: day, week, month (default), quarter, year.
    pub per: Option<String>,
    /// The first period the target applies to (`2026-01`).
    pub from: Option<YamlDate>,
    /// A deadline (`2026-12-31`).
    pub by: Option<YamlDate>,
    /// Short of the level by at most this share (`5%`) is "near", not "missed".
    pub tolerance: Option<YamlAmount>,
}

/// A level: one value, a value per period (`2026-01: 100000`), or `{file: levels.csv}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum YamlLevel {
    Amount(YamlAmount),
    File { file: String },
    Schedule(IndexMap<String, YamlAmount>),
}

/// A number, or a percent written as text (`25%`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum YamlAmount {
    Number(f64),
    Text(String),
}

/// A date or a month, as YAML reads it (`2026-01` is text, `2026-01-31` may be too).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum YamlDate {
    Text(String),
    Number(f64),
}

/// A table: one Parquet or CSV file, a glob, or a folder.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YamlSource {
    /// Path relative to the data root: a file, a glob or a folder (Hive partitions too).
    pub file: String,
    /// `csv` or `parquet`; by default taken from the file extension.
    pub format: Option<String>,
    /// The default time column.
    pub time: Option<String>,
    /// The column that identifies a row.
    pub key: Option<String>,
    /// Many-to-one joins to other sources.
    #[serde(default)]
    pub joins: Vec<YamlJoin>,
    pub label: Option<String>,
    pub description: Option<String>,
    pub owner: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `source: OTHER, on: COLUMN` (or `on: COLUMN = OTHER_COLUMN`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YamlJoin {
    pub source: String,
    pub on: String,
}

/// A dimension: an expression, or an object with `expr` and metadata.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum YamlDimension {
    Expr(String),
    Full(YamlDimensionFull),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YamlDimensionFull {
    pub expr: String,
    pub label: Option<String>,
    pub description: Option<String>,
    pub owner: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A metric.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YamlMetric {
    /// The definition, in the expression language: `sum(jobs.amount where status = "completed")`.
    pub expr: String,
    pub label: Option<String>,
    pub description: Option<String>,
    pub owner: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub unit: Option<String>,
    /// `number`, `percent`, `duration` or `currency(USD)`.
    pub format: Option<String>,
    /// Which direction is good: `up` or `down`.
    pub good: Option<String>,
}

/// The JSON Schema of the YAML form, for editors.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(YamlFile)).unwrap_or_default()
}

/// Parses one YAML definition file.
pub fn parse_file(file: FileId, text: &str) -> (Definitions, Vec<Diagnostic>) {
    let mut defs = Definitions::default();
    let mut diags = Vec::new();
    if text.trim().is_empty() {
        diags.push(
            Diagnostic::error("E0103", "this definition file defines nothing").at(Span::new(file, 0, 0), "empty file"),
        );
        return (defs, diags);
    }
    let loc = Locator::new(text);
    let Some(parsed) = read(file, text, &loc, &mut diags) else {
        return (defs, diags);
    };
    let ctx = Ctx { file, text, loc: &loc };

    for (name, s) in parsed.sources {
        let base = ["sources", name.as_str()];
        let joins = s
            .joins
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let idx = i.to_string();
                let jp = ["sources", name.as_str(), "joins", idx.as_str()];
                let on_span = ctx.value_span(&[&jp[..], &["on"]].concat(), &j.on);
                let (column, target_column) = match j.on.split_once('=') {
                    Some((a, b)) => (
                        Spanned::new(a.trim().to_string(), on_span),
                        Some(Spanned::new(b.trim().to_string(), on_span)),
                    ),
                    None => (Spanned::new(j.on.trim().to_string(), on_span), None),
                };
                JoinDef {
                    target: Spanned::new(
                        j.source.clone(),
                        ctx.value_span(&[&jp[..], &["source"]].concat(), &j.source),
                    ),
                    column,
                    target_column,
                    span: ctx.key_span(&jp),
                }
            })
            .collect();
        let meta = Meta {
            label: ctx.opt(&base, "label", &s.label),
            description: ctx.opt(&base, "description", &s.description),
            owner: ctx.opt(&base, "owner", &s.owner),
            tags: ctx.tags(&base, &s.tags),
            ..Meta::default()
        };
        defs.sources.push(SourceDef {
            name: Spanned::new(name.clone(), ctx.key_span(&base)),
            file: Some(Spanned::new(
                s.file.clone(),
                ctx.value_span(&[&base[..], &["file"]].concat(), &s.file),
            )),
            format: ctx.opt(&base, "format", &s.format),
            time: ctx.opt(&base, "time", &s.time),
            key: ctx.opt(&base, "key", &s.key),
            joins,
            meta,
            span: ctx.key_span(&base),
        });
    }

    for (name, d) in parsed.dimensions {
        let base = ["dimensions", name.as_str()];
        let (expr_text, expr_path, meta) = match &d {
            YamlDimension::Expr(e) => (e.clone(), base.to_vec(), Meta::default()),
            YamlDimension::Full(f) => (
                f.expr.clone(),
                vec!["dimensions", name.as_str(), "expr"],
                Meta {
                    label: ctx.opt(&base, "label", &f.label),
                    description: ctx.opt(&base, "description", &f.description),
                    owner: ctx.opt(&base, "owner", &f.owner),
                    tags: ctx.tags(&base, &f.tags),
                    ..Meta::default()
                },
            ),
        };
        match ctx.expr(&expr_path, &expr_text) {
            Ok(expr) => defs.dimensions.push(DimensionDef {
                name: Spanned::new(name.clone(), ctx.key_span(&base)),
                expr,
                meta,
                span: ctx.key_span(&base),
            }),
            Err(d) => diags.push(d),
        }
    }

    for (name, m) in parsed.metrics {
        let base = ["metrics", name.as_str()];
        let format = match &m.format {
            None => None,
            Some(f) => {
                let span = ctx.value_span(&[&base[..], &["format"]].concat(), f);
                let (head, arg) = match f.split_once('(') {
                    Some((h, rest)) => (h.trim(), Some(rest.trim_end_matches(')').trim())),
                    None => (f.trim(), None),
                };
                match Format::parse(head, arg) {
                    Some(fmt) => Some(Spanned::new(fmt, span)),
                    None => {
                        diags.push(syntax::bad_format(span, head));
                        None
                    }
                }
            }
        };
        let good = match ctx.opt(&base, "good", &m.good) {
            None => None,
            Some(g) => match syntax::parse_direction(&g) {
                Ok(d) => Some(Spanned::new(d, g.span)),
                Err(d) => {
                    diags.push(d);
                    None
                }
            },
        };
        let meta = Meta {
            label: ctx.opt(&base, "label", &m.label),
            description: ctx.opt(&base, "description", &m.description),
            owner: ctx.opt(&base, "owner", &m.owner),
            tags: ctx.tags(&base, &m.tags),
            unit: ctx.opt(&base, "unit", &m.unit),
            format,
            good,
        };
        match ctx.expr(&[&base[..], &["expr"]].concat(), &m.expr) {
            Ok(expr) => defs.metrics.push(MetricDef {
                name: Spanned::new(name.clone(), ctx.key_span(&base)),
                expr,
                meta,
                span: ctx.key_span(&base),
            }),
            Err(d) => diags.push(d),
        }
    }

    for (t, i) in parsed.targets.iter().zip(&parsed.target_index) {
        let idx = i.to_string();
        match target(&ctx, &["targets", idx.as_str()], t) {
            Ok(t) => defs.targets.push(t),
            Err(d) => diags.push(d),
        }
    }
    for (name, a) in &parsed.alerts {
        match alert(&ctx, name, a) {
            Ok(a) => defs.alerts.push(a),
            Err(d) => diags.push(d),
        }
    }
    for (name, r) in &parsed.reports {
        let base = ["reports", name.as_str()];
        let at = |key: &str| ctx.key_span(&[&base[..], &[key]].concat());
        let value = |key: &str, v: &String| Spanned::new(v.clone(), ctx.value_span(&[&base[..], &[key]].concat(), v));
        let by = match &r.by {
            YamlNames::None => Vec::new(),
            YamlNames::One(n) => vec![n.clone()],
            YamlNames::Many(v) => v.clone(),
        };
        defs.reports.push(crate::ast::ReportDef {
            name: Spanned::new(name.clone(), ctx.key_span(&base)),
            title: r.title.as_ref().map(|t| value("title", t)),
            description: r.description.as_ref().map(|t| value("description", t)),
            grain: r.grain.as_ref().map(|g| value("grain", g)),
            range: r.range.as_ref().map(|g| value("range", g)),
            metrics: r
                .metrics
                .iter()
                .map(|m| Spanned::new(m.clone(), at("metrics")))
                .collect(),
            by: by.into_iter().map(|b| Spanned::new(b, at("by"))).collect(),
            span: ctx.key_span(&base),
        });
    }
    (defs, diags)
}

/// The top-level keys of a definition file.
const SECTIONS: &[&str] = &["sources", "dimensions", "metrics", "targets", "alerts", "reports"];

/// Reads a file section by section and entry by entry, so that every entry with an unknown
/// key or a wrong type is reported, not only the first of the file.
fn read(file: FileId, text: &str, loc: &Locator, diags: &mut Vec<Diagnostic>) -> Option<YamlFile> {
    let value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            diags.push(yaml_error(file, text, &e));
            return None;
        }
    };
    let mut out = YamlFile {
        sources: IndexMap::new(),
        dimensions: IndexMap::new(),
        metrics: IndexMap::new(),
        targets: Vec::new(),
        target_index: Vec::new(),
        alerts: IndexMap::new(),
        reports: IndexMap::new(),
    };
    let at = |path: &[&str]| match loc.get(path) {
        Some(e) => Span::new(file, e.key_start, e.key_end),
        None => Span::new(file, 0, 0),
    };
    let Some(map) = value.as_mapping() else {
        diags.push(
            Diagnostic::error("E0204", "a definition file is a mapping of sections")
                .at(Span::new(file, 0, 0), "not a mapping")
                .note(format!("sections: {}", SECTIONS.join(", "))),
        );
        return None;
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            diags.push(Diagnostic::error("E0204", "section names are words").at(Span::new(file, 0, 0), "here"));
            continue;
        };
        match key {
            "sources" => out.sources = entries(file, loc, "sources", v, diags),
            "metrics" => out.metrics = entries(file, loc, "metrics", v, diags),
            "dimensions" => {
                let raw: IndexMap<String, serde_yaml::Value> = entries(file, loc, "dimensions", v, diags);
                for (name, d) in raw {
                    let parsed = match d {
                        serde_yaml::Value::String(e) => Ok(YamlDimension::Expr(e)),
                        other => serde_yaml::from_value(other).map(YamlDimension::Full),
                    };
                    match parsed {
                        Ok(d) => {
                            out.dimensions.insert(name, d);
                        }
                        Err(e) => diags.push(entry_error(file, loc, &["dimensions", name.as_str()], &e)),
                    }
                }
            }
            "targets" => match v {
                serde_yaml::Value::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match serde_yaml::from_value::<YamlTarget>(item.clone()) {
                            Ok(t) => {
                                out.targets.push(t);
                                out.target_index.push(i);
                            }
                            Err(e) => diags.push(entry_error(file, loc, &["targets", &i.to_string()], &e)),
                        }
                    }
                }
                serde_yaml::Value::Null => {}
                _ => diags.push(
                    Diagnostic::error("E0204", "`targets` is a list of targets").at(at(&["targets"]), "not a list"),
                ),
            },
            "alerts" => out.alerts = entries(file, loc, "alerts", v, diags),
            "reports" => out.reports = entries(file, loc, "reports", v, diags),
            other => diags.push(
                Diagnostic::error("E0203", format!("unknown key `{other}`"))
                    .at(at(&[other]), "unknown keys are errors")
                    .suggest(other, SECTIONS.iter().copied())
                    .note(format!("keys here: {}", SECTIONS.join(", "))),
            ),
        }
    }
    Some(out)
}

/// The entries of a section (`name: definition`), each read alone.
fn entries<T: serde::de::DeserializeOwned>(
    file: FileId,
    loc: &Locator,
    section: &str,
    value: &serde_yaml::Value,
    diags: &mut Vec<Diagnostic>,
) -> IndexMap<String, T> {
    let mut out = IndexMap::new();
    if value.is_null() {
        return out;
    }
    let Some(map) = value.as_mapping() else {
        let span = loc
            .get(&[section])
            .map(|e| Span::new(file, e.key_start, e.key_end))
            .unwrap_or(Span::new(file, 0, 0));
        diags.push(
            Diagnostic::error("E0204", format!("`{section}` is a mapping of names to definitions"))
                .at(span, "not a mapping"),
        );
        return out;
    };
    for (k, v) in map {
        let name = match k {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                diags.push(
                    Diagnostic::error("E0204", format!("names in `{section}` are words"))
                        .at(Span::new(file, 0, 0), "here"),
                );
                continue;
            }
        };
        match serde_yaml::from_value::<T>(v.clone()) {
            Ok(t) => {
                out.insert(name, t);
            }
            Err(e) => diags.push(entry_error(file, loc, &[section, name.as_str()], &e)),
        }
    }
    out
}

/// An entry that does not fit its type: an unknown key (pointed at), or a wrong value.
fn entry_error(file: FileId, loc: &Locator, path: &[&str], e: &serde_yaml::Error) -> Diagnostic {
    let reason = e.to_string();
    let span_of = |p: &[&str]| loc.get(p).map(|e| Span::new(file, e.key_start, e.key_end));
    let entry = span_of(path).unwrap_or(Span::new(file, 0, 0));
    if let Some(unknown) = between(&reason, "unknown field `", "`") {
        let expected: Vec<String> = reason
            .split("expected ")
            .nth(1)
            .map(|s| {
                s.split(',')
                    .map(|w| w.trim().trim_start_matches("one of ").trim_matches('`').to_string())
                    .collect()
            })
            .unwrap_or_default();
        let key_path: Vec<&str> = path.iter().copied().chain([unknown]).collect();
        let mut d = Diagnostic::error("E0203", format!("unknown key `{unknown}`"))
            .at(span_of(&key_path).unwrap_or(entry), "unknown keys are errors")
            .suggest(unknown, expected.iter().map(|s| s.as_str()));
        if !expected.is_empty() {
            d = d.note(format!("keys here: {}", expected.join(", ")));
        }
        return d;
    }
    Diagnostic::error("E0204", format!("invalid `{}`: {reason}", path.join("."))).at(entry, "does not fit")
}

/// An alert entry as the same AST the DSL gives; `when` is read with the DSL's grammar
/// where it stands in the file.
fn alert(ctx: &Ctx, name: &str, a: &YamlAlert) -> Result<AlertDef, Diagnostic> {
    let base = ["alerts", name];
    fn path<'a>(base: &[&'a str; 2], key: &'a str) -> [&'a str; 3] {
        [base[0], base[1], key]
    }
    let path = |key: &'static str| path(&base, key);
    let (condition, inline_for) = match ctx.loc.get(&path("when")) {
        Some(e) => {
            let (start, raw) = scalar_text(ctx.text, e.value_start, &a.when);
            syntax::parse_condition(ctx.file, raw.unwrap_or(&a.when), start)?
        }
        None => syntax::parse_condition(ctx.file, &a.when, 0)?,
    };
    let periods = |key: &'static str, text: &String| {
        let span = ctx.value_span(&path(key), text);
        let mut words = text.split_whitespace();
        let amount = words.next().and_then(|n| n.parse::<f64>().ok());
        match (amount, words.next(), words.next()) {
            (Some(n), Some(unit), None) => Ok(Spanned::new((n, unit.to_string()), span)),
            _ => Err(
                Diagnostic::error("E0206", format!("`{text}` is not a number of periods"))
                    .at(span, "expected e.g. `3 days`"),
            ),
        }
    };
    let for_periods = match &a.for_periods {
        Some(text) => Some(periods("for", text)?),
        None => inline_for,
    };
    let keep = match &a.keep {
        Some(text) => Some(periods("keep", text)?),
        None => None,
    };
    let volume = match &a.volume {
        Some(text) => {
            let span = ctx.value_span(&path("volume"), text);
            match text.split_once(">=").map(|(m, n)| (m.trim(), n.trim().parse::<f64>())) {
                Some((m, Ok(n))) if !m.is_empty() => Some((Spanned::new(m.to_string(), span), Spanned::new(n, span))),
                _ => {
                    return Err(Diagnostic::error("E0206", format!("`{text}` is not a minimum volume"))
                        .at(span, "expected e.g. `enquiries >= 30`"));
                }
            }
        }
        None => None,
    };
    let names = match &a.by {
        YamlNames::None => Vec::new(),
        YamlNames::One(n) => vec![n.clone()],
        YamlNames::Many(v) => v.clone(),
    };
    let by_span = ctx.key_span(&path("by"));
    Ok(AlertDef {
        name: Spanned::new(name.to_string(), ctx.key_span(&base)),
        condition: Some(condition),
        for_periods,
        per: a
            .per
            .as_ref()
            .map(|p| Spanned::new(p.clone(), ctx.value_span(&path("per"), p))),
        by: names.into_iter().map(|n| Spanned::new(n, by_span)).collect(),
        severity: a
            .severity
            .as_ref()
            .map(|v| Spanned::new(v.clone(), ctx.value_span(&path("severity"), v))),
        message: a
            .message
            .as_ref()
            .map(|m| Spanned::new(m.clone(), ctx.value_span(&path("message"), m))),
        keep,
        volume,
        webhook: a
            .webhook
            .as_ref()
            .map(|w| Spanned::new(w.clone(), ctx.value_span(&path("webhook"), w))),
        span: ctx.key_span(&base),
    })
}

/// A target entry as the same AST the DSL gives.
fn target(ctx: &Ctx, base: &[&str], t: &YamlTarget) -> Result<TargetDef, Diagnostic> {
    let at = |key: &str| ctx.key_span(&[base, &[key]].concat());
    let entry = ctx.key_span(base);
    let amount = |key: &str, a: &YamlAmount| -> Result<Amount, Diagnostic> {
        match a {
            YamlAmount::Number(v) => Ok(Amount {
                value: *v,
                percent: false,
            }),
            YamlAmount::Text(text) => match text.trim().strip_suffix('%').map(|n| n.trim().parse::<f64>()) {
                Some(Ok(v)) => Ok(Amount {
                    value: v / 100.0,
                    percent: true,
                }),
                _ => Err(
                    Diagnostic::error("E0204", format!("`{text}` is not a number or a percent"))
                        .at(at(key), "expected e.g. 120000 or 25%"),
                ),
            },
        }
    };
    let level = |key: &str, l: &YamlLevel| -> Result<LevelDef, Diagnostic> {
        let span = at(key);
        let kind = match l {
            YamlLevel::Amount(a) => LevelKind::Constant(amount(key, a)?),
            YamlLevel::File { file } => LevelKind::File(Spanned::new(file.clone(), span)),
            YamlLevel::Schedule(entries) => {
                let mut out = Vec::new();
                for (period, a) in entries {
                    let pspan = ctx.key_span(&[base, &[key, period.as_str()]].concat());
                    let date = date_value(period, pspan, false)?;
                    out.push((Spanned::new(date, pspan), amount(key, a)?));
                }
                LevelKind::Schedule(out)
            }
        };
        Ok(LevelDef { kind, span })
    };
    let mut goals = Vec::new();
    if let Some(l) = &t.at_least {
        goals.push(GoalDef::AtLeast(level("at_least", l)?));
    }
    if let Some(l) = &t.at_most {
        goals.push(GoalDef::AtMost(level("at_most", l)?));
    }
    if let Some([lo, hi]) = &t.between {
        let span = at("between");
        let lv = |a| -> Result<LevelDef, Diagnostic> {
            Ok(LevelDef {
                kind: LevelKind::Constant(amount("between", a)?),
                span,
            })
        };
        goals.push(GoalDef::Between(lv(lo)?, lv(hi)?));
    }
    if let Some(l) = &t.reach {
        goals.push(GoalDef::Reach(level("reach", l)?));
    }
    if goals.len() != 1 {
        return Err(Diagnostic::error(
            "E0205",
            "a target has one of `at_least`, `at_most`, `between` and `reach`",
        )
        .at(
            entry,
            if goals.is_empty() {
                "no level"
            } else {
                "more than one level"
            },
        ));
    }
    let date = |key: &str, d: &Option<YamlDate>, end: bool| -> Result<Option<Spanned<NaiveDate>>, Diagnostic> {
        let Some(d) = d else { return Ok(None) };
        let text = match d {
            YamlDate::Text(t) => t.clone(),
            YamlDate::Number(n) => n.to_string(),
        };
        let span = ctx.value_span(&[base, &[key]].concat(), &text);
        Ok(Some(Spanned::new(date_value(&text, span, end)?, span)))
    };
    Ok(TargetDef {
        metric: Spanned::new(
            t.metric.clone(),
            ctx.value_span(&[base, &["metric"]].concat(), &t.metric),
        ),
        goal: goals.pop().expect("one goal"),
        per: t
            .per
            .as_ref()
            .map(|p| Spanned::new(p.clone(), ctx.value_span(&[base, &["per"]].concat(), p))),
        from: date("from", &t.from, false)?,
        by: date("by", &t.by, true)?,
        tolerance: match &t.tolerance {
            Some(a) => Some(Spanned::new(amount("tolerance", a)?, at("tolerance"))),
            None => None,
        },
        span: entry,
    })
}

/// `2026-01-31`, or `2026-01`: its first day (its last when `end`).
fn date_value(text: &str, span: Span, end: bool) -> Result<NaiveDate, Diagnostic> {
    crate::time::parse_day(text, end).ok_or_else(|| {
        Diagnostic::error("E0109", format!("`{text}` is not a valid date")).at(span, "expected YYYY-MM-DD or YYYY-MM")
    })
}

struct Ctx<'a> {
    file: FileId,
    text: &'a str,
    loc: &'a Locator,
}

impl Ctx<'_> {
    fn key_span(&self, path: &[&str]) -> Span {
        match self.loc.get(path) {
            Some(e) => Span::new(self.file, e.key_start, e.key_end),
            None => Span::new(self.file, 0, 0),
        }
    }

    /// The span of a scalar value; falls back to its key.
    fn value_span(&self, path: &[&str], value: &str) -> Span {
        match self.loc.get(path) {
            Some(e) => {
                let (start, _) = scalar_text(self.text, e.value_start, value);
                Span::new(self.file, start, start + value.len())
            }
            None => self.key_span(path),
        }
    }

    fn opt(&self, base: &[&str], key: &str, value: &Option<String>) -> Option<Spanned<String>> {
        let path = [base, &[key]].concat();
        value
            .as_ref()
            .map(|v| Spanned::new(v.clone(), self.value_span(&path, v)))
    }

    fn tags(&self, base: &[&str], tags: &[String]) -> Vec<Spanned<String>> {
        let span = self.key_span(&[base, &["tags"]].concat());
        tags.iter().map(|t| Spanned::new(t.clone(), span)).collect()
    }

    /// Parses an expression value where it stands in the YAML text.
    fn expr(&self, path: &[&str], value: &str) -> Result<crate::ast::Expr, Diagnostic> {
        match self.loc.get(path) {
            Some(e) => {
                let (start, raw) = scalar_text(self.text, e.value_start, value);
                syntax::parse_expr(self.file, raw.unwrap_or(value), start)
            }
            None => syntax::parse_expr(self.file, value, 0),
        }
    }
}

/// Where a scalar's text starts, and the raw text when it can be parsed in place (the
/// expression grammar ignores whitespace, so a block scalar can be read with its indentation).
fn scalar_text<'t>(text: &'t str, value_start: usize, value: &str) -> (usize, Option<&'t str>) {
    let rest = &text[value_start..];
    if rest.starts_with('|') || rest.starts_with('>') {
        let Some(nl) = rest.find('\n') else {
            return (value_start, None);
        };
        let body_start = value_start + nl + 1;
        let first_line = &text[body_start..];
        let indent = first_line.len() - first_line.trim_start_matches(' ').len();
        let mut end = body_start;
        for line in text[body_start..].split_inclusive('\n') {
            let ind = line.len() - line.trim_start_matches(' ').len();
            if !line.trim().is_empty() && ind < indent {
                break;
            }
            end += line.len();
        }
        return (body_start + indent, Some(&text[body_start + indent..end]));
    }
    if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let inner = &rest[1..];
        let raw = &inner[..inner.len().min(value.len())];
        let ok = raw == value && inner[value.len()..].starts_with(q);
        return (value_start + 1, ok.then_some(raw));
    }
    let line_end = rest.find('\n').unwrap_or(rest.len());
    let raw = &rest[..line_end];
    if raw.trim_end().starts_with(value) || raw.trim_end() == value {
        (value_start, Some(&rest[..value.len()]))
    } else {
        (value_start, None)
    }
}

fn yaml_error(file: FileId, text: &str, e: &serde_yaml::Error) -> Diagnostic {
    let msg = e.to_string();
    let (offset, line_text) = match e.location() {
        Some(l) => {
            let line = text.lines().nth(l.line().saturating_sub(1)).unwrap_or("");
            (crate::span::offset_of(text, l.line(), l.column()), line)
        }
        // Aliases that expand past the limit carry no place: the first alias is where.
        None if msg.contains("repetition limit") => (first_alias(text).unwrap_or(0), ""),
        None => (0, ""),
    };
    // serde_yaml prefixes the path and suffixes the location; keep the reason.
    let reason = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let word_end = text[offset..]
        .find([':', '\n'])
        .map(|i| offset + i)
        .unwrap_or(text.len())
        .max(offset + 1)
        .min(text.len());
    let mut d = Diagnostic::error("E0201", format!("invalid YAML: {reason}"))
        .at(Span::new(file, offset, word_end.max(offset)), "here");
    if line_text.contains('\t') || reason.contains("tab") {
        d.code = "E0202";
        d = d.note("YAML is indented with spaces; this line has a tab");
    }
    d
}

/// The offset of the first alias (`*name` where a value starts) in a YAML text.
fn first_alias(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut in_comment = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' => in_comment = false,
            b'#' => in_comment = true,
            b'*' if !in_comment => {
                let before = if i == 0 { b' ' } else { bytes[i - 1] };
                let named = bytes
                    .get(i + 1)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
                if named && matches!(before, b' ' | b'[' | b',' | b'\n' | b'-' | b':') {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

/// Byte offsets of keys in a block-style YAML document, by key path.
pub struct Locator {
    entries: HashMap<String, Entry>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    key_start: usize,
    key_end: usize,
    value_start: usize,
}

impl Locator {
    pub fn new(text: &str) -> Locator {
        let mut entries = HashMap::new();
        // The open keys: (indent, path element, whether it is a list item).
        let mut stack: Vec<(usize, String, bool)> = Vec::new();
        let mut counters: HashMap<String, usize> = HashMap::new();
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let content = line.trim_end_matches(['\n', '\r']);
            let trimmed = content.trim_start_matches(' ');
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                continue;
            }
            let mut indent = content.len() - trimmed.len();
            let mut body = trimmed;
            if let Some(rest) = body.strip_prefix("- ").or((body == "-").then_some("")) {
                // A list item closes deeper keys and the previous item at its indent.
                while stack
                    .last()
                    .is_some_and(|(i, _, item)| *i > indent || (*i == indent && *item))
                {
                    stack.pop();
                }
                let parent = path_of(&stack);
                let n = counters.entry(parent.clone()).or_insert(0);
                let idx = n.to_string();
                *n += 1;
                entries.insert(
                    join(&parent, &idx),
                    Entry {
                        key_start: start + indent,
                        key_end: start + indent + 1,
                        value_start: start + indent + 2,
                    },
                );
                stack.push((indent, idx, true));
                let inner = rest.trim_start_matches(' ');
                indent += 2 + (rest.len() - inner.len());
                body = inner;
            }
            let Some(colon) = key_colon(body) else { continue };
            let key = body[..colon].trim().trim_matches('"').trim_matches('\'');
            while stack.last().is_some_and(|(i, _, _)| *i >= indent) {
                stack.pop();
            }
            let parent = path_of(&stack);
            let after = &body[colon + 1..];
            let value_start = start + indent + colon + 1 + (after.len() - after.trim_start().len());
            entries.insert(
                join(&parent, key),
                Entry {
                    key_start: start + indent,
                    key_end: start + indent + key.len(),
                    value_start,
                },
            );
            stack.push((indent, key.to_string(), false));
        }
        Locator { entries }
    }

    pub(crate) fn get(&self, path: &[&str]) -> Option<Entry> {
        self.entries.get(&path.join("\u{1}")).copied()
    }
}

fn path_of(stack: &[(usize, String, bool)]) -> String {
    stack
        .iter()
        .map(|(_, k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join("\u{1}")
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}\u{1}{key}")
    }
}

/// The offset of the `:` that ends a mapping key on this line, if the line has one.
fn key_colon(body: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') if i == 0 => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ':') => {
                let next = body[i + 1..].chars().next();
                if next.is_none() || next == Some(' ') {
                    return Some(i);
                }
            }
            (None, '#' | '[' | '{') => return None,
            _ => {}
        }
    }
    None
}
