//! Gives the heap memory a burst freed back to the system.
//!
//! glibc's allocator keeps what a burst frees (a reconnect storm's handshakes, a status pass over
//! every remote, a LIST passed through the API proxy) in its heaps, where it still counts as the
//! hub's memory (and against its container's limit) until allocations of the same sizes reuse it;
//! by itself it returns only the free space at the top of a heap. In the fan-out benchmark at 1,000
//! streams, 5.5 of the 8.5 MiB that the settling statuses added was such free memory
//! (`malloc_trim` called in the running hub from gdb: RSS 75.2 -> 69.7 MiB). So every
//! [`INTERVAL`] the hub hands free pages back with `malloc_trim`, on a blocking thread, since it
//! walks the heaps: at 10,000 streams (a hub of about 580 MiB) 13 of 19 calls handed back 34-60
//! MiB each while the statuses settled, taking 5-22 ms; the others under 6 MiB, in under 8 ms.
//! Hub memory per stream in that benchmark: 46 KiB with it, 52 without.

use std::time::{Duration, Instant};
use tracing::debug;

/// How often free memory is handed back.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Hands free heap memory back every `interval`, for as long as the process runs.
pub async fn release_freed(interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Ok((before, after, took)) = tokio::task::spawn_blocking(trim).await else {
            return;
        };
        debug!(
            before_kib = before,
            after_kib = after,
            ?took,
            "free heap memory handed back"
        );
    }
}

/// (RSS before, RSS after, time taken).
fn trim() -> (u64, u64, Duration) {
    let started = Instant::now();
    let before = rss_kib();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    (before, rss_kib(), started.elapsed())
}

/// The process's resident memory, KiB (0 where /proc is not there).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_kib())
}

fn page_kib() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(bytes).map_or(4, |b| b / 1024)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn free_memory_inside_the_heap_goes_back() {
        // 48 MiB in 1 KiB pieces, all but the last freed: the last one pins the top of the heap, so
        // the allocator keeps the rest as free space inside it, resident, as after a burst.
        let mut pieces: Vec<Vec<u8>> = (0..48 * 1024).map(|_| vec![1u8; 1024]).collect();
        let pin = pieces.pop();
        drop(pieces);
        let (before, after, _) = trim();
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "RSS {before} -> {after} KiB"
        );
        drop(pin);
    }
}
