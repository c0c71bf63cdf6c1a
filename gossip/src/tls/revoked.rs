//! The revocation list ([`Revoked`]): the node ids and certificate serials this cluster no
//! longer trusts, read from the text file `[mesh] revoked` names. A listed peer is refused at
//! the handshake, its claims are refused wherever they come from, and a node refuses to start
//! with a listed certificate of its own.
//!
//! The file holds one entry a line, with a prefix saying which kind it is (a node id may be all
//! hex digits, so a bare word would be ambiguous):
//!
//! ```text
//! # edge-weu-3 was decommissioned: every certificate naming it is refused
//! node:edge-weu-3
//! # one certificate of edge-enam-1 (its key leaked); the node's next certificate is fine
//! serial:5e2f0c9a41d7b3e8
//! serial:5E:2F:0C:9A:41:D7:B3:E9   # openssl's spelling works too
//! ```
//!
//! A serial is the certificate's serial number in hex, as `switchyard cert issue` prints it
//! (and `openssl x509 -noout -serial` shows it): case, `:` separators and leading zeros do not
//! matter. `#` starts a comment (to the end of the line); blank lines are ignored.
//! `switchyard cert revoke` appends entries.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use super::error::{FileKind, TlsError};
use super::files::{read_certs, write_replacing};
use crate::identity::NodeId;

/// The entries of a revocation list, with the line each came from (for messages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    path: Option<PathBuf>,
    nodes: HashMap<String, usize>,
    /// Serials without leading zero bytes.
    serials: HashMap<Vec<u8>, usize>,
}

impl Revoked {
    /// An empty list: nothing is revoked.
    pub fn none() -> Revoked {
        Revoked::default()
    }

    /// Reads and parses the list at `path`.
    pub fn load(path: &Path) -> Result<Revoked, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            what: FileKind::RevocationList,
            path: path.to_owned(),
            source,
        })?;
        Revoked::parse(&text, path)
    }

    /// Parses the text of a list; `path` is only for the messages, which name `path:line`.
    pub fn parse(text: &str, path: &Path) -> Result<Revoked, TlsError> {
        let mut list = Revoked {
            path: Some(path.to_owned()),
            ..Revoked::default()
        };
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            let bad = |reason: String| TlsError::BadRevocation {
                path: path.to_owned(),
                line: number,
                reason,
            };
            let entry = line.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            let Some((kind, value)) = entry.split_once(':') else {
                return Err(bad(format!("{entry:?} has no `node:` or `serial:` prefix")));
            };
            let value = value.trim();
            match kind.trim() {
                "node" => {
                    let id = NodeId::new(value).map_err(|e| bad(e.to_string()))?;
                    list.nodes.entry(id.into()).or_insert(number);
                }
                "serial" => {
                    let serial = parse_serial(value).map_err(bad)?;
                    list.serials.entry(serial).or_insert(number);
                }
                other => {
                    return Err(bad(format!(
                        "unknown kind {other:?} (it must be `node` or `serial`)"
                    )))
                }
            }
        }
        Ok(list)
    }

    /// How many entries the list holds.
    pub fn len(&self) -> usize {
        self.nodes.len() + self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the node id `node` is listed.
    pub fn node(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// Whether the serial `hex` (as [`serial_hex`] writes it) is listed.
    pub fn serial_listed(&self, hex: &str) -> bool {
        parse_serial(hex).is_ok_and(|s| self.serials.contains_key(&s))
    }

    /// The node ids listed.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Why the certificate `der` is revoked ("node id X is listed at FILE:LINE"), or `None`
    /// if it is not. A certificate that does not parse is not judged here: the chain checks
    /// refuse it anyway.
    pub fn refuses(&self, der: &[u8]) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let at = |line: usize| match &self.path {
            Some(p) => format!("{}:{line}", p.display()),
            None => format!("line {line}"),
        };
        if let Some(serial) = serial_of(der) {
            if let Some(&line) = self.serials.get(&serial) {
                return Some(format!(
                    "its serial {} is listed at {}",
                    hex(&serial),
                    at(line)
                ));
            }
        }
        let cert = CertificateDer::from(der);
        let leaf = webpki::EndEntityCert::try_from(&cert).ok()?;
        // The names a certificate could be taken for: its DNS names that are node ids (the
        // rule is the one `verify` applies; written out here so the two stay independent).
        let found = leaf
            .valid_dns_names()
            .filter(|n| NodeId::new(*n).is_ok())
            .find_map(|id| {
                let line = *self.nodes.get(id)?;
                Some(format!("node id {id} is listed at {}", at(line)))
            });
        found
    }
}

/// What to revoke ([`append`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Every certificate naming this node id.
    Node(String),
    /// One certificate, by its serial in hex.
    Serial(String),
    /// The certificate in this file (its first one, the node's), by its serial.
    CertFile(PathBuf),
}

