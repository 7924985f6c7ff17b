//! Faults a hostile but realistic user finds: links out of the data root, cells and dates at
//! the edges, flags out of range, ranges backwards, servers that never answer, user text in
//! Markdown. Each is a clear message with the right exit code, never a panic or a leak.

use crate::diagnostics::write_files;
use std::path::Path;

/// `tally <args>` in a project; exit code, stdout, stderr with the project's path as
/// `[project]`. A panic fails the test.
fn tally_in(root: &Path, args: &[&str]) -> (i32, String, String) {
    let (code, stdout, stderr) = crate::tally_at(root, args);
    let shown = root.display().to_string();
    (
        code,
        stdout.replace(&shown, "[project]"),
        stderr.replace(&shown, "[project]"),
    )
}

/// A project of these files (paths relative to its root) in a new temporary folder.
fn project_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    dir
}

const SECRET: &str = "TOPSECRET";

#[cfg(unix)]
#[test]
fn no_source_reads_outside_the_data_root_through_a_link() {
    use std::os::unix::fs::symlink;
    let outside = project_with(&[
        ("secret.csv", format!("id,leaked\n1,{SECRET}\n").as_bytes()),
        ("region=x/part.csv", format!("id,v\n7,{SECRET}\n").as_bytes()),
    ]);
    let o = outside.path();
    let project = project_with(&[
        ("data/fine.csv", b"id,leaked\n2,fine\n"),
        ("data/hive/region=a/part.csv", b"id,v\n1,inside\n"),
        (
            "m.tally",
            concat!(
                "source lk { file: \"data/leak*.csv\" key: id }\n",
                "source pw { file: \"data/pass*.csv\" key: id }\n",
                "source hv { file: \"data/hive\" key: id }\n",
                "source ln { file: \"data/linked/secret.csv\" key: id }\n",
                "source fine { file: \"data/fine*.csv\" key: id }\n",
                "metric lkn = count(lk)\nmetric hvn = count(hv)\nmetric finen = count(fine)\n",
                "dimension leaked = lk.leaked\n",
            )
            .as_bytes(),
        ),
    ]);
    let root = project.path();
    symlink(o.join("secret.csv"), root.join("data/leak1.csv")).unwrap();
    symlink("/etc/passwd", root.join("data/passwd1.csv")).unwrap();
    symlink(o.join("region=x"), root.join("data/hive/region=x")).unwrap();
    symlink(o, root.join("data/linked")).unwrap();
    // A link inside the data root to a file inside it is fine.
    symlink(root.join("data/fine.csv"), root.join("data/fine2.csv")).unwrap();

    let (code, stdout, stderr) = tally_in(root, &["check"]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    for (source, file) in [
        ("lk", "data/leak1.csv"),
        ("pw", "data/passwd1.csv"),
        ("hv", "data/hive/region=x/part.csv"),
    ] {
        assert!(
            stderr.contains(&format!(
                "error[E0402]: source `{source}` reads `{file}`, which leads outside the project's data root"
            )),
            "{source}: {stderr}"
        );
    }
    assert!(
        stderr.contains("error[E0402]: the path `data/linked/secret.csv` leaves the project's data root"),
        "{stderr}"
    );
    assert!(stderr.contains("m.tally:1:19"), "{stderr}");
    assert!(stderr.contains("nothing of this source was read"), "{stderr}");
    assert!(!stderr.contains("fine"), "{stderr}");
    // No contents of a refused file, anywhere.
    for args in [
        &["check"][..],
        &["query", "lkn", "--dim", "leaked"],
        &["query", "hvn"],
        &["list"],
    ] {
        let (code, stdout, stderr) = tally_in(root, args);
        let all = stdout + &stderr;
        assert!(!all.contains(SECRET) && !all.contains("root:x:"), "{args:?}: {all}");
        assert_eq!(code, 3, "{args:?}: {all}");
    }

    // A folder `allow_paths` names may be read, through links too.
    write_files(
        root,
        &[("tally.yaml", format!("allow_paths: [\"{}\"]\n", o.display()).as_bytes())],
    );
    std::fs::remove_file(root.join("data/passwd1.csv")).unwrap();
    std::fs::write(
        root.join("m.tally"),
        concat!(
            "source lk { file: \"data/leak*.csv\" key: id }\n",
            "source hv { file: \"data/hive\" key: id }\n",
            "source ln { file: \"data/linked/secret.csv\" key: id }\n",
            "source fine { file: \"data/fine*.csv\" key: id }\n",
            "metric lkn = count(lk)\nmetric hvn = count(hv)\nmetric finen = count(fine)\n",
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = tally_in(root, &["check"]);
    assert_eq!(
        (code, stderr.as_str()),
        (0, "ok: 4 sources, 0 dimensions, 3 metrics\n"),
        "{stdout}"
    );
    let (code, stdout, _) = tally_in(root, &["query", "lkn", "hvn", "finen", "--format", "csv"]);
    assert_eq!((code, stdout.as_str()), (0, "lkn,hvn,finen\n1,2,2\n"));
}

/// A link that makes a folder its own descendant neither hangs nor overflows: it is a data
/// error that says so.
#[cfg(unix)]
#[test]
fn a_link_loop_in_a_data_folder_ends() {
    let project = project_with(&[
        ("data/events/a.csv", b"id\n1\n2\n"),
        (
            "m.tally",
            b"source ev { file: \"data/events\" key: id }\nmetric n = count(ev)\n",
        ),
    ]);
    let root = project.path();
    std::os::unix::fs::symlink(root.join("data/events"), root.join("data/events/again")).unwrap();
    let (code, stdout, stderr) = tally_in(root, &["query", "n", "--format", "csv"]);
    assert_eq!((code, stdout.as_str()), (4, ""), "{stderr}");
    assert!(
        stderr.contains("File system loop found: [project]/data/events/again points to an ancestor"),
        "{stderr}"
    );
}

#[test]
fn a_long_cell_is_cut_in_a_table_and_whole_in_csv_and_json() {
    let long = "x".repeat(70_000);
    let project = project_with(&[
        ("data.csv", format!("id,label\n1,{long}\n2,short\n").as_bytes()),
        (
            "m.tally",
            b"source s { file: \"data.csv\" key: id }\nmetric n = count(s)\ndimension label = s.label\n",
        ),
    ]);
    let root = project.path();
    let (code, stdout, stderr) = tally_in(root, &["query", "n", "--dim", "label"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let cut = format!("{}…  1", "x".repeat(tally::output::MAX_CELL - 1));
    assert!(lines[3].starts_with(&cut), "{}", lines[3]);
    assert!(lines.iter().all(|l| l.chars().count() < 200));
    let (code, stdout, _) = tally_in(root, &["query", "n", "--dim", "label", "--format", "csv"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(&format!("\n{long},1\n")));
    let (code, stdout, _) = tally_in(root, &["query", "n", "--dim", "label", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["label"] == long.as_str())
    );
}

/// One Parquet file of `id` and a time column `at`.
fn write_parquet(path: &Path, at: datafusion::arrow::array::ArrayRef) {
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use std::sync::Arc;
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..at.len() as i64));
    let batch = RecordBatch::try_from_iter([("id", ids), ("at", at)]).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn dates_outside_the_calendar_are_a_data_error_and_times_at_the_limits_are_computed() {
    use datafusion::arrow::array::{Date32Array, TimestampNanosecondArray};
    use std::sync::Arc;
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    write_parquet(
        &root.join("days.parquet"),
        Arc::new(Date32Array::from(vec![
            Some(i32::MAX),
            Some(20_000),
            Some(i32::MIN),
            None,
        ])),
    );
    write_parquet(
        &root.join("ns.parquet"),
        Arc::new(TimestampNanosecondArray::from(vec![i64::MIN, 0, i64::MAX])),
    );
    write_files(
        root,
        &[(
            "m.tally",
            concat!(
                "source days { file: \"days.parquet\" time: at key: id }\n",
                "source ns { file: \"ns.parquet\" time: at key: id }\n",
                "metric d = count(days)\nmetric n = count(ns)\nmetric cn = cumulative(n)\n",
            )
            .as_bytes(),
        )],
    );
    assert_eq!(tally_in(root, &["check"]).0, 0);
    for by in ["year", "month", "week", "day"] {
        let (code, stdout, stderr) = tally_in(root, &["query", "d", "--by", by]);
        assert_eq!((code, stdout.as_str()), (4, ""), "{by}: {stderr}");
        assert!(
            stderr.contains("cannot read source `days`")
                && stderr.contains("data file: days.parquet")
                && ["-2147483648", "2147483647"]
                    .iter()
                    .any(|d| stderr.contains(&format!("the time column `at` holds a time {d} days from 1970-01-01")))
                && stderr.contains("outside the calendar tally computes (years -262,142 to 262,141)"),
            "{by}: {stderr}"
        );
    }
    // Nanoseconds at the i64 limits, in local days of a zone 14 hours ahead of UTC (and of
    // its local mean time of 1677), computed independently with chrono-tz.
    let tz: chrono_tz::Tz = "Pacific/Kiritimati".parse().unwrap();
    let local = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .with_timezone(&tz)
            .date_naive()
    };
    assert_eq!(local(i64::MAX).to_string(), "2262-04-12");
    let zoned = ["--time-zone", "Pacific/Kiritimati", "--format", "csv"];
    let (code, stdout, stderr) = tally_in(root, &[&["query", "n", "--by", "year"][..], &zoned].concat());
    assert_eq!((code, stderr.as_str()), (0, ""));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"year,n"));
    assert_eq!(lines[1], "1677-01-01,1");
    // (The zone was 10 hours 40 behind UTC in 1970.)
    let epoch_year = chrono::Datelike::year(&local(0));
    assert_eq!(epoch_year, 1969);
    assert!(lines.contains(&"1969-01-01,1"), "{stdout}");
    assert_eq!(lines.last(), Some(&"2262-01-01,1"));
    let from = local(i64::MIN).to_string();
    let (code, stdout, stderr) = tally_in(
        root,
        &[
            &["query", "n", "cn", "--by", "day", "--from", &from, "--to", "1677-09-22"][..],
            &zoned,
        ]
        .concat(),
    );
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(stdout.starts_with(&format!("day,n,cn\n{from},1,1\n")), "{stdout}");
    let (code, stdout, _) = tally_in(
        root,
        &[&["query", "n", "cn", "--by", "day", "--from", "2262-04-11"][..], &zoned].concat(),
    );
    assert_eq!(code, 0);
    assert_eq!(stdout, "day,n,cn\n2262-04-11,0,2\n2262-04-12,1,3\n");
}

fn shop() -> std::path::PathBuf {
    crate::fixture("shop")
}

#[test]
fn flags_out_of_range_are_usage_errors_naming_the_flag_and_the_range() {
    for (flag, value, range) in [
        ("--threads", "99999999999", "threads are from 1 to 1024"),
        ("--threads", "0", "threads are from 1 to 1024"),
        ("--memory-limit", "0", "a memory limit is from 100KB to 100TB"),
        ("--memory-limit", "1PB", "a memory limit is from 100KB to 100TB"),
        (
            "--memory-limit",
            "99999999999999999999GB",
            "a memory limit is from 100KB to 100TB",
        ),
        ("--webhook-deadline", "0s", "a delivery deadline is from 1s to 1h"),
    ] {
        let (code, stdout, stderr) = tally_in(&shop(), &["query", "orders", flag, value]);
        assert_eq!((code, stdout.as_str()), (2, ""), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} `{value}` is out of range")) && stderr.contains(range),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("tally.yaml"), "{stderr}");
    }
    let (code, _, stderr) = tally_in(&shop(), &["diff", ".", "--fail-over", "-5"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn a_bad_flag_is_blamed_on_the_flag_and_a_bad_line_on_the_file() {
    let project = project_with(&[
        ("tally.yaml", b"memory_limit: 2GB\nweek_start: monday\nthreads: 2\n"),
        ("orders.csv", b"id,at\n1,2026-01-05\n"),
        (
            "m.tally",
            b"source orders { file: \"orders.csv\" time: at key: id }\nmetric n = count(orders)\n",
        ),
    ]);
    let root = project.path();
    for (flag, value, says) in [
        ("--memory-limit", "abc", "--memory-limit `abc` is not a memory size"),
        (
            "--week-start",
            "funday",
            "--week-start `funday` is not a day of the week",
        ),
        (
            "--fiscal-year-start",
            "smarch",
            "--fiscal-year-start `smarch` is not a month",
        ),
        (
            "--time-zone",
            "Mars/Olympus",
            "--time-zone unknown time zone `Mars/Olympus`",
        ),
    ] {
        let (code, _, stderr) = tally_in(root, &["query", "n", flag, value]);
        assert_eq!(code, 2, "{flag}: {stderr}");
        assert!(stderr.contains(says), "{flag}: {stderr}");
        assert!(!stderr.contains("tally.yaml"), "{flag}: {stderr}");
    }
    write_files(
        root,
        &[("tally.yaml", b"memory_limit: 2GB\nweek_start: funday\nthreads: 5000\n")],
    );
    let (code, _, stderr) = tally_in(root, &["query", "n"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("`funday` is not a day of the week") && stderr.contains("tally.yaml:2:1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`5000` is out of range") && stderr.contains("tally.yaml:3:1"),
        "{stderr}"
    );
    // A flag wins over the file's line, whatever the line says.
    let (code, _, stderr) = tally_in(root, &["query", "n", "--week-start", "sunday", "--threads", "1"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn check_finds_a_breakdown_a_report_or_alert_cannot_reach() {
    let project = project_with(&[
        ("orders.csv", b"id,at,channel\n1,2026-01-05,web\n"),
        ("labels.csv", b"code,label\na,Alpha\n"),
        (
            "m.tally",
            concat!(
                "source orders { file: \"orders.csv\" time: at key: id }\n",
                "source labels { file: \"labels.csv\" key: code }\n",
                "metric n = count(orders)\nmetric share_n = n / 2\n",
                "dimension label = labels.label\ndimension channel = orders.channel\n",
                "report weekly \"Weekly\" {\n  metrics: [share_n]\n  by: label\n}\n",
                "alert few { when n < 1 per month by label }\n",
            )
            .as_bytes(),
        ),
    ]);
    let root = project.path();
    let (code, _, stderr) = tally_in(root, &["check"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("error[E0586]: report `weekly` breaks metric `share_n` down by `label`, which reads source `labels`; source `orders` does not join it")
            && stderr.contains("m.tally:9:7"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error[E0586]: alert `few` breaks metric `n` down by `label`"),
        "{stderr}"
    );
    let (code, _, stderr) = tally_in(root, &["run", "--as-of", "2026-01-31"]);
    assert_eq!(code, 3, "{stderr}");
    // Reachable breakdowns check clean.
    let text = std::fs::read_to_string(root.join("m.tally")).unwrap();
    std::fs::write(
        root.join("m.tally"),
        text.replace("by: label", "by: channel")
            .replace("by label", "by channel"),
    )
    .unwrap();
    let (code, _, stderr) = tally_in(root, &["check"]);
    assert_eq!((code, stderr.as_str()), (0, "ok: 2 sources, 2 dimensions, 2 metrics\n"));
}

#[test]
fn a_range_that_ends_before_it_starts_is_a_usage_error() {
    for args in [
        &[
            "query", "orders", "--by", "month", "--from", "2026-03", "--to", "2026-02",
        ][..],
        &["query", "orders", "--from", "2026-03-02", "--to", "2026-03-01"],
        &["query", "orders", "--from", "2026-03-02", "--as-of", "2026-03-01"],
        &["alerts", "--backtest", "--from", "2026-03-01", "--to", "2026-02-01"],
        &[
            "diff",
            shop().to_str().unwrap(),
            "--from",
            "2026-05-01",
            "--as-of",
            "2026-04-01",
        ],
    ] {
        let (code, stdout, stderr) = tally_in(&shop(), args);
        assert_eq!((code, stdout.as_str()), (2, ""), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--from 2026-0") && stderr.contains(" is after --"),
            "{args:?}: {stderr}"
        );
    }
    // One day is a range.
    let (code, _, _) = tally_in(
        &shop(),
        &["query", "orders", "--from", "2026-03-01", "--to", "2026-03-01"],
    );
    assert_eq!(code, 0);
}

/// A server that accepts connections and never answers; its port.
fn silent_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

#[test]
fn webhooks_are_delivered_within_one_deadline_and_what_is_late_is_kept() {
    let port = silent_server();
    let metrics = format!(
        concat!(
            "source orders {{ file: \"orders.csv\" time: at key: id }}\n",
            "metric n = count(orders)\n",
            "alert a {{ when n < 100 per month webhook \"http://127.0.0.1:{port}/a\" }}\n",
            "alert b {{ when n < 200 per month webhook \"http://127.0.0.1:{port}/b\" }}\n",
            "alert c {{ when n < 300 per month webhook \"http://127.0.0.1:{port}/c\" }}\n",
        ),
        port = port
    );
    let project = project_with(&[
        ("orders.csv", b"id,at\n1,2026-01-05\n"),
        ("m.tally", metrics.as_bytes()),
        ("tally.yaml", b"webhook_deadline: 1s\n"),
    ]);
    let root = project.path();
    let (code, stdout, stderr) = tally_in(root, &["alerts", "--as-of", "2026-01-31"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stderr.matches("warning[W0803]: cannot notify").count(), 3, "{stderr}");
    assert!(stderr.contains("it is sent again on the next run"), "{stderr}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(".tally/alert-state.json")).unwrap()).unwrap();
    assert_eq!(state["pending"].as_array().map(|p| p.len()), Some(3), "{state}");
    // The next run tries them again, within its own deadline, and keeps them still.
    let (_, _, stderr) = tally_in(root, &["alerts", "--as-of", "2026-01-31"]);
    assert_eq!(stderr.matches("warning[W0803]: cannot notify").count(), 3, "{stderr}");
}

#[test]
fn alert_text_is_escaped_in_markdown_and_annotations() {
    let project = project_with(&[
            ("orders.csv", b"id,at,channel\n1,2026-01-05,<b>w|eb</b>\n"),
            (
                "m.tally",
                concat!(
                    "source orders { file: \"orders.csv\" time: at key: id }\n",
                    "metric n = count(orders)\ndimension channel = orders.channel\n",
                    "alert few { when n < 5 per month by channel message \"<script>x</script> | {{ value }} [link](http://x)\" }\n",
                )
                .as_bytes(),
            ),
    ]);
    let root = project.path();
    let (code, stdout, stderr) = tally_in(
        root,
        &["alerts", "--as-of", "2026-01-31", "--no-state", "--format", "markdown"],
    );
    assert_eq!(code, 1, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| few"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(!row.contains('<') && !row.contains('>'), "{row}");
    assert!(row.starts_with("| few\\|channel=&lt;b&gt;w\\|eb&lt;/b&gt; |"), "{row}");
    assert!(
        row.contains("| &lt;script&gt;x&lt;/script&gt; \\| 1 \\[link\\](http://x) |"),
        "{row}"
    );
    // Six pipes that are not escaped: five cells.
    let bare = row.replace("\\|", "");
    assert_eq!(bare.matches('|').count(), 6, "{row}");
    let (_, stdout, _) = tally_in(
        root,
        &["alerts", "--as-of", "2026-01-31", "--no-state", "--format", "github"],
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("title=alert few|channel=<b>w|eb</b>::<script>x</script> | 1 [link](http://x)"),
        "{stdout}"
    );
}

#[test]
fn two_identical_runs_at_once_write_one_version() {
    let project = project_with(&[
            ("orders.csv", b"id,at\n1,2026-01-05\n"),
            (
                "m.tally",
                b"source orders { file: \"orders.csv\" time: at key: id }\nmetric n = count(orders)\nreport r \"R\" {\n  metrics: [n]\n  grain: month\n}\n",
            ),
    ]);
    let root = project.path();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["run", "--as-of", "2026-01-31", "--color=never", "--project"])
            .arg(root)
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(start);
        let b = s.spawn(start);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let said: Vec<String> = [a, b]
        .iter()
        .map(|o| {
            assert_eq!(o.status.code(), Some(0));
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
        .collect();
    let wrote = said.iter().filter(|s| s.contains("wrote")).count();
    let unchanged = said.iter().filter(|s| s.contains("unchanged")).count();
    assert_eq!((wrote, unchanged), (1, 1), "{said:?}");
}

#[test]
fn an_alias_bomb_is_refused_at_the_alias() {
    let mut yaml = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
        let prev = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
        yaml.push_str(&format!(
            "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let project = project_with(&[("m.yaml", yaml.as_bytes())]);
    let (code, _, stderr) = tally_in(project.path(), &["check"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("repetition limit") && stderr.contains("m.yaml:2:8"),
        "{stderr}"
    );
}

/// A cumulative window over one row of year 1 among recent ones: the same numbers as over
/// recent rows alone, plus that row (hand-computed), by day from --from and by month from
/// the first row.
#[test]
fn cumulative_metrics_over_a_row_of_year_one() {
    let project = project_with(&[
            (
                "ev.csv",
                b"id,at,customer,amount\n0,0001-01-01,old,100\n1,2026-01-30,a,1\n2,2026-02-01,b,2\n3,2026-02-01,a,3\n4,2026-02-03,c,4\n5,2026-03-10,old,5\n",
            ),
            (
                "m.tally",
                concat!(
                    "source ev { file: \"ev.csv\" time: at key: id }\n",
                    "metric n = count(ev)\nmetric cn = cumulative(n)\n",
                    "metric cs = cumulative(sum(ev.amount))\n",
                    "metric cd = cumulative(count_distinct(ev.customer))\n",
                    "metric cm = cumulative(median(ev.amount))\n",
                )
                .as_bytes(),
            ),
    ]);
    let root = project.path();
    let (code, stdout, stderr) = tally_in(
        root,
        &[
            "query",
            "cn",
            "cs",
            "cd",
            "cm",
            "--by",
            "day",
            "--from",
            "2026-01-31",
            "--to",
            "2026-02-03",
            "--format",
            "csv",
        ],
    );
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(
        stdout,
        concat!(
            "day,cn,cs,cd,cm\n",
            "2026-01-31,2,101,2,50.5\n",
            "2026-02-01,4,106,3,2.5\n",
            "2026-02-02,4,106,3,2.5\n",
            "2026-02-03,5,110,4,3\n",
        )
    );
    let (code, stdout, _) = tally_in(
        root,
        &[
            "query", "cn", "cd", "--by", "month", "--from", "2026-01", "--format", "csv",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(stdout, "month,cn,cd\n2026-01-01,2,2\n2026-02-01,5,4\n2026-03-01,6,4\n");
    // From the first row: years of empty months before 2026 count nothing.
    let (code, stdout, _) = tally_in(root, &["query", "cn", "--by", "year", "--format", "csv"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2027, "{}", &stdout[..200.min(stdout.len())]);
    assert_eq!(
        (lines[1], lines[2], lines[2026]),
        ("0001-01-01,1", "0002-01-01,1", "2026-01-01,6")
    );
}

/// What held when probed, and must keep holding: user text escaped in the report under its
/// Content-Security-Policy; YAML nested past any use refused with a place; `--where` text
/// is data; `diff` never passes an option to git; versions and the alert state whole after
/// `kill -9`; a state file that is a link is replaced, not written through.
#[test]
fn what_held_when_probed() {
    let project = project_with(&[
        (
            "orders.csv",
            b"id,at,channel\n1,2026-01-05,<img src=x onerror=alert(1)>\n2,2026-01-06,web\n",
        ),
        (
            "m.tally",
            concat!(
                "source orders { file: \"orders.csv\" time: at key: id }\n",
                "metric n \"<script>alert(1)</script>\" = count(orders)\n",
                "dimension channel = orders.channel\n",
                "alert few { when n < 5 per month message \"<b>{{ value }}</b>\" }\n",
                "report r \"<i>R</i>\" {\n  metrics: [n]\n  grain: month\n  by: channel\n}\n",
            )
            .as_bytes(),
        ),
    ]);
    let root = project.path();
    let (code, _, stderr) = tally_in(root, &["run", "--as-of", "2026-01-31"]);
    assert_eq!(code, 0, "{stderr}");
    let version = std::fs::read_dir(root.join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("manifest.json").exists())
        .expect("a version");
    let page = std::fs::read_to_string(version.join("index.html")).unwrap();
    assert!(page.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"));
    for raw in ["<script>alert(1)", "<img src=x", "<i>R</i>", "<b>1"] {
        assert!(!page.contains(raw), "{raw} in the page");
    }
    assert!(page.contains("&lt;script&gt;alert(1)&lt;"));

    // `--where` text is data, never SQL.
    let (code, stdout, stderr) = tally_in(
        root,
        &[
            "query",
            "n",
            "--where",
            "channel = \"x'); DROP TABLE orders; --\"",
            "--format",
            "csv",
        ],
    );
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "n\n0\n", ""));

    // A revision that looks like an option.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--project")
        .arg(root)
        .args(["diff", "--", "--output=/tmp/owned"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a revision does not start with `-`"), "{stderr}");
    assert!(!Path::new("/tmp/owned").exists());

    // YAML nested 10,000 deep.
    let deep = format!("metrics: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    write_files(root, &[("deep.yaml", deep.as_bytes())]);
    let (code, _, stderr) = tally_in(root, &["check"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("deep.yaml:1:"), "{stderr}");
    std::fs::remove_file(root.join("deep.yaml")).unwrap();

    // A state file that links elsewhere is replaced by a file of its own.
    let elsewhere = root.join("elsewhere.json");
    std::fs::write(&elsewhere, "not mine").unwrap();
    std::fs::create_dir_all(root.join(".tally")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&elsewhere, root.join(".tally/alert-state.json")).unwrap();
    let (code, _, stderr) = tally_in(root, &["alerts", "--as-of", "2026-01-31"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "not mine");
    let state = root.join(".tally/alert-state.json");
    assert!(!std::fs::symlink_metadata(&state).unwrap().file_type().is_symlink());

    // Killed at any moment, a run leaves whole versions and a whole state, or none.
    for (i, wait) in [5u64, 20, 40, 80, 160].into_iter().enumerate() {
        let as_of = format!("2026-02-0{}", i + 1);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["run", "--as-of", &as_of, "--color=never", "--project"])
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait));
        let _ = child.kill();
        let _ = child.wait();
        for e in std::fs::read_dir(root.join("reports")).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "latest" || !e.path().is_dir() {
                continue;
            }
            let manifest = std::fs::read_to_string(e.path().join("manifest.json")).unwrap();
            serde_json::from_str::<serde_json::Value>(&manifest).unwrap();
            assert!(e.path().join("results.json").exists(), "{name}");
        }
        if let Ok(text) = std::fs::read_to_string(&state) {
            serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    }
    let (code, _, stderr) = tally_in(root, &["run", "--as-of", "2026-02-28"]);
    assert_eq!(code, 0, "{stderr}");
}
