//! Windows, offsets, shares, balances and conversions against values computed by hand on a
//! few rows (tests/fixtures/timeline), in Europe/London: a leap day, both changes of British
//! Summer Time, empty days, and a year of history for year-on-year.
//!
//! Sales by local day: 2023-02-28 10 (c1 web) · 2023-03-01 20 (c2 phone) · 2023-04-01 5 (c1
//! web; 23:30 UTC on 31 March is 00:30 BST) · 2024-02-26 100 (c1 web) · 2024-02-28 50 (c2
//! phone) · 2024-02-29 30 (c1 web) + 70 (c3 web) · 2024-03-02 40 (c2 phone) · 2024-03-10 60
//! (c1 web) · 2024-03-30 15 (c3 phone; GMT) · 2024-04-01 25 (c2 web; BST) · 2024-04-02 35 (c1
//! web) · 2024-10-27 8 (c3 web, BST) + 12 (c1 phone, GMT).

use crate::{Q, assert_close, fixture, load};
use tally::plan::Compare;
use tally::run::ResultTable;
use tally::settings::SettingsFile;

const N: Option<f64> = None;

fn s(v: f64) -> Option<f64> {
    Some(v)
}

fn env() -> crate::Env {
    load(&fixture("timeline"), SettingsFile::default())
}

/// Asserts a column, period by period (and breakdown value, when there is one).
#[track_caller]
fn check(t: &ResultTable, metric: &str, expected: &[(&str, Option<f64>)]) {
    let col = t.metrics.iter().position(|m| m == metric).expect("metric in result");
    let rows: Vec<_> = t.rows.iter().filter(|r| r.dimensions.is_empty()).collect();
    assert_eq!(rows.len(), expected.len(), "{metric}: periods");
    for (r, (p, v)) in rows.iter().zip(expected) {
        assert_eq!(r.period.unwrap().to_string(), *p, "{metric}");
        assert_close(r.values[col], *v, &format!("{metric} at {p}"));
    }
}

#[test]
fn rolling_windows_by_day_over_a_leap_day_and_empty_days() {
    let mut env = env();
    let t = env.query(
        &[
            "revenue",
            "revenue_7d",
            "buyers_7d",
            "revenue_per_buyer_7d",
            "avg_sale_7d",
        ],
        Q {
            grain: Some("day"),
            from: Some("2024-02-26"),
            to: Some("2024-03-08"),
            ..Q::default()
        },
    );
    // Day D's window is D-6..D; the window of 26 February reaches back into days with no rows.
    check(
        &t,
        "revenue_7d",
        &[
            ("2024-02-26", s(100.)),
            ("2024-02-27", s(100.)),
            ("2024-02-28", s(150.)),
            ("2024-02-29", s(250.)),
            ("2024-03-01", s(250.)),
            ("2024-03-02", s(290.)),
            ("2024-03-03", s(290.)),
            ("2024-03-04", s(190.)),
            ("2024-03-05", s(190.)),
            ("2024-03-06", s(140.)),
            ("2024-03-07", s(40.)),
            ("2024-03-08", s(40.)),
        ],
    );
    // Distinct buyers are counted again over each window's rows, never added up per day.
    check(
        &t,
        "buyers_7d",
        &[
            ("2024-02-26", s(1.)),
            ("2024-02-27", s(1.)),
            ("2024-02-28", s(2.)),
            ("2024-02-29", s(3.)),
            ("2024-03-01", s(3.)),
            ("2024-03-02", s(3.)),
            ("2024-03-03", s(3.)),
            ("2024-03-04", s(3.)),
            ("2024-03-05", s(3.)),
            ("2024-03-06", s(3.)),
            ("2024-03-07", s(1.)),
            ("2024-03-08", s(1.)),
        ],
    );
    // A windowed ratio is the windowed numerator over the windowed denominator.
    check(
        &t,
        "revenue_per_buyer_7d",
        &[
            ("2024-02-26", s(100.)),
            ("2024-02-27", s(100.)),
            ("2024-02-28", s(75.)),
            ("2024-02-29", s(250. / 3.)),
            ("2024-03-01", s(250. / 3.)),
            ("2024-03-02", s(290. / 3.)),
            ("2024-03-03", s(290. / 3.)),
            ("2024-03-04", s(190. / 3.)),
            ("2024-03-05", s(190. / 3.)),
            ("2024-03-06", s(140. / 3.)),
            ("2024-03-07", s(40.)),
            ("2024-03-08", s(40.)),
        ],
    );
    // An average over a week of rows (2 and 4 rows), not an average of daily averages.
    check(
        &t,
        "avg_sale_7d",
        &[
            ("2024-02-26", s(100.)),
            ("2024-02-27", s(100.)),
            ("2024-02-28", s(75.)),
            ("2024-02-29", s(62.5)),
            ("2024-03-01", s(62.5)),
            ("2024-03-02", s(58.)),
            ("2024-03-03", s(58.)),
            ("2024-03-04", s(190. / 4.)),
            ("2024-03-05", s(190. / 4.)),
            ("2024-03-06", s(140. / 3.)),
            ("2024-03-07", s(40.)),
            ("2024-03-08", s(40.)),
        ],
    );
}

