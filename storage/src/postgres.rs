//! PostgreSQL stores of the distributed mode.
//!
//! - [`connect`]: a connection pool (deadpool over tokio-postgres), checked by connecting once.
//! - [`migrate`]: applies `schemas::POSTGRES_SQL` inside a PostgreSQL schema of its own (created if
//!   missing), idempotent, under an advisory lock so services starting together do not race.
//! - [`PgPollStore`]: the [`PollStore`] of poll definitions (table `polls`).
//! - [`PgTallyStore`]: the [`TallyStore`] of the latest partials (tables `partial_tallies` and
//!   `tally_windows`). A batch is one statement (arrays bound as parameters, `UNNEST`ed), so it is
//!   atomic and one round trip; the offset comparison is in the statement, so a stale or zombie
//!   processor never overwrites a newer partial, whatever the interleaving.
//!
//! Every statement names its tables with the schema (`"crowdtick".polls`): stores of different
//! schemas can share one database (the tests run side by side that way).

use crate::polls::{PollStore, StoreError};
use crate::tally_store::{Batch, CheckpointStore, TallyStore, TallyStoreError};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use schemas::{
    Offset, PartialTally, Partition, Poll, PollId, Timestamp, Visibility, Voters, WindowCount,
};
use std::time::Duration;
use tokio_postgres::NoTls;

/// The PostgreSQL schema `crowdtick migrate` and the services use unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "crowdtick";

/// A connection or migration failure, worded for an operator.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PgError {
    pub message: String,
    /// No server answered (refused, unknown host, timed out), as opposed to a server that refused
    /// the login, the database or a statement.
    pub unreachable: bool,
}

impl PgError {
    fn new(message: String) -> Self {
        Self {
            message,
            unreachable: false,
        }
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::io("PostgreSQL", e.message)
    }
}

