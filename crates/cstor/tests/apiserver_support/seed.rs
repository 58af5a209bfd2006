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
