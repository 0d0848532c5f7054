//! `lethe`: the command line of Lethe: a client of the coordinator's gRPC API (`operations`,
//! `smoke`), and the ML engine's local jobs.
//!
//! Architecture invariant: this binary does not link libtorch. Subcommands that run the ML
//! engine locally (`train`, `ensemble`, `evaluate`, `index`, `forget-sets`, `unlearn`, `audit`)
//! are carried out by `lethe-worker`, which this command finds (see [`locate_worker`]) and
//! replaces itself with, passing the arguments through untouched.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use lethe_config::otlp::OtlpExport;

mod commands;
mod connection;
mod render;

#[derive(Parser)]
#[command(name = "lethe", version, about = "Lethe: make trained models forget")]
struct Cli {
    #[command(subcommand)]
    command: Verb,
    #[command(flatten)]
    connection: connection::Connection,
}

#[derive(Subcommand)]
enum Verb {
    /// Train one model and write its checkpoint (run by lethe-worker; `lethe train --help`).
    #[command(disable_help_flag = true)]
    Train(Forwarded),
    /// Train an ensemble of subset models (run by lethe-worker; `lethe ensemble --help`).
    #[command(disable_help_flag = true)]
    Ensemble(Forwarded),
    /// Evaluate a checkpoint (run by lethe-worker; `lethe evaluate --help`).
    #[command(disable_help_flag = true)]
    Evaluate(Forwarded),
    /// Build, evaluate or inspect an attribution index (run by lethe-worker; `lethe index --help`).
    #[command(disable_help_flag = true)]
    Index(Forwarded),
    /// Draw forget sets by family (run by lethe-worker; `lethe forget-sets --help`).
    #[command(disable_help_flag = true)]
    ForgetSets(Forwarded),
    /// Forget training examples of a checkpoint (run by lethe-worker; `lethe unlearn --help`).
    #[command(disable_help_flag = true)]
    Unlearn(Forwarded),
    /// Audit an unlearning method with KLoM against oracles (run by lethe-worker; `lethe audit --help`).
    #[command(disable_help_flag = true)]
    Audit(Forwarded),
    /// Operations on the coordinator: list, get, watch, wait, cancel.
    #[command(subcommand, visible_alias = "op")]
    Operations(commands::operations::OperationsVerb),
    /// Datasets registered with the coordinator: register, get.
    #[command(subcommand)]
    Datasets(commands::registry::DatasetsVerb),
    /// Models registered with the coordinator: register, get.
    #[command(subcommand)]
    Models(commands::registry::ModelsVerb),
    /// Check a deployment end to end: run no-op tasks through the coordinator, the workers and
    /// the artifact store, and watch them finish.
    Smoke(commands::smoke::SmokeArgs),
    /// Submit work: an index build or a deletion request (watched to the end unless
    /// --no-watch).
    #[command(subcommand)]
    Submit(commands::submit::SubmitVerb),
    /// Download a model version's checkpoint through the coordinator, checked against its
    /// SHA-256: a version's name, or a succeeded deletion request's operation.
    Download(commands::download::DownloadArgs),
}

impl Verb {
    fn name(&self) -> &'static str {
        match self {
            Verb::Train(_) => "train",
            Verb::Ensemble(_) => "ensemble",
            Verb::Evaluate(_) => "evaluate",
            Verb::Index(_) => "index",
            Verb::ForgetSets(_) => "forget-sets",
            Verb::Unlearn(_) => "unlearn",
            Verb::Audit(_) => "audit",
            Verb::Operations(_) => "operations",
            Verb::Datasets(_) => "datasets",
            Verb::Models(_) => "models",
            Verb::Smoke(_) => "smoke",
            Verb::Submit(_) => "submit",
            Verb::Download(_) => "download",
        }
    }
}

