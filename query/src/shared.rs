//! The query service's view of results when it runs as its own process (distributed mode): no
//! tallies tailer here, so each read merges the poll's latest partials from the Redis cache into
//! the local board, and on a cache miss (never filled, or flushed) reads them from the tally store
//! (PostgreSQL) and refills the cache. Timelines come from the tally store, which keeps every window.

use edge::ApiError;
use results::{PollResults, ResultsBoard};
use schemas::{PollId, WindowCount};
use std::sync::Arc;
use storage::{Notice, RedisCache, TallyStore};

/// Where a query node reads results from.
pub struct SharedResults {
    pub cache: Option<RedisCache>,
    pub tallies: Arc<dyn TallyStore>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "{what}");
    ApiError::unavailable(format!("{what}: {e}"), 1)
}

impl SharedResults {
    /// Brings the board's copy of a poll up to the latest flushed partials.
    pub async fn refresh(&self, board: &ResultsBoard, poll_id: PollId) -> Result<(), ApiError> {
        if let Some(cache) = &self.cache {
            match cache.load_partials(poll_id).await {
                Ok(Some(partials)) => {
                    for t in partials {
                        board.apply(t);
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "results cache unreadable; reading the tally store")
                }
            }
        }
        let partials = self
            .tallies
            .load_poll(poll_id)
            .await
            .map_err(|e| unavailable("the tally store failed", e))?;
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.fill(poll_id, &partials).await {
                tracing::warn!(error = %e, "refilling the results cache failed");
            }
        }
        for t in partials {
            board.apply(t);
        }
        Ok(())
    }

    /// Every window of a poll, from the tally store.
    pub async fn timeline(&self, poll_id: PollId) -> Result<Vec<WindowCount>, ApiError> {
        let partials = self
            .tallies
            .load_poll(poll_id)
            .await
            .map_err(|e| unavailable("the tally store failed", e))?;
        let mut results = PollResults::default();
        for t in partials {
            results.apply(t);
        }
        Ok(results.timeline())
    }

    /// Tells the other nodes a poll changed (best effort: they also re-read on a timer).
    pub async fn announce(&self, poll_id: PollId) {
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.publish(&Notice::Poll { poll_id }).await {
                tracing::warn!(error = %e, poll_id, "publishing a poll change failed; other nodes see it at their next refresh");
            }
        }
    }
}
