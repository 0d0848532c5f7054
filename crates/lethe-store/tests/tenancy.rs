//! Credentials, quotas and the audit log against a real PostgreSQL cluster.

use std::sync::atomic::{AtomicUsize, Ordering};

use lethe_store::sqlx;
use lethe_store::{
    Admission, AuditEntry, AuditOutcome, CredentialKind, JobKind, LocalCluster, NewJob, NewTask,
    Store, StoreConfig, StoreError,
};
use serde_json::json;

async fn store() -> Store {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("tenancy{}", NEXT.fetch_add(1, Ordering::SeqCst));
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

fn submitted(tenant: &str, request_id: Option<&str>, quota: u32) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        kind: JobKind::Noop,
        request_id: request_id.map(str::to_string),
        spec: json!({}),
        priority: 0,
        deadline: None,
        tasks: vec![NewTask::new("noop", json!({}))],
        admission: Some(Admission {
            audit: AuditEntry {
                tenant: Some(tenant.into()),
                credential_id: None,
                actor: "ci".into(),
                action: "noop.create".into(),
                resource: String::new(),
                outcome: AuditOutcome::Allowed,
                reason: None,
                detail: json!({}),
            },
            default_max_active_jobs: quota,
            traceparent: None,
        }),
    }
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_stop_working_when_revoked() {
    let store = store().await;
    let issued = store
        .create_credential(CredentialKind::Tenant, Some("acme"), "ci", "test")
        .await
        .unwrap();
    assert!(issued.token.starts_with("lethe_t_"));
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credentials c WHERE c::text LIKE '%' || $1 || '%'",
    )
    .bind(&issued.token[8..])
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(leaked, 0, "the token itself is in no column");
    let digest: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM credentials")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(digest, lethe_store::token_digest(&issued.token));

    let found = store.credential_for_token(&issued.token).await.unwrap();
    assert_eq!(found.as_ref(), Some(&issued.credential));
    assert_eq!(
        store.credential_for_token("lethe_t_0000").await.unwrap(),
        None
    );

    let revoked = store
        .revoke_credential(issued.credential.id, "test")
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    let after = store
        .credential_for_token(&issued.token)
        .await
        .unwrap()
        .unwrap();
    assert!(
        after.revoked_at.is_some(),
        "a revoked token is reported as revoked"
    );

    assert!(matches!(
        store
            .create_credential(CredentialKind::Worker, Some("acme"), "w", "test")
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    let actions: Vec<String> = store
        .audit_log(Some("acme"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.entry.action)
        .collect();
    assert_eq!(actions, ["credential.create", "credential.revoke"]);
}

#[tokio::test]
async fn quotas_hold_under_concurrent_submissions_and_replays_are_free() {
    let store = store().await;
    let attempts = (0..12).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_job(&submitted("acme", Some(&format!("r{n}")), 5))
                .await
                .map(|(job, created)| (job.request_id, created))
        })
    });
    let mut accepted = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok((request_id, created)) => {
                assert!(created);
                accepted.push(request_id.unwrap());
            }
            Err(StoreError::QuotaExceeded { tenant, limit }) => {
                assert_eq!((tenant.as_str(), limit), ("acme", 5));
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted.len(), 5, "exactly the quota was admitted");

    // A replay of an accepted request is answered, quota or not; another tenant is unaffected.
    let (_, created) = store
        .create_job(&submitted("acme", Some(&accepted[0]), 5))
        .await
        .expect("a replay of an accepted request is answered");
    assert!(!created);
    store
        .create_job(&submitted("globex", None, 5))
        .await
        .unwrap();

    // A tenant's own quota wins over the default, both ways.
    store
        .set_tenant_quota("acme", Some(6), "ops")
        .await
        .unwrap();
    store.create_job(&submitted("acme", None, 5)).await.unwrap();
    store
        .set_tenant_quota("acme", Some(0), "ops")
        .await
        .unwrap();
    assert!(matches!(
        store.create_job(&submitted("acme", None, 5)).await,
        Err(StoreError::QuotaExceeded { limit: 0, .. })
    ));

    let created: Vec<String> = store
        .audit_log(Some("acme"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.action == "noop.create")
        .map(|r| r.entry.resource)
        .collect();
    assert_eq!(
        created.len(),
        6,
        "one line per admitted job, none for refusals"
    );
    assert!(created.iter().all(|r| r.starts_with("operations/")));
}

#[tokio::test]
async fn the_audit_log_refuses_updates_deletes_and_truncation() {
    let store = store().await;
    store
        .create_credential(CredentialKind::Worker, None, "gpu-pool", "test")
        .await
        .unwrap();
    for statement in [
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let error = sqlx::query(statement)
            .execute(store.pool())
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    assert_eq!(store.audit_log(None, 0, 10).await.unwrap().len(), 1);
}
