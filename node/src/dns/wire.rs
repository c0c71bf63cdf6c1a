//! DNS messages on the request path: a query read straight from the packet (header, the one
//! question as its bytes, the OPT record and its Client Subnet option), and a response put
//! together from the query's own bytes and a precomputed body. Reading by hand, not through
//! a general decoder, is what lets the server echo the question in its exact letter case,
//! answer FORMERR precisely where RFC 7871 says a Client Subnet option is malformed, and
//! answer without allocating anything but the response. The records of a body are encoded
//! by hickory-proto (`zone`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Largest UDP response: the DNS flag day 2020 size, which crosses any path unfragmented.
pub const MAX_UDP: usize = 1232;
/// Largest UDP response to a query without EDNS (RFC 1035).
pub const CLASSIC_UDP: usize = 512;
/// The longest name on the wire (RFC 1035).
pub const MAX_NAME: usize = 255;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;
const OPTION_ECS: u16 = 8;

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;
/// An extended rcode (RFC 6891): the query's EDNS version is not 0.
pub const BADVERS: u16 = 16;

/// EDNS Client Subnet as a query carried it (RFC 7871), already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs {
    /// 1 (IPv4) or 2 (IPv6).
    pub family: u16,
    pub source: u8,
    /// The address bytes as sent: exactly as many as `source` covers.
    addr: [u8; 16],
    addr_len: usize,
}

impl Ecs {
    /// The client's network address (the bits past `source` are zero).
    pub fn ip(&self) -> IpAddr {
        if self.family == 1 {
            let mut b = [0u8; 4];
            b[..self.addr_len].copy_from_slice(&self.addr[..self.addr_len]);
            IpAddr::V4(Ipv4Addr::from(b))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        }
    }
}

/// The OPT record of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requester's UDP payload size.
    pub udp_size: u16,
    pub version: u8,
    pub ecs: Option<Ecs>,
}

/// A query as read from its packet.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub id: u16,
    /// Recursion desired: copied into the response.
    pub rd: bool,
    /// The question as sent: name, type and class, echoed as they are (0x20).
    pub question: &'a [u8],
    /// The question's name in wire form, in lower case.
    pub name: [u8; MAX_NAME],
    pub name_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    /// The largest response this query may get over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_size).clamp(CLASSIC_UDP, MAX_UDP),
            None => CLASSIC_UDP,
        }
    }
}

/// Why a packet is not a query this server answers normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad<'a> {
    /// Not worth an answer: shorter than a header, or a response (answering responses
    /// invites loops).
    Drop,
    /// Answer with this rcode, the header's id and rd, the question when it could be read,
    /// and an OPT record when the query had EDNS.
    Answer {
        id: u16,
        rd: bool,
        rcode: u8,
        question: Option<&'a [u8]>,
        edns: bool,
    },
}

/// Reads a name at `at` in `p`, without following compression pointers, into `lower` (wire
/// form, lower case). Returns the offset past it. None: malformed, or compressed.
fn read_question_name(
    p: &[u8],
    mut at: usize,
    lower: &mut [u8; MAX_NAME],
) -> Option<(usize, usize)> {
    let mut len = 0;
    loop {
        let l = usize::from(*p.get(at)?);
        if l & 0xC0 != 0 {
            return None;
        }
        if len + 1 + l > MAX_NAME {
            return None;
        }
        let label = p.get(at + 1..at + 1 + l)?;
        lower[len] = l as u8;
        for (i, b) in label.iter().enumerate() {
            lower[len + 1 + i] = b.to_ascii_lowercase();
        }
        len += 1 + l;
        at += 1 + l;
        if l == 0 {
            return Some((at, len));
        }
    }
}

