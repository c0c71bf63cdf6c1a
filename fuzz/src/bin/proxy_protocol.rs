//! AFL++'s entry point for the `proxy_protocol` target: see `switchyard_fuzz::proxy_protocol`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::proxy_protocol::run(data));
}
