//! The voters one poll has counted in one partition: exact, without an allocation per voter.
//!
//! Every id is kept byte for byte (the dedupe is exact, not a sketch), packed one after another in
//! one arena, and found through a hash table of arena offsets. An id is split at its namespace
//! (`device:`, `user:`, `verified:`, `agg:NAME:`; see [`schemas::voter`]), which the set keeps once
//! in a short table, so a voter costs its id without the namespace, two bytes of framing and one
//! slot of the table: about 30 bytes for the load generator's 16-byte ids at 10,000,000 voters, where
//! a `HashSet<Box<str>>` took 16 bytes of slot, an allocation of the whole id and the allocator's
//! overhead on it (about 90 bytes measured, BENCHMARKS.md).
//!
//! Hashing is std's `RandomState` (SipHash, keyed per set), as `HashSet` had: voter ids come from
//! the public, so collisions must not be choosable.
//!
//! The table grows in steps: when it is full, a table twice its size takes its place and the voters
//! already counted move into it a few at each insert after (reading the arena in order), while the
//! full table still answers for the ones not yet moved. Grown at once, a set of 1,000,000 voters
//! held its partition's task for about 175 ms, and the eight partitions' sets grew at about the same
//! moment, stalling every vote on the node for over a second (BENCHMARKS.md, "2026-12-05 (seventh
//! session)"). A set that stops taking new voters in the middle of a move would hold both tables;
//! [`VoterSet::settle`] moves the rest a slice at a time (the partition task calls it at each
//! flush).

use hashbrown::hash_table::{Entry, HashTable};
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;

/// At most this many namespaces get an index of their own; ids in any other namespace are kept
/// whole under index 0 (still exact, only larger).
const MAX_NAMESPACES: usize = u8::MAX as usize + 1;

/// Tables smaller than this grow at once, as hashbrown grows them (under a millisecond).
const GROW_IN_STEPS_FROM: usize = 4096;

/// Voters moved into the grown table at each insert: a full table of `n` has moved into its
/// successor after `n / 2` inserts, when the successor is about three quarters full, so a growth
/// is always over before the next one is due. Until then both tables are held (as hashbrown holds
/// both for the moment it grows): about 6 bytes more per voter of this set. Every voter moves
/// once a growth whatever this is; it sets how thin the move is spread. The partitions' sets grow
/// at about the same moment under an even load, so at 8 (an insert costing nine) their moves
/// together took most of a core for about a second at 4,000,000 voters and the node shed votes
/// (BENCHMARKS.md, "2026-12-06 (sixth session)"); at 2 an insert costs three, for four times as
/// long.
const MOVED_PER_INSERT: usize = 2;

/// A set of voter ids (as they stand in the log).
pub struct VoterSet {
    /// One record per voter, in the order they were first counted:
    /// `[namespace index][rest length, LEB128][rest]`.
    arena: Vec<u8>,
    /// Offsets of the records in `arena` (40 bits: an arena of up to 1 TiB), by the hash of
    /// (namespace index, rest): five bytes a slot instead of eight.
    index: HashTable<Offset40>,
    /// While `index` grows in steps: the full table it replaced.
    growing: Option<Growth>,
    /// The namespaces seen, in the order they were first seen; index 0 is "", no namespace.
    namespaces: Vec<Box<str>>,
    hasher: RandomState,
}

impl Default for VoterSet {
    fn default() -> Self {
        Self {
            arena: Vec::new(),
            index: HashTable::new(),
            growing: None,
            namespaces: vec!["".into()],
            hasher: RandomState::new(),
        }
    }
}

impl VoterSet {
    pub fn len(&self) -> usize {
        self.index.len() + self.growing.as_ref().map_or(0, Growth::not_moved)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for `additional` more voters without growing the table meanwhile.
    pub fn reserve(&mut self, additional: usize) {
        self.move_voters(usize::MAX);
        let Self {
            arena,
            index,
            hasher,
            ..
        } = self;
        index.reserve(additional, |at| rehash(hasher, arena, at));
    }

    /// Adds `voter`; false if it was already there.
    pub fn insert(&mut self, voter: &str) -> bool {
        let (namespace, rest) = split(voter);
        let ns = match self.namespace_index(namespace) {
            Some(ns) => ns,
            None if self.namespaces.len() < MAX_NAMESPACES => {
                self.namespaces.push(namespace.into());
                (self.namespaces.len() - 1) as u8
            }
            None => 0,
        };
        let rest = if ns == 0 { voter } else { rest }.as_bytes();
        let Self {
            arena,
            index,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one((ns, rest));
        let eq = |at: &Offset40| record(arena, at) == (ns, rest);
        if let Some(growth) = &self.growing {
            if growth.full.find(hash, eq).is_some() {
                return false;
            }
        }
        let full = index.len() == index.capacity();
        if full && index.len() >= GROW_IN_STEPS_FROM {
            if index.find(hash, eq).is_some() {
                return false;
            }
            self.grow_in_steps();
        }
        let Self {
            arena,
            index,
            hasher,
            ..
        } = self;
        match index.entry(
            hash,
            |at| record(arena, at) == (ns, rest),
            |at| rehash(hasher, arena, at),
        ) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                let at = Offset40::new(arena.len());
                arena.push(ns);
                put_leb128(arena, rest.len());
                arena.extend_from_slice(rest);
                slot.insert(at);
                self.move_voters(MOVED_PER_INSERT);
                true
            }
        }
    }

