//! Redis in the distributed mode: a cache of the latest partials per poll, and change notices.
//!
//! Redis is a cache, never the record: the tally store (PostgreSQL) and the tallies topic are. So
//! flushing Redis loses nothing: a reader that finds a poll not *filled* refills it from the tally
//! store ([`RedisCache::fill`]).
//!
//! Keys (all under the configured prefix, so deployments and tests can share one Redis):
//! - `{prefix}results:{poll_id}` — a hash with, per votes partition `p`, field `o:p` = "offset
//!   complete_until" and field `t:p` = the partial's Avro datum without windows; plus field
//!   `filled` once a reader has loaded every partition's partial from the tally store. Written by
//!   the processors on every flush, one Lua call per flush, with the same rule as every store:
//!   a partial is written only when newer than the held one (a stale processor cannot go back).
//! - channel `{prefix}notices` — [`Notice`]s as JSON: a poll's definition changed (query nodes
//!   publish; edges, processors and realtime nodes re-read the catalog), or a poll's results moved
//!   (processors publish; query nodes drop nothing, they read on demand).

use crate::polls::StoreError;
use crate::shutdown::Shutdown;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use schemas::{PartialTally, PollId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Compare-and-set of many partials: KEYS[i] is the hash of the i-th partial, ARGV holds
/// (partition, offset, complete_until, datum) per partial. Returns how many were written.
const PUT_PARTIALS: &str = r#"
local written = 0
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local p = ARGV[base + 1]
  local no = tonumber(ARGV[base + 2])
  local nc = tonumber(ARGV[base + 3])
  local held = redis.call('HGET', KEYS[i], 'o:' .. p)
  local newer = true
  if held then
    local sp = string.find(held, ' ')
    local o = tonumber(string.sub(held, 1, sp - 1))
    local c = tonumber(string.sub(held, sp + 1))
    newer = no > o or (no == o and nc > c)
  end
  if newer then
    redis.call('HSET', KEYS[i], 'o:' .. p, ARGV[base + 2] .. ' ' .. ARGV[base + 3], 't:' .. p, ARGV[base + 4])
    written = written + 1
  end
end
return written
"#;

/// A change worth telling the other nodes about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A poll was created or changed (opened, closed, revealed): re-read the catalog.
    Poll { poll_id: PollId },
    /// New partials of a poll were flushed.
    Results { poll_id: PollId },
}

/// The Redis side of the distributed mode.
#[derive(Clone)]
pub struct RedisCache {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    put: redis::Script,
}

fn err(what: &str, e: redis::RedisError) -> StoreError {
    StoreError::io(format!("Redis {what}"), e)
}

