//! `tally diff`: definitions added, removed and changed; every number that may move, under
//! both versions on the same data (values computed by hand from `tests/fixtures/shop`).

use std::path::Path;
use std::process::Command;

const BASE: &str = r#"source orders {
  file: "orders.csv"
  time: ordered_at
  key: order_id
}

dimension channel = orders.channel

metric orders = count(orders)
metric paid_orders = count(orders where status = "paid")
metric revenue = sum(orders.amount where status = "paid") { format: currency(USD) }
metric paid_share = paid_orders / orders { format: percent }
metric refunds = count(orders where status = "refunded")

target revenue >= 380 per month

alert low_revenue {
  when revenue < 380 per month
  severity critical
}

report monthly { grain: month metrics: [revenue, orders] by: channel }
"#;

/// Whitespace and a comment on `orders` (no change), a label on `paid_orders` (metadata),
/// refunds counted as revenue (meaning), `refunds` removed and `cancelled` added.
const HEAD: &str = r#"source orders {
  file: "orders.csv"
  time: ordered_at
  key: order_id
}

dimension channel = orders.channel

// Every order, whatever its status.
metric orders   =   count(orders)
metric paid_orders "Paid orders" = count(orders where status = "paid")
metric revenue = sum(orders.amount where status in ("paid", "refunded")) { format: currency(USD) }
metric paid_share = paid_orders / orders { format: percent }
metric cancelled = count(orders where status = "cancelled")

target revenue >= 380 per month

alert low_revenue {
  when revenue < 380 per month
  severity critical
}

report monthly { grain: month metrics: [revenue, orders] by: channel }
"#;

fn project(dir: &Path, definitions: &str) {
    std::fs::create_dir_all(dir.join("metrics")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("tally.yaml"), "data: data\n").unwrap();
    std::fs::copy(crate::fixture("shop/data/orders.csv"), dir.join("data/orders.csv")).unwrap();
    std::fs::write(dir.join("metrics/m.tally"), definitions).unwrap();
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?}");
}

use crate::tally_at as tally;