    pub fn contains(&self, voter: &str) -> bool {
        let (namespace, rest) = split(voter);
        let (ns, rest) = match self.namespace_index(namespace) {
            Some(ns) if ns != 0 => (ns, rest),
            _ => (0, voter),
        };
        self.find(ns, rest.as_bytes())
    }

    /// Every voter, in the order first counted, as its namespace and the rest of its id (their
    /// concatenation is the id).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= self.arena.len() {
                return None;
            }
            let (ns, rest, next) = read_record(&self.arena, at);
            at = next;
            Some((&*self.namespaces[ns as usize], rest))
        })
    }

    fn namespace_index(&self, namespace: &str) -> Option<u8> {
        if namespace.is_empty() {
            return Some(0);
        }
        (self.namespaces.iter())
            .position(|n| **n == *namespace)
            .map(|i| i as u8)
    }

    fn find(&self, ns: u8, rest: &[u8]) -> bool {
        let hash = self.hasher.hash_one((ns, rest));
        let eq = |at: &Offset40| record(&self.arena, at) == (ns, rest);
        self.index.find(hash, eq).is_some()
            || (self.growing.as_ref()).is_some_and(|g| g.full.find(hash, eq).is_some())
    }

    /// Puts a table twice the size in place of the full one; the voters move over in
    /// [`Self::move_voters`]. A growth still under way (never, by [`MOVED_PER_INSERT`]) ends first.
    fn grow_in_steps(&mut self) {
        self.move_voters(usize::MAX);
        let grown = HashTable::with_capacity(self.index.capacity() + 1);
        self.growing = Some(Growth {
            full: std::mem::replace(&mut self.index, grown),
            next: 0,
            end: self.arena.len(),
            moved: 0,
            settled_at: 0,
        });
    }

    /// Brings the voters moved since the last call up to `most`, counting those the inserts
    /// moved meanwhile (a set taking voters moves itself; one whose votes stopped does not):
    /// how many of the growth under way moved since the last call, 0 if none is under way. The
    /// full table is dropped once all have moved.
    pub fn settle(&mut self, most: usize) -> usize {
        let Some(growth) = &self.growing else {
            return 0;
        };
        let (by_inserts, before) = (growth.moved - growth.settled_at, growth.not_moved());
        self.move_voters(most.saturating_sub(by_inserts));
        let after = match &mut self.growing {
            Some(growth) => {
                growth.settled_at = growth.moved;
                growth.not_moved()
            }
            None => 0,
        };
        by_inserts + before - after
    }

    /// Moves up to `most` voters from the full table into the grown one, in the arena's order, and
    /// drops the full table once all have moved.
    fn move_voters(&mut self, most: usize) {
        let Some(growth) = &mut self.growing else {
            return;
        };
        let Self {
            arena,
            index,
            hasher,
            ..
        } = self;
        for _ in 0..most {
            if growth.next == growth.end {
                break;
            }
            let (ns, rest, next) = read_record(arena, growth.next);
            let at = Offset40::new(growth.next);
            index.insert_unique(hasher.hash_one((ns, rest)), at, |at| {
                rehash(hasher, arena, at)
            });
            growth.next = next;
            growth.moved += 1;
        }
        if growth.next == growth.end {
            self.growing = None;
        }
    }
}

/// A full table being replaced by one twice its size.
struct Growth {
    /// The full table: every voter whose record starts before `end`.
    full: HashTable<Offset40>,
    /// The arena offset of the next voter to move.
    next: usize,
    /// The arena's length when the growth began.
    end: usize,
    /// How many voters have moved.
    moved: usize,
    /// `moved` at the last [`VoterSet::settle`].
    settled_at: usize,
}

impl Growth {
    fn not_moved(&self) -> usize {
        self.full.len() - self.moved
    }
}

impl PartialEq for VoterSet {
    /// The same voters, whatever order they came in.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.iter().all(|(namespace, rest)| {
                let rest = std::str::from_utf8(rest).expect("ids are stored from &str");
                other.contains(&format!("{namespace}{rest}"))
            })
    }
}

impl fmt::Debug for VoterSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoterSet")
            .field("voters", &self.len())
            .field("arena_bytes", &self.arena.len())
            .finish()
    }
}

