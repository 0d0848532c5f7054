//! Lethe's binaries as child processes of a test: `lethe-worker serve` and `lethe-coordinator`.
//! The kit takes their paths from the test (`env!("CARGO_BIN_EXE_…")` is only set for the
//! crate that builds the binary), so that it need not depend on them: the worker links
//! libtorch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tonic::transport::Channel;

/// A child process, killed (and reaped) when dropped: a failing test must not leave workers
/// polling a coordinator that is gone, or coordinators holding ports. Derefs to its [`Child`]
/// for signals, `wait` and piped output.
pub struct Process {
    name: String,
    child: Child,
    /// Where its stderr goes, when it goes to a file: [`Process::exited`] quotes its tail.
    log: Option<PathBuf>,
}

impl Process {
    /// Starts `command` (stdout discarded, stderr to `stderr`); panics if it cannot start.
    pub fn spawn(name: &str, command: &mut Command, stderr: Stdio) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            name: name.into(),
            child,
            log: None,
        }
    }

    /// Starts `command` with its stderr in `logs/<name>.log`.
    pub fn logged(name: &str, command: &mut Command, logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut process = Self::spawn(name, command, Stdio::from(file));
        process.log = Some(log);
        process
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(description)` if it has exited (with the tail of its log, if it has one).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        let tail = match &self.log {
            Some(log) => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!(": {tail:?}")
            }
            None => String::new(),
        };
        Some(format!("{} exited with {status}{tail}", self.name))
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// `binary serve` (a `lethe-worker`) on the CPU against `endpoint` with the worker `token`,
/// writing to `artifacts` under `name`; add flags (a drain grace, a metrics listener) before
/// starting it with [`Process::spawn`] or [`Process::logged`].
pub fn worker_command(
    binary: impl AsRef<Path>,
    endpoint: &str,
    token: &str,
    artifacts: &str,
    name: &str,
) -> Command {
    let mut command = Command::new(binary.as_ref());
    command
        .args(["serve", "--coordinator", endpoint, "--artifacts", artifacts])
        .args(["--name", name, "--cpu"])
        .env("LETHE_TOKEN", token);
    command
}

/// `binary` (a `lethe-coordinator`) on `database_url`, listening on loopback at `port`.
pub fn coordinator_command(binary: impl AsRef<Path>, database_url: &str, port: u16) -> Command {
    let mut command = Command::new(binary.as_ref());
    command
        .args(["--database-url", database_url])
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    command
}

/// A channel to a server `process` is starting at `endpoint`, once it accepts connections;
/// panics if the process exits first.
pub async fn connect_when_up(endpoint: &str, process: &mut Process) -> Channel {
    let endpoint = Channel::from_shared(endpoint.to_string()).expect("a valid endpoint");
    loop {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        if let Some(exit) = process.exited() {
            panic!("{exit} before it served");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port free now, for a process that binds it itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A finished command's stdout and stderr, for assertions and their messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
