//! `index`: build an attribution index from subset retrains, evaluate it (LDS), inspect it.

use std::ops::{ControlFlow, Range};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use lethe_ml::attribution::beta_file::BetaReader;
use lethe_ml::attribution::lds::linear_datamodeling_score;
use lethe_ml::attribution::trak::{build_trak_index, TrakConfig};
use lethe_ml::attribution::{build_index, Estimator, IndexBuild};
use lethe_ml::ensemble::EnsembleResults;
use tch::Kind;

use super::options::DataArgs;
use super::progress;

#[derive(Subcommand, Debug)]
pub(crate) enum IndexCommand {
    /// Estimate β from an ensemble directory of subset retrains (resumable).
    Build(BuildArgs),
    /// Measure an index's LDS on held-out subset retrains.
    Evaluate(EvaluateArgs),
    /// Show an index's shape, provenance and the strongest influences of a source example.
    Inspect(InspectArgs),
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq)]
enum Method {
    /// Per-logit subsampled influence (difference of means).
    Subsample,
    /// Ridge regression per target (datamodels), penalty chosen by LDS unless given.
    Regression,
    /// TRAK from projected gradients of checkpoints trained on the whole training split
    /// (MLPs), scaled to logit units on the estimation members.
    Trak,
}

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// Ensemble directory written by `lethe ensemble`.
    #[arg(long)]
    ensemble: PathBuf,
    #[arg(long, value_enum, default_value = "subsample")]
    method: Method,
    /// Members used for estimation, START..END (default: all; hold some out to evaluate).
    #[arg(long)]
    estimation_members: Option<String>,
    /// Ridge penalty, relative to the mean squared norm of a centred mask row.
    #[arg(long)]
    penalty: Option<f64>,
    /// TRAK: the dataset the ensemble was trained on (its content hash is checked).
    #[command(flatten)]
    data: DataArgs,
    /// TRAK: models trained on the whole training split, one set of features each.
    #[arg(long, default_value_t = 4)]
    checkpoints: usize,
    /// TRAK: dimension of the gradient projection.
    #[arg(long, default_value_t = 2048)]
    projection_dim: i64,
    /// TRAK: seed of the checkpoints and of the projection.
    #[arg(long, default_value_t = 0)]
    trak_seed: u64,
    /// TRAK: damping λ of (ΦᵀΦ + λI)⁻¹, relative to the mean of ΦᵀΦ's diagonal.
    #[arg(long, default_value_t = 1e-3)]
    damping: f64,
    /// β file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct EvaluateArgs {
    #[arg(long)]
    index: PathBuf,
    /// The ensemble directory the index was built from.
    #[arg(long)]
    ensemble: PathBuf,
    /// Held-out members, START..END (default: the members after the estimation members).
    #[arg(long)]
    held_out: Option<String>,
    /// Targets to score: val (default), train or all.
    #[arg(long, default_value = "val")]
    targets: String,
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    #[arg(long)]
    index: PathBuf,
    /// A source (training) example whose strongest influences to list.
    #[arg(long)]
    source: Option<i64>,
    #[arg(long, default_value_t = 10)]
    top: i64,
}

pub(crate) fn run(command: IndexCommand) -> anyhow::Result<()> {
    match command {
        IndexCommand::Build(args) => build(args),
        IndexCommand::Evaluate(args) => evaluate(args),
        IndexCommand::Inspect(args) => inspect(args),
    }
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Subsample => "subsample",
            Method::Regression => "regression",
            Method::Trak => "trak",
        }
    }
}

