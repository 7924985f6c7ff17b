//! The command line: arguments in; text, exit code out. The only place that decides what
//! reaches the terminal.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use tally::diagnostic::{self, Diagnostic, ExitStatus, Severity};
use tally::model::{self, Model};
use tally::plan::{self, Query};
use tally::project::{self, Project};
use tally::settings::SettingsFile;
use tally::span::Files;
use tally::time::Grain;
use tally::{data, output, run, syntax, yaml};

/// tally: metrics as code. Definitions in, checked and computed numbers out.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The project folder (holds tally.yaml and the definitions).
    #[arg(long, global = true, default_value = ".")]
    pub project: PathBuf,
    /// Where definitions live (overrides tally.yaml).
    #[arg(long, global = true)]
    pub definitions: Option<String>,
    /// Data root that relative source paths resolve against (overrides tally.yaml).
    #[arg(long, global = true)]
    pub data: Option<String>,
    /// Where report versions are written (overrides tally.yaml).
    #[arg(long, global = true)]
    pub reports: Option<String>,
    /// A folder outside the data root that sources may read (repeat; adds to tally.yaml's).
    #[arg(long = "allow-path", global = true)]
    pub allow_paths: Vec<String>,
    /// Where checks of unchanged data are remembered, or `off` (overrides tally.yaml).
    #[arg(long, global = true)]
    pub cache: Option<String>,
    /// Where alerts post their changes of state (overrides tally.yaml).
    #[arg(long, global = true)]
    pub webhook: Option<String>,
    /// How long alerts spend delivering notifications, e.g. 30s (overrides tally.yaml).
    #[arg(long, global = true)]
    pub webhook_deadline: Option<String>,
    /// DataFusion memory pool, e.g. 2GB (overrides tally.yaml).
    #[arg(long, global = true)]
    pub memory_limit: Option<String>,
    /// Time zone periods are cut in (overrides tally.yaml).
    #[arg(long, global = true)]
    pub time_zone: Option<String>,
    /// First day of the week (overrides tally.yaml).
    #[arg(long, global = true)]
    pub week_start: Option<String>,
    /// First month of the fiscal year (overrides tally.yaml).
    #[arg(long, global = true)]
    pub fiscal_year_start: Option<String>,
    /// Threads for queries (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Colour in messages.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub color: Color,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse and validate every definition against the sources' schemas, scanning no data.
    Check {
        /// A project folder (default: --project).
        path: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        format: CheckFormat,
    },
    /// Compute metrics per period and breakdown.
    Query {
        #[command(flatten)]
        args: QueryArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: QueryFormat,
    },
    /// Show the plans that compute a metric, and portable SQL for them.
    Explain {
        metric: String,
        #[arg(long)]
        by: Option<String>,
        #[arg(long = "dim")]
        dims: Vec<String>,
    },
    /// Compute every report, target and alert as of a day and write a new report version
    /// to `reports/<version>/` (the same inputs give the same version, written once).
    Run {
        /// The day (default: today in the project's time zone); no later row is read.
        #[arg(long = "as-of")]
        as_of: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: ListFormat,
    },
    /// Build the report bundle only (page, results, alerts) into a folder, replacing the
    /// bundle there: not a version, and no manifest.
    Report {
        /// Reports to include (default: all).
        names: Vec<String>,
        /// The day (default: today in the project's time zone); no later row is read.
        #[arg(long = "as-of")]
        as_of: Option<String>,
        /// The folder written (default: `latest` in the reports folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the tests of definitions (`*.test.yaml` under the definitions folder) on their
    /// fixture rows; exit code 1 when one fails. Needs no data file.
    Test {
        #[arg(long, value_enum, default_value = "human")]
        format: TestFormat,
    },
    /// Evaluate every alert at the period of a day; exit code 1 when one at or above
    /// --fail-on fires. What changed since the last run is kept in `.tally/alert-state.json`.
    Alerts {
        /// The day (default: today in the project's time zone); no later row is read.
        #[arg(long = "as-of")]
        as_of: Option<String>,
        /// The lowest severity that makes the exit code 1.
        #[arg(long = "fail-on", value_enum, default_value = "warning")]
        fail_on: FailOn,
        #[arg(long, value_enum, default_value = "human")]
        format: AlertFormat,
        /// Neither read nor write the state file.
        #[arg(long = "no-state")]
        no_state: bool,
        /// Replay every alert over history (--from, --to): how often it would have fired,
        /// for how long, and how often it flapped. Reads and writes no state.
        #[arg(long, requires_all = ["from", "to"])]
        backtest: bool,
        /// First day of a backtest.
        #[arg(long)]
        from: Option<String>,
        /// Last day of a backtest.
        #[arg(long)]
        to: Option<String>,
    },
    /// Evaluate every target as of a day: the period's value and status, a deadline's pace.
    Targets {
        /// The day (default: today in the project's time zone); no later row is read.
        #[arg(long = "as-of")]
        as_of: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: ListFormat,
    },
    /// List sources (with columns), dimensions, metrics, targets and alerts.
    List {
        #[arg(long, value_enum, default_value = "human")]
        format: ListFormat,
    },
    /// Print the JSON Schema of the YAML definition form.
    Schema,
    /// Make a new project with an example (settings, definitions, tests and a little data)
    /// that every command runs on. Nothing existing is overwritten.
    Init {
        /// The folder (default: --project); made if it does not exist.
        dir: Option<PathBuf>,
    },
    /// What a change of definitions does: the definitions added, removed or changed, and
    /// every number that may move, under both versions on the same data (HEAD's).
    Diff {
        #[command(flatten)]
        args: DiffArgs,
    },
    /// Rewrite `.tally` files in canonical form (indentation, spaces, blank lines); comments
    /// and line breaks are kept and the meaning never changes.
    Fmt {
        /// Change nothing; list the files that are not formatted and exit with 1.
        #[arg(long)]
        check: bool,
        /// Files to format (default: every `.tally` file of the project).
        files: Vec<PathBuf>,
    },
}

