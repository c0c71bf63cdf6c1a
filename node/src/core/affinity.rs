//! Session affinity by client IP: which origin each client of a load balancer last used, and
//! until when it may keep it. The time is passed in.
//!
//! The table is bounded: a client that rotates its address (IPv6 clients within a /64 have
//! 2^64 of them) must not grow it without end. Entries are also kept in the order they were
//! last put, so that each put can retire a few expired entries from the old end at O(1)
//! amortized cost. A full table evicts expired entries first (those at the old end, and
//! once per half a table of puts any expired entry), then the least recently used one. Evicting the oldest, rather than refusing new clients, keeps affinity for the
//! clients seen most recently: a flood of one-off addresses costs the oldest clients their
//! stickiness (they are steered afresh), never the new ones theirs for a whole TTL.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::core::compiled::CompiledConfig;

/// Entries the table holds at most, over all load balancers: about 20 MB at full size.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Expired entries retired from the old end on each put, so that expiry keeps pace with
/// inserts without a sweep of the whole table.
const RETIRE_PER_PUT: usize = 2;

/// What tokio itself treats as "never": 30 years.
const FOREVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The origin a client was sent to before, and until when it may keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sticky {
    pub pool: usize,
    pub origin: usize,
    pub expires: Instant,
}

type Key = (Arc<str>, IpAddr);

/// Session affinity by client IP: which origin each client of a load balancer last used.
pub struct Affinity {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Entries removed to make room for new ones while still live.
    evictions: Counter,
    /// Entries held now.
    entries: Gauge,
}

struct Inner {
    map: HashMap<Key, Entry>,
    /// Keys in the order they were put, each with the `seq` of that put. A key put again
    /// leaves its older position behind as a stale one, skipped when it reaches the front.
    order: VecDeque<(Key, u64)>,
    seq: u64,
    /// Puts since the last look at every entry for expired ones.
    puts_since_sweep: usize,
}

struct Entry {
    pool: Arc<str>,
    origin: Arc<str>,
    expires: Instant,
    /// Which position in `order` is this entry's current one.
    seq: u64,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new(DEFAULT_CAPACITY, Counter::default(), Gauge::default())
    }
}

