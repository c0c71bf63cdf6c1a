//! The seed corpus: small valid inputs for every target, made with the code's own encoders
//! wherever it has one (envelopes and batches through `codec::encode`, SWIM packets through
//! `FocaCodec` and a running foca, PROXY headers through `proxy_protocol::encode`, GeoIP
//! databases through mmdb-writer and `geoip::build_bytes`), so the fuzzer starts past the
//! first checks of each decoder. `make-seeds` writes them to `corpus/<target>/`.

use std::net::SocketAddr;

use bytes::BufMut;
use foca::{AccumulatingRuntime, Codec, Foca, Header, Member, Message, NoCustomBroadcast, State};
use mmdb_writer::{IpVersion, Value, Writer};
use rand010::rngs::StdRng;
use rand010::SeedableRng;
use switchyard_gossip::codec::{self, FocaCodec};
use switchyard_gossip::table::Digest;
use switchyard_gossip::wire::{Envelope, Msg, ProbeOutcome};
use switchyard_gossip::{
    NodeIdentity, Profile, RefuseReason, RelayRequest, RelayResponse, Timings,
};
use switchyard_node::proxy::proxy_protocol::{encode as proxy_encode, Version};

use crate::mesh::{certs, peer_batch, table, CLUSTER, LOCAL, PEER};
use crate::swim::{local, members};

/// One target's seeds: (file name, bytes).
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Every target's seeds, by target name.
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("mesh", mesh()),
        ("swim", swim()),
        ("machine", machine()),
        ("proxy_protocol", proxy_protocol()),
        ("dns", dns()),
        ("http_probe", http_probe()),
        ("geoip", geoip()),
        ("geoip_csv", geoip_csv()),
        ("config", config()),
    ]
}

fn named(items: Vec<(&str, Vec<u8>)>) -> Seeds {
    items.into_iter().map(|(n, b)| (n.to_string(), b)).collect()
}

fn envelope(from: &str, msg: Msg) -> Vec<u8> {
    codec::encode(&Envelope {
        cluster: CLUSTER.into(),
        from: from.into(),
        msg,
    })
    .expect("encodes")
}

pub fn mesh() -> Seeds {
    let digest = table().digest();
    let stale = Digest {
        entries: vec![(LOCAL.into(), 1, 0), (PEER.into(), 1_700_000_000_000, 1)],
    };
    let client: SocketAddr = "198.51.100.7:50123".parse().expect("an address");
    named(vec![
        ("push-full", envelope(PEER, Msg::Push(peer_batch(0)))),
        ("push-delta", envelope(PEER, Msg::Push(peer_batch(1)))),
        (
            "delta",
            envelope(LOCAL, Msg::Delta(vec![peer_batch(0), peer_batch(2)])),
        ),
        (
            "digest",
            envelope(
                PEER,
                Msg::Digest {
                    digest: digest.clone(),
                    reply: false,
                },
            ),
        ),
        (
            "digest-stale",
            envelope(
                PEER,
                Msg::Digest {
                    digest: stale,
                    reply: true,
                },
            ),
        ),
        (
            "summary",
            envelope(
                PEER,
                Msg::Summary {
                    fingerprint: digest.fingerprint(),
                },
            ),
        ),
        (
            "cert-request",
            envelope(PEER, Msg::CertRequest(vec![LOCAL.into(), PEER.into()])),
        ),
        (
            "certs",
            envelope(PEER, Msg::Certs(vec![certs().peer.cert_der().to_vec()])),
        ),
        (
            "probe-ask",
            envelope(
                PEER,
                Msg::ProbeAsk {
                    id: 7,
                    pool: "web".into(),
                    origin: "wnam-1".into(),
                },
            ),
        ),
        (
            "probe-answer",
            envelope(
                PEER,
                Msg::ProbeAnswer {
                    id: 7,
                    outcome: ProbeOutcome::Down {
                        reason: "connect refused".into(),
                    },
                },
            ),
        ),
        (
            "relay-request",
            codec::encode(&RelayRequest {
                load_balancer: "lb".into(),
                pool: "web".into(),
                origin: "weu-1".into(),
                client,
                hops: 0,
            })
            .expect("encodes"),
        ),
        (
            "relay-refused",
            codec::encode(&RelayResponse::Refused(RefuseReason::NotMember)).expect("encodes"),
        ),
    ])
}

