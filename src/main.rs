//! The `atelier` binary: everything lives in the library's `cli` module.

// mimalloc: the projector allocates many small, short-lived buffers across
// threads; glibc's arenas spent a quarter of its time there (perf).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    atelier::cli::main()
}
