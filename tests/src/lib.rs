//! Test support for Switchyard's integration and end-to-end tests: tools that
//! stand in for the world around a node, usable in-process or as binaries
//! from testnet.sh.

pub mod harness;
pub mod origin;
pub mod wan;
