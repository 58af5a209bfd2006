//! deploy/ for real clusters (docs/deploy.md): the kustomize tree applies with
//! `kubectl apply --dry-run=server` against `cstor apiserver` and then for real; the Helm
//! chart declares the same objects; the CSIDriver object and the sidecars fit what
//! `cstor csi` advertises.
//!
//! Helm is not installable here, so the chart is rendered by [`render`], a small
//! interpreter of the subset of Go templates the chart uses (`if`, `with`, `end`, `fail`,
//! `toYaml . | nindent N`, `and`/`or`/`not`/`eq`/`ne`, `.Values.*`, `.Release.Namespace`),
//! one action per control line. Anything else in a template fails the test, which keeps
//! the templates within that subset. Its limits: it is not helm (no sprig, no `include`,
//! no whitespace-trimming corner cases beyond whole control lines), so a template helm
//! would reject for a reason outside this subset would go unnoticed here.

mod apiserver_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::{free_port, have_kubectl, kubectl_server, required};
use cstor_csi::pb::controller_client::ControllerClient;
use cstor_csi::pb::controller_service_capability::rpc::Type as Rpc;
use cstor_csi::pb::identity_client::IdentityClient;
use cstor_csi::pb::plugin_capability::service::Type as Service;
use cstor_csi::pb::*;
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(rel)
}

/// `kubectl kustomize deploy/kustomize`, as YAML.
fn kustomize_yaml() -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy("kustomize"))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse_docs(yaml: &str, what: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("{what}: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Objects keyed by (kind, metadata.name), with null-valued keys dropped (a template's
/// empty `with` block leaves none, a stripped one could leave `key: null`).
fn by_kind_name(objs: Vec<Value>) -> BTreeMap<(String, String), Value> {
    fn drop_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(drop_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(drop_nulls),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for mut o in objs {
        drop_nulls(&mut o);
        let key = (
            o["kind"].as_str().unwrap_or_default().to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        assert!(!key.0.is_empty() && !key.1.is_empty(), "no kind/name: {o}");
        let dup = out.insert(key.clone(), o);
        assert!(dup.is_none(), "{key:?} declared twice");
    }
    out
}

/// The first path where `a` and `b` differ, with both values there.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            // Each key once (visiting shared keys twice would double the work per level).
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let here = format!("{at}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(p, q, &here) {
                            return Some(d);
                        }
                    }
                    (p, q) => return Some(format!("{here}: {p:?} vs {q:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}[{i}]"))),
        // kustomize writes the CRDs' `minimum: 0.0` as `0`: the same number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{at}: {a} vs {b}")),
    }
}

// ---- the chart renderer -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    Str(String),
    Word(String),
}

