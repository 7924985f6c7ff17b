"""Times tally (release) and DuckDB on the same files; prints medians and ratios.

1. `tally check` on a generated project of 1,000 metrics (goal: under 100 ms median).
2. 10 KPIs by month and channel over the generated data (SCALE=450: ~10 million enquiries),
   tally next to DuckDB running hand-written SQL with the same number of threads.
3. 1 metric against 20 metrics on the same source (goal: 20 cost at most 1.5 x 1).
4. A rolling 7-day and a month-to-date metric by day over ~10 million enquiries, next to the
   same metric without a window and next to DuckDB's hand-written window SQL (goal: within
   1.5 x the plain metric, no slower than DuckDB).

5. Reports: `tally run` on the bundled example; the size of `index.html` for 50 metrics over
   104 weeks with 5 breakdown values (goal: under 2 MB); `tally diff` on the bundled example.

6. Cumulative metrics over data with one row of year 1 among two recent years: by day for
   90 and 730 days, next to the same data without that row (goal: the same cost) and DuckDB.

`ONLY=windows bench/run.sh` runs one part (check, kpis, filters, windows, report, history).
"""

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
TALLY = ROOT / "target/release/tally"
GENERATE = ROOT / "target/release/examples/generate"
TIMEIT = ROOT / "target/release/examples/timeit"
OUT = ROOT / os.environ.get("OUT", "bench/out")
SCALE = os.environ.get("SCALE", "450")
THREADS = int(os.environ.get("THREADS", os.cpu_count() or 1))


