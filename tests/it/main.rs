//! Integration tests: one binary. Every behaviour runs against the embedded
//! backends and against real Kafka, Cassandra and S3 (started by
//! `scripts/services`; under CI their absence is a failure, locally a skip).

/// Runs an `async fn(Backends)` once per backend set.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            use crate::helpers::Backends;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(Backends::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                super::$name(Backends::Real).await
            }
        }
    };
}

mod access;
mod api_polls;
mod authz;
mod blobs;
mod cards;
#[cfg(feature = "torch")]
mod chaos;
mod cli;
mod consumer;
mod dlq;
mod exactly_once;
mod export;
mod feed;
mod helpers;
#[cfg(feature = "torch")]
mod infer;
mod kill;
mod layers;
mod limits;
mod one_query;
mod openapi;
mod ops_endpoints;
mod replay;
mod restart;
mod schemas;
mod sink;
mod sweep;
mod topics;
mod topology;
mod views;
