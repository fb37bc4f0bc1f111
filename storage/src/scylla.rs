//! The tally store on ScyllaDB: [`ScyllaTallyStore`], behind the same [`TallyStore`] interface as
//! PostgreSQL. Tables and the write rules: `schemas/cql/tallies.cql`; statements:
//! `schemas/src/cql.rs`.
//!
//! - **Writes** carry absolute values `USING TIMESTAMP` derived from what they reflect
//!   ([`offset_timestamp`], [`complete_until_timestamp`]), so last-write-wins keeps the newest
//!   partial and a stale owner's late write can never replace it. No counters, no lightweight
//!   transactions on this path. A flush becomes one unlogged batch per poll (one ScyllaDB
//!   partition, so token-aware routing sends it to a replica that owns it), at most
//!   `max_concurrent_writes` in flight.
//! - **`put` cannot tell** which partials last-write-wins kept without reading them back, so it
//!   returns how many it sent (the newest per (poll, partition) of the batch).
//! - **Checkpoints** are written every few seconds, not per vote, with lightweight transactions
//!   (only a further one replaces the stored one; a cleared one can be written again).
//! - **Reads**: one poll is one partition of `partials` and of `windows`; a votes partition's polls
//!   come from `partition_polls`; everything is a paged scan (start-up only).

use crate::tally_store::TallyStoreError;
use crate::tally_store::{CheckpointStore, TallyStore};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use schemas::{cql, Offset, PartialTally, Partition, PollId, Timestamp};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch as CqlBatch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use std::time::Duration;

mod rows;
pub use rows::{assemble, PollRows, Put};
use rows::{bad, column, partial_row, window_row};

/// Where ScyllaDB is and how CrowdTick's keyspace is made.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// `host:port[,host:port…]`.
    pub hosts: String,
    pub keyspace: String,
    /// `NetworkTopologyStrategy` or `SimpleStrategy`.
    pub replication_class: String,
    pub replication_factor: u32,
    /// Per-poll batches in flight at once in one `put`.
    pub max_concurrent_writes: usize,
}

/// The write timestamp of a row that reflects a votes-partition offset: `offset + 1`, so it only
/// grows with the offset, two different offsets never share one, and none is 0.
pub fn offset_timestamp(offset: Offset) -> i64 {
    offset.0.max(0).saturating_add(1)
}

/// The write timestamp of a partial's `complete_until` claim: the claim + 1, so the highest one
/// stays. A claim made at offset X (every vote accepted by then is among the first X records)
/// holds for every later offset, so it is true of the newest partial too.
pub fn complete_until_timestamp(complete_until: Timestamp) -> i64 {
    complete_until.micros().max(0).saturating_add(1)
}

/// The schema's statements for `keyspace`, in order (`schemas/cql/tallies.cql`).
pub fn schema_statements(config: &ScyllaConfig) -> Result<Vec<String>, TallyStoreError> {
    let keyspace = identifier(&config.keyspace)?;
    let replication = match config.replication_class.as_str() {
        "NetworkTopologyStrategy" | "SimpleStrategy" => format!(
            "{{'class': '{}', 'replication_factor': {}}}",
            config.replication_class, config.replication_factor
        ),
        other => {
            return Err(TallyStoreError::Config(format!(
                "scylla.replication_class {other:?}: use NetworkTopologyStrategy or SimpleStrategy"
            )))
        }
    };
    let text: String = schemas::SCYLLA_CQL
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(text
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("{keyspace}", &keyspace)
                .replace("{replication}", &replication)
        })
        .collect())
}

/// A keyspace name as CQL takes it unquoted (letters, digits, `_`; 48 at most).
fn identifier(name: &str) -> Result<String, TallyStoreError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(TallyStoreError::Config(format!(
            "scylla.keyspace {name:?}: use letters, digits and _ (48 at most), starting with a letter"
        )))
    }
}

struct Statements {
    put_partial: PreparedStatement,
    put_complete_until: PreparedStatement,
    put_window: PreparedStatement,
    put_partition_poll: PreparedStatement,
    poll_partials: PreparedStatement,
    poll_windows: PreparedStatement,
    poll_partition_partials: PreparedStatement,
    poll_partition_windows: PreparedStatement,
    all_partials: PreparedStatement,
    all_windows: PreparedStatement,
    partition_polls: PreparedStatement,
    new_checkpoint: PreparedStatement,
    further_checkpoint: PreparedStatement,
    load_checkpoint: PreparedStatement,
    clear_checkpoint: PreparedStatement,
}

