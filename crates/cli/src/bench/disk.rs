//! How long the disk under a local PostgreSQL took to flush while a case
//! ran, read from the kernel's block statistics
//! (`/sys/dev/block/<major>:<minor>/stat`, Linux 5.5 or later).
//!
//! Every acknowledged order waits for its commit's WAL flush, and the WAL
//! is flushed by one process at a time, so one slow flush holds every
//! buyer in flight at once. Printing the slowest flush next to a case's
//! figures tells a p99 set by the disk apart from one set by the server.
//!
//! A sampling thread reads the counters every [`EVERY`]. The kernel adds a
//! flush's time when it completes, so a sample in which one flush completed
//! and the flush time grew by `t` saw a flush of `t`; with several, the
//! slowest took at least their mean.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the counters are read.
const EVERY: Duration = Duration::from_millis(2);
/// A flush at least this slow is counted.
pub const SLOW_MS: u64 = 20;

/// What the disk did while it was watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFigures {
    /// Flushes completed.
    pub flushes: u64,
    /// The slowest flush seen, in milliseconds (a lower bound when several
    /// completed between two samples).
    pub slowest_ms: u64,
    /// Flushes of at least 20 ms.
    pub slow: u64,
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
        let stat = stat_file(path)?;
        let mut last = Counters::read(&stat)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(DiskFigures::default()));
        let (stopping, seeing) = (stop.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("bench-disk-watch".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(EVERY);
                    let Some(now) = Counters::read(&stat) else {
                        break;
                    };
                    if let Ok(mut seen) = seeing.lock() {
                        seen.add(now.since(last));
                    }
                    last = now;
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

impl DiskFigures {
    fn add(&mut self, delta: Counters) {
        if delta.flushes == 0 {
            return;
        }
        self.flushes += delta.flushes;
        let at_least = delta.flush_ms / delta.flushes;
        self.slowest_ms = self.slowest_ms.max(at_least);
        if at_least >= SLOW_MS {
            self.slow += 1;
        }
    }
}

/// The two counters read: flushes completed, and milliseconds spent in
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    flushes: u64,
    flush_ms: u64,
}

impl Counters {
    fn read(stat: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(stat).ok()?)
    }

    /// Fields 16 and 17 of a block device's `stat` (see the kernel's
    /// Documentation/block/stat.rst).
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> = stat
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Self {
            flushes: *fields.get(15)?,
            flush_ms: *fields.get(16)?,
        })
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            flushes: self.flushes.saturating_sub(earlier.flushes),
            flush_ms: self.flush_ms.saturating_sub(earlier.flush_ms),
        }
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
    Counters::read(&stat).map(|_| stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flush_fields_of_a_block_stat_line() {
        let line = " 9594075 265269 547160370 14294408 11717722 3576435 1477676040 \
                    14006011 0 2607604 29705613 2726364 200 1093810704 821689 4588597 583504\n";
        assert_eq!(
            Counters::parse(line),
            Some(Counters {
                flushes: 4_588_597,
                flush_ms: 583_504
            })
        );
        let before_5_5 = "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(Counters::parse(before_5_5), None, "no flush fields");
    }

    #[test]
    fn a_sample_with_one_slow_flush_counts_it_and_several_give_their_mean() {
        let mut f = DiskFigures::default();
        f.add(Counters {
            flushes: 3,
            flush_ms: 1,
        });
        f.add(Counters {
            flushes: 0,
            flush_ms: 0,
        });
        f.add(Counters {
            flushes: 1,
            flush_ms: 103,
        });
        f.add(Counters {
            flushes: 2,
            flush_ms: 50,
        });
        assert_eq!(
            f,
            DiskFigures {
                flushes: 6,
                slowest_ms: 103,
                slow: 2
            }
        );
    }

    #[test]
    fn watches_the_disk_under_a_directory_when_the_kernel_reports_flushes() {
        let dir = std::env::temp_dir();
        let Some(stat) = stat_file(&dir) else {
            // tmpfs, overlay or a kernel before 5.5: nothing to watch.
            assert!(DiskWatch::start(&dir).is_none());
            return;
        };
        assert!(stat.ends_with("stat"));
        let watch = DiskWatch::start(&dir).expect("a watch");
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
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while watch.seen().flushes == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the kernel counted a flush and the watch never saw it"
            );
            std::thread::sleep(EVERY);
        }
        let seen = watch.finish();
        assert!(seen.flushes >= 1);
        assert!(seen.slow <= seen.flushes);
    }
}
