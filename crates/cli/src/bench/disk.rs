//! Whether the disk under a local PostgreSQL stalled while a case ran,
//! read from the kernel's block statistics
//! (`/sys/dev/block/<major>:<minor>/stat`, Linux 5.5 or later).
//!
//! Every acknowledged order waits for its commit's WAL flush, and the WAL
//! is flushed by one process at a time, so one slow flush holds every
//! buyer in flight at once. Printing the disk's longest stall next to a
//! case's figures tells a p99 set by the disk apart from one set by the
//! server.
//!
//! A sampling thread reads the counters every [`EVERY`]. A *stall* is a
//! stretch of samples in which the disk had requests in flight and
//! completed none: no read, write, discard or flush. It is measured from
//! the first sample that saw no progress to the last, so a sampler that
//! was itself kept waiting (the CPU busy) does not pass for a stalled disk,
//! and a stall is at most [`EVERY`] longer than reported. How long the
//! sampler was kept waiting is reported apart, as
//! [`DiskFigures::sampler_late_ms`].
//!
//! Before a measured run, the benches write out dirty pages
//! ([`checkpoint`]) and wait for a quiet disk ([`quiet_disk`]): commits
//! flushed one at a time until none has stalled for a few seconds, so
//! that a stall left by what ran just before (a dropped database's
//! discards above all) does not land in the figures.

use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How often the counters are read.
const EVERY: Duration = Duration::from_millis(2);
/// A stall at least this long is counted.
pub const STALL_MS: u64 = 20;

/// What the disk did while it was watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFigures {
    /// Flushes completed.
    pub flushes: u64,
    /// The longest stall, in milliseconds.
    pub longest_stall_ms: u64,
    /// Stalls of at least [`STALL_MS`].
    pub stalls: u64,
    /// The longest the sampler woke up after it was due, in milliseconds:
    /// how long a thread that asked for the CPU could wait for it.
    pub sampler_late_ms: u64,
}

/// A running watch; [`DiskWatch::finish`] stops it.
pub struct DiskWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<DiskFigures>>,
    thread: JoinHandle<()>,
}

impl DiskWatch {
    /// Starts watching the block device that holds `path`, if the kernel
    /// reports its flushes.
    pub fn start(path: &Path) -> Option<Self> {
        let stat = File::open(stat_file(path)?).ok()?;
        let first = Counters::read(&stat)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(DiskFigures::default()));
        let (stopping, seeing) = (stop.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("bench-disk-watch".into())
            .spawn(move || {
                let mut tracker = Tracker::new(first);
                while !stopping.load(Ordering::Relaxed) {
                    let due = Instant::now() + EVERY;
                    std::thread::sleep(EVERY);
                    let Some(now) = Counters::read(&stat) else {
                        break;
                    };
                    let at = Instant::now();
                    tracker.sample(now, at, at.saturating_duration_since(due));
                    if let Ok(mut seen) = seeing.lock() {
                        *seen = tracker.figures;
                    }
                }
            })
            .ok()?;
        Some(Self { stop, seen, thread })
    }

    /// What the watch has seen so far.
    pub fn seen(&self) -> DiskFigures {
        self.seen.lock().map(|s| *s).unwrap_or_default()
    }

    /// Stops the watch and returns what it saw.
    pub fn finish(self) -> DiskFigures {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.seen.clone();
        let _ = self.thread.join();
        seen.lock().map(|s| *s).unwrap_or_default()
    }
}

/// The wait for a quiet disk before a measured run ([`quiet_disk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    /// From the first probe to the start of the measured run.
    pub waited: Duration,
    /// Whether the last `--disk-quiet-secs` saw no slow flush (else the
    /// wait gave up after [`QUIET_AT_MOST`]).
    pub reached: bool,
    /// The slowest probe's flush, in milliseconds.
    pub slowest_ms: u64,
}

impl Quiet {
    /// One line for a run's output: whether the disk was quiet for
    /// `quiet_secs` before it, and how long that took.
    pub fn describe(&self, quiet_secs: u64) -> String {
        let waited = self.waited.as_secs_f64();
        if self.reached {
            format!(
                "disk quiet, {quiet_secs} s without a commit flush of {STALL_MS} ms or more \
                 (waited {waited:.1} s; slowest flush {} ms)",
                self.slowest_ms
            )
        } else {
            format!(
                "disk NOT quiet: no {quiet_secs} s without a commit flush of {STALL_MS} ms \
                 or more in {waited:.1} s (slowest flush {} ms); started anyway",
                self.slowest_ms
            )
        }
    }
}

impl DiskFigures {
    /// One line for a run's output: the flushes, the longest stall, and
    /// how long a thread waited for the CPU.
    pub fn describe(&self) -> String {
        format!(
            "{} flushes; longest stall {} ms ({} of {STALL_MS} ms or more); \
             a thread waited up to {} ms for the CPU",
            self.flushes, self.longest_stall_ms, self.stalls, self.sampler_late_ms
        )
    }
}