#[test]
fn windows_end_with_each_period_at_coarser_grains() {
    let mut env = env();
    let t = env.query(
        &["revenue", "revenue_7d", "revenue_mtd", "revenue_2m"],
        Q {
            grain: Some("week"),
            from: Some("2024-02-26"),
            to: Some("2024-04-07"),
            ..Q::default()
        },
    );
    // The 7 days up to each week's Sunday; March to date as of each Sunday.
    let weeks = [
        "2024-02-26",
        "2024-03-04",
        "2024-03-11",
        "2024-03-18",
        "2024-03-25",
        "2024-04-01",
    ];
    let pair = |v: [f64; 6]| weeks.iter().zip(v).map(|(w, v)| (*w, s(v))).collect::<Vec<_>>();
    check(&t, "revenue", &pair([290., 60., 0., 0., 15., 60.]));
    check(&t, "revenue_7d", &pair([290., 60., 0., 0., 15., 60.]));
    check(&t, "revenue_mtd", &pair([40., 100., 100., 100., 115., 60.]));
    // Two months back from each Sunday: the week of 1 April reads 8 February .. 7 April.
    check(&t, "revenue_2m", &pair([290., 350., 350., 350., 365., 425.]));

    let t = env.query(
        &[
            "revenue",
            "revenue_2m",
            "revenue_cumulative",
            "buyers_cumulative",
            "buyers_ytd",
        ],
        Q {
            grain: Some("month"),
            from: Some("2024-01-01"),
            to: Some("2024-04-30"),
            ..Q::default()
        },
    );
    check(
        &t,
        "revenue_2m",
        &[
            ("2024-01-01", s(0.)),
            ("2024-02-01", s(250.)),
            ("2024-03-01", s(365.)),
            ("2024-04-01", s(175.)),
        ],
    );
    // From the first row of data (35 in 2023), whatever --from says.
    check(
        &t,
        "revenue_cumulative",
        &[
            ("2024-01-01", s(35.)),
            ("2024-02-01", s(285.)),
            ("2024-03-01", s(400.)),
            ("2024-04-01", s(460.)),
        ],
    );
    check(
        &t,
        "buyers_cumulative",
        &[
            ("2024-01-01", s(2.)),
            ("2024-02-01", s(3.)),
            ("2024-03-01", s(3.)),
            ("2024-04-01", s(3.)),
        ],
    );
    check(
        &t,
        "buyers_ytd",
        &[
            ("2024-01-01", s(0.)),
            ("2024-02-01", s(3.)),
            ("2024-03-01", s(3.)),
            ("2024-04-01", s(3.)),
        ],
    );
}

#[test]
fn offsets_and_year_on_year() {
    let mut env = env();
    let t = env.query(
        &[
            "revenue",
            "revenue_before",
            "revenue_last_year",
            "revenue_yoy",
            "revenue_7d_last_year",
        ],
        Q {
            grain: Some("month"),
            from: Some("2024-01-01"),
            to: Some("2024-04-30"),
            ..Q::default()
        },
    );
    let months = ["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"];
    let col = |v: [Option<f64>; 4]| months.iter().zip(v).map(|(m, v)| (*m, v)).collect::<Vec<_>>();
    check(&t, "revenue_before", &col([s(0.), s(0.), s(250.), s(115.)]));
    check(&t, "revenue_last_year", &col([s(0.), s(10.), s(20.), s(5.)]));
    // Growth over nothing is null, not infinite.
    check(&t, "revenue_yoy", &col([N, s(24.), s(4.75), s(11.)]));
    // The 7 days up to the last day of the month a year earlier: to 28 Feb 2023 (10),
    // 31 Mar 2023 (0: the 5 of 31 March UTC is 1 April in London), 30 Apr 2023 (0).
    check(&t, "revenue_7d_last_year", &col([s(0.), s(10.), s(0.), s(0.)]));

    // By day, a year back is the same date: 29 February 2024 reads 28 February 2023.
    let t = env.query(
        &["revenue_last_year"],
        Q {
            grain: Some("day"),
            from: Some("2024-02-28"),
            to: Some("2024-03-01"),
            ..Q::default()
        },
    );
    check(
        &t,
        "revenue_last_year",
        &[("2024-02-28", s(10.)), ("2024-02-29", s(10.)), ("2024-03-01", s(20.))],
    );
    // By week, 52 weeks back (the same weekdays): 26 Feb 2024 → 27 Feb 2023 (10 + 20).
    let t = env.query(
        &["revenue_last_year"],
        Q {
            grain: Some("week"),
            from: Some("2024-02-26"),
            to: Some("2024-03-03"),
            ..Q::default()
        },
    );
    check(&t, "revenue_last_year", &[("2024-02-26", s(30.))]);
}

