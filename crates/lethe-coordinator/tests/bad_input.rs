//! Malformed and hostile requests through a real gRPC client, against the `lethe-coordinator`
//! binary: unknown and foreign IDs, out-of-range and duplicate example indices, empty and
//! oversized forget sets, huge strings, strings that are not UTF-8, wrong enum values, garbage
//! and truncated protobuf bytes, path traversal in URLs, missing, malformed, unknown, revoked
//! and misused API tokens, and worker calls naming nothing. Every one must get the expected
//! status code with a message that says what was wrong, write nothing but its audit line, and
//! leave the process running. Refused credentials and other tenants' resources must each leave
//! a `denied` line in the audit log.
//!
//! `LETHE_RELIABILITY_OUT=FILE` merges the figures into that JSON (`make chaos` does).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use bytes::{Buf, BufMut};
use lethe_proto::google::longrunning::operations_client::OperationsClient;
use lethe_proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, WaitOperationRequest,
};
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::worker_service_client::WorkerServiceClient;
use lethe_proto::lethe::v1::{
    AcquireTaskRequest, Artifact, CompleteTaskRequest, CreateDeletionRequestRequest,
    CreateIndexBuildRequest, Device, GetDatasetRequest, GetModelRequest, HeartbeatRequest,
    ListModelVersionsRequest, RegisterDatasetRequest, RegisterModelRequest, RegisterWorkerRequest,
    WatchOperationRequest,
};
use lethe_proto::lethe::v1::{IndexReport, RetrainReport, TaskReport};
use lethe_store::sqlx::{self, PgPool};
use lethe_store::CredentialKind;
use lethe_testkit::{connect_when_up, coordinator_command, free_port, reliability, Process, Stack};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

const OWNER: &str = "acme";
const FOREIGN: [&str; 3] = ["globex", "initech", "umbrella"];

type Reply = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One hostile request: how to send it, and what the answer must be.
struct Case {
    what: String,
    send: Box<dyn Fn(Channel) -> Reply>,
    code: Code,
    /// A word the message must contain (lower case), so that it says what was wrong.
    hint: &'static str,
    cross_tenant: bool,
    /// Whether the refusal must be appended to the audit log as denied.
    logged: bool,
}

fn case(
    what: impl Into<String>,
    code: Code,
    hint: &'static str,
    send: impl Fn(Channel) -> Reply + 'static,
) -> Case {
    Case {
        what: what.into(),
        send: Box::new(send),
        code,
        hint,
        cross_tenant: false,
        logged: false,
    }
}

/// The tokens the suite calls with, issued before the coordinator starts.
struct Tokens {
    tenants: std::collections::HashMap<String, String>,
    worker: String,
    revoked: String,
}

static TOKENS: std::sync::OnceLock<Tokens> = std::sync::OnceLock::new();

fn tokens() -> &'static Tokens {
    TOKENS.get().expect("tokens are issued first")
}

fn bearer(token: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {token}").parse().unwrap()
}

fn as_worker<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(&tokens().worker));
    request.set_timeout(Duration::from_secs(10));
    request
}

fn as_tenant<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(&tokens().tenants[tenant]));
    request.set_timeout(Duration::from_secs(10));
    request
}

/// Bytes as they are, both ways: for requests that are not valid protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

fn raw(path: &'static str, body: Vec<u8>) -> impl Fn(Channel) -> Reply {
    move |channel| {
        let body = body.clone();
        Box::pin(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static(path);
            let request = if path.path().starts_with("/lethe.v1.WorkerService/") {
                as_worker(body)
            } else {
                as_tenant(OWNER, body)
            };
            grpc.unary(request, path, RawCodec).await.map(|_| ())
        })
    }
}

/// A length-delimited protobuf field (`tag` = field number) holding `bytes` as they are.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A call of `$client` as `$tenant`: `rpc!(LetheClient, "acme", get_model, request)`.
macro_rules! rpc {
    ($client:ident, $tenant:expr, $method:ident, $request:expr) => {{
        let (tenant, request) = ($tenant.to_string(), $request);
        move |channel: Channel| -> Reply {
            let (tenant, request) = (tenant.clone(), request.clone());
            Box::pin(async move {
                $client::new(channel)
                    .$method(as_tenant(&tenant, request))
                    .await
                    .map(|_| ())
            })
        }
    }};
}

macro_rules! lethe {
    ($tenant:expr, $method:ident, $request:expr) => {
        rpc!(LetheClient, $tenant, $method, $request)
    };
}

macro_rules! operations {
    ($tenant:expr, $method:ident, $request:expr) => {
        rpc!(OperationsClient, $tenant, $method, $request)
    };
}

macro_rules! workers {
    ($method:ident, $request:expr) => {{
        let request = $request;
        move |channel: Channel| -> Reply {
            let request = request.clone();
            Box::pin(async move {
                WorkerServiceClient::new(channel)
                    .$method(as_worker(request))
                    .await
                    .map(|_| ())
            })
        }
    }};
}

/// Watch answers with a stream; its first message (or error) is the answer.
fn watch(tenant: &str, name: String) -> impl Fn(Channel) -> Reply {
    let tenant = tenant.to_string();
    move |channel| {
        let (tenant, name) = (tenant.clone(), name.clone());
        Box::pin(async move {
            let mut stream = LetheClient::new(channel)
                .watch_operation(as_tenant(&tenant, WatchOperationRequest { name }))
                .await?
                .into_inner();
            stream.message().await.map(|_| ())
        })
    }
}

fn deletion(model: &str, forget: Vec<i64>) -> CreateDeletionRequestRequest {
    CreateDeletionRequestRequest {
        model: model.into(),
        forget,
        ..Default::default()
    }
}

