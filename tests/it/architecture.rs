//! ARCHITECTURE.md stays true to the tree: every file it names exists, and it stands on its own
//! (no reference outside the repository).

use std::path::Path;

/// Backticked names in `text` that look like files of this repository (a directory and an
/// extension), e.g. `ingest/src/routes.rs`.
fn named_files(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.contains('/')
                && !s.contains(char::is_whitespace)
                && !s.starts_with('/')
                && !s.contains("://")
                && Path::new(s).extension().is_some_and(|e| {
                    e.len() <= 5
                        && e.to_str()
                            .is_some_and(|e| e.chars().all(|c| c.is_ascii_alphanumeric()))
                })
        })
        .collect()
}

#[test]
fn every_file_architecture_names_exists_and_nothing_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let files = named_files(&text);
    assert!(
        files.len() > 50,
        "the walk names the files it passes through: {files:?}"
    );
    // `data/…` is the server's data directory, made at run time.
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !f.starts_with("data/") && !root.join(f).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names files that do not exist: {missing:?}"
    );
    assert!(
        !text.contains("../"),
        "ARCHITECTURE.md stands on its own: no reference outside the repository"
    );
}

#[test]
fn file_names_are_found_in_backticks_only() {
    assert_eq!(
        named_files("a `ingest/src/routes.rs` b `Ingest::submit` c `docs/API.md`, `http://x/y.rs` `/etc/x.conf`"),
        ["ingest/src/routes.rs", "docs/API.md"]
    );
}
