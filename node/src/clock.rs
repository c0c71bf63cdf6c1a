//! The node's one clock: tokio's, so tests can pause time, with the wall-clock time of the
//! node's start so that instants can be shown (status) and gossiped (the mesh) as dates.

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
