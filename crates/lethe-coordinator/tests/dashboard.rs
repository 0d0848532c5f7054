//! The dashboard's JSON passes the same gate as gRPC: the same tokens open it, and its refusals
//! are in the audit log like any other.

use std::time::Duration;

use lethe_store::{AuditOutcome, CredentialKind};
use lethe_testkit::{Stack, TENANT, WORKER_CREDENTIAL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` from the dashboard at `address` with `token`; returns the status and body.
async fn get(address: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let authorization = token
        .map(|token| format!("authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: dashboard\r\n{authorization}connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_calls_pass_the_gate_and_its_refusals_are_audited() {
    let stack = Stack::builder()
        .database("dashboard_gate")
        .tokens()
        .dashboard()
        .start()
        .await;
    let dashboard = stack.dashboard();
    let worker = stack
        .store
        .credential_for_token(stack.worker_token())
        .await
        .unwrap()
        .unwrap();
    let revoked = stack
        .store
        .create_credential(CredentialKind::Tenant, Some(TENANT), "acme-old", "tests")
        .await
        .unwrap();
    stack
        .store
        .revoke_credential(revoked.credential.id, "tests")
        .await
        .unwrap();

    let (status, body) = get(dashboard, "/api/operations", Some(stack.tenant_token())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(r#""scope":"{TENANT}""#)), "{body}");
    let (status, body) = get(dashboard, "/api/operations", Some(stack.admin_token())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("(all tenants)"), "{body}");

    let refusals = [
        (None, 401, "(no token)"),
        (Some("not-a-token-we-issued"), 401, "(unknown token)"),
        (Some(revoked.token.as_str()), 401, "acme-old"),
        (Some(stack.worker_token()), 403, WORKER_CREDENTIAL),
    ];
    for (token, expected, _) in refusals {
        let (status, body) = get(dashboard, "/api/workers", token).await;
        assert_eq!(status, expected, "{token:?}: {body}");
        assert!(body.contains(r#""error""#), "{body}");
    }

    // Refusals are written in the background: wait for all of them to land.
    let mut denied = Vec::new();
    for _ in 0..300 {
        denied = stack
            .store
            .audit_log(None, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|line| line.entry.outcome == AuditOutcome::Denied)
            .collect();
        if denied.len() >= refusals.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut actors: Vec<&str> = denied
        .iter()
        .map(|line| line.entry.actor.as_str())
        .collect();
    actors.sort_unstable();
    let mut expected: Vec<&str> = refusals.iter().map(|(_, _, actor)| *actor).collect();
    expected.sort_unstable();
    assert_eq!(actors, expected);
    for line in &denied {
        assert_eq!(line.entry.action, "dashboard/api/workers");
    }
    let by_worker = denied
        .iter()
        .find(|line| line.entry.actor == WORKER_CREDENTIAL)
        .unwrap();
    assert_eq!(by_worker.entry.credential_id, Some(worker.id));
}
