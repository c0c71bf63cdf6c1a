//! The one place where mesh wire messages become bytes and back: bincode (through serde) behind
//! a format-version byte, with size limits that hold against hostile input, plus the codec
//! foca uses for SWIM packets. Nothing else in the mesh calls bincode, so a format change is
//! made here and nowhere else.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bytes::{Buf, BufMut};
use foca::{Header, Member};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::identity::NodeIdentity;

/// Version of the wire format. Every message (and every foca packet) starts with it, so that
/// nodes of two releases can run side by side during a rolling upgrade and refuse, with a clear
/// error, what they cannot read instead of misreading it.
/// Version 2: SWIM identities and health-row batches carry their writer's signature.
/// Version 3: rows carry their writer's verdict; peers ask each other to probe an origin.
/// Version 4: batches carry their writer's signed advert (public addresses, readiness,
/// names served) for the mesh's DNS.
/// Relay frames (`relay`) came without a new version: they travel only on bidirectional
/// streams, which nodes before them never grant, and every earlier message is unchanged.
pub const FORMAT_VERSION: u8 = 4;

// Node has always found the fingerprint hash here.

/// Largest message `decode` accepts and `encode` produces, version byte included.
pub const MAX_MESSAGE: usize = 8 << 20;

/// Ceiling for one foca item: a QUIC datagram is far smaller, so anything claiming more is
/// garbage, and the limit keeps a hostile length prefix from allocating.
const MAX_FOCA_ITEM: usize = 64 << 10;

type Config<const N: usize> = Configuration<LittleEndian, Varint, Limit<N>>;

fn config<const N: usize>() -> Config<N> {
    // The limit bounds what bincode may claim while decoding, so a length prefix saying
    // "4 GiB of string follows" fails instead of reserving 4 GiB.
    bincode::config::standard().with_limit::<N>()
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty message: expected at least the format version byte")]
    Empty,
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("unknown format version {0} (this node speaks {FORMAT_VERSION}); upgrade it")]
    UnknownVersion(u8),
    #[error("malformed message: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    #[error("cannot encode message: {0}")]
    Encode(#[source] bincode::error::EncodeError),
    #[error("{0} unexpected bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("no room for a {what} of {needed} bytes: the buffer has {remaining} left")]
    NoRoom {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
}

/// Encodes a wire message: the format version, then the bincode body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(msg, &mut out, config::<MAX_MESSAGE>())
        .map_err(CodecError::Encode)?;
    // Refuse here what every receiver would refuse, so the sender logs the real cause.
    if out.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes a wire message produced by [`encode`]; the whole input must be exactly one message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (msg, used) = bincode::serde::decode_from_slice(body, config::<MAX_MESSAGE>())
        .map_err(CodecError::Decode)?;
    match body.len().saturating_sub(used) {
        0 => Ok(msg),
        extra => Err(CodecError::TrailingBytes(extra)),
    }
}

/// foca's codec: a packet is a header (led by [`FORMAT_VERSION`]) followed by members, each
/// bincode-encoded. Members carry no version byte of their own: they only ever follow a header
/// in the same datagram, and the header's version covers them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FocaCodec;

impl FocaCodec {
    fn put(
        what: &'static str,
        version: Option<u8>,
        item: &impl Serialize,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        // Encode aside first: foca requires the buffer untouched when the item does not fit,
        // and it packs members until one fails, so running out of room is routine.
        let mut bytes = Vec::with_capacity(128);
        bytes.extend(version);
        bincode::serde::encode_into_std_write(item, &mut bytes, config::<MAX_FOCA_ITEM>())
            .map_err(CodecError::Encode)?;
        let remaining = buf.remaining_mut();
        if bytes.len() > remaining {
            return Err(CodecError::NoRoom {
                what,
                needed: bytes.len(),
                remaining,
            });
        }
        buf.put_slice(&bytes);
        Ok(())
    }

    fn take<T: DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
        // foca hands over contiguous buffers; if one ever is not, decoding the first chunk
        // fails cleanly rather than reading past it.
        let chunk = buf.chunk();
        let (item, used) = bincode::serde::decode_from_slice(chunk, config::<MAX_FOCA_ITEM>())
            .map_err(CodecError::Decode)?;
        buf.advance(used.min(chunk.len()));
        Ok(item)
    }
}

