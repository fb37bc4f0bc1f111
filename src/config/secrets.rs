//! The configuration with its secrets hidden, as `crowdtick config` prints it unless asked for
//! them (`--show-secrets`): a terminal, a ticket or a CI log that shows the configuration does not
//! carry an operator key, an aggregator's key, the voter-token secret or a password.
//!
//! Hidden: every operator key; every aggregator's key; `ingest.voter_tokens.hmac_secret`; the
//! password of `postgres.url`, `redis.url` and `schema_registry.url` (in the URL's user
//! information, a `password=` query parameter, or a `password=` word of a key=value connection
//! string); `kafka.settings` whose name says password, secret, a private key or OAuth's config.
//! An empty setting stays empty, so the output still says what is not set.

use super::Config;

/// What a hidden secret is printed as.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// This configuration with every secret replaced by [`REDACTED`] (see the module docs).
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for key in &mut shown.operator_keys {
            *key = REDACTED.into();
        }
        for aggregator in &mut shown.ingest.aggregators {
            aggregator.key = REDACTED.into();
        }
        hide(&mut shown.ingest.voter_tokens.hmac_secret);
        for url in [
            &mut shown.postgres.url,
            &mut shown.redis.url,
            &mut shown.schema_registry.url,
        ] {
            *url = without_passwords(url);
        }
        for (name, value) in &mut shown.kafka.settings {
            if is_secret_kafka_setting(name) {
                hide(value);
            }
        }
        shown
    }
}

fn hide(secret: &mut String) {
    if !secret.is_empty() {
        *secret = REDACTED.into();
    }
}

/// librdkafka's properties that hold a secret: `sasl.password`, `ssl.key.password`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`,
/// `sasl.oauthbearer.config` (which may carry a client secret), and any other with such a name.
fn is_secret_kafka_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "key.pem", "oauthbearer.config"]
        .iter()
        .any(|part| name.contains(part))
}

/// `urls` (one, or several separated by commas) with each password replaced.
fn without_passwords(urls: &str) -> String {
    urls.split(',')
        .map(|url| match url.find("://") {
            Some(scheme_end) => url_without_password(url, scheme_end + 3),
            None => words_without_password(url),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL whose authority starts at `start`: the password of its user information and of a
/// `password` or `sslpassword` query parameter replaced.
fn url_without_password(url: &str, start: usize) -> String {
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let mut shown = String::with_capacity(url.len());
    match url[start..end].rfind('@') {
        Some(at) => {
            let user_info = &url[start..start + at];
            shown.push_str(&url[..start]);
            match user_info.split_once(':') {
                Some((user, _password)) => {
                    shown.push_str(user);
                    shown.push(':');
                    shown.push_str(REDACTED);
                }
                None => shown.push_str(user_info),
            }
            shown.push_str(&url[start + at..end]);
        }
        None => shown.push_str(&url[..end]),
    }
    let rest = &url[end..];
    let Some((path, query_and_fragment)) = rest.split_once('?') else {
        shown.push_str(rest);
        return shown;
    };
    let (query, fragment) = match query_and_fragment.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query_and_fragment, None),
    };
    shown.push_str(path);
    shown.push('?');
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if is_password_name(name) => format!("{name}={REDACTED}"),
            _ => param.to_owned(),
        })
        .collect();
    shown.push_str(&params.join("&"));
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    shown
}

