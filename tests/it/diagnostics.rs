//! Every kind of bad input: a clear message with its place, the right exit code, no panic.
//! Each case is a small project written to a temporary folder and checked by the binary;
//! exit code and stderr are snapshots.

use std::path::Path;
use std::process::Command;

const ORDERS: &str =
    "order_id,ordered_at,customer,status,amount\n1,2026-01-05,alice,paid,10.5\n2,2026-01-06,bob,paid,20\n";
const SOURCE: &str = "source orders {\n  file: \"orders.csv\"\n  time: ordered_at\n  key: order_id\n}\n";

/// Writes a project (`files` relative to its root) and runs `tally <args>` in it.
pub fn run_in(files: &[(&str, &[u8])], args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .arg("--color=never")
        .arg("--project")
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&dir.path().display().to_string(), "[project]");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&dir.path().display().to_string(), "[project]");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

pub fn write_files(root: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

fn check(files: &[(&str, &[u8])]) -> String {
    let mut all: Vec<(&str, &[u8])> = vec![("orders.csv", ORDERS.as_bytes())];
    all.extend_from_slice(files);
    let (code, _, stderr) = run_in(&all, &["check"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    format!("exit code: {code}\n{stderr}")
}

fn dsl(body: &str) -> String {
    format!("{SOURCE}{body}")
}

macro_rules! case {
    ($name:ident, $files:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), check($files));
        }
    };
}

case!(empty_file, &[("empty.tally", b"")]);
case!(
    binary_garbage,
    &[(
        "garbage.tally",
        &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0xfe]
    )]
);
case!(
    unterminated_string,
    &[(
        "m.tally",
        dsl("metric paid = count(orders where status = \"paid)\n").as_bytes()
    )]
);
case!(
    unknown_keyword,
    &[(
        "m.tally",
        dsl("metrc paid = count(orders)\nmetric n = count(orders)\n").as_bytes()
    )]
);
case!(
    syntax_error_names_what_was_expected,
    &[(
        "m.tally",
        dsl("metric paid = count(orders where status = )\n").as_bytes()
    )]
);
case!(
    every_broken_definition_of_a_file_is_reported,
    &[(
        "m.tally",
        dsl("metric a = count(orders where)\nmetric b = sum(orders.amount\nmetric c = count(orders)\n").as_bytes()
    )]
);
case!(
    yaml_indented_with_tabs,
    &[("m.yaml", b"metrics:\n\tpaid:\n\t\texpr: count(orders)\n")]
);
case!(
    yaml_unknown_key,
    &[(
        "m.yaml",
        b"metrics:\n  paid:\n    expr: count(orders)\n    lable: Paid orders\n"
    )]
);
case!(
    yaml_expression_error_points_into_the_yaml,
    &[
        ("s.tally", SOURCE.as_bytes()),
        (
            "m.yaml",
            b"metrics:\n  paid:\n    label: Paid\n    expr: count(orders where stauts = \"paid\")\n"
        )
    ]
);
case!(
    metric_refers_to_itself,
    &[("m.tally", dsl("metric a = a + 1\n").as_bytes())]
);
case!(
    cycle_of_three_metrics,
    &[(
        "m.tally",
        dsl("metric a = b\nmetric b = c * 2\nmetric c = a / count(orders)\n").as_bytes()
    )]
);
case!(
    sum_of_a_string_column,
    &[("m.tally", dsl("metric s = sum(orders.status)\n").as_bytes())]
);
case!(
    date_compared_with_a_number,
    &[(
        "m.tally",
        dsl("metric d = count(orders where ordered_at > 2026)\n").as_bytes()
    )]
);
case!(
    data_file_does_not_exist,
    &[("m.tally", b"source gone { file: \"gone.csv\" }\n")]
);
case!(
    csv_with_a_ragged_row,
    &[
        ("ragged.csv", b"a,b,c\n1,2,3\n4,5\n"),
        ("m.tally", b"source ragged { file: \"ragged.csv\" }\n")
    ]
);
case!(
    truncated_parquet_file,
    &[
        ("cut.parquet", b"PAR1\x15\x00\x15\x1c\x15\x1c,\x15\x04\x15\x00\x15\x06"),
        ("m.tally", b"source cut { file: \"cut.parquet\" }\n")
    ]
);
case!(
    column_renamed_in_the_data,
    &[(
        "m.tally",
        dsl("metric revenue = sum(orders.amount_usd where status = \"paid\")\n").as_bytes()
    )]
);
case!(unknown_names_get_did_you_mean, &[(
    "m.tally",
    dsl("metric a = count(ordrs)\nmetric b = count(orders where custmer = \"x\")\nmetric c = a + paidd\nmetric d = summ(orders.amount)\nmetric e = count(orders where loower(status) = \"x\")\n").as_bytes()
)]);
case!(
    duplicate_names,
    &[(
        "m.tally",
        dsl("metric a = count(orders)\nmetric a = count(orders)\n").as_bytes()
    )]
);
case!(join_problems, &[
    ("customers.csv", b"customer,segment\nalice,smb\n"),
    ("ids.csv", b"id,name\n1,x\n"),
    (
        "m.tally",
        dsl("source customers { file: \"customers.csv\" key: customer }\nsource ids { file: \"ids.csv\" }\nsource o2 { file: \"orders.csv\" join custmers on customer join ids on customer = id join customers on client }\n").as_bytes(),
    ),
]);
case!(source_not_joined, &[
    ("customers.csv", b"customer,segment\nalice,smb\n"),
    ("m.tally", dsl("source customers { file: \"customers.csv\" }\nmetric smb = count(orders where customers.segment = \"smb\")\n").as_bytes()),
]);
case!(
    path_leaves_the_data_root,
    &[(
        "m.tally",
        b"source secrets { file: \"../../../etc/passwd\" }\nsource abs { file: \"/etc/hosts\" }\n"
    )]
);
case!(bad_settings, &[("tally.yaml", b"definitions: .\nmemory_limt: 2GB\n")]);
case!(
    unknown_time_zone,
    &[
        ("tally.yaml", b"time_zone: Europe/Londn\n"),
        ("m.tally", SOURCE.as_bytes())
    ]
);
case!(aggregate_misuse, &[(
    "m.tally",
    dsl("metric a = orders.amount\nmetric b = days_between(orders.ordered_at, orders.ordered_at)\nmetric c = percentile(orders.amount, 90)\nmetric d = count(orders where sum(orders.amount) > 1)\nmetric e = count(orders where amount)\n").as_bytes()
)]);

