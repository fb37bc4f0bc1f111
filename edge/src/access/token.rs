//! Signed operator tokens: the console's session (in a cookie) and a screen's read-only pass for
//! one poll (in its URL). Neither holds an operator key.
//!
//! A token is `<claims>.<mac>`, both base64url without padding: `claims` is JSON
//! (`{"typ": "session"|"screen", "poll": id, "exp": unix seconds}`), `mac` is HMAC-SHA256 of the
//! claims' bytes under a secret derived from one operator key ([`TokenSecret::derive`]). So a token
//! stops working when it expires, or when the key that minted it is removed from the configuration;
//! every node that has the same keys accepts it (no shared state).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use schemas::PollId;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: a secret derived for tokens is used for nothing else.
const DERIVATION_LABEL: &[u8] = b"crowdtick operator token v1";

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "typ", rename_all = "snake_case")]
pub enum Grant {
    /// Everything an operator key allows (the console's cookie).
    Session,
    /// Reading one poll's results, embargoed or not (a studio screen's URL).
    Screen { poll: PollId },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(flatten)]
    grant: Grant,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

/// The HMAC secret of one operator key.
#[derive(Clone)]
pub struct TokenSecret([u8; 32]);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(…)")
    }
}

impl TokenSecret {
    /// HMAC-SHA256(key, label): the token secret of an operator key.
    pub fn derive(key: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
        mac.update(DERIVATION_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key")
    }

    /// A token for `grant`, valid until `expires` (Unix seconds).
    pub fn sign(&self, grant: Grant, expires: u64) -> String {
        let claims = serde_json::to_vec(&Claims {
            grant,
            exp: expires,
        })
        .expect("claims serialize");
        let mut mac = self.mac();
        mac.update(&claims);
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&claims),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The grant and expiry of a token signed with this secret (the MAC is checked in constant
    /// time), whatever its expiry; `None` if it is not one.
    fn open(&self, token: &str) -> Option<(Grant, u64)> {
        let (claims, tag) = token.split_once('.')?;
        let claims = URL_SAFE_NO_PAD.decode(claims).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(&claims);
        mac.verify_slice(&tag).ok()?;
        let claims: Claims = serde_json::from_slice(&claims).ok()?;
        Some((claims.grant, claims.exp))
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not one this server signed (or its operator key was removed)")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// A checked token: its grant, its expiry and which secret signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub grant: Grant,
    pub expires: u64,
    /// Index of the operator key whose secret signed it.
    pub key: usize,
}

/// Checks `token` against every secret at `now` (Unix seconds).
pub fn verify(secrets: &[TokenSecret], token: &str, now: u64) -> Result<Verified, TokenError> {
    // Tokens are small; anything long is not one (and is not worth decoding).
    if token.len() > 512 {
        return Err(TokenError::Invalid);
    }
    let (key, (grant, expires)) = secrets
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.open(token).map(|g| (i, g)))
        .ok_or(TokenError::Invalid)?;
    if expires <= now {
        return Err(TokenError::Expired);
    }
    Ok(Verified {
        grant,
        expires,
        key,
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_expiry_and_only_under_their_key() {
        let a = TokenSecret::derive("key-a");
        let b = TokenSecret::derive("key-b");
        let screen = Grant::Screen { poll: 7 };
        let token = b.sign(screen, 1_000);
        assert!(!token.contains("key-b"));
        let both = [a.clone(), b.clone()];
        assert_eq!(
            verify(&both, &token, 999),
            Ok(Verified {
                grant: screen,
                expires: 1_000,
                key: 1
            })
        );
        assert_eq!(verify(&both, &token, 1_000), Err(TokenError::Expired));
        // Key b removed: its tokens stop working.
        assert_eq!(
            verify(std::slice::from_ref(&a), &token, 1),
            Err(TokenError::Invalid)
        );
        // A changed claim breaks the MAC.
        let (_, tag) = token.split_once('.').unwrap();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(br#"{"typ":"session","exp":1000}"#)
        );
        assert_eq!(verify(&both, &forged, 1), Err(TokenError::Invalid));
        for junk in ["", ".", "abc", "a.b", &"x".repeat(600)] {
            assert_eq!(verify(&both, junk, 1), Err(TokenError::Invalid), "{junk}");
        }
        let session = a.sign(Grant::Session, 50);
        assert_eq!(verify(&both, &session, 1).unwrap().grant, Grant::Session);
    }
}
