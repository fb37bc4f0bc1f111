//! One type each for where a record is and when it was written, used by every interface: the log,
//! the tally records, the stores and the read model.
//!
//! - [`Partition`]: a partition of a topic (Kafka's `i32`; an Avro `int`, SQL `integer`, CQL `int`).
//! - [`Offset`]: a record's place in its partition, or a count of records read (Kafka's `i64`; an
//!   Avro `long`, SQL `bigint`, CQL `bigint`).
//! - [`Timestamp`]: microseconds since the Unix epoch (Avro `timestamp-micros`).
//!
//! Each is its number on the wire (`#[serde(transparent)]`), so the Avro, JSON, SQL and CQL forms
//! are the plain integers they always were; `Debug` and `Display` print the number too, so logs
//! and messages read as before (`partitions [0, 2]`).

use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;

/// A partition of a topic, numbered from 0.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partition(pub i32);

impl Partition {
    /// Every partition of a topic that has `count` of them, in order.
    pub fn all(count: u32) -> impl Iterator<Item = Partition> + Clone {
        (0..count.min(i32::MAX as u32) as i32).map(Partition)
    }

    /// The partition at `index` among a topic's partitions.
    pub fn at(index: usize) -> Partition {
        Partition(index as i32)
    }

    /// Its place among the topic's partitions (a negative partition has a place no topic has).
    pub fn index(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A record's offset in its partition; as a position read up to, the next offset to read (so also
/// the count of records before it).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    /// The offset after `count` records from the start of the partition.
    pub fn from_count(count: u64) -> Offset {
        Offset(count.min(i64::MAX as u64) as i64)
    }

    /// The offset `n` records after this one.
    pub fn plus(self, n: u64) -> Offset {
        Offset(self.0.saturating_add(n.min(i64::MAX as u64) as i64))
    }

    /// The next offset.
    pub fn next(self) -> Offset {
        self.plus(1)
    }

    /// Records from `earlier` up to this offset (0 if `earlier` is not earlier).
    pub fn since(self, earlier: Offset) -> u64 {
        self.0.saturating_sub(earlier.0).max(0) as u64
    }

    /// As a count of records from the start of the partition (offsets are never negative).
    pub fn count(self) -> u64 {
        self.0.max(0) as u64
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A moment, in microseconds since the Unix epoch.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time of the system clock (the epoch itself if the clock is before it).
    pub fn now() -> Timestamp {
        Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
        )
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// From `earlier` to this moment; zero when `earlier` is not earlier (clocks of two machines
    /// out of step).
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// From this moment until now, by the system clock (zero for a moment still to come).
    pub fn age(self) -> std::time::Duration {
        Timestamp::now().since(self)
    }

    /// From this moment to the next multiple of `interval` since the epoch (a whole `interval`
    /// when it is one): a wall-clock grid that every task, and every node whose clock is in step,
    /// meets at the same instants.
    pub fn until_next_multiple(self, interval: std::time::Duration) -> std::time::Duration {
        let interval_us = interval.as_micros().clamp(1, i64::MAX as u128) as i64;
        let into = self.0.rem_euclid(interval_us);
        std::time::Duration::from_micros((interval_us - into) as u64)
    }

    /// RFC 3339 in UTC with milliseconds, as the API shows poll times (`2026-12-01T04:00:00.000Z`).
    pub fn rfc3339_millis(self) -> String {
        humantime::format_rfc3339_millis(self.system_time()).to_string()
    }

    /// RFC 3339 in UTC with microseconds, as a vote's receipt shows when it was accepted.
    pub fn rfc3339_micros(self) -> String {
        self.rfc3339_micros_display().to_string()
    }

    /// The same, to be written where it goes (no `String` of its own).
    pub fn rfc3339_micros_display(self) -> humantime::Rfc3339Timestamp {
        humantime::format_rfc3339_micros(self.system_time())
    }

    /// The same, appended to `out`. The date and time to the second are formatted once a second
    /// on each thread, the microseconds each time: a vote's receipt carries one, and `humantime`
    /// through `fmt` took about 500 instructions of a vote for it.
    pub fn write_rfc3339_micros(self, out: &mut Vec<u8>) {
        thread_local! {
            /// The second last written on this thread, and its text up to the seconds.
            static SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((-1, [0; 19])) };
        }
        let micros = self.0.max(0);
        let (second, mut fraction) = (micros / 1_000_000, micros % 1_000_000);
        let text = SECOND.with(|cached| {
            let (at, text) = cached.get();
            if at == second {
                return text;
            }
            let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second as u64);
            // `2026-12-07T12:00:00Z`. Past the year 9999 humantime refuses to format, and this
            // panics as `serde_json` would on the same time (`Timestamp::now` gives none such).
            let whole = humantime::format_rfc3339_seconds(start).to_string();
            let mut text = [0; 19];
            text.copy_from_slice(&whole.as_bytes()[..19]);
            cached.set((second, text));
            text
        });
        let mut digits = [b'0'; 6];
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        out.extend_from_slice(&text);
        out.push(b'.');
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }

