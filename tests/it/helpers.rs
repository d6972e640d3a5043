//! Shared test helpers: spawn the app on embedded or real backends, with a
//! unique namespace (topics, groups) and keyspace per test.

use std::time::Duration;

use atelier::app::{App, Roles};
use atelier::config::{BlobBackend, BlobConfig, Config, Secret, ViewBackend, ViewsConfig};
use serde_json::Value;

pub const SECRET: &str = "test-secret";
/// The link key of test apps: session keys of events written directly to
/// the log are minted with it ([`session_of`]).
pub const LINK_KEY: &str = "test-link-key";

/// A new session key owned by `user`, as `POST /v1/sessions` mints it.
pub fn session_of(user: &str) -> atelier::event::SessionKey {
    atelier::event::SessionKey::parse(&atelier::api::session_key_for(LINK_KEY, user)).unwrap()
}

/// Which backends a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backends {
    /// Mock Kafka cluster, embedded view store.
    Embedded,
    /// Real Kafka and Cassandra started by `scripts/services`.
    Real,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The address of a real service, or `None` to skip locally. Under CI a
/// missing service is a failure: CI must test against real services.
pub fn real(var: &str) -> Option<String> {
    match env(var) {
        Some(v) => Some(v),
        None if env("CI").is_some() => {
            panic!("{var} is not set: CI must run against real services (scripts/services start)")
        }
        None => {
            eprintln!(
                "skipped: {var} not set (run scripts/services start; eval $(scripts/services env))"
            );
            None
        }
    }
}

/// Where this test process keeps its data (apps' logs, views and blobs,
/// models, logs of child processes): `atelier-it-<pid>` under the temporary
/// directory. The first test to ask removes the directories of earlier runs
/// that have exited, so a run's data stays until the next run (a failure
/// can be looked at) but does not pile up. (`scripts/test` also points the
/// temporary directory at one of its own.)
pub fn scratch() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        let proc = std::path::Path::new("/proc");
        if proc.join("self").exists()
            && let Ok(entries) = std::fs::read_dir(&tmp)
        {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix("atelier-it-"));
                if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok())
                    && !proc.join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("atelier-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the test run's directory");
        dir
    })
}

/// A short unique id.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// Views config for a fresh keyspace on the real CQL server.
pub fn cql_views(contact: &str) -> ViewsConfig {
    ViewsConfig {
        backend: ViewBackend::Cql,
        contact_points: vec![contact.to_owned()],
        keyspace: format!("t_{}", unique()),
        ..ViewsConfig::default()
    }
}

