//! The user's seed documents as test input: their YAML blocks verbatim (only the
//! machine-specific names replaced), the pool setup several tests start from, and I/O
//! through a volume's portal with qemu-io.

use std::process::Command;
use std::time::Duration;

use super::up::Up;

/// docs/seeds/how-to-build-cstor-pools.md.
pub const SEED: &str = include_str!("../../../../docs/seeds/how-to-build-cstor-pools.md");

/// The seed's ```yaml block that contains `needle`.
pub fn seed_yaml(needle: &str) -> String {
    SEED.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("no yaml block with {needle:?} in the seed"))
        .to_string()
}

/// qemu-io COMMANDS on LUN 0 of `iqn` at `portal` (60 s bound): (success, output).
/// qemu-io exits 0 even when a command fails; its failures say so, and count.
pub fn qemu_io(portal: &str, iqn: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.arg("60").arg("qemu-io").args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(format!("iscsi://{portal}/{iqn}/0"));
    let out = c.output().expect("run qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let failed = text.contains("failed") || text.contains("Pattern verification");
    (out.status.success() && !failed, text)
}

/// Lines of `out` that have `word` as a whole column.
pub fn count(out: &str, word: &str) -> usize {
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == word))
        .count()
}

impl Up {
    /// Applies the seed's stripe CStorPoolCluster `cstor-pool-stripe` with node i's
    /// BlockDevice in place of worker-0i's placeholder (three nodes), and waits for its
    /// three pool instances ONLINE.
    pub fn seed_stripe_pools(&self, limit: Duration) {
        let mut cspc = seed_yaml("name: cstor-pool-stripe");
        let placeholders: Vec<String> = cspc
            .split("blockDeviceName: \"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect();
        assert_eq!(placeholders.len(), 3, "the seed's stripe CSPC changed");
        for (i, old) in placeholders.iter().enumerate() {
            let node = format!("node-{}", i + 1);
            let bd = self.block_device(&node, limit);
            cspc = cspc
                .replace(old.as_str(), &bd)
                .replace(&format!("worker-0{}", i + 1), &node);
        }
        let f = self.dir.join("cspc.yaml");
        std::fs::write(&f, &cspc).unwrap();
        let (ok, out) = self.kubectl(&["apply", "-f", &f.display().to_string()]);
        assert!(ok, "apply cspc: {out}");
        self.wait_for(
            "3 CSPIs ONLINE",
            &["get", "cspi", "-n", "openebs", "--no-headers"],
            |v| count(v, "ONLINE") == 3,
            limit,
        );
    }
}

/// The volume claim `claim` (namespace `database`) is bound to, waited for.
pub fn bound_pv(up: &Up, claim: &str, limit: Duration) -> String {
    let v = up.wait_for(
        &format!("claim {claim} Bound"),
        &[
            "get",
            "pvc",
            "-n",
            "database",
            claim,
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
        |v| v.starts_with("Bound pvc-"),
        limit,
    );
    v.split_whitespace().nth(1).unwrap().to_owned()
}

/// The iqn and portal of volume `pv` once it is Healthy with `n` Healthy replicas.
pub fn healthy_target(up: &Up, pv: &str, n: usize, limit: Duration) -> (String, String) {
    up.wait_for(
        &format!("volume {pv} Healthy with {n} Healthy replicas"),
        &[
            "get",
            "cv,cvr",
            "-n",
            "openebs",
            "-l",
            &format!("openebs.io/persistent-volume={pv}"),
            "--no-headers",
        ],
        |v| v.lines().count() == n + 1 && v.matches(" Healthy").count() == n + 1,
        limit,
    );
    target_of(up, pv)
}

/// The iqn and portal the CStorVolume of `pv` names.
pub fn target_of(up: &Up, pv: &str) -> (String, String) {
    let cv = up.get(&[
        "get",
        "cv",
        pv,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.spec.iqn} {.spec.targetPortal}",
    ]);
    let parts: Vec<&str> = cv.split_whitespace().collect();
    let [iqn, portal] = parts[..] else {
        panic!("CV iqn/portal: {cv:?}")
    };
    (iqn.to_owned(), portal.to_owned())
}

/// Volume names on pool `cspi` of `node`, through its agent's admin socket.
pub fn pool_volumes(up: &Up, node: &str, cspi: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .env("CSTOR_HOME", up.dir.join("nodes").join(node).join("home"))
        .args(["volume", "list", cspi, "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str().map(str::to_string))
        .collect()
}
