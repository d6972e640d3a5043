//! The embedded log: librdkafka's in-process mock cluster.
//!
//! The mock cluster handle is not `Send`, so one dedicated thread owns it and
//! serves topic creation over a channel; dropping [`EmbeddedCluster`] stops
//! it. The mock broker cannot create topics through the admin API, so every
//! topic is created here, up front, from the same `topics/*.toml` specs that
//! `atelier topics apply` uses on real Kafka. It fakes transactions: test
//! transactional behaviour against real Kafka only.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

use super::BusError;

type Reply = mpsc::Sender<Result<(), String>>;

enum Command {
    CreateTopic(String, i32, Reply),
    Stop,
}

/// A running mock cluster.
#[derive(Debug)]
pub struct EmbeddedCluster {
    bootstrap: String,
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` mock brokers.
    pub fn start(brokers: i32) -> Result<Self, BusError> {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic(name, partitions, reply) => {
                            let r = cluster
                                .create_topic(&name, partitions, 1)
                                .map_err(|e| e.to_string());
                            let _ = reply.send(r);
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
        })
    }

    /// `bootstrap.servers` for clients of this cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (idempotent on the mock broker).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BusError> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Command::CreateTopic(name.to_owned(), partitions, reply))
            .map_err(|e| BusError::Embedded(e.to_string()))?;
        rx.recv()
            .map_err(|e| BusError::Embedded(e.to_string()))?
            .map_err(BusError::Embedded)
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
