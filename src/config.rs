//! The one configuration struct. Defaults run everything embedded (mock Kafka
//! cluster, embedded view store, local blob directory); a TOML file and
//! `ATELIER_*` environment variables point it at real services.
//!
//! Layering, later wins: defaults, `atelier.toml` (or `--config FILE` /
//! `ATELIER_CONFIG`), then environment: `ATELIER_SECTION__FIELD` (for example
//! `ATELIER_KAFKA__BROKERS=host:9092`, `ATELIER_VIEWS__BACKEND=cql`), and
//! `ATELIER_KAFKA_PROP_<NAME>` for any librdkafka property (`_` becomes `.`,
//! so `ATELIER_KAFKA_PROP_SECURITY_PROTOCOL=SASL_SSL`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A secret: never printed, never logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret's text, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

/// Everything a process needs to know.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where embedded backends keep their files (blobs, dev credentials).
    pub data_dir: PathBuf,
    /// HTTP API.
    pub http: HttpConfig,
    /// The log.
    pub kafka: KafkaConfig,
    /// The view store.
    pub views: ViewsConfig,
    /// Object storage.
    pub blobs: BlobConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Projector tuning.
    pub projector: ProjectorConfig,
    /// Image uploads at the edge.
    pub uploads: UploadsConfig,
    /// Inference workers.
    pub infer: InferConfig,
    /// Per-caller limits.
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".atelier"),
            http: HttpConfig::default(),
            kafka: KafkaConfig::default(),
            views: ViewsConfig::default(),
            blobs: BlobConfig::default(),
            auth: AuthConfig::default(),
            projector: ProjectorConfig::default(),
            uploads: UploadsConfig::default(),
            infer: InferConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// Per-caller limits: past them a caller gets 429 (rates) or 503 (upload
/// capacity) with `Retry-After`, and `atelier_limited_total` counts it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Writes one principal may make per second, sustained (0: no limit).
    pub writes_per_sec: u32,
    /// Writes one principal may make at once beyond the rate.
    pub writes_burst: u32,
    /// Unauthenticated reads one client address may make per second (0,
    /// the default: no limit; behind a proxy every client shares its
    /// address, so set it where clients connect directly).
    pub reads_per_sec: u32,
    /// Reads one address may make at once beyond the rate.
    pub reads_burst: u32,
    /// Uploads received at once, across callers (past it: 503).
    pub uploads_in_flight: u32,
    /// Resident memory uploads may take at once, in MiB: each reserves 2×
    /// its `Content-Length` (or `uploads.max_bytes` when unknown), room for
    /// its body and the buffers and allocator slack measured beside it
    /// (about 1.55×); past it: 503.
    pub upload_memory_mib: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            writes_per_sec: 200,
            writes_burst: 400,
            reads_per_sec: 0,
            reads_burst: 1000,
            uploads_in_flight: 16,
            upload_memory_mib: 256,
        }
    }
}

/// HTTP API settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest JSON request body, in bytes (larger: 413).
    pub body_limit: usize,
    /// Longest wait for `?after=<token>` reads, in milliseconds.
    pub max_after_wait_ms: u64,
    /// `/readyz` answers ready only while the views lag the log by at most
    /// this many records.
    pub ready_lag: u64,
    /// Where `/metrics` and `/v1/pipeline` are served. Empty (the default):
    /// with the API on `listen`. An address (`127.0.0.1:9090`): only there,
    /// with `/healthz` and `/readyz` (the API's listener answers 404 for
    /// them): a port only the monitoring network reaches.
    pub ops_listen: String,
    /// `/metrics` and `/v1/pipeline` need an administrator's token
    /// (wherever they are served).
    pub ops_token: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: 64 * 1024,
            max_after_wait_ms: 2_000,
            ready_lag: 1_000,
            ops_listen: String::new(),
            ops_token: false,
        }
    }
}

/// Kafka settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers; empty means the embedded mock cluster.
    pub brokers: String,
    /// Prefix for every topic and consumer group (isolates tests and tenants).
    pub namespace: String,
    /// Extra librdkafka properties, passed through to every client.
    pub properties: BTreeMap<String, String>,
    /// The embedded log's journal (no brokers configured).
    pub journal: JournalConfig,
}