#[test]
fn compare_gives_earlier_value_and_changes() {
    let mut env = env();
    let t = env.query(
        &["revenue"],
        Q {
            grain: Some("month"),
            from: Some("2024-02-01"),
            to: Some("2024-04-30"),
            compare: Some(Compare::Previous),
            ..Q::default()
        },
    );
    assert_eq!(
        t.metrics,
        ["revenue", "revenue_previous", "revenue_change", "revenue_change_pct"]
    );
    check(
        &t,
        "revenue_previous",
        &[("2024-02-01", s(0.)), ("2024-03-01", s(250.)), ("2024-04-01", s(115.))],
    );
    check(
        &t,
        "revenue_change",
        &[
            ("2024-02-01", s(250.)),
            ("2024-03-01", s(-135.)),
            ("2024-04-01", s(-55.)),
        ],
    );
    check(
        &t,
        "revenue_change_pct",
        &[
            ("2024-02-01", N),
            ("2024-03-01", s(115. / 250. - 1.)),
            ("2024-04-01", s(60. / 115. - 1.)),
        ],
    );
    let t = env.query(
        &["revenue"],
        Q {
            grain: Some("month"),
            from: Some("2024-03-01"),
            to: Some("2024-03-31"),
            compare: Some(Compare::Year),
            ..Q::default()
        },
    );
    check(&t, "revenue_last_year", &[("2024-03-01", s(20.))]);
    check(&t, "revenue_change_pct", &[("2024-03-01", s(4.75))]);

    // --from cuts the first week short (from Wednesday): the week shows 190, and the next
    // week's previous value is those 190, not the whole week's 290.
    let t = env.query(
        &["revenue"],
        Q {
            grain: Some("week"),
            from: Some("2024-02-28"),
            to: Some("2024-03-10"),
            compare: Some(Compare::Previous),
            ..Q::default()
        },
    );
    check(&t, "revenue", &[("2024-02-26", s(190.)), ("2024-03-04", s(60.))]);
    check(
        &t,
        "revenue_previous",
        &[("2024-02-26", s(0.)), ("2024-03-04", s(190.))],
    );
}

#[test]
fn periods_cut_at_local_midnight_across_both_clock_changes() {
    let mut env = env();
    let t = env.query(
        &["revenue", "revenue_7d"],
        Q {
            grain: Some("day"),
            from: Some("2024-03-30"),
            to: Some("2024-04-01"),
            ..Q::default()
        },
    );
    // 23:30 UTC on 30 March is 23:30 GMT; on 31 March it is 00:30 BST on 1 April.
    check(
        &t,
        "revenue",
        &[("2024-03-30", s(15.)), ("2024-03-31", s(0.)), ("2024-04-01", s(25.))],
    );
    check(
        &t,
        "revenue_7d",
        &[("2024-03-30", s(15.)), ("2024-03-31", s(15.)), ("2024-04-01", s(40.))],
    );
    // 27 October 2024 has 25 hours: 23:30 UTC the day before (00:30 BST) and 23:30 UTC that
    // day (23:30 GMT) both fall in it.
    let t = env.query(
        &["revenue", "sales"],
        Q {
            grain: Some("day"),
            from: Some("2024-10-26"),
            to: Some("2024-10-28"),
            ..Q::default()
        },
    );
    check(
        &t,
        "revenue",
        &[("2024-10-26", s(0.)), ("2024-10-27", s(20.)), ("2024-10-28", s(0.))],
    );
    check(
        &t,
        "sales",
        &[("2024-10-26", s(0.)), ("2024-10-27", s(2.)), ("2024-10-28", s(0.))],
    );
}

