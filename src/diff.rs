//! What a change of definitions does: the definitions added, removed or changed (in meaning,
//! or in metadata only), and for every metric whose numbers may move, its values under both
//! versions on the same data, with the targets and alerts whose status changes.
//!
//! Meaning is compared on canonical text ([`crate::fmt::normalize`]) and on names, never on
//! positions or ids, so whitespace, comments and the order of definitions are not changes.

use crate::alerts::AlertResult;
use crate::diagnostic::Diagnostic;
use crate::model::{Condition, Formula, Metric, MetricId, Model};
use crate::plan::Query;
use crate::settings::Settings;
use crate::span::Files;
use crate::targets::TargetResult;
use crate::time::Grain;
use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One version of a project, resolved.
pub struct Side<'a> {
    /// How the version is named to people (a git revision or a folder).
    pub name: String,
    pub ctx: &'a SessionContext,
    pub model: &'a Model,
    pub files: &'a Files,
    pub settings: &'a Settings,
}

/// Which numbers are compared.
#[derive(Debug, Clone)]
pub struct Options {
    pub grain: Grain,
    /// Dimension names.
    pub dimensions: Vec<String>,
    pub from: Option<NaiveDate>,
    /// The day targets and alerts are evaluated as of; no later row is read.
    pub as_of: NaiveDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Setting,
    Source,
    Dimension,
    Metric,
    Target,
    Alert,
    Report,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Setting => "setting",
            Kind::Source => "source",
            Kind::Dimension => "dimension",
            Kind::Metric => "metric",
            Kind::Target => "target",
            Kind::Alert => "alert",
            Kind::Report => "report",
        }
    }
}

/// How a definition changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added {
        after: String,
    },
    Removed {
        before: String,
    },
    /// What it computes or checks changed.
    Meaning {
        before: String,
        after: String,
    },
    /// Only its label, description, owner, tags, unit, format or message changed.
    Metadata {
        fields: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionChange {
    pub kind: Kind,
    pub name: String,
    pub change: Change,
}

/// One period and breakdown value of a metric under both versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueChange {
    pub period: NaiveDate,
    /// The breakdown: each dimension and its value; none for the total.
    pub dimensions: Vec<(String, Option<String>)>,
    pub before: Option<f64>,
    pub after: Option<f64>,
}

impl ValueChange {
    pub fn changed(&self) -> bool {
        match (self.before, self.after) {
            (Some(a), Some(b)) => a != b && !(a.is_nan() && b.is_nan()),
            (a, b) => a.is_some() != b.is_some(),
        }
    }

    /// How far the value moved, in percent of the old value: infinite when a value appears,
    /// disappears, or moves away from 0.
    pub fn moved_percent(&self) -> f64 {
        if !self.changed() {
            return 0.0;
        }
        match (self.before, self.after) {
            (Some(a), Some(b)) if a != 0.0 => ((b - a) / a).abs() * 100.0,
            _ => f64::INFINITY,
        }
    }
}

/// A metric whose numbers may move, and its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricNumbers {
    pub metric: String,
    /// Why it may move: its own definition, or what it depends on.
    pub because: Vec<String>,
    pub format: crate::ast::Format,
    pub values: Vec<ValueChange>,
}

/// A target or alert whose status differs between the versions.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub kind: Kind,
    /// The target (`metric` and its level) or the alert (and its breakdown values).
    pub name: String,
    pub period: NaiveDate,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    pub base: String,
    pub head: String,
    pub options_grain: Grain,
    /// The breakdowns compared (an empty one is the total).
    pub breakdowns: Vec<Vec<String>>,
    pub as_of: NaiveDate,
    pub definitions: Vec<DefinitionChange>,
    pub metrics: Vec<MetricNumbers>,
    pub statuses: Vec<StatusChange>,
    /// Why targets or alerts were not compared.
    pub unevaluated: Vec<String>,
}

