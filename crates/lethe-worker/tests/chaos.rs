//! The fault campaign: a stream of index builds and deletion requests on fmnist-tiny models,
//! served by real processes (PostgreSQL, `lethe-coordinator` replicas, `lethe-worker serve`)
//! while the harness SIGKILLs workers in the middle of tasks, kills and restarts coordinators
//! (sometimes with a second replica serving), restarts PostgreSQL and takes the artifact store
//! away. After quiescence it checks, from the database and the store, that every accepted
//! request is terminal, that no task committed twice, that every committed artifact's bytes
//! match their recorded hash, that no lease is left, and that no process died on its own.
//!
//! `cargo test` runs a short campaign. `make chaos` runs the full one (`LETHE_CHAOS=full`:
//! 100 worker kills, 10 coordinator restarts, 3 PostgreSQL restarts, 5 store faults) and
//! writes its figures into `bench/results/reliability.json` (`LETHE_RELIABILITY_OUT`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{
    CreateDeletionRequestRequest, CreateIndexBuildRequest, RegisterDatasetRequest,
    RegisterModelRequest,
};
use lethe_store::sqlx::{self, PgPool};
use lethe_store::{Durability, LocalCluster};
use lethe_testkit::{
    coordinator_command, free_port, reliability, with_token, worker_command, Process,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

const TENANT: &str = "chaos";
const MODELS: usize = 3;
const WORKERS: usize = 3;

/// How much of each fault a campaign inflicts.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Requests (deletion requests and index builds) the service must accept before the
    /// stream stops.
    requests: usize,
    worker_kills: usize,
    coordinator_restarts: usize,
    postgres_restarts: usize,
    store_faults: usize,
}

impl Plan {
    fn from_env() -> Self {
        match std::env::var("LETHE_CHAOS").as_deref() {
            Ok("full") => Plan {
                requests: 60,
                worker_kills: 100,
                coordinator_restarts: 10,
                postgres_restarts: 3,
                store_faults: 5,
            },
            _ => Plan {
                requests: 8,
                worker_kills: 6,
                coordinator_restarts: 2,
                postgres_restarts: 1,
                store_faults: 1,
            },
        }
    }
}

/// What happened, counted as it happened.
#[derive(Default)]
struct Tally {
    worker_kills: AtomicUsize,
    coordinator_restarts: AtomicUsize,
    postgres_restarts: AtomicUsize,
    store_faults: AtomicUsize,
    /// Processes that exited without being killed, with their log's tail.
    crashes: Mutex<Vec<String>>,
}

fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_lethe-worker")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo build -p lethe-coordinator` (make chaos and make test build it)",
        path.display()
    );
    path
}

struct Fleet {
    dir: PathBuf,
    database_url: String,
    artifacts: String,
    ports: [u16; 2],
    coordinators: [Option<Process>; 2],
    workers: Vec<(usize, Process)>,
    spawned: usize,
    worker_token: String,
}

impl Fleet {
    fn endpoint(&self, replica: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[replica])
    }

    fn start_coordinator(&mut self, replica: usize) {
        let mut command = coordinator_command(
            binary("lethe-coordinator"),
            &self.database_url,
            self.ports[replica],
        );
        command
            .args(["--lease-seconds", "2", "--poll-interval-ms", "100"])
            .args(["--coalescing-window-seconds", "0.5"]);
        let name = format!("coordinator-{replica}-{}", self.spawned);
        self.spawned += 1;
        self.coordinators[replica] = Some(Process::logged(&name, &mut command, &self.dir));
    }

    fn start_worker(&mut self, replica: usize) {
        let name = format!("worker-{}", self.spawned);
        self.spawned += 1;
        let mut command = worker_command(
            env!("CARGO_BIN_EXE_lethe-worker"),
            &self.endpoint(replica),
            &self.worker_token,
            &self.artifacts,
            &name,
        );
        command
            .args(["--drain-grace-seconds", "1"])
            // Several workers share two cores: one thread each.
            .env("OMP_NUM_THREADS", "1");
        self.workers
            .push((replica, Process::logged(&name, &mut command, &self.dir)));
    }

    /// Processes that died on their own since the last look, replaced (as a supervisor would).
    fn reap(&mut self, tally: &Tally) {
        for replica in 0..2 {
            let crash = self.coordinators[replica]
                .as_mut()
                .and_then(Process::exited);
            if let Some(crash) = crash {
                tally.crashes.lock().unwrap().push(crash);
                self.start_coordinator(replica);
            }
        }
        let mut replace = Vec::new();
        self.workers
            .retain_mut(|(replica, process)| match process.exited() {
                Some(crash) => {
                    tally.crashes.lock().unwrap().push(crash);
                    replace.push(*replica);
                    false
                }
                None => true,
            });
        for replica in replace {
            self.start_worker(replica);
        }
    }

    /// SIGKILLs the worker named `name` and starts a fresh one on the same replica.
    fn kill_worker(&mut self, name: &str) -> bool {
        let Some(position) = self.workers.iter().position(|(_, p)| p.name() == name) else {
            return false;
        };
        let (replica, mut process) = self.workers.remove(position);
        process.kill_now();
        self.start_worker(replica);
        true
    }
}

