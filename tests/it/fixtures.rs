//! Every metric kind and filter form against values computed by hand on a tiny shop
//! (tests/fixtures/shop): 8 orders over January, February and April 2026 (March has none).

use crate::{Q, assert_close, fixture, load, series};
use tally::settings::SettingsFile;

const N: Option<f64> = None;

fn s(v: f64) -> Option<f64> {
    Some(v)
}

/// A metric, its values in January, February, March and April, and its total.
type Expected = (&'static str, [Option<f64>; 4], Option<f64>);

/// Monthly values and the total over everything, by hand.
fn expectations() -> Vec<Expected> {
    vec![
        ("orders", [s(4.), s(2.), s(0.), s(2.)], s(8.)),
        ("paid_orders", [s(3.), s(1.), s(0.), s(2.)], s(6.)),
        ("revenue", [s(360.5), s(300.), s(0.), s(60.)], s(720.5)),
        ("avg_order", [s(100.125), s(187.5), N, s(60.)], s(835.5 / 7.)),
        ("min_order", [s(10.), s(75.), N, s(60.)], s(10.)),
        ("max_order", [s(250.5), s(300.), N, s(60.)], s(300.)),
        ("median_order", [s(70.), s(187.5), N, s(60.)], s(75.)),
        ("p75_order", [s(137.625), s(243.75), N, s(60.)], s(175.25)),
        ("buyers", [s(3.), s(1.), s(0.), s(2.)], s(4.)),
        ("paid_share", [s(0.75), s(0.5), N, s(1.)], s(0.75)),
        ("revenue_per_buyer", [s(360.5 / 3.), s(300.), N, s(30.)], s(180.125)),
        ("net", [s(320.5), s(300.), s(0.), s(60.)], s(680.5)),
        ("hours_to_ship", [s(36.), s(24.), N, s(18.)], s(28.)),
        ("days_to_ship", [s(1.5), s(1.), N, s(0.75)], s(28. / 24.)),
        ("big_or_phone", [s(1.), s(2.), s(0.), s(1.)], s(4.)),
        ("not_web", [s(1.), s(1.), s(0.), s(1.)], s(3.)),
        ("in_list", [s(4.), s(1.), s(0.), s(2.)], s(7.)),
        ("not_in", [s(1.), s(1.), s(0.), s(0.)], s(2.)),
        ("between_50_100", [s(1.), s(1.), s(0.), s(1.)], s(3.)),
        ("null_channel", [s(1.), s(0.), s(0.), s(0.)], s(1.)),
        ("known_channel", [s(3.), s(2.), s(0.), s(2.)], s(7.)),
        ("late_january", [s(2.), s(0.), s(0.), s(0.)], s(2.)),
        ("smb_amount", [s(150.), s(0.), s(0.), s(60.)], s(210.)),
        ("upper_web", [s(2.), s(1.), s(0.), s(1.)], s(4.)),
        ("coalesced", [s(404.5), s(377.), s(0.), s(62.)], s(843.5)),
        ("recent_signups", [s(2.), s(1.), s(0.), s(1.)], s(4.)),
        ("arithmetic", [s(365.5), s(305.), s(5.), s(65.)], s(725.5)),
        ("nothing", [s(0.), s(0.), s(0.), s(0.)], s(0.)),
        ("nothing_avg", [N, N, N, N], N),
        ("p75_paid", [s(175.25), s(300.), N, s(60.)], s(250.5)),
        ("median_paid", [s(100.), s(300.), N, s(60.)], s(100.)),
        ("ordering_customers", [s(3.), s(2.), s(0.), s(2.)], s(4.)),
        ("avg_paid", [s(360.5 / 3.), s(300.), N, s(60.)], s(144.1)),
        ("min_web", [s(40.), s(300.), N, s(60.)], s(40.)),
        ("max_phone", [s(250.5), s(75.), N, N], s(250.5)),
    ]
}

#[test]
fn every_metric_kind_by_month_and_in_total() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let exp = expectations();
    let names: Vec<&str> = exp.iter().map(|e| e.0).collect();
    let monthly = env.query(
        &names,
        Q {
            grain: Some("month"),
            ..Q::default()
        },
    );
    let periods: Vec<String> = monthly.rows.iter().map(|r| r.period.unwrap().to_string()).collect();
    assert_eq!(
        periods,
        ["2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01"],
        "every month, the empty one too"
    );
    let total = env.query(&names, Q::default());
    assert_eq!(total.rows.len(), 1);
    for (i, (name, months, all)) in exp.iter().enumerate() {
        for (m, row) in monthly.rows.iter().enumerate() {
            assert_close(row.values[i], months[m], &format!("{name} in {}", periods[m]));
        }
        assert_close(total.rows[0].values[i], *all, &format!("{name} in total"));
    }
}

