use std::io::Write;
use std::path::{Path, PathBuf};

use lethe_ml::data::{
    load_cifar10_batches, load_idx_split, load_safetensors_split, Dataset, DatasetSpec, RawValues,
};
use lethe_ml::MlError;
use tch::{Kind, Tensor};

fn idx_bytes(dtype: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, dtype, dims.len() as u8];
    for dim in dims {
        bytes.extend_from_slice(&dim.to_be_bytes());
    }
    bytes.extend_from_slice(payload);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn error_text(result: Result<impl std::fmt::Debug, MlError>) -> String {
    result
        .expect_err("malformed input must be rejected")
        .to_string()
}

#[test]
fn idx_loads_raw_and_gzipped_files_alike() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..12).collect();
    let images = idx_bytes(0x08, &[3, 2, 2], &pixels);
    let labels = idx_bytes(0x08, &[3], &[2, 0, 1]);
    let raw = load_idx_split(
        &write(dir.path(), "i", &images),
        &write(dir.path(), "l", &labels),
    )
    .unwrap();
    let gz = load_idx_split(
        &write(dir.path(), "i.gz", &gzip(&images)),
        &write(dir.path(), "l.gz", &gzip(&labels)),
    )
    .unwrap();
    assert_eq!(raw, gz);
    assert_eq!(raw.sample_shape, vec![1, 2, 2]);
    assert_eq!(raw.labels, vec![2, 0, 1]);
    assert_eq!(raw.values, RawValues::U8(pixels));
}

#[test]
fn idx_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good_images = write(
        dir.path(),
        "good-images",
        &idx_bytes(0x08, &[2, 2, 2], &[0; 8]),
    );
    let good_labels = write(dir.path(), "good-labels", &idx_bytes(0x08, &[2], &[0, 1]));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-magic", vec![1, 2, 8, 3, 0, 0, 0, 0], "bad IDX magic"),
        (
            "float-type",
            idx_bytes(0x0d, &[2, 2, 2], &[0; 32]),
            "unsupported IDX element type",
        ),
        (
            "truncated",
            idx_bytes(0x08, &[2, 2, 2], &[0; 5]),
            "truncated",
        ),
        (
            "short-header",
            vec![0, 0, 8, 3, 0, 0],
            "truncated IDX header",
        ),
        (
            "trailing",
            idx_bytes(0x08, &[2, 2, 2], &[0; 9]),
            "trailing bytes",
        ),
        (
            "two-dims",
            idx_bytes(0x08, &[2, 4], &[0; 8]),
            "3 or 4 dimensions",
        ),
        ("corrupt.gz", vec![0x1f, 0x8b, 0, 1, 2, 3], "corrupt gzip"),
        ("empty", vec![], "too short"),
    ];
    for (name, bytes, expected) in cases {
        let path = write(dir.path(), name, &bytes);
        let message = error_text(load_idx_split(&path, &good_labels));
        assert!(message.contains(name), "{message} should name {name}");
        assert!(
            message.contains(expected),
            "{message} should say {expected}"
        );
    }
    let three_labels = write(
        dir.path(),
        "three-labels",
        &idx_bytes(0x08, &[3], &[0, 1, 2]),
    );
    let message = error_text(load_idx_split(&good_images, &three_labels));
    assert!(message.contains("3 labels for 2 images"), "{message}");
    let missing = error_text(load_idx_split(&dir.path().join("absent"), &good_labels));
    assert!(missing.contains("absent"), "{missing}");
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut record = vec![label];
    record.extend(std::iter::repeat_n(fill, 3072));
    record
}

#[test]
fn cifar10_batches_load_in_order_and_reject_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(
        dir.path(),
        "a.bin",
        &[cifar_record(3, 10), cifar_record(9, 20)].concat(),
    );
    let second = write(dir.path(), "b.bin", &cifar_record(0, 30));
    let split = load_cifar10_batches(&[first.clone(), second]).unwrap();
    assert_eq!(split.labels, vec![3, 9, 0]);
    assert_eq!(split.sample_shape, vec![3, 32, 32]);
    let RawValues::U8(values) = &split.values else {
        panic!("CIFAR pixels are bytes")
    };
    assert_eq!((values[0], values[3072], values[6144]), (10, 20, 30));

    let truncated = write(dir.path(), "truncated.bin", &cifar_record(1, 0)[..3000]);
    assert!(error_text(load_cifar10_batches(&[truncated])).contains("truncated.bin"));
    let bad_label = write(dir.path(), "label.bin", &cifar_record(12, 0));
    assert!(error_text(load_cifar10_batches(&[bad_label])).contains("label 12"));
    let message = error_text(Dataset::load(
        &"cifar10:/nonexistent-dir".parse::<DatasetSpec>().unwrap(),
    ));
    assert!(message.contains("nonexistent-dir"), "{message}");
}