/// The real S3 server's bucket.
pub fn s3_blobs() -> Option<BlobConfig> {
    Some(BlobConfig {
        backend: BlobBackend::S3,
        endpoint: real("ATELIER_IT_S3_ENDPOINT")?,
        // A bucket per test: listings in one test never see another's.
        bucket: format!(
            "{}-{}",
            env("ATELIER_IT_S3_BUCKET").unwrap_or_else(|| "atelier-test".into()),
            unique()
        ),
        region: env("ATELIER_IT_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        access_key: env("ATELIER_IT_S3_ACCESS_KEY").unwrap_or_default(),
        secret_key: Secret(env("ATELIER_IT_S3_SECRET_KEY").unwrap_or_default()),
        force_path_style: true,
    })
}

/// A configuration for `b`, or `None` when the real services are absent.
pub async fn config(b: Backends) -> Option<Config> {
    let mut cfg = Config {
        data_dir: scratch().join(format!("atelier-test-{}", unique())),
        ..Config::default()
    };
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.http.max_after_wait_ms = 10_000;
    cfg.kafka.namespace = format!("t-{}.", unique());
    cfg.auth.jwt_secret = Secret(SECRET.into());
    cfg.auth.voter_key = Secret("test-voter-key".into());
    cfg.auth.link_key = Secret(LINK_KEY.into());
    // On real services there is no administrator unless configured.
    cfg.auth.admins = vec![atelier::config::ADMIN.to_owned()];
    cfg.projector.linger_ms = 2;
    if b == Backends::Real {
        let kafka = real("ATELIER_IT_KAFKA")?;
        let cql = real("ATELIER_IT_CQL")?;
        cfg.kafka.brokers = kafka.clone();
        cfg.views = cql_views(&cql);
        cfg.blobs = s3_blobs()?;
        atelier::bus::topics::apply(&cfg.kafka, &kafka, false)
            .await
            .expect("topics apply");
    }
    Some(cfg)
}

/// A running app with an HTTP client.
pub struct TestApp {
    pub app: App,
    pub url: String,
    pub http: reqwest::Client,
}

impl TestApp {
    /// API and projectors (inference tests add the worker themselves).
    pub async fn spawn(b: Backends) -> Option<TestApp> {
        let cfg = config(b).await?;
        Some(
            Self::start(
                cfg,
                Roles {
                    infer: false,
                    ..Roles::ALL
                },
            )
            .await,
        )
    }

    pub async fn start(cfg: Config, roles: Roles) -> TestApp {
        let app = App::start(cfg, roles).await.expect("app starts");
        // As a load balancer would wait for `/readyz`: until the published
        // models are read, uploads answer 503 `models_loading`.
        let mut ready = app.catalog.ready();
        tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r))
            .await
            .expect("the models topic is read in 60 s")
            .expect("the catalog lives as long as the app");
        let url = app.url();
        TestApp {
            app,
            url,
            http: reqwest::Client::new(),
        }
    }

    pub fn token(&self, user: &str) -> String {
        atelier::api::mint(SECRET, user, &user.to_uppercase(), 3600)
    }

    /// Sends a request; returns status and JSON body (Null when not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(u) = user {
            req = req.bearer_auth(self.token(u));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, user: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(user), Some(body))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None, None).await
    }

    /// A read with `?after`, asked again while it answers 503
    /// `not_yet_applied` (each answer waits `http.max_after_wait_ms`), as
    /// the contract tells a client, for at most `secs`. For tests whose
    /// subject is not how soon a view applies: one whose projectors share
    /// their partitions with another process's may see a rebalance on a
    /// busy machine.
    pub async fn get_applied(&self, path: &str, secs: u64) -> (u16, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (s, v) = self.get(path).await;
            if s != 503
                || v["error"] != "not_yet_applied"
                || tokio::time::Instant::now() >= deadline
            {
                return (s, v);
            }
        }
    }

    /// A read as `user`.
    pub async fn get_as(&self, user: &str, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(user), None)
            .await
    }

    /// Creates a poll and returns (id, token).
    pub async fn create_poll(&self, owner: &str, body: Value) -> (String, String) {
        let (s, v) = self.post("/v1/polls", owner, body).await;
        assert_eq!(s, 202, "{v}");
        (
            v["poll_id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Stops the app; on real services, deletes its topics and keyspace
    /// too (a full run would otherwise leave hundreds of tables behind and
    /// slow Cassandra for every later test).
    pub async fn stop(self) {
        let cfg = self.app.config.clone();
        self.app.stop().await.expect("clean stop");
        if !cfg.kafka.is_embedded() {
            atelier::app::delete_run_data(&cfg).await;
        }
    }
}

/// An event by user `who` (display name: `who` in capitals), now.
pub fn event(who: &str, data: atelier::event::EventData) -> atelier::event::Event {
    atelier::event::Event {
        id: atelier::event::EventId(uuid::Uuid::now_v7()),
        time: atelier::edge::now(),
        principal: atelier::event::Principal {
            id: atelier::event::UserId::parse(who).unwrap(),
            name: who.to_uppercase(),
            avatar_url: None,
        },
        data,
    }
}

/// Polls `f` until it returns `Some`, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `atelier <role>` as a child process with `envs`, its output
/// appended to `log` (kill tests: the process under test must be killable).
pub fn spawn_atelier(
    role: &str,
    envs: &[(&str, String)],
    log: &std::path::Path,
) -> std::process::Child {
    use std::process::{Command, Stdio};
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_atelier"))
        .arg(role)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("atelier binary runs")
}
