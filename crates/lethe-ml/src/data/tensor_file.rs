//! Datasets stored as safetensors files with an `x` tensor (uint8 or float) and a `y` tensor
//! (int64).

use std::path::Path;

use tch::{Kind, Tensor};

use super::raw::{RawSplit, RawValues};
use crate::error::{MlError, Result};

/// Loads one split from a safetensors file.
pub fn load_safetensors_split(path: &Path) -> Result<RawSplit> {
    if !path.is_file() {
        return Err(MlError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let named = Tensor::read_safetensors(path)
        .map_err(|err| MlError::malformed(path, format!("not a valid safetensors file: {err}")))?;
    let find = |name: &str| {
        named
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, tensor)| tensor)
            .ok_or_else(|| MlError::malformed(path, format!("missing tensor `{name}`")))
    };
    let x = find("x")?;
    let y = find("y")?;
    let x_shape = x.size();
    let y_shape = y.size();
    if y.kind() != Kind::Int64 {
        return Err(MlError::malformed(
            path,
            format!("`y` must be int64, found {:?}", y.kind()),
        ));
    }
    if y_shape.len() != 1 {
        return Err(MlError::malformed(
            path,
            format!("`y` must have one dimension, found shape {y_shape:?}"),
        ));
    }
    if x_shape.len() < 2 || x_shape.len() > 4 {
        return Err(MlError::malformed(
            path,
            format!("`x` must have shape (n, d), (n, h, w) or (n, c, h, w), found {x_shape:?}"),
        ));
    }
    if x_shape[0] != y_shape[0] {
        return Err(MlError::malformed(
            path,
            format!("`x` has {} examples but `y` has {}", x_shape[0], y_shape[0]),
        ));
    }
    let sample_shape: Vec<i64> = match x_shape.as_slice() {
        [_, height, width] => vec![1, *height, *width],
        [_, rest @ ..] => rest.to_vec(),
        [] => unreachable!("checked above"),
    };
    let values = match x.kind() {
        Kind::Uint8 => RawValues::U8(Vec::<u8>::try_from(x.flatten(0, -1))?),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            let as_f32 = x.to_kind(Kind::Float).flatten(0, -1);
            let values = Vec::<f32>::try_from(as_f32)?;
            if values.iter().any(|value| !value.is_finite()) {
                return Err(MlError::malformed(
                    path,
                    "`x` contains NaN or infinite values",
                ));
            }
            RawValues::F32(values)
        }
        other => {
            return Err(MlError::malformed(
                path,
                format!("`x` must be uint8 or floating point, found {other:?}"),
            ))
        }
    };
    let labels = Vec::<i64>::try_from(y)?;
    if let Some(negative) = labels.iter().find(|label| **label < 0) {
        return Err(MlError::malformed(
            path,
            format!("`y` contains negative label {negative}"),
        ));
    }
    Ok(RawSplit {
        sample_shape,
        values,
        labels,
    })
}