/// `voter`'s namespace (with its closing `:`; `agg:NAME:` for an aggregator's voters) and the rest.
fn split(voter: &str) -> (&str, &str) {
    let Some(first) = voter.find(':') else {
        return ("", voter);
    };
    let mut end = first + 1;
    if &voter[..end] == "agg:" {
        match voter[end..].find(':') {
            Some(second) => end += second + 1,
            None => return ("", voter),
        }
    }
    voter.split_at(end)
}

/// A position in the arena, in five bytes.
struct Offset40([u8; 5]);

impl Offset40 {
    fn new(at: usize) -> Self {
        let bytes = (at as u64).to_le_bytes();
        assert!(bytes[5..] == [0; 3], "a voter set's arena reached 1 TiB");
        Self(bytes[..5].try_into().expect("5 bytes"))
    }

    fn get(&self) -> usize {
        let mut bytes = [0; 8];
        bytes[..5].copy_from_slice(&self.0);
        u64::from_le_bytes(bytes) as usize
    }
}

/// The namespace index and the rest of the record at `at`.
fn record<'a>(arena: &'a [u8], at: &Offset40) -> (u8, &'a [u8]) {
    let (ns, rest, _) = read_record(arena, at.get());
    (ns, rest)
}

/// The record at `at`, and where the next one starts.
fn read_record(arena: &[u8], at: usize) -> (u8, &[u8], usize) {
    let (len, framing) = read_leb128(&arena[at + 1..]);
    let start = at + 1 + framing;
    (arena[at], &arena[start..start + len], start + len)
}

fn rehash(hasher: &RandomState, arena: &[u8], at: &Offset40) -> u64 {
    hasher.hash_one(record(arena, at))
}

