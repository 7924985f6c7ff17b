//! Alerts: every alert evaluated at the period of an as-of day (for every value of its
//! dimensions), and the state kept between runs (since when each alert fires).

use crate::ast::{BinOp, Format};
use crate::diagnostic::Diagnostic;
use crate::model::{Alert, AlertSeverity, Condition, Model};
use crate::plan::{Compare, Query};
use crate::settings::Settings;
use crate::span::Files;
use crate::targets::Status;
use chrono::{Days, NaiveDate, TimeZone};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One alert (and one value of its dimensions) at the as-of period.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertResult {
    /// The alert's index in the model.
    pub alert: usize,
    pub name: String,
    pub dimensions: Vec<(String, Option<String>)>,
    /// The as-of period's first day.
    pub period: NaiveDate,
    /// `None`: not firing.
    pub firing: Option<AlertSeverity>,
    /// The metric's value (a change for change alerts; days since the last row for
    /// freshness; rows for emptiness).
    pub value: Option<f64>,
    /// The level it was compared with.
    pub level: Option<f64>,
    /// The earlier value of a change alert.
    pub earlier: Option<f64>,
    /// What fired, for people (empty when the alert does not fire).
    pub message: String,
}

impl AlertResult {
    /// Identifies the alert and its dimension values across runs.
    pub fn key(&self) -> String {
        let mut k = self.name.clone();
        for (d, v) in &self.dimensions {
            k.push_str(&format!("|{d}={}", v.as_deref().unwrap_or("(none)")));
        }
        k
    }
}

fn holds(op: BinOp, v: f64, level: f64) -> bool {
    match op {
        BinOp::Lt => v < level,
        BinOp::Le => v <= level,
        BinOp::Gt => v > level,
        _ => v >= level,
    }
}

