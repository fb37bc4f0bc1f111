//! Who is voting, read from the request's headers before its body: voter tokens and aggregator keys.
//!
//! - [`VoterTokens`]: `Authorization: Bearer <JWT>` on `POST /v1/votes`, signed by the
//!   broadcaster's identity service (HMAC `HS256/384/512`, or a public key: `RS*`, `PS*`, `ES256/384`,
//!   `EdDSA`), with the claims `sub` (the voter), `poll` (the one poll it may vote in) and `exp`
//!   (required); `iss` and `aud` are checked when configured. A valid token makes the voter
//!   `verified:<sub>`, the only voters a poll with `voters: verified` takes.
//! - [`Aggregators`]: `Authorization: Bearer <key>` (or `X-Api-Key`) on `POST /v1/votes/batch`. Each
//!   aggregator has its own key, its own voter namespace `agg:<name>:` and its own quota of votes
//!   per second. Keys are looked up by their SHA-256 digest, so the lookup does not leak them.

use crate::rate_limit::VoteQuota;
use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use schemas::voter::is_valid_aggregator_name;
use schemas::PollId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

/// How voter tokens are checked (`[ingest.voter_tokens]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoterTokenConfig {
    /// `HS256` (default), `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// The shared secret, for the HMAC algorithms.
    pub hmac_secret: String,
    /// The identity service's public key (PEM), for the others.
    pub public_key_pem: String,
    /// When set, tokens must carry this `iss`.
    pub issuer: String,
    /// When set, tokens must carry this `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp`, in seconds.
    pub leeway_secs: u64,
}

/// Why the voter-token settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityConfigError {
    #[error("ingest.voter_tokens.algorithm {0:?} is not one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA")]
    Algorithm(String),
    #[error("ingest.voter_tokens: {0}")]
    Key(String),
    #[error("ingest.aggregators: {0}")]
    Aggregator(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    poll: PollId,
}

/// A voter a valid token vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedVoter {
    pub sub: String,
    pub poll: PollId,
}

/// Why a voter token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("this server takes no voter tokens (ingest.voter_tokens is not configured)")]
    NotConfigured,
    #[error("the voter token has expired; get a new one from the identity service")]
    Expired,
    #[error("the voter token is not valid: {0}")]
    Invalid(String),
}

/// Checks voter tokens.
pub struct VoterTokens {
    key: DecodingKey,
    validation: Validation,
}

impl VoterTokens {
    /// None when no key is configured (no poll can then require verified voters' tokens to work).
    pub fn from_config(c: &VoterTokenConfig) -> Result<Option<Self>, IdentityConfigError> {
        if c.hmac_secret.is_empty() && c.public_key_pem.is_empty() {
            return Ok(None);
        }
        let name = if c.algorithm.is_empty() {
            "HS256"
        } else {
            &c.algorithm
        };
        let algorithm =
            Algorithm::from_str(name).map_err(|_| IdentityConfigError::Algorithm(name.into()))?;
        let pem = c.public_key_pem.as_bytes();
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                if c.hmac_secret.len() < 32 {
                    return Err(IdentityConfigError::Key(
                        "hmac_secret must be at least 32 bytes".into(),
                    ));
                }
                DecodingKey::from_secret(c.hmac_secret.as_bytes())
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            _ => return Err(IdentityConfigError::Algorithm(name.into())),
        }
        .map_err(|e| IdentityConfigError::Key(format!("public_key_pem for {name}: {e}")))?;
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = c.leeway_secs;
        validation.validate_aud = !c.audience.is_empty();
        if !c.audience.is_empty() {
            validation.set_audience(&[&c.audience]);
        }
        if !c.issuer.is_empty() {
            validation.set_issuer(&[&c.issuer]);
        }
        Ok(Some(Self { key, validation }))
    }

    pub fn verify(&self, token: &str) -> Result<VerifiedVoter, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            },
        )?;
        Ok(VerifiedVoter {
            sub: data.claims.sub,
            poll: data.claims.poll,
        })
    }
}

/// One aggregator's settings (`[[ingest.aggregators]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Its voter namespace (`agg:<name>:`): 1 to 32 of `a-z 0-9 - _`.
    pub name: String,
    /// Its API key (at least 16 bytes).
    pub key: String,
    /// Votes per second it may send (0: unlimited).
    #[serde(default = "default_votes_per_sec")]
    pub votes_per_sec: u32,
    /// Votes it may send at once above that rate (default: the larger of a second's votes and a
    /// full batch).
    #[serde(default)]
    pub burst: u32,
}

fn default_votes_per_sec() -> u32 {
    20_000
}

/// An authenticated aggregator.
pub struct Aggregator {
    pub name: String,
    pub quota: VoteQuota,
}

/// The aggregators, by the digest of their keys.
#[derive(Default, Clone)]
pub struct Aggregators {
    by_digest: Arc<HashMap<[u8; 32], Arc<Aggregator>>>,
}

/// Why a batch's caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregatorRefusal {
    /// No key in the request.
    Missing,
    /// A key no aggregator has.
    Unknown,
}

