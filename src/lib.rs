//! atelier: an event-driven stream processor.
//!
//! Producers append typed events to Kafka; projector consumers fold them into
//! materialized views (ScyllaDB/Cassandra, or an embedded store) so that every
//! dashboard read is one query; ops replay topics to rebuild views.
//!
//! Map of the crate, in pipeline order:
//!
//! - [`event`]: the contracts. Event types, typed ids, envelope, validation,
//!   wire encoding (CloudEvents binary mode) and JSON Schema generation. Pure.
//! - [`fold`]: projections as pure functions (state + event → state). Pure.
//! - [`bus`]: Kafka. Producer, the per-partition consumer loop, topic admin,
//!   the embedded (mock) cluster.
//! - [`project`]: the projector runtime: partitions → folds → coalesced,
//!   versioned view writes → offsets stored.
//! - [`view`]: the view stores (CQL and embedded) behind one trait.
//! - [`blob`]: object storage (S3 and a local directory).
//! - [`infer`]: model registry and inference (arrives with the inference work).
//! - [`api`]: HTTP ingest and read routes, auth, consistency tokens.
//! - [`cli`]: one file per subcommand; [`config`]: the one configuration struct.
//! - [`telemetry`]: tracing setup and metric names.

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
