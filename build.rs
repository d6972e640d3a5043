//! Puts libtorch's directory in the binaries' run path when the `torch`
//! feature is on, so `atelier` runs without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_TORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    match std::env::var("LIBTORCH") {
        Ok(root) if !root.is_empty() => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{root}/lib");
        }
        _ => println!(
            "cargo:warning=the torch feature needs LIBTORCH: run `eval \"$(scripts/fetch-libtorch)\"` first"
        ),
    }
}
