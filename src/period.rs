//! `tally_period(time)`: the first day of the period that holds a time value, as a date.
//!
//! DataFusion's `date_trunc` converts every value through calendar arithmetic: over 10
//! million timestamps it costs 0.1 s by day and 0.2 s by month, more than the rest of a
//! query. Here a timestamp becomes a day with one integer division, and a day becomes its
//! period through a table of the days a batch spans. Used where no time zone is set (then a
//! timestamp's day is its day as stored); with a time zone, `plan` converts to local time
//! with DataFusion's `to_local_time` first.

use crate::time::{Calendar, Grain, from_days, to_days};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Date32Array};
use datafusion::arrow::datatypes::{DataType, Date32Type, Date64Type, Int64Type, TimeUnit};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;

/// The period start (a `Date32`) of a timestamp or date expression.
pub fn period(arg: Expr, grain: Grain, calendar: &Calendar) -> Expr {
    ScalarUDF::from(Period::new(grain, calendar)).call(vec![arg])
}

/// The grain and calendar of a `tally_period` call, to write it in portable SQL.
pub fn parts(f: &ScalarUDF) -> Option<(Grain, Calendar)> {
    let any: &dyn std::any::Any = f.inner().as_ref();
    any.downcast_ref::<Period>().map(|p| (p.grain, p.calendar()))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Period {
    name: String,
    grain: Grain,
    calendar: (u32, u32),
    signature: Signature,
}

impl Period {
    fn new(grain: Grain, calendar: &Calendar) -> Self {
        let week_start = calendar.week_start.num_days_from_monday();
        Period {
            name: format!("tally_{}", grain.name()),
            grain,
            calendar: (week_start, calendar.fiscal_year_start),
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn calendar(&self) -> Calendar {
        Calendar {
            week_start: chrono::Weekday::try_from(self.calendar.0 as u8).unwrap_or(chrono::Weekday::Mon),
            fiscal_year_start: self.calendar.1,
            time_zone: None,
        }
    }
}

impl ScalarUDFImpl for Period {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let days = days_of(&array)?;
        let calendar = self.calendar();
        let periods = periods_of(&days, self.grain, &calendar);
        Ok(ColumnarValue::Array(Arc::new(periods)))
    }
}

/// Days since 1970-01-01 of timestamps (as stored) or dates.
fn days_of(array: &ArrayRef) -> Result<Date32Array> {
    #[inline(always)]
    fn floor(v: i64, per_day: i64) -> i32 {
        v.div_euclid(per_day) as i32
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
            match unit {
                TimeUnit::Second => raw.unary(|v| floor(v, 86_400)),
                TimeUnit::Millisecond => raw.unary(|v| floor(v, 86_400_000)),
                TimeUnit::Microsecond => raw.unary(|v| floor(v, 86_400_000_000)),
                TimeUnit::Nanosecond => raw.unary(|v| floor(v, 86_400_000_000_000)),
            }
        }
        other => return exec_err!("tally_period: a time value was expected, not {other}"),
    })
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
        let days = days_of(&(Arc::new(ts) as ArrayRef)).unwrap();
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
