//! Snapshots of the stages' outputs: parsed expressions (precedence, every form), the DSL
//! and YAML front ends agreeing, and the DataFusion plans that run.

use crate::{Q, fixture, load};
use tally::ast::{Definitions, Expr, ExprKind};
use tally::span::Files;

/// An expression as an s-expression: shows how operators bind.
fn sexpr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number(n) => format!("{n}"),
        ExprKind::String(s) => format!("{s:?}"),
        ExprKind::Bool(b) => format!("{b}"),
        ExprKind::Date(d) => format!("date:{d}"),
        ExprKind::Month(d) => format!("month:{d}"),
        ExprKind::Null => "null".into(),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Qualified(s, c) => format!("{}.{}", s.value, c.value),
        ExprKind::Binary(op, a, b) => format!("({} {} {})", op.symbol(), sexpr(a), sexpr(b)),
        ExprKind::Not(a) => format!("(not {})", sexpr(a)),
        ExprKind::Neg(a) => format!("(- {})", sexpr(a)),
        ExprKind::IsNull { expr, negated } => {
            format!("({} {})", if *negated { "is-not-null" } else { "is-null" }, sexpr(expr))
        }
        ExprKind::InList { expr, list, negated } => format!(
            "({} {} [{}])",
            if *negated { "not-in" } else { "in" },
            sexpr(expr),
            list.iter().map(sexpr).collect::<Vec<_>>().join(" ")
        ),
        ExprKind::Between {
            expr,
            low,
            high,
            negated,
        } => format!(
            "({} {} {} {})",
            if *negated { "not-between" } else { "between" },
            sexpr(expr),
            sexpr(low),
            sexpr(high)
        ),
        ExprKind::Call { name, args, filter } => format!(
            "({}{}{})",
            name.value,
            args.iter().map(|a| format!(" {}", sexpr(a))).collect::<String>(),
            filter
                .as_ref()
                .map(|f| format!(" :where {}", sexpr(f)))
                .unwrap_or_default()
        ),
        ExprKind::Duration { amount, unit } => format!("(duration {amount} {})", unit.value),
        ExprKind::Offset { expr, amount, unit } => format!("(offset {} {amount} {})", sexpr(expr), unit.value),
        ExprKind::Conversion(c) => {
            let side = |n: &tally::ast::Name, f: &Option<Expr>| match f {
                Some(f) => format!("{} :where {}", n.value, sexpr(f)),
                None => n.value.clone(),
            };
            format!(
                "({} {} -> {} :by {} :within {} {})",
                if c.count { "conversions" } else { "conversion" },
                side(&c.base, &c.base_filter),
                side(&c.target, &c.target_filter),
                c.entity.value,
                c.within.value.0,
                c.within.value.1
            )
        }
    }
}