/// What `query` computes.
#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Metric names.
    #[arg(required = true)]
    metrics: Vec<String>,
    /// Period length: day, week, month, quarter or year (default: one total).
    #[arg(long)]
    by: Option<String>,
    /// Break down by a dimension (repeat, or separate with commas).
    #[arg(long = "dim")]
    dims: Vec<String>,
    /// First day included (YYYY-MM-DD, or YYYY-MM for a month's first day).
    #[arg(long)]
    from: Option<String>,
    /// Last day included (YYYY-MM-DD, or YYYY-MM for a month's last day); no later row is read.
    #[arg(long)]
    to: Option<String>,
    /// A range relative to --as-of: "last 12 weeks", "this quarter", "year to date", ...
    #[arg(long, conflicts_with_all = ["from", "to"])]
    range: Option<String>,
    /// The day the query is run as of (default: today in the project's time zone); no later
    /// row is read.
    #[arg(long = "as-of")]
    as_of: Option<String>,
    /// Each metric next to its value in the previous period or the same period a year before,
    /// with the change and the relative change.
    #[arg(long, value_enum)]
    compare: Option<CompareArg>,
    /// A filter in the expression language, e.g. 'channel = "phone"'.
    #[arg(long = "where")]
    filter: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffFormat {
    Markdown,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFormat {
    Human,
    Json,
    Junit,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    Warning,
    Critical,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertFormat {
    Human,
    Json,
    Junit,
    Markdown,
    Github,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareArg {
    Previous,
    Year,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckFormat {
    Human,
    Json,
    Github,
    Sarif,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryFormat {
    Table,
    Csv,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    Human,
    Json,
}

/// What a command produced.
#[derive(Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: ExitStatus,
}

struct Loaded {
    project: Project,
    model: Model,
    ctx: datafusion::prelude::SessionContext,
}

impl Outcome {
    fn diagnostics(files: &Files, diags: &[Diagnostic], color: bool) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr: diagnostic::render_human(files, diags, color),
            code: diagnostic::exit_code(diags),
        }
    }
}

pub async fn run(cli: Cli) -> Outcome {
    let color = match cli.global.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none(),
    };
    match cli.command {
        Command::Schema => Outcome {
            stdout: serde_json::to_string_pretty(&yaml::json_schema()).unwrap_or_default() + "\n",
            ..Outcome::default()
        },
        Command::Check { path, format } => {
            let mut global = cli.global;
            if let Some(p) = path {
                global.project = p;
            }
            check(&global, format, color).await
        }
        Command::Query { args, format } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            query(loaded, &args, format, color).await
        }
        Command::Explain { metric, by, dims } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            explain(loaded, &metric, by.as_deref(), &dims, color).await
        }
        Command::Test { format } => test(&cli.global, format, color).await,
        Command::Fmt { check, files } => fmt(&cli.global, check, &files, color),
        Command::Init { dir } => init(&dir.unwrap_or(cli.global.project), color),
        Command::Diff { args } => diff(&cli.global, args, color).await,
        Command::Run { as_of, format } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            let settings = &loaded.project.settings;
            let files = &loaded.project.files;
            let as_of = match date_arg(as_of.as_deref(), false, "--as-of") {
                Ok(d) => d.unwrap_or_else(|| today(&settings.calendar())),
                Err(d) => return Outcome::diagnostics(files, &[d], color),
            };
            let bar = progress_bar();
            let progress = |p: tally::report::Progress| show_progress(&bar, p);
            let result = tally::report::run(&loaded.ctx, &loaded.model, files, settings, as_of, &progress).await;
            bar.finish_and_clear();
            match result {
                Ok(w) if format == ListFormat::Json => Outcome {
                    stdout: serde_json::to_string_pretty(&serde_json::json!({
                        "version": w.version,
                        "folder": settings.display(&w.folder),
                        "new": w.new,
                    }))
                    .unwrap_or_default()
                        + "\n",
                    ..Outcome::default()
                },
                Ok(w) => Outcome {
                    stdout: format!(
                        "{} {}/\n",
                        if w.new { "wrote" } else { "unchanged:" },
                        settings.display(&w.folder)
                    ),
                    ..Outcome::default()
                },
                Err(d) => Outcome::diagnostics(files, &[d], color),
            }
        }
        Command::Report { names, as_of, out } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            let settings = &loaded.project.settings;
            let files = &loaded.project.files;
            let model = &loaded.model;
            let args = (|| -> Result<_, Diagnostic> {
                let as_of =
                    date_arg(as_of.as_deref(), false, "--as-of")?.unwrap_or_else(|| today(&settings.calendar()));
                let mut shown = Vec::new();
                for n in names.iter().flat_map(|n| n.split(',')).filter(|n| !n.is_empty()) {
                    let i = model.reports.iter().position(|r| r.name == n).ok_or_else(|| {
                        usage(format!("unknown report `{n}`")).suggest(n, model.reports.iter().map(|r| r.name.as_str()))
                    })?;
                    shown.push(i);
                }
                if shown.is_empty() {
                    shown = (0..model.reports.len()).collect();
                }
                if shown.is_empty() {
                    return Err(
                        usage("the project defines no report").note("a `report NAME { ... }` definition makes one")
                    );
                }
                Ok((as_of, shown))
            })();
            let (as_of, shown) = match args {
                Ok(a) => a,
                Err(d) => return Outcome::diagnostics(files, &[d], color),
            };
            let out = out.unwrap_or_else(|| settings.reports.join("latest"));
            let bar = progress_bar();
            let progress = |p: tally::report::Progress| show_progress(&bar, p);
            let result =
                tally::report::bundle(&loaded.ctx, model, files, settings, as_of, &shown, &out, &progress).await;
            bar.finish_and_clear();
            match result {
                Ok(()) => Outcome {
                    stdout: format!("wrote {}/\n", settings.display(&out)),
                    ..Outcome::default()
                },
                Err(d) => Outcome::diagnostics(files, &[d], color),
            }
        }
        Command::Alerts {
            format,
            backtest: true,
            from,
            to,
            ..
        } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            backtest(&loaded, from.as_deref(), to.as_deref(), format, color).await
        }
        Command::Alerts {
            as_of,
            fail_on,
            format,
            no_state,
            ..
        } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            alerts(&loaded, as_of.as_deref(), fail_on, format, no_state, color).await
        }
        Command::Targets { as_of, format } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            targets(&loaded, as_of.as_deref(), format, color).await
        }
        Command::List { format } => {
            let loaded = match load(&cli.global, color).await {
                Ok(l) => l,
                Err(o) => return o,
            };
            list(&loaded, format)
        }
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal, cleared when done.
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn show_progress(bar: &indicatif::ProgressBar, p: tally::report::Progress) {
    bar.set_length(p.steps as u64);
    bar.set_position(p.step as u64);
    bar.set_message(p.what);
}

fn overrides(g: &Global) -> SettingsFile {
    SettingsFile {
        definitions: g.definitions.clone(),
        data: g.data.clone(),
        reports: g.reports.clone(),
        allow_paths: g.allow_paths.clone(),
        cache: g.cache.clone(),
        webhook: g.webhook.clone(),
        webhook_deadline: g.webhook_deadline.clone(),
        memory_limit: g.memory_limit.clone(),
        time_zone: g.time_zone.clone(),
        week_start: g.week_start.clone(),
        fiscal_year_start: g.fiscal_year_start.clone(),
        threads: g.threads,
    }
}

