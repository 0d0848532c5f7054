//! The coordinator's settings: built-in defaults < TOML file < `LETHE_<KEY>` variables <
//! flags (see `lethe-config`). `lethe-coordinator dump-config` prints what they resolve to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lethe_artifacts::ArtifactStore;
use lethe_config::logging::LogFormat;
use lethe_config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, CoordinatorConfig, TlsSettings};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to serve gRPC on (the public API, the worker API, health and reflection).
    pub listen: SocketAddr,
    /// PostgreSQL URL; migrations are applied at start. Secret: `dump-config` hides its
    /// password.
    pub database_url: Option<String>,
    /// Instead of `database_url`: a private PostgreSQL cluster in this directory, created if
    /// missing, started with the coordinator and stopped when it exits (the local stack).
    pub embedded_database: Option<PathBuf>,
    /// Seconds a task stays leased without a heartbeat.
    pub lease_seconds: f64,
    /// Largest number of database connections.
    pub db_max_connections: u32,
    /// Milliseconds between database re-reads of a waiting long-poll.
    pub poll_interval_ms: u64,
    /// Milliseconds between passes of the maintenance loop (each ±25%): requeueing expired
    /// leases, finalising jobs, planning deletion runs, expiring deadlines.
    pub maintenance_interval_ms: u64,
    /// Seconds the oldest pending deletion request of a model waits for others to join its run.
    pub coalescing_window_seconds: f64,
    /// Fraction of the training set forgotten past which a run retrains from scratch.
    pub retrain_threshold: f64,
    /// Address to serve Prometheus metrics on (`/metrics`); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve the read-only dashboard on (`/`, signed in with an API token); none by
    /// default.
    pub dashboard_listen: Option<SocketAddr>,
    /// `text` for people, `json` (one object per line, with each request's `trace_id`) for
    /// log pipelines. The level is `RUST_LOG` (default `info`).
    pub log_format: LogFormat,
    /// The OTLP/HTTP address of an OpenTelemetry collector (`http://otel-collector:4318`) to
    /// export spans to: each request's calls, with the spans of the CLI that sent it and of the
    /// workers that ran its tasks. Unset, spans go to the logs only.
    pub otlp_endpoint: Option<String>,
    /// How callers prove who they are: `tokens` (API tokens from `lethe-coordinator
    /// credentials create`) or `trusted-header` (the `x-lethe-tenant` header, believed as sent:
    /// only behind a gateway that authenticates callers itself).
    pub auth: AuthMode,
    /// Calls served at once, long-polls aside; past it calls get RESOURCE_EXHAUSTED.
    pub max_concurrent_calls: usize,
    /// Of those, the most one tenant's calls may hold at once on a replica, so that a tenant
    /// in a burst cannot starve the others; past it that tenant's calls get
    /// RESOURCE_EXHAUSTED.
    pub max_concurrent_calls_per_tenant: usize,
    /// Long-polls (WaitOperation, WatchOperation, AcquireTask) held open at once.
    pub max_long_polls: usize,
    /// Unfinished operations a tenant may have, unless `lethe-coordinator quota` set its own.
    pub max_active_jobs_per_tenant: u32,
    /// URL prefixes under which tenants may register datasets and models, `{tenant}` standing
    /// for the caller's tenant: `["s3://lethe-data/{tenant}/"]`. Workers read registered URLs
    /// with the fleet's credentials, so without prefixes (the default) a tenant can register
    /// another's checkpoint or Lethe's own artifacts by URL: leave it empty only when there is
    /// one tenant. In a variable or a flag: one string, prefixes separated by commas.
    #[serde(deserialize_with = "lethe_config::string_list")]
    pub registration_url_prefixes: Vec<String>,
    /// PEM certificate (chain) and private key: serve TLS instead of plaintext.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA of worker certificates: the worker API then requires mutual TLS.
    pub tls_client_ca: Option<PathBuf>,
    /// The artifact store the workers write to (`file:///...` or `s3://bucket/prefix`, S3
    /// settings from the `AWS_*` variables): model versions are downloaded from it through
    /// DownloadModelVersion, or by the URLs GetModelVersionDownloadUrl signs (s3:// only).
    /// Unset, both answer FAILED_PRECONDITION.
    pub artifacts: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:50051".parse().expect("a valid address"),
            database_url: None,
            embedded_database: None,
            lease_seconds: 30.0,
            db_max_connections: 16,
            poll_interval_ms: 500,
            maintenance_interval_ms: 2000,
            coalescing_window_seconds: 10.0,
            retrain_threshold: 0.05,
            metrics_listen: None,
            dashboard_listen: None,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            auth: AuthMode::Tokens,
            max_concurrent_calls: 512,
            max_concurrent_calls_per_tenant: 256,
            max_long_polls: 2048,
            max_active_jobs_per_tenant: 1000,
            registration_url_prefixes: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            artifacts: None,
        }
    }
}