/// Every alert at the period of `as_of`.
pub async fn evaluate(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    as_of: NaiveDate,
) -> Result<Vec<AlertResult>, Diagnostic> {
    let calendar = settings.calendar();
    let mut targets = None;
    let mut out = Vec::new();
    for (i, alert) in model.alerts.iter().enumerate() {
        // The last complete period: a period still under way would compare half a month
        // with whole ones. Freshness and pace are about the as-of day itself.
        let mut period = calendar.period_start(as_of, alert.grain);
        let end = calendar.next(period, alert.grain) - Days::new(1);
        let complete = !matches!(
            alert.condition,
            Condition::Stale { .. } | Condition::OffTarget { pace: true, .. }
        );
        if !complete {
            period = as_of;
        } else if end > as_of {
            period = calendar.period_start(period - Days::new(1), alert.grain);
        }
        let last_day = if complete {
            calendar.next(period, alert.grain) - Days::new(1)
        } else {
            as_of
        };
        let mut first = period;
        for _ in 1..alert.periods {
            first = calendar.period_start(first - Days::new(1), alert.grain);
        }
        let result = |dimensions, firing, value, level, earlier| AlertResult {
            alert: i,
            name: alert.name.clone(),
            dimensions,
            period,
            firing,
            value,
            level,
            earlier,
            message: String::new(),
        };
        match &alert.condition {
            Condition::Threshold { metric, .. } | Condition::Change { metric, .. } => {
                let year = matches!(alert.condition, Condition::Change { year: true, .. });
                let change = matches!(alert.condition, Condition::Change { .. });
                let query = Query {
                    metrics: vec![*metric],
                    grain: Some(alert.grain),
                    dimensions: alert.dimensions.clone(),
                    from: Some(first),
                    to: Some(last_day),
                    compare: change.then_some(if year { Compare::Year } else { Compare::Previous }),
                    ..Query::default()
                };
                let table = crate::run::query(ctx, model, files, settings, query).await?;
                // The values of each breakdown value, period by period.
                let mut series: BTreeMap<Vec<Option<String>>, Vec<&crate::run::ResultRow>> = BTreeMap::new();
                for r in &table.rows {
                    series.entry(r.dimensions.clone()).or_default().push(r);
                }
                if series.is_empty() && alert.dimensions.is_empty() {
                    series.insert(Vec::new(), Vec::new());
                }
                for (dims, rows) in series {
                    let named: Vec<(String, Option<String>)> = table.dimensions.iter().cloned().zip(dims).collect();
                    let last = rows.last();
                    match &alert.condition {
                        Condition::Threshold { levels, .. } => {
                            let fired = levels.iter().find(|(op, level, _)| {
                                rows.len() == alert.periods as usize
                                    && rows.iter().all(|r| r.values[0].is_some_and(|v| holds(*op, v, *level)))
                            });
                            let level = fired.or(levels.last()).map(|l| l.1);
                            out.push(result(
                                named,
                                fired.map(|l| l.2),
                                last.and_then(|r| r.values[0]),
                                level,
                                None,
                            ));
                        }
                        Condition::Change {
                            op, value, relative, ..
                        } => {
                            let col = if *relative { 3 } else { 2 };
                            let fires = rows.len() == alert.periods as usize
                                && rows
                                    .iter()
                                    .all(|r| r.values[col].is_some_and(|v| holds(*op, v, *value)));
                            out.push(result(
                                named,
                                fires.then_some(alert.severity),
                                last.and_then(|r| r.values[0]),
                                Some(*value),
                                last.and_then(|r| r.values[1]),
                            ));
                        }
                        _ => unreachable!(),
                    }
                }
            }
            Condition::OffTarget { target, pace: true, .. } => {
                if targets.is_none() {
                    targets = Some(crate::targets::evaluate(ctx, model, files, settings, as_of).await?);
                }
                let now = targets.as_ref().and_then(|ts| ts.iter().find(|r| r.target == *target));
                let off = now.is_some_and(|r| matches!(r.status, Status::Missed | Status::OffPace));
                out.push(result(
                    Vec::new(),
                    off.then_some(alert.severity),
                    now.and_then(|r| r.value),
                    now.and_then(|r| r.level),
                    None,
                ));
            }
            Condition::OffTarget { metric, target, .. } => {
                // Missed in each of the last complete periods.
                let t = &model.targets[*target];
                let query = Query {
                    metrics: vec![*metric],
                    grain: Some(t.grain),
                    from: Some(first),
                    to: Some(last_day),
                    ..Query::default()
                };
                let table = crate::run::query(ctx, model, files, settings, query).await?;
                let missed = |r: &crate::run::ResultRow| {
                    let p = r.period.expect("a period");
                    let high = t.high.as_ref().and_then(|h| h.at(p));
                    crate::targets::status(t, r.values[0], t.level.at(p), high) == Status::Missed
                };
                let off = table.rows.len() == alert.periods as usize && table.rows.iter().all(missed);
                let last = table.rows.last();
                out.push(result(
                    Vec::new(),
                    off.then_some(alert.severity),
                    last.and_then(|r| r.values[0]),
                    last.and_then(|r| t.level.at(r.period.expect("a period"))),
                    None,
                ));
            }
            Condition::Stale { source, seconds } => {
                let (_, last) = crate::run::activity(ctx, model, settings, *source, None, Some(as_of)).await?;
                // Age at the end of the as-of day, in the project's time zone.
                let end = (as_of + Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight");
                let end = match calendar.time_zone {
                    Some(tz) => tz
                        .from_local_datetime(&end)
                        .earliest()
                        .map(|d| d.naive_utc())
                        .unwrap_or(end),
                    None => end,
                };
                let age = last.map(|l| (end - l).num_seconds());
                let fires = age.is_none_or(|a| a > *seconds);
                out.push(result(
                    Vec::new(),
                    fires.then_some(alert.severity),
                    age.map(|a| a as f64 / 86_400.0),
                    Some(*seconds as f64 / 86_400.0),
                    None,
                ));
            }
            Condition::Empty { source } => {
                let (rows, _) =
                    crate::run::activity(ctx, model, settings, *source, Some(first), Some(last_day)).await?;
                out.push(result(
                    Vec::new(),
                    (rows == 0).then_some(alert.severity),
                    Some(rows as f64),
                    None,
                    None,
                ));
            }
        }
    }
    for r in &mut out {
        if r.firing.is_some() {
            r.message = message(model, &model.alerts[r.alert], r)?;
        }
    }
    Ok(out)
}

/// The format of an alert's values (its metric's, or days and rows for sources).
pub fn value_format(model: &Model, alert: &Alert) -> Format {
    match &alert.condition {
        Condition::Threshold { metric, .. }
        | Condition::Change { metric, .. }
        | Condition::OffTarget { metric, .. } => model.metrics[*metric].format.clone(),
        _ => Format::Number,
    }
}

/// The alert's message: its template rendered, or a sentence saying what fired.
fn message(model: &Model, alert: &Alert, r: &AlertResult) -> Result<String, Diagnostic> {
    let format = value_format(model, alert);
    let show = |v: Option<f64>| match v {
        Some(_) => crate::output::format_value(v, &format),
        None => "no value".to_string(),
    };
    let (subject, source) = match &alert.condition {
        Condition::Threshold { metric, .. }
        | Condition::Change { metric, .. }
        | Condition::OffTarget { metric, .. } => (model.metrics[*metric].name.clone(), String::new()),
        Condition::Stale { source, .. } | Condition::Empty { source } => {
            (model.sources[*source].name.clone(), model.sources[*source].name.clone())
        }
    };
    let change = match (r.value, r.earlier) {
        (Some(v), Some(e)) => Some(v - e),
        _ => None,
    };
    let Some(template) = &alert.message else {
        let dims: Vec<String> = r
            .dimensions
            .iter()
            .map(|(d, v)| format!("{d} {}", v.as_deref().unwrap_or("(none)")))
            .collect();
        let at = if dims.is_empty() {
            String::new()
        } else {
            format!(" ({})", dims.join(", "))
        };
        let what = match &alert.condition {
            Condition::Threshold { .. } => format!("{subject} is {}", show(r.value)),
            Condition::Change { relative, .. } => {
                let moved = match (relative, r.value, r.earlier) {
                    (true, Some(v), Some(e)) if e != 0.0 => {
                        crate::output::format_value(Some(v / e - 1.0), &Format::Percent)
                    }
                    (_, Some(_), Some(_)) => show(change),
                    _ => "unknown".into(),
                };
                format!(
                    "{subject} is {} against {} before (change {moved})",
                    show(r.value),
                    show(r.earlier)
                )
            }
            Condition::OffTarget { pace: false, .. } => {
                format!("{subject} is {} against a target of {}", show(r.value), show(r.level))
            }
            Condition::OffTarget { pace: true, .. } => {
                format!("{subject} is {} so far, off pace for {}", show(r.value), show(r.level))
            }
            Condition::Stale { .. } => match r.value {
                Some(days) => format!("the last row of {subject} is {days:.1} days old"),
                None => format!("{subject} has no rows"),
            },
            Condition::Empty { .. } => format!("{subject} has no rows"),
        };
        let when = match alert.condition {
            Condition::Stale { .. } | Condition::OffTarget { pace: true, .. } => format!("on {}", r.period),
            _ => format!("in the {} of {}", alert.grain.name(), r.period),
        };
        return Ok(format!("{}{at}: {what} {when}", alert.name));
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let mut vars: BTreeMap<String, minijinja::Value> = BTreeMap::new();
    let text = |s: String| minijinja::Value::from(s);
    vars.insert("alert".into(), text(alert.name.clone()));
    vars.insert("metric".into(), text(subject.clone()));
    vars.insert("source".into(), text(source));
    vars.insert(
        "severity".into(),
        text(r.firing.unwrap_or(alert.severity).name().to_string()),
    );
    vars.insert("period".into(), text(r.period.to_string()));
    vars.insert("value".into(), text(show(r.value)));
    vars.insert("level".into(), text(show(r.level)));
    vars.insert("target".into(), text(show(r.level)));
    vars.insert("earlier".into(), text(show(r.earlier)));
    vars.insert("change".into(), text(show(change)));
    vars.insert("periods".into(), minijinja::Value::from(alert.periods));
    let dims: BTreeMap<String, String> = r
        .dimensions
        .iter()
        .map(|(d, v)| (d.clone(), v.clone().unwrap_or_else(|| "(none)".into())))
        .collect();
    for (d, v) in &dims {
        vars.insert(d.clone(), text(v.clone()));
    }
    vars.insert("dimensions".into(), minijinja::Value::from_serialize(&dims));
    env.render_str(template, vars).map_err(|e| {
        Diagnostic::data(
            "E0805",
            format!("the message of alert `{}` cannot be written: {e}", alert.name),
        )
        .at(alert.span, "this alert")
    })
}

/// Since when each alert fires, kept between runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub alerts: BTreeMap<String, Firing>,
}

/// A firing alert in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    /// The first period it fired in, without a break.
    pub since: NaiveDate,
    pub severity: String,
}

