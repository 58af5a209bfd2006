//! The open-iscsi attach: where the kernel initiator works (iscsiadm installed, iscsid
//! reachable, the iscsi_tcp module loaded or loadable) NodeStageVolume logs in with
//! `iscsiadm` and uses the kernel's SCSI disk (`/dev/disk/by-path/ip-PORTAL-iscsi-IQN-
//! lun-N`); elsewhere the userspace initiator ([`super::attach`]). `--attach-method`
//! forces either; [`choose`] decides per stage and says why.
//!
//! Invariants: the facts are read from the host ([`Facts::probe`]) and the decision is a
//! pure function of them ([`decide`]), so it is unit-tested without open-iscsi; a forced
//! `iscsiadm` on a node without it fails at once (FAILED_PRECONDITION naming every piece
//! missing), never waits; every command line is built by a pure function. A session
//! survives a restart of the plugin (it is the kernel's). Never: runs iscsiadm through a
//! shell, or logs out a session whose record is not ours.
//!
//! Not exercised where this was built: that machine has no iscsi_tcp module, so `auto`
//! chooses userspace there and the login path below has only its command lines tested.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::attach::Login;
use super::state::{Target, Via, VolumeState};
use crate::Error;

/// How long the SCSI disk of a new session may take to appear (udev's by-path link).
const DEVICE_WAIT: Duration = Duration::from_secs(30);
/// iscsiadm's exit status for "no records/sessions found" (ISCSI_ERR_NO_OBJS_FOUND).
const NO_OBJS_FOUND: i32 = 21;
/// iscsiadm's exit status for "session exists" (ISCSI_ERR_SESS_EXISTS).
const SESSION_EXISTS: i32 = 15;
/// The abstract unix socket iscsid (or systemd's iscsid.socket) listens on.
const ISCSID_SOCKET: &str = "ISCSIADM_ABSTRACT_NAMESPACE";

/// `--attach-method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// open-iscsi when usable, else userspace.
    #[default]
    Auto,
    /// open-iscsi only (a stage fails where it is not usable).
    Iscsiadm,
    /// The userspace initiator only.
    Userspace,
}

/// Whether the iscsi_tcp kernel module can carry a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Module {
    /// Loaded (or built in): /sys/module/iscsi_tcp.
    Loaded,
    /// Listed in modules.dep of the running kernel: iscsiadm loads it.
    Loadable,
    /// Neither (why).
    Missing(String),
}

/// What the host offers open-iscsi.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// iscsiadm's path on PATH.
    pub iscsiadm: Option<PathBuf>,
    /// Whether a connection to iscsid's socket succeeded (else why not).
    pub iscsid: Result<(), String>,
    /// The transport module.
    pub iscsi_tcp: Module,
}

impl Facts {
    /// Reads the host: PATH, iscsid's abstract socket, /sys/module, modules.dep.
    pub fn probe() -> Facts {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let dir = Path::new("/lib/modules").join(&release);
        Facts {
            iscsiadm: on_path("iscsiadm"),
            iscsid: iscsid_reachable(),
            iscsi_tcp: module_state(
                Path::new("/sys/module/iscsi_tcp").exists(),
                &release,
                std::fs::read_to_string(dir.join("modules.dep"))
                    .ok()
                    .as_deref(),
                std::fs::read_to_string(dir.join("modules.builtin"))
                    .ok()
                    .as_deref(),
            ),
        }
    }

    /// What keeps open-iscsi from working here (empty: usable).
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.iscsiadm.is_none() {
            out.push("iscsiadm is not on PATH (install open-iscsi)".to_owned());
        }
        if let Err(why) = &self.iscsid {
            out.push(format!("iscsid is not reachable ({why})"));
        }
        if let Module::Missing(why) = &self.iscsi_tcp {
            out.push(format!(
                "the kernel module iscsi_tcp is not available ({why})"
            ));
        }
        out
    }
}

fn on_path(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn iscsid_reachable() -> Result<(), String> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(ISCSID_SOCKET)
        .map_err(|e| e.to_string())?;
    std::os::unix::net::UnixStream::connect_addr(&addr)
        .map(drop)
        .map_err(|e| format!("no listener on the abstract socket @{ISCSID_SOCKET}: {e}"))
}

/// The state of iscsi_tcp from /sys/module (`loaded`), the running kernel's modules.dep
/// and modules.builtin (their text, when readable).
pub fn module_state(
    loaded: bool,
    release: &str,
    modules_dep: Option<&str>,
    modules_builtin: Option<&str>,
) -> Module {
    let named = |text: &str| {
        text.lines().any(|l| {
            let path = l.split(':').next().unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            file == "iscsi_tcp.ko" || file.starts_with("iscsi_tcp.ko.")
        })
    };
    if loaded || modules_builtin.is_some_and(named) {
        return Module::Loaded;
    }
    match modules_dep {
        Some(dep) if named(dep) => Module::Loadable,
        Some(_) => Module::Missing(format!(
            "not loaded, and not among the modules of kernel {release}"
        )),
        None => Module::Missing(format!(
            "not loaded, and kernel {release} has no /lib/modules/{release}/modules.dep"
        )),
    }
}

