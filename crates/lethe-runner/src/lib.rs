//! The worker's side of the worker API. A [`Runner`] registers with the coordinator, long-polls
//! for tasks, runs each on a blocking thread with the [`TaskHandler`] for its kind, heartbeats
//! while it runs (progress out, cancellation in), and reports the end quoting its attempt. On
//! shutdown it stops taking work, lets running tasks finish within a grace period, and hands
//! back the rest. It links no ML code: `lethe-worker` plugs the ML task kinds in.

mod metrics;
mod noop;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_artifacts::{ArtifactStore, StoredObject};
use lethe_config::logging::{exported_traceparent, join_trace, TraceContext};
use lethe_proto::lethe::v1::task_report::Report;
use lethe_proto::lethe::v1::worker_service_client::WorkerServiceClient;
use lethe_proto::lethe::v1::{
    AcquireTaskRequest, Artifact, CompleteTaskRequest, Device, DrainWorkerRequest, ErrorClass,
    FailTaskRequest, GetTaskInputsRequest, HeartbeatRequest, LeasedTask, Progress,
    RegisterWorkerRequest, TaskReport,
};
use serde::de::DeserializeOwned;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;
use tracing::Instrument;

pub use metrics::WorkerMetrics;
pub use noop::NoopHandler;

/// How a task ended without success, as its handler reports it.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// May succeed on another try (I/O, memory).
    #[error("{0}")]
    Retryable(String),
    /// Will fail again (bad input).
    #[error("{0}")]
    Fatal(String),
    /// The handler saw the cancellation flag and stopped.
    #[error("cancelled")]
    Cancelled,
}

/// What a finished task hands back: objects it wrote (named) and the report of its kind.
#[derive(Debug)]
pub struct TaskOutput<R> {
    pub artifacts: Vec<(String, StoredObject)>,
    pub report: R,
}

impl<R> TaskOutput<R> {
    /// A report with no artifacts.
    pub fn report(report: R) -> Self {
        TaskOutput {
            artifacts: Vec::new(),
            report,
        }
    }
}

/// Everything a handler may use while it runs one attempt.
pub struct TaskContext {
    pub task_id: uuid::Uuid,
    pub attempt: i32,
    pub kind: String,
    pub tenant: String,
    pub artifacts: ArtifactStore,
    /// The committed artifacts of the tasks this one depends on, when its handler asks for
    /// them ([`TaskHandler::needs_inputs`]).
    pub inputs: Vec<TaskInput>,
    cancelled: Arc<AtomicBool>,
    progress: Arc<Mutex<(f64, String)>>,
}

impl TaskContext {
    /// Whether the task should stop now: its operation was cancelled, or this attempt lost its
    /// lease. Long handlers check it between steps.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Records progress; the next heartbeat carries it.
    pub fn report(&self, fraction: f64, message: impl Into<String>) {
        if let Ok(mut progress) = self.progress.lock() {
            *progress = (fraction.clamp(0.0, 1.0), message.into());
        }
    }

    /// The key this attempt writes `name` under.
    pub fn artifact_key(&self, name: &str) -> Result<String, TaskError> {
        ArtifactStore::attempt_key(self.task_id, self.attempt, name)
            .map_err(|e| TaskError::Fatal(e.to_string()))
    }
}

/// An artifact of a task that the running task depends on.
#[derive(Clone, Debug)]
pub struct TaskInput {
    pub task_id: uuid::Uuid,
    pub task_kind: String,
    pub task_spec: serde_json::Value,
    pub name: String,
    pub object: StoredObject,
}

/// Runs one kind of task. Called on a blocking thread, inside the runner's tokio runtime (so
/// `Handle::current().block_on` reaches the artifact store).
pub trait TaskHandler: Send + Sync {
    /// The task's parameters, as the coordinator's planner wrote them (`lethe_proto::tasks`).
    type Spec: DeserializeOwned;
    /// What it reports when it succeeds: the `TaskReport` of its kind.
    type Report: Into<Report>;

    fn run(
        &self,
        spec: Self::Spec,
        context: &TaskContext,
    ) -> Result<TaskOutput<Self::Report>, TaskError>;

    /// Whether the handler reads its dependencies' artifacts: the runner then fetches their
    /// list before it starts (one more call, which tasks without dependencies are spared).
    fn needs_inputs(&self) -> bool {
        false
    }
}

/// A handler of any spec and report type, as the runner keeps them by kind.
trait AnyHandler: Send + Sync {
    fn run_json(
        &self,
        spec: &str,
        context: &TaskContext,
    ) -> Result<TaskOutput<TaskReport>, TaskError>;
    fn needs_inputs(&self) -> bool;
}