/// A pool of connections to `url` (`postgres://user[:password]@host:port/database`), after one
/// successful connection. The error names the server (password hidden) and the cause.
pub async fn connect(url: &str) -> Result<Pool, PgError> {
    let shown = crate::redact::postgres(url);
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        PgError::new(format!(
            "invalid PostgreSQL URL {shown}: {}; write it as \
                 postgres://user:password@host:port/database or as key=value words",
            unquoted(&pg_text(&e))
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(8)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| PgError::new(format!("PostgreSQL pool for {shown}: {e}")))?;
    let first = pool.get().await.map_err(|e| {
        let unreachable = match &e {
            PoolError::Backend(e) => e.as_db_error().is_none(),
            _ => true,
        };
        PgError {
            message: format!("cannot connect to PostgreSQL at {shown}: {}", pool_text(e)),
            unreachable,
        }
    })?;
    drop(first);
    Ok(pool)
}

/// Creates `schema` if needed and applies `schemas::POSTGRES_SQL` inside it, in one transaction.
/// Idempotent; concurrent runs wait for each other (advisory lock).
pub async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<(), PgError> {
    let quoted = quote_ident(schema)?;
    let failed = |e: tokio_postgres::Error| {
        let hint = if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            "; the user needs the CREATE privilege on the database, or on an existing schema"
        } else {
            ""
        };
        PgError::new(format!(
            "applying the CrowdTick schema in {quoted}: {}{hint}",
            pg_text(&e)
        ))
    };
    let tx = client.transaction().await.map_err(failed)?;
    tx.batch_execute(&format!(
        "SET LOCAL client_min_messages TO warning;\n\
         SELECT pg_advisory_xact_lock({MIGRATE_LOCK});\n\
         CREATE SCHEMA IF NOT EXISTS {quoted};\n\
         SET LOCAL search_path TO {quoted};\n\
         {}",
        schemas::POSTGRES_SQL
    ))
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// Connects (see [`connect`]) and brings `schema` up to date (see [`migrate`]): what every node
/// on PostgreSQL and `crowdtick migrate` do first.
pub async fn connect_and_migrate(url: &str, schema: &str) -> Result<Pool, PgError> {
    let pool = connect(url).await?;
    let mut client = pool.get().await.map_err(|e| PgError {
        message: format!("lost the connection to PostgreSQL: {}", pool_text(e)),
        unreachable: true,
    })?;
    migrate(&mut client, schema).await?;
    drop(client);
    Ok(pool)
}

/// Advisory lock key of [`migrate`] (any constant; "crowdtic" in ASCII).
const MIGRATE_LOCK: i64 = 0x63726f7764746963;

/// Poll definitions in table `polls` of one schema. `save` is an upsert by id.
pub struct PgPollStore {
    pool: Pool,
    load_sql: String,
    save_sql: String,
    next_id_sql: String,
}

impl PgPollStore {
    /// A store over `pool` in `schema` (already migrated: see [`migrate`]).
    pub fn new(pool: Pool, schema: &str) -> Result<Self, StoreError> {
        let s = quote_ident(schema)?;
        Ok(Self {
            pool,
            load_sql: format!(
                "SELECT id, slug, title, options::text, max_choices, visibility, opens_at, closes_at, \
                        opened_at, closed_at, revealed, created_at, creator, voters \
                 FROM {s}.polls ORDER BY id"
            ),
            save_sql: format!(
                "INSERT INTO {s}.polls (id, slug, title, options, max_choices, visibility, opens_at, \
                        closes_at, opened_at, closed_at, revealed, created_at, creator, voters) \
                 VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (id) DO UPDATE SET slug = EXCLUDED.slug, title = EXCLUDED.title, \
                        options = EXCLUDED.options, max_choices = EXCLUDED.max_choices, \
                        visibility = EXCLUDED.visibility, opens_at = EXCLUDED.opens_at, \
                        closes_at = EXCLUDED.closes_at, opened_at = EXCLUDED.opened_at, \
                        closed_at = EXCLUDED.closed_at, revealed = EXCLUDED.revealed, \
                        created_at = EXCLUDED.created_at, creator = EXCLUDED.creator, \
                        voters = EXCLUDED.voters"
            ),
            next_id_sql: format!("SELECT greatest(nextval('{s}.poll_ids'), $1::bigint + 1)"),
        })
    }
}

#[async_trait]
impl PollStore for PgPollStore {
    async fn load(&self) -> Result<Vec<Poll>, StoreError> {
        let (client, stmt) = prepared(&self.pool, &self.load_sql).await?;
        let rows = client.query(&stmt, &[]).await.map_err(db)?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let bad =
                    |what: String| StoreError::Data(format!("poll {id} in PostgreSQL: {what}"));
                let options: String = row.get(3);
                let max_choices: i32 = row.get(4);
                let visibility: String = row.get(5);
                let voters: String = row.get(13);
                Ok(Poll {
                    id,
                    slug: row.get(1),
                    title: row.get(2),
                    options: serde_json::from_str(&options)
                        .map_err(|e| bad(format!("options: {e}")))?,
                    max_choices: u32::try_from(max_choices)
                        .map_err(|_| bad(format!("max_choices {max_choices}")))?,
                    visibility: visibility_of(&visibility)
                        .ok_or_else(|| bad(format!("visibility {visibility:?}")))?,
                    opens_at: row.get::<_, Option<i64>>(6).map(Timestamp),
                    closes_at: row.get::<_, Option<i64>>(7).map(Timestamp),
                    opened_at: row.get::<_, Option<i64>>(8).map(Timestamp),
                    closed_at: row.get::<_, Option<i64>>(9).map(Timestamp),
                    revealed: row.get(10),
                    created_at: Timestamp(row.get(11)),
                    creator: row.get(12),
                    voters: voters_of(&voters).ok_or_else(|| bad(format!("voters {voters:?}")))?,
                })
            })
            .collect()
    }

    async fn save(&self, poll: &Poll) -> Result<(), StoreError> {
        let options =
            serde_json::to_string(&poll.options).map_err(|e| StoreError::Data(e.to_string()))?;
        let max_choices = i32::try_from(poll.max_choices).map_err(|_| {
            StoreError::Rejected(format!("max_choices {} is too large", poll.max_choices))
        })?;
        let (client, stmt) = prepared(&self.pool, &self.save_sql).await?;
        client
            .execute(
                &stmt,
                &[
                    &poll.id,
                    &poll.slug,
                    &poll.title,
                    &options,
                    &max_choices,
                    &visibility_name(poll.visibility),
                    &poll.opens_at.map(Timestamp::micros),
                    &poll.closes_at.map(Timestamp::micros),
                    &poll.opened_at.map(Timestamp::micros),
                    &poll.closed_at.map(Timestamp::micros),
                    &poll.revealed,
                    &poll.created_at.micros(),
                    &poll.creator,
                    &voters_name(poll.voters),
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn next_id(&self, highest_known: PollId) -> Result<PollId, StoreError> {
        let (client, stmt) = prepared(&self.pool, &self.next_id_sql).await?;
        let row = client
            .query_one(&stmt, &[&highest_known])
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    fn shared(&self) -> bool {
        true
    }
}

fn voters_name(v: Voters) -> &'static str {
    match v {
        Voters::Anyone => "anyone",
        Voters::Verified => "verified",
    }
}

fn voters_of(name: &str) -> Option<Voters> {
    match name {
        "anyone" => Some(Voters::Anyone),
        "verified" => Some(Voters::Verified),
        _ => None,
    }
}

fn visibility_name(v: Visibility) -> &'static str {
    match v {
        Visibility::Live => "live",
        Visibility::AfterClose => "after_close",
        Visibility::OnReveal => "on_reveal",
    }
}

fn visibility_of(name: &str) -> Option<Visibility> {
    Some(match name {
        "live" => Visibility::Live,
        "after_close" => Visibility::AfterClose,
        "on_reveal" => Visibility::OnReveal,
        _ => return None,
    })
}

/// The latest partial tallies in tables `partial_tallies` and `tally_windows` of one schema.
///
/// A row of `partial_tallies` holds the partial's Avro datum without its windows; the windows live
/// in `tally_windows`, one row per (poll, partition, start_ms), and are put back on reading.
pub struct PgTallyStore {
    pool: Pool,
    put_sql: String,
    load_sql: String,
    put_checkpoint_sql: String,
    load_checkpoint_sql: String,
    clear_checkpoint_sql: String,
}

/// Times a batch is retried when PostgreSQL breaks a deadlock by aborting it (SQLSTATE 40P01).
const DEADLOCK_RETRIES: usize = 5;

impl PgTallyStore {
    /// A store over `pool` in `schema` (already migrated: see [`migrate`]).
    pub fn new(pool: Pool, schema: &str) -> Result<Self, TallyStoreError> {
        let s = quote_ident(schema).map_err(StoreError::from)?;
        Ok(Self {
            pool,
            // One statement: both upserts see the same snapshot and commit together. Rows come in
            // key order (sorted in `Batch`, and ORDER BY), so concurrent batches lock in one order.
            put_sql: format!(
                "WITH p AS (\n\
                   INSERT INTO {s}.partial_tallies AS t (poll_id, partition, \"offset\", complete_until, tally)\n\
                   SELECT * FROM UNNEST($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[], $5::bytea[])\n\
                     AS u(poll_id, partition, \"offset\", complete_until, tally)\n\
                   ORDER BY poll_id, partition\n\
                   ON CONFLICT (poll_id, partition) DO UPDATE\n\
                     SET \"offset\" = EXCLUDED.\"offset\", complete_until = EXCLUDED.complete_until,\n\
                         tally = EXCLUDED.tally\n\
                     WHERE t.\"offset\" < EXCLUDED.\"offset\"\n\
                        OR (t.\"offset\" = EXCLUDED.\"offset\" AND t.complete_until < EXCLUDED.complete_until)\n\
                   RETURNING 1\n\
                 ), w AS (\n\
                   INSERT INTO {s}.tally_windows AS t (poll_id, partition, start_ms, \"offset\", votes)\n\
                   SELECT * FROM UNNEST($6::bigint[], $7::integer[], $8::bigint[], $9::bigint[], $10::bigint[])\n\
                     AS u(poll_id, partition, start_ms, \"offset\", votes)\n\
                   ORDER BY poll_id, partition, start_ms\n\
                   ON CONFLICT (poll_id, partition, start_ms) DO UPDATE\n\
                     SET \"offset\" = EXCLUDED.\"offset\", votes = EXCLUDED.votes\n\
                     WHERE t.\"offset\" < EXCLUDED.\"offset\"\n\
                   RETURNING 1\n\
                 )\n\
                 SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM w)"
            ),
            load_sql: format!(
                "SELECT t.poll_id, t.partition, t.tally, w.starts, w.votes\n\
                 FROM {s}.partial_tallies t\n\
                 LEFT JOIN LATERAL (\n\
                   SELECT array_agg(start_ms ORDER BY start_ms) AS starts,\n\
                          array_agg(votes ORDER BY start_ms) AS votes\n\
                   FROM {s}.tally_windows w\n\
                   WHERE w.poll_id = t.poll_id AND w.partition = t.partition\n\
                 ) w ON TRUE\n\
                 WHERE ($1::integer IS NULL OR t.partition = $1)\n\
                   AND ($2::bigint IS NULL OR t.poll_id = $2)\n\
                 ORDER BY t.poll_id, t.partition"
            ),
            put_checkpoint_sql: format!(
                "INSERT INTO {s}.partition_checkpoints AS c (partition, next_offset, state, written_at)\n\
                 VALUES ($1, $2, $3, $4)\n\
                 ON CONFLICT (partition) DO UPDATE\n\
                   SET next_offset = EXCLUDED.next_offset, state = EXCLUDED.state,\n\
                       written_at = EXCLUDED.written_at\n\
                   WHERE c.next_offset < EXCLUDED.next_offset"
            ),
            load_checkpoint_sql: format!(
                "SELECT next_offset, state FROM {s}.partition_checkpoints WHERE partition = $1"
            ),
            clear_checkpoint_sql: format!(
                "DELETE FROM {s}.partition_checkpoints WHERE partition = $1"
            ),
        })
    }

    async fn load(
        &self,
        partition: Option<Partition>,
        poll: Option<PollId>,
    ) -> Result<Vec<PartialTally>, TallyStoreError> {
        let (client, stmt) = prepared(&self.pool, &self.load_sql).await?;
        let partition = partition.map(|p| p.0);
        let rows = client
            .query(&stmt, &[&partition, &poll])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let poll_id: i64 = row.get(0);
                let partition = Partition(row.get(1));
                let bad = |what: String| {
                    TallyStoreError::Data(format!(
                        "partial tally of poll {poll_id}, partition {partition} in PostgreSQL: {what}"
                    ))
                };
                let mut t = PartialTally::from_avro(row.get::<_, &[u8]>(2))
                    .map_err(|e| bad(e.to_string()))?;
                if (t.poll_id, t.partition) != (poll_id, partition) {
                    return Err(bad(format!(
                        "the datum is of poll {}, partition {}",
                        t.poll_id, t.partition
                    )));
                }
                let starts: Option<Vec<i64>> = row.get(3);
                let votes: Option<Vec<i64>> = row.get(4);
                t.windows = starts
                    .unwrap_or_default()
                    .into_iter()
                    .zip(votes.unwrap_or_default())
                    .map(|(start_ms, votes)| WindowCount { start_ms, votes })
                    .collect();
                Ok(t)
            })
            .collect()
    }
}

