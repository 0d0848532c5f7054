//! Deletion requests against a real PostgreSQL cluster: coalescing into runs, the run's state
//! reaching its requests, model versions, serialised runs per model, cancellation, and the
//! inputs a task reads from its dependencies.

use std::sync::atomic::{AtomicUsize, Ordering};

use lethe_proto::lethe::v1::{FailureReason, IndexReport, TaskReport};
use lethe_store::{
    ArtifactRef, Device, FailureClass, JobKind, JobState, LocalCluster, ModelVersion, NewJob,
    NewTask, NewVersion, NewWorker, RunInputs, RunPlan, Store, StoreConfig, StoreError,
};
use serde_json::json;
use uuid::Uuid;

const TENANT: &str = "acme";

async fn store() -> Store {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("d{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let url = tokio::task::spawn_blocking(move || {
        LocalCluster::shared()
            .expect("start PostgreSQL")
            .create_database(&name)
    })
    .await
    .unwrap()
    .expect("create database");
    Store::connect(&url, StoreConfig::default())
        .await
        .expect("connect")
}

async fn worker(store: &Store) -> Uuid {
    store
        .register_worker(&NewWorker {
            name: "w".into(),
            device: Device::Cpu,
            memory_bytes: 1 << 34,
            slots: 1,
            version: "test".into(),
            kinds: Vec::new(),
            credential_id: None,
        })
        .await
        .unwrap()
}

fn artifact(name: &str) -> ArtifactRef {
    ArtifactRef {
        name: name.into(),
        uri: format!("file:///store/{name}"),
        sha256: [9; 32],
        size_bytes: 5,
    }
}

/// A registered model with a succeeded index build.
async fn model_with_index(store: &Store, worker: Uuid) -> Uuid {
    store
        .register_dataset(TENANT, "data", "builtin:fmnist-tiny", None)
        .await
        .unwrap();
    let (model, _) = store
        .register_model(TENANT, "m", "data", "file:///store/m0", Some([1; 32]))
        .await
        .unwrap();
    let build = one_task_job(JobKind::IndexBuild, "build_index");
    store
        .create_job_about(&build, Some(model.id))
        .await
        .unwrap();
    finish_next(store, worker, &[artifact("beta"), artifact("beta_noise")]).await;
    model.id
}

/// Claims the next task and completes it with `artifacts`.
async fn finish_next(store: &Store, worker: Uuid, artifacts: &[ArtifactRef]) -> Uuid {
    let task = store.claim(worker, 1).await.unwrap().pop().expect("a task");
    // The planner reads the index build's report; the other kinds' reports are not read here.
    let report = (task.kind == "build_index").then(|| {
        TaskReport::of(IndexReport {
            num_train: 512,
            ..IndexReport::default()
        })
    });
    store
        .complete(task.id, task.attempt, worker, artifacts, report.as_ref())
        .await
        .unwrap();
    task.job_id
}

async fn request(store: &Store, model: Uuid, forget: &[i64]) -> Uuid {
    let new = NewJob {
        tenant: TENANT.into(),
        kind: JobKind::Deletion,
        request_id: None,
        spec: json!({ "forget": forget }),
        priority: 0,
        deadline: None,
        tasks: vec![],
        admission: None,
    };
    store
        .create_deletion_request(&new, model)
        .await
        .unwrap()
        .0
        .id
}

/// Starts the model's next run with [`plan`], completes it, and returns the version it wrote.
async fn run_to_its_version(store: &Store, worker: Uuid, model: Uuid) -> ModelVersion {
    let run = store
        .start_deletion_run(model, plan)
        .await
        .unwrap()
        .expect("a run starts");
    finish_next(store, worker, &[artifact("model")]).await;
    store.version_of_run(run.id).await.unwrap().unwrap()
}

/// A job of `kind` with one task of `task` and empty specs.
fn one_task_job(kind: JobKind, task: &str) -> NewJob {
    NewJob {
        tenant: TENANT.into(),
        kind,
        request_id: None,
        spec: json!({}),
        priority: 0,
        deadline: None,
        tasks: vec![NewTask::new(task, json!({}))],
        admission: None,
    }
}