impl Diff {
    /// Values that moved more than `percent` percent.
    pub fn moved_over(&self, percent: f64) -> usize {
        self.metrics
            .iter()
            .flat_map(|m| &m.values)
            .filter(|v| v.moved_percent() > percent)
            .count()
    }
}

/// Compares two versions of a project on the same data.
pub async fn diff(base: &Side<'_>, head: &Side<'_>, options: &Options) -> Result<Diff, Diagnostic> {
    let before = fingerprints(base.model, base.settings);
    let after = fingerprints(head.model, head.settings);
    let mut definitions = Vec::new();
    for key in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        let change = match (before.get(key), after.get(key)) {
            (Some(b), None) => Change::Removed {
                before: b.meaning.clone(),
            },
            (None, Some(a)) => Change::Added {
                after: a.meaning.clone(),
            },
            (Some(b), Some(a)) if b.meaning != a.meaning => Change::Meaning {
                before: b.meaning.clone(),
                after: a.meaning.clone(),
            },
            (Some(b), Some(a)) if b.metadata != a.metadata => Change::Metadata {
                fields: b
                    .metadata
                    .iter()
                    .zip(&a.metadata)
                    .filter(|(x, y)| x != y)
                    .map(|(x, _)| x.0.to_string())
                    .collect(),
            },
            _ => continue,
        };
        definitions.push(DefinitionChange {
            kind: key.0,
            name: key.1.clone(),
            change,
        });
    }
    let changed: BTreeSet<(Kind, &str)> = definitions
        .iter()
        .filter(|d| {
            matches!(
                d.change,
                Change::Meaning { .. } | Change::Removed { .. } | Change::Added { .. }
            )
        })
        .map(|d| (d.kind, d.name.as_str()))
        .collect();

    // Every metric of both versions whose numbers may move, and why.
    let mut affected: Vec<(MetricId, MetricId, Vec<String>)> = Vec::new();
    for (hid, m) in head.model.metrics.iter().enumerate() {
        let Some(bid) = base.model.metric(&m.name) else {
            continue;
        };
        let mut because: BTreeSet<String> = BTreeSet::new();
        for side in [base.model, head.model] {
            let Some(id) = side.metric(&m.name) else { continue };
            for name in reached_metrics(side, id) {
                if changed.contains(&(Kind::Metric, name.as_str())) {
                    because.insert(if name == m.name {
                        "its definition".to_string()
                    } else {
                        format!("metric `{name}`")
                    });
                }
            }
            for s in read_sources(side, id) {
                let source = &side.sources[s];
                if changed.contains(&(Kind::Source, source.name.as_str())) {
                    because.insert(format!("source `{}`", source.name));
                }
                for d in &side.dimensions {
                    let used = options.dimensions.contains(&d.name) || d.source == s;
                    if used && changed.contains(&(Kind::Dimension, d.name.as_str())) {
                        because.insert(format!("dimension `{}`", d.name));
                    }
                }
            }
        }
        for d in &definitions {
            if d.kind == Kind::Setting {
                because.insert(format!("setting `{}`", d.name));
            }
        }
        if !because.is_empty() {
            affected.push((bid, hid, because.into_iter().collect()));
        }
    }

    // Totals, and each breakdown: the one asked for, or else every dimension a report shows
    // the metric by.
    let mut breakdowns: Vec<(Vec<String>, Vec<usize>)> = vec![(Vec::new(), (0..affected.len()).collect())];
    if !options.dimensions.is_empty() {
        breakdowns.push((options.dimensions.clone(), (0..affected.len()).collect()));
    } else {
        let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for r in &head.model.reports {
            for &d in &r.dimensions {
                let name = &head.model.dimensions[d].name;
                if base.model.dimension(name).is_none() {
                    continue;
                }
                for (i, a) in affected.iter().enumerate() {
                    let list = by.entry(name.clone()).or_default();
                    if r.metrics.contains(&a.1) && !list.contains(&i) {
                        list.push(i);
                    }
                }
            }
        }
        breakdowns.extend(
            by.into_iter()
                .filter(|(_, ms)| !ms.is_empty())
                .map(|(d, ms)| (vec![d], ms)),
        );
    }
    let mut rows: Vec<Rows> = vec![BTreeMap::new(); affected.len()];
    for (dims, which) in &breakdowns {
        if which.is_empty() {
            continue;
        }
        let before = numbers(base, which.iter().map(|&i| affected[i].0).collect(), dims, options).await?;
        let after = numbers(head, which.iter().map(|&i| affected[i].1).collect(), dims, options).await?;
        for (table, side) in [(&before, 0), (&after, 1)] {
            for r in &table.rows {
                let Some(p) = r.period else { continue };
                let key: Vec<(String, Option<String>)> =
                    dims.iter().cloned().zip(r.dimensions.iter().cloned()).collect();
                for (col, &i) in which.iter().enumerate() {
                    let entry = rows[i].entry((p, key.clone())).or_default();
                    if side == 0 {
                        entry.0 = r.values[col];
                    } else {
                        entry.1 = r.values[col];
                    }
                }
            }
        }
    }
    let metrics: Vec<MetricNumbers> = affected
        .into_iter()
        .zip(rows)
        .map(|((_, hid, because), rows)| {
            let m: &Metric = &head.model.metrics[hid];
            MetricNumbers {
                metric: m.name.clone(),
                because,
                format: m.format.clone(),
                values: rows
                    .into_iter()
                    .map(|((period, dimensions), (before, after))| ValueChange {
                        period,
                        dimensions,
                        before,
                        after,
                    })
                    .collect(),
            }
        })
        .collect();

    // Targets and alerts: a version whose targets or alerts cannot be evaluated as of the
    // day (a deadline before the data, say) does not stop the comparison of the numbers.
    let mut statuses = Vec::new();
    let mut unevaluated = Vec::new();
    let targets = (
        crate::targets::evaluate(base.ctx, base.model, base.files, base.settings, options.as_of).await,
        crate::targets::evaluate(head.ctx, head.model, head.files, head.settings, options.as_of).await,
    );
    match targets {
        (Ok(b), Ok(h)) => statuses.extend(target_changes(&b, base.model, &h, head.model)),
        (Err(e), _) | (_, Err(e)) => unevaluated.push(format!("targets: {}", e.message)),
    }
    let alerts = (
        crate::alerts::evaluate(base.ctx, base.model, base.files, base.settings, options.as_of).await,
        crate::alerts::evaluate(head.ctx, head.model, head.files, head.settings, options.as_of).await,
    );
    match alerts {
        (Ok(b), Ok(h)) => statuses.extend(alert_changes(&b, &h)),
        (Err(e), _) | (_, Err(e)) => unevaluated.push(format!("alerts: {}", e.message)),
    }
    Ok(Diff {
        base: base.name.clone(),
        head: head.name.clone(),
        options_grain: options.grain,
        breakdowns: breakdowns
            .into_iter()
            .filter(|b| !b.1.is_empty())
            .map(|b| b.0)
            .collect(),
        as_of: options.as_of,
        definitions,
        metrics,
        statuses,
        unevaluated,
    })
}

