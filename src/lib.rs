//! tally: a metrics-as-code compiler.
//!
//! Definitions (`.tally` or `.yaml`) go through these stages, each a module with its own
//! output type (see `ARCHITECTURE.md`):
//!
//! | stage | module | produces |
//! |---|---|---|
//! | settings | [`settings`] | [`settings::Settings`] |
//! | parse (DSL) | [`syntax`] | [`ast::Definitions`] with spans |
//! | parse (YAML) | [`yaml`] | [`ast::Definitions`] with spans |
//! | load | [`project`] | [`project::Project`]: settings, files, definitions |
//! | data | [`data`] | [`data::SourceData`]: files and schemas |
//! | resolve | [`model`] | [`model::Model`]: names resolved, types checked |
//! | plan | [`plan`] | [`plan::QueryPlan`]: DataFusion logical plans, one scan per source |
//! | run | [`run`] | [`run::ResultTable`]: every period, every breakdown value |
//!
//! The library never prints and never exits; the binary maps results to output and exit codes.

// A `Diagnostic` is the error of every stage; it is returned on the cold path only, so its
// size does not matter.
#![allow(clippy::result_large_err)]

pub mod alerts;
pub mod ast;
pub mod data;
pub mod diagnostic;
pub mod diff;
pub mod fmt;
pub mod init;
pub mod model;
pub mod output;
pub mod percentile;
pub mod period;
pub mod plan;
pub mod project;
pub mod random;
pub mod report;
pub mod run;
pub mod settings;
pub mod span;
pub mod syntax;
pub mod targets;
pub mod testing;
pub mod time;
pub mod yaml;
