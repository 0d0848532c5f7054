//! `forget-sets`: draw forget sets by family (`draw`), or every instance of the suite that
//! benchmarks tune and report on (`suite`), as files `lethe unlearn --forget-file` reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lethe_ml::checkpoint;
use lethe_ml::forget_sets::{draw, DrawnSet, Family, ForgetSetSpec, Split, SUITE};
use lethe_ml::model::Model;

use super::options::{checkpoint_fits, DataArgs};

#[derive(Subcommand, Debug)]
pub(crate) enum ForgetSetsCommand {
    /// Draw one forget set of a family.
    Draw(DrawArgs),
    /// List the suite's instances and which are for tuning; with --out-dir, draw them all.
    Suite(SuiteArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ModelArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The deployed model: the families feature_neighbours, class_atypical and high_loss are
    /// defined by it.
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct DrawArgs {
    /// random, input_neighbours, feature_neighbours, class_atypical, class_random, high_loss
    /// or cluster_union.
    #[arg(long)]
    family: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Examples in the set.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// The anchor example of the neighbour families (default: drawn from the seed).
    #[arg(long)]
    anchor: Option<i64>,
    /// The class of the class families (default: drawn from the seed).
    #[arg(long)]
    class: Option<i64>,
    #[command(flatten)]
    model: ModelArgs,
    /// Write the set here (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct SuiteArgs {
    /// Examples in each set.
    #[arg(long, default_value_t = 100)]
    size: usize,
    #[command(flatten)]
    model: ModelArgs,
    /// Draw every instance into this directory, one `FAMILY-SEED.txt` each.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub(crate) fn run(command: ForgetSetsCommand) -> anyhow::Result<()> {
    match command {
        ForgetSetsCommand::Draw(args) => draw_one(args),
        ForgetSetsCommand::Suite(args) => suite(args),
    }
}

impl ModelArgs {
    /// The dataset and, when given, the deployed model (checked against the dataset).
    fn load(&self) -> anyhow::Result<(lethe_ml::data::Dataset, Option<Model>)> {
        let data = self.data.load()?;
        let Some(path) = &self.model else {
            return Ok((data, None));
        };
        let (model, info) = checkpoint::load(path, self.data.device()?)
            .with_context(|| format!("load checkpoint {}", path.display()))?;
        if !checkpoint_fits(&info, &data, path)? {
            bail!(
                "checkpoint {} was trained on other data than {} (content hashes differ)",
                path.display(),
                data.spec
            );
        }
        Ok((data, Some(model)))
    }
}

fn draw_one(args: DrawArgs) -> anyhow::Result<()> {
    let family: Family = args.family.parse()?;
    let (data, mut model) = args.model.load()?;
    let spec = ForgetSetSpec {
        anchor: args.anchor,
        class: args.class,
        ..ForgetSetSpec::new(family, args.seed, args.size)
    };
    let drawn = draw(&spec, &data, model.as_mut())?;
    let split = SUITE
        .iter()
        .find(|instance| instance.spec(args.size) == spec)
        .map(|instance| instance.split);
    let text = forget_file(&drawn, split);
    match &args.out {
        Some(path) => {
            write(path, &text)?;
            eprintln!(
                "{} examples ({}) → {}",
                drawn.indices.len(),
                drawn.description,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn suite(args: SuiteArgs) -> anyhow::Result<()> {
    let Some(dir) = &args.out_dir else {
        println!("{:<24} {:<20} {:>5}  split", "instance", "family", "seed");
        for instance in SUITE {
            let anchor = instance
                .anchor
                .map(|anchor| format!(" (anchor {anchor})"))
                .unwrap_or_default();
            println!(
                "{:<24} {:<20} {:>5}  {}{anchor}",
                instance.name(),
                instance.family.name(),
                instance.seed,
                instance.split.name()
            );
        }
        return Ok(());
    };
    let (data, mut model) = args.model.load()?;
    if model.is_none() && SUITE.iter().any(|instance| instance.family.needs_model()) {
        bail!("the suite has families defined by the deployed model: pass it with --model");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for instance in SUITE {
        let drawn = draw(&instance.spec(args.size), &data, model.as_mut())?;
        let path = dir.join(format!("{}-{}.txt", instance.family, instance.seed));
        write(&path, &forget_file(&drawn, Some(instance.split)))?;
        println!(
            "{:<24} {:<9} {}",
            instance.name(),
            instance.split.name(),
            path.display()
        );
    }
    Ok(())
}

/// The set as a forget file: a commented header, then the indices.
fn forget_file(drawn: &DrawnSet, split: Option<Split>) -> String {
    let mut text = String::new();
    let spec = &drawn.spec;
    let _ = writeln!(
        text,
        "# lethe forget-sets: {}, seed {}, {} examples{}",
        spec.family,
        spec.seed,
        drawn.indices.len(),
        split
            .map(|split| format!(" (a {} instance of the suite)", split.name()))
            .unwrap_or_default()
    );
    let _ = writeln!(text, "# {}", drawn.description);
    let _ = writeln!(text, "# sha256 of the indices: {}", drawn.hash());
    let indices: Vec<String> = drawn.indices.iter().map(i64::to_string).collect();
    for line in indices.chunks(16) {
        let _ = writeln!(text, "{}", line.join(", "));
    }
    text
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
