//! Built-in accounts, sessions and HTTP Basic for the seed API.
//!
//! - Accounts: `<data_dir>/accounts.jsonl`, one line per account `{"id", "username", "email",
//!   "password", "created_at"}`, appended and fsynced before the 201. `password` is Django's own
//!   format, `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>` (PBKDF2-HMAC-SHA256, a random
//!   per-user salt), so hashes exported from the old Django user table verify as they are.
//! - Sessions: a random 32-byte token (64 hex characters) in the `sessionid` cookie; the file
//!   `<data_dir>/sessions.jsonl` holds only its SHA-256 (a leaked file does not log anyone in),
//!   with the user and the creation time. A session lasts 14 days (Django's default).
//! - Basic: verified once with PBKDF2, then cached in memory by the SHA-256 of the header value.
//! - Password hashing runs on the blocking pool, at most one hash per core at a time.
//!
//! The parsing here is pure and unit tested: [`parse_basic`], [`session_cookie`],
//! [`hash_password`], [`verify_password`].

use super::drf::{DrfError, BAD_CREDENTIALS};
use super::store::{self, Appender};
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use schemas::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub type UserId = u64;

/// PBKDF2 rounds for new passwords (verification uses the count stored with each hash).
pub const PBKDF2_ITERATIONS: u32 = 100_000;
/// Django's `SESSION_COOKIE_AGE`.
pub const SESSION_SECS: i64 = 14 * 24 * 3600;
/// Past this many cached Basic headers the cache starts over.
const BASIC_CACHE_MAX: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub id: UserId,
    pub username: String,
    pub email: String,
    /// `pbkdf2_sha256$…`, never the password.
    pub password: String,
    #[serde(default)]
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    /// Hex SHA-256 of the token.
    key_sha256: String,
    user: UserId,
    created_at: Timestamp,
}

#[derive(Default)]
struct AccountTable {
    by_name: HashMap<String, UserId>,
    by_id: HashMap<UserId, Arc<Account>>,
    next_id: UserId,
}

/// Why an account could not be created.
pub enum RegisterError {
    UsernameTaken,
    Storage(std::io::Error),
}

pub struct Auth {
    accounts: RwLock<AccountTable>,
    /// SHA-256 of a session token → (user, created_at in µs).
    sessions: RwLock<HashMap<[u8; 32], (UserId, Timestamp)>>,
    /// SHA-256 of a verified `Authorization` header value → user.
    basic_cache: Mutex<HashMap<[u8; 32], UserId>>,
    accounts_file: Appender,
    sessions_file: Appender,
    hashing: Semaphore,
    /// Verified when the username is unknown, so that answer takes as long as a wrong password.
    dummy_hash: String,
}

