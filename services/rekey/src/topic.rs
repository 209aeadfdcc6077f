//! The topic: created with settings that keep every change, and checked when it exists.
//!
//! The writer needs every change in the topic until it has applied it, and stops at a
//! gap rather than skip one (the writer's `check_contiguous`). So, at every start of the
//! reader and of the writer:
//!
//! - **A missing topic is created** with one partition, `retention.ms = -1`, the
//!   replication factor `kafka.replication_factor` (default -1: the broker's
//!   `default.replication.factor`, KIP-464, Kafka 2.4 and later) and the settings of
//!   `[kafka.topic_options]` (e.g. `min.insync.replicas`). `cleanup.policy` is left to
//!   the broker's default (`delete`, which with an unlimited retention deletes nothing):
//!   tansu 0.6.0, the broker of the tests, reads an explicit `delete` with
//!   `retention.ms = -1` as "delete everything older than now".
//! - **An existing topic is described** (the platform team's, or rekey's own from an
//!   earlier start): `cleanup.policy` with `compact` stops the service with one line
//!   (compaction keeps only the last message per key; Kafka also refuses rekey's
//!   messages, which have none, so the producer would retry forever); a finite
//!   `retention.ms` or `retention.bytes` is allowed, with a warning that says how long the
//!   writer may be away before the broker deletes changes it has not applied.
//!   A broker that does not answer the description (an ACL without `DescribeConfigs`)
//!   gets a warning, not a stop.
//!
//! A creation the broker refuses for a reason a retry cannot change (a replication
//! factor above the brokers there are, a setting it does not know, no permission) is a
//! setup error naming the setting.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::Error;
use crate::publish;

/// Settings rekey owns on a topic it creates: `[kafka.topic_options]` may not set them.
pub const OWNED_SETTINGS: [&str; 3] = ["retention.ms", "retention.bytes", "cleanup.policy"];

const TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the topic if it is missing, else checks the one there (see the module doc).
pub async fn ensure(kafka: &KafkaConfig) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> =
        publish::client_config(kafka, publish::Client::Producer)
            .create()
            .map_err(Error::kafka("creating an admin client"))?;
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    if create(&admin, kafka, &opts).await? {
        return Ok(());
    }
    let described = match admin
        .describe_configs([&ResourceSpecifier::Topic(&kafka.topic)], &opts)
        .await
    {
        Ok(mut d) if !d.is_empty() => d.swap_remove(0),
        Ok(_) => return Ok(()),
        Err(e) => Err(e_code(&e)),
    };
    let resource = match described {
        Ok(r) => r,
        Err(code) => {
            tracing::warn!(topic = %kafka.topic, error = %code, "cannot read the topic's settings (DescribeConfigs): its retention and cleanup policy are not checked");
            return Ok(());
        }
    };
    let setting = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    match judge(&kafka.topic, setting) {
        Verdict::Keeps => Ok(()),
        Verdict::Deletes(why) => {
            tracing::warn!(topic = %kafka.topic, "{why}");
            Ok(())
        }
        Verdict::Compacts(why) => Err(Error::Setup(why)),
    }
}

/// Creates the topic; `Ok(false)` when it exists already.
async fn create(
    admin: &AdminClient<DefaultClientContext>,
    kafka: &KafkaConfig,
    opts: &AdminOptions,
) -> Result<bool, Error> {
    let mut topic = NewTopic::new(
        &kafka.topic,
        1,
        TopicReplication::Fixed(kafka.replication_factor),
    )
    .set("retention.ms", "-1");
    for (name, value) in &kafka.topic_options {
        topic = topic.set(name, value);
    }
    let refused = |code: RDKafkaErrorCode| refusal(kafka, code);
    let results = match admin.create_topics([&topic], opts).await {
        Ok(r) => r,
        Err(e) => {
            let code = e_code(&e);
            return Err(refused(code).unwrap_or_else(|| Error::kafka("creating the topic")(e)));
        }
    };
    let mut created = false;
    for r in results {
        match r {
            Ok(name) => {
                tracing::info!(topic = %name, replication_factor = kafka.replication_factor, "created topic");
                created = true;
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(refused(code).unwrap_or_else(|| {
                    Error::kafka(format!("creating topic {name}"))(KafkaError::AdminOp(code))
                }))
            }
        }
    }
    Ok(created)
}

