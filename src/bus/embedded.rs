//! The embedded log: librdkafka's in-process mock cluster.
//!
//! The mock cluster handle is not `Send`, so one dedicated thread owns it and
//! serves topic creation over a channel; dropping [`EmbeddedCluster`] stops
//! it. The mock broker cannot create topics through the admin API, so every
//! topic is created here, up front, from the same `topics/*.toml` specs that
//! `atelier topics apply` uses on real Kafka. It fakes transactions: test
//! transactional behaviour against real Kafka only.
//!
//! [`EmbeddedCluster::make_durable`] keeps it on disk ([`super::durable`]).

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer as _};

use super::BusError;
use super::durable::Durable;
use super::journal::JournalOptions;
use crate::config::KafkaConfig;

type Reply = mpsc::Sender<Result<(), String>>;

enum Command {
    CreateTopic(String, i32, Reply),
    /// Count fetch requests from now on.
    TrackFetches(mpsc::Sender<bool>),
    /// Fetch requests since tracking started or the last count.
    TakeFetches(mpsc::Sender<Option<usize>>),
    Stop,
}

/// A running mock cluster.
#[derive(Debug)]
pub struct EmbeddedCluster {
    bootstrap: String,
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    /// The topics created, with their partition counts.
    topics: parking_lot::Mutex<Vec<(String, i32)>>,
    durable: Option<Arc<Durable>>,
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` mock brokers.
    pub fn start(brokers: i32) -> Result<Self, BusError> {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                // A client that owns the mock cluster (it lives as long).
                let owner: BaseProducer = match ClientConfig::new()
                    .set("test.mock.num.brokers", brokers.to_string())
                    .create()
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let Some(cluster) = owner.client().mock_cluster() else {
                    let _ = ready_tx.send(Err("no mock cluster".into()));
                    return;
                };
                // A group's first members are assigned at once, not after
                // Kafka's 3 s wait for more to join: one process joins
                // each group here, and a start should not wait it out.
                kafka_mock_tuning::set_group_initial_rebalance_delay(owner.client(), 0);
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic(name, partitions, reply) => {
                            let r = cluster
                                .create_topic(&name, partitions, 1)
                                .map_err(|e| e.to_string());
                            let _ = reply.send(r);
                        }
                        Command::TrackFetches(reply) => {
                            let _ = reply
                                .send(kafka_mock_tuning::start_request_tracking(owner.client()));
                        }
                        Command::TakeFetches(reply) => {
                            let _ = reply.send(kafka_mock_tuning::take_requests(
                                owner.client(),
                                kafka_mock_tuning::FETCH,
                            ));
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(|e| BusError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|e| BusError::Embedded(e.to_string()))?
            .map_err(BusError::Embedded)?;
        Ok(Self {
            bootstrap,
            tx,
            thread: Some(thread),
            topics: parking_lot::Mutex::new(Vec::new()),
            durable: None,
        })
    }

    /// `bootstrap.servers` for clients of this cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Sends a command to the cluster's thread and waits for its answer.
    fn ask<T>(&self, command: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, BusError> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(command(reply))
            .map_err(|e| BusError::Embedded(e.to_string()))?;
        rx.recv().map_err(|e| BusError::Embedded(e.to_string()))
    }

    /// Creates a topic (idempotent on the mock broker).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BusError> {
        self.ask(|reply| Command::CreateTopic(name.to_owned(), partitions, reply))?
            .map_err(BusError::Embedded)?;
        let mut topics = self.topics.lock();
        if !topics.iter().any(|(t, _)| t == name) {
            topics.push((name.to_owned(), partitions));
        }
        Ok(())
    }

    /// Starts counting the fetch requests the cluster receives (see
    /// [`Self::take_fetches`]).
    pub fn track_fetches(&self) -> Result<(), BusError> {
        self.ask(Command::TrackFetches)?
            .then_some(())
            .ok_or_else(|| BusError::Embedded("no mock cluster".into()))
    }

    /// The fetch requests the cluster received since
    /// [`Self::track_fetches`] or the last call.
    pub fn take_fetches(&self) -> Result<usize, BusError> {
        self.ask(Command::TakeFetches)?
            .ok_or_else(|| BusError::Embedded("no mock cluster".into()))
    }

    /// Reads the journal in `dir` back into this cluster (its topics
    /// created, nothing produced yet) and journals everything from now on.
    pub fn make_durable(
        &mut self,
        cfg: &KafkaConfig,
        dir: &Path,
        opts: JournalOptions,
    ) -> Result<Arc<Durable>, BusError> {
        let topics = self.topics.lock().clone();
        let d = Durable::open(cfg, &self.bootstrap, &topics, dir, opts)?;
        self.durable = Some(d.clone());
        Ok(d)
    }

    /// The journal, if this cluster is durable.
    pub fn durable(&self) -> Option<&Arc<Durable>> {
        self.durable.as_ref()
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        // The journal catches up and closes while the cluster still runs.
        if let Some(d) = self.durable.take() {
            d.close();
        }
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
