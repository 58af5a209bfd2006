//! Shared set-up of the initiator tests: a pool volume in a temporary $CSTOR_HOME served by
//! `cstor target serve --volume` on a fixed address (so it can be restarted on the same
//! port), killed on drop even when the test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const INI: &str = "iqn.2026-12.io.cstor.test:initiator";

/// A temporary $CSTOR_HOME with one pool `ip` on a sparse file.
pub struct Pool {
    pub dir: tempfile::TempDir,
}

impl Pool {
    pub fn new() -> Pool {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("d0.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(512 << 20))
            .expect("disk file");
        let p = Pool { dir };
        p.cstor(&[
            "pool",
            "create",
            "ip",
            "stripe",
            disk.to_str().expect("utf-8"),
        ]);
        p
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `cstor ARGS` in this home; panics with its stderr on failure.
    pub fn cstor(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(args)
            .env("CSTOR_HOME", self.home())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run cstor");
        assert!(
            out.status.success(),
            "cstor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cstor target serve --listen ADDR ARGS`, waiting for it to listen.
    pub fn serve(&self, addr: &str, args: &[&str]) -> Target {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["target", "serve", "--listen", addr])
            .args(args)
            .env("CSTOR_HOME", self.home())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cstor target serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let t = Target { child };
        assert!(
            line.contains("listening on"),
            "target did not start: {line:?}"
        );
        t
    }
}

/// A running target process; SIGKILLed on drop.
pub struct Target {
    pub child: Child,
}

impl Target {
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1, as `127.0.0.1:PORT`.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Deterministic bytes for a region, different per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
