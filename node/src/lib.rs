//! Switchyard edge node: configuration, monitors, steering, the TCP proxy and the status
//! endpoint. `App` runs all of it; the `switchyard` binary is a thin shell around it, and the
//! tests start the same `App` on port 0.

pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod explain;
pub mod geo;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod probe;
pub mod proxy;
pub mod proxy_protocol;
pub mod relay;
pub mod runtime;
pub mod status;
pub mod steering;

pub use app::{App, StartOptions};
pub use config::Config;
pub use error::Error;
