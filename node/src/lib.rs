//! Switchyard edge node: configuration, monitors, steering, the TCP proxy and the status
//! endpoint. `App` runs all of it; the `switchyard` binary is a thin shell around it, and the
//! tests start the same `App` on port 0.

pub mod config;
pub mod health;
pub mod probe;
pub mod runtime;
pub mod steering;
