//! Targets: for a day, each target's level, the metric's value and a status; for a target
//! with a deadline, the attainment to date, the run-rate still needed and a linear
//! projection from the days so far.

use crate::diagnostic::Diagnostic;
use crate::model::{Model, Target, TargetDirection};
use crate::plan::Query;
use crate::settings::Settings;
use crate::span::Files;
use crate::time::Grain;
use chrono::{Days, NaiveDate};
use datafusion::prelude::SessionContext;

/// How a value stands against its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Met,
    /// Short of the level by no more than the tolerance.
    Near,
    Missed,
    /// A deadline not yet reached, projected to be met.
    OnPace,
    /// A deadline not yet reached, projected to be missed.
    OffPace,
    /// No level for this period (before `from`, or outside a schedule).
    NoLevel,
    /// The metric has no value (a ratio over nothing).
    NoValue,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Near => "near",
            Status::Missed => "missed",
            Status::OnPace => "on pace",
            Status::OffPace => "off pace",
            Status::NoLevel => "no target",
            Status::NoValue => "no value",
        }
    }
}

/// A target evaluated for one period (or, with a deadline, to one day).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetResult {
    /// The target's index in the model.
    pub target: usize,
    pub metric: String,
    pub grain: Grain,
    /// The period's first day (with a deadline: the first day counted).
    pub period: NaiveDate,
    pub value: Option<f64>,
    pub level: Option<f64>,
    /// The upper level of `between`.
    pub high: Option<f64>,
    pub status: Status,
    /// The value over the level.
    pub attainment: Option<f64>,
    pub pace: Option<Pace>,
}

/// A deadline's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Pace {
    pub deadline: NaiveDate,
    /// Days counted so far and in all, from the start to the deadline.
    pub days_elapsed: i64,
    pub days_total: i64,
    /// The value to date, going on at its rate so far to the deadline.
    pub projected: f64,
    /// Per day, from the day after as-of to the deadline, to reach the level.
    pub needed_per_day: Option<f64>,
}

/// The status of a value against a level (and the upper level of `between`).
pub fn status(target: &Target, value: Option<f64>, level: Option<f64>, high: Option<f64>) -> Status {
    let Some(level) = level else { return Status::NoLevel };
    let Some(v) = value else { return Status::NoValue };
    let band = |l: f64| l.abs() * target.tolerance;
    match target.direction {
        TargetDirection::AtLeast if v >= level => Status::Met,
        TargetDirection::AtLeast if v >= level - band(level) => Status::Near,
        TargetDirection::AtMost if v <= level => Status::Met,
        TargetDirection::AtMost if v <= level + band(level) => Status::Near,
        TargetDirection::Between => {
            let high = high.unwrap_or(level);
            if (level..=high).contains(&v) {
                Status::Met
            } else if (level - band(level)..=high + band(high)).contains(&v) {
                Status::Near
            } else {
                Status::Missed
            }
        }
        _ => Status::Missed,
    }
}

