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

/// Dimension names and values.
pub type Dimensions = Vec<(String, Option<String>)>;

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
    /// The range an anomaly alert expected (from the metric's own history).
    pub expected: Option<(f64, f64)>,
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
    evaluate_some(ctx, model, files, settings, as_of, None).await
}

/// Every alert (or only one) at the period of `as_of`.
async fn evaluate_some(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    as_of: NaiveDate,
    only: Option<usize>,
) -> Result<Vec<AlertResult>, Diagnostic> {
    let calendar = settings.calendar();
    let mut targets = None;
    let mut out = Vec::new();
    for (i, alert) in model.alerts.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let result = |dimensions, period, firing, value, level, earlier| AlertResult {
            alert: i,
            name: alert.name.clone(),
            dimensions,
            period,
            firing,
            value,
            level,
            earlier,
            expected: None,
            message: String::new(),
        };
        match &alert.condition {
            Condition::OffTarget { target, pace: true, .. } => {
                if targets.is_none() {
                    targets = Some(crate::targets::evaluate(ctx, model, files, settings, as_of).await?);
                }
                let now = targets.as_ref().and_then(|ts| ts.iter().find(|r| r.target == *target));
                let off = now.is_some_and(|r| matches!(r.status, Status::Missed | Status::OffPace));
                out.push(result(
                    Vec::new(),
                    as_of,
                    off.then_some(alert.severity),
                    now.and_then(|r| r.value),
                    now.and_then(|r| r.level),
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
                    as_of,
                    fires.then_some(alert.severity),
                    age.map(|a| a as f64 / 86_400.0),
                    Some(*seconds as f64 / 86_400.0),
                    None,
                ));
            }
            Condition::Empty { source } => {
                let (first, last) = window(&calendar, alert, last_complete(&calendar, alert, as_of), alert.periods);
                let (rows, _) = crate::run::activity(ctx, model, settings, *source, Some(first), Some(last)).await?;
                let period = calendar.period_start(last, alert.grain);
                out.push(result(
                    Vec::new(),
                    period,
                    (rows == 0).then_some(alert.severity),
                    Some(rows as f64),
                    None,
                    None,
                ));
            }
            _ => {
                let period = last_complete(&calendar, alert, as_of);
                let (first, last) = window(&calendar, alert, period, history(alert));
                for s in series(ctx, model, files, settings, alert, first, last).await? {
                    let raw: Vec<_> = (0..s.periods.len()).map(|i| raw_at(model, alert, &s, i)).collect();
                    let settled = settle(alert, &raw.iter().map(|r| r.map(|x| x.0)).collect::<Vec<_>>());
                    let Some(at) = s.periods.iter().position(|&p| p == period) else {
                        continue;
                    };
                    let level = raw[at].and_then(|r| r.1).or_else(|| default_level(alert));
                    let mut r = result(s.dims.clone(), period, settled[at], s.value[at], level, s.earlier[at]);
                    if let Condition::Anomaly {
                        mad,
                        threshold,
                        window,
                        weekday,
                        ..
                    } = alert.condition
                    {
                        r.expected = expected(&s, at, window, weekday, mad)
                            .map(|(c, spread)| (c - threshold * spread, c + threshold * spread));
                    }
                    out.push(r);
                }
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

/// How each alert would have behaved over a range of days, evaluated at the end of every
/// period in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backtest {
    pub alert: usize,
    pub name: String,
    pub dimensions: Vec<(String, Option<String>)>,
    /// Periods evaluated, and those it fired in.
    pub periods: usize,
    pub firing: usize,
    /// Runs of firing periods.
    pub episodes: usize,
    /// The average length of an episode, in periods.
    pub average_length: Option<f64>,
    /// Episodes that began within two periods of the end of the one before.
    pub flaps: usize,
    /// The periods it fired in.
    pub fired: Vec<NaiveDate>,
}

/// Replays every alert over the periods from `from` to `to` (complete periods only, and
/// freshness, pace and emptiness at the end of each day or period), as if run at each.
pub async fn backtest(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<Backtest>, Diagnostic> {
    let calendar = settings.calendar();
    let mut out = Vec::new();
    for (i, alert) in model.alerts.iter().enumerate() {
        let start = calendar.period_start(from, alert.grain);
        let end = last_complete(&calendar, alert, to);
        if end < start {
            continue;
        }
        // Per breakdown value: whether it fires at each period.
        let mut states: Vec<(Dimensions, Vec<(NaiveDate, bool)>)> = Vec::new();
        match &alert.condition {
            Condition::Threshold { .. }
            | Condition::Change { .. }
            | Condition::Anomaly { .. }
            | Condition::OffTarget { pace: false, .. } => {
                let (first, last) = window(
                    &calendar,
                    alert,
                    end,
                    history(alert) + calendar.periods(start, end, alert.grain).len() as u32,
                );
                for s in series(ctx, model, files, settings, alert, first, last).await? {
                    let raw: Vec<_> = (0..s.periods.len())
                        .map(|i| raw_at(model, alert, &s, i).map(|x| x.0))
                        .collect();
                    let settled = settle(alert, &raw);
                    let run = s
                        .periods
                        .iter()
                        .zip(&settled)
                        .filter(|(p, _)| **p >= start && **p <= end)
                        .map(|(p, f)| (*p, f.is_some()))
                        .collect();
                    states.push((s.dims.clone(), run));
                }
            }
            _ => {
                // Freshness, pace and emptiness depend on the day: evaluated at the end of each period.
                let mut run = Vec::new();
                for p in calendar.periods(start, end, alert.grain) {
                    let day = calendar.next(p, alert.grain) - Days::new(1);
                    let r = Box::pin(evaluate_some(ctx, model, files, settings, day, Some(i))).await?;
                    run.push((p, r.first().is_some_and(|r| r.firing.is_some())));
                }
                states.push((Vec::new(), run));
            }
        }
        for (dims, run) in states {
            let fired: Vec<NaiveDate> = run.iter().filter(|x| x.1).map(|x| x.0).collect();
            let mut episodes = Vec::new();
            let mut current = 0usize;
            let mut last_end: Option<usize> = None;
            let mut flaps = 0;
            for (idx, (_, on)) in run.iter().enumerate() {
                if *on {
                    if current == 0 && last_end.is_some_and(|e| idx - e <= 2) {
                        flaps += 1;
                    }
                    current += 1;
                } else if current > 0 {
                    episodes.push(current);
                    current = 0;
                    last_end = Some(idx);
                }
            }
            if current > 0 {
                episodes.push(current);
            }
            out.push(Backtest {
                alert: i,
                name: alert.name.clone(),
                dimensions: dims,
                periods: run.len(),
                firing: fired.len(),
                episodes: episodes.len(),
                average_length: (!episodes.is_empty())
                    .then(|| episodes.iter().sum::<usize>() as f64 / episodes.len() as f64),
                flaps,
                fired,
            });
        }
    }
    Ok(out)
}

/// The last complete period on or before a day: a period under way would compare half a
/// month with whole ones.
fn last_complete(calendar: &crate::time::Calendar, alert: &Alert, as_of: NaiveDate) -> NaiveDate {
    let period = calendar.period_start(as_of, alert.grain);
    if calendar.next(period, alert.grain) - Days::new(1) > as_of {
        calendar.period_start(period - Days::new(1), alert.grain)
    } else {
        period
    }
}

/// The first and last day of `count` periods ending with the period `period`.
fn window(calendar: &crate::time::Calendar, alert: &Alert, period: NaiveDate, count: u32) -> (NaiveDate, NaiveDate) {
    let mut first = period;
    for _ in 1..count.max(1) {
        first = calendar.period_start(first - Days::new(1), alert.grain);
    }
    (first, calendar.next(period, alert.grain) - Days::new(1))
}

/// How many periods an evaluation reads: `for`, `keep` and an anomaly's window before it.
fn history(alert: &Alert) -> u32 {
    let window = match alert.condition {
        Condition::Anomaly { window, weekday, .. } => window * if weekday { 7 } else { 1 },
        _ => 0,
    };
    alert.periods + alert.keep + window
}

/// One breakdown value's series of an alert's metric, oldest period first.
struct Series {
    dims: Vec<(String, Option<String>)>,
    periods: Vec<NaiveDate>,
    value: Vec<Option<f64>>,
    /// The earlier value of a change alert.
    earlier: Vec<Option<f64>>,
    /// The change (absolute or relative) of a change alert.
    change: Vec<Option<f64>>,
    /// The volume metric, when the alert has one.
    volume: Vec<Option<f64>>,
}

async fn series(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    alert: &Alert,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<Series>, Diagnostic> {
    let (metric, compare, relative) = match &alert.condition {
        Condition::Threshold { metric, .. }
        | Condition::Anomaly { metric, .. }
        | Condition::OffTarget { metric, .. } => (*metric, None, false),
        Condition::Change {
            metric, year, relative, ..
        } => (
            *metric,
            Some(if *year { Compare::Year } else { Compare::Previous }),
            *relative,
        ),
        _ => unreachable!("metric alerts only"),
    };
    let mut metrics = vec![metric];
    if let Some((v, _)) = alert.volume {
        metrics.push(v);
    }
    // Periods before the first row of data are not evaluated: they have no data, not zeros.
    let sources = model.sources_of(metric);
    let from = match crate::run::data_range(ctx, model, settings, &sources).await? {
        Some((first, _)) => from.max(settings.calendar().period_start(first, alert.grain)),
        None => from,
    };
    let query = Query {
        metrics,
        grain: Some(alert.grain),
        dimensions: alert.dimensions.clone(),
        from: Some(from),
        to: Some(to),
        compare,
        ..Query::default()
    };
    let table = crate::run::query(ctx, model, files, settings, query).await?;
    // Columns: the metric (and with --compare: earlier, change, relative change), then the
    // volume (and its comparisons).
    let volume_col = alert.volume.map(|_| if compare.is_some() { 4 } else { 1 });
    let mut by_dims: BTreeMap<Vec<Option<String>>, Series> = BTreeMap::new();
    for r in &table.rows {
        let s = by_dims.entry(r.dimensions.clone()).or_insert_with(|| Series {
            dims: table.dimensions.iter().cloned().zip(r.dimensions.clone()).collect(),
            periods: Vec::new(),
            value: Vec::new(),
            earlier: Vec::new(),
            change: Vec::new(),
            volume: Vec::new(),
        });
        s.periods.push(r.period.expect("a period"));
        s.value.push(r.values[0]);
        let column = |c: usize| compare.and_then(|_| r.values.get(c).copied().flatten());
        s.earlier.push(column(1));
        s.change.push(column(if relative { 3 } else { 2 }));
        s.volume.push(volume_col.and_then(|c| r.values[c]));
    }
    Ok(by_dims.into_values().collect())
}

/// The condition at one period, before `for` and `keep`: the severity it holds at, and the
/// level it crossed.
fn raw_at(model: &Model, alert: &Alert, s: &Series, i: usize) -> Option<(AlertSeverity, Option<f64>)> {
    if let Some((_, minimum)) = alert.volume
        && s.volume[i].is_none_or(|v| v < minimum)
    {
        return None;
    }
    match &alert.condition {
        Condition::Threshold { levels, .. } => {
            let v = s.value[i]?;
            levels
                .iter()
                .find(|(op, level, _)| holds(*op, v, *level))
                .map(|(_, level, sev)| (*sev, Some(*level)))
        }
        Condition::Change { op, value, .. } => {
            let c = s.change[i]?;
            holds(*op, c, *value).then_some((alert.severity, Some(*value)))
        }
        Condition::Anomaly {
            mad,
            threshold,
            window,
            weekday,
            ..
        } => {
            let v = s.value[i]?;
            let (center, spread) = expected(s, i, *window, *weekday, *mad)?;
            ((v - center).abs() > threshold * spread).then_some((alert.severity, None))
        }
        Condition::OffTarget { target, .. } => {
            let t = &model.targets[*target];
            let p = s.periods[i];
            let high = t.high.as_ref().and_then(|h| h.at(p));
            (crate::targets::status(t, s.value[i], t.level.at(p), high) == Status::Missed)
                .then_some((alert.severity, t.level.at(p)))
        }
        _ => None,
    }
}

/// The level to show when an alert does not fire: its least severe level.
fn default_level(alert: &Alert) -> Option<f64> {
    match &alert.condition {
        Condition::Threshold { levels, .. } => levels.last().map(|l| l.1),
        Condition::Change { value, .. } => Some(*value),
        _ => None,
    }
}

/// The center and spread of the `window` periods before `i` (every 7th day with `weekday`):
/// mean and standard deviation, or median and 1.4826 times the median absolute deviation.
/// `None` with fewer than 3 values or no spread.
fn expected(s: &Series, i: usize, window: u32, weekday: bool, mad: bool) -> Option<(f64, f64)> {
    let step = if weekday { 7 } else { 1 };
    let history: Vec<f64> = (1..=window as usize)
        .filter_map(|k| i.checked_sub(k * step))
        .filter_map(|j| s.value[j])
        .collect();
    if history.len() < 3 {
        return None;
    }
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        let n = xs.len();
        if n % 2 == 1 {
            xs[n / 2]
        } else {
            (xs[n / 2 - 1] + xs[n / 2]) / 2.0
        }
    };
    let (center, spread) = if mad {
        let m = median(&mut history.clone());
        let mut dev: Vec<f64> = history.iter().map(|x| (x - m).abs()).collect();
        (m, 1.4826 * median(&mut dev))
    } else {
        let n = history.len() as f64;
        let mean = history.iter().sum::<f64>() / n;
        let var = history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    };
    (spread > 0.0).then_some((center, spread))
}

/// `for N` (fires only after N periods in a row, at the least severity among them) and
/// `keep K` (once firing, fires until the condition has been false K periods in a row).
fn settle(alert: &Alert, raw: &[Option<AlertSeverity>]) -> Vec<Option<AlertSeverity>> {
    let n = alert.periods.max(1) as usize;
    let mut out = Vec::with_capacity(raw.len());
    let mut quiet = 0usize;
    let mut last: Option<AlertSeverity> = None;
    for i in 0..raw.len() {
        let held = if i + 1 >= n {
            raw[i + 1 - n..=i]
                .iter()
                .try_fold(AlertSeverity::Critical, |acc, r| r.map(|s| acc.min(s)))
        } else {
            None
        };
        let state = match held {
            Some(s) => {
                quiet = 0;
                Some(s)
            }
            None => {
                quiet += 1;
                match last {
                    Some(s) if quiet < alert.keep as usize => Some(s),
                    _ => None,
                }
            }
        };
        last = state;
        out.push(state);
    }
    out
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
        | Condition::OffTarget { metric, .. }
        | Condition::Anomaly { metric, .. } => (model.metrics[*metric].name.clone(), String::new()),
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
            Condition::Anomaly { .. } => match r.expected {
                Some((lo, hi)) => format!(
                    "{subject} is {}, outside the expected {} to {}",
                    show(r.value),
                    show(Some(lo)),
                    show(Some(hi))
                ),
                None => format!("{subject} is {}", show(r.value)),
            },
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
    let expected = r
        .expected
        .map(|(lo, hi)| format!("{} to {}", show(Some(lo)), show(Some(hi))))
        .unwrap_or_default();
    vars.insert("expected".into(), text(expected));
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

/// Since when each alert fires, kept between runs; and notifications not delivered yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub alerts: BTreeMap<String, Firing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Notification>,
}

/// A change of state to post to a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub url: String,
    pub body: serde_json::Value,
}

/// The notifications of a run: every new and resolved alert with a webhook (its own, or the
/// project's).
pub fn notifications(
    model: &Model,
    project_webhook: Option<&str>,
    results: &[AlertResult],
    changes: &[(String, Transition, NaiveDate)],
    as_of: NaiveDate,
) -> Vec<Notification> {
    let mut out = Vec::new();
    for (key, t, since) in changes {
        if *t == Transition::Still {
            continue;
        }
        let result = results.iter().find(|r| r.key() == *key);
        let name = key.split('|').next().unwrap_or(key);
        let Some(alert) = model.alerts.iter().find(|a| a.name == name) else {
            continue;
        };
        let Some(url) = alert.webhook.as_deref().or(project_webhook) else {
            continue;
        };
        let dims: serde_json::Map<String, serde_json::Value> = result
            .map(|r| {
                r.dimensions
                    .iter()
                    .map(|(d, v)| (d.clone(), serde_json::json!(v)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Notification {
            url: url.to_string(),
            body: serde_json::json!({
                "alert": name,
                "key": key,
                "state": t.name(),
                "since": since.to_string(),
                "as_of": as_of.to_string(),
                "severity": result.and_then(|r| r.firing).map(|s| s.name()),
                "period": result.map(|r| r.period.to_string()),
                "dimensions": dims,
                "value": result.and_then(|r| r.value),
                "level": result.and_then(|r| r.level),
                "message": result.map(|r| r.message.clone()).unwrap_or_default(),
            }),
        });
    }
    out
}

/// How many notifications are posted at once.
const DELIVERIES_AT_ONCE: usize = 4;

/// Posts notifications (JSON), up to [`DELIVERIES_AT_ONCE`] at a time, each with up to three
/// attempts of at most 10 s, all within one `deadline`; returns those that were not
/// delivered, with why (those the deadline left unsent too).
pub fn deliver(notes: Vec<Notification>, deadline: std::time::Duration) -> Vec<(Notification, String)> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    let end = Instant::now() + deadline;
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; notes.len()]);
    let late = || {
        format!(
            "not delivered within the delivery deadline of {} s",
            deadline.as_secs_f64()
        )
    };
    let post = |n: &Notification| -> Option<String> {
        let body = serde_json::to_vec(&n.body).unwrap_or_default();
        let mut error = late();
        for attempt in 0..3u32 {
            if attempt > 0 {
                let pause = Duration::from_millis(200 * 4u64.pow(attempt - 1));
                if Instant::now() + pause >= end {
                    break;
                }
                std::thread::sleep(pause);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let request = agent
                .post(&n.url)
                .config()
                .timeout_global(Some(left.min(Duration::from_secs(10))))
                .build();
            match request.header("Content-Type", "application/json").send(&body[..]) {
                Ok(_) => return None,
                Err(e) if Instant::now() >= end => error = format!("{e}; {}", late()),
                Err(e) => error = e.to_string(),
            }
        }
        Some(error)
    };
    std::thread::scope(|scope| {
        for _ in 0..DELIVERIES_AT_ONCE.min(notes.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(n) = notes.get(i) else { break };
                    let outcome = match Instant::now() < end {
                        true => post(n),
                        false => Some(late()),
                    };
                    outcomes.lock().unwrap_or_else(|e| e.into_inner())[i] = outcome;
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    notes
        .into_iter()
        .zip(outcomes)
        .filter_map(|(n, why)| Some((n, why?)))
        .collect()
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

/// Reads the state file; a missing or corrupt one is a fresh state, with a warning.
pub fn load_state(path: &Path) -> (AlertState, Option<Diagnostic>) {
    load_state_shown(path, &path.display().to_string())
}

/// [`load_state`], naming the file as `shown` in warnings.
pub fn load_state_shown(path: &Path, shown: &str) -> (AlertState, Option<Diagnostic>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let d = Diagnostic::data(
                "W0804",
                format!("no alert state at {shown} yet; starting afresh (every firing alert is new)"),
            )
            .warning();
            return (AlertState::default(), Some(d));
        }
        Err(e) => {
            let d = Diagnostic::data(
                "W0802",
                format!("cannot read the alert state {shown}: {e}; starting afresh"),
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
                format!("the alert state {shown} is not readable ({e}); starting afresh"),
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
