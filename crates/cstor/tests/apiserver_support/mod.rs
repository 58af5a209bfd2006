//! Shared harness for the API server tests: starts `cstor apiserver` on a free loopback
//! port and a temp data dir, waits (with a deadline) until it accepts connections, runs
//! kubectl against it, and kills the process on drop (also when a test fails).

#![allow(dead_code)]

pub mod claim;
pub mod seed;
pub mod up;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to start listening.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// A free loopback port (bound then released; the server binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when kubectl can be run; tests that need it print why they skip otherwise.
pub fn have_kubectl() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a test needing `what` may run: true when `present`. Otherwise the test fails
/// when `CI` is set (CI must run it) and prints why it skips.
pub fn required(present: bool, what: &str) -> bool {
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and {what} is missing: this test must run"
        );
        println!("SKIP: {what} is missing");
    }
    present
}

/// A temp dir and an API server with its data in it, when kubectl is installed.
pub fn kubectl_server() -> Option<(tempfile::TempDir, ApiServer)> {
    if !required(have_kubectl(), "kubectl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(&dir.path().join("data"), free_port());
    Some((dir, server))
}

/// A running `cstor apiserver` process.
pub struct ApiServer {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub cache_dir: PathBuf,
}

impl ApiServer {
    /// Starts the server on `port` with `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path, port: u16) -> ApiServer {
        ApiServer::start_logged(data_dir, port, &data_dir.with_extension("log"))
    }

    /// Like `start`, with the server's stderr appended to `log_path`.
    pub fn start_logged(data_dir: &Path, port: u16, log_path: &Path) -> ApiServer {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args([
                "apiserver",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cstor apiserver");
        let mut s = ApiServer {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            log: log_path.to_path_buf(),
            port,
            cache_dir: data_dir.with_extension("kubecache"),
        };
        s.wait_listening();
        s
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("cstor apiserver exited early ({status}): {log}");
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.kubeconfig().exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cstor apiserver did not listen within {START_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port and data dir (after `kill9`).
    pub fn restart(&mut self) {
        self.kill9();
        let fresh = ApiServer::start_logged(&self.data_dir.clone(), self.port, &self.log.clone());
        *self = fresh;
    }

    /// Runs kubectl with this server's kubeconfig and a private discovery cache.
    pub fn kubectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run kubectl")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_env(args, &[])
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Path of a fixture file.
pub fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/apiserver/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}
