//! Connection strings with their passwords hidden, for what CrowdTick prints (error messages,
//! logs, `crowdtick config`). Each is read as the client that connects with it reads it, so a
//! password the client would use is never printed:
//! - [`postgres()`]: tokio-postgres's URL (the user information runs to the first `@`, a
//!   `password` query parameter) or its key=value words (quoted values, backslash escapes);
//! - [`redis()`]: the redis crate's URL (the user information of its authority, a `pass` query
//!   parameter of a Unix socket's URL);
//! - [`registry()`]: the schema registry's URLs, separated by commas.
//!
//! An empty password stays empty; everything else is printed as given.

/// What a hidden secret is printed as.
pub const REDACTED: &str = "<redacted>";

/// A PostgreSQL connection string (`postgres://` or `postgresql://` URL, or key=value words)
/// with its password hidden. Key=value words that tokio-postgres could not read are hidden whole.
pub fn postgres(conninfo: &str) -> String {
    let start = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|prefix| conninfo.starts_with(prefix))
        .map(str::len);
    match start {
        Some(start) => url(conninfo, start, UserInfo::ToFirstAt, &["password"]),
        None => key_value_words(conninfo).unwrap_or_else(|| REDACTED.to_owned()),
    }
}

/// A Redis URL (`redis://`, `rediss://`, `redis+unix://`, `unix://`) with its password hidden.
pub fn redis(url_text: &str) -> String {
    match url_text.find("://") {
        Some(scheme_end) => url(
            url_text,
            scheme_end + 3,
            UserInfo::InAuthority,
            &["pass", "password"],
        ),
        None => url_text.to_owned(),
    }
}

/// Schema registry URLs (one, or several separated by commas) with their passwords hidden.
pub fn registry(urls: &str) -> String {
    urls.split(',')
        .map(|one| match one.find("://") {
            Some(scheme_end) => url(one, scheme_end + 3, UserInfo::InAuthority, &["password"]),
            None => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Where a URL's user information ends.
#[derive(Clone, Copy, PartialEq)]
enum UserInfo {
    /// At the first `@` after the scheme, wherever it is (tokio-postgres); no fragment.
    ToFirstAt,
    /// At the last `@` of the authority, which ends at `/`, `?` or `#` (the `url` crate).
    InAuthority,
}

/// `text` (a URL whose authority starts at `start`) with the password of its user information
/// and the values of its `secret_params` query parameters hidden.
fn url(text: &str, start: usize, user_info: UserInfo, secret_params: &[&str]) -> String {
    let mut shown = String::with_capacity(text.len() + REDACTED.len());
    shown.push_str(&text[..start]);
    let mut rest = &text[start..];
    let at = match user_info {
        UserInfo::ToFirstAt => rest.find('@'),
        UserInfo::InAuthority => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            rest[..end].rfind('@')
        }
    };
    if let Some(at) = at {
        let (info, after) = rest.split_at(at);
        match info.split_once(':') {
            Some((user, password)) if !password.is_empty() => {
                shown.push_str(user);
                shown.push(':');
                shown.push_str(REDACTED);
            }
            _ => shown.push_str(info),
        }
        rest = after;
    }
    let Some((before, query)) = rest.split_once('?') else {
        shown.push_str(rest);
        return shown;
    };
    shown.push_str(before);
    shown.push('?');
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) if user_info == UserInfo::InAuthority => (query, Some(fragment)),
        _ => (query, None),
    };
    for (i, param) in query.split('&').enumerate() {
        if i > 0 {
            shown.push('&');
        }
        match param.split_once('=') {
            Some((name, value))
                if !value.is_empty() && secret_params.iter().any(|s| decoded_is(name, s)) =>
            {
                shown.push_str(name);
                shown.push('=');
                shown.push_str(REDACTED);
            }
            _ => shown.push_str(param),
        }
    }
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    shown
}

/// Whether `name`, percent-decoded, is `target` (ASCII case ignored).
fn decoded_is(name: &str, target: &str) -> bool {
    let bytes = name.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                decoded.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.eq_ignore_ascii_case(target.as_bytes())
}