/// Writes every dirty page out now (a `CHECKPOINT`), so that it is not
/// written back while a run measures; skipped where the role
/// may not run one.
pub(crate) async fn checkpoint(db: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    match sqlx::query("CHECKPOINT").execute(db).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Ok(()),
        done => done.map(drop).context("could not run a checkpoint"),
    }
}

/// The longest [`quiet_disk`] waits.
pub const QUIET_AT_MOST: Duration = Duration::from_secs(30);

/// Commits one transaction after another, each flushing its commit record
/// as an order's or an append's does, until `quiet` has passed without
/// one taking [`STALL_MS`] or more, or [`QUIET_AT_MOST`] has passed. A
/// stalled flush right before a sale holds every buyer's first order, and
/// one such stall sets a short case's p99; this measures where the
/// commits will wait, on a server anywhere, and writes a few hundred WAL
/// records.
pub(crate) async fn quiet_disk(
    db: &mut sqlx::PgConnection,
    quiet: Duration,
) -> anyhow::Result<Quiet> {
    let began = Instant::now();
    let mut quiet_since = began;
    let mut slowest = Duration::ZERO;
    let stall = Duration::from_millis(STALL_MS);
    while !quiet.is_zero() {
        let now = Instant::now();
        if now.duration_since(quiet_since) >= quiet {
            break;
        }
        if now.duration_since(began) >= QUIET_AT_MOST {
            return Ok(Quiet {
                waited: now.duration_since(began),
                reached: false,
                slowest_ms: slowest.as_millis() as u64,
            });
        }
        let probe = Instant::now();
        let mut tx = sqlx::Connection::begin(&mut *db).await?;
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *tx)
            .await
            .context("could not probe the disk with a commit")?;
        tx.commit().await?;
        let took = probe.elapsed();
        slowest = slowest.max(took);
        if took >= stall {
            quiet_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Quiet {
        waited: began.elapsed(),
        reached: true,
        slowest_ms: slowest.as_millis() as u64,
    })
}

/// The server's data directory, when the server runs on this machine and
/// lets this role read it: where [`DiskWatch`] can watch its disk.
pub(crate) async fn local_data_directory(pool: &sqlx::PgPool) -> Option<PathBuf> {
    let (dir, local): (String, bool) = sqlx::query_as(
        "SELECT current_setting('data_directory'), \
                coalesce(inet_server_addr() <<= '127.0.0.0/8' OR inet_server_addr() = '::1', true)",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    let dir = PathBuf::from(dir);
    (local && dir.join("PG_VERSION").exists()).then_some(dir)
}

/// Folds samples into [`DiskFigures`].
#[derive(Debug)]
struct Tracker {
    last: Counters,
    /// The first and the latest sample of the current stall.
    stalled: Option<(Instant, Instant)>,
    figures: DiskFigures,
}

impl Tracker {
    fn new(first: Counters) -> Self {
        Self {
            last: first,
            stalled: None,
            figures: DiskFigures::default(),
        }
    }

    /// Folds in the counters read at `at`, `late` after the sample was due.
    /// A stall lasts from its first sample to its last: the time between
    /// its last sample and the next (that saw progress) is not counted, as
    /// the sampler may have been late for it.
    fn sample(&mut self, now: Counters, at: Instant, late: Duration) {
        let f = &mut self.figures;
        f.sampler_late_ms = f.sampler_late_ms.max(late.as_millis() as u64);
        f.flushes += now.flushes.saturating_sub(self.last.flushes);
        let progressed = now.completed != self.last.completed;
        if progressed || now.in_flight == 0 {
            if let Some((first, latest)) = self.stalled.take() {
                let stall = latest.saturating_duration_since(first).as_millis() as u64;
                f.longest_stall_ms = f.longest_stall_ms.max(stall);
                if stall >= STALL_MS {
                    f.stalls += 1;
                }
            }
        } else {
            let first = self.stalled.map_or(at, |(first, _)| first);
            self.stalled = Some((first, at));
        }
        self.last = now;
    }
}

/// What is read from a block device's `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    /// Reads, writes, discards and flushes completed.
    completed: u64,
    /// Flushes completed.
    flushes: u64,
    /// Requests in flight.
    in_flight: u64,
}

impl Counters {
    /// Reads `stat` again from its start: the kernel writes it anew on
    /// every read, and one open file spares the sampler a path lookup.
    fn read(stat: &File) -> Option<Self> {
        let mut buf = [0u8; 512];
        let n = stat.read_at(&mut buf, 0).ok()?;
        Self::parse(std::str::from_utf8(&buf[..n]).ok()?)
    }

