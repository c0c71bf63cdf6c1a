//! AFL++'s entry point for the `dns` target: see `switchyard_fuzz::dns`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::dns::run(data));
}
