//! Reads CrowdTick's tallies topic as an analytics team would, in Rust: rdkafka reads the records,
//! `schema_registry_converter`'s `AvroDecoder` decodes each by the schema id in its Confluent
//! wire-format header (fetched from the registry once per id), and the partials are merged as
//! docs/TALLIES.md says. It reads every partition to its end and prints the totals of every poll
//! as one JSON object keyed by poll id (the tests run it and compare with the results API).
//!
//! ```text
//! cargo run --example tallies_consumer -- --bootstrap kafka:9092 --registry http://registry:8081
//! ```

use apache_avro::types::Value;
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Parser)]
#[command(
    about = "Print every poll's totals from CrowdTick's tallies topic (Confluent wire format)."
)]
struct Args {
    /// Kafka bootstrap servers (host:port,…).
    #[arg(long)]
    bootstrap: String,
    /// Schema registry URL (http://host:8081).
    #[arg(long)]
    registry: String,
    /// The tallies topic.
    #[arg(long, default_value = "crowdtick.tallies")]
    topic: String,
}

/// The fields of a partial that merging needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    offset: i64,
    complete_until: i64,
}

fn field<'a>(record: &'a [(String, Value)], name: &str) -> &'a Value {
    &record
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .1
}

fn long(v: &Value) -> i64 {
    match v {
        Value::Long(n) | Value::TimestampMicros(n) => *n,
        Value::Int(n) => *n as i64,
        other => panic!("not a long: {other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let decoder = AvroDecoder::new(SrSettings::new(args.registry.clone()));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "crowdtick-example-analytics-rs")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(&args.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    // (poll, partition) -> (rank, counts, voters): rule 1 of docs/TALLIES.md.
    let mut held: BTreeMap<(i64, i64), (Rank, Vec<i64>, i64)> = BTreeMap::new();
    let mut at_end = BTreeSet::new();
    while at_end.len() < partitions as usize {
        let Some(message) = consumer.poll(Duration::from_secs(1)) else {
            continue;
        };
        let message = match message {
            Err(KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                continue;
            }
            other => other?,
        };
        at_end.remove(&message.partition());
        let decoded = decoder.decode(message.payload()).await?;
        let Value::Record(record) = decoded.value else {
            anyhow::bail!("not a record: {:?}", decoded.value);
        };
        let key = (
            long(field(&record, "poll_id")),
            long(field(&record, "partition")),
        );
        let rank = Rank {
            offset: long(field(&record, "offset")),
            complete_until: long(field(&record, "complete_until")),
        };
        let Value::Array(counts) = field(&record, "counts") else {
            anyhow::bail!("counts is not an array");
        };
        if held.get(&key).is_none_or(|(h, _, _)| rank > *h) {
            let counts = counts.iter().map(long).collect();
            held.insert(key, (rank, counts, long(field(&record, "voters"))));
        }
    }

    // Rules 2 and 3: sum over partitions.
    let mut totals = serde_json::Map::new();
    for (&(poll, _), (rank, counts, voters)) in &held {
        let entry = totals.entry(poll.to_string()).or_insert_with(
            || serde_json::json!({"poll_id": poll, "counts": [], "voters": 0, "version": 0}),
        );
        let sum: &mut Vec<serde_json::Value> = entry["counts"].as_array_mut().unwrap();
        for (i, c) in counts.iter().enumerate() {
            if sum.len() <= i {
                sum.push(0.into());
            }
            sum[i] = (sum[i].as_i64().unwrap() + c).into();
        }
        entry["voters"] = (entry["voters"].as_i64().unwrap() + voters).into();
        entry["version"] = (entry["version"].as_i64().unwrap() + rank.offset).into();
    }
    println!("{}", serde_json::Value::Object(totals));
    Ok(())
}
