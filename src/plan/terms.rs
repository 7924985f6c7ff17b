//! Metrics as terms over series: a metric's formula with every window, offset and share
//! pushed down to its measures, for one grain.
//!
//! `rolling(conversion, 7 days)` where `conversion = won_jobs / enquiries` becomes
//! `won_jobs over 7 days / enquiries over 7 days`: a ratio over a window is the windowed
//! numerator over the windowed denominator, never an average of ratios.

use crate::ast::{BinOp, Format};
use crate::diagnostic::Diagnostic;
use crate::model::{Formula, MeasureId, MetricId, Model, Offset, Window};
use crate::time::Grain;
use chrono::{Days, Months, NaiveDate};

/// How a measure is computed for each period: plain, over a window, or over every breakdown
/// value together (the denominator of a share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesKind {
    pub window: Option<Window>,
    pub total: bool,
    /// Whole periods, also before `--from` (for offsets when `--from` cuts a period short).
    pub extended: bool,
}

/// One measure computed one way: a column of values per period and breakdown value.
pub type Series = (MeasureId, SeriesKind);

/// A move in time: months first (the day clamped to the month's end), then days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Shift {
    pub months: i32,
    pub days: i32,
}

impl Shift {
    pub fn is_zero(self) -> bool {
        self == Shift::default()
    }

    pub fn apply(self, d: NaiveDate) -> NaiveDate {
        let d = match self.months {
            0 => d,
            m if m > 0 => d.checked_add_months(Months::new(m as u32)).unwrap_or(NaiveDate::MAX),
            m => d
                .checked_sub_months(Months::new(m.unsigned_abs()))
                .unwrap_or(NaiveDate::MIN),
        };
        match self.days {
            0 => d,
            n if n > 0 => d.checked_add_days(Days::new(n as u64)).unwrap_or(NaiveDate::MAX),
            n => d
                .checked_sub_days(Days::new(n.unsigned_abs() as u64))
                .unwrap_or(NaiveDate::MIN),
        }
    }

    fn then(self, other: Shift) -> Shift {
        Shift {
            months: self.months + other.months,
            days: self.days + other.days,
        }
    }
}

/// A metric's value for a period and breakdown value, in terms of series.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// The series' value at the period moved by the shift.
    Series(Series, Shift),
    Number(f64),
    Neg(Box<Term>),
    /// Division by zero or null gives null.
    Binary(BinOp, Box<Term>, Box<Term>),
}

impl Term {
    pub fn walk(&self, f: &mut dyn FnMut(&Term)) {
        f(self);
        match self {
            Term::Neg(a) => a.walk(f),
            Term::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            _ => {}
        }
    }

    fn map_series(self, f: &mut dyn FnMut(Series, Shift) -> (Series, Shift)) -> Term {
        match self {
            Term::Series(s, sh) => {
                let (s, sh) = f(s, sh);
                Term::Series(s, sh)
            }
            Term::Neg(a) => Term::Neg(Box::new(a.map_series(f))),
            Term::Binary(op, a, b) => Term::Binary(op, Box::new(a.map_series(f)), Box::new(b.map_series(f))),
            t => t,
        }
    }

    /// Whether the term reads another period or a window of time.
    pub fn is_timed(&self) -> bool {
        let mut timed = false;
        self.walk(&mut |t| {
            if let Term::Series((_, kind), shift) = t {
                timed |= kind.window.is_some() || !shift.is_zero();
            }
        });
        timed
    }
}

/// `--compare`: each metric next to its value in an earlier period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// The period before.
    Previous,
    /// The same period a year before.
    Year,
}

/// A column of a query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub metric: MetricId,
    pub format: Format,
    pub term: Term,
}

