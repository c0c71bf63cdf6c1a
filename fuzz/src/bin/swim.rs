//! AFL++'s entry point for the `swim` target: see `switchyard_fuzz::swim`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::swim::run(data));
}