impl RedisCache {
    /// Connects (and checks the connection with a PING).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let shown = crate::redact::redis(url);
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::io(format!("Redis URL {shown:?}"), e))?;
        let mut conn = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.get_connection_manager(),
        )
        .await
        .map_err(|_| StoreError::io(format!("Redis at {shown}"), "no answer within 10 s"))?
        .map_err(|e| StoreError::io(format!("Redis at {shown}"), e))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| err("PING", e))?;
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            put: redis::Script::new(PUT_PARTIALS),
        })
    }

    fn results_key(&self, poll_id: PollId) -> String {
        format!("{}results:{poll_id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}notices", self.prefix)
    }

    /// Writes the partials that are newer than the held ones, in one round trip; returns how many
    /// were written. Windows are not kept here (the tally store has them).
    pub async fn put_partials(&self, partials: &[PartialTally]) -> Result<usize, StoreError> {
        if partials.is_empty() {
            return Ok(0);
        }
        let mut inv = self.put.prepare_invoke();
        for t in partials {
            let bare = PartialTally {
                windows: Vec::new(),
                ..t.clone()
            };
            inv.key(self.results_key(t.poll_id))
                .arg(t.partition.0)
                .arg(t.offset.0)
                .arg(t.complete_until.micros())
                .arg(bare.to_avro());
        }
        let mut conn = self.conn.clone();
        let n: usize = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| err("writing partials", e))?;
        Ok(n)
    }

    /// A poll's cached partials, or `None` when the cache has not been filled for it (then the
    /// caller reads the tally store and calls [`fill`](Self::fill)).
    pub async fn load_partials(
        &self,
        poll_id: PollId,
    ) -> Result<Option<Vec<PartialTally>>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.results_key(poll_id))
            .query_async(&mut conn)
            .await
            .map_err(|e| err("reading partials", e))?;
        if !fields.iter().any(|(k, _)| k == "filled") {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (k, v) in fields {
            if k.starts_with("t:") {
                out.push(PartialTally::from_avro(&v).map_err(|e| {
                    StoreError::Data(format!("cached partial of poll {poll_id}: {e}"))
                })?);
            }
        }
        Ok(Some(out))
    }

    /// Loads a poll's partials from the record into the cache and marks it filled.
    pub async fn fill(&self, poll_id: PollId, partials: &[PartialTally]) -> Result<(), StoreError> {
        self.put_partials(partials).await?;
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HSET")
            .arg(self.results_key(poll_id))
            .arg("filled")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("marking a poll filled", e))?;
        Ok(())
    }

    /// Tells every subscribed node (at most once, best effort: subscribers also re-read on a timer).
    pub async fn publish(&self, notice: &Notice) -> Result<(), StoreError> {
        let body = serde_json::to_string(notice).map_err(|e| StoreError::Data(e.to_string()))?;
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(body)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("publishing a notice", e))?;
        Ok(())
    }

    /// Forwards notices until `shutdown`, resubscribing after a lost connection.
    pub async fn forward_notices(self, to: mpsc::UnboundedSender<Notice>, mut shutdown: Shutdown) {
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(self.channel()).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(mut pubsub) => {
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            m = messages.next() => match m {
                                Some(m) => match serde_json::from_slice::<Notice>(m.get_payload_bytes()) {
                                    Ok(n) => { if to.send(n).is_err() { return; } }
                                    Err(e) => tracing::debug!(error = %e, "unreadable notice ignored"),
                                },
                                None => break,
                            },
                            _ = shutdown.signalled() => return,
                        }
                    }
                    tracing::warn!("Redis notices subscription ended; resubscribing");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to Redis notices failed; retrying in 1 s")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = shutdown.signalled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Freshness, Offset, Partition, Timestamp};

    fn url() -> String {
        std::env::var("CROWDTICK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    fn prefix() -> String {
        format!("test-{}-{}:", std::process::id(), uuid_like())
    }

    fn uuid_like() -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    fn partial(
        poll_id: PollId,
        partition: i32,
        offset: i64,
        complete: i64,
        a: i64,
    ) -> PartialTally {
        PartialTally {
            poll_id,
            partition: Partition(partition),
            offset: Offset(offset),
            complete_until: Timestamp(complete),
            counts: vec![a, 1],
            voters: a + 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_bad_url_is_named_without_its_password() {
        let Err(e) = RedisCache::connect("redis://:not-this-one@127.0.0.1:no-port", "p:").await
        else {
            panic!("a URL without a port number was accepted");
        };
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert!(
            text.contains("redis://<redacted>@127.0.0.1:no-port"),
            "{text}"
        );
        assert!(!text.contains("not-this-one"), "{text}");
    }

    /// The script's own spelling of "newer partial wins", against `schemas::Freshness`: every
    /// pair (held, new) of freshness values, each in its own poll.
    #[tokio::test]
    async fn the_script_keeps_what_freshness_says() {
        let cache = RedisCache::connect(&url(), &prefix()).await.unwrap();
        let values = crate::tally_store::tests::freshness_grid();
        let mut poll = 0;
        for &held in &values {
            for &new in &values {
                poll += 1;
                let of = |f: Freshness| {
                    partial(
                        poll,
                        0,
                        f.offset.0,
                        f.complete_until.micros(),
                        10 * f.offset.0 + f.complete_until.micros(),
                    )
                };
                cache.fill(poll, &[of(held)]).await.unwrap();
                let written = cache.put_partials(&[of(new)]).await.unwrap();
                let kept = if new.supersedes(held) { new } else { held };
                assert_eq!(
                    written,
                    usize::from(kept == new && new != held),
                    "held {held:?}, then {new:?}"
                );
                let got = cache.load_partials(poll).await.unwrap().unwrap();
                assert_eq!(got, vec![of(kept)], "held {held:?}, then {new:?}");
            }
        }
    }

    #[tokio::test]
    async fn newer_partials_win_and_a_flush_is_noticed_as_not_filled() {
        let cache = RedisCache::connect(&url(), &prefix()).await.unwrap();
        assert_eq!(cache.load_partials(7).await.unwrap(), None);
        cache
            .fill(7, &[partial(7, 0, 10, 5, 3), partial(7, 1, 4, 5, 1)])
            .await
            .unwrap();
        // An older offset (a stale owner) is refused, a newer one and a same-offset later
        // complete_until are taken.
        let n = cache
            .put_partials(&[
                partial(7, 0, 9, 9, 100),
                partial(7, 1, 4, 6, 1),
                partial(7, 2, 1, 1, 1),
            ])
            .await
            .unwrap();
        assert_eq!(n, 2);
        let mut got = cache.load_partials(7).await.unwrap().unwrap();
        got.sort_by_key(|t| t.partition);
        let seen: Vec<_> = got
            .iter()
            .map(|t| {
                (
                    t.partition.0,
                    t.offset.0,
                    t.complete_until.micros(),
                    t.counts[0],
                )
            })
            .collect();
        assert_eq!(seen, vec![(0, 10, 5, 3), (1, 4, 6, 1), (2, 1, 1, 1)]);

        let mut conn = cache.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(cache.results_key(7))
            .query_async(&mut conn)
            .await
            .unwrap();
        cache
            .put_partials(&[partial(7, 0, 11, 5, 4)])
            .await
            .unwrap();
        assert_eq!(
            cache.load_partials(7).await.unwrap(),
            None,
            "partials written after a flush do not make the poll complete again"
        );
    }

    #[tokio::test]
    async fn notices_reach_subscribers() {
        let cache = RedisCache::connect(&url(), &prefix()).await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = crate::ShutdownTrigger::new();
        let task = tokio::spawn(cache.clone().forward_notices(tx, stop_rx));
        // The subscription is asynchronous: publish until one arrives.
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                cache.publish(&Notice::Poll { poll_id: 3 }).await.unwrap();
                if let Ok(Some(n)) =
                    tokio::time::timeout(std::time::Duration::from_millis(100), rx.recv()).await
                {
                    return n;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, Notice::Poll { poll_id: 3 });
        stop.fire();
        task.await.unwrap();
    }
}
