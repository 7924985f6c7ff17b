//! `tally init`: the files of a new project, with a small example that every command runs
//! on (a shop's orders and customers for the first quarter of 2026, made here, the same
//! every time).

use crate::random::SplitMix64;

/// Every file of a new project: path relative to the project folder, and contents.
pub fn files() -> Vec<(&'static str, String)> {
    vec![
        ("tally.yaml", SETTINGS.to_string()),
        ("metrics/shop.tally", DEFINITIONS.to_string()),
        ("metrics/shop.test.yaml", TESTS.to_string()),
        ("data/orders.csv", orders()),
        ("data/customers.csv", customers()),
        (".gitignore", "/reports/\n/.tally/\n".to_string()),
    ]
}

const SETTINGS: &str = "\
# Project settings; every key is optional and also a flag (--time-zone, ...).
definitions: metrics      # where .tally and .yaml definitions live
data: data                # source files are read from here, and only from here
reports: reports          # where `tally run` writes report versions
time_zone: UTC            # periods are cut at local midnight of this zone
week_start: monday
";

const DEFINITIONS: &str = r#"// An example to start from: a shop's orders. Try
//   tally check
//   tally query orders revenue paid_share --by week --dim channel
//   tally run --as-of 2026-03-31
// and `tally test` for the tests in shop.test.yaml.

source orders {
  file: "orders.csv"
  time: ordered_at
  key: order_id
  join customers on customer_id  // many-to-one: each order has one customer
}

source customers {
  file: "customers.csv"
  key: customer_id
}

dimension channel "Channel" = orders.channel
dimension segment "Segment" = customers.segment

metric orders "Orders" = count(orders)
metric paid_orders "Paid orders" = count(orders where status = "paid")
metric revenue "Revenue" = sum(orders.amount where status = "paid") {
  format: currency(USD)
  owner: "sales"
  description: "Amount of paid orders"
}
metric paid_share "Paid share" = paid_orders / orders { format: percent }
metric average_order "Average order" = revenue / paid_orders { format: currency(USD) }
metric buyers "Buyers" = count_distinct(orders.customer_id where status = "paid")
metric revenue_28d "Revenue, last 28 days" = rolling(revenue, 28 days) { format: currency(USD) }

target revenue >= 12000 per month
target paid_share >= 80% per week

alert revenue_drop {
  when revenue change vs previous < -25% per week
  severity warning
  message "Revenue fell to {{ value }} in the week of {{ period }}, from {{ earlier }}"
}
alert stale_orders { when source orders older than 3 days severity critical }

report weekly "Weekly sales" {
  grain: week
  range: last 12 weeks
  metrics: [orders, revenue, paid_share, average_order]
  by: channel
}
"#;

const TESTS: &str = r#"# Tests of the definitions, on rows written here (no data file is read): `tally test`.
tests:
  revenue_counts_paid_orders_only:
    rows:
      customers:
        - {customer_id: 1, segment: retail}
      orders:
        - {order_id: 1, ordered_at: "2026-01-05T10:00:00", customer_id: 1, channel: web, status: paid, amount: 100}
        - {order_id: 2, ordered_at: "2026-01-06T10:00:00", customer_id: 1, channel: web, status: refunded, amount: 40}
    expect:
      - {metric: revenue, per: month, period: 2026-01, value: 100}
      - {metric: paid_share, per: month, period: 2026-01, value: 0.5}
      - {metric: orders, per: month, period: 2026-01, by: {channel: web}, value: 2}
      # No order in February: a ratio over nothing has no value.
      - {metric: paid_share, per: month, period: 2026-02}
"#;

const CUSTOMERS: u64 = 60;

fn customers() -> String {
    let mut r = SplitMix64(7);
    let mut out = String::from("customer_id,segment,signed_up\n");
    for id in 1..=CUSTOMERS {
        let segment = ["retail", "retail", "business"][r.below(3) as usize];
        let day = 1 + r.below(28);
        out.push_str(&format!("{id},{segment},2025-{:02}-{day:02}\n", 1 + r.below(12)));
    }
    out
}

/// About 900 orders from 2026-01-01 to 2026-03-31, more on weekdays and growing.
fn orders() -> String {
    let mut r = SplitMix64(42);
    let mut out = String::from("order_id,ordered_at,customer_id,channel,status,amount\n");
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date");
    let mut id = 0;
    for day in 0..90u64 {
        let date = start + chrono::Days::new(day);
        let weekend = chrono::Datelike::weekday(&date).number_from_monday() > 5;
        let n = 6 + day / 15 + r.below(6) - if weekend { 4 } else { 0 };
        for _ in 0..n {
            id += 1;
            let channel = ["web", "web", "web", "phone", "marketplace"][r.below(5) as usize];
            let status = [
                "paid",
                "paid",
                "paid",
                "paid",
                "paid",
                "paid",
                "paid",
                "refunded",
                "cancelled",
            ][r.below(9) as usize];
            let cents = 1500 + r.below(18000) + if channel == "marketplace" { 5000 } else { 0 };
            out.push_str(&format!(
                "{id},{date}T{:02}:{:02}:00,{},{channel},{status},{}.{:02}\n",
                8 + r.below(12),
                r.below(60),
                1 + r.below(CUSTOMERS),
                cents / 100,
                cents % 100
            ));
        }
    }
    out
}
