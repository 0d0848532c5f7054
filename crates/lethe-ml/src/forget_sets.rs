//! Forget sets by family, the way deletion requests come: one user's data, one source, a
//! near-duplicate cluster, a slice of a class. Each set is a function of its [`ForgetSetSpec`]
//! (family, seed, size and, for some families, an anchor or a class), the dataset and, for the
//! families defined by a model, the deployed model.
//!
//! [`SUITE`] fixes which instances defaults may be tuned on and which are only reported:
//! benchmarks choose settings on [`Split::Tuning`] instances and report the others.

use std::fmt;
use std::str::FromStr;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::data::Dataset;
use crate::error::{MlError, Result};
use crate::model::Model;
use crate::outputs::{margins, Outputs};

/// How a forget set is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Uniformly random training examples.
    Random,
    /// The training examples nearest an anchor example in input space (pixels), the anchor
    /// included: a near-duplicate cluster.
    InputNeighbours,
    /// The training examples nearest an anchor in the deployed model's feature space (the
    /// input of its final affine layer): examples the model treats alike.
    FeatureNeighbours,
    /// The members of one class with the lowest margins under the deployed model.
    ClassAtypical,
    /// Random members of one class.
    ClassRandom,
    /// A random share of the examples with the highest loss under the deployed model (drawn
    /// from the 2·size highest).
    HighLoss,
    /// The union of several small input-space clusters around random anchors.
    ClusterUnion,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::Random,
        Family::InputNeighbours,
        Family::FeatureNeighbours,
        Family::ClassAtypical,
        Family::ClassRandom,
        Family::HighLoss,
        Family::ClusterUnion,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Random => "random",
            Family::InputNeighbours => "input_neighbours",
            Family::FeatureNeighbours => "feature_neighbours",
            Family::ClassAtypical => "class_atypical",
            Family::ClassRandom => "class_random",
            Family::HighLoss => "high_loss",
            Family::ClusterUnion => "cluster_union",
        }
    }

    /// Whether drawing the set needs the deployed model.
    pub fn needs_model(self) -> bool {
        matches!(
            self,
            Family::FeatureNeighbours | Family::ClassAtypical | Family::HighLoss
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = MlError;

    fn from_str(text: &str) -> Result<Self> {
        let normalised = text.trim().to_ascii_lowercase().replace('-', "_");
        Family::ALL
            .into_iter()
            .find(|family| family.name() == normalised)
            .ok_or_else(|| {
                let names: Vec<&str> = Family::ALL.iter().map(|family| family.name()).collect();
                MlError::spec(
                    "forget-set family",
                    format!(
                        "unknown family `{text}`: expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Everything that determines a forget set, besides the data and the deployed model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetSetSpec {
    pub family: Family,
    pub seed: u64,
    pub size: usize,
    /// The anchor example of the neighbour families; drawn from the seed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<i64>,
    /// The class of the class families; drawn from the seed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<i64>,
}

impl ForgetSetSpec {
    pub fn new(family: Family, seed: u64, size: usize) -> Self {
        ForgetSetSpec {
            family,
            seed,
            size,
            anchor: None,
            class: None,
        }
    }
}

/// Whether defaults may be chosen on an instance, or it is only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Tuning,
    Reporting,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Tuning => "tuning",
            Split::Reporting => "reporting",
        }
    }
}

/// One instance of the suite: its family, its seed and its split. Anchors and classes are
/// drawn from the seed unless given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub family: Family,
    pub seed: u64,
    pub split: Split,
    pub anchor: Option<i64>,
}

impl Instance {
    pub fn spec(&self, size: usize) -> ForgetSetSpec {
        ForgetSetSpec {
            anchor: self.anchor,
            ..ForgetSetSpec::new(self.family, self.seed, size)
        }
    }

    /// `family/seed`, the instance's name in reports.
    pub fn name(&self) -> String {
        format!("{}/{}", self.family, self.seed)
    }
}

const fn instance(family: Family, seed: u64, split: Split) -> Instance {
    Instance {
        family,
        seed,
        split,
        anchor: None,
    }
}

/// The suite: three instances of every family, one to tune on and two only to report. The
/// random set of seed 7 and the cluster around example 1234 are the two forget sets the
/// defaults before the suite were tuned on, so they can only be tuning instances.
pub const SUITE: [Instance; 21] = [
    instance(Family::Random, 7, Split::Tuning),
    instance(Family::Random, 101, Split::Reporting),
    instance(Family::Random, 102, Split::Reporting),
    Instance {
        anchor: Some(1234),
        ..instance(Family::InputNeighbours, 0, Split::Tuning)
    },
    instance(Family::InputNeighbours, 101, Split::Reporting),
    instance(Family::InputNeighbours, 102, Split::Reporting),
    instance(Family::FeatureNeighbours, 1, Split::Tuning),
    instance(Family::FeatureNeighbours, 101, Split::Reporting),
    instance(Family::FeatureNeighbours, 102, Split::Reporting),
    instance(Family::ClassAtypical, 1, Split::Tuning),
    instance(Family::ClassAtypical, 101, Split::Reporting),
    instance(Family::ClassAtypical, 102, Split::Reporting),
    instance(Family::ClassRandom, 1, Split::Tuning),
    instance(Family::ClassRandom, 101, Split::Reporting),
    instance(Family::ClassRandom, 102, Split::Reporting),
    instance(Family::HighLoss, 1, Split::Tuning),
    instance(Family::HighLoss, 101, Split::Reporting),
    instance(Family::HighLoss, 102, Split::Reporting),
    instance(Family::ClusterUnion, 1, Split::Tuning),
    instance(Family::ClusterUnion, 101, Split::Reporting),
    instance(Family::ClusterUnion, 102, Split::Reporting),
];

/// Clusters in a [`Family::ClusterUnion`] set.
pub const UNION_CLUSTERS: usize = 5;

/// A drawn forget set: sorted training indices and how they were chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawnSet {
    pub spec: ForgetSetSpec,
    pub indices: Vec<i64>,
    /// The anchors and class the set was drawn around, resolved from the seed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchors: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<i64>,
    pub description: String,
}

impl DrawnSet {
    /// SHA-256 of the sorted indices as little-endian 64-bit integers, in hex.
    pub fn hash(&self) -> String {
        indices_hash(&self.indices)
    }
}

/// SHA-256 of `indices` (sorted first) as little-endian 64-bit integers, in hex.
pub fn indices_hash(indices: &[i64]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    for index in sorted {
        hasher.update(index.to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Draws the forget set of `spec` from `data`'s training split. The families that are defined
/// by a model ([`Family::needs_model`]) read member 0 of `model`; the feature-space family
/// needs a network whose logits are an affine map of features (every zoo network but
/// TorchScript modules) and is an error otherwise.
pub fn draw(spec: &ForgetSetSpec, data: &Dataset, model: Option<&mut Model>) -> Result<DrawnSet> {
    let num_train = data.num_train;
    if spec.size == 0 || spec.size as i64 >= num_train {
        return Err(MlError::spec(
            "forget set",
            format!(
                "size {} must lie in 1..{num_train} (the training split)",
                spec.size
            ),
        ));
    }
    if let Some(anchor) = spec.anchor {
        if !(0..num_train).contains(&anchor) {
            return Err(MlError::spec(
                "forget set",
                format!("anchor {anchor} is outside the training split 0..{num_train}"),
            ));
        }
    }
    if let Some(class) = spec.class {
        if !(0..data.num_classes).contains(&class) {
            return Err(MlError::spec(
                "forget set",
                format!("class {class} is not one of 0..{}", data.num_classes),
            ));
        }
    }
    let model = match (spec.family.needs_model(), model) {
        (true, None) => {
            return Err(MlError::spec(
                "forget set",
                format!(
                    "family {} is defined by the deployed model: pass one",
                    spec.family
                ),
            ))
        }
        (true, Some(model)) => Some(model),
        (false, _) => None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let size = spec.size;
    let train_labels = Vec::<i64>::try_from(data.y.narrow(0, 0, num_train).to_kind(Kind::Int64))?;
    let mut anchors = Vec::new();
    let mut class = None;
    let (indices, description) = match spec.family {
        Family::Random => (
            draw_random(&mut rng, num_train as usize, size),
            format!(
                "{size} uniformly random training examples (seed {})",
                spec.seed
            ),
        ),
        Family::InputNeighbours => {
            let anchor = spec
                .anchor
                .unwrap_or_else(|| rng.random_range(0..num_train));
            anchors.push(anchor);
            let points = pixels(data);
            (
                nearest(&points, anchor, size, &[]),
                format!("the {size} training examples nearest example {anchor} in input space"),
            )
        }
        Family::FeatureNeighbours => {
            let anchor = spec
                .anchor
                .unwrap_or_else(|| rng.random_range(0..num_train));
            anchors.push(anchor);
            let points = features(model.expect("checked above"), data)?;
            (
                nearest(&points, anchor, size, &[]),
                format!(
                    "the {size} training examples nearest example {anchor} in the model's feature space"
                ),
            )
        }
        Family::ClassAtypical | Family::ClassRandom => {
            let chosen = match spec.class {
                Some(chosen) => chosen,
                None => pick_class(&mut rng, &train_labels, data.num_classes, size)?,
            };
            class = Some(chosen);
            let members: Vec<i64> = (0..num_train)
                .filter(|index| train_labels[*index as usize] == chosen)
                .collect();
            if members.len() < size {
                return Err(MlError::spec(
                    "forget set",
                    format!(
                        "class {chosen} has {} training examples, fewer than {size}",
                        members.len()
                    ),
                ));
            }
            if spec.family == Family::ClassRandom {
                let picked = sample(&mut rng, members.len(), size)
                    .into_iter()
                    .map(|position| members[position])
                    .collect();
                (
                    picked,
                    format!("{size} random training examples of class {chosen}"),
                )
            } else {
                let margin = training_margins(model.expect("checked above"), data)?;
                let mut ranked = members;
                ranked.sort_by(|a, b| margin[*a as usize].total_cmp(&margin[*b as usize]));
                ranked.truncate(size);
                (
                    ranked,
                    format!(
                        "the {size} training examples of class {chosen} with the lowest margins under the model"
                    ),
                )
            }
        }
        Family::HighLoss => {
            let margin = training_margins(model.expect("checked above"), data)?;
            let mut ranked: Vec<i64> = (0..num_train).collect();
            ranked.sort_by(|a, b| margin[*a as usize].total_cmp(&margin[*b as usize]));
            let pool = (2 * size).min(ranked.len());
            let picked = sample(&mut rng, pool, size)
                .into_iter()
                .map(|position| ranked[position])
                .collect();
            (
                picked,
                format!(
                    "{size} random examples of the {pool} training examples with the highest loss under the model (seed {})",
                    spec.seed
                ),
            )
        }
        Family::ClusterUnion => {
            let points = pixels(data);
            let mut taken: Vec<i64> = Vec::with_capacity(size);
            for cluster in 0..UNION_CLUSTERS.min(size) {
                let wanted = size / UNION_CLUSTERS.min(size)
                    + usize::from(cluster < size % UNION_CLUSTERS.min(size));
                let anchor = loop {
                    let candidate = rng.random_range(0..num_train);
                    if !taken.contains(&candidate) {
                        break candidate;
                    }
                };
                anchors.push(anchor);
                taken.extend(nearest(&points, anchor, wanted, &taken));
            }
            (
                taken,
                format!(
                    "the union of {} input-space clusters of about {} examples around random anchors",
                    UNION_CLUSTERS.min(size),
                    size / UNION_CLUSTERS.min(size)
                ),
            )
        }
    };
    let mut indices = indices;
    indices.sort_unstable();
    debug_assert_eq!(indices.len(), size);
    Ok(DrawnSet {
        spec: *spec,
        indices,
        anchors,
        class,
        description,
    })
}

fn draw_random(rng: &mut ChaCha8Rng, num_train: usize, size: usize) -> Vec<i64> {
    sample(rng, num_train, size)
        .into_iter()
        .map(|index| index as i64)
        .collect()
}

/// A class with at least `size` training examples, drawn uniformly.
fn pick_class(rng: &mut ChaCha8Rng, labels: &[i64], classes: i64, size: usize) -> Result<i64> {
    let eligible: Vec<i64> = (0..classes)
        .filter(|class| labels.iter().filter(|label| *label == class).count() >= size)
        .collect();
    if eligible.is_empty() {
        return Err(MlError::spec(
            "forget set",
            format!("no class has {size} training examples"),
        ));
    }
    Ok(eligible[rng.random_range(0..eligible.len())])
}

/// Training inputs flattened, `n × d`.
fn pixels(data: &Dataset) -> Tensor {
    data.x
        .narrow(0, 0, data.num_train)
        .to_kind(Kind::Float)
        .view([data.num_train, -1])
        .to_device(tch::Device::Cpu)
}

/// The `count` points of `points` (`n × d`) nearest `anchor` by Euclidean distance, the
/// anchor first, leaving out `taken`; ties go to the lower index.
fn nearest(points: &Tensor, anchor: i64, count: usize, taken: &[i64]) -> Vec<i64> {
    let distance = (points - points.get(anchor).unsqueeze(0))
        .square()
        .sum_dim_intlist([1].as_slice(), false, Kind::Double);
    let distance = Vec::<f64>::try_from(distance).expect("a 1-d double tensor");
    let mut order: Vec<i64> = (0..distance.len() as i64)
        .filter(|index| !taken.contains(index))
        .collect();
    order.sort_by(|a, b| {
        distance[*a as usize]
            .total_cmp(&distance[*b as usize])
            .then(a.cmp(b))
    });
    order.truncate(count);
    order
}

/// Training examples evaluated at once by the model.
const CHUNK: usize = 1024;

/// Member 0's features (the input of its final affine layer) on the training split, `n × d`.
fn features(model: &mut Model, data: &Dataset) -> Result<Tensor> {
    let device = model.device();
    let mut chunks = Vec::new();
    let train: Vec<i64> = (0..data.num_train).collect();
    for chunk in train.chunks(CHUNK) {
        let index = Tensor::from_slice(chunk).to_device(data.device());
        let x = data.x.index_select(0, &index).to_device(device);
        let mut shape = vec![model.members()];
        shape.extend_from_slice(&x.size());
        let x = x.unsqueeze(0).expand(shape.as_slice(), false).contiguous();
        let head = tch::no_grad(|| model.linear_head(&x)).ok_or_else(|| {
            MlError::spec(
                "forget set",
                "feature-space neighbours need a network whose logits are an affine map of features; this one (a TorchScript module) has none: use input_neighbours",
            )
        })??;
        chunks.push(head.features.get(0).to_device(tch::Device::Cpu));
    }
    Ok(Tensor::cat(&chunks, 0).to_kind(Kind::Float))
}

/// Member 0's margin on every training example.
fn training_margins(model: &mut Model, data: &Dataset) -> Result<Vec<f64>> {
    let train: Vec<i64> = (0..data.num_train).collect();
    let outputs = Outputs::compute(model, data, &train)?;
    let margin = margins(&outputs.logits.get(0), &outputs.labels);
    Ok(Vec::<f64>::try_from(margin.to_kind(Kind::Double))?)
}
