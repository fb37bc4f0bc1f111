//! When a partition task flushes, and when it reads the log between flushes.

use schemas::Timestamp;
use std::time::{Duration, Instant};

/// When the next flush is due: the next multiple of `interval` on the wall clock, the same
/// instant for every partition task (of every processor whose clock is in step), so their
/// partials reach the tallies topic together: one group commit for them all, and one change of a
/// poll's results for its viewers instead of one per partition.
pub(super) fn next_flush_time(interval: Duration) -> Instant {
    Instant::now() + Timestamp::now().until_next_multiple(interval)
}

/// The flush after the one due at `due`: an interval later, or, when that has passed already (a
/// quiet partition, a slow flush), the next multiple of `interval` on the wall clock.
pub(super) fn following_flush(due: Instant, interval: Duration) -> Instant {
    let next = due + interval;
    match next > Instant::now() {
        true => next,
        false => next_flush_time(interval),
    }
}

/// When a partition task that has read to the end of the log and is not quiet reads it next,
/// with the flush due at `flush`: a tenth of an interval before it, or at the flush once that has
/// passed, and never more than [`LONGEST_WAIT`] from `now`. So what the log's group commits add
/// between two flushes is read in about two fetches, not one each. The flush follows a read begun
/// when it was due (`run_partition`), so it publishes no later for the wait; and since that read
/// holds about the last tenth of an interval, the partitions' flushes, due at the same instant,
/// still reach the tallies topic together.
pub(super) fn next_read(flush: Instant, interval: Duration, now: Instant) -> Instant {
    let early = flush.checked_sub(interval / 10).unwrap_or(flush);
    let due = match now < early {
        true => early,
        false => flush,
    };
    due.min(now + LONGEST_WAIT)
}

/// The longest a caught-up task waits to read again, whatever the flush interval: with a long one
/// the records still do not pile up unread (the lag metric, a Kafka consumer's prefetch queue).
pub(super) const LONGEST_WAIT: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_up_task_reads_a_tenth_of_an_interval_before_its_flush_then_at_it() {
        let interval = Duration::from_millis(25);
        let now = Instant::now();
        let flush = now + Duration::from_millis(20);
        let early = flush - Duration::from_micros(2_500);
        assert_eq!(next_read(flush, interval, now), early);
        assert_eq!(next_read(flush, interval, early), flush);
        assert_eq!(next_read(flush, interval, flush), flush);
        // A flush already past is read for at once (the sleep until it ends at once).
        assert_eq!(next_read(now, interval, flush), now);
        // With a long interval, no wait is longer than LONGEST_WAIT.
        let minute = Duration::from_secs(60);
        assert_eq!(next_read(now + minute, minute, now), now + LONGEST_WAIT);
        let last = now + minute - LONGEST_WAIT / 2;
        assert_eq!(next_read(now + minute, minute, last), now + minute);
    }
}