impl<H: TaskHandler> AnyHandler for H {
    fn run_json(
        &self,
        spec: &str,
        context: &TaskContext,
    ) -> Result<TaskOutput<TaskReport>, TaskError> {
        let spec = serde_json::from_str(spec).map_err(|e| {
            TaskError::Fatal(format!(
                "the {} task's spec does not parse: {e}",
                context.kind
            ))
        })?;
        let output = self.run(spec, context)?;
        let report: Report = output.report.into();
        if report.task_kind() != context.kind {
            return Err(TaskError::Fatal(format!(
                "the {} handler wrote a {} report",
                context.kind,
                report.task_kind()
            )));
        }
        Ok(TaskOutput {
            artifacts: output.artifacts,
            report: TaskReport::of(report),
        })
    }

    fn needs_inputs(&self) -> bool {
        TaskHandler::needs_inputs(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("the coordinator refused: {0}")]
    Rpc(#[from] tonic::Status),
}

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub endpoint: String,
    pub name: String,
    pub device: Device,
    pub memory_bytes: u64,
    /// Tasks run at once.
    pub slots: u32,
    /// How long an idle long-poll waits.
    pub poll_wait: Duration,
    /// How long running tasks may take to finish after shutdown begins before they are handed
    /// back.
    pub drain_grace: Duration,
    /// The worker credential's token, sent with every call; `None` for coordinators that
    /// trust their network (`auth = "trusted-header"`).
    pub token: Option<String>,
    /// TLS to the coordinator (an https:// endpoint), with a client certificate for mutual TLS.
    pub tls: Option<ClientTlsConfig>,
}

/// The worker API client, with the worker's token on every call.
type WorkerClient = WorkerServiceClient<InterceptedService<Channel, CallMetadata>>;

/// Adds `authorization: Bearer <token>` to each call and, where spans are exported, the
/// `traceparent` of the task span the call is made in (so the coordinator's handling of a
/// heartbeat or a completion is part of the request's trace).
#[derive(Clone)]
struct CallMetadata(Option<MetadataValue<Ascii>>);

impl Interceptor for CallMetadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let traceparent = exported_traceparent(&tracing::Span::current())
            .and_then(|traceparent| traceparent.parse().ok());
        if let Some(traceparent) = traceparent {
            request.metadata_mut().insert("traceparent", traceparent);
        }
        Ok(request)
    }
}

/// What a runner did, for its exit summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Attempts whose lease was taken over (their result was dropped).
    pub fenced: u64,
    pub handed_back: u64,
}

pub struct Runner {
    config: RunnerConfig,
    artifacts: ArtifactStore,
    handlers: HashMap<String, Arc<dyn AnyHandler>>,
    metrics: Arc<WorkerMetrics>,
}

impl Runner {
    pub fn new(config: RunnerConfig, artifacts: ArtifactStore) -> Self {
        let device = match config.device {
            Device::Cuda => "cuda",
            _ => "cpu",
        };
        let metrics = Arc::new(WorkerMetrics::new(device, config.slots.max(1)));
        let mut runner = Self {
            config,
            artifacts,
            handlers: HashMap::new(),
            metrics,
        };
        runner.handle("noop", NoopHandler);
        runner
    }

    /// What this runner has done, for a metrics endpoint; valid before and during `run`.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }

    pub fn handle(&mut self, kind: &str, handler: impl TaskHandler + 'static) {
        self.handlers.insert(kind.to_string(), Arc::new(handler));
    }

