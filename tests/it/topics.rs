//! Topics as code against real Kafka: `apply` creates what is missing,
//! is idempotent, reports drift and repairs it with `fix`.

use std::time::Duration;

use atelier::bus::client_config;
use atelier::bus::topics::{self, TopicChange};
use atelier::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::helpers::{real, unique};

#[tokio::test]
async fn apply_creates_is_idempotent_and_repairs_drift() {
    let Some(brokers) = real("ATELIER_IT_KAFKA") else {
        return;
    };
    let cfg = KafkaConfig {
        brokers: brokers.clone(),
        namespace: format!("t-{}.", unique()),
        ..Default::default()
    };
    // A polls topic made by hand, too small and with the wrong retention.
    let admin: AdminClient<DefaultClientContext> = client_config(&cfg, &brokers).create().unwrap();
    let polls = format!("{}atelier.polls.v1", cfg.namespace);
    let nt = NewTopic::new(&polls, 2, TopicReplication::Fixed(1)).set("retention.ms", "1000");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin.create_topics([&nt], &opts).await.unwrap()[0]
        .as_ref()
        .unwrap();

    let first = topics::apply(&cfg, &brokers, false).await.unwrap();
    let created = first
        .iter()
        .filter(|c| matches!(c, TopicChange::Created { .. }))
        .count();
    assert_eq!(created, topics::specs().unwrap().len() - 1, "{first:?}");
    let drift = first
        .iter()
        .find_map(|c| match c {
            TopicChange::Drift {
                topic, differences, ..
            } if *topic == polls => Some(differences.clone()),
            _ => None,
        })
        .expect("drift reported");
    assert!(
        drift.iter().any(|d| d.contains("partitions 2 < 12")),
        "{drift:?}"
    );
    assert!(
        drift.iter().any(|d| d.contains("retention.ms")),
        "{drift:?}"
    );

    let fixed = topics::apply(&cfg, &brokers, true).await.unwrap();
    assert!(
        fixed
            .iter()
            .any(|c| matches!(c, TopicChange::Drift { fixed: true, .. }))
    );
    // Metadata and configs settle asynchronously on the broker.
    crate::helpers::eventually(30, "topics up to date", || {
        let (cfg, brokers) = (cfg.clone(), brokers.clone());
        async move {
            let again = topics::apply(&cfg, &brokers, false).await.unwrap();
            again
                .iter()
                .all(|c| matches!(c, TopicChange::UpToDate { .. }))
                .then_some(())
        }
    })
    .await;
}
