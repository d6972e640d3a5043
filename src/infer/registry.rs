//! Which model serves each style, and the one loaded copy of it.
//!
//! The compacted models topic holds the latest [`ModelPublished`] per style.
//! [`follow`] reads it from the start, feeds every announcement to a
//! [`Catalog`] (the styles the edge accepts, no models loaded) and, in
//! worker processes, to a [`Registry`], which downloads the TorchScript
//! file, checks its SHA-256 and the model contract, and swaps it in. Tasks
//! take an `Arc` of the current model per batch: a swap never drops work in
//! flight, and there is one copy in memory whatever the concurrency.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::model::{Engine, Model, ModelError};
use crate::blob::BlobStore;
use crate::bus::{BusError, Record, tail_config};
use crate::config::KafkaConfig;
use crate::event::{EventData, ModelPublished, ModelVersion, Style, Topic, wire};

/// The styles that have a published model (what the upload edge accepts).
#[derive(Debug)]
pub struct Catalog {
    styles: RwLock<BTreeMap<Style, ModelPublished>>,
    /// The models topic has been read to the end it had when this process
    /// started (and, with inference, those models loaded): a style missing
    /// now is unknown, not still loading.
    caught_up: watch::Sender<bool>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            styles: RwLock::default(),
            caught_up: watch::Sender::new(false),
        }
    }
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Records an announcement (the latest per style wins, as in the topic).
    pub fn publish(&self, p: &ModelPublished) {
        self.styles.write().insert(p.style.clone(), p.clone());
    }

    /// The announcement of a style.
    pub fn get(&self, style: &Style) -> Option<ModelPublished> {
        self.styles.read().get(style).cloned()
    }

    /// Every published style, sorted.
    pub fn all(&self) -> Vec<ModelPublished> {
        self.styles.read().values().cloned().collect()
    }

    /// Whether every announcement made before this process started is in.
    pub fn caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Turns true once every announcement made before this process started
    /// is in (see [`follow`]).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.caught_up.subscribe()
    }

    /// Every announcement made before this process started is in.
    pub fn mark_caught_up(&self) {
        self.caught_up.send_replace(true);
    }
}

/// A model in memory.
#[derive(Debug)]
pub struct Loaded {
    /// Its style.
    pub style: Style,
    /// Its version.
    pub version: ModelVersion,
    /// The model.
    pub model: Arc<dyn Model>,
}

/// Why a model could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The blob store failed (retry).
    #[error("fetching {key}: {source}")]
    Blob {
        /// The model's key.
        key: String,
        /// Why.
        source: crate::blob::BlobError,
    },
    /// The bytes are not the announced ones.
    #[error("{key}: SHA-256 {got} differs from the announced {want}")]
    Checksum {
        /// The model's key.
        key: String,
        /// Announced.
        want: String,
        /// Computed.
        got: String,
    },
    /// The engine refused it.
    #[error("loading {key}: {source}")]
    Model {
        /// The model's key.
        key: String,
        /// Why.
        source: ModelError,
    },
}

/// The loaded models of a worker process.
#[derive(Debug)]
pub struct Registry {
    engine: Arc<dyn Engine>,
    blobs: Arc<dyn BlobStore>,
    current: RwLock<HashMap<Style, Arc<Loaded>>>,
    loads: AtomicU64,
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Registry {
    /// An empty registry.
    pub fn new(engine: Arc<dyn Engine>, blobs: Arc<dyn BlobStore>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            blobs,
            current: RwLock::default(),
            loads: AtomicU64::new(0),
        })
    }

    /// The engine models run on.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The current model of a style.
    pub fn get(&self, style: &Style) -> Option<Arc<Loaded>> {
        self.current.read().get(style).cloned()
    }

    /// How many models this process has loaded (a test of "once per
    /// process": it does not grow with concurrency).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Loads an announced model unless that version is already current,
    /// then makes it current. Work holding the previous `Arc` finishes on
    /// the previous version.
    pub async fn install(&self, p: &ModelPublished) -> Result<Arc<Loaded>, RegistryError> {
        if let Some(cur) = self.get(&p.style)
            && cur.version == p.version
        {
            return Ok(cur);
        }
        let key = p.object_key.clone();
        let bytes = self
            .blobs
            .get(&key)
            .await
            .map_err(|source| RegistryError::Blob {
                key: key.clone(),
                source,
            })?;
        let got = sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(&p.sha256) {
            return Err(RegistryError::Checksum {
                key,
                want: p.sha256.clone(),
                got,
            });
        }
        let engine = self.engine.clone();
        let model = tokio::task::spawn_blocking(move || engine.load(&bytes))
            .await
            .map_err(|e| RegistryError::Model {
                key: key.clone(),
                source: ModelError::permanent(format!("loader panicked: {e}")),
            })?
            .map_err(|source| RegistryError::Model {
                key: key.clone(),
                source,
            })?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::emit::model_loaded(p.style.to_string());
        let loaded = Arc::new(Loaded {
            style: p.style.clone(),
            version: p.version.clone(),
            model,
        });
        self.current.write().insert(p.style.clone(), loaded.clone());
        tracing::info!(style = %p.style, version = %p.version, "model loaded");
        Ok(loaded)
    }
}

