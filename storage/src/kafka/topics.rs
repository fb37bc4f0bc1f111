//! Creating the votes and tallies topics, and checking their partition counts.

use super::producer::Producer_;
use super::reader::WATERMARK_TIMEOUT;
use super::settings::KafkaConfig;
use crate::log::{LogError, Topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use std::time::{Duration, Instant};

/// How long topic creation and metadata look-ups may take at start-up.
pub(super) const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Creates the topic if missing; refuses one whose partition count differs from the configuration.
pub(super) async fn ensure_topic(
    admin: &AdminClient<DefaultClientContext>,
    producer: &Producer_,
    config: &KafkaConfig,
    topic: Topic,
) -> Result<(), LogError> {
    let name = config.topic_name(topic);
    let wanted = config.partitions(topic);
    let new = NewTopic::new(
        name,
        wanted as i32,
        TopicReplication::Fixed(config.replication_factor),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics([&new], &options).await.map_err(|e| {
        LogError::io(
            format!("creating topic '{name}' on Kafka at {}", config.brokers),
            e,
        )
    })?;
    match results.first() {
        Some(Ok(_)) => tracing::info!(topic = name, partitions = wanted, "created Kafka topic"),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
        Some(Err((_, code))) => {
            return Err(LogError::io(
                format!("creating topic '{name}' on Kafka at {}", config.brokers),
                *code,
            ))
        }
        None => {
            return Err(LogError::io(
                format!("creating topic '{name}'"),
                "Kafka gave no answer",
            ))
        }
    }
    let found = partition_count(producer, name).await?;
    if found != wanted {
        let placement = match topic {
            Topic::Votes => {
                "votes are placed by hash(poll, voter) mod partitions, so another count would send \
                 a voter's later votes to another partition, where the dedupe cannot see the \
                 earlier ones"
            }
            Topic::Tallies => {
                "partial tallies are placed by poll mod partitions, so another count would split a \
                 poll's partials over partitions and readers could merge them out of order"
            }
        };
        let field = match topic {
            Topic::Votes => "votes_partitions",
            Topic::Tallies => "tallies_partitions",
        };
        return Err(LogError::Config(format!(
            "Kafka topic '{name}' exists with {found} partitions but {field} = {wanted}; refusing \
             to start: {placement}. Set {field} = {found}, or use a new topic"
        )));
    }
    Ok(())
}

/// Waits until the broker's metadata shows the topic, and returns its partition count.
pub(super) async fn partition_count(producer: &Producer_, name: &str) -> Result<u32, LogError> {
    let give_up = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let p = producer.clone();
        let n = name.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let md = p.client().fetch_metadata(Some(&n), WATERMARK_TIMEOUT)?;
            Ok::<_, KafkaError>(
                md.topics()
                    .iter()
                    .find(|t| t.name() == n && t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.partitions().len() as u32),
            )
        })
        .await
        .map_err(|e| LogError::io("the topic metadata task", e))?;
        match found {
            Ok(Some(count)) => return Ok(count),
            Ok(None) | Err(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(None) => {
                return Err(LogError::io(
                    format!("Kafka topic '{name}'"),
                    format!("it did not appear in the metadata within {ADMIN_TIMEOUT:?}"),
                ))
            }
            Err(e) => return Err(LogError::io(format!("metadata of topic '{name}'"), e)),
        }
    }
}
