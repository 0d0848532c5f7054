//! The coordinator over real gRPC on loopback, against a real PostgreSQL cluster: the worker
//! protocol, operations (Get, List, Cancel, Wait, Watch), errors and their codes, health and
//! reflection.

use std::time::Duration;

use futures::StreamExt;
use lethe_coordinator::{operation_name, CoordinatorConfig};
use lethe_proto::failures;
use lethe_proto::google::longrunning::operations_client::OperationsClient;
use lethe_proto::google::longrunning::{
    operation, CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
    WaitOperationRequest,
};
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::worker_service_client::WorkerServiceClient;
use lethe_proto::lethe::v1::{
    AcquireTaskRequest, Artifact, CompleteTaskRequest, Device, DrainWorkerRequest, ErrorClass,
    FailTaskRequest, HeartbeatRequest, LeasedTask, NoopReport, NoopResult, OperationState,
    Progress, RegisterWorkerRequest, TaskReport, WatchOperationRequest,
};
use lethe_proto::lethe::v1::{
    AuditFigures, AuditReport, CreateDeletionRequestRequest, CreateIndexBuildRequest,
    CreateNoopOperationRequest, DeletionMethod, DeletionResult, FailureReason, IndexBuildResult,
    IndexEstimator, IndexReport, KlomStats, MatchReport, PredictReport, RegisterDatasetRequest,
    RegisterModelRequest, RetrainReport, SplitAudit,
};
use lethe_store::StoreConfig;
use lethe_testkit::{as_tenant, metadata, response, scrape, with_token, Stack};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

/// A stack as these tests want it: maintenance and long-poll re-reads often, so that reaped
/// leases and woken waits come quickly.
async fn stack_configured(store_config: StoreConfig, config: CoordinatorConfig) -> Stack {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        ..config
    };
    Stack::builder()
        .database("g")
        .store(store_config)
        .coordinator(config)
        .start()
        .await
}

async fn stack_with(store_config: StoreConfig) -> Stack {
    stack_configured(store_config, CoordinatorConfig::default()).await
}

async fn stack() -> Stack {
    stack_with(StoreConfig::default()).await
}

/// The specs of `count` noop tasks, each told apart by its index.
fn tasks(count: usize) -> impl Iterator<Item = serde_json::Value> {
    (0..count).map(|i| json!({ "i": i }))
}

/// Calls of the worker API, as a worker of these tests makes them.
trait WorkerCalls {
    fn workers(&self) -> WorkerServiceClient<Channel>;
    fn operations(&self) -> OperationsClient<Channel>;
    async fn register(&self, name: &str) -> String;
    async fn acquire(&self, worker: &str, wait: Duration) -> Option<LeasedTask>;
}

impl WorkerCalls for Stack {
    fn workers(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel.clone())
    }

    fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel.clone())
    }

    async fn register(&self, name: &str) -> String {
        let request = RegisterWorkerRequest {
            name: name.into(),
            device: Device::Cpu as i32,
            memory_bytes: 1 << 34,
            slots: 1,
            version: "test".into(),
            ..Default::default()
        };
        self.workers()
            .register_worker(request)
            .await
            .unwrap()
            .into_inner()
            .worker_id
    }

    async fn acquire(&self, worker: &str, wait: Duration) -> Option<LeasedTask> {
        let request = AcquireTaskRequest {
            worker_id: worker.into(),
            wait: Some(wait.try_into().unwrap()),
        };
        self.workers()
            .acquire_task(request)
            .await
            .unwrap()
            .into_inner()
            .task
    }
}

