//! The DSL front end: `.tally` text to [`ast::Definitions`], with pest.
//!
//! pest appears in this module only. Pairs become the typed AST by hand, one function per
//! rule; operators are bound by a Pratt parser. A file is split at its top-level keywords and
//! each definition is parsed alone, so one run reports every broken definition of a file.

use crate::ast::{
    AlertDef, Amount, BinOp, ConditionDef, ConversionExpr, Definitions, DimensionDef, Direction, Expr, ExprKind,
    Format, GoalDef, JoinDef, LevelDef, LevelKind, Meta, MetricDef, Name, ReportDef, SourceDef, TargetDef,
    ThresholdDef,
};
use crate::diagnostic::Diagnostic;
use crate::span::{FileId, Span, Spanned};
use chrono::NaiveDate;
use pest::Parser;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use std::sync::LazyLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/tally.pest"]
struct TallyParser;

/// Top-level keywords of the DSL.
pub const KEYWORDS: &[&str] = &["source", "dimension", "metric", "target", "alert", "report"];

/// Words that may start a continued expression line.
const EXPRESSION_WORDS: &[&str] = &["where", "and", "or", "not", "in", "between", "is", "join"];

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::op_or, Assoc::Left))
        .op(Op::infix(Rule::op_and, Assoc::Left))
        .op(Op::prefix(Rule::op_not))
        .op(Op::infix(Rule::op_eq, Assoc::Left)
            | Op::infix(Rule::op_ne, Assoc::Left)
            | Op::infix(Rule::op_lt, Assoc::Left)
            | Op::infix(Rule::op_le, Assoc::Left)
            | Op::infix(Rule::op_gt, Assoc::Left)
            | Op::infix(Rule::op_ge, Assoc::Left)
            | Op::postfix(Rule::is_null)
            | Op::postfix(Rule::is_not_null)
            | Op::postfix(Rule::in_list)
            | Op::postfix(Rule::between))
        .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
        .op(Op::infix(Rule::op_mul, Assoc::Left) | Op::infix(Rule::op_div, Assoc::Left))
        .op(Op::prefix(Rule::op_neg))
        .op(Op::postfix(Rule::offset))
});

/// Parses one `.tally` file. Returns what could be read and every problem found.
pub fn parse_file(file: FileId, text: &str) -> (Definitions, Vec<Diagnostic>) {
    let mut defs = Definitions::default();
    let mut diags = Vec::new();
    let chunks = split_items(text);
    let first = chunks.first().map(|c| c.0).unwrap_or(text.len());
    let leading = &text[..first];
    if let Some(at) = first_token(leading) {
        diags.push(unknown_keyword(file, text, at));
    }
    for (start, end) in chunks {
        let chunk = &text[start..end];
        let ctx = Ctx { file, offset: start };
        match TallyParser::parse(Rule::item_only, chunk) {
            Ok(mut pairs) => {
                let item_only = pairs.next().expect("item_only");
                for pair in item_only.into_inner() {
                    if let Err(d) = ctx.item(pair, &mut defs) {
                        diags.push(d);
                    }
                }
            }
            Err(e) => diags.push(ctx.syntax_error(e, chunk, text)),
        }
    }
    let empty = defs.sources.is_empty()
        && defs.dimensions.is_empty()
        && defs.metrics.is_empty()
        && defs.targets.is_empty()
        && defs.alerts.is_empty()
        && defs.reports.is_empty();
    if empty && diags.is_empty() {
        diags.push(
            Diagnostic::error("E0103", "this definition file defines nothing")
                .at(Span::new(file, 0, 0), "empty file")
                .note("a definition file holds `source`, `dimension` and `metric` definitions; delete the file if it is not needed"),
        );
    }
    (defs, diags)
}

/// The syntax tree of a file without places, whitespace or comments: each node's rule and
/// depth, and the text of each leaf (a range's words with their spaces made single). Two
/// texts with the same shape mean the same; `None` when the text does not parse.
pub fn shape(text: &str) -> Option<Vec<(String, usize, String)>> {
    fn walk(pair: Pair<Rule>, depth: usize, out: &mut Vec<(String, usize, String)>) {
        let rule = pair.as_rule();
        let leaf = pair.clone().into_inner().next().is_none();
        let text = match (leaf, rule) {
            (true, Rule::range_text) => pair.as_str().split_whitespace().collect::<Vec<_>>().join(" "),
            (true, _) => pair.as_str().to_string(),
            (false, _) => String::new(),
        };
        out.push((format!("{rule:?}"), depth, text));
        for inner in pair.into_inner() {
            walk(inner, depth + 1, out);
        }
    }
    let mut out = Vec::new();
    for pair in TallyParser::parse(Rule::file, text).ok()? {
        walk(pair, 0, &mut out);
    }
    Some(out)
}

/// `for 3 days`, as written.
pub type ForPeriods = Spanned<(f64, String)>;

/// Parses an alert condition (YAML's `when:`) that starts at byte `offset` of a file, with
/// its `for N UNIT` if it has one.
pub fn parse_condition(file: FileId, text: &str, offset: usize) -> Result<(Spanned<ConditionDef>, Option<ForPeriods>)> {
    let ctx = Ctx { file, offset };
    match TallyParser::parse(Rule::condition_only, text) {
        Ok(mut pairs) => {
            let mut i = pairs.next().expect("condition_only").into_inner();
            let condition = ctx.condition(i.next().expect("condition"))?;
            let for_periods = match i.next() {
                Some(p) if p.as_rule() == Rule::for_part => Some(ctx.for_part(p)?),
                _ => None,
            };
            Ok((condition, for_periods))
        }
        Err(e) => Err(ctx.syntax_error(e, text, text)),
    }
}

