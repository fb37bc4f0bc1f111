//! The acknowledgement record (`--record FILE`): every acknowledged (and every uncertain)
//! submission, one short text line each, so the expected tallies can be computed exactly later
//! (`--verify-only --record FILE`, e.g. after a crash test killed and restarted the server).
//!
//! ```text
//! # crowdtick loadgen record v1
//! prefix lg3f9a2c
//! P <poll id> <options> <baseline counts, comma-separated>      one per poll, in poll-index order
//! A <seq> <poll index> <voter> <option> <vote>                 acknowledged
//! U <seq> <poll index> <voter> <option> <vote>                 uncertain (may or may not be in the log)
//! ```
//! The voter id sent was `<prefix>-<voter>` and the vote id `<prefix>-<vote>`. Lines of different
//! pairs interleave in completion order, but each pair's lines are in plan order (a pair belongs
//! to one lane, which handles its submissions one after the other).
//!
//! Writing is cheap: each lane formats its lines into its own buffer and appends the buffer to
//! the file (under a lock) when it holds 64 KiB or is older than 200 ms, so a record killed with
//! the process loses at most the last fraction of a second.

use crate::polls::PollInfo;
use crate::verify::{Expectation, Outcome};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HEADER: &str = "# crowdtick loadgen record v1";
const FLUSH_BYTES: usize = 64 * 1024;
const FLUSH_AGE: Duration = Duration::from_millis(200);

/// The record file, shared by the lanes.
#[derive(Debug)]
pub struct RecordSink {
    file: Mutex<File>,
    path: PathBuf,
}

impl RecordSink {
    /// Creates the file and writes the header.
    pub fn create(path: &Path, prefix: &str, polls: &[PollInfo]) -> anyhow::Result<Arc<Self>> {
        let mut file = File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot create the record {}: {e}", path.display()))?;
        let mut head = format!("{HEADER}\nprefix {prefix}\n");
        for p in polls {
            let baseline: Vec<String> = p.baseline.iter().map(u64::to_string).collect();
            head.push_str(&format!(
                "P {} {} {}\n",
                p.id,
                p.options,
                baseline.join(",")
            ));
        }
        file.write_all(head.as_bytes())?;
        Ok(Arc::new(Self {
            file: Mutex::new(file),
            path: path.to_owned(),
        }))
    }

    fn append(&self, bytes: &[u8]) {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(bytes) {
            eprintln!("error: writing the record {}: {e}", self.path.display());
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A lane's buffered writer to the shared record.
#[derive(Debug)]
pub struct LaneRecorder {
    sink: Arc<RecordSink>,
    buf: Vec<u8>,
    since: Instant,
}

impl LaneRecorder {
    pub fn new(sink: Arc<RecordSink>) -> Self {
        Self {
            sink,
            buf: Vec::with_capacity(FLUSH_BYTES + 256),
            since: Instant::now(),
        }
    }

    pub fn push(&mut self, line: &Line) {
        if self.buf.is_empty() {
            self.since = Instant::now();
        }
        line.write(&mut self.buf);
        if self.buf.len() >= FLUSH_BYTES || self.since.elapsed() >= FLUSH_AGE {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.sink.append(&self.buf);
            self.buf.clear();
        }
    }
}

impl Drop for LaneRecorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One submission line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub outcome: Outcome,
    pub seq: u64,
    pub poll: u32,
    pub voter: u32,
    pub option: u16,
    pub vote: u64,
}

impl Line {
    pub fn write(&self, out: &mut Vec<u8>) {
        let tag = match self.outcome {
            Outcome::Acked => 'A',
            Outcome::Uncertain => 'U',
        };
        let _ = writeln!(
            out,
            "{tag} {} {} {} {} {}",
            self.seq, self.poll, self.voter, self.option, self.vote
        );
    }

    pub fn parse(s: &str) -> Option<Line> {
        let mut it = s.split_ascii_whitespace();
        let outcome = match it.next()? {
            "A" => Outcome::Acked,
            "U" => Outcome::Uncertain,
            _ => return None,
        };
        let line = Line {
            outcome,
            seq: it.next()?.parse().ok()?,
            poll: it.next()?.parse().ok()?,
            voter: it.next()?.parse().ok()?,
            option: it.next()?.parse().ok()?,
            vote: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(line)
    }
}

/// A record read back.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub prefix: String,
    pub polls: Vec<PollInfo>,
    pub expectation: Expectation,
    pub acked: u64,
    pub uncertain: u64,
    /// A last line cut short (the writer was killed mid-write): ignored.
    pub truncated_tail: bool,
}

/// Reads a record and builds its expectation.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let f = File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read the record {}: {e}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut out = Loaded::default();
    let mut line = String::new();
    let mut n = 0usize;
    let mut bad_line: Option<(usize, String)> = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        n += 1;
        if let Some((at, text)) = bad_line.take() {
            anyhow::bail!("{}:{at}: malformed line {text:?}", path.display());
        }
        let complete = line.ends_with('\n');
        let l = line.trim_end();
        if n == 1 {
            anyhow::ensure!(
                l == HEADER,
                "{} is not a loadgen record (first line {l:?})",
                path.display()
            );
            continue;
        }
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(p) = l.strip_prefix("prefix ") {
            out.prefix = p.to_owned();
        } else if let Some(p) = l.strip_prefix("P ") {
            out.polls.push(parse_poll(p).ok_or_else(|| {
                anyhow::anyhow!("{}:{n}: malformed poll line {l:?}", path.display())
            })?);
        } else {
            match Line::parse(l).filter(|_| complete) {
                Some(x) => {
                    anyhow::ensure!(
                        (x.poll as usize) < out.polls.len(),
                        "{}:{n}: poll index {} without a P line",
                        path.display(),
                        x.poll
                    );
                    out.expectation
                        .observe(x.poll, x.voter, x.option, x.outcome);
                    match x.outcome {
                        Outcome::Acked => out.acked += 1,
                        Outcome::Uncertain => out.uncertain += 1,
                    }
                }
                // Tolerated only as the very last line.
                None => bad_line = Some((n, l.to_owned())),
            }
        }
    }
    out.truncated_tail = bad_line.is_some();
    Ok(out)
}

