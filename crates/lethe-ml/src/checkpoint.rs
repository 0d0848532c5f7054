//! Checkpoints: one model's parameters and buffers as a safetensors file under PyTorch's
//! `state_dict` names, loadable with `safetensors.torch.load_file` + `load_state_dict`. The
//! file's metadata records what is needed to rebuild the model (key `lethe`, JSON).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{MlError, Result};
use crate::model::{Model, ModelSpec};
use crate::recipe::Recipe;
use crate::tensorio;
use crate::unlearn::lineage::Lineage;

pub const CHECKPOINT_FORMAT: &str = "lethe-checkpoint/1";

/// What a checkpoint says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub model: ModelSpec,
    pub sample_shape: Vec<i64>,
    pub num_classes: i64,
    pub seed: u64,
    #[serde(default)]
    pub dataset_hash: Option<String>,
    #[serde(default)]
    pub recipe: Option<Recipe>,
    /// Requests applied since the first version; absent on a model that forgot nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// Saves member `member` of `model`.
pub fn save_member(model: &Model, member: i64, info: &CheckpointInfo, path: &Path) -> Result<()> {
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_owned(), CHECKPOINT_FORMAT.to_owned());
    metadata.insert(
        "lethe".to_owned(),
        serde_json::to_string(info).expect("checkpoint info serialises"),
    );
    tensorio::write_safetensors(path, &model.member_state(member), &metadata)
}

/// Loads a checkpoint into a one-member model on `device`.
pub fn load(path: &Path, device: Device) -> Result<(Model, CheckpointInfo)> {
    let file = tensorio::read_safetensors(path)?;
    let info = read_info(path, &file.metadata)?;
    let mut model = Model::new(
        &info.model,
        &[info.seed],
        &info.sample_shape,
        info.num_classes,
        device,
    )?;
    model.load_member_state(0, &file.tensors, path)?;
    Ok((model, info))
}

fn read_info(path: &Path, metadata: &BTreeMap<String, String>) -> Result<CheckpointInfo> {
    match metadata.get("format") {
        Some(format) if format == CHECKPOINT_FORMAT => {}
        Some(format) => {
            return Err(MlError::malformed(
                path,
                format!("checkpoint format `{format}` is not {CHECKPOINT_FORMAT}"),
            ))
        }
        None => {
            return Err(MlError::malformed(
                path,
                "not a Lethe checkpoint: metadata has no `format`",
            ))
        }
    }
    let json = metadata
        .get("lethe")
        .ok_or_else(|| MlError::malformed(path, "checkpoint metadata has no `lethe` entry"))?;
    serde_json::from_str(json)
        .map_err(|err| MlError::malformed(path, format!("checkpoint metadata: {err}")))
}
