//! Grains and periods: how dates fall into days, weeks, months, quarters and years.

use chrono::{Datelike, Days, Months, NaiveDate, Weekday};

/// The length of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Grain {
    pub const ALL: [Grain; 5] = [Grain::Day, Grain::Week, Grain::Month, Grain::Quarter, Grain::Year];

    pub fn name(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Week => "week",
            Grain::Month => "month",
            Grain::Quarter => "quarter",
            Grain::Year => "year",
        }
    }

    pub fn parse(text: &str) -> Option<Grain> {
        Grain::ALL.into_iter().find(|g| g.name() == text)
    }
}

/// Where days, weeks and fiscal years begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    pub week_start: Weekday,
    /// 1 = January.
    pub fiscal_year_start: u32,
    /// Timestamps are cut into days at midnight of this zone; `None`: as stored.
    pub time_zone: Option<chrono_tz::Tz>,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            week_start: Weekday::Mon,
            fiscal_year_start: 1,
            time_zone: None,
        }
    }
}

impl Calendar {
    /// The first day of the period that holds `date`.
    pub fn period_start(&self, date: NaiveDate, grain: Grain) -> NaiveDate {
        match grain {
            Grain::Day => date,
            Grain::Week => {
                let back = (date.weekday().num_days_from_monday() + 7 - self.week_start.num_days_from_monday()) % 7;
                date - Days::new(back as u64)
            }
            Grain::Month => date.with_day(1).expect("day 1"),
            Grain::Quarter | Grain::Year => {
                let months = if grain == Grain::Quarter { 3 } else { 12 };
                // Months since the start of the fiscal year that holds `date`.
                let shift = (date.month() + 12 - self.fiscal_year_start) % 12;
                let back = shift % months;
                date.with_day(1).expect("day 1") - Months::new(back)
            }
        }
    }

    /// The first day of the next period.
    pub fn next(&self, start: NaiveDate, grain: Grain) -> NaiveDate {
        match grain {
            Grain::Day => start + Days::new(1),
            Grain::Week => start + Days::new(7),
            Grain::Month => start + Months::new(1),
            Grain::Quarter => start + Months::new(3),
            Grain::Year => start + Months::new(12),
        }
    }

    /// Every period start from the period of `from` to the period of `to`, inclusive.
    pub fn periods(&self, from: NaiveDate, to: NaiveDate, grain: Grain) -> Vec<NaiveDate> {
        let mut out = Vec::new();
        let mut p = self.period_start(from, grain);
        while p <= to {
            out.push(p);
            p = self.next(p, grain);
        }
        out
    }
}

/// Days since 1970-01-01 (Arrow's Date32).
pub fn to_days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

pub fn from_days(days: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::TimeDelta::days(days as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn weeks_start_on_monday_unless_configured() {
        let iso = Calendar::default();
        assert_eq!(iso.period_start(d("2026-03-01"), Grain::Week), d("2026-02-23")); // Sunday
        assert_eq!(iso.period_start(d("2026-03-02"), Grain::Week), d("2026-03-02")); // Monday
        let sunday = Calendar {
            week_start: Weekday::Sun,
            ..iso
        };
        assert_eq!(sunday.period_start(d("2026-03-01"), Grain::Week), d("2026-03-01"));
        assert_eq!(sunday.period_start(d("2026-03-07"), Grain::Week), d("2026-03-01"));
    }

    #[test]
    fn fiscal_quarters_and_years() {
        let april = Calendar {
            fiscal_year_start: 4,
            ..Calendar::default()
        };
        assert_eq!(april.period_start(d("2026-03-31"), Grain::Year), d("2025-04-01"));
        assert_eq!(april.period_start(d("2026-04-01"), Grain::Year), d("2026-04-01"));
        assert_eq!(april.period_start(d("2026-06-30"), Grain::Quarter), d("2026-04-01"));
        assert_eq!(april.period_start(d("2026-03-15"), Grain::Quarter), d("2026-01-01"));
        let cal = Calendar::default();
        assert_eq!(cal.period_start(d("2026-08-15"), Grain::Quarter), d("2026-07-01"));
        assert_eq!(cal.period_start(d("2024-02-29"), Grain::Year), d("2024-01-01"));
    }

    #[test]
    fn periods_cover_the_range() {
        let cal = Calendar::default();
        let ps = cal.periods(d("2026-01-15"), d("2026-04-01"), Grain::Month);
        assert_eq!(
            ps,
            vec![d("2026-01-01"), d("2026-02-01"), d("2026-03-01"), d("2026-04-01")]
        );
    }
}