#[async_trait]
impl TallyStore for PgTallyStore {
    async fn put(&self, partials: &[PartialTally]) -> Result<usize, TallyStoreError> {
        if partials.is_empty() {
            return Ok(0);
        }
        let batch = Batch::of(partials);
        let n = batch.partials.len();
        let (mut polls, mut parts, mut offsets, mut completes, mut datums) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (&(poll, part), t) in &batch.partials {
            polls.push(poll);
            parts.push(part.0);
            offsets.push(t.offset.0);
            completes.push(t.complete_until.micros());
            let bare = PartialTally {
                windows: Vec::new(),
                ..(*t).clone()
            };
            datums.push(bare.to_avro());
        }
        let m = batch.windows.len();
        let (mut w_polls, mut w_parts, mut w_starts, mut w_offsets, mut w_votes) = (
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
        );
        for (&(poll, part, start_ms), &(offset, votes)) in &batch.windows {
            w_polls.push(poll);
            w_parts.push(part.0);
            w_starts.push(start_ms);
            w_offsets.push(offset.0);
            w_votes.push(votes);
        }
        let (client, stmt) = prepared(&self.pool, &self.put_sql).await?;
        let mut attempt = 0;
        loop {
            let result = client
                .query_one(
                    &stmt,
                    &[
                        &polls, &parts, &offsets, &completes, &datums, &w_polls, &w_parts,
                        &w_starts, &w_offsets, &w_votes,
                    ],
                )
                .await;
            match result {
                Ok(row) => return Ok(row.get::<_, i64>(0) as usize),
                Err(e)
                    if attempt < DEADLOCK_RETRIES
                        && e.code()
                            == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, "tally batch hit a deadlock; retrying");
                }
                Err(e) => return Err(db(e).into()),
            }
        }
    }

    async fn load_all(&self) -> Result<Vec<PartialTally>, TallyStoreError> {
        self.load(None, None).await
    }

    async fn load_poll(&self, poll_id: PollId) -> Result<Vec<PartialTally>, TallyStoreError> {
        self.load(None, Some(poll_id)).await
    }

    async fn load_partition(
        &self,
        partition: Partition,
    ) -> Result<Vec<PartialTally>, TallyStoreError> {
        self.load(Some(partition), None).await
    }
}

