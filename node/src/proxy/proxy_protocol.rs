//! PROXY protocol headers (HAProxy's spec, versions 1 and 2): how the edge
//! tells an origin which client a relayed connection really came from (an app's
//! `proxy_protocol = "v1"` or `"v2"`).
//!
//! Only TCP over IPv4/IPv6 is produced. No setting reads PROXY headers from
//! clients yet; the parser here is the spec's other half, against which the
//! tests check every header the edge writes. It accepts anything the spec
//! lets a sender emit, returns no addresses where the spec says to use the
//! real connection endpoints (v1 UNKNOWN, v2 LOCAL, and v2 families this
//! TCP-only proxy has no use for), and rejects everything else as early as
//! the bytes seen allow, as the spec asks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A parsed header. Addresses are `None` when the sender did not relay a TCP
/// connection (v1 UNKNOWN, v2 LOCAL or a non-TCP family); the receiver should
/// then use the connection's own endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    #[error("PROXY v1 header has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("unsupported PROXY v2 version {0} (only 2 exists)")]
    V2Version(u8),
    #[error("unknown PROXY v2 command {0:#x}")]
    V2Command(u8),
    #[error("unknown PROXY v2 address family/protocol byte {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 address block of {len} bytes is too short for family {family:#04x}")]
    V2AddressTooShort { family: u8, len: usize },
}

/// Longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 header: the fixed part plus the largest address/TLV block.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
const V2_VERSION: u8 = 0x2;
const V2_CMD_LOCAL: u8 = 0x0;
const V2_CMD_PROXY: u8 = 0x1;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_TCP4_LEN: usize = 2 * 4 + 2 * 2;
const V2_TCP6_LEN: usize = 2 * 16 + 2 * 2;

/// Header announcing `client` (source) connected to `local` (destination, the edge address the client reached).
///
/// Both families must match on the wire, so when they differ the IPv4 one is
/// sent IPv4-mapped over TCP6. IPv4-mapped IPv6 addresses (what a dual-stack
/// listener reports for IPv4 clients) are first turned back into IPv4, so a
/// plain IPv4 connection is announced as TCP4.
pub fn encode(version: Version, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = (client.ip().to_canonical(), local.ip().to_canonical());
    let (sport, dport) = (client.port(), local.port());
    match version {
        Version::V1 => {
            let line = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => format!("PROXY TCP4 {s} {d} {sport} {dport}\r\n"),
                _ => format!(
                    "PROXY TCP6 {} {} {sport} {dport}\r\n",
                    as_v6(src),
                    as_v6(dst)
                ),
            };
            line.into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(V2_FIXED_LEN + V2_TCP6_LEN);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push((V2_VERSION << 4) | V2_CMD_PROXY);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(V2_TCP4);
                    out.extend_from_slice(&(V2_TCP4_LEN as u16).to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                _ => {
                    out.push(V2_TCP6);
                    out.extend_from_slice(&(V2_TCP6_LEN as u16).to_be_bytes());
                    out.extend_from_slice(&as_v6(src).octets());
                    out.extend_from_slice(&as_v6(dst).octets());
                }
            }
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
            out
        }
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Parses a header at the start of `buf`. Ok(None) = need more bytes; Ok(Some((header, consumed))).
///
/// Never reads more than [`V1_MAX_LEN`] or [`V2_MAX_LEN`] bytes, so a caller
/// that buffers until this stops returning `Ok(None)` is bounded too.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    match buf.first() {
        None => Ok(None),
        Some(&b) if b == V1_PREFIX[0] => parse_v1(buf),
        Some(&b) if b == V2_SIGNATURE[0] => parse_v2(buf),
        Some(_) => Err(ParseError::NotProxyProtocol),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let prefix_len = window.len().min(V1_PREFIX.len());
    if window[..prefix_len] != V1_PREFIX[..prefix_len] {
        return Err(ParseError::NotProxyProtocol);
    }
    // Scanning byte by byte lets binary garbage or a bare CR/LF fail now
    // instead of after waiting for 107 bytes that may never come.
    let mut end = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    end = Some(i);
                    break;
                }
                Some(_) => return Err(ParseError::V1Malformed("CR not followed by LF")),
                None => break,
            },
            b'\n' => return Err(ParseError::V1Malformed("LF without CR")),
            0x20..=0x7e => {}
            _ => return Err(ParseError::V1Malformed("non-printable byte")),
        }
    }
    let Some(end) = end else {
        return if window.len() >= V1_MAX_LEN {
            Err(ParseError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    // All bytes before `end` were checked to be printable ASCII.
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..end])
        .map_err(|_| ParseError::V1Malformed("non-ASCII byte"))?;
    let consumed = end + 2;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    let is_v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        // The spec has the receiver ignore whatever follows UNKNOWN.
        "UNKNOWN" => {
            return Ok(Some((
                Header {
                    version: Version::V1,
                    source: None,
                    destination: None,
                },
                consumed,
            )))
        }
        _ => return Err(ParseError::V1Malformed("unknown protocol")),
    };
    let mut next = |what| fields.next().ok_or(ParseError::V1Malformed(what));
    let src_ip = v1_ip(next("missing source address")?, is_v6)
        .ok_or(ParseError::V1Malformed("bad source address"))?;
    let dst_ip = v1_ip(next("missing destination address")?, is_v6)
        .ok_or(ParseError::V1Malformed("bad destination address"))?;
    let src_port =
        v1_port(next("missing source port")?).ok_or(ParseError::V1Malformed("bad source port"))?;
    let dst_port = v1_port(next("missing destination port")?)
        .ok_or(ParseError::V1Malformed("bad destination port"))?;
    if fields.next().is_some() {
        return Err(ParseError::V1Malformed("extra fields"));
    }
    Ok(Some((
        Header {
            version: Version::V1,
            source: Some(SocketAddr::new(src_ip, src_port)),
            destination: Some(SocketAddr::new(dst_ip, dst_port)),
        },
        consumed,
    )))
}

