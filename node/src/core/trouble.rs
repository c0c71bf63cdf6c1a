//! Whose fault a failure is, and the node's own trouble. A connect or probe that fails
//! because this node ran out of something (descriptors, buffers, ephemeral ports) or was too
//! busy to notice the answer in time says nothing about the origin: counted against the
//! origin, it would be gossiped to every node as the truth, and a node alone in its region is
//! that region's quorum. Such failures are the node's trouble instead: counted, logged and
//! shown on `/ready` and in status, never in the health rows. Plain code with the time passed
//! in; the hub holds the log and the shells feed it.
//!
//! "Overloaded" is measured, not guessed: a shell ticks every [`TICK`] on tokio's clock and
//! reports how late each tick fired. A tick more than [`LATE_TICK`] late means the runtime
//! cannot run its timers (and so cannot read an answer) in time; for [`OVERLOAD_HOLD`]
//! after such a tick the node counts as overloaded, and a timeout then is its own.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use tokio::time::Instant;

/// How often the lag meter ticks.
pub const TICK: Duration = Duration::from_millis(250);
/// A tick this late means the runtime is overloaded. Well above scheduling noise on a busy
/// machine (tens of ms), well below any sensible probe or connect timeout (the defaults are 5 s).
pub const LATE_TICK: Duration = Duration::from_millis(500);
/// How long after a late tick the node still counts as overloaded: a timeout that ends now
/// started up to a timeout ago.
pub const OVERLOAD_HOLD: Duration = Duration::from_secs(10);
/// How long after its last local error the node is still in trouble (`/ready` says 503).
pub const TROUBLE_WINDOW: Duration = Duration::from_secs(30);
/// At most one log line per cause and source this often; the lines in between are counted.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Whose fault a failed connect or probe is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The origin or the path to it: refused, reset, unreachable, or a timeout while this
    /// node was keeping up.
    Origin,
    /// This node's own trouble.
    Local(LocalCause),
}

/// What the node ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocalCause {
    /// EMFILE, ENFILE: the process's or the system's file-descriptor limit.
    Descriptors,
    /// ENOBUFS, ENOMEM: kernel buffers or memory.
    Memory,
    /// EADDRNOTAVAIL: no ephemeral port (or source address) left to connect from.
    Ports,
    /// The runtime's timers fire late: a timeout may be this node's slowness.
    Overload,
}

impl LocalCause {
    pub const ALL: [LocalCause; 4] = [
        LocalCause::Descriptors,
        LocalCause::Memory,
        LocalCause::Ports,
        LocalCause::Overload,
    ];

    /// The metric label and the name status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalCause::Descriptors => "descriptors",
            LocalCause::Memory => "memory",
            LocalCause::Ports => "ports",
            LocalCause::Overload => "overload",
        }
    }

    /// What an operator can do about it.
    pub fn advice(self) -> &'static str {
        match self {
            LocalCause::Descriptors => {
                "raise the file-descriptor limit (LimitNOFILE= in the unit, ulimit -n) or lower max_connections"
            }
            LocalCause::Memory => "the kernel is short of buffers or memory; lower max_connections or add memory",
            LocalCause::Ports => {
                "ephemeral ports are exhausted; widen net.ipv4.ip_local_port_range or lower max_connections"
            }
            LocalCause::Overload => "the node cannot keep up; lower its load or give it more CPU",
        }
    }
}

/// The local cause an OS error number stands for; None when it is not this node's own.
pub fn local_cause(errno: i32) -> Option<LocalCause> {
    match errno {
        libc::EMFILE | libc::ENFILE => Some(LocalCause::Descriptors),
        libc::ENOBUFS | libc::ENOMEM => Some(LocalCause::Memory),
        libc::EADDRNOTAVAIL => Some(LocalCause::Ports),
        _ => None,
    }
}

/// Whose fault a failed connect is: refused, reset, unreachable and the like are the origin's
/// (or its path's); running out of descriptors, buffers or ports is this node's.
pub fn blame_io(e: &io::Error) -> Blame {
    match e.raw_os_error().and_then(local_cause) {
        Some(cause) => Blame::Local(cause),
        None => Blame::Origin,
    }
}

/// Whose fault a timeout is: this node's while it is overloaded, the origin's otherwise.
pub fn blame_timeout(overloaded: bool) -> Blame {
    if overloaded {
        Blame::Local(LocalCause::Overload)
    } else {
        Blame::Origin
    }
}

