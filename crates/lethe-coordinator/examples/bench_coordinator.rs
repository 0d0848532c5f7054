//! Coordinator throughput against its own floor, in one run on one database.
//!
//! - lethe: no-op tasks claimed and completed through the gRPC worker API (AcquireTask +
//!   CompleteTask) by `--workers` simulated workers, each on its own connection, while one
//!   client measures GetOperation latency;
//! - raw: the same number of concurrent loops doing only the SKIP LOCKED claim and the
//!   completion UPDATE in SQL, through a pool of the same size as the coordinator's.
//!
//! Phases alternate (raw, lethe, raw, lethe, ...) on fresh tasks so that neither side gets the
//! warmer cache; `ratio` is lethe over raw. Writes `bench/results/coordinator.json`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lethe_coordinator::{operation_name, Coordinator, CoordinatorConfig};
use lethe_proto::google::longrunning::operations_client::OperationsClient;
use lethe_proto::google::longrunning::GetOperationRequest;
use lethe_proto::lethe::v1::worker_service_client::WorkerServiceClient;
use lethe_proto::lethe::v1::{
    AcquireTaskRequest, CompleteTaskRequest, Device, RegisterWorkerRequest,
};
use lethe_store::{
    sqlx, CompletionRequest, Durability, GroupCommit, GroupCommitLimits, JobKind, LocalCluster,
    NewJob, NewTask, NewWorker, Store, StoreConfig,
};
use serde_json::json;
use tonic::transport::Channel;
use uuid::Uuid;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Tasks completed per phase.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Tasks per job (jobs are what GetOperation reads).
    #[arg(long, default_value_t = 100)]
    tasks_per_job: usize,
    /// Phases of each kind, alternated.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Database connections, for the coordinator and for the raw loop alike.
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Keep PostgreSQL's durable defaults (fsync, synchronous commit) rather than turning them off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    durable: bool,
    #[arg(long, default_value = "bench/results/coordinator.json")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let durability = if args.durable {
        Durability::Durable
    } else {
        Durability::Fast
    };
    let cluster = LocalCluster::start_temporary(durability).context("starting PostgreSQL")?;
    let url = cluster.create_database("bench")?;
    let config = StoreConfig {
        max_connections: args.pool,
        ..StoreConfig::default()
    };
    let store = Store::connect(&url, config).await?;
    let coordinator = Coordinator::new(store.clone(), CoordinatorConfig::default())
        .spawn("127.0.0.1:0".parse()?)
        .await?;
    let endpoint = coordinator.endpoint();
    println!(
        "bench-coordinator: {} workers, {} tasks per phase, {} rounds, pool {}, {:?} PostgreSQL",
        args.workers, args.tasks, args.rounds, args.pool, durability
    );

    let mut lethe_rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut store_rates = Vec::new();
    let mut get_latencies = Vec::new();
    for round in 0..args.rounds {
        create_jobs(&store, args.tasks, args.tasks_per_job).await?;
        let raw = run_raw(&store, args.workers, args.tasks).await?;
        println!("round {round}: raw SKIP LOCKED loop   {raw:>8.0} tasks/s");
        raw_rates.push(raw);

        create_jobs(&store, args.tasks, args.tasks_per_job).await?;
        let direct = run_store(&store, args.workers, args.tasks).await?;
        println!("round {round}: store calls, no gRPC  {direct:>8.0} tasks/s");
        store_rates.push(direct);

        let jobs = create_jobs(&store, args.tasks, args.tasks_per_job).await?;
        let (lethe, latencies) = run_lethe(&endpoint, args.workers, args.tasks, &jobs).await?;
        println!(
            "round {round}: lethe gRPC workers     {lethe:>8.0} tasks/s  (GetOperation p99 {:.1} ms)",
            percentile(&latencies, 0.99)
        );
        lethe_rates.push(lethe);
        get_latencies.extend(latencies);
    }
    coordinator.shutdown().await?;

    let lethe = mean(&lethe_rates);
    let raw = mean(&raw_rates);
    let result = json!({
        "workers": args.workers,
        "lethe_tasks_per_s": lethe,
        "raw_skip_locked_per_s": raw,
        "ratio": lethe / raw,
        "get_p99_ms": percentile(&get_latencies, 0.99),
        "get_p50_ms": percentile(&get_latencies, 0.50),
        "get_samples": get_latencies.len(),
        "lethe_tasks_per_s_by_round": lethe_rates,
        "store_tasks_per_s": mean(&store_rates),
        "raw_skip_locked_per_s_by_round": raw_rates,
        "tasks_per_phase": args.tasks,
        "tasks_per_job": args.tasks_per_job,
        "db_pool": args.pool,
        "postgres_durable": args.durable,
        "cpu_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "note": "coordinator, simulated workers and PostgreSQL share one machine",
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!(
        "lethe {lethe:.0} tasks/s, raw {raw:.0} tasks/s, ratio {:.2}, GetOperation p99 {:.1} ms -> {}",
        lethe / raw,
        percentile(&get_latencies, 0.99),
        args.out.display()
    );
    Ok(())
}

async fn create_jobs(store: &Store, tasks: usize, per_job: usize) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::new();
    let mut left = tasks;
    while left > 0 {
        let n = left.min(per_job);
        let job = NewJob {
            tenant: "bench".into(),
            kind: JobKind::Noop,
            request_id: None,
            spec: json!({}),
            priority: 0,
            deadline: None,
            tasks: (0..n).map(|_| NewTask::new("noop", json!({}))).collect(),
            admission: None,
        };
        ids.push(store.create_job(&job).await?.0.id);
        left -= n;
    }
    // Fresh statistics, so both sides plan their queries on the same picture of the table.
    sqlx::query("ANALYZE tasks").execute(store.pool()).await?;
    Ok(ids)
}