#[test]
fn each_metric_alone_equals_the_same_metric_among_others() {
    // One scan serves many measures; the values must not depend on the company they keep.
    let mut env = load(&fixture("shop"), SettingsFile::default());
    for (name, months, _) in expectations() {
        let t = env.query(
            &[name],
            Q {
                grain: Some("month"),
                ..Q::default()
            },
        );
        for (m, row) in t.rows.iter().enumerate() {
            assert_close(row.values[0], months[m], name);
        }
    }
}

#[test]
fn a_join_never_drops_or_duplicates_rows() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let t = env.query(
        &["orders", "revenue"],
        Q {
            dims: &["segment"],
            ..Q::default()
        },
    );
    let got: Vec<(Option<String>, Option<f64>, Option<f64>)> = t
        .rows
        .iter()
        .map(|r| (r.dimensions[0].clone(), r.values[0], r.values[1]))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("enterprise".into()), s(2.), s(250.5)),
            (Some("smb".into()), s(5.), s(170.)),
            // customer 9 is not in customers: its order still counts, under no segment
            (None, s(1.), s(300.)),
        ]
    );
}

#[test]
fn every_period_and_breakdown_value_is_present() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let t = env.query(
        &["orders", "paid_share"],
        Q {
            grain: Some("month"),
            dims: &["channel"],
            ..Q::default()
        },
    );
    // 4 months x 3 channel values (phone, web, none)
    assert_eq!(t.rows.len(), 12);
    let march: Vec<_> = t
        .rows
        .iter()
        .filter(|r| r.period.unwrap().to_string() == "2026-03-01")
        .collect();
    assert_eq!(march.len(), 3);
    for r in march {
        assert_eq!(
            r.values,
            vec![s(0.), N],
            "a count over no rows is 0, a ratio of 0/0 is null"
        );
    }
    let jan_phone = t
        .rows
        .iter()
        .find(|r| r.period.unwrap().to_string() == "2026-01-01" && r.dimensions[0].as_deref() == Some("phone"))
        .unwrap();
    assert_eq!(jan_phone.values, vec![s(1.), s(1.)]);
}

#[test]
fn weeks_start_on_monday_and_empty_weeks_are_zero() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let t = env.query(
        &["orders"],
        Q {
            grain: Some("week"),
            ..Q::default()
        },
    );
    let got: Vec<(String, f64)> = t
        .rows
        .iter()
        .map(|r| (r.period.unwrap().to_string(), r.values[0].unwrap()))
        .collect();
    let mut expected = vec![
        ("2026-01-05", 2.),
        ("2026-01-12", 0.),
        ("2026-01-19", 1.),
        ("2026-01-26", 2.),
    ];
    expected.extend([("2026-02-02", 0.), ("2026-02-09", 1.)]);
    for w in [
        "2026-02-16",
        "2026-02-23",
        "2026-03-02",
        "2026-03-09",
        "2026-03-16",
        "2026-03-23",
    ] {
        expected.push((w, 0.));
    }
    expected.push(("2026-03-30", 2.));
    let expected: Vec<(String, f64)> = expected.into_iter().map(|(a, b)| (a.to_string(), b)).collect();
    assert_eq!(got, expected);
}