#[test]
fn shares_of_the_period_total_under_filters() {
    let mut env = env();
    let q = |filter| Q {
        grain: Some("month"),
        dims: &["channel"],
        from: Some("2024-03-01"),
        to: Some("2024-03-31"),
        filter,
        ..Q::default()
    };
    let t = env.query(&["revenue_share", "buyer_share"], q(None));
    let row = |t: &ResultTable, ch: &str| {
        t.rows
            .iter()
            .find(|r| r.dimensions[0].as_deref() == Some(ch))
            .unwrap()
            .values
            .clone()
    };
    // March: web 60 (c1), phone 40 + 15 (c2, c3); 3 buyers in all.
    assert_close(row(&t, "web")[0], s(60. / 115.), "web revenue share");
    assert_close(row(&t, "phone")[0], s(55. / 115.), "phone revenue share");
    // Distinct buyers do not add up: the total is counted again (1/3 and 2/3).
    assert_close(row(&t, "web")[1], s(1. / 3.), "web buyer share");
    assert_close(row(&t, "phone")[1], s(2. / 3.), "phone buyer share");
    // The filter applies to the total too.
    let t = env.query(&["revenue_share", "buyer_share"], q(Some("amount > 20")));
    assert_close(row(&t, "web")[0], s(0.6), "web share, filtered");
    assert_close(row(&t, "phone")[0], s(0.4), "phone share, filtered");
    assert_close(row(&t, "phone")[1], s(0.5), "phone buyer share, filtered");
    // Without a breakdown a share is the whole.
    let t = env.query(
        &["revenue_share"],
        Q {
            grain: Some("month"),
            from: Some("2024-03-01"),
            to: Some("2024-03-31"),
            ..Q::default()
        },
    );
    check(&t, "revenue_share", &[("2024-03-01", s(1.))]);
}

#[test]
fn balances_at_the_end_and_start_of_each_period() {
    let mut env = env();
    let t = env.query(
        &["balance", "opening_balance", "balance_change"],
        Q {
            grain: Some("month"),
            from: Some("2024-02-01"),
            to: Some("2024-04-30"),
            ..Q::default()
        },
    );
    // February's last day with rows is the 29th (110 + 40); March's the 31st (only a, 150).
    check(
        &t,
        "balance",
        &[("2024-02-01", s(150.)), ("2024-03-01", s(150.)), ("2024-04-01", N)],
    );
    check(
        &t,
        "opening_balance",
        &[("2024-02-01", s(150.)), ("2024-03-01", s(165.)), ("2024-04-01", N)],
    );
    check(
        &t,
        "balance_change",
        &[("2024-02-01", N), ("2024-03-01", s(0.)), ("2024-04-01", N)],
    );
    let t = env.query(
        &["balance", "opening_balance"],
        Q {
            grain: Some("week"),
            from: Some("2024-02-26"),
            to: Some("2024-03-10"),
            ..Q::default()
        },
    );
    // Never summed across days: the week of 26 February ends with Saturday 2 March.
    check(&t, "balance", &[("2024-02-26", s(165.)), ("2024-03-04", N)]);
    check(&t, "opening_balance", &[("2024-02-26", s(150.)), ("2024-03-04", N)]);
    // Over the whole range: the last day with rows.
    let t = env.query(&["balance"], Q::default());
    assert_close(t.rows[0].values[0], s(150.), "balance at the end");
}

#[test]
fn conversions_within_a_window_counted_in_the_base_period() {
    let mut env = env();
    let t = env.query(
        &["signups", "converted_signups", "signup_conversion"],
        Q {
            grain: Some("month"),
            from: Some("2024-02-01"),
            to: Some("2024-04-30"),
            ..Q::default()
        },
    );
    // c1 (20 Feb) buys after 5 days 23 hours: converts. c2 (20 Feb) buys after exactly 8
    // days: not within 7. c3 buys 30 minutes later. c4 never buys. c2 (1 March) buys the
    // next day. c1 (2 April) bought an hour before signing up: not a conversion.
    check(
        &t,
        "signups",
        &[("2024-02-01", s(3.)), ("2024-03-01", s(2.)), ("2024-04-01", s(1.))],
    );
    check(
        &t,
        "converted_signups",
        &[("2024-02-01", s(2.)), ("2024-03-01", s(1.)), ("2024-04-01", s(0.))],
    );
    check(
        &t,
        "signup_conversion",
        &[
            ("2024-02-01", s(2. / 3.)),
            ("2024-03-01", s(0.5)),
            ("2024-04-01", s(0.)),
        ],
    );
    // As of 1 March, c2's purchase on 2 March is not read yet.
    let t = env.query(
        &["converted_signups"],
        Q {
            grain: Some("month"),
            from: Some("2024-03-01"),
            to: Some("2024-03-01"),
            ..Q::default()
        },
    );
    check(&t, "converted_signups", &[("2024-03-01", s(0.))]);
}

