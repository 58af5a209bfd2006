//! `cstor up` for tests: starts it on a loopback /24 of its own and a free API port in a
//! temp dir, kills it on drop (its children follow by PR_SET_PDEATHSIG), and runs kubectl
//! against its kubeconfig.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running `cstor up`; dropped, it is stopped as a user stops it (SIGTERM: node agents
/// first, while the API server still answers), and killed only if that takes over 60 s.
pub struct Up {
    pub child: Child,
    pub dir: PathBuf,
    pub base: String,
    /// The arguments of `cstor up` (for [`Up::resume`]).
    args: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
        sweep_attachments(&self.dir);
    }
}

impl Up {
    /// Stops `cstor up` as a user does and waits for it (at most 60 s, then SIGKILL); a
    /// second call does nothing. Its attaches are not swept here: that is `cstor up`'s
    /// own stop's job (the drop sweeps what a failed test left).
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // A SIGKILL would take the API server down together with the agents, whose clean
        // stop then waits on it; SIGTERM lets `cstor up` stop them in order.
        // SAFETY: kill(2) on our own child's pid (not yet reaped); no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cstor ARGS` with its output appended to `DIR/up.log` (a resumed run adds to it).
fn spawn_up(dir: &Path, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("up.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Process ids whose command line (arguments split) `matches`.
pub fn processes_where(matches: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if matches(&args) {
            out.push(pid);
        }
    }
    out
}

/// Stops the `cstor initiator attach` processes of attachments under `dir` that outlived
/// their `cstor up` (they run in their own session, to survive a restart of the node
/// plugin; a test that failed before its detach leaves them): SIGTERM unmounts their
/// FUSE file and detaches their loop device.
fn sweep_attachments(dir: &Path) {
    let dir = dir.display().to_string();
    let attach = |a: &[String]| {
        a.get(1).map(String::as_str) == Some("initiator") && a.iter().any(|x| x.starts_with(&dir))
    };
    let left = processes_where(attach);
    for pid in &left {
        // SAFETY: kill(2) on a process of this test's own attachments.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let t0 = Instant::now();
    while !processes_where(attach).is_empty() && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in processes_where(attach) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Up {
    /// `cstor up --nodes N --disks-per-node 1 --disk-size SIZE`, waited for until its
    /// kubeconfig exists and every Pod is Ready.
    pub fn start(nodes: usize, disk_size: &str) -> Up {
        Up::start_with(nodes, disk_size, &[])
    }

    /// [`Up::start`] with more arguments of `cstor up` (e.g. the controller's graces).
    pub fn start_with(nodes: usize, disk_size: &str, extra: &[&str]) -> Up {
        Up::start_disks(nodes, 1, disk_size, extra)
    }

    /// [`Up::start_with`] with `disks` disks per node.
    pub fn start_disks(nodes: usize, disks: usize, disk_size: &str, extra: &[&str]) -> Up {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("up");
        std::fs::create_dir_all(&dir).unwrap();
        let n = std::process::id() ^ (free_port() as u32);
        let base = format!("127.{}.{}.1", 10 + n % 200, 1 + (n / 200) % 250);
        let mut args: Vec<String> = ["up", "--nodes", &nodes.to_string()]
            .into_iter()
            .chain(["--disks-per-node", &disks.to_string()])
            .chain(["--disk-size", disk_size, "--base-address", &base])
            .chain(extra.iter().copied())
            .chain(["--api-port", &free_port().to_string(), "--dir"])
            .map(str::to_owned)
            .collect();
        args.push(dir.display().to_string());
        let child = spawn_up(&dir, &args);
        let up = Up {
            child,
            dir,
            base,
            args,
            _tmp: tmp,
        };
        let t0 = Instant::now();
        while !up.dir.join("kubeconfig").exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no kubeconfig: {}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let last = format!("cstor-node-{nodes}");
        up.wait_for(
            "pods created",
            &[
                "-n",
                "openebs",
                "get",
                "pods",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            |v| v.contains(&last),
            Duration::from_secs(60),
        );
        up.wait_pods_ready("pods not Ready", Duration::from_secs(60));
        up
    }

    /// Polls `kubectl wait --for=condition=Ready pods --all` (it fails at once while the
    /// API server does not answer yet) until it succeeds; panics with `what` after `limit`.
    fn wait_pods_ready(&self, what: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let (ok, out) = self.kubectl(&[
                "-n",
                "openebs",
                "wait",
                "--for=condition=Ready",
                "pods",
                "--all",
                "--timeout=10s",
            ]);
            if ok {
                return;
            }
            assert!(t0.elapsed() < limit, "{what}: {out}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops `cstor up` (as [`Up::stop`]) and runs it again on the same directory, as a
    /// user resumes it; waits until every Pod is Ready again.
    pub fn resume(&mut self) {
        self.stop();
        self.child = spawn_up(&self.dir, &self.args);
        self.wait_pods_ready("pods not Ready after the resume", Duration::from_secs(90));
    }

    /// SIGKILLs `cstor up` (not its children: they get their parent-death signal) and
    /// reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What `cstor up` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    /// kubectl with this instance's kubeconfig: (success, stdout + stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        kubectl(&self.dir, args)
    }

    /// Polls `kubectl ARGS` until `ok` holds on its output; panics with the log after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        args: &[&str],
        ok: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> String {
        wait_for(&self.dir, what, args, ok, limit)
    }

    /// The name of node `node`'s BlockDevice, waited for up to `limit`.
    pub fn block_device(&self, node: &str, limit: Duration) -> String {
        self.wait_for(
            "a BlockDevice per node",
            &[
                "get",
                "bd",
                "-n",
                "openebs",
                "-l",
                &format!("kubernetes.io/hostname={node}"),
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            |v| v.starts_with("blockdevice-"),
            limit,
        )
    }

    /// kubectl's output (stdout then stderr), trimmed, whether it succeeded or not.
    pub fn get(&self, args: &[&str]) -> String {
        self.kubectl(args).1.trim().to_owned()
    }

    /// Writes `yaml` to `name` in the run's dir and applies it.
    pub fn apply(&self, name: &str, yaml: &str) {
        let f = self.dir.join(name);
        std::fs::write(&f, yaml).unwrap();
        let (ok, out) = self.kubectl(&["apply", "-f", &f.display().to_string()]);
        assert!(ok, "apply {name}: {out}");
    }

    /// The pid of this run's `cstor sidecars` process (its arguments name this run's
    /// CSI controller socket).
    pub fn sidecars_pid(&self) -> i32 {
        let want = format!(
            "unix://{}",
            self.dir.join("csi").join("controller.sock").display()
        );
        let found = processes_where(|a| {
            a.get(1).map(String::as_str) == Some("sidecars") && a.contains(&want)
        });
        match found.first() {
            Some(pid) => *pid,
            None => panic!("no sidecars process for {want}\n{}", self.log()),
        }
    }

    /// `cstor up node stop|start NAME`.
    pub fn node(&self, verb: &str, name: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["up", "node", verb, name, "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "node {verb} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// kubectl against `dir/kubeconfig`: (success, stdout + stderr).
pub fn kubectl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("kubecache"))
        .args(args)
        .output()
        .expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Polls `kubectl ARGS` against `dir` until `ok` holds; panics with `dir/up.log` after `limit`.
pub fn wait_for(
    dir: &Path,
    what: &str,
    args: &[&str],
    ok: impl Fn(&str) -> bool,
    limit: Duration,
) -> String {
    let t0 = Instant::now();
    loop {
        let (_, v) = kubectl(dir, args);
        if ok(&v) {
            return v;
        }
        if t0.elapsed() > limit {
            let log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
            panic!("{what}: still {v:?} after {limit:?}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
