//! Rendering results for people (aligned tables) and machines (CSV, JSON).

use crate::ast::Format;
use crate::run::ResultTable;

/// A number as a person reads it, in a metric's format.
pub fn format_value(v: Option<f64>, format: &Format) -> String {
    let Some(v) = v else { return String::new() };
    match format {
        Format::Percent => format!("{}%", group(v * 100.0, 1)),
        Format::Currency(code) => {
            let symbol = match code.as_str() {
                "USD" => "$",
                "EUR" => "€",
                "GBP" => "£",
                "JPY" => "¥",
                _ => "",
            };
            let sign = if v < 0.0 { "-" } else { "" };
            if symbol.is_empty() {
                format!("{sign}{} {code}", group(v.abs(), 2))
            } else {
                format!("{sign}{symbol}{}", group(v.abs(), 2))
            }
        }
        Format::Duration | Format::Number => {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                group(v, 0)
            } else {
                group(v, if v.abs() >= 100.0 { 2 } else { 4 })
            }
        }
    }
}

/// `1234567.891` → `1,234,567.89`.
fn group(v: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (text.clone(), None),
    };
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(&f);
    }
    if v < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') {
        format!("-{out}")
    } else {
        out
    }
}

/// A plain number for machines: shortest text that reads back as the same f64.
pub fn machine_value(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Some(v) => format!("{v}"),
    }
}

fn header(t: &ResultTable) -> Vec<String> {
    let mut h = Vec::new();
    if let Some(g) = t.grain {
        h.push(g.name().to_string());
    }
    h.extend(t.dimensions.iter().cloned());
    h.extend(t.metrics.iter().cloned());
    h
}

/// An aligned text table; numbers right-aligned, in each metric's format.
pub fn table(t: &ResultTable, formats: &[Format]) -> String {
    let head = header(t);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in &t.rows {
        let mut row = Vec::new();
        if let Some(p) = r.period {
            row.push(p.to_string());
        }
        row.extend(
            r.dimensions
                .iter()
                .map(|d| d.as_deref().map_or_else(|| "(none)".into(), shown_cell)),
        );
        row.extend(r.values.iter().zip(formats).map(|(v, f)| format_value(*v, f)));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let left = head.len() - t.metrics.len();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // Padded by hand: the formatter's widths stop at 65,535.
                let pad = " ".repeat(widths[i] - c.chars().count());
                if i < left {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&head);
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// The longest text a table cell shows; CSV and JSON keep every value whole.
pub const MAX_CELL: usize = 120;

/// A text value as one line of a table cell: control characters escaped, and a value
/// longer than [`MAX_CELL`] cut with an ellipsis.
pub fn shown_cell(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n + 1 == MAX_CELL && text.chars().nth(MAX_CELL).is_some() {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Text in a Markdown table cell: HTML, links, code and pipes escaped, line breaks made
/// spaces, so that the text reads as written and cannot break the table.
pub fn markdown_cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            // (Emphasis is left as written: it cannot break the table or add markup.)
            '\\' | '`' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// CSV with a header; empty fields for null.
pub fn csv(t: &ResultTable) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = header(t).iter().map(|h| quote(h)).collect::<Vec<_>>().join(",") + "\n";
    for r in &t.rows {
        let mut cells = Vec::new();
        if let Some(p) = r.period {
            cells.push(p.to_string());
        }
        cells.extend(r.dimensions.iter().map(|d| quote(d.as_deref().unwrap_or(""))));
        cells.extend(r.values.iter().map(|v| machine_value(*v)));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// JSON: `{"grain", "dimensions", "metrics", "rows": [{"period", <dim>: .., <metric>: ..}]}`.
pub fn json(t: &ResultTable) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = t
        .rows
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            if let Some(p) = r.period {
                o.insert("period".into(), p.to_string().into());
            }
            for (d, v) in t.dimensions.iter().zip(&r.dimensions) {
                o.insert(d.clone(), v.clone().map(Into::into).unwrap_or(serde_json::Value::Null));
            }
            for (m, v) in t.metrics.iter().zip(&r.values) {
                let value = v
                    .and_then(|x| {
                        if x.fract() == 0.0 && x.abs() < 1e15 {
                            Some(serde_json::Value::from(x as i64))
                        } else {
                            serde_json::Number::from_f64(x).map(serde_json::Value::Number)
                        }
                    })
                    .unwrap_or(serde_json::Value::Null);
                o.insert(m.clone(), value);
            }
            serde_json::Value::Object(o)
        })
        .collect();
    serde_json::json!({
        "grain": t.grain.map(|g| g.name()),
        "dimensions": t.dimensions,
        "metrics": t.metrics,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            format_value(Some(1234567.891), &Format::Currency("USD".into())),
            "$1,234,567.89"
        );
        assert_eq!(format_value(Some(-12.5), &Format::Currency("USD".into())), "-$12.50");
        assert_eq!(format_value(Some(0.2345), &Format::Percent), "23.4%");
        assert_eq!(format_value(Some(1500.0), &Format::Number), "1,500");
        assert_eq!(format_value(Some(-0.5), &Format::Number), "-0.5000");
        assert_eq!(format_value(None, &Format::Number), "");
        assert_eq!(machine_value(Some(3.0)), "3");
        assert_eq!(machine_value(Some(0.1)), "0.1");
    }

    #[test]
    fn cells_are_one_line_and_cut() {
        assert_eq!(shown_cell("a\nb\tc"), "a\\nb\\tc");
        let long = "x".repeat(70_000);
        let cut = shown_cell(&long);
        assert_eq!(cut.chars().count(), MAX_CELL);
        assert!(cut.ends_with('…'));
        let exact = "y".repeat(MAX_CELL);
        assert_eq!(shown_cell(&exact), exact);
    }

    #[test]
    fn markdown_cells_escape_html_and_the_table() {
        assert_eq!(
            markdown_cell("<img src=x onerror=alert(1)> a|b\n*c*"),
            "&lt;img src=x onerror=alert(1)&gt; a\\|b *c*"
        );
    }
}