    /// Registers and works until `shutdown` completes, then drains.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunSummary, RunnerError> {
        let bad = |what: &str| RunnerError::Rpc(tonic::Status::invalid_argument(what.to_string()));
        let mut endpoint = Channel::from_shared(self.config.endpoint.clone())
            .map_err(|_| bad("bad coordinator endpoint"))?;
        if let Some(tls) = self.config.tls.clone() {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| bad(&format!("TLS settings: {e}")))?;
        }
        let token = match &self.config.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| bad("the token is not printable ASCII"))?,
            ),
            None => None,
        };
        let mut client =
            WorkerServiceClient::with_interceptor(endpoint.connect_lazy(), CallMetadata(token));
        let request = RegisterWorkerRequest {
            name: self.config.name.clone(),
            device: self.config.device as i32,
            memory_bytes: self.config.memory_bytes,
            slots: self.config.slots.max(1),
            version: env!("CARGO_PKG_VERSION").into(),
            kinds: self.handlers.keys().cloned().collect(),
        };
        tokio::pin!(shutdown);
        // A coordinator that is not up yet (or restarting) is waited for, as a supervisor
        // would otherwise have to restart the worker until it is.
        let mut backoff = Duration::from_millis(200);
        let registered = loop {
            match client.register_worker(request.clone()).await {
                Ok(answer) => break answer.into_inner(),
                Err(status) if is_transient(&status) => {
                    tracing::warn!(endpoint = %self.config.endpoint, error = %status, "coordinator unreachable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut shutdown => return Ok(RunSummary::default()),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(status) => return Err(status.into()),
            }
        };
        let heartbeat = registered
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(10));
        tracing::info!(worker = %registered.worker_id, "registered");
        let shared = Arc::new(Shared {
            client,
            worker_id: registered.worker_id.clone(),
            heartbeat,
            artifacts: self.artifacts,
            handlers: self.handlers,
            poll_wait: self.config.poll_wait,
            stopping: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            summary: Mutex::new(RunSummary::default()),
            metrics: self.metrics,
        });

        let slots: Vec<_> = (0..self.config.slots.max(1))
            .map(|_| tokio::spawn(shared.clone().slot()))
            .collect();
        shutdown.await;
        tracing::info!("draining: no new tasks; waiting for running ones");
        shared.stopping.store(true, Ordering::SeqCst);
        shared.stop.notify_waiters();
        let all = futures_join(slots);
        let _ = tokio::time::timeout(self.config.drain_grace, all).await;
        // Whatever this worker still holds now is handed back: tasks that outran the grace
        // period, and a task a long-poll claimed just as shutdown dropped it.
        let mut client = shared.client.clone();
        let drained = client
            .drain_worker(DrainWorkerRequest {
                worker_id: shared.worker_id.clone(),
                hand_back: true,
            })
            .await?
            .into_inner();
        let mut summary = *shared.summary.lock().expect("summary lock");
        summary.handed_back = u64::from(drained.tasks_handed_back);
        Ok(summary)
    }
}

/// The longest wait between retries of a call to the coordinator.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Whether a failed call may succeed if repeated: the coordinator or the network was
/// unavailable, rather than the coordinator refusing it.
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
    )
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

struct Shared {
    client: WorkerClient,
    worker_id: String,
    heartbeat: Duration,
    artifacts: ArtifactStore,
    handlers: HashMap<String, Arc<dyn AnyHandler>>,
    poll_wait: Duration,
    stopping: AtomicBool,
    /// Wakes slots waiting in a long-poll when shutdown begins.
    stop: tokio::sync::Notify,
    summary: Mutex<RunSummary>,
    metrics: Arc<WorkerMetrics>,
}

