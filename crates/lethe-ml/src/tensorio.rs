//! safetensors files with metadata, written atomically.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Kind, Tensor};

use crate::error::{MlError, Result};

struct TensorBytes {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &TensorBytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_bytes(name: &str, tensor: &Tensor) -> Result<TensorBytes> {
    let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
    let dtype = match tensor.kind() {
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Bool => Dtype::BOOL,
        other => {
            return Err(MlError::Shape(format!(
                "tensor `{name}` has unsupported dtype {other:?}"
            )))
        }
    };
    let numel = tensor.numel();
    let mut bytes = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
    tensor.f_copy_data_u8(&mut bytes, numel)?;
    Ok(TensorBytes {
        dtype,
        shape: tensor.size().iter().map(|dim| *dim as usize).collect(),
        bytes,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Writes `tensors` and string `metadata` to `path` through a temporary file and a rename, so
/// readers never see a partial file and a crash leaves either nothing or the whole file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut converted = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        converted.push((name.clone(), to_bytes(name, tensor)?));
    }
    let info: HashMap<String, String> = metadata.clone().into_iter().collect();
    let views = converted.iter().map(|(name, bytes)| (name.clone(), bytes));
    let serialized = safetensors::tensor::serialize(views, &Some(info))
        .map_err(|err| MlError::malformed(path, format!("cannot serialise tensors: {err}")))?;
    write_atomically(path, &serialized)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| MlError::io(dir, source))?;
    let mut file =
        tempfile::NamedTempFile::new_in(dir).map_err(|source| MlError::io(dir, source))?;
    file.write_all(bytes)
        .map_err(|source| MlError::io(path, source))?;
    file.as_file()
        .sync_all()
        .map_err(|source| MlError::io(path, source))?;
    file.persist(path)
        .map_err(|err| MlError::io(path, err.error))?;
    Ok(())
}

/// Tensors and metadata read from a safetensors file.
pub struct NamedTensors {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: BTreeMap<String, String>,
}

impl NamedTensors {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, tensor)| tensor)
    }
}

/// Reads a safetensors file; anything malformed is an error naming the file.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    let buffer = std::fs::read(path).map_err(|source| MlError::io(path, source))?;
    let parsed = SafeTensors::deserialize(&buffer).map_err(|err| {
        MlError::malformed(path, format!("not a valid safetensors file: {err:?}"))
    })?;
    let (_, header) = SafeTensors::read_metadata(&buffer).map_err(|err| {
        MlError::malformed(path, format!("not a valid safetensors file: {err:?}"))
    })?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = Vec::new();
    for (name, view) in parsed.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            MlError::malformed(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|dim| *dim as i64).collect();
        let expected_len = view.shape().iter().product::<usize>() * kind.elt_size_in_bytes();
        if view.data().len() != expected_len {
            return Err(MlError::malformed(
                path,
                format!(
                    "tensor `{name}` has {} bytes, its shape needs {expected_len}",
                    view.data().len()
                ),
            ));
        }
        tensors.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(NamedTensors { tensors, metadata })
}