    /// Fields 1, 5, 9, 12 and 16 of a block device's `stat` (see the
    /// kernel's Documentation/block/stat.rst).
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> = stat
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let flushes = *fields.get(15)?;
        Some(Self {
            completed: fields[0] + fields[4] + fields[11] + flushes,
            flushes,
            in_flight: fields[8],
        })
    }
}

/// The `stat` file of the whole disk that holds `path`: flushes go to the
/// disk, not to a partition.
fn stat_file(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let device = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let disk = if device.join("partition").exists() {
        device.join("..")
    } else {
        device
    };
    let stat = disk.join("stat");
    Counters::read(&File::open(&stat).ok()?).map(|_| stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiet_line_says_when_the_disk_never_went_quiet() {
        let quiet = Quiet {
            waited: Duration::from_millis(3_040),
            reached: true,
            slowest_ms: 4,
        };
        assert_eq!(
            quiet.describe(3),
            "disk quiet, 3 s without a commit flush of 20 ms or more (waited 3.0 s; slowest flush 4 ms)"
        );
        let noisy = Quiet {
            waited: QUIET_AT_MOST,
            reached: false,
            slowest_ms: 55,
        };
        assert!(
            noisy
                .describe(3)
                .starts_with("disk NOT quiet: no 3 s without")
                && noisy
                    .describe(3)
                    .contains("in 30.0 s (slowest flush 55 ms)"),
            "{}",
            noisy.describe(3)
        );
    }

    #[test]
    fn reads_a_block_stat_line() {
        let line = " 9594075 265269 547160370 14294408 11717722 3576435 1477676040 \
                    14006011 3 2607604 29705613 2726364 200 1093810704 821689 4588597 583504\n";
        assert_eq!(
            Counters::parse(line),
            Some(Counters {
                completed: 9_594_075 + 11_717_722 + 2_726_364 + 4_588_597,
                flushes: 4_588_597,
                in_flight: 3,
            })
        );
        let before_5_5 = "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(Counters::parse(before_5_5), None, "no flush fields");
    }

    fn counters(completed: u64, in_flight: u64) -> Counters {
        Counters {
            completed,
            flushes: completed,
            in_flight,
        }
    }

    #[test]
    fn a_stall_runs_from_the_first_sample_without_progress_to_the_last() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Tracker::new(counters(10, 0));
        t.sample(counters(12, 1), ms(2), Duration::ZERO);
        // One request in flight and nothing completed, from 4 to 104 ms.
        for n in (4..=104).step_by(2) {
            t.sample(counters(12, 1), ms(n), Duration::ZERO);
        }
        t.sample(counters(13, 0), ms(106), Duration::ZERO);
        // A short one.
        t.sample(counters(13, 2), ms(108), Duration::ZERO);
        t.sample(counters(13, 2), ms(110), Duration::ZERO);
        t.sample(counters(15, 0), ms(112), Duration::ZERO);
        // The sampler itself was 40 ms late, and the disk progressed
        // meanwhile: not a stall.
        t.sample(counters(15, 1), ms(114), Duration::ZERO);
        t.sample(counters(17, 1), ms(156), Duration::from_millis(40));
        assert_eq!(
            t.figures,
            DiskFigures {
                flushes: 7,
                longest_stall_ms: 100,
                stalls: 1,
                sampler_late_ms: 40,
            }
        );
    }

    #[test]
    fn an_idle_disk_never_stalls() {
        let t0 = Instant::now();
        let mut t = Tracker::new(counters(10, 0));
        for n in 1..100 {
            t.sample(
                counters(10, 0),
                t0 + Duration::from_millis(2 * n),
                Duration::ZERO,
            );
        }
        assert_eq!(t.figures, DiskFigures::default());
    }

    #[test]
    fn watches_the_disk_under_a_directory_when_the_kernel_reports_flushes() {
        let dir = std::env::temp_dir();
        let Some(stat) = stat_file(&dir) else {
            // tmpfs, overlay or a kernel before 5.5: nothing to watch.
            assert!(DiskWatch::start(&dir).is_none());
            return;
        };
        let watch = DiskWatch::start(&dir).expect("a watch");
        let stat = File::open(stat).expect("open stat");
        let before = Counters::read(&stat).expect("counters");
        let file = dir.join(format!("disk-watch-{}", std::process::id()));
        std::fs::write(&file, b"flush me").expect("write");
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .expect("fsync");
        std::fs::remove_file(&file).expect("remove");
        let after = Counters::read(&stat).expect("counters");
        if after.flushes == before.flushes {
            // A disk without a volatile cache is never asked to flush.
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while watch.seen().flushes == 0 {
            assert!(
                Instant::now() < deadline,
                "the kernel counted a flush and the watch never saw it"
            );
            std::thread::sleep(EVERY);
        }
        assert!(watch.finish().flushes >= 1);
    }
}