/// How the embedded log is kept on disk, under `data_dir/log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Keep the log on disk. Off, it lives in memory and is lost at exit
    /// (tests and benchmarks that want a throwaway log).
    pub enabled: bool,
    /// When an accepted record reaches the disk: `always` (each group of
    /// appends is fsynced before any of them is answered: a 202 survives
    /// a power loss), or an interval such as `100ms` (written before the
    /// answer, so a 202 survives a crash of the process; synced at most
    /// that often, so a power loss can take that much).
    pub fsync: String,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fsync: "always".into(),
        }
    }
}

impl JournalConfig {
    /// The sync interval: `None` for `always`, or why `fsync` is not a
    /// policy.
    pub fn fsync_interval(&self) -> Result<Option<std::time::Duration>, String> {
        let f = self.fsync.trim();
        if f == "always" {
            return Ok(None);
        }
        let (n, unit) = f
            .find(|c: char| !c.is_ascii_digit())
            .map(|i| f.split_at(i))
            .unwrap_or((f, ""));
        let ms = match (n.parse::<u64>(), unit) {
            (Ok(n), "ms") => n,
            (Ok(n), "s") => n.saturating_mul(1000),
            _ => {
                return Err(format!(
                    "kafka.journal.fsync = {f:?}: use \"always\" or an interval such as \"100ms\" or \"1s\""
                ));
            }
        };
        Ok(Some(std::time::Duration::from_millis(ms.max(1))))
    }
}

impl KafkaConfig {
    /// True when no brokers are configured.
    pub fn is_embedded(&self) -> bool {
        self.brokers.trim().is_empty()
    }

    /// The namespaced name of a topic.
    pub fn topic(&self, t: crate::event::Topic) -> String {
        format!("{}{}", self.namespace, t.name())
    }

    /// The namespaced name of a consumer group.
    pub fn group(&self, name: &str) -> String {
        format!("{}atelier.{name}", self.namespace)
    }
}

/// Which view store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ViewBackend {
    /// In-process store with the CQL data model.
    #[default]
    Embedded,
    /// ScyllaDB or Cassandra.
    Cql,
}

/// A CQL consistency level (the generation control rows always use
/// `LOCAL_QUORUM` with `LOCAL_SERIAL` lightweight transactions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CqlConsistency {
    /// One replica.
    One,
    /// One replica in the local datacenter.
    LocalOne,
    /// A majority of all replicas.
    Quorum,
    /// A majority of the local datacenter's replicas (the default: with
    /// both reads and writes at it, a read sees every acknowledged write).
    #[default]
    LocalQuorum,
    /// A majority in every datacenter.
    EachQuorum,
    /// Every replica.
    All,
}

/// View store settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewsConfig {
    /// Backend.
    pub backend: ViewBackend,
    /// CQL contact points (`host:port`).
    pub contact_points: Vec<String>,
    /// Keyspace (created if missing).
    pub keyspace: String,
    /// Replication factor used when creating the keyspace with
    /// `SimpleStrategy` (when `datacenters` is empty).
    pub replication_factor: u32,
    /// Replicas per datacenter (`{dc1 = 3, dc2 = 3}`): when set, keyspaces
    /// are created with `NetworkTopologyStrategy` and these factors. An
    /// existing keyspace is left as it is (a warning names a difference).
    pub datacenters: std::collections::BTreeMap<String, u32>,
    /// Consistency level of view and checkpoint writes.
    pub write_consistency: CqlConsistency,
    /// Consistency level of view reads (each dashboard read is one).
    pub read_consistency: CqlConsistency,
    /// CQL username, when the cluster requires authentication.
    pub username: String,
    /// CQL password.
    pub password: Secret,
    /// On the embedded default: how often (seconds) the embedded views are
    /// snapshotted under the data directory when they changed (and once at
    /// a clean stop), so that a start reads only the log after the
    /// snapshot. 0: never (every start rebuilds them from the log).
    pub snapshot_secs: u64,
    /// On the embedded default with its durable log: the budget (MiB) of
    /// the embedded views' partitions held in memory. Past it, the least
    /// recently used partitions are spilled to `views.spill` under the data
    /// directory and read back on their next use, so that memory does not
    /// grow with the views' history. 0: no budget (all in memory).
    pub memory_mb: u64,
}

