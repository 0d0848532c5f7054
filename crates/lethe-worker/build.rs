//! Embeds libtorch's directory as an rpath so the worker binary and its tests run without
//! `LD_LIBRARY_PATH`.

fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
