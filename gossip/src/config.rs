//! How a mesh node is configured: what it needs to start ([`MeshConfig`]), how SWIM is tuned
//! ([`Profile`]) and the timings of membership and replication ([`Timings`]), down to the foca
//! configuration they make.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_geo::Region;

/// Largest SWIM packet: quinn allows 1162-byte datagrams right after the handshake, before
/// path MTU discovery raises it.
pub const MAX_SWIM_PACKET: usize = 1100;

/// How SWIM is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Lan,
    Wan,
}

/// Timings of membership and replication. `Timings::for_profile` gives the defaults; tests
/// shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_to_down_after: Duration,
    /// How often seeds and members believed down are announced to, so a healed partition
    /// merges by itself.
    pub announce_period: Duration,
    pub anti_entropy_period: Duration,
    pub rtt_batch: Duration,
}

impl Timings {
    /// Detects a crashed node within about 10 s at 50 nodes on a LAN, and tolerates a node
    /// that stalls for 2 s (the suspicion lasts longer than that).
    pub fn for_profile(profile: Profile, expected_size: u32) -> Timings {
        let size = NonZeroU32::new(expected_size.max(2)).unwrap_or(NonZeroU32::MIN);
        let foca = match profile {
            Profile::Lan => foca::Config::new_lan(size),
            Profile::Wan => foca::Config::new_wan(size),
        };
        Timings {
            probe_period: foca.probe_period,
            probe_rtt: foca.probe_rtt,
            // Never below 3 s: a 2 s stall must not become a false down.
            suspect_to_down_after: foca.suspect_to_down_after.max(Duration::from_secs(3)),
            announce_period: match profile {
                Profile::Lan => Duration::from_secs(5),
                Profile::Wan => Duration::from_secs(15),
            },
            anti_entropy_period: Duration::from_millis(1500),
            rtt_batch: Duration::from_millis(100),
        }
    }

    /// The same timings, each moved into the range in which the mesh task runs: no period
    /// zero (a zero-period timer panics, and a zero anti-entropy delay would spin), none so
    /// long that adding it to the clock overflows, and the probe timeout below the probe
    /// period, as foca requires. The node's config validation refuses values outside these
    /// ranges with their location; this is the guard behind it.
    pub fn clamped(self) -> Timings {
        let clamp = |d: Duration, min: Duration, max: Duration| d.clamp(min, max);
        let ms = Duration::from_millis;
        let hour = Duration::from_secs(3600);
        let probe_period = clamp(self.probe_period, ms(10), hour);
        Timings {
            probe_period,
            probe_rtt: clamp(self.probe_rtt, ms(1), probe_period - ms(1)),
            suspect_to_down_after: clamp(self.suspect_to_down_after, ms(10), hour),
            announce_period: clamp(self.announce_period, ms(10), hour),
            anti_entropy_period: clamp(self.anti_entropy_period, ms(10), hour),
            rtt_batch: clamp(self.rtt_batch, ms(1), hour),
        }
    }

    /// The foca configuration the mesh task runs with. Public so that whatever drives foca
    /// outside the task (the fuzz targets in `fuzz/`) drives it as the mesh does.
    pub fn foca_config(&self, profile: Profile, expected_size: u32) -> foca::Config {
        let size = NonZeroU32::new(expected_size.max(2)).unwrap_or(NonZeroU32::MIN);
        let mut c = match profile {
            Profile::Lan => foca::Config::new_lan(size),
            Profile::Wan => foca::Config::new_wan(size),
        };
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down_after;
        c.max_packet_size = NonZeroUsize::new(MAX_SWIM_PACKET).unwrap_or(NonZeroUsize::MIN);
        // News of a member is repeated twice as often as foca's default: with 50 nodes
        // joining at once, 6 repetitions left some pairs unaware of each other for up to a
        // minute; 12 converges in under 2 s at no measurable idle cost (mesh benchmark).
        c.max_transmissions = c
            .max_transmissions
            .saturating_mul(std::num::NonZeroU8::new(2).unwrap_or(std::num::NonZeroU8::MIN));
        // Down members are forgotten after a while; a restarted node rejoins under a new
        // generation anyway.
        c.remove_down_after = Some(Duration::from_secs(3600));
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_period,
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        c
    }
}

/// The fewest members [`MeshConfig::max_members`] allows, whatever `expected_size` says.
pub const MIN_MAX_MEMBERS: usize = 64;

/// What a mesh node needs to start.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub node_id: String,
    pub region: Region,
    pub cluster: String,
    pub listen: SocketAddr,
    /// The address peers reach this node at; defaults to the bound address.
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    pub profile: Profile,
    pub expected_size: u32,
    pub timings: Timings,
    /// Fingerprint of this node's config, gossiped for drift detection.
    pub fingerprint: u64,
}

impl MeshConfig {
    /// Most members (other nodes, alive, suspect or down) this node admits: twice
    /// `expected_size`, room for a cluster replaced node by node under new ids (a down
    /// member is forgotten after an hour), and at least [`MIN_MAX_MEMBERS`]. Updates about
    /// further members are dropped and counted, and such members are never dialed.
    pub fn max_members(&self) -> usize {
        (self.expected_size as usize)
            .saturating_mul(2)
            .max(MIN_MAX_MEMBERS)
    }

    /// Most peer links (and, twice this, QUIC connections): every admitted member, every
    /// seed, and a few joining peers not yet admitted.
    pub fn max_links(&self) -> usize {
        self.max_members() + self.seeds.len() + 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamped_timings_are_usable_whatever_went_in() {
        let lan = Timings::for_profile(Profile::Lan, 50);
        assert_eq!(lan.clamped().probe_period, lan.probe_period);
        for d in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let t = Timings {
                probe_period: d,
                probe_rtt: d,
                suspect_to_down_after: d,
                announce_period: d,
                anti_entropy_period: d,
                rtt_batch: d,
            }
            .clamped();
            for p in [
                t.probe_period,
                t.probe_rtt,
                t.suspect_to_down_after,
                t.announce_period,
                t.anti_entropy_period,
                t.rtt_batch,
            ] {
                assert!(!p.is_zero() && p <= Duration::from_secs(3600), "{t:?}");
            }
            assert!(t.probe_rtt < t.probe_period, "{t:?}");
            // What the mesh task computes from them does not overflow.
            let _ = t.suspect_to_down_after * 2 + t.probe_period;
        }
    }
}
