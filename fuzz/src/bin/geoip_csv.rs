//! AFL++'s entry point for the `geoip_csv` target: see `switchyard_fuzz::geoip`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::geoip::run_csv(data));
}
