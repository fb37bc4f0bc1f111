//! Who a voter is, and who says so: a voter id always travels with its namespace.
//!
//! Every door that takes votes names its voters in a namespace of its own, and the log's voter id
//! (the dedupe key with the poll, and the partition key) is `namespace` + `id`:
//!
//! | door                                   | namespace         | id comes from              |
//! |----------------------------------------|-------------------|----------------------------|
//! | `POST /v1/votes`, no token             | `device:`         | the client's `voter_id`    |
//! | `POST /v1/votes` with a voter token    | `verified:`       | the token's `sub` claim    |
//! | `POST /v1/votes/batch` (aggregator A)  | `agg:A:`          | the aggregator's `voter_id`|
//! | the old API (`/api/…`)                 | `user:`           | the account's number       |
//!
//! So no door can name a voter of another: an anonymous client claiming `user:1` is the device
//! `device:user:1`, not the old-API account 1, and one aggregator cannot spend another's voters.

use std::fmt;

/// Where a voter id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoterNamespace<'a> {
    /// A public device (browser, app) that names itself: no proof, one vote per device id.
    Device,
    /// A voter whose identity a token signed by the broadcaster's identity service vouches for.
    Verified,
    /// An old-API account (`user:<id>`, as that API always wrote them).
    Account,
    /// The voters of one aggregator (SMS gateway, partner app), by its configured name.
    Aggregator(&'a str),
}

impl<'a> VoterNamespace<'a> {
    /// Whether votes from this namespace may be cast in a poll that requires verified voters.
    pub fn is_verified(&self) -> bool {
        matches!(self, VoterNamespace::Verified)
    }

    /// The namespace's part of the log's voter id (ends with `:`), as up to two pieces.
    fn prefix(self) -> [&'a str; 2] {
        match self {
            VoterNamespace::Device => ["device:", ""],
            VoterNamespace::Verified => ["verified:", ""],
            VoterNamespace::Account => ["user:", ""],
            VoterNamespace::Aggregator(name) => ["agg:", name],
        }
    }
}

/// A voter id with its namespace, borrowed: written into keys and records piece by piece, so
/// qualifying a voter costs no allocation on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QualifiedVoter<'a> {
    pieces: [&'a str; 4],
    verified: bool,
}

impl<'a> QualifiedVoter<'a> {
    pub fn new(namespace: VoterNamespace<'a>, id: &'a str) -> Self {
        let [a, b] = namespace.prefix();
        let sep = if b.is_empty() { "" } else { ":" };
        Self {
            pieces: [a, b, sep, id],
            verified: namespace.is_verified(),
        }
    }

    /// A voter id as it already stands in the log (decoded records, tests, recount).
    pub fn raw(id: &'a str) -> Self {
        Self {
            pieces: ["", "", "", id],
            verified: false,
        }
    }

    /// Whether a voter token vouches for this voter (the only voters of a `verified` poll).
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    /// The pieces whose concatenation is the log's voter id.
    pub fn pieces(&self) -> &[&'a str; 4] {
        &self.pieces
    }

    pub fn len(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the log's voter id to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for p in self.pieces {
            out.extend_from_slice(p.as_bytes());
        }
    }
}

impl<'a> From<&'a str> for QualifiedVoter<'a> {
    fn from(id: &'a str) -> Self {
        Self::raw(id)
    }
}

impl<'a> From<&'a String> for QualifiedVoter<'a> {
    fn from(id: &'a String) -> Self {
        Self::raw(id)
    }
}

impl fmt::Display for QualifiedVoter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pieces.iter().try_for_each(|p| f.write_str(p))
    }
}

/// Whether `name` may name an aggregator: 1 to 32 of `a-z 0-9 - _` (it becomes part of voter ids).
pub fn is_valid_aggregator_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn namespaces_spell_their_prefixes() {
        let s = |ns, id| QualifiedVoter::new(ns, id).to_string();
        assert_eq!(s(VoterNamespace::Device, "abc"), "device:abc");
        assert_eq!(s(VoterNamespace::Verified, "abc"), "verified:abc");
        assert_eq!(s(VoterNamespace::Account, "17"), "user:17");
        assert_eq!(
            s(VoterNamespace::Aggregator("sms-uk"), "+44"),
            "agg:sms-uk:+44"
        );
        assert_eq!(QualifiedVoter::raw("user:17").to_string(), "user:17");
    }

    #[test]
    fn only_tokens_are_verified() {
        assert!(VoterNamespace::Verified.is_verified());
        assert!(!VoterNamespace::Device.is_verified());
        assert!(!VoterNamespace::Account.is_verified());
        assert!(!VoterNamespace::Aggregator("a").is_verified());
    }

    #[test]
    fn aggregator_names() {
        assert!(is_valid_aggregator_name("sms-uk_1"));
        assert!(!is_valid_aggregator_name(""));
        assert!(!is_valid_aggregator_name("Sms"));
        assert!(!is_valid_aggregator_name("a:b"));
        assert!(!is_valid_aggregator_name(&"a".repeat(33)));
    }

    fn namespace() -> impl Strategy<Value = (u8, String)> {
        (0u8..4, "[a-z0-9_-]{1,8}")
    }

    fn qualify<'a>(kind: u8, agg: &'a str, id: &'a str) -> QualifiedVoter<'a> {
        let ns = match kind {
            0 => VoterNamespace::Device,
            1 => VoterNamespace::Verified,
            2 => VoterNamespace::Account,
            _ => VoterNamespace::Aggregator(agg),
        };
        QualifiedVoter::new(ns, id)
    }

    proptest! {
        /// Two voters of different namespaces never share a log voter id, whatever ids they claim:
        /// no door can name a voter of another.
        #[test]
        fn namespaces_never_collide(
            (ka, aa) in namespace(), ida in ".{0,24}",
            (kb, ab) in namespace(), idb in ".{0,24}",
        ) {
            let a = qualify(ka, &aa, &ida);
            let b = qualify(kb, &ab, &idb);
            let same_namespace = ka == kb && (ka != 3 || aa == ab);
            if !same_namespace {
                prop_assert_ne!(a.to_string(), b.to_string());
            } else {
                prop_assert_eq!(a.to_string() == b.to_string(), ida == idb);
            }
            let mut bytes = Vec::new();
            a.write_to(&mut bytes);
            prop_assert_eq!(bytes.len(), a.len());
            prop_assert_eq!(bytes, a.to_string().into_bytes());
        }
    }
}