#[test]
fn a_change_against_a_git_revision() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), BASE);
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "base"]);
    std::fs::write(dir.path().join("metrics/m.tally"), HEAD).unwrap();

    let (code, markdown, stderr) = tally(
        dir.path(),
        &["diff", "HEAD", "--as-of", "2026-02-10", "--dim", "channel"],
    );
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("diff_markdown", markdown);

    let (code, json, _) = tally(
        dir.path(),
        &["diff", "HEAD", "--as-of", "2026-04-30", "--format", "json"],
    );
    assert_eq!(code, 0);
    let d: serde_json::Value = serde_json::from_str(&json).unwrap();
    let changes: Vec<(String, String)> = d["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["change"].as_str().unwrap().into()))
        .collect();
    let expected = [
        ("cancelled", "added"),
        ("paid_orders", "metadata"),
        ("refunds", "removed"),
        ("revenue", "meaning"),
    ];
    assert_eq!(changes, expected.map(|(a, b)| (a.to_string(), b.to_string())));
    // Only `revenue` can move; by hand: January 360.50 → 400.50 (order 3, refunded, 40.00),
    // February 300, March 0, April 60 either way.
    let metrics = d["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0]["metric"], "revenue");
    let values: Vec<(&str, f64, f64, bool)> = metrics[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["dimensions"] == serde_json::json!({}))
        .map(|v| {
            (
                v["period"].as_str().unwrap(),
                v["before"].as_f64().unwrap(),
                v["after"].as_f64().unwrap(),
                v["changed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        values,
        [
            ("2026-01-01", 360.5, 400.5, true),
            ("2026-02-01", 300.0, 300.0, false),
            ("2026-03-01", 0.0, 0.0, false),
            ("2026-04-01", 60.0, 60.0, false),
        ]
    );
    let jan = &metrics[0]["values"][0];
    assert_eq!(jan["change"].as_f64().unwrap(), 40.0);
    assert!((jan["change_pct"].as_f64().unwrap() - 40.0 / 360.5 * 100.0).abs() < 1e-9);
    // By channel: the refunded order was a web order; phone and no channel do not move.
    let by_channel: Vec<(&str, &str, f64, f64)> = metrics[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["dimensions"] != serde_json::json!({}) && v["period"] == "2026-01-01")
        .map(|v| {
            (
                v["dimensions"]["channel"].as_str().unwrap_or("(none)"),
                v["period"].as_str().unwrap(),
                v["before"].as_f64().unwrap(),
                v["after"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_channel,
        [
            ("(none)", "2026-01-01", 10.0, 10.0),
            ("phone", "2026-01-01", 250.5, 250.5),
            ("web", "2026-01-01", 100.0, 140.0),
        ]
    );

    // January moves 11.1% in all and 40% for web orders: both over a 10% tolerance, one
    // over 20%, none over 50%.
    let fail_over = |pct: &str| {
        tally(
            dir.path(),
            &["diff", "HEAD", "--as-of", "2026-04-30", "--fail-over", pct],
        )
    };
    let (code, _, stderr) = fail_over("10");
    assert_eq!((code, stderr.as_str()), (1, "2 values move more than 10%\n"));
    let (code, _, stderr) = fail_over("20");
    assert_eq!((code, stderr.as_str()), (1, "1 value moves more than 20%\n"));
    assert_eq!(fail_over("50").0, 0);

    // Two revisions: the change committed, compared with the commit before it.
    git(dir.path(), &["commit", "-qam", "head"]);
    let (code, between, _) = tally(
        dir.path(),
        &["diff", "HEAD~1", "HEAD", "--as-of", "2026-02-10", "--dim", "channel"],
    );
    assert_eq!(code, 0);
    assert_eq!(
        between,
        markdown.replace("`HEAD` → `working tree`", "`HEAD~1` → `HEAD`")
    );

    // Nothing changed.
    let (code, same, _) = tally(dir.path(), &["diff", "HEAD", "--as-of", "2026-04-30"]);
    assert_eq!(code, 0);
    assert!(same.contains("No definition changed in meaning or metadata."), "{same}");
    assert!(same.contains("No metric's numbers can move."), "{same}");

    let (code, _, stderr) = tally(dir.path(), &["diff", "no-such-branch"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("`no-such-branch` is neither a folder nor a git revision of the project"),
        "{stderr}"
    );
}

#[test]
fn two_folders_on_the_head_folders_data() {
    let base = tempfile::tempdir().unwrap();
    let head = tempfile::tempdir().unwrap();
    project(base.path(), BASE);
    project(head.path(), HEAD);
    // A deadline before the data cannot be evaluated: the numbers are compared all the same.
    for p in [base.path(), head.path()] {
        std::fs::write(p.join("metrics/deadline.tally"), "target orders = 10 by 2025-12-31\n").unwrap();
    }
    // The base folder's own data would give other numbers; HEAD's data is used for both.
    std::fs::write(
        base.path().join("data/orders.csv"),
        "order_id,ordered_at,customer_id,status,amount,shipped_at,channel\n",
    )
    .unwrap();
    let (code, json, stderr) = tally(
        head.path(),
        &[
            "diff",
            base.path().to_str().unwrap(),
            head.path().to_str().unwrap(),
            "--as-of",
            "2026-04-30",
            "--by",
            "year",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let d: serde_json::Value = serde_json::from_str(&json).unwrap();
    let v = &d["metrics"][0]["values"][0];
    assert_eq!((v["before"].as_f64(), v["after"].as_f64()), (Some(720.5), Some(760.5)));
    let not_compared = d["not_compared"].as_array().unwrap();
    assert_eq!(not_compared.len(), 1, "{not_compared:?}");
    assert!(
        not_compared[0]
            .as_str()
            .unwrap()
            .starts_with("targets: the deadline 2025-12-31 is before the data")
    );
}
