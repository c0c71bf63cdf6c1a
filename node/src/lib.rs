//! Switchyard edge node: configuration, monitors, steering, the TCP proxy and the status
//! endpoint. `App` runs all of it; the `switchyard` binary is a thin shell around it, and the
//! tests start the same `App` on port 0.
//!
//! # Layout
//!
//! - `config`: the configuration file, parsed into typed values and validated once.
//! - `core`: the pure core. The compiled config, the health state machines and their book,
//!   the health view and its judging, whose fault a failure is, session affinity, steering,
//!   which nodes DNS answers with, and explain's reasoning: plain code over data, with time
//!   and randomness passed in.
//! - Shells, each doing one kind of I/O around the core:
//!   - `hub`: health in (probes, failed connects, the mesh), published snapshots out, and the
//!     node's own trouble (local errors, runtime lag);
//!   - `proxy` (with `relay`, `tunnel` and `proxy_protocol`): the apps' listeners and data
//!     path, direct or through a peer node;
//!   - `monitor` (with `probe`): the health probes;
//!   - `mesh`: the glue to the gossip mesh, and this node's advert in it;
//!   - `dns` (with `wire` and `zone`): the DNS server of the mesh's names;
//!   - `relays`: the path to each origin (direct or through a peer), from the view and the
//!     mesh, with each path's hold-down;
//!   - `peer_relay`: peers' relay requests, checked against this node's config and carried
//!     to the origin as the proxy's connections;
//!   - `locate`: GeoIP and the region table;
//!   - `status`: the status endpoint, its document, the client the CLI uses, and the
//!     follower `switchyard anycast` runs;
//!   - `metrics` and `clock`: the one registry and the one clock, passed down.
//! - `state`: what the status endpoint reads of a running node.
//! - `app`: wires the shells together; `cli`: the command line.
//!
//! The one dependency rule: a module uses only modules of lower layers, never its own layer
//! or above. The layers, lowest first:
//!
//! 1. `config`, `metrics`, `clock`
//! 2. `error`, `core`
//! 3. `locate`, `hub`
//! 4. `relays`
//! 5. `proxy`, `monitor`, `mesh`, `dns`
//! 6. `state`, `peer_relay`
//! 7. `status`
//! 8. `app`
//! 9. `cli`
//!
//! `tests/tests/layout.rs` checks it, and that no two modules of any crate import each other.

#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod dns;
pub mod error;
pub mod hub;
pub mod locate;
pub mod mesh;
pub mod metrics;
pub mod monitor;
pub mod peer_relay;
pub mod proxy;
pub mod relays;
pub mod state;
pub mod status;

pub use app::{App, StartOptions};
pub use config::Config;
pub use error::Error;
