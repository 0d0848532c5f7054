//! `unlearn`: one deletion request on one checkpoint, written as the next model version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use lethe_ml::checkpoint::{self, CheckpointInfo};
use lethe_ml::data::Dataset;
use lethe_ml::ensemble::{read_manifest, EnsembleResults};
use lethe_ml::model::ModelSpec;
use lethe_ml::recipe::Recipe;
use lethe_ml::unlearn::finetune::MatchingConfig;
use lethe_ml::unlearn::lineage::{unlearn_version, Lineage};
use lethe_ml::unlearn::targets::{AttributionIndex, Denoise};
use lethe_ml::unlearn::{
    parse_indices, request_confidence, DmmSettings, ForgetSet, Method, MethodConfig, Resources,
};
use tch::{Kind, Tensor};

use super::options::{checkpoint_fits, DataArgs};

/// The forget set, as a list or a file.
#[derive(Args, Debug, Clone)]
pub(crate) struct ForgetArgs {
    /// Training indices to forget, comma-separated (e.g. 17,2041,9000).
    #[arg(long, conflicts_with = "forget_file")]
    pub(crate) forget: Option<String>,
    /// A file of training indices, separated by commas or whitespace; `#` starts a comment.
    #[arg(long)]
    pub(crate) forget_file: Option<PathBuf>,
}

impl ForgetArgs {
    /// The indices given, or `None` when neither flag is.
    pub(crate) fn indices(&self) -> anyhow::Result<Option<Vec<i64>>> {
        match (&self.forget, &self.forget_file) {
            (Some(list), _) => Ok(Some(parse_indices(list)?)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read forget set {}", path.display()))?;
                Ok(Some(parse_indices(&text).with_context(|| {
                    format!("forget set {}", path.display())
                })?))
            }
            (None, None) => Ok(None),
        }
    }
}

/// The method and its overrides.
#[derive(Args, Debug, Clone)]
pub(crate) struct MethodArgs {
    /// dmm, om, retrain, ga, gd, scrub or do-nothing.
    #[arg(long, default_value = "dmm")]
    pub(crate) method: String,
    /// Attribution index (DMM), from `lethe index build`.
    #[arg(long)]
    pub(crate) index: Option<PathBuf>,
    /// Oracle ensemble (OM): an ensemble trained with `--exclude` set to the forget set; the
    /// mean of its members' logits is the target.
    #[arg(long)]
    pub(crate) target_oracles: Option<PathBuf>,
    /// Learning rate (DMM, OM, GA, GD, SCRUB).
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Epochs (DMM, OM, GA, GD, SCRUB).
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Batch size (DMM, OM, GA, GD).
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Times the forget set appears in the matching set (DMM, OM).
    #[arg(long)]
    pub(crate) forget_repeats: Option<usize>,
    /// Retained points per forget point in the matching set (DMM, OM).
    #[arg(long)]
    pub(crate) retain_per_forget: Option<usize>,
    /// Weight of a forget point's error relative to a retained point's (DMM, OM).
    #[arg(long)]
    pub(crate) forget_weight: Option<f64>,
    /// Ridge penalty of the closed-form refit of the final layer, or `none` (DMM, OM).
    #[arg(long)]
    pub(crate) head_penalty: Option<String>,
    /// Learning-rate factor per epoch (DMM, OM).
    #[arg(long)]
    pub(crate) lr_decay: Option<f64>,
    /// Shrinkage of predicted shifts outside the forget set: none, hard:Z or soft:Z (DMM).
    #[arg(long)]
    pub(crate) denoise: Option<String>,
    /// m in ŷ = f_θ0 − m·Σβ (DMM).
    #[arg(long)]
    pub(crate) multiplier: Option<f64>,
    /// Seed of the request (retained-point sample, shuffles, a retrain's initialisation).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

fn parse_denoise(text: &str) -> anyhow::Result<Denoise> {
    let threshold = |value: &str| {
        value
            .parse::<f64>()
            .with_context(|| format!("`{value}` in `--denoise {text}` is not a number"))
    };
    Ok(match text.split_once(':') {
        None if text == "none" => Denoise::None,
        Some(("hard", z)) => Denoise::Hard { z: threshold(z)? },
        Some(("soft", z)) => Denoise::Soft { z: threshold(z)? },
        _ => bail!("unknown denoising `{text}`: expected none, hard:Z or soft:Z"),
    })
}

impl MethodArgs {
    pub(crate) fn method(&self) -> anyhow::Result<Method> {
        Ok(self.method.parse::<Method>()?)
    }