#[test]
fn a_clean_project_checks_clean() {
    let out = check(&[(
        "m.tally",
        dsl("metric paid = count(orders where status = \"paid\")\n").as_bytes(),
    )]);
    assert_eq!(out, "exit code: 0\nok: 1 sources, 0 dimensions, 1 metrics\n");
}

#[test]
fn json_and_github_formats() {
    let metric = dsl("metric s = sum(orders.status)\n");
    let files: &[(&str, &[u8])] = &[("orders.csv", ORDERS.as_bytes()), ("m.tally", metric.as_bytes())];
    let (code, stdout, _) = run_in(files, &["check", "--format", "json"]);
    assert_eq!(code, 3);
    insta::assert_snapshot!("check_json", stdout);
    let (code, stdout, _) = run_in(files, &["check", "--format", "github"]);
    assert_eq!(code, 3);
    insta::assert_snapshot!("check_github", stdout);
    let (code, stdout, _) = run_in(files, &["check", "--format", "sarif"]);
    assert_eq!(code, 3);
    let sarif: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    insta::assert_snapshot!("check_sarif", stdout);
}
case!(non_ascii_text_before_an_error, &[
    ("s.tally", SOURCE.as_bytes()),
    ("m.yaml", "metrics:\n  umsätze:\n    label: Umsätze — «brutto» 💶\n    expr: sum(orders.amount where status = \"bezahlt\") + ümlaut\n    unbekannt: ja\n".as_bytes()),
    ("n.tally", "metric größe \"Größe\" = count(orders where status = \"ä\" and ?)\n".as_bytes()),
]);
case!(every_bad_entry_of_a_yaml_file_is_reported, &[
    ("s.tally", SOURCE.as_bytes()),
    (
        "m.yaml",
        b"metrics:\n  a:\n    expr: count(orders)\n    lable: A\n  b:\n    expr: count(orders)\n    fromat: percent\n  c:\n    label: no expression\ndimensions:\n  d:\n    expr: orders.status\n    colour: red\nsoruces: {}\n",
    ),
]);
case!(
    time_functions_on_bad_input,
    &[
        ("customers.csv", b"customer,segment\nalice,smb\n"),
        (
            "visits.csv",
            b"visit_id,visited_at,customer,page\n1,2026-01-01,alice,/\n"
        ),
        ("pages.csv", b"page,title\n/,Home\n"),
        (
            "m.tally",
            dsl(concat!(
                "source customers { file: \"customers.csv\" }\n",
                "source visits { file: \"visits.csv\" time: visited_at }\n",
                "source pages { file: \"pages.csv\" }\n",
                "metric paid = sum(orders.amount)\n",
                "metric customers = count(customers)\n",
                "metric customers_7d = rolling(customers, 7 days)\n",
                "metric customers_ly = customers[-1 year]\n",
                "metric week = rolling(paid, 7 parsecs)\n",
                "metric month = rolling(paid, 4 weeeks)\n",
                "metric back = paid[-1 fortnite]\n",
                "metric reset = to_date(paid, mnth)\n",
                "metric frac = rolling(paid, 1.5 days)\n",
                "metric balance = last(sum(orders.amount))\n",
                "metric balance_7d = rolling(balance, 7 days)\n",
                "metric nested = cumulative(rolling(paid, 7 days))\n",
                "metric typo = conversion(visits -> orders by custmer within 7 days)\n",
                "metric nothing_shared = conversion(orders -> pages by customer within 7 days)\n",
                "metric months = conversion(visits -> orders by customer within 1 month)\n",
            ))
            .as_bytes()
        )
    ]
);

