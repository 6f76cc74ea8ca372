//! Spans: the model shared by the builder and exporters, the builder itself, clock
//! conversion and per-process resources.

pub mod builder;
pub mod clock;
pub mod model;
pub mod resource;
pub mod route;
pub mod runtime;

pub use model::*;
