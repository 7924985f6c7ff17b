//! The binary: arguments in; exit code, stdout and stderr out.

use crate::fixture;
use std::process::Command;

fn tally(args: &[&str]) -> (i32, String, String) {
    crate::tally_at(&fixture("shop"), args)
}

#[test]
fn query_as_table_csv_and_json() {
    let (code, stdout, stderr) = tally(&["query", "orders", "revenue", "paid_share", "--by", "month"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    insta::assert_snapshot!("query_table", stdout);

    let (code, stdout, _) = tally(&[
        "query",
        "orders,revenue",
        "--by",
        "month",
        "--dim",
        "segment",
        "--format",
        "csv",
    ]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("query_csv", stdout);

    let (code, stdout, _) = tally(&["query", "paid_share", "--by", "quarter", "--format", "json"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("query_json", stdout);
}

#[test]
fn query_with_range_and_filter() {
    let (code, stdout, _) = tally(&[
        "query",
        "orders",
        "--by",
        "month",
        "--from",
        "2026-02",
        "--to",
        "2026-03",
        "--where",
        "channel != \"web\"",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "month       orders\n----------  ------\n2026-02-01       1\n2026-03-01       0\n"
    );
}

#[test]
fn usage_errors_exit_2_with_did_you_mean() {
    let (code, _, stderr) = tally(&["query", "revnue"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("unknown metric `revnue`") && stderr.contains("did you mean `revenue`?"),
        "{stderr}"
    );
    let (code, _, stderr) = tally(&["query", "orders", "--by", "fortnight"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown grain `fortnight`"), "{stderr}");
    let (code, _, stderr) = tally(&["query", "orders", "--dim", "segmnt"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("did you mean `segment`?"), "{stderr}");
    let (code, _, stderr) = tally(&["query", "orders", "--where", "status = "]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--where:1:"), "{stderr}");
    let (code, _, stderr) = tally(&["query", "orders", "--from", "yesterday"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not a date"), "{stderr}");
    let (code, _, _) = tally(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn check_list_explain_schema() {
    let (code, _, stderr) = tally(&["check"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.starts_with("ok: 2 sources, 2 dimensions"), "{stderr}");

    let (code, stdout, _) = tally(&["list"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("orders  orders.csv  time: ordered_at  key: order_id"),
        "{stdout}"
    );
    assert!(
        stdout.contains("join customers on customer_id = customer_id"),
        "{stdout}"
    );
    assert!(
        stdout.contains("paid_share = paid_orders / orders  [percent]"),
        "{stdout}"
    );

    let (code, stdout, _) = tally(&["explain", "paid_share"]);
    assert_eq!(code, 0);
    // Two measures of one source: one scan, one aggregate.
    assert!(stdout.contains("-- scan 1 of 1: source `orders`"), "{stdout}");
    assert_eq!(stdout.matches("Aggregate:").count(), 1, "{stdout}");
    assert!(stdout.contains("FILTER (WHERE"), "{stdout}");
    assert!(stdout.contains("SELECT "), "{stdout}");

    let (code, stdout, _) = tally(&["schema"]);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(schema["title"], "tally definitions");
    assert!(schema["properties"]["metrics"].is_object());
}

#[test]
fn data_errors_at_query_time_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    crate::diagnostics::write_files(
        dir.path(),
        &[
            ("orders.csv", b"order_id,customer\n1,alice\n2,bob\n"),
            ("customers.csv", b"customer,segment\nalice,smb\nbob,ent\nbob,smb\n"),
            (
                "m.tally",
                b"source orders { file: \"orders.csv\" join customers on customer }\nsource customers { file: \"customers.csv\" key: customer }\nmetric n = count(orders)\ndimension segment = customers.segment\n",
            ),
        ],
    );
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(args)
            .arg("--color=never")
            .arg("--project")
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without the join, the duplicate does not matter.
    assert_eq!(run(&["query", "n"]).0, 0);
    let (code, stderr) = run(&["query", "n", "--dim", "segment"]);
    assert_eq!(code, 4);
    insta::assert_snapshot!("duplicate_join_key", stderr);
}

#[test]
fn memory_limit_is_applied_and_named_when_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,at,k\n");
    for i in 0..200_000 {
        csv.push_str(&format!("{i},2026-01-{:02},k{i}\n", i % 28 + 1));
    }
    crate::diagnostics::write_files(
        dir.path(),
        &[
            ("t.csv", csv.as_bytes()),
            (
                "m.tally",
                b"source t { file: \"t.csv\" time: at }\nmetric distinct_keys = count_distinct(t.k)\n",
            ),
            ("tally.yaml", b"memory_limit: 200KB\nthreads: 1\n"),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["query", "distinct_keys", "--by", "day", "--color=never", "--project"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("more memory than the memory limit of 200.0 KB allows"),
        "{stderr}"
    );
    // With room, the same query works.
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "query",
            "distinct_keys",
            "--memory-limit",
            "1GB",
            "--color=never",
            "--project",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("200,000"));
}

#[test]
fn a_ragged_row_past_the_schema_sample_fails_the_query_with_its_line() {
    let mut csv = String::from("id,at,amount\n");
    for i in 0..3000 {
        if i == 2500 {
            csv.push_str("2500,2026-01-05\n");
        } else {
            csv.push_str(&format!("{i},2026-01-{:02},{i}\n", i % 28 + 1));
        }
    }
    let files: &[(&str, &[u8])] = &[
        ("late.csv", csv.as_bytes()),
        (
            "m.tally",
            b"source late { file: \"late.csv\" time: at }\nmetric n = count(late)\n",
        ),
    ];
    let (code, _, _) = crate::diagnostics::run_in(files, &["check"]);
    assert_eq!(code, 0, "the sample of rows read for the schema is fine");
    let (code, _, stderr) = crate::diagnostics::run_in(files, &["query", "n"]);
    assert_eq!(code, 4);
    assert!(
        stderr.contains("cannot read source `late`: incorrect number of fields for line 2502"),
        "{stderr}"
    );
    assert!(stderr.contains("data file: late.csv"), "{stderr}");
}

#[test]
fn a_remembered_key_check_is_run_again_when_the_data_changes() {
    let dir = tempfile::tempdir().unwrap();
    crate::diagnostics::write_files(
        dir.path(),
        &[
            ("orders.csv", b"order_id,customer\n1,alice\n2,bob\n"),
            ("customers.csv", b"customer,segment\nalice,smb\nbob,ent\n"),
            ("tally.yaml", b"cache: cache\n"),
            (
                "m.tally",
                b"source orders { file: \"orders.csv\" join customers on customer }\nsource customers { file: \"customers.csv\" key: customer }\nmetric n = count(orders)\ndimension segment = customers.segment\n",
            ),
        ],
    );
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["query", "n", "--dim", "segment", "--color=never", "--project"])
            .arg(dir.path())
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(run(), Some(0));
    let remembered = std::fs::read_dir(dir.path().join("cache/key-checks")).unwrap().count();
    assert_eq!(remembered, 1, "the passed check is remembered");
    assert_eq!(run(), Some(0));
    std::fs::write(
        dir.path().join("customers.csv"),
        "customer,segment\nalice,smb\nbob,ent\nbob,smb\n",
    )
    .unwrap();
    assert_eq!(run(), Some(4), "changed data is checked again");
}

/// `tally test` runs the example's tests without any data file: every source's columns come
/// from fixture rows.
#[test]
fn definition_tests_run_without_data_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("metrics")).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("tally.yaml"), "data: data\n").unwrap();
    for e in std::fs::read_dir(root.join("metrics")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join("metrics").join(p.file_name().unwrap())).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["test", "--color=never", "--project"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("3 passed, 0 failed\n"), "{stdout}");
}

#[test]
fn fmt_rewrites_files_and_check_lists_what_is_not_formatted() {
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("metrics");
    std::fs::create_dir(&defs).unwrap();
    let file = defs.join("a.tally");
    std::fs::write(&file, "metric  n=count( e )\n\n\nmetric m = n*2   // twice\n").unwrap();
    std::fs::write(defs.join("b.tally"), "metric ok = count(e)\n").unwrap();
    let run = |args: &[&str]| {
        let (code, _, stderr) = crate::tally_at(dir.path(), args);
        (code, stderr)
    };
    let (code, stderr) = run(&["fmt", "--check"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "not formatted: metrics/a.tally (from line 1)\n1 file not formatted; `tally fmt` rewrites it\n"
    );
    let (code, stderr) = run(&["fmt"]);
    assert_eq!((code, stderr.as_str()), (0, "formatted metrics/a.tally\n"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "metric n = count(e)\n\nmetric m = n * 2  // twice\n"
    );
    assert_eq!(run(&["fmt", "--check"]), (0, String::new()));
    // A file that does not parse is left as it is, with its error (exit code 3).
    std::fs::write(&file, "metric n = count(e\n").unwrap();
    let (code, stderr) = run(&["fmt"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("metrics/a.tally:1:"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "metric n = count(e\n");
}

/// The example CI workflow cannot rot: it is YAML with jobs and steps, and every `tally`
/// command in it is accepted by the command line.
#[test]
fn the_example_ci_workflow_uses_commands_that_exist() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci/tally.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let workflow: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let jobs = workflow["jobs"].as_mapping().unwrap();
    assert_eq!(jobs.len(), 2);
    let mut commands = Vec::new();
    for (_, job) in jobs {
        assert!(job["runs-on"].as_str().is_some());
        for step in job["steps"].as_sequence().unwrap() {
            let Some(script) = step["run"].as_str() else { continue };
            for line in script.lines().map(str::trim).filter(|l| l.starts_with("tally ")) {
                let line = line.split('>').next().unwrap();
                let args: Vec<String> = line
                    .split_whitespace()
                    .skip(1)
                    .map(|a| a.trim_matches('"').replace("$BASE_REF", "main"))
                    .collect();
                commands.push(args);
            }
        }
    }
    assert!(commands.len() >= 6, "{commands:?}");
    for args in commands {
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(&args)
            .args(["--project", "/nonexistent/tally-project"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        // Arguments accepted: what fails is the missing project, not the command line.
        assert!(!stderr.contains("Usage:"), "tally {args:?}: {stderr}");
        assert!(
            stderr.contains("/nonexistent/tally-project") || stderr.contains("neither a folder nor a git revision"),
            "tally {args:?}: {stderr}"
        );
    }
}

/// `tally init` makes a project every command runs on, and never overwrites one.
#[test]
fn init_makes_a_project_that_checks_queries_tests_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("shop");
    let run = |args: &[&str]| crate::tally_at(&project, args);
    let (code, stdout, stderr) = run(&["init"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("made a tally project in "), "{stdout}");
    for args in [
        &["check"][..],
        &["fmt", "--check"],
        &["test"],
        &[
            "query",
            "orders",
            "revenue",
            "paid_share",
            "--by",
            "month",
            "--dim",
            "segment",
        ],
        &["targets", "--as-of", "2026-03-31"],
        &["run", "--as-of", "2026-03-31"],
        &["report", "weekly", "--as-of", "2026-03-31"],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 0, "tally {args:?}: {stderr}");
    }
    // Every order of the quarter is counted once, whatever the breakdown.
    let (_, csv, _) = run(&["query", "orders", "--format", "csv"]);
    let total: u64 = csv.lines().nth(1).unwrap().parse().unwrap();
    let rows = std::fs::read_to_string(project.join("data/orders.csv"))
        .unwrap()
        .lines()
        .count() as u64
        - 1;
    assert_eq!(total, rows);
    assert!(project.join("reports/latest/index.html").exists());
    let (code, _, stderr) = run(&["init"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already holds tally.yaml"), "{stderr}");
}

/// `tally report` writes a bundle (no manifest, not a version) and replaces only a bundle.
#[test]
fn report_writes_a_bundle_and_replaces_only_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path();
    std::fs::create_dir_all(project.join("metrics")).unwrap();
    std::fs::write(
        project.join("tally.yaml"),
        format!("data: {}\n", fixture("shop/data").display()),
    )
    .unwrap();
    std::fs::write(
        project.join("metrics/m.tally"),
        "source orders {\n  file: \"orders.csv\"\n  time: ordered_at\n}\nmetric orders = count(orders)\n\
         report monthly { grain: month metrics: [orders] }\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let (code, _, stderr) = crate::tally_at(project, args);
        (code, stderr)
    };
    let out = project.join("bundle");
    let out_arg = out.to_str().unwrap();
    assert_eq!(run(&["report", "--as-of", "2026-04-30", "--out", out_arg]).0, 0);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["alerts.json", "index.html", "results.json", "results.parquet"]);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let values: Vec<f64> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    // By hand from the shop fixture: 4 orders in January, 2 in February, 0 in March, 2 in April.
    assert_eq!(values, [4.0, 2.0, 0.0, 2.0]);
    // Again, as of another day: replaced whole.
    assert_eq!(run(&["report", "--as-of", "2026-02-28", "--out", out_arg]).0, 0);
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(page.contains("as of 2026-02-28"));
    // A folder with anything else in it is not replaced.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let (code, stderr) = run(&["report", "--out", out_arg]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not a report bundle"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    let (code, stderr) = run(&["report", "monthy"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("did you mean `monthly`?"), "{stderr}");
    // The reports folder is a flag too.
    assert_eq!(run(&["run", "--as-of", "2026-04-30", "--reports", "elsewhere"]).0, 0);
    assert!(project.join("elsewhere/index.html").exists());
}