fn parse_poll(s: &str) -> Option<PollInfo> {
    let mut it = s.split_ascii_whitespace();
    let id = it.next()?.parse().ok()?;
    let options: u16 = it.next()?.parse().ok()?;
    let baseline = match it.next() {
        Some(b) => b
            .split(',')
            .map(|x| x.parse().ok())
            .collect::<Option<Vec<u64>>>()?,
        None => vec![0; options as usize],
    };
    Some(PollInfo {
        id,
        options,
        baseline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_roundtrip() {
        let l = Line {
            outcome: Outcome::Uncertain,
            seq: 12,
            poll: 1,
            voter: 99,
            option: 3,
            vote: 7,
        };
        let mut b = Vec::new();
        l.write(&mut b);
        assert_eq!(b, b"U 12 1 99 3 7\n");
        assert_eq!(Line::parse(std::str::from_utf8(&b).unwrap()), Some(l));
        assert_eq!(Line::parse("A 1 2 3"), None);
        assert_eq!(Line::parse("A 1 2 3 4 5 6"), None);
    }

    #[test]
    fn record_roundtrip_and_truncated_tail() {
        let dir = std::env::temp_dir().join(format!("lg-record-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.txt");
        let polls = vec![
            PollInfo {
                id: 10,
                options: 3,
                baseline: vec![1, 0, 0],
            },
            PollInfo {
                id: 11,
                options: 2,
                baseline: vec![0, 0],
            },
        ];
        let sink = RecordSink::create(&path, "lgx", &polls).unwrap();
        let mut rec = LaneRecorder::new(sink.clone());
        let mut push = |outcome, seq, poll, voter, option| {
            rec.push(&Line {
                outcome,
                seq,
                poll,
                voter,
                option,
                vote: seq,
            })
        };
        push(Outcome::Acked, 0, 0, 1, 2);
        push(Outcome::Acked, 1, 0, 1, 0);
        push(Outcome::Uncertain, 2, 1, 5, 1);
        push(Outcome::Acked, 3, 1, 6, 0);
        drop(rec);
        // A half-written last line, as after a kill.
        sink.append(b"A 4 0 9");
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.prefix, "lgx");
        assert_eq!(loaded.polls, polls);
        assert_eq!((loaded.acked, loaded.uncertain), (3, 1));
        assert!(loaded.truncated_tail);
        let t = loaded.expectation.tallies(&loaded.polls);
        assert_eq!(t[0].definite, vec![1, 0, 1]);
        assert_eq!(t[1].definite, vec![1, 0]);
        assert_eq!(t[1].at_most_one, vec![0b10]);
        // A malformed line in the middle is an error.
        sink.append(b"\nA 5 0 9 0 5\n");
        assert!(load(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
