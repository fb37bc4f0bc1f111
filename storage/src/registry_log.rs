//! The Confluent wire format on the Kafka topics, when a schema registry is configured:
//! [`RegistryLog`] wraps the Kafka [`Log`] so every record value it appends is framed as
//! `0x00 | schema id (4 bytes, big endian) | Avro datum`, and every value it fetches is handed on
//! as the bare datum the pipeline reads.
//!
//! - **Subjects** are named by topic (`<topic>-value`, Confluent's TopicNameStrategy), e.g.
//!   `crowdtick.votes-value` and `crowdtick.tallies-value`.
//! - **At start** CrowdTick's schemas (`schemas/avro/*.avsc`) are registered under them
//!   (`schema_registry_converter`'s `post_schema`; the registry's compatibility rule decides, 409
//!   when incompatible), or with auto-registration off only looked up, and the start fails when
//!   the subject does not hold them.
//! - **Reading**: a value framed with CrowdTick's own schema id loses its 5 bytes. A value framed
//!   with another id (a newer or older writer) is decoded with that writer's schema, fetched by id
//!   and cached (`AvroDecoder`), resolved to CrowdTick's schema by Avro's rules and re-encoded. A
//!   value that does not start with the magic byte is a bare datum from before the registry
//!   (migration): it passes as it is. No bare datum starts with 0x00: the first field of a vote is
//!   its non-empty `vote_id` (length ≥ 1) and of a tally its `poll_id` (≥ 1), and Avro writes 0 as
//!   the single byte 0x00 only.
//! - A value no schema can read is handed on empty, which every reader refuses as truncated, so
//!   a foreign record can never be misread as a vote or a tally.

use crate::log::{AppendBatch, Fetched, Log, LogError, Position, Topic};
use apache_avro::Schema;
use async_trait::async_trait;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{
    perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    get_payload, SchemaType, SrCall, SuppliedSchema,
};
use schemas::{Offset, Partition};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The magic byte that starts every value in the Confluent wire format.
pub const MAGIC_BYTE: u8 = 0;

/// Where the registry is and how CrowdTick uses it.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URL(s) of the registry, comma separated (`http://registry:8081`).
    pub url: String,
    /// Register CrowdTick's schemas at start (the default), or only check that they are.
    pub auto_register: bool,
    /// Timeout of each call to the registry.
    pub timeout: Duration,
}

/// Why the registry could not be used at start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url}: could not register the schema of subject {subject} (a 409 from the registry means it is incompatible with the subject's latest version)")]
    Register {
        url: String,
        subject: String,
        #[source]
        source: SRCError,
    },
    #[error("schema registry {url}: subject {subject} does not hold CrowdTick's schema and auto-registration is off: register schemas/avro/{file} under it, or set schema_registry.auto_register = true")]
    NotRegistered {
        url: String,
        subject: String,
        file: &'static str,
        #[source]
        source: SRCError,
    },
    #[error("schema registry settings: {0}")]
    Settings(#[source] SRCError),
}

/// One topic's framing: CrowdTick's schema, its id in the registry, the 5-byte header.
#[derive(Debug, Clone)]
pub struct Framing {
    pub subject: String,
    pub id: u32,
    header: [u8; 5],
    schema: Arc<Schema>,
}

impl Framing {
    fn new(subject: String, id: u32, schema: Arc<Schema>) -> Self {
        let header = get_payload(id, Vec::new())
            .try_into()
            .expect("the wire format's header is 5 bytes");
        Self {
            subject,
            id,
            header,
            schema,
        }
    }
}

/// A value as it arrives: framed (schema id and datum) or bare.
#[derive(Debug, PartialEq, Eq)]
pub enum Wire<'a> {
    Framed { id: u32, datum: &'a [u8] },
    Bare(&'a [u8]),
}

/// Splits a value into its schema id and datum when it is in the wire format.
pub fn parse_wire(value: &[u8]) -> Wire<'_> {
    match value {
        [MAGIC_BYTE, a, b, c, d, datum @ ..] => Wire::Framed {
            id: u32::from_be_bytes([*a, *b, *c, *d]),
            datum,
        },
        _ => Wire::Bare(value),
    }
}

/// What the registry log did with the records (`/metrics`, `crowdtick_schema_registry_*`).
#[derive(Debug, Default)]
pub struct RegistryMetrics {
    /// Records appended with the header.
    pub records_framed: AtomicU64,
    /// Records read that had no header (written before the registry was turned on).
    pub records_bare: AtomicU64,
    /// Records read that another schema version wrote, decoded by its id and resolved to ours.
    pub records_transcoded: AtomicU64,
    /// Records read that no schema could turn into ours (handed on empty).
    pub records_unreadable: AtomicU64,
}

