//! Admission webhooks end to end with the real kubectl: an in-test HTTPS webhook server
//! (its own self-signed certificate, handed over as `caBundle`) registered through a
//! ValidatingWebhookConfiguration and a MutatingWebhookConfiguration. A denied create and
//! a denied delete reach kubectl with the webhook's message; the mutating webhook's
//! label is on the stored object; namespaceSelector and objectSelector pick what is sent;
//! a webhook that is down refuses writes under failurePolicy Fail and lets them through
//! under Ignore; one that never answers is cut off by timeoutSeconds.

mod apiserver_support;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver_support::{free_port, have_kubectl, required, ApiServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The webhook's decision for one AdmissionReview request.
fn decide(path: &str, review: &Value) -> Value {
    let req = &review["request"];
    let uid = req["uid"].clone();
    let deny =
        |msg: &str| json!({"uid": uid, "allowed": false, "status": {"code": 403, "message": msg}});
    let response = match path {
        "/mutate" => {
            let patch = if req["object"]["metadata"]["labels"].is_object() {
                json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
            };
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch",
                   "patch": b64(patch.to_string().as_bytes())})
        }
        _ => match req["operation"].as_str() {
            Some("DELETE") if req["oldObject"]["metadata"]["labels"]["in-use"] == "true" => {
                deny("the object is in use")
            }
            Some("CREATE" | "UPDATE") if req["object"]["data"].get("bad").is_some() => {
                deny("bad data is not allowed")
            }
            _ => json!({"uid": uid, "allowed": true}),
        },
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Serves one HTTP/1.1 request per connection over TLS; counts the requests.
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    calls: Arc<AtomicU64>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            let Ok(mut s) = acceptor.accept(tcp).await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head_end, len) = loop {
                let Ok(n) = s.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (p + 4, len);
                }
            };
            while buf.len() < head_end + len {
                let Ok(n) = s.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let review: Value =
                serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
            calls.fetch_add(1, Ordering::SeqCst);
            let body = decide(&path, &review).to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Starts the webhook server on a runtime of its own; returns (port, CA PEM, counter).
fn start_webhook(rt: &tokio::runtime::Runtime) -> (u16, String, Arc<AtomicU64>) {
    start_webhook_at(rt, "127.0.0.1", "127.0.0.1")
}

/// Starts the webhook server on `ip` with a certificate for `cert_name`.
fn start_webhook_at(
    rt: &tokio::runtime::Runtime,
    ip: &str,
    cert_name: &str,
) -> (u16, String, Arc<AtomicU64>) {
    let ck = rcgen::generate_simple_self_signed(vec![cert_name.to_string()]).unwrap();
    let pem = ck.cert.pem();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let calls = Arc::new(AtomicU64::new(0));
    let listener = rt.block_on(tokio::net::TcpListener::bind((ip, 0))).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(serve(listener, acceptor, calls.clone()));
    (port, pem, calls)
}

fn apply(s: &ApiServer, dir: &std::path::Path, name: &str, doc: &Value) -> std::process::Output {
    let path = dir.join(format!("{name}.json"));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    s.kubectl(&["apply", "-f", path.to_str().unwrap()])
}

fn cm(ns: &str, name: &str, labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": data})
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn admission_webhooks_deny_mutate_and_follow_failure_policy() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, ca_pem, calls) = start_webhook(&rt);
    let ca = b64(ca_pem.as_bytes());
    // A port that answers TCP but never speaks TLS: the timeout must cut it off.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming().flatten() {
            held.push(c);
        }
    });
    let down_port = free_port();

    let dir = tempfile::tempdir().unwrap();
    let s = ApiServer::start(&dir.path().join("data"), free_port());
    let d = dir.path();
    let rules = json!([{"operations": ["CREATE", "UPDATE", "DELETE"], "apiGroups": [""],
        "apiVersions": ["v1"], "resources": ["configmaps"], "scope": "Namespaced"}]);
    let hook = |name: &str, url: String, extra: Value| {
        let mut h = json!({"name": name, "clientConfig": {"url": url, "caBundle": ca},
            "rules": rules, "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 2});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let vwc = |policy: &str| {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "cstor-test"}, "webhooks": [
            hook("deny.test.cstor.io", format!("https://127.0.0.1:{port}/validate"),
                 json!({"failurePolicy": "Fail", "namespaceSelector": {"matchLabels": {"webhook": "on"}}})),
            hook("down.test.cstor.io", format!("https://127.0.0.1:{down_port}/validate"),
                 json!({"failurePolicy": policy, "objectSelector": {"matchLabels": {"probe": "down"}}})),
            hook("slow.test.cstor.io", format!("https://127.0.0.1:{hang_port}/validate"),
                 json!({"failurePolicy": policy, "timeoutSeconds": 1,
                        "objectSelector": {"matchLabels": {"probe": "slow"}}})),
        ]})
    };
    let out = apply(&s, d, "vwc", &vwc("Fail"));
    assert!(out.status.success(), "{}", stderr(&out));
    let mwc = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "cstor-test"}, "webhooks": [
            hook("label.test.cstor.io", format!("https://127.0.0.1:{port}/mutate"),
                 json!({"namespaceSelector": {"matchLabels": {"webhook": "on"}}}))]});
    let out = apply(&s, d, "mwc", &mwc);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s
        .ok(&["get", "validatingwebhookconfigurations"])
        .contains("cstor-test"));
    s.ok(&["create", "namespace", "w"]);
    s.ok(&["label", "namespace", "w", "webhook=on"]);
    s.ok(&["create", "namespace", "plain"]);

    // Allowed and mutated.
    s.ok(&[
        "create",
        "configmap",
        "good",
        "-n",
        "w",
        "--from-literal=a=b",
    ]);
    let got: Value =
        serde_json::from_str(&s.ok(&["get", "cm", "good", "-n", "w", "-o", "json"])).unwrap();
    assert_eq!(got["metadata"]["labels"]["mutated"], "yes", "{got}");
    // Denied, the webhook's message on kubectl's stderr.
    let err = s.fails(&[
        "create",
        "configmap",
        "bad",
        "-n",
        "w",
        "--from-literal=bad=1",
    ]);
    assert!(
        err.contains(
            "admission webhook \"deny.test.cstor.io\" denied the request: bad data is not allowed"
        ),
        "{err}"
    );
    assert!(s.kubectl(&["get", "cm", "bad", "-n", "w"]).status.code() != Some(0));
    // An update that makes it bad is denied too.
    let err = s.fails(&[
        "patch",
        "cm",
        "good",
        "-n",
        "w",
        "--type=merge",
        "-p",
        r#"{"data":{"bad":"1"}}"#,
    ]);
    assert!(err.contains("bad data is not allowed"), "{err}");
    // namespaceSelector: the namespace without the label is not sent to the webhook.
    let before = calls.load(Ordering::SeqCst);
    s.ok(&[
        "create",
        "configmap",
        "bad",
        "-n",
        "plain",
        "--from-literal=bad=1",
    ]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "a non-matching namespace was sent"
    );
    // A delete the webhook refuses.
    s.ok(&["label", "cm", "good", "-n", "w", "in-use=true"]);
    let err = s.fails(&["delete", "cm", "good", "-n", "w"]);
    assert!(err.contains("the object is in use"), "{err}");
    s.ok(&["get", "cm", "good", "-n", "w"]);

    // A webhook that is down: Fail refuses, with kube-apiserver's wording.
    let probe =
        |name: &str, which: &str| cm("plain", name, json!({"probe": which}), json!({"a": "b"}));
    let out = apply(&s, d, "down1", &probe("down1", "down"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("failed calling webhook \"down.test.cstor.io\""),
        "{}",
        stderr(&out)
    );
    let started = Instant::now();
    let out = apply(&s, d, "slow1", &probe("slow1", "slow"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("failed calling webhook \"slow.test.cstor.io\""),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "timeoutSeconds was not kept"
    );
    // Ignore lets both through.
    let out = apply(&s, d, "vwc", &vwc("Ignore"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = apply(&s, d, "down2", &probe("down2", "down"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = apply(&s, d, "slow2", &probe("slow2", "slow"));
    assert!(out.status.success(), "{}", stderr(&out));
    // Removing the configuration stops the calls.
    s.ok(&["delete", "validatingwebhookconfiguration", "cstor-test"]);
    s.ok(&["delete", "mutatingwebhookconfiguration", "cstor-test"]);
    s.ok(&[
        "create",
        "configmap",
        "bad",
        "-n",
        "w",
        "--from-literal=bad=1",
    ]);
    drop(rt);
}

/// A webhook named by `clientConfig.service`: called at the Service's ready
/// EndpointSlice address (the certificate is for `hooks.w.svc`), at its clusterIP when
/// it has no endpoints, and failing (policy Fail) when neither answers.
#[test]
fn webhook_by_service_reference_follows_endpoints_then_cluster_ip() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The endpoint listens on 127.0.0.3; the Service's clusterIP is 127.0.0.2, where
    // nothing listens, so a call that falls back to it fails naming that address.
    let (port, ca_pem, calls) = start_webhook_at(&rt, "127.0.0.3", "hooks.w.svc");
    let ca = b64(ca_pem.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let s = ApiServer::start(&dir.path().join("data"), free_port());
    let d = dir.path();
    s.ok(&["create", "namespace", "w"]);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hooks", "namespace": "w"},
        "spec": {"clusterIP": "127.0.0.2", "ports": [{"name": "https", "port": 8443, "targetPort": "webhook"}]}});
    let out = apply(&s, d, "svc", &svc);
    assert!(out.status.success(), "{}", stderr(&out));
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "hooks-abc", "namespace": "w", "labels": {"kubernetes.io/service-name": "hooks"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.9"], "conditions": {"ready": false}},
                      {"addresses": ["127.0.0.3"], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
    let out = apply(&s, d, "slice", &slice);
    assert!(out.status.success(), "{}", stderr(&out));
    let vwc = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "by-service"}, "webhooks": [{"name": "svc.test.cstor.io",
            "clientConfig": {"service": {"namespace": "w", "name": "hooks", "port": 8443, "path": "/validate"},
                             "caBundle": ca},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["configmaps"], "scope": "Namespaced"}],
            "objectSelector": {"matchLabels": {"checked": "yes"}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5}]});
    let out = apply(&s, d, "vwc", &vwc);
    assert!(out.status.success(), "{}", stderr(&out));
    let checked = |name: &str, data: Value| cm("w", name, json!({"checked": "yes"}), data);
    // Through the ready endpoint: the webhook's own answers.
    let out = apply(&s, d, "bad1", &checked("bad1", json!({"bad": "1"})));
    assert!(
        stderr(&out).contains("bad data is not allowed"),
        "{}",
        stderr(&out)
    );
    let out = apply(&s, d, "good1", &checked("good1", json!({"a": "b"})));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // No endpoints: the clusterIP on the Service port, where nothing listens yet.
    s.ok(&["delete", "endpointslice", "hooks-abc", "-n", "w"]);
    let out = apply(&s, d, "good2", &checked("good2", json!({"a": "b"})));
    assert!(
        stderr(&out).contains("failed calling webhook \"svc.test.cstor.io\"")
            && stderr(&out).contains("127.0.0.2:8443"),
        "{}",
        stderr(&out)
    );
    // An Endpoints object (the older API) is followed too.
    let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "hooks", "namespace": "w"},
        "subsets": [{"addresses": [{"ip": "127.0.0.3"}], "ports": [{"name": "https", "port": port}]}]});
    let out = apply(&s, d, "ep", &ep);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = apply(&s, d, "good3", &checked("good3", json!({"a": "b"})));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // A reference to a Service that does not exist fails the call.
    s.ok(&["delete", "endpoints", "hooks", "-n", "w"]);
    s.ok(&["delete", "service", "hooks", "-n", "w"]);
    let out = apply(&s, d, "good4", &checked("good4", json!({"a": "b"})));
    assert!(
        stderr(&out).contains("service \"hooks\" not found"),
        "{}",
        stderr(&out)
    );
    drop(rt);
}
