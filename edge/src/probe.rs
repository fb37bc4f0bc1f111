//! The probe behind `crowdtick healthcheck [--url URL]` (exit 0 when the URL answers 200, 1
//! otherwise): for the container image's `HEALTHCHECK` and compose healthchecks, so the image needs
//! no curl or shell. Plain HTTP/1.0 over TCP: the probe only ever targets the node itself.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a probe got no status code.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}: only http:// URLs can be probed")]
    NotHttpUrl(String),
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{0} answered something that is not HTTP")]
    NotHttpAnswer(String),
}

/// Fetches `url` (`http://host:port/path`) and returns the status line's code.
pub async fn status_of(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::NotHttpUrl(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: crowdtick-healthcheck\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout {
            url: url.to_owned(),
            timeout,
        })?
        .map_err(|source| ProbeError::Io {
            url: url.to_owned(),
            source,
        })?;
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    words
        .next()
        .filter(|version| version.starts_with("HTTP/"))
        .and_then(|_| words.next())
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ProbeError::NotHttpAnswer(url.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_the_status_of_a_real_server_and_fails_on_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let app = axum::Router::new()
                .route("/ok", axum::routing::get(|| async { "ok" }))
                .route(
                    "/down",
                    axum::routing::get(|| async {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no")
                    }),
                );
            axum::serve(listener, app).await.unwrap();
        });
        let t = Duration::from_secs(5);
        assert_eq!(
            status_of(&format!("http://{addr}/ok"), t).await.unwrap(),
            200
        );
        assert_eq!(
            status_of(&format!("http://{addr}/down"), t).await.unwrap(),
            503
        );
        assert_eq!(
            status_of(&format!("http://{addr}/nope"), t).await.unwrap(),
            404
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(status_of(&format!("http://{closed}/ok"), t).await.is_err());
        assert!(status_of("https://example.invalid/", t).await.is_err());
    }
}
