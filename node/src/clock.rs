//! The node's one clock: tokio's, so tests can pause time, with the wall-clock time of the
//! node's start so that instants can be shown (status) and gossiped (the mesh) as dates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// When the node started, on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: Instant,
    started_wall: SystemTime,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            started: Instant::now(),
            started_wall: SystemTime::now(),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Milliseconds since the Unix epoch of a tokio instant, through the node's start time.
    pub fn wall_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.started);
        let wall = self.started_wall + since;
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Time of the last byte moved on a connection, on tokio's clock, as an offset from the
/// start so that it fits an atomic: the relay's and the status endpoint's idle timeouts.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_nanos: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_nanos: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
    }

    pub fn last(&self) -> Instant {
        let offset = Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed));
        self.start.checked_add(offset).unwrap_or(self.start)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}
