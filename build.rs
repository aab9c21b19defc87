//! Link libtorch so that CUDA is really used on a GPU node.
//!
//! `torch-sys` emits `-Wl,--no-as-needed -ltorch` and an rpath, but cargo applies
//! `rustc-link-arg` only to the package that emits it, so our binaries would get
//! neither: the linker (rustc passes `--as-needed`) would drop `libtorch.so` and
//! with it `libtorch_cuda.so`, and `Device::cuda_if_available()` would return the
//! CPU even on a GPU node. `torch-sys` is a direct dependency so that its
//! `DEP_TCH_LIBTORCH_LIB` is visible here, and we emit the arguments ourselves.
fn main() {
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        let lib = lib.to_string_lossy();
        if std::env::var_os("LLMOS_NO_RPATH").is_none() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        }
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rerun-if-env-changed=LLMOS_NO_RPATH");
    println!("cargo:rerun-if-changed=build.rs");
}
