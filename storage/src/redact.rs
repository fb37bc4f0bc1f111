//! Connection strings with their passwords hidden, for what CrowdTick prints (error messages,
//! logs, `crowdtick config`). Each is first read by the parser its client uses:
//! - [`postgres()`]: tokio-postgres's own parser. A URL's `password` query values are hidden
//!   (to the next `&`, whatever they hold), then its user information's password (from the first
//!   `:` to the last `@` before the host's end, so a mistyped `@` in it hides all of it); in
//!   key=value words, each `password` value. What is shown must read back, by tokio-postgres, with
//!   no password or [`REDACTED`] as it; a string that does not, or that tokio-postgres cannot
//!   read, is [`REDACTED`] whole.
//! - [`redis()`] and [`registry()`] (comma-separated URLs): the `url` crate (which the redis crate
//!   and reqwest use) finds the user information's password and the query's `pass` (Redis's, of a
//!   Unix socket) and `password` values. A URL it cannot read shows only its scheme and what
//!   follows the last `@` before any query (the host: the likely mistake), or is [`REDACTED`]
//!   whole without an `@`.
//!
//! An empty string stays empty; a string without a password is printed as given.

/// What a hidden secret is printed as.
pub const REDACTED: &str = "<redacted>";

/// A PostgreSQL connection string (a `postgres://` or `postgresql://` URL, or key=value words)
/// with its password hidden.
pub fn postgres(conninfo: &str) -> String {
    if conninfo.is_empty() {
        return String::new();
    }
    let Ok(config) = conninfo.parse::<tokio_postgres::Config>() else {
        return REDACTED.to_owned();
    };
    let start = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|prefix| conninfo.starts_with(prefix))
        .map(str::len);
    let shown = match start {
        Some(start) => Some(postgres_url(&without_password_params(conninfo), start)),
        None if config.get_password().is_none() => return conninfo.to_owned(),
        None => key_value_words(conninfo),
    };
    // What tokio-postgres reads from what is shown must be no password or the stand-in.
    let reads_as_hidden = |shown: &str| {
        shown.parse::<tokio_postgres::Config>().is_ok_and(|c| {
            c.get_password()
                .is_none_or(|p| p.is_empty() || p == REDACTED.as_bytes())
        })
    };
    match shown {
        Some(shown) if reads_as_hidden(&shown) => shown,
        _ => REDACTED.to_owned(),
    }
}

/// A Redis URL (`redis://`, `rediss://`, `redis+unix://`, `unix:`) with its password hidden.
pub fn redis(url: &str) -> String {
    with_url_crate(url, &["pass", "password"])
}

/// Schema registry URLs (one, or several separated by commas) with their passwords hidden.
pub fn registry(urls: &str) -> String {
    urls.split(',')
        .map(|one| with_url_crate(one.trim(), &["password"]))
        .collect::<Vec<_>>()
        .join(",")
}

/// Stands in for a secret inside a URL the `url` crate writes: letters it leaves as they are.
const MARK: &str = "CROWDTICKREDACTEDSECRET";

fn with_url_crate(text: &str, secret_params: &[&str]) -> String {
    if text.is_empty() {
        return String::new();
    }
    let Ok(mut url) = url::Url::parse(text) else {
        return unreadable(text);
    };
    let is_secret = |name: &str| secret_params.iter().any(|s| name.eq_ignore_ascii_case(s));
    let password = url.password().is_some_and(|p| !p.is_empty());
    let secret_query = url
        .query_pairs()
        .any(|(name, value)| !value.is_empty() && is_secret(&name));
    if !password && !secret_query {
        return text.to_owned();
    }
    if password && url.set_password(Some(MARK)).is_err() {
        return REDACTED.to_owned();
    }
    if secret_query {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = match is_secret(&name) && !value.is_empty() {
                    true => MARK.to_owned(),
                    false => value.into_owned(),
                };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.as_str().replace(MARK, REDACTED)
}

/// `text` with the value of each `password` query parameter (`?` or `&`, the name percent-decoded)
/// hidden up to the next `&`, wherever it is: a value holding `@` is hidden whole, though
/// tokio-postgres would read it as user information.
fn without_password_params(text: &str) -> String {
    let mut shown = String::with_capacity(text.len() + REDACTED.len());
    let mut from = 0;
    let mut at = 0;
    while let Some(i) = text[at..].find(['?', '&']).map(|i| at + i) {
        let name_start = i + 1;
        let name_end = text[name_start..]
            .find(['=', '&', '?'])
            .map_or(text.len(), |e| name_start + e);
        at = name_end;
        if !text[name_end..].starts_with('=')
            || !decoded_is(&text[name_start..name_end], "password")
        {
            continue;
        }
        let value_end = text[name_end..]
            .find('&')
            .map_or(text.len(), |e| name_end + e);
        if value_end > name_end + 1 {
            shown.push_str(&text[from..=name_end]);
            shown.push_str(REDACTED);
            from = value_end;
        }
        at = value_end;
    }
    shown.push_str(&text[from..]);
    shown
}

/// A `postgres://` URL whose user information starts at `start`: tokio-postgres takes it to the
/// first `@`; its password is hidden to the last `@` before the host's end, so that a password
/// holding an unencoded `@` is hidden whole.
fn postgres_url(text: &str, start: usize) -> String {
    let rest = &text[start..];
    let Some(first_at) = rest.find('@') else {
        return text.to_owned();
    };
    let host_end = rest[first_at..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| first_at + i);
    let at = rest[..host_end].rfind('@').unwrap_or(first_at);
    let (info, after) = rest.split_at(at);
    match info.split_once(':') {
        Some((user, password)) if !password.is_empty() => {
            format!("{}{user}:{REDACTED}{after}", &text[..start])
        }
        _ => text.to_owned(),
    }
}

/// A URL its client cannot read, for the message that says so: its scheme and what follows the
/// last `@` before any query or fragment (the host, the likely mistake), the rest hidden;
/// [`REDACTED`] whole without such an `@`.
fn unreadable(text: &str) -> String {
    let before_query = &text[..text.find(['?', '#']).unwrap_or(text.len())];
    match (before_query.find("://"), before_query.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!(
                "{}{REDACTED}{}",
                &text[..scheme_end + 3],
                &before_query[at..]
            )
        }
        _ => REDACTED.to_owned(),
    }
}

