//! The secured service end to end: the `lethe` CLI and a runner reach a coordinator over TLS
//! with API tokens, workers with mutual TLS, and every way of skipping a step is refused.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lethe_artifacts::ArtifactStore;
use lethe_coordinator::{AuthMode, Coordinator, CoordinatorConfig, TlsSettings};
use lethe_proto::lethe::v1::worker_service_client::WorkerServiceClient;
use lethe_proto::lethe::v1::{Device, RegisterWorkerRequest};
use lethe_runner::{Runner, RunnerConfig};
use lethe_store::{CredentialKind, Durability, LocalCluster, Store, StoreConfig};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// PEM certificate and key.
struct Pair {
    cert: String,
    key: String,
}

/// A certificate authority that signs for names (the coordinator) or for clients (workers).
struct Authority {
    cert: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().pem();
        Authority {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
        Pair {
            cert,
            key: key.serialize_pem(),
        }
    }
}

fn lethe(endpoint: &str, token: Option<&str>, ca: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lethe"));
    command
        .args(args)
        .env("LETHE_COORDINATOR", endpoint)
        .env("LETHE_TLS_CA", ca)
        .env_remove("LETHE_TENANT")
        .env_remove("LETHE_TOKEN");
    if let Some(token) = token {
        command.env("LETHE_TOKEN", token);
    }
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A worker API call with this TLS configuration and the worker's token.
async fn register(endpoint: &str, tls: ClientTlsConfig, token: &str) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let mut request = tonic::Request::new(RegisterWorkerRequest {
        name: "probe".into(),
        device: Device::Cpu as i32,
        memory_bytes: 1,
        slots: 1,
        version: "t".into(),
        kinds: vec!["noop".into()],
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    WorkerServiceClient::new(channel)
        .register_worker(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_tls_and_mutual_tls_end_to_end() {
    let cluster = LocalCluster::start_temporary(Durability::Fast).unwrap();
    let url = cluster.create_database("secure").unwrap();
    let store = Store::connect(&url, StoreConfig::default()).await.unwrap();
    let tenant_token = store
        .create_credential(CredentialKind::Tenant, Some("acme"), "acme-ci", "test")
        .await
        .unwrap()
        .token;
    let worker_token = store
        .create_credential(CredentialKind::Worker, None, "fleet", "test")
        .await
        .unwrap()
        .token;

    let ca = Authority::new("lethe test CA");
    let server = ca.sign(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let worker = ca.sign(&["worker"], ExtendedKeyUsagePurpose::ClientAuth);
    let rogue =
        Authority::new("someone else").sign(&["worker"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert).unwrap();

    let config = CoordinatorConfig {
        auth: AuthMode::Tokens,
        tls: Some(TlsSettings {
            certificate: server.cert.into_bytes(),
            key: server.key.into_bytes(),
            worker_ca: Some(ca.cert.clone().into_bytes()),
        }),
        ..CoordinatorConfig::default()
    };
    let coordinator = Coordinator::new(store.clone(), config)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let endpoint = format!("https://127.0.0.1:{}", coordinator.address.port());
    let trust = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.cert));

    let artifacts =
        ArtifactStore::open(&format!("file://{}/artifacts", dir.path().display())).unwrap();
    let runner = RunnerConfig {
        endpoint: endpoint.clone(),
        name: "mtls-worker".into(),
        device: Device::Cpu,
        memory_bytes: 1 << 30,
        slots: 2,
        poll_wait: Duration::from_secs(1),
        drain_grace: Duration::from_millis(100),
        token: Some(worker_token.clone()),
        tls: Some(trust().identity(Identity::from_pem(&worker.cert, &worker.key))),
    };
    tokio::spawn(Runner::new(runner, artifacts).run(std::future::pending()));

    // The CLI over TLS with the tenant's token; the runner over mutual TLS runs the tasks.
    let cli = |token: Option<String>, endpoint: String, args: &'static [&'static str]| {
        let ca_file = ca_file.clone();
        tokio::task::spawn_blocking(move || lethe(&endpoint, token.as_deref(), &ca_file, args))
    };
    let smoke = cli(
        Some(tenant_token.clone()),
        endpoint.clone(),
        &["smoke", "--tasks", "2", "--task-seconds", "0.1"],
    )
    .await
    .unwrap();
    assert!(smoke.status.success(), "{}", text(&smoke));
    assert!(text(&smoke).contains("SUCCEEDED"), "{}", text(&smoke));

    // Without a token, or in plaintext, the CLI is refused and says why.
    let anonymous = cli(None, endpoint.clone(), &["op", "list"]).await.unwrap();
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous).contains("API token"),
        "{}",
        text(&anonymous)
    );
    let plaintext = cli(
        Some(tenant_token.clone()),
        endpoint.replace("https://", "http://"),
        &["op", "list"],
    )
    .await
    .unwrap();
    assert!(!plaintext.status.success(), "{}", text(&plaintext));

    // The worker API: a certificate of the workers' CA is required on top of the token.
    register(
        &endpoint,
        trust().identity(Identity::from_pem(&worker.cert, &worker.key)),
        &worker_token,
    )
    .await
    .expect("a worker with its certificate and token registers");
    let no_certificate = register(&endpoint, trust(), &worker_token)
        .await
        .unwrap_err();
    assert_eq!(no_certificate.code(), tonic::Code::Unauthenticated);
    assert!(
        no_certificate.message().contains("client certificate"),
        "{no_certificate:?}"
    );
    let rogue = register(
        &endpoint,
        trust().identity(Identity::from_pem(&rogue.cert, &rogue.key)),
        &worker_token,
    )
    .await;
    assert!(rogue.is_err(), "a certificate of another CA is refused");
    let tenant_as_worker = register(
        &endpoint,
        trust().identity(Identity::from_pem(&worker.cert, &worker.key)),
        &tenant_token,
    )
    .await
    .unwrap_err();
    assert_eq!(tenant_as_worker.code(), tonic::Code::PermissionDenied);

    // The audit log says who made the operation.
    let lines = store.audit_log(Some("acme"), 0, 100).await.unwrap();
    assert!(
        lines
            .iter()
            .any(|line| line.entry.action == "noop.create" && line.entry.actor == "acme-ci"),
        "{lines:?}"
    );
    coordinator.shutdown().await.unwrap();
}