fn tokens(expr: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                out.push(if c == '(' { Tok::Open } else { Tok::Close });
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err(format!("unterminated string in {expr:?}")),
                    }
                }
                out.push(Tok::Str(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ' ' || c == '(' || c == ')' {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

struct Ctx<'a> {
    values: &'a Value,
    namespace: &'a str,
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

impl Ctx<'_> {
    fn field(&self, w: &str) -> Result<Value, String> {
        if w == ".Release.Namespace" {
            return Ok(Value::String(self.namespace.to_owned()));
        }
        let Some(path) = w.strip_prefix(".Values.") else {
            return Err(format!("unsupported reference {w:?}"));
        };
        let mut v = self.values;
        for part in path.split('.') {
            v = v
                .get(part)
                .ok_or_else(|| format!("{w}: no such value in values.yaml"))?;
        }
        Ok(v.clone())
    }

    /// One pipeline-free expression: a reference, a string, or a call `f arg...`.
    fn eval(&self, toks: &[Tok], pos: &mut usize) -> Result<Value, String> {
        let tok = toks.get(*pos).cloned().ok_or("expression ends early")?;
        *pos += 1;
        match tok {
            Tok::Str(s) => Ok(Value::String(s)),
            Tok::Open => {
                let v = self.call(toks, pos)?;
                match toks.get(*pos) {
                    Some(Tok::Close) => {
                        *pos += 1;
                        Ok(v)
                    }
                    _ => Err("missing )".into()),
                }
            }
            Tok::Close => Err("unexpected )".into()),
            Tok::Word(w) if w.starts_with('.') => self.field(&w),
            Tok::Word(w) => Err(format!("function {w:?} where a value is expected")),
        }
    }

    fn call(&self, toks: &[Tok], pos: &mut usize) -> Result<Value, String> {
        let Some(Tok::Word(f)) = toks.get(*pos).cloned() else {
            return self.eval(toks, pos);
        };
        if f.starts_with('.') {
            return self.eval(toks, pos);
        }
        *pos += 1;
        let mut args = Vec::new();
        while *pos < toks.len() && toks[*pos] != Tok::Close {
            args.push(self.eval(toks, pos)?);
        }
        let two = |args: &[Value]| -> Result<(Value, Value), String> {
            match args {
                [a, b] => Ok((a.clone(), b.clone())),
                _ => Err(format!("{f} takes two arguments")),
            }
        };
        Ok(match f.as_str() {
            "and" => Value::Bool(args.iter().all(truthy)),
            "or" => Value::Bool(args.iter().any(truthy)),
            "not" => Value::Bool(!args.first().is_some_and(truthy)),
            "eq" => {
                let (a, b) = two(&args)?;
                Value::Bool(a == b)
            }
            "ne" => {
                let (a, b) = two(&args)?;
                Value::Bool(a != b)
            }
            _ => return Err(format!("unsupported function {f:?}")),
        })
    }

    fn expr(&self, s: &str) -> Result<Value, String> {
        let toks = tokens(s)?;
        let mut pos = 0;
        let v = self.call(&toks, &mut pos)?;
        if pos != toks.len() {
            return Err(format!("trailing tokens in {s:?}"));
        }
        Ok(v)
    }
}

struct Frame {
    active: bool,
    dot: Value,
}

/// Renders one template of the chart's subset (see the module comment).
fn render(template: &str, values: &Value, namespace: &str) -> Result<String, String> {
    let ctx = Ctx { values, namespace };
    let mut stack = vec![Frame {
        active: true,
        dot: values.clone(),
    }];
    let mut out = String::new();
    for (n, line) in template.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        let trimmed = line.trim();
        let control = trimmed.starts_with("{{") && trimmed.ends_with("}}");
        if control {
            let inner = trimmed
                .trim_start_matches("{{")
                .trim_end_matches("}}")
                .trim_start_matches('-')
                .trim_end_matches('-')
                .trim();
            if inner.contains("{{") {
                return Err(at("one action per control line".into()));
            }
            let active = stack.last().is_some_and(|f| f.active);
            let dot = stack.last().map(|f| f.dot.clone()).unwrap_or_default();
            if inner.starts_with("/*") && inner.ends_with("*/") {
                continue;
            } else if let Some(e) = inner.strip_prefix("if ") {
                let v = if active {
                    ctx.expr(e).map_err(at)?
                } else {
                    Value::Null
                };
                stack.push(Frame {
                    active: active && truthy(&v),
                    dot,
                });
            } else if let Some(e) = inner.strip_prefix("with ") {
                let v = if active {
                    ctx.expr(e).map_err(at)?
                } else {
                    Value::Null
                };
                stack.push(Frame {
                    active: active && truthy(&v),
                    dot: v,
                });
            } else if inner == "end" {
                if stack.len() == 1 {
                    return Err(at("end without a block".into()));
                }
                stack.pop();
            } else if let Some(n) = inner.strip_prefix("toYaml . | nindent ") {
                let n: usize = n.trim().parse().map_err(|_| at("bad nindent".into()))?;
                if active {
                    // JSON is YAML (flow style): the same value kubectl would read.
                    out.push_str(&" ".repeat(n));
                    out.push_str(&dot.to_string());
                    out.push('\n');
                }
            } else if let Some(msg) = inner.strip_prefix("fail ") {
                if active {
                    return Err(format!("fail: {}", ctx.expr(msg).map_err(at)?));
                }
            } else {
                return Err(at("unsupported action".into()));
            }
            continue;
        }
        if !stack.last().is_some_and(|f| f.active) {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let j = rest[i..]
                .find("}}")
                .ok_or_else(|| at("unclosed {{".into()))?;
            let e = rest[i + 2..i + j].trim();
            match ctx.expr(e).map_err(at)? {
                Value::String(s) => out.push_str(&s),
                v @ (Value::Number(_) | Value::Bool(_)) => out.push_str(&v.to_string()),
                v => return Err(at(format!("{e} is {v}, not a scalar"))),
            }
            rest = &rest[i + j + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if stack.len() != 1 {
        return Err("a block has no end".into());
    }
    Ok(out)
}

fn chart() -> PathBuf {
    deploy("helm/cstor")
}

fn chart_values() -> Value {
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The chart's objects (templates, then crds/ as helm installs them) with `values`.
fn chart_objects(values: &Value, namespace: &str) -> Result<Vec<Value>, String> {
    let mut objs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml"),
            "{name}: the renderer reads only .yaml templates (no _helpers.tpl)"
        );
        let text = std::fs::read_to_string(&f).unwrap();
        let out = render(&text, values, namespace).map_err(|e| format!("{name}: {e}"))?;
        objs.extend(parse_docs(&out, &name));
    }
    let mut crds: Vec<PathBuf> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    crds.sort();
    for f in crds {
        objs.extend(parse_docs(
            &std::fs::read_to_string(&f).unwrap(),
            &f.display().to_string(),
        ));
    }
    Ok(objs)
}

fn set(values: &mut Value, path: &str, v: Value) {
    let mut at = values;
    for part in path.split('.') {
        at = &mut at[part];
    }
    *at = v;
}

#[test]
fn the_chart_with_the_seeds_flags_declares_what_kustomize_does() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let kustomize = by_kind_name(parse_docs(&kustomize_yaml(), "kubectl kustomize"));
    let defaults = chart_values();
    let mut seed = defaults.clone();
    // The seed's `helm install ... --set cstor.enabled=true --set ndm.enabled=true
    // --set localprovisioner.enabled=false --set mayastor.enabled=false`.
    set(&mut seed, "cstor.enabled", Value::Bool(true));
    set(&mut seed, "ndm.enabled", Value::Bool(true));
    set(&mut seed, "localprovisioner.enabled", Value::Bool(false));
    set(&mut seed, "mayastor.enabled", Value::Bool(false));
    for values in [&defaults, &seed] {
        let chart = by_kind_name(chart_objects(values, "openebs").unwrap());
        // The Namespace is helm's --create-namespace, not the chart's.
        let mut want = kustomize.clone();
        assert!(want
            .remove(&("Namespace".to_owned(), "openebs".to_owned()))
            .is_some());
        let names = |m: &BTreeMap<(String, String), Value>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&chart), names(&want), "chart vs kustomize objects");
        for (key, obj) in &want {
            if let Some(d) = first_difference(&chart[key], obj, "") {
                panic!("{key:?} differs between chart and kustomize at {d}");
            }
        }
        assert_eq!(chart.len(), 26, "{:?}", names(&chart));
    }

    // cstor.enabled=false renders no templates (only crds/, which helm always installs).
    let mut off = defaults.clone();
    set(&mut off, "cstor.enabled", Value::Bool(false));
    let objs = chart_objects(&off, "openebs").unwrap();
    assert!(
        objs.iter().all(|o| o["kind"] == "CustomResourceDefinition"),
        "{objs:?}"
    );
    assert_eq!(objs.len(), 10);
    // What the chart cannot honour is refused, as helm's `fail` would.
    for flag in ["mayastor.enabled", "localprovisioner.enabled"] {
        let mut v = defaults.clone();
        set(&mut v, flag, Value::Bool(true));
        let e = chart_objects(&v, "openebs").unwrap_err();
        assert!(
            e.contains("fail: ") && e.contains("cstor only"),
            "{flag}: {e}"
        );
    }
    let e = chart_objects(&defaults, "kube-system").unwrap_err();
    assert!(e.contains("--namespace openebs"), "{e}");
    // Values reach the objects: images, node selectors, replicas.
    let mut v = defaults.clone();
    set(
        &mut v,
        "image.repository",
        Value::from("registry.example/cstor"),
    );
    set(&mut v, "image.tag", Value::from("9.9.9"));
    set(
        &mut v,
        "csiNode.nodeSelector",
        serde_json::json!({"disk": "ssd"}),
    );
    set(&mut v, "controller.replicas", Value::from(3));
    let objs = by_kind_name(chart_objects(&v, "openebs").unwrap());
    let ds = &objs[&("DaemonSet".to_owned(), "openebs-cstor-csi-node".to_owned())];
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["disk"],
        "ssd"
    );
    let agent = container(ds, "cstor-node");
    assert_eq!(agent["image"], "registry.example/cstor:9.9.9");
    let ctl = &objs[&(
        "Deployment".to_owned(),
        "openebs-cstor-controller".to_owned(),
    )];
    assert_eq!(ctl["spec"]["replicas"], 3);
}

