//! The KPIs over time of `metrics/trends.tally` (and of the flights example), computed by
//! tally and by SQL with window functions written by hand over a spine of every day, on the
//! bundled data: every day of 2024 and 2025 (the first, partly covered windows, every month
//! boundary, 29 February 2024), and the flights of 2013 by local day in America/New_York
//! (both DST changes). They must be equal.

use crate::differential::{compare, sql, sql_context};
use crate::{Q, load, runtime};
use chrono::NaiveDate;
use datafusion::arrow::array::{Date32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use std::path::Path;
use std::sync::Arc;
use tally::settings::SettingsFile;

/// The metrics of `metrics/` checked here (the others: in `differential`).
pub const CHECKED: &[&str] = &[
    "revenue_28d",
    "conversion_28d",
    "customers_28d",
    "revenue_mtd",
    "revenue_ytd",
    "revenue_cumulative",
    "revenue_last_year",
    "revenue_yoy",
    "enquiry_share",
    "enquiry_conversion_30d",
    "marketing_spend_mtd",
    "spend_share",
    "sessions_last_week",
];

/// A table `spine(day)` of every day from `from` to `to`.
fn register_spine(ctx: &SessionContext, from: &str, to: &str) {
    let (from, to): (NaiveDate, NaiveDate) = (from.parse().unwrap(), to.parse().unwrap());
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let days = ((from - epoch).num_days() as i32)..=((to - epoch).num_days() as i32);
    let schema = Arc::new(Schema::new(vec![Field::new("day", DataType::Date32, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Date32Array::from_iter_values(days))]).unwrap();
    let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
    ctx.register_table("spine", Arc::new(table)).unwrap();
}

/// A daily series `daily` (day, v) joined to the spine, with a trailing window per day.
fn rolling(daily: &str, days: u32) -> String {
    format!(
        "WITH daily AS ({daily}) \
         SELECT CAST(s.day AS VARCHAR) AS p, \
                SUM(COALESCE(CAST(d.v AS DOUBLE), 0)) OVER (ORDER BY s.day ROWS BETWEEN {} PRECEDING AND CURRENT ROW) AS v \
         FROM spine s LEFT JOIN daily d ON d.day = s.day",
        days - 1
    )
}

#[test]
fn windows_by_day_equal_window_functions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut env = load(root, SettingsFile::default());
    let ctx = sql_context();
    register_spine(&ctx, "2024-01-01", "2025-12-31");
    let revenue_daily =
        "SELECT CAST(completed_at AS DATE) AS day, SUM(amount) AS v FROM jobs WHERE status = 'completed' GROUP BY 1";
    let won_daily =
        "SELECT CAST(completed_at AS DATE) AS day, COUNT(*) AS v FROM jobs WHERE status = 'completed' GROUP BY 1";
    let enquiries_daily = "SELECT CAST(created_at AS DATE) AS day, COUNT(*) AS v FROM enquiries GROUP BY 1";
    let cases = [
        ("revenue_28d", rolling(revenue_daily, 28)),
        (
            "conversion_28d",
            format!(
                "WITH w AS ({}), e AS ({}) SELECT w.p, w.v / e.v FROM w JOIN e ON w.p = e.p WHERE e.v <> 0",
                rolling(won_daily, 28),
                rolling(enquiries_daily, 28)
            ),
        ),
        (
            // A distinct count over each window's rows: a range join, not a sum of days.
            "customers_28d",
            "SELECT CAST(s.day AS VARCHAR), COUNT(DISTINCT e.customer_id) FROM spine s \
             LEFT JOIN enquiries e ON CAST(e.created_at AS DATE) BETWEEN s.day - INTERVAL '27 days' AND s.day \
             GROUP BY s.day"
                .to_string(),
        ),
        (
            "revenue_mtd",
            format!(
                "WITH daily AS ({revenue_daily}) SELECT CAST(s.day AS VARCHAR), \
                 SUM(COALESCE(CAST(d.v AS DOUBLE), 0)) OVER (PARTITION BY date_trunc('month', s.day) ORDER BY s.day ROWS UNBOUNDED PRECEDING) \
                 FROM spine s LEFT JOIN daily d ON d.day = s.day"
            ),
        ),
        (
            "revenue_ytd",
            format!(
                "WITH daily AS ({revenue_daily}) SELECT CAST(s.day AS VARCHAR), \
                 SUM(COALESCE(CAST(d.v AS DOUBLE), 0)) OVER (PARTITION BY date_trunc('year', s.day) ORDER BY s.day ROWS UNBOUNDED PRECEDING) \
                 FROM spine s LEFT JOIN daily d ON d.day = s.day"
            ),
        ),
        (
            "revenue_cumulative",
            format!(
                "WITH daily AS ({revenue_daily}) SELECT CAST(s.day AS VARCHAR), \
                 SUM(COALESCE(CAST(d.v AS DOUBLE), 0)) OVER (ORDER BY s.day ROWS UNBOUNDED PRECEDING) \
                 FROM spine s LEFT JOIN daily d ON d.day = s.day"
            ),
        ),
        (
            // The same date a year earlier; 2024 has no earlier year (0, so growth is null).
            "revenue_yoy",
            format!(
                "WITH daily AS ({revenue_daily}), cur AS (SELECT s.day, COALESCE(CAST(d.v AS DOUBLE), 0) AS v FROM spine s LEFT JOIN daily d ON d.day = s.day) \
                 SELECT CAST(c.day AS VARCHAR), c.v / p.v - 1 FROM cur c JOIN cur p ON p.day = c.day - INTERVAL '1 year' WHERE p.v <> 0"
            ),
        ),
    ];
    let spend_daily = "SELECT date AS day, SUM(spend) AS v FROM marketing_spend GROUP BY 1";
    let sessions_daily = "SELECT CAST(started_at AS DATE) AS day, COUNT(*) AS v FROM web_sessions GROUP BY 1";
    let cases = [
        cases.as_slice(),
        &[
            (
                "marketing_spend_mtd",
                format!(
                    "WITH daily AS ({spend_daily}) SELECT CAST(s.day AS VARCHAR), \
                     SUM(COALESCE(CAST(d.v AS DOUBLE), 0)) OVER (PARTITION BY date_trunc('month', s.day) ORDER BY s.day ROWS UNBOUNDED PRECEDING) \
                     FROM spine s LEFT JOIN daily d ON d.day = s.day"
                ),
            ),
            (
                // A week back, by day: the same weekday a week earlier (0 before the data).
                "sessions_last_week",
                format!(
                    "WITH daily AS ({sessions_daily}) SELECT CAST(s.day AS VARCHAR), \
                     COALESCE(CAST(LAG(d.v, 7) OVER (ORDER BY s.day) AS DOUBLE), 0) \
                     FROM spine s LEFT JOIN daily d ON d.day = s.day"
                ),
            ),
        ],
    ]
    .concat();
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let t = env.query(
        &names,
        Q {
            grain: Some("day"),
            ..Q::default()
        },
    );
    assert_eq!(t.rows.len(), 731, "every day of 2024 and 2025");
    for (i, (name, query)) in cases.iter().enumerate() {
        compare(name, &t, i, &sql(&ctx, query), false);
    }
}

#[test]
fn windows_by_week_and_month_equal_window_functions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut env = load(root, SettingsFile::default());
    let ctx = sql_context();
    register_spine(&ctx, "2024-01-01", "2026-01-04");
    let revenue_daily =
        "SELECT CAST(completed_at AS DATE) AS day, SUM(amount) AS v FROM jobs WHERE status = 'completed' GROUP BY 1";
    // A week's value is the window up to its Sunday (2024-01-01 is a Monday).
    let weekly = format!(
        "WITH r AS ({}) SELECT CAST(CAST(p AS DATE) - INTERVAL '6 days' AS VARCHAR), v FROM r \
         WHERE date_part('dow', CAST(p AS DATE)) = 0",
        rolling(revenue_daily, 28)
    );
    let t = env.query(
        &["revenue_28d"],
        Q {
            grain: Some("week"),
            ..Q::default()
        },
    );
    compare("revenue_28d by week", &t, 0, &sql(&ctx, &weekly), false);

    let monthly = |expr: &str| {
        format!(
            "WITH m AS (SELECT CAST(date_trunc('month', completed_at) AS DATE) AS p, SUM(amount) AS v FROM jobs \
             WHERE status = 'completed' GROUP BY 1) SELECT CAST(p AS VARCHAR), {expr} FROM m"
        )
    };
    let t = env.query(
        &["revenue_cumulative", "revenue_ytd", "revenue_last_year", "revenue_yoy"],
        Q {
            grain: Some("month"),
            ..Q::default()
        },
    );
    compare(
        "revenue_cumulative by month",
        &t,
        0,
        &sql(
            &ctx,
            &monthly("SUM(CAST(v AS DOUBLE)) OVER (ORDER BY p ROWS UNBOUNDED PRECEDING)"),
        ),
        false,
    );
    compare(
        "revenue_ytd by month",
        &t,
        1,
        &sql(
            &ctx,
            &monthly(
                "SUM(CAST(v AS DOUBLE)) OVER (PARTITION BY date_trunc('year', p) ORDER BY p ROWS UNBOUNDED PRECEDING)",
            ),
        ),
        false,
    );
    compare(
        "revenue_last_year by month",
        &t,
        2,
        &sql(
            &ctx,
            &monthly("COALESCE(CAST(LAG(v, 12) OVER (ORDER BY p) AS DOUBLE), 0)"),
        ),
        false,
    );
    compare(
        "revenue_yoy by month",
        &t,
        3,
        &sql(
            &ctx,
            &format!(
                "WITH x AS ({}) SELECT * FROM x WHERE g IS NOT NULL",
                monthly("CAST(v AS DOUBLE) / CAST(LAG(v, 12) OVER (ORDER BY p) AS DOUBLE) - 1 AS g")
            ),
        ),
        false,
    );
}

