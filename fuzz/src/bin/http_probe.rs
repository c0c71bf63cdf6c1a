//! AFL++'s entry point for the `http_probe` target: see `switchyard_fuzz::http_probe`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::http_probe::run(data));
}