def median_time(cmd, runs, **kw):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def median_times(cmds, runs):
    """Medians of commands run in turns, so that a slower minute of the machine weighs on
    each of them alike."""
    times = [[] for _ in cmds]
    for _ in range(runs):
        for cmd, ts in zip(cmds, times):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def median_call(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def thousand_metrics():
    project = OUT / "thousand"
    shutil.rmtree(project, ignore_errors=True)
    (project / "metrics").mkdir(parents=True)
    data = ROOT / "examples/services/data"
    (project / "tally.yaml").write_text(f"data: {data}\n")
    shutil.copy(ROOT / "metrics/operations.tally", project / "metrics/operations.tally")
    statuses = ["completed", "cancelled", "in_progress"]
    channels = ["web_form", "phone", "referral", "organic_search", "paid_ads"]
    n = 0
    for f in range(10):
        lines = []
        for i in range(100):
            k = f * 100 + i
            if k % 4 == 0:
                expr = f'count(enquiries where channel = "{channels[k % 5]}" and customer_id > {k})'
            elif k % 4 == 1:
                expr = f'sum(jobs.amount where status = "{statuses[k % 3]}" and cost > {k % 50})'
            elif k % 4 == 2:
                expr = f"avg(days_between(enquiries.created_at, jobs.started_at) where amount > {k})"
            else:
                expr = f"(m{k - 3} + m{k - 2}) / m{k - 1}"
            lines.append(f'metric m{k} "Metric {k}" = {expr} {{ format: number owner: "team{k % 7}" }}')
            n += 1
        (project / "metrics" / f"generated_{f}.tally").write_text("\n".join(lines) + "\n")
    subprocess.run([TALLY, "check", "--project", project], check=True, stderr=subprocess.DEVNULL)
    t = median_time([TALLY, "check", "--project", project], 21, stderr=subprocess.DEVNULL)
    print(f"check, {n} metrics (+ the example's 15): median {t * 1000:.1f} ms (goal < 100 ms)")


def example_copy(name, definitions=None):
    """The bundled example's definitions (or `definitions`) over its data, reports in OUT."""
    project = OUT / name
    shutil.rmtree(project, ignore_errors=True)
    (project / "metrics").mkdir(parents=True)
    for f in (ROOT / "metrics").iterdir():
        shutil.copy(f, project / "metrics" / f.name)
    for name, text in (definitions or {}).items():
        (project / "metrics" / name).write_text(text)
    (project / "tally.yaml").write_text(
        f"data: {ROOT / 'examples/services/data'}\nweek_start: monday\nthreads: {THREADS}\n")
    return project


def reports():
    as_of = ["--as-of", "2025-12-31"]
    project = example_copy("report-example")

    def run():
        shutil.rmtree(project / "reports", ignore_errors=True)
        subprocess.run([TALLY, "run", *as_of, "--project", project], check=True, stdout=subprocess.DEVNULL)

    t = median_call(run, 5)
    page = next((project / "reports").glob("2025-*/index.html"))
    print(f"run, the bundled example ({len(list((project / 'metrics').glob('*')))} definition files): "
          f"median {t:.3f} s, index.html {page.stat().st_size / 1e3:.0f} kB")

    # 50 metrics by week over 104 weeks and by channel (5 channels and no channel).
    channels = ["web_form", "phone", "referral", "organic_search", "paid_ads"]
    lines, names = [], []
    for k in range(50):
        if k % 3 == 0:
            expr = f'count(enquiries where channel != "{channels[k % 5]}" and customer_id > {k})'
        elif k % 3 == 1:
            expr = f'sum(jobs.amount where amount > {k * 10})'
        else:
            expr = f"avg(days_between(enquiries.created_at, jobs.started_at) where amount > {k})"
        fmt = ["number", "currency(USD)", "duration"][k % 3]
        lines.append(f'metric big{k} "Generated metric {k}" = {expr} {{ format: {fmt} }}')
        names.append(f"big{k}")
    lines.append('report big "Fifty metrics" {\n  grain: week\n  range: last 104 weeks\n'
                 f'  metrics: [{", ".join(names)}]\n  by: channel\n}}')
    big = example_copy("report-big", {"big.tally": "\n".join(lines) + "\n"})
    t = time.perf_counter()
    subprocess.run([TALLY, "run", *as_of, "--project", big], check=True, stdout=subprocess.DEVNULL)
    t = time.perf_counter() - t
    folder = next((big / "reports").glob("2025-*/"))
    sizes = {f.name: f.stat().st_size for f in folder.iterdir()}
    print(f"run, 50 more metrics x 104 weeks x channel: {t:.2f} s; index.html {sizes['index.html'] / 1e6:.2f} MB "
          f"(goal < 2 MB), results.json {sizes['results.json'] / 1e6:.2f} MB, "
          f"results.parquet {sizes['results.parquet'] / 1e6:.2f} MB")

    # A change of one KPI that moves several others.
    ops = (ROOT / "metrics/operations.tally").read_text()
    changed = ops.replace('count(enquiries) {', 'count(enquiries where channel != "phone") {', 1)
    assert changed != ops
    head = example_copy("diff-head", {"operations.tally": changed})
    t = median_time([TALLY, "diff", project, head, *as_of, "--project", head], 5)
    t_dim = median_time([TALLY, "diff", project, head, *as_of, "--dim", "channel", "--project", head], 5)
    print(f"diff, one KPI changed (5 metrics move): median {t:.3f} s by month, {t_dim:.3f} s by month and channel")


def big_project():
    data = OUT / f"data-{SCALE}"
    if not (data / "jobs.parquet").exists():
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run([GENERATE, "--out", data, "--scale", SCALE, "--parquet"], check=True)
    project = OUT / f"project-{SCALE}"
    shutil.rmtree(project, ignore_errors=True)
    (project / "metrics").mkdir(parents=True)
    (project / "tally.yaml").write_text(f"data: {data}\nthreads: {THREADS}\nmemory_limit: 8GB\n")
    for f in (ROOT / "metrics").iterdir():
        text = f.read_text().replace(".csv", ".parquet")
        (project / "metrics" / f.name).write_text(text)
    rows = duckdb.sql(f"SELECT count(*) FROM '{data}/enquiries.parquet'").fetchall()[0][0]
    jobs = duckdb.sql(f"SELECT count(*) FROM '{data}/jobs.parquet'").fetchall()[0][0]
    print(f"data: {rows:,} enquiries, {jobs:,} jobs (scale {SCALE}), {THREADS} threads")
    return data, project


KPIS = ["enquiries", "won_jobs", "conversion", "revenue", "job_cost", "gross_margin",
        "revenue_per_job", "organic_share", "marketing_spend", "cost_per_acquisition"]


def duckdb_kpis(con, data):
    return con.sql(f"""
        WITH e AS (
            SELECT date_trunc('month', e.created_at) AS p, c.channel AS d,
                   count(*) AS enquiries,
                   count(*) FILTER (WHERE e.channel IN ('organic_search', 'referral')) AS organic
            FROM '{data}/enquiries.parquet' e LEFT JOIN '{data}/channels.parquet' c ON e.channel = c.channel
            GROUP BY ALL),
        j AS (
            SELECT date_trunc('month', j.completed_at) AS p, c.channel AS d,
                   count(*) FILTER (WHERE j.status = 'completed') AS won,
                   sum(j.amount) FILTER (WHERE j.status = 'completed') AS revenue,
                   sum(j.cost) FILTER (WHERE j.status = 'completed') AS cost
            FROM '{data}/jobs.parquet' j
            LEFT JOIN '{data}/enquiries.parquet' e ON j.enquiry_id = e.enquiry_id
            LEFT JOIN '{data}/channels.parquet' c ON e.channel = c.channel
            GROUP BY ALL),
        s AS (
            SELECT date_trunc('month', s.date) AS p, c.channel AS d, sum(s.spend) AS spend
            FROM '{data}/marketing_spend.parquet' s LEFT JOIN '{data}/channels.parquet' c ON s.channel = c.channel
            GROUP BY ALL)
        SELECT p, d, coalesce(enquiries, 0), coalesce(won, 0), won / nullif(enquiries, 0),
               coalesce(revenue, 0), coalesce(cost, 0), (revenue - cost) / nullif(revenue, 0),
               revenue / nullif(won, 0), organic / nullif(enquiries, 0), coalesce(spend, 0),
               spend / nullif(won, 0)
        FROM e FULL JOIN j USING (p, d) FULL JOIN s USING (p, d)
        ORDER BY p, d""").fetchall()


def kpis(data, project):
    cmd = [TALLY, "query", *KPIS, "--by", "month", "--dim", "channel", "--format", "csv", "--project", project]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t_tally = median_time(cmd, 5)
    con = duckdb.connect()
    con.sql(f"SET threads = {THREADS}")
    duckdb_kpis(con, data)
    t_duck = median_call(lambda: duckdb_kpis(con, data), 5)
    print(f"10 KPIs by month and channel: tally {t_tally:.3f} s, DuckDB {t_duck:.3f} s, "
          f"tally/DuckDB = {t_tally / t_duck:.2f} (goal <= 1)")


def one_against_twenty(data, project):
    """Twenty metrics over one source share one scan; what they add is their filters.
    Each set is timed in tally and, as hand-written SQL, in DuckDB."""
    channels = ["web_form", "phone", "referral", "organic_search", "paid_ads"]
    services = ["plumbing", "electrical", "heating", "renovation", "roofing"]
    regions = ["north", "south", "east", "west"]

    def categorical(i):
        c, c2, sv, r = channels[i % 5], channels[(i + 1) % 5], services[i % 5], regions[i % 4]
        return [
            (f'channel = "{c}"', f"channel = '{c}'"),
            (f'service = "{sv}" and region != "{r}"', f"service = '{sv}' AND region <> '{r}'"),
            (f'channel in ("{c}", "{c2}") or region = "{r}"', f"channel IN ('{c}', '{c2}') OR region = '{r}'"),
        ][i % 3]

    def ranges(i):
        return [
            (f"customer_id > {i * 100}", f"customer_id > {i * 100}"),
            (f'channel = "phone" and customer_id > {i}', f"channel = 'phone' AND customer_id > {i}"),
            (f'service = "plumbing" or region = "north" and customer_id < {1000000 - i}',
             f"service = 'plumbing' OR region = 'north' AND customer_id < {1000000 - i}"),
            (f"created_at >= 2024-0{1 + i % 9}-01", f"created_at >= TIMESTAMP '2024-0{1 + i % 9}-01'"),
        ][i % 4]

    con = duckdb.connect()
    con.sql(f"SET threads = {THREADS}")

    def duck(filters):
        aggs = ", ".join(f"count(*) FILTER (WHERE {f}) AS m{i}" for i, f in enumerate(filters))
        sql = f"SELECT date_trunc('month', created_at) AS p, {aggs} FROM '{data}/enquiries.parquet' GROUP BY 1"
        con.sql(sql).fetchall()
        return median_call(lambda: con.sql(sql).fetchall(), 5)

    def same_categorical(i):
        c, c2 = channels[i % 5], channels[(i + 1) % 5]
        return [
            (f'channel = "{c}"', f"channel = '{c}'"),
            (f'channel != "{c}"', f"channel <> '{c}'"),
            (f'channel in ("{c}", "{c2}")', f"channel IN ('{c}', '{c2}')"),
            (f'channel not in ("{c}")', f"channel NOT IN ('{c}')"),
        ][i % 4]

    def same_ranges(i):
        return [
            (f"customer_id > {i * 1000}", f"customer_id > {i * 1000}"),
            (f"customer_id between {i * 500} and {i * 500 + 200000}",
             f"customer_id BETWEEN {i * 500} AND {i * 500 + 200000}"),
            (f"customer_id < {1000000 - i * 100}", f"customer_id < {1000000 - i * 100}"),
            (f"customer_id >= {i}000 and customer_id < {i}999", f"customer_id >= {i}000 AND customer_id < {i}999"),
        ][i % 4]

    # More metrics over the columns the one metric reads (what sharing one scan is about),
    # then KPI packs over more columns: categories (channel, service, region), and the worst
    # case, range filters on a high-cardinality column and on time, where every metric
    # reads more columns than the one metric does. Each by month, then by month and a
    # breakdown of the source (service) and of a lookup joined to it (channel).
    # The mixed sets read more columns than their one metric; next to them, one metric that
    # reads every column of the twenty (its filter is always true on this data) shows what
    # reading those columns costs by itself.
    every_column = {
        "categorical filters": 'channel != "x" and service != "x" and region != "x"',
        "range filters": 'customer_id > -1 and channel != "x" and service != "x" and region != "x" '
                         'and created_at >= 2000-01-01',
    }
    sets = [("same column, categorical", same_categorical), ("same column, range", same_ranges),
            ("categorical filters", categorical), ("range filters", ranges)]
    for name, make in sets:
        pairs = [make(i) for i in range(20)]
        lines = [f"metric bench_{i} = count(enquiries where {dsl})" for i, (dsl, _) in enumerate(pairs)]
        if name in every_column:
            lines.append(f"metric bench_columns = count(enquiries where {every_column[name]})")
        (project / "metrics" / "bench.tally").write_text("\n".join(lines) + "\n")
        one = [TALLY, "query", "bench_0", "--by", "month", "--project", project]
        twenty = [TALLY, "query", *[f"bench_{i}" for i in range(20)], "--by", "month", "--project", project]
        subprocess.run(twenty, check=True, stdout=subprocess.DEVNULL)
        columns = [TALLY, "query", "bench_columns", "--by", "month", "--project", project]
        cmds = [one, twenty] + ([columns] if name in every_column else [])
        t1, t20, *tc = median_times(cmds, 11)
        d1 = duck([pairs[0][1]])
        d20 = duck([sql for _, sql in pairs])
        print(f"{name}: tally 1 metric {t1:.3f} s, 20 metrics {t20:.3f} s, ratio {t20 / t1:.2f} (goal <= 1.5); "
              f"DuckDB {d1:.3f} s, {d20:.3f} s, ratio {d20 / d1:.2f}")
        if tc:
            print(f"  1 metric over the columns the 20 read: {tc[0]:.3f} s; 20 metrics / it = {t20 / tc[0]:.2f}")
        for dim in ["service", "channel"]:
            t1, t20 = median_times([[*one, "--dim", dim], [*twenty, "--dim", dim]], 7)
            print(f"  by month and {dim}: tally 1 metric {t1:.3f} s, 20 metrics {t20:.3f} s, ratio {t20 / t1:.2f}")


def windows(data, project):
    """Windows over a spine of every day: tally's plans against DuckDB's window functions."""
    (project / "metrics" / "bench.tally").write_text(
        "metric bench_7d = rolling(enquiries, 7 days)\n"
        "metric bench_mtd = to_date(enquiries, month)\n"
        "metric bench_customers_7d = rolling(count_distinct(enquiries.customer_id), 7 days)\n"
    )
    con = duckdb.connect()
    con.sql(f"SET threads = {THREADS}")
    daily = f"""
        daily AS (SELECT CAST(created_at AS DATE) AS d, count(*) AS v FROM '{data}/enquiries.parquet' GROUP BY 1),
        spine AS (SELECT CAST(range AS DATE) AS d FROM range(
            (SELECT min(d) FROM daily), (SELECT max(d) FROM daily) + INTERVAL 1 DAY, INTERVAL 1 DAY))"""
    sqls = {
        "plain": f"WITH {daily} SELECT s.d, coalesce(v, 0) FROM spine s LEFT JOIN daily USING (d) ORDER BY 1",
        "bench_7d": f"""WITH {daily} SELECT s.d, sum(coalesce(v, 0)) OVER (ORDER BY s.d ROWS BETWEEN 6 PRECEDING
                        AND CURRENT ROW) FROM spine s LEFT JOIN daily USING (d) ORDER BY 1""",
        "bench_mtd": f"""WITH {daily} SELECT s.d, sum(coalesce(v, 0)) OVER (PARTITION BY date_trunc('month', s.d)
                         ORDER BY s.d ROWS UNBOUNDED PRECEDING) FROM spine s LEFT JOIN daily USING (d) ORDER BY 1""",
        "bench_customers_7d": f"""WITH e AS (SELECT DISTINCT CAST(created_at AS DATE) AS d, customer_id
                                  FROM '{data}/enquiries.parquet')
                                  SELECT e.d + CAST(i AS INTEGER) AS day, count(DISTINCT customer_id) FROM e, range(7) t(i)
                                  WHERE e.d + CAST(i AS INTEGER) <= (SELECT max(d) FROM e) GROUP BY 1 ORDER BY 1""",
    }
    results = {}
    for metric in ["enquiries", "bench_7d", "bench_mtd", "bench_customers_7d"]:
        cmd = [TALLY, "query", metric, "--by", "day", "--format", "csv", "--project", project]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        # In one process, like DuckDB's timings: the project loaded once, the query run 5 times.
        # Medians of 21 in one process: single runs of 0.1 s vary by 10-20% on this machine.
        runs = 5 if metric == "bench_customers_7d" else 21
        inproc = subprocess.run([TIMEIT, project, "--by", "day", "--runs", str(runs), metric],
                                check=True, capture_output=True, text=True)
        sql = sqls["plain" if metric == "enquiries" else metric]
        con.sql(sql).fetchall()
        results[metric] = (median_time(cmd, 5), float(inproc.stdout), median_call(lambda: con.sql(sql).fetchall(), runs))
    plain = results["enquiries"][0]
    for metric, (t, t_in, d) in results.items():
        print(f"{metric} by day: tally {t:.3f} s ({t / plain:.2f} x the plain metric; in one process {t_in:.3f} s), "
              f"DuckDB {d:.3f} s, tally/DuckDB = {t / d:.2f} (in one process {t_in / d:.2f})")


def history():
    """One old row must not make cumulative windows pay for the empty years before the data."""
    import datetime
    import random
    rng = random.Random(7)
    start = datetime.date(2024, 1, 1)
    rows = [f"{i},{start + datetime.timedelta(days=rng.randrange(731))},c{rng.randrange(5000)}"
            for i in range(1, 200_001)]
    con = duckdb.connect()
    con.sql(f"SET threads = {THREADS}")
    for old in [False, True]:
        project = OUT / ("history-old" if old else "history")
        shutil.rmtree(project, ignore_errors=True)
        (project / "metrics").mkdir(parents=True)
        lines = ["id,at,customer"] + (["0,0001-01-01,c0"] if old else []) + rows
        (project / "events.csv").write_text("\n".join(lines) + "\n")
        (project / "tally.yaml").write_text(f"threads: {THREADS}\n")
        (project / "metrics" / "m.tally").write_text(
            'source events { file: "events.csv" time: at key: id }\n'
            "metric n = count(events)\nmetric cn = cumulative(n)\n"
            "metric cd = cumulative(count_distinct(events.customer))\n")
        for days in [90, 730]:
            to = datetime.date(2025, 12, 31)
            frm = to - datetime.timedelta(days=days - 1)
            cmd = [TALLY, "query", "cn", "cd", "--by", "day", "--from", str(frm), "--to", str(to),
                   "--format", "csv", "--project", project]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            sql = f"""WITH e AS (SELECT CAST("at" AS DATE) AS d, customer FROM '{project}/events.csv'),
                      firsts AS (SELECT min(d) AS d FROM e GROUP BY customer),
                      spine AS (SELECT CAST(range AS DATE) AS d FROM range(DATE '{frm}', DATE '{to}' + 1, INTERVAL 1 DAY))
                      SELECT s.d, (SELECT count(*) FROM e WHERE e.d <= s.d), (SELECT count(*) FROM firsts f WHERE f.d <= s.d)
                      FROM spine s ORDER BY 1"""
            t = median_time(cmd, 5)
            d = median_call(lambda: con.sql(sql).fetchall(), 5)
            what = "with a row of year 1" if old else "recent rows only"
            print(f"cumulative count and distinct count by day, {days} days, {what}: tally {t:.3f} s, DuckDB {d:.3f} s")


def main():
    if not TALLY.exists():
        sys.exit("build first: cargo build --release")
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, os.environ.get("ONLY", "").split(",")))
    want = lambda part: not only or part in only
    if want("check"):
        thousand_metrics()
    if want("report"):
        reports()
    if want("history"):
        history()
    if only and not only & {"kpis", "filters", "windows"}:
        return
    data, project = big_project()
    if want("kpis"):
        kpis(data, project)
    if want("filters"):
        one_against_twenty(data, project)
    if want("windows"):
        windows(data, project)


if __name__ == "__main__":
    main()