impl Auth {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let accounts_path = data_dir.join("accounts.jsonl");
        let sessions_path = data_dir.join("sessions.jsonl");
        let mut table = AccountTable {
            next_id: 1,
            ..Default::default()
        };
        for a in store::load::<Account>(&accounts_path)? {
            if table.by_name.contains_key(&a.username) || table.by_id.contains_key(&a.id) {
                tracing::warn!(user = %a.username, id = a.id, "skipping a duplicate account line");
                continue;
            }
            table.next_id = table.next_id.max(a.id + 1);
            table.by_name.insert(a.username.clone(), a.id);
            table.by_id.insert(a.id, Arc::new(a));
        }
        let now = Timestamp::now();
        let mut sessions = HashMap::new();
        for s in store::load::<SessionRecord>(&sessions_path)? {
            let Some(key) = from_hex32(&s.key_sha256) else {
                continue;
            };
            if !expired(s.created_at, now) && table.by_id.contains_key(&s.user) {
                sessions.insert(key, (s.user, s.created_at));
            }
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            accounts: RwLock::new(table),
            sessions: RwLock::new(sessions),
            basic_cache: Mutex::new(HashMap::new()),
            accounts_file: Appender::open(&accounts_path)?,
            sessions_file: Appender::open(&sessions_path)?,
            hashing: Semaphore::new(hashing_slots(cores)),
            // Well-formed, so verifying against it costs a full hash; matches no password.
            dummy_hash: format!("pbkdf2_sha256${PBKDF2_ITERATIONS}${}$", new_salt()),
        })
    }

    pub fn username_taken(&self, name: &str) -> bool {
        self.accounts.read().by_name.contains_key(name)
    }

    pub fn user(&self, id: UserId) -> Option<Arc<Account>> {
        self.accounts.read().by_id.get(&id).cloned()
    }

    /// Runs a PBKDF2 job on the blocking pool, at most [`hashing_slots`] at a time.
    async fn hashing<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let _permit = self.hashing.acquire().await.expect("never closed");
        tokio::task::spawn_blocking(f)
            .await
            .expect("password hashing panicked")
    }

    /// Creates an account (durable when it returns) and answers it.
    pub async fn register(
        &self,
        username: String,
        email: String,
        password: String,
    ) -> Result<Arc<Account>, RegisterError> {
        if self.username_taken(&username) {
            return Err(RegisterError::UsernameTaken);
        }
        let password = self
            .hashing(move || hash_password(&password, &new_salt(), PBKDF2_ITERATIONS))
            .await;
        let account = {
            let mut t = self.accounts.write();
            if t.by_name.contains_key(&username) {
                return Err(RegisterError::UsernameTaken);
            }
            let id = t.next_id;
            t.next_id += 1;
            let a = Arc::new(Account {
                id,
                username,
                email,
                password,
                created_at: Timestamp::now(),
            });
            t.by_name.insert(a.username.clone(), id);
            t.by_id.insert(id, a.clone());
            a
        };
        if let Err(e) = self.accounts_file.append(&*account, true).await {
            tracing::error!(error = %e, "cannot persist a new account");
            let mut t = self.accounts.write();
            t.by_name.remove(&account.username);
            t.by_id.remove(&account.id);
            return Err(RegisterError::Storage(e));
        }
        Ok(account)
    }

    /// Starts a session; answers the token for the cookie. If it cannot be written down it still
    /// works until the server restarts (the account exists either way).
    pub async fn new_session(&self, user: UserId) -> String {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let token = to_hex(&raw);
        let key = sha256(token.as_bytes());
        let created_at = Timestamp::now();
        self.sessions.write().insert(key, (user, created_at));
        let record = SessionRecord {
            key_sha256: to_hex(&key),
            user,
            created_at,
        };
        if let Err(e) = self.sessions_file.append(&record, true).await {
            tracing::error!(error = %e, "cannot persist a session; it lasts until the server restarts");
        }
        token
    }

    /// The user a request speaks for. The session cookie is tried first, then Basic (DRF's default
    /// order); neither: 403 "not provided"; a bad Basic header: 403 with DRF's message.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<UserId, DrfError> {
        if let Some(token) = session_cookie(headers) {
            let key = sha256(token.as_bytes());
            let found = self.sessions.read().get(&key).copied();
            match found {
                Some((user, created)) if !expired(created, Timestamp::now()) => return Ok(user),
                Some(_) => {
                    self.sessions.write().remove(&key);
                }
                None => {}
            }
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(DrfError::not_authenticated());
        };
        let creds = match parse_basic(value.as_bytes()) {
            Basic::NotBasic => return Err(DrfError::not_authenticated()),
            Basic::Invalid(msg) => return Err(DrfError::detail(StatusCode::FORBIDDEN, msg)),
            Basic::Credentials(user, pass) => (user, pass),
        };
        let cache_key = sha256(value.as_bytes());
        if let Some(&user) = self.basic_cache.lock().get(&cache_key) {
            return Ok(user);
        }
        let (username, password) = creds;
        let account = {
            let t = self.accounts.read();
            t.by_name
                .get(&username)
                .and_then(|id| t.by_id.get(id).cloned())
        };
        let stored = account
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |a| a.password.clone());
        let ok = self
            .hashing(move || verify_password(&password, &stored))
            .await;
        match account {
            Some(a) if ok => {
                let mut cache = self.basic_cache.lock();
                if cache.len() >= BASIC_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(cache_key, a.id);
                Ok(a.id)
            }
            _ => Err(DrfError::detail(StatusCode::FORBIDDEN, BAD_CREDENTIALS)),
        }
    }
}

