//! Every KPI in `metrics/`, computed by tally and by SQL written by hand (run with
//! DataFusion's SQL over the same files, read separately), on the bundled data: for every
//! month, and for every channel where a KPI is broken down by channel. They must be equal.

use crate::{Q, assert_close, load, runtime};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use std::collections::HashMap;
use std::path::Path;
use tally::settings::SettingsFile;

type Series = HashMap<(String, Option<String>), Option<f64>>;

fn month(col: &str) -> String {
    format!("CAST(CAST(date_trunc('month', {col}) AS DATE) AS VARCHAR)")
}

fn epoch(col: &str) -> String {
    format!("extract(epoch FROM CAST({col} AS TIMESTAMP))")
}

pub(crate) fn sql_context() -> SessionContext {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/services/data");
    let ctx = SessionContext::new();
    runtime().block_on(async {
        for t in ["channels", "enquiries", "quotes", "marketing_spend"] {
            let path = data.join(format!("{t}.csv"));
            ctx.register_csv(t, path.to_str().unwrap(), CsvReadOptions::new())
                .await
                .unwrap();
        }
        for t in ["jobs", "payments", "web_sessions"] {
            let path = data.join(format!("{t}.parquet"));
            ctx.register_parquet(t, path.to_str().unwrap(), ParquetReadOptions::default())
                .await
                .unwrap();
        }
    });
    ctx
}

/// Runs SQL returning (period, value) or (period, dimension, value).
pub(crate) fn sql(ctx: &SessionContext, query: &str) -> Series {
    let batches = runtime()
        .block_on(async { ctx.sql(query).await?.collect().await })
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut out = Series::new();
    for b in batches {
        let n = b.num_columns();
        let period = cast(b.column(0), &DataType::Utf8).unwrap();
        let dim = (n == 3).then(|| cast(b.column(1), &DataType::Utf8).unwrap());
        let value = cast(b.column(n - 1), &DataType::Float64).unwrap();
        let (p, v) = (period.as_string::<i32>(), value.as_primitive::<Float64Type>());
        for i in 0..b.num_rows() {
            if p.is_null(i) {
                continue; // rows without a time value belong to no period
            }
            let d = dim.as_ref().and_then(|d| {
                let d = d.as_string::<i32>();
                d.is_valid(i).then(|| d.value(i).to_string())
            });
            out.insert((p.value(i).to_string(), d), v.is_valid(i).then(|| v.value(i)));
        }
    }
    out
}

/// Values per period of a column, for percentiles computed here by hand.
fn percentile_by_month(ctx: &SessionContext, query: &str, p: f64) -> Series {
    let batches = runtime()
        .block_on(async { ctx.sql(query).await?.collect().await })
        .unwrap();
    let mut groups: HashMap<String, Vec<f64>> = HashMap::new();
    for b in batches {
        let period = cast(b.column(0), &DataType::Utf8).unwrap();
        let value = cast(b.column(1), &DataType::Float64).unwrap();
        let (per, v) = (period.as_string::<i32>(), value.as_primitive::<Float64Type>());
        for i in 0..b.num_rows() {
            if per.is_valid(i) && v.is_valid(i) {
                groups.entry(per.value(i).to_string()).or_default().push(v.value(i));
            }
        }
    }
    groups
        .into_iter()
        .map(|(k, mut xs)| {
            xs.sort_by(f64::total_cmp);
            // Linear interpolation between closest ranks (percentile_cont).
            let pos = p * (xs.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let v = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64);
            ((k, None), Some(v))
        })
        .collect()
}

