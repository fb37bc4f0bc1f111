//! The configuration with its secrets hidden, as `crowdtick config` prints it unless asked for
//! them (`--show-secrets`): a terminal, a ticket or a CI log that shows the configuration does not
//! carry an operator key, an aggregator's key, the voter-token secret or a password.
//!
//! Hidden: every operator key and aggregator key but the development ones of the default
//! configuration (public, and worth seeing on a node that still runs with them);
//! `ingest.voter_tokens.hmac_secret`; the passwords of `postgres.url`, `redis.url` and
//! `schema_registry.url`, as their clients read them (`storage::redact`); `kafka.settings`
//! whose name says password, passphrase, secret, a private key or OAuth's config. An empty setting
//! stays empty, so the output still says what is not set. [`Config::validate`] refuses a secret
//! that is [`REDACTED`], so printed output fed back in fails at once instead of running with it.

use super::{Config, DEV_AGGREGATOR_KEY, DEV_OPERATOR_KEY};
pub use storage::redact::REDACTED;

impl Config {
    /// This configuration with every secret replaced by [`REDACTED`] (see the module docs).
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for key in &mut shown.operator_keys {
            if key != DEV_OPERATOR_KEY {
                hide(key);
            }
        }
        for aggregator in &mut shown.ingest.aggregators {
            if aggregator.key != DEV_AGGREGATOR_KEY {
                hide(&mut aggregator.key);
            }
        }
        hide(&mut shown.ingest.voter_tokens.hmac_secret);
        shown.postgres.url = storage::redact::postgres(&shown.postgres.url);
        shown.redis.url = storage::redact::redis(&shown.redis.url);
        shown.schema_registry.url = storage::redact::registry(&shown.schema_registry.url);
        for (name, value) in &mut shown.kafka.settings {
            if is_secret_kafka_setting(name) {
                hide(value);
            }
        }
        shown
    }

    /// The first secret setting whose value is [`REDACTED`], as printed output fed back in has.
    pub(super) fn redacted_secret(&self) -> Option<&'static str> {
        let is = |s: &String| s == REDACTED;
        if self.operator_keys.iter().any(is) {
            Some("operator_keys")
        } else if self.ingest.aggregators.iter().any(|a| is(&a.key)) {
            Some("ingest.aggregators")
        } else if is(&self.ingest.voter_tokens.hmac_secret) {
            Some("ingest.voter_tokens.hmac_secret")
        } else if self.kafka.settings.values().any(is) {
            Some("kafka.settings")
        } else {
            [
                &self.postgres.url,
                &self.redis.url,
                &self.schema_registry.url,
            ]
            .into_iter()
            .zip(["postgres.url", "redis.url", "schema_registry.url"])
            .find(|(url, _)| url.contains(REDACTED))
            .map(|(_, name)| name)
        }
    }
}

fn hide(secret: &mut String) {
    if !secret.is_empty() {
        *secret = REDACTED.into();
    }
}

/// librdkafka's properties that hold a secret: `sasl.password`, `ssl.key.password`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`,
/// `sasl.oauthbearer.assertion.private.key.passphrase`, `ssl.key.pem`, `sasl.oauthbearer.config`
/// (which may carry a client secret), and any other with such a name.
fn is_secret_kafka_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passphrase",
        "secret",
        "key.pem",
        "oauthbearer.config",
    ]
    .iter()
    .any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secrets() -> Config {
        let mut config = Config {
            operator_keys: vec!["operator-key-one".into(), "operator-key-two".into()],
            ..Config::default()
        };
        let mut sms = config.ingest.aggregators[0].clone();
        sms.name = "sms-uk".into();
        sms.key = "sms-uk-aggregator-key".into();
        config.ingest.aggregators.push(sms);
        config.ingest.voter_tokens.hmac_secret = "a-voter-token-secret-of-32-bytes!".into();
        config.postgres.url = "postgres://ct:pg-password@db/ct".into();
        config.redis.url = "redis://:redis-password@cache:6379".into();
        config.schema_registry.url = "https://user:registry-password@registry:8081".into();
        for (name, value) in [
            ("sasl.password", "kafka-password"),
            ("SSL.KEY.PASSWORD", "key-password"),
            ("sasl.oauthbearer.client.secret", "oauth-secret"),
            (
                "sasl.oauthbearer.assertion.private.key.passphrase",
                "passphrase-secret",
            ),
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
        config
    }

    #[test]
    fn every_secret_is_hidden_and_every_other_setting_kept() {
        let config = with_secrets();
        let shown = config.redacted();
        let printed = toml::to_string(&shown).unwrap();
        for secret in [
            "operator-key-one",
            "operator-key-two",
            "sms-uk-aggregator-key",
            "a-voter-token-secret",
            "pg-password",
            "redis-password",
            "registry-password",
            "kafka-password",
            "key-password",
            "oauth-secret",
            "passphrase-secret",
            "PRIVATE KEY",
            "oauth-config-secret",
        ] {
            assert!(!printed.contains(secret), "{secret} is printed:\n{printed}");
        }
        assert_eq!(shown.operator_keys, [REDACTED, REDACTED]);
        assert_eq!(shown.ingest.aggregators[1].key, REDACTED);
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
    fn development_keys_and_settings_not_set_are_shown_as_they_are() {
        let mut config = Config::default();
        config.operator_keys.push(String::new());
        let shown = config.redacted();
        assert_eq!(shown.operator_keys, [DEV_OPERATOR_KEY, ""]);
        assert_eq!(shown.ingest.aggregators[0].key, DEV_AGGREGATOR_KEY);
        assert_eq!(shown.ingest.voter_tokens.hmac_secret, "");
        assert_eq!(shown.postgres.url, "");
        assert_eq!(shown.redis.url, "");
    }

    #[test]
    fn printed_secrets_fed_back_in_are_refused() {
        assert_eq!(with_secrets().redacted_secret(), None);
        let shown = with_secrets().redacted();
        assert_eq!(shown.redacted_secret(), Some("operator_keys"));
        let error = shown.validate().unwrap_err().to_string();
        assert!(
            error.contains("operator_keys") && error.contains("--show-secrets"),
            "{error}"
        );
        let mut only_url = with_secrets();
        only_url.redis.url = shown.redis.url.clone();
        assert_eq!(only_url.redacted_secret(), Some("redis.url"));
    }
}