impl Default for ViewsConfig {
    fn default() -> Self {
        Self {
            backend: ViewBackend::Embedded,
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "atelier".into(),
            replication_factor: 1,
            datacenters: Default::default(),
            write_consistency: CqlConsistency::LocalQuorum,
            read_consistency: CqlConsistency::LocalQuorum,
            username: String::new(),
            password: Secret::default(),
            snapshot_secs: 30,
            memory_mb: 256,
        }
    }
}

/// Which blob store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    /// A local directory (`data_dir/blobs`).
    #[default]
    Local,
    /// S3 or an S3-compatible server.
    S3,
}

/// Blob store settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// Backend.
    pub backend: BlobBackend,
    /// S3 endpoint URL (empty: AWS's default for the region).
    pub endpoint: String,
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Access key id (empty: the AWS default credential chain).
    pub access_key: String,
    /// Secret access key.
    pub secret_key: Secret,
    /// Path-style addressing (MinIO and most S3-compatible servers need it).
    pub force_path_style: bool,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            backend: BlobBackend::Local,
            endpoint: String::new(),
            bucket: "atelier".into(),
            region: "us-east-1".into(),
            access_key: String::new(),
            secret_key: Secret::default(),
            force_path_style: true,
        }
    }
}

/// A principal an API key acts as.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyPrincipal {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
}

/// Authentication settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for bearer JWTs (`sub`, `name`, optional `picture`, `exp`).
    /// Empty in embedded mode: a dev secret is generated under `data_dir`.
    pub jwt_secret: Secret,
    /// API keys (the bearer token itself) and the principal each acts as.
    pub api_keys: BTreeMap<String, ApiKeyPrincipal>,
    /// Key for pseudonymous voter ids of anonymous polls. Must be stable for
    /// the life of the views (replays derive the same pseudonyms from it).
    pub voter_key: Secret,
    /// User ids (token subjects or API-key principals) allowed to call the
    /// operations routes under `/v1/admin` (replay, DLQ, export). Empty by
    /// default: outside the embedded default (where `admin` is one) there
    /// is no administrator unless configured, here or by `admin_claim`.
    pub admins: Vec<String>,
    /// A token claim that makes its holder an administrator when it is, or
    /// (an array) contains, `admin_role`; e.g. `roles`. Empty: none.
    pub admin_claim: String,
    /// The value of `admin_claim` that grants admin.
    pub admin_role: String,
    /// Public keys for RS256 and ES256 tokens: a JWKS file, or an http(s)
    /// URL (an identity provider's `jwks_uri`), read at start and again
    /// every `jwks_refresh_secs`. Empty: HS256 (`jwt_secret`) only.
    pub jwks: String,
    /// How often the JWKS is read again, in seconds.
    pub jwks_refresh_secs: u64,
    /// The `iss` tokens must carry (empty: not checked).
    pub issuer: String,
    /// The `aud` values accepted (empty: not checked).
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim with the display name (the subject when absent).
    pub name_claim: String,
    /// The claim with the avatar URL.
    pub avatar_claim: String,
    /// Signs session keys (they name their owner without saying who) and
    /// the expiring links to images and shared sessions. The same for every
    /// API process; changing it revokes every link and leaves sessions
    /// readable by administrators only. Empty in embedded mode: derived from
    /// the development secret under `data_dir`.
    pub link_key: Secret,
    /// How long a signed link lives, in seconds (links are issued on a grid
    /// of this period, so an unchanged card keeps its links, and live
    /// between one and two periods).
    pub link_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            api_keys: BTreeMap::new(),
            voter_key: Secret::default(),
            admins: Vec::new(),
            admin_claim: String::new(),
            admin_role: "admin".into(),
            jwks: String::new(),
            jwks_refresh_secs: 300,
            issuer: String::new(),
            audience: Vec::new(),
            leeway_secs: 30,
            name_claim: "name".into(),
            avatar_claim: "picture".into(),
            link_key: Secret::default(),
            link_ttl_secs: 3600,
        }
    }
}

/// The user id the CLI's operations commands sign their tokens for, and the
/// administrator of the embedded default.
pub const ADMIN: &str = "admin";

