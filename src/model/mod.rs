//! Resolve and type-check: [`ast::Definitions`] plus the sources' schemas to a typed [`Model`].
//!
//! Every problem of the project is collected; the model exists only when there is none.

mod types;

pub use types::*;

use crate::ast::{self, BinOp, Definitions, Expr, ExprKind, Format, GoalDef};
use crate::data::{self, SourceData};
use crate::diagnostic::{Diagnostic, Severity};
use crate::settings::Settings;
use crate::span::{Files, Span};
use crate::time::Grain;
use datafusion::prelude::SessionContext;
use std::collections::HashMap;

/// Aggregate functions of the expression language.
pub const AGGREGATES: &[&str] = &[
    "count",
    "count_distinct",
    "sum",
    "avg",
    "min",
    "max",
    "median",
    "percentile",
];
/// Functions of metrics over time and breakdowns.
pub const TIME_FUNCTIONS: &[&str] = &["rolling", "cumulative", "to_date", "share", "last", "first"];

/// A period named in a definition (`per: week`, `grain: month`).
pub fn grain_of(p: &crate::span::Spanned<String>) -> Result<Grain, Diagnostic> {
    Grain::parse(&p.value).ok_or_else(|| {
        Diagnostic::error("E0545", format!("`{}` is not a period", p.value))
            .at(p.span, "expected day, week, month, quarter or year")
            .suggest(&p.value, Grain::ALL.iter().map(|g| g.name()))
    })
}

/// The variables of an alert's message template (and the names of its `by` dimensions).
pub const ALERT_VARIABLES: &[&str] = &[
    "alert",
    "metric",
    "source",
    "severity",
    "period",
    "value",
    "level",
    "earlier",
    "change",
    "target",
    "periods",
    "expected",
    "dimensions",
];
/// Row-level functions of the expression language.
pub const FUNCTIONS: &[&str] = &["days_between", "hours_between", "coalesce", "lower", "upper"];

/// Resolves definitions against the sources' schemas. Returns the model when there are no
/// errors, and every diagnostic found (warnings too).
pub async fn resolve(
    ctx: &SessionContext,
    settings: &Settings,
    files: &Files,
    defs: Definitions,
) -> (Option<Model>, Vec<Diagnostic>) {
    let mut r = Resolver::new(files, &defs);
    r.index_names();
    // Read every source's schema at once.
    let opens = defs.sources.iter().map(|s| async {
        let file = s.file.as_ref()?;
        Some(
            data::open(
                ctx,
                settings,
                &s.name.value,
                &file.value,
                s.format.as_ref().map(|f| f.value.as_str()),
                file.span,
            )
            .await,
        )
    });
    let opened = futures::future::join_all(opens).await;
    for (s, o) in defs.sources.iter().zip(opened) {
        match o {
            Some(Ok(d)) => r.data.push(Some(d)),
            Some(Err(d)) => {
                r.diags.push(d);
                r.data.push(None)
            }
            None => {
                r.diags.push(
                    Diagnostic::error("E0501", format!("source `{}` has no `file`", s.name.value))
                        .at(s.name.span, "every source reads a file, a glob or a folder"),
                );
                r.data.push(None)
            }
        }
    }
    let sources = r.sources();
    let dimensions = r.dimensions();
    let metrics = r.metrics();
    r.cycles(&metrics);
    r.time_checks(&metrics);
    let targets = r.targets(settings, &metrics);
    let alerts = r.alerts(&metrics, &targets);
    let reports = r.reports();
    let failed = r.diags.iter().any(|d| d.severity == Severity::Error);
    let diags = std::mem::take(&mut r.diags);
    if failed {
        return (None, diags);
    }
    // Without errors every definition resolved, so ids are positions in the definitions.
    let model = Model {
        sources: sources.into_iter().map(|s| s.expect("checked")).collect(),
        dimensions: dimensions.into_iter().flatten().collect(),
        metrics: metrics.into_iter().flatten().collect(),
        measures: r.measures,
        targets,
        alerts,
        reports,
        source_index: r.source_index,
        dimension_index: r.dim_index,
        metric_index: r.metric_index,
    };
    let unjoined = breakdowns(&model, &defs);
    if !unjoined.is_empty() {
        return (None, diags.into_iter().chain(unjoined).collect());
    }
    (Some(model), diags)
}

/// Reports and alerts break their metrics down by dimensions: each metric's sources must
/// join the dimensions' (what `query --dim` finds at the command line, `check` finds here).
fn breakdowns(model: &Model, defs: &Definitions) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut check = |what: &str, name: &str, metrics: &[MetricId], by: &[crate::ast::Name]| {
        for b in by {
            let Some(&d) = model.dimension_index.get(&b.value) else {
                continue;
            };
            for &m in metrics {
                if let Some((from, to)) = model.unjoined(m, d) {
                    out.push(
                        Diagnostic::error(
                            "E0586",
                            format!(
                                "{what} `{name}` breaks metric `{}` down by `{}`, which reads source `{}`; source `{}` does not join it",
                                model.metrics[m].name, b.value, model.sources[to].name, model.sources[from].name
                            ),
                        )
                        .at(b.span, "this breakdown")
                        .also(model.sources[from].span, "declare a many-to-one join in this source")
                        .note(format!("or leave `{}` out of this {what}'s `by`", b.value)),
                    );
                    break;
                }
            }
        }
    };
    for r in &model.reports {
        if let Some(d) = defs.reports.iter().find(|d| d.name.value == r.name) {
            check("report", &r.name, &r.metrics, &d.by);
        }
    }
    for a in &model.alerts {
        if let Some(d) = defs.alerts.iter().find(|d| d.name.value == a.name) {
            check(
                "alert",
                &a.name,
                &a.condition.metric().into_iter().collect::<Vec<_>>(),
                &d.by,
            );
        }
    }
    out
}

/// Resolves a filter (`--where`) against a source of a model.
pub fn resolve_filter(model: &Model, files: &Files, source: SourceId, expr: &Expr) -> Result<RowExpr, Diagnostic> {
    let defs = Definitions::default();
    let mut r = Resolver::new(files, &defs);
    r.source_index = model.source_index.clone();
    r.schemas = model.sources.iter().map(|s| Some(s.data.schema.clone())).collect();
    r.source_names = model.sources.iter().map(|s| s.name.clone()).collect();
    r.reach = model
        .sources
        .iter()
        .map(|s| s.joins.iter().map(|j| j.target).collect())
        .collect();
    r.dims = model.dimensions.iter().map(|d| Some(d.expr.clone())).collect();
    r.dim_index = model.dimension_index.clone();
    match r.row_expr(expr, source) {
        Ok(e) if e.ty == ValueType::Bool || e.ty == ValueType::Null => Ok(e),
        Ok(e) => Err(Diagnostic::usage(
            "E0601",
            format!("a filter must be true or false, this is a {}", e.ty.name()),
        )
        .at(expr.span, "not a condition")),
        Err(()) => Err(r
            .diags
            .into_iter()
            .next()
            .map(|mut d| {
                d.category = crate::diagnostic::Category::Usage;
                d
            })
            .unwrap_or_else(|| Diagnostic::usage("E0601", "invalid filter"))),
    }
}

struct Resolver<'a> {
    files: &'a Files,
    defs: &'a Definitions,
    diags: Vec<Diagnostic>,
    data: Vec<Option<SourceData>>,
    source_index: HashMap<String, SourceId>,
    source_names: Vec<String>,
    schemas: Vec<Option<datafusion::arrow::datatypes::SchemaRef>>,
    /// Sources each source joins directly.
    reach: Vec<Vec<SourceId>>,
    dim_index: HashMap<String, DimensionId>,
    dims: Vec<Option<RowExpr>>,
    metric_index: HashMap<String, MetricId>,
    measures: Vec<Measure>,
    /// Windows, offsets and snapshots, checked once every metric is resolved.
    time_uses: Vec<TimeUse>,
}

/// A use of time in a metric: what needs a time column, and what may not be windowed.
struct TimeUse {
    span: Span,
    /// `rolling`, `an offset`, ...
    what: String,
    formula: Formula,
    window: bool,
}

type R<T> = Result<T, ()>;