/// Hand-written SQL for every KPI of `metrics/`, by month. `true`: 0 when a month has no row.
fn monthly_sql() -> Vec<(&'static str, String, bool)> {
    let e = month("created_at");
    let j = month("completed_at");
    let q = month("quoted_at");
    let pay = month("invoiced_at");
    let sp = month("date");
    let ws = month("started_at");
    let ratio = |num: &str, den: &str| {
        format!(
            "WITH n AS ({num}), d AS ({den}) \
             SELECT d.p, COALESCE(n.v, 0) / d.v FROM d LEFT JOIN n ON n.p = d.p WHERE d.v <> 0"
        )
    };
    let enquiries = format!("SELECT {e} AS p, CAST(COUNT(*) AS DOUBLE) AS v FROM enquiries GROUP BY 1");
    let won = format!("SELECT {j} AS p, CAST(COUNT(*) AS DOUBLE) AS v FROM jobs WHERE status = 'completed' GROUP BY 1");
    let organic = format!(
        "SELECT {e} AS p, CAST(COUNT(*) AS DOUBLE) AS v FROM enquiries WHERE channel IN ('organic_search', 'referral') GROUP BY 1"
    );
    let spend = format!("SELECT {sp} AS p, SUM(spend) AS v FROM marketing_spend GROUP BY 1");
    let sessions = format!("SELECT {ws} AS p, CAST(COUNT(*) AS DOUBLE) AS v FROM web_sessions GROUP BY 1");
    let converted =
        format!("SELECT {ws} AS p, CAST(COUNT(*) AS DOUBLE) AS v FROM web_sessions WHERE converted GROUP BY 1");
    let quotes = format!("SELECT {q} AS p, CAST(COUNT(*) AS DOUBLE) AS v FROM quotes GROUP BY 1");
    let accepted = format!("SELECT {q} AS p, CAST(COUNT(*) AS DOUBLE) AS v FROM quotes WHERE accepted GROUP BY 1");
    vec![
        ("enquiries", enquiries.clone(), true),
        ("won_jobs", won.clone(), true),
        ("conversion", ratio(&won, &enquiries), false),
        (
            "revenue",
            format!("SELECT {j}, SUM(CAST(amount AS DOUBLE)) FROM jobs WHERE status = 'completed' GROUP BY 1"),
            true,
        ),
        (
            "job_cost",
            format!("SELECT {j}, SUM(CAST(cost AS DOUBLE)) FROM jobs WHERE status = 'completed' GROUP BY 1"),
            true,
        ),
        (
            "gross_margin",
            format!(
                "SELECT p, (r - c) / r FROM (SELECT {j} AS p, SUM(CAST(amount AS DOUBLE)) AS r, SUM(CAST(cost AS DOUBLE)) AS c \
                 FROM jobs WHERE status = 'completed' GROUP BY 1) WHERE r <> 0"
            ),
            false,
        ),
        (
            "revenue_per_job",
            format!(
                "SELECT {j}, SUM(CAST(amount AS DOUBLE)) / COUNT(*) FROM jobs WHERE status = 'completed' GROUP BY 1"
            ),
            false,
        ),
        (
            "days_to_job",
            format!(
                "SELECT {}, AVG(({} - {}) / 86400.0) FROM jobs j LEFT JOIN enquiries e ON j.enquiry_id = e.enquiry_id GROUP BY 1",
                month("j.completed_at"),
                epoch("j.started_at"),
                epoch("e.created_at")
            ),
            false,
        ),
        (
            "completion_hours",
            format!(
                "SELECT {j}, AVG(({} - {}) / 3600.0) FROM jobs WHERE status = 'completed' GROUP BY 1",
                epoch("completed_at"),
                epoch("started_at")
            ),
            false,
        ),
        (
            "active_customers",
            format!("SELECT {j}, COUNT(DISTINCT customer_id) FROM jobs WHERE status = 'completed' GROUP BY 1"),
            true,
        ),
        ("organic_enquiries", organic.clone(), true),
        ("organic_share", ratio(&organic, &enquiries), false),
        (
            "cancelled_jobs",
            format!("SELECT {j}, COUNT(*) FROM jobs WHERE status = 'cancelled' AND started_at IS NOT NULL GROUP BY 1"),
            true,
        ),
        ("quotes_sent", quotes.clone(), true),
        ("quote_win_rate", ratio(&accepted, &quotes), false),
        (
            "average_deal_size",
            format!("SELECT {q}, AVG(amount) FROM quotes WHERE accepted = true GROUP BY 1"),
            false,
        ),
        (
            "invoiced",
            format!("SELECT {pay}, SUM(CAST(amount AS DOUBLE)) FROM payments GROUP BY 1"),
            true,
        ),
        (
            "outstanding",
            format!("SELECT {pay}, SUM(CAST(amount AS DOUBLE)) FROM payments WHERE paid_at IS NULL GROUP BY 1"),
            true,
        ),
        (
            "days_to_payment",
            format!(
                "SELECT {pay}, AVG(({} - {}) / 86400.0) FROM payments WHERE paid_at IS NOT NULL GROUP BY 1",
                epoch("paid_at"),
                epoch("invoiced_at")
            ),
            false,
        ),
        ("marketing_spend", spend.clone(), true),
        (
            "cost_per_acquisition",
            format!(
                "WITH n AS ({spend}), d AS ({won}) SELECT d.p, COALESCE(n.v, 0) / d.v FROM d LEFT JOIN n ON n.p = d.p WHERE d.v <> 0"
            ),
            false,
        ),
        (
            "paid_clicks",
            format!("SELECT {sp}, SUM(clicks) FROM marketing_spend WHERE channel = 'paid_ads' GROUP BY 1"),
            true,
        ),
        ("sessions", sessions.clone(), true),
        ("website_conversions", converted.clone(), true),
        ("website_conversion_rate", ratio(&converted, &sessions), false),
    ]
}

