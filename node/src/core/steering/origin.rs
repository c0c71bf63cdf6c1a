//! Origin steering within a chosen pool: weighted random, consistent hash of the client
//! address (weighted rendezvous hashing) and least connections. Each origin's score depends
//! only on the client, the origin and the draw, so every node agrees without talking.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use switchyard_gossip::hash::{fnv1a, FNV_OFFSET};

use super::{unit, Ctx, OriginWhy};
use crate::config::{canonical_ip, OriginSteering};

/// Picks an origin of `pool`: among its usable origins, or, when none is (a fallback pool
/// is used regardless of health), among its enabled origins not yet tried.
pub(super) fn pick_origin(cx: &Ctx<'_, '_>, pool: usize) -> Option<(usize, OriginWhy)> {
    let req = cx.req;
    let p = &cx.rt.pools[pool];
    let any_usable = (0..p.origins.len()).any(|o| cx.usable(pool, o));
    let candidate = |o: usize| {
        if any_usable {
            cx.usable(pool, o)
        } else {
            p.origins[o].enabled && !req.exclude.contains(&(pool, o))
        }
    };
    let n = p.origins.len();
    if !(0..n).any(candidate) {
        return None;
    }
    // A weight of 0 takes no traffic, unless every candidate weighs 0.
    let all_zero = (0..n)
        .filter(|o| candidate(*o))
        .all(|o| p.origins[o].weight <= 0.0);
    let weight = |o: usize| {
        if all_zero {
            1.0
        } else {
            p.origins[o].weight
        }
    };
    let weighted = |o: usize| candidate(o) && weight(o) > 0.0;

    let origin = match p.steering {
        OriginSteering::Random => {
            let total: f64 = (0..n).filter(|o| weighted(*o)).map(weight).sum();
            let draw = unit(req.random) * total;
            let mut acc = 0.0;
            let mut pick = None;
            for o in (0..n).filter(|o| weighted(*o)) {
                acc += weight(o);
                pick = Some(o);
                if draw < acc {
                    break;
                }
            }
            pick
        }
        OriginSteering::Hash => {
            // Weighted rendezvous hashing: each origin's score depends only on the client
            // and that origin, so removing one origin moves only the clients it had.
            let client = hash_ip(req.client);
            (0..n)
                .filter(|o| weighted(*o))
                .map(|o| {
                    let h = mix(client ^ hash_str(&p.origins[o].name));
                    // In (0, 1]: never ln(0).
                    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                    (o, -weight(o) / u.ln())
                })
                .fold(None, |best: Option<(usize, f64)>, (o, s)| match best {
                    Some((_, bs)) if bs >= s => best,
                    _ => Some((o, s)),
                })
                .map(|(o, _)| o)
        }
        OriginSteering::LeastConnections => {
            // Start at a random origin so that ties spread instead of piling on the first.
            let start = (req.random % n as u64) as usize;
            (0..n)
                .map(|i| (start + i) % n)
                .filter(|o| weighted(*o))
                .map(|o| {
                    let active = p.origins[o].active.load(Ordering::Relaxed) as f64;
                    (o, (active + 1.0) / weight(o))
                })
                .fold(None, |best: Option<(usize, f64)>, (o, s)| match best {
                    Some((_, bs)) if bs <= s => best,
                    _ => Some((o, s)),
                })
                .map(|(o, _)| o)
        }
    }?;
    let why = if !any_usable {
        OriginWhy::NoneHealthy
    } else {
        match p.steering {
            OriginSteering::Random => OriginWhy::Random,
            OriginSteering::Hash => OriginWhy::Hash,
            OriginSteering::LeastConnections => OriginWhy::LeastConnections,
        }
    };
    Some((origin, why))
}

/// splitmix64's finalizer: a fixed, well-mixed function, the same on every node and release.
pub(super) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a: every node hashes a client alike, unlike with std's randomly keyed hasher.
fn fnv(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, bytes)
}

fn hash_str(s: &str) -> u64 {
    mix(fnv(s.as_bytes()))
}

fn hash_ip(ip: IpAddr) -> u64 {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => mix(fnv(&v4.octets())),
        IpAddr::V6(v6) => mix(fnv(&v6.octets())),
    }
}