/// Projector tuning.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Most events folded per partition per mini-batch.
    pub max_batch: usize,
    /// How long a partial batch waits for more events, in milliseconds.
    pub linger_ms: u64,
    /// Most aggregates (polls, feed items) each projector keeps in memory
    /// (LRU); bounds memory whatever the number of aggregates. `cache_polls`
    /// is its earlier name.
    #[serde(alias = "cache_polls")]
    pub cache_aggregates: usize,
    /// Most rows (ballots, memberships) the projector keeps of aggregates
    /// it created, so their later events read no row from the store; the
    /// least recently used aggregates are dropped past it (0: none kept).
    pub cache_rows: usize,
    /// Most ballot rows in one atomic aggregate commit; a larger batch of one
    /// hot poll is split into several commits.
    pub commit_rows: usize,
    /// Most view-store requests in flight per partition. Uncoalesced
    /// traffic (likes spread over many items) is bound by round trips: on
    /// Cassandra, 32 → 128 halved produce-to-visible at 5,000 likes/s.
    pub write_concurrency: usize,
    /// A rebuild is swapped in once its generation is within this many
    /// records of the log's head (the last stretch runs with reads frozen).
    pub swap_lag: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            max_batch: 5_000,
            linger_ms: 5,
            cache_aggregates: 100_000,
            cache_rows: 250_000,
            commit_rows: 2_000,
            write_concurrency: 128,
            swap_lag: 1_000,
        }
    }
}

/// What the upload edge accepts. Everything is checked before a byte is
/// stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadsConfig {
    /// Largest image, in bytes (larger: 413).
    pub max_bytes: usize,
    /// Largest width or height, read from the header (larger: 422, never
    /// decoded).
    pub max_side: u32,
    /// Most pixels (width × height), read from the header.
    pub max_pixels: u64,
    /// How old an upload must be (by its id) before an image of it that no
    /// event names is an orphan the blob sweep deletes, in seconds. An
    /// upload appends its event within seconds of storing its image.
    pub orphan_grace_secs: u64,
    /// Whether `atelier up` (the embedded default, whose blob store is the
    /// data directory's) sweeps orphaned images once at start.
    pub sweep_at_start: bool,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            max_side: 12_000,
            max_pixels: 50_000_000,
            orphan_grace_secs: 3600,
            sweep_at_start: true,
        }
    }
}

/// Where models run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InferDevice {
    /// CUDA when a GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device (an error without one).
    Cuda,
}

/// The arithmetic of the models' forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// `bf16` on a CPU with AVX-512 BF16 or AMX, float32 elsewhere.
    #[default]
    Auto,
    /// float32 throughout.
    Fp32,
    /// bfloat16 on the CPU: per model, the first form that keeps its output
    /// within the bound of float32 (its convolution and linear weights in
    /// bf16, then bf16 autocast, then float32); float32 on a GPU.
    Bf16,
}

impl Precision {
    /// The name the banner and `/metrics` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Whether completions and offsets commit in one Kafka transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transactions {
    /// On real Kafka, off on the embedded mock cluster (which fakes them).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: completions are at least once (the card merge is idempotent).
    Off,
}

