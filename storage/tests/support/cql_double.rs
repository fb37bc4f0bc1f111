//! Starts `cql_double.py` (beside this file), a test double of a ScyllaDB node, with the
//! machine's python3 on a free loopback port; stops it on drop. Included by path where a test
//! needs it (`storage/src/scylla.rs`, `tests/it/distributed.rs`).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

pub struct CqlDouble {
    child: Child,
    pub port: u16,
}

impl CqlDouble {
    pub fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/cql_double.py");
        let script = if std::path::Path::new(script).exists() {
            script.to_string()
        } else {
            // Included from the root crate: the script is in the storage crate.
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/storage/tests/support/cql_double.py"
            )
            .to_string()
        };
        let mut child = Command::new("python3")
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the CQL test double");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the CQL test double printed {line:?}"));
        Self { child, port }
    }

    /// `127.0.0.1:PORT`, as `scylla.hosts` takes it.
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for CqlDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
