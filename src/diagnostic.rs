//! One diagnostic model for every problem tally finds, and its renderers.
//!
//! Stages produce [`Diagnostic`] values; only the edge (the CLI) decides how to show them:
//! human text with the source line underlined, JSON, or GitHub workflow annotations.

use crate::span::{Files, Span};
use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;
use codespan_reporting::term::termcolor::{Ansi, NoColor};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// What a problem is about; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The definitions are wrong (exit code 3).
    Definition,
    /// A data file is missing, unreadable or does not hold what it should (exit code 4).
    Data,
    /// The command line asked for something that does not exist (exit code 2).
    Usage,
    /// tally built something its engine refuses: a bug in tally (exit code 5).
    Internal,
}

/// How a command ended: its exit code, defined here once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum ExitStatus {
    #[default]
    Ok = 0,
    /// An alert fires, a test of definitions fails, a file is not formatted, a number moves
    /// more than allowed.
    Findings = 1,
    Usage = 2,
    Definitions = 3,
    Data = 4,
    Internal = 5,
}

impl ExitStatus {
    /// `Findings` when `found`, else `Ok`.
    pub fn findings_if(found: bool) -> ExitStatus {
        if found { ExitStatus::Findings } else { ExitStatus::Ok }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A label pointing at a place in a definition file.
#[derive(Debug, Clone)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One problem, with a stable code, a place and hints.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub category: Category,
    pub message: String,
    pub primary: Option<Label>,
    pub secondary: Vec<Label>,
    /// Data file the problem is about, when there is one.
    pub data_file: Option<String>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            category: Category::Definition,
            message: message.into(),
            primary: None,
            secondary: Vec::new(),
            data_file: None,
            notes: Vec::new(),
        }
    }

    pub fn data(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            category: Category::Data,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn usage(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            category: Category::Usage,
            ..Diagnostic::error(code, message)
        }
    }

    /// A bug in tally: what it built, its engine refused.
    pub fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            category: Category::Internal,
            ..Diagnostic::error(code, message)
        }
        .note("this is a bug in tally: please report it with the command, the definitions and the sources' columns (`tally list`)")
    }

    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn at(mut self, span: Span, message: impl Into<String>) -> Self {
        self.primary = Some(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn also(mut self, span: Span, message: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn file(mut self, path: impl Into<String>) -> Self {
        self.data_file = Some(path.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Adds "did you mean" when a close candidate exists.
    pub fn suggest<'a>(self, name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Self {
        match did_you_mean(name, candidates) {
            Some(s) => self.note(format!("did you mean `{s}`?")),
            None => self,
        }
    }
}

/// The closest candidate to a misspelt name, if one is close enough.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The exit code a set of diagnostics calls for (0 when none is an error).
pub fn exit_code(diagnostics: &[Diagnostic]) -> ExitStatus {
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error);
    let mut status = ExitStatus::Ok;
    for d in errors {
        let s = match d.category {
            Category::Usage => ExitStatus::Usage,
            Category::Definition => ExitStatus::Definitions,
            Category::Data => ExitStatus::Data,
            Category::Internal => ExitStatus::Internal,
        };
        // Definitions outrank data and usage: fix the definitions first.
        status = match (status, s) {
            (ExitStatus::Ok, s) => s,
            (ExitStatus::Definitions, s) | (s, ExitStatus::Definitions) if s != ExitStatus::Internal => {
                ExitStatus::Definitions
            }
            (a, b) => a.max(b),
        };
    }
    status
}

/// Human-readable rendering, with the source line underlined.
pub fn render_human(files: &Files, diagnostics: &[Diagnostic], color: bool) -> String {
    let mut simple = SimpleFiles::new();
    let ids: Vec<usize> = files
        .iter()
        .map(|(_, f)| simple.add(f.name.clone(), f.text.clone()))
        .collect();
    let config = term::Config::default();
    let mut out = Vec::new();
    for d in diagnostics {
        let mut cd = match d.severity {
            Severity::Error => cs::Diagnostic::error(),
            Severity::Warning => cs::Diagnostic::warning(),
        }
        .with_code(d.code)
        .with_message(&d.message);
        let mut labels = Vec::new();
        if let Some(p) = &d.primary {
            labels.push(
                cs::Label::primary(ids[p.span.file.0 as usize], p.span.start as usize..p.span.end as usize)
                    .with_message(&p.message),
            );
        }
        for s in &d.secondary {
            labels.push(
                cs::Label::secondary(ids[s.span.file.0 as usize], s.span.start as usize..s.span.end as usize)
                    .with_message(&s.message),
            );
        }
        let mut notes = Vec::new();
        if let Some(f) = &d.data_file {
            notes.push(format!("data file: {f}"));
        }
        notes.extend(d.notes.iter().cloned());
        cd = cd.with_labels(labels).with_notes(notes);
        let result = if color {
            term::emit(&mut Ansi::new(&mut out), &config, &simple, &cd)
        } else {
            term::emit(&mut NoColor::new(&mut out), &config, &simple, &cd)
        };
        if result.is_err() {
            // A span outside its file is a bug of ours; still show the message.
            out.extend_from_slice(format!("error[{}]: {}\n", d.code, d.message).as_bytes());
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// JSON rendering: one object per diagnostic.
pub fn render_json(files: &Files, diagnostics: &[Diagnostic]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = diagnostics
        .iter()
        .map(|d| {
            let location = d.primary.as_ref().map(|p| {
                let file = files.get(p.span.file);
                let (line, column) = file.line_col(p.span.start as usize);
                let (end_line, end_column) = file.line_col(p.span.end as usize);
                serde_json::json!({
                    "file": file.name, "line": line, "column": column,
                    "end_line": end_line, "end_column": end_column, "label": p.message,
                })
            });
            serde_json::json!({
                "code": d.code,
                "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                "message": d.message,
                "location": location,
                "data_file": d.data_file,
                "notes": d.notes,
            })
        })
        .collect();
    serde_json::json!({ "diagnostics": items })
}

/// SARIF 2.1.0, for code-scanning tools: one run of tally, one result per diagnostic, each
/// rule (code) listed once.
pub fn render_sarif(files: &Files, diagnostics: &[Diagnostic]) -> serde_json::Value {
    let mut rules: Vec<&str> = diagnostics.iter().map(|d| d.code).collect();
    rules.sort();
    rules.dedup();
    let results: Vec<serde_json::Value> = diagnostics
        .iter()
        .map(|d| {
            let mut text = d.message.clone();
            for n in &d.notes {
                text.push_str(&format!("\n{n}"));
            }
            let locations: Vec<serde_json::Value> = match (&d.primary, &d.data_file) {
                (Some(p), _) => {
                    let file = files.get(p.span.file);
                    let (line, column) = file.line_col(p.span.start as usize);
                    let (end_line, end_column) = file.line_col(p.span.end as usize);
                    vec![serde_json::json!({
                        "physicalLocation": {
                            "artifactLocation": { "uri": file.name.replace('\\', "/") },
                            "region": {
                                "startLine": line, "startColumn": column,
                                "endLine": end_line, "endColumn": end_column,
                            }
                        },
                        "message": { "text": p.message },
                    })]
                }
                (None, Some(f)) => vec![serde_json::json!({
                    "physicalLocation": { "artifactLocation": { "uri": f.replace('\\', "/") } }
                })],
                _ => Vec::new(),
            };
            serde_json::json!({
                "ruleId": d.code,
                "ruleIndex": rules.iter().position(|r| *r == d.code),
                "level": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                "message": { "text": text },
                "locations": locations,
            })
        })
        .collect();
    serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "tally",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules.iter().map(|r| serde_json::json!({ "id": r })).collect::<Vec<_>>(),
            }},
            "results": results,
        }]
    })
}

/// GitHub workflow annotations (`::error file=...,line=...::message`).
pub fn render_github(files: &Files, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut props = Vec::new();
        if let Some(p) = &d.primary {
            let file = files.get(p.span.file);
            let (line, col) = file.line_col(p.span.start as usize);
            let (end_line, end_col) = file.line_col(p.span.end as usize);
            props.push(format!("file={}", escape_property(&file.name)));
            props.push(format!("line={line}"));
            props.push(format!("col={col}"));
            props.push(format!("endLine={end_line}"));
            if end_line == line {
                props.push(format!("endColumn={end_col}"));
            }
        } else if let Some(f) = &d.data_file {
            props.push(format!("file={}", escape_property(f)));
        }
        props.push(format!("title={}", escape_property(&format!("tally {}", d.code))));
        let mut message = d.message.clone();
        for n in &d.notes {
            message.push('\n');
            message.push_str(n);
        }
        out.push_str(&format!("::{kind} {}::{}\n", props.join(","), escape_data(&message)));
    }
    out
}

/// Text of a GitHub workflow command's message.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Text of a GitHub workflow command's property (`file=`, `title=`).
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}
