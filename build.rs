//! Puts libtorch's directory in the binaries' run path when the `torch`
//! feature is on, so `atelier` runs without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_TORCH");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    match std::env::var("LIBTORCH") {
        Ok(root) if !root.is_empty() => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{root}/lib");
            if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
                // Nothing calls into libtorch_cuda directly: without
                // --no-as-needed the linker drops it, and libtorch then
                // sees no CUDA device.
                println!("cargo:rustc-link-arg=-L{root}/lib");
                println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
                println!("cargo:rustc-link-arg=-ltorch_cuda");
                println!("cargo:rustc-link-arg=-Wl,--as-needed");
            }
        }
        _ => println!(
            "cargo:warning=the torch feature needs LIBTORCH: run `eval \"$(scripts/fetch-libtorch)\"` first"
        ),
    }
}
