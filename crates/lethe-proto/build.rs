//! Generates the gRPC code from the workspace's `proto/` with a vendored `protoc`, so the
//! build needs no system protobuf compiler.

/// The results that the dashboard shows, and the messages inside them.
const SERIALIZED: [&str; 20] = [
    ".lethe.v1.NoopResult",
    ".lethe.v1.IndexBuildResult",
    ".lethe.v1.DeletionResult",
    ".lethe.v1.StoredObject",
    ".lethe.v1.ModelVersion",
    ".lethe.v1.IndexReport",
    ".lethe.v1.MatchReport",
    ".lethe.v1.MatchingSettings",
    ".lethe.v1.FullRetrainReport",
    ".lethe.v1.TargetConfidence",
    ".lethe.v1.AuditReport",
    ".lethe.v1.AuditFigures",
    ".lethe.v1.SplitAudit",
    ".lethe.v1.KlomStats",
    ".lethe.v1.VersionMargins",
    ".lethe.v1.MarginGap",
    ".lethe.v1.PredictReport",
    ".lethe.v1.RetrainReport",
    ".lethe.v1.TrakShardReport",
    ".lethe.v1.TrakCheckpointsReport",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "google/longrunning/operations.proto",
        "google/rpc/error_details.proto",
        "lethe/v1/results.proto",
        "lethe/v1/lethe.proto",
        "lethe/v1/worker.proto",
        "lethe/v1/admin.proto",
    ]
    .map(|f| root.join(f));
    let descriptor =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("lethe_descriptor.bin");
    // Type names let results travel in `google.protobuf.Any` with `Any::from_msg`/`to_msg`.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    let mut builder = tonic_prost_build::configure();
    // The dashboard renders results as JSON, from these types.
    for message in SERIALIZED {
        builder = builder.type_attribute(message, "#[derive(serde::Serialize)]");
    }
    builder
        .file_descriptor_set_path(&descriptor)
        .compile_with_config(
            config,
            &files,
            &[root.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
