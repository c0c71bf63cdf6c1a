//! The zone as served: every name under `[dns] zone` and the records each question gets,
//! made from the mesh's view (`core::dns`) each time it changes and swapped whole, so that a
//! query only looks its name up and copies bytes. Records are encoded by hickory-proto,
//! with uncompressed names, so that a body follows any question.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use hickory_proto::ProtoError;

use crate::core::dns::{self, Family, NameAnswers, Node};
use crate::dns::wire::{Body, NOERROR, NXDOMAIN, REFUSED, TYPE_A, TYPE_AAAA, TYPE_NS, TYPE_SOA};

/// SOA timers (RFC 1912's suggestions); nothing transfers this zone, they are for show.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86_400;
/// The zone's serial: every node serves the same one, so resolvers that compare the
/// nameservers' SOA see one zone.
const SOA_SERIAL: u32 = 1;

/// What a name holds.
#[derive(Debug)]
enum Entry {
    Apex,
    /// An app's name: A and AAAA bodies per client region slot, and whether they differ.
    App {
        v4: Vec<Body>,
        v6: Vec<Body>,
        v4_by_region: bool,
        v6_by_region: bool,
    },
    /// A nameserver's own name: its addresses.
    Host {
        v4: Body,
        v6: Body,
    },
    /// A name with names below it and no records of its own (`ns.<zone>`).
    Empty,
}

