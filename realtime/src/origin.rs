//! Which web pages may open a live connection: the `Origin` allow-list of the WebSocket endpoints.
//!
//! A browser sends `Origin` with every WebSocket upgrade, and lets any page open a socket to any
//! server with the user's cookies. So a socket whose `Origin` names another site is refused (403)
//! unless that site is allowed: the server's own origin (the `Origin` names the request's `Host`),
//! the origin of `public_url`, and `realtime.allowed_origins` (`"*"` allows every origin). A client
//! that sends no `Origin` is not a browser page and is let through (its credentials are its own).

use axum::http::{header, HeaderMap};

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Allowed origins, lower case, without a trailing slash (`https://vote.example.tv`).
    allowed: Vec<String>,
    any: bool,
}

impl OriginPolicy {
    /// `allowed_origins` from the configuration, and `public_url` (its origin is allowed).
    pub fn new(allowed_origins: &[String], public_url: &str) -> Self {
        let mut allowed: Vec<String> = allowed_origins
            .iter()
            .filter(|o| o.as_str() != "*")
            .map(|o| normalize(o))
            .collect();
        if let Some(origin) = origin_of(public_url) {
            allowed.push(origin);
        }
        Self {
            allowed,
            any: allowed_origins.iter().any(|o| o == "*"),
        }
    }

    /// `Err` with the refused origin when a browser page of another site asks.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = normalize(origin.to_str().unwrap_or_default());
        if self.any || self.allowed.contains(&origin) {
            return Ok(());
        }
        // The site's own origin: the host the browser asked for, as the request's Host or, behind
        // a proxy that rewrites Host, as the X-Forwarded-Host it sets (a page cannot set either
        // on a WebSocket handshake).
        let authority = origin.split_once("://").map(|(_, a)| a);
        let asked_for = [header::HOST.as_str(), "x-forwarded-host"]
            .into_iter()
            .filter_map(|h| {
                let value = headers.get(h)?.to_str().ok()?;
                Some(without_default_port(
                    &value.split(',').next()?.trim().to_ascii_lowercase(),
                ))
            });
        for host in asked_for {
            if authority == Some(host.as_str()) {
                return Ok(());
            }
        }
        Err(origin)
    }
}

/// Lower case, no trailing slash, no default port (`https://x:443` is `https://x`).
fn normalize(origin: &str) -> String {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    match origin.split_once("://") {
        Some((scheme, authority)) => format!("{scheme}://{}", without_default_port(authority)),
        None => origin,
    }
}

/// `host:80` and `host:443` are `host` (an Origin leaves its scheme's default port out).
fn without_default_port(authority: &str) -> String {
    authority
        .strip_suffix(":80")
        .or_else(|| authority.strip_suffix(":443"))
        .unwrap_or(authority)
        .to_owned()
}

/// `scheme://authority` of a URL (`https://vote.example.tv/x` → `https://vote.example.tv`).
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some(normalize(&format!("{scheme}://{authority}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn own_origin_public_url_and_the_list_are_allowed_and_other_sites_refused() {
        let policy = OriginPolicy::new(
            &["https://Partner.example.com/".into()],
            "https://vote.example.tv/p",
        );
        let host = "crowdtick.internal:8080";
        assert!(policy.check(&headers(None, host)).is_ok());
        assert!(policy
            .check(&headers(Some("http://crowdtick.internal:8080"), host))
            .is_ok());
        assert!(policy
            .check(&headers(Some("https://vote.example.tv"), host))
            .is_ok());
        assert!(policy
            .check(&headers(Some("https://partner.example.com"), host))
            .is_ok());
        assert_eq!(
            policy.check(&headers(Some("https://evil.example"), host)),
            Err("https://evil.example".to_owned())
        );
        // The same host on another port is another origin.
        assert!(policy
            .check(&headers(Some("http://crowdtick.internal:9090"), host))
            .is_err());
        // Default ports are the same origin; a proxy's X-Forwarded-Host names the site too.
        assert!(policy
            .check(&headers(
                Some("https://crowdtick.internal"),
                "crowdtick.internal:443"
            ))
            .is_ok());
        assert!(OriginPolicy::new(&[], "https://vote.example.tv:443/")
            .check(&headers(Some("https://vote.example.tv"), host))
            .is_ok());
        let mut proxied = headers(Some("https://vote.example.tv"), "realtime:8080");
        proxied.insert("x-forwarded-host", "vote.example.tv".parse().unwrap());
        assert!(OriginPolicy::new(&[], "").check(&proxied).is_ok());
        assert!(OriginPolicy::new(&["*".into()], "")
            .check(&headers(Some("https://evil.example"), host))
            .is_ok());
    }
}