/// The columns of a query: each metric, and with `--compare` its earlier value, the change
/// and the relative change.
pub fn columns(
    model: &Model,
    metrics: &[MetricId],
    grain: Option<Grain>,
    compare: Option<Compare>,
) -> Result<Vec<Output>, Diagnostic> {
    let mut out = Vec::new();
    for &m in metrics {
        let metric = &model.metrics[m];
        let term = lower(model, m, grain)?;
        let Some(compare) = compare else {
            out.push(Output {
                name: metric.name.clone(),
                metric: m,
                format: metric.format.clone(),
                term,
            });
            continue;
        };
        let Some(g) = grain else {
            return Err(Diagnostic::usage("E0706", "--compare needs periods to compare")
                .note("add --by day|week|month|quarter|year"));
        };
        let (offset, suffix) = match compare {
            Compare::Previous => (Offset { amount: -1, unit: None }, "previous"),
            Compare::Year => (
                Offset {
                    amount: -1,
                    unit: Some(Grain::Year),
                },
                "last_year",
            ),
        };
        let shift = shift_of(offset, g)
            .ok_or_else(|| Diagnostic::usage("E0705", format!("--compare year does not fit --by {}", g.name())))?;
        let earlier = term.clone().map_series(&mut |s, sh| (s, sh.then(shift)));
        let change = Term::Binary(BinOp::Sub, Box::new(term.clone()), Box::new(earlier.clone()));
        let relative = Term::Binary(
            BinOp::Sub,
            Box::new(Term::Binary(
                BinOp::Div,
                Box::new(term.clone()),
                Box::new(earlier.clone()),
            )),
            Box::new(Term::Number(1.0)),
        );
        let name = &metric.name;
        out.push(Output {
            name: name.clone(),
            metric: m,
            format: metric.format.clone(),
            term,
        });
        out.push(Output {
            name: format!("{name}_{suffix}"),
            metric: m,
            format: metric.format.clone(),
            term: earlier,
        });
        out.push(Output {
            name: format!("{name}_change"),
            metric: m,
            format: metric.format.clone(),
            term: change,
        });
        out.push(Output {
            name: format!("{name}_change_pct"),
            metric: m,
            format: Format::Percent,
            term: relative,
        });
    }
    Ok(out)
}

/// Where a term is evaluated: inside which window, moved by how much, for which breakdown.
#[derive(Clone, Copy)]
struct Context {
    window: Option<Window>,
    shift: Shift,
    total: bool,
}

/// A metric's formula as a term over series, for a grain (`None`: one total).
pub fn lower(model: &Model, metric: MetricId, grain: Option<Grain>) -> Result<Term, Diagnostic> {
    let ctx = Context {
        window: None,
        shift: Shift::default(),
        total: false,
    };
    lower_formula(model, metric, &model.metrics[metric].formula, grain, ctx)
}

fn lower_formula(
    model: &Model,
    metric: MetricId,
    f: &Formula,
    grain: Option<Grain>,
    ctx: Context,
) -> Result<Term, Diagnostic> {
    let name = &model.metrics[metric].name;
    let needs_grain = |what: String| {
        Diagnostic::usage("E0704", format!("metric `{name}` is {what}: it needs periods"))
            .at(model.metrics[metric].span, "this metric")
            .note("query it with --by day|week|month|quarter|year")
    };
    Ok(match f {
        Formula::Measure(m) => {
            if grain.is_none() && (ctx.window.is_some() || !ctx.shift.is_zero()) {
                let what = match ctx.window {
                    Some(w) => format!("a window over time ({w})"),
                    None => "an offset in time".into(),
                };
                return Err(needs_grain(what));
            }
            let kind = SeriesKind {
                window: ctx.window,
                total: ctx.total,
                extended: false,
            };
            Term::Series((*m, kind), ctx.shift)
        }
        // Errors name the metric that was asked for.
        Formula::Metric(id) => lower_formula(model, metric, &model.metrics[*id].formula, grain, ctx)?,
        Formula::Number(n) => Term::Number(*n),
        Formula::Neg(a) => Term::Neg(Box::new(lower_formula(model, metric, a, grain, ctx)?)),
        Formula::Binary(op, a, b) => Term::Binary(
            *op,
            Box::new(lower_formula(model, metric, a, grain, ctx)?),
            Box::new(lower_formula(model, metric, b, grain, ctx)?),
        ),
        Formula::Window(w, a) => lower_formula(
            model,
            metric,
            a,
            grain,
            Context {
                window: Some(*w),
                ..ctx
            },
        )?,
        Formula::Offset(o, a) => {
            let Some(g) = grain else {
                return Err(needs_grain(format!("an offset ({o})")));
            };
            let Some(shift) = shift_of(*o, g) else {
                return Err(Diagnostic::usage(
                    "E0705",
                    format!(
                        "metric `{name}` looks {o} away, which is not a whole number of {}s",
                        g.name()
                    ),
                )
                .at(model.metrics[metric].span, "this metric")
                .note("query it by a grain that the offset fits, e.g. --by day"));
            };
            lower_formula(
                model,
                metric,
                a,
                grain,
                Context {
                    shift: ctx.shift.then(shift),
                    ..ctx
                },
            )?
        }
        Formula::Share(a) => {
            let part = lower_formula(model, metric, a, grain, ctx)?;
            let whole = lower_formula(model, metric, a, grain, Context { total: true, ..ctx })?;
            Term::Binary(BinOp::Div, Box::new(part), Box::new(whole))
        }
    })
}

