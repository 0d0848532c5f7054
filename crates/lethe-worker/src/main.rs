//! `lethe-worker`: the process that links libtorch. It runs the ML engine's jobs locally
//! (`train`, `ensemble`, `evaluate`, `index`, `forget-sets`, `unlearn`, `audit`; the `lethe` CLI forwards those
//! subcommands here so that the CLI itself never links libtorch), and serves a coordinator
//! (`serve`).

mod local;
mod serve;
mod tasks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lethe-worker",
    version,
    about = "Lethe worker: runs training, ensembles and evaluation with libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one model and write its checkpoint.
    Train(local::train::TrainArgs),
    /// Train an ensemble of subset models (many at once) and write masks and logits per group.
    Ensemble(local::ensemble::EnsembleArgs),
    /// Evaluate a checkpoint: accuracy per split, and logits and margins on every target.
    Evaluate(local::evaluate::EvaluateArgs),
    /// Attribution indexes: build from subset retrains, evaluate (LDS), inspect.
    #[command(subcommand)]
    Index(local::index::IndexCommand),
    /// Forget sets by family (random, clusters, class slices, high loss), and the suite that
    /// benchmarks tune on and report on.
    #[command(subcommand)]
    ForgetSets(local::forget_sets::ForgetSetsCommand),
    /// Forget training examples: apply an unlearning method to a checkpoint and write the next
    /// model version.
    Unlearn(local::unlearn::UnlearnArgs),
    /// Audit an unlearning method: apply it to N originals and compare with oracles (KLoM).
    Audit(local::audit::AuditArgs),
    /// Serve a coordinator: take tasks, run them, report, until SIGTERM (then drain).
    #[command(after_help = serve::SETTINGS_HELP)]
    Serve(serve::ServeFlags),
    /// Print the settings `serve` would run with, as a TOML file.
    #[command(after_help = serve::SETTINGS_HELP)]
    DumpConfig(serve::ServeFlags),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Train(args) => local::train::run(args),
        Command::Ensemble(args) => local::ensemble::run(args),
        Command::Evaluate(args) => local::evaluate::run(args),
        Command::Index(command) => local::index::run(command),
        Command::ForgetSets(command) => local::forget_sets::run(command),
        Command::Unlearn(args) => local::unlearn::run(args),
        Command::Audit(args) => local::audit::run(args),
        Command::Serve(flags) => serve::run(flags),
        Command::DumpConfig(flags) => serve::dump_config(flags),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the chain of causes on one line, without a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
