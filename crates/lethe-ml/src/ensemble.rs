//! Ensembles of subset models: M members, each trained on its own random α-subset of the
//! training split, in groups of members that train together in one batched network.
//!
//! Each group's results go to their own file (`members-SSSSSS-EEEEEE.safetensors`, written
//! atomically), so a crash loses at most the group in flight, a rerun skips finished groups,
//! and two processes working on different member ranges never touch the same file. The file
//! holds, for members `S..E`:
//! - `masks`: uint8 `G × n`, 1 where the training example is in the member's subset;
//! - `seeds`: int64 `G`, each member's seed (as the bits of a u64);
//! - `logits` (float16 `G × T × C`), `margins` (float16 `G × T`), `targets`, `labels`: the
//!   members' outputs on every target, as in [`crate::outputs`].

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::error::{MlError, Result};
use crate::model::{Model, ModelSpec};
use crate::outputs::Outputs;
use crate::recipe::Recipe;
use crate::seed::{self, Stream};
use crate::tensorio;
use crate::train::{train, TrainProgress};

const MANIFEST: &str = "ensemble.json";
/// Group-file prefix of the member-batched variables of ensembles that keep their weights.
const WEIGHTS_PREFIX: &str = "weights.";

/// An ensemble of subset models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleSpec {
    pub model: ModelSpec,
    pub recipe: Recipe,
    pub members: usize,
    /// Fraction of the training split each member trains on.
    pub alpha: f64,
    pub base_seed: u64,
    /// Members trained together in one batched network and written to one file.
    pub group_size: usize,
    /// Training examples no member trains on: oracles are ensembles retrained without a
    /// forget set. Subsets are α-fractions of what remains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<i64>,
    /// Also store the members' weights, so that they can be loaded as models later
    /// ([`load_members`]); the originals of an unlearning audit need them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_weights: bool,
}

impl EnsembleSpec {
    pub fn validate(&self, num_train: i64) -> Result<()> {
        self.recipe.validate()?;
        if self.members == 0 {
            return Err(MlError::spec("ensemble", "members must be at least 1"));
        }
        if self.group_size == 0 {
            return Err(MlError::spec("ensemble", "group size must be at least 1"));
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(MlError::spec(
                "ensemble",
                format!("alpha {} must lie in (0, 1]", self.alpha),
            ));
        }
        if let Some(bad) = self
            .exclude
            .iter()
            .find(|index| !(0..num_train).contains(*index))
        {
            return Err(MlError::spec(
                "ensemble",
                format!("excluded example {bad} is outside the training split 0..{num_train}"),
            ));
        }
        let remaining = num_train - distinct(&self.exclude).len() as i64;
        if subset_size(remaining, self.alpha) == 0 {
            return Err(MlError::spec(
                "ensemble",
                format!(
                    "alpha {} of {num_train} examples is an empty subset",
                    self.alpha
                ),
            ));
        }
        if matches!(self.model, ModelSpec::Torchscript { .. }) {
            return Err(MlError::spec(
                "ensemble",
                "TorchScript models cannot be trained as a batched ensemble",
            ));
        }
        Ok(())
    }

    /// Seed of member `index`.
    pub fn member_seed(&self, index: usize) -> u64 {
        seed::member_seed(self.base_seed, index as u64)
    }

    /// The member ranges of the groups, in order.
    pub fn groups(&self) -> Vec<Range<usize>> {
        (0..self.members)
            .step_by(self.group_size)
            .map(|start| start..(start + self.group_size).min(self.members))
            .collect()
    }