impl Aggregators {
    pub fn new(
        configs: &[AggregatorConfig],
        max_batch_votes: usize,
    ) -> Result<Self, IdentityConfigError> {
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for c in configs {
            if !is_valid_aggregator_name(&c.name) {
                return Err(IdentityConfigError::Aggregator(format!(
                    "name {:?} must be 1 to 32 of a-z 0-9 - _",
                    c.name
                )));
            }
            if !names.insert(c.name.clone()) {
                return Err(IdentityConfigError::Aggregator(format!(
                    "name {:?} appears twice",
                    c.name
                )));
            }
            if c.key.len() < 16 {
                return Err(IdentityConfigError::Aggregator(format!(
                    "the key of {:?} must be at least 16 bytes",
                    c.name
                )));
            }
            let burst = if c.burst > 0 {
                c.burst
            } else {
                c.votes_per_sec.max(max_batch_votes as u32)
            };
            let aggregator = Aggregator {
                name: c.name.clone(),
                quota: VoteQuota::new(c.votes_per_sec, burst),
            };
            if by_digest
                .insert(digest(c.key.as_bytes()), Arc::new(aggregator))
                .is_some()
            {
                return Err(IdentityConfigError::Aggregator(format!(
                    "the key of {:?} is another aggregator's too",
                    c.name
                )));
            }
        }
        Ok(Self {
            by_digest: Arc::new(by_digest),
        })
    }

    /// The aggregator whose key the request carries.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Aggregator>, AggregatorRefusal> {
        let key = bearer(headers)
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .ok_or(AggregatorRefusal::Missing)?;
        self.by_digest
            .get(&digest(key.trim().as_bytes()))
            .cloned()
            .ok_or(AggregatorRefusal::Unknown)
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    fn tokens() -> VoterTokens {
        VoterTokens::from_config(&VoterTokenConfig {
            hmac_secret: SECRET.into(),
            issuer: "idp".into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        schemas::Timestamp::now().micros() as u64 / 1_000_000 + 3600
    }

    #[test]
    fn a_valid_token_names_its_voter_and_poll() {
        let t = token(
            serde_json::json!({"sub": "alice", "poll": 7, "exp": in_an_hour(), "iss": "idp"}),
            SECRET,
        );
        assert_eq!(
            tokens().verify(&t).unwrap(),
            VerifiedVoter {
                sub: "alice".into(),
                poll: 7
            }
        );
    }

    #[test]
    fn forged_expired_or_incomplete_tokens_are_refused() {
        let v = tokens();
        let forged = token(
            serde_json::json!({"sub": "a", "poll": 7, "exp": in_an_hour(), "iss": "idp"}),
            "another-secret-of-at-least-32-bytes!!",
        );
        assert!(matches!(v.verify(&forged), Err(TokenError::Invalid(_))));
        let expired = token(
            serde_json::json!({"sub": "a", "poll": 7, "exp": 1_000_000, "iss": "idp"}),
            SECRET,
        );
        assert!(matches!(v.verify(&expired), Err(TokenError::Expired)));
        let no_poll = token(
            serde_json::json!({"sub": "a", "exp": in_an_hour(), "iss": "idp"}),
            SECRET,
        );
        assert!(v.verify(&no_poll).is_err());
        let no_exp = token(
            serde_json::json!({"sub": "a", "poll": 7, "iss": "idp"}),
            SECRET,
        );
        assert!(v.verify(&no_exp).is_err());
        let other_issuer = token(
            serde_json::json!({"sub": "a", "poll": 7, "exp": in_an_hour(), "iss": "evil"}),
            SECRET,
        );
        assert!(v.verify(&other_issuer).is_err());
        assert!(v.verify("not.a.token").is_err());
    }

    #[test]
    fn settings_are_checked() {
        let short = VoterTokenConfig {
            hmac_secret: "short".into(),
            ..Default::default()
        };
        assert!(VoterTokens::from_config(&short).is_err());
        let alg = VoterTokenConfig {
            hmac_secret: SECRET.into(),
            algorithm: "none".into(),
            ..Default::default()
        };
        assert!(VoterTokens::from_config(&alg).is_err());
        let bad_pem = VoterTokenConfig {
            public_key_pem: "nope".into(),
            algorithm: "ES256".into(),
            ..Default::default()
        };
        assert!(VoterTokens::from_config(&bad_pem).is_err());
        assert!(VoterTokens::from_config(&VoterTokenConfig::default())
            .unwrap()
            .is_none());
    }

    fn agg(name: &str, key: &str) -> AggregatorConfig {
        AggregatorConfig {
            name: name.into(),
            key: key.into(),
            votes_per_sec: 100,
            burst: 0,
        }
    }

    #[test]
    fn aggregators_are_found_by_their_key_only() {
        let aggs = Aggregators::new(
            &[
                agg("sms-uk", "key-of-sms-uk-0001"),
                agg("app", "key-of-the-app-0002"),
            ],
            10_000,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            aggs.authenticate(&h).err(),
            Some(AggregatorRefusal::Missing)
        );
        h.insert(
            "authorization",
            "Bearer key-of-sms-uk-0001".parse().unwrap(),
        );
        assert_eq!(aggs.authenticate(&h).unwrap().name, "sms-uk");
        h.insert(
            "authorization",
            "Bearer key-of-sms-uk-0002".parse().unwrap(),
        );
        assert_eq!(
            aggs.authenticate(&h).err(),
            Some(AggregatorRefusal::Unknown)
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "key-of-the-app-0002".parse().unwrap());
        assert_eq!(aggs.authenticate(&h).unwrap().name, "app");
    }

    #[test]
    fn aggregator_settings_are_checked() {
        assert!(Aggregators::new(&[agg("Bad:Name", "key-of-sms-uk-0001")], 1).is_err());
        assert!(Aggregators::new(&[agg("a", "short")], 1).is_err());
        assert!(Aggregators::new(
            &[
                agg("a", "key-of-sms-uk-0001"),
                agg("a", "key-of-sms-uk-0002")
            ],
            1
        )
        .is_err());
        assert!(Aggregators::new(
            &[
                agg("a", "key-of-sms-uk-0001"),
                agg("b", "key-of-sms-uk-0001")
            ],
            1
        )
        .is_err());
    }
}