/// The `swim` seeds as datagrams (first byte 0) and the `mesh` seeds as streams (1).
pub fn machine() -> Seeds {
    let on = |channel: u8, seeds: Seeds, kind: &'static str| {
        seeds.into_iter().map(move |(name, bytes)| {
            let mut v = vec![channel];
            v.extend(bytes);
            (format!("{kind}-{name}"), v)
        })
    };
    on(0, swim(), "swim")
        .chain(on(1, mesh(), "stream"))
        .collect()
}

fn packet(header: &Header<NodeIdentity>, updates: &[Member<NodeIdentity>]) -> Vec<u8> {
    let mut buf = Vec::new();
    FocaCodec.encode_header(header, &mut buf).expect("encodes");
    buf.put_u16(updates.len() as u16);
    for m in updates {
        FocaCodec.encode_member(m, &mut buf).expect("encodes");
    }
    buf
}

pub fn swim() -> Seeds {
    let [peer, other] = members();
    let me = local();
    let header = |message| Header {
        src: peer.clone(),
        src_incarnation: 0,
        dst: me.clone(),
        message,
    };
    let updates = [
        Member::alive(other.clone()),
        Member::new(me.clone(), 0, State::Suspect),
    ];
    let mut seeds = named(vec![
        ("ping", packet(&header(Message::Ping(1)), &updates)),
        ("ack", packet(&header(Message::Ack(1)), &[])),
        (
            "ping-req",
            packet(
                &header(Message::PingReq {
                    target: other.clone(),
                    probe_number: 2,
                }),
                &updates[..1],
            ),
        ),
        (
            "indirect-ack",
            packet(
                &header(Message::IndirectAck {
                    target: other.clone(),
                    probe_number: 2,
                }),
                &[],
            ),
        ),
        ("announce", packet(&header(Message::Announce), &[])),
        ("feed", packet(&header(Message::Feed), &updates)),
        ("gossip", packet(&header(Message::Gossip), &updates)),
        (
            "down-member",
            packet(
                &header(Message::Gossip),
                &[Member::new(other.clone(), 3, State::Down)],
            ),
        ),
    ]);

    // What a running foca sends: an announce, and a round of probes.
    let timings = Timings::for_profile(Profile::Wan, 16).clamped();
    let mut foca: Foca<NodeIdentity, FocaCodec, StdRng, NoCustomBroadcast> = Foca::new(
        peer.clone(),
        timings.foca_config(Profile::Wan, 16),
        StdRng::seed_from_u64(1),
        FocaCodec,
    );
    let mut rt = AccumulatingRuntime::new();
    foca.announce(me.clone(), &mut rt).expect("announces");
    let mut sent = Vec::new();
    while let Some((_, data)) = rt.to_send() {
        sent.push(data.to_vec());
    }
    foca.apply_many(
        [Member::alive(me), Member::alive(other)].into_iter(),
        true,
        &mut rt,
    )
    .expect("applies");
    for _ in 0..4 {
        while let Some((_, data)) = rt.to_send() {
            sent.push(data.to_vec());
        }
        let Some((_, timer)) = rt.to_schedule() else {
            break;
        };
        let _ = foca.handle_timer(timer, &mut rt);
    }
    seeds.extend(
        sent.into_iter()
            .enumerate()
            .map(|(i, data)| (format!("foca-sent-{i}"), data)),
    );
    seeds
}