/// The tenant's token: issued once, before the fleet starts.
static TENANT_TOKEN: OnceLock<String> = OnceLock::new();

/// Issues a token with `lethe-coordinator credentials create`, as an operator would.
fn issue_token(database_url: &str, credential: &[&str]) -> String {
    let output = Command::new(binary("lethe-coordinator"))
        .args(["--database-url", database_url, "credentials", "create"])
        .args(credential)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "credentials create: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn call<T>(message: T) -> tonic::Request<T> {
    let token = TENANT_TOKEN
        .get()
        .expect("the tenant's token is issued first");
    let mut request = with_token(token, message);
    request.set_timeout(Duration::from_secs(10));
    request
}

fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
    )
}

/// A Create call repeated with its `request_id` until the service answers for good: the
/// operation's name, or the refusal.
async fn submit<F, Fut>(mut create: F) -> Result<String, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Result<
            tonic::Response<lethe_proto::google::longrunning::Operation>,
            tonic::Status,
        >,
    >,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match create().await {
            Ok(operation) => return Ok(operation.into_inner().name),
            Err(status) if transient(&status) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            Err(status) => return Err(status),
        }
    }
}

fn client(endpoint: String) -> LetheClient<Channel> {
    LetheClient::new(Channel::from_shared(endpoint).unwrap().connect_lazy())
}

fn job_id(operation: &str) -> uuid::Uuid {
    operation
        .trim_start_matches("operations/")
        .parse()
        .expect("an operation name")
}

async fn leased_worker_names(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT DISTINCT w.name FROM tasks t JOIN workers w ON w.id = t.lease_owner \
         WHERE t.state = 'leased'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

async fn open_jobs(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running', 'cancelling')",
    )
    .fetch_one(pool)
    .await
    .ok()
}

/// What the stream and the fault loop share.
struct Progress {
    /// Set when the faults are done: the stream stops.
    stop: Arc<AtomicBool>,
    /// Operations the service has accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Whether the second replica serves: requests go through it only then.
    second_up: Arc<AtomicBool>,
}

