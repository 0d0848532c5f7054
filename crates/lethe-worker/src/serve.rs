//! `lethe-worker serve`: the worker process of the service. It advertises this machine's
//! device and memory, then runs tasks for the coordinator until SIGTERM or Ctrl-C, when it
//! drains (finishes or hands back what it holds).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lethe_artifacts::ArtifactStore;
use lethe_proto::lethe::v1::Device;
use lethe_runner::{Runner, RunnerConfig};

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// The coordinator's gRPC endpoint.
    #[arg(
        long,
        env = "LETHE_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Where artifacts live: file:///path or s3://bucket/prefix (S3 settings from AWS_*).
    #[arg(long, env = "LETHE_ARTIFACTS")]
    artifacts: String,
    /// Name shown to operators; defaults to the host name and process id.
    #[arg(long)]
    name: Option<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Run on the CPU even when CUDA is available.
    #[arg(long)]
    cpu: bool,
    /// Seconds running tasks may take to finish after SIGTERM before they are handed back.
    #[arg(long, default_value_t = 30.0)]
    drain_grace_seconds: f64,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !(args.drain_grace_seconds.is_finite() && args.drain_grace_seconds >= 0.0) {
        anyhow::bail!("--drain-grace-seconds must be a non-negative number");
    }
    let artifacts = ArtifactStore::open(&args.artifacts).context("opening --artifacts")?;
    let cuda = !args.cpu && tch::Cuda::is_available();
    let device = if cuda { Device::Cuda } else { Device::Cpu };
    let tch_device = if cuda {
        tch::Device::Cuda(0)
    } else {
        tch::Device::Cpu
    };
    let name = args
        .name
        .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()));
    let config = RunnerConfig {
        endpoint: args.coordinator,
        name: name.clone(),
        device,
        memory_bytes: memory_bytes(),
        slots: args.slots.max(1),
        poll_wait: Duration::from_secs(30),
        drain_grace: Duration::from_secs_f64(args.drain_grace_seconds),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        eprintln!(
            "lethe-worker {name}: {device:?}, {} slot(s), serving {}",
            config.slots, config.endpoint
        );
        let mut runner = Runner::new(config, artifacts);
        crate::tasks::register(&mut runner, tch_device);
        runner.run(shutdown_signal()).await
    })?;
    eprintln!(
        "lethe-worker {name}: stopped; {} completed, {} failed, {} cancelled, {} lost to another attempt, {} handed back",
        summary.completed, summary.failed, summary.cancelled, summary.fenced, summary.handed_back
    );
    Ok(())
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

/// Memory the worker can give a task: the GPU's when it has one would be better; until the
/// engine reports it, the machine's total memory.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
