//! Topics as code against real Kafka: `apply` creates what is missing,
//! is idempotent, reports drift and repairs it with `fix`.

use std::time::Duration;

use atelier::bus::client_config;
use atelier::bus::topics::{self, TopicChange};
use atelier::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::helpers::{real, unique};

/// Partitions of `topic`, from the brokers' metadata.
fn partitions(cfg: &KafkaConfig, brokers: &str, topic: &str) -> usize {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, brokers).create().unwrap();
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0].partitions().len()
}

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
    // Two topics made by hand, too small: polls (key-ordered) also with the
    // wrong retention, uploads (not key-ordered).
    let admin: AdminClient<DefaultClientContext> = client_config(&cfg, &brokers).create().unwrap();
    let polls = format!("{}atelier.polls.v1", cfg.namespace);
    let uploads = format!("{}atelier.uploads.v1", cfg.namespace);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for nt in [
        NewTopic::new(&polls, 2, TopicReplication::Fixed(1)).set("retention.ms", "1000"),
        NewTopic::new(&uploads, 2, TopicReplication::Fixed(1)),
    ] {
        admin.create_topics([&nt], &opts).await.unwrap()[0]
            .as_ref()
            .unwrap();
    }

    let first = topics::apply(&cfg, &brokers, false).await.unwrap();
    let created = first
        .iter()
        .filter(|c| matches!(c, TopicChange::Created { .. }))
        .count();
    assert_eq!(created, topics::specs().unwrap().len() - 2, "{first:?}");
    let drift = |changes: &[TopicChange], of: &str| {
        changes
            .iter()
            .find_map(|c| match c {
                TopicChange::Drift {
                    topic, differences, ..
                } if topic == of => Some(differences.clone()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let refused = |changes: &[TopicChange]| {
        changes.iter().any(|c| {
            matches!(c, TopicChange::GrowthRefused { topic, have: 2, spec: 12, .. } if *topic == polls)
        })
    };
    assert!(
        drift(&first, &uploads)
            .iter()
            .any(|d| d.contains("partitions 2 < 12")),
        "{first:?}"
    );
    assert!(refused(&first), "{first:?}");
    let polls_drift = drift(&first, &polls);
    assert!(
        polls_drift.iter().any(|d| d.contains("retention.ms"))
            && !polls_drift.iter().any(|d| d.contains("partitions")),
        "{polls_drift:?}"
    );
    let refusal = first
        .iter()
        .find(|c| matches!(c, TopicChange::GrowthRefused { .. }))
        .unwrap()
        .to_string();
    assert!(
        refusal.contains("poll id") && refusal.contains("new topic version"),
        "the refusal says why and what to do: {refusal}"
    );

    let fixed = topics::apply(&cfg, &brokers, true).await.unwrap();
    assert!(
        fixed.iter().any(
            |c| matches!(c, TopicChange::Drift { fixed: true, topic, .. } if *topic == uploads)
        )
    );
    assert!(refused(&fixed), "{fixed:?}");
    // Metadata and configs settle asynchronously on the broker: everything
    // is as specified then, but for the partitions of the key-ordered topic.
    crate::helpers::eventually(30, "topics up to date", || {
        let (cfg, brokers, polls) = (cfg.clone(), brokers.clone(), polls.clone());
        async move {
            let again = topics::apply(&cfg, &brokers, false).await.unwrap();
            again
                .iter()
                .all(|c| match c {
                    TopicChange::UpToDate { .. } => true,
                    TopicChange::GrowthRefused { topic, .. } => *topic == polls,
                    _ => false,
                })
                .then_some(())
        }
    })
    .await;
    assert_eq!(partitions(&cfg, &brokers, &uploads), 12);
    assert_eq!(
        partitions(&cfg, &brokers, &polls),
        2,
        "a key-ordered topic never grows"
    );
}
