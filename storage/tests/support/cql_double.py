#!/usr/bin/env python3
"""A test double of a ScyllaDB node: the CQL binary protocol v4 (Apache Cassandra's
native_protocol_v4.spec) and as much of CQL as CrowdTick's tally store and the scylla driver's
metadata queries use. ScyllaDB cannot run on the build machines; storage/src/scylla.rs's contract
test runs against this when CROWDTICK_TEST_SCYLLA names no real node.

What it implements: OPTIONS, STARTUP, REGISTER, QUERY, PREPARE, EXECUTE, BATCH; CREATE KEYSPACE /
CREATE TABLE (IF NOT EXISTS); INSERT, UPDATE, DELETE and SELECT by (partial) primary key or whole
table, with per-cell last-write-wins by write timestamp (USING TIMESTAMP, or the server's clock),
and lightweight transactions (IF NOT EXISTS, IF EXISTS, IF col < ?) answering [applied]; the
system tables the driver reads at connect (system.local, system.peers, system_schema.keyspaces).
Unknown tables answer CQL's "unconfigured table" error, as a node does. One node, one token.

Usage: cql_double.py [--port N]   (0: a free port; prints "listening on PORT" first)
"""
import argparse
import asyncio
import re
import struct
import sys
import time
import uuid

# Opcodes and result kinds (native_protocol_v4.spec, sections 2.4 and 4.2.5).
ERROR, STARTUP, READY, OPTIONS, SUPPORTED, QUERY, RESULT, PREPARE, EXECUTE, REGISTER, BATCH = (
    0x00, 0x01, 0x02, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0D)
VOID, ROWS, PREPARED, SCHEMA_CHANGE = 1, 2, 4, 5
# Type ids (section 6) and their CQL names.
TYPES = {"bigint": 0x02, "blob": 0x03, "boolean": 0x04, "int": 0x09, "uuid": 0x0C, "text": 0x0D,
         "varchar": 0x0D, "inet": 0x10}
LIST, MAP, SET = 0x20, 0x21, 0x22
HOST_ID = uuid.UUID("6f1b2d3c-0000-4000-8000-000000000001")
SCHEMA_VERSION = uuid.UUID("6f1b2d3c-0000-4000-8000-000000000002")


class CqlError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def invalid(message):
    return CqlError(0x2200, message)


# ---------------------------------------------------------------- encoding


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def long_string(s):
    b = s.encode()
    return struct.pack(">i", len(b)) + b


def cell(b):
    return struct.pack(">i", -1) if b is None else struct.pack(">i", len(b)) + b


def type_option(t):
    """A CQL type (a name, or ("set"|"list", t), or ("map", k, v)) as an [option]."""
    if isinstance(t, tuple):
        kind = {"list": LIST, "set": SET, "map": MAP}[t[0]]
        return struct.pack(">H", kind) + b"".join(type_option(x) for x in t[1:])
    return struct.pack(">H", TYPES[t])


def encode(t, v):
    if v is None:
        return None
    if isinstance(t, tuple):
        items = sorted(v.items()) if t[0] == "map" else sorted(v) if t[0] == "set" else list(v)
        out = struct.pack(">i", len(items))
        for item in items:
            pair = zip(t[1:], item) if t[0] == "map" else [(t[1], item)]
            for sub, x in pair:
                out += cell(encode(sub, x))
        return out
    if t == "bigint":
        return struct.pack(">q", v)
    if t == "int":
        return struct.pack(">i", v)
    if t == "boolean":
        return b"\x01" if v else b"\x00"
    if t in ("text", "varchar"):
        return v.encode()
    if t == "uuid":
        return v.bytes
    if t == "inet":
        return bytes(int(x) for x in v.split("."))
    return bytes(v)  # blob


def decode(t, b):
    if b is None:
        return None
    if t == "bigint":
        return struct.unpack(">q", b)[0]
    if t == "int":
        return struct.unpack(">i", b)[0]
    if t == "boolean":
        return b != b"\x00"
    if t in ("text", "varchar"):
        return b.decode()
    if isinstance(t, tuple) and t[0] in ("list", "set"):
        (n,), rest, out = struct.unpack(">i", b[:4]), b[4:], []
        for _ in range(n):
            (size,) = struct.unpack(">i", rest[:4])
            out.append(decode(t[1], rest[4:4 + size]))
            rest = rest[4 + size:]
        return out
    return bytes(b)


