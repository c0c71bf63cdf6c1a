//! Target `swim`: a SWIM datagram, decoded as the mesh task decodes it before it trusts any
//! of it (`FocaCodec`: the header, then a big-endian count and that many members), then
//! handed to a foca instance configured as the mesh configures it, which knows two members
//! already. What foca asks for in return (packets to send, timers) is carried out too: the
//! packets are decoded again, and a bounded number of the timers it set are fired.

use std::net::SocketAddr;

use bytes::Buf;
use foca::{AccumulatingRuntime, Codec, Foca, Member, NoCustomBroadcast};
use rand010::rngs::StdRng;
use rand010::SeedableRng;
use switchyard_geo::Region;
use switchyard_gossip::codec::FocaCodec;
use switchyard_gossip::{NodeIdentity, Profile, Timings};

/// Timers fired per input: enough for a probe round, and a bound however foca reschedules.
const TIMERS: usize = 16;

/// A member of the mesh the target's foca belongs to.
pub fn identity(id: &str, region: Region, addr: &str, generation: u64) -> NodeIdentity {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let mut id = NodeIdentity::unsigned(id, region, addr, crate::mesh::CLUSTER, generation);
    // Signatures are checked before foca sees an identity (the task does that, not foca),
    // so any bytes of a signature's size stand for one here.
    id.sig = vec![0x30; 71];
    id
}

/// This node as foca knows itself.
pub fn local() -> NodeIdentity {
    identity(crate::mesh::LOCAL, Region::Wnam, "192.0.2.1:7946", 1)
}

/// The members this node's foca already knows.
pub fn members() -> [NodeIdentity; 2] {
    [
        identity(crate::mesh::PEER, Region::Weu, "192.0.2.2:7946", 1),
        identity("edge-seas-1", Region::Seas, "[2001:db8::3]:7946", 5),
    ]
}

type Swim = Foca<NodeIdentity, FocaCodec, StdRng, NoCustomBroadcast>;

pub fn run(data: &[u8]) {
    decode_as_the_task_does(data);

    let timings = Timings::for_profile(Profile::Wan, 16).clamped();
    let mut foca: Swim = Foca::new(
        local(),
        timings.foca_config(Profile::Wan, 16),
        // Seeded: the same input takes the same path, as a fuzzer needs.
        StdRng::seed_from_u64(0x5357_494d),
        FocaCodec,
    );
    let mut rt = AccumulatingRuntime::new();
    let known = members().into_iter().map(Member::alive);
    foca.apply_many(known, true, &mut rt)
        .expect("known members apply");
    drain(&mut rt);

    let _ = foca.handle_data(data, &mut rt);
    let mut fired = 0;
    while let Some((_, timer)) = rt.to_schedule() {
        drain_sends(&mut rt);
        if fired == TIMERS {
            break;
        }
        fired += 1;
        let _ = foca.handle_timer(timer, &mut rt);
    }
    drain(&mut rt);
    let _ = foca.iter_members().count();
}

/// The task's own reading of a datagram, before foca's: header, count, members.
fn decode_as_the_task_does(data: &[u8]) {
    let mut rest = data;
    let Ok(header) = FocaCodec.decode_header(&mut rest) else {
        return;
    };
    if rest.len() < 2 || header.message == foca::Message::Broadcast {
        return;
    }
    let count = rest.get_u16();
    for _ in 0..count {
        let before = rest.len();
        if FocaCodec.decode_member(&mut rest).is_err() {
            return;
        }
        assert!(rest.len() < before, "a member takes at least one byte");
    }
}

/// Every packet foca wants sent decodes (it is what peers will read), and no more than
/// the mesh's packet size.
fn drain_sends(rt: &mut AccumulatingRuntime<NodeIdentity>) {
    while let Some((_, packet)) = rt.to_send() {
        assert!(packet.len() <= switchyard_gossip::MAX_SWIM_PACKET);
        let mut rest = &packet[..];
        FocaCodec
            .decode_header(&mut rest)
            .expect("foca's own packet decodes");
    }
}

fn drain(rt: &mut AccumulatingRuntime<NodeIdentity>) {
    drain_sends(rt);
    while rt.to_notify().is_some() {}
    while rt.to_schedule().is_some() {}
}