/// An offset as a shift of period starts at a grain; `None` when it is not a whole number of
/// periods (a month at a weekly grain). A year back is 52 weeks at a weekly grain (the same
/// weekdays), and the same date a year earlier at a daily grain (29 February → 28 February).
pub fn shift_of(o: Offset, grain: Grain) -> Option<Shift> {
    let n = o.amount;
    let months = |g: Grain| match g {
        Grain::Month => 1,
        Grain::Quarter => 3,
        Grain::Year => 12,
        _ => 0,
    };
    let unit = o.unit.unwrap_or(grain);
    let by_days = |days: i32| Some(Shift { months: 0, days });
    let by_months = |m: i32| Some(Shift { months: m, days: 0 });
    match (unit, grain) {
        (Grain::Day, Grain::Day) => by_days(n),
        (Grain::Day, Grain::Week) if n % 7 == 0 => by_days(n),
        (Grain::Week, Grain::Day | Grain::Week) => by_days(7 * n),
        (Grain::Year, Grain::Week) => by_days(364 * n),
        (Grain::Month | Grain::Quarter | Grain::Year, Grain::Day) => by_months(n * months(unit)),
        (Grain::Month | Grain::Quarter | Grain::Year, Grain::Month | Grain::Quarter | Grain::Year)
            if (n * months(unit)) % months(grain) == 0 =>
        {
            by_months(n * months(unit))
        }
        _ => None,
    }
}

/// Marks the shifted series of terms as extended (see [`SeriesKind::extended`]).
pub fn extend_shifted(term: Term) -> Term {
    term.map_series(&mut |(m, kind), shift| {
        let kind = SeriesKind {
            extended: kind.extended || !shift.is_zero(),
            ..kind
        };
        ((m, kind), shift)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn offsets_fit_grains() {
        let year = Offset {
            amount: -1,
            unit: Some(Grain::Year),
        };
        let period = Offset { amount: -1, unit: None };
        assert_eq!(
            shift_of(year, Grain::Day).unwrap().apply(d("2024-02-29")),
            d("2023-02-28")
        );
        assert_eq!(
            shift_of(year, Grain::Week).unwrap().apply(d("2026-03-02")),
            d("2025-03-03")
        );
        assert_eq!(
            shift_of(year, Grain::Quarter).unwrap().apply(d("2026-04-01")),
            d("2025-04-01")
        );
        assert_eq!(
            shift_of(period, Grain::Week).unwrap().apply(d("2026-03-02")),
            d("2026-02-23")
        );
        assert_eq!(
            shift_of(period, Grain::Month).unwrap().apply(d("2026-03-01")),
            d("2026-02-01")
        );
        let month = Offset {
            amount: -1,
            unit: Some(Grain::Month),
        };
        assert_eq!(shift_of(month, Grain::Week), None);
        assert_eq!(shift_of(month, Grain::Quarter), None);
        let three = Offset {
            amount: -3,
            unit: Some(Grain::Month),
        };
        assert_eq!(
            shift_of(three, Grain::Quarter).unwrap().apply(d("2026-04-01")),
            d("2026-01-01")
        );
    }
}
