//! Topics as code: `topics/*.toml` (compiled into the binary) describe every
//! topic; `apply` creates the missing ones on real Kafka and reports drift,
//! idempotently; the embedded cluster gets the same topics at start.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::FromClientConfig;
use serde::Deserialize;

use super::{BusError, EmbeddedCluster, client_config};
use crate::config::KafkaConfig;
use crate::event::{EventData, Topic};

const FILES: &[(&str, &str)] = &[
    ("feed.toml", include_str!("../../topics/feed.toml")),
    ("polls.toml", include_str!("../../topics/polls.toml")),
    ("uploads.toml", include_str!("../../topics/uploads.toml")),
    (
        "completions.toml",
        include_str!("../../topics/completions.toml"),
    ),
    ("models.toml", include_str!("../../topics/models.toml")),
    ("dlq.toml", include_str!("../../topics/dlq.toml")),
];

/// One topic's desired shape.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Base name (without namespace).
    pub name: String,
    /// What the key is.
    pub key: String,
    /// Partition count.
    pub partitions: i32,
    /// Whether consumers rely on per-key order (a versioned aggregate per
    /// key): partitions are then never added, since a new partition count
    /// moves keys to partitions where their history is not.
    #[serde(default)]
    pub key_ordered: bool,
    /// Replication factor (clamped to the broker count).
    pub replication: i32,
    /// The event types it carries.
    pub events: Vec<String>,
    /// Topic configs.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    /// The configs to set given the effective replication factor:
    /// `min.insync.replicas` never exceeds it (a single-node broker would
    /// otherwise refuse every `acks=all` write).
    pub fn effective_config(&self, replication: i32) -> BTreeMap<String, String> {
        let mut c = self.config.clone();
        if let Some(v) = c.get_mut("min.insync.replicas")
            && v.parse::<i32>().is_ok_and(|n| n > replication)
        {
            *v = replication.to_string();
        }
        c
    }
}

/// Every topic spec, parsed and checked against the event contracts.
pub fn specs() -> Result<Vec<TopicSpec>, BusError> {
    let mut out = Vec::new();
    for (file, text) in FILES {
        let s: TopicSpec =
            toml::from_str(text).map_err(|e| BusError::Topics(format!("{file}: {e}")))?;
        let topic = Topic::from_name(&s.name)
            .ok_or_else(|| BusError::Topics(format!("{file}: unknown topic {}", s.name)))?;
        for ev in &s.events {
            if EventData::topic_of(ev) != Some(topic) {
                return Err(BusError::Topics(format!(
                    "{file}: {ev} does not belong on {}",
                    s.name
                )));
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// Creates every topic on the embedded cluster.
pub fn ensure_embedded(cluster: &EmbeddedCluster, cfg: &KafkaConfig) -> Result<(), BusError> {
    for s in specs()? {
        cluster.create_topic(&format!("{}{}", cfg.namespace, s.name), s.partitions)?;
    }
    Ok(())
}

/// What `apply` found and did for one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicChange {
    /// Created.
    Created {
        topic: String,
        partitions: i32,
        replication: i32,
    },
    /// Already as specified.
    UpToDate { topic: String },
    /// Differs from its spec.
    Drift {
        topic: String,
        differences: Vec<String>,
        fixed: bool,
    },
    /// Has fewer partitions than its spec, and its consumers rely on
    /// per-key order: partitions are not added (see [`TopicSpec::key_ordered`]).
    GrowthRefused {
        topic: String,
        key: String,
        have: i32,
        spec: i32,
    },
}

impl std::fmt::Display for TopicChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicChange::Created {
                topic,
                partitions,
                replication,
            } => write!(
                f,
                "created   {topic} ({partitions} partitions, replication {replication})"
            ),
            TopicChange::UpToDate { topic } => write!(f, "ok        {topic}"),
            TopicChange::Drift {
                topic,
                differences,
                fixed,
            } => write!(
                f,
                "{}     {topic}: {}",
                if *fixed { "fixed" } else { "DRIFT" },
                differences.join("; ")
            ),
            TopicChange::GrowthRefused {
                topic,
                key,
                have,
                spec,
            } => write!(
                f,
                "REFUSED   {topic}: partitions {have} < {spec}, not added: it is keyed by \
                 {key} and its views rely on each key's order within one partition; more \
                 partitions would move keys away from their history (their new events \
                 would be skipped as already applied). Keep {have} in the spec, or move to \
                 a new topic version (README: \"Growing a keyed topic\")"
            ),
        }
    }
}