/// The method to use and why: open-iscsi when `method` asks for it or allows it and
/// `facts` have nothing missing; a forced `Iscsiadm` without it is an error naming
/// every piece missing.
pub fn decide(method: Method, facts: &Facts) -> Result<(Via, String), String> {
    let missing = facts.missing();
    match method {
        Method::Userspace => Ok((
            Via::Userspace,
            "attach method userspace (forced by --attach-method=userspace)".to_owned(),
        )),
        Method::Auto if missing.is_empty() => Ok((
            Via::Iscsiadm,
            "attach method iscsiadm (auto: open-iscsi is usable here)".to_owned(),
        )),
        Method::Auto => Ok((
            Via::Userspace,
            format!(
                "attach method userspace (auto: open-iscsi is not usable here: {})",
                missing.join("; ")
            ),
        )),
        Method::Iscsiadm if missing.is_empty() => Ok((
            Via::Iscsiadm,
            "attach method iscsiadm (forced by --attach-method=iscsiadm)".to_owned(),
        )),
        Method::Iscsiadm => Err(format!(
            "--attach-method=iscsiadm, but open-iscsi is not usable on this node: {}",
            missing.join("; ")
        )),
    }
}

/// [`decide`] on this host's facts, for a stage of `volume` (FAILED_PRECONDITION when
/// the forced method cannot work).
pub fn choose(method: Method, volume: &str) -> Result<(Via, String), Error> {
    decide(method, &Facts::probe()).map_err(|why| Error::Precondition {
        volume: volume.to_owned(),
        why,
    })
}

/// What `method` means on this host now, for the logs (start-up, NodeGetInfo).
pub fn describe(method: Method) -> (&'static str, String) {
    match decide(method, &Facts::probe()) {
        Ok((Via::Iscsiadm, why)) => ("iscsiadm", why),
        Ok((Via::Userspace, why)) => ("userspace", why),
        Err(why) => ("none", format!("{why}: every NodeStageVolume fails")),
    }
}

/// CHAP credentials for the session (NodeStageVolume's secrets).
pub use cstor_api::chap::Credentials as Chap;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

/// `iscsiadm -m discovery -t sendtargets -p PORTAL` (creates the node records).
pub fn discovery_args(portal: &str) -> Vec<String> {
    s(&["-m", "discovery", "-t", "sendtargets", "-p", portal])
}

/// `iscsiadm -m node -T IQN -p PORTAL` followed by `rest`.
fn node_args(t: &Target, rest: &[&str]) -> Vec<String> {
    let mut v = s(&["-m", "node", "-T", &t.iqn, "-p", &t.portal]);
    v.extend(s(rest));
    v
}

/// The node record settings a login needs: our initiator name (the one the target's ACL
/// lists), the replacement timeout, and CHAP when given.
pub fn settings(
    login: &Login,
    chap: Option<&Chap>,
    replacement: Duration,
) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "iface.initiatorname".to_owned(),
            login.initiator_name.clone(),
        ),
        (
            "node.session.timeo.replacement_timeout".to_owned(),
            replacement.as_secs().max(1).to_string(),
        ),
        ("node.startup".to_owned(), "manual".to_owned()),
    ];
    match chap {
        None => v.push(("node.session.auth.authmethod".to_owned(), "None".to_owned())),
        Some(c) => {
            v.push(("node.session.auth.authmethod".to_owned(), "CHAP".to_owned()));
            v.push(("node.session.auth.username".to_owned(), c.user.clone()));
            v.push(("node.session.auth.password".to_owned(), c.secret.clone()));
            if let Some((u, p)) = &c.mutual {
                v.push(("node.session.auth.username_in".to_owned(), u.clone()));
                v.push(("node.session.auth.password_in".to_owned(), p.clone()));
            }
        }
    }
    v
}

/// `iscsiadm -m node -T IQN -p PORTAL -o update -n NAME -v VALUE`.
pub fn update_args(t: &Target, name: &str, value: &str) -> Vec<String> {
    node_args(t, &["-o", "update", "-n", name, "-v", value])
}

/// `iscsiadm -m node -T IQN -p PORTAL --login`.
pub fn login_args(t: &Target) -> Vec<String> {
    node_args(t, &["--login"])
}

/// `iscsiadm -m node -T IQN -p PORTAL --logout`.
pub fn logout_args(t: &Target) -> Vec<String> {
    node_args(t, &["--logout"])
}