#[test]
fn days_quarters_and_fiscal_years() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let t = env.query(
        &["orders"],
        Q {
            grain: Some("quarter"),
            ..Q::default()
        },
    );
    let got = series(&t, 0);
    assert_eq!(
        got,
        vec![("2026-01-01".to_string(), s(6.)), ("2026-04-01".to_string(), s(2.))]
    );

    let t = env.query(
        &["orders"],
        Q {
            grain: Some("day"),
            from: Some("2026-01-05"),
            to: Some("2026-01-06"),
            ..Q::default()
        },
    );
    let got = series(&t, 0);
    assert_eq!(
        got,
        vec![("2026-01-05".to_string(), s(2.)), ("2026-01-06".to_string(), s(0.))]
    );

    let overrides = SettingsFile {
        fiscal_year_start: Some("april".into()),
        ..SettingsFile::default()
    };
    let mut fiscal = load(&fixture("shop"), overrides);
    let t = fiscal.query(
        &["orders"],
        Q {
            grain: Some("year"),
            ..Q::default()
        },
    );
    let got = series(&t, 0);
    assert_eq!(
        got,
        vec![("2025-04-01".to_string(), s(6.)), ("2026-04-01".to_string(), s(2.))]
    );
}

#[test]
fn from_to_and_where_filter() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let t = env.query(
        &["orders"],
        Q {
            grain: Some("month"),
            from: Some("2026-01-06"),
            to: Some("2026-02-14"),
            ..Q::default()
        },
    );
    let got: Vec<_> = t.rows.iter().map(|r| r.values[0]).collect();
    assert_eq!(got, vec![s(2.), s(2.)]);

    let t = env.query(
        &["orders", "revenue"],
        Q {
            grain: Some("month"),
            filter: Some("channel = \"web\""),
            ..Q::default()
        },
    );
    let got: Vec<_> = t.rows.iter().map(|r| (r.values[0], r.values[1])).collect();
    assert_eq!(
        got,
        vec![(s(2.), s(100.)), (s(1.), s(300.)), (s(0.), s(0.)), (s(1.), s(60.))]
    );

    // A filter through the join.
    let t = env.query(
        &["orders"],
        Q {
            filter: Some("segment = \"smb\" and amount > 20"),
            ..Q::default()
        },
    );
    assert_eq!(t.rows[0].values, vec![s(3.)]);
}

#[test]
fn a_dimension_the_source_cannot_reach_is_refused() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let err = env
        .try_query(
            &["customers"],
            Q {
                dims: &["channel"],
                ..Q::default()
            },
        )
        .unwrap_err();
    assert!(err.message.contains("does not join"), "{}", err.message);
    let err = env
        .try_query(
            &["customers"],
            Q {
                grain: Some("month"),
                ..Q::default()
            },
        )
        .unwrap_err();
    assert!(err.message.contains("has no time column"), "{}", err.message);
    let t = env.query(&["customers"], Q::default());
    assert_eq!(t.rows[0].values, vec![s(3.)]);
}

#[test]
fn sources_can_be_folders_with_hive_partitions_and_globs() {
    let mut env = load(&fixture("layouts"), SettingsFile::default());
    let t = env.query(
        &["n", "amount"],
        Q {
            dims: &["region"],
            ..Q::default()
        },
    );
    let got: Vec<_> = t
        .rows
        .iter()
        .map(|r| (r.dimensions[0].clone().unwrap(), r.values[0], r.values[1]))
        .collect();
    assert_eq!(
        got,
        vec![
            ("north".to_string(), s(2.), s(15.)),
            ("south".to_string(), s(1.), s(7.))
        ]
    );
    // The glob takes the two CSV files and leaves the notes out.
    let t = env.query(
        &["days"],
        Q {
            grain: Some("day"),
            ..Q::default()
        },
    );
    assert_eq!(
        t.rows.iter().map(|r| r.values[0]).collect::<Vec<_>>(),
        vec![s(1.), s(1.)]
    );
}