#[derive(clap::Args)]
struct Forwarded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Finds the worker binary: `$LETHE_WORKER`, else `lethe-worker` next to this executable, else
/// on `$PATH`.
fn locate_worker(
    explicit: Option<PathBuf>,
    own_dir: Option<&Path>,
    path: Option<OsString>,
) -> Option<PathBuf> {
    if let Some(explicit) = explicit {
        return Some(explicit);
    }
    let sibling = own_dir.map(|dir| dir.join("lethe-worker"));
    let on_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("lethe-worker"));
    sibling
        .into_iter()
        .chain(on_path)
        .find(|candidate| candidate.is_file())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet unless asked (RUST_LOG): what the CLI prints is its output. LETHE_LOG_FORMAT=json
    // logs one JSON object per line, with the trace id each call carries to the coordinator.
    let format = match std::env::var("LETHE_LOG_FORMAT").as_deref() {
        Ok("json") => lethe_config::logging::LogFormat::Json,
        _ => lethe_config::logging::LogFormat::Text,
    };
    let export = cli
        .connection
        .otlp_endpoint
        .clone()
        .map(|endpoint| OtlpExport {
            endpoint,
            service: "lethe",
            unsampled_roots: &[],
        });
    // Dropped last, on every return: it sends the command's span to the collector.
    let _telemetry = match lethe_config::logging::init(format, "warn", export.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    // The root of the trace that every call of this command carries to the coordinator.
    let command = tracing::info_span!(
        "command",
        otel.name = %format!("lethe {}", cli.command.name()),
        otel.kind = "client",
        trace_id = tracing::field::Empty,
    );
    let _in_command = command.enter();
    let (name, forwarded) = match cli.command {
        Verb::Operations(verb) => {
            return report(commands::operations::operations(cli.connection, verb))
        }
        Verb::Smoke(args) => return report(commands::smoke::smoke(cli.connection, args)),
        Verb::Datasets(verb) => return report(commands::registry::datasets(cli.connection, verb)),
        Verb::Models(verb) => return report(commands::registry::models(cli.connection, verb)),
        Verb::Submit(verb) => return report(commands::submit::submit(cli.connection, verb)),
        Verb::Download(args) => return report(commands::download::download(cli.connection, args)),
        Verb::Train(forwarded) => ("train", forwarded),
        Verb::Ensemble(forwarded) => ("ensemble", forwarded),
        Verb::Evaluate(forwarded) => ("evaluate", forwarded),
        Verb::Index(forwarded) => ("index", forwarded),
        Verb::ForgetSets(forwarded) => ("forget-sets", forwarded),
        Verb::Unlearn(forwarded) => ("unlearn", forwarded),
        Verb::Audit(forwarded) => ("audit", forwarded),
    };
    let own_exe = std::env::current_exe().ok();
    let own_dir = own_exe.as_deref().and_then(Path::parent);
    let explicit = std::env::var_os("LETHE_WORKER").map(PathBuf::from);
    let Some(worker) = locate_worker(explicit, own_dir, std::env::var_os("PATH")) else {
        eprintln!(
            "error: `lethe {name}` runs in lethe-worker, which links libtorch, and it was not found next to this \
             executable or on PATH; build it with `make build` or set LETHE_WORKER"
        );
        return ExitCode::from(2);
    };
    let error = Command::new(&worker).arg(name).args(&forwarded.args).exec();
    eprintln!("error: cannot run {}: {error}", worker.display());
    ExitCode::from(2)
}

/// Prints a client verb's failure: a gRPC status as its code and message, anything else with
/// its chain of causes.
fn report(outcome: anyhow::Result<()>) -> ExitCode {
    let Err(error) = outcome else {
        return ExitCode::SUCCESS;
    };
    match error.downcast_ref::<tonic::Status>() {
        Some(status) => eprintln!("error: {:?}: {}", status.code(), status.message()),
        None => eprintln!("error: {error:#}"),
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_worker_wins_then_the_sibling_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("bin");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("lethe-worker"), "").unwrap();
        let path = std::env::join_paths([&elsewhere]).unwrap();
        assert_eq!(
            locate_worker(None, Some(&own), Some(path.clone())),
            Some(elsewhere.join("lethe-worker"))
        );
        std::fs::write(own.join("lethe-worker"), "").unwrap();
        assert_eq!(
            locate_worker(None, Some(&own), Some(path.clone())),
            Some(own.join("lethe-worker"))
        );
        let explicit = PathBuf::from("/opt/lethe-worker");
        assert_eq!(
            locate_worker(Some(explicit.clone()), Some(&own), Some(path)),
            Some(explicit)
        );
        assert_eq!(
            locate_worker(None, Some(&elsewhere.join("none")), None),
            None
        );
    }
}