/// `iscsiadm -m node -T IQN -p PORTAL --rescan` (the kernel reads the capacity again).
pub fn rescan_args(t: &Target) -> Vec<String> {
    node_args(t, &["--rescan"])
}

/// `iscsiadm -m node -T IQN -p PORTAL -o delete`.
pub fn delete_args(t: &Target) -> Vec<String> {
    node_args(t, &["-o", "delete"])
}

/// udev's link for the LUN of a session: `/dev/disk/by-path/ip-PORTAL-iscsi-IQN-lun-N`.
pub fn by_path(t: &Target) -> PathBuf {
    PathBuf::from(format!(
        "/dev/disk/by-path/ip-{}-iscsi-{}-lun-{}",
        t.portal, t.iqn, t.lun
    ))
}

/// Runs iscsiadm; Ok(exit status) when it is 0 or one of `ok`.
fn iscsiadm(args: &[String], ok: &[i32]) -> Result<i32, Error> {
    let out = Command::new("iscsiadm")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io("running iscsiadm", e))?;
    let code = out.status.code().unwrap_or(-1);
    if out.status.success() || ok.contains(&code) {
        return Ok(code);
    }
    // A secret given with -v is not repeated in the error.
    let shown: Vec<&str> = match args.iter().position(|a| a == "-n") {
        Some(i) if args.get(i + 1).is_some_and(|n| n.contains("password")) => {
            args[..i + 2].iter().map(String::as_str).collect()
        }
        _ => args.iter().map(String::as_str).collect(),
    };
    Err(Error::NodeState {
        volume: String::new(),
        why: format!(
            "iscsiadm {} failed (exit {code}): {}",
            shown.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// Logs in to `t` through open-iscsi and waits for its disk; the disk's device node.
pub fn attach(
    volume: &str,
    t: &Target,
    login: &Login,
    chap: Option<&Chap>,
    replacement: Duration,
) -> Result<PathBuf, Error> {
    let failed = |e: Error| Error::Attach {
        volume: volume.to_owned(),
        why: e.to_string(),
    };
    iscsiadm(&discovery_args(&t.portal), &[]).map_err(failed)?;
    for (name, value) in settings(login, chap, replacement) {
        iscsiadm(&update_args(t, &name, &value), &[]).map_err(failed)?;
    }
    iscsiadm(&login_args(t), &[SESSION_EXISTS]).map_err(failed)?;
    let link = by_path(t);
    let t0 = Instant::now();
    loop {
        if let Ok(dev) = link.canonicalize() {
            tracing::info!(volume, device = %dev.display(), link = %link.display(), "logged in with iscsiadm");
            return Ok(dev);
        }
        if t0.elapsed() > DEVICE_WAIT {
            let _ = detach_session(t);
            return Err(Error::Attach {
                volume: volume.to_owned(),
                why: format!(
                    "logged in, but {} did not appear within {DEVICE_WAIT:?} (logged out again)",
                    link.display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Logs out of `t` and deletes its node record (either already gone is fine).
pub fn detach_session(t: &Target) -> Result<(), Error> {
    iscsiadm(&logout_args(t), &[NO_OBJS_FOUND])?;
    iscsiadm(&delete_args(t), &[NO_OBJS_FOUND])?;
    Ok(())
}

/// Rescans the session of `t` (after the target grew the LUN).
pub fn rescan(t: &Target) -> Result<(), Error> {
    iscsiadm(&rescan_args(t), &[]).map(drop)
}

/// Whether the session of `st` is there: its by-path link leads to the recorded disk.
pub fn attached(st: &VolumeState) -> bool {
    by_path(&st.target)
        .canonicalize()
        .is_ok_and(|d| d == st.loop_device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            iqn: "iqn.2016-09.com.openebs.cstor:pvc-1".into(),
            portal: "10.0.0.5:3260".into(),
            alternates: vec![],
            lun: 0,
        }
    }

    fn facts(iscsiadm: bool, iscsid: bool, m: Module) -> Facts {
        Facts {
            iscsiadm: iscsiadm.then(|| PathBuf::from("/usr/sbin/iscsiadm")),
            iscsid: if iscsid {
                Ok(())
            } else {
                Err("refused".into())
            },
            iscsi_tcp: m,
        }
    }

    #[test]
    fn auto_takes_open_iscsi_only_when_every_piece_is_there() {
        let all = facts(true, true, Module::Loadable);
        assert_eq!(decide(Method::Auto, &all).unwrap().0, Via::Iscsiadm);
        assert_eq!(decide(Method::Userspace, &all).unwrap().0, Via::Userspace);
        for f in [
            facts(false, true, Module::Loaded),
            facts(true, false, Module::Loaded),
            facts(true, true, Module::Missing("x".into())),
        ] {
            let (via, why) = decide(Method::Auto, &f).unwrap();
            assert_eq!(via, Via::Userspace, "{f:?}");
            assert!(why.contains("not usable"), "{why}");
        }
    }

    #[test]
    fn forced_iscsiadm_without_open_iscsi_names_everything_missing() {
        let none = facts(false, false, Module::Missing("not loaded".into()));
        let m = decide(Method::Iscsiadm, &none).unwrap_err();
        for part in [
            "iscsiadm is not on PATH",
            "iscsid is not reachable",
            "iscsi_tcp",
        ] {
            assert!(m.contains(part), "{m}");
        }
        let ok = facts(true, true, Module::Loaded);
        assert_eq!(decide(Method::Iscsiadm, &ok).unwrap().0, Via::Iscsiadm);
    }

    #[test]
    fn the_module_is_found_loaded_built_in_or_in_modules_dep() {
        let dep = "kernel/drivers/scsi/iscsi_tcp.ko.zst: kernel/drivers/scsi/libiscsi_tcp.ko.zst\n";
        assert_eq!(module_state(true, "6.1", None, None), Module::Loaded);
        assert_eq!(
            module_state(
                false,
                "6.1",
                None,
                Some("kernel/drivers/scsi/iscsi_tcp.ko\n")
            ),
            Module::Loaded
        );
        assert_eq!(
            module_state(false, "6.1", Some(dep), None),
            Module::Loadable
        );
        let libonly = "kernel/drivers/scsi/libiscsi_tcp.ko:\n";
        assert!(matches!(
            module_state(false, "6.1", Some(libonly), None),
            Module::Missing(_)
        ));
        assert!(matches!(
            module_state(false, "6.1", None, None),
            Module::Missing(w) if w.contains("modules.dep")
        ));
    }

    #[test]
    fn command_lines() {
        let t = target();
        assert_eq!(
            discovery_args(&t.portal).join(" "),
            "-m discovery -t sendtargets -p 10.0.0.5:3260"
        );
        assert_eq!(
            login_args(&t).join(" "),
            "-m node -T iqn.2016-09.com.openebs.cstor:pvc-1 -p 10.0.0.5:3260 --login"
        );
        assert_eq!(
            logout_args(&t).join(" "),
            "-m node -T iqn.2016-09.com.openebs.cstor:pvc-1 -p 10.0.0.5:3260 --logout"
        );
        assert_eq!(
            delete_args(&t).join(" "),
            "-m node -T iqn.2016-09.com.openebs.cstor:pvc-1 -p 10.0.0.5:3260 -o delete"
        );
        assert_eq!(
            update_args(&t, "node.startup", "manual").join(" "),
            "-m node -T iqn.2016-09.com.openebs.cstor:pvc-1 -p 10.0.0.5:3260 -o update -n node.startup -v manual"
        );
        assert_eq!(
            by_path(&t),
            Path::new("/dev/disk/by-path/ip-10.0.0.5:3260-iscsi-iqn.2016-09.com.openebs.cstor:pvc-1-lun-0")
        );
        let login = Login {
            initiator_name: "iqn.2026-12.io.cstor:node-1".into(),
            pr_key: 1,
            chap: None,
        };
        let plain = settings(&login, None, Duration::from_secs(120));
        let get = |v: &[(String, String)], k: &str| {
            v.iter().find(|(n, _)| n == k).map(|(_, x)| x.clone())
        };
        assert_eq!(
            get(&plain, "iface.initiatorname").as_deref(),
            Some("iqn.2026-12.io.cstor:node-1")
        );
        assert_eq!(
            get(&plain, "node.session.timeo.replacement_timeout").as_deref(),
            Some("120")
        );
        assert_eq!(
            get(&plain, "node.session.auth.authmethod").as_deref(),
            Some("None")
        );
        let chap = Chap {
            user: "u".into(),
            secret: "s3cret-s3cret".into(),
            mutual: Some(("tu".into(), "t-s3cret-s3cret".into())),
        };
        let with = settings(&login, Some(&chap), Duration::from_millis(500));
        assert_eq!(
            get(&with, "node.session.auth.authmethod").as_deref(),
            Some("CHAP")
        );
        assert_eq!(
            get(&with, "node.session.auth.username").as_deref(),
            Some("u")
        );
        assert_eq!(
            get(&with, "node.session.auth.password").as_deref(),
            Some("s3cret-s3cret")
        );
        assert_eq!(
            get(&with, "node.session.auth.username_in").as_deref(),
            Some("tu")
        );
        assert_eq!(
            get(&with, "node.session.auth.password_in").as_deref(),
            Some("t-s3cret-s3cret")
        );
        assert_eq!(
            get(&with, "node.session.timeo.replacement_timeout").as_deref(),
            Some("1"),
            "open-iscsi counts whole seconds"
        );
    }
}