/// Where a question's answer comes from.
#[derive(Debug)]
pub enum Found<'a> {
    /// The same for every client.
    Fixed(&'a Body),
    /// Per client region slot ([`dns::slot`]).
    ByRegion(&'a [Body]),
}

/// The zone, ready to answer.
#[derive(Debug)]
pub struct Zone {
    /// The apex in wire form, lower case.
    apex: Vec<u8>,
    names: HashMap<Vec<u8>, Entry>,
    soa: Body,
    ns: Body,
    nxdomain: Body,
    nodata: Body,
    refused: Body,
    /// What it was made from, for explain.
    pub zone: String,
    pub nodes: Vec<Node>,
    pub plan: Vec<NameAnswers>,
    pub answers: usize,
}

/// `dotted` (no trailing dot) in wire form.
pub fn wire(dotted: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(dotted.len() + 2);
    for label in dotted.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
    out
}

/// A nameserver's name: `<node id>.ns.<zone>`, in lower case.
pub fn nameserver_name(id: &str, zone: &str) -> String {
    format!("{}.ns.{zone}", id.to_ascii_lowercase())
}

fn fqdn(dotted: &str) -> Result<Name, ProtoError> {
    Name::from_ascii(format!("{dotted}."))
}

/// Records encoded one after another.
fn encode(records: &[Record]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    let mut enc = BinEncoder::new(&mut out);
    // No compression: a body follows questions of any length, so no offset is known.
    enc.set_name_encoding(NameEncoding::Uncompressed);
    for r in records {
        r.emit(&mut enc)?;
    }
    Ok(out)
}

fn address_records(owner: &Name, ttl: u32, addrs: &[IpAddr]) -> Vec<Record> {
    addrs
        .iter()
        .map(|a| {
            let rdata = match a {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            Record::from_rdata(owner.clone(), ttl, rdata)
        })
        .collect()
}

impl Zone {
    /// The zone `zone` with `ttl` and `answers` addresses per answer, from `nodes` (this
    /// node included) and the names `local` (this node's own hostnames).
    pub fn build(
        zone: &str,
        ttl: u32,
        answers: usize,
        nodes: Vec<Node>,
        local: &[String],
    ) -> Result<Zone, ProtoError> {
        let apex_name = fqdn(zone)?;
        let mut servers: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.nameserver && n.alive && !n.addresses.is_empty())
            .collect();
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        let primary = servers
            .first()
            .map_or("ns".to_string(), |n| nameserver_name(&n.id, zone));
        let soa_record = Record::from_rdata(
            apex_name.clone(),
            ttl,
            RData::SOA(SOA::new(
                fqdn(&primary)?,
                fqdn(&format!("hostmaster.{zone}"))?,
                SOA_SERIAL,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                ttl,
            )),
        );
        let soa_bytes = encode(std::slice::from_ref(&soa_record))?;
        let negative = |rcode| Body {
            rcode,
            aa: true,
            authority: 1,
            records: soa_bytes.clone(),
            ..Body::default()
        };
        let nodata = negative(NOERROR);
        let answer = |records: Vec<Record>, additional: Vec<Record>| -> Result<Body, ProtoError> {
            if records.is_empty() {
                return Ok(nodata.clone());
            }
            let mut bytes = encode(&records)?;
            bytes.extend(encode(&additional)?);
            Ok(Body {
                rcode: NOERROR,
                aa: true,
                answers: records.len() as u16,
                additional: additional.len() as u16,
                records: bytes,
                ..Body::default()
            })
        };

        let mut names: HashMap<Vec<u8>, Entry> = HashMap::new();
        let mut ns_records = Vec::new();
        let mut glue = Vec::new();
        for n in &servers {
            let host = nameserver_name(&n.id, zone);
            let owner = fqdn(&host)?;
            ns_records.push(Record::from_rdata(
                apex_name.clone(),
                ttl,
                RData::NS(NS(owner.clone())),
            ));
            let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
                n.addresses.iter().partition(|a| a.is_ipv4());
            glue.extend(address_records(&owner, ttl, &n.addresses));
            names.insert(
                wire(&host),
                Entry::Host {
                    v4: answer(address_records(&owner, ttl, &v4), Vec::new())?,
                    v6: answer(address_records(&owner, ttl, &v6), Vec::new())?,
                },
            );
        }
        let ns = answer(ns_records, glue)?;

        let all = dns::names(&nodes, local);
        let plan = dns::plan(&nodes, &all, answers);
        for p in &plan {
            let host = format!("{}.{zone}", p.name);
            let owner = fqdn(&host)?;
            let bodies = |family: Family| -> Result<Vec<Body>, ProtoError> {
                p.of(family)
                    .iter()
                    .map(|c| answer(address_records(&owner, ttl, &c.addresses), Vec::new()))
                    .collect()
            };
            names.insert(
                wire(&host),
                Entry::App {
                    v4: bodies(Family::V4)?,
                    v6: bodies(Family::V6)?,
                    v4_by_region: p.depends_on_region(Family::V4),
                    v6_by_region: p.depends_on_region(Family::V6),
                },
            );
        }
        let apex = wire(zone);
        // Every name between a name and the apex exists (RFC 8020): NODATA, not NXDOMAIN.
        let below: Vec<Vec<u8>> = names.keys().cloned().collect();
        for name in below {
            let mut at = 0;
            while at < name.len() && name[at..] != apex[..] {
                at += 1 + usize::from(name[at]);
                names.entry(name[at..].to_vec()).or_insert(Entry::Empty);
            }
        }
        names.insert(apex.clone(), Entry::Apex);
        Ok(Zone {
            apex,
            names,
            soa: answer(vec![soa_record], Vec::new())?,
            ns,
            nxdomain: negative(NXDOMAIN),
            nodata,
            refused: Body {
                rcode: REFUSED,
                ..Body::default()
            },
            zone: zone.to_string(),
            nodes,
            plan,
            answers,
        })
    }

    /// Whether `name` (wire form, lower case) is the apex or below it.
    fn inside(&self, name: &[u8]) -> bool {
        let mut at = 0;
        while at < name.len() {
            if name[at..] == self.apex[..] {
                return true;
            }
            at += 1 + usize::from(name[at]);
        }
        false
    }

    /// The answer to `qtype` for `name` (wire form, lower case).
    pub fn find(&self, name: &[u8], qtype: u16) -> Found<'_> {
        let fixed = Found::Fixed;
        match self.names.get(name) {
            None if self.inside(name) => fixed(&self.nxdomain),
            None => fixed(&self.refused),
            Some(Entry::Apex) => match qtype {
                TYPE_SOA => fixed(&self.soa),
                TYPE_NS => fixed(&self.ns),
                _ => fixed(&self.nodata),
            },
            Some(Entry::App {
                v4,
                v6,
                v4_by_region,
                v6_by_region,
            }) => match qtype {
                TYPE_A if *v4_by_region => Found::ByRegion(v4),
                TYPE_A => fixed(&v4[0]),
                TYPE_AAAA if *v6_by_region => Found::ByRegion(v6),
                TYPE_AAAA => fixed(&v6[0]),
                _ => fixed(&self.nodata),
            },
            Some(Entry::Host { v4, v6 }) => match qtype {
                TYPE_A => fixed(v4),
                TYPE_AAAA => fixed(v6),
                _ => fixed(&self.nodata),
            },
            Some(Entry::Empty) => fixed(&self.nodata),
        }
    }

    /// The body for a question outside the zone.
    pub fn refused(&self) -> &Body {
        &self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_geo::Region;

    fn node(id: &str, region: Region, addrs: &[&str]) -> Node {
        Node {
            id: id.into(),
            region,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            alive: true,
            ready: true,
            nameserver: true,
            names: vec![("game".into(), true)],
            rtt_ms: Vec::new(),
        }
    }

    fn zone() -> Zone {
        let nodes = vec![
            node("edge-wnam", Region::Wnam, &["192.0.2.1", "2001:db8::1"]),
            node("Edge-WEU", Region::Weu, &["192.0.2.2"]),
        ];
        Zone::build("lb.example.com", 30, 1, nodes, &["local".into()]).unwrap()
    }

    #[test]
    fn names_are_found_by_kind_and_the_rest_is_nxdomain_or_refused() {
        let z = zone();
        let rcode = |name: &str, t| match z.find(&wire(name), t) {
            Found::Fixed(b) => (b.rcode, b.answers, b.authority),
            Found::ByRegion(b) => (b[0].rcode, b[0].answers, b[0].authority),
        };
        assert_eq!(rcode("lb.example.com", TYPE_SOA), (NOERROR, 1, 0));
        assert_eq!(rcode("lb.example.com", TYPE_NS), (NOERROR, 2, 0));
        assert_eq!(rcode("lb.example.com", TYPE_A), (NOERROR, 0, 1), "NODATA");
        assert!(matches!(
            z.find(&wire("game.lb.example.com"), TYPE_A),
            Found::ByRegion(_)
        ));
        assert_eq!(
            rcode("game.lb.example.com", TYPE_AAAA),
            (NOERROR, 1, 0),
            "one v6 node"
        );
        assert_eq!(
            rcode("game.lb.example.com", 16),
            (NOERROR, 0, 1),
            "TXT: NODATA"
        );
        assert_eq!(
            rcode("local.lb.example.com", TYPE_A),
            (NOERROR, 0, 1),
            "nobody has it"
        );
        assert_eq!(rcode("edge-weu.ns.lb.example.com", TYPE_A), (NOERROR, 1, 0));
        assert_eq!(
            rcode("ns.lb.example.com", TYPE_A),
            (NOERROR, 0, 1),
            "empty non-terminal"
        );
        assert_eq!(rcode("nope.lb.example.com", TYPE_A), (NXDOMAIN, 0, 1));
        assert_eq!(rcode("x.game.lb.example.com", TYPE_A), (NXDOMAIN, 0, 1));
        assert_eq!(rcode("example.com", TYPE_A), (REFUSED, 0, 0));
        assert_eq!(rcode("xlb.example.com", TYPE_A), (REFUSED, 0, 0));
    }
}