/// Partials, windows and checkpoints in ScyllaDB (see the module docs).
pub struct ScyllaTallyStore {
    session: Session,
    statements: Statements,
    max_concurrent_writes: usize,
}

fn io(what: &str, e: impl std::fmt::Display) -> TallyStoreError {
    TallyStoreError::io(format!("ScyllaDB {what}"), e.to_string())
}

/// Connects to the nodes of `config.hosts`.
pub async fn connect(config: &ScyllaConfig) -> Result<Session, TallyStoreError> {
    let hosts: Vec<&str> = config
        .hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    // Only CrowdTick's keyspace, and only what routing needs (replication, partitioners): the
    // store reads no table metadata.
    SessionBuilder::new()
        .known_nodes(&hosts)
        .connection_timeout(Duration::from_secs(5))
        .fetch_full_schema_metadata(false)
        .keyspaces_to_fetch([config.keyspace.to_ascii_lowercase()])
        .build()
        .await
        .map_err(|e| io("connect", format!("{} ({e})", config.hosts)))
}

/// Creates the keyspace and tables when missing (`crowdtick migrate`, and every start); safe to
/// repeat.
pub async fn migrate(session: &Session, config: &ScyllaConfig) -> Result<(), TallyStoreError> {
    for statement in schema_statements(config)? {
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(|e| io("migrate", format!("{e} (in: {statement})")))?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| io("schema agreement", e))?;
    Ok(())
}

impl ScyllaTallyStore {
    /// A store over `session` in `config.keyspace` (already migrated: see [`migrate`]); prepares
    /// every statement once.
    pub async fn new(session: Session, config: &ScyllaConfig) -> Result<Self, TallyStoreError> {
        let keyspace = identifier(&config.keyspace)?;
        let prepare = |text: &'static str| {
            let text = text.replace("{ks}", &keyspace);
            let session = &session;
            async move {
                let mut prepared = session
                    .prepare(text.as_str())
                    .await
                    .map_err(|e| io("prepare", format!("{e} (in: {text})")))?;
                prepared.set_is_idempotent(!text.contains(" IF "));
                Ok::<_, TallyStoreError>(prepared)
            }
        };
        let statements = Statements {
            put_partial: prepare(cql::PUT_PARTIAL).await?,
            put_complete_until: prepare(cql::PUT_COMPLETE_UNTIL).await?,
            put_window: prepare(cql::PUT_WINDOW).await?,
            put_partition_poll: prepare(cql::PUT_PARTITION_POLL).await?,
            poll_partials: prepare(cql::POLL_PARTIALS).await?,
            poll_windows: prepare(cql::POLL_WINDOWS).await?,
            poll_partition_partials: prepare(cql::POLL_PARTITION_PARTIALS).await?,
            poll_partition_windows: prepare(cql::POLL_PARTITION_WINDOWS).await?,
            all_partials: prepare(cql::ALL_PARTIALS).await?,
            all_windows: prepare(cql::ALL_WINDOWS).await?,
            partition_polls: prepare(cql::PARTITION_POLLS).await?,
            new_checkpoint: prepare(cql::NEW_CHECKPOINT).await?,
            further_checkpoint: prepare(cql::FURTHER_CHECKPOINT).await?,
            load_checkpoint: prepare(cql::LOAD_CHECKPOINT).await?,
            clear_checkpoint: prepare(cql::CLEAR_CHECKPOINT).await?,
        };
        Ok(Self {
            session,
            statements,
            max_concurrent_writes: config.max_concurrent_writes.max(1),
        })
    }

    /// One poll's rows of a reduced batch, as one unlogged batch with its values. The first
    /// statement is keyed by the poll, so the driver routes the batch to a replica of it.
    fn poll_batch(&self, rows: &PollRows) -> (CqlBatch, Vec<Vec<CqlValue>>) {
        let s = &self.statements;
        let mut batch = CqlBatch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values = Vec::new();
        for (statement, row) in rows.statements() {
            batch.append_statement(match statement {
                Put::Partial => s.put_partial.clone(),
                Put::CompleteUntil => s.put_complete_until.clone(),
                Put::Window => s.put_window.clone(),
                Put::PartitionPoll => s.put_partition_poll.clone(),
            });
            values.push(row);
        }
        (batch, values)
    }

    async fn write(
        &self,
        poll_id: PollId,
        batch: CqlBatch,
        values: Vec<Vec<CqlValue>>,
    ) -> Result<(), TallyStoreError> {
        self.session
            .batch(&batch, values)
            .await
            .map(|_| ())
            .map_err(|e| io("write", format!("poll {poll_id}: {e}")))
    }

    async fn rows(
        &self,
        statement: &PreparedStatement,
        values: Vec<CqlValue>,
        what: &str,
    ) -> Result<Vec<Row>, TallyStoreError> {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|e| io(what, e))?
            .rows_stream::<Row>()
            .map_err(|e| io(what, e))?
            .map(|r| r.map_err(|e| io(what, e)))
            .try_collect()
            .await
    }

    async fn load(
        &self,
        partials: (&PreparedStatement, Vec<CqlValue>),
        windows: (&PreparedStatement, Vec<CqlValue>),
    ) -> Result<Vec<PartialTally>, TallyStoreError> {
        let (p, w) = futures::try_join!(
            self.rows(partials.0, partials.1, "read partials"),
            self.rows(windows.0, windows.1, "read windows"),
        )?;
        assemble(
            p.iter().map(partial_row).collect::<Result<_, _>>()?,
            w.iter().map(window_row).collect::<Result<_, _>>()?,
        )
    }

    async fn applied(
        &self,
        statement: &PreparedStatement,
        values: Vec<CqlValue>,
    ) -> Result<bool, TallyStoreError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| io("checkpoint", e))?;
        let row: Row = result
            .into_rows_result()
            .map_err(|e| io("checkpoint", e))?
            .first_row()
            .map_err(|e| io("checkpoint", e))?;
        match row.columns.first() {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(TallyStoreError::Data(format!(
                "ScyllaDB checkpoint: [applied] is {other:?}"
            ))),
        }
    }
}

