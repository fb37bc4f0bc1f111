#!/usr/bin/env python3
"""Regenerates the replica-limit clauses of helm/crowdtick/values.schema.json.

CrowdTick's processors form one Kafka consumer group over the votes topic, so more processors than
partitions would sit idle: processor.replicaCount must be <= config.log.partitions. JSON Schema
cannot compare two fields, so the schema's top-level "allOf" holds one clause per partition count:

    if config.log.partitions == p  then processor.replicaCount <= p      for p in 1..N

and config.log.partitions (and processor.replicaCount) get "maximum": N, so no partition count
escapes the enumeration. N defaults to 1024, the range CrowdTick itself accepts for log.partitions.
This script rewrites only those parts; everything else in the schema is edited by hand.

    python3 helm/tools/values_schema.py            # rewrite the schema
    python3 helm/tools/values_schema.py --check    # exit 1 if it is not up to date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[1] / "crowdtick" / "values.schema.json"
DEFAULT_MAX_PARTITIONS = 1024
_PLACEHOLDER = "__REPLICA_LIMIT_CLAUSES__"


def clause(p: int) -> dict:
    """if config.log.partitions == p then processor.replicaCount <= p."""
    return {
        "if": {"properties": {"config": {"properties": {"log": {"properties": {"partitions": {"const": p}}}}}}},
        "then": {"properties": {"processor": {"properties": {"replicaCount": {"maximum": p}}}}},
    }


def render(schema: dict, max_partitions: int) -> str:
    schema = json.loads(json.dumps(schema))  # a copy
    props = schema["properties"]
    props["config"]["properties"]["log"]["properties"]["partitions"]["maximum"] = max_partitions
    props["processor"]["properties"]["replicaCount"]["maximum"] = max_partitions
    schema["allOf"] = [_PLACEHOLDER]
    text = json.dumps(schema, indent=2, ensure_ascii=False)
    # One compact clause per line keeps the file reviewable.
    indent = " " * 4
    clauses = (",\n").join(indent + json.dumps(clause(p), separators=(",", ":")) for p in range(1, max_partitions + 1))
    return text.replace(indent + json.dumps(_PLACEHOLDER), clauses) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-partitions", type=int, default=None,
                        help=f"the enumeration's cap (default: the schema's current one, else {DEFAULT_MAX_PARTITIONS})")
    parser.add_argument("--check", action="store_true", help="only check that the schema is up to date")
    args = parser.parse_args()
    current = SCHEMA.read_text(encoding="utf-8")
    schema = json.loads(current)
    cap = args.max_partitions or schema["properties"]["config"]["properties"]["log"]["properties"]["partitions"].get(
        "maximum", DEFAULT_MAX_PARTITIONS)
    wanted = render(schema, cap)
    if args.check:
        if wanted != current:
            print(f"{SCHEMA} is not up to date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(wanted, encoding="utf-8")
    print(f"wrote {SCHEMA} ({cap} replica-limit clauses)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