/// Follows the models topic from its start until `shutdown`: every
/// announcement goes to the catalog and, when given, the registry (a model
/// that fails to install is logged and the previous version stays).
/// The catalog says it is caught up ([`Catalog::ready`]) once the topic has
/// been read to the end it had at start (and those models installed).
pub async fn follow(
    kafka: &KafkaConfig,
    brokers: &str,
    catalog: Arc<Catalog>,
    registry: Option<Arc<Registry>>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let cfg = tail_config(kafka, brokers, "models", "earliest");
    // The end of a partition is reported as such: a topic whose last entry
    // is a transaction marker (or whose last records were compacted or
    // aborted) has no record at `end - 1` to see.
    let consumer: StreamConsumer<EndsExpected> = cfg
        .clone()
        .set("enable.partition.eof", "true")
        .create_with_context(EndsExpected)?;
    let topic = kafka.topic(Topic::Models);
    // The end of the topic now: what "caught up" means.
    let ends = {
        let (c, t) = (cfg.clone(), topic.clone());
        tokio::task::spawn_blocking(move || end_offsets(&c, &t))
            .await
            .map_err(|e| BusError::Handler(e.to_string()))??
    };
    let mut pending: HashMap<i32, i64> = ends.into_iter().filter(|&(_, end)| end > 0).collect();
    let caught_up = |pending: &mut HashMap<i32, i64>, partition: i32| {
        if pending.remove(&partition).is_some() && pending.is_empty() {
            catalog.mark_caught_up();
        }
    };
    if pending.is_empty() {
        catalog.mark_caught_up();
    }
    consumer.subscribe(&[&topic])?;
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                caught_up(&mut pending, partition);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "models topic");
                continue;
            }
        };
        let (partition, offset) = (m.partition(), m.offset());
        let rec = Record::of(&m);
        match wire::decode(
            rec.header_pairs(),
            rec.payload().unwrap_or_default(),
            Some(Topic::Models),
        ) {
            Ok(ev) => {
                if let EventData::ModelPublished(p) = ev.data {
                    catalog.publish(&p);
                    if let Some(reg) = &registry {
                        install_with_retry(reg, &p, &shutdown).await;
                    }
                }
            }
            Err(e) => tracing::warn!(offset, error = %e, "undecodable record on the models topic"),
        }
        if pending
            .get(&partition)
            .is_some_and(|&end| offset + 1 >= end)
        {
            caught_up(&mut pending, partition);
        }
    }
}

/// The models follower's client context: the ends of partitions that it
/// asks librdkafka to report are expected, also where librdkafka raises one
/// as a client-wide error (as it may for an empty partition); every other
/// error is logged as by default.
struct EndsExpected;

impl rdkafka::ClientContext for EndsExpected {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::debug!(reason, "models topic: end of a partition");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndsExpected {}

async fn install_with_retry(reg: &Registry, p: &ModelPublished, shutdown: &CancellationToken) {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=6 {
        match reg.install(p).await {
            Ok(_) => return,
            Err(RegistryError::Blob { source, .. }) if source.is_retriable() && attempt < 6 => {
                tracing::warn!(style = %p.style, error = %source, ?delay, "model fetch failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(style = %p.style, version = %p.version, error = %e,
                    "model not installed; the previous version (if any) stays");
                return;
            }
        }
    }
}

fn end_offsets(cfg: &rdkafka::ClientConfig, topic: &str) -> Result<Vec<(i32, i64)>, BusError> {
    let c: rdkafka::consumer::BaseConsumer = cfg.create()?;
    let timeout = Duration::from_secs(10);
    let md = c.fetch_metadata(Some(topic), timeout)?;
    let mut out = Vec::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = c.fetch_watermarks(topic, p.id(), timeout)?;
            out.push((p.id(), high));
        }
    }
    Ok(out)
}