def rows_result(keyspace, table, columns, rows):
    """A Rows result: columns [(name, type)], rows of values in that order."""
    meta = struct.pack(">ii", 0x0001, len(columns)) + string(keyspace) + string(table)
    meta += b"".join(string(name) + type_option(t) for name, t in columns)
    body = struct.pack(">i", len(rows)) + b"".join(
        b"".join(cell(encode(t, v)) for (_, t), v in zip(columns, row)) for row in rows)
    return struct.pack(">i", ROWS) + meta + body


# ---------------------------------------------------------------- reading a frame body


class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def byte(self):
        return self.take(1)[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def string(self):
        return self.take(self.short()).decode()

    def long_string(self):
        return self.take(self.int()).decode()

    def short_bytes(self):
        return self.take(self.short())

    def value(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def values(self):
        return [self.value() for _ in range(self.short())]

    def params(self):
        """Query parameters (section 4.1.4): consistency, flags, values, ..., timestamp."""
        self.short()
        flags = self.byte()
        values = []
        if flags & 0x01:
            if flags & 0x40:
                raise invalid("named values are not served here")
            values = self.values()
        if flags & 0x04:
            self.int()
        if flags & 0x08:
            self.value()
        if flags & 0x10:
            self.short()
        timestamp = struct.unpack(">q", self.take(8))[0] if flags & 0x20 else None
        return values, timestamp


# ---------------------------------------------------------------- the schema and the data


class Table:
    def __init__(self, keyspace, name, columns, partition_key, clustering):
        self.keyspace, self.name = keyspace, name
        self.columns = columns  # name -> type
        self.partition_key, self.clustering = partition_key, clustering
        self.key = partition_key + clustering
        self.rows = {}  # key tuple -> {column: (timestamp, value)}; "" is the row marker


class Node:
    def __init__(self):
        self.keyspaces = {}  # name -> replication map
        self.tables = {}  # "ks.table" -> Table
        self.prepared = {}  # id -> Statement
        system = [
            ("system", "local", {"key": "text", "host_id": "uuid", "rpc_address": "inet",
                                 "data_center": "text", "rack": "text", "tokens": ("set", "text"),
                                 "cluster_name": "text", "schema_version": "uuid",
                                 "partitioner": "text"}, ["key"]),
            ("system", "peers", {"peer": "inet", "host_id": "uuid", "rpc_address": "inet",
                                 "data_center": "text", "rack": "text", "tokens": ("set", "text"),
                                 "schema_version": "uuid"}, ["peer"]),
            ("system_schema", "keyspaces", {"keyspace_name": "text",
                                            "replication": ("map", "text", "text"),
                                            "durable_writes": "boolean"}, ["keyspace_name"]),
            ("system_schema", "tables", {"keyspace_name": "text", "table_name": "text"},
             ["keyspace_name", "table_name"]),
            ("system_schema", "views", {"keyspace_name": "text", "view_name": "text",
                                        "base_table_name": "text"}, ["keyspace_name", "view_name"]),
        ]
        for ks, name, columns, key in system:
            self.tables[f"{ks}.{name}"] = Table(ks, name, columns, key, [])
        local = {"key": "local", "host_id": HOST_ID, "rpc_address": "127.0.0.1",
                 "data_center": "datacenter1", "rack": "rack1", "tokens": {"0"},
                 "cluster_name": "crowdtick-test-double", "schema_version": SCHEMA_VERSION,
                 "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner"}
        self.tables["system.local"].rows[("local",)] = {c: (0, v) for c, v in local.items()}

    def table(self, name):
        name = name.lower()
        if name not in self.tables:
            raise invalid(f"unconfigured table {name.split('.')[-1]}")
        return self.tables[name]


def now_micros():
    return int(time.time() * 1_000_000)


class Statement:
    """One parsed CQL statement: what it does, to which table, and its bind markers."""

    def __init__(self, node, text):
        self.text = " ".join(text.strip().rstrip(";").split())
        t, m = self.text, None
        self.kind = t.split()[0].upper()
        self.markers = []  # (name, type) per ?
        self.condition = None
        if self.kind == "CREATE":
            return
        if self.kind == "INSERT":
            m = re.fullmatch(r"INSERT INTO (\S+) \(([^)]*)\) VALUES \(([^)]*)\)( USING TIMESTAMP \?)?( IF NOT EXISTS)?", t, re.I)
            self.table = node.table(m[1])
            self.set = [c.strip() for c in m[2].split(",")]
            self.markers = [(c, self.table.columns[c]) for c in self.set]
            self.with_timestamp = bool(m[4])
            if self.with_timestamp:
                self.markers.append(("[timestamp]", "bigint"))
            self.condition = "not exists" if m[5] else None
            self.where = []
        elif self.kind == "UPDATE":
            m = re.fullmatch(r"UPDATE (\S+)( USING TIMESTAMP \?)? SET (.*?) WHERE (.*?)( IF (\w+) < \?)?", t, re.I)
            self.table = node.table(m[1])
            self.with_timestamp = bool(m[2])
            self.markers = [("[timestamp]", "bigint")] if m[2] else []
            self.set = [re.fullmatch(r"(\w+) = \?", s.strip())[1] for s in m[3].split(",")]
            self.markers += [(c, self.table.columns[c]) for c in self.set]
            self.where = self._where(m[4])
            if m[5]:
                self.condition = ("less", m[6])
                self.markers.append((m[6], self.table.columns[m[6]]))
        elif self.kind == "DELETE":
            m = re.fullmatch(r"DELETE FROM (\S+) WHERE (.*?)( IF EXISTS)?", t, re.I)
            self.table = node.table(m[1])
            self.where = self._where(m[2])
            self.condition = "exists" if m[3] else None
            self.with_timestamp = False
        elif self.kind == "SELECT":
            m = re.fullmatch(r"SELECT (.*?) FROM (\S+)( WHERE (.*))?", t, re.I)
            self.table = node.table(m[2])
            self.select = [c.strip() for c in m[1].split(",")]
            for c in self.select:
                if c not in self.table.columns:
                    raise invalid(f"Undefined column name {c}")
            self.where = self._where(m[4]) if m[3] else []
        else:
            raise invalid(f"not served by the test double: {t}")

    def _where(self, text):
        out = []
        for part in re.split(r" AND ", text, flags=re.I):
            m = re.fullmatch(r"(\w+)\s*=\s*\?", part.strip()) or re.fullmatch(r"(\w+)\s*=\s*'([^']*)'", part.strip())
            im = re.fullmatch(r"(\w+) in \?", part.strip(), re.I)
            if im:
                out.append((im[1], "in"))
                self.markers.append((im[1], ("list", self.table.columns[im[1]])))
            elif m and m.lastindex == 2:
                out.append((m[1], ("literal", m[2])))
            elif m:
                out.append((m[1], "?"))
                self.markers.append((m[1], self.table.columns[m[1]]))
            else:
                raise invalid(f"WHERE clause not served by the test double: {part}")
        return out

    def result_columns(self):
        if self.kind == "SELECT":
            return [(c, self.table.columns[c]) for c in self.select]
        if self.condition:
            return [("[applied]", "boolean")]
        return []

    def pk_indexes(self):
        if not hasattr(self, "table"):
            return []
        return [i for i, (name, _) in enumerate(self.markers) if name in self.table.partition_key]


def run(node, st, raw_values, timestamp):
    """Executes a statement with its bound values; returns a RESULT body."""
    if st.kind == "CREATE":
        return create(node, st.text)
    values = [decode(t, v) for (_, t), v in zip(st.markers, raw_values)]
    if len(values) != len(st.markers):
        raise invalid(f"expected {len(st.markers)} values, got {len(raw_values)}")
    table = st.table
    named = [(name, v) for (name, _), v in zip(st.markers, values)]
    if st.kind == "INSERT":
        row = dict(named)
        ts = row.pop("[timestamp]", None) or timestamp or now_micros()
        key = tuple(row[c] for c in table.key)
        return write(table, key, {c: v for c, v in row.items() if c not in table.key}, ts,
                     st.condition, None, marker=True)
    if st.kind == "UPDATE":
        ts = dict(named).get("[timestamp]") or timestamp or now_micros()
        sets = {c: v for c, v in named[1 if st.with_timestamp else 0:][:len(st.set)]}
        where = named[(1 if st.with_timestamp else 0) + len(st.set):]
        cond_value = None
        if st.condition:
            cond_value = where[-1][1]
            where = where[:-1]
        key = tuple(dict(where)[c] for c in table.key)
        return write(table, key, sets, ts, st.condition, cond_value, marker=False)
    if st.kind == "DELETE":
        key = tuple(dict(named)[c] for c in table.key)
        exists = key in table.rows and live(table.rows[key])
        if st.condition == "exists" and not exists:
            return applied(False)
        table.rows.pop(key, None)
        return applied(True) if st.condition else struct.pack(">i", VOID)
    # SELECT: by the bound part of the key, or the whole table.
    filters, bound_values = {}, iter(v for _, v in named)
    for col, how in st.where:
        filters[col] = how[1] if isinstance(how, tuple) else next(bound_values)
    rows = []
    for key in sorted(table.rows, key=lambda k: tuple((x is None, x) for x in k)):
        cells = table.rows[key]
        if not live(cells):
            continue
        full = dict(zip(table.key, key))
        full.update({c: v for c, (_, v) in cells.items() if c})
        if all((full.get(c) in v) if isinstance(v, list) else full.get(c) == v for c, v in filters.items()):
            rows.append([full.get(c) for c in st.select])
    return rows_result(table.keyspace, table.name, st.result_columns(), rows)


def live(cells):
    return any(v is not None for c, (_, v) in cells.items())


def applied(ok):
    return rows_result("", "", [("[applied]", "boolean")], [[ok]])


def write(table, key, cells, ts, condition, cond_value, marker):
    row = table.rows.get(key)
    exists = row is not None and live(row)
    if condition == "not exists" and exists:
        return applied(False)
    if isinstance(condition, tuple):
        held = row.get(condition[1], (0, None))[1] if exists else None
        if held is None or not held < cond_value:
            return applied(False)
    row = table.rows.setdefault(key, {})
    if marker:
        cells = dict(cells, **{"": True})
    for c, v in cells.items():
        held = row.get(c)
        # Last write wins; at an equal timestamp, the greater value (as CQL's reconciliation).
        if held is None or ts > held[0] or (ts == held[0] and repr(v) > repr(held[1])):
            row[c] = (ts, v)
    return applied(True) if condition else struct.pack(">i", VOID)


def create(node, text):
    m = re.fullmatch(r"CREATE KEYSPACE (IF NOT EXISTS )?(\w+) WITH replication = \{(.*)\}", text, re.I)
    if m:
        replication = dict(re.findall(r"'(\w+)'\s*:\s*'?([\w.]+)'?", m[3]))
        node.keyspaces.setdefault(m[2].lower(), replication)
        node.tables["system_schema.keyspaces"].rows[(m[2].lower(),)] = {
            "replication": (0, replication), "durable_writes": (0, True)}
        return schema_change("KEYSPACE", m[2].lower())
    m = re.fullmatch(r"CREATE TABLE (IF NOT EXISTS )?(\w+)\.(\w+) \((.*)\)", text, re.I)
    if not m:
        raise invalid(f"not served by the test double: {text}")
    keyspace, name = m[2].lower(), m[3].lower()
    if keyspace not in node.keyspaces:
        raise invalid(f"Keyspace {keyspace} does not exist")
    body = m[4]
    pk = re.search(r"PRIMARY KEY \(\((.*?)\)(.*?)\)", body, re.I)
    columns, partition_key, clustering = {}, [], []
    for part in re.split(r",(?![^()]*\))", body):
        words = part.strip().split()
        if not words or words[0].upper() == "PRIMARY":
            continue
        columns[words[0].lower()] = words[1].lower()
        if len(words) >= 4 and words[2].upper() == "PRIMARY":
            partition_key = [words[0].lower()]
    if pk:
        partition_key = [c.strip() for c in pk[1].split(",")]
        clustering = [c.strip() for c in pk[2].split(",") if c.strip()]
    full = f"{keyspace}.{name}"
    if full not in node.tables:
        node.tables[full] = Table(keyspace, name, columns, partition_key, clustering)
        node.tables["system_schema.tables"].rows[(keyspace, name)] = {"": (0, True)}
    return schema_change("TABLE", keyspace, name)


def schema_change(target, keyspace, name=None):
    body = struct.pack(">i", SCHEMA_CHANGE) + string("CREATED") + string(target) + string(keyspace)
    return body + (string(name) if name else b"")


def prepared_result(st_id, st):
    markers = st.markers
    ks, table = (st.table.keyspace, st.table.name) if hasattr(st, "table") else ("", "")
    pk = st.pk_indexes()
    meta = struct.pack(">iii", 0x0001, len(markers), len(pk)) + b"".join(struct.pack(">H", i) for i in pk)
    meta += string(ks) + string(table) + b"".join(string(n) + type_option(t) for n, t in markers)
    cols = st.result_columns()
    result_meta = struct.pack(">ii", 0x0001, len(cols)) + string(ks) + string(table)
    result_meta += b"".join(string(n) + type_option(t) for n, t in cols)
    return struct.pack(">i", PREPARED) + struct.pack(">H", len(st_id)) + st_id + meta + result_meta


# ---------------------------------------------------------------- the server


def handle(node, opcode, body):
    r = Reader(body)
    if opcode == OPTIONS:
        return SUPPORTED, struct.pack(">H", 2) + string("CQL_VERSION") + struct.pack(">H", 1) + string("3.4.5") \
            + string("COMPRESSION") + struct.pack(">H", 0)
    if opcode in (STARTUP, REGISTER):
        return READY, b""
    if opcode == QUERY:
        text = r.long_string()
        values, ts = r.params()
        return RESULT, run(node, Statement(node, text), values, ts)
    if opcode == PREPARE:
        text = r.long_string()
        st = Statement(node, text)
        st_id = uuid.uuid5(uuid.NAMESPACE_OID, st.text).bytes
        node.prepared[st_id] = st
        return RESULT, prepared_result(st_id, st)
    if opcode == EXECUTE:
        st_id = r.short_bytes()
        if st_id not in node.prepared:
            return ERROR, struct.pack(">i", 0x2500) + string("unprepared") + struct.pack(">H", len(st_id)) + st_id
        values, ts = r.params()
        return RESULT, run(node, node.prepared[st_id], values, ts)
    if opcode == BATCH:
        r.byte()
        statements = []
        for _ in range(r.short()):
            kind = r.byte()
            st = Statement(node, r.long_string()) if kind == 0 else node.prepared[r.short_bytes()]
            statements.append((st, r.values()))
        r.short()
        flags = r.byte()
        if flags & 0x10:
            r.short()
        ts = struct.unpack(">q", r.take(8))[0] if flags & 0x20 else None
        for st, values in statements:
            run(node, st, values, ts)
        return RESULT, struct.pack(">i", VOID)
    raise CqlError(0x000A, f"opcode {opcode} is not served by the test double")


async def serve(node, reader, writer):
    try:
        while True:
            header = await reader.readexactly(9)
            version, flags, stream, opcode, length = struct.unpack(">BBhBi", header)
            body = await reader.readexactly(length)
            if version & 0x7F != 4:
                out_op, out = ERROR, struct.pack(">i", 0x000A) + string("only protocol v4 is served")
            else:
                try:
                    out_op, out = handle(node, opcode, body)
                except CqlError as e:
                    out_op, out = ERROR, struct.pack(">i", e.code) + string(str(e))
                except Exception as e:  # a bug of the double: say so to the client
                    out_op, out = ERROR, struct.pack(">i", 0x0000) + string(f"test double: {e!r}")
                    print(f"test double error: {e!r}", file=sys.stderr, flush=True)
            writer.write(struct.pack(">BBhBi", 0x84, 0, stream, out_op, len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    node = Node()
    server = await asyncio.start_server(lambda r, w: serve(node, r, w), "127.0.0.1", args.port)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
