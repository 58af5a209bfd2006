//! Shared helpers for the `cstor target` tests: start the binary on a free port with a
//! Drop guard that kills it, wait for conditions with deadlines, find external tools.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `cstor target serve`; killed on drop, also when the test fails.
pub struct Served {
    pub child: Child,
    pub addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `img` (created sparse at `size` if missing) as LUN 0 of target `iqn`, with
/// `extra` serve arguments.
pub fn serve_file(iqn: &str, img: &Path, size: &str, extra: &[&str]) -> Served {
    let img = img.to_str().expect("temp paths are UTF-8");
    let mut args = vec!["--iqn", iqn, "--file", img, "--size", size];
    args.extend_from_slice(extra);
    serve(&args)
}

/// Starts `cstor target serve --listen 127.0.0.1:0 ARGS...` and waits for its address.
pub fn serve(args: &[&str]) -> Served {
    serve_with(Command::new(env!("CARGO_BIN_EXE_cstor")), args)
}

/// As `serve`, with `$CSTOR_HOME` set to `home` (for `--volume POOL/VOL`).
pub fn serve_in_home(home: &Path, args: &[&str]) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cstor"));
    cmd.env("CSTOR_HOME", home);
    serve_with(cmd, args)
}

fn serve_with(mut cmd: Command, args: &[&str]) -> Served {
    cmd.args(["target", "serve", "--listen", "127.0.0.1:0"])
        .args(args);
    spawn_with_addr(cmd, "listening on ")
}

/// Starts `cmd` (a cstor daemon) and waits for the address its first stdout line gives
/// after `prefix`.
pub fn spawn_with_addr(mut cmd: Command, prefix: &str) -> Served {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cstor");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read address");
    let addr = line
        .trim()
        .rsplit_once(prefix)
        .map(|(_, a)| a.to_owned())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Served { child, addr }
}

/// Whether `tool` is on PATH. When it is not, the test skips with a message, except
/// under CI (env `CI` set), where a missing tool fails the test: CI must run every test.
pub fn have(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        unavailable(&format!("{tool} not installed (Debian package {package})"));
    }
    found
}

/// Reports that something a test needs is missing: a skip message normally, a failure
/// (panic) when env `CI` is set.
pub fn unavailable(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and this test cannot run: {what}");
    }
    eprintln!("SKIPPED: {what}");
}

/// Polls `cond` until it holds or `deadline` passes.
pub fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Runs a command with a timeout; returns (success, stdout+stderr).
pub fn run(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let out_path = tempfile::NamedTempFile::new().expect("temp");
    let f = out_path.reopen().expect("reopen");
    let f2 = f.try_clone().expect("clone");
    let mut child = cmd.stdout(f).stderr(f2).spawn().expect("spawn");
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(out_path.path()).unwrap_or_default();
    (status.is_some_and(|s| s.success()), text)
}

/// Allocated bytes of a file (st_blocks * 512).
pub fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Runs qemu-io commands (`-c` each) on LUN 0 of `iqn` at `addr` over iscsi://; asserts
/// they all succeeded and returns the output.
pub fn qemu_io(addr: &str, iqn: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", &format!("iscsi://{addr}/{iqn}/0")]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let (ok, out) = run(&mut c, Duration::from_secs(60));
    assert!(ok && !out.contains("failed"), "{out}");
    out
}