impl Shared {
    /// One slot: acquire, run, report, and take the next task with the report.
    async fn slot(self: Arc<Self>) {
        let mut next: Option<LeasedTask> = None;
        let mut backoff = Duration::from_millis(200);
        while !self.stopping.load(Ordering::SeqCst) {
            let task = match next.take() {
                Some(task) => task,
                None => match tokio::select! {
                    acquired = self.acquire() => acquired,
                    _ = self.stop.notified() => break,
                } {
                    Ok(Some(task)) => task,
                    Ok(None) => continue,
                    Err(status) => {
                        tracing::warn!(error = %status, "acquiring a task failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            backoff = Duration::from_millis(200);
            next = self.run_task(task).await;
        }
    }

    async fn acquire(&self) -> Result<Option<LeasedTask>, tonic::Status> {
        let wait = prost_types::Duration::try_from(self.poll_wait).unwrap_or_default();
        let request = AcquireTaskRequest {
            worker_id: self.worker_id.clone(),
            wait: Some(wait),
        };
        Ok(self
            .client
            .clone()
            .acquire_task(request)
            .await?
            .into_inner()
            .task)
    }

    /// Runs one attempt to its end and reports it, in a span of the trace of the request it
    /// serves; returns the next task if the coordinator handed one back with the completion.
    async fn run_task(self: &Arc<Self>, task: LeasedTask) -> Option<LeasedTask> {
        let span = tracing::info_span!(
            "task",
            otel.name = %task.kind,
            otel.kind = "consumer",
            task_id = %task.task_id,
            kind = %task.kind,
            attempt = task.attempt,
            operation = %task.operation,
            trace_id = tracing::field::Empty,
        );
        join_trace(&span, TraceContext::parse(&task.traceparent).as_ref());
        self.run_attempt(task).instrument(span).await
    }

    async fn run_attempt(self: &Arc<Self>, task: LeasedTask) -> Option<LeasedTask> {
        tracing::info!("running");
        let Some(handler) = self.handlers.get(&task.kind).cloned() else {
            let message = format!("this worker runs no task of kind {:?}", task.kind);
            self.fail(&task, ErrorClass::Fatal, message).await;
            return None;
        };
        let Ok(task_id) = uuid::Uuid::parse_str(&task.task_id) else {
            self.fail(&task, ErrorClass::Fatal, "task id is not a UUID".into())
                .await;
            return None;
        };
        let inputs = if handler.needs_inputs() {
            match self.inputs(&task).await {
                Ok(inputs) => inputs,
                Err(status) if status.code() == Code::Aborted => {
                    self.count(|s| s.fenced += 1);
                    return None;
                }
                Err(status) => {
                    let message = format!("reading the task's inputs: {}", status.message());
                    self.fail(&task, ErrorClass::Retryable, message).await;
                    return None;
                }
            }
        } else {
            Vec::new()
        };
        let context = TaskContext {
            inputs,
            task_id,
            attempt: task.attempt,
            kind: task.kind.clone(),
            tenant: task.tenant.clone(),
            artifacts: self.artifacts.clone(),
            cancelled: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Mutex::new((0.0, String::new()))),
        };
        let (cancelled, progress) = (context.cancelled.clone(), context.progress.clone());
        let fenced = Arc::new(AtomicBool::new(false));
        let beats = tokio::spawn(self.clone().heartbeats(
            task.clone(),
            cancelled,
            progress,
            fenced.clone(),
        ));
        self.metrics.started();
        let started = std::time::Instant::now();
        let span = tracing::Span::current();
        let spec = task.spec_json.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            span.in_scope(|| handler.run_json(&spec, &context))
        })
        .await;
        beats.abort();
        let ended = match &outcome {
            _ if fenced.load(Ordering::SeqCst) => "fenced",
            Ok(Ok(_)) => "succeeded",
            Ok(Err(TaskError::Cancelled)) => "cancelled",
            Ok(Err(TaskError::Fatal(_))) => "fatal",
            Ok(Err(TaskError::Retryable(_))) | Err(_) => "retryable",
        };
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(outcome = ended, seconds, "ended");
        self.metrics
            .finished(&task.kind, &task.tenant, ended, seconds);
        if fenced.load(Ordering::SeqCst) {
            tracing::warn!(task = %task.task_id, attempt = task.attempt, "lease lost; result dropped");
            self.count(|s| s.fenced += 1);
            self.discard(task_id, task.attempt).await;
            return None;
        }
        match outcome {
            Ok(Ok(output)) => {
                let next = self.complete(&task, output).await;
                if next.is_err() {
                    self.discard(task_id, task.attempt).await;
                }
                next.unwrap_or(None)
            }
            Ok(Err(TaskError::Cancelled)) => {
                self.fail(
                    &task,
                    ErrorClass::Cancelled,
                    "stopped on cancellation".into(),
                )
                .await;
                None
            }
            Ok(Err(TaskError::Retryable(message))) => {
                self.fail(&task, ErrorClass::Retryable, message).await;
                None
            }
            Ok(Err(TaskError::Fatal(message))) => {
                self.fail(&task, ErrorClass::Fatal, message).await;
                None
            }
            Err(panic) => {
                // A handler bug must not take the worker down; the task may fare better on
                // another try.
                self.fail(
                    &task,
                    ErrorClass::Retryable,
                    format!("the handler panicked: {panic}"),
                )
                .await;
                None
            }
        }
    }

    async fn inputs(&self, task: &LeasedTask) -> Result<Vec<TaskInput>, tonic::Status> {
        let answer = self
            .client
            .clone()
            .get_task_inputs(GetTaskInputsRequest {
                worker_id: self.worker_id.clone(),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
            })
            .await?
            .into_inner();
        answer
            .inputs
            .into_iter()
            .map(|input| {
                let bad = |what: &str| tonic::Status::internal(format!("task input: {what}"));
                let artifact = input.artifact.ok_or_else(|| bad("no artifact"))?;
                Ok(TaskInput {
                    task_id: uuid::Uuid::parse_str(&input.task_id).map_err(|_| bad("task id"))?,
                    task_kind: input.task_kind,
                    task_spec: serde_json::from_str(&input.task_spec_json)
                        .map_err(|_| bad("spec"))?,
                    name: artifact.name,
                    object: StoredObject {
                        uri: artifact.uri,
                        sha256: artifact
                            .sha256
                            .try_into()
                            .map_err(|_| bad("sha256 is not 32 bytes"))?,
                        size: artifact.size_bytes,
                    },
                })
            })
            .collect()
    }

    /// Heartbeats until aborted: carries progress, raises the cancellation flag when the
    /// coordinator asks, and marks the attempt fenced if its lease was taken over.
    async fn heartbeats(
        self: Arc<Self>,
        task: LeasedTask,
        cancelled: Arc<AtomicBool>,
        progress: Arc<Mutex<(f64, String)>>,
        fenced: Arc<AtomicBool>,
    ) {
        let mut client = self.client.clone();
        loop {
            tokio::time::sleep(self.heartbeat).await;
            let (fraction, message) = progress.lock().map(|p| p.clone()).unwrap_or_default();
            let request = HeartbeatRequest {
                worker_id: self.worker_id.clone(),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                progress: Some(Progress { fraction, message }),
            };
            match client.heartbeat(request).await {
                Ok(answer) if answer.get_ref().cancel_requested => {
                    cancelled.store(true, Ordering::SeqCst)
                }
                Ok(_) => {}
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Aborted | Code::NotFound | Code::FailedPrecondition
                    ) =>
                {
                    fenced.store(true, Ordering::SeqCst);
                    cancelled.store(true, Ordering::SeqCst);
                    return;
                }
                // The coordinator may be restarting: keep trying until the lease would lapse.
                Err(status) => tracing::warn!(error = %status, "heartbeat failed"),
            }
        }
    }