    /// As a system time (a moment before the epoch shows as the epoch).
    fn system_time(self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(self.0.max(0) as u64)
    }

    /// This moment moved by `micros` (negative: earlier).
    pub fn add_micros(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} µs", self.0)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Moments in one second and across seconds, in any order on one thread (the second's
        /// text cached, then not), from before the epoch to the year 9999: what humantime writes.
        #[test]
        fn a_moment_is_written_as_humantime_writes_it(
            moments in proptest::collection::vec(
                prop_oneof![
                    i64::MIN..0,
                    0..253_402_300_800_000_000i64,
                    1_765_000_000_000_000..1_765_000_003_000_000i64,
                ],
                1..40,
            ),
        ) {
            for at in moments {
                let mut out = b"x".to_vec();
                Timestamp(at).write_rfc3339_micros(&mut out);
                let expected = Timestamp(at).rfc3339_micros();
                prop_assert_eq!(&out[1..], expected.as_bytes());
            }
        }
    }

    #[test]
    fn flushes_fall_on_multiples_of_the_interval() {
        let ms = std::time::Duration::from_millis;
        let us = std::time::Duration::from_micros;
        let at = |d: std::time::Duration| Timestamp(d.as_micros() as i64);
        assert_eq!(at(ms(1_000)).until_next_multiple(ms(25)), ms(25));
        assert_eq!(at(ms(1_010)).until_next_multiple(ms(25)), ms(15));
        assert_eq!(at(us(1_024_999)).until_next_multiple(ms(25)), us(1));
        // Two tasks a few milliseconds apart aim at the same instant.
        let a = ms(5_003) + at(ms(5_003)).until_next_multiple(ms(25));
        let b = ms(5_021) + at(ms(5_021)).until_next_multiple(ms(25));
        assert_eq!(a, b);
        assert_eq!(
            at(ms(7)).until_next_multiple(std::time::Duration::ZERO),
            us(1)
        );
    }

    #[test]
    fn each_is_its_plain_number_on_the_wire() {
        assert_eq!(serde_json::to_string(&Partition(3)).unwrap(), "3");
        assert_eq!(serde_json::to_string(&Offset(42)).unwrap(), "42");
        assert_eq!(serde_json::to_string(&Timestamp(-5)).unwrap(), "-5");
        let back: Offset = serde_json::from_str("7").unwrap();
        assert_eq!(back, Offset(7));
        assert_eq!(format!("{:?}", [Partition(0), Partition(2)]), "[0, 2]");
        assert_eq!(format!("{:?} {}", Offset(9), Offset(9)), "9 9");
    }

    #[test]
    fn offsets_count_records() {
        assert_eq!(Offset(10).since(Offset(4)), 6);
        assert_eq!(Offset(4).since(Offset(10)), 0);
        assert_eq!(Offset(4).plus(3), Offset(7));
        assert_eq!(Offset::from_count(5).next(), Offset(6));
        assert_eq!(Offset(-1).count(), 0);
        assert_eq!(
            Partition::all(3).collect::<Vec<_>>(),
            [0, 1, 2].map(Partition)
        );
        let t = Timestamp(1_764_561_600_123_456);
        assert_eq!(t.rfc3339_millis(), "2025-12-01T04:00:00.123Z");
        assert_eq!(t.rfc3339_micros(), "2025-12-01T04:00:00.123456Z");
    }
}
