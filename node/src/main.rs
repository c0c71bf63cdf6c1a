//! The `switchyard` binary: everything it does lives in the library, so tests run the same code.

fn main() -> std::process::ExitCode {
    switchyard_node::cli::main()
}