/// One kind of trouble the node has now.
#[derive(Debug, Clone, PartialEq)]
pub struct Trouble {
    pub cause: LocalCause,
    /// The latest error, with where it happened (`connect to 10.0.0.5:443: Too many open files`).
    pub detail: String,
    /// Errors of this cause in the current episode.
    pub count: u64,
    pub since: Instant,
    pub last: Instant,
}

/// What `record` asks the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// Nothing: a line for this cause went out less than [`LOG_EVERY`] ago.
    Quiet,
    /// Log it, saying how many errors went unlogged since the last line.
    Log { unlogged: u64 },
}

/// When a cause last made a log line from one source, and how many went unlogged since.
#[derive(Debug, Clone)]
struct Logged {
    at: Instant,
    unlogged: u64,
}

/// The node's recent local errors and its timer lag.
#[derive(Debug, Default)]
pub struct TroubleLog {
    episodes: HashMap<LocalCause, Trouble>,
    logged: HashMap<(LocalCause, &'static str), Logged>,
    last_late_tick: Option<Instant>,
    lag: Duration,
}

impl TroubleLog {
    /// Records one local error noticed at `source` (`accept`, `connect`, `probe`...). A
    /// cause not seen within [`TROUBLE_WINDOW`] starts a new episode. Log lines: the first of
    /// each cause and source, then at most one per [`LOG_EVERY`].
    pub fn record(
        &mut self,
        cause: LocalCause,
        source: &'static str,
        detail: String,
        now: Instant,
    ) -> LogLine {
        match self.episodes.get_mut(&cause) {
            Some(t) if now.saturating_duration_since(t.last) < TROUBLE_WINDOW => {
                t.detail = detail;
                t.count = t.count.saturating_add(1);
                t.last = now;
            }
            _ => {
                self.episodes.insert(
                    cause,
                    Trouble {
                        cause,
                        detail,
                        count: 1,
                        since: now,
                        last: now,
                    },
                );
            }
        }
        match self.logged.get_mut(&(cause, source)) {
            Some(l) if now.saturating_duration_since(l.at) < LOG_EVERY => {
                l.unlogged = l.unlogged.saturating_add(1);
                LogLine::Quiet
            }
            Some(l) => {
                let unlogged = l.unlogged;
                *l = Logged {
                    at: now,
                    unlogged: 0,
                };
                LogLine::Log { unlogged }
            }
            None => {
                // Bounded: causes times the few sources the shells name.
                self.logged.insert(
                    (cause, source),
                    Logged {
                        at: now,
                        unlogged: 0,
                    },
                );
                LogLine::Log { unlogged: 0 }
            }
        }
    }

    /// Takes one lag measurement: how late a tick fired. A late one is recorded as
    /// [`LocalCause::Overload`] trouble, and returns what to log as `record` does.
    pub fn on_tick(&mut self, lag: Duration, now: Instant) -> LogLine {
        self.lag = lag;
        if lag <= LATE_TICK {
            return LogLine::Quiet;
        }
        self.last_late_tick = Some(now);
        let ms = lag.as_millis();
        self.record(
            LocalCause::Overload,
            "runtime",
            format!("timers fire {ms} ms late"),
            now,
        )
    }

    /// The latest measured timer lag.
    pub fn lag(&self) -> Duration {
        self.lag
    }

    /// Whether a tick was late within the last [`OVERLOAD_HOLD`].
    pub fn overloaded(&self, now: Instant) -> bool {
        self.last_late_tick
            .is_some_and(|t| now.saturating_duration_since(t) < OVERLOAD_HOLD)
    }

    /// The node's trouble now: each cause seen within [`TROUBLE_WINDOW`], in a fixed order.
    /// Empty when the node is well.
    pub fn current(&self, now: Instant) -> Vec<Trouble> {
        let mut out: Vec<Trouble> = self
            .episodes
            .values()
            .filter(|t| now.saturating_duration_since(t.last) < TROUBLE_WINDOW)
            .cloned()
            .collect();
        out.sort_by_key(|t| t.cause);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn the_origins_faults_count_against_it() {
        for errno in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ETIMEDOUT,
        ] {
            assert_eq!(blame_io(&os(errno)), Blame::Origin, "errno {errno}");
        }
        // An error without an errno (a failed lookup, say) is not this node's either.
        assert_eq!(blame_io(&io::Error::other("dns")), Blame::Origin);
    }