#[track_caller]
pub(crate) fn compare(name: &str, tally: &tally::run::ResultTable, col: usize, expected: &Series, zero: bool) {
    let mut seen = 0;
    for row in &tally.rows {
        let period = row.period.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let key = (period, row.dimensions.first().cloned().flatten());
        let exp = match expected.get(&key) {
            Some(v) => {
                seen += 1;
                *v
            }
            None if zero => Some(0.0),
            None => None,
        };
        assert_close(row.values[col], exp, &format!("{name} at {key:?}"));
    }
    assert_eq!(
        seen,
        expected.len(),
        "{name}: every period of the SQL result is in tally's result"
    );
}

#[test]
fn every_kpi_by_month_equals_hand_written_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut env = load(root, SettingsFile::default());
    let ctx = sql_context();
    let mut checked: Vec<&str> = Vec::new();
    for (name, query, zero) in monthly_sql() {
        let t = env.query(
            &[name],
            Q {
                grain: Some("month"),
                ..Q::default()
            },
        );
        assert!(t.rows.len() >= 24, "{name}: two years of months");
        compare(name, &t, 0, &sql(&ctx, &query), zero);
        checked.push(name);
    }
    let amounts = format!(
        "SELECT {}, amount FROM jobs WHERE status = 'completed'",
        month("completed_at")
    );
    for (name, p) in [("median_job_value", 0.5), ("p90_job_value", 0.9)] {
        let t = env.query(
            &[name],
            Q {
                grain: Some("month"),
                ..Q::default()
            },
        );
        compare(name, &t, 0, &percentile_by_month(&ctx, &amounts, p), false);
        checked.push(name);
    }
    // Every metric of the project is covered.
    let mut all: Vec<&str> = env.model.metrics.iter().map(|m| m.name.as_str()).collect();
    all.retain(|m| !checked.contains(m) && !crate::over_time::CHECKED.contains(m));
    assert!(all.is_empty(), "metrics without an independent check: {all:?}");

    // All at once (one scan per source) gives the same numbers as one at a time.
    let names: Vec<&str> = monthly_sql().iter().map(|m| m.0).collect();
    let together = env.query(
        &names,
        Q {
            grain: Some("month"),
            ..Q::default()
        },
    );
    for (i, (name, query, zero)) in monthly_sql().into_iter().enumerate() {
        let expected = sql(&ctx, &query);
        for row in &together.rows {
            let key = (row.period.unwrap().to_string(), None);
            let exp = expected
                .get(&key)
                .copied()
                .unwrap_or(if zero { Some(0.0) } else { None });
            assert_close(row.values[i], exp, &format!("{name} among all at {key:?}"));
        }
    }
}

#[test]
fn kpis_by_channel_equal_hand_written_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut env = load(root, SettingsFile::default());
    let ctx = sql_context();
    let e = month("e.created_at");
    let j = month("j.completed_at");
    let enquiries = format!(
        "SELECT {e} AS p, c.channel AS d, CAST(COUNT(*) AS DOUBLE) AS v FROM enquiries e LEFT JOIN channels c ON e.channel = c.channel GROUP BY 1, 2"
    );
    let won = format!(
        "SELECT {j} AS p, c.channel AS d, CAST(COUNT(*) AS DOUBLE) AS v FROM jobs j \
         LEFT JOIN enquiries e ON j.enquiry_id = e.enquiry_id LEFT JOIN channels c ON e.channel = c.channel \
         WHERE j.status = 'completed' GROUP BY 1, 2"
    );
    let revenue = won.replace("CAST(COUNT(*) AS DOUBLE)", "SUM(CAST(j.amount AS DOUBLE))");
    let spend = format!(
        "SELECT {} AS p, c.channel AS d, SUM(s.spend) AS v FROM marketing_spend s LEFT JOIN channels c ON s.channel = c.channel GROUP BY 1, 2",
        month("s.date")
    );
    let ratio = |num: &str, den: &str| {
        format!(
            "WITH n AS ({num}), d AS ({den}) SELECT d.p, d.d, COALESCE(n.v, 0) / d.v FROM d \
             LEFT JOIN n ON n.p = d.p AND n.d IS NOT DISTINCT FROM d.d WHERE d.v <> 0"
        )
    };
    let cases = [
        ("enquiries", enquiries.clone(), true),
        ("won_jobs", won.clone(), true),
        ("revenue", revenue, true),
        ("conversion", ratio(&won, &enquiries), false),
        ("marketing_spend", spend.clone(), true),
        ("cost_per_acquisition", ratio(&spend, &won), false),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let t = env.query(
        &names,
        Q {
            grain: Some("month"),
            dims: &["channel"],
            ..Q::default()
        },
    );
    // 24 months x (5 channels + enquiries without a channel)
    assert_eq!(t.rows.len(), 24 * 6);
    for (i, (name, query, zero)) in cases.into_iter().enumerate() {
        compare(name, &t, i, &sql(&ctx, &query), zero);
    }
}