/// The floor: only the claim and the completion, straight in SQL.
async fn run_raw(store: &Store, workers: usize, tasks: usize) -> anyhow::Result<f64> {
    let owner = store
        .register_worker(&NewWorker {
            name: "raw".into(),
            device: lethe_store::Device::Cpu,
            memory_bytes: 0,
            slots: 1,
            version: String::new(),
            kinds: Vec::new(),
            credential_id: None,
        })
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let loops: Vec<_> = (0..workers)
        .map(|_| {
            let (pool, done) = (store.pool().clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    let claimed: Option<(Uuid, i32)> = sqlx::query_as(
                        "WITH c AS (SELECT id FROM tasks WHERE state = 'available' \
                             ORDER BY priority DESC, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                         UPDATE tasks t SET state = 'leased', attempt = t.attempt + 1, lease_owner = $1, \
                             lease_expires_at = now() + interval '30 seconds', leased_at = now() \
                         FROM c WHERE t.id = c.id RETURNING t.id, t.attempt",
                    )
                    .bind(owner)
                    .fetch_optional(&pool)
                    .await?;
                    let Some((id, attempt)) = claimed else { return Ok::<_, sqlx::Error>(()) };
                    sqlx::query(
                        "UPDATE tasks SET state = 'succeeded', lease_owner = NULL, lease_expires_at = NULL, \
                             finished_at = now() WHERE id = $1 AND attempt = $2 AND state = 'leased'",
                    )
                    .bind(id)
                    .bind(attempt)
                    .execute(&pool)
                    .await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for handle in loops {
        handle.await??;
    }
    let finished = done.load(Ordering::Relaxed) as usize;
    anyhow::ensure!(
        finished == tasks,
        "raw loop finished {finished} of {tasks} tasks"
    );
    Ok(finished as f64 / start.elapsed().as_secs_f64())
}

/// The store's own claim and group commit, called in process: Lethe's SQL without gRPC, which
/// splits the gap between lethe and raw into bookkeeping and transport.
async fn run_store(store: &Store, workers: usize, tasks: usize) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let mut ids = Vec::new();
    for i in 0..workers {
        let worker = NewWorker {
            name: format!("direct-{i}"),
            device: lethe_store::Device::Cpu,
            memory_bytes: 1 << 34,
            slots: 1,
            version: String::new(),
            kinds: vec!["noop".into()],
            credential_id: None,
        };
        ids.push(store.register_worker(&worker).await?);
    }
    let commit = GroupCommit::start(store.clone(), GroupCommitLimits::default());
    let start = Instant::now();
    let loops: Vec<_> = ids
        .into_iter()
        .map(|worker| {
            let (store, commit, done) = (store.clone(), commit.clone(), done.clone());
            tokio::spawn(async move {
                // As the worker API does: each completion claims the next task, and completions
                // from all workers share statements.
                let mut next = store.claim(worker, 1).await?.pop();
                while let Some(task) = next {
                    next = commit
                        .complete(CompletionRequest {
                            task: task.id,
                            attempt: task.attempt,
                            worker,
                            artifacts: Vec::new(),
                            report: None,
                            acquire_next: true,
                        })
                        .await?
                        .1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, lethe_store::StoreError>(())
            })
        })
        .collect();
    for handle in loops {
        handle.await??;
    }
    let finished = done.load(Ordering::Relaxed) as usize;
    anyhow::ensure!(
        finished == tasks,
        "store loop finished {finished} of {tasks} tasks"
    );
    Ok(finished as f64 / start.elapsed().as_secs_f64())
}

/// Simulated workers over gRPC, each on its own connection, plus one GetOperation prober.
async fn run_lethe(
    endpoint: &str,
    workers: usize,
    tasks: usize,
    jobs: &[Uuid],
) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut clients = Vec::new();
    for i in 0..workers {
        let channel = Channel::from_shared(endpoint.to_string())?
            .connect()
            .await?;
        let mut client = WorkerServiceClient::new(channel);
        let registered = client
            .register_worker(RegisterWorkerRequest {
                name: format!("sim-{i}"),
                device: Device::Cpu as i32,
                memory_bytes: 1 << 34,
                slots: 1,
                version: "bench".into(),
                kinds: vec!["noop".into()],
            })
            .await?
            .into_inner();
        clients.push((client, registered.worker_id));
    }
    let done = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicU64::new(workers as u64));
    let prober = {
        let channel = Channel::from_shared(endpoint.to_string())?
            .connect()
            .await?;
        let names: Vec<String> = jobs.iter().map(|&j| operation_name(j)).collect();
        let running = running.clone();
        tokio::spawn(async move {
            let mut client = OperationsClient::new(channel);
            let mut latencies = Vec::new();
            let mut i = 0;
            while running.load(Ordering::Relaxed) > 0 {
                let mut request = tonic::Request::new(GetOperationRequest {
                    name: names[i % names.len()].clone(),
                });
                request
                    .metadata_mut()
                    .insert("x-lethe-tenant", "bench".parse().expect("ASCII"));
                let start = Instant::now();
                client.get_operation(request).await?;
                latencies.push(start.elapsed().as_secs_f64() * 1e3);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, tonic::Status>(latencies)
        })
    };
    let start = Instant::now();
    let loops: Vec<_> = clients
        .into_iter()
        .map(|(mut client, worker)| {
            let (done, running) = (done.clone(), running.clone());
            tokio::spawn(async move {
                let result = async {
                    // As a real worker does: ask for a task, then for the next one with each
                    // completion while there is work.
                    let mut next = client
                        .acquire_task(AcquireTaskRequest {
                            worker_id: worker.clone(),
                            wait: None,
                        })
                        .await?
                        .into_inner()
                        .task;
                    while let Some(task) = next {
                        next = client
                            .complete_task(CompleteTaskRequest {
                                worker_id: worker.clone(),
                                task_id: task.task_id,
                                attempt: task.attempt,
                                artifacts: vec![],
                                report: None,
                                acquire_next: true,
                            })
                            .await?
                            .into_inner()
                            .next_task;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, tonic::Status>(())
                }
                .await;
                running.fetch_sub(1, Ordering::Relaxed);
                result
            })
        })
        .collect();
    for handle in loops {
        handle.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let latencies = prober.await??;
    let finished = done.load(Ordering::Relaxed) as usize;
    anyhow::ensure!(
        finished == tasks,
        "lethe workers finished {finished} of {tasks} tasks"
    );
    Ok((finished as f64 / elapsed, latencies))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