/// The Kafka log with the Confluent wire format on both topics (see the module docs).
pub struct RegistryLog {
    inner: Arc<dyn Log>,
    votes: Framing,
    tallies: Framing,
    decoder: AvroDecoder<'static>,
    pub metrics: Arc<RegistryMetrics>,
}

impl RegistryLog {
    /// Registers (or checks) CrowdTick's schemas under `<topic>-value` for both topics and wraps
    /// `inner`. `topics` gives the Kafka names of (votes, tallies).
    pub async fn connect(
        inner: Arc<dyn Log>,
        config: &RegistryConfig,
        topics: (&str, &str),
    ) -> Result<Self, RegistryError> {
        let settings = settings(config)?;
        let votes = framing(&settings, config, topics.0, schemas::VOTE_AVSC, "vote.avsc").await?;
        let tallies = framing(
            &settings,
            config,
            topics.1,
            schemas::TALLY_AVSC,
            "tally.avsc",
        )
        .await?;
        tracing::info!(
            registry = %crate::redact::registry(&config.url),
            votes_subject = %votes.subject, votes_id = votes.id,
            tallies_subject = %tallies.subject, tallies_id = tallies.id,
            "schema registry: records are framed with these schema ids"
        );
        Ok(Self {
            inner,
            votes,
            tallies,
            decoder: AvroDecoder::new(settings),
            metrics: Arc::default(),
        })
    }

    pub fn framing(&self, topic: Topic) -> &Framing {
        match topic {
            Topic::Votes => &self.votes,
            Topic::Tallies => &self.tallies,
        }
    }

    /// The bare datum in CrowdTick's schema of a value written with schema `id` (not ours).
    async fn transcode(&self, topic: Topic, value: &[u8]) -> Result<Vec<u8>, SRCError> {
        let decoded = self.decoder.decode(Some(value)).await?;
        let schema = &self.framing(topic).schema;
        let resolved = decoded.value.resolve(schema).map_err(|e| {
            SRCError::non_retryable_with_cause(e, "not readable as CrowdTick's schema")
        })?;
        apache_avro::to_avro_datum(schema, resolved)
            .map_err(|e| SRCError::non_retryable_with_cause(e, "re-encoding"))
    }
}

fn settings(config: &RegistryConfig) -> Result<SrSettings, RegistryError> {
    let mut urls = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let first = urls.next().unwrap_or_default().trim_end_matches('/');
    let mut builder = SrSettings::new_builder(first.to_string());
    for url in urls {
        builder.add_url(url.trim_end_matches('/').to_string());
    }
    builder
        .set_timeout(config.timeout)
        .build()
        .map_err(RegistryError::Settings)
}

async fn framing(
    settings: &SrSettings,
    config: &RegistryConfig,
    topic: &str,
    avsc: &str,
    file: &'static str,
) -> Result<Framing, RegistryError> {
    let subject = format!("{topic}-value");
    let schema = Arc::new(Schema::parse_str(avsc).expect("CrowdTick's schemas parse"));
    let id = if config.auto_register {
        let supplied = SuppliedSchema {
            name: None,
            schema_type: SchemaType::Avro,
            schema: avsc.to_string(),
            references: Vec::new(),
            properties: None,
            tags: None,
        };
        post_schema(settings, subject.clone(), supplied)
            .await
            .map_err(|source| RegistryError::Register {
                url: crate::redact::registry(&config.url),
                subject: subject.clone(),
                source,
            })?
            .id
    } else {
        let body = serde_json::json!({ "schema": avsc }).to_string();
        perform_sr_call(settings, SrCall::PostForVersion(&subject, &body))
            .await
            .and_then(|found| {
                found.id.ok_or_else(|| {
                    SRCError::non_retryable_without_cause("the registry answered without an id")
                })
            })
            .map_err(|source| RegistryError::NotRegistered {
                url: crate::redact::registry(&config.url),
                subject: subject.clone(),
                file,
                source,
            })?
    };
    Ok(Framing::new(subject, id, schema))
}

#[async_trait]
impl Log for RegistryLog {
    fn partitions(&self, topic: Topic) -> u32 {
        self.inner.partitions(topic)
    }

    async fn append(
        &self,
        topic: Topic,
        batch: AppendBatch,
        deadline: Instant,
    ) -> Result<Vec<Position>, LogError> {
        let framed = batch.with_value_prefix(&self.framing(topic).header);
        self.metrics
            .records_framed
            .fetch_add(framed.len() as u64, Ordering::Relaxed);
        self.inner.append(topic, framed, deadline).await
    }