/// Parses an expression that starts at byte `offset` of a file (YAML values, `--where`).
pub fn parse_expr(file: FileId, text: &str, offset: usize) -> Result<Expr> {
    let ctx = Ctx { file, offset };
    match TallyParser::parse(Rule::expr_only, text) {
        Ok(mut pairs) => {
            let expr_only = pairs.next().expect("expr_only");
            let expr = expr_only.into_inner().next().expect("expr");
            ctx.expr(expr)
        }
        Err(e) => Err(ctx.syntax_error(e, text, text)),
    }
}

/// Byte ranges of the top-level definitions: each starts at a line whose first word is a
/// top-level keyword followed by a name.
fn split_items(text: &str) -> Vec<(usize, usize)> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let word = word_at(trimmed, 0);
        let rest = &trimmed[word.len()..];
        let looks_like_definition = !word.is_empty()
            && rest.starts_with([' ', '\t'])
            && rest
                .trim_start()
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        // A keyword, or an unknown word at the start of a line where a definition would
        // start (a misspelt keyword), begins a new definition.
        if looks_like_definition && (KEYWORDS.contains(&word) || (indent == 0 && !EXPRESSION_WORDS.contains(&word))) {
            starts.push(offset + indent);
        }
        offset += line.len();
    }
    let mut ranges = Vec::new();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(text.len());
        ranges.push((s, e));
    }
    ranges
}

/// Offset of the first token that is not whitespace or a comment.
fn first_token(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if !trimmed.is_empty() && !trimmed.starts_with("//") {
            return Some(offset + line.len() - trimmed.len());
        }
        offset += line.len();
    }
    None
}