/// Every target as of a day: its period's value and status, or its deadline's progress.
pub async fn evaluate(
    ctx: &SessionContext,
    model: &Model,
    files: &Files,
    settings: &Settings,
    as_of: NaiveDate,
) -> Result<Vec<TargetResult>, Diagnostic> {
    let calendar = settings.calendar();
    let mut out = Vec::new();
    for (i, t) in model.targets.iter().enumerate() {
        let metric = model.metrics[t.metric].name.clone();
        let total = |from: NaiveDate, to: NaiveDate| Query {
            metrics: vec![t.metric],
            from: Some(from),
            to: Some(to),
            ..Query::default()
        };
        if let Some(deadline) = t.deadline {
            // A deadline before the first row of data cannot be worked towards.
            let sources = model.sources_of(t.metric);
            if let Some((first, _)) = crate::run::data_range(ctx, model, settings, &sources).await?
                && deadline < first
            {
                return Err(Diagnostic::error(
                    "E0583",
                    format!("the deadline {deadline} is before the data of `{metric}` starts ({first})"),
                )
                .at(t.span, "this target")
                .note("a deadline target adds the metric up to its deadline: give it a date the data reaches"));
            }
            let start = t.from.unwrap_or_else(|| calendar.period_start(deadline, Grain::Year));
            let level = t.level.at(start);
            let end = as_of.min(deadline);
            let value = if end < start {
                Some(0.0)
            } else {
                let table = crate::run::query(ctx, model, files, settings, total(start, end)).await?;
                table.rows.first().and_then(|r| r.values[0])
            };
            let days_total = (deadline - start).num_days() + 1;
            let days_elapsed = ((end - start).num_days() + 1).clamp(0, days_total);
            let attained = value.unwrap_or(0.0);
            let projected = if days_elapsed > 0 {
                attained / days_elapsed as f64 * days_total as f64
            } else {
                0.0
            };
            let remaining = (deadline - as_of).num_days();
            let needed_per_day = match level {
                Some(l) if remaining > 0 => Some((l - attained) / remaining as f64),
                _ => None,
            };
            let st = match level {
                None => Status::NoLevel,
                Some(_) if as_of >= deadline => status(t, value, level, None),
                Some(l) => {
                    let on = match t.direction {
                        TargetDirection::AtMost => projected <= l,
                        _ => projected >= l,
                    };
                    if on { Status::OnPace } else { Status::OffPace }
                }
            };
            out.push(TargetResult {
                target: i,
                metric,
                grain: t.grain,
                period: start,
                value,
                level,
                high: None,
                status: st,
                attainment: ratio(value, level),
                pace: Some(Pace {
                    deadline,
                    days_elapsed,
                    days_total,
                    projected,
                    needed_per_day,
                }),
            });
            continue;
        }
        let period = calendar.period_start(as_of, t.grain);
        let applies = t.from.is_none_or(|f| f <= period);
        let level = if applies { t.level.at(period) } else { None };
        let high = if applies {
            t.high.as_ref().and_then(|h| h.at(period))
        } else {
            None
        };
        let query = Query {
            metrics: vec![t.metric],
            grain: Some(t.grain),
            from: Some(period),
            to: Some(as_of.min(calendar.next(period, t.grain) - Days::new(1))),
            ..Query::default()
        };
        let table = crate::run::query(ctx, model, files, settings, query).await?;
        let value = table
            .rows
            .iter()
            .find(|r| r.period == Some(period))
            .and_then(|r| r.values[0]);
        // A period still under way: a count or sum so far is judged by its pace.
        let end = calendar.next(period, t.grain) - Days::new(1);
        let pace = (as_of < end && model.is_additive(t.metric) && t.direction != TargetDirection::Between).then(|| {
            let days_total = (end - period).num_days() + 1;
            let days_elapsed = (as_of - period).num_days() + 1;
            let so_far = value.unwrap_or(0.0);
            Pace {
                deadline: end,
                days_elapsed,
                days_total,
                projected: so_far / days_elapsed as f64 * days_total as f64,
                needed_per_day: level.map(|l| (l - so_far) / (days_total - days_elapsed) as f64),
            }
        });
        let st = match (&pace, level) {
            (Some(p), Some(_)) => match status(t, Some(p.projected), level, high) {
                Status::Met | Status::Near => Status::OnPace,
                _ => Status::OffPace,
            },
            _ => status(t, value, level, high),
        };
        out.push(TargetResult {
            target: i,
            metric,
            grain: t.grain,
            period,
            value,
            level,
            high,
            status: st,
            attainment: if t.direction == TargetDirection::Between {
                None
            } else {
                ratio(value, level)
            },
            pace,
        });
    }
    Ok(out)
}

fn ratio(value: Option<f64>, level: Option<f64>) -> Option<f64> {
    match (value, level) {
        (Some(v), Some(l)) if l != 0.0 => Some(v / l),
        _ => None,
    }
}
