//! AFL++'s entry point for the `mesh` target: see `switchyard_fuzz::mesh`.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_fuzz::mesh::run(data));
}