#[test]
fn windows_and_offsets_without_from_start_at_the_first_row() {
    let mut env = env();
    let t = env.query(
        &["revenue", "revenue_7d", "buyers_cumulative"],
        Q {
            grain: Some("day"),
            to: Some("2023-03-02"),
            ..Q::default()
        },
    );
    check(
        &t,
        "revenue_7d",
        &[("2023-02-28", s(10.)), ("2023-03-01", s(30.)), ("2023-03-02", s(30.))],
    );
    check(
        &t,
        "buyers_cumulative",
        &[("2023-02-28", s(1.)), ("2023-03-01", s(2.)), ("2023-03-02", s(2.))],
    );
}

#[test]
fn distinct_counts_over_windows_by_breakdown_value() {
    let mut env = env();
    let t = env.query(
        &["buyers_7d", "buyers_cumulative"],
        Q {
            grain: Some("month"),
            dims: &["channel"],
            from: Some("2024-02-01"),
            to: Some("2024-03-31"),
            ..Q::default()
        },
    );
    let value = |p: &str, ch: &str, col: usize| {
        t.rows
            .iter()
            .find(|r| r.period.unwrap().to_string() == p && r.dimensions[0].as_deref() == Some(ch))
            .unwrap()
            .values[col]
    };
    // The 7 days to 29 February: web c1, c3; phone c2. To 31 March: web none; phone c3.
    assert_close(
        value("2024-02-01", "web", 0),
        s(2.),
        "web buyers, last 7 days of February",
    );
    assert_close(
        value("2024-02-01", "phone", 0),
        s(1.),
        "phone buyers, last 7 days of February",
    );
    assert_close(value("2024-03-01", "web", 0), s(0.), "web buyers, last 7 days of March");
    assert_close(
        value("2024-03-01", "phone", 0),
        s(1.),
        "phone buyers, last 7 days of March",
    );
    // Since the first row: web c1 (2023), c3; phone c2 (2023), then c3 (30 March).
    assert_close(
        value("2024-02-01", "web", 1),
        s(2.),
        "web buyers since the start, February",
    );
    assert_close(
        value("2024-02-01", "phone", 1),
        s(1.),
        "phone buyers since the start, February",
    );
    assert_close(
        value("2024-03-01", "phone", 1),
        s(2.),
        "phone buyers since the start, March",
    );
}

fn targets_as_of(env: &crate::Env, day: &str) -> Vec<tally::targets::TargetResult> {
    crate::runtime()
        .block_on(tally::targets::evaluate(
            &env.ctx,
            &env.model,
            &env.files,
            &env.settings,
            day.parse().unwrap(),
        ))
        .unwrap()
}