fn summary(defs: &Definitions) -> String {
    let mut out = String::new();
    for s in &defs.sources {
        let joins: Vec<String> = s
            .joins
            .iter()
            .map(|j| {
                format!(
                    "{}:{}={}",
                    j.target.value,
                    j.column.value,
                    j.target_column.as_ref().unwrap_or(&j.column).value
                )
            })
            .collect();
        out.push_str(&format!(
            "source {} file={:?} time={:?} key={:?} joins={joins:?}\n",
            s.name.value,
            s.file.as_ref().map(|f| &f.value),
            s.time.as_ref().map(|f| &f.value),
            s.key.as_ref().map(|f| &f.value)
        ));
    }
    for d in &defs.dimensions {
        out.push_str(&format!("dimension {} = {}\n", d.name.value, sexpr(&d.expr)));
    }
    for m in &defs.metrics {
        let meta = &m.meta;
        out.push_str(&format!(
            "metric {} = {}  label={:?} format={:?} owner={:?}\n",
            m.name.value,
            sexpr(&m.expr),
            meta.label.as_ref().map(|l| &l.value),
            meta.format.as_ref().map(|f| f.value.to_string()),
            meta.owner.as_ref().map(|o| &o.value),
        ));
    }
    for t in &defs.targets {
        use tally::ast::{GoalDef, LevelKind};
        let level = |l: &tally::ast::LevelDef| match &l.kind {
            LevelKind::Constant(a) => format!("{}{}", a.value, if a.percent { " (percent)" } else { "" }),
            LevelKind::Schedule(e) => format!("{:?}", e.iter().map(|(d, a)| (d.value, a.value)).collect::<Vec<_>>()),
            LevelKind::File(f) => format!("file {}", f.value),
        };
        let goal = match &t.goal {
            GoalDef::AtLeast(l) => format!("at_least({})", level(l)),
            GoalDef::AtMost(l) => format!("at_most({})", level(l)),
            GoalDef::Reach(l) => format!("reach({})", level(l)),
            GoalDef::Between(a, b) => format!("between({}, {})", level(a), level(b)),
        };
        out.push_str(&format!(
            "target {} {goal} per={:?} from={:?} by={:?} tolerance={:?}\n",
            t.metric.value,
            t.per.as_ref().map(|p| &p.value),
            t.from.as_ref().map(|d| d.value),
            t.by.as_ref().map(|d| d.value),
            t.tolerance.as_ref().map(|a| a.value.value),
        ));
    }
    for a in &defs.alerts {
        use tally::ast::ConditionDef;
        let amount = |a: &tally::ast::Amount| format!("{}{}", a.value, if a.percent { " (percent)" } else { "" });
        let condition = match a.condition.as_ref().map(|c| &c.value) {
            Some(ConditionDef::Threshold { metric, levels }) => format!(
                "{} {}",
                metric.value,
                levels
                    .iter()
                    .map(|l| format!(
                        "{} {} {:?}",
                        l.op.symbol(),
                        amount(&l.amount.value),
                        l.severity.as_ref().map(|s| &s.value)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(ConditionDef::Change {
                metric,
                against,
                op,
                amount: a,
            }) => format!(
                "{} change vs {:?} {} {}",
                metric.value,
                against.as_ref().map(|x| &x.value),
                op.symbol(),
                amount(&a.value)
            ),
            Some(ConditionDef::OffTarget { metric, pace }) => {
                format!("{} off {}", metric.value, if *pace { "pace" } else { "target" })
            }
            Some(ConditionDef::Stale { source, older }) => {
                format!("source {} older than {:?}", source.value, older.value)
            }
            Some(ConditionDef::Empty { source }) => format!("source {} empty", source.value),
            Some(ConditionDef::Anomaly {
                metric,
                method,
                threshold,
                window,
                weekday,
            }) => format!(
                "{} anomaly {:?} > {:?} over {:?} weekday={weekday}",
                metric.value,
                method.as_ref().map(|m| &m.value),
                threshold.as_ref().map(|t| t.value),
                window.as_ref().map(|w| &w.value)
            ),
            None => "none".into(),
        };
        out.push_str(&format!(
            "alert {} when {condition} for={:?} per={:?} by={:?} severity={:?} message={:?}\n",
            a.name.value,
            a.for_periods.as_ref().map(|f| &f.value),
            a.per.as_ref().map(|p| &p.value),
            a.by.iter().map(|b| &b.value).collect::<Vec<_>>(),
            a.severity.as_ref().map(|s| &s.value),
            a.message.as_ref().map(|m| &m.value),
        ));
    }
    for r in &defs.reports {
        out.push_str(&format!(
            "report {} title={:?} grain={:?} range={:?} metrics={:?} by={:?}\n",
            r.name.value,
            r.title.as_ref().map(|t| &t.value),
            r.grain.as_ref().map(|g| &g.value),
            r.range.as_ref().map(|g| &g.value),
            r.metrics.iter().map(|m| &m.value).collect::<Vec<_>>(),
            r.by.iter().map(|m| &m.value).collect::<Vec<_>>(),
        ));
    }
    out
}

#[test]
fn expressions_bind_as_documented() {
    let mut files = Files::default();
    let cases = [
        "a or b and not c = 1",
        "x + y * 2 - -z / 4",
        "(x + y) * 2",
        "status in (\"a\", \"b\") and amount not between 1 and 5",
        "d is not null or e is null",
        "created_at >= 2026-01-31 and month < 2026-02",
        "25% + 1.5e3",
        "sum(jobs.amount where status = \"completed\" and not refunded) / count(jobs)",
        "percentile(jobs.amount, 90% where x != \"it\\\"s\")",
        "lower(a) = upper(b) // a comment",
    ];
    let mut out = String::new();
    for c in cases {
        let id = files.add("case", "case".into(), c.to_string());
        let e = tally::syntax::parse_expr(id, c, 0).unwrap();
        out.push_str(&format!("{c}\n  => {}\n", sexpr(&e)));
    }
    insta::assert_snapshot!("expressions", out);
}

#[test]
fn time_expressions_parse_as_documented() {
    let mut files = Files::default();
    let cases = [
        "rolling(revenue, 7 days)",
        "rolling(count_distinct(enquiries.customer_id), 28 days)",
        "revenue / revenue[-1 year] - 1",
        "-revenue[-2 periods] * 2",
        "to_date(revenue, month) + cumulative(x)",
        "share(enquiries)",
        "last(sum(balances.amount where open))",
        "conversion(enquiries where channel = \"web\" -> jobs where amount > 100 by customer_id within 30 days)",
        "conversions(a -> b by c within 1 week)",
    ];
    let mut out = String::new();
    for c in cases {
        let id = files.add("case", "case".into(), c.to_string());
        let e = tally::syntax::parse_expr(id, c, 0).unwrap();
        out.push_str(&format!("{c}\n  => {}\n", sexpr(&e)));
    }
    insta::assert_snapshot!("time_expressions", out);
}

/// The DSL and the YAML examples of the product definition mean the same thing.
#[test]
fn dsl_and_yaml_front_ends_agree() {
    let dsl = r#"
source enquiries {
  file: "data/enquiries.csv"
  time: created_at
  key: enquiry_id
}

source jobs {
  file: "data/jobs.parquet"
  time: completed_at
  key: job_id
  join enquiries on enquiry_id        // many-to-one: each job came from one enquiry
}

dimension channel = enquiries.channel

metric enquiries "Enquiries" = count(enquiries)
metric won_jobs = count(jobs where status = "completed")
metric revenue "Revenue" = sum(jobs.amount where status = "completed") {
  format: currency(USD)
  owner: "operations"
  description: "Invoiced revenue of completed jobs"
}
metric conversion "Enquiry to job" = won_jobs / enquiries { format: percent }

target revenue >= 120000 per month from 2026-01
alert conversion_drop {
  when conversion < 20% for 3 days
  severity critical
  message "Conversion fell to {{ value }} in {{ period }}"
}
report weekly "Weekly operations" {
  grain: week
  range: last 26 weeks
  metrics: [enquiries, conversion, revenue]
  by: channel
}
"#;
    let yaml = crate::PRODUCT_YAML;
    let mut files = Files::default();
    let a = files.add("a.tally", "a.tally".into(), dsl.to_string());
    let b = files.add("b.yaml", "b.yaml".into(), yaml.to_string());
    let (from_dsl, d1) = tally::syntax::parse_file(a, dsl);
    let (from_yaml, d2) = tally::yaml::parse_file(b, yaml);
    assert!(d1.is_empty() && d2.is_empty(), "{d1:?} {d2:?}");
    let dsl_summary = summary(&from_dsl).replace("target target", "target");
    let yaml_summary = summary(&from_yaml).replace("target targets[0]", "target revenue");
    assert_eq!(dsl_summary, yaml_summary);
    insta::assert_snapshot!("product_example", dsl_summary);
}

#[test]
fn yaml_is_read_as_yaml_1_2() {
    // `on`, `yes` and `no` are strings, not booleans.
    let yaml = "sources:\n  no:\n    file: yes.csv\n    joins:\n      - source: on\n        on: off\n";
    let mut files = Files::default();
    let id = files.add("y.yaml", "y.yaml".into(), yaml.to_string());
    let (defs, diags) = tally::yaml::parse_file(id, yaml);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(defs.sources[0].name.value, "no");
    assert_eq!(defs.sources[0].file.as_ref().unwrap().value, "yes.csv");
    assert_eq!(defs.sources[0].joins[0].target.value, "on");
    assert_eq!(defs.sources[0].joins[0].column.value, "off");
    // Places point into the YAML text.
    assert_eq!(files.location(defs.sources[0].joins[0].column.span), "y.yaml:6:13");
}

#[test]
fn plans_are_one_aggregate_per_source() {
    let env = load(&fixture("shop"), Default::default());
    let metrics = ["paid_share", "revenue", "p75_paid", "buyers", "customers"];
    let query = tally::plan::Query {
        metrics: metrics.iter().map(|m| env.model.metric(m).unwrap()).collect(),
        grain: None,
        dimensions: vec![env.model.dimension("segment").unwrap()],
        from: None,
        to: None,
        filter: None,
        compare: None,
    };
    let plan = tally::plan::build(&env.model, &env.files, &env.settings.calendar(), query).unwrap();
    let mut out = String::new();
    for scan in &plan.scans {
        out.push_str(&format!("{}\n", scan.plan.display_indent()));
    }
    for k in &plan.key_checks {
        out.push_str(&format!("key check:\n{}\n", k.plan.display_indent()));
    }
    insta::assert_snapshot!("plan_shop", out);
    let _ = Q::default();
}
