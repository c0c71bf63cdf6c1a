//! The pure core: data and decisions, with the time and randomness passed in. Nothing here
//! opens a socket, spawns a task, reads a clock or draws a random number, so all of it is
//! unit-tested without I/O. The shells around it (proxy, monitor, status, mesh glue) do the
//! I/O and feed it.
//!
//! - `compiled`: the config compiled for steering (pools, origins, load balancers by index).
//! - `health`: one origin's health state machine; `book`: those of every probed origin.
//! - `view`: the health view judged from this node's and the mesh's rows; `Snapshot`.
//! - `client`: where a client is (GeoIP's answer and its source).
//! - `affinity`: session affinity by client IP.
//! - `steering`: which pool and origin serve a connection.
//! - `explain`: a steering decision in words.
//! - `relay`: whether a connection to the chosen origin goes straight or through a peer.
//! - `trouble`: whose fault a failure is, and the node's own trouble (local errors, overload).
//! - `verdict`: blame asked of peers (origin down, path down, or this node sick).
//! - `dns`: which nodes the mesh's DNS answers a name with, per client region, and why.
//! - `anycast`: when to announce each anycast prefix, and what to tell the router.

pub mod affinity;
pub mod anycast;
pub mod book;
pub mod client;
pub mod compiled;
pub mod dns;
pub mod explain;
pub mod health;
pub mod relay;
pub mod steering;
pub mod trouble;
pub mod verdict;
pub mod view;