fn complete(worker: &str, task: &LeasedTask, report: Option<TaskReport>) -> CompleteTaskRequest {
    CompleteTaskRequest {
        worker_id: worker.into(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        artifacts: vec![Artifact {
            name: "out".into(),
            uri: format!(
                "file:///artifacts/tasks/{}/attempts/{}/out",
                task.task_id, task.attempt
            ),
            sha256: vec![1; 32],
            size_bytes: 10,
        }],
        report,
        acquire_next: false,
    }
}

#[tokio::test]
async fn a_worker_long_polls_runs_and_completes_while_a_client_watches() {
    let stack = stack().await;
    let worker = stack.register("w1").await;
    // The long-poll starts before any work exists and is woken when it appears.
    let poll = {
        let (workers, worker) = (stack.workers(), worker.clone());
        tokio::spawn(async move {
            let mut workers = workers;
            let request = AcquireTaskRequest {
                worker_id: worker,
                wait: Some(Duration::from_secs(20).try_into().unwrap()),
            };
            workers
                .acquire_task(request)
                .await
                .unwrap()
                .into_inner()
                .task
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = stack.noop_job("acme", tasks(1)).await;
    let name = operation_name(job);
    let mut watch = LetheClient::new(stack.channel.clone())
        .watch_operation(as_tenant(
            "acme",
            WatchOperationRequest { name: name.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    let task = poll.await.unwrap().expect("the long-poll got the task");
    assert_eq!(
        (task.operation.as_str(), task.tenant.as_str(), task.attempt),
        (name.as_str(), "acme", 1)
    );

    let beat = HeartbeatRequest {
        worker_id: worker.clone(),
        task_id: task.task_id.clone(),
        attempt: 1,
        progress: Some(Progress {
            fraction: 0.5,
            message: "halfway".into(),
        }),
    };
    let renewal = stack.workers().heartbeat(beat).await.unwrap().into_inner();
    assert!(!renewal.cancel_requested);
    let running = stack
        .operations()
        .get_operation(as_tenant(
            "acme",
            GetOperationRequest { name: name.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!running.done);
    assert_eq!(metadata(&running).progress, 0.5);

    let done = stack
        .workers()
        .complete_task(complete(
            &worker,
            &task,
            Some(TaskReport::of(NoopReport { seconds: 0.5 })),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(done.operation_done);

    let waited = stack
        .operations()
        .wait_operation(as_tenant(
            "acme",
            WaitOperationRequest {
                name: name.clone(),
                timeout: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(waited.done);
    let Some(operation::Result::Response(response)) = &waited.result else {
        panic!("{waited:?}")
    };
    assert_eq!(
        response.to_msg::<NoopResult>().unwrap(),
        NoopResult {
            tasks: 1,
            artifact_bytes: 10
        },
        "the response is the noop kind's result, from its task's artifact"
    );

    // The watch saw the operation change and ended with it.
    let mut states = Vec::new();
    while let Some(update) = watch.next().await {
        states.push(OperationState::try_from(metadata(&update.unwrap()).state).unwrap());
    }
    assert_eq!(states.last(), Some(&OperationState::Succeeded));
    assert!(states.len() >= 2, "{states:?}");
}

#[tokio::test]
async fn a_stale_worker_is_fenced_out_with_aborted() {
    let stack = stack_with(StoreConfig {
        lease: Duration::from_millis(400),
        ..StoreConfig::default()
    })
    .await;
    let (stale, fresh) = (stack.register("stale").await, stack.register("fresh").await);
    stack.noop_job("acme", tasks(1)).await;
    let first = stack.acquire(&stale, Duration::ZERO).await.unwrap();
    // No heartbeat: the coordinator's maintenance loop reaps the lease, and the task goes to
    // the next worker that asks, under a new attempt.
    let second = stack
        .acquire(&fresh, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (second.task_id.as_str(), second.attempt),
        (first.task_id.as_str(), 2)
    );
    let refused = stack
        .workers()
        .complete_task(complete(&stale, &first, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    let info = refused.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "LEASE_FENCED");
    assert_eq!(info.metadata["current_attempt"], "2");
    stack
        .workers()
        .complete_task(complete(&fresh, &second, None))
        .await
        .unwrap();
}

#[tokio::test]
async fn cancellation_reaches_a_running_task_through_its_heartbeat() {
    let stack = stack().await;
    let worker = stack.register("w").await;
    let job = stack.noop_job("acme", tasks(2)).await;
    let name = operation_name(job);
    let task = stack.acquire(&worker, Duration::ZERO).await.unwrap();
    stack
        .operations()
        .cancel_operation(as_tenant(
            "acme",
            CancelOperationRequest { name: name.clone() },
        ))
        .await
        .unwrap();
    let get = || as_tenant("acme", GetOperationRequest { name: name.clone() });
    let cancelling = stack
        .operations()
        .get_operation(get())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        metadata(&cancelling).state,
        OperationState::Cancelling as i32
    );

    let beat = HeartbeatRequest {
        worker_id: worker.clone(),
        task_id: task.task_id.clone(),
        attempt: 1,
        progress: None,
    };
    assert!(
        stack
            .workers()
            .heartbeat(beat)
            .await
            .unwrap()
            .into_inner()
            .cancel_requested
    );
    let stop = FailTaskRequest {
        worker_id: worker.clone(),
        task_id: task.task_id.clone(),
        attempt: 1,
        class: ErrorClass::Cancelled as i32,
        message: "stopped".into(),
    };
    stack.workers().fail_task(stop).await.unwrap();
    let cancelled = stack
        .operations()
        .get_operation(get())
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.done);
    let Some(operation::Result::Error(status)) = cancelled.result else {
        panic!()
    };
    assert_eq!(status.code, Code::Cancelled as i32);
    assert!(
        stack.acquire(&worker, Duration::ZERO).await.is_none(),
        "the queued task was cancelled too"
    );
}

#[tokio::test]
async fn operations_list_in_pages_per_tenant_and_refuse_bad_requests() {
    let stack = stack().await;
    for _ in 0..7 {
        stack.noop_job("acme", tasks(1)).await;
    }
    let other = stack.noop_job("globex", tasks(1)).await;
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = ListOperationsRequest {
            page_size: 3,
            page_token: token.clone(),
            filter: "kind=noop".into(),
            ..Default::default()
        };
        let page = stack
            .operations()
            .list_operations(as_tenant("acme", request))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        names.extend(page.operations.into_iter().map(|o| o.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((pages, names.len()), (3, 7));
    assert!(!names.contains(&operation_name(other)));

    let mut ops = stack.operations();
    let code = |r: Result<tonic::Response<Operation>, tonic::Status>| r.unwrap_err().code();
    // Another tenant's operation does not exist for this one.
    assert_eq!(
        code(
            ops.get_operation(as_tenant(
                "acme",
                GetOperationRequest {
                    name: operation_name(other)
                }
            ))
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            ops.get_operation(as_tenant(
                "acme",
                GetOperationRequest {
                    name: "jobs/1".into()
                }
            ))
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ops.get_operation(as_tenant(
                "bad tenant!",
                GetOperationRequest {
                    name: operation_name(other)
                }
            ))
            .await
        ),
        Code::InvalidArgument
    );
    let with_token = ListOperationsRequest {
        page_size: 3,
        page_token: "00".into(),
        ..Default::default()
    };
    assert_eq!(
        ops.list_operations(as_tenant("acme", with_token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let filter = ListOperationsRequest {
        filter: "owner=me".into(),
        ..Default::default()
    };
    assert_eq!(
        ops.list_operations(as_tenant("acme", filter))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let mut workers = stack.workers();
    let unknown = AcquireTaskRequest {
        worker_id: Uuid::now_v7().to_string(),
        wait: None,
    };
    assert_eq!(
        workers.acquire_task(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let garbage = AcquireTaskRequest {
        worker_id: "not-a-uuid".into(),
        wait: None,
    };
    assert_eq!(
        workers.acquire_task(garbage).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let no_device = RegisterWorkerRequest {
        name: "w".into(),
        slots: 1,
        ..Default::default()
    };
    assert_eq!(
        workers.register_worker(no_device).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let worker = stack.register("w").await;
    let task = stack.acquire(&worker, Duration::ZERO).await.unwrap();
    let mut short_hash = complete(&worker, &task, None);
    short_hash.artifacts[0].sha256 = vec![0; 5];
    assert_eq!(
        workers.complete_task(short_hash).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut foreign_uri = complete(&worker, &task, None);
    foreign_uri.artifacts[0].uri = "file:///artifacts/tasks/other/attempts/1/out".into();
    assert_eq!(
        workers.complete_task(foreign_uri).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let empty_report = complete(&worker, &task, Some(TaskReport::default()));
    assert_eq!(
        workers
            .complete_task(empty_report)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let unspecified = FailTaskRequest {
        worker_id: worker.clone(),
        task_id: task.task_id.clone(),
        attempt: 1,
        class: 0,
        message: String::new(),
    };
    assert_eq!(
        workers.fail_task(unspecified).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // None of that touched the lease.
    workers
        .complete_task(complete(&worker, &task, None))
        .await
        .unwrap();

    // A draining worker is told so instead of waiting for work it will never get.
    workers
        .drain_worker(DrainWorkerRequest {
            worker_id: worker.clone(),
            hand_back: true,
        })
        .await
        .unwrap();
    let drained = AcquireTaskRequest {
        worker_id: worker,
        wait: None,
    };
    assert_eq!(
        workers.acquire_task(drained).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let stack = stack().await;
    let mut health = HealthClient::new(stack.channel.clone());
    for service in [
        "",
        "lethe.v1.WorkerService",
        "google.longrunning.Operations",
        "lethe.v1.Lethe",
    ] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut reflection = ServerReflectionClient::new(stack.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!()
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "lethe.v1.WorkerService",
        "google.longrunning.Operations",
        "lethe.v1.Lethe",
    ] {
        assert!(services.iter().any(|s| s == expected), "{services:?}");
    }
    stack.coordinator.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_busy_worker_gets_its_next_task_with_each_completion() {
    let stack = stack().await;
    let worker = stack.register("busy").await;
    let job = stack.noop_job("acme", tasks(3)).await;
    let mut task = stack.acquire(&worker, Duration::ZERO).await.unwrap();
    let mut completed = 1;
    loop {
        let mut request = complete(&worker, &task, None);
        request.acquire_next = true;
        let answer = stack
            .workers()
            .complete_task(request)
            .await
            .unwrap()
            .into_inner();
        match answer.next_task {
            Some(next) => {
                assert_ne!(next.task_id, task.task_id);
                assert!(!answer.operation_done);
                task = next;
                completed += 1;
            }
            None => {
                assert!(
                    answer.operation_done,
                    "the last completion finishes the operation"
                );
                break;
            }
        }
    }
    assert_eq!(completed, 3);
    let name = operation_name(job);
    let done = stack
        .operations()
        .get_operation(as_tenant("acme", GetOperationRequest { name }))
        .await
        .unwrap()
        .into_inner();
    assert!(done.done);
}

#[tokio::test]
async fn create_is_idempotent_over_grpc_and_validates_its_input() {
    let stack = stack().await;
    let mut api = LetheClient::new(stack.channel.clone());
    let request = CreateNoopOperationRequest {
        request_id: "smoke-1".into(),
        tasks: 3,
        task_seconds: 0.0,
        artifact_bytes: 0,
        priority: 0,
    };
    let first = api
        .create_noop_operation(as_tenant("acme", request.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = api
        .create_noop_operation(as_tenant("acme", request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.name, again.name);
    assert_eq!(metadata(&first).tasks.unwrap().total, 3);
    let different = CreateNoopOperationRequest {
        tasks: 4,
        ..request.clone()
    };
    let refused = api
        .create_noop_operation(as_tenant("acme", different))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    let theirs = api
        .create_noop_operation(as_tenant("globex", request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(theirs.name, first.name, "idempotency keys are per tenant");
    for bad in [
        CreateNoopOperationRequest {
            tasks: 0,
            ..request.clone()
        },
        CreateNoopOperationRequest {
            tasks: 1001,
            ..request.clone()
        },
        CreateNoopOperationRequest {
            task_seconds: -1.0,
            ..request.clone()
        },
        CreateNoopOperationRequest {
            task_seconds: f64::NAN,
            ..request.clone()
        },
        CreateNoopOperationRequest {
            priority: 1000,
            ..request.clone()
        },
        CreateNoopOperationRequest {
            request_id: "x".repeat(300),
            ..request.clone()
        },
    ] {
        let status = api
            .create_noop_operation(as_tenant("acme", bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    let listed = stack
        .operations()
        .list_operations(as_tenant("acme", ListOperationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operations.len(), 1, "refused requests wrote nothing");
}

#[tokio::test]
async fn a_worker_token_acts_only_for_the_workers_it_registered() {
    use lethe_coordinator::AuthMode;
    use lethe_store::CredentialKind;
    let config = CoordinatorConfig {
        auth: AuthMode::Tokens,
        ..CoordinatorConfig::default()
    };
    let stack = stack_configured(StoreConfig::default(), config).await;
    let mut tokens = Vec::new();
    for name in ["rack-1", "rack-2"] {
        let issued = stack
            .store
            .create_credential(CredentialKind::Worker, None, name, "test")
            .await
            .unwrap();
        tokens.push(issued.token);
    }
    let mut workers = stack.workers();
    let registration = RegisterWorkerRequest {
        name: "gpu-0".into(),
        device: Device::Cpu as i32,
        memory_bytes: 1 << 34,
        slots: 1,
        version: "test".into(),
        ..Default::default()
    };
    let mine = workers
        .register_worker(with_token(&tokens[0], registration))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    stack.noop_job("acme", tasks(1)).await;
    let acquire = || AcquireTaskRequest {
        worker_id: mine.clone(),
        wait: None,
    };

    // The other token may neither take work as this worker nor touch its lease.
    let taken = workers
        .acquire_task(with_token(&tokens[1], acquire()))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::PermissionDenied, "{taken:?}");
    let info = taken.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "WORKER_TOKEN_MISMATCH");
    let task = workers
        .acquire_task(with_token(&tokens[0], acquire()))
        .await
        .unwrap()
        .into_inner()
        .task
        .expect("the worker's own token takes the task");
    let heartbeat = HeartbeatRequest {
        worker_id: mine.clone(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        progress: None,
    };
    let failure = FailTaskRequest {
        worker_id: mine.clone(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        class: ErrorClass::Fatal as i32,
        message: "sabotage".into(),
    };
    let refusals = [
        workers
            .heartbeat(with_token(&tokens[1], heartbeat.clone()))
            .await
            .unwrap_err(),
        workers
            .fail_task(with_token(&tokens[1], failure))
            .await
            .unwrap_err(),
        workers
            .complete_task(with_token(&tokens[1], complete(&mine, &task, None)))
            .await
            .unwrap_err(),
        workers
            .drain_worker(with_token(
                &tokens[1],
                DrainWorkerRequest {
                    worker_id: mine.clone(),
                    hand_back: true,
                },
            ))
            .await
            .unwrap_err(),
    ];
    for refused in &refusals {
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    workers
        .heartbeat(with_token(&tokens[0], heartbeat))
        .await
        .unwrap();
    workers
        .complete_task(with_token(&tokens[0], complete(&mine, &task, None)))
        .await
        .expect("the lease survived the other token's calls");

    let denied: Vec<String> = stack
        .store
        .audit_log(None, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|line| line.entry.outcome == lethe_store::AuditOutcome::Denied)
        .map(|line| {
            format!(
                "{} {} {}",
                line.entry.actor, line.entry.action, line.entry.resource
            )
        })
        .collect();
    let worker = format!("workers/{mine}");
    assert_eq!(
        denied,
        [
            "task.acquire",
            "task.heartbeat",
            "task.fail",
            "task.complete",
            "worker.drain"
        ]
        .map(|action| format!("rack-2 {action} {worker}"))
    );
}

#[tokio::test]
async fn registrations_outside_the_tenants_prefixes_are_refused_and_audited() {
    use lethe_proto::lethe::v1::{GetDatasetRequest, RegisterDatasetRequest, RegisterModelRequest};
    let config = CoordinatorConfig {
        registration_url_prefixes: vec!["s3://lethe-data/{tenant}/".into()],
        ..CoordinatorConfig::default()
    };
    let stack = stack_configured(StoreConfig::default(), config).await;
    let mut api = LetheClient::new(stack.channel.clone());
    let dataset = |id: &str, uri: &str| RegisterDatasetRequest {
        dataset_id: id.into(),
        uri: uri.into(),
        sha256: vec![],
    };
    api.register_dataset(as_tenant(
        "acme",
        dataset("mine", "s3://lethe-data/acme/fmnist.safetensors"),
    ))
    .await
    .unwrap();
    api.register_dataset(as_tenant(
        "acme",
        dataset("embedded", "builtin:fmnist-tiny"),
    ))
    .await
    .unwrap();

    let theirs = api
        .register_dataset(as_tenant(
            "acme",
            dataset("theirs", "s3://lethe-data/globex/fmnist.safetensors"),
        ))
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::PermissionDenied, "{theirs:?}");
    let info = theirs.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "URI_NOT_ALLOWED");
    assert_eq!(info.metadata["allowed_prefixes"], "s3://lethe-data/acme/");
    let artifacts = api
        .register_model(as_tenant(
            "acme",
            RegisterModelRequest {
                model_id: "borrowed".into(),
                dataset: "datasets/mine".into(),
                uri: "file:///var/lib/lethe/artifacts/tasks/1/model.safetensors".into(),
                sha256: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(artifacts.code(), Code::PermissionDenied, "{artifacts:?}");

    let missing = api
        .get_dataset(as_tenant(
            "acme",
            GetDatasetRequest {
                name: "datasets/theirs".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "a refused registration wrote nothing"
    );
    let denied: Vec<(String, String)> = stack
        .store
        .audit_log(Some("acme"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|line| line.entry.outcome == lethe_store::AuditOutcome::Denied)
        .map(|line| (line.entry.action, line.entry.resource))
        .collect();
    assert_eq!(
        denied,
        [
            (
                "dataset.register".to_string(),
                "datasets/theirs".to_string()
            ),
            ("model.register".to_string(), "models/borrowed".to_string()),
        ]
    );
}

#[tokio::test]
async fn datasets_and_models_are_registered_once_per_tenant_and_name() {
    use lethe_proto::lethe::v1::{
        GetDatasetRequest, GetModelRequest, RegisterDatasetRequest, RegisterModelRequest,
    };
    let stack = stack().await;
    let mut api = LetheClient::new(stack.channel.clone());
    let dataset = RegisterDatasetRequest {
        dataset_id: "fmnist-tiny".into(),
        uri: "s3://lethe/datasets/fmnist-tiny.safetensors".into(),
        sha256: vec![7; 32],
    };
    let registered = api
        .register_dataset(as_tenant("acme", dataset.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.name, "datasets/fmnist-tiny");
    let again = api
        .register_dataset(as_tenant("acme", dataset.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again, registered,
        "registering the same thing twice is a no-op"
    );
    let moved = RegisterDatasetRequest {
        uri: "s3://lethe/elsewhere".into(),
        ..dataset.clone()
    };
    assert_eq!(
        api.register_dataset(as_tenant("acme", moved))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let got = api
        .get_dataset(as_tenant(
            "acme",
            GetDatasetRequest {
                name: "datasets/fmnist-tiny".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(got.into_inner(), registered);
    let theirs = api
        .get_dataset(as_tenant(
            "globex",
            GetDatasetRequest {
                name: "datasets/fmnist-tiny".into(),
            },
        ))
        .await;
    assert_eq!(
        theirs.unwrap_err().code(),
        Code::NotFound,
        "another tenant's dataset does not exist for this one"
    );

    let model = RegisterModelRequest {
        model_id: "mlp-v0".into(),
        dataset: "datasets/fmnist-tiny".into(),
        uri: "file:///var/lib/lethe/models/mlp-v0.safetensors".into(),
        sha256: vec![],
    };
    let registered = api
        .register_model(as_tenant("acme", model.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (registered.name.as_str(), registered.dataset.as_str()),
        ("models/mlp-v0", "datasets/fmnist-tiny")
    );
    let got = api
        .get_model(as_tenant(
            "acme",
            GetModelRequest {
                name: "models/mlp-v0".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(got.into_inner(), registered);
    let unknown_dataset = RegisterModelRequest {
        model_id: "other".into(),
        dataset: "datasets/none".into(),
        ..model.clone()
    };
    assert_eq!(
        api.register_model(as_tenant("acme", unknown_dataset))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let on_their_dataset = api.register_model(as_tenant("globex", model.clone())).await;
    assert_eq!(on_their_dataset.unwrap_err().code(), Code::NotFound);

    for bad in [
        RegisterDatasetRequest {
            dataset_id: "Upper".into(),
            ..dataset.clone()
        },
        RegisterDatasetRequest {
            dataset_id: "".into(),
            ..dataset.clone()
        },
        RegisterDatasetRequest {
            dataset_id: "x".repeat(101),
            ..dataset.clone()
        },
        RegisterDatasetRequest {
            dataset_id: "ok".into(),
            uri: "http://example.com/x".into(),
            ..dataset.clone()
        },
        RegisterDatasetRequest {
            dataset_id: "ok".into(),
            uri: "file:///data/../etc/passwd".into(),
            ..dataset.clone()
        },
        RegisterDatasetRequest {
            dataset_id: "ok".into(),
            uri: "relative/path".into(),
            ..dataset.clone()
        },
        RegisterDatasetRequest {
            dataset_id: "ok".into(),
            sha256: vec![1; 5],
            ..dataset.clone()
        },
    ] {
        let status = api
            .register_dataset(as_tenant("acme", bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    let malformed = api
        .get_dataset(as_tenant(
            "acme",
            GetDatasetRequest {
                name: "fmnist-tiny".into(),
            },
        ))
        .await;
    assert_eq!(malformed.unwrap_err().code(), Code::InvalidArgument);
    let ok = api
        .get_dataset(as_tenant(
            "acme",
            GetDatasetRequest {
                name: "datasets/ok".into(),
            },
        ))
        .await;
    assert_eq!(
        ok.unwrap_err().code(),
        Code::NotFound,
        "refused registrations wrote nothing"
    );
}

#[tokio::test]
async fn metrics_expose_queue_depth_and_leases_by_kind() {
    let stack = stack().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stack.replica.serve_metrics(listener, async {
        let _ = stopped.await;
    }));
    let queued = "lethe_queue_depth{kind=\"noop\"}";
    let leased = "lethe_tasks_leased{kind=\"noop\"}";
    assert_eq!(
        scrape(address).await["lethe_queue_depth{kind=\"retrain\"}"],
        0.0
    );
    stack.noop_job("acme", tasks(3)).await;
    assert_eq!(scrape(address).await[queued], 3.0);
    let worker = stack.register("w1").await;
    stack
        .acquire(&worker, Duration::from_secs(1))
        .await
        .expect("a task");
    assert_eq!(scrape(address).await[queued], 2.0);
    assert_eq!(scrape(address).await[leased], 1.0);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// What a scripted worker writes for a task of `kind`: the artifacts the planner's next steps
/// read, and the report of that kind.
fn scripted(worker: &str, task: &LeasedTask) -> CompleteTaskRequest {
    let artifact = |name: &str| Artifact {
        name: name.into(),
        uri: format!(
            "file:///artifacts/tasks/{}/attempts/{}/{name}",
            task.task_id, task.attempt
        ),
        sha256: vec![7; 32],
        size_bytes: 100,
    };
    let figures = |klom: f64| AuditFigures {
        models: 2,
        oracles: 2,
        forget: Some(SplitAudit {
            klom: Some(KlomStats {
                points: 2,
                p95: klom,
                p99: klom,
                mean: klom,
            }),
            accuracy: 0.5,
        }),
        ..AuditFigures::default()
    };
    let (names, report): (&[&str], TaskReport) = match task.kind.as_str() {
        "retrain" => (
            &["members", "manifest"],
            TaskReport::of(RetrainReport::default()),
        ),
        "build_index" => (
            &["beta", "beta_noise"],
            TaskReport::of(IndexReport {
                estimator: IndexEstimator::Subsample as i32,
                estimation_models: 4,
                members: 4,
                num_train: 512,
                num_targets: 612,
                noise_model: true,
                ..IndexReport::default()
            }),
        ),
        "predict" => (&["targets"], TaskReport::of(PredictReport::default())),
        "match" => (
            &["model"],
            TaskReport::of(MatchReport {
                version: 1,
                architecture: "mlp:784-64-10".into(),
                examples: 40,
                ..MatchReport::default()
            }),
        ),
        "audit" => (
            &[],
            TaskReport::of(AuditReport {
                method: DeletionMethod::Dmm as i32,
                oracles: 2,
                result: Some(figures(1.0)),
                do_nothing: Some(figures(3.0)),
                ..AuditReport::default()
            }),
        ),
        "noop" => (&[], TaskReport::of(NoopReport { seconds: 0.0 })),
        other => panic!("no script for a {other} task"),
    };
    CompleteTaskRequest {
        worker_id: worker.into(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        artifacts: names.iter().map(|name| artifact(name)).collect(),
        report: Some(report),
        acquire_next: false,
    }
}

/// Runs every available task with [`scripted`] until `operation` is done; returns it.
async fn run_scripted(stack: &Stack, worker: &str, operation: &str) -> Operation {
    for _ in 0..50 {
        while let Some(task) = stack.acquire(worker, Duration::from_millis(300)).await {
            stack
                .workers()
                .complete_task(scripted(worker, &task))
                .await
                .unwrap();
        }
        let now = stack
            .operations()
            .get_operation(as_tenant(
                "acme",
                GetOperationRequest {
                    name: operation.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if now.done {
            return now;
        }
    }
    panic!("{operation} did not finish")
}

#[tokio::test]
async fn every_operation_kind_answers_with_its_typed_result_and_failures_with_a_reason() {
    let stack = stack_configured(
        StoreConfig::default(),
        CoordinatorConfig {
            coalescing_window: Duration::from_millis(100),
            ..CoordinatorConfig::default()
        },
    )
    .await;
    let worker = stack.register("scripted").await;
    let mut lethe = LetheClient::new(stack.channel.clone());

    // A noop operation: its tasks and what they wrote.
    let noop = lethe
        .create_noop_operation(as_tenant(
            "acme",
            CreateNoopOperationRequest {
                tasks: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let task = stack
            .acquire(&worker, Duration::from_secs(5))
            .await
            .unwrap();
        let report = Some(TaskReport::of(NoopReport { seconds: 0.0 }));
        stack
            .workers()
            .complete_task(complete(&worker, &task, report))
            .await
            .unwrap();
    }
    let noop = run_scripted(&stack, &worker, &noop.name).await;
    assert_eq!(
        response::<NoopResult>(&noop),
        NoopResult {
            tasks: 2,
            artifact_bytes: 20
        }
    );

    // An index build: the reduce's report and the β it wrote.
    lethe
        .register_dataset(as_tenant(
            "acme",
            RegisterDatasetRequest {
                dataset_id: "shoes".into(),
                uri: "file:///data/shoes".into(),
                sha256: vec![],
            },
        ))
        .await
        .unwrap();
    lethe
        .register_model(as_tenant(
            "acme",
            RegisterModelRequest {
                model_id: "classifier".into(),
                dataset: "datasets/shoes".into(),
                uri: "file:///models/classifier.safetensors".into(),
                sha256: vec![3; 32],
            },
        ))
        .await
        .unwrap();
    let build = lethe
        .create_index_build(as_tenant(
            "acme",
            CreateIndexBuildRequest {
                model: "models/classifier".into(),
                members: 4,
                members_per_task: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let build = run_scripted(&stack, &worker, &build.name).await;
    let index: IndexBuildResult = response(&build);
    let report = index.report.unwrap();
    assert_eq!(
        (report.estimator(), report.num_train, report.members),
        (IndexEstimator::Subsample, 512, 4)
    );
    let beta = index.index.unwrap();
    assert!(beta.uri.ends_with("/beta"), "{beta:?}");
    assert_eq!((beta.sha256, beta.size_bytes), (vec![7; 32], 100));
    assert!(index.noise_model.unwrap().uri.ends_with("/beta_noise"));

    // A deletion request with an audit: its version, its run's fine-tune and the audit.
    let deletion = lethe
        .create_deletion_request(as_tenant(
            "acme",
            CreateDeletionRequestRequest {
                model: "models/classifier".into(),
                forget: vec![5, 9],
                audit_oracles: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let deletion = run_scripted(&stack, &worker, &deletion.name).await;
    let result: DeletionResult = response(&deletion);
    let version = result.version.clone().unwrap();
    assert_eq!(
        (version.version, version.forgotten_count, version.size_bytes),
        (1, 2, 100)
    );
    assert!(version.uri.ends_with("/model"), "{version:?}");
    assert_eq!(version.sha256, vec![7; 32]);
    assert_eq!(version.run, result.run);
    assert_eq!(
        (result.from_version, result.requested, result.method()),
        (0, 2, DeletionMethod::Dmm)
    );
    assert_eq!(
        result.matching.as_ref().unwrap().architecture,
        "mlp:784-64-10"
    );
    assert!(result.retrain.is_none());
    let audit = result.audit.unwrap();
    assert_eq!(audit.result.unwrap().forget.unwrap().klom.unwrap().p95, 1.0);
    // The run the request was served by answers with the same result.
    let run = stack
        .operations()
        .get_operation(as_tenant(
            "acme",
            GetOperationRequest {
                name: result.run.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response::<DeletionResult>(&run).version, result.version);

    // Failures: a fatal task fails its operation with the task's reason in the details.
    let doomed = stack.noop_job("acme", tasks(1)).await;
    let task = stack
        .acquire(&worker, Duration::from_secs(5))
        .await
        .unwrap();
    stack
        .workers()
        .fail_task(FailTaskRequest {
            worker_id: worker.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            class: ErrorClass::Fatal as i32,
            message: "the checkpoint is truncated".into(),
        })
        .await
        .unwrap();
    let failed = run_scripted(&stack, &worker, &operation_name(doomed)).await;
    let error = lethe_testkit::error(&failed);
    assert_eq!(error.code, Code::FailedPrecondition as i32, "{error:?}");
    assert!(
        error.message.contains("the checkpoint is truncated"),
        "{error:?}"
    );
    assert_eq!(failures::reason_of(&error), Some(FailureReason::TaskFailed));
    let info = failures::error_info(&error).unwrap();
    assert_eq!(info.domain, failures::ERROR_DOMAIN);
    assert_eq!(info.metadata["task"], task.task_id);
    assert_eq!(info.metadata["task_kind"], "noop");
    assert_eq!(info.metadata["task_reason"], "TASK_FATAL");

    // A cancelled operation says so the same way.
    let cancelled = stack.noop_job("acme", tasks(1)).await;
    stack
        .operations()
        .cancel_operation(as_tenant(
            "acme",
            CancelOperationRequest {
                name: operation_name(cancelled),
            },
        ))
        .await
        .unwrap();
    let cancelled = run_scripted(&stack, &worker, &operation_name(cancelled)).await;
    let error = lethe_testkit::error(&cancelled);
    assert_eq!(error.code, Code::Cancelled as i32);
    assert_eq!(failures::reason_of(&error), Some(FailureReason::Cancelled));
    stack.coordinator.shutdown().await.unwrap();
}