pub fn proxy_protocol() -> Seeds {
    let v4 = |s: &str| s.parse::<SocketAddr>().expect("an address");
    let (c4, l4) = (v4("198.51.100.7:50123"), v4("192.0.2.1:443"));
    let (c6, l6) = (v4("[2001:db8::7]:50123"), v4("[2001:db8::1]:443"));
    let with_payload = |mut h: Vec<u8>| {
        h.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        h
    };
    let mut v2_local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2_local.extend([0x20, 0x00, 0x00, 0x00]);
    // A v2 header with a TLV after the addresses (type 0x04 NOOP, 2 bytes).
    let mut v2_tlv = proxy_encode(Version::V2, c4, l4);
    v2_tlv[15] += 5;
    v2_tlv.extend([0x04, 0x00, 0x02, 0xAA, 0xBB]);
    named(vec![
        ("v1-tcp4", proxy_encode(Version::V1, c4, l4)),
        ("v1-tcp6", proxy_encode(Version::V1, c6, l6)),
        ("v1-mixed", proxy_encode(Version::V1, c4, l6)),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec()),
        (
            "v1-payload",
            with_payload(proxy_encode(Version::V1, c4, l4)),
        ),
        ("v2-tcp4", proxy_encode(Version::V2, c4, l4)),
        ("v2-tcp6", with_payload(proxy_encode(Version::V2, c6, l6))),
        ("v2-local", v2_local),
        ("v2-tlv", v2_tlv),
    ])
}

/// A DNS query for `name` of `qtype`, with an OPT record carrying `opt` when given.
pub fn query(id: u16, name: &str, qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.push(0);
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    if let Some(options) = opt {
        q.push(0);
        q.extend(41u16.to_be_bytes());
        q.extend(1232u16.to_be_bytes());
        q.extend([0, 0, 0, 0]);
        q.extend((options.len() as u16).to_be_bytes());
        q.extend(options);
    }
    q
}

/// An EDNS Client Subnet option for `addr` (family 1 or 2) with `prefix` bits.
fn ecs(family: u16, prefix: u8, addr: &[u8]) -> Vec<u8> {
    let mut o = 8u16.to_be_bytes().to_vec();
    o.extend((4 + addr.len() as u16).to_be_bytes());
    o.extend(family.to_be_bytes());
    o.extend([prefix, 0]);
    o.extend(addr);
    o
}

pub fn dns() -> Seeds {
    let ecs_weu = ecs(1, 24, &[100, 64, 2]);
    let ecs_seas = ecs(2, 48, &[0x20, 0x01, 0x0d, 0xb8, 0, 3]);
    named(vec![
        ("a", query(1, "game.lb.example.com", 1, None)),
        ("aaaa-edns", query(2, "GAME.lb.example.com", 28, Some(&[]))),
        ("a-ecs", query(3, "api.lb.example.com", 1, Some(&ecs_weu))),
        (
            "aaaa-ecs6",
            query(4, "game.lb.example.com", 28, Some(&ecs_seas)),
        ),
        ("ns", query(5, "lb.example.com", 2, Some(&[]))),
        ("soa", query(6, "lb.example.com", 6, None)),
        ("nxdomain", query(7, "nope.lb.example.com", 1, None)),
        ("outside", query(8, "example.org", 1, None)),
        ("axfr", query(9, "lb.example.com", 252, None)),
        (
            "nameserver",
            query(10, "edge-wnam-1.ns.lb.example.com", 1, None),
        ),
    ])
}

