//! The server's heap reserve (`--heap-reserve`): memory taken from the
//! system and touched once at start, then kept for the peaks.
//!
//! A flash sale begins with a burst: every buyer's first request arrives at
//! once, and the server's heap grows by tens of megabytes in its first
//! tenth of a second. Each new page costs a fault and a zeroing. On a
//! virtual machine that reports free pages back to its host (the balloon
//! device's free page reporting, as on the benchmark machine), each one also
//! costs the host a fault. `perf` of `bench checkout` case (a), started on a
//! machine idle for a few seconds, showed `clear_page_erms` in a third of the
//! first 60 ms, with a core idle behind it. In those runs the first wave set
//! the p99, at 39–55 ms against 27–30 ms when warm.
//!
//! The remedy is the one a JVM's `-XX:+AlwaysPreTouch` applies. At start the
//! server allocates the reserve in small blocks, writes each page and frees
//! it. The allocator (mimalloc) keeps those pages for later allocations, and
//! is told never to hand freed memory back (`MIMALLOC_PURGE_DELAY=-1`). So a
//! burst hours later finds its pages resident.
//!
//! The trade-off: the resident set never shrinks below the reserve, nor
//! below the highest peak since start. Every cache that makes up a peak is
//! bounded (README, "Memory and batching under load"). With the reserve at 0
//! the server keeps mimalloc's defaults and hands freed memory back after a
//! second.
//!
//! mimalloc reads its options once, when the process loads, and this
//! workspace forbids the `unsafe` needed to change them afterwards. So a
//! process that wants the reserve, started without `MIMALLOC_PURGE_DELAY`,
//! replaces itself once with the same arguments and the variable set
//! ([`keep_freed_memory`]). An operator's own `MIMALLOC_PURGE_DELAY` is left
//! as it is.

use std::os::unix::process::CommandExt;
use std::time::Instant;

/// mimalloc's own variable: milliseconds before freed memory goes back to
/// the system; -1 never.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// The default reserve of `serve` and `bench checkout`, in MiB.
pub const DEFAULT_RESERVE_MIB: usize = 128;

/// Bytes allocated at a time while touching the reserve: a size the
/// allocator serves from its shared pages, as it serves a request's
/// buffers.
const BLOCK: usize = 16 * 1024;

/// Makes sure mimalloc keeps freed memory: when `MIMALLOC_PURGE_DELAY` is
/// unset, replaces this process with itself, the same arguments and the
/// variable set to -1. It returns only when the variable was already set, or
/// when that exec failed; then the reason is returned, for the caller to log
/// once tracing is up.
pub fn keep_freed_memory() -> Option<String> {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(format!("could not find this executable: {e}")),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let e = command.args(args).env(PURGE_DELAY_ENV, "-1").exec();
    Some(format!("could not restart with {PURGE_DELAY_ENV}=-1: {e}"))
}

/// Whether the allocator was started keeping freed memory, so a reserve
/// stays resident.
pub fn keeps_freed_memory() -> bool {
    std::env::var(PURGE_DELAY_ENV).is_ok_and(|v| v.trim() == "-1")
}

/// Takes `mib` MiB from the allocator, writes every page and frees it all.
/// Blocking: run it off the async runtime's workers. Returns what it took.
pub fn reserve(mib: usize) -> Reserved {
    let started = Instant::now();
    let blocks: Vec<Box<[u8]>> = (0..mib * (1024 * 1024 / BLOCK))
        .map(|_| vec![1u8; BLOCK].into_boxed_slice())
        .collect();
    let bytes = blocks.iter().map(|b| b.len()).sum();
    drop(std::hint::black_box(blocks));
    Reserved {
        bytes,
        took: started.elapsed(),
    }
}

/// What [`reserve`] took.
#[derive(Debug, Clone, Copy)]
pub struct Reserved {
    /// Bytes allocated and written.
    pub bytes: usize,
    /// How long it took.
    pub took: std::time::Duration,
}

/// Takes the reserve for a serving process: off the runtime's workers,
/// logged, and with a warning when the allocator would hand it back.
pub async fn reserve_for_serving(mib: usize, exec_failure: Option<&str>) {
    if mib == 0 {
        return;
    }
    if let Some(why) = exec_failure {
        tracing::warn!("heap reserve: {why}; the reserve will be handed back to the system");
    } else if !keeps_freed_memory() {
        tracing::warn!(
            "heap reserve: {PURGE_DELAY_ENV} is set to something other than -1; \
             freed memory, the reserve with it, goes back to the system"
        );
    }
    match tokio::task::spawn_blocking(move || reserve(mib)).await {
        Ok(r) => tracing::info!(
            mib = r.bytes / (1024 * 1024),
            ms = r.took.as_millis() as u64,
            "heap reserve touched"
        ),
        Err(e) => tracing::warn!(error = %e, "heap reserve: not taken"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_takes_and_writes_what_it_is_asked_for() {
        assert_eq!(reserve(0).bytes, 0);
        assert_eq!(reserve(3).bytes, 3 * 1024 * 1024);
    }
}
