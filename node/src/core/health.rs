//! The health state machine of one origin under one monitor: plain code over probe outcomes,
//! with the time passed in, so that retries, consecutive up/down and the RTT average are
//! unit-tested without sockets. The monitor's I/O shell feeds it attempts; the proxy feeds it
//! failed connects (passive health), which take an origin down only when
//! `passive_failures` of them fall within `passive_window`.
//!
//! Failures that are this node's own (see `trouble`) never reach the state machine as
//! failures: an attempt that failed that way ends its round with no verdict.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::verdict::Verdict;

/// How a monitor turns attempts into up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Attempts retried at once after a failure before the round counts as failed.
    pub retries: u32,
    /// Successful rounds in a row that bring a down origin up (at least 1).
    pub consecutive_up: u32,
    /// Failed rounds in a row that take an up origin down (at least 1).
    pub consecutive_down: u32,
    /// Failed connects while proxying, within `passive_window`, that take an up origin down
    /// (at least 1).
    pub passive_failures: u32,
    pub passive_window: Duration,
}

pub use crate::config::{PASSIVE_FAILURES, PASSIVE_WINDOW};

impl HealthPolicy {
    pub fn new(retries: u32, consecutive_up: u32, consecutive_down: u32) -> Self {
        HealthPolicy {
            retries,
            consecutive_up: consecutive_up.max(1),
            consecutive_down: consecutive_down.max(1),
            passive_failures: PASSIVE_FAILURES,
            passive_window: PASSIVE_WINDOW,
        }
    }

    /// The same policy with its own passive threshold: `failures` within `window`.
    pub fn with_passive(mut self, failures: u32, window: Duration) -> Self {
        self.passive_failures = failures.max(1);
        self.passive_window = window;
        self
    }
}

/// What one origin looks like to this node: the row the node reports (and the mesh gossips).
#[derive(Debug, Clone, PartialEq)]
pub struct OriginHealth {
    pub healthy: bool,
    /// Whether any round has finished; an origin is presumed up until its first round.
    pub checked: bool,
    /// Moving average of successful probes' round-trip times.
    pub rtt: Option<Duration>,
    pub last_change: Instant,
    /// Why it is down (`connect refused`, `timeout`, `status 503`, ...); None while up.
    pub reason: Option<String>,
    /// While down: whose fault it is, as peers asked to probe it found (`core::verdict`);
    /// None while up, or when nobody was asked (no mesh).
    pub verdict: Option<Verdict>,
}

impl OriginHealth {
    /// An origin nobody has probed yet: presumed up, so a node serves from its first second.
    pub fn unchecked(now: Instant) -> Self {
        OriginHealth {
            healthy: true,
            checked: false,
            rtt: None,
            last_change: now,
            reason: None,
            verdict: None,
        }
    }
}

/// What a single probe attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Ok(Duration),
    Failed(String),
    /// The attempt failed for a reason of this node's own (out of descriptors, overloaded):
    /// it ends the round with no verdict, and the origin keeps its row.
    Inconclusive,
}

/// What the caller does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at once: the round is not over.
    Retry,
    /// The round is over; `changed` says whether the origin flipped up or down.
    Done { changed: bool },
}

/// Weight of a new sample in the RTT average: reacts within a few probes, ignores one outlier.
const EWMA_ALPHA: f64 = 0.3;

/// The state machine of one origin.
#[derive(Debug, Clone)]
pub struct HealthState {
    row: OriginHealth,
    failed_attempts: u32,
    ok_rounds: u32,
    failed_rounds: u32,
    /// When recent passive failures happened, oldest first; at most `passive_failures`.
    passive: VecDeque<Instant>,
}

impl HealthState {
    pub fn new(now: Instant) -> Self {
        HealthState {
            row: OriginHealth::unchecked(now),
            failed_attempts: 0,
            ok_rounds: 0,
            failed_rounds: 0,
            passive: VecDeque::new(),
        }
    }

    pub fn row(&self) -> &OriginHealth {
        &self.row
    }

    /// Records the verdict on the down episode that began at `since`; false (nothing set) when
    /// the origin is up again or went down anew since.
    pub fn set_verdict(&mut self, since: Instant, verdict: Verdict) -> bool {
        if self.row.healthy || self.row.last_change != since {
            return false;
        }
        self.row.verdict = Some(verdict);
        true
    }

