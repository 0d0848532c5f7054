//! `train`: one model, on the whole training split or a seeded α-subset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use lethe_ml::checkpoint::{self, CheckpointInfo};
use lethe_ml::ensemble::member_subset;
use lethe_ml::model::{Model, ModelSpec};
use lethe_ml::outputs::Outputs;
use lethe_ml::train::train;

use super::options::{DataArgs, RecipeArgs};
use super::progress;

#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// mlp, mlp:W1,W2,…, cnn, resnet9, resnet18 or torchscript:PATH
    #[arg(long, default_value = "mlp:128")]
    model: String,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Seeds the initialisation, the shuffles and the subset.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on a seeded α-subset of the training split instead of all of it.
    #[arg(long)]
    alpha: Option<f64>,
    /// Checkpoint to write (safetensors, PyTorch state_dict names).
    #[arg(long)]
    out: PathBuf,
    /// Also write logits and margins on every target (train then validation) here.
    #[arg(long)]
    outputs: Option<PathBuf>,
}

pub(crate) fn run(args: TrainArgs) -> anyhow::Result<()> {
    let spec: ModelSpec = args.model.parse()?;
    let recipe = args.recipe.recipe()?;
    let device = args.data.device()?;
    let data = args.data.load()?;
    let subset = match args.alpha {
        Some(alpha) if alpha > 0.0 && alpha <= 1.0 => {
            member_subset(args.seed, data.num_train, alpha, &[])
        }
        Some(alpha) => anyhow::bail!("--alpha {alpha} must lie in (0, 1]"),
        None => data.train_indices(),
    };
    let mut model = Model::new(
        &spec,
        &[args.seed],
        &data.sample_shape,
        data.num_classes,
        device,
    )?;
    let steps_per_epoch = subset.len().div_ceil(recipe.batch_size.min(subset.len()));
    let bar = progress::bar((recipe.epochs * steps_per_epoch) as u64, "steps");
    bar.set_message(format!("training {spec}"));
    let started = Instant::now();
    let summary = train(
        &mut model,
        &data,
        std::slice::from_ref(&subset),
        &recipe,
        &mut |progress| {
            bar.inc(1);
            if let Some(loss) = progress.last_epoch_loss {
                bar.set_message(format!(
                    "training {spec}, epoch {}/{}, loss {loss:.4}",
                    progress.epoch + 1,
                    progress.epochs
                ));
            }
        },
    )?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let targets: Vec<i64> = (0..data.num_targets()).collect();
    let outputs = Outputs::compute(&mut model, &data, &targets)?;
    let train_accuracy = outputs.narrow(0, data.num_train).accuracy()[0];
    let val_accuracy = outputs.narrow(data.num_train, data.num_val).accuracy()[0];
    let info = CheckpointInfo {
        model: spec.clone(),
        sample_shape: data.sample_shape.clone(),
        num_classes: data.num_classes,
        seed: args.seed,
        dataset_hash: Some(data.content_hash.clone()),
        recipe: Some(recipe.clone()),
        lineage: None,
    };
    checkpoint::save_member(&model, 0, &info, &args.out)
        .with_context(|| format!("write checkpoint {}", args.out.display()))?;
    let module_path = args.out.with_extension("pt");
    let wrote_module = model.save_torchscript(&module_path)?;
    if let Some(path) = &args.outputs {
        outputs.save(path, &Default::default())?;
    }

    println!(
        "trained {spec} on {} ({} of {} training examples, seed {}, {} epochs, {:?})",
        data.spec,
        subset.len(),
        data.num_train,
        args.seed,
        recipe.epochs,
        device
    );
    println!(
        "  train accuracy {train_accuracy:.4}  val accuracy {val_accuracy:.4}  final loss {:.4}",
        summary.final_loss[0]
    );
    println!(
        "  {seconds:.1} s, {:.0} examples/s",
        summary.examples as f64 / seconds
    );
    println!("  checkpoint: {}", args.out.display());
    if wrote_module {
        println!("  TorchScript module: {}", module_path.display());
    }
    if let Some(path) = &args.outputs {
        println!("  outputs: {}", path.display());
    }
    Ok(())
}