#[test]
fn safetensors_datasets_accept_bytes_and_floats_and_reject_bad_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u8.safetensors");
    let x = Tensor::arange(2 * 4 * 4, (Kind::Uint8, tch::Device::Cpu)).view([2, 4, 4]);
    let y = Tensor::from_slice(&[1i64, 0]);
    Tensor::write_safetensors(&[("x", &x), ("y", &y)], &path).unwrap();
    let split = load_safetensors_split(&path).unwrap();
    assert_eq!(split.sample_shape, vec![1, 4, 4]);
    assert_eq!(split.labels, vec![1, 0]);

    let float_path = dir.path().join("f32.safetensors");
    let features = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 3.0, 4.0, 5.0]).view([2, 3]);
    Tensor::write_safetensors(&[("x", &features), ("y", &y)], &float_path).unwrap();
    let split = load_safetensors_split(&float_path).unwrap();
    assert_eq!(split.sample_shape, vec![3]);
    assert_eq!(
        split.values,
        RawValues::F32(vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.0])
    );

    type Case = (&'static str, Vec<(&'static str, Tensor)>, &'static str);
    let cases: Vec<Case> = vec![
        ("no-y", vec![("x", x.shallow_clone())], "missing tensor `y`"),
        (
            "int-y",
            vec![("x", x.shallow_clone()), ("y", y.to_kind(Kind::Int))],
            "`y` must be int64",
        ),
        (
            "count",
            vec![
                ("x", x.shallow_clone()),
                ("y", Tensor::from_slice(&[1i64, 0, 1])),
            ],
            "2 examples but `y` has 3",
        ),
        (
            "bool-x",
            vec![("x", x.to_kind(Kind::Bool)), ("y", y.shallow_clone())],
            "uint8 or floating point",
        ),
        (
            "flat-x",
            vec![
                ("x", Tensor::from_slice(&[1u8, 2])),
                ("y", y.shallow_clone()),
            ],
            "`x` must have shape",
        ),
        (
            "nan-x",
            vec![
                ("x", Tensor::from_slice(&[f32::NAN, 1.0]).view([2, 1])),
                ("y", y.shallow_clone()),
            ],
            "NaN",
        ),
    ];
    for (name, tensors, expected) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        let refs: Vec<(&str, &Tensor)> =
            tensors.iter().map(|(key, tensor)| (*key, tensor)).collect();
        Tensor::write_safetensors(&refs, &path).unwrap();
        let message = error_text(load_safetensors_split(&path));
        assert!(
            message.contains(name) && message.contains(expected),
            "{name}: {message}"
        );
    }
    let garbage = write(
        dir.path(),
        "garbage.safetensors",
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json",
    );
    assert!(error_text(load_safetensors_split(&garbage)).contains("garbage.safetensors"));
}

#[test]
fn fashion_mnist_has_stable_indices_and_a_content_hash() {
    let tiny = super::support::fmnist_tiny();
    assert_eq!(
        (tiny.num_train, tiny.num_val, tiny.num_classes),
        (512, 256, 10)
    );
    assert_eq!(tiny.sample_shape, vec![1, 28, 28]);
    assert_eq!(tiny.x.size(), vec![768, 1, 28, 28]);
    let again = super::support::fmnist_tiny();
    assert_eq!(tiny.content_hash, again.content_hash);
    let bigger =
        Dataset::load(&DatasetSpec::fashion_mnist().with_limits(Some(600), Some(256))).unwrap();
    assert_ne!(tiny.content_hash, bigger.content_hash);
    // A limit keeps a prefix: example 17 is the same example in both.
    assert!(tiny.x.get(17).equal(&bigger.x.get(17)));
    assert_eq!(tiny.y.int64_value(&[17]), bigger.y.int64_value(&[17]));
    // Targets n.. are validation examples.
    assert!(tiny.x.get(512).equal(&bigger.x.get(600)));
    assert!(tiny.check_targets(&[0, 767]).is_ok());
    assert!(tiny
        .check_targets(&[768])
        .unwrap_err()
        .to_string()
        .contains("768 is out of range"));
}

#[test]
fn dataset_specs_parse_from_the_command_line_form() {
    assert_eq!(
        "fmnist-tiny".parse::<DatasetSpec>().unwrap(),
        DatasetSpec::fmnist_tiny()
    );
    let spec: DatasetSpec = "safetensors:a.st,b.st".parse().unwrap();
    assert_eq!(spec.to_string(), "safetensors:a.st…");
    for bad in ["mnist", "idx:a,b", "safetensors:", "cifar10"] {
        assert!(
            bad.parse::<DatasetSpec>().is_err(),
            "{bad} should not parse"
        );
    }
}
