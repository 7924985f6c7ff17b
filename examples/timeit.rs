//! Times a query in one process, the way an engine embedded in a program runs it: the
//! project is loaded once, then the query runs `--runs` times; prints the median seconds.
//! `bench/bench.py` uses it next to DuckDB's in-process timings.
//!
//!     cargo run --release --example timeit -- PROJECT --by day [--runs 5] METRIC...

use std::path::PathBuf;
use std::time::Instant;
use tally::plan::Query;
use tally::settings::SettingsFile;

fn main() {
    let mut args = std::env::args().skip(1);
    let project = PathBuf::from(args.next().expect("a project folder"));
    let (mut grain, mut runs, mut metrics) = (None, 5, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--by" => grain = args.next().and_then(|g| tally::time::Grain::parse(&g)),
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            _ => metrics.push(a),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (project, _) = tally::project::load(&project, &SettingsFile::default())
        .map_err(|(_, d)| d)
        .expect("the project loads");
    let ctx = tally::data::session(&project.settings).expect("a session");
    let (model, diags) = runtime.block_on(tally::model::resolve(
        &ctx,
        &project.settings,
        &project.files,
        project.definitions.clone(),
    ));
    let model = model.unwrap_or_else(|| panic!("{}", tally::diagnostic::render_human(&project.files, &diags, false)));
    let query = Query {
        metrics: metrics.iter().map(|m| model.metric(m).expect("a metric")).collect(),
        grain,
        ..Query::default()
    };
    let mut times = Vec::new();
    for _ in 0..=runs {
        let start = Instant::now();
        let table = runtime
            .block_on(tally::run::query(
                &ctx,
                &model,
                &project.files,
                &project.settings,
                query.clone(),
            ))
            .unwrap_or_else(|d| panic!("{}", tally::diagnostic::render_human(&project.files, &[d], false)));
        std::hint::black_box(table);
        times.push(start.elapsed().as_secs_f64());
    }
    // The first run reads file metadata; the median of the others is what is reported.
    times.remove(0);
    times.sort_by(f64::total_cmp);
    println!("{:.4}", times[times.len() / 2]);
}