/// Appends `what` to the revocation list at `path` (created if missing), keeping the file
/// whole for readers (a node reloading meanwhile reads the old or the new list). Refuses an
/// entry that does not parse, and a list that does not parse as it is. Returns the line
/// written, or `None` if the list already held it.
pub fn append(path: &Path, what: &Revocation) -> Result<Option<String>, TlsError> {
    let entry = match what {
        Revocation::Node(id) => format!("node:{id}"),
        Revocation::Serial(hex) => format!("serial:{hex}"),
        Revocation::CertFile(cert) => format!("serial:{}", serial_of_file(cert)?),
    };
    let one = Revoked::parse(&entry, Path::new("the entry"))?;
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(TlsError::Read {
                what: FileKind::RevocationList,
                path: path.to_owned(),
                source,
            })
        }
    };
    let list = Revoked::parse(&old, path)?;
    let held = one.nodes().all(|n| list.node(n))
        && one.serials.keys().all(|s| list.serials.contains_key(s));
    if held {
        return Ok(None);
    }
    let mut text = old;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = writeln!(text, "{entry}");
    write_replacing(path, text.as_bytes(), 0o644)?;
    Ok(Some(entry))
}

/// The serial (hex, as the list takes it) of the node certificate in the PEM file `path`.
pub fn serial_of_file(path: &Path) -> Result<String, TlsError> {
    let certs = read_certs(path, FileKind::NodeCert)?;
    certs
        .first()
        .and_then(|der| serial_hex(der))
        .ok_or_else(|| TlsError::BadCert {
            what: FileKind::NodeCert,
            path: path.to_owned(),
            reason: "its serial number cannot be read".into(),
        })
}

/// The serial number of a certificate (DER), without leading zero bytes.
pub(crate) fn serial_of(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(trim_zeros(cert.raw_serial()))
}

/// A certificate's serial as the list and `switchyard cert` write it: lower-case hex, no
/// separators, no leading zero bytes.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    serial_of(der).map(|s| hex(&s))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn trim_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    match &bytes[start..] {
        [] => vec![0],
        rest => rest.to_vec(),
    }
}

/// Parses a serial in hex: case-insensitive, `:` separators allowed, an odd number of digits
/// read as if it had a leading zero.
pub(crate) fn parse_serial(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text.chars().filter(|&c| c != ':').collect();
    if digits.is_empty() {
        return Err("the serial is empty".into());
    }
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "the serial {text:?} is not hex (it has {c:?}); write it as `switchyard cert issue` \
             prints it, e.g. `serial:5e2f0c9a41d7b3e8`"
        ));
    }
    if digits.len() > 40 {
        return Err(format!(
            "the serial {text:?} is longer than 20 bytes, more than a certificate serial holds"
        ));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| format!("the serial {text:?} is not hex ({e})"))?;
    Ok(trim_zeros(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Revoked, String> {
        Revoked::parse(text, Path::new("/etc/switchyard/revoked.txt")).map_err(|e| e.to_string())
    }

    #[test]
    fn entries_comments_and_spellings() {
        let list = parse(
            "# decommissioned\n\nnode:edge-weu-3\nserial:5e2f0c9a  # leaked\n\
             serial: 00:0A:1B\n  node : edge-enam-1 \n",
        )
        .unwrap();
        assert_eq!(list.len(), 4);
        assert!(list.node("edge-weu-3") && list.node("edge-enam-1"));
        assert!(!list.node("edge-weu-1"));
        assert!(list.serials.contains_key(&vec![0x5e, 0x2f, 0x0c, 0x9a]));
        assert!(list.serials.contains_key(&vec![0x0a, 0x1b]));
        assert_eq!(parse_serial("a1b").unwrap(), vec![0x0a, 0x1b]);
        assert_eq!(parse_serial("00").unwrap(), vec![0]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn append_adds_each_entry_once_and_keeps_the_list_parseable() {
        let dir = std::env::temp_dir().join(format!("switchyard-revoked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("revoked.txt");
        let node = Revocation::Node("edge-v".into());
        assert_eq!(
            append(&list, &node).unwrap().as_deref(),
            Some("node:edge-v")
        );
        assert_eq!(append(&list, &node).unwrap(), None);
        let serial = Revocation::Serial("0A:1B".into());
        assert_eq!(
            append(&list, &serial).unwrap().as_deref(),
            Some("serial:0A:1B")
        );
        assert_eq!(
            append(&list, &Revocation::Serial("a1b".into())).unwrap(),
            None
        );
        let loaded = Revoked::load(&list).unwrap();
        assert!(loaded.node("edge-v") && loaded.serial_listed("0a1b"));
        let err = append(&list, &Revocation::Node("bad id".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid node id"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_line_is_named_with_its_file_and_number() {
        for (text, line, says) in [
            ("node:ok\nedge-weu-1\n", 2, "no `node:` or `serial:` prefix"),
            ("\n\nserial:xyz\n", 3, "is not hex"),
            ("id:edge\n", 1, "unknown kind \"id\""),
            ("node:bad id\n", 1, "invalid node id"),
            ("serial:\n", 1, "empty"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.contains(&format!("/etc/switchyard/revoked.txt:{line}:")) && err.contains(says),
                "{text:?}: {err}"
            );
        }
    }
}