/// Whether `name`, percent-decoded, is `target` (ASCII case ignored).
fn decoded_is(name: &str, target: &str) -> bool {
    url::form_urlencoded::parse(name.as_bytes())
        .next()
        .is_some_and(|(decoded, _)| decoded.eq_ignore_ascii_case(target))
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
            ("host=h user=u", "host=h user=u"),
            (
                "postgres://ct:s3cr:et@db:5432/ct?sslmode=require",
                "postgres://ct:<redacted>@db:5432/ct?sslmode=require",
            ),
            // The user information runs to the first '@', whatever comes before it, and is
            // hidden to the last '@' before the host's end.
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
                "postgres://ct:pw12@ss@db/ct",
                "postgres://ct:<redacted>@db/ct",
            ),
            (
                "postgres://ct:pw@[::1]:5432/ct",
                "postgres://ct:<redacted>@[::1]:5432/ct",
            ),
            (
                "postgres://db/ct?user=ct&password=hun#ter2&sslmode=require",
                "postgres://db/ct?user=ct&password=<redacted>&sslmode=require",
            ),
            (
                "postgres://db/ct?pass%77ord=hunter2",
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
            // What tokio-postgres cannot read is not printed at all: a scheme it does not know
            // is read as key=value words, and refused.
            ("Postgres://ct:hunter2@db/ct?sslmode=require", "<redacted>"),
            ("host=db password='unterminated", "<redacted>"),
            ("host=db password", "<redacted>"),
        ] {
            assert_eq!(postgres(given), shown, "{given}");
        }
    }

    #[test]
    fn redis_and_registry_passwords_are_hidden_where_the_url_crate_reads_them() {
        for (given, shown) in [
            ("", ""),
            (
                "redis://:hunter2@cache:6379/0",
                "redis://:<redacted>@cache:6379/0",
            ),
            ("rediss://u:p%40ss@cache", "rediss://u:<redacted>@cache"),
            ("redis://cache:6379", "redis://cache:6379"),
            ("redis://u@cache:6379", "redis://u@cache:6379"),
            (
                "unix:///run/redis.sock?db=1&pass=x",
                "unix:///run/redis.sock?db=1&pass=<redacted>",
            ),
            (
                "unix:/run/redis.sock?pass=x",
                "unix:/run/redis.sock?pass=<redacted>",
            ),
            (
                "redis+unix:///s?pass=x#y",
                "redis+unix:///s?pass=<redacted>#y",
            ),
            // Not URLs the client reads: the host is shown, all before it hidden.
            ("redis://:pa/ss@cache", "redis://<redacted>@cache"),
            (
                "redis://:pw@cache:no-port?pass=x",
                "redis://<redacted>@cache:no-port",
            ),
            ("cache:6379?pass=x", "cache:6379?pass=<redacted>"),
        ] {
            assert_eq!(redis(given), shown, "{given}");
        }
        for (given, shown) in [
            (
                "http://reg:pw@registry-a:8081,https://registry-b:8081/a@b",
                "http://reg:<redacted>@registry-a:8081/,https://registry-b:8081/a@b",
            ),
            // The ways a browser (and reqwest) reads an http URL's user information.
            ("http:///u:pw@reg:8081", "http://u:<redacted>@reg:8081/"),
            ("https:\\\\u:pw@reg", "https://u:<redacted>@reg/"),
            ("http:u:pw@reg:8081", "http://u:<redacted>@reg:8081/"),
            ("http://u:p,w@reg", "<redacted>,<redacted>"),
            ("http://u:pw@reg:no-port", "http://<redacted>@reg:no-port"),
        ] {
            assert_eq!(registry(given), shown, "{given}");
        }
    }

    proptest::proptest! {
        /// Whatever a password holds, no form of connection string prints it (a password starts
        /// with Q, which nothing else in these strings holds, and is at least 6 characters).
        #[test]
        fn no_password_is_printed(core in "[a-z@:/?#&=,' %\\\\`]{5,12}") {
            let password = format!("Q{core}");
            let escaped = password.replace('\\', "\\\\").replace('\'', "\\'");
            for given in [
                format!("postgres://ct:{password}@db:5432/ct?sslmode=disable"),
                format!("postgresql://db/ct?user=ct&password={password}&sslmode=disable"),
                format!("host=db user=ct password='{escaped}' dbname=ct"),
            ] {
                let shown = postgres(&given);
                proptest::prop_assert!(!shown.contains('Q'), "{given} shown as {shown}");
            }
            for given in [
                format!("redis://:{password}@cache:6379/0"),
                format!("unix:///run/redis.sock?db=1&pass={password}"),
            ] {
                let shown = redis(&given);
                proptest::prop_assert!(!shown.contains('Q'), "{given} shown as {shown}");
            }
            let given = format!("https://user:{password}@registry:8081");
            let shown = registry(&given);
            proptest::prop_assert!(!shown.contains('Q'), "{given} shown as {shown}");
        }
    }
}
