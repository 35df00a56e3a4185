//! How the hub and the agent pace their retries against a Kubernetes API server: a failed watch, and
//! the hub's status writes while the central API server is unreachable.
//!
//! kube's `default_backoff()` grows to 30 s and only resets on the next good event. After an API
//! server outage of ten seconds that left a watch waiting up to half a minute, then the `410 Gone`
//! the server answers a stale watch with cost another backoff step before the relist. Control-plane
//! addresses must follow within seconds of the API server's return, so:
//!
//! - the wait grows from 500 ms to at most 5 s (a handful of watches per process: kind enough);
//! - any good event resets it;
//! - `410 Gone` means the server is back and wants a relist: the wait restarts from the shortest,
//!   unless the previous error was a `410` too (a relist that keeps failing still backs off).

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use std::time::Duration;

pub const FIRST_WAIT: Duration = Duration::from_millis(500);
pub const LONGEST_WAIT: Duration = Duration::from_secs(5);

pub struct ApiRetry {
    backoff: Jittered,
    last_was_gone: bool,
}

/// Exponential backoff from `first`, doubling, with ±50% jitter; no wait exceeds `longest`.
///
/// The `backoff` crate randomizes *after* capping the interval, so its waits reach 1.5x its
/// maximum (an agent told `--backoff-max 30s` waited 37 s, and up to 45 s). This caps the wait
/// itself: the interval grows to `longest`, the jittered wait is cut at `longest`.
pub fn jittered(first: Duration, longest: Duration) -> Jittered {
    Jittered {
        inner: ExponentialBackoff {
            // The crate starts from `current_interval` (500 ms by default), not from
            // `initial_interval`, until its first reset: set both.
            current_interval: first.min(longest),
            initial_interval: first.min(longest),
            max_interval: longest,
            multiplier: 2.0,
            randomization_factor: 0.5,
            max_elapsed_time: None,
            ..Default::default()
        },
        longest,
    }
}

/// See [`jittered`].
#[derive(Clone, Debug)]
pub struct Jittered {
    inner: ExponentialBackoff,
    longest: Duration,
}

impl Jittered {
    pub fn longest(&self) -> Duration {
        self.longest
    }
}

impl Backoff for Jittered {
    fn reset(&mut self) {
        self.inner.reset()
    }

    fn next_backoff(&mut self) -> Option<Duration> {
        // Never None: max_elapsed_time is unset.
        Some(
            self.inner
                .next_backoff()
                .unwrap_or(self.longest)
                .min(self.longest),
        )
    }
}

impl Default for ApiRetry {
    fn default() -> Self {
        Self {
            backoff: jittered(FIRST_WAIT, LONGEST_WAIT),
            last_was_gone: false,
        }
    }
}

impl ApiRetry {
    /// A good event: the next failure starts from the shortest wait.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
        self.last_was_gone = false;
    }

    /// How long to wait before polling the watch again after an error. `gone`: the server answered
    /// `410 Gone` (a relist follows).
    pub fn failed(&mut self, gone: bool) -> Duration {
        if gone && !self.last_was_gone {
            self.backoff.reset();
        }
        self.last_was_gone = gone;
        self.backoff.next_backoff().unwrap_or(LONGEST_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // randomization_factor 0.5: a wait is within [0.5, 1.5] of its interval, and at most LONGEST_WAIT.
    const MOST_FIRST: Duration = Duration::from_millis(750);
    const MOST_EVER: Duration = LONGEST_WAIT;

    #[test]
    fn no_wait_exceeds_the_longest() {
        for (first, longest) in [(100, 1_000), (500, 5_000), (500, 30_000), (1_000, 1_000)] {
            let (first, longest) = (Duration::from_millis(first), Duration::from_millis(longest));
            let mut b = jittered(first, longest);
            let waits: Vec<Duration> = (0..200).map(|_| b.next_backoff().unwrap()).collect();
            let most = waits.iter().max().unwrap();
            assert!(*most <= longest, "{most:?} > {longest:?}");
            assert!(waits[0] <= first + first / 2, "{waits:?}");
        }
    }

    #[test]
    fn waits_grow_to_a_bound_of_seconds() {
        let mut retry = ApiRetry::default();
        let waits: Vec<_> = (0..30).map(|_| retry.failed(false)).collect();
        assert!(waits[0] <= MOST_FIRST, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= MOST_EVER), "{waits:?}");
        assert!(waits[29] >= LONGEST_WAIT / 2, "grew: {waits:?}");
    }

    #[test]
    fn gone_after_an_outage_relists_at_once() {
        let mut retry = ApiRetry::default();
        for _ in 0..10 {
            retry.failed(false); // connection refused while the server is down
        }
        assert!(retry.failed(true) <= MOST_FIRST);
    }

    #[test]
    fn gone_again_and_again_still_backs_off() {
        let mut retry = ApiRetry::default();
        let waits: Vec<_> = (0..10).map(|_| retry.failed(true)).collect();
        assert!(waits[9] >= LONGEST_WAIT / 2, "{waits:?}");
    }

    #[test]
    fn a_good_event_resets() {
        let mut retry = ApiRetry::default();
        for _ in 0..10 {
            retry.failed(false);
        }
        retry.succeeded();
        assert!(retry.failed(false) <= MOST_FIRST);
    }
}