#[test]
fn shares_and_conversion_windows_equal_hand_written_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut env = load(root, SettingsFile::default());
    let ctx = sql_context();
    let t = env.query(
        &["enquiry_share"],
        Q {
            grain: Some("month"),
            dims: &["channel"],
            ..Q::default()
        },
    );
    let share = "WITH e AS (SELECT CAST(date_trunc('month', created_at) AS DATE) AS p, c.channel AS ch FROM enquiries \
                 LEFT JOIN channels c ON c.channel = enquiries.channel) \
                 SELECT CAST(a.p AS VARCHAR), a.ch, CAST(a.n AS DOUBLE) / t.n FROM \
                 (SELECT p, ch, COUNT(*) AS n FROM e GROUP BY 1, 2) a JOIN (SELECT p, COUNT(*) AS n FROM e GROUP BY 1) t ON a.p = t.p";
    compare("enquiry_share by channel", &t, 0, &sql(&ctx, share), false);

    // Filtered: the total is the filtered total.
    let t = env.query(
        &["enquiry_share"],
        Q {
            grain: Some("quarter"),
            dims: &["channel"],
            filter: Some("region = \"north\""),
            ..Q::default()
        },
    );
    let share = "WITH e AS (SELECT CAST(date_trunc('quarter', created_at) AS DATE) AS p, c.channel AS ch FROM enquiries \
                 LEFT JOIN channels c ON c.channel = enquiries.channel WHERE region = 'north') \
                 SELECT CAST(a.p AS VARCHAR), a.ch, CAST(a.n AS DOUBLE) / t.n FROM \
                 (SELECT p, ch, COUNT(*) AS n FROM e GROUP BY 1, 2) a JOIN (SELECT p, COUNT(*) AS n FROM e GROUP BY 1) t ON a.p = t.p";
    compare("enquiry_share by channel, north", &t, 0, &sql(&ctx, share), false);

    let t = env.query(
        &["spend_share"],
        Q {
            grain: Some("month"),
            dims: &["channel"],
            ..Q::default()
        },
    );
    let share = "WITH s AS (SELECT CAST(date_trunc('month', date) AS DATE) AS p, c.channel AS ch, spend FROM marketing_spend m \
                 LEFT JOIN channels c ON c.channel = m.channel) \
                 SELECT CAST(a.p AS VARCHAR), a.ch, a.v / t.v FROM \
                 (SELECT p, ch, SUM(spend) AS v FROM s GROUP BY 1, 2) a JOIN (SELECT p, SUM(spend) AS v FROM s GROUP BY 1) t ON a.p = t.p";
    // Channels without spend have a share of 0 (tally shows every channel seen).
    compare("spend_share by channel", &t, 0, &sql(&ctx, share), true);

    let t = env.query(
        &["enquiry_conversion_30d"],
        Q {
            grain: Some("month"),
            ..Q::default()
        },
    );
    let conversion = "WITH converted AS (SELECT DISTINCT e.enquiry_id FROM enquiries e JOIN jobs j ON j.customer_id = e.customer_id \
                      WHERE j.status = 'completed' AND j.completed_at >= e.created_at \
                      AND j.completed_at <= e.created_at + INTERVAL '30 days') \
                      SELECT CAST(CAST(date_trunc('month', e.created_at) AS DATE) AS VARCHAR), \
                      CAST(COUNT(c.enquiry_id) AS DOUBLE) / COUNT(*) \
                      FROM enquiries e LEFT JOIN converted c ON c.enquiry_id = e.enquiry_id GROUP BY 1";
    compare("enquiry_conversion_30d", &t, 0, &sql(&ctx, conversion), false);
}