/// Loads and resolves the project; all of its problems, or the model.
async fn resolve(g: &Global) -> (Files, Option<Loaded>, Vec<Diagnostic>) {
    let (project, mut diags) = match project::load(&g.project, &overrides(g)) {
        Ok(p) => p,
        Err((files, d)) => return (files, None, d),
    };
    let ctx = match data::session(&project.settings) {
        Ok(c) => c,
        Err(d) => return (project.files, None, vec![d]),
    };
    let (model, more) = model::resolve(&ctx, &project.settings, &project.files, project.definitions.clone()).await;
    diags.extend(more);
    let failed = diags.iter().any(|d| d.severity == Severity::Error);
    match model {
        Some(model) if !failed => {
            let files = project.files.clone();
            (files, Some(Loaded { project, model, ctx }), diags)
        }
        _ => (project.files, None, diags),
    }
}

async fn load(g: &Global, color: bool) -> Result<Loaded, Outcome> {
    let (files, loaded, diags) = resolve(g).await;
    match loaded {
        Some(l) => Ok(l),
        None => {
            let errors: Vec<Diagnostic> = diags.into_iter().filter(|d| d.severity == Severity::Error).collect();
            Err(Outcome::diagnostics(&files, &errors, color))
        }
    }
}

async fn check(g: &Global, format: CheckFormat, color: bool) -> Outcome {
    let (files, loaded, diags) = resolve(g).await;
    let code = diagnostic::exit_code(&diags);
    match format {
        CheckFormat::Human => {
            let mut stderr = diagnostic::render_human(&files, &diags, color);
            let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
            let warnings = diags.len() - errors;
            let summary = match &loaded {
                Some(l) => format!(
                    "{} sources, {} dimensions, {} metrics",
                    l.model.sources.len(),
                    l.model.dimensions.len(),
                    l.model.metrics.len()
                ),
                None => String::new(),
            };
            if errors == 0 {
                stderr.push_str(&format!("ok: {summary}{}\n", plural_warnings(warnings)));
            } else {
                stderr.push_str(&format!(
                    "{errors} error{}{}\n",
                    if errors == 1 { "" } else { "s" },
                    plural_warnings(warnings)
                ));
            }
            Outcome {
                stdout: String::new(),
                stderr,
                code,
            }
        }
        CheckFormat::Json => Outcome {
            stdout: serde_json::to_string_pretty(&diagnostic::render_json(&files, &diags)).unwrap_or_default() + "\n",
            stderr: String::new(),
            code,
        },
        CheckFormat::Github => Outcome {
            stdout: diagnostic::render_github(&files, &diags),
            stderr: String::new(),
            code,
        },
        CheckFormat::Sarif => Outcome {
            stdout: serde_json::to_string_pretty(&diagnostic::render_sarif(&files, &diags)).unwrap_or_default() + "\n",
            stderr: String::new(),
            code,
        },
    }
}

/// `tally init`: the example project's files, none of which may exist yet.
fn init(dir: &std::path::Path, color: bool) -> Outcome {
    let files = tally::init::files();
    let existing: Vec<&str> = files.iter().map(|f| f.0).filter(|f| dir.join(f).exists()).collect();
    if !existing.is_empty() {
        let d = usage(format!("{} already holds {}", dir.display(), existing.join(", ")))
            .note("tally init writes a new project and overwrites nothing; name an empty folder");
        return Outcome::diagnostics(&Files::default(), &[d], color);
    }
    for (path, text) in &files {
        let target = dir.join(path);
        let written = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&target, text));
        if let Err(e) = written {
            let d = Diagnostic::data("E0956", format!("cannot write {}: {e}", target.display()));
            return Outcome::diagnostics(&Files::default(), &[d], color);
        }
    }
    let shown = dir.display().to_string();
    let cd = if shown == "." {
        String::new()
    } else {
        format!("cd {shown} && ")
    };
    Outcome {
        stdout: format!(
            "made a tally project in {shown}: {}\nnext: {cd}tally check && tally query revenue --by week && tally run --as-of 2026-03-31\n",
            files.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
        ),
        ..Outcome::default()
    }
}

/// What `diff` compares.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// A git revision of the project (a branch, tag or commit), or a project folder.
    base: String,
    /// The same (default: the project as it is on disk).
    head: Option<String>,
    /// Period length of the compared numbers.
    #[arg(long, default_value = "month")]
    by: String,
    /// Also compare per value of a dimension (repeat, or separate with commas).
    #[arg(long = "dim")]
    dims: Vec<String>,
    /// First day compared (default: the start of the data).
    #[arg(long)]
    from: Option<String>,
    /// Numbers up to, and targets and alerts as of, this day (default: today in the
    /// project's time zone).
    #[arg(long = "as-of")]
    as_of: Option<String>,
    #[arg(long, value_enum, default_value = "markdown")]
    format: DiffFormat,
    /// Exit with 1 when any number moves more than this many percent.
    #[arg(long = "fail-over", value_name = "PCT", value_parser = percent)]
    fail_over: Option<f64>,
}

/// A version of the project for `diff`: a folder as it is, or a git revision's definitions
/// written to a temporary folder.
fn version_of(
    g: &Global,
    which: &str,
    data: Option<String>,
) -> Result<(Global, Option<tempfile::TempDir>), Diagnostic> {
    let mut out = g.clone();
    if data.is_some() {
        out.data = data;
    }
    let folder = std::path::Path::new(which);
    if folder.is_dir() {
        out.project = folder.to_path_buf();
        return Ok((out, None));
    }
    let dir =
        tempfile::tempdir().map_err(|e| Diagnostic::data("E0955", format!("cannot make a temporary folder: {e}")))?;
    tally::diff::checkout(&g.project, which, dir.path())?;
    out.project = dir.path().to_path_buf();
    Ok((out, Some(dir)))
}

