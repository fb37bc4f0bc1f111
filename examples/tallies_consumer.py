#!/usr/bin/env python3
"""Read CrowdTick's tallies topic as an analytics team would: confluent-kafka's AvroDeserializer
decodes each record by the schema id in its Confluent wire-format header (fetched from the schema
registry and cached), and the partials are merged as docs/TALLIES.md says.

    pip install 'confluent-kafka[avro,schemaregistry]'
    python3 examples/tallies_consumer.py --bootstrap kafka:9092 --registry http://registry:8081

Prints one JSON object per poll on stdout, {"poll_id", "counts", "voters", "version"}, whenever
its totals change. With --once it reads every partition to its end, prints the final totals of
every poll as one JSON object keyed by poll id, and exits (the tests run it this way).
"""
import argparse
import json
import sys
from itertools import zip_longest

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def newer(t, held):
    """Rule 1: per (poll, partition) the highest offset wins; at an equal one, complete_until."""
    return held is None or (t["offset"], t["complete_until"]) > (held["offset"], held["complete_until"])


def totals(held, poll_id):
    """Rules 2 and 3: sum the held partials of one poll over partitions."""
    partials = [p for (poll, _), p in held.items() if poll == poll_id]
    counts = [sum(c) for c in zip_longest(*(p["counts"] for p in partials), fillvalue=0)]
    return {
        "poll_id": poll_id,
        "counts": counts,
        "voters": sum(p["voters"] for p in partials),
        "version": sum(p["offset"] for p in partials),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers (host:port,...)")
    ap.add_argument("--registry", required=True, help="schema registry URL (http://host:8081)")
    ap.add_argument("--topic", default="crowdtick.tallies", help="the tallies topic [crowdtick.tallies]")
    ap.add_argument("--reader-schema", help="decode into this .avsc (a reader of another version) "
                    "instead of each record's own writer schema")
    ap.add_argument("--once", action="store_true", help="read to the end of every partition, print the totals, exit")
    args = ap.parse_args()

    registry = SchemaRegistryClient({"url": args.registry})
    reader = open(args.reader_schema).read() if args.reader_schema else None
    deserialize = AvroDeserializer(registry, schema_str=reader)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "crowdtick-example-analytics",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    partitions = consumer.list_topics(args.topic, timeout=10).topics[args.topic].partitions
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    held = {}
    at_end = set()
    while not (args.once and len(at_end) == len(partitions)):
        m = consumer.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(m.partition())
                continue
            sys.exit(f"kafka: {m.error()}")
        at_end.discard(m.partition())
        t = deserialize(m.value(), ctx)
        key = (t["poll_id"], t["partition"])
        if newer(t, held.get(key)):
            held[key] = t
            if not args.once:
                print(json.dumps(totals(held, t["poll_id"])), flush=True)
    consumer.close()
    polls = sorted({poll for poll, _ in held})
    print(json.dumps({str(p): totals(held, p) for p in polls}))


if __name__ == "__main__":
    main()