/// Periods cut at local midnight in America/New_York, windows over them: against the local
/// date the data carries (year, month, day), on every day of 2013.
#[test]
fn flights_windows_by_local_day_equal_window_functions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flights");
    let mut env = load(&root, SettingsFile::default());
    let ctx = SessionContext::new();
    let path = root.join("data/flights.parquet");
    runtime()
        .block_on(ctx.register_parquet("flights", path.to_str().unwrap(), ParquetReadOptions::default()))
        .unwrap();
    register_spine(&ctx, "2013-01-01", "2013-12-31");
    let local_day = "make_date(CAST(year AS INT), CAST(month AS INT), CAST(day AS INT))";
    let t = env.query(
        &["flights_7d", "cancellation_rate_7d", "flights_mtd"],
        Q {
            grain: Some("day"),
            ..Q::default()
        },
    );
    assert_eq!(t.rows.len(), 365);
    let flights = format!("SELECT {local_day} AS day, COUNT(*) AS v FROM flights GROUP BY 1");
    let cancelled = format!("SELECT {local_day} AS day, COUNT(*) AS v FROM flights WHERE dep_time IS NULL GROUP BY 1");
    compare("flights_7d", &t, 0, &sql(&ctx, &rolling(&flights, 7)), false);
    let rate = format!(
        "WITH c AS ({}), f AS ({}) SELECT f.p, c.v / f.v FROM c JOIN f ON c.p = f.p WHERE f.v <> 0",
        rolling(&cancelled, 7),
        rolling(&flights, 7)
    );
    compare("cancellation_rate_7d", &t, 1, &sql(&ctx, &rate), false);
    let mtd = format!(
        "WITH daily AS ({flights}) SELECT CAST(s.day AS VARCHAR), \
         SUM(COALESCE(CAST(d.v AS DOUBLE), 0)) OVER (PARTITION BY date_trunc('month', s.day) ORDER BY s.day ROWS UNBOUNDED PRECEDING) \
         FROM spine s LEFT JOIN daily d ON d.day = s.day"
    );
    compare("flights_mtd", &t, 2, &sql(&ctx, &mtd), false);
}