/// A key=value connection string (`host=db user=crowdtick password=...`) with its password words
/// replaced.
fn words_without_password(conninfo: &str) -> String {
    conninfo
        .split(' ')
        .map(|word| match word.split_once('=') {
            Some((name, _)) if is_password_name(name) => format!("{name}={REDACTED}"),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_password_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("sslpassword")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_everything_but_their_passwords() {
        for (given, shown) in [
            ("", ""),
            ("postgres://crowdtick@db:5432/crowdtick", "postgres://crowdtick@db:5432/crowdtick"),
            (
                "postgres://crowdtick:s3cr:et@db:5432/crowdtick?sslmode=require",
                "postgres://crowdtick:<redacted>@db:5432/crowdtick?sslmode=require",
            ),
            ("redis://:hunter2@cache:6379/0", "redis://:<redacted>@cache:6379/0"),
            ("rediss://cache:6379", "rediss://cache:6379"),
            (
                "postgres://db/crowdtick?user=ct&password=hunter2&sslmode=require#x",
                "postgres://db/crowdtick?user=ct&password=<redacted>&sslmode=require#x",
            ),
            (
                "http://reg:pw@registry-a:8081,http://registry-b:8081?sslpassword=pw",
                "http://reg:<redacted>@registry-a:8081,http://registry-b:8081?sslpassword=<redacted>",
            ),
            (
                "host=db user=crowdtick password=hunter2 dbname=crowdtick",
                "host=db user=crowdtick password=<redacted> dbname=crowdtick",
            ),
            // An '@' in the path is not user information.
            ("http://registry:8081/a@b", "http://registry:8081/a@b"),
        ] {
            assert_eq!(without_passwords(given), shown, "{given}");
        }
    }

    #[test]
    fn every_secret_is_hidden_and_every_other_setting_kept() {
        let mut config = Config {
            operator_keys: vec!["operator-key-one".into(), "operator-key-two".into()],
            ..Config::default()
        };
        config.ingest.voter_tokens.hmac_secret = "a-voter-token-secret-of-32-bytes!".into();
        config.postgres.url = "postgres://ct:pg-password@db/ct".into();
        config.redis.url = "redis://:redis-password@cache:6379".into();
        config.schema_registry.url = "https://user:registry-password@registry:8081".into();
        for (name, value) in [
            ("sasl.password", "kafka-password"),
            ("SSL.KEY.PASSWORD", "key-password"),
            ("sasl.oauthbearer.client.secret", "oauth-secret"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            (
                "sasl.oauthbearer.config",
                "clientSecret=oauth-config-secret",
            ),
            ("linger.ms", "7"),
            ("sasl.username", "crowdtick"),
        ] {
            config.kafka.settings.insert(name.into(), value.into());
        }
        let printed = toml::to_string(&config.redacted()).unwrap();
        let shown = config.redacted();
        for secret in [
            "operator-key-one",
            "operator-key-two",
            super::super::DEV_AGGREGATOR_KEY,
            "a-voter-token-secret",
            "pg-password",
            "redis-password",
            "registry-password",
            "kafka-password",
            "key-password",
            "oauth-secret",
            "PRIVATE KEY",
            "oauth-config-secret",
        ] {
            assert!(!printed.contains(secret), "{secret} is printed:\n{printed}");
        }
        assert_eq!(shown.operator_keys, [REDACTED, REDACTED]);
        assert_eq!(
            shown.ingest.aggregators.len(),
            config.ingest.aggregators.len()
        );
        assert_eq!(shown.kafka.settings["linger.ms"], "7");
        assert_eq!(shown.kafka.settings["sasl.username"], "crowdtick");
        // Everything else as it was.
        let mut restored = shown.clone();
        restored.operator_keys = config.operator_keys.clone();
        restored.ingest.aggregators = config.ingest.aggregators.clone();
        restored.ingest.voter_tokens.hmac_secret = config.ingest.voter_tokens.hmac_secret.clone();
        restored.postgres.url = config.postgres.url.clone();
        restored.redis.url = config.redis.url.clone();
        restored.schema_registry.url = config.schema_registry.url.clone();
        restored.kafka.settings = config.kafka.settings.clone();
        assert_eq!(restored, config);
    }

    #[test]
    fn settings_that_are_not_set_stay_empty() {
        let shown = Config::default().redacted();
        assert_eq!(shown.ingest.voter_tokens.hmac_secret, "");
        assert_eq!(shown.postgres.url, "");
        assert_eq!(shown.redis.url, "");
    }
}