/// Windows and offsets that a query's grain cannot give: usage errors (exit code 2).
#[test]
fn time_functions_that_a_query_cannot_give() {
    let metrics = dsl(concat!(
        "metric paid = sum(orders.amount)\n",
        "metric paid_7d = rolling(paid, 7 days)\n",
        "metric paid_last_month = paid[-1 month]\n",
    ));
    let files: &[(&str, &[u8])] = &[("orders.csv", ORDERS.as_bytes()), ("m.tally", metrics.as_bytes())];
    let mut out = String::new();
    for args in [
        &["query", "paid_7d"][..],
        &["query", "paid_last_month", "--by", "week"],
        &["query", "paid", "--compare", "previous"],
        &["query", "paid", "--by", "day", "--range", "last 3 fortnights"],
        &[
            "query",
            "paid",
            "--by",
            "day",
            "--range",
            "this week",
            "--from",
            "2026-01-01",
        ],
    ] {
        let (code, _, stderr) = run_in(files, args);
        assert!(!stderr.contains("panicked"), "{stderr}");
        out.push_str(&format!("$ tally {}\nexit code: {code}\n{stderr}\n", args.join(" ")));
    }
    insta::assert_snapshot!("time_functions_that_a_query_cannot_give", out);
}
case!(
    targets_on_bad_input,
    &[
        ("customers.csv", b"customer,segment\nalice,smb\n"),
        ("levels.csv", b"period,value\n2026-01,10\n2026-02-15,12\n"),
        (
            "m.tally",
            dsl(concat!(
                "source customers { file: \"customers.csv\" }\n",
                "metric paid = sum(orders.amount) { format: currency(USD) }\n",
                "metric share_paid = count(orders where status = \"paid\") / count(orders) { format: percent }\n",
                "metric customers = count(customers)\n",
                "target pad >= 100\n",
                "target paid >= 25%\n",
                "target share_paid >= 25\n",
                "target share_paid = 50% by 2026-12-31\n",
                "target paid = 1000\n",
                "target paid >= 10 per fortnight\n",
                "target paid >= { 2026-01-15: 10 } per month\n",
                "target paid between 20 and 10\n",
                "target paid >= schedule(\"levels.csv\")\n",
                "target paid >= schedule(\"missing.csv\")\n",
                "target paid >= 10 tolerance 150\n",
                "target customers >= 10\n",
                "target paid = 100 by 2026-01-31 from 2026-03\n",
                "target paid >> 10\n",
            ))
            .as_bytes()
        ),
        (
            "t.yaml",
            b"targets:\n  - metric: paid\n    at_least: 10\n    at_most: 20\n  - metric: paid\n    at_leat: 10\n  - metric: paid\n    at_least: lots\n"
        ),
    ]
);
case!(
    alerts_on_bad_input,
    &[
        (
            "m.tally",
            dsl(concat!(
                "metric paid = sum(orders.amount) { format: currency(USD) }\n",
                "metric cost_per_order = paid / count(orders) { format: currency(USD) }\n",
                "dimension status = orders.status\n",
                "alert a { when pad < 10 }\n",
                "alert b { when paid < 10% }\n",
                "alert c { when cost_per_order > 80 warning, > 50 critical }\n",
                "alert d { when paid < 10 message \"{{ value }} in {{ perod }}\" }\n",
                "alert e { when paid off target }\n",
                "alert f { when paid < 10 by stats }\n",
                "alert g { when paid < 10 for 3 weeks per month }\n",
                "alert h { when source ordrs empty }\n",
                "alert i { when paid < 10 severity critcal }\n",
                "alert j { severity critical }\n",
            ))
            .as_bytes()
        ),
        (
            "a.yaml",
            b"alerts:\n  k:\n    when: paid > 5\n    severity: urgent\n  l:\n    when: paid >> 5\n  m:\n    when: paid > 5\n    for: lots\n"
        ),
        ("b.yaml", b"metrics:\n  broken:\n    expr: count(orders where)\n"),
    ]
);