/// The setup error for a creation the broker will refuse again, or `None` (retried).
fn refusal(kafka: &KafkaConfig, code: RDKafkaErrorCode) -> Option<Error> {
    let topic = &kafka.topic;
    let rf = kafka.replication_factor;
    let why = match code {
        RDKafkaErrorCode::InvalidReplicationFactor => format!(
            "creating topic {topic}: the broker refuses replication factor {rf} ({code}): set kafka.replication_factor to at most the number of brokers, or -1 for the broker's default"
        ),
        RDKafkaErrorCode::UnsupportedFeature if rf == -1 => format!(
            "creating topic {topic}: the broker cannot choose the replication factor (Kafka before 2.4): set kafka.replication_factor"
        ),
        RDKafkaErrorCode::InvalidConfig | RDKafkaErrorCode::PolicyViolation => format!(
            "creating topic {topic}: the broker refuses its settings ({code}): check [kafka.topic_options], or create the topic yourself"
        ),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => format!(
            "creating topic {topic}: not allowed ({code}): grant the user Create on the topic, or create it yourself (one partition, retention.ms = -1)"
        ),
        _ => return None,
    };
    Some(Error::Setup(why))
}

fn e_code(e: &KafkaError) -> RDKafkaErrorCode {
    e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown)
}

/// What an existing topic's settings mean for the changes in it.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Every change stays until deleted by hand.
    Keeps,
    /// The broker deletes old changes: a warning.
    Deletes(String),
    /// Compaction: the service stops.
    Compacts(String),
}

fn judge(topic: &str, setting: impl Fn(&str) -> Option<String>) -> Verdict {
    if let Some(policy) = setting("cleanup.policy") {
        if policy.contains("compact") {
            return Verdict::Compacts(format!(
                "topic {topic} has cleanup.policy = {policy}: compaction deletes changes the writer has not applied (and Kafka refuses rekey's messages, which have no key); set cleanup.policy = delete and retention.ms = -1, or use another kafka.topic"
            ));
        }
    }
    let limited = |name: &str| {
        setting(name)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0)
    };
    let mut limits = Vec::new();
    if let Some(ms) = limited("retention.ms") {
        limits.push(format!(
            "changes older than {} (retention.ms = {ms})",
            human_ms(ms)
        ));
    }
    if let Some(bytes) = limited("retention.bytes") {
        limits.push(format!(
            "the oldest changes past {bytes} bytes (retention.bytes)"
        ));
    }
    if limits.is_empty() {
        return Verdict::Keeps;
    }
    Verdict::Deletes(format!(
        "topic {topic}: the broker deletes {}; if the writer falls that far behind it stops at the gap and the migration must start again: set retention.ms = -1 and retention.bytes = -1 on the topic",
        limits.join(" and ")
    ))
}

fn human_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms % size == 0 {
            return format!("{} {unit}", ms / size);
        }
    }
    format!("{ms} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_with(settings: &[(&str, &str)]) -> Verdict {
        judge("rekey.changes", |name| {
            settings
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn a_topic_that_keeps_everything_passes() {
        assert_eq!(judge_with(&[]), Verdict::Keeps);
        assert_eq!(
            judge_with(&[
                ("cleanup.policy", "delete"),
                ("retention.ms", "-1"),
                ("retention.bytes", "-1")
            ]),
            Verdict::Keeps
        );
    }

    #[test]
    fn compaction_is_refused_naming_the_setting() {
        for policy in ["compact", "compact,delete", "delete,compact"] {
            let Verdict::Compacts(why) = judge_with(&[("cleanup.policy", policy)]) else {
                panic!("{policy} passed");
            };
            assert!(
                why.contains("cleanup.policy") && why.contains("rekey.changes"),
                "{why}"
            );
        }
    }

    #[test]
    fn a_finite_retention_is_a_warning_that_says_how_long() {
        // Kafka's default, as DescribeConfigs reports it for a topic created without it.
        let Verdict::Deletes(why) = judge_with(&[("retention.ms", "604800000")]) else {
            panic!("seven days passed");
        };
        assert!(
            why.contains("7 d") && why.contains("retention.ms = -1"),
            "{why}"
        );
        let Verdict::Deletes(why) =
            judge_with(&[("retention.ms", "-1"), ("retention.bytes", "1073741824")])
        else {
            panic!("a size limit passed");
        };
        assert!(
            why.contains("retention.bytes") && !why.contains("older"),
            "{why}"
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_ms(1_000), "1 s");
        assert_eq!(human_ms(90_000), "90 s");
        assert_eq!(human_ms(3_600_000), "1 h");
        assert_eq!(human_ms(1_500), "1500 ms");
    }

    #[test]
    fn refusals_a_retry_cannot_change_name_the_setting() {
        let kafka = KafkaConfig {
            topic: "rekey.changes".into(),
            replication_factor: 3,
            ..KafkaConfig::default()
        };
        let e = refusal(&kafka, RDKafkaErrorCode::InvalidReplicationFactor).unwrap();
        assert!(e.to_string().contains("kafka.replication_factor"), "{e}");
        assert!(!e.is_retryable());
        let e = refusal(&kafka, RDKafkaErrorCode::InvalidConfig).unwrap();
        assert!(e.to_string().contains("kafka.topic_options"), "{e}");
        assert!(refusal(&kafka, RDKafkaErrorCode::BrokerNotAvailable).is_none());
    }
}