/// What the suite's world holds: acme's dataset, model (with a finished index) and its index
/// build's operation, and a page token of acme's.
struct World {
    operation: String,
    page_token: String,
}

fn cases(world: &World) -> Vec<Case> {
    let mut all = Vec::new();
    let model = "models/m";

    // Names of resources: malformed (INVALID_ARGUMENT: not of the form, or an id that
    // registration refuses, so that no resource can have it) and well-formed but unknown
    // (NOT_FOUND).
    let huge = "x".repeat(100_000);
    let malformed_models = [
        "m".to_string(),
        "models/".into(),
        String::new(),
        "datasets/fmnist-tiny".into(),
        "model/m".into(),
        "/models/m".into(),
        "models/M".into(),
        "models/m/..".into(),
        "models/../m".into(),
        "models/m%00".into(),
        "models/ünïcode".into(),
        "models/m ".into(),
        format!("models/{huge}"),
    ];
    let unknown_models = ["models/nope".to_string(), "models/m-2".into()];
    for name in &malformed_models {
        all.push(case(
            format!("GetModel {name:?}"),
            Code::InvalidArgument,
            "model",
            lethe!(OWNER, get_model, GetModelRequest { name: name.clone() }),
        ));
        all.push(case(
            format!("ListModelVersions {name:?}"),
            Code::InvalidArgument,
            "model",
            lethe!(
                OWNER,
                list_model_versions,
                ListModelVersionsRequest {
                    model: name.clone()
                }
            ),
        ));
        all.push(case(
            format!("CreateIndexBuild on {name:?}"),
            Code::InvalidArgument,
            "model",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: name.clone(),
                    ..Default::default()
                }
            ),
        ));
        all.push(case(
            format!("CreateDeletionRequest on {name:?}"),
            Code::InvalidArgument,
            "model",
            lethe!(OWNER, create_deletion_request, deletion(name, vec![1])),
        ));
    }
    for name in &unknown_models {
        all.push(case(
            format!("GetModel {:.40}", name),
            Code::NotFound,
            "not found",
            lethe!(OWNER, get_model, GetModelRequest { name: name.clone() }),
        ));
        all.push(case(
            format!("ListModelVersions {:.40}", name),
            Code::NotFound,
            "not found",
            lethe!(
                OWNER,
                list_model_versions,
                ListModelVersionsRequest {
                    model: name.clone()
                }
            ),
        ));
        all.push(case(
            format!("CreateIndexBuild on {:.40}", name),
            Code::NotFound,
            "not found",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: name.clone(),
                    ..Default::default()
                }
            ),
        ));
        all.push(case(
            format!("CreateDeletionRequest on {:.40}", name),
            Code::NotFound,
            "not found",
            lethe!(OWNER, create_deletion_request, deletion(name, vec![1])),
        ));
    }
    for name in [
        "fmnist-tiny",
        "datasets/",
        "",
        "model/x",
        "datasets/FMNIST",
        "datasets/../fmnist-tiny",
    ] {
        all.push(case(
            format!("GetDataset {name:?}"),
            Code::InvalidArgument,
            "dataset",
            lethe!(OWNER, get_dataset, GetDatasetRequest { name: name.into() }),
        ));
    }
    for name in ["datasets/nope", "datasets/fmnist-tiny-2"] {
        all.push(case(
            format!("GetDataset {name:?}"),
            Code::NotFound,
            "not found",
            lethe!(OWNER, get_dataset, GetDatasetRequest { name: name.into() }),
        ));
    }

    // Other tenants asking for acme's resources: they do not exist for them.
    for tenant in FOREIGN {
        let mut foreign = vec![
            case(
                format!("{tenant}: GetModel of acme's"),
                Code::NotFound,
                "not found",
                lethe!(tenant, get_model, GetModelRequest { name: model.into() }),
            ),
            case(
                format!("{tenant}: ListModelVersions of acme's"),
                Code::NotFound,
                "not found",
                lethe!(
                    tenant,
                    list_model_versions,
                    ListModelVersionsRequest {
                        model: model.into()
                    }
                ),
            ),
            case(
                format!("{tenant}: GetDataset of acme's"),
                Code::NotFound,
                "not found",
                lethe!(
                    tenant,
                    get_dataset,
                    GetDatasetRequest {
                        name: "datasets/fmnist-tiny".into()
                    }
                ),
            ),
            case(
                format!("{tenant}: CreateIndexBuild on acme's model"),
                Code::NotFound,
                "not found",
                lethe!(
                    tenant,
                    create_index_build,
                    CreateIndexBuildRequest {
                        model: model.into(),
                        ..Default::default()
                    }
                ),
            ),
            case(
                format!("{tenant}: CreateDeletionRequest on acme's model"),
                Code::NotFound,
                "not found",
                lethe!(tenant, create_deletion_request, deletion(model, vec![1, 2])),
            ),
            case(
                format!("{tenant}: RegisterModel on acme's dataset"),
                Code::NotFound,
                "not found",
                lethe!(
                    tenant,
                    register_model,
                    RegisterModelRequest {
                        model_id: "stolen".into(),
                        dataset: "datasets/fmnist-tiny".into(),
                        uri: "file:///srv/m.safetensors".into(),
                        sha256: vec![]
                    }
                ),
            ),
            case(
                format!("{tenant}: GetOperation of acme's"),
                Code::NotFound,
                "not found",
                operations!(
                    tenant,
                    get_operation,
                    GetOperationRequest {
                        name: world.operation.clone()
                    }
                ),
            ),
            case(
                format!("{tenant}: CancelOperation of acme's"),
                Code::NotFound,
                "not found",
                operations!(
                    tenant,
                    cancel_operation,
                    CancelOperationRequest {
                        name: world.operation.clone()
                    }
                ),
            ),
            case(
                format!("{tenant}: WaitOperation of acme's"),
                Code::NotFound,
                "not found",
                operations!(
                    tenant,
                    wait_operation,
                    WaitOperationRequest {
                        name: world.operation.clone(),
                        timeout: None
                    }
                ),
            ),
            case(
                format!("{tenant}: WatchOperation of acme's"),
                Code::NotFound,
                "not found",
                watch(tenant, world.operation.clone()),
            ),
            case(
                format!("{tenant}: ListOperations with acme's page token"),
                Code::InvalidArgument,
                "page_token",
                operations!(
                    tenant,
                    list_operations,
                    ListOperationsRequest {
                        page_token: world.page_token.clone(),
                        ..Default::default()
                    }
                ),
            ),
        ];
        for guess in 0..3u128 {
            let name = format!(
                "operations/{}",
                uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + guess)
            );
            foreign.push(case(
                format!("{tenant}: GetOperation of a guessed id"),
                Code::NotFound,
                "not found",
                operations!(tenant, get_operation, GetOperationRequest { name }),
            ));
        }
        for mut one in foreign {
            one.cross_tenant = true;
            // A guessed id that nobody holds is a plain "not found"; the rest reach for acme's.
            one.logged = !one.what.contains("guessed");
            all.push(one);
        }
    }

    // Forget sets.
    let out_of_range = [
        -1i64,
        -512,
        512,
        513,
        1_000,
        65_536,
        i32::MAX as i64,
        i64::MAX,
        i64::MIN,
        -(1 << 40),
    ];
    for bad in out_of_range {
        all.push(case(
            format!("forget index {bad}"),
            Code::InvalidArgument,
            "outside",
            lethe!(
                OWNER,
                create_deletion_request,
                deletion(model, vec![3, bad])
            ),
        ));
        all.push(case(
            format!("forget index {bad} alone"),
            Code::InvalidArgument,
            "outside",
            lethe!(OWNER, create_deletion_request, deletion(model, vec![bad])),
        ));
    }
    for forget in [
        vec![1, 1],
        vec![5, 3, 5],
        vec![0, 0, 0],
        vec![511, 2, 511],
        vec![7, 8, 9, 7],
        vec![100; 10],
    ] {
        all.push(case(
            format!("duplicate indices {forget:?}"),
            Code::InvalidArgument,
            "more than once",
            lethe!(
                OWNER,
                create_deletion_request,
                deletion(model, forget.clone())
            ),
        ));
    }
    all.push(case(
        "an empty forget set",
        Code::InvalidArgument,
        "forget",
        lethe!(OWNER, create_deletion_request, deletion(model, vec![])),
    ));
    all.push(case(
        "a forget set over the limit",
        Code::InvalidArgument,
        "forget",
        lethe!(
            OWNER,
            create_deletion_request,
            deletion(model, (0..100_001).map(|i| i % 512).collect())
        ),
    ));
    for audit in [1_001u32, 10_000, u32::MAX] {
        all.push(case(
            format!("audit_oracles {audit}"),
            Code::InvalidArgument,
            "audit_oracles",
            lethe!(
                OWNER,
                create_deletion_request,
                CreateDeletionRequestRequest {
                    audit_oracles: audit,
                    ..deletion(model, vec![1])
                }
            ),
        ));
    }
    for minimum in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        all.push(case(
            format!("min_confidence {minimum}"),
            Code::InvalidArgument,
            "min_confidence",
            lethe!(
                OWNER,
                create_deletion_request,
                CreateDeletionRequestRequest {
                    min_confidence: Some(minimum),
                    ..deletion(model, vec![1])
                }
            ),
        ));
    }
    for priority in [101, -101, 1_000, i32::MAX, i32::MIN] {
        all.push(case(
            format!("deletion priority {priority}"),
            Code::InvalidArgument,
            "priority",
            lethe!(
                OWNER,
                create_deletion_request,
                CreateDeletionRequestRequest {
                    priority,
                    ..deletion(model, vec![1])
                }
            ),
        ));
        all.push(case(
            format!("index priority {priority}"),
            Code::InvalidArgument,
            "priority",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: model.into(),
                    priority,
                    ..Default::default()
                }
            ),
        ));
    }
    for request_id in [
        "x".repeat(201),
        huge.clone(),
        "tab\there".into(),
        "new\nline".into(),
        "nul\0".into(),
    ] {
        all.push(case(
            format!("request_id of {} chars", request_id.len()),
            Code::InvalidArgument,
            "request_id",
            lethe!(
                OWNER,
                create_deletion_request,
                CreateDeletionRequestRequest {
                    request_id: request_id.clone(),
                    ..deletion(model, vec![1])
                }
            ),
        ));
        all.push(case(
            format!("index request_id of {} chars", request_id.len()),
            Code::InvalidArgument,
            "request_id",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: model.into(),
                    request_id: request_id.clone(),
                    ..Default::default()
                }
            ),
        ));
    }

    // Index builds: sizes, fractions and enums out of range.
    for members in [1u32, 100_001, u32::MAX] {
        all.push(case(
            format!("members {members}"),
            Code::InvalidArgument,
            "members",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: model.into(),
                    members,
                    ..Default::default()
                }
            ),
        ));
    }
    for alpha in [
        -1.0,
        -0.0001,
        1.0001,
        2.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
    ] {
        all.push(case(
            format!("alpha {alpha}"),
            Code::InvalidArgument,
            "alpha",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: model.into(),
                    alpha,
                    ..Default::default()
                }
            ),
        ));
    }
    for (members, per_task) in [(8u32, 9u32), (8, 100_000), (100, u32::MAX)] {
        all.push(case(
            format!("members_per_task {per_task} of {members}"),
            Code::InvalidArgument,
            "members_per_task",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: model.into(),
                    members,
                    members_per_task: per_task,
                    ..Default::default()
                }
            ),
        ));
    }
    for estimator in [3, 7, 99, -1, i32::MAX] {
        all.push(case(
            format!("estimator {estimator}"),
            Code::InvalidArgument,
            "estimator",
            lethe!(
                OWNER,
                create_index_build,
                CreateIndexBuildRequest {
                    model: model.into(),
                    estimator,
                    ..Default::default()
                }
            ),
        ));
    }

    // Registration: names, URLs (path traversal and other schemes) and hashes.
    let bad_ids = [
        "UPPER",
        "has space",
        "../up",
        "a/b",
        "-lead",
        ".hidden",
        "ünï",
        "tab\t",
        "",
        "x".repeat(101).leak(),
    ];
    for id in bad_ids {
        all.push(case(
            format!("RegisterDataset id {id:.20?}"),
            Code::InvalidArgument,
            "name",
            lethe!(
                OWNER,
                register_dataset,
                RegisterDatasetRequest {
                    dataset_id: id.into(),
                    uri: "builtin:fmnist-tiny".into(),
                    sha256: vec![]
                }
            ),
        ));
        all.push(case(
            format!("RegisterModel id {id:.20?}"),
            Code::InvalidArgument,
            "name",
            lethe!(
                OWNER,
                register_model,
                RegisterModelRequest {
                    model_id: id.into(),
                    dataset: "datasets/fmnist-tiny".into(),
                    uri: "file:///srv/m.safetensors".into(),
                    sha256: vec![]
                }
            ),
        ));
    }
    let bad_uris = [
        "file:///srv/../etc/passwd".to_string(),
        "file:///../../etc/shadow".into(),
        "file:///srv/models/..".into(),
        "file:///srv/%2e%2e/etc".into(),
        "s3://bucket/../other/key".into(),
        "s3://bucket/a/../../b".into(),
        "file://relative/path".into(),
        "file:/no-slashes".into(),
        "http://example.com/m.safetensors".into(),
        "https://example.com/m".into(),
        "ftp://example.com/m".into(),
        "gs://bucket/m".into(),
        "javascript:alert(1)".into(),
        "/srv/plain/path".into(),
        String::new(),
        "file:///srv/ctrl\u{7}char".into(),
        "file:///srv/new\nline".into(),
        format!("file:///{}", "d/".repeat(1_100)),
    ];
    for uri in &bad_uris {
        all.push(case(
            format!("RegisterModel uri {uri:.40?}"),
            Code::InvalidArgument,
            "uri",
            lethe!(
                OWNER,
                register_model,
                RegisterModelRequest {
                    model_id: "bad-uri".into(),
                    dataset: "datasets/fmnist-tiny".into(),
                    uri: uri.clone(),
                    sha256: vec![]
                }
            ),
        ));
        all.push(case(
            format!("RegisterDataset uri {uri:.40?}"),
            Code::InvalidArgument,
            "uri",
            lethe!(
                OWNER,
                register_dataset,
                RegisterDatasetRequest {
                    dataset_id: "bad-uri".into(),
                    uri: uri.clone(),
                    sha256: vec![]
                }
            ),
        ));
    }
    for length in [1usize, 16, 31, 33, 64, 1_000] {
        all.push(case(
            format!("RegisterModel sha256 of {length} bytes"),
            Code::InvalidArgument,
            "sha256",
            lethe!(
                OWNER,
                register_model,
                RegisterModelRequest {
                    model_id: "bad-hash".into(),
                    dataset: "datasets/fmnist-tiny".into(),
                    uri: "file:///srv/m.safetensors".into(),
                    sha256: vec![7; length]
                }
            ),
        ));
        all.push(case(
            format!("RegisterDataset sha256 of {length} bytes"),
            Code::InvalidArgument,
            "sha256",
            lethe!(
                OWNER,
                register_dataset,
                RegisterDatasetRequest {
                    dataset_id: "bad-hash".into(),
                    uri: "file:///srv/d".into(),
                    sha256: vec![7; length]
                }
            ),
        ));
    }
    for dataset in ["datasets/nope", "datasets/other"] {
        all.push(case(
            format!("RegisterModel on {dataset}"),
            Code::NotFound,
            "not found",
            lethe!(
                OWNER,
                register_model,
                RegisterModelRequest {
                    model_id: "orphan".into(),
                    dataset: dataset.into(),
                    uri: "file:///srv/m.safetensors".into(),
                    sha256: vec![]
                }
            ),
        ));
    }
    for dataset in ["nope", "", "datasets/", "models/m"] {
        all.push(case(
            format!("RegisterModel on {dataset:?}"),
            Code::InvalidArgument,
            "dataset",
            lethe!(
                OWNER,
                register_model,
                RegisterModelRequest {
                    model_id: "orphan".into(),
                    dataset: dataset.into(),
                    uri: "file:///srv/m.safetensors".into(),
                    sha256: vec![]
                }
            ),
        ));
    }
    all.push(case(
        "RegisterModel m again with another URL",
        Code::AlreadyExists,
        "already",
        lethe!(
            OWNER,
            register_model,
            RegisterModelRequest {
                model_id: "m".into(),
                dataset: "datasets/fmnist-tiny".into(),
                uri: "file:///srv/other.safetensors".into(),
                sha256: vec![]
            }
        ),
    ));
    all.push(case(
        "RegisterDataset again with another URL",
        Code::AlreadyExists,
        "already",
        lethe!(
            OWNER,
            register_dataset,
            RegisterDatasetRequest {
                dataset_id: "fmnist-tiny".into(),
                uri: "builtin:fmnist".into(),
                sha256: vec![]
            }
        ),
    ));

    // Operation names.
    let malformed_operations = [
        "operations/not-a-uuid",
        "operations/",
        "",
        "jobs/0190",
        "operations/../x",
        "operations/0190000000007000800000000000000g",
    ];
    for name in malformed_operations {
        all.push(case(
            format!("GetOperation {name:?}"),
            Code::InvalidArgument,
            "name",
            operations!(
                OWNER,
                get_operation,
                GetOperationRequest { name: name.into() }
            ),
        ));
        all.push(case(
            format!("CancelOperation {name:?}"),
            Code::InvalidArgument,
            "name",
            operations!(
                OWNER,
                cancel_operation,
                CancelOperationRequest { name: name.into() }
            ),
        ));
        all.push(case(
            format!("WaitOperation {name:?}"),
            Code::InvalidArgument,
            "name",
            operations!(
                OWNER,
                wait_operation,
                WaitOperationRequest {
                    name: name.into(),
                    timeout: None
                }
            ),
        ));
        all.push(case(
            format!("WatchOperation {name:?}"),
            Code::InvalidArgument,
            "name",
            watch(OWNER, name.into()),
        ));
    }
    for n in 0..4u128 {
        let name = format!(
            "operations/{}",
            uuid::Uuid::from_u128(0x0190_1111_0000_7000_8000_0000_0000_0000 + n)
        );
        all.push(case(
            "GetOperation unknown",
            Code::NotFound,
            "not found",
            operations!(
                OWNER,
                get_operation,
                GetOperationRequest { name: name.clone() }
            ),
        ));
        all.push(case(
            "CancelOperation unknown",
            Code::NotFound,
            "not found",
            operations!(
                OWNER,
                cancel_operation,
                CancelOperationRequest { name: name.clone() }
            ),
        ));
        all.push(case(
            "WaitOperation unknown",
            Code::NotFound,
            "not found",
            operations!(
                OWNER,
                wait_operation,
                WaitOperationRequest {
                    name: name.clone(),
                    timeout: None
                }
            ),
        ));
        all.push(case(
            "WatchOperation unknown",
            Code::NotFound,
            "not found",
            watch(OWNER, name),
        ));
    }

    // Listing: filters, page sizes and page tokens.
    let filters = [
        "state=",
        "state=DONE",
        "kind=FOO",
        "kind=",
        "x=y",
        "state",
        "state==RUNNING",
        "state=RUNNING OR kind=DELETION",
        "state=RUNNING AND",
        "AND",
        "state=RUNNING AND state=QUEUED AND kind=NOOP",
        "tenant=globex",
        "name=operations/1",
    ];
    for filter in filters {
        all.push(case(
            format!("ListOperations filter {filter:?}"),
            Code::InvalidArgument,
            "filter",
            operations!(
                OWNER,
                list_operations,
                ListOperationsRequest {
                    filter: filter.into(),
                    ..Default::default()
                }
            ),
        ));
    }
    all.push(case(
        "ListOperations filter of 100k chars",
        Code::InvalidArgument,
        "filter",
        operations!(
            OWNER,
            list_operations,
            ListOperationsRequest {
                filter: huge.clone(),
                ..Default::default()
            }
        ),
    ));
    for page_size in [-1, -100, i32::MIN] {
        all.push(case(
            format!("ListOperations page_size {page_size}"),
            Code::InvalidArgument,
            "page_size",
            operations!(
                OWNER,
                list_operations,
                ListOperationsRequest {
                    page_size,
                    ..Default::default()
                }
            ),
        ));
    }
    let tokens = [
        "garbage",
        "AAAA",
        "eyJ0ZW5hbnQiOiJnbG9iZXgifQ",
        "%%%",
        "x".repeat(5_000).leak(),
    ];
    for token in tokens {
        all.push(case(
            format!("ListOperations page_token {token:.20?}"),
            Code::InvalidArgument,
            "page_token",
            operations!(
                OWNER,
                list_operations,
                ListOperationsRequest {
                    page_token: token.into(),
                    ..Default::default()
                }
            ),
        ));
    }
    all.push(case(
        "acme's page token with another filter",
        Code::InvalidArgument,
        "page_token",
        operations!(
            OWNER,
            list_operations,
            ListOperationsRequest {
                page_token: world.page_token.clone(),
                filter: "kind=DELETION".into(),
                ..Default::default()
            }
        ),
    ));

    // Credentials: none, malformed, unknown, revoked, and the wrong kind for the API.
    all.extend(credential_cases());

    // Bytes that are not the message they claim to be.
    let paths = [
        "/lethe.v1.Lethe/CreateDeletionRequest",
        "/lethe.v1.Lethe/CreateIndexBuild",
        "/lethe.v1.Lethe/RegisterModel",
        "/lethe.v1.Lethe/RegisterDataset",
        "/google.longrunning.Operations/GetOperation",
        "/google.longrunning.Operations/ListOperations",
        "/lethe.v1.WorkerService/RegisterWorker",
        "/lethe.v1.WorkerService/CompleteTask",
    ];
    let valid = deletion(model, vec![1, 2, 3]).encode_to_vec();
    let mut garbage: Vec<(String, Vec<u8>)> = vec![
        (
            "truncated message".into(),
            valid[..valid.len() - 2].to_vec(),
        ),
        ("a lone key byte".into(), vec![0x12]),
        ("a length past the end".into(), vec![0x12, 0x7f, b'a']),
        (
            "an overlong varint".into(),
            vec![0x18; 1].into_iter().chain([0xff; 11]).collect(),
        ),
        ("wire type 7".into(), vec![0x0f, 0x00]),
        ("field number 0".into(), vec![0x02, 0x01, b'a']),
        ("a group that never ends".into(), vec![0x0b]),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..10 {
        let bytes: Vec<u8> = (0..32 + n * 17)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect();
        garbage.push((format!("random bytes #{n}"), bytes));
    }
    for path in paths {
        for (what, bytes) in &garbage {
            all.push(case(
                format!("{what} to {path}"),
                Code::InvalidArgument,
                "decode",
                raw(path, bytes.clone()),
            ));
        }
    }
    // Strings that are not UTF-8, in each string field of the Create and Register calls.
    let not_utf8: [&[u8]; 4] = [
        &[0xff, 0xfe],
        &[b'm', 0xc3, 0x28],
        &[0xed, 0xa0, 0x80],
        &[0xf8, 0x88, 0x80, 0x80, 0x80],
    ];
    for bytes in not_utf8 {
        for (path, tag) in [
            ("/lethe.v1.Lethe/CreateDeletionRequest", 1),
            ("/lethe.v1.Lethe/CreateDeletionRequest", 2),
            ("/lethe.v1.Lethe/CreateIndexBuild", 2),
            ("/lethe.v1.Lethe/RegisterModel", 1),
            ("/lethe.v1.Lethe/RegisterModel", 3),
            ("/lethe.v1.Lethe/RegisterDataset", 2),
            ("/google.longrunning.Operations/GetOperation", 1),
        ] {
            all.push(case(
                format!("invalid UTF-8 {bytes:02x?} in field {tag} of {path}"),
                Code::InvalidArgument,
                "decode",
                raw(path, field(tag, bytes)),
            ));
        }
    }

    // Worker calls naming nothing, or naming things wrongly.
    let unknown_worker =
        uuid::Uuid::from_u128(0x0190_2222_0000_7000_8000_0000_0000_0001).to_string();
    let unknown_task = uuid::Uuid::from_u128(0x0190_3333_0000_7000_8000_0000_0000_0001).to_string();
    for worker_id in ["", "not-a-uuid", "x".repeat(1_000).leak()] {
        all.push(case(
            format!("AcquireTask worker {worker_id:.20?}"),
            Code::InvalidArgument,
            "worker_id",
            workers!(
                acquire_task,
                AcquireTaskRequest {
                    worker_id: worker_id.into(),
                    wait: None
                }
            ),
        ));
        all.push(case(
            format!("Heartbeat worker {worker_id:.20?}"),
            Code::InvalidArgument,
            "worker_id",
            workers!(
                heartbeat,
                HeartbeatRequest {
                    worker_id: worker_id.into(),
                    task_id: unknown_task.clone(),
                    attempt: 1,
                    progress: None
                }
            ),
        ));
    }
    all.push(case(
        "AcquireTask for an unknown worker",
        Code::NotFound,
        "not found",
        workers!(
            acquire_task,
            AcquireTaskRequest {
                worker_id: unknown_worker.clone(),
                wait: None
            }
        ),
    ));
    for attempt in [1, 0, -1, i32::MAX] {
        all.push(case(
            format!("Heartbeat of an unknown task, attempt {attempt}"),
            Code::NotFound,
            "not found",
            workers!(
                heartbeat,
                HeartbeatRequest {
                    worker_id: unknown_worker.clone(),
                    task_id: unknown_task.clone(),
                    attempt,
                    progress: None
                }
            ),
        ));
        all.push(case(
            format!("CompleteTask of an unknown task, attempt {attempt}"),
            Code::NotFound,
            "not found",
            workers!(
                complete_task,
                CompleteTaskRequest {
                    worker_id: unknown_worker.clone(),
                    task_id: unknown_task.clone(),
                    attempt,
                    ..Default::default()
                }
            ),
        ));
    }
    for task_id in ["", "not-a-uuid"] {
        all.push(case(
            format!("CompleteTask task {task_id:?}"),
            Code::InvalidArgument,
            "task_id",
            workers!(
                complete_task,
                CompleteTaskRequest {
                    worker_id: unknown_worker.clone(),
                    task_id: task_id.into(),
                    attempt: 1,
                    ..Default::default()
                }
            ),
        ));
    }
    for length in [0usize, 31, 33] {
        let artifact = Artifact {
            name: "x".into(),
            uri: "file:///srv/x".into(),
            sha256: vec![1; length],
            size_bytes: 1,
        };
        all.push(case(
            format!("CompleteTask with a {length}-byte sha256"),
            Code::InvalidArgument,
            "sha256",
            workers!(
                complete_task,
                CompleteTaskRequest {
                    worker_id: unknown_worker.clone(),
                    task_id: unknown_task.clone(),
                    attempt: 1,
                    artifacts: vec![artifact.clone()],
                    ..Default::default()
                }
            ),
        ));
    }
    for (name, slots, memory) in [
        (String::new(), 1u32, 1u64),
        ("w".into(), 0, 1),
        ("x".repeat(1_000), 1, 1),
        ("w".into(), 100_000, 1),
    ] {
        all.push(case(
            format!("RegisterWorker name {:.10?} slots {slots}", name),
            Code::InvalidArgument,
            "",
            workers!(
                register_worker,
                RegisterWorkerRequest {
                    name: name.clone(),
                    device: Device::Cpu as i32,
                    memory_bytes: memory,
                    slots,
                    version: "t".into(),
                    kinds: vec!["noop".into()]
                }
            ),
        ));
    }
    all.push(case(
        "RegisterWorker with device 42",
        Code::InvalidArgument,
        "device",
        workers!(
            register_worker,
            RegisterWorkerRequest {
                name: "w".into(),
                device: 42,
                memory_bytes: 1,
                slots: 1,
                version: "t".into(),
                kinds: vec!["noop".into()]
            }
        ),
    ));
    all
}