#[test]
fn targets_per_period_and_by_a_deadline() {
    use tally::targets::Status;
    let env = env();
    let find = |rs: &[tally::targets::TargetResult], text: &str| {
        rs.iter()
            .find(|r| env.model.targets[r.target].text.contains(text))
            .unwrap_or_else(|| panic!("{text}"))
            .clone()
    };
    // End of February: revenue 250 against 200; conversion 2/3 against 60%; average sale
    // 62.5, above 60 but within 10%; 4 sales against the schedule's 4.
    let feb = targets_as_of(&env, "2024-02-29");
    let r = find(&feb, "revenue >= 200");
    assert_eq!((r.value, r.level, r.status), (s(250.), s(200.), Status::Met));
    assert_close(r.attainment, s(1.25), "attainment");
    let r = find(&feb, "signup_conversion");
    assert_eq!(r.status, Status::Met);
    assert_close(r.value, s(2. / 3.), "conversion");
    let r = find(&feb, "between");
    assert_eq!(
        (r.value, r.level, r.high, r.status),
        (s(62.5), s(40.), s(60.), Status::Near)
    );
    assert_eq!(find(&feb, "sales >= {").status, Status::Met);
    // The deadline: from 1 January 2024 (the year of the deadline) to 29 February, 60 days
    // of 366; 250 so far projects to 250 / 60 * 366 = 1525.
    let r = find(&feb, "= 500 by");
    assert_eq!((r.value, r.status), (s(250.), Status::OnPace));
    let pace = r.pace.unwrap();
    assert_eq!((pace.days_elapsed, pace.days_total), (60, 366));
    assert_close(Some(pace.projected), s(1525.), "projected");
    assert_close(pace.needed_per_day, s(250. / 306.), "needed per day");

    // End of March: revenue 115 is short by more than 10% (near would be 180 or more);
    // conversion 50%; average (40 + 60 + 15) / 3 below 40 but within 10%; 3 sales of 5.
    let mar = targets_as_of(&env, "2024-03-31");
    assert_eq!(find(&mar, "revenue >= 200").status, Status::Missed);
    assert_eq!(find(&mar, "signup_conversion").status, Status::Missed);
    let r = find(&mar, "between");
    assert_close(r.value, s(115. / 3.), "average");
    assert_eq!(r.status, Status::Near);
    assert_eq!(find(&mar, "sales >= {").status, Status::Missed);
    // A week at most 300 (YAML): the week of 25 March has 15.
    let r = find(&mar, "revenue <= 300 per week");
    assert_eq!(
        (r.period.to_string(), r.value, r.status),
        ("2024-03-25".into(), s(15.), Status::Met)
    );

    // January: before `from`, no level; the YAML schedule file has 6 for the quarter, and
    // January had no sales: off pace.
    let jan = targets_as_of(&env, "2024-01-31");
    assert_eq!(find(&jan, "revenue >= 200").status, Status::NoLevel);
    let r = find(&jan, "sales_targets.csv");
    assert_eq!((r.level, r.value, r.status), (s(6.), s(0.), Status::OffPace));

    // Mid-March, a sum so far is judged by its pace: 40 + 60 in 15 days of 31 projects to
    // 206.67; as of the 9th, 40 in 9 days projects to 137.78.
    let mid = targets_as_of(&env, "2024-03-15");
    let r = find(&mid, "revenue >= 200");
    assert_eq!((r.value, r.status), (s(100.), Status::OnPace));
    assert_close(r.pace.map(|p| p.projected), s(100. / 15. * 31.), "projected");
    let r = find(&targets_as_of(&env, "2024-03-09"), "revenue >= 200");
    assert_eq!((r.value, r.status), (s(40.), Status::OffPace));
    // After the deadline: met or missed. 2024: 250 + 115 + 60 + 20 = 445.
    let end = targets_as_of(&env, "2025-01-15");
    let r = find(&end, "= 500 by");
    assert_eq!((r.value, r.status), (s(445.), Status::Missed));
}

fn alerts_as_of(env: &crate::Env, day: &str) -> Vec<tally::alerts::AlertResult> {
    crate::runtime()
        .block_on(tally::alerts::evaluate(
            &env.ctx,
            &env.model,
            &env.files,
            &env.settings,
            day.parse().unwrap(),
        ))
        .unwrap()
}

