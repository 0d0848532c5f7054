//! The secured service end to end: the `lethe` CLI and a runner reach a coordinator over TLS
//! with API tokens, workers with mutual TLS, and every way of skipping a step is refused.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lethe_coordinator::TlsSettings;
use lethe_proto::lethe::v1::worker_service_client::WorkerServiceClient;
use lethe_proto::lethe::v1::{Device, RegisterWorkerRequest};
use lethe_testkit::{output_text as text, with_token, Stack, TENANT_CREDENTIAL};
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

/// A worker API call with this TLS configuration and the worker's token.
async fn register(endpoint: &str, tls: ClientTlsConfig, token: &str) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let request = with_token(
        token,
        RegisterWorkerRequest {
            name: "probe".into(),
            device: Device::Cpu as i32,
            memory_bytes: 1,
            slots: 1,
            version: "t".into(),
            kinds: vec!["noop".into()],
        },
    );
    WorkerServiceClient::new(channel)
        .register_worker(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_tls_and_mutual_tls_end_to_end() {
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

    let trust = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.cert));
    let settings = TlsSettings {
        certificate: server.cert.into_bytes(),
        key: server.key.into_bytes(),
        worker_ca: Some(ca.cert.clone().into_bytes()),
    };
    // The runner connects over mutual TLS with the workers' token.
    let stack = Stack::builder()
        .database("secure")
        .tokens()
        .tls(
            settings,
            trust().identity(Identity::from_pem(&worker.cert, &worker.key)),
        )
        .workers(1)
        .worker_config(|config| {
            config.name = "mtls-worker".into();
            config.memory_bytes = 1 << 30;
            config.slots = 2;
            config.poll_wait = Duration::from_secs(1);
            config.drain_grace = Duration::from_millis(100);
        })
        .start()
        .await;
    let endpoint = stack.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let (tenant_token, worker_token) = (
        stack.tenant_token().to_string(),
        stack.worker_token().to_string(),
    );

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
    let lines = stack.store.audit_log(Some("acme"), 0, 100).await.unwrap();
    assert!(
        lines
            .iter()
            .any(|line| line.entry.action == "noop.create" && line.entry.actor == TENANT_CREDENTIAL),
        "{lines:?}"
    );
    stack.coordinator.shutdown().await.unwrap();
}