/// Row counts of every table a request could write to.
/// One public and one worker method, called with every kind of bad credential.
fn credential_cases() -> Vec<Case> {
    type Send = fn(Channel, Option<String>) -> Reply;
    /// `message` with this `authorization` metadata, or none.
    fn with<T>(authorization: Option<String>, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }
    let methods: [(&str, bool, Send); 4] = [
        ("GetModel", false, |channel, authorization| {
            let request = with(
                authorization,
                GetModelRequest {
                    name: "models/m".into(),
                },
            );
            Box::pin(async move {
                LetheClient::new(channel)
                    .get_model(request)
                    .await
                    .map(|_| ())
            })
        }),
        ("CreateDeletionRequest", false, |channel, authorization| {
            let request = with(authorization, deletion("models/m", vec![1, 2]));
            Box::pin(async move {
                LetheClient::new(channel)
                    .create_deletion_request(request)
                    .await
                    .map(|_| ())
            })
        }),
        ("ListOperations", false, |channel, authorization| {
            let request = with(authorization, ListOperationsRequest::default());
            Box::pin(async move {
                OperationsClient::new(channel)
                    .list_operations(request)
                    .await
                    .map(|_| ())
            })
        }),
        ("RegisterWorker", true, |channel, authorization| {
            let request = with(
                authorization,
                RegisterWorkerRequest {
                    name: "intruder".into(),
                    device: Device::Cpu as i32,
                    memory_bytes: 1,
                    slots: 1,
                    version: "t".into(),
                    kinds: vec!["noop".into()],
                },
            );
            Box::pin(async move {
                WorkerServiceClient::new(channel)
                    .register_worker(request)
                    .await
                    .map(|_| ())
            })
        }),
    ];
    let tokens = tokens();
    let unknown = format!("lethe_t_{}", "0".repeat(64));
    let mut all = Vec::new();
    for (method, worker_api, send) in methods {
        let mut variants: Vec<(String, Option<String>, Code, &'static str)> = vec![
            ("no token".into(), None, Code::Unauthenticated, "token"),
            (
                "Basic credentials".into(),
                Some("Basic dXNlcjpwYXNz".into()),
                Code::Unauthenticated,
                "bearer",
            ),
            (
                "an empty bearer".into(),
                Some("Bearer ".into()),
                Code::Unauthenticated,
                "bearer",
            ),
            (
                "a 300-byte token".into(),
                Some(format!("Bearer {}", "x".repeat(300))),
                Code::Unauthenticated,
                "bearer",
            ),
            (
                "a token never issued".into(),
                Some(format!("Bearer {unknown}")),
                Code::Unauthenticated,
                "token",
            ),
            (
                "a revoked token".into(),
                Some(format!("Bearer {}", tokens.revoked)),
                Code::Unauthenticated,
                "revoked",
            ),
        ];
        if worker_api {
            variants.push((
                "a tenant's token".into(),
                Some(format!("Bearer {}", tokens.tenants[OWNER])),
                Code::PermissionDenied,
                "worker api",
            ));
        } else {
            variants.push((
                "a worker's token".into(),
                Some(format!("Bearer {}", tokens.worker)),
                Code::PermissionDenied,
                "worker",
            ));
        }
        for (what, authorization, code, hint) in variants {
            let mut one = case(
                format!("{method} with {what}"),
                code,
                hint,
                move |channel: Channel| send(channel, authorization.clone()),
            );
            one.logged = true;
            all.push(one);
        }
    }
    all
}

