//! The untyped definitions both front ends (DSL and YAML) produce, with a span on every node.
//!
//! Names are not resolved here; that is the model stage's job.

use crate::span::{Span, Spanned};
use chrono::NaiveDate;

/// A name as written, with its place.
pub type Name = Spanned<String>;

/// Everything one definition file declares.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub sources: Vec<SourceDef>,
    pub dimensions: Vec<DimensionDef>,
    pub metrics: Vec<MetricDef>,
    pub targets: Vec<TargetDef>,
    pub alerts: Vec<AlertDef>,
    pub reports: Vec<ReportDef>,
}

impl Definitions {
    pub fn extend(&mut self, other: Definitions) {
        self.sources.extend(other.sources);
        self.dimensions.extend(other.dimensions);
        self.metrics.extend(other.metrics);
        self.targets.extend(other.targets);
        self.alerts.extend(other.alerts);
        self.reports.extend(other.reports);
    }
}

/// `target METRIC >= LEVEL [per GRAIN] [from PERIOD] [by DATE] [tolerance X]`
#[derive(Debug, Clone)]
pub struct TargetDef {
    pub metric: Name,
    pub goal: GoalDef,
    pub per: Option<Name>,
    pub from: Option<Spanned<NaiveDate>>,
    /// A deadline: the metric adds up from the start of the period to this day.
    pub by: Option<Spanned<NaiveDate>>,
    pub tolerance: Option<Spanned<Amount>>,
    pub span: Span,
}

/// A target's direction and level(s); `Reach` is `=` (a deadline's goal).
#[derive(Debug, Clone)]
pub enum GoalDef {
    AtLeast(LevelDef),
    AtMost(LevelDef),
    Between(LevelDef, LevelDef),
    Reach(LevelDef),
}

/// A level: one value, one per period, or a CSV file of them.
#[derive(Debug, Clone)]
pub struct LevelDef {
    pub kind: LevelKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum LevelKind {
    Constant(Amount),
    Schedule(Vec<(Spanned<NaiveDate>, Amount)>),
    File(Spanned<String>),
}

/// A number as written: `25%` is 0.25 with `percent`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Amount {
    pub value: f64,
    pub percent: bool,
}

/// `alert NAME { when CONDITION [for N UNIT] [per GRAIN] [by DIM] [severity S] [message "..."] }`
#[derive(Debug, Clone)]
pub struct AlertDef {
    pub name: Name,
    pub condition: Option<Spanned<ConditionDef>>,
    /// `for 3 days`: the amount and the unit.
    pub for_periods: Option<Spanned<(f64, String)>>,
    pub per: Option<Name>,
    pub by: Vec<Name>,
    pub severity: Option<Name>,
    pub message: Option<Spanned<String>>,
    /// `keep 2 days`
    pub keep: Option<Spanned<(f64, String)>>,
    /// `volume enquiries >= 30`
    pub volume: Option<(Name, Spanned<f64>)>,
    /// `webhook "https://..."`
    pub webhook: Option<Spanned<String>>,
    pub span: Span,
}

/// What fires an alert.
#[derive(Debug, Clone)]
pub enum ConditionDef {
    /// `conversion < 20%`, or one level per severity: `cpa > 50 warning, > 80 critical`.
    Threshold { metric: Name, levels: Vec<ThresholdDef> },
    /// `revenue change vs last year < -10%`: a percent is relative, a number absolute.
    Change {
        metric: Name,
        /// `previous` (default) or `year`.
        against: Option<Name>,
        op: BinOp,
        amount: Spanned<Amount>,
    },
    /// `enquiries anomaly mad > 4 over 8 weeks by weekday`
    Anomaly {
        metric: Name,
        method: Option<Name>,
        threshold: Option<Spanned<f64>>,
        window: Option<Spanned<(f64, String)>>,
        weekday: bool,
    },
    /// `revenue off target`, `won_jobs off pace`.
    OffTarget { metric: Name, pace: bool },
    /// `source jobs older than 2 days`
    Stale {
        source: Name,
        older: Spanned<(f64, String)>,
    },
    /// `source jobs empty`: no rows in the period.
    Empty { source: Name },
}

/// `< 20%`, `> 80 critical`
#[derive(Debug, Clone)]
pub struct ThresholdDef {
    pub op: BinOp,
    pub amount: Spanned<Amount>,
    pub severity: Option<Name>,
}

/// `report NAME "Title" { grain: week range: last 26 weeks metrics: [...] by: channel }`
#[derive(Debug, Clone)]
pub struct ReportDef {
    pub name: Name,
    pub title: Option<Spanned<String>>,
    pub description: Option<Spanned<String>>,
    pub grain: Option<Name>,
    pub range: Option<Spanned<String>>,
    pub metrics: Vec<Name>,
    pub by: Vec<Name>,
    pub span: Span,
}

/// `source NAME { file: ..., time: ..., key: ..., join OTHER on COL }`
#[derive(Debug, Clone)]
pub struct SourceDef {
    pub name: Name,
    pub file: Option<Spanned<String>>,
    /// `csv` or `parquet`; by default taken from the file extension.
    pub format: Option<Spanned<String>>,
    pub time: Option<Name>,
    pub key: Option<Name>,
    pub joins: Vec<JoinDef>,
    pub meta: Meta,
    pub span: Span,
}

