//! Switchyard's fuzz targets: one per decoder that meets the network or a file, each a
//! function from bytes that must never panic (nor hang), whatever the bytes. The binaries in
//! `src/bin/` hand these functions to AFL++ (`afl::fuzz!`); `make-seeds` writes the seed
//! corpus (`corpus/<target>/`) from the code's own encoders. See README.md.
//!
//! Besides "no panic", each target checks what its code promises of what it accepts (a
//! decoded message encodes again, a parsed PROXY header parses the same without what follows
//! it, an answered DNS query gets a well-formed response within its size limit, a found
//! GeoIP answer holds what `GeoAnswer` says it holds), so the fuzzer also finds wrong answers
//! that do not crash.

pub mod config;
pub mod dns;
pub mod geoip;
pub mod http_probe;
pub mod machine;
pub mod mesh;
pub mod proxy_protocol;
pub mod seeds;
pub mod swim;