#[test]
fn category_filters_are_evaluated_on_a_pre_aggregate_with_the_same_numbers() {
    // Every filter here reads only string columns (status, channel, customers.segment):
    // the scan aggregates by them first and applies the filters to that small table.
    let names = [
        "paid_orders",
        "revenue",
        "not_web",
        "in_list",
        "not_in",
        "null_channel",
        "known_channel",
        "upper_web",
        "smb_amount",
        "avg_paid",
        "min_web",
        "max_phone",
        "orders",
        "net",
    ];
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let ids: Vec<usize> = names.iter().map(|n| env.model.metric(n).unwrap()).collect();
    let query = tally::plan::Query {
        metrics: ids,
        grain: Some(tally::time::Grain::Month),
        dimensions: vec![],
        from: None,
        to: None,
        filter: None,
        compare: None,
    };
    let plan = tally::plan::build(&env.model, &env.files, &env.settings.calendar(), query).unwrap();
    assert_eq!(
        (plan.scans.len(), plan.key_checks.len()),
        (1, 1),
        "one scan of orders; the join to customers checked"
    );
    let text = format!("{}", plan.scans[0].plan.display_indent());
    assert_eq!(text.matches("Aggregate:").count(), 2, "{text}");

    let exp: std::collections::HashMap<_, _> = expectations().into_iter().map(|e| (e.0, e)).collect();
    for grain in [Some("month"), None] {
        for dims in [&[][..], &["segment"][..]] {
            let t = env.query(
                &names,
                Q {
                    grain,
                    dims,
                    ..Q::default()
                },
            );
            if dims.is_empty() {
                for (i, name) in names.iter().enumerate() {
                    let (_, months, total) = exp[name];
                    for (m, row) in t.rows.iter().enumerate() {
                        let want = if grain.is_some() { months[m] } else { total };
                        assert_close(row.values[i], want, &format!("{name} at {:?}", row.period));
                    }
                }
            } else {
                // By segment, against the plan without a pre-aggregate: one metric at a time.
                for (i, name) in names.iter().enumerate() {
                    let alone = env.query(
                        &[name],
                        Q {
                            grain,
                            dims,
                            ..Q::default()
                        },
                    );
                    for (a, b) in t.rows.iter().zip(&alone.rows) {
                        assert_eq!((a.period, &a.dimensions), (b.period, &b.dimensions));
                        assert_close(
                            a.values[i],
                            b.values[0],
                            &format!("{name} at {:?} {:?}", a.period, a.dimensions),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn aggregating_before_a_lookup_join_gives_the_same_numbers() {
    let mut env = load(&fixture("shop"), SettingsFile::default());
    let names = [
        "orders",
        "paid_orders",
        "revenue",
        "avg_order",
        "min_order",
        "max_order",
        "avg_paid",
    ];
    let plan_of = |env: &crate::Env, metrics: &[&str]| {
        let query = tally::plan::Query {
            metrics: metrics.iter().map(|n| env.model.metric(n).unwrap()).collect(),
            grain: Some(tally::time::Grain::Month),
            dimensions: vec![env.model.dimension("segment").unwrap()],
            from: None,
            to: None,
            filter: None,
            compare: None,
        };
        let plan = tally::plan::build(&env.model, &env.files, &env.settings.calendar(), query).unwrap();
        format!("{}", plan.scans[0].plan.display_indent())
    };
    // customers is a small lookup: orders are aggregated first, then joined.
    let eager = plan_of(&env, &names);
    assert!(
        eager.find("Left Join").unwrap() < eager.rfind("Aggregate").unwrap(),
        "{eager}"
    );
    // A distinct count cannot be re-aggregated: the rows are joined first.
    let mut with_distinct = names.to_vec();
    with_distinct.push("buyers");
    let plain = plan_of(&env, &with_distinct);
    assert_eq!(plain.matches("Aggregate").count(), 1, "{plain}");

    let a = env.query(
        &names,
        Q {
            grain: Some("month"),
            dims: &["segment"],
            ..Q::default()
        },
    );
    let b = env.query(
        &with_distinct,
        Q {
            grain: Some("month"),
            dims: &["segment"],
            ..Q::default()
        },
    );
    assert_eq!(a.rows.len(), 12, "4 months x (enterprise, smb, no segment)");
    for (ra, rb) in a.rows.iter().zip(&b.rows) {
        assert_eq!((ra.period, &ra.dimensions), (rb.period, &rb.dimensions));
        for (i, name) in names.iter().enumerate() {
            assert_close(
                ra.values[i],
                rb.values[i],
                &format!("{name} at {:?} {:?}", ra.period, ra.dimensions),
            );
        }
    }
    // Customer 9 has no row in customers: February's 300 stays, under no segment.
    let feb_none = a
        .rows
        .iter()
        .find(|r| r.period.unwrap().to_string() == "2026-02-01" && r.dimensions[0].is_none())
        .unwrap();
    assert_eq!(feb_none.values[2], s(300.));
}

/// Filters that compare columns with literals, as the plan evaluates them on classes of rows
/// (every metric together), against each metric alone (filters evaluated per row), over
/// CSV and Parquet (strings as views), with nulls, -0.0 and NaN.
#[test]
fn literal_filters_on_classes_give_the_numbers_of_filters_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("t.csv"),
        "id,at,n,x,s,b,d,k\n\
         1,2026-01-05T10:00:00,1,0.5,a,true,2026-01-01,p\n\
         2,2026-01-10T00:00:00,2,-0.0,b,false,2026-01-15,q\n\
         3,2026-01-14T23:59:59,,0.0,,true,,p\n\
         4,2026-01-15T00:00:00,3,NaN,c,,2026-01-31,q\n\
         5,2026-01-20T12:00:00,4,2.5,zz,false,2026-02-01,p\n\
         6,2026-02-01T00:00:00,2,-1.5,b,true,2026-02-10,p\n\
         7,2026-02-03T08:00:00,9,3.0,a long string value,false,2026-01-15,q\n\
         8,2026-02-28T23:00:00,,,b,,2026-03-01,\n",
    )
    .unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    crate::runtime().block_on(async {
        let df = ctx
            .read_csv(data.join("t.csv").to_str().unwrap(), Default::default())
            .await
            .unwrap();
        df.clone()
            .write_parquet(data.join("t.parquet").to_str().unwrap(), Default::default(), None)
            .await
            .unwrap();
        // The same rows in two files of a folder with Hive partitions.
        for (part, ids) in [("a", (1, 4)), ("b", (5, 8))] {
            let dir = data.join(format!("h/half={part}"));
            std::fs::create_dir_all(&dir).unwrap();
            let id = datafusion::prelude::col("id");
            df.clone()
                .filter(
                    id.clone()
                        .between(datafusion::prelude::lit(ids.0), datafusion::prelude::lit(ids.1)),
                )
                .unwrap()
                .write_parquet(dir.join("rows.parquet").to_str().unwrap(), Default::default(), None)
                .await
                .unwrap();
        }
    });
    let filters = [
        "n > 2",
        "3 >= n",
        "n = 2",
        "n != 2",
        "n between 1 and 3",
        "n not between 2 and 5",
        "n in (1, 4, 9)",
        "n not in (1, 4)",
        "n is null",
        "n is not null",
        "not (n < 3)",
        "n > 2.5",
        "x > 0",
        "x >= -0.5",
        "x = 0",
        "x < 2.5",
        "s = \"b\"",
        "s < \"c\"",
        "s in (\"a\", \"zz\")",
        "s is null",
        "not (s = \"b\") or n > 3",
        "b",
        "not b",
        "b = false",
        "d >= 2026-01-15",
        "d < 2026-02-01",
        "at >= 2026-01-15",
        "at < 2026-02-01",
        "at between 2026-01-10 and 2026-01-20",
        "s = \"a\" and n > 1 or d is null",
    ];
    // A small lookup, joined after aggregating (the breakdown by kind).
    std::fs::write(data.join("kinds.csv"), "k,kind\np,odd\nq,even\n").unwrap();
    let mut text = String::from("source kinds {\n  file: \"kinds.csv\"\n  key: k\n}\n");
    let sources = [("c", "t.csv"), ("p", "t.parquet"), ("h", "h")];
    for (src, file) in sources {
        text.push_str(&format!(
            "source {src} {{\n  file: \"{file}\"\n  time: at\n  join kinds on k\n}}\n"
        ));
        text.push_str(&format!("dimension k_{src} = {src}.k\n"));
        text.push_str(&format!("dimension kind_{src} = kinds.kind\n"));
        for (i, f) in filters.iter().enumerate() {
            text.push_str(&format!("metric {src}_{i} = count({src} where {f})\n"));
        }
        text.push_str(&format!("metric {src}_sum = sum({src}.n where s = \"b\")\n"));
        text.push_str(&format!("metric {src}_avg = avg({src}.n where x >= -0.5)\n"));
        // Filters on the lookup's columns: the scan joins first, then groups by classes.
        text.push_str(&format!("metric {src}_odd = count({src} where kinds.kind = \"odd\")\n"));
        text.push_str(&format!(
            "metric {src}_even = sum({src}.n where kinds.kind != \"odd\" and n > 1)\n"
        ));
    }
    std::fs::create_dir_all(dir.path().join("metrics")).unwrap();
    std::fs::write(dir.path().join("metrics/t.tally"), text).unwrap();
    std::fs::write(dir.path().join("tally.yaml"), "data: data\n").unwrap();

    let mut env = load(dir.path(), SettingsFile::default());
    for (src, _) in sources {
        let mut names: Vec<String> = (0..filters.len()).map(|i| format!("{src}_{i}")).collect();
        names.push(format!("{src}_sum"));
        names.push(format!("{src}_avg"));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // By period alone, and by a breakdown of the lookup (joined after aggregating).
        for dimensions in [vec![], vec![env.model.dimension(&format!("kind_{src}")).unwrap()]] {
            let joined = !dimensions.is_empty();
            let query = tally::plan::Query {
                metrics: names.iter().map(|n| env.model.metric(n).unwrap()).collect(),
                grain: Some(tally::time::Grain::Month),
                dimensions,
                ..tally::plan::Query::default()
            };
            let plan = tally::plan::build(&env.model, &env.files, &env.settings.calendar(), query).unwrap();
            let shown = format!("{}", plan.scans[0].plan.display_indent());
            assert!(shown.contains("tally_classes"), "{shown}");
            assert_eq!(shown.contains("Join"), joined, "{shown}");
            // Parquet's dictionary-encoded string column `s`, read by the filters alone, is
            // read as a dictionary (`k`, a join key, and CSV's columns as they are).
            let typed = format!("{:?}", plan.scans[0].plan);
            assert_eq!(typed.contains("Dictionary(Int32, Utf8)"), src != "c", "{typed}");
        }
        let source = env.model.sources.iter().find(|x| x.name == src).unwrap();
        let stored: &[String] = match src {
            "c" => &[],
            _ => &["s".to_string(), "k".to_string()],
        };
        assert_eq!(source.data.dictionary_columns(), stored);

        // Hand-computed totals of a few.
        let (dim, kind) = (format!("k_{src}"), format!("kind_{src}"));
        let total = env.query(&names, Q::default());
        let by_name = |n: &str| total.rows[0].values[names.iter().position(|x| *x == n).unwrap()];
        let s = |x: f64| Some(x);
        assert_eq!(by_name(&format!("{src}_0")), s(3.), "n > 2: 3, 4, 9");
        assert_eq!(by_name(&format!("{src}_14")), s(2.), "x = 0: -0.0 and 0.0");
        assert_eq!(by_name(&format!("{src}_12")), s(4.), "x > 0: 0.5, NaN, 2.5, 3.0");
        assert_eq!(by_name(&format!("{src}_16")), s(3.), "s = b");
        assert_eq!(by_name(&format!("{src}_21")), s(3.), "b");
        assert_eq!(by_name(&format!("{src}_26")), s(5.), "at >= 2026-01-15");
        assert_eq!(
            by_name(&format!("{src}_28")),
            s(3.),
            "at between 2026-01-10 and 2026-01-20 (midnight)"
        );
        assert_eq!(by_name(&format!("{src}_sum")), s(4.), "2 + 2 (the null n adds nothing)");

        let odd = [format!("{src}_0"), format!("{src}_odd"), format!("{src}_even")];
        let odd: Vec<&str> = odd.iter().map(String::as_str).collect();
        let query = tally::plan::Query {
            metrics: odd.iter().map(|n| env.model.metric(n).unwrap()).collect(),
            ..tally::plan::Query::default()
        };
        let plan = tally::plan::build(&env.model, &env.files, &env.settings.calendar(), query).unwrap();
        let shown = format!("{}", plan.scans[0].plan.display_indent());
        assert!(shown.contains("tally_classes") && shown.contains("Join"), "{shown}");
        let odd_total = env.query(&odd, Q::default());
        assert_eq!(
            odd_total.rows[0].values,
            vec![s(3.), s(4.), s(14.)],
            "odd: k = p; even: 2 + 3 + 9 (k = q)"
        );
        for (grain, names) in [None, Some("day"), Some("month")]
            .into_iter()
            .flat_map(|g| [(g, &names), (g, &odd)])
        {
            for dims in [&[][..], &[dim.as_str()][..], &[kind.as_str()][..]] {
                let q = || Q {
                    grain,
                    dims,
                    ..Q::default()
                };
                let together = env.query(names, q());
                for (i, name) in names.iter().enumerate() {
                    let alone = env.query(&[name], q());
                    assert_eq!(together.rows.len(), alone.rows.len(), "{name}");
                    for (a, b) in together.rows.iter().zip(&alone.rows) {
                        assert_eq!((a.period, &a.dimensions), (b.period, &b.dimensions));
                        let what = format!(
                            "{name} ({}) at {:?} {:?}",
                            filters.get(i).unwrap_or(name),
                            a.period,
                            a.dimensions
                        );
                        assert_close(a.values[i], b.values[0], &what);
                    }
                }
            }
        }

        // Five filters at a time (with a sum): few classes, numbered by the filters' answers
        // (the rows a filter set cannot tell apart are one group), and by period alone
        // counted in dense slots per period and number.
        for chunk in names[..filters.len()].chunks(5) {
            let mut set: Vec<&str> = chunk.to_vec();
            set.push(names[filters.len()]);
            let query = tally::plan::Query {
                metrics: set.iter().map(|n| env.model.metric(n).unwrap()).collect(),
                grain: Some(tally::time::Grain::Month),
                ..tally::plan::Query::default()
            };
            let plan = tally::plan::build(&env.model, &env.files, &env.settings.calendar(), query).unwrap();
            let shown = format!("{}", plan.scans[0].plan.display_indent());
            assert!(
                shown.contains("tally_unkey") && shown.contains("tally_dense"),
                "{shown}"
            );
            for (grain, dims) in [
                (Some("day"), &[][..]),
                (Some("month"), &[][..]),
                (Some("month"), &[dim.as_str()][..]),
            ] {
                let q = || Q {
                    grain,
                    dims,
                    ..Q::default()
                };
                let together = env.query(&set, q());
                for (i, name) in set.iter().enumerate() {
                    let alone = env.query(&[name], q());
                    assert_eq!(together.rows.len(), alone.rows.len(), "{name}");
                    for (a, b) in together.rows.iter().zip(&alone.rows) {
                        assert_eq!((a.period, &a.dimensions), (b.period, &b.dimensions));
                        let what = format!("{name} with {set:?} at {:?} {:?}", a.period, a.dimensions);
                        assert_close(a.values[i], b.values[0], &what);
                    }
                }
            }
        }
    }
}