fn word_at(text: &str, at: usize) -> &str {
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

fn unknown_keyword(file: FileId, text: &str, at: usize) -> Diagnostic {
    let word = word_at(text, at);
    if word.is_empty() {
        let ch = text[at..].chars().next().unwrap_or(' ');
        return Diagnostic::error(
            "E0101",
            format!("unexpected `{}` where a definition should start", ch.escape_default()),
        )
        .at(
            Span::new(file, at, at + ch.len_utf8()),
            "expected `source`, `dimension` or `metric`",
        );
    }
    Diagnostic::error("E0102", format!("unknown keyword `{word}`"))
        .at(
            Span::new(file, at, at + word.len()),
            "expected `source`, `dimension`, `metric`, `target`, `alert` or `report`",
        )
        .suggest(word, KEYWORDS.iter().copied())
}

/// Where a chunk of text sits in its file.
struct Ctx {
    file: FileId,
    offset: usize,
}

type Result<T> = std::result::Result<T, Diagnostic>;

impl Ctx {
    fn span(&self, s: pest::Span) -> Span {
        Span::new(self.file, self.offset + s.start(), self.offset + s.end())
    }

    fn name(&self, p: Pair<Rule>) -> Name {
        Spanned::new(p.as_str().to_string(), self.span(p.as_span()))
    }

    /// A pest error as a diagnostic. `whole` is the file's text, or (for an expression or
    /// condition read out of YAML) the fragment itself, which starts at `self.offset`.
    fn syntax_error(&self, e: pest::error::Error<Rule>, chunk: &str, whole: &str) -> Diagnostic {
        use pest::error::{ErrorVariant, InputLocation};
        let pos = match e.location {
            InputLocation::Pos(p) => p,
            InputLocation::Span((s, _)) => s,
        };
        let fragment = std::ptr::eq(chunk, whole);
        let abs = self.offset + pos;
        // Where `pos` is in `whole`.
        let at = if fragment { pos } else { abs };
        // An opening quote with no closing quote on its line.
        if let Some(open) = unterminated_string(chunk, pos) {
            let line_end = chunk[open..].find('\n').map(|i| open + i).unwrap_or(chunk.len());
            return Diagnostic::error("E0104", "unterminated string")
                .at(
                    Span::new(self.file, self.offset + open, self.offset + line_end),
                    "this string has no closing `\"`",
                )
                .note("strings end on the line they start on");
        }
        // A word at the start of a line where a definition keyword should be.
        let at_end = pos >= chunk.trim_end().len();
        let at_line_start = whole[..at].rsplit('\n').next().is_some_and(|l| l.trim().is_empty());
        let word = word_at(whole, at);
        if !fragment && !at_end && at_line_start && word.chars().next().is_some_and(|c| c.is_alphabetic()) {
            let in_block = chunk[..pos].matches('{').count() > chunk[..pos].matches('}').count();
            if !in_block {
                return unknown_keyword(self.file, whole, abs);
            }
        }
        let expected = match &e.variant {
            ErrorVariant::ParsingError { positives, .. } => {
                let mut words: Vec<&str> = Vec::new();
                for w in positives.iter().filter_map(|r| rule_words(*r)) {
                    if !words.contains(&w) {
                        words.push(w);
                    }
                }
                words.truncate(6);
                words
            }
            ErrorVariant::CustomError { .. } => Vec::new(),
        };
        let found = if at_end {
            "the end of the definition".to_string()
        } else {
            found_token(whole, at)
        };
        let message = if expected.is_empty() {
            format!("unexpected {found}")
        } else {
            format!("expected {}, found {found}", join_or(&expected))
        };
        if at_end {
            // Point at the end of what was written, not at the next definition.
            let last = self.offset + chunk.trim_end().len();
            let start = last - chunk.trim_end().chars().next_back().map(|c| c.len_utf8()).unwrap_or(0);
            let mut d = Diagnostic::error("E0101", "syntax error: the definition ends too early")
                .at(Span::new(self.file, start, last), message);
            let code = chunk.split("//").next().unwrap_or(chunk);
            for (open, close) in [('(', ')'), ('[', ']'), ('{', '}')] {
                if code.matches(open).count() > code.matches(close).count() {
                    d = d.note(format!("a `{open}` is not closed"));
                }
            }
            return d;
        }
        let end = abs + whole[at..].chars().next().map(|c| c.len_utf8()).unwrap_or(0);
        Diagnostic::error("E0101", "syntax error").at(Span::new(self.file, abs, end), message)
    }

    fn item(&self, pair: Pair<Rule>, defs: &mut Definitions) -> Result<()> {
        match pair.as_rule() {
            Rule::source_def => defs.sources.push(self.source(pair)?),
            Rule::dimension_def => {
                let (name, expr, meta, span) = self.named_expr(pair)?;
                defs.dimensions.push(DimensionDef { name, expr, meta, span });
            }
            Rule::metric_def => {
                let (name, expr, meta, span) = self.named_expr(pair)?;
                defs.metrics.push(MetricDef { name, expr, meta, span });
            }
            Rule::target_def => defs.targets.push(self.target(pair)?),
            Rule::alert_def => defs.alerts.push(self.alert(pair)?),
            Rule::report_def => defs.reports.push(self.report(pair)?),
            Rule::EOI => {}
            r => unreachable!("item rule {r:?}"),
        }
        Ok(())
    }

    fn target(&self, pair: Pair<Rule>) -> Result<TargetDef> {
        let text = pair.as_str();
        let whole = self.span(pair.as_span());
        let start = whole.start as usize;
        let span = Span::new(whole.file, start, start + text.trim_end().len());
        let mut inner = pair.into_inner();
        inner.next(); // kw_target
        let metric = self.name(inner.next().expect("metric"));
        let goal_pair = inner.next().expect("goal");
        let mut g = goal_pair.into_inner();
        let first = g.next().expect("goal");
        let goal = if first.as_rule() == Rule::target_between {
            let mut levels = first.into_inner().filter(|p| p.as_rule() == Rule::level);
            let lo = self.level(levels.next().expect("low"))?;
            let hi = self.level(levels.next().expect("high"))?;
            GoalDef::Between(lo, hi)
        } else {
            let level = self.level(g.next().expect("level"))?;
            match first.as_str() {
                ">=" => GoalDef::AtLeast(level),
                "<=" => GoalDef::AtMost(level),
                _ => GoalDef::Reach(level),
            }
        };
        let mut t = TargetDef {
            metric,
            goal,
            per: None,
            from: None,
            by: None,
            tolerance: None,
            span,
        };
        for clause in inner {
            let c = clause.into_inner().next().expect("clause");
            let rule = c.as_rule();
            let value = c.into_inner().nth(1).expect("clause value");
            let vspan = self.span(value.as_span());
            match rule {
                Rule::per_clause => t.per = Some(self.name(value)),
                Rule::from_clause | Rule::deadline_clause => {
                    let end = rule == Rule::deadline_clause;
                    let d = self.date_value(value.as_str(), vspan, end)?;
                    if end {
                        t.by = Some(Spanned::new(d, vspan));
                    } else {
                        t.from = Some(Spanned::new(d, vspan));
                    }
                }
                _ => t.tolerance = Some(Spanned::new(self.amount(value)?, vspan)),
            }
        }
        Ok(t)
    }

    fn report(&self, pair: Pair<Rule>) -> Result<ReportDef> {
        let text = pair.as_str();
        let whole = self.span(pair.as_span());
        let start = whole.start as usize;
        let span = Span::new(whole.file, start, start + text.trim_end().len());
        let mut inner = pair.into_inner();
        inner.next(); // kw_report
        let name = self.name(inner.next().expect("report name"));
        let mut r = ReportDef {
            name,
            title: None,
            description: None,
            grain: None,
            range: None,
            metrics: Vec::new(),
            by: Vec::new(),
            span,
        };
        for p in inner {
            match p.as_rule() {
                Rule::label => {
                    let s = p.into_inner().next().expect("string");
                    let sspan = self.span(s.as_span());
                    r.title = Some(Spanned::new(unescape(s), sspan));
                }
                Rule::report_range => {
                    let t = p.into_inner().nth(1).expect("range");
                    let trimmed = t.as_str().trim_end();
                    let tspan = self.span(t.as_span());
                    let tspan = Span::new(tspan.file, tspan.start as usize, tspan.start as usize + trimmed.len());
                    r.range = Some(Spanned::new(trimmed.to_string(), tspan));
                }
                _ => {
                    let mut i = p.into_inner();
                    let key = self.name(i.next().expect("key"));
                    let value = self.value(i.next().expect("value"));
                    let names = |v: Value| -> Result<Vec<Name>> {
                        match v.kind {
                            ValueKind::List(items) => items.into_iter().map(|x| x.text()).collect(),
                            _ => Ok(vec![v.text()?]),
                        }
                    };
                    match key.value.as_str() {
                        "title" => r.title = Some(value.text()?),
                        "description" => r.description = Some(value.text()?),
                        "grain" => r.grain = Some(value.text()?),
                        "metrics" => r.metrics = names(value)?,
                        "by" => r.by = names(value)?,
                        other => {
                            return Err(Diagnostic::error("E0105", format!("unknown property `{other}`"))
                                .at(key.span, "not a property of a report")
                                .note(format!("properties here: {}", REPORT_KEYS.join(", ")))
                                .suggest(other, REPORT_KEYS.iter().copied()));
                        }
                    }
                }
            }
        }
        Ok(r)
    }

    fn alert(&self, pair: Pair<Rule>) -> Result<AlertDef> {
        let text = pair.as_str();
        let whole = self.span(pair.as_span());
        let start = whole.start as usize;
        let span = Span::new(whole.file, start, start + text.trim_end().len());
        let mut inner = pair.into_inner();
        inner.next(); // kw_alert
        let name = self.name(inner.next().expect("alert name"));
        let mut a = AlertDef {
            name,
            condition: None,
            for_periods: None,
            per: None,
            by: Vec::new(),
            severity: None,
            message: None,
            keep: None,
            volume: None,
            webhook: None,
            span,
        };
        for clause in inner {
            let c = clause.into_inner().next().expect("clause");
            match c.as_rule() {
                Rule::when_clause => {
                    let mut i = c.into_inner();
                    i.next(); // kw_when
                    a.condition = Some(self.condition(i.next().expect("condition"))?);
                    if let Some(f) = i.next() {
                        a.for_periods = Some(self.for_part(f)?);
                    }
                }
                Rule::severity_clause => a.severity = Some(self.name(c.into_inner().nth(1).expect("severity"))),
                Rule::message_clause => {
                    let m = c.into_inner().nth(1).expect("message");
                    let mspan = self.span(m.as_span());
                    a.message = Some(Spanned::new(unescape(m), mspan));
                }
                Rule::per_clause => a.per = Some(self.name(c.into_inner().nth(1).expect("grain"))),
                Rule::webhook_clause => {
                    let w = c.into_inner().nth(1).expect("url");
                    let wspan = self.span(w.as_span());
                    a.webhook = Some(Spanned::new(unescape(w), wspan));
                }
                Rule::keep_clause => {
                    let d = c.into_inner().nth(1).expect("duration");
                    let span = self.span(d.as_span());
                    let (amount, unit) = self.duration(d)?;
                    a.keep = Some(Spanned::new((amount, unit.value), span));
                }
                Rule::volume_clause => {
                    let mut i = c.into_inner().skip(1);
                    let metric = self.name(i.next().expect("metric"));
                    let n = i.next().expect("number");
                    let nspan = self.span(n.as_span());
                    a.volume = Some((metric, Spanned::new(parse_number(n.as_str(), nspan)?, nspan)));
                }
                _ => a.by = c.into_inner().skip(1).map(|p| self.name(p)).collect(),
            }
        }
        Ok(a)
    }

    /// `for 3 days`
    fn for_part(&self, p: Pair<Rule>) -> Result<Spanned<(f64, String)>> {
        let d = p.into_inner().nth(1).expect("duration");
        let span = self.span(d.as_span());
        let (amount, unit) = self.duration(d)?;
        Ok(Spanned::new((amount, unit.value), span))
    }

    fn condition(&self, pair: Pair<Rule>) -> Result<Spanned<ConditionDef>> {
        let span = self.span(pair.as_span());
        let c = pair.into_inner().next().expect("condition");
        let cond = match c.as_rule() {
            Rule::source_condition => {
                let mut i = c.into_inner();
                i.next(); // kw_source
                let source = self.name(i.next().expect("source"));
                let what = i.next().expect("stale or empty");
                if what.as_rule() == Rule::stale {
                    let d = what.into_inner().nth(2).expect("duration");
                    let dspan = self.span(d.as_span());
                    let (amount, unit) = self.duration(d)?;
                    ConditionDef::Stale {
                        source,
                        older: Spanned::new((amount, unit.value), dspan),
                    }
                } else {
                    ConditionDef::Empty { source }
                }
            }
            _ => {
                let mut i = c.into_inner();
                let metric = self.name(i.next().expect("metric"));
                let rest = i.next().expect("condition");
                match rest.as_rule() {
                    Rule::anomaly => {
                        let mut method = None;
                        let mut threshold = None;
                        let mut window = None;
                        let mut weekday = false;
                        for p in rest.into_inner() {
                            match p.as_rule() {
                                Rule::anomaly_method => method = Some(self.name(p)),
                                Rule::number => {
                                    let span = self.span(p.as_span());
                                    threshold = Some(Spanned::new(parse_number(p.as_str(), span)?, span));
                                }
                                Rule::duration => {
                                    let span = self.span(p.as_span());
                                    let (amount, unit) = self.duration(p)?;
                                    window = Some(Spanned::new((amount, unit.value), span));
                                }
                                Rule::by_weekday => weekday = true,
                                _ => {}
                            }
                        }
                        ConditionDef::Anomaly {
                            metric,
                            method,
                            threshold,
                            window,
                            weekday,
                        }
                    }
                    Rule::off_target => {
                        let pace = rest.into_inner().nth(1).is_some_and(|p| p.as_rule() == Rule::kw_pace);
                        ConditionDef::OffTarget { metric, pace }
                    }
                    Rule::change => {
                        let mut against = None;
                        let mut op = BinOp::Lt;
                        let mut amount = None;
                        for p in rest.into_inner() {
                            match p.as_rule() {
                                Rule::change_base => {
                                    let words = p.as_str().split_whitespace().collect::<Vec<_>>().join(" ");
                                    let base = if words == "previous" { "previous" } else { "year" };
                                    against = Some(Spanned::new(base.to_string(), self.span(p.as_span())));
                                }
                                Rule::compare_op => op = compare_op(p.as_str()),
                                Rule::percent_signed | Rule::signed_number => amount = Some(self.signed_amount(p)?),
                                _ => {}
                            }
                        }
                        ConditionDef::Change {
                            metric,
                            against,
                            op,
                            amount: amount.expect("amount"),
                        }
                    }
                    _ => {
                        let mut levels = Vec::new();
                        for t in rest.into_inner() {
                            let mut i = t.into_inner();
                            let op = compare_op(i.next().expect("op").as_str());
                            let amount = self.signed_amount(i.next().expect("level"))?;
                            let severity = i.next().map(|p| self.name(p));
                            levels.push(ThresholdDef { op, amount, severity });
                        }
                        ConditionDef::Threshold { metric, levels }
                    }
                }
            }
        };
        Ok(Spanned::new(cond, span))
    }

    /// `-20%` or `-20`, with its place.
    fn signed_amount(&self, p: Pair<Rule>) -> Result<Spanned<Amount>> {
        let span = self.span(p.as_span());
        let text = p.as_str();
        let (number, percent) = match text.strip_suffix('%') {
            Some(n) => (n, true),
            None => (text, false),
        };
        let value = parse_number(number, span)?;
        Ok(Spanned::new(
            Amount {
                value: if percent { value / 100.0 } else { value },
                percent,
            },
            span,
        ))
    }

    /// `120000`, `25%`, `{ 2026-01: 100000 }` or `schedule("file.csv")`.
    fn level(&self, pair: Pair<Rule>) -> Result<LevelDef> {
        let span = self.span(pair.as_span());
        let p = pair.into_inner().next().expect("level");
        let kind = match p.as_rule() {
            Rule::level_schedule => {
                let mut entries = Vec::new();
                for e in p.into_inner() {
                    let mut i = e.into_inner();
                    let d = i.next().expect("period");
                    let dspan = self.span(d.as_span());
                    let date = self.date_value(d.as_str(), dspan, false)?;
                    entries.push((Spanned::new(date, dspan), self.amount(i.next().expect("value"))?));
                }
                LevelKind::Schedule(entries)
            }
            Rule::level_file => {
                let f = p.into_inner().nth(1).expect("file");
                let fspan = self.span(f.as_span());
                LevelKind::File(Spanned::new(unescape(f), fspan))
            }
            _ => LevelKind::Constant(self.amount(p)?),
        };
        Ok(LevelDef { kind, span })
    }

    /// A number or a percent, as written.
    fn amount(&self, p: Pair<Rule>) -> Result<Amount> {
        let span = self.span(p.as_span());
        Ok(match p.as_rule() {
            Rule::percent => {
                let n = p.into_inner().next().expect("number");
                Amount {
                    value: parse_number(n.as_str(), span)? / 100.0,
                    percent: true,
                }
            }
            _ => Amount {
                value: parse_number(p.as_str(), span)?,
                percent: false,
            },
        })
    }

    /// `2026-01-31`, or `2026-01`: its first day (its last when `end`).
    fn date_value(&self, text: &str, span: Span, end: bool) -> Result<NaiveDate> {
        crate::time::parse_day(text, end).ok_or_else(|| bad_date(span, text))
    }

    fn source(&self, pair: Pair<Rule>) -> Result<SourceDef> {
        let span = self.span(pair.as_span());
        let mut inner = pair.into_inner();
        inner.next(); // kw_source
        let name = self.name(inner.next().expect("source name"));
        let mut src = SourceDef {
            name,
            file: None,
            format: None,
            time: None,
            key: None,
            joins: Vec::new(),
            meta: Meta::default(),
            span,
        };
        for p in inner {
            match p.as_rule() {
                Rule::join_clause => {
                    let span = self.span(p.as_span());
                    let mut j = p.into_inner();
                    j.next(); // kw_join
                    let target = self.name(j.next().expect("join target"));
                    j.next(); // kw_on
                    let column = self.name(j.next().expect("join column"));
                    let target_column = j.next().map(|c| self.name(c));
                    src.joins.push(JoinDef {
                        target,
                        column,
                        target_column,
                        span,
                    });
                }
                Rule::property => {
                    let (key, value) = self.property(p);
                    match key.value.as_str() {
                        "file" | "path" => src.file = Some(value.text()?),
                        "format" => src.format = Some(value.text()?),
                        "time" => src.time = Some(value.text()?),
                        "key" => src.key = Some(value.text()?),
                        _ => self.meta_property(&mut src.meta, &key, value, SOURCE_KEYS)?,
                    }
                }
                r => unreachable!("source rule {r:?}"),
            }
        }
        Ok(src)
    }

    fn named_expr(&self, pair: Pair<Rule>) -> Result<(Name, Expr, Meta, Span)> {
        let span = self.span(pair.as_span());
        let mut inner = pair.into_inner();
        inner.next(); // keyword
        let name = self.name(inner.next().expect("name"));
        let mut meta = Meta::default();
        let mut expr = None;
        for p in inner {
            match p.as_rule() {
                Rule::label => {
                    let s = p.into_inner().next().expect("string");
                    meta.label = Some(Spanned::new(unescape(s.clone()), self.span(s.as_span())));
                }
                Rule::expr => expr = Some(self.expr(p)?),
                Rule::block => {
                    for prop in p.into_inner() {
                        let (key, value) = self.property(prop);
                        self.meta_property(&mut meta, &key, value, META_KEYS)?;
                    }
                }
                r => unreachable!("definition rule {r:?}"),
            }
        }
        Ok((name, expr.expect("expression"), meta, span))
    }

    fn property(&self, pair: Pair<Rule>) -> (Name, Value) {
        let mut inner = pair.into_inner();
        let key = self.name(inner.next().expect("key"));
        let value = self.value(inner.next().expect("value"));
        (key, value)
    }

    fn value(&self, pair: Pair<Rule>) -> Value {
        let p = pair.into_inner().next().expect("value");
        let span = self.span(p.as_span());
        let kind = match p.as_rule() {
            Rule::string => ValueKind::Text(unescape(p)),
            Rule::ident | Rule::number | Rule::percent => ValueKind::Text(p.as_str().to_string()),
            Rule::call_value => {
                let mut i = p.into_inner();
                let f = i.next().expect("fn").as_str().to_string();
                let a = i.next().expect("arg").as_str().to_string();
                ValueKind::Call(f, a)
            }
            Rule::list => ValueKind::List(p.into_inner().map(|v| self.value(v)).collect()),
            r => unreachable!("value rule {r:?}"),
        };
        Value { kind, span }
    }

    fn meta_property(&self, meta: &mut Meta, key: &Name, value: Value, allowed: &[&str]) -> Result<()> {
        match key.value.as_str() {
            "label" => meta.label = Some(value.text()?),
            "description" => meta.description = Some(value.text()?),
            "owner" => meta.owner = Some(value.text()?),
            "unit" => meta.unit = Some(value.text()?),
            "tags" => {
                meta.tags = match value.kind {
                    ValueKind::List(items) => items.into_iter().map(|v| v.text()).collect::<Result<_>>()?,
                    _ => vec![value.text()?],
                }
            }
            "format" => {
                let span = value.span;
                let (f, a) = match &value.kind {
                    ValueKind::Text(t) => (t.clone(), None),
                    ValueKind::Call(f, a) => (f.clone(), Some(a.clone())),
                    ValueKind::List(_) => (String::new(), None),
                };
                let format = Format::parse(&f, a.as_deref()).ok_or_else(|| bad_format(span, &f))?;
                meta.format = Some(Spanned::new(format, span));
            }
            "good" => {
                let t = value.text()?;
                meta.good = Some(Spanned::new(parse_direction(&t)?, t.span));
            }
            other => {
                return Err(Diagnostic::error("E0105", format!("unknown property `{other}`"))
                    .at(key.span, "not a property here")
                    .note(format!("properties here: {}", allowed.join(", ")))
                    .suggest(other, allowed.iter().copied()));
            }
        }
        Ok(())
    }

    fn expr(&self, pair: Pair<Rule>) -> Result<Expr> {
        PRATT
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let span = self.span(op.as_span()).to(rhs.span);
                let kind = match op.as_rule() {
                    Rule::op_not => ExprKind::Not(Box::new(rhs)),
                    _ => ExprKind::Neg(Box::new(rhs)),
                };
                Ok(Expr { kind, span })
            })
            .map_postfix(|lhs, op| {
                let lhs = lhs?;
                let span = lhs.span.to(self.span(op.as_span()));
                let kind = match op.as_rule() {
                    Rule::is_null => ExprKind::IsNull {
                        expr: Box::new(lhs),
                        negated: false,
                    },
                    Rule::is_not_null => ExprKind::IsNull {
                        expr: Box::new(lhs),
                        negated: true,
                    },
                    Rule::offset => {
                        let mut back = false;
                        let mut amount = 0.0;
                        let mut unit = None;
                        for p in op.into_inner() {
                            match p.as_rule() {
                                Rule::offset_sign => back = p.as_str() == "-",
                                Rule::number => amount = parse_number(p.as_str(), self.span(p.as_span()))?,
                                _ => unit = Some(self.name(p)),
                            }
                        }
                        ExprKind::Offset {
                            expr: Box::new(lhs),
                            amount: if back { -amount } else { amount },
                            unit: unit.expect("unit"),
                        }
                    }
                    Rule::in_list => {
                        let mut negated = false;
                        let mut list = Vec::new();
                        for p in op.into_inner() {
                            match p.as_rule() {
                                Rule::negation => negated = true,
                                Rule::expr => list.push(self.expr(p)?),
                                _ => {}
                            }
                        }
                        ExprKind::InList {
                            expr: Box::new(lhs),
                            list,
                            negated,
                        }
                    }
                    _ => {
                        let mut negated = false;
                        let mut bounds = Vec::new();
                        for p in op.into_inner() {
                            match p.as_rule() {
                                Rule::negation => negated = true,
                                Rule::operand => bounds.push(self.operand(p)?),
                                _ => {}
                            }
                        }
                        let high = bounds.pop().expect("high");
                        let low = bounds.pop().expect("low");
                        ExprKind::Between {
                            expr: Box::new(lhs),
                            low: Box::new(low),
                            high: Box::new(high),
                            negated,
                        }
                    }
                };
                Ok(Expr { kind, span })
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                let bin = match op.as_rule() {
                    Rule::op_or => BinOp::Or,
                    Rule::op_and => BinOp::And,
                    Rule::op_eq => BinOp::Eq,
                    Rule::op_ne => BinOp::Ne,
                    Rule::op_lt => BinOp::Lt,
                    Rule::op_le => BinOp::Le,
                    Rule::op_gt => BinOp::Gt,
                    Rule::op_ge => BinOp::Ge,
                    Rule::op_add => BinOp::Add,
                    Rule::op_sub => BinOp::Sub,
                    Rule::op_mul => BinOp::Mul,
                    _ => BinOp::Div,
                };
                let span = lhs.span.to(rhs.span);
                Ok(Expr {
                    kind: ExprKind::Binary(bin, Box::new(lhs), Box::new(rhs)),
                    span,
                })
            })
            .parse(pair.into_inner())
    }

    /// `7 days`: the amount and the unit as written.
    fn duration(&self, pair: Pair<Rule>) -> Result<(f64, Name)> {
        let mut i = pair.into_inner();
        let n = i.next().expect("number");
        let amount = parse_number(n.as_str(), self.span(n.as_span()))?;
        Ok((amount, self.name(i.next().expect("unit"))))
    }

    fn operand(&self, pair: Pair<Rule>) -> Result<Expr> {
        let span = self.span(pair.as_span());
        let mut inner: Vec<Pair<Rule>> = pair.into_inner().collect();
        let primary = self.primary(inner.pop().expect("primary"))?;
        if inner.is_empty() {
            Ok(primary)
        } else {
            Ok(Expr {
                kind: ExprKind::Neg(Box::new(primary)),
                span,
            })
        }
    }

    fn primary(&self, p: Pair<Rule>) -> Result<Expr> {
        let span = self.span(p.as_span());
        let kind = match p.as_rule() {
            Rule::expr => return self.expr(p),
            Rule::number => ExprKind::Number(parse_number(p.as_str(), span)?),
            Rule::percent => {
                let n = p.into_inner().next().expect("number");
                ExprKind::Number(parse_number(n.as_str(), span)? / 100.0)
            }
            Rule::string => ExprKind::String(unescape(p)),
            Rule::kw_true => ExprKind::Bool(true),
            Rule::kw_false => ExprKind::Bool(false),
            Rule::kw_null => ExprKind::Null,
            Rule::date => {
                let text = p.as_str();
                if text.len() == 7 {
                    let d = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
                        .map_err(|_| bad_date(span, text))?;
                    ExprKind::Month(d)
                } else {
                    ExprKind::Date(NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad_date(span, text))?)
                }
            }
            Rule::ident => ExprKind::Name(p.as_str().to_string()),
            Rule::duration => {
                let (amount, unit) = self.duration(p)?;
                ExprKind::Duration { amount, unit }
            }
            Rule::conversion => {
                let mut i = p.into_inner();
                let count = i.next().expect("kind").as_str() == "conversions";
                let side = |pair: Pair<Rule>| -> Result<(Name, Option<Expr>)> {
                    let mut s = pair.into_inner();
                    let name = self.name(s.next().expect("source"));
                    let filter = match s.next() {
                        Some(w) => Some(self.expr(w.into_inner().nth(1).expect("where expr"))?),
                        None => None,
                    };
                    Ok((name, filter))
                };
                let (base, base_filter) = side(i.next().expect("base"))?;
                let (target, target_filter) = side(i.next().expect("target"))?;
                let entity = self.name(i.nth(1).expect("entity"));
                let within = i.nth(1).expect("window");
                let within_span = self.span(within.as_span());
                let (amount, unit) = self.duration(within)?;
                ExprKind::Conversion(Box::new(ConversionExpr {
                    count,
                    base,
                    base_filter,
                    target,
                    target_filter,
                    entity,
                    within: Spanned::new((amount, unit.value), within_span),
                }))
            }
            Rule::qualified => {
                let mut i = p.into_inner();
                let s = self.name(i.next().expect("source"));
                let c = self.name(i.next().expect("column"));
                ExprKind::Qualified(s, c)
            }
            Rule::call => {
                let mut i = p.into_inner();
                let name = self.name(i.next().expect("function"));
                let mut args = Vec::new();
                let mut filter = None;
                for a in i {
                    match a.as_rule() {
                        Rule::expr => args.push(self.expr(a)?),
                        Rule::where_clause => {
                            let e = a.into_inner().nth(1).expect("where expr");
                            filter = Some(Box::new(self.expr(e)?));
                        }
                        r => unreachable!("call rule {r:?}"),
                    }
                }
                ExprKind::Call { name, args, filter }
            }
            r => unreachable!("primary rule {r:?}"),
        };
        Ok(Expr { kind, span })
    }
}