/// Skips a name of a record (compression allowed: a pointer ends it). Returns the offset
/// past it and whether it was the root.
fn skip_name(p: &[u8], mut at: usize) -> Option<(usize, bool)> {
    let start = at;
    loop {
        let l = usize::from(*p.get(at)?);
        match l & 0xC0 {
            0 if l == 0 => return Some((at + 1, at == start)),
            0 => at += 1 + l,
            0xC0 => return Some((at + 2, false)),
            _ => return None,
        }
        if at - start > MAX_NAME {
            return None;
        }
    }
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads the options of an OPT record; Err(()) for what RFC 6891 and 7871 call malformed.
fn read_options(data: &[u8]) -> Result<Option<Ecs>, ()> {
    let mut ecs = None;
    let mut at = 0;
    while at < data.len() {
        let code = u16_at(data, at).ok_or(())?;
        let len = usize::from(u16_at(data, at + 2).ok_or(())?);
        let body = data.get(at + 4..at + 4 + len).ok_or(())?;
        at += 4 + len;
        if code != OPTION_ECS {
            continue;
        }
        if ecs.is_some() {
            return Err(());
        }
        ecs = Some(read_ecs(body)?);
    }
    Ok(ecs)
}

/// RFC 7871 section 6: a known family, a source prefix within it, a scope of 0 in a query,
/// exactly the address bytes the prefix covers, and zero bits past it.
fn read_ecs(b: &[u8]) -> Result<Ecs, ()> {
    if b.len() < 4 {
        return Err(());
    }
    let family = u16::from_be_bytes([b[0], b[1]]);
    let (source, scope) = (b[2], b[3]);
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return Err(()),
    };
    let addr = &b[4..];
    let want = usize::from(source).div_ceil(8);
    if source > max || scope != 0 || addr.len() != want {
        return Err(());
    }
    if source % 8 != 0 {
        let last = addr[want - 1];
        if last & (0xFF >> (source % 8)) != 0 {
            return Err(());
        }
    }
    let mut a = [0u8; 16];
    a[..want].copy_from_slice(addr);
    Ok(Ecs {
        family,
        source,
        addr: a,
        addr_len: want,
    })
}

/// Reads a query. A question the server can answer comes back Ok, even with a type or class
/// it does not serve; the rest is [`Bad`].
pub fn parse(p: &[u8]) -> Result<Query<'_>, Bad<'_>> {
    if p.len() < 12 || p[2] & 0x80 != 0 {
        return Err(Bad::Drop);
    }
    let id = u16::from_be_bytes([p[0], p[1]]);
    let rd = p[2] & 0x01 != 0;
    let opcode = (p[2] >> 3) & 0x0F;
    let count = |i: usize| u16::from_be_bytes([p[4 + 2 * i], p[5 + 2 * i]]);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    let bad = |rcode, question, edns| {
        Err(Bad::Answer {
            id,
            rd,
            rcode,
            question,
            edns,
        })
    };
    if opcode != 0 {
        return bad(NOTIMP, None, false);
    }
    if qd != 1 {
        return bad(FORMERR, None, false);
    }
    let mut name = [0u8; MAX_NAME];
    let Some((at, name_len)) = read_question_name(p, 12, &mut name) else {
        return bad(FORMERR, None, false);
    };
    let (Some(qtype), Some(qclass)) = (u16_at(p, at), u16_at(p, at + 2)) else {
        return bad(FORMERR, None, false);
    };
    let question = &p[12..at + 4];
    let mut at = at + 4;
    let mut edns: Option<Edns> = None;
    let mut opt_seen = false;
    for i in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let Some((after, root)) = skip_name(p, at) else {
            return bad(FORMERR, Some(question), opt_seen);
        };
        let (Some(rtype), Some(class), Some(len)) =
            (u16_at(p, after), u16_at(p, after + 2), u16_at(p, after + 8))
        else {
            return bad(FORMERR, Some(question), opt_seen);
        };
        let Some(data) = p.get(after + 10..after + 10 + usize::from(len)) else {
            return bad(FORMERR, Some(question), opt_seen);
        };
        at = after + 10 + usize::from(len);
        let additional = i >= u32::from(an) + u32::from(ns);
        if rtype != TYPE_OPT {
            continue;
        }
        // One OPT, at the root, in the additional section (RFC 6891 6.1.1).
        if opt_seen || !root || !additional {
            return bad(FORMERR, Some(question), true);
        }
        opt_seen = true;
        let Ok(ecs) = read_options(data) else {
            return bad(FORMERR, Some(question), true);
        };
        edns = Some(Edns {
            udp_size: class,
            version: p[after + 5],
            ecs,
        });
    }
    Ok(Query {
        id,
        rd,
        question,
        name,
        name_len,
        qtype,
        qclass,
        edns,
    })
}

/// The records of an answer, made once and shared by every query that gets it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    pub rcode: u8,
    /// Authoritative: everything inside the zone.
    pub aa: bool,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
    /// The records, section after section, with uncompressed names: they do not depend on
    /// where the question ends.
    pub records: Vec<u8>,
}

/// Writes the response header: id, QR, AA, TC, RD, the rcode's low bits and the counts.
fn header(out: &mut Vec<u8>, id: u16, rd: bool, aa: bool, tc: bool, rcode: u8, counts: [u16; 4]) {
    out.extend(id.to_be_bytes());
    out.push(0x80 | (u8::from(aa) << 2) | (u8::from(tc) << 1) | u8::from(rd));
    out.push(rcode & 0x0F);
    for c in counts {
        out.extend(c.to_be_bytes());
    }
}