/// Where the coordinator's database is.
#[derive(Clone, Debug, PartialEq)]
pub enum Database {
    Url(String),
    Embedded(PathBuf),
}

impl Settings {
    /// Checks what the types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.lease_seconds.is_finite() && self.lease_seconds >= 1.0) {
            return Err(ConfigError::key(
                "lease_seconds",
                format!("must be at least 1, got {}", self.lease_seconds),
            ));
        }
        if self.db_max_connections == 0 {
            return Err(ConfigError::key("db_max_connections", "must be at least 1"));
        }
        if self.poll_interval_ms < 10 {
            return Err(ConfigError::key("poll_interval_ms", "must be at least 10"));
        }
        if self.maintenance_interval_ms < 50 {
            return Err(ConfigError::key(
                "maintenance_interval_ms",
                "must be at least 50",
            ));
        }
        if !(self.coalescing_window_seconds.is_finite() && self.coalescing_window_seconds >= 0.0) {
            return Err(ConfigError::key(
                "coalescing_window_seconds",
                format!(
                    "must be a non-negative number, got {}",
                    self.coalescing_window_seconds
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.retrain_threshold) {
            return Err(ConfigError::key(
                "retrain_threshold",
                format!("must lie in [0, 1], got {}", self.retrain_threshold),
            ));
        }
        if self.max_concurrent_calls == 0 {
            return Err(ConfigError::key(
                "max_concurrent_calls",
                "must be at least 1",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::key(
                "tls_cert",
                "and tls_key go together: give both or neither",
            ));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::key(
                "tls_client_ca",
                "needs tls_cert and tls_key: mutual TLS is TLS first",
            ));
        }
        if self.max_concurrent_calls_per_tenant == 0 {
            return Err(ConfigError::key(
                "max_concurrent_calls_per_tenant",
                "must be at least 1",
            ));
        }
        if self.max_long_polls == 0 {
            return Err(ConfigError::key("max_long_polls", "must be at least 1"));
        }
        for prefix in &self.registration_url_prefixes {
            crate::registry::validate_prefix(prefix)
                .map_err(|problem| ConfigError::key("registration_url_prefixes", problem))?;
        }
        self.database().map(|_| ())
    }

    pub fn database(&self) -> Result<Database, ConfigError> {
        match (&self.database_url, &self.embedded_database) {
            (Some(url), None) => Ok(Database::Url(url.clone())),
            (None, Some(dir)) => Ok(Database::Embedded(dir.clone())),
            (None, None) => Err(ConfigError::key(
                "database_url",
                "is required (or embedded_database for a private local cluster)",
            )),
            (Some(_), Some(_)) => Err(ConfigError::key(
                "embedded_database",
                "conflicts with database_url: give one of them",
            )),
        }
    }

    /// The settings with secrets hidden, for printing.
    pub fn redacted(&self) -> Self {
        Settings {
            database_url: self
                .database_url
                .as_deref()
                .map(lethe_config::redact_url_password),
            ..self.clone()
        }
    }

    /// The artifact store `artifacts` names, opened.
    pub fn artifact_store(&self) -> Result<Option<ArtifactStore>, ConfigError> {
        self.artifacts
            .as_deref()
            .map(|url| {
                ArtifactStore::open(url).map_err(|e| ConfigError::key("artifacts", e.to_string()))
            })
            .transpose()
    }

    /// The TLS settings, with the PEM files they name read in.
    pub fn tls(&self) -> Result<Option<TlsSettings>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |name: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| ConfigError::key(name, format!("reading {}: {e}", path.display())))
        };
        Ok(Some(TlsSettings {
            certificate: read("tls_cert", cert)?,
            key: read("tls_key", key)?,
            worker_ca: self
                .tls_client_ca
                .as_ref()
                .map(|ca| read("tls_client_ca", ca))
                .transpose()?,
        }))
    }

    pub fn coordinator_config(&self) -> CoordinatorConfig {
        CoordinatorConfig {
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            maintenance_interval: Duration::from_millis(self.maintenance_interval_ms),
            coalescing_window: Duration::from_secs_f64(self.coalescing_window_seconds),
            retrain_threshold: self.retrain_threshold,
            auth: self.auth,
            max_concurrent_calls: self.max_concurrent_calls,
            max_concurrent_calls_per_tenant: self.max_concurrent_calls_per_tenant,
            max_long_polls: self.max_long_polls,
            max_active_jobs_per_tenant: self.max_active_jobs_per_tenant,
            registration_url_prefixes: self.registration_url_prefixes.clone(),
            ..CoordinatorConfig::default()
        }
    }
}

