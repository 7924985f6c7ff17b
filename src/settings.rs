//! Project settings: `tally.yaml` at the project root, every key optional, every key also a
//! command-line flag that wins over the file.

use crate::diagnostic::Diagnostic;
use crate::span::{FileId, Files, Span};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `tally.yaml` as written.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// Where `.tally` and `.yaml` definitions live (default `metrics`, else the project root).
    pub definitions: Option<String>,
    /// Relative source paths resolve against this (default: the project root).
    pub data: Option<String>,
    /// Where report versions are written (default `reports`).
    pub reports: Option<String>,
    /// Periods are cut at local midnight of this IANA time zone.
    pub time_zone: Option<String>,
    /// `monday` (ISO 8601) unless set.
    pub week_start: Option<String>,
    /// The month a fiscal year starts in.
    pub fiscal_year_start: Option<String>,
    /// DataFusion's memory pool, e.g. `2GB`.
    pub memory_limit: Option<String>,
    /// Folders outside the data root that sources may read.
    #[serde(default)]
    pub allow_paths: Vec<String>,
    /// Threads for query execution (default: all cores).
    pub threads: Option<usize>,
    /// Where checks of unchanged data are remembered (default: the user's cache folder;
    /// `off` to never remember).
    pub cache: Option<String>,
    /// Where every alert's changes of state are posted (an alert's own `webhook` wins).
    pub webhook: Option<String>,
    /// How long `alerts` may spend delivering notifications, e.g. `30s` (the default) or
    /// `2m`; what is not delivered by then is sent again on the next run.
    pub webhook_deadline: Option<String>,
}

/// Settings after defaults and flags are applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub definitions: PathBuf,
    pub data: PathBuf,
    pub reports: PathBuf,
    pub time_zone: Option<chrono_tz::Tz>,
    pub week_start: chrono::Weekday,
    pub fiscal_year_start: u32,
    pub memory_limit: Option<usize>,
    pub allow_paths: Vec<PathBuf>,
    pub threads: Option<usize>,
    pub cache: Option<PathBuf>,
    pub webhook: Option<String>,
    pub webhook_deadline: std::time::Duration,
}

impl Settings {
    /// A path as shown to the user: relative to the project root when it is inside it.
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    /// Where weeks and fiscal years begin.
    pub fn calendar(&self) -> crate::time::Calendar {
        crate::time::Calendar {
            week_start: self.week_start,
            fiscal_year_start: self.fiscal_year_start,
            time_zone: self.time_zone,
        }
    }
}

