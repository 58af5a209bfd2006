//! Guards the promise that the user's documents work verbatim: every YAML document of a
//! cstor kind in `shared/seeds/*.md` (fenced blocks and the `<div class="co">` blocks of
//! the alpha guide) must pass our CRD schema and semantic validation and deserialise into
//! our types. Fragments the seeds tell users to put into `kubectl edit` (a CSPC's
//! `spec.pools`, a CStorVolume's spec and status) are checked inside a whole object of
//! their kind. Counts are asserted so a change in extraction cannot silently check
//! nothing.

use cstor_api::{v1, v1alpha1};
use serde_json::{json, Value};
use std::path::PathBuf;

fn seeds_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var("CSTOR_SEEDS_DIR").ok().map(PathBuf::from),
        // The copy kept in the repository, so a clean checkout tests them.
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/seeds")),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seeds")),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../../shared/seeds")),
        Some(PathBuf::from("/work/shared/seeds")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("how-to-build-cstor-pools.md").is_file())
}

/// Text blocks that may hold YAML: fenced code blocks and `<div class="co">` blocks.
fn blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            match fence.take() {
                Some(lines) => out.push(dedent(&lines)),
                None => fence = Some(Vec::new()),
            }
            continue;
        }
        if let Some(lines) = fence.as_mut() {
            lines.push(line);
        }
    }
    let mut rest = markdown;
    while let Some(start) = rest.find("<div class=\"co\">") {
        let after = &rest[start + "<div class=\"co\">".len()..];
        let end = after.find("</div>").unwrap_or(after.len());
        let lines: Vec<&str> = after[..end].lines().collect();
        out.push(dedent(&lines));
        rest = &after[end..];
    }
    out
}

fn dedent(lines: &[&str]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

fn documents(block: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in block.lines() {
        if line.trim() == "---" {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs
}

fn is_ours(api_version: &str) -> bool {
    api_version == "cstor.openebs.io/v1" || api_version == "openebs.io/v1alpha1"
}

/// A whole object of `kind` around a fragment's `spec` (and `status`).
fn wrap(api_version: &str, kind: &str, fragment: &Value) -> Value {
    let mut object = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "fragment", "namespace": "openebs"},
    });
    for key in ["spec", "status"] {
        if let Some(v) = fragment.get(key) {
            object[key] = v.clone();
        }
    }
    object
}

fn check(validator: &cstor_api::validation::Validator, object: &Value, origin: &str) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let errors = validator
        .validate(api_version, kind, object, None)
        .unwrap_or_else(|| panic!("{origin}: {api_version} {kind} is not a cstor kind"));
    assert!(errors.is_empty(), "{origin}: {kind} rejected: {errors:?}");
    let typed_ok = match (api_version, kind) {
        ("cstor.openebs.io/v1", "CStorPoolCluster") => {
            serde_json::from_value::<v1::CStorPoolCluster>(object.clone()).is_ok()
        }
        ("cstor.openebs.io/v1", "CStorVolume") => {
            serde_json::from_value::<v1::CStorVolume>(object.clone()).is_ok()
        }
        ("openebs.io/v1alpha1", "CStorPoolCluster") => {
            let alpha: v1alpha1::CStorPoolCluster = serde_json::from_value(object.clone()).unwrap();
            let converted = cstor_api::conversion::alpha_to_v1(&alpha).unwrap();
            assert!(cstor_api::validation::validate_cspc(&converted).is_empty());
            true
        }
        other => panic!("{origin}: no typed check for {other:?}"),
    };
    assert!(
        typed_ok,
        "{origin}: {kind} does not deserialise into the Rust type"
    );
}

#[test]
fn every_seed_yaml_of_a_cstor_kind_validates_and_deserialises() {
    let Some(dir) = seeds_dir() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "seeds not found (docs/seeds or CSTOR_SEEDS_DIR) and CI is set"
        );
        println!("SKIP: seeds not found (set CSTOR_SEEDS_DIR to the seeds folder)");
        return;
    };
    let validator = cstor_api::validation::Validator::new();
    let mut whole = Vec::new();
    let mut fragments = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (b, block) in blocks(&text).iter().enumerate() {
            for (d, doc) in documents(block).iter().enumerate() {
                let origin = format!("{file} block {b} doc {d}");
                let mentions_ours = doc.contains("apiVersion: cstor.openebs.io")
                    || doc.contains("apiVersion: openebs.io/v1alpha1");
                let value: Value = match serde_saphyr::from_str(doc) {
                    Ok(v) => v,
                    Err(e) => {
                        assert!(
                            !mentions_ours,
                            "{origin}: a cstor document does not parse as YAML: {e}"
                        );
                        continue;
                    }
                };
                let Some(map) = value.as_object() else {
                    continue;
                };
                match map.get("apiVersion").and_then(Value::as_str) {
                    Some(av) if is_ours(av) => {
                        check(&validator, &value, &origin);
                        whole.push(format!("{origin}: {}", map["kind"]));
                    }
                    Some(_) => {}
                    None => {
                        let Some(spec) = map.get("spec") else {
                            continue;
                        };
                        let object = if spec.get("pools").is_some() {
                            wrap("cstor.openebs.io/v1", "CStorPoolCluster", &value)
                        } else if spec.get("replicaDetails").is_some() {
                            wrap("cstor.openebs.io/v1", "CStorVolume", &value)
                        } else {
                            continue;
                        };
                        check(&validator, &object, &origin);
                        fragments.push(format!("{origin}: {}", object["kind"]));
                    }
                }
            }
        }
    }
    println!("whole objects: {whole:#?}\nfragments: {fragments:#?}");
    // how-to-build: stripe, mirror, raidz CSPCs; alpha guide: one alpha CSPC.
    assert_eq!(whole.len(), 4, "{whole:?}");
    // how-to-build: two `spec.pools` edits; alpha guide: two CStorVolume spec+status.
    assert_eq!(fragments.len(), 4, "{fragments:?}");
}