    #[test]
    fn running_out_of_something_is_the_nodes_own() {
        for (errno, cause) in [
            (libc::EMFILE, LocalCause::Descriptors),
            (libc::ENFILE, LocalCause::Descriptors),
            (libc::ENOBUFS, LocalCause::Memory),
            (libc::ENOMEM, LocalCause::Memory),
            (libc::EADDRNOTAVAIL, LocalCause::Ports),
        ] {
            assert_eq!(blame_io(&os(errno)), Blame::Local(cause), "errno {errno}");
        }
    }

    #[test]
    fn a_timeout_is_the_origins_unless_the_node_is_overloaded() {
        assert_eq!(blame_timeout(false), Blame::Origin);
        assert_eq!(blame_timeout(true), Blame::Local(LocalCause::Overload));
    }

    #[test]
    fn late_ticks_make_the_node_overloaded_for_a_while() {
        let t0 = Instant::now();
        let mut log = TroubleLog::default();
        assert_eq!(log.on_tick(Duration::from_millis(20), t0), LogLine::Quiet);
        assert!(!log.overloaded(t0), "scheduling noise is not overload");
        assert!(log.current(t0).is_empty());
        let late = LATE_TICK + Duration::from_millis(1);
        assert_eq!(log.on_tick(late, t0), LogLine::Log { unlogged: 0 });
        assert!(log.overloaded(t0 + OVERLOAD_HOLD - Duration::from_millis(1)));
        assert!(!log.overloaded(t0 + OVERLOAD_HOLD));
        assert_eq!(log.current(t0)[0].cause, LocalCause::Overload);
        assert_eq!(log.lag(), late);
    }

    #[test]
    fn trouble_lasts_a_window_after_the_last_error() {
        let t0 = Instant::now();
        let mut log = TroubleLog::default();
        log.record(LocalCause::Descriptors, "accept", "EMFILE".into(), t0);
        let t1 = t0 + Duration::from_secs(20);
        log.record(LocalCause::Descriptors, "connect", "EMFILE".into(), t1);
        let now = log.current(t1 + TROUBLE_WINDOW - Duration::from_millis(1));
        assert_eq!(now.len(), 1);
        assert_eq!(
            (now[0].count, now[0].since, now[0].detail.as_str()),
            (2, t0, "EMFILE")
        );
        assert!(log.current(t1 + TROUBLE_WINDOW).is_empty());
        // A new episode after a quiet window starts over.
        let t2 = t1 + TROUBLE_WINDOW;
        log.record(LocalCause::Descriptors, "accept", "again".into(), t2);
        assert_eq!(log.current(t2)[0].since, t2);
        assert_eq!(log.current(t2)[0].count, 1);
    }

    #[test]
    fn log_lines_are_rate_limited_per_cause_and_source() {
        let t0 = Instant::now();
        let mut log = TroubleLog::default();
        let mut lines = 0;
        for i in 0..100u64 {
            let at = t0 + Duration::from_millis(i * 100);
            if let LogLine::Log { .. } =
                log.record(LocalCause::Descriptors, "accept", "x".into(), at)
            {
                lines += 1;
            }
        }
        // 10 s of errors: the first line, and one more once LOG_EVERY has passed.
        assert_eq!(lines, 1 + (9_900 / LOG_EVERY.as_millis()) as usize);
        assert_eq!(
            log.record(
                LocalCause::Descriptors,
                "accept",
                "x".into(),
                t0 + LOG_EVERY * 2
            ),
            LogLine::Log { unlogged: 99 }
        );
        // Another cause, or the same one seen elsewhere, is logged on its own.
        assert_eq!(
            log.record(LocalCause::Ports, "connect", "y".into(), t0),
            LogLine::Log { unlogged: 0 }
        );
        assert_eq!(
            log.record(LocalCause::Descriptors, "probe", "z".into(), t0 + ms(1)),
            LogLine::Log { unlogged: 0 }
        );
        // All of it is one episode of descriptor trouble.
        let now = log.current(t0 + ms(1));
        assert_eq!(now[0].cause, LocalCause::Descriptors);
        assert_eq!(now[0].detail, "z");
    }
}