/// A property value before it is given a meaning.
struct Value {
    kind: ValueKind,
    span: Span,
}

enum ValueKind {
    Text(String),
    Call(String, String),
    List(Vec<Value>),
}

impl Value {
    fn text(self) -> Result<Spanned<String>> {
        match self.kind {
            ValueKind::Text(t) => Ok(Spanned::new(t, self.span)),
            _ => Err(Diagnostic::error("E0106", "expected a single value").at(self.span, "a name or a string")),
        }
    }
}

const SOURCE_KEYS: &[&str] = &["file", "format", "time", "key", "label", "description", "owner", "tags"];
const REPORT_KEYS: &[&str] = &["title", "description", "grain", "range", "metrics", "by"];
const META_KEYS: &[&str] = &["label", "description", "owner", "tags", "unit", "format", "good"];

pub(crate) fn parse_direction(t: &Spanned<String>) -> Result<Direction> {
    match t.value.as_str() {
        "up" | "higher" => Ok(Direction::Up),
        "down" | "lower" => Ok(Direction::Down),
        other => Err(Diagnostic::error("E0107", format!("unknown direction `{other}`"))
            .at(t.span, "expected `up` or `down`")
            .suggest(other, ["up", "down"])),
    }
}

pub(crate) fn bad_format(span: Span, f: &str) -> Diagnostic {
    Diagnostic::error("E0108", format!("unknown format `{f}`"))
        .at(span, "expected number, percent, duration or currency(CODE)")
        .suggest(f, ["number", "percent", "duration", "currency"])
}