/// How an alert changed since the last run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    New,
    Still,
    Resolved,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Transition::New => "new",
            Transition::Still => "still firing",
            Transition::Resolved => "resolved",
        }
    }
}

/// Reads the state file; a missing one is a fresh state, a corrupt one a fresh state and a
/// warning.
pub fn load_state(path: &Path) -> (AlertState, Option<Diagnostic>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (AlertState::default(), None),
        Err(e) => {
            let d = Diagnostic::data(
                "W0802",
                format!("cannot read the alert state {}: {e}; starting afresh", path.display()),
            )
            .warning();
            return (AlertState::default(), Some(d));
        }
    };
    match serde_json::from_str(&text) {
        Ok(s) => (s, None),
        Err(e) => {
            let d = Diagnostic::data(
                "W0801",
                format!(
                    "the alert state {} is not readable ({e}); starting afresh",
                    path.display()
                ),
            )
            .warning();
            (AlertState::default(), Some(d))
        }
    }
}

/// Writes the state file atomically: a temporary file in the same folder, renamed over it.
pub fn save_state(path: &Path, state: &AlertState) -> Result<(), Diagnostic> {
    let fail =
        |e: std::io::Error| Diagnostic::data("E0806", format!("cannot write the alert state {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let text = serde_json::to_string_pretty(state).unwrap_or_default() + "\n";
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// The next state, and how each alert changed: firing ones are new or still firing,
/// ones that fired before and do not now are resolved.
pub fn transition(
    previous: &AlertState,
    results: &[AlertResult],
) -> (AlertState, Vec<(String, Transition, NaiveDate)>) {
    let mut next = AlertState::default();
    let mut changes = Vec::new();
    for r in results {
        let key = r.key();
        if let Some(sev) = r.firing {
            let (since, t) = match previous.alerts.get(&key) {
                Some(f) => (f.since, Transition::Still),
                None => (r.period, Transition::New),
            };
            next.alerts.insert(
                key.clone(),
                Firing {
                    since,
                    severity: sev.name().to_string(),
                },
            );
            changes.push((key, t, since));
        }
    }
    for (key, f) in &previous.alerts {
        if !next.alerts.contains_key(key) {
            changes.push((key.clone(), Transition::Resolved, f.since));
        }
    }
    (next, changes)
}
