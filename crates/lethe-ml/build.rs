//! Embeds libtorch's directory as an rpath so this crate's test binaries run without
//! `LD_LIBRARY_PATH`.

fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
