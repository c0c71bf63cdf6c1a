//! Test support for Switchyard's integration and end-to-end tests: tools that
//! stand in for the world around a node, usable in-process or as binaries
//! from the `testnet` binary (behind testnet.sh), and the one testnet topology.

pub mod harness;
pub mod origin;
pub mod rng;
pub mod sim;
pub mod topology;
pub mod wan;