/// `tally alerts`: exit code 1 when an alert at or above --fail-on fires; the state file
/// says what is new; every output format.
#[test]
fn alerts_command_exit_codes_and_formats() {
    let metrics = dsl(concat!(
        "metric paid = sum(orders.amount)\n",
        "alert low_paid { when paid < 100 per month severity warning message \"paid {{ value }} in {{ period }}\" }\n",
        "alert tiny_paid { when paid < 1 per month severity critical }\n",
    ));
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("orders.csv", ORDERS.as_bytes()), ("m.tally", metrics.as_bytes())],
    );
    let run = |args: &[&str]| {
        let (code, stdout, stderr) = crate::tally_at(dir.path(), args);
        (code, stdout + &stderr)
    };
    let mut out = String::new();
    for args in [
        &["alerts", "--as-of", "2026-01-31"][..],
        &["alerts", "--as-of", "2026-01-31"],
        &["alerts", "--as-of", "2026-01-31", "--fail-on", "critical"],
        &["alerts", "--as-of", "2026-01-31", "--no-state", "--format", "json"],
        &["alerts", "--as-of", "2026-01-31", "--no-state", "--format", "junit"],
        &["alerts", "--as-of", "2026-01-31", "--no-state", "--format", "markdown"],
        &["alerts", "--as-of", "2026-01-31", "--no-state", "--format", "github"],
        &["alerts", "--as-of", "2025-12-31"],
    ] {
        let (code, text) = run(args);
        assert!(!text.contains("panicked"), "{text}");
        out.push_str(&format!("$ tally {}\nexit code: {code}\n{text}\n", args.join(" ")));
    }
    insta::assert_snapshot!("alerts_command", out);
}