    /// A fingerprint of everything that determines the results, with the dataset's hash.
    pub fn fingerprint(&self, dataset_hash: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(self).expect("ensemble spec serialises"));
        hasher.update(dataset_hash.as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Number of examples in an α-subset of `num_train`.
pub fn subset_size(num_train: i64, alpha: f64) -> usize {
    (alpha * num_train as f64).round() as usize
}

/// Sorted, without repeats.
fn distinct(indices: &[i64]) -> Vec<i64> {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// The sorted α-subset of `0..num_train` minus `exclude` of the member with seed
/// `member_seed`.
pub fn member_subset(member_seed: u64, num_train: i64, alpha: f64, exclude: &[i64]) -> Vec<i64> {
    let excluded = distinct(exclude);
    let mut all: Vec<i64> = (0..num_train)
        .filter(|index| excluded.binary_search(index).is_err())
        .collect();
    all.shuffle(&mut seed::rng(member_seed, Stream::Subset));
    let mut subset = all[..subset_size(all.len() as i64, alpha)].to_vec();
    subset.sort_unstable();
    subset
}

/// What an ensemble run reports as it goes.
#[derive(Debug, Clone)]
pub enum EnsembleEvent {
    GroupSkipped {
        members: Range<usize>,
    },
    GroupStarted {
        members: Range<usize>,
    },
    Step {
        members: Range<usize>,
        progress: TrainProgress,
    },
    GroupFinished {
        members: Range<usize>,
        seconds: f64,
        examples: u64,
        val_accuracy: Vec<f64>,
    },
}

/// Trains the members in `members` (one group) and writes their file in `out_dir`; a group whose
/// file already exists is skipped. Returns whether it trained.
pub fn run_member_range(
    spec: &EnsembleSpec,
    data: &Dataset,
    out_dir: &Path,
    members: Range<usize>,
    device: Device,
    events: &mut dyn FnMut(EnsembleEvent),
) -> Result<bool> {
    spec.validate(data.num_train)?;
    if members.is_empty() || members.end > spec.members {
        return Err(MlError::spec(
            "ensemble",
            format!("member range {members:?} is not inside 0..{}", spec.members),
        ));
    }
    let fingerprint = claim_directory(spec, data, out_dir)?;
    train_group(spec, data, out_dir, members, device, &fingerprint, events)
}

/// Trains one group into a directory already claimed for `spec` (see [`claim_directory`]).
fn train_group(
    spec: &EnsembleSpec,
    data: &Dataset,
    out_dir: &Path,
    members: Range<usize>,
    device: Device,
    fingerprint: &str,
    events: &mut dyn FnMut(EnsembleEvent),
) -> Result<bool> {
    let path = group_path(out_dir, &members);
    if path.is_file() {
        check_fingerprint(&path, &tensorio::read_safetensors(&path)?, fingerprint)?;
        events(EnsembleEvent::GroupSkipped { members });
        return Ok(false);
    }
    events(EnsembleEvent::GroupStarted {
        members: members.clone(),
    });
    let started = Instant::now();
    let seeds: Vec<u64> = members
        .clone()
        .map(|index| spec.member_seed(index))
        .collect();
    let subsets: Vec<Vec<i64>> = seeds
        .iter()
        .map(|member_seed| member_subset(*member_seed, data.num_train, spec.alpha, &spec.exclude))
        .collect();
    let mut model = Model::new(
        &spec.model,
        &seeds,
        &data.sample_shape,
        data.num_classes,
        device,
    )?;
    let summary = train(&mut model, data, &subsets, &spec.recipe, &mut |progress| {
        events(EnsembleEvent::Step {
            members: members.clone(),
            progress: *progress,
        })
    })?;
    let targets: Vec<i64> = (0..data.num_targets()).collect();
    let outputs = Outputs::compute(&mut model, data, &targets)?;
    let val_accuracy = outputs.narrow(data.num_train, data.num_val).accuracy();
    let masks = Tensor::zeros(
        [seeds.len() as i64, data.num_train],
        (Kind::Uint8, Device::Cpu),
    );
    for (row, subset) in subsets.iter().enumerate() {
        let _ = masks
            .get(row as i64)
            .index_fill_(0, &Tensor::from_slice(subset), 1);
    }
    let seed_bits: Vec<i64> = seeds.iter().map(|seed| *seed as i64).collect();
    let mut tensors = vec![
        ("masks".to_owned(), masks),
        ("seeds".to_owned(), Tensor::from_slice(&seed_bits)),
        ("logits".to_owned(), outputs.logits.to_kind(Kind::Half)),
        ("margins".to_owned(), outputs.margins().to_kind(Kind::Half)),
        ("targets".to_owned(), Tensor::from_slice(&targets)),
        ("labels".to_owned(), outputs.labels.shallow_clone()),
    ];
    if spec.keep_weights {
        for (name, value) in model.vars.variables() {
            tensors.push((
                format!("{WEIGHTS_PREFIX}{name}"),
                value.detach().to_device(Device::Cpu),
            ));
        }
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("fingerprint".to_owned(), fingerprint.to_owned());
    metadata.insert(
        "members".to_owned(),
        format!("{}..{}", members.start, members.end),
    );
    tensorio::write_safetensors(&path, &tensors, &metadata)?;
    events(EnsembleEvent::GroupFinished {
        members,
        seconds: started.elapsed().as_secs_f64(),
        examples: summary.examples,
        val_accuracy,
    });
    Ok(true)
}

/// Runs every group of the ensemble, skipping those already done (see [`run_groups`]).
pub fn run_ensemble(
    spec: &EnsembleSpec,
    data: &Dataset,
    out_dir: &Path,
    device: Device,
    events: &mut dyn FnMut(EnsembleEvent),
) -> Result<()> {
    run_groups(spec, data, out_dir, &spec.groups(), device, events)
}

/// Runs the given groups of the ensemble (each one of [`EnsembleSpec::groups`]), skipping
/// those already done.
///
/// On a CPU, groups run side by side, one per core, each with single-threaded libtorch ops:
/// at subset-retrain sizes a group's work is many small operations, and one group per core
/// avoids both the fork/join cost of every op and the memory traffic of sharing one group's
/// parameters across cores. libtorch's thread count is restored afterwards. On CUDA, groups run
/// one after another.
pub fn run_groups(
    spec: &EnsembleSpec,
    data: &Dataset,
    out_dir: &Path,
    groups: &[Range<usize>],
    device: Device,
    events: &mut dyn FnMut(EnsembleEvent),
) -> Result<()> {
    spec.validate(data.num_train)?;
    let all = spec.groups();
    if let Some(stray) = groups.iter().find(|members| !all.contains(members)) {
        return Err(MlError::spec(
            "ensemble",
            format!(
                "members {stray:?} are not one group of {} in an ensemble of {}",
                spec.group_size, spec.members
            ),
        ));
    }
    let fingerprint = claim_directory(spec, data, out_dir)?;
    let fingerprint = fingerprint.as_str();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = if device == Device::Cpu {
        cores.min(groups.len())
    } else {
        1
    };
    if workers <= 1 {
        for members in groups.iter().cloned() {
            train_group(spec, data, out_dir, members, device, fingerprint, events)?;
        }
        return Ok(());
    }
    let previous_threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let queue = Mutex::new(groups.iter().cloned().collect::<VecDeque<_>>());
    let (sender, receiver) = mpsc::channel::<Result<EnsembleEvent>>();
    let outcome = std::thread::scope(|scope| {
        for _ in 0..workers {
            let (queue, sender, data) = (&queue, sender.clone(), data.shallow_clone());
            scope.spawn(move || loop {
                let next = queue
                    .lock()
                    .expect("no worker panics holding the queue")
                    .pop_front();
                let Some(members) = next else { break };
                let mut forward = |event| {
                    let _ = sender.send(Ok(event));
                };
                if let Err(error) = train_group(
                    spec,
                    &data,
                    out_dir,
                    members,
                    device,
                    fingerprint,
                    &mut forward,
                ) {
                    queue
                        .lock()
                        .expect("no worker panics holding the queue")
                        .clear();
                    let _ = sender.send(Err(error));
                    break;
                }
            });
        }
        drop(sender);
        let mut first_error = None;
        for message in receiver {
            match message {
                Ok(event) => events(event),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    });
    tch::set_num_threads(previous_threads);
    outcome
}

/// Writes the manifest on first use, or checks that the directory belongs to this ensemble.
fn claim_directory(spec: &EnsembleSpec, data: &Dataset, out_dir: &Path) -> Result<String> {
    let fingerprint = spec.fingerprint(&data.content_hash);
    let manifest_path = out_dir.join(MANIFEST);
    let manifest = Manifest {
        fingerprint: fingerprint.clone(),
        dataset_hash: data.content_hash.clone(),
        num_train: data.num_train,
        num_targets: data.num_targets(),
        spec: spec.clone(),
    };
    if manifest_path.is_file() {
        let existing = read_manifest(out_dir)?;
        if existing.fingerprint != fingerprint {
            return Err(MlError::Conflict {
                path: manifest_path,
                reason: "this directory holds an ensemble with a different spec or dataset".into(),
            });
        }
        return Ok(fingerprint);
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    tensorio::write_atomically(&manifest_path, &json)?;
    Ok(fingerprint)
}

/// Checks that a group file (read from `path`) belongs to the ensemble with `fingerprint`.
fn check_fingerprint(path: &Path, file: &tensorio::NamedTensors, fingerprint: &str) -> Result<()> {
    match file.metadata.get("fingerprint") {
        Some(found) if found == fingerprint => Ok(()),
        _ => Err(MlError::Conflict {
            path: path.to_owned(),
            reason: "group file belongs to a different ensemble".into(),
        }),
    }
}

fn group_path(out_dir: &Path, members: &Range<usize>) -> PathBuf {
    out_dir.join(format!(
        "members-{:06}-{:06}.safetensors",
        members.start, members.end
    ))
}

/// The manifest of an ensemble directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub fingerprint: String,
    pub dataset_hash: String,
    pub num_train: i64,
    pub num_targets: i64,
    pub spec: EnsembleSpec,
}

pub fn read_manifest(out_dir: &Path) -> Result<Manifest> {
    let path = out_dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|source| MlError::io(&path, source))?;
    serde_json::from_slice(&bytes)
        .map_err(|err| MlError::malformed(&path, format!("ensemble manifest: {err}")))
}

/// The finished results of an ensemble directory, members in order.
#[derive(Debug)]
pub struct EnsembleResults {
    pub manifest: Manifest,
    /// `M × n` uint8.
    pub masks: Tensor,
    pub seeds: Vec<u64>,
    /// `M × T × C` float16.
    pub logits: Tensor,
    pub labels: Tensor,
}

impl EnsembleResults {
    /// Loads every group; fails if a group is missing.
    pub fn load(out_dir: &Path) -> Result<Self> {
        let manifest = read_manifest(out_dir)?;
        let mut masks = Vec::new();
        let mut logits = Vec::new();
        let mut seeds = Vec::new();
        let mut labels = None;
        for members in manifest.spec.groups() {
            let path = group_path(out_dir, &members);
            if !path.is_file() {
                return Err(MlError::spec(
                    "ensemble results",
                    format!(
                        "members {members:?} are not finished ({} is missing)",
                        path.display()
                    ),
                ));
            }
            let file = tensorio::read_safetensors(&path)?;
            check_fingerprint(&path, &file, &manifest.fingerprint)?;
            let get = |name: &str| {
                file.get(name)
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| MlError::malformed(&path, format!("missing tensor `{name}`")))
            };
            masks.push(get("masks")?);
            logits.push(get("logits")?);
            seeds.extend(
                Vec::<i64>::try_from(get("seeds")?)?
                    .into_iter()
                    .map(|bits| bits as u64),
            );
            labels = Some(get("labels")?);
        }
        Ok(EnsembleResults {
            manifest,
            masks: Tensor::cat(&masks, 0),
            seeds,
            logits: Tensor::cat(&logits, 0),
            labels: labels.expect("an ensemble has at least one group"),
        })
    }

    /// Per-member accuracy on the validation targets.
    pub fn val_accuracy(&self) -> Vec<f64> {
        let num_train = self.manifest.num_train;
        let num_val = self.manifest.num_targets - num_train;
        Outputs {
            targets: (num_train..self.manifest.num_targets).collect(),
            labels: self.labels.narrow(0, num_train, num_val),
            logits: self
                .logits
                .narrow(1, num_train, num_val)
                .to_kind(Kind::Float),
        }
        .accuracy()
    }
}

/// The members of a finished ensemble that kept its weights, as one member-batched model.
pub fn load_members(out_dir: &Path, data: &Dataset, device: Device) -> Result<Model> {
    let manifest = read_manifest(out_dir)?;
    if !manifest.spec.keep_weights {
        return Err(MlError::spec(
            "ensemble members",
            format!(
                "{} was trained without keeping its weights",
                out_dir.display()
            ),
        ));
    }
    if manifest.dataset_hash != data.content_hash {
        return Err(MlError::Conflict {
            path: out_dir.join(MANIFEST),
            reason: "this ensemble was trained on a different dataset".into(),
        });
    }
    let seeds: Vec<u64> = (0..manifest.spec.members)
        .map(|index| manifest.spec.member_seed(index))
        .collect();
    let model = Model::new(
        &manifest.spec.model,
        &seeds,
        &data.sample_shape,
        data.num_classes,
        device,
    )?;
    let variables = model.vars.variables();
    let mut parts: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    for members in manifest.spec.groups() {
        let path = group_path(out_dir, &members);
        let file = tensorio::read_safetensors(&path)?;
        check_fingerprint(&path, &file, &manifest.fingerprint)?;
        for name in variables.keys() {
            let value = file
                .get(&format!("{WEIGHTS_PREFIX}{name}"))
                .ok_or_else(|| MlError::malformed(&path, format!("missing weights `{name}`")))?;
            parts
                .entry(name.clone())
                .or_default()
                .push(value.shallow_clone());
        }
    }
    for (name, variable) in &variables {
        let value = Tensor::cat(&parts[name], 0);
        if value.size() != variable.size() {
            return Err(MlError::malformed(
                out_dir.join(MANIFEST),
                format!(
                    "weights `{name}` have shape {:?}, the model needs {:?}",
                    value.size(),
                    variable.size()
                ),
            ));
        }
        tch::no_grad(|| variable.shallow_clone().copy_(&value.to_device(device)));
    }
    Ok(model)
}
