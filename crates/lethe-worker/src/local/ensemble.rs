//! `ensemble`: M subset models, trained many at once, resumable per group.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use lethe_ml::ensemble::{
    read_manifest, run_ensemble, subset_size, EnsembleEvent, EnsembleResults, EnsembleSpec,
};
use lethe_ml::model::ModelSpec;

use super::options::{DataArgs, RecipeArgs};
use super::progress;
use super::unlearn::ForgetArgs;

#[derive(Args, Debug)]
pub(crate) struct EnsembleArgs {
    #[command(flatten)]
    data: DataArgs,
    /// mlp, mlp:W1,W2,…, cnn, resnet9 or resnet18
    #[arg(long, default_value = "mlp:128")]
    model: String,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Number of subset models.
    #[arg(long, default_value_t = 128)]
    members: usize,
    /// Fraction of the training split each member trains on.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Members trained together in one batched network and written to one file
    /// (default: 8 on CPU, where groups run one per core; 64 on CUDA).
    #[arg(long)]
    group_size: Option<usize>,
    /// Base seed; member i's seed is derived from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training examples no member trains on, comma-separated: oracles for an unlearning
    /// audit are an ensemble with --alpha 1 and the forget set excluded.
    #[arg(long, conflicts_with = "exclude_file")]
    exclude: Option<String>,
    /// A file of training examples to exclude (commas or whitespace; `#` comments).
    #[arg(long)]
    exclude_file: Option<PathBuf>,
    /// Also store the members' weights (the originals of an unlearning audit need them).
    #[arg(long)]
    keep_weights: bool,
    /// Output directory (resumable: finished groups are skipped).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(args: EnsembleArgs) -> anyhow::Result<()> {
    let device = args.data.device()?;
    let spec = EnsembleSpec {
        model: args.model.parse::<ModelSpec>()?,
        recipe: args.recipe.recipe()?,
        members: args.members,
        alpha: args.alpha,
        base_seed: args.seed,
        group_size: args
            .group_size
            .unwrap_or(if device.is_cuda() { 64 } else { 8 }),
        exclude: ForgetArgs {
            forget: args.exclude.clone(),
            forget_file: args.exclude_file.clone(),
        }
        .indices()?
        .unwrap_or_default(),
        keep_weights: args.keep_weights,
    };
    let data = args.data.load()?;
    spec.validate(data.num_train)?;
    let subset = subset_size(data.num_train - spec.exclude.len() as i64, spec.alpha);
    let steps_per_member = spec.recipe.epochs * subset.div_ceil(spec.recipe.batch_size.min(subset));
    let bar = progress::bar((spec.members * steps_per_member) as u64, "member-steps");
    bar.set_message(format!(
        "{} × {} on {}",
        spec.members, spec.model, data.spec
    ));
    let started = Instant::now();
    let (mut trained, mut skipped, mut examples) = (0usize, 0usize, 0u64);
    run_ensemble(&spec, &data, &args.out, device, &mut |event| match event {
        EnsembleEvent::GroupSkipped { members } => {
            skipped += members.len();
            bar.inc((members.len() * steps_per_member) as u64);
        }
        EnsembleEvent::Step { members, .. } => bar.inc(members.len() as u64),
        EnsembleEvent::GroupFinished {
            members,
            examples: group_examples,
            ..
        } => {
            trained += members.len();
            examples += group_examples;
        }
        EnsembleEvent::GroupStarted { .. } => {}
    })
    .with_context(|| format!("train ensemble into {}", args.out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let results = EnsembleResults::load(&args.out)?;
    let accuracy = results.val_accuracy();
    let mean = accuracy.iter().sum::<f64>() / accuracy.len() as f64;
    let (min, max) = accuracy
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), value| {
            (lo.min(*value), hi.max(*value))
        });
    let manifest = read_manifest(&args.out)?;
    println!(
        "ensemble of {} × {} on {} (alpha {}, {} examples each, group size {}, {:?})",
        spec.members, spec.model, data.spec, spec.alpha, subset, spec.group_size, device
    );
    println!("  trained {trained} members, skipped {skipped} already finished");
    if trained > 0 {
        println!(
            "  {seconds:.1} s, {:.0} examples/s",
            examples as f64 / seconds
        );
    }
    println!("  val accuracy mean {mean:.4} (min {min:.4}, max {max:.4})");
    println!(
        "  results: {} (fingerprint {})",
        args.out.display(),
        &manifest.fingerprint[..12]
    );
    Ok(())
}
