//! Giving the allocator's free memory back to the system once a burst is over. An allocator keeps
//! what a thread frees for its next allocations: after a burst (a million votes a second in
//! batches of 10,000: request bodies, fetch buffers, a snapshot's buffers) the holes between live
//! blocks stay resident. With glibc's malloc that was about 6 bytes a voter at ten million voters,
//! a seventh of the node (BENCHMARKS.md, "2026-12-05 (seventh session)"). [`trim`] purges every
//! arena of jemalloc, the `crowdtick` binary's allocator (`src/main.rs`), and returns every free
//! page of glibc's arenas (`malloc_trim`), which the C libraries linked in (librdkafka) and a
//! process without jemalloc (a test binary's own nodes) allocate from. A node runs
//! [`trim_when_quiet`] in the background, which trims once after each busy spell, when the
//! process has gone quiet: never while it uses more than a tenth of a core (under load the memory
//! would be used again at once, and a trim holds each arena's lock while it walks the free
//! blocks: glibc's took 8–13 ms after bursts of ten and twenty million votes).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::metrics::{counters, register};
use storage::shutdown::Shutdown;

/// How often the node looks whether it has gone quiet.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The process is quiet when it used at most this share of one core since the last look.
const QUIET_CPU_SHARE: f64 = 0.10;

/// When to trim: once after each busy spell, at the first quiet look (pure; [`trim_when_quiet`]
/// feeds it the process's CPU).
#[derive(Debug)]
pub struct TrimPolicy {
    /// A look found the process busy since the last trim (a start counts as busy: its
    /// allocations).
    busy_since_trim: bool,
}

impl Default for TrimPolicy {
    fn default() -> Self {
        Self {
            busy_since_trim: true,
        }
    }
}

impl TrimPolicy {
    /// One look: the share of one core the process used since the last; whether to trim now.
    pub fn look(&mut self, cpu_share: f64) -> bool {
        if cpu_share > QUIET_CPU_SHARE {
            self.busy_since_trim = true;
            return false;
        }
        std::mem::replace(&mut self.busy_since_trim, false)
    }
}

/// The trims' counters (`crowdtick_memory_*`).
#[derive(Debug, Default)]
pub struct MemoryMetrics {
    /// Trims run.
    pub trims: AtomicU64,
    /// Resident bytes the trims gave back (what the process's resident size fell by across each).
    pub trimmed_bytes: AtomicU64,
}

impl MemoryMetrics {
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        register(registry, self.clone());
    }
}

impl Collector for MemoryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        counters(
            &mut encoder,
            &[
                (
                    "crowdtick_memory_trims",
                    "Times the node gave the allocator's free memory back to the system (once after each busy spell, when it went quiet).",
                    &self.trims,
                ),
                (
                    "crowdtick_memory_trimmed_bytes",
                    "Resident bytes those trims gave back (what the resident size fell by across each).",
                    &self.trimmed_bytes,
                ),
            ],
        )
    }
}

/// Whether this build can trim: on Linux with glibc only (elsewhere [`trim_when_quiet`] returns
/// at once and the counters stay 0).
pub const CAN_TRIM: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// jemalloc's name for every arena at once (`MALLCTL_ARENAS_ALL`), in `arena.<i>.purge`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";

/// Returns the free pages of the allocators' arenas to the system (jemalloc's and glibc's; not
/// what jemalloc's per-thread caches hold); what the process's resident size fell by across it,
/// in bytes (0 where neither can be asked).
pub fn trim() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let before = crate::metrics::resident_memory_bytes();
        if !purge_jemalloc() {
            tracing::debug!("jemalloc did not purge its arenas");
        }
        // SAFETY: `malloc_trim` only releases free memory of glibc's own arenas, under each
        // arena's lock; it touches no memory a caller holds.
        unsafe { libc::malloc_trim(0) };
        before.saturating_sub(crate::metrics::resident_memory_bytes())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

/// Purges the unused dirty pages of every jemalloc arena; whether jemalloc did. (In a process
/// whose global allocator is not jemalloc, such as a test binary, jemalloc's arenas hold only
/// what was asked of jemalloc directly.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn purge_jemalloc() -> bool {
    // SAFETY: the name is NUL-terminated (a `c""` literal); `arena.<i>.purge` reads and writes
    // nothing (every pointer null, length 0) and only returns pages no allocation holds. A
    // failure leaves the memory where it was.
    let failed = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    failed == 0
}