/// Writes an OPT record: this server's UDP size, the extended rcode's high bits, and the
/// query's Client Subnet echoed with `scope` (RFC 7871 7.2.1).
fn opt(out: &mut Vec<u8>, ext_rcode: u16, ecs: Option<(Ecs, u8)>) {
    out.push(0);
    out.extend(TYPE_OPT.to_be_bytes());
    out.extend((MAX_UDP as u16).to_be_bytes());
    out.push((ext_rcode >> 4) as u8);
    out.extend([0, 0, 0]);
    match ecs {
        Some((e, scope)) => {
            let len = 4 + e.addr_len as u16;
            out.extend((4 + len).to_be_bytes());
            out.extend(OPTION_ECS.to_be_bytes());
            out.extend(len.to_be_bytes());
            out.extend(e.family.to_be_bytes());
            out.push(e.source);
            out.push(scope);
            out.extend(&e.addr[..e.addr_len]);
        }
        None => out.extend(0u16.to_be_bytes()),
    }
}

/// The response to `q` with `body`, into `out` (cleared first). With EDNS, an OPT record
/// goes last, echoing the query's Client Subnet with `scope`. Past `limit` bytes, the
/// records are left out and TC is set, so the client asks again over TCP.
pub fn respond(q: &Query<'_>, body: &Body, scope: u8, limit: usize, out: &mut Vec<u8>) {
    out.clear();
    let opt_count = u16::from(q.edns.is_some());
    let ecs = q.edns.and_then(|e| e.ecs).map(|e| (e, scope));
    let size =
        12 + q.question.len() + body.records.len() + if q.edns.is_some() { 11 + 20 + 4 } else { 0 };
    if size > limit {
        header(
            out,
            q.id,
            q.rd,
            body.aa,
            true,
            body.rcode,
            [1, 0, 0, opt_count],
        );
        out.extend(q.question);
    } else {
        let counts = [1, body.answers, body.authority, body.additional + opt_count];
        header(out, q.id, q.rd, body.aa, false, body.rcode, counts);
        out.extend(q.question);
        out.extend(&body.records);
    }
    if q.edns.is_some() {
        opt(out, 0, ecs);
    }
}

/// The response to a query whose EDNS version this server does not speak (RFC 6891 6.1.3).
pub fn respond_badvers(q: &Query<'_>, out: &mut Vec<u8>) {
    out.clear();
    header(
        out,
        q.id,
        q.rd,
        false,
        false,
        (BADVERS & 0x0F) as u8,
        [1, 0, 0, 1],
    );
    out.extend(q.question);
    opt(out, BADVERS, None);
}

