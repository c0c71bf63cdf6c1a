//! AFL++'s entry point for the `machine` target: see `switchyard_fuzz::machine`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::machine::run(data));
}