/// Reads `tally.yaml` (if present) under `root` and applies `overrides` (from flags) over it.
/// The settings file is added to `files` so that its errors point into it.
pub fn load(root: &Path, overrides: &SettingsFile, files: &mut Files) -> Result<Settings, Vec<Diagnostic>> {
    let path = root.join("tally.yaml");
    let mut file = SettingsFile::default();
    let mut file_id = None;
    if path.exists() {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                return Err(vec![
                    Diagnostic::error("E0301", format!("cannot read settings: {e}")).file(path.display().to_string()),
                ]);
            }
        };
        let id = files.add("tally.yaml", path.clone(), text.clone());
        file_id = Some(id);
        if !text.trim().is_empty() {
            file = serde_yaml::from_str(&text).map_err(|e| vec![settings_error(id, &text, &e)])?;
        }
    }
    let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or_else(|| file.clone());
    let mut errors = Vec::new();
    let at = |key: &str| -> Option<Span> {
        let id = file_id?;
        let text = &files.get(id).text;
        let i = text.find(&format!("{key}:"))?;
        Some(Span::new(id, i, i + key.len()))
    };
    // A bad value is the flag's when a flag gave it (a usage error), else the file's line.
    let err = |code, msg: String, key: &str, from_flag: bool| match from_flag {
        true => Diagnostic::usage(code, format!("--{} {msg}", key.replace('_', "-"))),
        false => {
            let d = Diagnostic::error(code, msg);
            match at(key) {
                Some(s) => d.at(s, "in the project settings"),
                None => d,
            }
        }
    };

    let definitions = match pick(&overrides.definitions, &file.definitions) {
        Some(d) => root.join(d),
        None if root.join("metrics").is_dir() => root.join("metrics"),
        None => root.to_path_buf(),
    };
    let data = root.join(pick(&overrides.data, &file.data).unwrap_or_else(|| ".".into()));
    let reports = root.join(pick(&overrides.reports, &file.reports).unwrap_or_else(|| "reports".into()));

    let time_zone = match pick(&overrides.time_zone, &file.time_zone) {
        None => None,
        Some(tz) => match tz.parse::<chrono_tz::Tz>() {
            Ok(t) => Some(t),
            Err(_) => {
                let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
                errors.push(
                    err(
                        "E0302",
                        format!("unknown time zone `{tz}`"),
                        "time_zone",
                        overrides.time_zone.is_some(),
                    )
                    .suggest(&tz, names),
                );
                None
            }
        },
    };
    let week_start = match pick(&overrides.week_start, &file.week_start) {
        None => chrono::Weekday::Mon,
        Some(w) => match w.parse::<chrono::Weekday>() {
            Ok(d) => d,
            Err(_) => {
                errors.push(
                    err(
                        "E0303",
                        format!("`{w}` is not a day of the week"),
                        "week_start",
                        overrides.week_start.is_some(),
                    )
                    .note("write a day such as monday or sunday"),
                );
                chrono::Weekday::Mon
            }
        },
    };
    let fiscal_year_start = match pick(&overrides.fiscal_year_start, &file.fiscal_year_start) {
        None => 1,
        Some(m) => match m.parse::<chrono::Month>() {
            Ok(m) => m.number_from_month(),
            Err(_) => {
                errors.push(
                    err(
                        "E0304",
                        format!("`{m}` is not a month"),
                        "fiscal_year_start",
                        overrides.fiscal_year_start.is_some(),
                    )
                    .note("write a month such as january or april"),
                );
                1
            }
        },
    };
    let memory_limit = match pick(&overrides.memory_limit, &file.memory_limit) {
        None => None,
        Some(m) => match parse_bytes(&m) {
            Some(b) if MEMORY_LIMITS.contains(&b) => Some(b as usize),
            Some(_) => {
                errors.push(
                    err(
                        "E0307",
                        format!("`{m}` is out of range"),
                        "memory_limit",
                        overrides.memory_limit.is_some(),
                    )
                    .note(format!("a memory limit is from {MEMORY_RANGE}")),
                );
                None
            }
            None => {
                errors.push(
                    err(
                        "E0305",
                        format!("`{m}` is not a memory size"),
                        "memory_limit",
                        overrides.memory_limit.is_some(),
                    )
                    .note("write a size such as 512MB, 2GB or 1.5GiB"),
                );
                None
            }
        },
    };
    let threads = match (overrides.threads, file.threads) {
        (Some(t), _) | (None, Some(t)) if !THREADS.contains(&t) => {
            errors.push(
                err(
                    "E0307",
                    format!("`{t}` is out of range"),
                    "threads",
                    overrides.threads.is_some(),
                )
                .note(format!("threads are from {} to {}", THREADS.start(), THREADS.end())),
            );
            None
        }
        (t, file) => t.or(file),
    };
    let cache = match pick(&overrides.cache, &file.cache).as_deref() {
        Some("off") => None,
        Some(dir) => Some(root.join(dir)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("tally")),
    };
    let webhook_deadline = match pick(&overrides.webhook_deadline, &file.webhook_deadline) {
        None => WEBHOOK_DEADLINE,
        Some(text) => match parse_seconds(&text) {
            Some(d) if WEBHOOK_DEADLINES.contains(&d) => d,
            parsed => {
                let flag = overrides.webhook_deadline.is_some();
                let what = match parsed {
                    Some(_) => format!("`{text}` is out of range"),
                    None => format!("`{text}` is not a duration"),
                };
                errors.push(
                    err("E0307", what, "webhook_deadline", flag)
                        .note("a delivery deadline is from 1s to 1h, in seconds (30s) or minutes (2m)"),
                );
                WEBHOOK_DEADLINE
            }
        },
    };
    let mut allow_paths: Vec<PathBuf> = file.allow_paths.iter().map(|p| root.join(p)).collect();
    allow_paths.extend(overrides.allow_paths.iter().map(|p| root.join(p)));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Settings {
        root: root.to_path_buf(),
        definitions,
        data,
        reports,
        time_zone,
        week_start,
        fiscal_year_start,
        memory_limit,
        allow_paths,
        threads,
        cache,
        webhook: pick(&overrides.webhook, &file.webhook),
        webhook_deadline,
    })
}

/// The memory limits tally accepts, in bytes.
pub const MEMORY_LIMITS: std::ops::RangeInclusive<u64> = 100_000..=100_000_000_000_000;
const MEMORY_RANGE: &str = "100KB to 100TB";

/// How long `alerts` spends delivering notifications unless told.
const WEBHOOK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
const WEBHOOK_DEADLINES: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600);

/// `30s`, `2m`, `1.5s`, `45` (seconds).
fn parse_seconds(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let number: f64 = t[..split].parse().ok()?;
    let factor = match t[split..].trim() {
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        _ => return None,
    };
    std::time::Duration::try_from_secs_f64(number * factor).ok()
}

/// The thread counts tally accepts.
pub const THREADS: std::ops::RangeInclusive<usize> = 1..=1024;

/// `2GB`, `512 MB`, `1.5GiB`, `1000000` (bytes); sizes past what a `u64` holds are its
/// largest value.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let number: f64 = t[..split].parse().ok()?;
    let factor: f64 = match t[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        "p" | "pb" => 1e15,
        "pib" => 1024.0f64.powi(5),
        _ => return None,
    };
    let bytes = number * factor;
    // (`as` saturates: a size too large for u64 is u64::MAX, out of every range.)
    bytes.is_finite().then_some(bytes as u64)
}

fn settings_error(file: FileId, text: &str, e: &serde_yaml::Error) -> Diagnostic {
    let msg = e.to_string();
    let reason = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let offset = e
        .location()
        .map(|l| crate::span::offset_of(text, l.line(), l.column()))
        .unwrap_or(0);
    let end = text[offset..]
        .find([':', '\n'])
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let mut d = Diagnostic::error("E0306", format!("invalid project settings: {reason}"))
        .at(Span::new(file, offset, end.max(offset)), "here");
    if let Some(i) = reason.find("unknown field `") {
        let rest = &reason[i + 15..];
        let name = &rest[..rest.find('`').unwrap_or(rest.len())];
        d = d.suggest(
            name,
            [
                "definitions",
                "data",
                "reports",
                "time_zone",
                "week_start",
                "fiscal_year_start",
                "memory_limit",
                "allow_paths",
                "threads",
                "cache",
                "webhook",
                "webhook_deadline",
            ],
        );
    }
    d
}
