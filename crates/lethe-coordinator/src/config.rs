//! How a replica is configured: what the binary's settings resolve to, and what tests and
//! embedders set directly.

use std::time::Duration;

use lethe_artifacts::ArtifactStore;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How callers prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// API tokens that `lethe-coordinator credentials create` issues.
    Tokens,
    /// The `x-lethe-tenant` header, believed as sent.
    TrustedHeader,
}

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often a waiting long-poll or Wait re-reads the database when nothing woke it: the
    /// bound on how late a change made through another replica is seen.
    pub poll_interval: Duration,
    /// How often this replica reaps expired leases, expires deadlines and plans deletion runs.
    pub maintenance_interval: Duration,
    /// How long the oldest pending deletion request of a model waits for others to join its
    /// run: requests that arrive together are served by one fine-tune.
    pub coalescing_window: Duration,
    /// Fraction of the training set forgotten past which a deletion run retrains from scratch
    /// (and indexes the new version) instead of fine-tuning: DMM's linear predictions hold
    /// for small removals.
    pub retrain_threshold: f64,
    /// How callers prove who they are. The default here is trusted headers, for tests and
    /// embedding; the `lethe-coordinator` binary defaults to tokens.
    pub auth: AuthMode,
    /// Calls served at once (long-polls aside); past it, calls are refused with
    /// RESOURCE_EXHAUSTED instead of queueing behind the database pool.
    pub max_concurrent_calls: usize,
    /// Of those, the most one tenant's calls may hold, so that others are still served.
    pub max_concurrent_calls_per_tenant: usize,
    /// WaitOperation, WatchOperation and AcquireTask calls held open at once.
    pub max_long_polls: usize,
    /// Unfinished jobs a tenant may have, unless its own quota says otherwise.
    pub max_active_jobs_per_tenant: u32,
    /// URL prefixes tenants may register datasets and models under (`{tenant}` is the
    /// caller's); empty, any URL the store accepts.
    pub registration_url_prefixes: Vec<String>,
    /// TLS for every connection; with a client CA, workers must present a certificate it
    /// signed (mutual TLS) while public API clients need not.
    pub tls: Option<TlsSettings>,
    /// The workers' artifact store, which holds every model version's checkpoint: tenants
    /// download versions through the coordinator (or by a URL it signs) instead of reading
    /// the store themselves. None: downloads answer FAILED_PRECONDITION.
    pub artifacts: Option<ArtifactStore>,
}

/// The coordinator's TLS identity and, for mutual TLS with workers, the CA of their
/// certificates (PEM bytes).
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub certificate: Vec<u8>,
    pub key: Vec<u8>,
    pub worker_ca: Option<Vec<u8>>,
}

impl TlsSettings {
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.certificate, &self.key));
        match &self.worker_ca {
            // Optional at the handshake, so that public API clients connect without a
            // certificate; the gate refuses worker calls that came without one.
            Some(ca) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true),
            None => config,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            maintenance_interval: Duration::from_secs(2),
            coalescing_window: Duration::from_secs(10),
            retrain_threshold: 0.05,
            auth: AuthMode::TrustedHeader,
            max_concurrent_calls: 512,
            max_concurrent_calls_per_tenant: 256,
            max_long_polls: 2048,
            max_active_jobs_per_tenant: 1000,
            registration_url_prefixes: Vec::new(),
            tls: None,
            artifacts: None,
        }
    }
}