async fn diff(g: &Global, args: DiffArgs, color: bool) -> Outcome {
    let fail = |d: Diagnostic| Outcome::diagnostics(&Files::default(), &[d], color);
    let grain = match grain(Some(&args.by)) {
        Ok(g) => g.unwrap_or(Grain::Month),
        Err(d) => return fail(d),
    };
    // Both versions read the same data: HEAD's folder's, or the project's on disk.
    let data_root = |g: &Global| -> Option<String> {
        let root = std::fs::canonicalize(&g.project).ok()?;
        let settings = tally::settings::load(&root, &overrides(g), &mut Files::default()).ok()?;
        Some(settings.data.display().to_string())
    };
    let head_data = match &args.head {
        Some(h) if std::path::Path::new(h).is_dir() => None,
        _ => data_root(g),
    };
    let (head_global, _head_dir) = match &args.head {
        Some(h) => match version_of(g, h, head_data.clone()) {
            Ok(v) => v,
            Err(d) => return fail(d),
        },
        None => (g.clone(), None),
    };
    let data = head_data.or_else(|| data_root(&head_global));
    let (base_global, _base_dir) = match version_of(g, &args.base, data) {
        Ok(v) => v,
        Err(d) => return fail(d),
    };
    let head = match load(&head_global, color).await {
        Ok(l) => l,
        Err(mut o) => {
            o.stderr = format!("the head version has errors:\n{}", o.stderr);
            return o;
        }
    };
    let base = match load(&base_global, color).await {
        Ok(l) => l,
        Err(mut o) => {
            o.stderr = format!("the base version `{}` has errors:\n{}", args.base, o.stderr);
            return o;
        }
    };
    let calendar = head.project.settings.calendar();
    let (from, as_of) = match (
        date_arg(args.from.as_deref(), false, "--from"),
        date_arg(args.as_of.as_deref(), false, "--as-of"),
    ) {
        (Ok(f), Ok(a)) => (f, a.unwrap_or_else(|| today(&calendar))),
        (Err(d), _) | (_, Err(d)) => return fail(d),
    };
    if let Err(d) = ordered(from, Some(as_of), "--as-of") {
        return fail(d);
    }
    let options = tally::diff::Options {
        grain,
        dimensions: args
            .dims
            .iter()
            .flat_map(|d| d.split(','))
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect(),
        from,
        as_of,
    };
    fn side(l: &Loaded, name: String) -> tally::diff::Side<'_> {
        tally::diff::Side {
            name,
            ctx: &l.ctx,
            model: &l.model,
            files: &l.project.files,
            settings: &l.project.settings,
        }
    }
    let head_name = args.head.clone().unwrap_or_else(|| "working tree".to_string());
    let result = tally::diff::diff(&side(&base, args.base.clone()), &side(&head, head_name), &options).await;
    let d = match result {
        Ok(d) => d,
        Err(d) => return Outcome::diagnostics(&head.project.files, &[d], color),
    };
    let stdout = match args.format {
        DiffFormat::Markdown => tally::diff::markdown(&d, args.fail_over),
        DiffFormat::Json => serde_json::to_string_pretty(&tally::diff::json(&d)).unwrap_or_default() + "\n",
    };
    let over = args.fail_over.map(|p| d.moved_over(p)).unwrap_or(0);
    Outcome {
        stdout,
        stderr: if over > 0 {
            format!(
                "{over} value{} move{} more than {}%\n",
                if over == 1 { "" } else { "s" },
                if over == 1 { "s" } else { "" },
                args.fail_over.unwrap_or_default()
            )
        } else {
            String::new()
        },
        code: ExitStatus::findings_if(over > 0),
    }
}

/// `tally fmt`: every `.tally` file of the project (or the files named), formatted in place,
/// or with `--check` listed when they are not formatted.
fn fmt(g: &Global, check: bool, paths: &[PathBuf], color: bool) -> Outcome {
    let mut files = Files::default();
    if paths.is_empty() {
        match project::load(&g.project, &overrides(g)) {
            Ok((p, _)) => {
                for (_, f) in p.files.iter() {
                    if f.path.extension().is_some_and(|e| e == "tally") {
                        files.add(f.name.clone(), f.path.clone(), f.text.clone());
                    }
                }
            }
            Err((f, d)) => return Outcome::diagnostics(&f, &d, color),
        }
    } else {
        for p in paths {
            match std::fs::read_to_string(p) {
                Ok(text) => {
                    files.add(p.display().to_string(), p.clone(), text);
                }
                Err(e) => {
                    let d = Diagnostic::usage("E0003", format!("cannot read `{}`: {e}", p.display()));
                    return Outcome::diagnostics(&files, &[d], color);
                }
            }
        }
    }
    let mut diags = Vec::new();
    let mut stderr = String::new();
    let mut unformatted = 0;
    let all: Vec<_> = files
        .iter()
        .map(|(id, f)| (id, f.name.clone(), f.path.clone(), f.text.clone()))
        .collect();
    for (id, name, path, text) in all {
        match tally::fmt::format_file(id, &text) {
            Ok(tally::fmt::Formatted::Unchanged) => {}
            Ok(tally::fmt::Formatted::Changed(out)) if check => {
                unformatted += 1;
                let line = text
                    .lines()
                    .zip(out.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(text.lines().count().min(out.lines().count()))
                    + 1;
                stderr.push_str(&format!("not formatted: {name} (from line {line})\n"));
            }
            Ok(tally::fmt::Formatted::Changed(out)) => match write_atomic(&path, out.as_bytes()) {
                Ok(()) => stderr.push_str(&format!("formatted {name}\n")),
                Err(e) => diags.push(Diagnostic::data("E0952", format!("cannot write `{name}`: {e}")).file(name)),
            },
            Err(d) => diags.extend(d),
        }
    }
    if !diags.is_empty() {
        let mut o = Outcome::diagnostics(&files, &diags, color);
        o.stderr = stderr + &o.stderr;
        return o;
    }
    if check && unformatted > 0 {
        stderr.push_str(&format!(
            "{unformatted} file{} not formatted; `tally fmt` rewrites {}\n",
            if unformatted == 1 { "" } else { "s" },
            if unformatted == 1 { "it" } else { "them" }
        ));
    }
    Outcome {
        stdout: String::new(),
        stderr,
        code: ExitStatus::findings_if(check && unformatted > 0),
    }
}

/// Replaces a file by writing a sibling and renaming it over the file.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.fmt-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

fn plural_warnings(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => ", 1 warning".into(),
        n => format!(", {n} warnings"),
    }
}

fn usage(msg: impl Into<String>) -> Diagnostic {
    Diagnostic::usage("E0901", msg)
}

/// Metric names from the command line, with "did you mean".
fn metric_ids(model: &Model, names: &[String]) -> Result<Vec<usize>, Diagnostic> {
    names
        .iter()
        .flat_map(|n| n.split(','))
        .filter(|n| !n.is_empty())
        .map(|n| {
            model.metric(n).ok_or_else(|| {
                usage(format!("unknown metric `{n}`")).suggest(n, model.metrics.iter().map(|m| m.name.as_str()))
            })
        })
        .collect()
}

fn dimension_ids(model: &Model, names: &[String]) -> Result<Vec<usize>, Diagnostic> {
    names
        .iter()
        .flat_map(|n| n.split(','))
        .filter(|n| !n.is_empty())
        .map(|n| {
            model.dimension(n).ok_or_else(|| {
                usage(format!("unknown dimension `{n}`")).suggest(n, model.dimensions.iter().map(|m| m.name.as_str()))
            })
        })
        .collect()
}

fn grain(by: Option<&str>) -> Result<Option<Grain>, Diagnostic> {
    by.map(|b| {
        Grain::parse(b).ok_or_else(|| {
            usage(format!("unknown grain `{b}`"))
                .suggest(b, Grain::ALL.iter().map(|g| g.name()))
                .note("grains: day, week, month, quarter, year")
        })
    })
    .transpose()
}

