//! A lean HTTP/1.1 keep-alive client: one connection per lane over hyper's low-level
//! `client::conn::http1` (no pool, no per-request DNS lookup or URL parsing), reconnected after any
//! failure. The server may be killed and restarted during a run; the next request simply connects
//! again.
//!
//! Each attempt ends in an [`Attempt`] that says whether the request may have reached the server:
//! a refused connection cannot have recorded anything, while a connection that broke (or timed out)
//! after the request was written might have. The lanes use that to tell "not recorded" give-ups
//! from uncertain ones.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the server is: resolved once at start.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header (`host:port` as given in the URL).
    pub host: HeaderValue,
    /// The URL as given, for messages.
    pub url: String,
}

/// `(host, port)` of an `http://host[:port][/…]` URL.
pub fn parse_url(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow::anyhow!("the URL must start with http:// (got {url}); TLS is not supported")
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    anyhow::ensure!(!authority.is_empty(), "no host in {url}");
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("unclosed [ in {url}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse()?,
            None => 80,
        };
        return Ok((host.to_owned(), port));
    }
    Ok(match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse()
                .map_err(|_| anyhow::anyhow!("bad port {p:?} in {url}"))?,
        ),
        None => (authority.to_owned(), 80),
    })
}

impl Target {
    /// Resolves `url`; unless `allow_remote`, refuses any address outside loopback.
    pub async fn resolve(url: &str, allow_remote: bool) -> anyhow::Result<Self> {
        let (host, port) = parse_url(url)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host} resolves to no address"))?;
        anyhow::ensure!(
            allow_remote || addr.ip().is_loopback(),
            "{url} resolves to {}, which is not a loopback address; a load generator aimed at another \
             machine needs --allow-remote",
            addr.ip()
        );
        let authority = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority)?,
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// The server answered. `body` is empty unless it was asked for (or the status is not 2xx).
    Answer {
        status: u16,
        retry_after: Option<Duration>,
        body: Bytes,
    },
    /// Could not connect: nothing was sent.
    Connect(std::io::Error),
    /// The connection failed after the request may have been written.
    Broken(hyper::Error),
    /// No answer in time (the connection is dropped; the request may have been processed).
    Timeout,
}

impl Attempt {
    /// Whether the server may have acted on the request without us knowing the answer.
    pub fn ambiguous(&self) -> bool {
        matches!(self, Attempt::Broken(_) | Attempt::Timeout)
    }
}

/// One keep-alive connection.
pub struct Conn {
    target: std::sync::Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Connections opened (the first one included).
    pub connects: u64,
}

impl Conn {
    pub fn new(target: std::sync::Arc<Target>) -> Self {
        Self {
            target,
            sender: None,
            connects: 0,
        }
    }

    async fn connect(&mut self) -> std::io::Result<()> {
        let stream = tokio::net::TcpStream::connect(self.target.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        self.connects += 1;
        Ok(())
    }

    /// Drops the connection (the next request reconnects).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// Sends one request and waits at most `timeout` for the whole answer. `want_body`: read the
    /// body of a 2xx answer (other answers' bodies are always read, for their error code).
    pub async fn request(
        &mut self,
        method: Method,
        uri: Uri,
        auth: Option<&HeaderValue>,
        body: Bytes,
        want_body: bool,
        timeout: Duration,
    ) -> Attempt {
        // A connection the server closed while idle is replaced before anything is sent.
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            match tokio::time::timeout(timeout, self.connect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Attempt::Connect(e),
                Err(_) => {
                    return Attempt::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
        }
        let sender = self.sender.as_mut().expect("connected above");
        if sender.ready().await.is_err() {
            // Closed before anything was written: nothing reached the server.
            self.sender = None;
            return Attempt::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection closed",
            ));
        }
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.insert(HOST, self.target.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = auth {
            headers.insert(AUTHORIZATION, a.clone());
        }
        let fut = sender.send_request(req);
        let result = tokio::time::timeout(timeout, async move {
            let resp = fut.await?;
            read(resp, want_body).await
        })
        .await;
        match result {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.sender = None;
                Attempt::Broken(e)
            }
            Err(_) => {
                self.sender = None;
                Attempt::Timeout
            }
        }
    }

    /// A GET or POST of JSON for setup and verification (not the hot path).
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let uri: Uri = path.parse()?;
        match self
            .request(method, uri, auth, body, true, Duration::from_secs(10))
            .await
        {
            Attempt::Answer { status, body, .. } => {
                let v = if body.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                    })
                };
                Ok((status, v))
            }
            Attempt::Connect(e) => {
                anyhow::bail!("cannot connect to {}: {e}", self.target.url)
            }
            Attempt::Broken(e) => anyhow::bail!("{path}: connection failed: {e}"),
            Attempt::Timeout => anyhow::bail!("{path}: no answer within 10 s"),
        }
    }
}

async fn read(resp: Response<Incoming>, want_body: bool) -> Result<Attempt, hyper::Error> {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    let mut body = resp.into_body();
    let body = if want_body || !(200..300).contains(&status) {
        body.collect().await?.to_bytes()
    } else {
        // Drain without keeping: the connection stays usable.
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Bytes::new()
    };
    Ok(Attempt::Answer {
        status,
        retry_after,
        body,
    })
}

/// The `code` of an error body `{"error": {"code": …}}`, without building a JSON tree.
pub fn error_code(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
    }
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    serde_json::from_slice::<Outer>(body)
        .map(|o| o.error.code)
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(
            parse_url("http://localhost/x").unwrap(),
            ("localhost".into(), 80)
        );
        assert_eq!(parse_url("http://[::1]:9/").unwrap(), ("::1".into(), 9));
        assert!(parse_url("https://x").is_err());
        assert!(parse_url("http://h:port").is_err());
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            error_code(br#"{"error":{"code":"poll_closed","message":"m"}}"#),
            "poll_closed"
        );
        assert_eq!(error_code(b"<html>"), "unknown");
    }

    #[tokio::test]
    async fn refuses_remote_targets() {
        let e = Target::resolve("http://192.0.2.1:80", false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a loopback"), "{e}");
        assert!(Target::resolve("http://127.0.0.1:1", false).await.is_ok());
    }
}