/// The DSL example of the product definition, exactly as written there, over the bundled
/// enquiries and jobs: its metrics over time check clean and agree with the plain metrics.
#[test]
fn the_product_definition_example_runs_as_written() {
    let example = r#"
source enquiries {
  file: "data/enquiries.csv"
  time: created_at
  key: enquiry_id
}

source jobs {
  file: "data/jobs.parquet"
  time: completed_at
  key: job_id
  join enquiries on enquiry_id        // many-to-one: each job came from one enquiry
}

dimension channel = enquiries.channel

metric enquiries "Enquiries" = count(enquiries)
metric won_jobs = count(jobs where status = "completed")
metric revenue "Revenue" = sum(jobs.amount where status = "completed") {
  format: currency(USD)
  owner: "operations"
  description: "Invoiced revenue of completed jobs"
}
metric conversion "Enquiry to job" = won_jobs / enquiries { format: percent }
metric revenue_per_job = revenue / won_jobs
metric days_to_complete = avg(days_between(jobs.started_at, jobs.completed_at))
metric revenue_7d = rolling(revenue, 7 days)
metric revenue_mtd = to_date(revenue, month)
metric revenue_yoy = revenue / revenue[-1 year] - 1

target revenue >= 120000 per month from 2026-01
target conversion >= 25%
target won_jobs = 1500 by 2026-12-31

alert conversion_drop {
  when conversion < 20% for 3 days
  severity critical
  message "Conversion fell to {{ value }} in {{ period }}"
}
alert stale_jobs { when source jobs older than 2 days severity critical }

report weekly "Weekly operations" {
  grain: week
  range: last 26 weeks
  metrics: [enquiries, conversion, revenue, revenue_per_job, days_to_complete]
  by: channel
}
"#;
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/services/data");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::create_dir_all(dir.path().join("metrics")).unwrap();
    for f in ["enquiries.csv", "jobs.parquet"] {
        std::fs::copy(data.join(f), dir.path().join("data").join(f)).unwrap();
    }
    std::fs::write(dir.path().join("metrics/operations.tally"), example).unwrap();
    let mut env = load(dir.path(), SettingsFile::default());
    assert_eq!(env.model.targets.len(), 3);
    let t = env.query(
        &["revenue", "revenue_7d", "revenue_mtd", "revenue_yoy"],
        Q {
            grain: Some("day"),
            ..Q::default()
        },
    );
    let day: Vec<f64> = t.rows.iter().map(|r| r.values[0].unwrap()).collect();
    let mut month_to_date = 0.0;
    for (i, r) in t.rows.iter().enumerate() {
        let p = r.period.unwrap();
        let week: f64 = day[i.saturating_sub(6)..=i].iter().sum();
        crate::assert_close(r.values[1], Some(week), &format!("revenue_7d at {p}"));
        if chrono::Datelike::day(&p) == 1 {
            month_to_date = 0.0;
        }
        month_to_date += day[i];
        crate::assert_close(r.values[2], Some(month_to_date), &format!("revenue_mtd at {p}"));
    }
    let by_year = env.query(
        &["revenue", "revenue_yoy"],
        Q {
            grain: Some("year"),
            ..Q::default()
        },
    );
    let (y2024, y2025) = (by_year.rows[0].values[0].unwrap(), by_year.rows[1].values[0].unwrap());
    crate::assert_close(by_year.rows[0].values[1], None, "no year before 2024");
    crate::assert_close(by_year.rows[1].values[1], Some(y2025 / y2024 - 1.0), "2025 on 2024");

    // Every command runs on it as written, the YAML form of the same project too.
    let yaml_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(yaml_dir.path().join("metrics")).unwrap();
    std::fs::create_dir_all(yaml_dir.path().join("data")).unwrap();
    for f in ["enquiries.csv", "jobs.parquet"] {
        std::fs::copy(data.join(f), yaml_dir.path().join("data").join(f)).unwrap();
    }
    std::fs::write(yaml_dir.path().join("metrics/operations.yaml"), crate::PRODUCT_YAML).unwrap();
    // The settings of the product definition, as written there.
    std::fs::write(
        yaml_dir.path().join("tally.yaml"),
        "definitions: metrics        # where .tally and .yaml definitions live\n\
         data: .                     # relative source paths resolve against this\n\
         reports: reports            # where versions are written\n\
         time_zone: Europe/London    # periods are cut at local midnight\n\
         week_start: monday\n\
         fiscal_year_start: april\n\
         memory_limit: 2GB           # DataFusion's memory pool; spill or a clear error beyond it\n",
    )
    .unwrap();
    for project in [dir.path(), yaml_dir.path()] {
        for args in [
            &["check"][..],
            &["list"],
            &[
                "query",
                "enquiries",
                "conversion",
                "revenue",
                "--by",
                "week",
                "--dim",
                "channel",
            ],
            &["explain", "revenue"],
            &["targets", "--as-of", "2025-12-31"],
            &["alerts", "--as-of", "2025-12-31", "--no-state", "--format", "json"],
            &["run", "--as-of", "2025-12-31"],
            &["report", "--as-of", "2025-12-31"],
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
                .args(args)
                .arg("--project")
                .arg(project)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Alerts may fire (exit code 1); nothing else may fail.
            let ok = out.status.code() == Some(0) || (args[0] == "alerts" && out.status.code() == Some(1));
            assert!(ok, "tally {args:?} in {}: {stderr}", project.display());
        }
    }
}