/// tokio-postgres's key=value words with each `password` value hidden; None when they are not
/// words it reads (then nothing of them is printed).
fn key_value_words(conninfo: &str) -> Option<String> {
    let mut chars = conninfo.char_indices().peekable();
    let mut hidden = Vec::new();
    let skip_whitespace = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_whitespace(&mut chars);
        let Some(&(key_start, _)) = chars.peek() else {
            break;
        };
        while chars
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key_end = chars.peek().map_or(conninfo.len(), |&(i, _)| i);
        skip_whitespace(&mut chars);
        chars.next_if(|&(_, c)| c == '=')?;
        skip_whitespace(&mut chars);
        let value_start = chars.peek().map_or(conninfo.len(), |&(i, _)| i);
        let quoted = chars.next_if(|&(_, c)| c == '\'').is_some();
        let mut closed = !quoted;
        let mut length = 0;
        while let Some(&(_, c)) = chars.peek() {
            if quoted && c == '\'' {
                chars.next();
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '\\' {
                chars.next();
            }
            length += 1;
        }
        if !closed || (!quoted && length == 0) || key_start == key_end {
            return None;
        }
        let value_end = chars.peek().map_or(conninfo.len(), |&(i, _)| i);
        if conninfo[key_start..key_end].eq_ignore_ascii_case("password") && length > 0 {
            hidden.push(value_start..value_end);
        }
    }
    let mut shown = String::with_capacity(conninfo.len());
    let mut from = 0;
    for span in hidden {
        shown.push_str(&conninfo[from..span.start]);
        shown.push_str(REDACTED);
        from = span.end;
    }
    shown.push_str(&conninfo[from..]);
    Some(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_passwords_are_hidden_where_tokio_postgres_reads_them() {
        for (given, shown) in [
            ("", ""),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://u:@h/db", "postgres://u:@h/db"),
            (
                "postgres://ct:s3cr:et@db:5432/ct?sslmode=require",
                "postgres://ct:<redacted>@db:5432/ct?sslmode=require",
            ),
            // The user information runs to the first '@', whatever comes before it.
            (
                "postgres://ct:pa/ss@db/ct",
                "postgres://ct:<redacted>@db/ct",
            ),
            (
                "postgresql://ct:p?a#s,s@db/ct",
                "postgresql://ct:<redacted>@db/ct",
            ),
            (
                "postgres://ct:pa,ss@db1,db2/ct",
                "postgres://ct:<redacted>@db1,db2/ct",
            ),
            (
                "postgres://db/ct?user=ct&password=hun#ter2&sslmode=require",
                "postgres://db/ct?user=ct&password=<redacted>&sslmode=require",
            ),
            (
                "postgres://db/ct?pass%77ord=x",
                "postgres://db/ct?pass%77ord=<redacted>",
            ),
            (
                "host=db user=ct password=hunter2 dbname=ct",
                "host=db user=ct password=<redacted> dbname=ct",
            ),
            (
                "host=db password = 'se cret\\' x' dbname=ct",
                "host=db password = <redacted> dbname=ct",
            ),
            ("host=db\tpassword=ab,cd", "host=db\tpassword=<redacted>"),
            (
                "application_name=https://svc password=hunter2",
                "application_name=https://svc password=<redacted>",
            ),
            // Words tokio-postgres cannot read are not printed at all.
            ("host=db password='unterminated", "<redacted>"),
            ("host=db password", "<redacted>"),
        ] {
            assert_eq!(postgres(given), shown, "{given}");
        }
    }

    #[test]
    fn redis_and_registry_passwords_are_hidden() {
        for (given, shown) in [
            (
                "redis://:hunter2@cache:6379/0",
                "redis://:<redacted>@cache:6379/0",
            ),
            ("rediss://u:p%40ss@cache", "rediss://u:<redacted>@cache"),
            ("redis://cache:6379", "redis://cache:6379"),
            (
                "unix:///run/redis.sock?db=1&pass=x",
                "unix:///run/redis.sock?db=1&pass=<redacted>",
            ),
            (
                "redis+unix:///s?pass=x#y",
                "redis+unix:///s?pass=<redacted>#y",
            ),
        ] {
            assert_eq!(redis(given), shown, "{given}");
        }
        assert_eq!(
            registry("http://reg:pw@registry-a:8081,https://registry-b:8081/a@b"),
            "http://reg:<redacted>@registry-a:8081,https://registry-b:8081/a@b"
        );
    }
}
