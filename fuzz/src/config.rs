//! Target `config`: a node's config file, parsed and validated as `switchyard check` and a
//! reload do (`Config::parse`), then compiled as a start and a reload compile it. Whatever
//! `parse` accepts must pass `validate` again, and compile; whatever it refuses must make an
//! error message (the location and field of the mistake).

use std::sync::Arc;

use switchyard_node::config::Config;
use switchyard_node::core::compiled::CompiledConfig;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Some(std::path::Path::new("node.toml"))) {
        Ok(config) => {
            if let Err(e) = config.validate() {
                panic!("parse accepted what validate refuses: {e}");
            }
            let _ = config.fingerprint();
            let first = CompiledConfig::compile(Arc::new(config.clone()), None);
            // A reload of the same file, which keeps what it can of the running state.
            let _ = CompiledConfig::compile(Arc::new(config), Some(&first));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