    /// Feeds one attempt of the current round.
    pub fn on_attempt(&mut self, policy: &HealthPolicy, attempt: Attempt, now: Instant) -> Next {
        match attempt {
            Attempt::Ok(rtt) => {
                self.failed_attempts = 0;
                self.row.rtt = Some(match self.row.rtt {
                    None => rtt,
                    Some(avg) => avg.mul_f64(1.0 - EWMA_ALPHA) + rtt.mul_f64(EWMA_ALPHA),
                });
                let changed = self.round_ok(policy, now);
                Next::Done { changed }
            }
            Attempt::Failed(reason) => {
                self.failed_attempts += 1;
                if self.failed_attempts <= policy.retries {
                    return Next::Retry;
                }
                self.failed_attempts = 0;
                let changed = self.round_failed(policy, reason, now);
                Next::Done { changed }
            }
            Attempt::Inconclusive => {
                // Neither a success nor a failure: the round ends as if it had not run, and
                // the retries of the next round start afresh.
                self.failed_attempts = 0;
                Next::Done { changed: false }
            }
        }
    }

    /// A connect that failed while proxying. `passive_failures` of them within
    /// `passive_window` take an up origin down at once, so that a dead origin stops receiving
    /// traffic before its monitor's next probe, while one stray failure (which every client
    /// of a busy origin would otherwise turn into a mesh-wide verdict) does not. Returns
    /// whether the origin flipped.
    pub fn on_passive_failure(
        &mut self,
        policy: &HealthPolicy,
        reason: String,
        now: Instant,
    ) -> bool {
        while self
            .passive
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= policy.passive_window)
        {
            self.passive.pop_front();
        }
        self.passive.push_back(now);
        let threshold = policy.passive_failures.max(1) as usize;
        if self.passive.len() < threshold {
            return false;
        }
        self.passive.clear();
        self.ok_rounds = 0;
        self.row.checked = true;
        if !self.row.healthy {
            self.row.reason = Some(reason);
            return false;
        }
        self.row.healthy = false;
        self.row.reason = Some(if threshold == 1 {
            reason
        } else {
            format!(
                "{threshold} failed connects within {}: {reason}",
                humantime::format_duration(policy.passive_window)
            )
        });
        self.row.last_change = now;
        true
    }

    fn round_ok(&mut self, policy: &HealthPolicy, now: Instant) -> bool {
        self.failed_rounds = 0;
        self.ok_rounds = self.ok_rounds.saturating_add(1);
        let first = !self.row.checked;
        self.row.checked = true;
        if self.row.healthy {
            if first {
                self.row.last_change = now;
            }
            return false;
        }
        if self.ok_rounds >= policy.consecutive_up {
            self.row.healthy = true;
            self.row.reason = None;
            self.row.verdict = None;
            self.row.last_change = now;
            return true;
        }
        false
    }

    fn round_failed(&mut self, policy: &HealthPolicy, reason: String, now: Instant) -> bool {
        self.ok_rounds = 0;
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        let first = !self.row.checked;
        self.row.checked = true;
        if !self.row.healthy {
            // Keep the latest reason: the origin may now fail differently.
            self.row.reason = Some(reason);
            return false;
        }
        // With no history, one failed round is enough: presuming up was only a default.
        if first || self.failed_rounds >= policy.consecutive_down {
            self.row.healthy = false;
            self.row.reason = Some(reason);
            self.row.last_change = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn fail(s: &str) -> Attempt {
        Attempt::Failed(s.into())
    }

    #[test]
    fn starts_up_and_unchecked() {
        let t0 = Instant::now();
        let s = HealthState::new(t0);
        assert!(s.row().healthy && !s.row().checked);
    }

    #[test]
    fn retries_happen_within_a_round() {
        let p = HealthPolicy::new(2, 1, 1);
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        assert_eq!(s.on_attempt(&p, fail("timeout"), t0), Next::Retry);
        assert_eq!(s.on_attempt(&p, fail("timeout"), t0), Next::Retry);
        assert_eq!(
            s.on_attempt(&p, fail("connect refused"), t0),
            Next::Done { changed: true }
        );
        assert!(!s.row().healthy);
        assert_eq!(s.row().reason.as_deref(), Some("connect refused"));
    }

    #[test]
    fn a_success_during_retries_ends_the_round_up() {
        let p = HealthPolicy::new(2, 1, 1);
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        assert_eq!(s.on_attempt(&p, fail("timeout"), t0), Next::Retry);
        assert_eq!(
            s.on_attempt(&p, Attempt::Ok(ms(3)), t0),
            Next::Done { changed: false }
        );
        assert!(s.row().healthy && s.row().checked);
    }

    #[test]
    fn consecutive_down_and_up_are_counted_in_rounds() {
        let p = HealthPolicy::new(0, 2, 3);
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        s.on_attempt(&p, Attempt::Ok(ms(1)), t0);
        let t1 = t0 + ms(1000);
        assert_eq!(
            s.on_attempt(&p, fail("timeout"), t1),
            Next::Done { changed: false }
        );
        assert_eq!(
            s.on_attempt(&p, fail("timeout"), t1),
            Next::Done { changed: false }
        );
        // A success resets the failure streak.
        s.on_attempt(&p, Attempt::Ok(ms(1)), t1);
        for _ in 0..2 {
            assert_eq!(
                s.on_attempt(&p, fail("status 503"), t1),
                Next::Done { changed: false }
            );
        }
        assert_eq!(
            s.on_attempt(&p, fail("status 503"), t1),
            Next::Done { changed: true }
        );
        assert!(!s.row().healthy);
        assert_eq!(s.row().last_change, t1);
        let t2 = t1 + ms(5000);
        assert_eq!(
            s.on_attempt(&p, Attempt::Ok(ms(1)), t2),
            Next::Done { changed: false }
        );
        assert_eq!(
            s.on_attempt(&p, Attempt::Ok(ms(1)), t2),
            Next::Done { changed: true }
        );
        assert!(s.row().healthy && s.row().reason.is_none());
        assert_eq!(s.row().last_change, t2);
    }

    #[test]
    fn first_failed_round_marks_an_unchecked_origin_down() {
        let p = HealthPolicy::new(0, 1, 3);
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        assert_eq!(
            s.on_attempt(&p, fail("connect refused"), t0),
            Next::Done { changed: true }
        );
    }

    #[test]
    fn one_failed_connect_does_not_take_an_origin_down() {
        let p = HealthPolicy::new(2, 1, 1);
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        s.on_attempt(&p, Attempt::Ok(ms(1)), t0);
        assert!(!s.on_passive_failure(&p, "connect refused".into(), t0));
        assert!(s.row().healthy);
    }

    #[test]
    fn passive_failures_within_the_window_take_an_origin_down() {
        let p = HealthPolicy::new(2, 1, 1).with_passive(3, ms(10_000));
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        assert!(!s.on_passive_failure(&p, "connect refused".into(), t0));
        assert!(!s.on_passive_failure(&p, "connect refused".into(), t0 + ms(4_000)));
        let t2 = t0 + ms(9_999);
        assert!(s.on_passive_failure(&p, "connect refused".into(), t2));
        assert!(!s.row().healthy && s.row().checked);
        assert_eq!(s.row().last_change, t2);
        assert_eq!(
            s.row().reason.as_deref(),
            Some("3 failed connects within 10s: connect refused")
        );
    }

    #[test]
    fn passive_failures_spread_wider_than_the_window_do_not() {
        let p = HealthPolicy::new(2, 1, 1).with_passive(3, ms(10_000));
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        // One every 5 s: never three within 10 s.
        for i in 0..20 {
            assert!(!s.on_passive_failure(&p, "reset".into(), t0 + ms(5_000 * i)));
        }
        assert!(s.row().healthy);
    }

    #[test]
    fn a_passive_threshold_of_one_flips_at_once() {
        let p = HealthPolicy::new(0, 1, 5).with_passive(1, ms(1));
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        s.on_attempt(&p, Attempt::Ok(ms(1)), t0);
        assert!(s.on_passive_failure(&p, "connect refused".into(), t0));
        assert_eq!(s.row().reason.as_deref(), Some("connect refused"));
    }

    #[test]
    fn an_inconclusive_attempt_ends_the_round_without_a_verdict() {
        let p = HealthPolicy::new(1, 1, 1);
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        assert_eq!(s.on_attempt(&p, fail("timeout"), t0), Next::Retry);
        assert_eq!(
            s.on_attempt(&p, Attempt::Inconclusive, t0),
            Next::Done { changed: false }
        );
        assert!(
            s.row().healthy && !s.row().checked,
            "still presumed up, unchecked"
        );
        // The next round's retries start afresh: one failure is a retry, not the round's end.
        assert_eq!(s.on_attempt(&p, fail("timeout"), t0), Next::Retry);
        // Nor does it count toward consecutive_down once checked.
        s.on_attempt(&p, Attempt::Ok(ms(1)), t0);
        for _ in 0..5 {
            s.on_attempt(&p, Attempt::Inconclusive, t0);
        }
        assert!(s.row().healthy);
    }

    #[test]
    fn rtt_is_a_moving_average() {
        let p = HealthPolicy::new(0, 1, 1);
        let t0 = Instant::now();
        let mut s = HealthState::new(t0);
        s.on_attempt(&p, Attempt::Ok(ms(10)), t0);
        assert_eq!(s.row().rtt, Some(ms(10)));
        s.on_attempt(&p, Attempt::Ok(ms(20)), t0);
        let rtt = s.row().rtt.unwrap().as_secs_f64() * 1000.0;
        assert!((rtt - 13.0).abs() < 0.01, "{rtt}");
        // Failures do not pull the average.
        s.on_attempt(&p, fail("timeout"), t0);
        assert!((s.row().rtt.unwrap().as_secs_f64() * 1000.0 - 13.0).abs() < 0.01);
    }
}
