//! `evaluate`: accuracy and margins of a checkpoint on a dataset.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lethe_ml::checkpoint;
use lethe_ml::outputs::Outputs;
use tch::Kind;

use super::options::{checkpoint_fits, DataArgs};

#[derive(Args, Debug)]
pub(crate) struct EvaluateArgs {
    #[command(flatten)]
    data: DataArgs,
    /// A checkpoint written by `train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Write logits and margins on every target (train then validation) here.
    #[arg(long)]
    outputs: Option<PathBuf>,
}

pub(crate) fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let device = args.data.device()?;
    let data = args.data.load()?;
    let (mut model, info) = checkpoint::load(&args.checkpoint, device)
        .with_context(|| format!("load checkpoint {}", args.checkpoint.display()))?;
    if !checkpoint_fits(&info, &data, &args.checkpoint)? {
        eprintln!(
            "note: the checkpoint was trained on other data than {} (content hashes differ)",
            data.spec
        );
    }
    let targets: Vec<i64> = (0..data.num_targets()).collect();
    let outputs = Outputs::compute(&mut model, &data, &targets)?;
    println!(
        "evaluated {} ({}) on {}",
        args.checkpoint.display(),
        info.model,
        data.spec
    );
    for (split, start, len) in [
        ("train", 0, data.num_train),
        ("val", data.num_train, data.num_val),
    ] {
        if len == 0 {
            continue;
        }
        let part = outputs.narrow(start, len);
        let margins = part.margins();
        println!(
            "  {split:<5} {len:>6} examples  accuracy {:.4}  mean margin {:.3}  median margin {:.3}",
            part.accuracy()[0],
            margins.mean(Kind::Float).double_value(&[]),
            margins.flatten(0, -1).median().double_value(&[]),
        );
    }
    if let Some(path) = &args.outputs {
        outputs.save(path, &Default::default())?;
        println!("  outputs: {}", path.display());
    }
    Ok(())
}