    /// Commits an attempt; `Err` when the coordinator refused it (its objects are then nobody's).
    async fn complete(
        &self,
        task: &LeasedTask,
        output: TaskOutput<TaskReport>,
    ) -> Result<Option<LeasedTask>, ()> {
        let request = CompleteTaskRequest {
            worker_id: self.worker_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            artifacts: output
                .artifacts
                .into_iter()
                .map(|(name, object)| Artifact {
                    name,
                    uri: object.uri,
                    sha256: object.sha256.to_vec(),
                    size_bytes: object.size,
                })
                .collect(),
            report: Some(output.report),
            acquire_next: !self.stopping.load(Ordering::SeqCst),
        };
        // A completion whose answer is lost may have committed. Replaying it is safe (the
        // coordinator answers a committed replay with success), so transient failures are
        // retried for about a lease; only a definite refusal lets the caller delete the
        // attempt's objects.
        let mut backoff = Duration::from_millis(200);
        let mut waited = Duration::ZERO;
        loop {
            match self.client.clone().complete_task(request.clone()).await {
                Ok(answer) => {
                    self.count(|s| s.completed += 1);
                    return Ok(answer.into_inner().next_task);
                }
                Err(status) if is_transient(&status) && waited < self.heartbeat * 3 => {
                    tracing::warn!(task = %task.task_id, error = %status, "completion not delivered; retrying");
                    tokio::time::sleep(backoff).await;
                    waited += backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(status) if is_transient(&status) => {
                    // Unknown whether it committed: keep the objects (a leftover is only waste).
                    tracing::warn!(task = %task.task_id, error = %status, "completion undelivered; giving up, objects kept");
                    self.count(|s| s.fenced += 1);
                    return Ok(None);
                }
                Err(status) => {
                    tracing::warn!(task = %task.task_id, error = %status, "completion refused");
                    self.count(|s| s.fenced += 1);
                    return Err(());
                }
            }
        }
    }

    /// Removes what an attempt wrote when its result will never be committed, so that lost
    /// attempts leave no orphaned objects. Best effort: a leftover is harmless, only wasteful.
    async fn discard(&self, task: uuid::Uuid, attempt: i32) {
        if let Err(e) = self.artifacts.delete_attempt(task, attempt).await {
            tracing::warn!(task = %task, attempt, error = %e, "could not remove a lost attempt's objects");
        }
    }

    async fn fail(&self, task: &LeasedTask, class: ErrorClass, message: String) {
        let request = FailTaskRequest {
            worker_id: self.worker_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            class: class as i32,
            message,
        };
        match self.client.clone().fail_task(request).await {
            Ok(_) if class == ErrorClass::Cancelled => self.count(|s| s.cancelled += 1),
            Ok(_) => self.count(|s| s.failed += 1),
            Err(status) => {
                tracing::warn!(task = %task.task_id, error = %status, "failure report refused")
            }
        }
        // Whatever this attempt wrote will not be committed.
        if let Ok(id) = uuid::Uuid::parse_str(&task.task_id) {
            self.discard(id, task.attempt).await;
        }
    }

    fn count(&self, update: impl FnOnce(&mut RunSummary)) {
        if let Ok(mut summary) = self.summary.lock() {
            update(&mut summary);
        }
    }
}