    async fn fetch(
        &self,
        topic: Topic,
        partition: Partition,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, LogError> {
        let fetched = self
            .inner
            .fetch(topic, partition, offset, max_bytes, max_wait)
            .await?;
        let own = self.framing(topic).id;
        let mut out = Fetched {
            partition: fetched.partition,
            first_offset: fetched.first_offset,
            high_watermark: fetched.high_watermark,
            data: Vec::with_capacity(fetched.data.len()),
            records: Vec::with_capacity(fetched.len()),
        };
        let (mut bare, mut transcoded, mut unreadable) = (0, 0, 0);
        for (offset, timestamp, key, value) in fetched.iter() {
            let key_start = out.data.len() as u32;
            out.data.extend_from_slice(key);
            let value_start = out.data.len() as u32;
            match parse_wire(value) {
                Wire::Bare(datum) => {
                    bare += 1;
                    out.data.extend_from_slice(datum)
                }
                Wire::Framed { id, datum } if id == own => out.data.extend_from_slice(datum),
                Wire::Framed { id, .. } => {
                    match self.transcode(topic, value).await {
                        Ok(datum) => {
                            transcoded += 1;
                            out.data.extend_from_slice(&datum)
                        }
                        Err(e) if e.retriable => {
                            self.decoder.remove_errors_from_cache();
                            return Err(LogError::io(
                                format!(
                                    "schema registry: schema {id} of {} offset {offset}",
                                    topic.name()
                                ),
                                e,
                            ));
                        }
                        Err(e) => {
                            unreadable += 1;
                            tracing::warn!(
                            topic = topic.name(), partition = partition.0, offset = offset.0, schema_id = id,
                            "a record no schema can read as CrowdTick's is handed on empty: {e}"
                        )
                        }
                    }
                }
            }
            out.records
                .push((timestamp, key_start, value_start, out.data.len() as u32));
        }
        let m = &self.metrics;
        for (counter, n) in [
            (&m.records_bare, bare),
            (&m.records_transcoded, transcoded),
            (&m.records_unreadable, unreadable),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(out)
    }

    async fn high_watermark(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError> {
        self.inner.high_watermark(topic, partition).await
    }

    async fn log_start(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError> {
        self.inner.log_start(topic, partition).await
    }

    async fn release(
        &self,
        topic: Topic,
        partition: Partition,
        below: Offset,
    ) -> Result<(), LogError> {
        self.inner.release(topic, partition, below).await
    }

    async fn ping(&self) -> Result<(), LogError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Timestamp;

    #[test]
    fn the_wire_format_is_split_into_id_and_datum() {
        let framed = get_payload(258, vec![2, 4, 6]);
        assert_eq!(framed, [0, 0, 0, 1, 2, 2, 4, 6]);
        assert_eq!(
            parse_wire(&framed),
            Wire::Framed {
                id: 258,
                datum: &[2, 4, 6]
            }
        );
        // Too short for a header, or no magic byte: bare.
        assert_eq!(parse_wire(&[0, 0, 0, 1]), Wire::Bare(&[0, 0, 0, 1]));
        assert_eq!(
            parse_wire(&[2, 0, 0, 0, 1, 9]),
            Wire::Bare(&[2, 0, 0, 0, 1, 9])
        );
    }

    #[test]
    fn a_batch_gets_the_header_before_every_value_and_nowhere_else() {
        let mut batch = AppendBatch::default();
        batch.push(Partition(3), Timestamp(10), b"k1", b"v1");
        batch.push(Partition(1), Timestamp(11), b"", b"value2");
        let framed = batch.with_value_prefix(&[0, 0, 0, 0, 7]);
        let records: Vec<_> = framed.iter().collect();
        assert_eq!(
            records,
            [
                (
                    Partition(3),
                    Timestamp(10),
                    &b"k1"[..],
                    &[0, 0, 0, 0, 7, b'v', b'1'][..]
                ),
                (
                    Partition(1),
                    Timestamp(11),
                    &b""[..],
                    &b"\0\0\0\0\x07value2"[..]
                ),
            ]
        );
    }

    #[test]
    fn no_bare_vote_or_tally_starts_with_the_magic_byte() {
        let tally = schemas::PartialTally {
            poll_id: 1,
            ..Default::default()
        };
        assert_ne!(tally.to_avro()[0], MAGIC_BYTE);
        let mut vote = Vec::new();
        schemas::Vote {
            vote_id: "v".into(),
            poll_id: 1,
            voter_id: "d:x".into(),
            options: vec![0],
            accepted_at: Timestamp(1),
            source: "web".into(),
        }
        .encode(&mut vote);
        assert_ne!(vote[0], MAGIC_BYTE);
    }
}