/// The CPU time this process has used (user and system, every thread).
fn process_cpu_time() -> Duration {
    // SAFETY: `rusage` is plain data (integers and `timeval`s), valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `getrusage` writes only the struct it is given, which outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The share of one core that `cpu` of CPU time over `wall` of wall-clock time is.
fn cpu_share(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64().max(1e-3)
}

/// Looks every [`LOOK_EVERY`] until `shutdown`, and trims as [`TrimPolicy`] says, on a blocking
/// thread (it holds each arena's lock while it walks its free blocks: never on a worker of the
/// runtime).
pub async fn trim_when_quiet(metrics: Arc<MemoryMetrics>, mut shutdown: Shutdown) {
    if !CAN_TRIM {
        return;
    }
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut policy = TrimPolicy::default();
    let (mut cpu_before, mut looked) = (process_cpu_time(), Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.signalled() => return,
        }
        let (cpu, now) = (process_cpu_time(), Instant::now());
        let share = cpu_share(cpu.saturating_sub(cpu_before), now.duration_since(looked));
        (cpu_before, looked) = (cpu, now);
        if !policy.look(share) {
            continue;
        }
        let Ok(returned) = tokio::task::spawn_blocking(trim).await else {
            return;
        };
        metrics.trims.fetch_add(1, Relaxed);
        metrics.trimmed_bytes.fetch_add(returned, Relaxed);
        tracing::debug!(
            returned,
            took_us = now.elapsed().as_micros() as u64,
            "gave the allocator's free memory back"
        );
        // The trim's own CPU is not the node's work.
        (cpu_before, looked) = (process_cpu_time(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trim tests measure the whole process's resident size across a trim, and each trim
    /// gives back every arena's holes: run side by side, one would take the other's.
    static ONE_TRIM_TEST_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

    #[test]
    fn trims_once_after_each_busy_spell_never_while_busy() {
        let mut policy = TrimPolicy::default();
        // A start is a busy spell: the first quiet look trims, the next ones do not.
        assert!(policy.look(0.01));
        assert!(!policy.look(0.0));
        // Busy: no trim, however long.
        for _ in 0..10 {
            assert!(!policy.look(1.6));
        }
        // Quiet again: one trim, then none until the next spell.
        assert!(policy.look(0.05));
        assert!(!policy.look(0.05));
        // The bound: a look over a tenth of a core is busy, a tenth is quiet.
        assert!(!policy.look(0.11));
        assert!(policy.look(0.10));
    }

    #[test]
    fn the_process_cpu_time_counts_a_busy_thread() {
        // Spin until the process has used 100 ms more CPU (however busy the machine is), then
        // check the share against the cores there are: a unit off either way fails one of them.
        let before = process_cpu_time();
        let began = Instant::now();
        let mut spins = 0u64;
        while process_cpu_time() - before < Duration::from_millis(100) {
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "20 s of spinning did not show as 100 ms of CPU"
            );
            spins = std::hint::black_box(spins + 1);
        }
        let share = cpu_share(process_cpu_time() - before, began.elapsed());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(share > 0.0 && share <= cores + 0.5, "{share} of a core");
        let tenth = cpu_share(Duration::from_millis(200), Duration::from_secs(2));
        assert!((tenth - 0.1).abs() < 1e-9, "{tenth}");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_back_the_holes_a_burst_left() {
        let _alone = ONE_TRIM_TEST_AT_A_TIME.lock();
        // On a thread of its own (an arena of its own, as a runtime's worker has while there
        // are few threads): 64 MiB in blocks of 32 KiB (below glibc's mmap threshold), every
        // other one freed. The holes lie between live blocks, so glibc keeps them resident
        // until trimmed.
        let returned = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..2048).map(|_| vec![1u8; 32 << 10]).collect();
            let kept: Vec<Vec<u8>> = blocks
                .drain(..)
                .enumerate()
                .filter_map(|(i, b)| (i % 2 == 0).then_some(b))
                .collect();
            let returned = trim();
            assert!(kept.iter().all(|b| b[0] == 1), "the live blocks are intact");
            returned
        })
        .join()
        .unwrap();
        // 32 MiB were freed in 1,024 holes, about 28 MiB of them whole pages; other tests of
        // this binary may touch memory meanwhile (the listener's touch up to 32 MiB).
        assert!(returned >= 8 << 20, "gave back {returned} bytes");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_purges_what_a_burst_freed_in_jemalloc() {
        let _alone = ONE_TRIM_TEST_AT_A_TIME.lock();
        // The binary's allocator, asked directly (this test binary allocates from glibc): 64 MiB
        // in blocks of 32 KiB, written, every other one freed. jemalloc keeps the freed pages
        // dirty for its decay time (10 s); the trim's purge returns them at once.
        const BLOCK: usize = 32 << 10;
        let returned = std::thread::spawn(|| {
            // SAFETY: each block is BLOCK bytes from jemalloc's `malloc`, written within its
            // bounds and freed once by jemalloc's `free`.
            unsafe {
                let blocks: Vec<*mut u8> = (0..2048)
                    .map(|_| {
                        let block = tikv_jemalloc_sys::malloc(BLOCK).cast::<u8>();
                        assert!(!block.is_null());
                        block.write_bytes(1, BLOCK);
                        block
                    })
                    .collect();
                for &block in blocks.iter().skip(1).step_by(2) {
                    tikv_jemalloc_sys::free(block.cast());
                }
                let returned = trim();
                assert!(purge_jemalloc(), "jemalloc refused arena.4096.purge");
                for &block in blocks.iter().step_by(2) {
                    assert_eq!(*block.add(BLOCK - 1), 1, "a live block was touched");
                    tikv_jemalloc_sys::free(block.cast());
                }
                returned
            }
        })
        .join()
        .unwrap();
        assert!(returned >= 8 << 20, "gave back {returned} bytes");
    }
}