/// The flights of New York City in 2013 (real data): periods cut at local midnight in
/// America/New_York must agree with the local date the data carries in year/month/day,
/// on every day of the year, both DST changes included.
#[test]
fn flights_by_local_day_and_month_equal_hand_written_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flights");
    let mut env = load(&root, SettingsFile::default());
    let ctx = SessionContext::new();
    let path = root.join("data/flights.parquet");
    runtime()
        .block_on(ctx.register_parquet("flights", path.to_str().unwrap(), ParquetReadOptions::default()))
        .unwrap();
    let airlines = root.join("data/airlines.parquet");
    runtime()
        .block_on(ctx.register_parquet("airlines", airlines.to_str().unwrap(), ParquetReadOptions::default()))
        .unwrap();

    let local_day = "CAST(make_date(CAST(year AS INT), CAST(month AS INT), CAST(day AS INT)) AS VARCHAR)";
    let t = env.query(
        &["flights"],
        Q {
            grain: Some("day"),
            ..Q::default()
        },
    );
    assert_eq!(t.rows.len(), 365);
    compare(
        "flights",
        &t,
        0,
        &sql(&ctx, &format!("SELECT {local_day}, COUNT(*) FROM flights GROUP BY 1")),
        true,
    );

    let local_month = "CAST(make_date(CAST(year AS INT), CAST(month AS INT), 1) AS VARCHAR)";
    let cases = [
        (
            "cancellation_rate",
            format!(
                "SELECT {local_month}, AVG(CASE WHEN dep_time IS NULL THEN 1.0 ELSE 0.0 END) FROM flights GROUP BY 1"
            ),
            false,
        ),
        (
            "on_time_rate",
            format!(
                "SELECT {local_month}, AVG(CASE WHEN arr_delay <= 15 THEN 1.0 ELSE 0.0 END) FROM flights WHERE arr_delay IS NOT NULL GROUP BY 1"
            ),
            false,
        ),
        (
            "avg_dep_delay",
            format!("SELECT {local_month}, AVG(CAST(dep_delay AS DOUBLE)) FROM flights GROUP BY 1"),
            false,
        ),
        (
            "distance_flown",
            format!("SELECT {local_month}, SUM(distance) FROM flights WHERE dep_time IS NOT NULL GROUP BY 1"),
            true,
        ),
        (
            "routes",
            format!("SELECT {local_month}, COUNT(DISTINCT dest) FROM flights GROUP BY 1"),
            true,
        ),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let t = env.query(
        &names,
        Q {
            grain: Some("month"),
            ..Q::default()
        },
    );
    assert_eq!(t.rows.len(), 12);
    for (i, (name, query, zero)) in cases.into_iter().enumerate() {
        compare(name, &t, i, &sql(&ctx, &query), zero);
    }
    let p95 = percentile_by_month(&ctx, &format!("SELECT {local_month}, arr_delay FROM flights"), 0.95);
    let t = env.query(
        &["p95_arr_delay"],
        Q {
            grain: Some("month"),
            ..Q::default()
        },
    );
    compare("p95_arr_delay", &t, 0, &p95, false);

    // By airline, through the join.
    let t = env.query(
        &["flights", "on_time_rate"],
        Q {
            dims: &["carrier"],
            ..Q::default()
        },
    );
    let by_airline = sql(
        &ctx,
        "SELECT '-', a.name, AVG(CASE WHEN f.arr_delay <= 15 THEN 1.0 ELSE 0.0 END) FROM flights f \
         LEFT JOIN airlines a ON f.carrier = a.carrier WHERE f.arr_delay IS NOT NULL GROUP BY 2",
    );
    assert_eq!(t.rows.len(), 16);
    for row in &t.rows {
        let key = ("-".to_string(), row.dimensions[0].clone());
        assert_close(row.values[1], by_airline[&key], &format!("on_time_rate of {key:?}"));
    }
}
