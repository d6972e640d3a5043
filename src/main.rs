//! The `atelier` binary: everything lives in the library's `cli` module.

// mimalloc: the projector allocates many small, short-lived buffers across
// threads; glibc's arenas spent a quarter of its time there (perf).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_huge_pages();
    atelier::cli::main()
}

/// Transparent huge pages off for this process, unless
/// `MIMALLOC_ALLOW_THP` says what to do. mimalloc asks for them on its
/// arenas and hands memory back in 4 KiB pieces, so the kernel zeroed whole
/// 2 MiB pages again and again: a fifth of the embedded projector's time
/// (`perf`: `clear_page_erms` under `do_huge_pmd_anonymous_page`), and
/// 81 k against 107 k votes/s in `bench project --views embedded`.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(e) = rustix::thread::disable_transparent_huge_pages(true)
    {
        eprintln!("atelier: could not turn transparent huge pages off: {e}");
    }
}
