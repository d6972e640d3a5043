//! atelier: an event-driven stream processor.
//!
//! Producers append typed events to Kafka; projector consumers fold them into
//! materialized views (ScyllaDB/Cassandra, or an embedded store) so that every
//! dashboard read is one query; ops replay topics to rebuild views.
//!
//! Map of the crate, by floor, top to bottom: a module imports only modules
//! on lower floors, so no import runs in a circle; `tests/it/layers.rs`
//! holds the code to it.
//!
//! - [`cli`]: one file per subcommand (`cli/bench/` a folder); the
//!   operations commands call the admin routes through one HTTP client.
//! - [`app`]: the composition root: what every role shares, then one
//!   builder per role (API, projectors, inference; all of them in
//!   `atelier up`), for `main` and the tests alike.
//! - [`api`]: axum routes, each declared once with its request and answer
//!   types, from which the OpenAPI document is generated; auth, SSE, the
//!   dashboard.
//! - [`infer`]: model registry, TorchScript execution (tch), the worker's
//!   pipelined stages and its transactional committer, inference replay.
//! - [`ops`]: rebuilding views into new generations, their status, gc.
//! - [`project`]: the generic projector runtime over an aggregate, and one
//!   registration per view.
//! - [`dlq`]: dead letters: their headers, listing, replay.
//! - [`view`], [`bus`], [`blob`], [`image`]: the view stores (a small trait
//!   per view, CQL and embedded); Kafka (one producer builder, one group
//!   member builder, the per-partition consumer loop, topics, the embedded
//!   cluster); object storage; the image codec.
//! - [`config`], [`telemetry`], [`edge`]: the one configuration struct;
//!   tracing and typed metric emitters; ids and clocks minted at the edge.
//! - [`fold`]: projections as pure functions (an aggregate trait with one
//!   versioned-apply ending). Pure.
//! - [`event`]: the contracts: event types, typed ids, validation, wire
//!   encoding, schemas. Pure.

pub mod api;
pub mod app;
pub mod blob;
pub mod bus;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod edge;
pub mod event;
pub mod fold;
pub mod image;
pub mod infer;
pub mod ops;
pub mod project;
pub mod telemetry;
pub mod view;