/// Command-line flags: each overrides the key of the same name.
#[derive(clap::Args, Debug, Default, Serialize)]
pub struct Flags {
    /// A TOML file of settings (keys as the flags, with `_`); also `LETHE_CONFIG`.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:50051].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// PostgreSQL URL; migrations are applied at start.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// A private PostgreSQL cluster in this directory instead of --database-url (local use).
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_database: Option<PathBuf>,
    /// Seconds a task stays leased without a heartbeat [default: 30].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<f64>,
    /// Largest number of database connections [default: 16].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_max_connections: Option<u32>,
    /// Milliseconds between database re-reads of a waiting long-poll [default: 500].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// Milliseconds between passes of the maintenance loop [default: 2000].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_interval_ms: Option<u64>,
    /// Seconds the oldest pending deletion request of a model waits for others [default: 10].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalescing_window_seconds: Option<f64>,
    /// Fraction of the training set forgotten past which a run retrains [default: 0.05].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrain_threshold: Option<f64>,
    /// Address to serve Prometheus metrics on, at /metrics [default: none].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve the read-only dashboard on [default: none].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_listen: Option<SocketAddr>,
    /// Log lines as `text` or `json` [default: text].
    #[arg(long, global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// OpenTelemetry collector to export spans to, over OTLP/HTTP [default: none].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// How callers prove who they are [default: tokens].
    #[arg(long, global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
    /// Calls served at once, long-polls aside; past it, RESOURCE_EXHAUSTED [default: 512].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<usize>,
    /// Of those, the most one tenant's calls may hold [default: 256].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls_per_tenant: Option<usize>,
    /// Long-polls held open at once [default: 2048].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_long_polls: Option<usize>,
    /// Unfinished operations a tenant may have by default [default: 1000].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_active_jobs_per_tenant: Option<u32>,
    /// URL prefixes tenants may register under, comma-separated, `{tenant}` for the caller's
    /// tenant [default: any file:/// or s3:// URL].
    #[arg(long, global = true, value_name = "PREFIXES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_url_prefixes: Option<String>,
    /// PEM certificate (chain) to serve TLS with [default: plaintext].
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA of worker certificates: the worker API then requires mutual TLS.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// The workers' artifact store, that model versions are downloaded from [default: none,
    /// no downloads].
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
}

