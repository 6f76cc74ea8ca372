//! Spans: the model shared by the builder and exporters, the builder itself, clock
//! conversion, routes and runtimes.

pub mod builder;
pub mod clock;
pub mod model;
pub mod route;
pub mod runtime;

pub use model::*;