#[test]
fn alpha_seed_cspc_converts_to_v1_and_back_unchanged() {
    let yaml = r#"
apiVersion: openebs.io/v1alpha1
kind: CStorPoolCluster
metadata:
  name: cstor-disk-cspc
  namespace: openebs
spec:
  pools:
  - nodeSelector:
      kubernetes.io/hostname: "gke-ranjith-csi-default-pool-a9a13f27-6qv1"
    raidGroups:
    - type: "stripe"
      isWriteCache: false
      isSpare: false
      isReadCache: false
      blockDevices:
      - blockDeviceName: "blockdevice-936911c5c9b0218ed59e64009cc83c8f"
    poolConfig:
      cacheFile: ""
      defaultRaidGroupType: "stripe"
      overProvisioning: false
      compression: "off"
"#;
    let alpha: v1alpha1::CStorPoolCluster = serde_saphyr::from_str(yaml).unwrap();
    let v1 = cstor_api::conversion::alpha_to_v1(&alpha).unwrap();
    let pool = &v1.spec.pools[0];
    assert_eq!(
        pool.pool_config.data_raid_group_type,
        v1::RaidGroupType::Stripe
    );
    assert_eq!(pool.pool_config.compression, Some(v1::Compression::Off));
    assert_eq!(
        pool.data_raid_groups[0].block_devices[0].block_device_name,
        "blockdevice-936911c5c9b0218ed59e64009cc83c8f"
    );
    assert_eq!(cstor_api::conversion::v1_to_alpha(&v1), alpha);
}

/// The `kubectl get` header kube-apiserver's Table output gives for a CRD: NAME, then
/// the printer columns (wide ones only with `-o wide`) upper-cased; AGE alone when the
/// CRD declares none.
fn header(crd_name: &str, wide: bool) -> String {
    let crd = cstor_api::crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(crd_name))
        .unwrap();
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default();
    let mut names = vec!["NAME".to_owned()];
    if columns.is_empty() {
        names.push("AGE".to_owned());
    }
    for c in columns {
        if wide || c.priority.unwrap_or(0) == 0 {
            names.push(c.name.to_uppercase());
        }
    }
    names.join(" ")
}

#[test]
fn seed_kubectl_get_headers_match_the_printer_columns() {
    let Some(dir) = seeds_dir() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "seeds not found (docs/seeds or CSTOR_SEEDS_DIR) and CI is set"
        );
        println!("SKIP: seeds not found (set CSTOR_SEEDS_DIR to the seeds folder)");
        return;
    };
    let text = std::fs::read_to_string(dir.join("how-to-build-cstor-pools.md")).unwrap();
    let seed_headers: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# NAME"))
        .map(|rest| {
            format!(
                "NAME {}",
                rest.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    let expect = |crd: &str, wide: bool| {
        let h = header(crd, wide);
        assert!(
            seed_headers.contains(&h),
            "{crd}: our header {h:?} is not among the seed's {seed_headers:#?}"
        );
    };
    expect("cstorpoolclusters.cstor.openebs.io", false);
    expect("cstorpoolinstances.cstor.openebs.io", false);
    expect("cstorvolumes.cstor.openebs.io", false);
    // The seed runs `kubectl get cstorvolumereplica -o wide`: no wide-only CVR columns.
    assert_eq!(
        header("cstorvolumereplicas.cstor.openebs.io", true),
        header("cstorvolumereplicas.cstor.openebs.io", false)
    );
    expect("cstorvolumereplicas.cstor.openebs.io", true);
    // The seed's BlockDevice listing stops before AGE.
    let bd = header("blockdevices.openebs.io", false);
    assert!(
        seed_headers
            .iter()
            .any(|s| bd.starts_with(s.as_str()) && s.contains("CLAIMSTATE")),
        "{bd:?} vs {seed_headers:#?}"
    );
}