#[async_trait]
impl TallyStore for ScyllaTallyStore {
    /// Returns how many partials it sent (see the module docs).
    async fn put(&self, partials: &[PartialTally]) -> Result<usize, TallyStoreError> {
        let polls = PollRows::split(partials);
        let sent: usize = polls.iter().map(|p| p.partials.len()).sum();
        let batches: Vec<_> = polls
            .iter()
            .map(|rows| (rows.poll_id, self.poll_batch(rows)))
            .collect();
        futures::stream::iter(batches)
            .map(|(poll_id, (batch, values))| self.write(poll_id, batch, values))
            .buffer_unordered(self.max_concurrent_writes)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(sent)
    }

    async fn load_all(&self) -> Result<Vec<PartialTally>, TallyStoreError> {
        let s = &self.statements;
        self.load((&s.all_partials, vec![]), (&s.all_windows, vec![]))
            .await
    }

    async fn load_partition(
        &self,
        partition: Partition,
    ) -> Result<Vec<PartialTally>, TallyStoreError> {
        let s = &self.statements;
        let partition = partition.0;
        let polls = self
            .rows(
                &s.partition_polls,
                vec![CqlValue::Int(partition)],
                "read partition_polls",
            )
            .await?;
        let polls: Vec<PollId> = polls
            .iter()
            .map(|row| match column(row, 0) {
                Some(CqlValue::BigInt(poll)) => Ok(*poll),
                _ => Err(bad("partition_polls", row)),
            })
            .collect::<Result<_, _>>()?;
        // Each poll's rows of this partition only: two single-partition reads per poll.
        let per_poll: Vec<Vec<PartialTally>> = futures::stream::iter(polls)
            .map(|poll| {
                let key = vec![CqlValue::BigInt(poll), CqlValue::Int(partition)];
                self.load(
                    (&s.poll_partition_partials, key.clone()),
                    (&s.poll_partition_windows, key),
                )
            })
            .buffer_unordered(self.max_concurrent_writes)
            .try_collect()
            .await?;
        let mut out: Vec<PartialTally> = per_poll.into_iter().flatten().collect();
        out.sort_by_key(|t| t.poll_id);
        Ok(out)
    }

    async fn load_poll(&self, poll_id: PollId) -> Result<Vec<PartialTally>, TallyStoreError> {
        let s = &self.statements;
        let key = vec![CqlValue::BigInt(poll_id)];
        self.load((&s.poll_partials, key.clone()), (&s.poll_windows, key))
            .await
    }
}