/// Inference worker tuning.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferConfig {
    /// CPU or CUDA.
    pub device: InferDevice,
    /// The arithmetic models run in (see [`Precision`]).
    pub precision: Precision,
    /// Intra-op threads of the model (0: every core).
    pub threads: usize,
    /// Most images in one model call; 0: 8 on CUDA, 1 on the CPU (where
    /// batching measured slower, and a batch holds every image's
    /// activations at once; see the README).
    pub max_batch: usize,
    /// Longest an image waits for its batch to fill, in milliseconds.
    pub max_delay_ms: u64,
    /// Most pixels in one model call (bounds activation memory whatever the
    /// batch size).
    pub max_batch_pixels: u64,
    /// Images are scaled to fit this side before inference.
    pub max_side: u32,
    /// Shape buckets: sides are padded up to a multiple of this.
    pub bucket: u32,
    /// Uploads between consume and commit; beyond it the partitions pause.
    pub in_flight: usize,
    /// Concurrent fetch-and-decode tasks.
    pub fetch_concurrency: usize,
    /// Concurrent encode-and-store tasks.
    pub store_concurrency: usize,
    /// Output JPEG quality, 1 to 100.
    pub jpeg_quality: u8,
    /// Attempts of a transient failure (S3, model) before the upload fails.
    pub attempts: u32,
    /// First retry delay, in milliseconds (doubles, capped at 5 s).
    pub retry_base_ms: u64,
    /// How often finished uploads are committed, in milliseconds.
    pub commit_interval_ms: u64,
    /// Completions and offsets in one transaction.
    pub transactions: Transactions,
    /// Fault injection: hold every commit open this long after its records
    /// are sent, so that a kill lands between records and offsets (the
    /// exactly-once test uses it; 0 in production).
    pub commit_delay_ms: u64,
    /// This worker's name (its transactional id). Empty (the default): the
    /// host name plus the lowest slot free on this host, leased by a lock
    /// that dies with the process, so replicas never share one and a
    /// restarted worker usually takes its predecessor's (aborting its open
    /// transaction at once). Set: leased the same way, so a second worker
    /// with the same name on this host is refused at start.
    pub instance: String,
    /// A directory of `{style}.pt` files published at start when their
    /// style has no model yet (the embedded default exports them there).
    pub models_dir: String,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            device: InferDevice::Auto,
            precision: Precision::Auto,
            threads: 0,
            max_batch: 0,
            max_delay_ms: 20,
            max_batch_pixels: 8 * 1024 * 1024,
            max_side: 1024,
            bucket: 64,
            in_flight: 32,
            fetch_concurrency: 4,
            store_concurrency: 4,
            jpeg_quality: 90,
            attempts: 5,
            retry_base_ms: 200,
            commit_interval_ms: 50,
            transactions: Transactions::Auto,
            commit_delay_ms: 0,
            instance: String::new(),
            models_dir: String::new(),
        }
    }
}

impl Config {
    /// Loads defaults, then the file (when given or when `atelier.toml`
    /// exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ATELIER_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from("atelier.toml");
                p.exists().then_some(p)
            });
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(
            Env::prefixed("ATELIER_")
                // Variables of other tools and scripts share the prefix:
                // only `SECTION__FIELD` names are configuration.
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    k == "data_dir" || k.contains("__")
                })
                .split("__"),
        );
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix("ATELIER_KAFKA_PROP_") {
                cfg.kafka
                    .properties
                    .insert(name.to_ascii_lowercase().replace('_', "."), v);
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded_and_secrets_are_redacted() {
        let mut c = Config::default();
        assert!(c.kafka.is_embedded());
        assert_eq!(c.views.backend, ViewBackend::Embedded);
        c.auth.jwt_secret = Secret("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's own test API
    fn files_and_environment_layer() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(
            &f,
            "[kafka]\nbrokers = \"k:9092\"\n[views]\nbackend = \"cql\"\nkeyspace = \"x\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("ATELIER_VIEWS__KEYSPACE", "from_env");
            jail.set_env("ATELIER_KAFKA_PROP_SECURITY_PROTOCOL", "SASL_SSL");
            jail.set_env("ATELIER_LOG", "debug");
            let c = Config::load(Some(&f)).unwrap();
            assert_eq!(c.kafka.brokers, "k:9092");
            assert_eq!(c.views.backend, ViewBackend::Cql);
            assert_eq!(c.views.keyspace, "from_env");
            assert_eq!(
                c.kafka
                    .properties
                    .get("security.protocol")
                    .map(String::as_str),
                Some("SASL_SSL")
            );
            Ok(())
        });
    }

    #[test]
    fn the_journal_fsync_policy_is_always_or_an_interval() {
        let j = |f: &str| JournalConfig {
            enabled: true,
            fsync: f.into(),
        };
        assert_eq!(j("always").fsync_interval(), Ok(None));
        assert_eq!(
            j("100ms").fsync_interval(),
            Ok(Some(std::time::Duration::from_millis(100)))
        );
        assert_eq!(
            j("2s").fsync_interval(),
            Ok(Some(std::time::Duration::from_secs(2)))
        );
        for bad in ["", "never", "10", "1m", "ms"] {
            let e = j(bad).fsync_interval().unwrap_err();
            assert!(e.contains("kafka.journal.fsync"), "{bad}: {e}");
        }
    }
}