/// A period and breakdown value.
type RowKey = (NaiveDate, Vec<(String, Option<String>)>);

/// A metric's values before and after, by period and breakdown value.
type Rows = BTreeMap<RowKey, (Option<f64>, Option<f64>)>;

/// What a definition means, and its metadata, as comparable text.
struct Fingerprint {
    meaning: String,
    metadata: Vec<(&'static str, String)>,
}

fn fingerprints(model: &Model, settings: &Settings) -> BTreeMap<(Kind, String), Fingerprint> {
    use crate::fmt::normalize;
    let mut out = BTreeMap::new();
    let calendar = [
        (
            "time_zone",
            settings.time_zone.map(|t| t.name().to_string()).unwrap_or("UTC".into()),
        ),
        ("week_start", format!("{:?}", settings.week_start).to_lowercase()),
        ("fiscal_year_start", settings.fiscal_year_start.to_string()),
    ];
    for (name, value) in calendar {
        out.insert(
            (Kind::Setting, name.to_string()),
            Fingerprint {
                meaning: value,
                metadata: Vec::new(),
            },
        );
    }
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    for s in &model.sources {
        let joins: Vec<String> = s
            .joins
            .iter()
            .map(|j| {
                format!(
                    "join {} on {} = {}",
                    model.sources[j.target].name, j.column, j.target_column
                )
            })
            .collect();
        let mut meaning = format!("file: \"{}\"", s.data.display);
        if let Some(t) = &s.time {
            meaning.push_str(&format!(" time: {}", t.name));
        }
        if let Some(k) = &s.key {
            meaning.push_str(&format!(" key: {k}"));
        }
        for j in joins {
            meaning.push(' ');
            meaning.push_str(&j);
        }
        out.insert(
            (Kind::Source, s.name.clone()),
            Fingerprint {
                meaning,
                metadata: vec![("label", opt(&s.label)), ("description", opt(&s.description))],
            },
        );
    }
    for d in &model.dimensions {
        out.insert(
            (Kind::Dimension, d.name.clone()),
            Fingerprint {
                meaning: normalize(&d.text),
                metadata: vec![("label", opt(&d.label)), ("description", opt(&d.description))],
            },
        );
    }
    for m in &model.metrics {
        out.insert(
            (Kind::Metric, m.name.clone()),
            Fingerprint {
                meaning: normalize(&m.text),
                metadata: vec![
                    ("label", opt(&m.label)),
                    ("description", opt(&m.description)),
                    ("owner", opt(&m.owner)),
                    ("tags", m.tags.join(",")),
                    ("unit", opt(&m.unit)),
                    ("format", format!("{:?}", m.format)),
                    ("good", format!("{:?}", m.good)),
                ],
            },
        );
    }
    for (name, t) in target_names(model) {
        out.insert(
            (Kind::Target, name),
            Fingerprint {
                meaning: normalize(&model.targets[t].text),
                metadata: Vec::new(),
            },
        );
    }
    for a in &model.alerts {
        out.insert(
            (Kind::Alert, a.name.clone()),
            Fingerprint {
                meaning: alert_meaning(model, a),
                metadata: vec![("message", opt(&a.message)), ("webhook", opt(&a.webhook))],
            },
        );
    }
    for r in &model.reports {
        let names = |ids: &mut dyn Iterator<Item = String>| ids.collect::<Vec<_>>().join(", ");
        out.insert(
            (Kind::Report, r.name.clone()),
            Fingerprint {
                meaning: format!(
                    "grain: {} range: {} metrics: [{}] by: [{}]",
                    r.grain.name(),
                    r.range.as_deref().unwrap_or("all"),
                    names(&mut r.metrics.iter().map(|&m| model.metrics[m].name.clone())),
                    names(&mut r.dimensions.iter().map(|&d| model.dimensions[d].name.clone())),
                ),
                metadata: vec![("title", opt(&r.title)), ("description", opt(&r.description))],
            },
        );
    }
    out
}

/// Targets are named by their metric, numbered when a metric has more than one.
fn target_names(model: &Model) -> Vec<(String, usize)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, t) in model.targets.iter().enumerate() {
        let metric = model.metrics[t.metric].name.as_str();
        let n = seen.entry(metric).or_default();
        *n += 1;
        out.push((
            if *n == 1 {
                metric.to_string()
            } else {
                format!("{metric} #{n}")
            },
            i,
        ));
    }
    out
}

