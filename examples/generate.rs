//! Writes the bundled example's data: the operational loop of a small home-services business
//! (enquiries by channel, quotes, jobs, payments, marketing spend, website sessions), as
//! Parquet and CSV, deterministic for a given seed and scale.
//!
//! ```text
//! cargo run --release --example generate -- [--out examples/services/data] [--scale 1] [--seed 42]
//! ```
//!
//! Scale 1 is two years and about 110,000 rows; `--scale 450` writes about 10 million
//! enquiries, in bounded memory (rows are written a month at a time). `--parquet` writes
//! every table as Parquet (benchmarks); by default some tables are CSV.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Weekday};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// SplitMix64 (the same sequence on every platform and version) with the draws the
/// generator needs.
struct Rng(tally::random::SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f() < p
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.f().max(1e-12), self.f());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn poisson(&mut self, mean: f64) -> usize {
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as usize;
        }
        let l = (-mean).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.f();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
    fn pick<'a>(&mut self, items: &[(&'a str, f64)]) -> &'a str {
        let total: f64 = items.iter().map(|i| i.1).sum();
        let mut x = self.f() * total;
        for (name, w) in items {
            if x < *w {
                return name;
            }
            x -= w;
        }
        items[items.len() - 1].0
    }
}

const CHANNELS: &[(&str, &str, &str)] = &[
    ("web_form", "direct", "Web form"),
    ("phone", "direct", "Phone"),
    ("referral", "organic", "Referral"),
    ("organic_search", "organic", "Organic search"),
    ("paid_ads", "paid", "Paid ads"),
];
const SERVICES: &[(&str, f64, f64)] = &[
    // service, typical job value, share
    ("plumbing", 420.0, 0.35),
    ("electrical", 380.0, 0.25),
    ("heating", 1450.0, 0.2),
    ("renovation", 5200.0, 0.08),
    ("roofing", 2300.0, 0.12),
];
const REGIONS: &[(&str, f64)] = &[("north", 0.3), ("south", 0.25), ("east", 0.2), ("west", 0.25)];
const PAGES: &[(&str, f64)] = &[
    ("/", 0.35),
    ("/services/plumbing", 0.15),
    ("/services/heating", 0.1),
    ("/pricing", 0.12),
    ("/contact", 0.08),
    ("/blog/boiler-maintenance", 0.1),
    ("/blog/leak-detection", 0.1),
];

struct Args {
    out: PathBuf,
    scale: f64,
    seed: u64,
    start: NaiveDate,
    days: i64,
    parquet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        out: PathBuf::from("examples/services/data"),
        scale: 1.0,
        seed: 42,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        days: 731,
        parquet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = PathBuf::from(value()?),
            "--scale" => a.scale = value()?.parse().map_err(|_| "--scale takes a number")?,
            "--seed" => a.seed = value()?.parse().map_err(|_| "--seed takes a number")?,
            "--days" => a.days = value()?.parse().map_err(|_| "--days takes a number")?,
            "--parquet" => a.parquet = true,
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --out DIR --scale N --seed N --days N --parquet"
                ));
            }
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = generate(&args) {
        eprintln!("error: {e}");
        std::process::exit(4);
    }
}

/// A table being written, a month of rows at a time.
struct Sink {
    schema: SchemaRef,
    parquet: Option<ArrowWriter<File>>,
    csv: Option<datafusion::arrow::csv::Writer<File>>,
    rows: usize,
}

impl Sink {
    fn new(dir: &Path, name: &str, schema: SchemaRef, csv: bool) -> Result<Sink, Box<dyn std::error::Error>> {
        if csv {
            let f = File::create(dir.join(format!("{name}.csv")))?;
            Ok(Sink {
                schema,
                parquet: None,
                csv: Some(datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(f)),
                rows: 0,
            })
        } else {
            let f = File::create(dir.join(format!("{name}.parquet")))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
                .set_created_by("tally example generator".into())
                .build();
            Ok(Sink {
                parquet: Some(ArrowWriter::try_new(f, schema.clone(), Some(props))?),
                schema,
                csv: None,
                rows: 0,
            })
        }
    }
    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), Box<dyn std::error::Error>> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.rows += batch.num_rows();
        if let Some(w) = self.parquet.as_mut() {
            w.write(&batch)?;
        }
        if let Some(w) = self.csv.as_mut() {
            w.write(&batch)?;
        }
        Ok(())
    }
    fn finish(self) -> Result<usize, Box<dyn std::error::Error>> {
        if let Some(w) = self.parquet {
            w.close()?;
        }
        Ok(self.rows)
    }
}