#[async_trait]
impl CheckpointStore for PgTallyStore {
    async fn put_checkpoint(
        &self,
        partition: Partition,
        next_offset: Offset,
        state: Vec<u8>,
    ) -> Result<bool, TallyStoreError> {
        let (client, stmt) = prepared(&self.pool, &self.put_checkpoint_sql).await?;
        let written = client
            .execute(
                &stmt,
                &[
                    &partition.0,
                    &next_offset.0,
                    &state,
                    &Timestamp::now().micros(),
                ],
            )
            .await
            .map_err(db)?;
        Ok(written == 1)
    }

    async fn load_checkpoint(
        &self,
        partition: Partition,
    ) -> Result<Option<(Offset, Vec<u8>)>, TallyStoreError> {
        let (client, stmt) = prepared(&self.pool, &self.load_checkpoint_sql).await?;
        let row = client.query_opt(&stmt, &[&partition.0]).await.map_err(db)?;
        Ok(row.map(|r| (Offset(r.get(0)), r.get::<_, Vec<u8>>(1))))
    }

    async fn clear_checkpoint(&self, partition: Partition) -> Result<(), TallyStoreError> {
        let (client, stmt) = prepared(&self.pool, &self.clear_checkpoint_sql).await?;
        client.execute(&stmt, &[&partition.0]).await.map_err(db)?;
        Ok(())
    }
}