/// An address of the family the line announced. std's parsers already refuse
/// IPv4 octets with leading zeroes, as the spec requires.
fn v1_ip(s: &str, is_v6: bool) -> Option<IpAddr> {
    if is_v6 {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// Plain decimal without sign or leading zeroes (`u16::from_str` would take
/// "+80" and "080").
fn v1_port(s: &str) -> Option<u16> {
    let digits_only = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] != V2_SIGNATURE[..sig_len] {
        return Err(ParseError::NotProxyProtocol);
    }
    // Reject bad version/command/family bytes as soon as they arrive.
    let command = match buf.get(12) {
        None => return Ok(None),
        Some(&ver_cmd) => {
            if ver_cmd >> 4 != V2_VERSION {
                return Err(ParseError::V2Version(ver_cmd >> 4));
            }
            match ver_cmd & 0x0f {
                c @ (V2_CMD_LOCAL | V2_CMD_PROXY) => c,
                c => return Err(ParseError::V2Command(c)),
            }
        }
    };
    let family = match buf.get(13) {
        None => return Ok(None),
        // Families UNSPEC/INET/INET6/UNIX over UNSPEC/STREAM/DGRAM are valid;
        // anything else is invalid even for LOCAL.
        Some(&fam) if fam >> 4 <= 0x3 && fam & 0x0f <= 0x2 => fam,
        Some(&fam) => return Err(ParseError::V2Family(fam)),
    };
    let Some(len_bytes) = buf.get(14..16) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let consumed = V2_FIXED_LEN + len;
    // Known to be present before TLVs are skipped, so a short block fails
    // without waiting for the rest.
    let needed = match (command, family) {
        (V2_CMD_PROXY, V2_TCP4) => V2_TCP4_LEN,
        (V2_CMD_PROXY, V2_TCP6) => V2_TCP6_LEN,
        _ => 0,
    };
    if len < needed {
        return Err(ParseError::V2AddressTooShort { family, len });
    }
    let Some(block) = buf.get(V2_FIXED_LEN..consumed) else {
        return Ok(None);
    };
    // Whatever follows the addresses (TLVs) is skipped via `len`.
    let (source, destination) = match (command, family) {
        (V2_CMD_PROXY, V2_TCP4) => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        (V2_CMD_PROXY, V2_TCP6) => {
            let ip = |at: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        // LOCAL, and PROXY for families a TCP proxy cannot use (UNSPEC, UDP,
        // UNIX): the spec lets the receiver fall back to the real endpoints.
        _ => (None, None),
    };
    Ok(Some((
        Header {
            version: Version::V2,
            source,
            destination,
        },
        consumed,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn roundtrip(version: Version, client: &str, local: &str) -> Header {
        let bytes = encode(version, sa(client), sa(local));
        let (header, consumed) = parse(&bytes).unwrap().unwrap();
        assert_eq!(consumed, bytes.len());
        assert_eq!(header.version, version);
        header
    }

    #[test]
    fn v1_ipv4_bytes_and_roundtrip() {
        let bytes = encode(Version::V1, sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        assert_eq!(bytes, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let h = roundtrip(Version::V1, "192.168.0.1:56324", "192.168.0.11:443");
        assert_eq!(h.source, Some(sa("192.168.0.1:56324")));
        assert_eq!(h.destination, Some(sa("192.168.0.11:443")));
    }

    #[test]
    fn v1_ipv6_bytes_and_roundtrip() {
        let bytes = encode(
            Version::V1,
            sa("[2001:db8::1]:1234"),
            sa("[2001:db8::2]:80"),
        );
        assert_eq!(bytes, b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n");
        let h = roundtrip(Version::V1, "[2001:db8::1]:1234", "[2001:db8::2]:80");
        assert_eq!(h.source, Some(sa("[2001:db8::1]:1234")));
        assert_eq!(h.destination, Some(sa("[2001:db8::2]:80")));
    }

    #[test]
    fn v1_mixed_families_map_ipv4_to_ipv6() {
        let bytes = encode(Version::V1, sa("10.1.2.3:5000"), sa("[2001:db8::2]:443"));
        assert_eq!(
            bytes,
            b"PROXY TCP6 ::ffff:10.1.2.3 2001:db8::2 5000 443\r\n"
        );
        let h = roundtrip(Version::V1, "10.1.2.3:5000", "[2001:db8::2]:443");
        assert_eq!(h.source, Some(sa("[::ffff:10.1.2.3]:5000")));
        let h = roundtrip(Version::V1, "[2001:db8::1]:5000", "10.0.0.1:443");
        assert_eq!(h.destination, Some(sa("[::ffff:10.0.0.1]:443")));
    }

    #[test]
    fn mapped_addresses_are_sent_as_ipv4() {
        let bytes = encode(
            Version::V1,
            sa("[::ffff:10.1.2.3]:5000"),
            sa("[::ffff:10.0.0.1]:443"),
        );
        assert_eq!(bytes, b"PROXY TCP4 10.1.2.3 10.0.0.1 5000 443\r\n");
    }

    #[test]
    fn v2_ipv4_bytes_and_roundtrip() {
        let bytes = encode(Version::V2, sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        let mut expected = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        expected.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        expected.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(bytes, expected);
        let h = roundtrip(Version::V2, "192.168.0.1:56324", "192.168.0.11:443");
        assert_eq!(h.source, Some(sa("192.168.0.1:56324")));
        assert_eq!(h.destination, Some(sa("192.168.0.11:443")));
    }

    #[test]
    fn v2_ipv6_bytes_and_roundtrip() {
        let bytes = encode(
            Version::V2,
            sa("[2001:db8::1]:1234"),
            sa("[2001:db8::2]:80"),
        );
        assert_eq!(&bytes[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(bytes.len(), 16 + 36);
        assert_eq!(&bytes[16..20], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(&bytes[48..52], &[0x04, 0xd2, 0x00, 0x50]);
        let h = roundtrip(Version::V2, "[2001:db8::1]:1234", "[2001:db8::2]:80");
        assert_eq!(h.source, Some(sa("[2001:db8::1]:1234")));
        assert_eq!(h.destination, Some(sa("[2001:db8::2]:80")));
    }

    #[test]
    fn v2_mixed_families_map_ipv4_to_ipv6() {
        let bytes = encode(Version::V2, sa("10.1.2.3:5000"), sa("[2001:db8::2]:443"));
        assert_eq!(bytes[13], 0x21);
        let h = roundtrip(Version::V2, "10.1.2.3:5000", "[2001:db8::2]:443");
        assert_eq!(h.source, Some(sa("[::ffff:10.1.2.3]:5000")));
        assert_eq!(h.destination, Some(sa("[2001:db8::2]:443")));
    }

    #[test]
    fn trailing_payload_is_not_consumed() {
        for version in [Version::V1, Version::V2] {
            let mut bytes = encode(version, sa("1.2.3.4:1"), sa("5.6.7.8:2"));
            let header_len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let (_, consumed) = parse(&bytes).unwrap().unwrap();
            assert_eq!(consumed, header_len);
        }
    }

    #[test]
    fn partial_input_needs_more() {
        for version in [Version::V1, Version::V2] {
            for (client, local) in [("1.2.3.4:1", "5.6.7.8:2"), ("[::1]:1", "[::2]:2")] {
                let bytes = encode(version, sa(client), sa(local));
                for cut in 0..bytes.len() {
                    assert!(
                        matches!(parse(&bytes[..cut]), Ok(None)),
                        "{version:?} cut at {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn v1_unknown_is_accepted_without_addresses() {
        let none = |consumed| {
            Some((
                Header {
                    version: Version::V1,
                    source: None,
                    destination: None,
                },
                consumed,
            ))
        };
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), none(15));
        let worst = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
            ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(worst.len(), V1_MAX_LEN);
        assert_eq!(parse(worst).unwrap(), none(V1_MAX_LEN));
    }

    #[test]
    fn v1_longest_tcp6_line_parses() {
        let line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
            ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(line.len(), 104);
        let (h, consumed) = parse(line).unwrap().unwrap();
        assert_eq!(consumed, 104);
        assert_eq!(h.source.map(|s| s.port()), Some(65535));
    }

    #[test]
    fn v1_garbage_is_rejected() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"PROXZ",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4\x00",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 100]].concat();
        assert!(matches!(parse(&long), Err(ParseError::V1TooLong)));
        assert!(matches!(parse(&long[..V1_MAX_LEN - 1]), Ok(None)));
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(ver_cmd);
        b.push(fam);
        b.extend_from_slice(&(block.len() as u16).to_be_bytes());
        b.extend_from_slice(block);
        b
    }

    #[test]
    fn v2_local_and_unsupported_families_have_no_addresses() {
        // LOCAL must be honoured whatever its family and however long its block.
        for (ver_cmd, fam, block) in [
            (0x20, 0x00, &[][..]),
            (0x20, 0x11, &[1, 2, 3][..]),
            (0x21, 0x00, &[][..]),
            (0x21, 0x12, &[0; 12][..]),
            (0x21, 0x31, &[0; 216][..]),
        ] {
            let bytes = v2(ver_cmd, fam, block);
            let (h, consumed) = parse(&bytes).unwrap().unwrap();
            assert_eq!(consumed, bytes.len());
            assert_eq!((h.source, h.destination), (None, None));
        }
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x00, 0x50];
        // PP2_TYPE_AUTHORITY "example.com", then a NOOP.
        block.extend_from_slice(&[0x02, 0x00, 0x0b]);
        block.extend_from_slice(b"example.com");
        block.extend_from_slice(&[0x04, 0x00, 0x00]);
        let mut bytes = v2(0x21, 0x11, &block);
        let header_len = bytes.len();
        bytes.extend_from_slice(b"payload");
        let (h, consumed) = parse(&bytes).unwrap().unwrap();
        assert_eq!(consumed, header_len);
        assert_eq!(h.source, Some(sa("10.0.0.1:8080")));
        assert_eq!(h.destination, Some(sa("10.0.0.2:80")));
    }

    #[test]
    fn v2_garbage_is_rejected() {
        assert!(matches!(
            parse(b"\r\n\r\n\0\r\nQUIX"),
            Err(ParseError::NotProxyProtocol)
        ));
        assert!(matches!(
            parse(&v2(0x11, 0x11, &[0; 12])),
            Err(ParseError::V2Version(1))
        ));
        assert!(matches!(
            parse(&v2(0x22, 0x11, &[0; 12])),
            Err(ParseError::V2Command(2))
        ));
        assert!(matches!(
            parse(&v2(0x21, 0x41, &[0; 12])),
            Err(ParseError::V2Family(0x41))
        ));
        assert!(matches!(
            parse(&v2(0x21, 0x13, &[0; 12])),
            Err(ParseError::V2Family(0x13))
        ));
        assert!(matches!(
            parse(&v2(0x21, 0x11, &[0; 11])),
            Err(ParseError::V2AddressTooShort {
                family: 0x11,
                len: 11
            })
        ));
        assert!(matches!(
            parse(&v2(0x21, 0x21, &[0; 12])),
            Err(ParseError::V2AddressTooShort { .. })
        ));
        // Bad bytes are reported before the rest of the header arrives.
        assert!(parse(&v2(0x31, 0x11, &[])[..13]).is_err());
        assert!(matches!(
            parse(b"\x16\x03\x01"),
            Err(ParseError::NotProxyProtocol)
        ));
    }

    #[test]
    fn v2_largest_header_is_accepted() {
        let mut block = vec![0; u16::MAX as usize];
        block[..12].copy_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 0, 2]);
        let bytes = v2(0x21, 0x11, &block);
        assert_eq!(bytes.len(), V2_MAX_LEN);
        let (_, consumed) = parse(&bytes).unwrap().unwrap();
        assert_eq!(consumed, V2_MAX_LEN);
        assert!(matches!(parse(&bytes[..V2_MAX_LEN - 1]), Ok(None)));
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        ]
    }

    /// What `encode` is documented to put on the wire for `addr`.
    fn on_wire(addr: SocketAddr, other: SocketAddr) -> SocketAddr {
        let (ip, other_ip) = (addr.ip().to_canonical(), other.ip().to_canonical());
        let ip = if ip.is_ipv4() && other_ip.is_ipv4() {
            ip
        } else {
            IpAddr::V6(as_v6(ip))
        };
        SocketAddr::new(ip, addr.port())
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn random_bytes_after_a_signature_never_panic(
            v1 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if v1 { V1_PREFIX.to_vec() } else { V2_SIGNATURE.to_vec() };
            bytes.extend_from_slice(&tail);
            if let Ok(Some((_, consumed))) = parse(&bytes) {
                prop_assert!(consumed <= bytes.len());
            }
        }

        #[test]
        fn random_v1_text_never_panics(line in "PROXY [A-Z0-9a-f:. ]{0,110}(\r\n)?") {
            let _ = parse(line.as_bytes());
        }

        #[test]
        fn encode_then_parse_roundtrips(client in any_addr(), local in any_addr(), v2 in any::<bool>()) {
            let version = if v2 { Version::V2 } else { Version::V1 };
            let bytes = encode(version, client, local);
            let (h, consumed) = parse(&bytes).unwrap().unwrap();
            prop_assert_eq!(consumed, bytes.len());
            prop_assert_eq!(h.source, Some(on_wire(client, local)));
            prop_assert_eq!(h.destination, Some(on_wire(local, client)));
        }
    }
}