/// A percentage of at least 0.
fn percent(text: &str) -> Result<f64, String> {
    match text.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!("`{text}` is not a percentage of 0 or more")),
    }
}

/// A range's first day may not be after its last.
fn ordered(from: Option<chrono::NaiveDate>, to: Option<chrono::NaiveDate>, to_flag: &str) -> Result<(), Diagnostic> {
    match (from, to) {
        (Some(f), Some(t)) if f > t => Err(usage(format!("--from {f} is after {to_flag} {t}"))
            .note("the range runs from its first day to its last: swap the days, or move one")),
        _ => Ok(()),
    }
}

/// `2026-03-15`, or `2026-03` (its first day, or its last day when `end`).
fn date_arg(text: Option<&str>, end: bool, flag: &str) -> Result<Option<chrono::NaiveDate>, Diagnostic> {
    let Some(t) = text else { return Ok(None) };
    if let Some(d) = tally::time::parse_day(t, end) {
        return Ok(Some(d));
    }
    Err(usage(format!("{flag} `{t}` is not a date")).note("write YYYY-MM-DD, or YYYY-MM for a month"))
}

async fn query(mut l: Loaded, args: &QueryArgs, format: QueryFormat, color: bool) -> Outcome {
    let q = query_of(&mut l, args);
    let q = match q {
        Ok(q) => q,
        Err(d) => return Outcome::diagnostics(&l.project.files, &[d], color),
    };
    match run::query(&l.ctx, &l.model, &l.project.files, &l.project.settings, q).await {
        Ok(table) => {
            let stdout = match format {
                QueryFormat::Table => output::table(&table, &table.formats),
                QueryFormat::Csv => output::csv(&table),
                QueryFormat::Json => serde_json::to_string_pretty(&output::json(&table)).unwrap_or_default() + "\n",
            };
            Outcome {
                stdout,
                ..Outcome::default()
            }
        }
        Err(d) => Outcome::diagnostics(&l.project.files, &[d], color),
    }
}

/// The query the arguments ask for; relative ranges resolved against --as-of.
fn query_of(l: &mut Loaded, args: &QueryArgs) -> Result<Query, Diagnostic> {
    let filter = match &args.filter {
        Some(f) => {
            let id = l.project.files.add("--where", PathBuf::from("--where"), f.to_string());
            Some(syntax::parse_expr(id, f, 0).map_err(|mut d| {
                d.category = diagnostic::Category::Usage;
                d
            })?)
        }
        None => None,
    };
    let calendar = l.project.settings.calendar();
    let as_of = date_arg(args.as_of.as_deref(), false, "--as-of")?;
    let (from, to) = match &args.range {
        Some(r) => {
            let today = as_of.unwrap_or_else(|| today(&calendar));
            let (f, t) = tally::time::relative_range(r, today, &calendar).map_err(usage)?;
            (Some(f), Some(t))
        }
        None => {
            let from = date_arg(args.from.as_deref(), false, "--from")?;
            let to = date_arg(args.to.as_deref(), true, "--to")?;
            // As of a day: no later row is read.
            let (to, flag) = match (to, as_of) {
                (Some(t), Some(a)) if a < t => (Some(a), "--as-of"),
                (Some(t), _) => (Some(t), "--to"),
                (None, a) => (a, "--as-of"),
            };
            ordered(from, to, flag)?;
            (from, to)
        }
    };
    Ok(Query {
        metrics: metric_ids(&l.model, &args.metrics)?,
        grain: grain(args.by.as_deref())?,
        dimensions: dimension_ids(&l.model, &args.dims)?,
        from,
        to,
        filter,
        compare: args.compare.map(|c| match c {
            CompareArg::Previous => plan::Compare::Previous,
            CompareArg::Year => plan::Compare::Year,
        }),
    })
}

async fn explain(l: Loaded, metric: &str, by: Option<&str>, dims: &[String], color: bool) -> Outcome {
    let q = (|| -> Result<Query, Diagnostic> {
        Ok(Query {
            metrics: metric_ids(&l.model, &[metric.to_string()])?,
            grain: grain(by.or(Some("month")))?,
            dimensions: dimension_ids(&l.model, dims)?,
            ..Query::default()
        })
    })();
    let plan = match q {
        Ok(q) => run::prepare(&l.ctx, &l.model, &l.project.files, &l.project.settings, q).await,
        Err(d) => Err(d),
    };
    let plan = match plan {
        Ok(p) => p,
        Err(d) => return Outcome::diagnostics(&l.project.files, &[d], color),
    };
    let id = plan.query.metrics[0];
    let m = &l.model.metrics[id];
    let mut out = format!("metric {} = {}\n", m.name, m.text);
    if !matches!(m.formula, model::Formula::Measure(_)) {
        out.push_str("  computed from the measures below, per period and breakdown value\n");
        out.push_str("  (in Float64; a division by zero or null gives null)\n");
    }
    for (i, scan) in plan.scans.iter().enumerate() {
        let src = &l.model.sources[scan.source];
        let mut how = Vec::new();
        if let Some(w) = scan.kind.window {
            how.push(format!("{w} window per period"));
        }
        if scan.kind.total {
            how.push("all breakdown values together".to_string());
        }
        if scan.kind.extended {
            how.push("whole periods before --from".to_string());
        }
        let how = if how.is_empty() {
            String::new()
        } else {
            format!("; {}", how.join(", "))
        };
        out.push_str(&format!(
            "\n-- scan {} of {}: source `{}` ({}), {} measure{}{how}\n",
            i + 1,
            plan.scans.len(),
            src.name,
            src.data.display,
            scan.measures.len(),
            if scan.measures.len() == 1 { "" } else { "s" }
        ));
        out.push_str("\nlogical plan:\n");
        match plan::optimize(&l.ctx, &scan.plan) {
            Ok(p) => {
                out.push_str(&format!("{}\n", p.display_indent()));
                if let Ok(physical) = l.ctx.state().create_physical_plan(&p).await {
                    let shown = datafusion::physical_plan::displayable(physical.as_ref()).indent(false);
                    out.push_str(&format!("\nphysical plan:\n{shown}"));
                }
            }
            Err(_) => out.push_str(&format!("{}\n", scan.plan.display_indent())),
        }
        out.push_str("\nSQL:\n");
        let sql = match &scan.sql {
            Some(p) => plan::portable(p.clone()).and_then(|p| {
                datafusion::sql::unparser::plan_to_sql(&p).map_err(|e| Diagnostic::usage("E0707", e.strip_backtrace()))
            }),
            None => Err(Diagnostic::usage(
                "E0707",
                "windows, balances and conversions join or order rows in ways the SQL writer cannot express; the plan above is what runs",
            )),
        };
        match sql {
            Ok(sql) => out.push_str(&format!("{sql};\n")),
            Err(e) => out.push_str(&format!("(no SQL form: {})\n", e.message)),
        }
    }
    for k in &plan.key_checks {
        let src = &l.model.sources[k.source];
        let j = &src.joins[k.join];
        out.push_str(&format!(
            "\n-- before the scans: `{}.{}` is checked to be unique (join from `{}`)\n",
            l.model.sources[j.target].name, j.target_column, src.name
        ));
    }
    Outcome {
        stdout: out,
        ..Outcome::default()
    }
}

