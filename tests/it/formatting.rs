//! `tally fmt`: canonical, idempotent, and never a change of meaning — over every `.tally`
//! file of the repository, as written and with its whitespace scrambled.

use std::path::{Path, PathBuf};
use tally::fmt::{Formatted, format_file};
use tally::span::FileId;

fn tally_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "tally") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["metrics", "examples", "tests/fixtures"] {
        walk(&root.join(dir), &mut out);
    }
    out.sort();
    out
}

fn format(text: &str) -> String {
    match format_file(FileId(0), text) {
        Ok(Formatted::Unchanged) => text.to_string(),
        Ok(Formatted::Changed(t)) => t,
        Err(d) => panic!("{d:?}"),
    }
}

/// The same file with other whitespace: extra indentation, doubled spaces between tokens
/// outside strings and comments, trailing spaces, doubled blank lines, CRLF line ends.
fn scramble(text: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            out.push_str("\r\n\r\n");
            continue;
        }
        out.push_str(&" ".repeat(1 + i % 3));
        let code_end = line.find("//").unwrap_or(line.len());
        let (code, comment) = line
            .trim_start()
            .split_at(code_end - (line.len() - line.trim_start().len()));
        if code.contains('"') || code.contains("range:") {
            out.push_str(code);
        } else {
            out.push_str(&code.replace(' ', "   ").replace(',', " ,").replace('(', "( "));
        }
        out.push_str(comment);
        out.push_str("  \r\n");
    }
    out
}

#[test]
fn formatting_is_canonical_idempotent_and_keeps_the_meaning() {
    let files = tally_files();
    assert!(files.len() >= 10, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let once = format(&text);
        assert_eq!(format(&once), once, "formatting {} twice changed it", path.display());
        assert_eq!(
            tally::syntax::shape(&text),
            tally::syntax::shape(&once),
            "formatting {} changed its meaning",
            path.display()
        );
        // Every file of the repository is kept formatted.
        assert_eq!(once, text, "{} is not formatted", path.display());
        let scrambled = scramble(&text);
        assert_ne!(scrambled, text);
        assert_eq!(format(&scrambled), once, "{} scrambled", path.display());
    }
}

#[test]
fn a_file_with_syntax_errors_is_not_formatted() {
    let err = format_file(FileId(0), "metric a = sum(\n").unwrap_err();
    assert!(err.iter().any(|d| d.severity == tally::diagnostic::Severity::Error));
}
