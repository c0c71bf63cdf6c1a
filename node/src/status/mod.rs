//! The status endpoint: the document it serves (`document`), the server (`server`) and the
//! client side that `switchyard status` uses (`client`), and `follow`, which
//! `switchyard anycast` runs to tell a BGP speaker what the node announces.

pub mod client;
pub mod document;
pub mod follow;
pub mod server;

pub use client::{fetch, fetch_anycast, http_get, render, render_anycast};
pub use document::*;
pub use server::{document, serve, serve_with, StatusLimits};
