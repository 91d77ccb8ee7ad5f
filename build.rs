//! Gives the onenet binaries and tests an rpath to the libtorch that `make setup` linked, so they
//! start without LD_LIBRARY_PATH, and records that libtorch's version for the cache keys.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let root = std::env::var("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("libtorch"));
    let root = root.canonicalize().unwrap_or(root);
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        root.join("lib").display()
    );
    let version_file = root.join("build-version");
    println!("cargo:rerun-if-changed={}", version_file.display());
    let cuda = root.join("lib").join("libtorch_cuda.so").exists();
    println!(
        "cargo:rustc-env=ONENET_LIBTORCH_CUDA={}",
        if cuda { "1" } else { "0" }
    );
    if let Ok(version) = std::fs::read_to_string(&version_file) {
        println!("cargo:rustc-env=ONENET_LIBTORCH_VERSION={}", version.trim());
    }
}
