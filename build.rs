//! Link libtorch so that CUDA is really used on a GPU node.
//!
//! `torch-sys` emits `-Wl,--no-as-needed -ltorch` and an rpath, but cargo applies
//! `rustc-link-arg` only to the package that emits it, so our binaries would get
//! neither: the linker (rustc passes `--as-needed`) would drop `libtorch.so` and
//! with it `libtorch_cuda.so`, and `Device::cuda_if_available()` would return the
//! CPU even on a GPU node. `torch-sys` is a direct dependency so that its
//! `DEP_TCH_LIBTORCH_LIB` is visible here, and we emit the arguments ourselves.
//!
//! With the lean CPU-only install (scripts/setup-libtorch.sh, the default for tests)
//! the CUDA libraries that `libtorch_cuda.so` needs are absent, so forcing
//! `libtorch.so` in would make every binary fail to start. We therefore force it
//! only when the CUDA libraries are there, or when `LLMOS_LINK_CUDA=1` says so
//! (`LLMOS_LINK_CUDA=0` forces the CPU-only link).
use std::path::Path;

fn cuda_libraries_present(torch_lib: &Path) -> bool {
    // The full PyPI wheel puts the CUDA libraries under site-packages/nvidia/*/lib.
    let Some(site) = torch_lib.parent().and_then(Path::parent) else { return false };
    let Ok(dirs) = std::fs::read_dir(site.join("nvidia")) else { return false };
    dirs.flatten().any(|d| {
        std::fs::read_dir(d.path().join("lib"))
            .map(|files| files.flatten().any(|f| f.file_name().to_string_lossy().starts_with("libcusparse.so")))
            .unwrap_or(false)
    })
}

fn main() {
    let lib = std::env::var_os("DEP_TCH_LIBTORCH_LIB");
    if let Some(lib) = &lib {
        let lib = lib.to_string_lossy();
        if std::env::var_os("LLMOS_NO_RPATH").is_none() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        }
    }
    let link_cuda = match std::env::var("LLMOS_LINK_CUDA").ok().as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => lib.as_ref().map(|l| cuda_libraries_present(Path::new(l))).unwrap_or(false),
    };
    if link_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    } else {
        println!("cargo:warning=libtorch without CUDA libraries: linking the CPU-only libtorch (set LLMOS_LINK_CUDA=1 on a GPU build)");
    }
    println!("cargo:rerun-if-env-changed=LLMOS_NO_RPATH");
    println!("cargo:rerun-if-env-changed=LLMOS_LINK_CUDA");
    println!("cargo:rerun-if-changed=build.rs");
}