impl Flags {
    /// The settings these flags select, over the file and the environment, validated.
    pub fn settings(
        &self,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let settings = self.unvalidated(environment)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The layered settings before the checks across keys, for `dump-config` to show them
    /// even when they are incomplete.
    pub fn unvalidated(
        &self,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        lethe_config::load(self.config.as_deref(), environment, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_override_the_environment() {
        let flags = Flags {
            lease_seconds: Some(5.0),
            ..Flags::default()
        };
        let settings = flags
            .settings(env(&[
                ("LETHE_DATABASE_URL", "postgres://u:p@h/d"),
                ("LETHE_LEASE_SECONDS", "9"),
                ("LETHE_RETRAIN_THRESHOLD", "0.1"),
            ]))
            .unwrap();
        assert_eq!(settings.lease_seconds, 5.0);
        assert_eq!(settings.retrain_threshold, 0.1);
        assert!(settings.registration_url_prefixes.is_empty());
        assert_eq!(
            settings.coordinator_config().maintenance_interval,
            Duration::from_secs(2)
        );
        assert_eq!(
            settings.database().unwrap(),
            Database::Url("postgres://u:p@h/d".into())
        );
        assert_eq!(
            settings.redacted().database_url.as_deref(),
            Some("postgres://u:********@h/d")
        );
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let cases = [
            (vec![], "database_url"),
            (
                vec![
                    ("LETHE_DATABASE_URL", "x"),
                    ("LETHE_EMBEDDED_DATABASE", "/d"),
                ],
                "embedded_database",
            ),
            (
                vec![("LETHE_DATABASE_URL", "x"), ("LETHE_LEASE_SECONDS", "0.5")],
                "lease_seconds",
            ),
            (
                vec![
                    ("LETHE_DATABASE_URL", "x"),
                    ("LETHE_RETRAIN_THRESHOLD", "2"),
                ],
                "retrain_threshold",
            ),
            (
                vec![("LETHE_DATABASE_URL", "x"), ("LETHE_LISTEN", "nowhere")],
                "listen",
            ),
            (
                vec![
                    ("LETHE_DATABASE_URL", "x"),
                    ("LETHE_MAINTENANCE_INTERVAL_MS", "0"),
                ],
                "maintenance_interval_ms",
            ),
            (
                vec![
                    ("LETHE_DATABASE_URL", "x"),
                    ("LETHE_REGISTRATION_URL_PREFIXES", "s3://data/{tenant}"),
                ],
                "registration_url_prefixes",
            ),
        ];
        for (pairs, key) in cases {
            let error = Flags::default().settings(env(&pairs)).unwrap_err();
            assert!(error.to_string().contains(key), "{pairs:?}: {error}");
        }
    }

    #[test]
    fn registration_prefixes_come_as_a_list_from_every_layer() {
        let prefixes = ["s3://data/{tenant}/", "file:///srv/shared/"].map(String::from);
        let from_env = Flags::default()
            .settings(env(&[
                ("LETHE_DATABASE_URL", "x"),
                (
                    "LETHE_REGISTRATION_URL_PREFIXES",
                    "s3://data/{tenant}/,file:///srv/shared/",
                ),
            ]))
            .unwrap();
        assert_eq!(from_env.registration_url_prefixes, prefixes);
        let flags = Flags {
            registration_url_prefixes: Some("s3://data/{tenant}/".into()),
            ..Flags::default()
        };
        let from_flag = flags.settings(env(&[("LETHE_DATABASE_URL", "x")])).unwrap();
        assert_eq!(
            from_flag.coordinator_config().registration_url_prefixes,
            ["s3://data/{tenant}/"]
        );
    }

    #[test]
    fn the_dump_of_the_defaults_loads_back() {
        let defaults = Settings {
            database_url: Some("postgres://u@h/d".into()),
            ..Settings::default()
        };
        let listed = Settings {
            registration_url_prefixes: vec!["s3://data/{tenant}/".into()],
            ..defaults.clone()
        };
        for settings in [defaults, listed] {
            let dumped = lethe_config::to_toml(&settings).unwrap();
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &dumped).unwrap();
            let flags = Flags {
                config: Some(file.path().to_path_buf()),
                ..Flags::default()
            };
            assert_eq!(flags.settings(env(&[])).unwrap(), settings, "{dumped}");
        }
    }
}