/// `"name"`, with quotes doubled: a schema name is never pasted into SQL unquoted.
fn quote_ident(name: &str) -> Result<String, PgError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(PgError::new(format!(
            "invalid PostgreSQL schema name {name:?}: use 1 to 63 bytes, e.g. crowdtick"
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// tokio-postgres's message about a connection string it could not read, without the piece of
/// the string it quotes (which may hold a password, backticks and all): the option it calls
/// unknown and the character it "got" become an ellipsis; the fixed names it quotes are kept.
fn unquoted(text: &str) -> String {
    let mut shown = text.to_owned();
    for opening in ["unknown option `", "but got `"] {
        if let (Some(start), Some(last)) = (shown.find(opening), shown.rfind('`')) {
            let from = start + opening.len();
            if last >= from {
                shown.replace_range(from..last, "…");
            }
        }
    }
    shown
}

/// A tokio-postgres error with its cause (its `Display` alone says only "db error" and the like).
fn pg_text(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", d.message(), d.code().code());
        if let Some(detail) = d.detail() {
            s.push_str(&format!("; {detail}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

fn pool_text(e: PoolError) -> String {
    match e {
        PoolError::Backend(e) => pg_text(&e),
        PoolError::Timeout(_) => "timed out".to_string(),
        other => other.to_string(),
    }
}

/// A pooled connection and `sql` prepared on it (cached per connection).
async fn prepared(
    pool: &Pool,
    sql: &str,
) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement), StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached(sql).await.map_err(db)?;
    Ok((client, stmt))
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::io("PostgreSQL", pool_text(e))
}

/// A statement's error: a constraint violation (SQLSTATE class 23) is the caller's to fix
/// ([`StoreError::Rejected`]); anything else is I/O.
fn db(e: tokio_postgres::Error) -> StoreError {
    let text = pg_text(&e);
    match e.code() {
        Some(code) if code.code().starts_with("23") => StoreError::Rejected(text),
        _ => StoreError::io(format!("PostgreSQL: {text}"), e),
    }
}

#[cfg(test)]
mod tests;