    /// The shipped defaults of the method with the overrides applied; an override the method
    /// does not use is an error rather than silently ignored.
    /// `model` and `recipe` are those of the checkpoint being unlearned: the defaults depend on
    /// the architecture, and a retrain uses the recipe. DMM's defaults also depend on the
    /// index (`DmmSettings::shipped`, as in the service).
    pub(crate) fn config(
        &self,
        model: &ModelSpec,
        recipe: Option<&Recipe>,
        index: Option<&AttributionIndex>,
    ) -> anyhow::Result<MethodConfig> {
        let method = self.method()?;
        let fallback = Recipe::fmnist_mlp();
        let mut config = MethodConfig::defaults(method, model, recipe.unwrap_or(&fallback));
        if let (MethodConfig::Dmm { .. }, Some(index)) = (&config, index) {
            let DmmSettings {
                matching,
                denoise,
                multiplier,
            } = DmmSettings::shipped(model, index);
            config = MethodConfig::Dmm {
                matching,
                denoise,
                multiplier,
            };
        }
        let matching_only = [
            ("--forget-repeats", self.forget_repeats.is_some()),
            ("--retain-per-forget", self.retain_per_forget.is_some()),
            ("--lr-decay", self.lr_decay.is_some()),
            ("--forget-weight", self.forget_weight.is_some()),
            ("--head-penalty", self.head_penalty.is_some()),
        ];
        let dmm_only = [
            ("--denoise", self.denoise.is_some()),
            ("--multiplier", self.multiplier.is_some()),
        ];
        let mut unused: Vec<&str> = Vec::new();
        let head_penalty = match self.head_penalty.as_deref() {
            None => None,
            Some("none") => Some(None),
            Some(text) => Some(Some(text.parse::<f64>().with_context(|| {
                format!("--head-penalty `{text}` is neither a number nor `none`")
            })?)),
        };
        let apply_matching = |matching: &mut MatchingConfig| {
            matching.lr = self.lr.unwrap_or(matching.lr);
            matching.epochs = self.epochs.unwrap_or(matching.epochs);
            matching.batch_size = self.batch_size.unwrap_or(matching.batch_size);
            matching.forget_repeats = self.forget_repeats.unwrap_or(matching.forget_repeats);
            matching.retain_per_forget =
                self.retain_per_forget.unwrap_or(matching.retain_per_forget);
            matching.lr_decay = self.lr_decay.unwrap_or(matching.lr_decay);
            matching.forget_weight = self.forget_weight.unwrap_or(matching.forget_weight);
            matching.head_penalty = head_penalty.unwrap_or(matching.head_penalty);
        };
        match &mut config {
            MethodConfig::Dmm {
                matching,
                denoise,
                multiplier,
            } => {
                apply_matching(matching);
                if let Some(text) = &self.denoise {
                    *denoise = parse_denoise(text)?;
                }
                *multiplier = self.multiplier.unwrap_or(*multiplier);
            }
            MethodConfig::Om { matching } => {
                apply_matching(matching);
                unused.extend(
                    dmm_only
                        .iter()
                        .filter(|(_, set)| *set)
                        .map(|(flag, _)| *flag),
                );
            }
            MethodConfig::Ga(gradient) | MethodConfig::Gd(gradient) => {
                gradient.lr = self.lr.unwrap_or(gradient.lr);
                gradient.epochs = self.epochs.unwrap_or(gradient.epochs);
                gradient.batch_size = self.batch_size.unwrap_or(gradient.batch_size);
            }
            MethodConfig::Scrub(scrub) => {
                scrub.lr = self.lr.unwrap_or(scrub.lr);
                scrub.epochs = self.epochs.unwrap_or(scrub.epochs);
                if self.batch_size.is_some() {
                    unused.push("--batch-size");
                }
            }
            MethodConfig::DoNothing | MethodConfig::Retrain { .. } => {
                for (flag, set) in [
                    ("--lr", self.lr.is_some()),
                    ("--epochs", self.epochs.is_some()),
                    ("--batch-size", self.batch_size.is_some()),
                ] {
                    if set {
                        unused.push(flag);
                    }
                }
            }
        }
        if !matches!(method, Method::Dmm | Method::Om) {
            unused.extend(
                matching_only
                    .iter()
                    .filter(|(_, set)| *set)
                    .map(|(flag, _)| *flag),
            );
        }
        if !matches!(method, Method::Dmm | Method::Om) {
            unused.extend(
                dmm_only
                    .iter()
                    .filter(|(_, set)| *set)
                    .map(|(flag, _)| *flag),
            );
        }
        if method == Method::Retrain && recipe.is_none() {
            bail!("a retrain needs the model's training recipe, and this checkpoint does not record one");
        }
        if !unused.is_empty() {
            bail!("{} do(es) not apply to method {method}", unused.join(", "));
        }
        Ok(config)
    }

