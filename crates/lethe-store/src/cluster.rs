//! A private PostgreSQL cluster in a directory of its own: what the tests, the benchmarks and
//! the embedded default stack run against. `initdb` + `pg_ctl`, on loopback at a free port, so
//! it needs nothing but Debian's `postgresql` package and never touches a server the machine
//! already runs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::StoreError;

/// How a cluster trades durability for speed. Tests want `Fast`; benchmarks that compare
/// against a baseline on the same cluster may keep `Durable` so the figures mean something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`, synchronous commit and full-page writes off: a crash of the machine may lose
    /// the cluster, a crash of PostgreSQL does not.
    Fast,
    /// PostgreSQL's defaults.
    Durable,
}

/// A running cluster; stopped (immediately) when dropped.
#[derive(Debug)]
pub struct LocalCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<String>,
    _root: Option<tempfile::TempDir>,
}

const SUPERUSER: &str = "lethe";

impl LocalCluster {
    /// Creates and starts a cluster in a fresh temporary directory.
    pub fn start_temporary(durability: Durability) -> Result<Self, StoreError> {
        let root = tempfile::Builder::new()
            .prefix("lethe-pg-")
            .tempdir()
            .map_err(|e| cluster_error("creating a temporary directory", e))?;
        let mut cluster = Self::init(&root.path().join("data"), durability)?;
        cluster._root = Some(root);
        cluster.start()?;
        Ok(cluster)
    }

