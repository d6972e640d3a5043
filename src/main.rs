//! The `atelier` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    atelier::cli::main()
}