/// The stream of work: a first index build per model, then deletion requests (some audited)
/// and more index builds, until `stop`. Returns the operations the service accepted.
async fn workload(
    endpoints: [String; 2],
    pool: PgPool,
    progress: Progress,
    seed: u64,
) -> Vec<String> {
    let Progress {
        stop,
        accepted: accepted_so_far,
        second_up,
    } = progress;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let clients = [client(endpoints[0].clone()), client(endpoints[1].clone())];
    let mut accepted = Vec::new();
    // Each model's first index build, and whether it has succeeded: deletions need it.
    let mut first_index: [Option<uuid::Uuid>; MODELS] = [None; MODELS];
    let mut indexed = [false; MODELS];
    // Each model's training examples in a random order: requests forget the next four.
    let mut unforgotten: Vec<Vec<i64>> = (0..MODELS)
        .map(|_| {
            let mut all: Vec<i64> = (0..512).collect();
            all.shuffle(&mut rng);
            all
        })
        .collect();
    let mut sent = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let lethe = clients[0].clone();
        let unindexed = first_index.iter().position(Option::is_none);
        for model in 0..MODELS {
            if let (Some(id), false) = (first_index[model], indexed[model]) {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                        .unwrap_or(None);
                indexed[model] = state.as_deref() == Some("succeeded");
            }
        }
        // Half of each training set stays: past that, a model only gets index builds.
        let ready: Vec<usize> = (0..MODELS)
            .filter(|m| indexed[*m] && unforgotten[*m].len() >= 256)
            .collect();
        let unindexed = unindexed.or_else(|| {
            let all_indexed = first_index.iter().all(Option::is_some);
            (all_indexed && ready.is_empty() && indexed.iter().any(|i| *i))
                .then(|| rng.random_range(0..MODELS))
        });
        if unindexed.is_none() && ready.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        sent += 1;
        let request_id = format!("chaos-{seed}-{sent}");
        if unindexed.is_some() || rng.random_range(0..6) == 0 {
            let model = unindexed.unwrap_or_else(|| rng.random_range(0..MODELS));
            let request = CreateIndexBuildRequest {
                request_id,
                model: format!("models/m{model}"),
                members: 32,
                members_per_task: 8,
                ..Default::default()
            };
            let create = || {
                let (mut lethe, request) = (lethe.clone(), request.clone());
                async move { lethe.create_index_build(call(request)).await }
            };
            match submit(create).await {
                Ok(name) => {
                    first_index[model].get_or_insert_with(|| job_id(&name));
                    accepted.push(name);
                    accepted_so_far.fetch_add(1, Ordering::SeqCst);
                }
                Err(status) => panic!("an index build was refused: {status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
            continue;
        }
        let model = ready[rng.random_range(0..ready.len())];
        let forget: Vec<i64> = (0..4).filter_map(|_| unforgotten[model].pop()).collect();
        let request = CreateDeletionRequestRequest {
            request_id,
            model: format!("models/m{model}"),
            forget,
            audit_oracles: if sent.is_multiple_of(4) { 2 } else { 0 },
            seed: sent as u64,
            priority: 0,
            min_confidence: None,
        };
        // Half of them through the second replica when it is up.
        let deletion = |client: &LetheClient<Channel>| {
            let (client, request) = (client.clone(), request.clone());
            move || {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.create_deletion_request(call(request)).await }
            }
        };
        // Half of them through the second replica, or the first when it is down (the same
        // request_id makes a repeat harmless).
        let second = second_up.load(Ordering::SeqCst) && rng.random_range(0..2) == 1;
        let via = &clients[usize::from(second)];
        let outcome = match submit(deletion(via)).await {
            Err(status) if transient(&status) => submit(deletion(&lethe)).await,
            other => other,
        };
        match outcome {
            Ok(name) => {
                accepted.push(name);
                accepted_so_far.fetch_add(1, Ordering::SeqCst);
            }
            Err(status) => panic!("a deletion request was refused: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
    }
    accepted
}

/// Takes the artifact store away for a moment: its root becomes a plain file, so every read
/// and write under it fails, then comes back.
fn store_fault(root: &Path) {
    let away = root.with_extension("away");
    std::fs::rename(root, &away).unwrap();
    std::fs::write(root, b"not a directory").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    std::fs::remove_file(root).unwrap();
    std::fs::rename(&away, root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_keeps_its_promises_under_faults() {
    let plan = Plan::from_env();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::init(&dir.path().join("postgres"), Durability::Durable).unwrap();
    cluster.start().unwrap();
    cluster.stop_when_process_exits(std::process::id()).unwrap();
    let database_url = cluster.create_database("chaos").unwrap();
    let root = dir.path().join("artifacts");
    std::fs::create_dir_all(root.join("models")).unwrap();
    let artifacts = format!("file://{}", root.display());
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let ports = [free_port(), free_port()];
    TENANT_TOKEN
        .set(issue_token(
            &database_url,
            &["--tenant", TENANT, "--name", "chaos-client"],
        ))
        .unwrap();
    let worker_token = issue_token(&database_url, &["--worker", "--name", "chaos-fleet"]);
    let mut fleet = Fleet {
        dir: logs,
        database_url: database_url.clone(),
        artifacts: artifacts.clone(),
        ports,
        coordinators: [None, None],
        workers: Vec::new(),
        spawned: 0,
        worker_token,
    };
    fleet.start_coordinator(0);
    for _ in 0..WORKERS {
        fleet.start_worker(0);
    }
    let endpoints = [fleet.endpoint(0), fleet.endpoint(1)];

    // The deployed models: fmnist-tiny MLPs from three seeds.
    let mut lethe = client(endpoints[0].clone());
    submit_registration(&mut lethe, &root, &artifacts).await;

    let pool = loop {
        if let Ok(pool) = PgPool::connect(&database_url).await {
            break pool;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let accepted_so_far = Arc::new(AtomicUsize::new(0));
    let second_up = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn(workload(
        endpoints.clone(),
        pool.clone(),
        Progress {
            stop: stop.clone(),
            accepted: accepted_so_far.clone(),
            second_up: second_up.clone(),
        },
        7,
    ));

    // The faults, spread over the worker kills.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let every = |count: usize| (plan.worker_kills / count.max(1)).max(1);
    let mut kills_at_last = [0usize; 3];
    while tally.worker_kills.load(Ordering::SeqCst) < plan.worker_kills
        || tally.coordinator_restarts.load(Ordering::SeqCst) < plan.coordinator_restarts
        || tally.postgres_restarts.load(Ordering::SeqCst) < plan.postgres_restarts
        || tally.store_faults.load(Ordering::SeqCst) < plan.store_faults
        || accepted_so_far.load(Ordering::SeqCst) < plan.requests
    {
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the campaign did not inflict its faults within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        fleet.reap(&tally);
        let kills = tally.worker_kills.load(Ordering::SeqCst);
        // A worker in the middle of a task.
        let busy = leased_worker_names(&pool).await;
        if kills < plan.worker_kills && !busy.is_empty() {
            let victim = &busy[rng.random_range(0..busy.len())];
            if fleet.kill_worker(victim) {
                tally.worker_kills.fetch_add(1, Ordering::SeqCst);
            }
        }
        let kills = tally.worker_kills.load(Ordering::SeqCst);
        let restarts = tally.coordinator_restarts.load(Ordering::SeqCst);
        if restarts < plan.coordinator_restarts
            && kills >= kills_at_last[0] + every(plan.coordinator_restarts)
        {
            kills_at_last[0] = kills;
            // Every other restart happens while a second replica serves (with a worker of its
            // own), which stays up until the next restart.
            if restarts % 2 == 0 {
                fleet.start_coordinator(1);
                fleet.start_worker(1);
                second_up.store(true, Ordering::SeqCst);
            } else if let Some(mut second) = fleet.coordinators[1].take() {
                second_up.store(false, Ordering::SeqCst);
                second.kill_now();
                // Its workers go with it.
                fleet.workers.retain(|(replica, _)| *replica == 0);
            }
            if let Some(mut first) = fleet.coordinators[0].take() {
                first.kill_now();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            fleet.start_coordinator(0);
            tally.coordinator_restarts.fetch_add(1, Ordering::SeqCst);
        }
        if tally.postgres_restarts.load(Ordering::SeqCst) < plan.postgres_restarts
            && kills >= kills_at_last[1] + every(plan.postgres_restarts)
        {
            kills_at_last[1] = kills;
            cluster.stop().unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.start().unwrap();
            tally.postgres_restarts.fetch_add(1, Ordering::SeqCst);
        }
        if tally.store_faults.load(Ordering::SeqCst) < plan.store_faults
            && kills >= kills_at_last[2] + every(plan.store_faults)
        {
            kills_at_last[2] = kills;
            let root = root.clone();
            tokio::task::spawn_blocking(move || store_fault(&root))
                .await
                .unwrap();
            tally.store_faults.fetch_add(1, Ordering::SeqCst);
        }
    }

    eprintln!(
        "chaos: faults inflicted after {:.0} s; waiting for quiescence",
        started.elapsed().as_secs_f64()
    );
    // Quiescence: the stream stops, the second replica goes, and everything drains.
    stop.store(true, Ordering::SeqCst);
    let accepted = stream.await.unwrap();
    if let Some(mut second) = fleet.coordinators[1].take() {
        second.kill_now();
        fleet.workers.retain(|(replica, _)| *replica == 0);
    }
    let quiet_by = Instant::now() + Duration::from_secs(300);
    loop {
        fleet.reap(&tally);
        if open_jobs(&pool).await == Some(0) {
            break;
        }
        if Instant::now() > quiet_by {
            let open: Vec<(String, String, String, String, i32, i32)> = sqlx::query_as(
                "SELECT j.kind, j.state, t.kind, t.state, t.attempt, t.unmet_deps FROM jobs j \
                 JOIN tasks t ON t.job_id = j.id \
                 WHERE j.state IN ('queued', 'running', 'cancelling') AND t.state <> 'succeeded'",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            let crashes = tally.crashes.lock().unwrap().clone();
            panic!("jobs still open long after the faults stopped: {open:?}; crashes: {crashes:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fleet.reap(&tally);
    let seconds = started.elapsed().as_secs_f64();
    drop(fleet);

    let figures = invariants(&pool, &accepted).await;
    let crashes = tally.crashes.lock().unwrap().clone();
    let report = serde_json::json!({
        "worker_kills": tally.worker_kills.load(Ordering::SeqCst),
        "coordinator_restarts": tally.coordinator_restarts.load(Ordering::SeqCst),
        "postgres_restarts": tally.postgres_restarts.load(Ordering::SeqCst),
        "store_faults": tally.store_faults.load(Ordering::SeqCst),
        "requests": accepted.len(),
        "lost": figures["lost"],
        "failed_requests": figures["failed"],
        "double_commits": figures["double_commits"],
        "hash_mismatches": figures["hash_mismatches"],
        "orphaned_leases": figures["orphaned_leases"],
        "chaos_crashes": crashes.len(),
        "chaos_seconds": seconds,
    });
    eprintln!("chaos: {report:#}");
    for crash in &crashes {
        eprintln!("crash: {crash}");
    }
    if let Ok(path) = std::env::var("LETHE_RELIABILITY_OUT") {
        reliability::merge_into(Path::new(&path), &report);
    }
    assert!(
        figures["lost"] == 0
            && figures["double_commits"] == 0
            && figures["hash_mismatches"] == 0
            && figures["orphaned_leases"] == 0
            && crashes.is_empty(),
        "harm under faults: {report:#}"
    );
}

async fn submit_registration(lethe: &mut LetheClient<Channel>, root: &Path, artifacts: &str) {
    submit_until_up(|| {
        let mut lethe = lethe.clone();
        async move {
            lethe
                .register_dataset(call(RegisterDatasetRequest {
                    dataset_id: "fmnist-tiny".into(),
                    uri: "builtin:fmnist-tiny".into(),
                    sha256: vec![],
                }))
                .await
                .map(|_| ())
        }
    })
    .await;
    for model in 0..MODELS {
        let path = root.join(format!("models/m{model}.safetensors"));
        let trained = Command::new(env!("CARGO_BIN_EXE_lethe-worker"))
            .args(["train", "--dataset", "fmnist-tiny", "--device", "cpu"])
            .args(["--seed", &model.to_string(), "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(trained.status.success(), "{trained:?}");
        let sha256 = Sha256::digest(std::fs::read(&path).unwrap()).to_vec();
        let request = RegisterModelRequest {
            model_id: format!("m{model}"),
            dataset: "datasets/fmnist-tiny".into(),
            uri: format!("{artifacts}/models/m{model}.safetensors"),
            sha256,
        };
        submit_until_up(|| {
            let (mut lethe, request) = (lethe.clone(), request.clone());
            async move { lethe.register_model(call(request)).await.map(|_| ()) }
        })
        .await;
    }
}

async fn submit_until_up<F, Fut>(mut register: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match register().await {
            Ok(()) => return,
            Err(status) if transient(&status) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(status) => panic!("registration failed: {status:?}"),
        }
    }
}

/// The promises, read back from the database and the store after quiescence.
async fn invariants(pool: &PgPool, accepted: &[String]) -> BTreeMap<&'static str, i64> {
    let mut figures = BTreeMap::new();
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|name| job_id(name)).collect();
    let states: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM jobs WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await
            .unwrap();
    let terminal = states
        .iter()
        .filter(|(_, state)| matches!(state.as_str(), "succeeded" | "failed" | "cancelled"))
        .count();
    figures.insert("lost", (ids.len() - terminal) as i64);
    let failed = states.iter().filter(|(_, state)| state == "failed").count();
    figures.insert("failed", failed as i64);
    if failed > 0 {
        let errors: Vec<Option<serde_json::Value>> = sqlx::query_scalar(
            "SELECT error FROM jobs WHERE id = ANY($1) AND state = 'failed' LIMIT 5",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await
        .unwrap();
        eprintln!("chaos: failed requests, e.g. {errors:?}");
    }
    let double: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT task_id FROM task_attempts WHERE outcome = 'succeeded' \
         GROUP BY task_id HAVING count(*) > 1) AS twice",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let versions_twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT run_id FROM model_versions WHERE run_id IS NOT NULL \
         GROUP BY run_id HAVING count(*) > 1) AS twice",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    figures.insert("double_commits", double + versions_twice);
    let objects: Vec<(String, Vec<u8>, i64)> =
        sqlx::query_as("SELECT uri, sha256, size_bytes FROM artifacts")
            .fetch_all(pool)
            .await
            .unwrap();
    let mismatches = objects
        .iter()
        .filter(|(uri, sha256, size)| {
            let path = uri.strip_prefix("file://").expect("a file:// artifact");
            match std::fs::read(path) {
                Ok(bytes) => {
                    bytes.len() as i64 != *size || Sha256::digest(&bytes).as_slice() != sha256
                }
                Err(_) => true,
            }
        })
        .count();
    eprintln!("chaos: {} committed artifacts re-hashed", objects.len());
    figures.insert("hash_mismatches", mismatches as i64);
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = 'leased'")
        .fetch_one(pool)
        .await
        .unwrap();
    figures.insert("orphaned_leases", leased);
    figures
}
