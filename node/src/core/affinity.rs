//! Session affinity by client IP: which origin each client of a load balancer last used, and
//! until when it may keep it. The table is swept of expired entries every few thousand
//! inserts, so it holds about the clients seen within one TTL. The time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::compiled::CompiledConfig;

/// The origin a client was sent to before, and until when it may keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sticky {
    pub pool: usize,
    pub origin: usize,
    pub expires: Instant,
}

/// Session affinity by client IP: which origin each client of a load balancer last used.
#[derive(Default)]
pub struct Affinity {
    map: Mutex<HashMap<(Arc<str>, IpAddr), Entry>>,
    puts: AtomicU64,
}

struct Entry {
    pool: Arc<str>,
    origin: Arc<str>,
    expires: Instant,
}

/// Entries are swept of expired ones every this many inserts, bounding the table by the
/// number of clients seen within one TTL.
const SWEEP_EVERY: u64 = 4096;

impl Affinity {
    pub fn get(&self, rt: &CompiledConfig, lb: &Arc<str>, client: IpAddr) -> Option<Sticky> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(&(lb.clone(), client))?;
        let (pool, origin) = rt.origin_index(&e.pool, &e.origin)?;
        Some(Sticky {
            pool,
            origin,
            expires: e.expires,
        })
    }

    /// Records (or refreshes: the TTL slides with use) the client's origin.
    pub fn put(
        &self,
        lb: &Arc<str>,
        client: IpAddr,
        pool: &Arc<str>,
        origin: &Arc<str>,
        now: Instant,
        ttl: Duration,
    ) {
        let expires = now + ttl;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if self.puts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            map.retain(|_, e| e.expires > now);
        }
        map.insert(
            (lb.clone(), client),
            Entry {
                pool: pool.clone(),
                origin: origin.clone(),
                expires,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
