//! The floor of a fan-out on this machine: what the kernel alone charges for one small write to
//! each of many loopback TCP sockets, with no runtime, no WebSocket and no feed. A plain thread
//! writes the same bytes to every socket once per round (as a realtime node writes a poll's frame
//! to each of its viewers) while another process (this one, run again), at nice 10,
//! reads them all (as the load generator's viewers do; two ends of 15,000 sockets do not fit in
//! one process's 20,000 files); the writer's CPU time per write is the figure.
//! `scripts/bench-fanout.sh` prints it beside the realtime node's cost per message (issue 11,
//! item 1).
//!
//! With `BATCH` above 0 the writes go through `io_uring` instead, `BATCH` sockets' sends in one
//! submission and one system call (each with `MSG_DONTWAIT`, so a full socket fails at once
//! rather than waiting in the kernel): what a fan-out that batched its sweep's writes could reach
//! below the floor of one `write` per viewer. The CPU counted is the process's, so any send the
//! kernel hands to an `io_uring` worker thread is counted too.
//!
//! ```sh
//! cargo run --release -p loadtest --example send_floor -- [SOCKETS] [ROUNDS] [BYTES] [BATCH]
//! ```
//!
//! Prints one line: `send_floor sockets=N writes=W bytes=B batch=K us_per_write=U
//! writes_per_core_sec=R short=S` (`short`: sends that did not take the whole frame; 0 in a run
//! that counts).

use anyhow::Context;
use io_uring::{opcode, types, IoUring};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The realtime node's default `realtime.socket_send_buffer_bytes`.
const SEND_BUFFER_BYTES: libc::c_int = 8192;
/// The load generator's viewers' receive buffer.
const RECV_BUFFER_BYTES: u32 = 16 << 10;
/// Loopback source addresses the readers spread over (127.0.0.2 onwards).
const SOURCES: u32 = 8;
/// The pause between rounds (100 ms: a poll's frame interval with a large audience before the
/// default became 200 ms; kept so the floor compares with earlier runs).
const ROUND_GAP: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("readers") {
        let (addr, sockets) = (args.nth(1), args.next());
        let (Some(addr), Some(sockets)) = (addr, sockets) else {
            anyhow::bail!("usage: send_floor readers ADDR SOCKETS");
        };
        readers(addr.parse()?, sockets.parse()?);
        return Ok(());
    }
    let mut arg = |default: usize| -> anyhow::Result<usize> {
        Ok(args
            .next()
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (sockets, rounds, bytes, batch) = (arg(15_000)?, arg(40)?, arg(400)?, arg(0)?);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut reader = Reader(
        std::process::Command::new(std::env::current_exe()?)
            .args(["readers", &addr.to_string(), &sockets.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    // Accepts without blocking, so readers that die while connecting end the run.
    listener.set_nonblocking(true)?;
    let mut writers = Vec::with_capacity(sockets);
    while writers.len() < sockets {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                small_send_buffer(&stream)?;
                writers.push(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = reader.0.try_wait()? {
                    anyhow::bail!(
                        "the readers exited ({status}) with {} of {sockets} connected",
                        writers.len()
                    );
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let frame = vec![b'x'; bytes];
    let mut ring = match batch {
        0 => None,
        n => Some(IoUring::new(n.next_power_of_two() as u32).context(
            "cannot set up io_uring (kernel.io_uring_disabled set, or BATCH above 32768?)",
        )?),
    };
    std::thread::sleep(Duration::from_millis(500));
    let (mut cpu, mut short) = (Duration::ZERO, 0);
    for _ in 0..rounds {
        let start = process_cpu();
        match &mut ring {
            None => {
                for w in &mut writers {
                    w.write_all(&frame)?;
                }
            }
            Some(ring) => {
                for some in writers.chunks(batch) {
                    short += send_batch(ring, some, &frame)?;
                }
            }
        }
        cpu += process_cpu() - start;
        std::thread::sleep(ROUND_GAP);
    }
    let writes = (sockets * rounds) as f64;
    println!(
        "send_floor sockets={sockets} writes={writes} bytes={bytes} batch={batch} us_per_write={:.2} writes_per_core_sec={:.0} short={short}",
        cpu.as_secs_f64() * 1e6 / writes,
        writes / cpu.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Sends `frame` to each of `writers` in one `io_uring` submission, waiting for every
/// completion; the sends that did not take the whole frame.
fn send_batch(ring: &mut IoUring, writers: &[TcpStream], frame: &[u8]) -> anyhow::Result<usize> {
    use std::os::fd::AsRawFd;
    {
        let mut queue = ring.submission();
        for w in writers {
            let send =
                opcode::Send::new(types::Fd(w.as_raw_fd()), frame.as_ptr(), frame.len() as u32)
                    .flags(libc::MSG_DONTWAIT)
                    .build();
            // SAFETY: the socket and the frame outlive the send: every completion is reaped below
            // before either can be dropped.
            unsafe { queue.push(&send) }.context("more sends than the ring holds")?;
        }
    }
    let submitted = ring.submit_and_wait(writers.len())?;
    let whole = frame.len() as i32;
    let (mut done, mut short) = (0, 0);
    for completion in ring.completion() {
        done += 1;
        short += usize::from(completion.result() != whole);
    }
    anyhow::ensure!(
        submitted == writers.len() && done == writers.len(),
        "{} sends, {submitted} submitted, {done} completed",
        writers.len()
    );
    Ok(short)
}

/// The readers' process, killed when the run ends (however it ends).
struct Reader(std::process::Child);

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects `sockets` readers and drains them until the writer kills this process.
fn readers(addr: SocketAddr, sockets: usize) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // SAFETY: setpriority takes plain integers; `who` 0 is the calling thread on Linux.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the readers");
    rt.block_on(async move {
        for i in 0..sockets {
            let source =
                Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i as u32 % SOURCES);
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            socket
                .bind(SocketAddr::new(source.into(), 0))
                .expect("a loopback source");
            let _ = socket.set_recv_buffer_size(RECV_BUFFER_BYTES);
            let mut stream = socket.connect(addr).await.expect("connect to the writer");
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
        std::future::pending::<()>().await
    });
}

fn small_send_buffer(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the option's value is a c_int on the stack that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&SEND_BUFFER_BYTES as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// This process's CPU time (one thread, and any `io_uring` workers the kernel starts for it).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass it.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