fn parse_range(text: &str, limit: usize, what: &str) -> anyhow::Result<Range<usize>> {
    let (start, end) = text
        .split_once("..")
        .with_context(|| format!("{what} `{text}` is not START..END"))?;
    let start: usize = start
        .parse()
        .with_context(|| format!("{what} `{text}`: bad start"))?;
    let end: usize = end
        .parse()
        .with_context(|| format!("{what} `{text}`: bad end"))?;
    if start >= end || end > limit {
        bail!("{what} {start}..{end} is not a non-empty range inside 0..{limit}");
    }
    Ok(start..end)
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let ensemble = EnsembleResults::load(&args.ensemble)
        .with_context(|| format!("load ensemble {}", args.ensemble.display()))?;
    let members = ensemble.seeds.len();
    let estimation = match &args.estimation_members {
        Some(text) => parse_range(text, members, "estimation members")?,
        None => 0..members,
    };
    if args.penalty.is_some() && args.method != Method::Regression {
        bail!("--penalty applies to --method regression only");
    }
    let bar = progress::bar(ensemble.manifest.num_train as u64, "rows");
    bar.set_message(format!(
        "{} index from {} models",
        args.method.name(),
        estimation.len()
    ));
    let started = Instant::now();
    let mut report = |progress: lethe_ml::attribution::subsample::BuildProgress| {
        bar.set_position(progress.rows_done as u64);
        ControlFlow::Continue(())
    };
    let mut trak_scale = None;
    let outcome = match args.method {
        Method::Subsample => build_index(
            &ensemble,
            estimation.clone(),
            Estimator::Subsample,
            &args.out,
            &mut report,
        )?,
        Method::Regression => build_index(
            &ensemble,
            estimation.clone(),
            Estimator::Ridge {
                penalty: args.penalty,
            },
            &args.out,
            &mut report,
        )?,
        Method::Trak => {
            let data = args.data.load()?;
            let config = TrakConfig {
                model: ensemble.manifest.spec.model.clone(),
                recipe: ensemble.manifest.spec.recipe.clone(),
                checkpoints: args.checkpoints,
                projection_dim: args.projection_dim,
                seed: args.trak_seed,
                relative_damping: args.damping,
                save_checkpoints: None,
            };
            bar.set_message(format!(
                "trak: training {} checkpoints, featurising, scoring",
                args.checkpoints
            ));
            let build = build_trak_index(
                &data,
                &config,
                &ensemble,
                estimation.clone(),
                &args.out,
                &mut report,
            )?;
            trak_scale = Some(build.scale);
            IndexBuild {
                complete: build.complete,
                penalty: None,
                penalty_selection: None,
            }
        }
    };
    bar.finish_and_clear();
    let reader = BetaReader::open(&args.out)?;
    println!(
        "built a {} index from members {}..{} of {}",
        args.method.name(),
        estimation.start,
        estimation.end,
        args.ensemble.display()
    );
    println!(
        "  β: {} sources × {} targets × {} classes (float16, {:.1} MiB), {:.1} s",
        reader.shape.sources,
        reader.shape.targets,
        reader.shape.classes,
        (reader.shape.sources * reader.shape.targets * reader.shape.classes * 2) as f64
            / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    if let Some(selection) = &outcome.penalty_selection {
        let candidates: Vec<String> = selection
            .candidates
            .iter()
            .map(|(penalty, lds)| format!("{penalty}: {lds:.4}"))
            .collect();
        println!(
            "  penalty {} chosen by LDS on {} held-out estimation models ({})",
            selection.chosen,
            selection.validation_models,
            candidates.join(", ")
        );
    } else if let Some(penalty) = outcome.penalty {
        println!("  penalty {penalty}");
    }
    if let Some(scale) = trak_scale {
        println!(
            "  {} checkpoints, projection dimension {}, scale {scale:.4} (fitted to logit units on members {}..{})",
            args.checkpoints, args.projection_dim, estimation.start, estimation.end
        );
    }
    println!("  index: {}", args.out.display());
    Ok(())
}

fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let reader = BetaReader::open(&args.index)?;
    let ensemble = EnsembleResults::load(&args.ensemble)
        .with_context(|| format!("load ensemble {}", args.ensemble.display()))?;
    if reader.metadata.get("ensemble_fingerprint") != Some(&ensemble.manifest.fingerprint) {
        bail!(
            "{} was not built from the ensemble in {}",
            args.index.display(),
            args.ensemble.display()
        );
    }
    let members = ensemble.seeds.len();
    let estimation_text = reader
        .metadata
        .get("estimation_members")
        .context("the index does not record its estimation members")?;
    let estimation = parse_range(estimation_text, members, "estimation members")?;
    let held_out = match &args.held_out {
        Some(text) => parse_range(text, members, "held-out members")?,
        None if estimation.end < members => estimation.end..members,
        None => bail!("every member was used for estimation: rebuild with --estimation-members to hold some out"),
    };
    let num_train = ensemble.manifest.num_train;
    let num_targets = ensemble.manifest.num_targets;
    let targets = match args.targets.as_str() {
        "val" if num_targets > num_train => num_train..num_targets,
        "val" => bail!("the dataset has no validation targets: use --targets train or all"),
        "train" => 0..num_train,
        "all" => 0..num_targets,
        other => bail!("unknown targets `{other}`: expected val, train or all"),
    };
    let report = linear_datamodeling_score(
        &reader,
        &ensemble.masks,
        &ensemble.logits,
        &ensemble.labels,
        estimation,
        held_out.clone(),
        targets,
    )?;
    println!(
        "LDS {:.4}  ({} index, {} estimation models, {} held-out models {}..{}, {} {} targets)",
        report.lds,
        reader
            .metadata
            .get("method")
            .map_or("unknown", String::as_str),
        report.estimation_models,
        report.held_out_models,
        held_out.start,
        held_out.end,
        report.targets,
        args.targets
    );
    Ok(())
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let reader = BetaReader::open(&args.index)?;
    println!(
        "{}: β of {} sources × {} targets × {} classes",
        args.index.display(),
        reader.shape.sources,
        reader.shape.targets,
        reader.shape.classes
    );
    for (key, value) in &reader.metadata {
        println!("  {key}: {value}");
    }
    if let Some(source) = args.source {
        let row = reader.rows(&[source])?.to_kind(Kind::Float).get(0);
        let strength = row.abs().amax(&[1i64][..], false);
        let top = args.top.clamp(1, reader.shape.targets);
        let (values, targets) = strength.topk(top, 0, true, true);
        let values = Vec::<f32>::try_from(values)?;
        let targets = Vec::<i64>::try_from(targets)?;
        println!("  strongest influences of source example {source} (max |β| over classes):");
        for (target, value) in targets.iter().zip(values) {
            println!("    target {target:>6}  {value:.4}");
        }
    }
    Ok(())
}
