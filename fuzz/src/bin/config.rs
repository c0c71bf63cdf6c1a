//! AFL++'s entry point for the `config` target: see `switchyard_fuzz::config`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::config::run(data));
}