/// A failed expectation prints expected against actual (exit code 1); a fixture column the
/// source does not have, an unknown metric or alert, are invalid tests (exit code 3).
#[test]
fn definition_tests_fail_clearly() {
    let metrics = dsl(concat!(
        "metric paid = sum(orders.amount)\n",
        "metric orders_n = count(orders)\n",
        "alert low_paid { when paid < 100 per month }\n",
    ));
    let tests = concat!(
        "tests:\n",
        "  paid_in_january:\n",
        "    as_of: 2026-01-31\n",
        "    rows:\n",
        "      orders:\n",
        "        - {order_id: 1, ordered_at: 2026-01-05, customer: alice, status: paid, amount: 10.5}\n",
        "        - {order_id: 2, ordered_at: 2026-01-06, customer: bob, status: paid, amount: 20}\n",
        "    expect:\n",
        "      - {metric: paid, per: month, period: 2026-01, value: 30.5}\n",
        "      - {metric: orders_n, value: 3}\n",
        "      - {metric: paid, per: month, period: 2026-01, value: 31, tolerance: 0.1}\n",
        "    alerts:\n",
        "      - {alert: low_paid, firing: false}\n",
    );
    let mut out = String::new();
    for fmt in ["human", "junit"] {
        let (code, stdout, stderr) = run_in(
            &[
                ("orders.csv", ORDERS.as_bytes()),
                ("m.tally", metrics.as_bytes()),
                ("m.test.yaml", tests.as_bytes()),
            ],
            &["test", "--format", fmt],
        );
        out.push_str(&format!(
            "$ tally test --format {fmt}\nexit code: {code}\n{stdout}{stderr}\n"
        ));
    }
    let bad = concat!(
        "tests:\n",
        "  bad:\n",
        "    rows:\n",
        "      orders:\n",
        "        - {order_id: 1, ordered_on: 2026-01-05, amount: 10}\n",
        "      ordrs: []\n",
        "    expect:\n",
        "      - {metric: pad, value: 1}\n",
    );
    let (code, stdout, stderr) = run_in(
        &[
            ("orders.csv", ORDERS.as_bytes()),
            ("m.tally", metrics.as_bytes()),
            ("m.test.yaml", bad.as_bytes()),
        ],
        &["test"],
    );
    out.push_str(&format!(
        "$ tally test (bad fixtures)\nexit code: {code}\n{stdout}{stderr}\n"
    ));
    assert!(!out.contains("panicked"), "{out}");
    insta::assert_snapshot!("definition_tests", out);
}

/// Changes of state are posted to the alert's webhook as JSON, with retries; a delivery that
/// fails is reported and sent again on the next run.
#[test]
fn alert_webhooks_deliver_changes_and_retry_next_run() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let failures_left = Arc::new(AtomicUsize::new(usize::MAX));
    let requests = Arc::new(AtomicUsize::new(0));
    {
        let (bodies, failures_left, requests) = (bodies.clone(), failures_left.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                requests.fetch_add(1, Ordering::SeqCst);
                let fail = failures_left.load(Ordering::SeqCst) > 0;
                if fail {
                    failures_left.fetch_sub(1, Ordering::SeqCst);
                } else {
                    bodies.lock().unwrap().push(String::from_utf8_lossy(&body).to_string());
                }
                let status = if fail { "500 Internal Server Error" } else { "200 OK" };
                let _ = reader.get_mut().write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                );
            }
        });
    }
    let metrics = dsl(&format!(
        "metric paid = sum(orders.amount)\nalert low_paid {{ when paid < 100 per month webhook \"http://127.0.0.1:{port}/hook\" }}\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("orders.csv", ORDERS.as_bytes()), ("m.tally", metrics.as_bytes())],
    );
    let run = |as_of: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["alerts", "--as-of", as_of, "--color=never", "--project"])
            .arg(dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let state = dir.path().join(".tally/alert-state.json");
    // The server fails every request: three attempts, a warning, the notification kept.
    let (code, stderr) = run("2026-01-31");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("W0803") && stderr.contains("sent again on the next run"),
        "{stderr}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    let kept: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(kept["pending"].as_array().unwrap().len(), 1);
    // The server works again: the next run delivers the pending change (the alert is still
    // firing, which is not news) and the state has nothing pending.
    failures_left.store(0, Ordering::SeqCst);
    let (code, stderr) = run("2026-02-28");
    assert_eq!(code, Some(1));
    assert!(!stderr.contains("W0803"), "{stderr}");
    let delivered = bodies.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&delivered[0]).unwrap();
    assert_eq!(body["alert"], "low_paid");
    assert_eq!(body["state"], "new");
    assert_eq!(body["period"], "2026-01-01");
    assert_eq!(body["value"], 30.5);
    let kept: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(kept.get("pending").is_none());
}

