//! Canonical formatting of `.tally` files: the text changes, the meaning never does.
//!
//! The formatter works on tokens, not on the syntax tree, so that comments and the line
//! breaks a writer chose are kept: each line is re-indented by the depth of the brackets
//! it is in (two spaces a level, four for a definition continued on the next line), the
//! spaces between tokens are made canonical, trailing spaces go, and runs of blank lines
//! become one. Tokens themselves (names, strings, numbers, comments) are copied as written.
//! Before a result is returned it is parsed again and compared with the original's syntax
//! tree; a difference is refused rather than written.

use crate::diagnostic::Diagnostic;
use crate::span::FileId;
use crate::syntax;

/// What formatting a file gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Formatted {
    /// Already canonical.
    Unchanged,
    /// The canonical text.
    Changed(String),
}

/// Formats one `.tally` file. A file with syntax errors is not formatted: its problems
/// are returned instead.
pub fn format_file(file: FileId, text: &str) -> Result<Formatted, Vec<Diagnostic>> {
    let (_, diags) = syntax::parse_file(file, text);
    if diags.iter().any(|d| d.severity == crate::diagnostic::Severity::Error) {
        return Err(diags);
    }
    let out = format_text(text);
    if out == text {
        return Ok(Formatted::Unchanged);
    }
    let (_, after) = syntax::parse_file(file, &out);
    if !after.is_empty() || syntax::shape(text) != syntax::shape(&out) {
        return Err(vec![
            Diagnostic::error(
                "E0951",
                "formatting this file would change its meaning; it was left as it is",
            )
            .at(crate::span::Span::new(file, 0, 0), "this file")
            .note("this is a bug in `tally fmt`: please report it with the file"),
        ]);
    }
    Ok(Formatted::Changed(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A name or keyword, `a.b` included.
    Word,
    /// A number, signed number, percent or date.
    Number,
    Str,
    /// An operator or bracket.
    Punct,
    Comment,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
}

impl Token<'_> {
    fn is(&self, p: &str) -> bool {
        self.kind == Kind::Punct && self.text == p
    }

    fn opens(&self) -> bool {
        self.kind == Kind::Punct && matches!(self.text, "{" | "(" | "[")
    }

    fn closes(&self) -> bool {
        self.kind == Kind::Punct && matches!(self.text, "}" | ")" | "]")
    }

    /// Whether the token ends an operand, so that a `-` after it subtracts.
    fn ends_operand(&self) -> bool {
        match self.kind {
            Kind::Word => !OPERATOR_WORDS.contains(&self.text),
            Kind::Number | Kind::Str => true,
            Kind::Punct => matches!(self.text, ")" | "]"),
            Kind::Comment => false,
        }
    }
}

/// Words that are operators or clause keywords: a `(` after them is a parenthesis, not a
/// call, and a `-` after them is a sign.
const OPERATOR_WORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "between",
    "is",
    "where",
    "when",
    "by",
    "within",
    "per",
    "from",
    "than",
    "over",
    "for",
    "vs",
    "on",
    "join",
    "tolerance",
    "volume",
    "keep",
];

const PUNCTS: &[&str] = &[
    "->", "!=", "<=", ">=", "{", "}", "(", ")", "[", "]", ",", ":", "=", "<", ">", "+", "-", "*", "/", "%", ".",
];

/// The tokens of one line; `None` when the line holds something the formatter does not
/// know (it is then copied as written, trimmed).
fn tokens(line: &str) -> Option<Vec<Token<'_>>> {
    let bytes = line.as_bytes();
    let mut out: Vec<Token> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b' ' || c == b'\t' || c == b'\r' {
            i += 1;
            continue;
        }
        if line[i..].starts_with('\u{FEFF}') {
            i += '\u{FEFF}'.len_utf8();
            continue;
        }
        let start = i;
        let kind = if line[i..].starts_with("//") {
            i = bytes.len();
            Kind::Comment
        } else if c == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            if i >= bytes.len() {
                return None;
            }
            i += 1;
            Kind::Str
        } else if c.is_ascii_digit()
            || (c == b'-'
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                && !out.last().is_some_and(Token::ends_operand))
        {
            i = number_end(bytes, i);
            Kind::Number
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            // `source.column` is one token.
            while bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
            {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
            }
            Kind::Word
        } else if let Some(p) = PUNCTS.iter().find(|p| line[i..].starts_with(**p)) {
            i += p.len();
            Kind::Punct
        } else {
            return None;
        };
        out.push(Token {
            kind,
            text: &line[start..i],
        });
    }
    Some(out)
}