#[test]
fn the_renderer_refuses_what_it_does_not_interpret() {
    let values = serde_json::json!({"a": {"b": "x", "on": true}});
    assert_eq!(
        render("k: {{ .Values.a.b }}\n", &values, "ns").unwrap(),
        "k: x\n"
    );
    assert!(render("k: {{ include \"x\" . }}\n", &values, "ns").is_err());
    assert!(render("k: {{ .Values.a.missing }}\n", &values, "ns").is_err());
    assert!(render("{{- if .Values.a.on }}\nk: 1\n", &values, "ns").is_err());
    assert!(render("{{- range .Values.a }}\n{{- end }}\n", &values, "ns").is_err());
    assert_eq!(
        render(
            "{{- if not .Values.a.on }}\nk: 1\n{{- end }}\nj: 2\n",
            &values,
            "ns"
        )
        .unwrap(),
        "j: 2\n"
    );
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {workload}"))
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kustomize_applies_to_the_embedded_api_server_dry_run_then_for_real() {
    let Some((dir, s)) = kubectl_server() else {
        return;
    };
    let all = dir.path().join("all.yaml");
    let yaml = kustomize_yaml();
    std::fs::write(&all, &yaml).unwrap();
    let objs = by_kind_name(parse_docs(&yaml, "kubectl kustomize"));
    let all = all.to_string_lossy().into_owned();

    // Custom resources are not among them, but the CRDs and the namespace are applied
    // first as a real install's first step would, so the dry run sees every kind served.
    s.ok(&["apply", "-f", &deploy("crds").to_string_lossy()]);
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=20s",
    ]);
    s.ok(&["create", "namespace", "openebs"]);

    let out = s.ok(&["apply", "--dry-run=server", "-f", &all]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), objs.len(), "{out}");
    for (kind, name) in objs.keys() {
        // `kind[.group]/name verb (server dry run)`
        let k = kind.to_lowercase();
        assert!(
            lines.iter().any(|&l| {
                let (what, rest) = l.split_once(' ').unwrap_or((l, ""));
                let (kg, n) = what.split_once('/').unwrap_or((what, ""));
                (kg == k || kg.starts_with(&format!("{k}.")))
                    && n == name.as_str()
                    && rest.ends_with("(server dry run)")
            }),
            "{kind}/{name} not in the dry run:\n{out}"
        );
    }
    // A dry run writes nothing.
    for kind in ["deployments", "daemonsets", "serviceaccounts"] {
        let got = s.ok(&["get", kind, "-n", "openebs", "-o", "name"]);
        assert!(
            !got.contains("openebs-cstor"),
            "{kind} after a dry run: {got}"
        );
    }
    assert!(!s
        .ok(&["get", "csidrivers", "-o", "name"])
        .contains("cstor.csi.openebs.io"));

    s.ok(&["apply", "-f", &all]);
    let json = |args: &[&str]| -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&s.ok(&a)).unwrap()
    };
    let drv = json(&["get", "csidriver", "cstor.csi.openebs.io"]);
    assert_eq!(drv["spec"]["attachRequired"], true, "{drv}");
    assert_eq!(drv["spec"]["podInfoOnMount"], true, "{drv}");
    assert_eq!(drv["spec"]["fsGroupPolicy"], "File", "{drv}");
    assert_eq!(
        drv["spec"]["volumeLifecycleModes"],
        serde_json::json!(["Persistent"])
    );
    let ds = json(&[
        "get",
        "daemonset",
        "openebs-cstor-csi-node",
        "-n",
        "openebs",
    ]);
    let pod = &ds["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app"], "cstor-pool");
    let agent = container(&ds, "cstor-node");
    assert!(
        agent["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "exporter" && p["containerPort"] == 9500),
        "{agent}"
    );
    let svc = json(&["get", "service", "cstor-pool-metrics", "-n", "openebs"]);
    assert_eq!(svc["spec"]["selector"]["app"], "cstor-pool");
    let crb = json(&["get", "clusterrolebinding", "openebs-cstor-csi-node"]);
    assert_eq!(crb["subjects"][0]["namespace"], "openebs");
    let roles = s.ok(&["get", "clusterroles", "-o", "name"]);
    for r in ["openebs-cstor-controller", "openebs-cstor-csi-controller"] {
        assert!(roles.contains(r), "{roles}");
    }
    // Applying again changes nothing.
    let again = s.ok(&["apply", "-f", &all]);
    assert!(
        again.lines().all(|l| l.ends_with(" unchanged")),
        "second apply: {again}"
    );
}