fn put_leb128(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length written by [`put_leb128`], and how many bytes it took.
fn read_leb128(bytes: &[u8]) -> (usize, usize) {
    let (mut n, mut shift) = (0usize, 0);
    for (i, &b) in bytes.iter().enumerate() {
        n |= ((b & 0x7f) as usize) << shift;
        if b < 0x80 {
            return (n, i + 1);
        }
        shift += 7;
    }
    unreachable!("records are written whole")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9-]{0,20}".prop_map(|s| format!("device:{s}")),
            "[a-z]{0,3}:[a-z0-9:]{0,8}".prop_map(|s| format!("agg:{s}")),
            "[0-9]{1,4}".prop_map(|s| format!("user:{s}")),
            // No namespace, odd ones, and ids long enough for a two-byte length.
            "[a-z:]{0,6}",
            "agg:?",
            "é{60,70}:x{0,3}",
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_a_set_of_strings(ids in proptest::collection::vec(id(), 0..200)) {
            let mut set = VoterSet::default();
            let mut model = HashSet::new();
            for id in &ids {
                prop_assert_eq!(set.contains(id), model.contains(id));
                prop_assert_eq!(set.insert(id), model.insert(id.clone()));
                prop_assert!(set.contains(id));
            }
            prop_assert_eq!(set.len(), model.len());
            let listed: HashSet<String> = set
                .iter()
                .map(|(ns, rest)| format!("{ns}{}", std::str::from_utf8(rest).unwrap()))
                .collect();
            prop_assert_eq!(listed, model);
        }
    }

    #[test]
    fn a_set_growing_in_steps_finds_every_voter_throughout() {
        let mut set = VoterSet::default();
        let (mut growths, mut was_growing, mut last_over) = (0, false, 0);
        for i in 0..90_000usize {
            assert!(set.insert(&voter(i)), "voter {i}");
            // Earlier voters, moved and not yet moved, are still there, once.
            let earlier = voter(i.wrapping_mul(7919) % (i + 1));
            assert!(set.contains(&earlier), "{earlier} after {i}");
            assert!(!set.insert(&earlier), "{earlier} twice after {i}");
            assert!(!set.contains(&voter(i + 1)));
            assert_eq!(set.len(), i + 1);
            let growing = set.growing.is_some();
            growths += usize::from(growing && !was_growing);
            if was_growing && !growing {
                last_over = i + 1;
            }
            was_growing = growing;
        }
        assert_eq!(
            growths, 4,
            "steps at 7,168, 14,336, 28,672 and 57,344 voters"
        );
        // 57,344 voters to move, 2 at each insert from the 57,345th voter on.
        assert_eq!(last_over, 57_344 + 57_344 / 2, "the last move's end");
        assert!(set.growing.is_none());
        assert!((0..90_000).all(|i| set.contains(&voter(i))));
        assert_eq!(set.iter().count(), 90_000);
    }

    /// Inserts voters `from..from + count`; the next voter's number.
    fn insert_voters(set: &mut VoterSet, from: usize, count: usize) -> usize {
        for i in from..from + count {
            set.insert(&voter(i));
        }
        from + count
    }

    /// Voter `i`, in one of four namespaces (one of them none).
    fn voter(i: usize) -> String {
        let namespace = ["device:", "user:", "agg:sms:", ""][i % 4];
        format!("{namespace}{i}")
    }

    #[test]
    fn a_set_in_the_middle_of_a_growth_is_restored_whole() {
        let mut set = VoterSet::default();
        let mut i = 0;
        while set.growing.as_ref().is_none_or(|g| g.moved < 1_000) {
            set.insert(&voter(i));
            i += 1;
        }
        // As a checkpoint writes a set and a restart reads it back (processor/src/pipeline.rs).
        let mut restored = VoterSet::default();
        restored.reserve(set.len());
        for (namespace, rest) in set.iter() {
            let rest = std::str::from_utf8(rest).unwrap();
            assert!(restored.insert(&format!("{namespace}{rest}")));
        }
        assert_eq!(restored.len(), i);
        // Equal both ways: each side's voters are all in the other.
        assert!(restored.eq(&set) && set.eq(&restored));
        assert!(set.insert(&voter(i)) && restored.insert(&voter(i)));
        assert!(restored == set);
    }

    #[test]
    fn reserving_while_growing_moves_every_voter_first() {
        let mut set = VoterSet::default();
        let mut i = 0;
        while set.growing.is_none() {
            set.insert(&format!("user:{i}"));
            i += 1;
        }
        set.reserve(100_000);
        assert!(set.growing.is_none());
        assert_eq!(set.len(), i);
        assert!((0..i).all(|v| set.contains(&format!("user:{v}"))));
    }

    #[test]
    fn settling_moves_a_stopped_growth_a_slice_at_a_time() {
        let mut set = VoterSet::default();
        let mut i = 0;
        while set.growing.is_none() {
            set.insert(&voter(i));
            i += 1;
        }
        let to_move = set.growing.as_ref().unwrap().not_moved();
        assert_eq!(to_move, 7_168 - MOVED_PER_INSERT);
        assert_eq!(set.settle(1_000), 1_000, "the insert's 2 and 998 more");
        assert_eq!(set.settle(0), 0);
        // Inserts since the last call count: 10 of them moved 20, the call moves 980 more.
        i = insert_voters(&mut set, i, 10);
        assert_eq!(set.settle(1_000), 1_000);
        let to_move = set.growing.as_ref().unwrap().not_moved();
        assert_eq!(to_move, 7_168 - 2_000);
        // Inserts that moved more than asked: the call moves none.
        i = insert_voters(&mut set, i, 800);
        assert_eq!(set.settle(1_000), 800 * MOVED_PER_INSERT);
        let to_move = set.growing.as_ref().unwrap().not_moved();
        assert_eq!(to_move, 7_168 - 3_600);
        assert!(set.growing.is_some());
        assert_eq!(set.settle(to_move), to_move);
        assert!(
            set.growing.is_none(),
            "the full table is dropped with the last voter moved"
        );
        assert_eq!(set.settle(1_000), 0);
        assert_eq!(set.len(), i);
        assert!((0..i).all(|v| set.contains(&voter(v))));
        assert!(!set.insert(&voter(0)) && set.insert(&voter(i)));
    }

    #[test]
    fn namespaces_past_the_table_are_kept_whole_and_still_exact() {
        let mut set = VoterSet::default();
        for i in 0..600 {
            assert!(set.insert(&format!("ns{i}:voter")));
        }
        assert_eq!(set.namespaces.len(), MAX_NAMESPACES);
        for i in 0..600 {
            assert!(set.contains(&format!("ns{i}:voter")), "ns{i}");
            assert!(!set.insert(&format!("ns{i}:voter")), "ns{i} twice");
            assert!(!set.contains(&format!("ns{i}:other")));
        }
        assert_eq!(set.len(), 600);
    }

    #[test]
    fn the_namespace_is_split_off_as_the_voter_module_writes_it() {
        assert_eq!(split("device:a:b"), ("device:", "a:b"));
        assert_eq!(split("agg:sms:+4412"), ("agg:sms:", "+4412"));
        assert_eq!(split("agg:nocolon"), ("", "agg:nocolon"));
        assert_eq!(split("plain"), ("", "plain"));
    }

    #[test]
    fn sets_with_the_same_voters_in_another_order_are_equal() {
        let (mut a, mut b) = (VoterSet::default(), VoterSet::default());
        for v in ["user:1", "device:x", "agg:s:1"] {
            a.insert(v);
        }
        for v in ["agg:s:1", "device:x", "user:1"] {
            b.insert(v);
        }
        assert_eq!(a, b);
        b.insert("user:2");
        assert_ne!(a, b);
    }
}