/// The end of a number, date (`2026-01-31`, `2026-01`), percent or signed number at `i`.
fn number_end(bytes: &[u8], mut i: usize) -> usize {
    let digits = |i: usize| bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if bytes[i] == b'-' {
        i += 1;
    }
    let n = digits(i);
    // A date: four digits, then `-` and two digits, once or twice.
    if n == 4 && bytes.get(i + 4) == Some(&b'-') && digits(i + 5) == 2 {
        i += 7;
        if bytes.get(i) == Some(&b'-') && digits(i + 1) == 2 {
            i += 3;
        }
        return i;
    }
    i += n;
    if bytes.get(i) == Some(&b'.') && digits(i + 1) > 0 {
        i += 1 + digits(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(i + 1), Some(b'+' | b'-')));
        if digits(i + 1 + sign) > 0 {
            i += 1 + sign + digits(i + 1 + sign);
        }
    }
    if bytes.get(i) == Some(&b'%') {
        i += 1;
    }
    i
}

/// Whether a space goes between two tokens on a line (`before` is the token before `a`).
fn space_between(before: Option<&Token>, a: &Token, b: &Token) -> bool {
    if b.kind == Kind::Comment {
        return true;
    }
    if b.is(",") || b.is(")") || b.is("]") || b.is(":") || b.is(".") || b.is("%") {
        return false;
    }
    // A sign: `-x`, `-(a + b)` at the start or after an operator.
    if a.is("-") {
        return before.is_some_and(Token::ends_operand);
    }
    if a.is("(") || a.is("[") || a.is(".") {
        return false;
    }
    if b.is("(") {
        // A call: `sum(`, `currency(`; a parenthesis after an operator word keeps its space.
        return a.kind != Kind::Word || OPERATOR_WORDS.contains(&a.text);
    }
    if b.is("[") {
        // An offset `revenue[-1 year]`; a list after `:` or `=` keeps its space.
        return !(a.kind == Kind::Word || a.is(")") || a.is("]"));
    }
    true
}

/// A definition's text with canonical spaces on one line and no comments: two texts that
/// differ only in whitespace and comments give the same string.
pub fn normalize(text: &str) -> String {
    let toks: Vec<Token> = text
        .lines()
        .flat_map(|l| {
            tokens(l).unwrap_or_else(|| {
                vec![Token {
                    kind: Kind::Word,
                    text: l.trim(),
                }]
            })
        })
        .filter(|t| t.kind != Kind::Comment && !t.text.is_empty())
        .collect();
    let mut out = String::new();
    for (i, t) in toks.iter().enumerate() {
        if i > 0 && space_between(i.checked_sub(2).map(|j| &toks[j]), &toks[i - 1], t) {
            out.push(' ');
        }
        out.push_str(t.text);
    }
    out
}

/// Words that start a top-level definition.
fn starts_definition(t: &Token) -> bool {
    t.kind == Kind::Word && syntax::KEYWORDS.contains(&t.text)
}