/// A `cstor csi` process, stopped on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sidecars the deployment runs ahead of the driver: the controller capability each
/// needs is not advertised yet on this branch, and the reason it is deployed anyway.
/// The test fails when a capability arrives (remove the entry) or when a sidecar needs a
/// capability that is neither advertised nor listed here.
const AHEAD_OF_THE_DRIVER: &[(&str, Rpc, &str)] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csidriver_and_sidecars_match_what_the_driver_advertises() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let objs = by_kind_name(parse_docs(&kustomize_yaml(), "kubectl kustomize"));
    let dir = tempfile::tempdir().unwrap();
    // Capabilities are answered without an API server: this one is not there.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            free_port()
        ),
    )
    .unwrap();
    let socket = dir.path().join("csi.sock");
    let log = std::fs::File::create(dir.path().join("csi.log")).unwrap();
    let mut d = Driver(
        Command::new(env!("CARGO_BIN_EXE_cstor"))
            .arg("csi")
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .args(["--mode", "controller", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(d.0.try_wait().unwrap().is_none(), "cstor csi exited");
        assert!(t0.elapsed() < Duration::from_secs(30), "no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut id = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch);
    let name = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .name;
    let plugin: Vec<i32> = id
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(plugin_capability::Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    let rpcs: Vec<i32> = ctl
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    let has = |r: Rpc| rpcs.contains(&(r as i32));

    let drv = &objs[&("CSIDriver".to_owned(), name.clone())];
    let deployment = &objs[&(
        "Deployment".to_owned(),
        "openebs-cstor-csi-controller".to_owned(),
    )];
    let node = &objs[&("DaemonSet".to_owned(), "openebs-cstor-csi-node".to_owned())];
    let registrar = args(container(node, "csi-node-driver-registrar"));
    assert!(
        registrar.contains(&format!(
            "--kubelet-registration-path=/var/lib/kubelet/plugins/{name}/csi.sock"
        )),
        "{registrar:?}"
    );
    let provisioner = args(container(deployment, "csi-provisioner"));
    assert_eq!(
        provisioner.contains(&"--feature-gates=Topology=true".to_owned()),
        plugin.contains(&(Service::VolumeAccessibilityConstraints as i32)),
        "topology in the provisioner iff the driver has accessibility constraints"
    );
    assert!(has(Rpc::CreateDeleteVolume));
    // Each sidecar needs one controller capability; each such capability needs its sidecar.
    let needs = [
        ("csi-resizer", Rpc::ExpandVolume),
        ("csi-attacher", Rpc::PublishUnpublishVolume),
        ("csi-snapshotter", Rpc::CreateDeleteSnapshot),
    ];
    for (sidecar, rpc) in needs {
        let present = deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == sidecar);
        let ahead = AHEAD_OF_THE_DRIVER
            .iter()
            .find(|(s, r, _)| *s == sidecar && *r == rpc);
        match (present, has(rpc), ahead) {
            (true, true, None) | (false, false, None) => {}
            (true, false, Some((_, _, why))) => println!("{sidecar} ahead of the driver: {why}"),
            (true, true, Some(_)) => panic!(
                "the driver now advertises {rpc:?}: remove {sidecar} from AHEAD_OF_THE_DRIVER"
            ),
            (true, false, None) => panic!("{sidecar} needs {rpc:?}, which the driver lacks"),
            (false, true, _) => {
                panic!("the driver advertises {rpc:?} but {sidecar} is not deployed")
            }
            (false, false, Some(_)) => panic!("{sidecar} is listed ahead but not deployed"),
        }
    }
    // attachRequired: ControllerPublish records the node and fences the volume (RWO); the
    // VolumeAttachment that kubelet waits for exists only when attach is required.
    assert_eq!(drv["spec"]["attachRequired"], true);
    assert!(
        has(Rpc::PublishUnpublishVolume)
            || AHEAD_OF_THE_DRIVER
                .iter()
                .any(|a| a.1 == Rpc::PublishUnpublishVolume)
    );
    // Only persistent volumes: the driver has no ephemeral inline volume support.
    assert_eq!(
        drv["spec"]["volumeLifecycleModes"],
        serde_json::json!(["Persistent"])
    );
    let plugin_args = args(container(deployment, "cstor-csi-plugin"));
    assert!(
        plugin_args.contains(&"--mode=controller".to_owned()),
        "{plugin_args:?}"
    );
    let node_args = args(container(node, "cstor-csi-plugin"));
    assert!(
        node_args.contains(&"--node-id=$(NODE_NAME)".to_owned()),
        "{node_args:?}"
    );
}

/// A `cstor node` process, killed on drop.
struct NodeAgent(Child);

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The DaemonSet runs `cstor node` without --kubeconfig: it finds the API server from the
/// environment (in a pod, the in-cluster configuration; here $KUBECONFIG, the same
/// fallback chain). A Node a kubelet posts status for keeps the kubelet's status.
#[test]
fn the_node_agent_needs_no_kubeconfig_flag_and_leaves_a_kubelets_node_alone() {
    let Some((dir, s)) = kubectl_server() else {
        return;
    };
    s.ok(&["create", "namespace", "openebs"]);
    let node = dir.path().join("node.yaml");
    std::fs::write(
        &node,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-k\n  labels:\n    kubernetes.io/hostname: node-k\n",
    )
    .unwrap();
    s.ok(&["apply", "-f", &node.to_string_lossy()]);
    let status = serde_json::json!({"status": {
        "nodeInfo": {"kubeletVersion": "v1.33.1", "architecture": "amd64",
                     "operatingSystem": "linux"},
        "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}],
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "message": "kubelet has sufficient memory available"},
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status"}
        ]
    }});
    s.ok(&[
        "patch",
        "node",
        "node-k",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let before: Value =
        serde_json::from_str(&s.ok(&["get", "node", "node-k", "-o", "json"])).unwrap();
    assert_eq!(before["status"]["addresses"][0]["address"], "10.0.0.7");

    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let log = dir.path().join("agent.log");
    let _agent = NodeAgent(
        Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(["node", "--name", "node-k", "--address", "127.0.0.1"])
            .arg(format!("--iscsi-port={}", free_port()))
            .arg("--metrics=off")
            .arg("--resync=1")
            .arg("--disk")
            .arg(&disk)
            .arg("--home")
            .arg(dir.path().join("home"))
            .env("KUBECONFIG", s.kubeconfig())
            .env("CSTOR_CACHE_SIZE", "16M")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // A BlockDevice of the node means a whole pass ran after the Node step.
    let t0 = Instant::now();
    loop {
        let bds = s.ok(&[
            "get",
            "blockdevices",
            "-n",
            "openebs",
            "-l",
            "kubernetes.io/hostname=node-k",
            "-o",
            "name",
        ]);
        if !bds.trim().is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no BlockDevice: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    s.ok(&["get", "lease", "cstor-node-node-k", "-n", "openebs"]);
    // Two more passes, then the kubelet's status is still the kubelet's.
    std::thread::sleep(Duration::from_millis(2500));
    let after: Value =
        serde_json::from_str(&s.ok(&["get", "node", "node-k", "-o", "json"])).unwrap();
    assert_eq!(after["status"]["addresses"], before["status"]["addresses"]);
    assert_eq!(
        after["status"]["conditions"],
        before["status"]["conditions"]
    );
}

/// Without --kubeconfig, $KUBECONFIG, ~/.kube/config or a pod's service account, the
/// agent and the controller say so and exit.
#[test]
fn without_any_configuration_the_agent_and_controller_name_the_in_cluster_lookup() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        vec!["node", "--name", "node-x", "--metrics=off"],
        vec!["controller"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(help.contains("in-cluster"), "{args:?} --help: {help}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cstor"));
        cmd.args(&args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("HOME", home.path())
            .env("CSTOR_HOME", home.path().join("cstor"))
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} ran without an API server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("in-cluster configuration"), "{args:?}: {err}");
    }
}