impl<'a> Resolver<'a> {
    fn new(files: &'a Files, defs: &'a Definitions) -> Self {
        Resolver {
            files,
            defs,
            diags: Vec::new(),
            data: Vec::new(),
            source_index: HashMap::new(),
            source_names: Vec::new(),
            schemas: Vec::new(),
            reach: Vec::new(),
            dim_index: HashMap::new(),
            dims: Vec::new(),
            metric_index: HashMap::new(),
            measures: Vec::new(),
            time_uses: Vec::new(),
        }
    }

    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Names per namespace; a second definition of a name is an error.
    fn index_names(&mut self) {
        let defs = self.defs;
        fn dupes<'x>(
            kind: &str,
            names: impl Iterator<Item = &'x ast::Name>,
            diags: &mut Vec<Diagnostic>,
        ) -> HashMap<String, usize> {
            let mut index: HashMap<String, usize> = HashMap::new();
            let mut first: HashMap<String, Span> = HashMap::new();
            for (i, n) in names.enumerate() {
                if let Some(prev) = first.get(&n.value) {
                    diags.push(
                        Diagnostic::error("E0502", format!("{kind} `{}` is defined twice", n.value))
                            .at(n.span, "defined again here")
                            .also(*prev, "first defined here"),
                    );
                } else {
                    first.insert(n.value.clone(), n.span);
                    index.insert(n.value.clone(), i);
                }
            }
            index
        }
        self.source_index = dupes("source", defs.sources.iter().map(|s| &s.name), &mut self.diags);
        self.dim_index = dupes("dimension", defs.dimensions.iter().map(|d| &d.name), &mut self.diags);
        self.metric_index = dupes("metric", defs.metrics.iter().map(|m| &m.name), &mut self.diags);
        self.source_names = defs.sources.iter().map(|s| s.name.value.clone()).collect();
    }

    fn sources(&mut self) -> Vec<Option<Source>> {
        let defs = self.defs;
        self.schemas = self.data.iter().map(|d| d.as_ref().map(|d| d.schema.clone())).collect();
        // Joins first, so that reachability is known when expressions are resolved.
        let mut joins_of = Vec::new();
        for (i, s) in defs.sources.iter().enumerate() {
            let mut joins = Vec::new();
            for j in &s.joins {
                let Some(&target) = self.source_index.get(&j.target.value) else {
                    let d = Diagnostic::error("E0503", format!("unknown source `{}`", j.target.value))
                        .at(j.target.span, "no source of this name")
                        .suggest(&j.target.value, self.source_names.iter().map(|s| s.as_str()));
                    self.error(d);
                    continue;
                };
                let target_column = j.target_column.as_ref().unwrap_or(&j.column);
                let left = self.column_type(i, &j.column);
                let right = self.column_type(target, target_column);
                if let (Ok(Some(l)), Ok(Some(r))) = (left, right)
                    && !(l == r || (l.is_temporal() && r.is_temporal()))
                {
                    let d = Diagnostic::error(
                        "E0504",
                        format!(
                            "join key types differ: `{}.{}` is a {}, `{}.{}` is a {}",
                            s.name.value,
                            j.column.value,
                            l.name(),
                            j.target.value,
                            target_column.value,
                            r.name()
                        ),
                    )
                    .at(j.span, "keys of different types never match");
                    self.error(d);
                }
                if let Ok(None) = left {
                    self.unknown_column(i, &j.column);
                }
                if let Ok(None) = right {
                    self.unknown_column(target, target_column);
                }
                if target == i {
                    let d = Diagnostic::error("E0505", format!("source `{}` joins itself", s.name.value))
                        .at(j.span, "a join must lead to another source");
                    self.error(d);
                    continue;
                }
                joins.push(Join {
                    target,
                    column: j.column.value.clone(),
                    target_column: target_column.value.clone(),
                    span: j.span,
                });
            }
            joins_of.push(joins);
        }
        self.reach = joins_of
            .iter()
            .map(|js| js.iter().map(|j| j.target).collect())
            .collect();

        let mut out = Vec::new();
        for (i, (s, joins)) in defs.sources.iter().zip(joins_of).enumerate() {
            let mut time = None;
            if let Some(t) = &s.time {
                match self.column_type(i, t) {
                    Ok(Some(ty)) if ty.is_temporal() => {
                        time = Some(TimeColumn {
                            name: t.value.clone(),
                            ty,
                        })
                    }
                    Ok(Some(ty)) => {
                        let d = Diagnostic::error(
                            "E0506",
                            format!(
                                "the time column `{}` is a {}, not a date or timestamp",
                                t.value,
                                ty.name()
                            ),
                        )
                        .at(t.span, "not a date or timestamp")
                        .note("in CSV files, write dates as 2026-01-31 and timestamps as 2026-01-31T09:30:00");
                        self.error(d);
                    }
                    Ok(None) => self.unknown_column(i, t),
                    Err(()) => {}
                }
            }
            if let Some(k) = &s.key
                && let Ok(None) = self.column_type(i, k)
            {
                self.unknown_column(i, k);
            }
            out.push(self.data[i].clone().map(|data| Source {
                name: s.name.value.clone(),
                span: s.name.span,
                data,
                time,
                key: s.key.as_ref().map(|k| k.value.clone()),
                joins,
                label: s.meta.label.as_ref().map(|l| l.value.clone()),
                description: s.meta.description.as_ref().map(|l| l.value.clone()),
            }));
        }
        out
    }

    /// `Ok(None)`: the column does not exist. `Err`: the schema is unknown (already reported).
    fn column_type(&self, source: SourceId, column: &ast::Name) -> R<Option<ValueType>> {
        let schema = self.schemas.get(source).cloned().flatten().ok_or(())?;
        Ok(schema
            .field_with_name(&column.value)
            .ok()
            .map(|f| ValueType::of(f.data_type())))
    }

    fn unknown_column(&mut self, source: SourceId, column: &ast::Name) {
        let Some(schema) = self.schemas.get(source).cloned().flatten() else {
            return;
        };
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let file = self
            .data
            .get(source)
            .and_then(|d| d.as_ref())
            .map(|d| d.display.clone());
        let mut d = Diagnostic::error(
            "E0507",
            format!(
                "source `{}` has no column `{}`",
                self.source_names[source], column.value
            ),
        )
        .at(column.span, "unknown column")
        .suggest(&column.value, names.iter().map(|s| s.as_str()));
        if let Some(f) = file {
            d = d.note(format!("columns of {f}: {}", names.join(", ")));
        }
        self.error(d);
    }

    fn reachable(&self, from: SourceId, to: SourceId) -> bool {
        let mut seen = vec![from];
        let mut i = 0;
        while i < seen.len() {
            for &t in self.reach.get(seen[i]).map(|v| v.as_slice()).unwrap_or(&[]) {
                if !seen.contains(&t) {
                    seen.push(t);
                }
            }
            i += 1;
        }
        seen.contains(&to)
    }

    fn dimensions(&mut self) -> Vec<Option<Dimension>> {
        let defs = self.defs;
        self.dims = vec![None; defs.dimensions.len()];
        let mut out = Vec::new();
        for (i, d) in defs.dimensions.iter().enumerate() {
            if self.dim_index.get(&d.name.value) != Some(&i) {
                out.push(None);
                continue;
            }
            let Ok(base) = self.base_source(&d.expr, "dimension") else {
                out.push(None);
                continue;
            };
            let Ok(expr) = self.row_expr(&d.expr, base) else {
                out.push(None);
                continue;
            };
            self.dims[i] = Some(expr.clone());
            out.push(Some(Dimension {
                name: d.name.value.clone(),
                span: d.name.span,
                source: base,
                expr,
                text: self.files.text(d.expr.span).to_string(),
                label: d.meta.label.as_ref().map(|l| l.value.clone()),
                description: d.meta.description.as_ref().map(|l| l.value.clone()),
            }));
        }
        out
    }

    /// The source an expression is evaluated over: the one its columns name, from which every
    /// other source it names is reachable through joins.
    fn base_source(&mut self, expr: &Expr, what: &str) -> R<SourceId> {
        let mut named: Vec<(String, Span)> = Vec::new();
        collect_qualifiers(expr, &mut named);
        let mut ids = Vec::new();
        for (n, span) in &named {
            match self.source_index.get(n) {
                Some(&id) => {
                    if !ids.contains(&id) {
                        ids.push(id)
                    }
                }
                None => {
                    let d = Diagnostic::error("E0503", format!("unknown source `{n}`"))
                        .at(*span, "no source of this name")
                        .suggest(n, self.source_names.iter().map(|s| s.as_str()));
                    self.error(d);
                    return Err(());
                }
            }
        }
        if ids.is_empty() {
            // Bare column names: the one source that has them all.
            let mut bare = Vec::new();
            collect_bare(expr, &mut bare);
            let candidates: Vec<SourceId> = (0..self.source_names.len())
                .filter(|&s| {
                    !bare.is_empty()
                        && bare
                            .iter()
                            .all(|(n, _)| self.schemas[s].as_ref().is_some_and(|sc| sc.field_with_name(n).is_ok()))
                })
                .collect();
            if candidates.len() == 1 {
                return Ok(candidates[0]);
            }
            let mut d = Diagnostic::error("E0508", format!("this {what} does not say which source it reads"))
                .at(expr.span, "name the source: `source.column`");
            if let Some((n, _)) = bare.first() {
                let owners: Vec<String> = candidates
                    .iter()
                    .map(|&s| format!("`{}.{n}`", self.source_names[s]))
                    .collect();
                if !owners.is_empty() {
                    d = d.note(format!("`{n}` could be {}", owners.join(" or ")));
                }
            }
            self.error(d);
            return Err(());
        }
        for &c in &ids {
            if ids.iter().all(|&o| self.reachable(c, o)) {
                return Ok(c);
            }
        }
        let names: Vec<&str> = ids.iter().map(|&i| self.source_names[i].as_str()).collect();
        let d = Diagnostic::error("E0509", format!("sources {} are not joined", names.join(" and ")))
            .at(expr.span, "no source reaches the others through its joins")
            .note(format!(
                "declare a many-to-one join, e.g. `join {} on ...` in source `{}`",
                names[1], names[0]
            ));
        self.error(d);
        Err(())
    }

    /// Resolves a row-level expression evaluated over `base`'s rows.
    fn row_expr(&mut self, e: &Expr, base: SourceId) -> R<RowExpr> {
        let span = e.span;
        let (kind, ty) = match &e.kind {
            ExprKind::Number(n) => (RowKind::Number(*n), ValueType::Number),
            ExprKind::String(s) => (RowKind::String(s.clone()), ValueType::String),
            ExprKind::Bool(b) => (RowKind::Bool(*b), ValueType::Bool),
            ExprKind::Date(d) | ExprKind::Month(d) => (RowKind::Date(*d), ValueType::Date),
            ExprKind::Null => (RowKind::Null, ValueType::Null),
            ExprKind::Name(n) => {
                let schema = self.schemas.get(base).cloned().flatten().ok_or(())?;
                if let Ok(f) = schema.field_with_name(n) {
                    (
                        RowKind::Column {
                            source: base,
                            name: n.clone(),
                        },
                        ValueType::of(f.data_type()),
                    )
                } else if let Some(&d) = self.dim_index.get(n) {
                    let dim = self.dims.get(d).cloned().flatten().ok_or(())?;
                    let mut used = Vec::new();
                    dim.sources(&mut used);
                    if let Some(&s) = used.iter().find(|&&s| !self.reachable(base, s)) {
                        let d = Diagnostic::error(
                            "E0510",
                            format!(
                                "dimension `{n}` reads source `{}`, which `{}` does not join",
                                self.source_names[s], self.source_names[base]
                            ),
                        )
                        .at(span, "not reachable from here");
                        self.error(d);
                        return Err(());
                    }
                    return Ok(dim);
                } else {
                    let names: Vec<String> = schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .chain(self.dim_index.keys().cloned())
                        .collect();
                    let d = Diagnostic::error(
                        "E0507",
                        format!("source `{}` has no column `{n}`", self.source_names[base]),
                    )
                    .at(span, "unknown column")
                    .suggest(n, names.iter().map(|s| s.as_str()));
                    self.error(d);
                    return Err(());
                }
            }
            ExprKind::Qualified(s, c) => {
                let Some(&sid) = self.source_index.get(&s.value) else {
                    let d = Diagnostic::error("E0503", format!("unknown source `{}`", s.value))
                        .at(s.span, "no source of this name")
                        .suggest(&s.value, self.source_names.iter().map(|s| s.as_str()));
                    self.error(d);
                    return Err(());
                };
                if !self.reachable(base, sid) {
                    let d = Diagnostic::error(
                        "E0511",
                        format!("source `{}` is not joined to `{}`", s.value, self.source_names[base]),
                    )
                    .at(s.span, "not reachable through joins")
                    .note(format!(
                        "declare `join {} on COLUMN` in source `{}`",
                        s.value, self.source_names[base]
                    ));
                    self.error(d);
                    return Err(());
                }
                match self.column_type(sid, c)? {
                    Some(ty) => (
                        RowKind::Column {
                            source: sid,
                            name: c.value.clone(),
                        },
                        ty,
                    ),
                    None => {
                        self.unknown_column(sid, c);
                        return Err(());
                    }
                }
            }
            ExprKind::Binary(op, a, b) => {
                let l = self.row_expr(a, base);
                let r = self.row_expr(b, base);
                let (l, r) = (l?, r?);
                let ty = self.binary_type(*op, &l, &r, a, b, span)?;
                (RowKind::Binary(*op, Box::new(l), Box::new(r)), ty)
            }
            ExprKind::Not(a) => {
                let x = self.row_expr(a, base)?;
                self.expect(&x, ValueType::Bool, a.span, "`not` needs a condition")?;
                (RowKind::Not(Box::new(x)), ValueType::Bool)
            }
            ExprKind::Neg(a) => {
                let x = self.row_expr(a, base)?;
                self.expect(&x, ValueType::Number, a.span, "`-` needs a number")?;
                (RowKind::Neg(Box::new(x)), ValueType::Number)
            }
            ExprKind::IsNull { expr, negated } => {
                let x = self.row_expr(expr, base)?;
                (
                    RowKind::IsNull {
                        expr: Box::new(x),
                        negated: *negated,
                    },
                    ValueType::Bool,
                )
            }
            ExprKind::InList { expr, list, negated } => {
                let x = self.row_expr(expr, base)?;
                let mut items = Vec::new();
                for item in list {
                    let it = self.row_expr(item, base)?;
                    self.compare_types(&x, &it, expr, item, item.span)?;
                    items.push(it);
                }
                (
                    RowKind::InList {
                        expr: Box::new(x),
                        list: items,
                        negated: *negated,
                    },
                    ValueType::Bool,
                )
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let x = self.row_expr(expr, base)?;
                let lo = self.row_expr(low, base)?;
                let hi = self.row_expr(high, base)?;
                self.compare_types(&x, &lo, expr, low, span)?;
                self.compare_types(&x, &hi, expr, high, span)?;
                (
                    RowKind::Between {
                        expr: Box::new(x),
                        low: Box::new(lo),
                        high: Box::new(hi),
                        negated: *negated,
                    },
                    ValueType::Bool,
                )
            }
            ExprKind::Call { name, args, filter } => {
                if AGGREGATES.contains(&name.value.as_str()) {
                    let d = Diagnostic::error(
                        "E0512",
                        format!("`{}` is an aggregate and cannot be used here", name.value),
                    )
                    .at(name.span, "aggregates belong at the top of a metric")
                    .note("filters and dimensions work on single rows");
                    self.error(d);
                    return Err(());
                }
                if let Some(f) = filter {
                    let d = Diagnostic::error(
                        "E0513",
                        format!("`where` belongs inside an aggregate, not `{}`", name.value),
                    )
                    .at(f.span, "only aggregates take a filter");
                    self.error(d);
                    return Err(());
                }
                let mut xs = Vec::new();
                for a in args {
                    xs.push(self.row_expr(a, base)?);
                }
                let (func, ty) = self.function(name, &xs, args, span)?;
                (RowKind::Func(func, xs), ty)
            }
            ExprKind::Duration { .. } | ExprKind::Offset { .. } | ExprKind::Conversion(_) => {
                let d = Diagnostic::error("E0512", "time functions belong at the top of a metric")
                    .at(span, "not a value of a single row")
                    .note("filters and dimensions work on single rows");
                self.error(d);
                return Err(());
            }
        };
        Ok(RowExpr { kind, ty })
    }

    fn function(&mut self, name: &ast::Name, xs: &[RowExpr], args: &[Expr], span: Span) -> R<(Func, ValueType)> {
        let arity = |n: usize, this: &mut Self| -> R<()> {
            if xs.len() != n {
                let d = Diagnostic::error(
                    "E0514",
                    format!(
                        "`{}` takes {n} argument{}, not {}",
                        name.value,
                        if n == 1 { "" } else { "s" },
                        xs.len()
                    ),
                )
                .at(span, "wrong number of arguments");
                this.error(d);
                return Err(());
            }
            Ok(())
        };
        match name.value.as_str() {
            "days_between" | "hours_between" => {
                arity(2, self)?;
                for (x, a) in xs.iter().zip(args) {
                    if !(x.ty.is_temporal() || x.ty == ValueType::Null) {
                        let d = Diagnostic::error(
                            "E0515",
                            format!("`{}` needs dates or timestamps, this is a {}", name.value, x.ty.name()),
                        )
                        .at(a.span, format!("a {}", x.ty.name()));
                        self.error(d);
                        return Err(());
                    }
                }
                let f = if name.value == "days_between" {
                    Func::DaysBetween
                } else {
                    Func::HoursBetween
                };
                Ok((f, ValueType::Number))
            }
            "coalesce" => {
                if xs.len() < 2 {
                    arity(2, self)?;
                }
                let ty = xs
                    .iter()
                    .map(|x| x.ty)
                    .find(|t| *t != ValueType::Null)
                    .unwrap_or(ValueType::Null);
                for (x, a) in xs.iter().zip(args) {
                    if !x.ty.comparable(ty) {
                        let d = Diagnostic::error(
                            "E0516",
                            format!("`coalesce` mixes a {} with a {}", ty.name(), x.ty.name()),
                        )
                        .at(a.span, "all arguments must have one type");
                        self.error(d);
                        return Err(());
                    }
                }
                Ok((Func::Coalesce, ty))
            }
            "lower" | "upper" => {
                arity(1, self)?;
                self.expect(&xs[0], ValueType::String, args[0].span, "a string is needed")?;
                Ok((
                    if name.value == "lower" {
                        Func::Lower
                    } else {
                        Func::Upper
                    },
                    ValueType::String,
                ))
            }
            other => {
                let d = Diagnostic::error("E0517", format!("unknown function `{other}`"))
                    .at(name.span, "no function of this name")
                    .suggest(other, FUNCTIONS.iter().chain(AGGREGATES).copied())
                    .note(format!("functions: {}", FUNCTIONS.join(", ")));
                self.error(d);
                Err(())
            }
        }
    }

    fn expect(&mut self, x: &RowExpr, ty: ValueType, span: Span, why: &str) -> R<()> {
        if x.ty == ty || x.ty == ValueType::Null {
            return Ok(());
        }
        let d = Diagnostic::error("E0518", format!("expected a {}, found a {}", ty.name(), x.ty.name()))
            .at(span, why.to_string());
        self.error(d);
        Err(())
    }

    fn compare_types(&mut self, l: &RowExpr, r: &RowExpr, a: &Expr, b: &Expr, span: Span) -> R<()> {
        if l.ty.comparable(r.ty) {
            return Ok(());
        }
        let d = Diagnostic::error(
            "E0519",
            format!("cannot compare a {} with a {}", l.ty.name(), r.ty.name()),
        )
        .at(span, "types do not match")
        .also(a.span, format!("a {}", l.ty.name()))
        .also(b.span, format!("a {}", r.ty.name()));
        let d = if l.ty.is_temporal() && r.ty == ValueType::Number || r.ty.is_temporal() && l.ty == ValueType::Number {
            d.note("write dates as 2026-01-31, without quotes")
        } else if l.ty.is_temporal() && r.ty == ValueType::String || r.ty.is_temporal() && l.ty == ValueType::String {
            d.note("write dates without quotes: 2026-01-31")
        } else {
            d
        };
        self.error(d);
        Err(())
    }

    fn binary_type(&mut self, op: BinOp, l: &RowExpr, r: &RowExpr, a: &Expr, b: &Expr, span: Span) -> R<ValueType> {
        match op {
            BinOp::And | BinOp::Or => {
                self.expect(l, ValueType::Bool, a.span, "`and`/`or` need conditions")?;
                self.expect(r, ValueType::Bool, b.span, "`and`/`or` need conditions")?;
                Ok(ValueType::Bool)
            }
            op if op.is_comparison() => {
                self.compare_types(l, r, a, b, span)?;
                Ok(ValueType::Bool)
            }
            _ => {
                for (x, e) in [(l, a), (r, b)] {
                    if !(x.ty == ValueType::Number || x.ty == ValueType::Null) {
                        let mut d = Diagnostic::error(
                            "E0520",
                            format!("`{}` needs numbers, found a {}", op.symbol(), x.ty.name()),
                        )
                        .at(e.span, format!("a {}", x.ty.name()));
                        if x.ty.is_temporal() {
                            d = d.note("use days_between(a, b) or hours_between(a, b) for time differences");
                        }
                        self.error(d);
                        return Err(());
                    }
                }
                Ok(ValueType::Number)
            }
        }
    }

    fn metrics(&mut self) -> Vec<Option<Metric>> {
        let defs = self.defs;
        let mut out = Vec::new();
        for (i, m) in defs.metrics.iter().enumerate() {
            if self.metric_index.get(&m.name.value) != Some(&i) {
                out.push(None);
                continue;
            }
            let Ok(formula) = self.formula(&m.expr) else {
                out.push(None);
                continue;
            };
            let format = m
                .meta
                .format
                .as_ref()
                .map(|f| f.value.clone())
                .unwrap_or(Format::Number);
            out.push(Some(Metric {
                name: m.name.value.clone(),
                span: m.name.span,
                label: m.meta.label.as_ref().map(|l| l.value.clone()),
                description: m.meta.description.as_ref().map(|l| l.value.clone()),
                owner: m.meta.owner.as_ref().map(|l| l.value.clone()),
                tags: m.meta.tags.iter().map(|t| t.value.clone()).collect(),
                unit: m.meta.unit.as_ref().map(|l| l.value.clone()),
                format,
                good: m.meta.good.as_ref().map(|g| g.value),
                formula,
                text: self.files.text(m.expr.span).to_string(),
            }));
        }
        out
    }

    /// A metric expression: arithmetic over aggregates, metrics and numbers.
    fn formula(&mut self, e: &Expr) -> R<Formula> {
        match &e.kind {
            ExprKind::Number(n) => Ok(Formula::Number(*n)),
            ExprKind::Name(n) => match self.metric_index.get(n) {
                Some(&id) => Ok(Formula::Metric(id)),
                None => {
                    let mut d = Diagnostic::error("E0521", format!("unknown metric `{n}`"))
                        .at(e.span, "no metric of this name");
                    if self.source_index.contains_key(n) {
                        d = d.note(format!("`{n}` is a source; to count its rows write `count({n})`"));
                    } else {
                        d = d.suggest(n, self.metric_index.keys().map(|s| s.as_str()));
                    }
                    self.error(d);
                    Err(())
                }
            },
            ExprKind::Neg(a) => Ok(Formula::Neg(Box::new(self.formula(a)?))),
            ExprKind::Binary(op, a, b) if op.is_arithmetic() => {
                let l = self.formula(a);
                let r = self.formula(b);
                Ok(Formula::Binary(*op, Box::new(l?), Box::new(r?)))
            }
            ExprKind::Call { name, args, filter } if AGGREGATES.contains(&name.value.as_str()) => {
                let m = self.measure(name, args, filter.as_deref(), e.span)?;
                Ok(Formula::Measure(self.intern(m)))
            }
            ExprKind::Call { name, args, filter } if TIME_FUNCTIONS.contains(&name.value.as_str()) => {
                if let Some(f) = filter {
                    let d = Diagnostic::error("E0543", format!("`{}` takes no `where`", name.value))
                        .at(f.span, "a filter here")
                        .note("filters belong inside the aggregate: `sum(jobs.amount where paid)`");
                    self.error(d);
                    return Err(());
                }
                self.time_function(e, name, args)
            }
            ExprKind::Offset { expr, amount, unit } => {
                let inner = self.formula(expr);
                let unit = self.time_unit(unit, true)?;
                let amount = self.whole(*amount, e.span, "an offset", false)?;
                let f = Formula::Offset(Offset { amount, unit }, Box::new(inner?));
                self.time_uses.push(TimeUse {
                    span: e.span,
                    what: "an offset".into(),
                    formula: f.clone(),
                    window: false,
                });
                Ok(f)
            }
            ExprKind::Conversion(c) => self.conversion(c),
            ExprKind::Duration { .. } => {
                let d = Diagnostic::error("E0525", "a duration is not a value")
                    .at(e.span, "a length of time")
                    .note("durations are arguments: `rolling(revenue, 7 days)`");
                self.error(d);
                Err(())
            }
            ExprKind::Call { name, .. } if FUNCTIONS.contains(&name.value.as_str()) => {
                let d = Diagnostic::error(
                    "E0522",
                    format!("`{}` works on single rows; a metric needs an aggregate", name.value),
                )
                .at(e.span, "not an aggregate")
                .note(format!(
                    "wrap it in an aggregate, e.g. `avg({})`",
                    self.files.text(e.span)
                ));
                self.error(d);
                Err(())
            }
            ExprKind::Call { name, .. } => {
                let d = Diagnostic::error("E0523", format!("unknown aggregate `{}`", name.value))
                    .at(name.span, "no aggregate of this name")
                    .suggest(&name.value, AGGREGATES.iter().chain(FUNCTIONS).copied())
                    .note(format!("aggregates: {}", AGGREGATES.join(", ")));
                self.error(d);
                Err(())
            }
            ExprKind::Qualified(..) => {
                let d = Diagnostic::error("E0524", "a column in a metric needs an aggregate")
                    .at(e.span, "a column of many rows")
                    .note(format!("e.g. `sum({})`", self.files.text(e.span)));
                self.error(d);
                Err(())
            }
            _ => {
                let d = Diagnostic::error("E0525", "a metric is arithmetic over aggregates, metrics and numbers")
                    .at(e.span, "not allowed in a metric")
                    .note("conditions belong in a filter: `count(jobs where status = \"completed\")`");
                self.error(d);
                Err(())
            }
        }
    }

    /// The id of a measure, shared with an identical one.
    fn intern(&mut self, m: Measure) -> MeasureId {
        match self.measures.iter().position(|x| *x == m) {
            Some(id) => id,
            None => {
                self.measures.push(m);
                self.measures.len() - 1
            }
        }
    }

    /// `rolling`, `cumulative`, `to_date`, `share`, `last` and `first`.
    fn time_function(&mut self, e: &Expr, name: &ast::Name, args: &[Expr]) -> R<Formula> {
        let f = name.value.as_str();
        let usage = match f {
            "rolling" => "rolling(revenue, 7 days)",
            "cumulative" => "cumulative(revenue)",
            "to_date" => "to_date(revenue, month)",
            "share" => "share(enquiries)",
            "last" => "last(sum(balances.amount))",
            _ => "first(sum(balances.amount))",
        };
        let (formula, window) = match (f, args) {
            ("rolling", [m, length]) => {
                let inner = self.formula(m);
                let ExprKind::Duration { amount, unit } = &length.kind else {
                    let d = Diagnostic::error("E0544", "a rolling window needs a length with a unit")
                        .at(length.span, "expected e.g. `7 days`")
                        .note(format!("e.g. `{usage}`"));
                    self.error(d);
                    return Err(());
                };
                let unit = self.time_unit(unit, false)?;
                let amount = self.whole(*amount, length.span, "a window", true)?;
                let window = Window::Rolling {
                    amount: amount as u32,
                    unit: unit.expect("a unit of time"),
                };
                (Formula::Window(window, Box::new(inner?)), true)
            }
            ("cumulative", [m]) => (Formula::Window(Window::Cumulative, Box::new(self.formula(m)?)), true),
            ("to_date", [m, g]) => {
                let inner = self.formula(m);
                let grain = match &g.kind {
                    ExprKind::Name(n) => Grain::parse(n),
                    _ => None,
                };
                let Some(grain) = grain else {
                    let d = Diagnostic::error(
                        "E0545",
                        format!("`{}` is not a period to reset at", self.files.text(g.span)),
                    )
                    .at(g.span, "expected week, month, quarter or year")
                    .suggest(self.files.text(g.span), ["day", "week", "month", "quarter", "year"]);
                    self.error(d);
                    return Err(());
                };
                (Formula::Window(Window::ToDate(grain), Box::new(inner?)), true)
            }
            ("share", [m]) => return Ok(Formula::Share(Box::new(self.formula(m)?))),
            ("last" | "first", [a]) => {
                let snapshot = if f == "last" { Snapshot::Last } else { Snapshot::First };
                let mut m = match &a.kind {
                    ExprKind::Call { name, args, filter } if AGGREGATES.contains(&name.value.as_str()) => {
                        self.measure(name, args, filter.as_deref(), a.span)?
                    }
                    ExprKind::Name(_) | ExprKind::Qualified(..) => {
                        let sum = ast::Name::new("sum".into(), a.span);
                        self.measure(&sum, std::slice::from_ref(a), None, a.span)?
                    }
                    _ => {
                        let d = Diagnostic::error("E0546", format!("`{f}` takes an aggregate or a column"))
                            .at(a.span, "not an aggregate")
                            .note(format!("e.g. `{usage}`"));
                        self.error(d);
                        return Err(());
                    }
                };
                m.snapshot = Some(snapshot);
                (Formula::Measure(self.intern(m)), false)
            }
            _ => {
                let d = Diagnostic::error("E0514", format!("`{f}` takes {}", arguments(usage)))
                    .at(e.span, "wrong arguments")
                    .note(format!("e.g. `{usage}`"));
                self.error(d);
                return Err(());
            }
        };
        self.time_uses.push(TimeUse {
            span: e.span,
            what: format!("`{f}`"),
            formula: formula.clone(),
            window,
        });
        Ok(formula)
    }

    /// `days`, `week`, ... as a grain; `period` (where allowed) as `None`.
    fn time_unit(&mut self, unit: &ast::Name, period: bool) -> R<Option<Grain>> {
        let word = unit.value.strip_suffix('s').unwrap_or(&unit.value);
        if period && word == "period" {
            return Ok(None);
        }
        if let Some(g) = Grain::parse(word) {
            return Ok(Some(g));
        }
        let mut units = vec!["days", "weeks", "months", "quarters", "years"];
        if period {
            units.push("periods");
        }
        let d = Diagnostic::error("E0547", format!("unknown unit of time `{}`", unit.value))
            .at(unit.span, format!("expected {}", units.join(", ")))
            .suggest(&unit.value, units.iter().copied());
        self.error(d);
        Err(())
    }

    /// An amount of time units: a whole number (positive where `positive`).
    fn whole(&mut self, amount: f64, span: Span, what: &str, positive: bool) -> R<i32> {
        if amount.fract() != 0.0 || amount.abs() > 100_000.0 || (positive && amount < 1.0) {
            let kind = if positive {
                "a whole number of at least 1"
            } else {
                "a whole number"
            };
            let d = Diagnostic::error("E0548", format!("the length of {what} must be {kind}")).at(span, "here");
            self.error(d);
            return Err(());
        }
        Ok(amount as i32)
    }

    /// `conversion(BASE -> TARGET by ENTITY within N UNIT)`.
    fn conversion(&mut self, c: &ast::ConversionExpr) -> R<Formula> {
        let source = |r: &mut Self, n: &ast::Name| match r.source_index.get(&n.value) {
            Some(&id) => Ok(id),
            None => {
                let d = Diagnostic::error("E0503", format!("unknown source `{}`", n.value))
                    .at(n.span, "no source of this name")
                    .suggest(&n.value, r.source_names.iter().map(|s| s.as_str()));
                r.error(d);
                Err(())
            }
        };
        let base = source(self, &c.base);
        let target = source(self, &c.target);
        let (base, target) = (base?, target?);
        let base_filter = match &c.base_filter {
            Some(f) => Some(self.condition(f, base)?),
            None => None,
        };
        let target_filter = match &c.target_filter {
            Some(f) => Some(self.condition(f, target)?),
            None => None,
        };
        let (Some(bs), Some(ts)) = (self.schemas[base].clone(), self.schemas[target].clone()) else {
            return Err(());
        };
        let columns = |s: &datafusion::arrow::datatypes::SchemaRef| -> Vec<String> {
            s.fields().iter().map(|f| f.name().clone()).collect()
        };
        let common: Vec<String> = columns(&bs)
            .into_iter()
            .filter(|n| ts.field_with_name(n).is_ok())
            .collect();
        let entity = &c.entity;
        if !common.contains(&entity.value) {
            let (b, t) = (&self.source_names[base], &self.source_names[target]);
            let mut d = Diagnostic::error(
                "E0549",
                format!("sources `{b}` and `{t}` do not share a column `{}`", entity.value),
            )
            .at(entity.span, "the entity must be a column of both sources");
            d = if common.is_empty() {
                d.note(format!("`{b}` and `{t}` have no column in common"))
            } else {
                d.suggest(&entity.value, common.iter().map(|s| s.as_str()))
                    .note(format!("columns of both: {}", common.join(", ")))
            };
            self.error(d);
            return Err(());
        }
        let ty = |s: &datafusion::arrow::datatypes::SchemaRef| {
            s.field_with_name(&entity.value)
                .map(|f| ValueType::of(f.data_type()))
                .ok()
        };
        if let (Some(a), Some(b)) = (ty(&bs), ty(&ts))
            && a != b
        {
            let d = Diagnostic::error(
                "E0504",
                format!(
                    "`{}` is a {} in `{}` and a {} in `{}`",
                    entity.value,
                    a.name(),
                    self.source_names[base],
                    b.name(),
                    self.source_names[target]
                ),
            )
            .at(entity.span, "the entity's types differ");
            self.error(d);
            return Err(());
        }
        for (sid, n) in [(base, &c.base), (target, &c.target)] {
            if self.defs.sources[sid].time.is_none() {
                let d = Diagnostic::error(
                    "E0540",
                    format!("a conversion needs a time column: source `{}` has none", n.value),
                )
                .at(n.span, "a source without `time`")
                .also(self.defs.sources[sid].name.span, "declare `time: COLUMN` here");
                self.error(d);
                return Err(());
            }
        }
        let (amount, unit) = &c.within.value;
        let per = match unit.strip_suffix('s').unwrap_or(unit) {
            "hour" => 3600,
            "day" => 86_400,
            "week" => 7 * 86_400,
            _ => {
                let d = Diagnostic::error("E0547", format!("unknown unit of a conversion window `{unit}`"))
                    .at(c.within.span, "expected hours, days or weeks")
                    .suggest(unit, ["hours", "days", "weeks"]);
                self.error(d);
                return Err(());
            }
        };
        let amount = self.whole(*amount, c.within.span, "a conversion window", true)?;
        let converted = Measure {
            source: base,
            agg: Agg::Count,
            arg: None,
            filter: base_filter.clone(),
            snapshot: None,
            conversion: Some(Conversion {
                target,
                target_filter,
                entity: entity.value.clone(),
                within_seconds: amount as i64 * per,
            }),
        };
        let converted = Formula::Measure(self.intern(converted));
        if c.count {
            return Ok(converted);
        }
        let all = Measure {
            source: base,
            agg: Agg::Count,
            arg: None,
            filter: base_filter,
            snapshot: None,
            conversion: None,
        };
        let all = Formula::Measure(self.intern(all));
        Ok(Formula::Binary(BinOp::Div, Box::new(converted), Box::new(all)))
    }

    /// Every window, offset and snapshot reads a source with a time column; windows are not
    /// nested and do not add up snapshots.
    fn time_checks(&mut self, metrics: &[Option<Metric>]) {
        let uses = std::mem::take(&mut self.time_uses);
        for u in uses {
            let mut measures = Vec::new();
            let mut windows = 0;
            reach(&u.formula, metrics, &mut |x| match x {
                Formula::Measure(m) => measures.push(*m),
                Formula::Window(..) => windows += 1,
                _ => {}
            });
            let mut sources: Vec<SourceId> = measures.iter().map(|&m| self.measures[m].source).collect();
            sources.dedup();
            if let Some(&s) = sources.iter().find(|&&s| self.defs.sources[s].time.is_none()) {
                let name = &self.defs.sources[s].name;
                let d = Diagnostic::error(
                    "E0540",
                    format!("{} needs a time column: source `{}` has none", u.what, name.value),
                )
                .at(u.span, "a function of time")
                .also(name.span, "declare `time: COLUMN` in this source");
                self.error(d);
                continue;
            }
            if !u.window {
                continue;
            }
            if windows > 1 {
                let d = Diagnostic::error("E0541", format!("{} over a metric that is already a window", u.what))
                    .at(u.span, "a window of a window")
                    .note("apply one window to the base metric: `rolling(revenue, 28 days)`");
                self.error(d);
            } else if measures.iter().any(|&m| self.measures[m].snapshot.is_some()) {
                let d = Diagnostic::error("E0542", format!("{} cannot add up a balance over time", u.what))
                    .at(u.span, "a window over `last` or `first`")
                    .note("a balance at the end of a period is not summed across periods; compare it with an offset instead: `balance[-1 month]`");
                self.error(d);
            }
        }
    }

    fn measure(&mut self, name: &ast::Name, args: &[Expr], filter: Option<&Expr>, span: Span) -> R<Measure> {
        let agg_name = name.value.as_str();
        // count(source) counts rows of a source.
        if agg_name == "count"
            && args.len() == 1
            && let ExprKind::Name(n) = &args[0].kind
            && let Some(&sid) = self.source_index.get(n)
        {
            let filter = match filter {
                Some(f) => Some(self.condition(f, sid)?),
                None => None,
            };
            return Ok(Measure {
                source: sid,
                agg: Agg::Count,
                arg: None,
                filter,
                snapshot: None,
                conversion: None,
            });
        }
        // count(name) where `name` is neither a source nor a column anywhere: a misspelt source.
        if agg_name == "count"
            && args.len() == 1
            && let ExprKind::Name(n) = &args[0].kind
            && !self.schemas.iter().flatten().any(|s| s.field_with_name(n).is_ok())
        {
            let d = Diagnostic::error("E0503", format!("unknown source `{n}`"))
                .at(args[0].span, "no source of this name")
                .suggest(n, self.source_names.iter().map(|s| s.as_str()));
            self.error(d);
            return Err(());
        }
        let (arg, extra) = match (agg_name, args) {
            ("percentile", [a, p]) => (a, Some(p)),
            ("percentile", _) => {
                let d = Diagnostic::error(
                    "E0514",
                    "`percentile` takes a value and a fraction: `percentile(jobs.amount, 90%)`",
                )
                .at(span, "wrong number of arguments");
                self.error(d);
                return Err(());
            }
            (_, [a]) => (a, None),
            (_, _) => {
                let d = Diagnostic::error("E0514", format!("`{agg_name}` takes one argument, not {}", args.len()))
                    .at(span, "wrong number of arguments");
                self.error(d);
                return Err(());
            }
        };
        if let ExprKind::Name(n) = &arg.kind
            && self.source_index.contains_key(n)
            && agg_name != "count"
        {
            let d = Diagnostic::error("E0526", format!("`{agg_name}` needs a column, `{n}` is a source"))
                .at(arg.span, "a source")
                .note(format!("e.g. `{agg_name}({n}.amount)`"));
            self.error(d);
            return Err(());
        }
        let base = self.base_source(arg, "aggregate")?;
        let x = self.row_expr(arg, base)?;
        let agg = match agg_name {
            "count" => Agg::Count,
            "count_distinct" => Agg::CountDistinct,
            "sum" => Agg::Sum,
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "median" => Agg::Median,
            _ => {
                let p = extra.expect("percentile argument");
                let value = match p.kind {
                    ExprKind::Number(v) if v > 0.0 && v <= 1.0 => v,
                    _ => {
                        let d = Diagnostic::error("E0527", "the percentile must be a fraction between 0 and 1")
                            .at(p.span, "write e.g. 0.9 or 90%");
                        self.error(d);
                        return Err(());
                    }
                };
                Agg::Percentile(value)
            }
        };
        if !(matches!(agg, Agg::Count | Agg::CountDistinct) || x.ty == ValueType::Number || x.ty == ValueType::Null) {
            let mut d = Diagnostic::error(
                "E0528",
                format!(
                    "`{agg_name}` needs numbers, `{}` is a {}",
                    self.files.text(arg.span),
                    x.ty.name()
                ),
            )
            .at(arg.span, format!("a {}", x.ty.name()));
            if x.ty.is_temporal() {
                d = d.note("for durations use days_between(a, b) or hours_between(a, b)");
            } else if x.ty == ValueType::String {
                d = d.note("to count rows use count(...); to count values use count_distinct(...)");
            }
            self.error(d);
            return Err(());
        }
        let filter = match filter {
            Some(f) => Some(self.condition(f, base)?),
            None => None,
        };
        Ok(Measure {
            source: base,
            agg,
            arg: Some(x),
            filter,
            snapshot: None,
            conversion: None,
        })
    }

    fn condition(&mut self, f: &Expr, base: SourceId) -> R<RowExpr> {
        let x = self.row_expr(f, base)?;
        self.expect(&x, ValueType::Bool, f.span, "a filter must be a condition")?;
        Ok(x)
    }

    /// Reports: their metrics and dimensions exist, their grain and range are ones tally
    /// knows.
    fn reports(&mut self) -> Vec<Report> {
        let defs = self.defs;
        let mut out = Vec::new();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        'reports: for d in &defs.reports {
            if let Some(prev) = seen.insert(d.name.value.as_str(), d.name.span) {
                let e = Diagnostic::error("E0502", format!("report `{}` is defined twice", d.name.value))
                    .at(d.name.span, "defined again here")
                    .also(prev, "first defined here");
                self.error(e);
                continue;
            }
            let grain = match d.grain.as_ref().map(grain_of) {
                None => Grain::Week,
                Some(Ok(g)) => g,
                Some(Err(e)) => {
                    self.error(e);
                    continue;
                }
            };
            if let Some(range) = &d.range {
                let any_day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date");
                if let Err(why) = crate::time::relative_range(&range.value, any_day, &crate::time::Calendar::default())
                {
                    let e = Diagnostic::error("E0584", why).at(range.span, "not a range");
                    self.error(e);
                    continue;
                }
            }
            if d.metrics.is_empty() {
                let e = Diagnostic::error("E0585", format!("report `{}` shows no metric", d.name.value))
                    .at(d.name.span, "no `metrics`")
                    .note("e.g. `metrics: [enquiries, conversion, revenue]`");
                self.error(e);
                continue;
            }
            let mut metrics = Vec::new();
            for m in &d.metrics {
                match self.metric_index.get(&m.value) {
                    Some(&id) => metrics.push(id),
                    None => {
                        let e = Diagnostic::error("E0521", format!("unknown metric `{}`", m.value))
                            .at(m.span, "no metric of this name")
                            .suggest(&m.value, self.metric_index.keys().map(|s| s.as_str()));
                        self.error(e);
                        continue 'reports;
                    }
                }
            }
            let mut dimensions = Vec::new();
            for b in &d.by {
                match self.dim_index.get(&b.value) {
                    Some(&id) => dimensions.push(id),
                    None => {
                        let e = Diagnostic::error("E0576", format!("unknown dimension `{}`", b.value))
                            .at(b.span, "no dimension of this name")
                            .suggest(&b.value, self.dim_index.keys().map(|s| s.as_str()));
                        self.error(e);
                        continue 'reports;
                    }
                }
            }
            out.push(Report {
                name: d.name.value.clone(),
                span: d.name.span,
                title: d.title.as_ref().map(|t| t.value.clone()),
                description: d.description.as_ref().map(|t| t.value.clone()),
                grain,
                range: d.range.as_ref().map(|r| r.value.clone()),
                metrics,
                dimensions,
            });
        }
        out
    }

    /// Targets: the metric exists and has time; levels fit its unit (a percent for a
    /// percent metric) and its grain; a deadline adds up an additive metric.
    fn targets(&mut self, settings: &Settings, metrics: &[Option<Metric>]) -> Vec<Target> {
        let defs = self.defs;
        let calendar = settings.calendar();
        let mut out = Vec::new();
        for t in &defs.targets {
            let Some(&id) = self.metric_index.get(&t.metric.value) else {
                let d = Diagnostic::error("E0521", format!("unknown metric `{}`", t.metric.value))
                    .at(t.metric.span, "no metric of this name")
                    .suggest(&t.metric.value, self.metric_index.keys().map(|s| s.as_str()));
                self.error(d);
                continue;
            };
            let Some(Some(metric)) = metrics.get(id) else {
                continue; // its own errors are reported
            };
            let grain = match t.per.as_ref().map(grain_of) {
                None => Grain::Month,
                Some(Ok(g)) => g,
                Some(Err(d)) => {
                    self.error(d);
                    continue;
                }
            };
            // Every measure of the metric needs a time column.
            let mut measures = Vec::new();
            reach(&metric.formula, metrics, &mut |x| {
                if let Formula::Measure(m) = x {
                    measures.push(*m)
                }
            });
            if let Some(&m) = measures
                .iter()
                .find(|&&m| self.defs.sources[self.measures[m].source].time.is_none())
            {
                let name = &self.defs.sources[self.measures[m].source].name;
                let d = Diagnostic::error(
                    "E0540",
                    format!(
                        "a target is per period: source `{}` of `{}` has no time column",
                        name.value, metric.name
                    ),
                )
                .at(t.metric.span, "a target over time")
                .also(name.span, "declare `time: COLUMN` in this source");
                self.error(d);
                continue;
            }
            let (direction, low, high, reach) = match &t.goal {
                GoalDef::AtLeast(l) => (TargetDirection::AtLeast, l, None, false),
                GoalDef::AtMost(l) => (TargetDirection::AtMost, l, None, false),
                GoalDef::Between(lo, hi) => (TargetDirection::Between, lo, Some(hi), false),
                GoalDef::Reach(l) => (TargetDirection::AtLeast, l, None, true),
            };
            if reach && t.by.is_none() {
                let d = Diagnostic::error("E0561", "`=` sets a goal to reach by a deadline")
                    .at(t.span, "no deadline")
                    .note(format!(
                        "add one (`target {} = ... by 2026-12-31`), or write `>=` or `<=` for a level per period",
                        t.metric.value
                    ));
                self.error(d);
                continue;
            }
            let Ok(level) = self.level(settings, &calendar, metric, low, grain) else {
                continue;
            };
            let high = match high.map(|h| self.level(settings, &calendar, metric, h, grain)) {
                Some(Ok(h)) => Some(h),
                Some(Err(())) => continue,
                None => None,
            };
            if let (Level::Constant(lo), Some(Level::Constant(hi))) = (&level, &high)
                && lo > hi
            {
                let mut d = Diagnostic::error("E0563", "the lower level of `between` is above the upper one")
                    .at(low.span, "the lower level");
                if let ast::GoalDef::Between(_, hi) = &t.goal {
                    d = d.also(hi.span, "the upper level");
                }
                self.error(d);
                continue;
            }
            if let Some(by) = &t.by {
                if !additive(
                    &self.measures,
                    &|id| metrics.get(id).and_then(|m| m.as_ref()).map(|m| &m.formula),
                    &metric.formula,
                ) {
                    let d = Diagnostic::error(
                        "E0562",
                        format!(
                            "a deadline adds `{}` up over time, and it is not a count or a sum",
                            metric.name
                        ),
                    )
                    .at(by.span, "a deadline")
                    .also(t.metric.span, "a ratio, average or distinct count does not add up")
                    .note("give it a level per period instead: `>= ... per month`");
                    self.error(d);
                    continue;
                }
                if !matches!(level, Level::Constant(_)) || direction == TargetDirection::Between {
                    let d = Diagnostic::error("E0564", "a deadline target has one level")
                        .at(low.span, "use a single value with a deadline");
                    self.error(d);
                    continue;
                }
                if let Some(from) = &t.from
                    && from.value > by.value
                {
                    let d = Diagnostic::error("E0565", "the deadline is before the target starts")
                        .at(by.span, "the deadline")
                        .also(from.span, "the start");
                    self.error(d);
                    continue;
                }
            }
            let tolerance = match &t.tolerance {
                Some(a) if a.value.value < 0.0 || (!a.value.percent && a.value.value >= 1.0) => {
                    let d = Diagnostic::error("E0566", "a tolerance is a share of the level, like 5%")
                        .at(a.span, "expected a percent between 0% and 100%");
                    self.error(d);
                    continue;
                }
                Some(a) => a.value.value,
                None => 0.0,
            };
            out.push(Target {
                metric: id,
                span: t.span,
                text: target_text(self.files.text(t.span), t),
                direction,
                level,
                high,
                grain,
                from: t.from.as_ref().map(|f| calendar.period_start(f.value, grain)),
                deadline: t.by.as_ref().map(|b| b.value),
                tolerance,
            });
        }
        out
    }

    /// Alerts: names resolve; levels fit the metric's unit and are ordered by severity;
    /// off-target alerts have a target; the template uses only known variables.
    fn alerts(&mut self, metrics: &[Option<Metric>], targets: &[Target]) -> Vec<Alert> {
        let defs = self.defs;
        let mut out = Vec::new();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for a in &defs.alerts {
            if let Some(prev) = seen.insert(a.name.value.as_str(), a.name.span) {
                let d = Diagnostic::error("E0502", format!("alert `{}` is defined twice", a.name.value))
                    .at(a.name.span, "defined again here")
                    .also(prev, "first defined here");
                self.error(d);
                continue;
            }
            if let Ok(alert) = self.alert(a, metrics, targets) {
                out.push(alert);
            }
        }
        out
    }

    fn alert(&mut self, a: &ast::AlertDef, metrics: &[Option<Metric>], targets: &[Target]) -> R<Alert> {
        let Some(cond) = &a.condition else {
            let d = Diagnostic::error("E0570", format!("alert `{}` has no condition", a.name.value))
                .at(a.span, "no `when`")
                .note("e.g. `when conversion < 20% for 3 days`");
            self.error(d);
            return Err(());
        };
        let metric = |r: &mut Self, n: &ast::Name| -> R<MetricId> {
            match r.metric_index.get(&n.value) {
                Some(&id) if metrics.get(id).is_some_and(|m| m.is_some()) => Ok(id),
                Some(_) => Err(()), // its own errors are reported
                None => {
                    let d = Diagnostic::error("E0521", format!("unknown metric `{}`", n.value))
                        .at(n.span, "no metric of this name")
                        .suggest(&n.value, r.metric_index.keys().map(|s| s.as_str()));
                    r.error(d);
                    Err(())
                }
            }
        };
        let source = |r: &mut Self, n: &ast::Name| -> R<SourceId> {
            match r.source_index.get(&n.value) {
                Some(&id) if r.defs.sources[id].time.is_some() => Ok(id),
                Some(&id) => {
                    let d = Diagnostic::error(
                        "E0540",
                        format!("a freshness alert needs a time column: source `{}` has none", n.value),
                    )
                    .at(n.span, "a source without `time`")
                    .also(r.defs.sources[id].name.span, "declare `time: COLUMN` here");
                    r.error(d);
                    Err(())
                }
                None => {
                    let d = Diagnostic::error("E0503", format!("unknown source `{}`", n.value))
                        .at(n.span, "no source of this name")
                        .suggest(&n.value, r.source_names.iter().map(|s| s.as_str()));
                    r.error(d);
                    Err(())
                }
            }
        };
        let severity = match &a.severity {
            None => AlertSeverity::Warning,
            Some(s) => match AlertSeverity::parse(&s.value) {
                Some(s) => s,
                None => {
                    let d = Diagnostic::error("E0571", format!("unknown severity `{}`", s.value))
                        .at(s.span, "expected warning or critical")
                        .suggest(&s.value, ["warning", "critical"]);
                    self.error(d);
                    return Err(());
                }
            },
        };
        // The grain: `per`, else the unit of `for`, else a day (a target's own grain).
        let per = match a.per.as_ref().map(grain_of).transpose() {
            Ok(g) => g,
            Err(d) => {
                self.error(d);
                return Err(());
            }
        };
        let condition = match &cond.value {
            ast::ConditionDef::Threshold { metric: m, levels } => {
                let id = metric(self, m)?;
                let format = &metrics[id].as_ref().expect("resolved").format;
                let mut out = Vec::new();
                for l in levels {
                    self.unit_fits(&m.value, format, &l.amount)?;
                    let sev = match &l.severity {
                        Some(s) => AlertSeverity::parse(&s.value).unwrap_or(severity),
                        None => severity,
                    };
                    out.push((l.op, l.amount.value.value, sev, l.amount.span));
                }
                // Below-alerts (<) and above-alerts (>) with levels: the warning comes first.
                let below = |op: BinOp| matches!(op, BinOp::Lt | BinOp::Le);
                if out.iter().any(|x| below(x.0) != below(out[0].0)) {
                    let d = Diagnostic::error("E0572", "the levels of an alert point in different directions")
                        .at(cond.span, "mixed `<` and `>`");
                    self.error(d);
                    return Err(());
                }
                let warning = out.iter().find(|x| x.2 == AlertSeverity::Warning);
                let critical = out.iter().find(|x| x.2 == AlertSeverity::Critical);
                if let (Some(w), Some(c)) = (warning, critical) {
                    let beyond = if below(w.0) { w.1 < c.1 } else { w.1 > c.1 };
                    if beyond {
                        let (kind, word) = if below(w.0) {
                            ("at least", "below")
                        } else {
                            ("at most", "above")
                        };
                        let d = Diagnostic::error(
                            "E0573",
                            format!("the warning level is {word} the critical level of this \"{kind}\" alert"),
                        )
                        .at(w.3, "the warning level")
                        .also(c.3, "the critical level")
                        .note(format!(
                            "a warning comes before the critical level: as `{}` {}, the warning fires first",
                            m.value,
                            if below(w.0) { "falls" } else { "rises" }
                        ));
                        self.error(d);
                        return Err(());
                    }
                }
                out.sort_by_key(|l| std::cmp::Reverse(l.2));
                let levels = out.into_iter().map(|(op, v, s, _)| (op, v, s)).collect();
                Condition::Threshold { metric: id, levels }
            }
            ast::ConditionDef::Change {
                metric: m,
                against,
                op,
                amount,
            } => {
                let id = metric(self, m)?;
                let year = against.as_ref().is_some_and(|a| a.value == "year");
                Condition::Change {
                    metric: id,
                    year,
                    op: *op,
                    value: amount.value.value,
                    relative: amount.value.percent,
                }
            }
            ast::ConditionDef::Anomaly {
                metric: m,
                method,
                threshold,
                window,
                weekday,
            } => {
                let id = metric(self, m)?;
                let grain = per.unwrap_or(Grain::Day);
                let window = match window {
                    None => 28,
                    Some(w) => self.periods_of(w, grain, "the window", "over")?,
                };
                if *weekday && grain != Grain::Day {
                    let d = Diagnostic::error("E0580", "`by weekday` compares days: the alert must be per day")
                        .at(cond.span, format!("this alert is per {}", grain.name()));
                    self.error(d);
                    return Err(());
                }
                let threshold = match threshold {
                    Some(t) if t.value <= 0.0 => {
                        let d = Diagnostic::error("E0581", "an anomaly threshold is a positive number of spreads")
                            .at(t.span, "e.g. 3");
                        self.error(d);
                        return Err(());
                    }
                    Some(t) => t.value,
                    None => 3.0,
                };
                Condition::Anomaly {
                    metric: id,
                    mad: method.as_ref().is_some_and(|m| m.value == "mad"),
                    threshold,
                    window,
                    weekday: *weekday,
                }
            }
            ast::ConditionDef::OffTarget { metric: m, pace } => {
                let id = metric(self, m)?;
                let found: Vec<usize> = (0..targets.len())
                    .filter(|&i| {
                        let t = &targets[i];
                        t.metric == id && t.deadline.is_some() == *pace && (*pace || per.is_none_or(|g| g == t.grain))
                    })
                    .collect();
                if found.len() > 1 {
                    let d = Diagnostic::error(
                        "E0574",
                        format!("`{}` has {} such targets: which one?", m.value, found.len()),
                    )
                    .at(cond.span, "off which target?")
                    .note(format!(
                        "its targets: {}; choose one with `per`",
                        found
                            .iter()
                            .map(|&i| format!("`{}`", targets[i].text))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    self.error(d);
                    return Err(());
                }
                let Some(&target) = found.first() else {
                    let kind = if *pace {
                        "a deadline target (`= ... by DATE`)"
                    } else {
                        "a target per period"
                    };
                    let d = Diagnostic::error("E0574", format!("`{}` has no {kind}", m.value))
                        .at(cond.span, "off what?")
                        .note(format!("declare one, e.g. `target {} >= 100 per month`", m.value));
                    self.error(d);
                    return Err(());
                };
                Condition::OffTarget {
                    metric: id,
                    target,
                    pace: *pace,
                }
            }
            ast::ConditionDef::Stale { source: s, older } => {
                let id = source(self, s)?;
                let (amount, unit) = &older.value;
                let seconds = match unit.strip_suffix('s').unwrap_or(unit) {
                    "hour" => 3600,
                    "day" => 86_400,
                    "week" => 7 * 86_400,
                    _ => {
                        let d = Diagnostic::error("E0547", format!("unknown unit of time `{unit}`"))
                            .at(older.span, "expected hours, days or weeks")
                            .suggest(unit, ["hours", "days", "weeks"]);
                        self.error(d);
                        return Err(());
                    }
                };
                let amount = self.whole(*amount, older.span, "an age", true)?;
                Condition::Stale {
                    source: id,
                    seconds: amount as i64 * seconds,
                }
            }
            ast::ConditionDef::Empty { source: s } => Condition::Empty {
                source: source(self, s)?,
            },
        };
        let (for_unit, periods) = match &a.for_periods {
            None => (None, 1),
            Some(f) => {
                let (amount, unit) = &f.value;
                let word = unit.strip_suffix('s').unwrap_or(unit);
                let unit = if word == "period" {
                    None
                } else if let Some(g) = Grain::parse(word) {
                    Some(g)
                } else {
                    let d = Diagnostic::error("E0547", format!("unknown unit of time `{unit}`"))
                        .at(f.span, "expected days, weeks, months, quarters, years or periods")
                        .suggest(unit, ["days", "weeks", "months", "quarters", "years", "periods"]);
                    self.error(d);
                    return Err(());
                };
                (unit, self.whole(*amount, f.span, "`for`", true)? as u32)
            }
        };
        let target_grain = match &condition {
            Condition::OffTarget { target, .. } => Some(targets[*target].grain),
            _ => None,
        };
        let grain = per.or(for_unit).or(target_grain).unwrap_or(Grain::Day);
        if let (Some(u), Some(f)) = (for_unit, &a.for_periods)
            && u != grain
        {
            let d = Diagnostic::error(
                "E0575",
                format!("`for` counts {}s, but the alert is per {}", u.name(), grain.name()),
            )
            .at(f.span, format!("write `for N {}s`", grain.name()));
            self.error(d);
            return Err(());
        }
        // Dimensions: known, and reachable from the metric's sources.
        let mut dimensions = Vec::new();
        for n in &a.by {
            let Some(&d) = self.dim_index.get(&n.value) else {
                let diag = Diagnostic::error("E0576", format!("unknown dimension `{}`", n.value))
                    .at(n.span, "no dimension of this name")
                    .suggest(&n.value, self.dim_index.keys().map(|s| s.as_str()));
                self.error(diag);
                return Err(());
            };
            dimensions.push(d);
        }
        if !dimensions.is_empty()
            && matches!(
                condition,
                Condition::OffTarget { .. } | Condition::Stale { .. } | Condition::Empty { .. }
            )
        {
            let d = Diagnostic::error("E0577", "this alert is for the whole, not per dimension value")
                .at(a.by[0].span, "`by` does not apply here")
                .note("targets, freshness and emptiness are about all rows together");
            self.error(d);
            return Err(());
        }
        let message = match &a.message {
            Some(m) => Some(self.template(m, &a.by)?),
            None => None,
        };
        let keep = match &a.keep {
            None => 1,
            Some(k) => self.periods_of(k, grain, "`keep`", "keep")?,
        };
        let volume = match &a.volume {
            None => None,
            Some((m, n)) => Some((metric(self, m)?, n.value)),
        };
        if let Some(w) = &a.webhook
            && !(w.value.starts_with("http://") || w.value.starts_with("https://"))
        {
            let d = Diagnostic::error("E0582", format!("`{}` is not an http or https address", w.value))
                .at(w.span, "a webhook is a URL");
            self.error(d);
            return Err(());
        }
        Ok(Alert {
            name: a.name.value.clone(),
            span: a.name.span,
            condition,
            grain,
            periods,
            keep,
            volume,
            webhook: a.webhook.as_ref().map(|w| w.value.clone()),
            severity,
            message,
            dimensions,
        })
    }

    /// `N days` (or `N periods`) as a number of periods of an alert's grain; `what` names it
    /// in messages, `word` is how it is written.
    fn periods_of(&mut self, d: &crate::span::Spanned<(f64, String)>, grain: Grain, what: &str, word: &str) -> R<u32> {
        let (amount, unit) = &d.value;
        let singular = unit.strip_suffix('s').unwrap_or(unit);
        if singular != "period" && Grain::parse(singular) != Some(grain) {
            let e = Diagnostic::error(
                "E0575",
                format!("{what} counts {unit}, but the alert is per {}", grain.name()),
            )
            .at(d.span, format!("write `{word} N {}s`", grain.name()));
            self.error(e);
            return Err(());
        }
        Ok(self.whole(*amount, d.span, what, true)? as u32)
    }

    /// A percent level for a percent metric only; a percent metric's level as a percent.
    fn unit_fits(&mut self, metric: &str, format: &Format, a: &crate::span::Spanned<ast::Amount>) -> R<()> {
        let percent_metric = *format == Format::Percent;
        if a.value.percent && !percent_metric {
            let d = Diagnostic::error(
                "E0560",
                format!("a percent level for `{metric}`, which is not a percent"),
            )
            .at(a.span, "a percent")
            .note(format!(
                "`{metric}` is formatted as {format}; write the level in its unit"
            ));
            self.error(d);
            return Err(());
        }
        if percent_metric && !a.value.percent && a.value.value.abs() > 1.0 {
            let d = Diagnostic::error("E0560", format!("`{metric}` is a percent: write its level as one"))
                .at(a.span, format!("did you mean {}%?", a.value.value));
            self.error(d);
            return Err(());
        }
        Ok(())
    }

    /// A message template, with only the variables an alert gives.
    fn template(&mut self, m: &crate::span::Spanned<String>, dims: &[ast::Name]) -> R<String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let template = match env.template_from_str(&m.value) {
            Ok(t) => t,
            Err(e) => {
                let d = Diagnostic::error(
                    "E0578",
                    format!(
                        "the message is not a valid template: {}",
                        e.detail().unwrap_or("syntax error")
                    ),
                )
                .at(m.span, "in this message");
                self.error(d);
                return Err(());
            }
        };
        let known: Vec<&str> = ALERT_VARIABLES
            .iter()
            .copied()
            .chain(dims.iter().map(|d| d.value.as_str()))
            .collect();
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !known.contains(&v.as_str()))
            .collect();
        unknown.sort();
        if let Some(v) = unknown.first() {
            let d = Diagnostic::error("E0579", format!("the message uses an unknown variable `{v}`"))
                .at(m.span, "in this message")
                .suggest(v, known.iter().copied())
                .note(format!("variables: {}", known.join(", ")));
            self.error(d);
            return Err(());
        }
        Ok(m.value.clone())
    }

    /// A level as values: percents only for percent metrics, schedule periods aligned with
    /// the grain, schedule files read (confined to the data root, like sources).
    fn level(
        &mut self,
        settings: &Settings,
        calendar: &crate::time::Calendar,
        metric: &Metric,
        l: &ast::LevelDef,
        grain: Grain,
    ) -> R<Level> {
        let percent_metric = metric.format == Format::Percent;
        let check = |r: &mut Self, a: &ast::Amount, span: Span| -> R<f64> {
            if a.percent && !percent_metric {
                let d = Diagnostic::error(
                    "E0560",
                    format!("a percent target for `{}`, which is not a percent", metric.name),
                )
                .at(span, "a percent")
                .note(format!(
                    "`{}` is formatted as {}; write the level in its unit",
                    metric.name, metric.format
                ));
                r.error(d);
                return Err(());
            }
            if percent_metric && !a.percent && a.value.abs() > 1.0 {
                let d = Diagnostic::error(
                    "E0560",
                    format!("`{}` is a percent: write its level as one", metric.name),
                )
                .at(span, format!("did you mean {}%?", a.value));
                r.error(d);
                return Err(());
            }
            Ok(a.value)
        };
        match &l.kind {
            ast::LevelKind::Constant(a) => Ok(Level::Constant(check(self, a, l.span)?)),
            ast::LevelKind::Schedule(entries) => {
                let mut out = std::collections::BTreeMap::new();
                for (period, a) in entries {
                    let start = calendar.period_start(period.value, grain);
                    if start != period.value {
                        let d =
                            Diagnostic::error("E0567", format!("{} does not start a {}", period.value, grain.name()))
                                .at(period.span, format!("the {} starts on {start}", grain.name()));
                        self.error(d);
                        return Err(());
                    }
                    out.insert(start, check(self, a, period.span)?);
                }
                Ok(Level::Schedule(out))
            }
            ast::LevelKind::File(f) => {
                let path = match data::resolve_path(settings, &f.value, f.span) {
                    Ok(p) => p,
                    Err(d) => {
                        self.error(d);
                        return Err(());
                    }
                };
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        let d = Diagnostic::error("E0568", format!("cannot read the schedule `{}`: {e}", f.value))
                            .at(f.span, "this file");
                        self.error(d);
                        return Err(());
                    }
                };
                let mut out = std::collections::BTreeMap::new();
                for (i, line) in text.lines().enumerate() {
                    let cells: Vec<&str> = line.split(',').map(|c| c.trim()).collect();
                    let period_of = |c: &str| crate::time::parse_day(c, false);
                    let header = i == 0 && cells.first().is_some_and(|c| period_of(c).is_none());
                    if line.trim().is_empty() || header {
                        continue;
                    }
                    let bad = |why: &str| {
                        Diagnostic::error("E0569", format!("{}:{}: {why}", f.value, i + 1))
                            .at(f.span, "in this schedule")
                            .note("a schedule is a CSV of period and value: `2026-01,120000`")
                    };
                    let [period, value] = cells.as_slice() else {
                        self.error(bad("expected two cells, a period and a value"));
                        return Err(());
                    };
                    let Some(date) = period_of(period) else {
                        self.error(bad(&format!("`{period}` is not a date")));
                        return Err(());
                    };
                    let amount = match value.strip_suffix('%') {
                        Some(p) => p.trim().parse::<f64>().map(|v| ast::Amount {
                            value: v / 100.0,
                            percent: true,
                        }),
                        None => value.parse::<f64>().map(|v| ast::Amount {
                            value: v,
                            percent: false,
                        }),
                    };
                    let Ok(amount) = amount else {
                        self.error(bad(&format!("`{value}` is not a number")));
                        return Err(());
                    };
                    let start = calendar.period_start(date, grain);
                    if start != date {
                        self.error(bad(&format!("{date} does not start a {}", grain.name())));
                        return Err(());
                    }
                    out.insert(start, check(self, &amount, f.span)?);
                }
                Ok(Level::Schedule(out))
            }
        }
    }

    /// Cycles between metrics, each reported once with its whole path.
    fn cycles(&mut self, metrics: &[Option<Metric>]) {
        let defs = self.defs;
        let n = metrics.len();
        let deps: Vec<Vec<(MetricId, Span)>> = defs
            .metrics
            .iter()
            .map(|m| {
                let mut out = Vec::new();
                metric_refs(&m.expr, &self.metric_index, &mut out);
                out
            })
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done
        let mut state = vec![0u8; n];
        let mut reported: Vec<Vec<MetricId>> = Vec::new();
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            let mut stack: Vec<(MetricId, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some((node, edge)) = stack.pop() {
                if let Some(&(next, _)) = deps[node].get(edge) {
                    stack.push((node, edge + 1));
                    match state[next] {
                        0 => {
                            state[next] = 1;
                            stack.push((next, 0));
                        }
                        1 => {
                            let pos = stack.iter().position(|(m, _)| *m == next).unwrap_or(0);
                            let cycle: Vec<MetricId> = stack[pos..].iter().map(|(m, _)| *m).collect();
                            let mut key = cycle.clone();
                            key.sort();
                            if !reported.contains(&key) {
                                reported.push(key);
                                self.report_cycle(&cycle, &deps);
                            }
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                }
            }
        }
    }

    fn report_cycle(&mut self, cycle: &[MetricId], deps: &[Vec<(MetricId, Span)>]) {
        let defs = self.defs;
        let names: Vec<&str> = cycle.iter().map(|&m| defs.metrics[m].name.value.as_str()).collect();
        let path = format!("{} → {}", names.join(" → "), names[0]);
        let first = &defs.metrics[cycle[0]];
        let mut d = if cycle.len() == 1 {
            Diagnostic::error("E0529", format!("metric `{}` refers to itself", names[0]))
        } else {
            Diagnostic::error("E0529", format!("metrics refer to each other in a cycle: {path}"))
        };
        let next_of = |i: usize| cycle[(i + 1) % cycle.len()];
        for (i, &m) in cycle.iter().enumerate() {
            let target = next_of(i);
            if let Some((_, span)) = deps[m].iter().find(|(t, _)| *t == target) {
                let label = format!(
                    "`{}` uses `{}`",
                    defs.metrics[m].name.value, defs.metrics[target].name.value
                );
                d = if i == 0 {
                    d.at(*span, label)
                } else {
                    d.also(*span, label)
                };
            }
        }
        if d.primary.is_none() {
            d = d.at(first.name.span, "in this cycle");
        }
        self.error(d.note(format!("cycle: {path}")));
    }
}

fn metric_refs(e: &Expr, index: &HashMap<String, MetricId>, out: &mut Vec<(MetricId, Span)>) {
    match &e.kind {
        ExprKind::Name(n) => {
            if let Some(&id) = index.get(n) {
                out.push((id, e.span))
            }
        }
        ExprKind::Binary(_, a, b) => {
            metric_refs(a, index, out);
            metric_refs(b, index, out);
        }
        ExprKind::Neg(a) | ExprKind::Offset { expr: a, .. } => metric_refs(a, index, out),
        ExprKind::Call { name, args, .. } if TIME_FUNCTIONS.contains(&name.value.as_str()) => {
            args.iter().for_each(|a| metric_refs(a, index, out))
        }
        _ => {}
    }
}

/// Calls `f` on a formula and every formula it reaches through the metrics it names (each
/// metric once, so a cycle, reported on its own, ends the walk).
fn reach(formula: &Formula, metrics: &[Option<Metric>], f: &mut dyn FnMut(&Formula)) {
    let mut seen = Vec::new();
    let mut stack = vec![formula.clone()];
    while let Some(g) = stack.pop() {
        g.walk(&mut |x| {
            if let Formula::Metric(id) = x
                && !seen.contains(id)
            {
                seen.push(*id);
                if let Some(Some(m)) = metrics.get(*id) {
                    stack.push(m.formula.clone());
                }
            }
            f(x)
        });
    }
}

/// A target as written in the DSL; a YAML entry written as the DSL would.
fn target_text(written: &str, t: &ast::TargetDef) -> String {
    if written.starts_with("target") {
        return written.trim_end().to_string();
    }
    let amount = |a: &ast::Amount| {
        if a.percent {
            format!("{}%", a.value * 100.0)
        } else {
            format!("{}", a.value)
        }
    };
    let level = |l: &ast::LevelDef| match &l.kind {
        ast::LevelKind::Constant(a) => amount(a),
        ast::LevelKind::File(f) => format!("schedule(\"{}\")", f.value),
        ast::LevelKind::Schedule(entries) => format!(
            "{{ {} }}",
            entries
                .iter()
                .map(|(d, a)| format!("{}: {}", d.value, amount(a)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let goal = match &t.goal {
        GoalDef::AtLeast(l) => format!(">= {}", level(l)),
        GoalDef::AtMost(l) => format!("<= {}", level(l)),
        GoalDef::Reach(l) => format!("= {}", level(l)),
        GoalDef::Between(lo, hi) => format!("between {} and {}", level(lo), level(hi)),
    };
    let mut out = format!("target {} {goal}", t.metric.value);
    if let Some(p) = &t.per {
        out.push_str(&format!(" per {}", p.value));
    }
    if let Some(f) = &t.from {
        out.push_str(&format!(" from {}", f.value));
    }
    if let Some(b) = &t.by {
        out.push_str(&format!(" by {}", b.value));
    }
    if let Some(tol) = &t.tolerance {
        out.push_str(&format!(" tolerance {}", amount(&tol.value)));
    }
    out
}

/// `rolling(revenue, 7 days)` → "a metric and a length"; for the arity message.
fn arguments(usage: &str) -> &'static str {
    match usage.split(',').count() {
        1 => "one argument",
        _ => "two arguments",
    }
}

fn collect_qualifiers(e: &Expr, out: &mut Vec<(String, Span)>) {
    walk(e, &mut |x| {
        if let ExprKind::Qualified(s, _) = &x.kind {
            out.push((s.value.clone(), s.span));
        }
    });
}

fn collect_bare(e: &Expr, out: &mut Vec<(String, Span)>) {
    walk(e, &mut |x| {
        if let ExprKind::Name(n) = &x.kind {
            out.push((n.clone(), x.span));
        }
    });
}

fn walk(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    f(e);
    match &e.kind {
        ExprKind::Binary(_, a, b) => {
            walk(a, f);
            walk(b, f);
        }
        ExprKind::Not(a) | ExprKind::Neg(a) | ExprKind::IsNull { expr: a, .. } => walk(a, f),
        ExprKind::InList { expr, list, .. } => {
            walk(expr, f);
            list.iter().for_each(|x| walk(x, f));
        }
        ExprKind::Between { expr, low, high, .. } => {
            walk(expr, f);
            walk(low, f);
            walk(high, f);
        }
        ExprKind::Call { args, .. } => args.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}