    /// The attribution index for DMM, opened.
    pub(crate) fn open_index(&self, method: Method) -> anyhow::Result<Option<AttributionIndex>> {
        match (&self.index, method) {
            (Some(path), Method::Dmm) => {
                Ok(Some(AttributionIndex::open(path).with_context(|| {
                    format!("open index {}", path.display())
                })?))
            }
            (None, Method::Dmm) => bail!("DMM needs --index (build one with `lethe index build`)"),
            (Some(_), _) => bail!("--index applies to DMM only"),
            (None, _) => Ok(None),
        }
    }

    /// The mean oracle logits for OM, checked against the forget set.
    pub(crate) fn oracle_logits(
        &self,
        method: Method,
        forget: &ForgetSet,
    ) -> anyhow::Result<Option<Tensor>> {
        match (&self.target_oracles, method) {
            (Some(dir), Method::Om) => {
                check_oracles_forget(dir, forget)?;
                let oracles = EnsembleResults::load(dir)
                    .with_context(|| format!("load oracles {}", dir.display()))?;
                Ok(Some(oracles.logits.to_kind(Kind::Float).mean_dim(
                    [0].as_slice(),
                    false,
                    Kind::Float,
                )))
            }
            (None, Method::Om) => {
                bail!("OM needs --oracles: an ensemble retrained without the forget set")
            }
            (Some(_), _) => bail!("--oracles applies to OM only"),
            (None, _) => Ok(None),
        }
    }
}

/// Oracles must have been retrained without exactly this forget set.
pub(crate) fn check_oracles_forget(dir: &Path, forget: &ForgetSet) -> anyhow::Result<()> {
    let manifest = read_manifest(dir).with_context(|| format!("read oracles {}", dir.display()))?;
    let mut excluded = manifest.spec.exclude.clone();
    excluded.sort_unstable();
    excluded.dedup();
    if excluded != forget.indices() {
        bail!(
            "the oracles in {} were retrained without {} examples, not the {} of this forget set; train them with `lethe ensemble --alpha 1 --exclude-file FORGET`",
            dir.display(),
            excluded.len(),
            forget.len()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct UnlearnArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The deployed model version (a checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// The first version of this model's lineage (θ0), required when --model has already
    /// forgotten something: targets are always predicted from θ0.
    #[arg(long)]
    base: Option<PathBuf>,
    #[command(flatten)]
    forget: ForgetArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// Where to write the new version.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of the training set forgotten since the first version past which a full
    /// retrain and a fresh index are recommended (the linear predictions behind DMM hold for
    /// small removals).
    #[arg(long, default_value_t = 0.05)]
    retrain_threshold: f64,
    /// Retrain from scratch instead when DMM's confidence in its targets (0–1, printed with
    /// every DMM request) is below this (docs/unlearning.md).
    #[arg(long)]
    min_confidence: Option<f64>,
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// A model version may only be unlearned on the data it was trained on: β and the retained
/// sample are indexed by that dataset's examples.
fn check_fits(info: &CheckpointInfo, data: &Dataset, path: &Path) -> anyhow::Result<()> {
    if !checkpoint_fits(info, data, path)? {
        bail!(
            "checkpoint {} was trained on other data than {} (content hashes differ)",
            path.display(),
            data.spec
        );
    }
    Ok(())
}

pub(crate) fn run(args: UnlearnArgs) -> anyhow::Result<()> {
    if let Some(minimum) = args.min_confidence {
        if !(minimum > 0.0 && minimum <= 1.0) {
            bail!("--min-confidence {minimum} must lie in (0, 1]");
        }
    }
    let device = args.data.device()?;
    let data = args.data.load()?;
    let (mut current, info) = checkpoint::load(&args.model, device)
        .with_context(|| format!("load checkpoint {}", args.model.display()))?;
    check_fits(&info, &data, &args.model)?;
    let Some(indices) = args.forget.indices()? else {
        bail!("give the examples to forget with --forget or --forget-file");
    };
    let request = ForgetSet::new(indices, data.num_train)?;
    let mut method = args.method.method()?;
    let index = args.method.open_index(method)?;
    let mut config = args
        .method
        .config(&info.model, info.recipe.as_ref(), index.as_ref())?;
    let lineage = match &info.lineage {
        Some(lineage) => lineage.clone(),
        None => Lineage::start(sha256_of(&args.model)?),
    };
    let (mut base, base_path) = match (&args.base, lineage.version) {
        (_, 0) => (current.try_clone()?, args.model.clone()),
        (Some(path), _) => {
            let found = sha256_of(path)?;
            if found != lineage.base_sha256 {
                bail!(
                    "--base {} is not the first version of this lineage (SHA-256 {found}, expected {})",
                    path.display(),
                    lineage.base_sha256
                );
            }
            let (base, base_info) = checkpoint::load(path, device)
                .with_context(|| format!("load base checkpoint {}", path.display()))?;
            check_fits(&base_info, &data, path)?;
            (base, path.clone())
        }
        (None, version) => bail!(
            "{} is version {version} of its lineage: pass the first version with --base (SHA-256 {})",
            args.model.display(),
            lineage.base_sha256
        ),
    };
    let forgotten = lineage.accumulate(&request, data.num_train)?;
    let oracle_logits = args.method.oracle_logits(method, &forgotten)?;
    let resources = Resources {
        index: index.as_ref(),
        oracle_logits: oracle_logits.as_ref(),
        ..Resources::new(&data)
    };
    // Only a minimum needs the confidence before the fine-tune; otherwise DMM reports it.
    let confidence_beforehand = match args.min_confidence {
        Some(_) => request_confidence(&config, &forgotten, &resources)?,
        None => None,
    };
    if let Some(minimum) = args.min_confidence {
        let Some(trusted) = &confidence_beforehand else {
            bail!(
                "--min-confidence needs DMM with an index that has a noise model (subsample or regression); {} has no confidence figure",
                if method == Method::Dmm { "this index" } else { "this method" }
            );
        };
        if trusted.confidence < minimum {
            let Some(recipe) = info.recipe.as_ref() else {
                bail!(
                    "confidence {:.3} is below --min-confidence {minimum}, and a retrain needs the model's training recipe, which this checkpoint does not record",
                    trusted.confidence
                );
            };
            println!(
                "confidence {:.3} is below --min-confidence {minimum}: retraining from scratch without the {} forgotten examples instead of DMM",
                trusted.confidence,
                forgotten.len()
            );
            method = Method::Retrain;
            config = MethodConfig::defaults(Method::Retrain, &info.model, recipe);
        }
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "{method} on {} for {} examples ({} forgotten in all)",
        args.model.display(),
        request.len(),
        forgotten.len()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let (next, summary) = unlearn_version(
        &mut current,
        &mut base,
        &lineage,
        &request,
        &config,
        &resources,
        args.method.seed,
    )?;
    spinner.finish_and_clear();
    let new_info = CheckpointInfo {
        seed: current.member_seeds[0],
        lineage: Some(next.clone()),
        ..info
    };
    checkpoint::save_member(&current, 0, &new_info, &args.out)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!(
        "{method}: version {} of {} → {} ({} forgotten, {:.1}% of the training set)",
        next.version,
        base_path.display(),
        args.out.display(),
        next.forgotten.len(),
        100.0 * next.forgotten_fraction(data.num_train)
    );
    println!(
        "  {} example passes in {:.2} s{}",
        summary.examples,
        summary.seconds,
        summary
            .final_loss
            .map(|loss| format!(", final loss {loss:.4}"))
            .unwrap_or_default()
    );
    if let Some(trusted) = summary
        .confidence
        .as_ref()
        .or(confidence_beforehand.as_ref())
    {
        println!(
            "  confidence {:.3} (reach P95 {:.2} over {} moved targets)",
            trusted.confidence, trusted.reach_p95, trusted.moved_targets
        );
    }
    if next.forgotten_fraction(data.num_train) > args.retrain_threshold {
        println!(
            "  note: more than {:.1}% of the training set is forgotten: retrain on what remains and build a fresh index",
            100.0 * args.retrain_threshold
        );
    }
    Ok(())
}