#[async_trait]
impl CheckpointStore for ScyllaTallyStore {
    async fn put_checkpoint(
        &self,
        partition: Partition,
        next_offset: Offset,
        state: Vec<u8>,
    ) -> Result<bool, TallyStoreError> {
        let s = &self.statements;
        let (p, o, st) = (
            CqlValue::Int(partition.0),
            CqlValue::BigInt(next_offset.0),
            CqlValue::Blob(state),
        );
        if self
            .applied(&s.new_checkpoint, vec![p.clone(), o.clone(), st.clone()])
            .await?
        {
            return Ok(true);
        }
        self.applied(&s.further_checkpoint, vec![o.clone(), st, p, o])
            .await
    }

    async fn load_checkpoint(
        &self,
        partition: Partition,
    ) -> Result<Option<(Offset, Vec<u8>)>, TallyStoreError> {
        let rows = self
            .rows(
                &self.statements.load_checkpoint,
                vec![CqlValue::Int(partition.0)],
                "read checkpoint",
            )
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => match (column(row, 0), column(row, 1)) {
                (Some(CqlValue::BigInt(offset)), Some(CqlValue::Blob(state))) => {
                    Ok(Some((Offset(*offset), state.clone())))
                }
                _ => Err(bad("checkpoints", row)),
            },
        }
    }

    async fn clear_checkpoint(&self, partition: Partition) -> Result<(), TallyStoreError> {
        self.applied(
            &self.statements.clear_checkpoint,
            vec![CqlValue::Int(partition.0)],
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
#[path = "../tests/support/cql_double.rs"]
mod cql_double;

#[cfg(test)]
mod tests {
    use super::cql_double::CqlDouble;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn config() -> ScyllaConfig {
        ScyllaConfig {
            hosts: "127.0.0.1:9042".into(),
            keyspace: "crowdtick".into(),
            replication_class: "NetworkTopologyStrategy".into(),
            replication_factor: 3,
            max_concurrent_writes: 8,
        }
    }

    proptest! {
        /// The offset-to-timestamp rule: a later offset always writes a later timestamp, two
        /// owners of different offsets never write the same one, and none is 0 (unset).
        #[test]
        fn timestamps_grow_with_offsets_and_never_collide(a in 0i64..i64::MAX - 1, b in 0i64..i64::MAX - 1) {
            let (a, b) = (Offset(a), Offset(b));
            prop_assert_eq!(a < b, offset_timestamp(a) < offset_timestamp(b));
            prop_assert_eq!(a == b, offset_timestamp(a) == offset_timestamp(b));
            prop_assert!(offset_timestamp(a) > 0);
            prop_assert_eq!(a < b, complete_until_timestamp(Timestamp(a.0)) < complete_until_timestamp(Timestamp(b.0)));
        }
    }

    #[test]
    fn the_schema_is_filled_in_and_checked() {
        let statements = schema_statements(&config()).unwrap();
        assert_eq!(statements.len(), 5, "{statements:#?}");
        assert_eq!(
            statements[0],
            "CREATE KEYSPACE IF NOT EXISTS crowdtick\n  WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
        );
        for (s, table) in
            statements[1..]
                .iter()
                .zip(["partials", "windows", "partition_polls", "checkpoints"])
        {
            assert!(
                s.starts_with(&format!("CREATE TABLE IF NOT EXISTS crowdtick.{table} (")),
                "{s}"
            );
            assert!(!s.contains('{'), "{s}");
        }
        let simple = ScyllaConfig {
            replication_class: "SimpleStrategy".into(),
            replication_factor: 1,
            keyspace: "Crowd_1".into(),
            ..config()
        };
        assert!(schema_statements(&simple).unwrap()[0].contains(
            "crowd_1\n  WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
        ));
        for keyspace in ["", "1abc", "a-b", "a;DROP", &"k".repeat(49)] {
            let c = ScyllaConfig {
                keyspace: keyspace.into(),
                ..config()
            };
            assert!(schema_statements(&c).is_err(), "{keyspace:?}");
        }
        let c = ScyllaConfig {
            replication_class: "Everywhere".into(),
            ..config()
        };
        assert!(schema_statements(&c).is_err());
    }

    /// Every data statement names a table of the schema and only its columns.
    #[test]
    fn the_statements_match_the_schema() {
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for ddl in schema_statements(&config()).unwrap().iter().skip(1) {
            let name = ddl
                .split_whitespace()
                .nth(5)
                .unwrap()
                .trim_start_matches("crowdtick.");
            let columns = ddl
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
                .map(String::from)
                .collect();
            tables.insert(name.to_string(), columns);
        }
        const CQL_WORDS: &[&str] = &[
            "insert",
            "into",
            "values",
            "using",
            "timestamp",
            "update",
            "set",
            "where",
            "and",
            "select",
            "from",
            "if",
            "not",
            "exists",
            "delete",
        ];
        for dml in [
            cql::PUT_PARTIAL,
            cql::PUT_COMPLETE_UNTIL,
            cql::PUT_WINDOW,
            cql::PUT_PARTITION_POLL,
            cql::POLL_PARTIALS,
            cql::POLL_WINDOWS,
            cql::POLL_PARTITION_PARTIALS,
            cql::POLL_PARTITION_WINDOWS,
            cql::ALL_PARTIALS,
            cql::ALL_WINDOWS,
            cql::PARTITION_POLLS,
            cql::NEW_CHECKPOINT,
            cql::FURTHER_CHECKPOINT,
            cql::LOAD_CHECKPOINT,
            cql::CLEAR_CHECKPOINT,
        ] {
            let table = dml
                .split("{ks}.")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            let columns = tables
                .get(table)
                .unwrap_or_else(|| panic!("no table {table}: {dml}"));
            let rest = dml.replace(&format!("{{ks}}.{table}"), "");
            for word in rest
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
            {
                let word = word.to_ascii_lowercase();
                assert!(
                    CQL_WORDS.contains(&word.as_str()) || columns.contains(&word),
                    "{word} is not a column of {table} ({columns:?}): {dml}"
                );
            }
        }
    }

    /// The store's contract, against a real node when CROWDTICK_TEST_SCYLLA=host:9042 names one,
    /// else against `storage/tests/support/cql_double.py` (the CQL protocol and the statements the store
    /// and the driver use, run by the machine's python3). ScyllaDB cannot run on the build
    /// machines: without a node, what runs is the double, and the test says so.
    #[tokio::test]
    async fn keeps_the_tally_store_contract() {
        let (hosts, _double) = match std::env::var("CROWDTICK_TEST_SCYLLA") {
            Ok(hosts) => (hosts, None),
            Err(_) => {
                let double = CqlDouble::start();
                eprintln!(
                    "NOTE: no ScyllaDB node (CROWDTICK_TEST_SCYLLA=host:9042 names one; ScyllaDB cannot run on \
                     the build machines): the contract runs against the CQL test double storage/tests/support/cql_double.py"
                );
                (double.hosts(), Some(double))
            }
        };
        let config = ScyllaConfig {
            hosts,
            keyspace: format!("ct_test_{}", std::process::id()),
            replication_class: "SimpleStrategy".into(),
            replication_factor: 1,
            max_concurrent_writes: 8,
        };
        let session = connect(&config).await.unwrap();
        migrate(&session, &config).await.unwrap();
        migrate(&session, &config)
            .await
            .expect("migrate is safe to repeat");
        let store = ScyllaTallyStore::new(session, &config).await.unwrap();
        crate::tally_store::tests::contract(&store).await;
        crate::tally_store::tests::checkpoint_contract(&store).await;
        // A stale owner's older partial with a higher claim: the partial stays, the claim rises
        // (true of the newer partial too: see `complete_until_timestamp`).
        let stale = crate::tally_store::tests::tally(1, 0, 11, 900, &[]);
        store.put(&[stale]).await.unwrap();
        let held = store.load_poll(1).await.unwrap();
        assert_eq!(
            (held[0].offset, held[0].complete_until),
            (Offset(12), Timestamp(900))
        );

        // Every (held, new) pair, in an empty keyspace: the timestamps spell schemas::Freshness.
        let grid = ScyllaConfig {
            keyspace: format!("{}_grid", config.keyspace),
            ..config
        };
        let session = connect(&grid).await.unwrap();
        migrate(&session, &grid).await.unwrap();
        let store = ScyllaTallyStore::new(session, &grid).await.unwrap();
        crate::tally_store::tests::newest_wins_grid(&store, true).await;
    }
}