impl Affinity {
    /// A table of at most `capacity` entries (at least 1), counting the live entries it
    /// evicts in `evictions` and showing its size in `entries`.
    pub fn new(capacity: usize, evictions: Counter, entries: Gauge) -> Affinity {
        Affinity {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
                puts_since_sweep: 0,
            }),
            capacity: capacity.max(1),
            evictions,
            entries,
        }
    }

    pub fn get(&self, rt: &CompiledConfig, lb: &Arc<str>, client: IpAddr) -> Option<Sticky> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = inner.map.get(&(lb.clone(), client))?;
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
        // A TTL past what the clock can represent means "until the node restarts".
        let expires = now
            .checked_add(ttl)
            .or_else(|| now.checked_add(FOREVER))
            .unwrap_or(now);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.retire_expired(now, RETIRE_PER_PUT);
        let key = (lb.clone(), client);
        if !inner.map.contains_key(&key) {
            while inner.map.len() >= self.capacity {
                if inner.retire_expired(now, usize::MAX) > 0 {
                    continue;
                }
                // Load balancers with different TTLs put entries that expire out of order:
                // a full table looks at every entry, at most once per half a table of puts.
                if inner.puts_since_sweep >= self.capacity / 2 {
                    inner.puts_since_sweep = 0;
                    inner.map.retain(|_, e| e.expires > now);
                    continue;
                }
                if !inner.evict_oldest() {
                    break;
                }
                self.evictions.inc();
            }
        }
        inner.seq += 1;
        inner.puts_since_sweep += 1;
        let seq = inner.seq;
        inner.order.push_back((key.clone(), seq));
        inner.map.insert(
            key,
            Entry {
                pool: pool.clone(),
                origin: origin.clone(),
                expires,
                seq,
            },
        );
        inner.compact();
        self.entries.set(inner.map.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries this table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Inner {
    /// Removes expired entries from the old end, up to `max` of them, stopping at the first
    /// live one; stale positions on the way are dropped. Returns how many it removed.
    fn retire_expired(&mut self, now: Instant, max: usize) -> usize {
        let mut removed = 0;
        while removed < max {
            let Some((key, seq)) = self.order.front() else {
                break;
            };
            match self.map.get(key) {
                Some(e) if e.seq == *seq => {
                    if e.expires > now {
                        break;
                    }
                    self.map.remove(key);
                    removed += 1;
                }
                // Put again later, or already gone: a stale position.
                _ => {}
            }
            self.order.pop_front();
        }
        removed
    }

    /// Evicts the entry put longest ago. Returns whether one was evicted.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
                return true;
            }
        }
        false
    }

    /// Drops stale positions once they outnumber the entries, so that one client refreshing
    /// its entry again and again cannot grow `order`: O(n) once per n puts.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(key, seq)| map.get(key).is_some_and(|e| e.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn names() -> (Arc<str>, Arc<str>, Arc<str>) {
        ("lb".into(), "pool".into(), "origin".into())
    }

    /// The n-th address of one /64, as a client rotating its address would use.
    fn rotating(n: u64) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_0000_0001u128 << 64) | u128::from(n),
        ))
    }

    fn held(a: &Affinity, lb: &Arc<str>, ip: IpAddr) -> bool {
        let inner = a.inner.lock().unwrap();
        inner.map.contains_key(&(lb.clone(), ip))
    }

    #[test]
    fn a_flood_of_distinct_clients_never_exceeds_the_bound() {
        let (lb, pool, origin) = names();
        let evictions = Counter::default();
        let a = Affinity::new(1_000, evictions.clone(), Gauge::default());
        let now = Instant::now();
        let ttl = Duration::from_secs(82_800);
        for n in 0..20_000 {
            a.put(&lb, rotating(n), &pool, &origin, now, ttl);
            assert!(a.len() <= 1_000, "{} entries after {n} puts", a.len());
        }
        assert_eq!(a.len(), 1_000);
        // Every put past the bound evicted one live entry, the oldest.
        assert_eq!(evictions.get(), 19_000);
        assert!(held(&a, &lb, rotating(19_999)));
        assert!(!held(&a, &lb, rotating(0)));
        // The positions kept for expiry stay bounded too.
        assert!(a.inner.lock().unwrap().order.len() <= 2 * 1_000 + 64);
    }

    #[test]
    fn expired_entries_go_without_a_full_table() {
        let (lb, pool, origin) = names();
        let a = Affinity::new(100_000, Counter::default(), Gauge::default());
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for n in 0..500 {
            a.put(&lb, rotating(n), &pool, &origin, t0, ttl);
        }
        // After the TTL, each new client's put retires old entries as it goes.
        let later = t0 + Duration::from_secs(61);
        for n in 500..1_000 {
            a.put(&lb, rotating(n), &pool, &origin, later, ttl);
        }
        assert_eq!(a.len(), 500, "only the live clients are left");
        assert!(!held(&a, &lb, rotating(0)));
        assert!(held(&a, &lb, rotating(999)));
    }

    #[test]
    fn a_full_table_evicts_expired_entries_before_live_ones() {
        let (lb, pool, origin) = names();
        let evictions = Counter::default();
        let a = Affinity::new(10, evictions.clone(), Gauge::default());
        let t0 = Instant::now();
        let other: Arc<str> = "other".into();
        // Five long-lived entries first, then five short-lived ones.
        for n in 0..5 {
            a.put(
                &other,
                rotating(n),
                &pool,
                &origin,
                t0,
                Duration::from_secs(3600),
            );
        }
        for n in 5..10 {
            a.put(&lb, rotating(n), &pool, &origin, t0, Duration::from_secs(1));
        }
        let later = t0 + Duration::from_secs(2);
        a.put(
            &lb,
            rotating(10),
            &pool,
            &origin,
            later,
            Duration::from_secs(1),
        );
        // The long-lived entries are older but live: the expired ones made the room.
        for n in 0..5 {
            assert!(held(&a, &other, rotating(n)), "live entry {n} was evicted");
        }
        assert_eq!(evictions.get(), 0);
    }

    #[test]
    fn a_live_entry_that_keeps_being_used_survives_a_flood() {
        let (lb, pool, origin) = names();
        let a = Affinity::new(100, Counter::default(), Gauge::default());
        let now = Instant::now();
        let ttl = Duration::from_secs(600);
        let regular: IpAddr = "192.0.2.7".parse().unwrap();
        for n in 0..10_000 {
            if n % 50 == 0 {
                a.put(&lb, regular, &pool, &origin, now, ttl);
            }
            a.put(&lb, rotating(n), &pool, &origin, now, ttl);
            assert!(held(&a, &lb, regular), "evicted after {n} others");
        }
        assert!(a.inner.lock().unwrap().order.len() <= 2 * 100 + 64);
    }

    #[test]
    fn one_client_refreshing_does_not_grow_the_table() {
        let (lb, pool, origin) = names();
        let a = Affinity::new(1_000, Counter::default(), Gauge::default());
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for s in 0..10_000u64 {
            let now = t0 + Duration::from_millis(s);
            a.put(&lb, ip, &pool, &origin, now, Duration::from_secs(60));
        }
        assert_eq!(a.len(), 1);
        assert!(a.inner.lock().unwrap().order.len() <= 2 + 64);
    }

    #[test]
    fn a_ttl_beyond_the_clock_does_not_panic() {
        let (lb, pool, origin) = names();
        let a = Affinity::default();
        let now = Instant::now();
        a.put(&lb, rotating(1), &pool, &origin, now, Duration::MAX);
        assert!(held(&a, &lb, rotating(1)));
    }
}
