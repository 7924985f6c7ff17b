//! The bundled example's report in a real browser (headless Chromium, driven by
//! playwright-core from `tests/browser/`): no console error, no network request, no
//! sideways scrolling on a phone, and the KPI tiles show the right values. Needs Chromium
//! and Node.js, so it is ignored by a plain `cargo test`; `.ci/run` installs both and runs it
//! with `cargo test -- --ignored browser`.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs Chromium and Node.js (installed by .ci/run)"]
fn browser_the_report_page_shows_the_kpis_offline_without_errors() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    // The bundled project, writing its reports into the temporary folder.
    std::fs::write(
        dir.path().join("tally.yaml"),
        format!(
            "definitions: {}\ndata: {}\nreports: reports\nweek_start: monday\n",
            repo.join("metrics").display(),
            repo.join("examples/services/data").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["run", "--as-of", "2025-12-31", "--color=never", "--project"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let version = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let page = version.join("index.html");

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    let node = Command::new("node")
        .arg(repo.join("tests/browser/report.mjs"))
        .arg(&page)
        .arg(&shots)
        .output()
        .expect("node (Node.js) runs");
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&node.stdout).unwrap();
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["page_errors"], serde_json::json!([]), "{seen}");
    assert_eq!(
        seen["requests"],
        serde_json::json!([]),
        "the page loads nothing: {seen}"
    );
    for view in ["laptop", "phone"] {
        let v = &seen["views"][view];
        assert_eq!(v["scripts"], 0, "{view}");
        assert_eq!(v["overflow"], false, "{view}: the page is wider than the screen");
        assert!(
            shots
                .with_file_name(format!("report-{view}.png"))
                .metadata()
                .unwrap()
                .len()
                > 10_000
        );
    }

    // Every tile of every report, with the value of its last complete period, computed by
    // `tally query` over the same data.
    let tiles = seen["views"]["phone"]["tiles"].as_array().unwrap();
    let mut env = crate::load(dir.path(), Default::default());
    let mut expected = Vec::new();
    for r in env.model.reports.clone() {
        let (period, to) = match r.grain {
            tally::time::Grain::Week => ("2025-12-22", "2025-12-28"),
            tally::time::Grain::Month => ("2025-12-01", "2025-12-31"),
            g => panic!("a report by {g:?}"),
        };
        for m in &r.metrics {
            let metric = &env.model.metrics[*m];
            let (name, format) = (metric.name.clone(), metric.format.clone());
            let t = env.query(
                &[&name],
                crate::Q {
                    grain: Some(r.grain.name()),
                    to: Some(to),
                    ..Default::default()
                },
            );
            let row = t.rows.iter().find(|x| x.period.unwrap().to_string() == period).unwrap();
            let value = match row.values[0] {
                Some(v) => tally::output::format_value(Some(v), &format),
                None => "–".to_string(),
            };
            expected.push((r.name.clone(), name, value));
        }
    }
    let shown: Vec<(String, String, String)> = tiles
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap().to_string();
            (s("report"), s("metric"), s("value"))
        })
        .collect();
    assert_eq!(shown, expected);
    assert!(tiles.iter().all(|t| t["charts"] == 1));
    // Two of them by independent SQL (DuckDB, over the same files): 122 enquiries in the
    // week of 2025-12-22; revenue of completed jobs in December 2025, 352,926.59.
    assert!(
        shown.contains(&("weekly".into(), "enquiries".into(), "122".into())),
        "{shown:?}"
    );
    assert!(
        shown.contains(&("monthly".into(), "revenue".into(), "$352,926.59".into())),
        "{shown:?}"
    );
}
