//! Writes the seed corpus, `corpus/<target>/<seed>`, from the code's own encoders (see
//! `switchyard_fuzz::seeds`). Run it again when a wire format or the config changes:
//! `cargo afl run --release --bin make-seeds` from `fuzz/`, or with a directory to write to.

use std::path::PathBuf;

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for (target, seeds) in switchyard_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
}