    /// One temporary cluster per process, started on first use and stopped when the process
    /// exits: what test binaries share (each test takes its own database).
    pub fn shared() -> Result<&'static LocalCluster, StoreError> {
        static SHARED: std::sync::OnceLock<Result<LocalCluster, String>> =
            std::sync::OnceLock::new();
        let cluster = SHARED.get_or_init(|| {
            let cluster = Self::start_temporary(Durability::Fast).map_err(|e| e.to_string())?;
            cluster
                .stop_when_process_exits(std::process::id())
                .map_err(|e| e.to_string())?;
            Ok(cluster)
        });
        cluster.as_ref().map_err(|e| StoreError::Cluster(e.clone()))
    }

    /// Creates a cluster in `data_dir` if it holds none yet, and returns it stopped. The
    /// directory survives the value: this is how the local stack keeps its state.
    pub fn init(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let bin_dir = find_bin_dir()?;
        // initdb refuses to run as root; as root, the cluster belongs to the `postgres` user.
        let run_as = is_root().then(|| "postgres".to_string());
        let port = free_port()?;
        let cluster = Self {
            bin_dir,
            data_dir: data_dir.to_path_buf(),
            port,
            run_as,
            _root: None,
        };
        if !data_dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| cluster_error(&format!("creating {}", data_dir.display()), e))?;
            if let Some(user) = &cluster.run_as {
                // Every directory above the data must be traversable by that user.
                chown_tree(data_dir, user)?;
                for parent in data_dir.ancestors().skip(1) {
                    if parent.as_os_str().is_empty() || parent == Path::new("/") {
                        break;
                    }
                    allow_traverse(parent)?;
                }
            }
            cluster.command(
                "initdb",
                &[
                    "-D",
                    path_str(data_dir)?,
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
            )?;
            let settings = match durability {
                Durability::Fast => {
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                }
                Durability::Durable => "",
            };
            let conf = format!(
                "\n# lethe\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
                 max_connections = 300\nshared_buffers = 128MB\n\
                 idle_in_transaction_session_timeout = '60s'\n{settings}"
            );
            let path = data_dir.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&path)
                .map_err(|e| cluster_error(&format!("reading {}", path.display()), e))?;
            text.push_str(&conf);
            std::fs::write(&path, text)
                .map_err(|e| cluster_error(&format!("writing {}", path.display()), e))?;
        }
        Ok(cluster)
    }

    /// The cluster in `data_dir` if a server is running on it now (another process started
    /// it): its port is read from `postmaster.pid`. Administrative commands use it to reach the
    /// database of a running local stack.
    pub fn running(data_dir: &Path) -> Result<Option<Self>, StoreError> {
        let Ok(pid_file) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
            return Ok(None);
        };
        let mut lines = pid_file.lines();
        let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
        let port = lines.nth(2).and_then(|l| l.trim().parse::<u16>().ok());
        let (Some(pid), Some(port)) = (pid, port) else {
            return Ok(None);
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            bin_dir: find_bin_dir()?,
            data_dir: data_dir.to_path_buf(),
            port,
            run_as: is_root().then(|| "postgres".to_string()),
            _root: None,
        }))
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), StoreError> {
        let log = self.data_dir.join("server.log");
        let options = format!("-p {}", self.port);
        self.command(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir)?,
                "-l",
                path_str(&log)?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server at once (`-m immediate`): what a crash of PostgreSQL looks like to
    /// its clients.
    pub fn stop(&self) -> Result<(), StoreError> {
        self.command(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir)?,
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Stops the cluster (and removes a temporary one) once process `pid` has exited, however
    /// it exits: test binaries keep their cluster in a static, which is never dropped.
    pub fn stop_when_process_exits(&self, pid: u32) -> Result<(), StoreError> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let stop = match &self.run_as {
            Some(user) => format!(
                "runuser -u {user} -- {} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data_dir.display()
            ),
            None => format!(
                "{} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data_dir.display()
            ),
        };
        let cleanup = match &self._root {
            Some(root) => format!("; rm -rf {}", root.path().display()),
            None => String::new(),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1{cleanup}"
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| cluster_error("starting the cluster's watchdog", e))?;
        Ok(())
    }

    /// A URL for a new database, created if it does not exist yet.
    pub fn create_database(&self, name: &str) -> Result<String, StoreError> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Cluster(format!(
                "invalid database name {name:?}"
            )));
        }
        let port = self.port.to_string();
        let status = self.command(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER, name],
        );
        if let Err(e) = status {
            // A database kept from an earlier start is fine.
            if !e.to_string().contains("already exists") {
                return Err(e);
            }
        }
        Ok(self.url(name))
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<(), StoreError> {
        let binary = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        // The cluster's own directory as working directory: runuser keeps the caller's, which
        // the postgres user may not be allowed to enter.
        command
            .args(args)
            .current_dir(self.data_dir.parent().unwrap_or(Path::new("/")));
        let output = command
            .output()
            .map_err(|e| cluster_error(&format!("running {}", binary.display()), e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(StoreError::Cluster(format!(
                "{program} {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            )))
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self._root.is_some() {
            let _ = self.stop();
        }
    }
}

fn find_bin_dir() -> Result<PathBuf, StoreError> {
    if let Some(dir) = std::env::var_os("LETHE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    // Debian installs the server binaries off PATH, one directory per major version.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        StoreError::Cluster(
            "no PostgreSQL server binaries under /usr/lib/postgresql (install Debian's \
             `postgresql` package, or set LETHE_PG_BIN)"
                .into(),
        )
    })
}

fn free_port() -> Result<u16, StoreError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| cluster_error("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| cluster_error("finding a free port", e))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_tree(dir: &Path, user: &str) -> Result<(), StoreError> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(dir)
        .status()
        .map_err(|e| cluster_error("running chown", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(StoreError::Cluster(format!(
            "chown -R {user} {} failed",
            dir.display()
        )))
    }
}

fn allow_traverse(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(dir)
        .map_err(|e| cluster_error(&format!("reading {}", dir.display()), e))?;
    let mode = metadata.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001)).map_err(
            |e| {
                cluster_error(
                    &format!("opening {} to the postgres user", dir.display()),
                    e,
                )
            },
        )?;
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str, StoreError> {
    path.to_str()
        .ok_or_else(|| StoreError::Cluster(format!("path {} is not UTF-8", path.display())))
}

fn cluster_error(what: &str, error: std::io::Error) -> StoreError {
    StoreError::Cluster(format!("{what}: {error}"))
}
