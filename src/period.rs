//! `tally_period(time, grain, week_start, fiscal_year_start, time_zone)`: the first day of
//! the period that holds a time value, as a date.
//!
//! DataFusion's `date_trunc` converts every value through calendar arithmetic: over 10
//! million timestamps it costs 0.1 s by day and 0.2 s by month, more than the rest of a
//! query. Here a timestamp becomes a day with one integer division (after its zone's offset,
//! found once per quarter of an hour of instants), and a day becomes its period through a
//! table of the days a batch spans.
//!
//! Every parameter is a literal argument (the grain's name, the week's first day as days
//! from Monday, the fiscal year's first month, the IANA zone or null): the function has no
//! state of its own, so a plan that calls it means the same wherever it runs. Times outside
//! the calendar tally computes are an error naming the column, never a wrong day.

use crate::time::{Calendar, Grain, from_days, in_calendar, to_days};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Date32Array};
use datafusion::arrow::datatypes::{DataType, Date32Type, Date64Type, Int64Type, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};
use std::sync::Arc;

/// The function's name in plans.
pub const NAME: &str = "tally_period";

/// The period start (a `Date32`) of a timestamp or date expression. The calendar's time
/// zone applies to timestamps only (a date is a local day already).
pub fn period(arg: Expr, grain: Grain, calendar: &Calendar) -> Expr {
    let zone = match calendar.time_zone {
        Some(tz) => lit(tz.name()),
        None => lit(ScalarValue::Utf8(None)),
    };
    ScalarUDF::from(Period::default()).call(vec![
        arg,
        lit(grain.name()),
        lit(calendar.week_start.num_days_from_monday() as i32),
        lit(calendar.fiscal_year_start as i32),
        zone,
    ])
}

/// The grain and calendar of a `tally_period` call, to write it in portable SQL.
pub fn parts(f: &ScalarUDF, args: &[Expr]) -> Option<(Grain, Calendar)> {
    if f.name() != NAME {
        return None;
    }
    let literal = |i: usize| match args.get(i)? {
        Expr::Literal(v, _) => Some(v.clone()),
        _ => None,
    };
    let values: Option<Vec<ScalarValue>> = (1..5).map(literal).collect();
    Parameters::of(&values?).ok().map(|p| (p.grain, p.calendar))
}

/// The literal arguments after the time value.
struct Parameters {
    grain: Grain,
    calendar: Calendar,
}