fn alert_meaning(model: &Model, a: &crate::model::Alert) -> String {
    let metric = |id: MetricId| model.metrics[id].name.as_str();
    let condition = match &a.condition {
        Condition::Threshold { metric: m, levels } => {
            let levels: Vec<String> = levels
                .iter()
                .map(|(op, v, s)| format!("{op:?} {v} {}", s.name()))
                .collect();
            format!("{} {}", metric(*m), levels.join(", "))
        }
        Condition::Change {
            metric: m,
            year,
            op,
            value,
            relative,
        } => format!(
            "change of {} vs {} {op:?} {value}{}",
            metric(*m),
            if *year { "last year" } else { "previous" },
            if *relative { " relative" } else { "" }
        ),
        Condition::Anomaly {
            metric: m,
            mad,
            threshold,
            window,
            weekday,
        } => format!(
            "anomaly of {} {} > {threshold} over {window}{}",
            metric(*m),
            if *mad { "mad" } else { "zscore" },
            if *weekday { " by weekday" } else { "" }
        ),
        Condition::OffTarget { metric: m, pace, .. } => {
            format!("{} off {}", metric(*m), if *pace { "pace" } else { "target" })
        }
        Condition::Stale { source, seconds } => {
            format!("source {} older than {seconds} s", model.sources[*source].name)
        }
        Condition::Empty { source } => format!("source {} empty", model.sources[*source].name),
    };
    let dims: Vec<&str> = a
        .dimensions
        .iter()
        .map(|&d| model.dimensions[d].name.as_str())
        .collect();
    let volume = a
        .volume
        .map(|(m, v)| format!(" volume {} >= {v}", metric(m)))
        .unwrap_or_default();
    format!(
        "when {condition} per {} for {} keep {} severity {}{volume}{}",
        a.grain.name(),
        a.periods,
        a.keep,
        a.severity.name(),
        if dims.is_empty() {
            String::new()
        } else {
            format!(" by {}", dims.join(", "))
        }
    )
}