fn expired(created_at: Timestamp, now: Timestamp) -> bool {
    now.micros().saturating_sub(created_at.micros()) > SESSION_SECS * 1_000_000
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Django's salt: 22 characters from `[A-Za-z0-9]` (about 131 bits).
pub fn new_salt() -> String {
    OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

/// How many password hashes may run at once on a machine of `cores`: half of them, at least one,
/// so a wave of registrations or logins (100,000 PBKDF2 rounds each, about 50 ms of a core) can
/// never take every core from the votes; the rest wait their turn.
pub fn hashing_slots(cores: usize) -> usize {
    (cores / 2).max(1)
}

/// Django's `pbkdf2_sha256` hash of a password.
pub fn hash_password(password: &str, salt: &str, iterations: u32) -> String {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), iterations, &mut out);
    format!(
        "pbkdf2_sha256${iterations}${salt}${}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

/// Checks a password against a stored `pbkdf2_sha256$…` hash (constant-time comparison).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2_sha256"), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Ok(iterations) = iter.parse::<u32>() else {
        return false;
    };
    if iterations == 0 || iterations > 10_000_000 {
        return false;
    }
    let candidate = hash_password(password, salt, iterations);
    let expected = format!("pbkdf2_sha256${iterations}${salt}${hash}");
    constant_time_eq(candidate.as_bytes(), expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What an `Authorization` header says, read as DRF's `BasicAuthentication` reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Basic {
    /// Another scheme (or none): not Basic's business.
    NotBasic,
    /// A Basic header that cannot be read: DRF's message.
    Invalid(&'static str),
    Credentials(String, String),
}

pub fn parse_basic(value: &[u8]) -> Basic {
    let text = String::from_utf8_lossy(value);
    let mut words = text.split_ascii_whitespace();
    match words.next() {
        Some(s) if s.eq_ignore_ascii_case("basic") => {}
        _ => return Basic::NotBasic,
    }
    let Some(encoded) = words.next() else {
        return Basic::Invalid("Invalid basic header. No credentials provided.");
    };
    if words.next().is_some() {
        return Basic::Invalid(
            "Invalid basic header. Credentials string should not contain spaces.",
        );
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return Basic::Invalid("Invalid basic header. Credentials not correctly base64 encoded.");
    };
    // DRF tries UTF-8, then Latin-1 (which always decodes).
    let decoded = match String::from_utf8(decoded) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    };
    let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
    Basic::Credentials(user.to_owned(), pass.to_owned())
}

/// The `sessionid` cookie's value, from any `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "sessionid")
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that logs a client in.
pub fn session_set_cookie(token: &str, secure: bool) -> String {
    format!(
        "sessionid={token}; HttpOnly; Path=/; SameSite=Lax; Max-Age={SESSION_SECS}{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn password_hashing_never_takes_more_than_half_the_cores() {
        assert_eq!(hashing_slots(1), 1);
        assert_eq!(hashing_slots(2), 1);
        assert_eq!(hashing_slots(8), 4);
        let dir = tempfile::tempdir().unwrap();
        let auth = Arc::new(Auth::open(dir.path()).unwrap());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (active, most) = (
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        let jobs: Vec<_> = (0..16)
            .map(|_| {
                let (auth, active, most) = (auth.clone(), active.clone(), most.clone());
                tokio::spawn(async move {
                    auth.hashing(move || {
                        let now = active.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(
            most.load(std::sync::atomic::Ordering::SeqCst),
            hashing_slots(cores)
        );
    }

    #[test]
    fn pbkdf2_matches_the_rfc_vectors_and_django() {
        // RFC 7914 §11 / well-known PBKDF2-HMAC-SHA256 vectors: "password", "salt".
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"password", b"salt", 1, &mut out);
        assert_eq!(
            to_hex(&out),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
        );
        pbkdf2::pbkdf2_hmac::<Sha256>(b"password", b"salt", 4096, &mut out);
        assert_eq!(
            to_hex(&out),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"
        );
        // Django: make_password("password", salt="salt", hasher=PBKDF2PasswordHasher with 2 rounds)
        // is base64 of the raw derived key.
        let h = hash_password("password", "salt", 2);
        assert_eq!(
            h,
            "pbkdf2_sha256$2$salt$rk0Mla9rRtMtCt/5KPBt0CowP47zwlHf1uLYWpVHTEM="
        );
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let salt = new_salt();
        assert_eq!(salt.len(), 22);
        assert!(salt.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(salt, new_salt());
        let h = hash_password("correct horse", &salt, 1000);
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("correct horse", "plain text"));
        assert!(!verify_password("x", "pbkdf2_sha256$0$s$AAAA"));
        assert!(!verify_password("x", "md5$1$s$AAAA"));
    }

    #[test]
    fn basic_headers_read_like_drf() {
        let enc = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            parse_basic(enc("ana:s3cret:x").as_bytes()),
            Basic::Credentials("ana".into(), "s3cret:x".into())
        );
        assert_eq!(
            parse_basic(b"basic YTpi"),
            Basic::Credentials("a".into(), "b".into())
        );
        assert_eq!(parse_basic(b"Bearer abc"), Basic::NotBasic);
        assert_eq!(parse_basic(b""), Basic::NotBasic);
        assert_eq!(
            parse_basic(b"Basic"),
            Basic::Invalid("Invalid basic header. No credentials provided.")
        );
        assert_eq!(
            parse_basic(b"Basic a b"),
            Basic::Invalid("Invalid basic header. Credentials string should not contain spaces.")
        );
        assert_eq!(
            parse_basic(b"Basic !!!"),
            Basic::Invalid("Invalid basic header. Credentials not correctly base64 encoded.")
        );
        // Latin-1 fallback.
        let latin = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(b"jos\xe9:pw")
        );
        assert_eq!(
            parse_basic(latin.as_bytes()),
            Basic::Credentials("jos\u{e9}".into(), "pw".into())
        );
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(session_cookie(&h), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("csrftoken=abc; theme=dark"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1;  sessionid=tok123 ; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("tok123"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xsessionid=no; sessionid="),
        );
        assert_eq!(session_cookie(&h), None);
        assert_eq!(
            session_set_cookie("t", false),
            "sessionid=t; HttpOnly; Path=/; SameSite=Lax; Max-Age=1209600"
        );
        assert!(session_set_cookie("t", true).ends_with("; Secure"));
    }

    #[test]
    fn hex_round_trips() {
        let k = sha256(b"x");
        assert_eq!(from_hex32(&to_hex(&k)), Some(k));
        assert_eq!(from_hex32("zz"), None);
    }
}