/// A deadline before the data starts: a definition error (exit code 3) when targets are
/// evaluated (`check` scans no data).
#[test]
fn target_deadline_before_the_data() {
    let metrics = dsl("metric paid = sum(orders.amount)\ntarget paid = 100 by 2025-06-30\n");
    let (code, _, stderr) = run_in(
        &[("orders.csv", ORDERS.as_bytes()), ("m.tally", metrics.as_bytes())],
        &["targets", "--as-of", "2026-01-31"],
    );
    insta::assert_snapshot!(
        "target_deadline_before_the_data",
        format!("exit code: {code}\n{stderr}")
    );
}
case!(
    reports_on_bad_input,
    &[
        (
            "m.tally",
            dsl(concat!(
                "metric paid = sum(orders.amount)\n",
                "dimension status = orders.status\n",
                "report a \"A\" { metrics: [pad] }\n",
                "report b { metrics: [paid] by: stats }\n",
                "report c { metrics: [paid] range: last 3 fortnights }\n",
                "report d { metrics: [paid] grain: fortnight }\n",
                "report e { metrics: [paid] colour: red }\n",
                "report f { grain: month }\n",
            ))
            .as_bytes()
        ),
        (
            "r.yaml",
            b"reports:\n  g:\n    metrics: [paid]\n    range: this quater\n  h:\n    metric: [paid]\n"
        ),
    ]
);

/// `tally run`: the same inputs give the same version and byte-identical files; another
/// as-of day another version, both listed; user text is escaped; an unwritable reports
/// folder is a clear error and leaves nothing behind.
#[test]
fn report_versions() {
    let metrics = dsl(concat!(
        "metric paid \"Paid <script>alert(1)</script>\" = sum(orders.amount)\n",
        "report money \"Money & <b>more</b>\" { grain: month metrics: [paid] range: last 3 months }\n",
    ));
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("orders.csv", ORDERS.as_bytes()), ("m.tally", metrics.as_bytes())],
    );
    let run = |args: &[&str]| {
        let (code, stdout, stderr) = crate::tally_at(dir.path(), args);
        (Some(code), stdout, stderr)
    };
    let (code, first, _) = run(&["run", "--as-of", "2026-01-31"]);
    assert_eq!(code, Some(0));
    assert!(first.starts_with("wrote reports/2026-01-31-"), "{first}");
    let folder = dir
        .path()
        .join(first.trim().trim_start_matches("wrote ").trim_end_matches('/'));
    let read = |name: &str| std::fs::read(folder.join(name)).unwrap();
    let before: Vec<Vec<u8>> = [
        "index.html",
        "results.json",
        "results.parquet",
        "alerts.json",
        "manifest.json",
    ]
    .iter()
    .map(|n| read(n))
    .collect();
    // Again: the same version, left as it was.
    let (_, again, _) = run(&["run", "--as-of", "2026-01-31"]);
    assert!(again.starts_with("unchanged: reports/2026-01-31-"), "{again}");
    // Written anew elsewhere, byte for byte the same.
    std::fs::remove_dir_all(dir.path().join("reports")).unwrap();
    run(&["run", "--as-of", "2026-01-31"]);
    let after: Vec<Vec<u8>> = [
        "index.html",
        "results.json",
        "results.parquet",
        "alerts.json",
        "manifest.json",
    ]
    .iter()
    .map(|n| read(n))
    .collect();
    assert!(before == after, "a version's files are the same for the same inputs");
    let results: serde_json::Value = serde_json::from_slice(&read("results.json")).unwrap();
    let paid: Vec<_> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metric"] == "paid")
        .collect();
    assert_eq!(paid.len(), 3, "November, December, January");
    assert_eq!(paid[2]["period"], "2026-01-01");
    assert_eq!(paid[2]["value"], 30.5);
    // User text is escaped; nothing is loaded from the network.
    let html = String::from_utf8(read("index.html")).unwrap();
    assert!(
        !html.contains("<script>") && html.contains("Paid &lt;script&gt;"),
        "{html}"
    );
    assert!(html.contains("Money &amp; &lt;b&gt;more&lt;"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("src="));
    // Another as-of day: another version; the index lists both.
    let (_, second, _) = run(&["run", "--as-of", "2026-02-28"]);
    assert!(second.starts_with("wrote reports/2026-02-28-"), "{second}");
    let index = std::fs::read_to_string(dir.path().join("reports/index.html")).unwrap();
    assert!(index.contains("2026-01-31-") && index.contains("2026-02-28-"));
    // A reports folder that cannot be made (a file is in the way): a clear error, exit 4.
    std::fs::remove_dir_all(dir.path().join("reports")).unwrap();
    std::fs::write(dir.path().join("reports"), "not a folder").unwrap();
    let (code, _, stderr) = run(&["run", "--as-of", "2026-01-31"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("E0807") && stderr.contains("cannot write the report"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("reports")).unwrap(),
        "not a folder"
    );
}