/// The names of the metrics a metric reaches, itself included.
fn reached_metrics(model: &Model, id: MetricId) -> BTreeSet<String> {
    fn walk(model: &Model, f: &Formula, out: &mut BTreeSet<String>) {
        match f {
            Formula::Metric(id) => {
                if out.insert(model.metrics[*id].name.clone()) {
                    walk(model, &model.metrics[*id].formula, out);
                }
            }
            Formula::Measure(_) | Formula::Number(_) => {}
            Formula::Neg(a) | Formula::Window(_, a) | Formula::Offset(_, a) | Formula::Share(a) => walk(model, a, out),
            Formula::Binary(_, a, b) => {
                walk(model, a, out);
                walk(model, b, out);
            }
        }
    }
    let mut out = BTreeSet::from([model.metrics[id].name.clone()]);
    walk(model, &model.metrics[id].formula, &mut out);
    out
}

/// The sources a metric reads, and every source they reach by joins.
fn read_sources(model: &Model, id: MetricId) -> BTreeSet<usize> {
    let mut out: BTreeSet<usize> = BTreeSet::new();
    let mut todo = model.sources_of(id);
    while let Some(s) = todo.pop() {
        if out.insert(s) {
            todo.extend(model.sources[s].joins.iter().map(|j| j.target));
        }
    }
    out
}

