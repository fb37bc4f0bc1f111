use super::*;

#[test]
fn printed_configuration_reads_back_as_the_same_configuration() {
    let mut config = Config::default();
    config
        .kafka
        .settings
        .insert("linger.ms".into(), "10".into());
    config.operator_keys = vec!["a \"quoted\" key".into()];
    let text = toml_of(&config);
    let back: Config = figment::Figment::from(
        <figment::providers::Toml as figment::providers::Format>::string(&text),
    )
    .extract()
    .unwrap();
    assert_eq!(back, config, "{text}");
}
