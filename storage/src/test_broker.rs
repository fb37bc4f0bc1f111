//! A Kafka-protocol broker for tests: `tansu` on a free loopback port, in its own temporary
//! directory, killed on drop. Memory storage unless `TANSU_STORAGE` says otherwise (e.g.
//! `TANSU_STORAGE=sqlite://data/tansu.db`, relative to that directory). Used by this crate's
//! `KafkaLog` tests and by the root crate's distributed-mode tests. A missing `tansu` is a test
//! failure that says how to install it, never a silent skip.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL: &str = "cargo install --locked tansu --features dynostore,libsql";

pub struct TansuBroker {
    child: Child,
    addr: String,
    log: PathBuf,
    storage: String,
    _dir: tempfile::TempDir,
}

/// The `tansu` binary: on PATH or in ~/.cargo/bin.
pub fn tansu_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("tansu"));
    let in_cargo_home = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/tansu"))
        .into_iter();
    on_path.chain(in_cargo_home).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("tansu is not installed: the Kafka tests need a Kafka-protocol broker. Install it with `{INSTALL}` (about 10 minutes, once)")
    })
}

impl TansuBroker {
    /// Starts a broker and waits until it accepts connections (panics with its output otherwise).
    pub fn start() -> Self {
        let storage = std::env::var("TANSU_STORAGE").unwrap_or_else(|_| "memory://tansu/".into());
        Self::start_with(&storage)
    }

    /// A broker whose log survives [`restart`](Self::restart): tansu's SQLite storage.
    pub fn start_persistent() -> Self {
        Self::start_with("sqlite://data/tansu.db")
    }

    fn spawn(
        bin: &std::path::Path,
        dir: &std::path::Path,
        url: &str,
        storage: &str,
        log: &std::path::Path,
    ) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("tansu log file");
        Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    /// Kills the broker (SIGKILL): clients see it gone until [`restart`](Self::restart).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port and storage; waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://{}", self.addr);
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            self.child = Self::spawn(
                &tansu_binary(),
                self._dir.path(),
                &url,
                &self.storage,
                &self.log,
            );
            let attempt_end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < attempt_end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break; // the port may still be in TIME_WAIT: try again
                }
                if TcpStream::connect(&self.addr).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(
                Instant::now() < give_up,
                "tansu did not restart on {}:\n{}",
                self.addr,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_with(storage: &str) -> Self {
        let bin = tansu_binary();
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("tansu.log");
        std::fs::create_dir_all(dir.path().join("data")).expect("tansu data directory");
        let mut dir = Some(dir);
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let url = format!("tcp://127.0.0.1:{port}");
            let child = Self::spawn(&bin, dir.as_ref().unwrap().path(), &url, storage, &log);
            let mut broker = TansuBroker {
                child,
                addr: format!("127.0.0.1:{port}"),
                log: log.clone(),
                storage: storage.to_owned(),
                _dir: dir.take().unwrap(),
            };
            let give_up = Instant::now() + Duration::from_secs(20);
            while Instant::now() < give_up {
                if let Ok(Some(_)) = broker.child.try_wait() {
                    break; // exited: most likely the port was taken meanwhile; try another
                }
                if TcpStream::connect(&broker.addr).is_ok() {
                    return broker;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("tansu did not start:\n{}", broker.output());
            let _ = broker.child.kill();
            let _ = broker.child.wait();
            dir = Some(std::mem::replace(
                &mut broker._dir,
                tempfile::tempdir().expect("temporary directory"),
            ));
        }
        panic!("tansu ({}) did not start on a loopback port", bin.display());
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What the broker printed (for failure messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
