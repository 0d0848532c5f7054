//! Generates the gRPC code from the workspace's `proto/` with a vendored `protoc`, so the
//! build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "google/longrunning/operations.proto",
        "lethe/v1/lethe.proto",
        "lethe/v1/worker.proto",
        "lethe/v1/admin.proto",
    ]
    .map(|f| root.join(f));
    let descriptor =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("lethe_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_protos(
            &files,
            &[root.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