/// `join TARGET on COLUMN` or `join TARGET on LOCAL_COLUMN = TARGET_COLUMN` (many-to-one).
#[derive(Debug, Clone)]
pub struct JoinDef {
    pub target: Name,
    pub column: Name,
    pub target_column: Option<Name>,
    pub span: Span,
}

/// `dimension NAME = expression`
#[derive(Debug, Clone)]
pub struct DimensionDef {
    pub name: Name,
    pub expr: Expr,
    pub meta: Meta,
    pub span: Span,
}

/// `metric NAME "Label" = expression { metadata }`
#[derive(Debug, Clone)]
pub struct MetricDef {
    pub name: Name,
    pub expr: Expr,
    pub meta: Meta,
    pub span: Span,
}

/// Metadata shared by every definition.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub label: Option<Spanned<String>>,
    pub description: Option<Spanned<String>>,
    pub owner: Option<Spanned<String>>,
    pub tags: Vec<Spanned<String>>,
    pub unit: Option<Spanned<String>>,
    pub format: Option<Spanned<Format>>,
    pub good: Option<Spanned<Direction>>,
}

/// How a value is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Number,
    /// Currency with its ISO code, e.g. `currency(USD)`.
    Currency(String),
    Percent,
    Duration,
}

impl Format {
    pub fn parse(text: &str, arg: Option<&str>) -> Option<Format> {
        match (text, arg) {
            ("number", None) => Some(Format::Number),
            ("percent", None) => Some(Format::Percent),
            ("duration", None) => Some(Format::Duration),
            ("currency", Some(code)) => Some(Format::Currency(code.to_uppercase())),
            ("currency", None) => Some(Format::Currency("USD".into())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Number => write!(f, "number"),
            Format::Currency(c) => write!(f, "currency({c})"),
            Format::Percent => write!(f, "percent"),
            Format::Duration => write!(f, "duration"),
        }
    }
}

/// Which direction of a metric is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// An expression of the one expression language (filters, dimensions, metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Number(f64),
    String(String),
    Bool(bool),
    Date(NaiveDate),
    /// `2026-01`: the first day of a month, where a period is meant.
    Month(NaiveDate),
    Null,
    /// A bare name: a column, a metric, a source or a dimension, depending on context.
    Name(String),
    /// `source.column`
    Qualified(Name, Name),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    /// A function or aggregate call, with an optional `where` filter (aggregates only).
    Call {
        name: Name,
        args: Vec<Expr>,
        filter: Option<Box<Expr>>,
    },
    /// `7 days`: an amount of a unit of time (an argument of `rolling`).
    Duration {
        amount: f64,
        unit: Name,
    },
    /// `revenue[-1 year]`: the value of an earlier (negative) or later period.
    Offset {
        expr: Box<Expr>,
        amount: f64,
        unit: Name,
    },
    /// `conversion(enquiries -> jobs by customer_id within 30 days)`.
    Conversion(Box<ConversionExpr>),
}

/// `conversion(BASE [where F] -> TARGET [where F] by ENTITY within N UNIT)`; `conversions`
/// (with `count`) counts the converted base rows instead of giving their share.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionExpr {
    pub count: bool,
    pub base: Name,
    pub base_filter: Option<Expr>,
    pub target: Name,
    pub target_filter: Option<Expr>,
    pub entity: Name,
    pub within: Spanned<(f64, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }

    pub fn is_arithmetic(self) -> bool {
        matches!(self, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div)
    }
}

/// A test of definitions: fixture rows per source, and what metrics and alerts must give.
#[derive(Debug, Clone)]
pub struct TestDef {
    pub name: Name,
    pub as_of: Option<Spanned<NaiveDate>>,
    /// Rows per source, each a JSON object of column values, with the place of the source's
    /// rows.
    pub rows: Vec<(Name, Vec<serde_json::Map<String, serde_json::Value>>)>,
    pub expect: Vec<ExpectDef>,
    pub alerts: Vec<AlertExpectDef>,
    pub span: Span,
}

/// `{metric, per, period, by, value, tolerance}`
#[derive(Debug, Clone)]
pub struct ExpectDef {
    pub metric: Name,
    pub per: Option<Name>,
    pub period: Option<Spanned<NaiveDate>>,
    /// Dimension values of the row meant.
    pub by: Vec<(Name, Option<String>)>,
    /// `None`: the metric has no value (a ratio over nothing).
    pub value: Option<f64>,
    pub tolerance: Option<f64>,
    pub span: Span,
}

/// `{alert, firing, by, as_of}`
#[derive(Debug, Clone)]
pub struct AlertExpectDef {
    pub alert: Name,
    pub firing: bool,
    /// The day evaluated at (default: the test's `as_of`).
    pub as_of: Option<Spanned<NaiveDate>>,
    pub by: Vec<(Name, Option<String>)>,
    pub span: Span,
}