impl foca::Codec<NodeIdentity> for FocaCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put("header", Some(FORMAT_VERSION), header, buf)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        if !buf.has_remaining() {
            return Err(CodecError::Empty);
        }
        let version = buf.get_u8();
        if version != FORMAT_VERSION {
            return Err(CodecError::UnknownVersion(version));
        }
        Self::take(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put("member", None, member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        Self::take(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Batch, Digest, Row, Verdict};
    use foca::{Codec, Message, State};
    use proptest::prelude::*;
    use switchyard_geo::Region;

    fn ident(id: &str, generation: u64) -> NodeIdentity {
        let mut id = NodeIdentity::unsigned(
            id,
            Region::Weu,
            "[2001:db8::1]:7946".parse().unwrap(),
            "prod",
            generation,
        );
        // An ECDSA P-256 signature in DER is 70 to 72 bytes.
        id.sig = vec![0x30; 72];
        id
    }

    fn batch() -> Batch {
        Batch {
            node: "edge-weu-1".into(),
            region: Region::Weu,
            epoch: 1_700_000_000_000,
            base_seq: 3,
            seq: 5,
            removed_seq: 0,
            full: false,
            fingerprint: 0xdead_beef,
            advert: Default::default(),
            rows: vec![
                Row {
                    pool: "web".into(),
                    origin: "10.0.0.1:443".into(),
                    healthy: true,
                    rtt_us: Some(1234),
                    last_change_ms: 1_700_000_000_123,
                    reason: None,
                    verdict: None,
                    seq: 4,
                },
                Row {
                    pool: "web".into(),
                    origin: "10.0.0.2:443".into(),
                    healthy: false,
                    rtt_us: None,
                    last_change_ms: 1_700_000_000_456,
                    reason: Some("connect refused".into()),
                    verdict: Some(Verdict::Path),
                    seq: 5,
                },
            ],
            sig: vec![0x30; 71],
        }
    }

    fn digest() -> Digest {
        Digest {
            entries: vec![("a".into(), 1, 2), ("b".into(), 3, 4)],
        }
    }

    fn header() -> Header<NodeIdentity> {
        Header {
            src: ident("a", 1),
            src_incarnation: 7,
            dst: ident("b", 2),
            message: Message::PingReq {
                target: ident("c", 3),
                probe_number: 9,
            },
        }
    }

    #[test]
    fn wire_types_round_trip() {
        let b = batch();
        assert_eq!(decode::<Batch>(&encode(&b).unwrap()).unwrap(), b);
        let d = digest();
        assert_eq!(decode::<Digest>(&encode(&d).unwrap()).unwrap(), d);
    }

    #[test]
    fn every_message_starts_with_the_version() {
        assert_eq!(encode(&digest()).unwrap()[0], FORMAT_VERSION);
        let mut buf = Vec::new();
        FocaCodec.encode_header(&header(), &mut buf).unwrap();
        assert_eq!(buf[0], FORMAT_VERSION);
    }

    #[test]
    fn unknown_version_is_refused_with_advice() {
        let mut bytes = encode(&digest()).unwrap();
        bytes[0] = 7;
        let err = decode::<Digest>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::UnknownVersion(7)));
        assert_eq!(
            err.to_string(),
            "unknown format version 7 (this node speaks 4); upgrade it"
        );

        let mut buf = Vec::new();
        FocaCodec.encode_header(&header(), &mut buf).unwrap();
        buf[0] = 1;
        let err = FocaCodec.decode_header(&buf[..]).unwrap_err();
        assert!(matches!(err, CodecError::UnknownVersion(1)));
    }

    #[test]
    fn empty_oversized_and_trailing_input_is_refused() {
        assert!(matches!(decode::<Digest>(&[]), Err(CodecError::Empty)));

        let huge = vec![FORMAT_VERSION; 9_000_000];
        let err = decode::<Digest>(&huge).unwrap_err();
        assert_eq!(
            err.to_string(),
            "message of 9000000 bytes is over the 8388608-byte limit"
        );

        let mut bytes = encode(&digest()).unwrap();
        bytes.extend([0, 0]);
        assert!(matches!(
            decode::<Digest>(&bytes),
            Err(CodecError::TrailingBytes(2))
        ));
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A Digest claiming u64::MAX entries, then a string claiming 2^62 bytes.
        let mut bytes = vec![FORMAT_VERSION, 0xfd];
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.push(0xfd);
        bytes.extend((1u64 << 62).to_le_bytes());
        assert!(matches!(
            decode::<Digest>(&bytes),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            FocaCodec.decode_member(&bytes[1..]),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn oversized_messages_are_refused_when_encoding() {
        let big = Digest {
            entries: vec![("x".repeat(1 << 20), 0, 0); 9],
        };
        assert!(matches!(encode(&big), Err(CodecError::TooLarge(_))));
    }

    #[test]
    fn ipv6_scope_ids_do_not_travel() {
        // Known limit of serde's SocketAddrV6 encoding: a link-local listen address loses its
        // interface, so peers would see a different identity than the node has of itself.
        let mut id = ident("a", 1);
        id.addr = "[fe80::1%2]:7946".parse().unwrap();
        let member = Member::alive(id.clone());
        let mut buf = Vec::new();
        FocaCodec.encode_member(&member, &mut buf).unwrap();
        let back = FocaCodec.decode_member(&buf[..]).unwrap();
        assert_ne!(back.id(), &id);
        assert_eq!(back.id().addr.to_string(), "[fe80::1]:7946");
    }

    #[test]
    fn a_packet_decodes_item_by_item() {
        let members = [
            Member::alive(ident("a", 1)),
            Member::new(ident("b", 2), 3, State::Suspect),
            Member::new(ident("c", 3), 65535, State::Down),
        ];
        let mut buf = Vec::new();
        FocaCodec.encode_header(&header(), &mut buf).unwrap();
        for m in &members {
            FocaCodec.encode_member(m, &mut buf).unwrap();
        }

        let mut rest = &buf[..];
        assert_eq!(FocaCodec.decode_header(&mut rest).unwrap(), header());
        for m in &members {
            assert_eq!(&FocaCodec.decode_member(&mut rest).unwrap(), m);
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn a_member_that_does_not_fit_leaves_the_buffer_untouched() {
        let member = Member::alive(ident("a-rather-long-node-name", 1));
        let mut full = Vec::new();
        FocaCodec.encode_member(&member, &mut full).unwrap();

        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"prefix");
        // `limit` caps what may still be written, as foca's packet buffer does.
        let mut limited = (&mut buf).limit(full.len() - 1);
        let err = FocaCodec.encode_member(&member, &mut limited).unwrap_err();
        assert!(matches!(err, CodecError::NoRoom { .. }), "{err}");
        assert_eq!(buf, b"prefix");

        let mut limited = (&mut buf).limit(full.len());
        FocaCodec.encode_member(&member, &mut limited).unwrap();
        assert_eq!(&buf[6..], &full[..]);
    }

    #[test]
    fn a_header_fits_a_quic_datagram_with_room_to_spare() {
        // foca's max_packet_size will be ~1100 bytes; a header with three identities of the
        // longest ids, each with its signature (72 bytes), must still leave room for several
        // piggybacked members (typical ids leave far more).
        let long = |id: &str| {
            let mut long = ident("x", u64::MAX);
            long.id = id.repeat(8);
            long.cluster = "production-cluster".into();
            long
        };
        let header = Header {
            src: long("src-node"),
            src_incarnation: u16::MAX,
            dst: long("dst-node"),
            message: Message::IndirectPing {
                origin: long("origin-n"),
                probe_number: 255,
            },
        };
        let mut buf = Vec::new();
        FocaCodec.encode_header(&header, &mut buf).unwrap();
        assert!(buf.len() < 600, "{} bytes", buf.len());

        let mut tiny = Vec::new();
        let mut limited = (&mut tiny).limit(buf.len() - 1);
        assert!(FocaCodec.encode_header(&header, &mut limited).is_err());
        assert!(tiny.is_empty());
    }

    fn valid_encodings() -> Vec<Vec<u8>> {
        let mut header_and_member = Vec::new();
        FocaCodec
            .encode_header(&header(), &mut header_and_member)
            .unwrap();
        FocaCodec
            .encode_member(&Member::alive(ident("m", 4)), &mut header_and_member)
            .unwrap();
        vec![
            encode(&batch()).unwrap(),
            encode(&digest()).unwrap(),
            header_and_member,
        ]
    }

    /// Decodes `bytes` as every wire type; the point is that nothing panics.
    fn decode_everything(bytes: &[u8]) {
        let _ = decode::<Batch>(bytes);
        let _ = decode::<Digest>(bytes);
        let _ = decode::<Row>(bytes);
        let mut rest = bytes;
        if FocaCodec.decode_header(&mut rest).is_ok() {
            while FocaCodec.decode_member(&mut rest).is_ok() && !rest.is_empty() {}
        }
        let mut rest = bytes;
        while FocaCodec.decode_member(&mut rest).is_ok() && !rest.is_empty() {}
    }

    fn any_row() -> impl Strategy<Value = Row> {
        (
            ".{0,12}",
            ".{0,12}",
            any::<bool>(),
            any::<Option<u32>>(),
            any::<u64>(),
            prop::option::of(".{0,40}"),
            any::<u64>(),
        )
            .prop_map(
                |(pool, origin, healthy, rtt_us, last_change_ms, reason, seq)| Row {
                    pool,
                    origin,
                    healthy,
                    rtt_us,
                    last_change_ms,
                    reason,
                    verdict: (!healthy).then_some(Verdict::Origin),
                    seq,
                },
            )
    }

    fn any_batch() -> impl Strategy<Value = Batch> {
        (
            ".{0,16}",
            prop::sample::select(Region::ALL.to_vec()),
            any::<[u64; 5]>(),
            any::<bool>(),
            prop::collection::vec(any_row(), 0..8),
        )
            .prop_map(
                |(node, region, [epoch, base_seq, seq, removed_seq, fingerprint], full, rows)| {
                    Batch {
                        node,
                        region,
                        epoch,
                        base_seq,
                        seq,
                        removed_seq,
                        full,
                        advert: Default::default(),
                        fingerprint,
                        rows,
                        sig: Vec::new(),
                    }
                },
            )
    }

    fn any_identity() -> impl Strategy<Value = NodeIdentity> {
        (
            ".{0,16}",
            prop::sample::select(Region::ALL.to_vec()),
            // serde's binary form of an IPv6 socket address keeps neither the flow label nor
            // the scope id, so those cannot round-trip.
            any::<std::net::SocketAddr>().prop_map(|a| std::net::SocketAddr::new(a.ip(), a.port())),
            ".{0,16}",
            any::<u64>(),
        )
            .prop_map(|(id, region, addr, cluster, generation)| {
                NodeIdentity::unsigned(id, region, addr, cluster, generation)
            })
    }

    proptest! {
        #[test]
        fn any_batch_round_trips(batch in any_batch()) {
            prop_assert_eq!(decode::<Batch>(&encode(&batch).unwrap()).unwrap(), batch);
        }

        #[test]
        fn any_member_round_trips(
            id in any_identity(),
            incarnation in any::<u16>(),
            state in prop::sample::select(vec![State::Alive, State::Suspect, State::Down]),
        ) {
            let member = Member::new(id, incarnation, state);
            let mut buf = Vec::new();
            FocaCodec.encode_member(&member, &mut buf).unwrap();
            let mut rest = &buf[..];
            prop_assert_eq!(FocaCodec.decode_member(&mut rest).unwrap(), member);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
            decode_everything(&body);
            // Past the version check too, so bincode itself sees the garbage.
            let mut versioned = vec![FORMAT_VERSION];
            versioned.extend(&body);
            decode_everything(&versioned);
        }

        #[test]
        fn mangled_messages_never_panic(
            which in 0usize..3,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = valid_encodings().swap_remove(which);
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            decode_everything(&bytes);
            bytes.truncate(cut.index(bytes.len() + 1));
            decode_everything(&bytes);
        }

        #[test]
        fn decoding_never_reads_past_the_item(extra in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = Vec::new();
            FocaCodec.encode_member(&Member::alive(ident("m", 4)), &mut buf).unwrap();
            let len = buf.len();
            buf.extend(&extra);
            let mut rest = &buf[..];
            FocaCodec.decode_member(&mut rest).unwrap();
            prop_assert_eq!(rest.len(), buf.len() - len);
        }
    }
}
