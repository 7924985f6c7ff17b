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

/// `2026-03-15`, or a month `2026-03`: its first day (its last when `end`).
pub fn parse_day(text: &str, end: bool) -> Option<NaiveDate> {
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(d);
    }
    let first = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok()?;
    Some(if end {
        first + Months::new(1) - Days::new(1)
    } else {
        first
    })
}

/// The forms of a relative range, for messages.
pub const RANGE_FORMS: &str = "today, yesterday, this week|month|quarter|year, last week|month|quarter|year, \
week|month|quarter|year to date (wtd, mtd, qtd, ytd), last N days|weeks|months|quarters|years, \
last N complete weeks|months|quarters|years";

/// A relative range (`last 12 weeks`, `this quarter`, `year to date`) as its first and last
/// day, against an as-of day. `last N weeks` is the N weeks up to and including the week of
/// the as-of day, which ends on the as-of day; `last N complete weeks` ends with the week
/// before; `last week` is the whole week before.
pub fn relative_range(text: &str, as_of: NaiveDate, calendar: &Calendar) -> Result<(NaiveDate, NaiveDate), String> {
    let lower = text.trim().to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let unit = |w: &str| Grain::parse(w.strip_suffix('s').unwrap_or(w));
    let this = |g: Grain| calendar.period_start(as_of, g);
    let back = |start: NaiveDate, g: Grain, n: u32| -> NaiveDate {
        let mut p = start;
        for _ in 0..n {
            p = calendar.period_start(p - Days::new(1), g);
        }
        p
    };
    let bad = || format!("`{text}` is not a range I know; write one of: {RANGE_FORMS}");
    match words.as_slice() {
        ["today"] => Ok((as_of, as_of)),
        ["yesterday"] => Ok((as_of - Days::new(1), as_of - Days::new(1))),
        ["this", u] | [u, "to", "date"] => {
            let g = unit(u).ok_or_else(bad)?;
            Ok((this(g), as_of))
        }
        [abbr] if ["wtd", "mtd", "qtd", "ytd"].contains(abbr) => {
            let g = match *abbr {
                "wtd" => Grain::Week,
                "mtd" => Grain::Month,
                "qtd" => Grain::Quarter,
                _ => Grain::Year,
            };
            Ok((this(g), as_of))
        }
        ["last" | "previous", u] => {
            let g = unit(u).ok_or_else(bad)?;
            let start = this(g);
            Ok((back(start, g, 1), start - Days::new(1)))
        }
        ["last" | "previous", n, u] | ["last" | "previous", n, "complete", u] => {
            let g = unit(u).ok_or_else(bad)?;
            let n: u32 = n.parse().ok().filter(|n| (1..=100_000).contains(n)).ok_or_else(bad)?;
            let start = this(g);
            if words.contains(&"complete") {
                Ok((back(start, g, n), start - Days::new(1)))
            } else {
                Ok((back(start, g, n - 1), as_of))
            }
        }
        _ => Err(bad()),
    }
}

/// Days since 1970-01-01 (Arrow's Date32).
pub fn to_days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// The day `days` after 1970-01-01. Days outside the calendar (see [`in_calendar`]) are
/// its first or last day: data is checked where it is read, so only the ignored values of
/// null slots get here.
pub fn from_days(days: i32) -> NaiveDate {
    let (first, last) = *CALENDAR;
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::TimeDelta::days(days.clamp(first, last) as i64)
}

/// Whether tally's calendar computes a day (days since 1970-01-01): chrono's dates but
/// their first and last year, so that every period that holds such a day, and the period
/// after it, are dates too.
pub fn in_calendar(days: i32) -> bool {
    let (first, last) = *CALENDAR;
    (first..=last).contains(&days)
}

/// The years of [`in_calendar`], for messages.
pub const CALENDAR_YEARS: &str = "years -262,142 to 262,141";

static CALENDAR: std::sync::LazyLock<(i32, i32)> = std::sync::LazyLock::new(|| {
    let first = NaiveDate::from_ymd_opt(NaiveDate::MIN.year() + 1, 1, 1).expect("a date");
    let last = NaiveDate::from_ymd_opt(NaiveDate::MAX.year() - 1, 12, 31).expect("a date");
    (to_days(first), to_days(last))
});

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
    fn relative_ranges() {
        let cal = Calendar::default();
        let as_of = d("2026-03-18"); // a Wednesday
        let r = |t: &str| relative_range(t, as_of, &cal).unwrap();
        assert_eq!(r("last 12 weeks"), (d("2025-12-29"), as_of));
        assert_eq!(r("last 2 complete weeks"), (d("2026-03-02"), d("2026-03-15")));
        assert_eq!(r("this quarter"), (d("2026-01-01"), as_of));
        assert_eq!(r("year to date"), (d("2026-01-01"), as_of));
        assert_eq!(r("mtd"), (d("2026-03-01"), as_of));
        assert_eq!(r("last month"), (d("2026-02-01"), d("2026-02-28")));
        assert_eq!(r("last 7 days"), (d("2026-03-12"), as_of));
        assert_eq!(r("yesterday"), (d("2026-03-17"), d("2026-03-17")));
        let april = Calendar {
            fiscal_year_start: 4,
            ..cal
        };
        assert_eq!(relative_range("ytd", as_of, &april).unwrap(), (d("2025-04-01"), as_of));
        assert!(relative_range("last 12 parsecs", as_of, &cal).is_err());
        assert!(relative_range("last -1 weeks", as_of, &cal).is_err());
    }

    #[test]
    fn the_calendar_has_room_for_every_period_of_its_days() {
        assert_eq!(NaiveDate::MIN.year() + 1, -262_142);
        assert_eq!(NaiveDate::MAX.year() - 1, 262_141);
        assert!(!in_calendar(i32::MIN) && !in_calendar(i32::MAX));
        assert_eq!(from_days(i32::MAX), from_days(i32::MAX - 1));
        let (first, last) = *CALENDAR;
        assert!(in_calendar(first) && in_calendar(last) && !in_calendar(first - 1) && !in_calendar(last + 1));
        let cal = Calendar {
            fiscal_year_start: 7,
            week_start: Weekday::Sun,
            time_zone: None,
        };
        for d in [first, last] {
            for g in Grain::ALL {
                let p = cal.period_start(from_days(d), g);
                assert!(cal.next(p, g) > p);
            }
        }
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