/// The response to a [`Bad::Answer`].
pub fn respond_bad(bad: &Bad<'_>, out: &mut Vec<u8>) {
    out.clear();
    let Bad::Answer {
        id,
        rd,
        rcode,
        question,
        edns,
    } = *bad
    else {
        return;
    };
    let qd = u16::from(question.is_some());
    header(
        out,
        id,
        rd,
        false,
        false,
        rcode,
        [qd, 0, 0, u16::from(edns)],
    );
    out.extend(question.unwrap_or_default());
    if edns {
        opt(out, 0, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (dotted) of `qtype`, with `opt` as the OPT record's options.
    pub(crate) fn query(name: &str, qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            p.push(label.len() as u8);
            p.extend(label.as_bytes());
        }
        p.push(0);
        p.extend(qtype.to_be_bytes());
        p.extend(CLASS_IN.to_be_bytes());
        if let Some(o) = opt {
            p.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0]);
            p.extend((o.len() as u16).to_be_bytes());
            p.extend(o);
        }
        p
    }

    fn ecs(family: u16, source: u8, scope: u8, addr: &[u8]) -> Vec<u8> {
        let mut o = Vec::new();
        o.extend(8u16.to_be_bytes());
        o.extend((4 + addr.len() as u16).to_be_bytes());
        o.extend(family.to_be_bytes());
        o.extend([source, scope]);
        o.extend(addr);
        o
    }

    #[test]
    fn a_query_keeps_its_case_in_the_question_and_is_looked_up_in_lower_case() {
        let p = query("GaMe.Lb.Example", TYPE_A, None);
        let q = parse(&p).unwrap();
        assert_eq!(q.name(), b"\x04game\x02lb\x07example\x00");
        assert_eq!(&q.question[1..5], b"GaMe");
        assert_eq!(
            (q.qtype, q.qclass, q.rd, q.id),
            (TYPE_A, CLASS_IN, true, 0x1234)
        );
        assert_eq!(q.udp_limit(), CLASSIC_UDP);
    }

    #[test]
    fn client_subnet_is_read_and_each_malformation_is_formerr() {
        let p = query("a.b", TYPE_A, Some(&ecs(1, 24, 0, &[192, 0, 2])));
        let q = parse(&p).unwrap();
        let e = q.edns.unwrap().ecs.unwrap();
        assert_eq!((e.ip(), e.source), ("192.0.2.0".parse().unwrap(), 24));
        assert_eq!(q.udp_limit(), 1232, "4096 asked, 1232 at most");
        let v6 = query(
            "a.b",
            TYPE_A,
            Some(&ecs(2, 56, 0, &[0x20, 1, 0x0d, 0xb8, 0, 0, 0])),
        );
        assert_eq!(
            parse(&v6).unwrap().edns.unwrap().ecs.unwrap().ip(),
            "2001:db8::".parse::<IpAddr>().unwrap()
        );
        let mut twice = ecs(1, 24, 0, &[192, 0, 2]);
        twice.extend(ecs(1, 24, 0, &[192, 0, 2]));
        for (what, opt) in [
            ("family 3", ecs(3, 24, 0, &[192, 0, 2])),
            ("source 33", ecs(1, 33, 0, &[192, 0, 2, 1, 0])),
            ("scope set in a query", ecs(1, 24, 24, &[192, 0, 2])),
            ("too many address bytes", ecs(1, 24, 0, &[192, 0, 2, 0])),
            ("too few", ecs(1, 24, 0, &[192, 0])),
            ("bits past the prefix", ecs(1, 23, 0, &[192, 0, 3])),
            ("shorter than its header", vec![0, 8, 0, 2, 0, 1]),
            (
                "an option overrunning the record",
                vec![0, 8, 0, 9, 0, 1, 24, 0],
            ),
            ("two subnets", twice),
        ] {
            let p = query("a.b", TYPE_A, Some(&opt));
            match parse(&p) {
                Err(Bad::Answer {
                    rcode,
                    edns,
                    question,
                    ..
                }) => {
                    assert_eq!((rcode, edns), (FORMERR, true), "{what}");
                    assert!(question.is_some(), "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_dropped_or_formerr_and_never_panics() {
        assert_eq!(parse(&[0; 5]).unwrap_err(), Bad::Drop);
        let mut response = query("a.b", TYPE_A, None);
        response[2] |= 0x80;
        assert_eq!(parse(&response).unwrap_err(), Bad::Drop);
        let mut pointer = query("a.b", TYPE_A, None);
        pointer[12] = 0xC0;
        assert!(matches!(
            parse(&pointer),
            Err(Bad::Answer { rcode: FORMERR, .. })
        ));
        let truncated = &query("a.b", TYPE_A, None)[..15];
        assert!(matches!(
            parse(truncated),
            Err(Bad::Answer { rcode: FORMERR, .. })
        ));
        let mut notify = query("a.b", TYPE_A, None);
        notify[2] = 4 << 3;
        assert!(matches!(
            parse(&notify),
            Err(Bad::Answer { rcode: NOTIMP, .. })
        ));
        // Every prefix and every one-byte corruption of a query with ECS.
        let p = query(
            "game.lb.example",
            TYPE_AAAA,
            Some(&ecs(1, 24, 0, &[192, 0, 2])),
        );
        let mut out = Vec::new();
        for n in 0..p.len() {
            if let Err(b) = parse(&p[..n]) {
                respond_bad(&b, &mut out);
            }
            for v in [0u8, 0x3F, 0xC0, 0xFF] {
                let mut c = p.clone();
                c[n] = v;
                match parse(&c) {
                    Ok(q) => respond(&q, &Body::default(), 0, MAX_UDP, &mut out),
                    Err(b) => respond_bad(&b, &mut out),
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut out = Vec::new();
            match parse(&bytes) {
                Ok(q) => respond(&q, &Body::default(), 0, MAX_UDP, &mut out),
                Err(b) => respond_bad(&b, &mut out),
            }
        }
    }

    #[test]
    fn a_response_over_the_limit_is_truncated_to_the_question() {
        let p = query("game.lb.example", TYPE_A, Some(&[]));
        let q = parse(&p).unwrap();
        let body = Body {
            answers: 100,
            records: vec![0; 2000],
            aa: true,
            ..Body::default()
        };
        let mut out = Vec::new();
        respond(&q, &body, 0, q.udp_limit(), &mut out);
        assert!(out.len() < 100);
        assert_eq!(out[2] & 0x02, 0x02, "TC");
        assert_eq!(&out[6..8], &[0, 0], "no answers");
        respond(&q, &body, 0, 65_535, &mut out);
        assert_eq!(out[2] & 0x02, 0);
        assert!(out.len() > 2000);
    }
}