async fn numbers(
    side: &Side<'_>,
    metrics: Vec<MetricId>,
    dimensions: &[String],
    options: &Options,
) -> Result<crate::run::ResultTable, Diagnostic> {
    let dimensions = dimensions
        .iter()
        .map(|d| {
            side.model.dimension(d).ok_or_else(|| {
                Diagnostic::usage("E0953", format!("dimension `{d}` is not defined in {}", side.name))
                    .suggest(d, side.model.dimensions.iter().map(|x| x.name.as_str()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query = Query {
        metrics,
        grain: Some(options.grain),
        dimensions,
        from: options.from,
        to: Some(options.as_of),
        ..Query::default()
    };
    crate::run::query(side.ctx, side.model, side.files, side.settings, query).await
}

fn target_changes(before: &[TargetResult], base: &Model, after: &[TargetResult], head: &Model) -> Vec<StatusChange> {
    let named = |results: &[TargetResult], model: &Model| -> BTreeMap<(String, NaiveDate), String> {
        let names: BTreeMap<usize, String> = target_names(model).into_iter().map(|(n, i)| (i, n)).collect();
        results
            .iter()
            .map(|r| ((names[&r.target].clone(), r.period), r.status.name().to_string()))
            .collect()
    };
    changes(Kind::Target, named(before, base), named(after, head))
}

fn alert_changes(before: &[AlertResult], after: &[AlertResult]) -> Vec<StatusChange> {
    let named = |results: &[AlertResult]| -> BTreeMap<(String, NaiveDate), String> {
        results
            .iter()
            .map(|r| {
                let status = r
                    .firing
                    .map(|s| format!("firing ({})", s.name()))
                    .unwrap_or("ok".into());
                ((r.key(), r.period), status)
            })
            .collect()
    };
    changes(Kind::Alert, named(before), named(after))
}

fn changes(
    kind: Kind,
    before: BTreeMap<(String, NaiveDate), String>,
    after: BTreeMap<(String, NaiveDate), String>,
) -> Vec<StatusChange> {
    let keys: BTreeSet<&(String, NaiveDate)> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| StatusChange {
            kind,
            name: k.0.clone(),
            period: k.1,
            before: before.get(k).cloned(),
            after: after.get(k).cloned(),
        })
        .collect()
}

/// The rows of a metric's table shown in markdown; the JSON form has them all.
const SHOWN_ROWS: usize = 20;

/// A pull-request comment: what changed, and what it does to the numbers.
pub fn markdown(d: &Diff, fail_over: Option<f64>) -> String {
    let mut out = format!("## tally diff `{}` → `{}`\n\n", d.base, d.head);
    if d.definitions.is_empty() {
        out.push_str("No definition changed in meaning or metadata.\n");
    } else {
        let count = |f: &dyn Fn(&Change) -> bool| d.definitions.iter().filter(|c| f(&c.change)).count();
        out.push_str(&format!(
            "{} added, {} removed, {} changed in meaning, {} in metadata only.\n\n",
            count(&|c| matches!(c, Change::Added { .. })),
            count(&|c| matches!(c, Change::Removed { .. })),
            count(&|c| matches!(c, Change::Meaning { .. })),
            count(&|c| matches!(c, Change::Metadata { .. })),
        ));
        out.push_str("| | definition | change |\n|---|---|---|\n");
        for c in &d.definitions {
            let (sign, what) = match &c.change {
                Change::Added { after } => ("+", format!("added: {}", code(after))),
                Change::Removed { before } => ("−", format!("removed: {}", code(before))),
                Change::Meaning { before, after } => ("~", format!("{} → {}", code(before), code(after))),
                Change::Metadata { fields } => ("·", format!("metadata: {}", fields.join(", "))),
            };
            out.push_str(&format!(
                "| {sign} | {} `{}` | {what} |\n",
                c.kind.name(),
                cell(&c.name)
            ));
        }
    }
    let shown: Vec<String> = d
        .breakdowns
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| b.join(" × "))
        .collect();
    let by = if shown.is_empty() {
        String::new()
    } else {
        format!("; totals and by {}", shown.join(", by "))
    };
    out.push_str(&format!(
        "\n### Numbers (by {}{by}, as of {}, same data)\n\n",
        d.options_grain.name(),
        d.as_of
    ));
    if d.metrics.is_empty() {
        out.push_str("No metric's numbers can move.\n");
    }
    let same: Vec<String> = d
        .metrics
        .iter()
        .filter(|m| !m.values.iter().any(ValueChange::changed))
        .map(|m| format!("`{}`", m.metric))
        .collect();
    for m in &d.metrics {
        let moved: Vec<&ValueChange> = m.values.iter().filter(|v| v.changed()).collect();
        if moved.is_empty() {
            continue;
        }
        out.push_str(&format!("#### `{}` ({})\n\n", m.metric, m.because.join(", ")));
        let largest = moved
            .iter()
            .copied()
            .max_by(|a, b| a.moved_percent().total_cmp(&b.moved_percent()))
            .map(|v| v.moved_percent() * sign(v))
            .unwrap_or(0.0);
        out.push_str(&format!(
            "{} of {} values change; the largest move is {}.\n\n",
            moved.len(),
            m.values.len(),
            percent(largest)
        ));
        let broken = m.values.iter().any(|v| !v.dimensions.is_empty());
        out.push_str(if broken { "| period | breakdown |" } else { "| period |" });
        out.push_str(" before | after | change | change % |\n|---|");
        if broken {
            out.push_str("---|");
        }
        out.push_str("---:|---:|---:|---:|\n");
        for v in moved.iter().take(SHOWN_ROWS) {
            out.push_str(&format!("| {} |", v.period));
            if broken {
                let text = match &v.dimensions[..] {
                    [] => "total".to_string(),
                    dims => dims
                        .iter()
                        .map(|(d, x)| format!("{d}: {}", x.as_deref().unwrap_or("(none)")))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                out.push_str(&format!(" {} |", crate::output::markdown_cell(&text)));
            }
            out.push_str(&format!(
                " {} | {} | {} | {} |\n",
                crate::output::format_value(v.before, &m.format),
                crate::output::format_value(v.after, &m.format),
                change(v, &m.format),
                percent(v.moved_percent() * sign(v))
            ));
        }
        if moved.len() > SHOWN_ROWS {
            out.push_str(&format!(
                "\n… and {} more (`--format json` has them all).\n",
                moved.len() - SHOWN_ROWS
            ));
        }
        out.push('\n');
    }
    if !same.is_empty() {
        out.push_str(&format!(
            "Every value the same: {} (they depend on a changed definition).\n\n",
            same.join(", ")
        ));
    }
    for why in &d.unevaluated {
        out.push_str(&format!("Not compared: {}\n\n", crate::output::markdown_cell(why)));
    }
    if !d.statuses.is_empty() {
        out.push_str("### Targets and alerts whose status changes\n\n| | name | period | before | after |\n|---|---|---|---|---|\n");
        for s in &d.statuses {
            out.push_str(&format!(
                "| {} | `{}` | {} | {} | {} |\n",
                s.kind.name(),
                cell(&s.name),
                s.period,
                s.before.as_deref().unwrap_or("—"),
                s.after.as_deref().unwrap_or("—")
            ));
        }
        out.push('\n');
    }
    if let Some(limit) = fail_over {
        let n = d.moved_over(limit);
        if n > 0 {
            out.push_str(&format!(
                "**{n} value{} move{} more than {limit}%.**\n",
                if n == 1 { "" } else { "s" },
                if n == 1 { "s" } else { "" }
            ));
        }
    }
    out
}

/// The absolute change, signed; in percentage points for percents.
fn change(v: &ValueChange, format: &crate::ast::Format) -> String {
    let (Some(a), Some(b)) = (v.before, v.after) else {
        return String::new();
    };
    let delta = b - a;
    match format {
        crate::ast::Format::Percent => format!("{:+.1} pp", delta * 100.0),
        f => {
            let text = crate::output::format_value(Some(delta), f);
            if delta > 0.0 { format!("+{text}") } else { text }
        }
    }
}

fn sign(v: &ValueChange) -> f64 {
    match (v.before, v.after) {
        (Some(a), Some(b)) if b < a => -1.0,
        _ => 1.0,
    }
}

fn percent(p: f64) -> String {
    if p.is_infinite() {
        "—".into()
    } else {
        format!("{p:+.1}%")
    }
}

/// Text inside a code span of a table cell (where Markdown and HTML are shown as written):
/// pipes and line breaks would still break the table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Text as inline code in a cell (a backtick inside takes a longer fence).
fn code(text: &str) -> String {
    let text = cell(text);
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

pub fn json(d: &Diff) -> Value {
    let value = |v: Option<f64>| v.filter(|x| x.is_finite()).map(Value::from).unwrap_or(Value::Null);
    json!({
        "base": d.base,
        "head": d.head,
        "grain": d.options_grain.name(),
        "breakdowns": d.breakdowns,
        "as_of": d.as_of.to_string(),
        "definitions": d.definitions.iter().map(|c| {
            let mut o = json!({"kind": c.kind.name(), "name": c.name});
            match &c.change {
                Change::Added { after } => { o["change"] = "added".into(); o["after"] = after.clone().into(); }
                Change::Removed { before } => { o["change"] = "removed".into(); o["before"] = before.clone().into(); }
                Change::Meaning { before, after } => {
                    o["change"] = "meaning".into();
                    o["before"] = before.clone().into();
                    o["after"] = after.clone().into();
                }
                Change::Metadata { fields } => { o["change"] = "metadata".into(); o["fields"] = json!(fields); }
            }
            o
        }).collect::<Vec<_>>(),
        "metrics": d.metrics.iter().map(|m| json!({
            "metric": m.metric,
            "because": m.because,
            "values": m.values.iter().map(|v| {
                let pct = v.moved_percent() * sign(v);
                json!({
                    "period": v.period.to_string(),
                    "dimensions": v.dimensions.iter().cloned().collect::<BTreeMap<_, _>>(),
                    "before": value(v.before),
                    "after": value(v.after),
                    "change": match (v.before, v.after) { (Some(a), Some(b)) => value(Some(b - a)), _ => Value::Null },
                    "change_pct": if v.changed() { value(Some(pct)) } else { json!(0.0) },
                    "changed": v.changed(),
                })
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "not_compared": d.unevaluated,
        "statuses": d.statuses.iter().map(|s| json!({
            "kind": s.kind.name(),
            "name": s.name,
            "period": s.period.to_string(),
            "before": s.before,
            "after": s.after,
        })).collect::<Vec<_>>(),
    })
}

/// Writes the definitions of a project as they were at a git revision into `dest`: its
/// `tally.yaml` and every `.tally`, `.yaml` and `.yml` file under it, at the same paths.
pub fn checkout(project: &Path, rev: &str, dest: &Path) -> Result<(), Diagnostic> {
    let git = |args: &[&str], dir: &Path| -> Result<Vec<u8>, String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    let not_found = |why: String| {
        Diagnostic::usage(
            "E0954",
            format!("`{rev}` is neither a folder nor a git revision of the project"),
        )
        .note(why)
    };
    // A revision is never an option of git's.
    if rev.starts_with('-') {
        return Err(not_found("a revision does not start with `-`".to_string()));
    }
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).trim().to_string();
    let top = git(&["rev-parse", "--show-toplevel"], project)
        .map(text)
        .map_err(not_found)?;
    let prefix = git(&["rev-parse", "--show-prefix"], project)
        .map(text)
        .map_err(not_found)?;
    let commit = format!("{rev}^{{commit}}");
    git(&["rev-parse", "--verify", "--quiet", &commit], project)
        .map_err(|_| not_found(format!("git knows no revision `{rev}`")))?;
    let listing = git(
        &["ls-tree", "-r", "-z", "--full-name", "--name-only", rev, "--", "."],
        project,
    )
    .map_err(not_found)?;
    for path in listing.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path).to_string();
        let Some(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        let wanted = Path::new(rel)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "tally" | "yaml" | "yml"));
        if !wanted {
            continue;
        }
        let bytes = git(&["cat-file", "blob", &format!("{rev}:{path}")], Path::new(&top)).map_err(not_found)?;
        let target = dest.join(rel);
        let write = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&target, bytes));
        write.map_err(|e| Diagnostic::data("E0955", format!("cannot write `{}`: {e}", target.display())))?;
    }
    Ok(())
}