/// Creates missing topics and reports (with `fix`, repairs) drift: fewer
/// partitions than specified (partitions can be added, never removed,
/// and never to a key-ordered topic: [`TopicChange::GrowthRefused`]) and
/// configs that differ.
pub async fn apply(
    cfg: &KafkaConfig,
    brokers: &str,
    fix: bool,
) -> Result<Vec<TopicChange>, BusError> {
    let admin: AdminClient<DefaultClientContext> =
        AdminClient::from_config(&client_config(cfg, brokers))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))?;
    let brokers_n = md.brokers().len().max(1) as i32;
    let mut out = Vec::new();
    for s in specs()? {
        let name = format!("{}{}", cfg.namespace, s.name);
        let rf = s.replication.min(brokers_n);
        let conf = s.effective_config(rf);
        let Some(existing) = md.topics().iter().find(|t| t.name() == name) else {
            let mut nt = NewTopic::new(&name, s.partitions, TopicReplication::Fixed(rf));
            for (k, v) in &conf {
                nt = nt.set(k, v);
            }
            for r in admin.create_topics([&nt], &opts).await? {
                match r {
                    Ok(_) => {}
                    // Another process created it between our look and now.
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, e)) => return Err(BusError::Topics(format!("create {t}: {e}"))),
                }
            }
            out.push(TopicChange::Created {
                topic: name,
                partitions: s.partitions,
                replication: rf,
            });
            continue;
        };
        let mut diffs = Vec::new();
        let have = existing.partitions().len() as i32;
        let grow = have < s.partitions && !s.key_ordered;
        if have < s.partitions && s.key_ordered {
            out.push(TopicChange::GrowthRefused {
                topic: name.clone(),
                key: s.key.clone(),
                have,
                spec: s.partitions,
            });
        } else if have < s.partitions {
            diffs.push(format!("partitions {have} < {}", s.partitions));
        } else if have > s.partitions {
            diffs.push(format!(
                "partitions {have} > {} (cannot shrink; update the spec)",
                s.partitions
            ));
        }
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(&name)], &opts)
            .await?;
        let mut current = BTreeMap::new();
        let mut overridden = BTreeMap::new();
        for r in described.into_iter().flatten() {
            for e in r.entries {
                if let Some(v) = e.value {
                    if !e.is_default && !e.is_read_only {
                        overridden.insert(e.name.clone(), v.clone());
                    }
                    current.insert(e.name, v);
                }
            }
        }
        let mut to_alter = BTreeMap::new();
        for (k, v) in &conf {
            if current.get(k) != Some(v) {
                diffs.push(format!(
                    "{k} = {} (spec {v})",
                    current.get(k).map_or("unset", String::as_str)
                ));
                to_alter.insert(k.clone(), v.clone());
            }
        }
        if diffs.is_empty() {
            out.push(TopicChange::UpToDate { topic: name });
            continue;
        }
        if fix {
            if grow {
                let np = NewPartitions::new(&name, s.partitions as usize);
                for r in admin.create_partitions([&np], &opts).await? {
                    r.map_err(|(t, e)| BusError::Topics(format!("partitions {t}: {e}")))?;
                }
            }
            if !to_alter.is_empty() {
                // Only the non-incremental AlterConfigs is exposed: it resets
                // whatever it does not name, so carry every current override
                // with ours on top.
                overridden.extend(to_alter);
                let mut ac = AlterConfig::new(ResourceSpecifier::Topic(&name));
                for (k, v) in &overridden {
                    ac = ac.set(k, v);
                }
                for r in admin.alter_configs([&ac], &opts).await? {
                    r.map_err(|(_, e)| BusError::Topics(format!("alter {name}: {e}")))?;
                }
            }
        }
        out.push(TopicChange::Drift {
            topic: name,
            differences: diffs,
            fixed: fix,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_a_spec_and_every_event_a_topic() {
        let specs = specs().unwrap();
        for t in Topic::ALL {
            assert!(specs.iter().any(|s| s.name == t.name()), "{t}");
        }
        for ty in EventData::TYPES {
            assert!(
                specs.iter().any(|s| s.events.iter().any(|e| e == ty)),
                "{ty}"
            );
        }
    }

    #[test]
    fn topics_folded_by_versioned_aggregates_are_key_ordered() {
        let specs = specs().unwrap();
        let ordered = |name: &str| specs.iter().find(|s| s.name == name).unwrap().key_ordered;
        assert!(ordered(Topic::Polls.name()));
        assert!(ordered(Topic::Feed.name()));
        assert!(ordered(Topic::Models.name()));
        // Cards merge order-insensitively; the DLQ is read whole.
        assert!(!ordered(Topic::Uploads.name()));
        assert!(!ordered(Topic::Completions.name()));
    }

    #[test]
    fn min_insync_never_exceeds_replication() {
        let s = specs().unwrap().remove(0);
        assert_eq!(s.effective_config(1)["min.insync.replicas"], "1");
        assert_eq!(s.effective_config(3)["min.insync.replicas"], "2");
    }
}