impl Parameters {
    fn of(values: &[ScalarValue]) -> Result<Parameters> {
        let [grain, week_start, fiscal, zone] = values else {
            return exec_err!("{NAME}: expected a time value and four parameters");
        };
        let text = |v: &ScalarValue| match v {
            ScalarValue::Utf8(t) | ScalarValue::LargeUtf8(t) | ScalarValue::Utf8View(t) => Ok(t.clone()),
            ScalarValue::Null => Ok(None),
            other => exec_err!("{NAME}: a string parameter was expected, not {other}"),
        };
        let number = |v: &ScalarValue| match v {
            ScalarValue::Int32(Some(n)) => Ok(*n as i64),
            ScalarValue::Int64(Some(n)) => Ok(*n),
            other => exec_err!("{NAME}: an integer parameter was expected, not {other}"),
        };
        let Some(grain) = text(grain)?.as_deref().and_then(Grain::parse) else {
            return exec_err!("{NAME}: the grain must be day, week, month, quarter or year");
        };
        let week_start = u8::try_from(number(week_start)?)
            .ok()
            .and_then(|d| chrono::Weekday::try_from(d).ok());
        let fiscal_year_start = u32::try_from(number(fiscal)?).ok().filter(|m| (1..=12).contains(m));
        let (Some(week_start), Some(fiscal_year_start)) = (week_start, fiscal_year_start) else {
            return exec_err!("{NAME}: the week starts on day 0 to 6 after Monday, the fiscal year in month 1 to 12");
        };
        let time_zone = match text(zone)? {
            None => None,
            Some(z) => match z.parse::<chrono_tz::Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => return exec_err!("{NAME}: unknown time zone `{z}`"),
            },
        };
        Ok(Parameters {
            grain,
            calendar: Calendar {
                week_start,
                fiscal_year_start,
                time_zone,
            },
        })
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Period {
    signature: Signature,
}

impl Default for Period {
    fn default() -> Self {
        Period {
            signature: Signature::any(5, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Period {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut parameters = Vec::new();
        for a in &args.args[1..] {
            match a {
                ColumnarValue::Scalar(v) => parameters.push(v.clone()),
                ColumnarValue::Array(_) => return exec_err!("{NAME}: parameters must be literals"),
            }
        }
        let Parameters { grain, calendar } = Parameters::of(&parameters)?;
        let array = args.args[0].to_array(args.number_rows)?;
        let column = args.arg_fields.first().map(|f| f.name().as_str()).unwrap_or("time");
        let days = within_calendar(days_of(&array, calendar.time_zone)?, column)?;
        Ok(ColumnarValue::Array(Arc::new(periods_of(&days, grain, &calendar))))
    }
}

/// Days that are outside the calendar (see [`in_calendar`]) are an error naming the column.
fn within_calendar(days: Date32Array, column: &str) -> Result<Date32Array> {
    use datafusion::arrow::compute::{max, min};
    match [min(&days), max(&days)]
        .into_iter()
        .flatten()
        .find(|&d| !in_calendar(d))
    {
        Some(d) => exec_err!(
            "the time column `{column}` holds a time {d} days from 1970-01-01, outside the calendar tally computes ({})",
            crate::time::CALENDAR_YEARS
        ),
        None => Ok(days),
    }
}

/// Days since 1970-01-01 (past what an `i32` holds: its limits, which are outside the
/// calendar) of timestamps, in local time when a zone is given, or of dates.
fn days_of(array: &ArrayRef, zone: Option<chrono_tz::Tz>) -> Result<Date32Array> {
    #[inline(always)]
    fn floor(v: i64, per_day: i64) -> i32 {
        clamp_day(v.div_euclid(per_day))
    }
    Ok(match array.data_type() {
        DataType::Date32 => array.as_primitive::<Date32Type>().clone(),
        DataType::Date64 => array.as_primitive::<Date64Type>().unary(|ms| floor(ms, 86_400_000)),
        DataType::Timestamp(unit, _) => {
            // Every timestamp unit is an i64 count. Each divisor is a constant, so the
            // division compiles to a multiplication (a division by a variable costs as
            // much as the rest of the period computation).
            let raw = datafusion::arrow::compute::cast(array, &DataType::Int64)?;
            let raw = raw.as_primitive::<Int64Type>();
            if let Some(tz) = zone {
                let per_second = match unit {
                    TimeUnit::Second => 1,
                    TimeUnit::Millisecond => 1_000,
                    TimeUnit::Microsecond => 1_000_000,
                    TimeUnit::Nanosecond => 1_000_000_000,
                };
                return Ok(local_days(raw, per_second, tz));
            }
            match unit {
                TimeUnit::Second => raw.unary(|v| floor(v, 86_400)),
                TimeUnit::Millisecond => raw.unary(|v| floor(v, 86_400_000)),
                TimeUnit::Microsecond => raw.unary(|v| floor(v, 86_400_000_000)),
                TimeUnit::Nanosecond => raw.unary(|v| floor(v, 86_400_000_000_000)),
            }
        }
        other => return exec_err!("{NAME}: a time value was expected, not {other}"),
    })
}

#[inline(always)]
fn clamp_day(day: i64) -> i32 {
    day.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// The local days of instants (counts of `1 / per_second` seconds since 1970 UTC) in a zone.
/// The zone's offset is looked up once per quarter hour of instants: when it is the same at
/// both ends of a quarter, it holds inside (no zone changes its offset twice in 15 minutes);
/// otherwise for each instant. An instant past chrono's dates has no offset, and a day far
/// outside the calendar whatever its offset.
fn local_days(raw: &datafusion::arrow::array::Int64Array, per_second: i64, tz: chrono_tz::Tz) -> Date32Array {
    use chrono::{Offset, TimeZone};
    const QUARTER: i64 = 900;
    let offset = |secs: i64| -> Option<i64> {
        let utc = chrono::DateTime::from_timestamp(secs, 0)?.naive_utc();
        Some(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc() as i64)
    };
    let mut cached: Option<(i64, i64)> = None; // (quarter, offset through it)
    let mut days = Vec::with_capacity(raw.len());
    for i in 0..raw.len() {
        if raw.is_null(i) {
            days.push(0);
            continue;
        }
        let secs = raw.value(i).div_euclid(per_second);
        let quarter = secs.div_euclid(QUARTER);
        let off = match cached {
            Some((q, off)) if q == quarter => Some(off),
            _ => {
                let start = quarter.saturating_mul(QUARTER);
                match (offset(start), offset(start.saturating_add(QUARTER - 1))) {
                    (Some(a), Some(b)) if a == b => {
                        cached = Some((quarter, a));
                        Some(a)
                    }
                    _ => offset(secs),
                }
            }
        };
        days.push(clamp_day((secs + off.unwrap_or(0)).div_euclid(86_400)));
    }
    Date32Array::new(days.into(), raw.nulls().cloned())
}

/// The period start of each day. Days map to periods through a table over the days the
/// batch spans (usually a few hundred), filled as days are met.
fn periods_of(days: &Date32Array, grain: Grain, calendar: &Calendar) -> Date32Array {
    if grain == Grain::Day {
        return days.clone();
    }
    let (mut lo, mut hi) = (i32::MAX, i32::MIN);
    for d in days.iter().flatten() {
        lo = lo.min(d);
        hi = hi.max(d);
    }
    let start = |d: i32| to_days(calendar.period_start(from_days(d), grain));
    const MAX_SPAN: i64 = 1 << 16;
    if lo > hi || (hi as i64 - lo as i64) >= MAX_SPAN {
        return days.unary(start);
    }
    let mut table: Vec<i32> = vec![i32::MIN; (hi - lo + 1) as usize];
    let values: Vec<i32> = (0..days.len())
        .map(|i| {
            if days.is_null(i) {
                return 0;
            }
            let d = days.value(i);
            let slot = &mut table[(d - lo) as usize];
            if *slot == i32::MIN {
                *slot = start(d);
            }
            *slot
        })
        .collect();
    Date32Array::new(values.into(), days.nulls().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMicrosecondArray;

    #[test]
    fn periods_of_timestamps_and_dates() {
        let day = 86_400_000_000i64;
        // 2024-02-29 23:59:59.999999, 1969-12-31 12:00, 2024-03-04 00:00
        let ts = TimestampMicrosecondArray::from(vec![
            Some(19_782 * day + day - 1),
            Some(-day / 2),
            None,
            Some(19_786 * day),
        ]);
        let days = days_of(&(Arc::new(ts) as ArrayRef), None).unwrap();
        let d = |s: &str| to_days(s.parse().unwrap());
        assert_eq!(
            days.iter().collect::<Vec<_>>(),
            vec![
                Some(d("2024-02-29")),
                Some(d("1969-12-31")),
                None,
                Some(d("2024-03-04"))
            ]
        );
        let cal = Calendar::default();
        let months = periods_of(&days, Grain::Month, &cal);
        assert_eq!(
            months.iter().collect::<Vec<_>>(),
            vec![
                Some(d("2024-02-01")),
                Some(d("1969-12-01")),
                None,
                Some(d("2024-03-01"))
            ]
        );
        let weeks = periods_of(&days, Grain::Week, &cal);
        assert_eq!(weeks.value(0), d("2024-02-26"));
        assert_eq!(weeks.value(3), d("2024-03-04"));
        let april = Calendar {
            fiscal_year_start: 4,
            ..cal
        };
        assert_eq!(periods_of(&days, Grain::Year, &april).value(0), d("2023-04-01"));
    }
}