/// A one-task run that forgets the union of the requests on top of the current version.
fn plan(inputs: &RunInputs) -> Result<RunPlan, StoreError> {
    assert!(inputs.index.is_some(), "the index build is found");
    let mut forgotten = inputs.current.forgotten.clone();
    for request in &inputs.requests {
        forgotten.extend(
            request.spec["forget"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
    }
    forgotten.sort_unstable();
    forgotten.dedup();
    let run = NewJob {
        tenant: inputs.tenant.clone(),
        kind: JobKind::DeletionRun,
        request_id: None,
        spec: json!({"forgets": forgotten.len()}),
        priority: 0,
        deadline: None,
        tasks: vec![NewTask::new(
            "match",
            json!({"from": inputs.current.object.uri}),
        )],
        admission: None,
    };
    Ok(RunPlan::Start {
        run,
        writes: NewVersion {
            version: inputs.current.version + 1,
            forgotten,
        },
        fresh_index: None,
    })
}

async fn state(store: &Store, job: Uuid) -> JobState {
    store.get_job(TENANT, job).await.unwrap().state
}

#[tokio::test]
async fn pending_requests_share_one_run_whose_end_reaches_each_of_them() {
    let store = store().await;
    let worker = worker(&store).await;
    let model = model_with_index(&store, worker).await;
    let a = request(&store, model, &[3, 1]).await;
    let b = request(&store, model, &[1, 7]).await;
    let window = std::time::Duration::ZERO;
    assert_eq!(
        store.models_due_for_a_run(window, 10).await.unwrap(),
        [model]
    );
    let run = store
        .start_deletion_run(model, plan)
        .await
        .unwrap()
        .expect("a run starts");
    for r in [a, b] {
        let job = store.get_job(TENANT, r).await.unwrap();
        assert_eq!(job.run_id, Some(run.id));
        assert_eq!(job.tasks.available, 1, "a request shows its run's tasks");
    }
    // A request filed while the run is unfinished waits for the next run.
    let c = request(&store, model, &[2]).await;
    assert!(store
        .models_due_for_a_run(window, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .start_deletion_run(model, plan)
        .await
        .unwrap()
        .is_none());

    finish_next(&store, worker, &[artifact("model")]).await;
    for r in [a, b] {
        let job = store.get_job(TENANT, r).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        let version = store
            .version_of_run(job.run_id.unwrap())
            .await
            .unwrap()
            .expect("the run recorded its version");
        assert_eq!(version.version, 1);
        assert_eq!(version.forgotten.len(), 3);
        assert_eq!(version.object.uri, "file:///store/model");
    }
    assert_eq!(state(&store, c).await, JobState::Queued);

    // The next run starts from version 1 and what it forgot.
    let next = store
        .start_deletion_run(model, plan)
        .await
        .unwrap()
        .expect("the waiting request gets its run");
    assert_eq!(next.kind, JobKind::DeletionRun);
    let task = store.claim(worker, 1).await.unwrap().pop().unwrap();
    assert_eq!(task.spec["from"], "file:///store/model");
    let versions = store.model_versions(TENANT, model).await.unwrap();
    let listed: Vec<(i32, usize)> = versions
        .iter()
        .map(|v| (v.version, v.forgotten.len()))
        .collect();
    assert_eq!(listed, [(1, 3), (0, 0)]);
}

#[tokio::test]
async fn a_run_records_the_version_its_plan_names_and_a_plan_that_unforgets_is_refused() {
    let store = store().await;
    let worker = worker(&store).await;
    let model = model_with_index(&store, worker).await;
    let first = request(&store, model, &[3, 1]).await;
    let version = run_to_its_version(&store, worker, model).await;
    assert_eq!(state(&store, first).await, JobState::Succeeded);
    assert_eq!((version.version, version.forgotten), (1, vec![1, 3]));

    let with = |version: i32, forgotten: Vec<i64>| {
        move |inputs: &RunInputs| {
            let RunPlan::Start {
                run, fresh_index, ..
            } = plan(inputs)?
            else {
                unreachable!("the test plan always starts")
            };
            Ok(RunPlan::Start {
                run,
                writes: NewVersion { version, forgotten },
                fresh_index,
            })
        }
    };
    for (wrong, expected) in [
        (with(5, vec![1, 3, 7]), "must write version 2, not 5"),
        (with(2, vec![7]), "keep forgetting what version 1 forgot"),
    ] {
        let refused = request(&store, model, &[7]).await;
        assert!(store
            .start_deletion_run(model, wrong)
            .await
            .unwrap()
            .is_none());
        let error = store.get_job(TENANT, refused).await.unwrap().error.unwrap();
        assert_eq!(error.reason(), FailureReason::RunRefused);
        assert!(error.message().contains(expected), "{}", error.message());
    }

    let last = request(&store, model, &[2]).await;
    let version = run_to_its_version(&store, worker, model).await;
    assert_eq!(state(&store, last).await, JobState::Succeeded);
    assert_eq!((version.version, version.forgotten), (2, vec![1, 2, 3]));
}

#[tokio::test]
async fn a_deletion_run_is_never_created_directly() {
    let store = store().await;
    let run = one_task_job(JobKind::DeletionRun, "match");
    assert!(matches!(
        store.create_job(&run).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_run_that_cannot_be_planned_fails_its_requests_with_the_reason() {
    let store = store().await;
    let worker = worker(&store).await;
    let model = model_with_index(&store, worker).await;
    let a = request(&store, model, &[1]).await;
    let refused = store
        .start_deletion_run(model, |_| {
            Err(StoreError::FailedPrecondition(
                "no index for this model".into(),
            ))
        })
        .await
        .unwrap();
    assert!(refused.is_none());
    let job = store.get_job(TENANT, a).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.unwrap();
    assert_eq!(error.reason(), FailureReason::RunRefused);
    assert!(error.message().contains("no index"), "{}", error.message());
}

#[tokio::test]
async fn a_shared_request_cannot_be_withdrawn_but_a_sole_one_cancels_its_run() {
    let store = store().await;
    let worker = worker(&store).await;
    let model = model_with_index(&store, worker).await;

    // Pending, before any run: cancelled on its own.
    let pending = request(&store, model, &[4]).await;
    let job = store.cancel_job(TENANT, pending).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);

    let a = request(&store, model, &[1]).await;
    let b = request(&store, model, &[2]).await;
    let run = store
        .start_deletion_run(model, plan)
        .await
        .unwrap()
        .unwrap();
    let refused = store.cancel_job(TENANT, a).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::FailedPrecondition(_)),
        "{refused:?}"
    );
    assert_eq!(state(&store, a).await, JobState::Queued);

    // The run's task fails for good: both requests fail with it.
    let task = store.claim(worker, 1).await.unwrap().pop().unwrap();
    assert_eq!(task.job_id, run.id);
    store
        .fail(
            task.id,
            task.attempt,
            worker,
            FailureClass::Fatal,
            "bad input",
        )
        .await
        .unwrap();
    assert_eq!(state(&store, a).await, JobState::Failed);
    assert_eq!(state(&store, b).await, JobState::Failed);

    // A run with one request is cancelled with it, and its queued task ends.

    let sole = request(&store, model, &[5]).await;
    let run = store
        .start_deletion_run(model, plan)
        .await
        .unwrap()
        .unwrap();
    let job = store.cancel_job(TENANT, sole).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(state(&store, run.id).await, JobState::Cancelled);
    assert!(store.claim(worker, 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn task_inputs_are_the_dependencies_artifacts_for_the_current_attempt_only() {
    let store = store().await;
    let worker = worker(&store).await;
    let job = NewJob {
        tenant: TENANT.into(),
        kind: JobKind::Noop,
        request_id: None,
        spec: json!({}),
        priority: 0,
        deadline: None,
        tasks: vec![
            NewTask::new("first", json!({"part": 1})),
            NewTask::new("second", json!({})).after([0]),
        ],
        admission: None,
    };
    store.create_job(&job).await.unwrap();
    finish_next(&store, worker, &[artifact("part")]).await;
    let second = store.claim(worker, 1).await.unwrap().pop().unwrap();
    let inputs = store
        .task_inputs(second.id, second.attempt, worker)
        .await
        .unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].name, "part");
    assert_eq!(inputs[0].task_kind, "first");
    assert_eq!(inputs[0].task_spec["part"], 1);
    let stale = store
        .task_inputs(second.id, second.attempt + 1, worker)
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Fenced { .. }), "{stale:?}");
}