async fn denials(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE outcome = 'denied'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Refusals at the gate are logged in the background: wait a little for the line.
async fn denial_logged(pool: &PgPool, before: i64) -> bool {
    for _ in 0..50 {
        if denials(pool).await > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn rows(pool: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "jobs",
        "tasks",
        "task_deps",
        "datasets",
        "models",
        "model_versions",
        "artifacts",
        "workers",
        "task_attempts",
    ] {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        counts.push(count);
    }
    counts
}

/// acme's dataset, model and a finished index (completed through the worker API as a worker
/// would), and a page token of acme's.
async fn world(channel: &Channel) -> World {
    let mut lethe = LetheClient::new(channel.clone());
    lethe
        .register_dataset(as_tenant(
            OWNER,
            RegisterDatasetRequest {
                dataset_id: "fmnist-tiny".into(),
                uri: "builtin:fmnist-tiny".into(),
                sha256: vec![],
            },
        ))
        .await
        .unwrap();
    lethe
        .register_model(as_tenant(
            OWNER,
            RegisterModelRequest {
                model_id: "m".into(),
                dataset: "datasets/fmnist-tiny".into(),
                uri: "file:///srv/m.safetensors".into(),
                sha256: vec![],
            },
        ))
        .await
        .unwrap();
    let operation = lethe
        .create_index_build(as_tenant(
            OWNER,
            CreateIndexBuildRequest {
                model: "models/m".into(),
                members: 4,
                members_per_task: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .name;
    let mut workers = WorkerServiceClient::new(channel.clone());
    let worker_id = workers
        .register_worker(as_worker(RegisterWorkerRequest {
            name: "setup".into(),
            device: Device::Cpu as i32,
            memory_bytes: 1 << 30,
            slots: 1,
            version: "t".into(),
            kinds: vec!["retrain".into(), "build_index".into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    for _ in 0..3 {
        let task = workers
            .acquire_task(as_worker(AcquireTaskRequest {
                worker_id: worker_id.clone(),
                wait: Some(Duration::from_secs(5).try_into().unwrap()),
            }))
            .await
            .unwrap()
            .into_inner()
            .task
            .expect("a task of the index build");
        let artifact = |name: &str| Artifact {
            name: name.into(),
            uri: format!(
                "file:///srv/tasks/{}/attempts/{}/{name}",
                task.task_id, task.attempt
            ),
            sha256: vec![9; 32],
            size_bytes: 1,
        };
        let (artifacts, report) = if task.kind == "build_index" {
            (
                vec![artifact("beta"), artifact("beta_noise")],
                TaskReport::of(IndexReport {
                    num_train: 512,
                    members: 4,
                    ..IndexReport::default()
                }),
            )
        } else {
            (
                vec![artifact("members"), artifact("manifest")],
                TaskReport::of(RetrainReport::default()),
            )
        };
        workers
            .complete_task(as_worker(CompleteTaskRequest {
                worker_id: worker_id.clone(),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                artifacts,
                report: Some(report),
                acquire_next: false,
            }))
            .await
            .unwrap();
    }
    let mut operations = OperationsClient::new(channel.clone());
    let done = operations
        .wait_operation(as_tenant(
            OWNER,
            WaitOperationRequest {
                name: operation.clone(),
                timeout: Some(Duration::from_secs(10).try_into().unwrap()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(done.done, "the index build finished: {done:?}");
    // Two more operations so that a page of one has a next page.
    for n in 0..2 {
        lethe
            .create_index_build(as_tenant(
                OWNER,
                CreateIndexBuildRequest {
                    model: "models/m".into(),
                    members: 4,
                    members_per_task: 2,
                    request_id: format!("page-{n}"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let page = operations
        .list_operations(as_tenant(
            OWNER,
            ListOperationsRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    World {
        operation,
        page_token: page.next_page_token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_right_code_and_change_nothing() {
    let database = Stack::builder().database("bad_input").database_only().await;
    let (url, store) = (database.url.clone(), database.store.clone());
    let mut tenants = std::collections::HashMap::new();
    for tenant in std::iter::once(OWNER).chain(FOREIGN) {
        let issued = store
            .create_credential(
                CredentialKind::Tenant,
                Some(tenant),
                &format!("{tenant}-ci"),
                "suite",
            )
            .await
            .unwrap();
        tenants.insert(tenant.to_string(), issued.token);
    }
    let worker = store
        .create_credential(CredentialKind::Worker, None, "fleet", "suite")
        .await
        .unwrap()
        .token;
    let revoked = store
        .create_credential(CredentialKind::Tenant, Some(OWNER), "leaked", "suite")
        .await
        .unwrap();
    store
        .revoke_credential(revoked.credential.id, "suite")
        .await
        .unwrap();
    TOKENS
        .set(Tokens {
            tenants,
            worker,
            revoked: revoked.token,
        })
        .ok()
        .unwrap();
    let port = free_port();
    let mut coordinator = Process::spawn(
        "lethe-coordinator",
        &mut coordinator_command(env!("CARGO_BIN_EXE_lethe-coordinator"), &url, port),
        Stdio::null(),
    );
    let channel = connect_when_up(&format!("http://127.0.0.1:{port}"), &mut coordinator).await;
    let pool = PgPool::connect(&url).await.unwrap();
    let world = world(&channel).await;

    let cases = cases(&world);
    let (mut wrong, mut writes, mut cross_tenant, mut cross_allowed) = (Vec::new(), 0, 0, 0);
    let (mut refusals, mut unlogged) = (0, 0);
    for case in &cases {
        let before = rows(&pool).await;
        let denied_before = denials(&pool).await;
        let answer = (case.send)(channel.clone()).await;
        if case.logged {
            refusals += 1;
            if !denial_logged(&pool, denied_before).await {
                unlogged += 1;
                wrong.push(format!("{}: no denied line in the audit log", case.what));
            }
        }
        let after = rows(&pool).await;
        if before != after {
            writes += 1;
            wrong.push(format!(
                "{}: wrote rows ({before:?} → {after:?})",
                case.what
            ));
        }
        if case.cross_tenant {
            cross_tenant += 1;
            if answer.is_ok() {
                cross_allowed += 1;
            }
        }
        match answer {
            Err(status)
                if status.code() == case.code
                    && status.message().to_lowercase().contains(case.hint) => {}
            Err(status) => wrong.push(format!(
                "{}: {:?} {:?} (expected {:?} mentioning {:?})",
                case.what,
                status.code(),
                status.message().chars().take(160).collect::<String>(),
                case.code,
                case.hint
            )),
            Ok(()) => wrong.push(format!(
                "{}: accepted (expected {:?})",
                case.what, case.code
            )),
        }
    }
    let crashed = coordinator.try_wait().unwrap().is_some()
        || LetheClient::new(channel.clone())
            .get_model(as_tenant(
                OWNER,
                GetModelRequest {
                    name: "models/m".into(),
                },
            ))
            .await
            .is_err();
    let report = serde_json::json!({
        "bad_inputs": cases.len(),
        "wrong_codes": wrong.len(),
        "bad_input_writes": writes,
        "bad_input_crashes": u64::from(crashed),
        "cross_tenant_attempts": cross_tenant,
        "cross_tenant_allowed": cross_allowed,
        "refusals_expected_in_audit_log": refusals,
        "refusals_missing_from_audit_log": unlogged,
    });
    eprintln!("bad input: {report}");
    if let Ok(path) = std::env::var("LETHE_RELIABILITY_OUT") {
        reliability::merge_into(Path::new(&path), &report);
    }

    assert!(!crashed, "the coordinator died");
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert!(cases.len() >= 500, "only {} cases", cases.len());
    assert_eq!(cross_allowed, 0);
}
