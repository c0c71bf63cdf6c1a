//! AFL++'s entry point for the `geoip` target: see `switchyard_fuzz::geoip`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::geoip::run(data));
}