fn ts(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp_micros()
}

fn days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

fn money(x: f64) -> i128 {
    (x * 100.0).round() as i128
}

fn generate(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&a.out)?;
    let mut rng = Rng(tally::random::SplitMix64(a.seed));
    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, None);
    let money_type = DataType::Decimal128(12, 2);

    // channels.csv: a lookup table (no time column).
    let channels = Arc::new(Schema::new(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let mut sink = Sink::new(&a.out, "channels", channels, !a.parquet)?;
    let mut cols: [StringBuilder; 3] = Default::default();
    for (c, k, l) in CHANNELS {
        cols[0].append_value(c);
        cols[1].append_value(k);
        cols[2].append_value(l);
    }
    sink.write(cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect())?;
    sink.finish()?;

    let enquiry_schema = Arc::new(Schema::new(vec![
        Field::new("enquiry_id", DataType::Int64, false),
        Field::new("created_at", ts_type.clone(), false),
        Field::new("channel", DataType::Utf8, true),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("service", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
    ]));
    let quote_schema = Arc::new(Schema::new(vec![
        Field::new("quote_id", DataType::Int64, false),
        Field::new("enquiry_id", DataType::Int64, false),
        Field::new("quoted_at", ts_type.clone(), false),
        Field::new("amount", DataType::Float64, false),
        Field::new("accepted", DataType::Boolean, false),
    ]));
    let job_schema = Arc::new(Schema::new(vec![
        Field::new("job_id", DataType::Int64, false),
        Field::new("enquiry_id", DataType::Int64, true),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("service", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("started_at", ts_type.clone(), true),
        Field::new("completed_at", ts_type.clone(), true),
        Field::new("amount", money_type.clone(), false),
        Field::new("cost", money_type.clone(), false),
    ]));
    let payment_schema = Arc::new(Schema::new(vec![
        Field::new("payment_id", DataType::Int64, false),
        Field::new("job_id", DataType::Int64, false),
        Field::new("invoiced_at", DataType::Date32, false),
        Field::new("paid_at", DataType::Date32, true),
        Field::new("amount", money_type.clone(), false),
    ]));
    let spend_schema = Arc::new(Schema::new(vec![
        Field::new("date", DataType::Date32, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("spend", DataType::Float64, false),
        Field::new("clicks", DataType::Int64, false),
    ]));
    let session_schema = Arc::new(Schema::new(vec![
        Field::new("session_id", DataType::Int64, false),
        Field::new("started_at", ts_type.clone(), false),
        Field::new("landing_page", DataType::Utf8, false),
        Field::new("traffic", DataType::Utf8, false),
        Field::new("converted", DataType::Boolean, false),
    ]));
    let mut enquiries = Sink::new(&a.out, "enquiries", enquiry_schema, !a.parquet)?;
    let mut quotes = Sink::new(&a.out, "quotes", quote_schema, !a.parquet)?;
    let mut jobs = Sink::new(&a.out, "jobs", job_schema, false)?;
    let mut payments = Sink::new(&a.out, "payments", payment_schema, false)?;
    let mut spend = Sink::new(&a.out, "marketing_spend", spend_schema, !a.parquet)?;
    let mut sessions = Sink::new(&a.out, "web_sessions", session_schema, false)?;

    let (mut enquiry_id, mut quote_id, mut job_id, mut payment_id, mut session_id) = (0i64, 0i64, 0i64, 0i64, 0i64);
    let customers = (4000.0 * a.scale) as i64;
    let mut day = a.start;
    let end = a.start + Duration::days(a.days);
    while day < end {
        let month_end = (day.with_day(1).expect("day") + chrono::Months::new(1)).min(end);
        let mut e = (
            Int64Builder::new(),
            TimestampMicrosecondBuilder::new(),
            StringBuilder::new(),
            Int64Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut q = (
            Int64Builder::new(),
            Int64Builder::new(),
            TimestampMicrosecondBuilder::new(),
            Float64Builder::new(),
            BooleanBuilder::new(),
        );
        let money_b = || Decimal128Builder::new().with_data_type(DataType::Decimal128(12, 2));
        let mut j = (
            Int64Builder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            TimestampMicrosecondBuilder::new(),
            TimestampMicrosecondBuilder::new(),
            money_b(),
            money_b(),
        );
        let mut p = (
            Int64Builder::new(),
            Int64Builder::new(),
            Date32Builder::new(),
            Date32Builder::new(),
            money_b(),
        );
        let mut s = (
            Date32Builder::new(),
            StringBuilder::new(),
            Float64Builder::new(),
            Int64Builder::new(),
        );
        let mut w = (
            Int64Builder::new(),
            TimestampMicrosecondBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            BooleanBuilder::new(),
        );
        while day < month_end {
            let t = (day - a.start).num_days() as f64 / 365.0;
            // Busier in spring and autumn, quieter at weekends, growing about 18% a year.
            let season = 1.0
                + 0.22 * (std::f64::consts::TAU * (day.ordinal() as f64 - 80.0) / 365.0).sin()
                + if day.month() == 12 { -0.25 } else { 0.0 };
            let weekday = match day.weekday() {
                Weekday::Sat => 0.55,
                Weekday::Sun => 0.35,
                Weekday::Mon => 1.15,
                _ => 1.0,
            };
            let level = a.scale * season * weekday * (1.0 + 0.18 * t);
            // Organic search grows, paid ads shrink a little.
            let mix = [
                ("web_form", 0.22),
                ("phone", 0.24 - 0.03 * t),
                ("referral", 0.16),
                ("organic_search", 0.16 + 0.06 * t),
                ("paid_ads", 0.22 - 0.03 * t),
            ];
            for _ in 0..rng.poisson(30.0 * level) {
                enquiry_id += 1;
                let created = day.and_hms_opt(0, 0, 0).expect("time") + Duration::minutes(rng.range(7 * 60, 20 * 60));
                let channel = rng.pick(&mix);
                let service_i = {
                    let x = rng.pick(&SERVICES.iter().map(|s| (s.0, s.2)).collect::<Vec<_>>());
                    SERVICES.iter().position(|s| s.0 == x).expect("service")
                };
                let (service, typical, _) = SERVICES[service_i];
                let customer = rng.range(1, customers.max(1));
                e.0.append_value(enquiry_id);
                e.1.append_value(ts(created));
                // A few enquiries were logged without a channel.
                if rng.chance(0.01) {
                    e.2.append_null()
                } else {
                    e.2.append_value(channel)
                }
                e.3.append_value(customer);
                e.4.append_value(service);
                e.5.append_value(rng.pick(REGIONS));
                // Quote, then maybe a job.
                let win = match channel {
                    "referral" => 0.55,
                    "phone" => 0.42,
                    "web_form" => 0.33,
                    "organic_search" => 0.3,
                    _ => 0.24,
                };
                if !rng.chance(0.82) {
                    continue;
                }
                quote_id += 1;
                let quoted = created + Duration::hours(rng.range(2, 96));
                let value = (typical * (0.45 * rng.normal()).exp()).max(60.0);
                let accepted = rng.chance(win / 0.82);
                q.0.append_value(quote_id);
                q.1.append_value(enquiry_id);
                q.2.append_value(ts(quoted));
                q.3.append_value((value * 100.0).round() / 100.0);
                q.4.append_value(accepted);
                if !accepted {
                    continue;
                }
                job_id += 1;
                let started = quoted + Duration::hours(rng.range(20, 24 * 14));
                let duration = Duration::minutes((typical.sqrt() * 40.0 * (0.5 * rng.normal()).exp()) as i64 + 60);
                let completed = started + duration;
                let status = if rng.chance(0.05) {
                    "cancelled"
                } else if completed.date() >= end {
                    "in_progress"
                } else {
                    "completed"
                };
                let amount = value * (1.0 + 0.08 * rng.normal());
                let cost = amount * (0.52 + 0.1 * rng.f());
                j.0.append_value(job_id);
                j.1.append_value(enquiry_id);
                j.2.append_value(customer);
                j.3.append_value(service);
                j.4.append_value(status);
                j.5.append_value(ts(started));
                if status == "completed" {
                    j.6.append_value(ts(completed))
                } else {
                    j.6.append_null()
                }
                j.7.append_value(money(amount.max(50.0)));
                j.8.append_value(money(cost.max(20.0)));
                if status == "completed" {
                    payment_id += 1;
                    let invoiced = completed.date();
                    let paid = invoiced + Duration::days((rng.f().powi(2) * 55.0) as i64);
                    p.0.append_value(payment_id);
                    p.1.append_value(job_id);
                    p.2.append_value(days(invoiced));
                    if rng.chance(0.04) || paid >= end {
                        p.3.append_null()
                    } else {
                        p.3.append_value(days(paid))
                    }
                    p.4.append_value(money(amount.max(50.0)));
                }
            }
            // Walk-in and repeat jobs without an enquiry.
            for _ in 0..rng.poisson(0.6 * level) {
                job_id += 1;
                let (service, typical, _) = SERVICES[rng.range(0, 2) as usize];
                let started = day.and_hms_opt(9, 0, 0).expect("time") + Duration::minutes(rng.range(0, 480));
                let completed = started + Duration::minutes(rng.range(45, 300));
                let amount = typical * (0.3 * rng.normal()).exp();
                j.0.append_value(job_id);
                j.1.append_null();
                j.2.append_value(rng.range(1, customers.max(1)));
                j.3.append_value(service);
                j.4.append_value("completed");
                j.5.append_value(ts(started));
                j.6.append_value(ts(completed));
                j.7.append_value(money(amount));
                j.8.append_value(money(amount * 0.6));
            }
            for (channel, daily, cpc) in [
                ("paid_ads", 160.0, 2.4),
                ("organic_search", 45.0, 0.0),
                ("phone", 18.0, 0.0),
                ("referral", 12.0, 0.0),
            ] {
                let amount = daily
                    * a.scale.sqrt()
                    * (1.0 + 0.15 * rng.normal()).max(0.2)
                    * if day.month() == 12 { 0.7 } else { 1.0 };
                s.0.append_value(days(day));
                s.1.append_value(channel);
                s.2.append_value((amount * 100.0).round() / 100.0);
                s.3.append_value(if cpc > 0.0 { (amount / cpc) as i64 } else { 0 });
            }
            for _ in 0..rng.poisson(70.0 * level) {
                session_id += 1;
                let traffic = rng.pick(&[
                    ("organic", 0.42 + 0.05 * t),
                    ("paid", 0.28 - 0.04 * t),
                    ("direct", 0.2),
                    ("referral", 0.1),
                ]);
                let page = rng.pick(PAGES);
                let rate = if page == "/contact" {
                    0.2
                } else if page == "/pricing" {
                    0.08
                } else {
                    0.035
                };
                w.0.append_value(session_id);
                w.1.append_value(ts(
                    day.and_hms_opt(0, 0, 0).expect("time") + Duration::seconds(rng.range(0, 86399))
                ));
                w.2.append_value(page);
                w.3.append_value(traffic);
                w.4.append_value(rng.chance(rate));
            }
            day += Duration::days(1);
        }
        enquiries.write(vec![
            Arc::new(e.0.finish()),
            Arc::new(e.1.finish()),
            Arc::new(e.2.finish()),
            Arc::new(e.3.finish()),
            Arc::new(e.4.finish()),
            Arc::new(e.5.finish()),
        ])?;
        quotes.write(vec![
            Arc::new(q.0.finish()),
            Arc::new(q.1.finish()),
            Arc::new(q.2.finish()),
            Arc::new(q.3.finish()),
            Arc::new(q.4.finish()),
        ])?;
        jobs.write(vec![
            Arc::new(j.0.finish()),
            Arc::new(j.1.finish()),
            Arc::new(j.2.finish()),
            Arc::new(j.3.finish()),
            Arc::new(j.4.finish()),
            Arc::new(j.5.finish()),
            Arc::new(j.6.finish()),
            Arc::new(j.7.finish()),
            Arc::new(j.8.finish()),
        ])?;
        payments.write(vec![
            Arc::new(p.0.finish()),
            Arc::new(p.1.finish()),
            Arc::new(p.2.finish()),
            Arc::new(p.3.finish()),
            Arc::new(p.4.finish()),
        ])?;
        spend.write(vec![
            Arc::new(s.0.finish()),
            Arc::new(s.1.finish()),
            Arc::new(s.2.finish()),
            Arc::new(s.3.finish()),
        ])?;
        sessions.write(vec![
            Arc::new(w.0.finish()),
            Arc::new(w.1.finish()),
            Arc::new(w.2.finish()),
            Arc::new(w.3.finish()),
            Arc::new(w.4.finish()),
        ])?;
    }
    let mut total = 0;
    for (name, sink) in [
        ("enquiries", enquiries),
        ("quotes", quotes),
        ("jobs", jobs),
        ("payments", payments),
        ("marketing_spend", spend),
        ("web_sessions", sessions),
    ] {
        let n = sink.finish()?;
        total += n;
        eprintln!("{name:>16}: {n} rows");
    }
    eprintln!("{:>16}: {total} rows in {}", "total", a.out.display());
    Ok(())
}