pub fn http_probe() -> Seeds {
    // The first byte picks the settings (see `http_probe::spec`) and the read size.
    let with = |pick: u8, response: &[u8]| {
        let mut v = vec![pick];
        v.extend_from_slice(response);
        v
    };
    named(vec![
        (
            "ok",
            with(
                0xFC,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            ),
        ),
        (
            "body-split",
            with(
                0x01,
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nall is ok\r\n",
            ),
        ),
        (
            "chunked",
            with(
                0x0D,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nal \r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
            ),
        ),
        (
            "close-delimited",
            with(0x41, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhealth: ok\n"),
        ),
        (
            "status-503",
            with(0xFC, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "redirect-head",
            with(0x06, b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 5\r\n\r\n"),
        ),
        (
            "continue",
            with(
                0xFC,
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            ),
        ),
    ])
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("a network")
}

pub fn geoip() -> Seeds {
    let names = |en: &str| Value::map([("en", en)]);
    let country = |cc: &str| {
        Value::map([
            ("geoname_id", Value::from(2_635_167_u32)),
            ("iso_code", Value::from(cc)),
            ("names", names(cc)),
        ])
    };

    let mut maxmind_country = Writer::builder("GeoLite2-Country")
        .languages(["en"])
        .description(&[("en", "fuzz seed")])
        .build();
    for (n, cc) in [("81.2.69.0/24", "GB"), ("2a02:8100::/32", "DE")] {
        maxmind_country
            .insert_value(
                net(n),
                Value::map([
                    ("country", country(cc)),
                    ("registered_country", country(cc)),
                ]),
            )
            .expect("insert");
    }
    maxmind_country
        .insert_value(
            net("10.1.0.0/16"),
            Value::map([("registered_country", country("SE"))]),
        )
        .expect("insert");

    let mut maxmind_city = Writer::builder("GeoLite2-City").languages(["en"]).build();
    maxmind_city
        .insert_value(
            net("81.2.69.0/24"),
            Value::map([
                ("country", country("GB")),
                (
                    "subdivisions",
                    Value::array([Value::map([("iso_code", "ENG")])]),
                ),
                (
                    "location",
                    Value::map([("latitude", 51.5142), ("longitude", -0.0931)]),
                ),
            ]),
        )
        .expect("insert");

    let mut dbip = Writer::builder("dbip-country-lite")
        .ip_version(IpVersion::V4)
        .languages(Vec::<String>::new())
        .build();
    for (n, cc) in [("1.0.0.0/24", "AU"), ("203.0.113.0/24", "US")] {
        dbip.insert_value(net(n), Value::map([("country_code", cc)]))
            .expect("insert");
    }

    named(vec![
        (
            "maxmind-country.mmdb",
            maxmind_country.to_bytes().expect("writes"),
        ),
        (
            "maxmind-city.mmdb",
            maxmind_city.to_bytes().expect("writes"),
        ),
        ("dbip-v4.mmdb", dbip.to_bytes().expect("writes")),
        (
            "switchyard.mmdb",
            switchyard_geo::geoip::build_bytes(LAB_CSV).expect("builds"),
        ),
    ])
}

/// A CSV as `switchyard geoip build` reads it, with the liberties its format allows: a byte
/// order mark, comments, a header, blank lines, spaces around fields, lower-case codes,
/// subdivisions with and without their country, CRLF, a lone address, IPv6, empty fields.
pub const LAB_CSV: &str = "\u{feff}# fuzz seed\n\
    network,country,subdivision,latitude,longitude\n\
    10.3.0.0/16,SG   # inside the /8 below, listed first\n\
    10.0.0.0/8,US,TX,30.27,-97.74\n\
    \n\
    172.20.0.0/14, se , ab\n\
    192.168.5.0/24,ES,,40.42,-3.70\r\n\
    192.168.9.9,PT,PT-11\n\
    fd12::/16,KR,11\n\
    100.100.0.0/16,BE,,,\n";

pub fn geoip_csv() -> Seeds {
    named(vec![
        ("lab.csv", LAB_CSV.as_bytes().to_vec()),
        (
            "small.csv",
            b"cidr,country\n81.2.69.0/24,GB\n2a02:8100::/32,DE,BE,50.8,4.35\n".to_vec(),
        ),
    ])
}

pub fn config() -> Seeds {
    let file = |path: &str| {
        let full = concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_string() + "/" + path;
        std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    };
    named(vec![
        ("example-node.toml", file("deploy/examples/node.toml")),
        (
            "compose-edge-weu.toml",
            file("deploy/compose/configs/edge-weu.toml"),
        ),
        ("dns.toml", crate::dns::CONFIG.as_bytes().to_vec()),
        (
            "mesh.toml",
            format!(
                "{}\n[mesh]\ncluster = \"prod\"\nseeds = [\"192.0.2.2:7946\"]\nprofile = \"wan\"\n\
                 ca = \"/etc/switchyard/ca.crt\"\ncert = \"/etc/switchyard/edge.crt\"\n\
                 key = \"/etc/switchyard/edge.key\"\nquorum = 0.66\n",
                crate::dns::CONFIG
            )
            .into_bytes(),
        ),
    ])
}
