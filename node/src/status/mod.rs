//! The status endpoint: the document it serves (`document`), the server (`server`) and the
//! client side that `switchyard status` uses (`client`).

pub mod client;
pub mod document;
pub mod server;

pub use client::{fetch, http_get, render};
pub use document::*;
pub use server::{document, serve, serve_with, StatusLimits};