#[test]
fn alerts_fire_on_complete_periods() {
    use tally::model::AlertSeverity::{Critical, Warning};
    let env = env();
    let firing = |rs: &[tally::alerts::AlertResult], name: &str| {
        rs.iter()
            .filter(|r| r.name == name && r.firing.is_some())
            .map(|r| {
                (
                    r.dimensions
                        .iter()
                        .map(|d| d.1.clone().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(","),
                    r.firing.unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    // As of 31 March, March is complete: revenue 115 (not under 100); down 54% on
    // February's 250; short of its target of 200; by channel web 60 and phone 55, both under 70.
    let mar = alerts_as_of(&env, "2024-03-31");
    assert_eq!(firing(&mar, "revenue_low"), []);
    assert_eq!(firing(&mar, "revenue_fell"), [(String::new(), Warning)]);
    let fell = mar.iter().find(|r| r.name == "revenue_fell").unwrap();
    assert_eq!((fell.value, fell.earlier), (s(115.), s(250.)));
    assert_eq!(firing(&mar, "revenue_off"), [(String::new(), Warning)]);
    assert_eq!(
        firing(&mar, "channel_low"),
        [("phone".to_string(), Warning), ("web".to_string(), Warning)]
    );
    let web = mar
        .iter()
        .find(|r| r.name == "channel_low" && r.dimensions[0].1.as_deref() == Some("web"))
        .unwrap();
    assert_eq!(web.message, "web took 60");
    // As of 30 April: April's 60 is under 100 but not under 50; down 48% on March.
    let apr = alerts_as_of(&env, "2024-04-30");
    assert_eq!(firing(&apr, "revenue_low"), [(String::new(), Warning)]);
    assert_eq!(firing(&apr, "revenue_fell"), [(String::new(), Warning)]);
    // Mid-April, April is not complete: March is judged.
    let mid = alerts_as_of(&env, "2024-04-15");
    assert_eq!(
        mid.iter().find(|r| r.name == "revenue_low").unwrap().period.to_string(),
        "2024-03-01"
    );
    // Against the same month of 2023: March 115 - 20 = 95 (not above 100), February 250 - 10.
    assert_eq!(firing(&mar, "revenue_up_on_last_year"), []);
    let up = mar.iter().find(|r| r.name == "revenue_up_on_last_year").unwrap();
    assert_eq!((up.value, up.earlier), (s(115.), s(20.)));
    // February: 250, no alert; its target is met.
    let feb = alerts_as_of(&env, "2024-02-29");
    assert_eq!(firing(&feb, "revenue_fell"), []);
    assert_eq!(firing(&feb, "revenue_off"), []);
    assert_eq!(firing(&feb, "revenue_up_on_last_year"), [(String::new(), Warning)]);

    // Two weeks in a row without sales: the weeks of 11 and 18 March.
    let quiet = alerts_as_of(&env, "2024-03-24");
    assert_eq!(firing(&quiet, "quiet_weeks"), [(String::new(), Critical)]);
    let q = quiet.iter().find(|r| r.name == "quiet_weeks").unwrap();
    assert_eq!(
        q.message,
        "quiet_weeks: 0 sales in the week of 2024-03-18 (2 weeks running)"
    );
    // As of 17 March only the week of the 11th is empty (the 4th had a sale).
    assert_eq!(firing(&alerts_as_of(&env, "2024-03-17"), "quiet_weeks"), []);
    assert_eq!(
        firing(&alerts_as_of(&env, "2024-03-17"), "no_sales"),
        [(String::new(), Warning)]
    );
    assert_eq!(firing(&alerts_as_of(&env, "2024-03-10"), "no_sales"), []);

    // The last sale is 2 April 09:00 UTC; the end of 5 April in London is 23:00 UTC: 3 days
    // 14 hours, older than 3 days. At the end of 4 April: 2 days 14 hours.
    let r = alerts_as_of(&env, "2024-04-05");
    assert_eq!(firing(&r, "stale_sales"), [(String::new(), Warning)]);
    assert_close(
        r.iter().find(|r| r.name == "stale_sales").unwrap().value,
        s(3. + 14. / 24.),
        "age in days",
    );
    assert_eq!(firing(&alerts_as_of(&env, "2024-04-04"), "stale_sales"), []);

    // The deadline of 500 by the end of 2024: on pace in September (425 in 274 days), off
    // pace on 1 December (445 in 336 days projects to 484.7).
    assert_eq!(firing(&alerts_as_of(&env, "2024-09-30"), "revenue_pace"), []);
    assert_eq!(
        firing(&alerts_as_of(&env, "2024-12-01"), "revenue_pace"),
        [(String::new(), Critical)]
    );
}

#[test]
fn alert_state_says_what_changed() {
    use tally::alerts::{Transition, load_state, save_state, transition};
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".tally/alert-state.json");
    // Missing: a fresh state, and a warning that says so.
    let (state, warning) = load_state(&path);
    assert!(state.alerts.is_empty());
    assert!(warning.unwrap().message.contains("starting afresh"));
    let mar = alerts_as_of(&env, "2024-03-31");
    let (next, changes) = transition(&state, &mar);
    assert!(changes.iter().all(|c| c.1 == Transition::New));
    save_state(&path, &next).unwrap();
    // A month later revenue_fell still fires (since March) and revenue_low is new; phone has
    // no sale in April (0, under 70): still firing.
    let apr = alerts_as_of(&env, "2024-04-30");
    let (previous, _) = load_state(&path);
    assert_eq!(previous, next);
    let (_, changes) = transition(&previous, &apr);
    let of = |key: &str| changes.iter().find(|c| c.0 == key).map(|c| (c.1, c.2.to_string()));
    assert_eq!(of("revenue_fell"), Some((Transition::Still, "2024-03-01".into())));
    assert_eq!(of("revenue_low"), Some((Transition::New, "2024-04-01".into())));
    assert_eq!(
        of("channel_low|channel=phone"),
        Some((Transition::Still, "2024-03-01".into()))
    );
    // Evaluated at February instead, revenue_fell (up from January's nothing) resolves.
    let (_, changes) = transition(&previous, &alerts_as_of(&env, "2024-02-29"));
    let resolved = changes.iter().find(|c| c.0 == "revenue_fell").map(|c| c.1);
    assert_eq!(resolved, Some(Transition::Resolved));
    // A corrupt file: a warning and a fresh state, never a crash.
    std::fs::write(&path, "{ not json").unwrap();
    let (state, warning) = load_state(&path);
    assert!(state.alerts.is_empty());
    assert!(warning.unwrap().message.contains("not readable"));
    // Written atomically: no temporary file is left behind.
    save_state(&path, &next).unwrap();
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1);
}

/// The constructed series of tests/fixtures/series: 10 12 9 11 10 12 8 10 11 50 10 9 2 2 10
/// 2 11 10 9 10 over 1 to 20 January 2026 (the 13th as two rows).
fn series_env() -> crate::Env {
    load(&fixture("series"), SettingsFile::default())
}

#[test]
fn anomalies_debounce_hysteresis_and_volume() {
    let env = series_env();
    let fired = |name: &str| -> Vec<u32> {
        (1..=20)
            .filter(|d| {
                alerts_as_of(&env, &format!("2026-01-{d:02}"))
                    .iter()
                    .any(|r| r.name == name && r.firing.is_some())
            })
            .collect()
    };
    assert_eq!(fired("low"), [13, 14, 16]);
    // Two days in a row: only the 14th.
    assert_eq!(fired("low_twice"), [14]);
    // Kept until 3 quiet days: the 15th (1 quiet day), then the 16th fires again, and the
    // 17th and 18th are kept; the 19th is the third quiet day.
    assert_eq!(fired("low_kept"), [13, 14, 15, 16, 17, 18]);
    // Only where at least 2 rows: the 13th.
    assert_eq!(fired("low_volume"), [13]);
    // z-score over the 7 days before: on the 10th, mean 71 / 7 = 10.143, sample standard
    // deviation 1.345, so 50 is outside 6.108 to 14.178. On the 13th the 50 is in the window
    // (mean 15.7, deviation 15.1): 2 is no anomaly.
    assert_eq!(fired("spike"), [10]);
    let spike = alerts_as_of(&env, "2026-01-10")
        .into_iter()
        .find(|r| r.name == "spike")
        .unwrap();
    let (lo, hi) = spike.expected.unwrap();
    let (mean, sd) = (71.0 / 7.0, (76.0f64 / 7.0 / 6.0).sqrt());
    assert_close(Some(lo), s(mean - 3.0 * sd), "expected low");
    assert_close(Some(hi), s(mean + 3.0 * sd), "expected high");
    assert_eq!(spike.message, "50 outside 6.1073 to 14.1784");
    // Median and MAD are not moved by the 50: median 10, MAD 1 (x 1.4826): 2 is an anomaly.
    assert_eq!(fired("spike_mad"), [10, 13, 14, 16]);
}

#[test]
fn backtest_counts_known_firings() {
    let env = series_env();
    let results = crate::runtime()
        .block_on(tally::alerts::backtest(
            &env.ctx,
            &env.model,
            &env.files,
            &env.settings,
            "2026-01-01".parse().unwrap(),
            "2026-01-20".parse().unwrap(),
        ))
        .unwrap();
    let of = |name: &str| {
        let r = results.iter().find(|r| r.name == name).unwrap();
        (r.periods, r.firing, r.episodes, r.average_length, r.flaps)
    };
    // 13-14 and 16: two episodes, the second a flap (one quiet day between).
    assert_eq!(of("low"), (20, 3, 2, s(1.5), 1));
    assert_eq!(of("low_twice"), (20, 1, 1, s(1.), 0));
    assert_eq!(of("low_kept"), (20, 6, 1, s(6.), 0));
    assert_eq!(of("low_volume"), (20, 1, 1, s(1.), 0));
    assert_eq!(of("spike"), (20, 1, 1, s(1.), 0));
    // 10; 13-14 (starts two days after the 10th's episode ended on the 11th); 16.
    assert_eq!(of("spike_mad"), (20, 4, 3, s(4. / 3.), 2));
    let fired: Vec<String> = results
        .iter()
        .find(|r| r.name == "low")
        .unwrap()
        .fired
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(fired, ["2026-01-13", "2026-01-14", "2026-01-16"]);
}
