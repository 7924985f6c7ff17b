//! Integration tests: hand-computed fixtures, differential checks against hand-written SQL,
//! diagnostics snapshots and the binary's behaviour.

#![allow(clippy::result_large_err)]

mod browser;
mod cli;
mod diagnostics;
mod diff;
mod differential;
mod fixtures;
mod formatting;
mod over_time;
mod probing;
mod stages;
mod timeline;

use std::path::{Path, PathBuf};
use tally::model::Model;
use tally::plan::Query;
use tally::run::ResultTable;
use tally::settings::SettingsFile;
use tally::span::Files;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The binary on a project: exit code, stdout and stderr; a panic fails the test.
pub fn tally_at(project: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .args(["--color=never", "--project"])
        .arg(project)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A resolved project, ready to query.
pub struct Env {
    pub files: Files,
    pub model: Model,
    pub ctx: datafusion::prelude::SessionContext,
    pub settings: tally::settings::Settings,
}

pub fn load(dir: &Path, overrides: SettingsFile) -> Env {
    let (project, diags) = tally::project::load(dir, &overrides)
        .map_err(|(_, d)| d)
        .expect("project loads");
    assert!(diags.is_empty(), "{:?}", diags);
    let ctx = tally::data::session(&project.settings).unwrap();
    let (model, diags) = runtime().block_on(tally::model::resolve(
        &ctx,
        &project.settings,
        &project.files,
        project.definitions.clone(),
    ));
    let errors: Vec<_> = diags
        .iter()
        .filter(|d| d.severity == tally::diagnostic::Severity::Error)
        .collect();
    assert!(
        errors.is_empty(),
        "{}",
        tally::diagnostic::render_human(&project.files, &diags, false)
    );
    Env {
        files: project.files,
        model: model.unwrap(),
        ctx,
        settings: project.settings,
    }
}

/// Query options, with the defaults of `tally query`.
#[derive(Default)]
pub struct Q<'a> {
    pub grain: Option<&'a str>,
    pub dims: &'a [&'a str],
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub filter: Option<&'a str>,
    pub compare: Option<tally::plan::Compare>,
}

impl Env {
    pub fn query(&mut self, metrics: &[&str], q: Q) -> ResultTable {
        self.try_query(metrics, q)
            .unwrap_or_else(|d| panic!("{}", tally::diagnostic::render_human(&self.files, &[d], false)))
    }

    pub fn try_query(&mut self, metrics: &[&str], q: Q) -> Result<ResultTable, tally::diagnostic::Diagnostic> {
        let filter = q.filter.map(|f| {
            let id = self.files.add("--where", PathBuf::from("--where"), f.to_string());
            tally::syntax::parse_expr(id, f, 0).unwrap()
        });
        let query = Query {
            metrics: metrics
                .iter()
                .map(|m| self.model.metric(m).unwrap_or_else(|| panic!("metric {m}")))
                .collect(),
            grain: q.grain.map(|g| tally::time::Grain::parse(g).unwrap()),
            dimensions: q.dims.iter().map(|d| self.model.dimension(d).unwrap()).collect(),
            from: q.from.map(|d| d.parse().unwrap()),
            to: q.to.map(|d| d.parse().unwrap()),
            filter,
            compare: q.compare,
        };
        runtime().block_on(tally::run::query(
            &self.ctx,
            &self.model,
            &self.files,
            &self.settings,
            query,
        ))
    }
}

/// One metric's column of a result, by period.
pub fn series(t: &ResultTable, col: usize) -> Vec<(String, Option<f64>)> {
    t.rows
        .iter()
        .map(|r| (r.period.unwrap().to_string(), r.values[col]))
        .collect()
}

/// Asserts two optional numbers are equal to a relative 1e-9.
#[track_caller]
pub fn assert_close(actual: Option<f64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (None, None) => {}
        (Some(a), Some(e)) => {
            let tol = 1e-9 * e.abs().max(1.0);
            assert!((a - e).abs() <= tol, "{what}: expected {e}, got {a}");
        }
        _ => panic!("{what}: expected {expected:?}, got {actual:?}"),
    }
}

/// The YAML example of the product definition, exactly as written there.
pub const PRODUCT_YAML: &str = r#"sources:
  enquiries:
    file: data/enquiries.csv
    time: created_at
    key: enquiry_id
  jobs:
    file: data/jobs.parquet
    time: completed_at
    key: job_id
    joins:
      - source: enquiries
        on: enquiry_id

dimensions:
  channel: enquiries.channel

metrics:
  enquiries:
    label: Enquiries
    expr: count(enquiries)
  won_jobs:
    expr: count(jobs where status = "completed")
  revenue:
    label: Revenue
    expr: sum(jobs.amount where status = "completed")
    format: currency(USD)
    owner: operations
    description: Invoiced revenue of completed jobs
  conversion:
    label: Enquiry to job
    expr: won_jobs / enquiries
    format: percent

targets:
  - metric: revenue
    at_least: 120000
    per: month
    from: 2026-01

alerts:
  conversion_drop:
    when: conversion < 20%
    for: 3 days
    severity: critical
    message: "Conversion fell to {{ value }} in {{ period }}"

reports:
  weekly:
    title: Weekly operations
    grain: week
    range: last 26 weeks
    metrics: [enquiries, conversion, revenue]
    by: channel
"#;