/// Today in the project's time zone.
fn today(calendar: &tally::time::Calendar) -> chrono::NaiveDate {
    match calendar.time_zone {
        Some(tz) => chrono::Utc::now().with_timezone(&tz).date_naive(),
        None => chrono::Local::now().date_naive(),
    }
}

async fn alerts(
    l: &Loaded,
    as_of: Option<&str>,
    fail_on: FailOn,
    format: AlertFormat,
    no_state: bool,
    color: bool,
) -> Outcome {
    use tally::alerts::Transition;
    let settings = &l.project.settings;
    let files = &l.project.files;
    let as_of = match date_arg(as_of, false, "--as-of") {
        Ok(d) => d.unwrap_or_else(|| today(&settings.calendar())),
        Err(d) => return Outcome::diagnostics(files, &[d], color),
    };
    let results = match tally::alerts::evaluate(&l.ctx, &l.model, files, settings, as_of).await {
        Ok(r) => r,
        Err(d) => return Outcome::diagnostics(files, &[d], color),
    };
    let mut warnings = Vec::new();
    let state_path = settings.root.join(".tally").join("alert-state.json");
    let (previous, warning) = if no_state {
        (Default::default(), None)
    } else {
        tally::alerts::load_state_shown(&state_path, &settings.display(&state_path))
    };
    warnings.extend(warning);
    let (mut next, changes) = tally::alerts::transition(&previous, &results);
    // Changes of state go to webhooks; what cannot be delivered is kept for the next run.
    let mut notes = previous.pending.clone();
    notes.extend(tally::alerts::notifications(
        &l.model,
        settings.webhook.as_deref(),
        &results,
        &changes,
        as_of,
    ));
    let failed = tally::alerts::deliver(notes, settings.webhook_deadline);
    for (n, why) in &failed {
        let keep = if no_state {
            ""
        } else {
            "; it is sent again on the next run"
        };
        warnings.push(
            Diagnostic::data(
                "W0803",
                format!(
                    "cannot notify {} of alert `{}`: {why}{keep}",
                    n.url,
                    n.body["key"].as_str().unwrap_or("?")
                ),
            )
            .warning(),
        );
    }
    next.pending = failed.into_iter().map(|(n, _)| n).collect();
    if !no_state && let Err(d) = tally::alerts::save_state(&state_path, &next) {
        return Outcome::diagnostics(files, &[d], color);
    }
    let threshold = match fail_on {
        FailOn::Warning => model::AlertSeverity::Warning,
        FailOn::Critical => model::AlertSeverity::Critical,
    };
    let failing = results.iter().any(|r| r.firing.is_some_and(|s| s >= threshold));
    let change_of = |key: &str| changes.iter().find(|c| c.0 == key).map(|c| (c.1, c.2));
    let firing: Vec<_> = results.iter().filter(|r| r.firing.is_some()).collect();
    let resolved: Vec<_> = changes.iter().filter(|c| c.1 == Transition::Resolved).collect();
    let stdout = match format {
        AlertFormat::Json => {
            let rows: Vec<_> = results
                .iter()
                .map(|r| {
                    let change = change_of(&r.key());
                    serde_json::json!({
                        "alert": r.name,
                        "dimensions": r.dimensions.iter().map(|(d, v)| (d.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                        "period": r.period.to_string(),
                        "firing": r.firing.is_some(),
                        "severity": r.firing.map(|s| s.name()),
                        "value": r.value,
                        "level": r.level,
                        "earlier": r.earlier,
                        "message": r.message,
                        "state": change.map(|c| c.0.name()),
                        "since": change.map(|c| c.1.to_string()),
                    })
                })
                .collect();
            let resolved: Vec<_> = resolved
                .iter()
                .map(|c| serde_json::json!({"alert": c.0, "since": c.2.to_string()}))
                .collect();
            let v = serde_json::json!({"as_of": as_of.to_string(), "alerts": rows, "resolved": resolved});
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        AlertFormat::Junit => {
            let esc = tally::report::escape;
            let mut x = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"tally alerts\" tests=\"{}\" failures=\"{}\">\n",
                results.len(),
                firing.len()
            );
            for r in &results {
                x.push_str(&format!("  <testcase classname=\"alerts\" name=\"{}\">", esc(&r.key())));
                if let Some(s) = r.firing {
                    x.push_str(&format!(
                        "<failure type=\"{}\" message=\"{}\"/>",
                        s.name(),
                        esc(&r.message)
                    ));
                }
                x.push_str("</testcase>\n");
            }
            x.push_str("</testsuite>\n");
            x
        }
        AlertFormat::Markdown => {
            let mut m = format!("### Alerts as of {as_of}\n\n");
            if firing.is_empty() {
                m.push_str("No alert fires.\n");
            } else {
                m.push_str("| alert | severity | state | since | message |\n|---|---|---|---|---|\n");
                for r in &firing {
                    let c = change_of(&r.key());
                    m.push_str(&format!(
                        "| {} | {} | {} | {} | {} |\n",
                        output::markdown_cell(&r.key()),
                        r.firing.map(|s| s.name()).unwrap_or(""),
                        c.map(|c| c.0.name()).unwrap_or(""),
                        c.map(|c| c.1.to_string()).unwrap_or_default(),
                        output::markdown_cell(&r.message)
                    ));
                }
            }
            for c in &resolved {
                m.push_str(&format!(
                    "\nResolved: {} (firing since {})\n",
                    output::markdown_cell(&c.0),
                    c.2
                ));
            }
            m
        }
        AlertFormat::Github => {
            let mut g = String::new();
            for r in &firing {
                let level = if r.firing == Some(model::AlertSeverity::Critical) {
                    "error"
                } else {
                    "warning"
                };
                let span = l.model.alerts[r.alert].span;
                let source = files.get(span.file);
                let (line, col) = source.line_col(span.start as usize);
                g.push_str(&format!(
                    "::{level} file={},line={line},col={col},title={}::{}\n",
                    diagnostic::escape_property(&source.name),
                    diagnostic::escape_property(&format!("alert {}", r.key())),
                    diagnostic::escape_data(&r.message)
                ));
            }
            g
        }
        AlertFormat::Human => {
            let mut h = format!("alerts as of {as_of}: {} of {} firing\n", firing.len(), results.len());
            for r in &firing {
                let c = change_of(&r.key());
                let state = match c {
                    Some((Transition::New, _)) => "new".to_string(),
                    Some((t, since)) => format!("{} since {since}", t.name()),
                    None => String::new(),
                };
                h.push_str(&format!(
                    "  {:<8} {}  [{}]\n",
                    r.firing.map(|s| s.name()).unwrap_or(""),
                    r.message,
                    state
                ));
            }
            for c in &resolved {
                h.push_str(&format!("  resolved {} (firing since {})\n", c.0, c.2));
            }
            h
        }
    };
    Outcome {
        stdout,
        stderr: diagnostic::render_human(files, &warnings, color),
        code: ExitStatus::findings_if(failing),
    }
}

async fn test(g: &Global, format: TestFormat, color: bool) -> Outcome {
    let (mut project, diags) = match project::load(&g.project, &overrides(g)) {
        Ok(p) => p,
        Err((files, d)) => return Outcome::diagnostics(&files, &d, color),
    };
    let (tests, more) = project::load_tests(&mut project);
    let errors: Vec<Diagnostic> = diags
        .into_iter()
        .chain(more)
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if !errors.is_empty() {
        return Outcome::diagnostics(&project.files, &errors, color);
    }
    let outcomes = match tally::testing::run(&project, &tests).await {
        Ok(o) => o,
        Err(d) => return Outcome::diagnostics(&project.files, &d, color),
    };
    let failed = outcomes.iter().filter(|o| !o.failures.is_empty()).count();
    let files = &project.files;
    let stdout = match format {
        TestFormat::Json => {
            let rows: Vec<_> = outcomes
                .iter()
                .map(|o| {
                    serde_json::json!({
                        "test": o.name,
                        "location": files.location(o.span),
                        "checks": o.checks,
                        "passed": o.failures.is_empty(),
                        "failures": o.failures,
                    })
                })
                .collect();
            let v = serde_json::json!({"tests": rows, "passed": outcomes.len() - failed, "failed": failed});
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        TestFormat::Junit => {
            let esc = tally::report::escape;
            let mut x = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"tally test\" tests=\"{}\" failures=\"{failed}\">\n",
                outcomes.len()
            );
            for o in &outcomes {
                x.push_str(&format!(
                    "  <testcase classname=\"{}\" name=\"{}\">",
                    esc(&files.location(o.span)),
                    esc(&o.name)
                ));
                for f in &o.failures {
                    x.push_str(&format!("<failure message=\"{}\"/>", esc(f)));
                }
                x.push_str("</testcase>\n");
            }
            x.push_str("</testsuite>\n");
            x
        }
        TestFormat::Human => {
            let mut h = String::new();
            for o in &outcomes {
                let mark = if o.failures.is_empty() { "ok  " } else { "FAIL" };
                h.push_str(&format!(
                    "{mark} {} ({}, {} checks)\n",
                    o.name,
                    files.location(o.span),
                    o.checks
                ));
                for f in &o.failures {
                    h.push_str(&format!("     {f}\n"));
                }
            }
            h.push_str(&format!("{} passed, {failed} failed\n", outcomes.len() - failed));
            h
        }
    };
    Outcome {
        stdout,
        code: ExitStatus::findings_if(failed > 0),
        ..Outcome::default()
    }
}

async fn backtest(l: &Loaded, from: Option<&str>, to: Option<&str>, format: AlertFormat, color: bool) -> Outcome {
    let files = &l.project.files;
    let range = date_arg(from, false, "--from").and_then(|f| {
        let t = date_arg(to, true, "--to")?;
        ordered(f, t, "--to")?;
        Ok((f, t))
    });
    let (from, to) = match range {
        Ok((Some(f), Some(t))) => (f, t),
        Ok(_) => return Outcome::diagnostics(files, &[usage("a backtest needs --from before --to")], color),
        Err(d) => return Outcome::diagnostics(files, &[d], color),
    };
    let results = match tally::alerts::backtest(&l.ctx, &l.model, files, &l.project.settings, from, to).await {
        Ok(r) => r,
        Err(d) => return Outcome::diagnostics(files, &[d], color),
    };
    let name = |r: &tally::alerts::Backtest| {
        let mut n = r.name.clone();
        for (d, v) in &r.dimensions {
            n.push_str(&format!(" {d}={}", v.as_deref().unwrap_or("(none)")));
        }
        n
    };
    let stdout = if format == AlertFormat::Json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "alert": r.name,
                    "dimensions": r.dimensions.iter().map(|(d, v)| (d.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                    "per": l.model.alerts[r.alert].grain.name(),
                    "periods": r.periods,
                    "firing": r.firing,
                    "episodes": r.episodes,
                    "average_length": r.average_length,
                    "flaps": r.flaps,
                    "fired": r.fired.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = serde_json::json!({"from": from.to_string(), "to": to.to_string(), "alerts": rows});
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        let mut h = format!("backtest from {from} to {to}\n");
        let width = results
            .iter()
            .map(|r| name(r).chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        // Padded by hand: the formatter's widths stop at 65,535.
        let padded = |n: &str| format!("{n}{}", " ".repeat(width - n.chars().count()));
        h.push_str(&format!(
            "  {}  {:>7}  {:>6}  {:>8}  {:>11}  {:>5}\n",
            padded("alert"),
            "periods",
            "fired",
            "episodes",
            "avg. length",
            "flaps"
        ));
        for r in &results {
            let per = l.model.alerts[r.alert].grain.name();
            h.push_str(&format!(
                "  {}  {:>7}  {:>6}  {:>8}  {:>11}  {:>5}\n",
                padded(&name(r)),
                format!("{} {per}s", r.periods).trim_start(),
                r.firing,
                r.episodes,
                r.average_length
                    .map(|a| format!("{a:.1}"))
                    .unwrap_or_else(|| "-".into()),
                r.flaps
            ));
        }
        h
    };
    Outcome {
        stdout,
        ..Outcome::default()
    }
}

async fn targets(l: &Loaded, as_of: Option<&str>, format: ListFormat, color: bool) -> Outcome {
    let settings = &l.project.settings;
    let as_of = match date_arg(as_of, false, "--as-of") {
        Ok(d) => d.unwrap_or_else(|| today(&settings.calendar())),
        Err(d) => return Outcome::diagnostics(&l.project.files, &[d], color),
    };
    let results = match tally::targets::evaluate(&l.ctx, &l.model, &l.project.files, settings, as_of).await {
        Ok(r) => r,
        Err(d) => return Outcome::diagnostics(&l.project.files, &[d], color),
    };
    let m = &l.model;
    let fmt = |r: &tally::targets::TargetResult, v: Option<f64>| {
        output::format_value(v, &m.metrics[m.targets[r.target].metric].format)
    };
    if format == ListFormat::Json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| {
                let t = &m.targets[r.target];
                serde_json::json!({
                    "target": t.text,
                    "metric": r.metric,
                    "per": r.grain.name(),
                    "period": r.period.to_string(),
                    "value": r.value,
                    "level": r.level,
                    "high": r.high,
                    "status": r.status.name(),
                    "attainment": r.attainment,
                    "deadline": r.pace.as_ref().map(|p| p.deadline.to_string()),
                    "days_elapsed": r.pace.as_ref().map(|p| p.days_elapsed),
                    "days_total": r.pace.as_ref().map(|p| p.days_total),
                    "projected": r.pace.as_ref().map(|p| p.projected),
                    "needed_per_day": r.pace.as_ref().and_then(|p| p.needed_per_day),
                })
            })
            .collect();
        let v = serde_json::json!({"as_of": as_of.to_string(), "targets": rows});
        return Outcome {
            stdout: serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            ..Outcome::default()
        };
    }
    let mut out = format!("targets as of {as_of}\n");
    for r in &results {
        let t = &m.targets[r.target];
        let level = match (r.level, r.high) {
            (Some(lo), Some(hi)) => format!("{} to {}", fmt(r, Some(lo)), fmt(r, Some(hi))),
            (l, _) => fmt(r, l),
        };
        let attainment = r
            .attainment
            .map(|a| {
                format!(
                    " ({} of the level)",
                    output::format_value(Some(a), &tally::ast::Format::Percent)
                )
            })
            .unwrap_or_default();
        out.push_str(&format!("\n  {}\n", t.text));
        let value = match r.value {
            Some(_) => fmt(r, r.value),
            None => "no value".into(),
        };
        let deadline = t.deadline.is_some();
        match &r.pace {
            Some(p) => {
                let (what, from) = if deadline {
                    ("from", format!("{} to {}", r.period, p.deadline))
                } else {
                    ("for the", format!("{} of {}", r.grain.name(), r.period))
                };
                out.push_str(&format!(
                    "    {} {what} {from}: {value} so far against {level}{attainment}, day {} of {}\n",
                    r.status.name(),
                    p.days_elapsed,
                    p.days_total
                ));
                out.push_str(&format!("    projected at this rate: {}", fmt(r, Some(p.projected))));
                if let Some(n) = p.needed_per_day {
                    out.push_str(&format!("; needed from here: {} a day", fmt(r, Some(n))));
                }
                out.push('\n');
            }
            None => out.push_str(&format!(
                "    {} for the {} of {}: {value} against {level}{attainment}\n",
                r.status.name(),
                r.grain.name(),
                r.period,
            )),
        }
    }
    if results.is_empty() {
        out.push_str("  (no targets)\n");
    }
    Outcome {
        stdout: out,
        ..Outcome::default()
    }
}

fn list(l: &Loaded, format: ListFormat) -> Outcome {
    let m = &l.model;
    if format == ListFormat::Json {
        let sources: Vec<_> = m
            .sources
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "file": s.data.display,
                    "format": format!("{:?}", s.data.kind).to_lowercase(),
                    "time": s.time.as_ref().map(|t| &t.name), "key": s.key,
                    "joins": s.joins.iter().map(|j| serde_json::json!({"source": m.sources[j.target].name, "column": j.column, "target_column": j.target_column})).collect::<Vec<_>>(),
                    "columns": s.data.schema.fields().iter().map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let dims: Vec<_> = m
            .dimensions
            .iter()
            .map(|d| serde_json::json!({"name": d.name, "source": m.sources[d.source].name, "label": d.label}))
            .collect();
        let metrics: Vec<_> = m
            .metrics
            .iter()
            .map(|x| {
                serde_json::json!({"name": x.name, "label": x.label, "definition": x.text, "format": x.format.to_string(), "owner": x.owner, "description": x.description, "tags": x.tags})
            })
            .collect();
        let targets: Vec<_> = m
            .targets
            .iter()
            .map(|t| serde_json::json!({"metric": m.metrics[t.metric].name, "definition": t.text, "per": t.grain.name()}))
            .collect();
        let alerts: Vec<_> = m
            .alerts
            .iter()
            .map(|a| serde_json::json!({"name": a.name, "per": a.grain.name(), "severity": a.severity.name(), "location": l.project.files.location(a.span)}))
            .collect();
        let v = serde_json::json!({"sources": sources, "dimensions": dims, "metrics": metrics, "targets": targets, "alerts": alerts});
        return Outcome {
            stdout: serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            ..Outcome::default()
        };
    }
    let mut out = String::from("sources:\n");
    for s in &m.sources {
        out.push_str(&format!("  {}  {}", s.name, s.data.display));
        if let Some(t) = &s.time {
            out.push_str(&format!("  time: {}", t.name));
        }
        if let Some(k) = &s.key {
            out.push_str(&format!("  key: {k}"));
        }
        out.push('\n');
        for j in &s.joins {
            out.push_str(&format!(
                "    join {} on {} = {}\n",
                m.sources[j.target].name, j.column, j.target_column
            ));
        }
        for f in s.data.schema.fields() {
            out.push_str(&format!("    {:<24} {}\n", f.name(), f.data_type()));
        }
    }
    out.push_str("dimensions:\n");
    for d in &m.dimensions {
        out.push_str(&format!("  {:<24} source {}\n", d.name, m.sources[d.source].name));
    }
    out.push_str("metrics:\n");
    for x in &m.metrics {
        let label = x.label.as_deref().map(|l| format!(" \"{l}\"")).unwrap_or_default();
        out.push_str(&format!("  {}{label} = {}  [{}]\n", x.name, x.text, x.format));
    }
    if !m.targets.is_empty() {
        out.push_str("targets:\n");
        for t in &m.targets {
            out.push_str(&format!("  {}\n", t.text));
        }
    }
    if !m.reports.is_empty() {
        out.push_str("reports:\n");
        for r in &m.reports {
            let metrics: Vec<&str> = r.metrics.iter().map(|&x| m.metrics[x].name.as_str()).collect();
            out.push_str(&format!(
                "  {:<24} per {}{}: {}\n",
                r.name,
                r.grain.name(),
                r.range.as_deref().map(|x| format!(", {x}")).unwrap_or_default(),
                metrics.join(", ")
            ));
        }
    }
    if !m.alerts.is_empty() {
        out.push_str("alerts:\n");
        for a in &m.alerts {
            out.push_str(&format!(
                "  {:<24} per {}, {}  ({})\n",
                a.name,
                a.grain.name(),
                a.severity.name(),
                l.project.files.location(a.span)
            ));
        }
    }
    Outcome {
        stdout: out,
        ..Outcome::default()
    }
}