/// The canonical text of a file (which must parse).
pub fn format_text(text: &str) -> String {
    // Each line's code and its trailing comment, if any.
    let mut lines: Vec<(String, Option<&str>)> = Vec::new();
    let mut depth: usize = 0;
    // Whether the previous line left a top-level definition open (continued on this line).
    let mut open_definition = false;
    for raw in text.lines() {
        let Some(toks) = tokens(raw) else {
            lines.push((raw.trim().to_string(), None));
            continue;
        };
        if toks.is_empty() {
            lines.push((String::new(), None));
            continue;
        }
        let leading_closers = toks.iter().take_while(|t| t.closes()).count();
        let level = depth.saturating_sub(leading_closers);
        let first = &toks[0];
        let indent = if level > 0 {
            2 * level
        } else if first.kind != Kind::Comment && !starts_definition(first) && open_definition && leading_closers == 0 {
            4
        } else {
            0
        };
        let mut line = " ".repeat(indent);
        let trailing = match toks.last() {
            Some(t) if t.kind == Kind::Comment && toks.len() > 1 => Some(t.text.trim_end()),
            _ => None,
        };
        let code = &toks[..toks.len() - usize::from(trailing.is_some())];
        for (i, t) in code.iter().enumerate() {
            if i > 0 && space_between(i.checked_sub(2).map(|j| &toks[j]), &toks[i - 1], t) {
                line.push(' ');
            }
            line.push_str(t.text.trim_end());
        }
        for t in &toks {
            if t.opens() {
                depth += 1;
            } else if t.closes() {
                depth = depth.saturating_sub(1);
            }
        }
        if depth == 0 {
            // A definition is complete at its closing brace; until then a line that does not
            // start a definition continues it.
            if starts_definition(first) {
                open_definition = true;
            }
            if toks
                .iter()
                .rev()
                .find(|t| t.kind != Kind::Comment)
                .is_some_and(|t| t.is("}"))
            {
                open_definition = false;
            }
        }
        lines.push((line, trailing));
    }
    // Trailing comments two spaces after the code, aligned over consecutive lines.
    let mut aligned: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let run = lines[i..].iter().take_while(|l| l.1.is_some()).count();
        if run == 0 {
            aligned.push(lines[i].0.clone());
            i += 1;
            continue;
        }
        let width = lines[i..i + run].iter().map(|l| l.0.chars().count()).max().unwrap_or(0);
        for (code, comment) in &lines[i..i + run] {
            let pad = width - code.chars().count() + 2;
            aligned.push(format!("{code}{}{}", " ".repeat(pad), comment.unwrap_or_default()));
        }
        i += run;
    }
    let lines = aligned;
    // Blank lines: none at the start or end of the file, or just inside brackets; at most
    // one in a row elsewhere.
    let mut out: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            let after_open = out
                .last()
                .is_none_or(|l: &String| l.is_empty() || l.ends_with(['{', '[', '(']));
            let before_close = lines[i + 1..]
                .iter()
                .find(|l| !l.is_empty())
                .is_none_or(|l| l.trim_start().starts_with(['}', ']', ')']));
            if after_open || before_close {
                continue;
            }
        }
        out.push(line.clone());
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_and_indentation() {
        let input = "metric   revenue \"Revenue\"=sum( jobs.amount where status=\"completed\" ){\nformat :currency( USD )\n   owner: \"ops\"   // who\n}\n\n\n\nmetric growth = revenue/revenue[ -1 year ]-1\nmetric r7 =\nrolling(revenue , 7 days)\n";
        let expected = "metric revenue \"Revenue\" = sum(jobs.amount where status = \"completed\") {\n  format: currency(USD)\n  owner: \"ops\"  // who\n}\n\nmetric growth = revenue / revenue[-1 year] - 1\nmetric r7 =\n    rolling(revenue, 7 days)\n";
        assert_eq!(format_text(input), expected);
        assert_eq!(format_text(expected), expected);
    }

    #[test]
    fn normalize_ignores_whitespace_and_comments() {
        assert_eq!(
            normalize("sum(jobs.amount   // paid\n   where status=\"x\")"),
            normalize("sum( jobs.amount where status = \"x\" )")
        );
        assert_ne!(normalize("a - b"), normalize("a + b"));
    }

    #[test]
    fn operators_and_literals() {
        let input = "alert a {\n  when change vs previous < -20%\n}\nmetric x = count(e where not (a in (\"x\",\"y\")) and d between 2026-01-01 and 2026-02)\n";
        let expected = "alert a {\n  when change vs previous < -20%\n}\nmetric x = count(e where not (a in (\"x\", \"y\")) and d between 2026-01-01 and 2026-02)\n";
        assert_eq!(format_text(input), expected);
    }
}