fn compare_op(text: &str) -> BinOp {
    match text {
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        _ => BinOp::Ge,
    }
}

fn bad_date(span: Span, text: &str) -> Diagnostic {
    Diagnostic::error("E0109", format!("`{text}` is not a valid date")).at(span, "expected YYYY-MM-DD or YYYY-MM")
}

fn parse_number(text: &str, span: Span) -> Result<f64> {
    text.parse::<f64>()
        .map_err(|_| Diagnostic::error("E0110", format!("`{text}` is not a number")).at(span, "not a number"))
}

fn unescape(p: Pair<Rule>) -> String {
    let inner = p.into_inner().next().map(|i| i.as_str()).unwrap_or("");
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The offset of a `"` before `pos` on the same line that has no closing quote, if any.
fn unterminated_string(chunk: &str, pos: usize) -> Option<usize> {
    let line_start = chunk[..pos.min(chunk.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = chunk[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(chunk.len());
    let line = &chunk[line_start..line_end];
    let mut open = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if line[..i].ends_with("//") && open.is_none() {
            break;
        }
        match c {
            '\\' if open.is_some() && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => open = if open.is_some() { None } else { Some(line_start + i) },
            _ => {}
        }
        escaped = false;
    }
    open
}

fn found_token(text: &str, at: usize) -> String {
    if at >= text.len() {
        return "the end of the file".into();
    }
    let word = word_at(text, at);
    if !word.is_empty() {
        return format!("`{word}`");
    }
    let c = text[at..].chars().next().unwrap_or(' ');
    match c {
        '\n' | '\r' => "the end of the line".into(),
        c => format!("`{}`", c.escape_default()),
    }
}

fn join_or(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// How a rule reads in "expected ..." messages; `None` hides it.
fn rule_words(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident => "a name",
        Rule::expr | Rule::primary | Rule::operand => "an expression",
        Rule::qualified => "`source.column`",
        Rule::call => "a function call",
        Rule::string => "a string",
        Rule::number | Rule::percent => "a number",
        Rule::date => "a date",
        Rule::value => "a value",
        Rule::property => "a property (`key: value`)",
        Rule::join_clause => "`join`",
        Rule::block => "`{`",
        Rule::label => "a label in quotes",
        Rule::where_clause => "`where`",
        Rule::duration => "a duration (`7 days`)",
        Rule::time_unit => "a unit of time (days, weeks, months, quarters, years)",
        Rule::conversion => "a conversion",
        Rule::kw_by => "`by`",
        Rule::kw_within => "`within`",
        Rule::op_or
        | Rule::op_and
        | Rule::op_eq
        | Rule::op_ne
        | Rule::op_lt
        | Rule::op_le
        | Rule::op_gt
        | Rule::op_ge
        | Rule::op_add
        | Rule::op_sub
        | Rule::op_mul
        | Rule::op_div => "an operator",
        Rule::is_null | Rule::is_not_null | Rule::in_list | Rule::between => "an operator",
        Rule::op_not | Rule::op_neg => "an expression",
        Rule::source_def
        | Rule::dimension_def
        | Rule::metric_def
        | Rule::target_def
        | Rule::alert_def
        | Rule::report_def => "a definition",
        Rule::alert_clause | Rule::when_clause => "`when`, `severity`, `message`, `per`, `by`, `keep` or `volume`",
        Rule::anomaly => "`anomaly`",
        Rule::condition | Rule::metric_condition | Rule::source_condition => "a condition",
        Rule::thresholds | Rule::threshold | Rule::compare_op => "`<`, `<=`, `>` or `>=`",
        Rule::change => "`change`",
        Rule::off_target => "`off target` or `off pace`",
        Rule::severity_word => "`warning` or `critical`",
        Rule::for_part => "`for`",
        Rule::kw_older | Rule::stale => "`older than`",
        Rule::kw_empty => "`empty`",
        Rule::target_goal | Rule::target_op | Rule::target_between => "`>=`, `<=`, `=` or `between`",
        Rule::level | Rule::level_schedule | Rule::level_file => "a level (a number, `25%`, `{ 2026-01: 100 }`)",
        Rule::target_clause | Rule::per_clause | Rule::from_clause | Rule::deadline_clause | Rule::tolerance_clause => {
            "`per`, `from`, `by` or `tolerance`"
        }
        Rule::EOI => "the end of the definition",
        Rule::kw_on => "`on`",
        Rule::kw_and => "`and`",
        _ => return None,
    })
}
