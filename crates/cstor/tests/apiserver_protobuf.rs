//! The protobuf encoding of `cstor apiserver`, spoken by a client that is not ours: the
//! k8s-pb prost types (generated from the Kubernetes protos) build and read every body,
//! as client-go's typed clients do (`Content-Type: application/vnd.kubernetes.protobuf`,
//! `Accept: application/vnd.kubernetes.protobuf, application/json`).
//!
//! Guards: create/get/list/update of a Lease and a PVC in protobuf and their JSON views;
//! merge patches (JSON bodies) answered in protobuf; a delete with protobuf
//! DeleteOptions; protobuf Status for 404 and 409; a protobuf watch stream (4-byte
//! length frames of WatchEvent, each object enveloped) with ADDED, MODIFIED and DELETED;
//! and custom resources kept JSON-only (JSON when JSON is acceptable, 406 for a
//! protobuf-only Accept, 415 for a protobuf body), as kube-apiserver does.

mod apiserver_support;

use std::pin::Pin;
use std::time::Duration;

use apiserver_support::{free_port, ApiServer};
use hyper::body::Body as _;
use k8s_pb::api::coordination::v1::{Lease, LeaseList, LeaseSpec};
use k8s_pb::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, MicroTime, ObjectMeta, Preconditions, Status, WatchEvent,
};
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use kube::client::Body;
use kube::Client;
use prost::Message;
use serde_json::{json, Value};

const PB: &str = "application/vnd.kubernetes.protobuf";
/// What client-go's typed clients send for built-in kinds.
const PB_FIRST: &str = "application/vnd.kubernetes.protobuf, application/json";
const MAGIC: &[u8] = b"k8s\0";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
const PVCS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";
/// Generous: the suite runs on a loaded two-core machine.
const WATCH_DEADLINE: Duration = Duration::from_secs(60);

struct Reply {
    code: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "{} {}",
            self.code,
            self.content_type
        );
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The envelope and the typed message inside it.
    fn pb<M: Message + Default>(&self) -> (TypeMeta, M) {
        assert_eq!(
            self.content_type,
            PB,
            "{} {}",
            self.code,
            String::from_utf8_lossy(&self.body)
        );
        let unknown = Unknown::decode(self.body.strip_prefix(MAGIC).expect("magic")).unwrap();
        let m = M::decode(unknown.raw.as_deref().unwrap_or_default()).unwrap();
        (unknown.type_meta.unwrap_or_default(), m)
    }
}

fn envelope(api_version: &str, kind: &str, msg: &impl Message) -> Vec<u8> {
    let u = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(msg.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [MAGIC, &u.encode_to_vec()].concat()
}

async fn call(
    c: &Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    accept: &str,
    body: Vec<u8>,
) -> Reply {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("Accept", accept);
    if let Some(ct) = content_type {
        b = b.header("Content-Type", ct);
    }
    let resp = c.send(b.body(Body::from(body)).unwrap()).await.unwrap();
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect_bytes().await.unwrap().to_vec();
    Reply {
        code,
        content_type,
        body,
    }
}

async fn client(s: &ApiServer) -> Client {
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn start() -> (tempfile::TempDir, ApiServer) {
    let dir = tempfile::tempdir().unwrap();
    let s = ApiServer::start(&dir.path().join("data"), free_port());
    (dir, s)
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: Some(ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        }),
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime {
                seconds: Some(1_795_269_617),
                nanos: Some(123_456_000),
            }),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

fn pvc(name: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: Some(ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: [("app".to_string(), "db".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            resources: Some(VolumeResourceRequirements {
                requests: [(
                    "storage".to_string(),
                    Quantity {
                        string: Some("1Gi".into()),
                    },
                )]
                .into(),
                ..Default::default()
            }),
            // "" asks for no class; it must survive the trip.
            storage_class_name: Some(String::new()),
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_pvc_through_protobuf() {
    let (_dir, s) = start();
    let c = client(&s).await;

    // Create in protobuf, answered in protobuf.
    let body = envelope("coordination.k8s.io/v1", "Lease", &lease("leader", "a"));
    let r = call(&c, "POST", LEASES, Some(PB), PB_FIRST, body.clone()).await;
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    let (tm, created) = r.pb::<Lease>();
    assert_eq!(tm.api_version.as_deref(), Some("coordination.k8s.io/v1"));
    assert_eq!(tm.kind.as_deref(), Some("Lease"));
    let meta = created.metadata.clone().unwrap_or_default();
    assert!(meta.uid.as_deref().is_some_and(|u| !u.is_empty()));
    assert!(meta.creation_timestamp.and_then(|t| t.seconds).is_some());
    let spec = created.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.renew_time.unwrap_or_default().nanos, Some(123_456_000));

    // The same object in JSON.
    let j = call(
        &c,
        "GET",
        &format!("{LEASES}/leader"),
        None,
        "application/json",
        vec![],
    )
    .await;
    let j = j.json();
    assert_eq!(j["spec"]["renewTime"], "2026-11-21T14:00:17.123456Z");
    assert_eq!(j["spec"]["holderIdentity"], "a");
    assert_eq!(
        j["metadata"]["resourceVersion"].as_str(),
        meta.resource_version.as_deref()
    );

    // Get and list in protobuf.
    let (_, got) = call(
        &c,
        "GET",
        &format!("{LEASES}/leader"),
        None,
        PB_FIRST,
        vec![],
    )
    .await
    .pb::<Lease>();
    assert_eq!(got, created);
    let (tm, list) = call(&c, "GET", LEASES, None, PB_FIRST, vec![])
        .await
        .pb::<LeaseList>();
    assert_eq!(tm.kind.as_deref(), Some("LeaseList"));
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.and_then(|m| m.resource_version).is_some());
    let jl = call(&c, "GET", LEASES, None, "application/json", vec![])
        .await
        .json();
    assert_eq!(jl["items"].as_array().map(Vec::len), Some(1));

    // Update in protobuf with the resourceVersion read back.
    let mut next = created.clone();
    if let Some(spec) = next.spec.as_mut() {
        spec.holder_identity = Some("b".into());
        spec.lease_transitions = Some(1);
    }
    let body = envelope("coordination.k8s.io/v1", "Lease", &next);
    let r = call(
        &c,
        "PUT",
        &format!("{LEASES}/leader"),
        Some(PB),
        PB_FIRST,
        body.clone(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", String::from_utf8_lossy(&r.body));
    let (_, updated) = r.pb::<Lease>();
    assert_eq!(
        updated.spec.unwrap_or_default().holder_identity.as_deref(),
        Some("b")
    );
    // The same body again carries a stale resourceVersion: 409 as a protobuf Status.
    let r = call(
        &c,
        "PUT",
        &format!("{LEASES}/leader"),
        Some(PB),
        PB_FIRST,
        body,
    )
    .await;
    assert_eq!(r.code, 409);
    let (tm, st) = r.pb::<Status>();
    assert_eq!(tm.kind.as_deref(), Some("Status"));
    assert_eq!(
        (st.code, st.reason.as_deref()),
        (Some(409), Some("Conflict"))
    );

    // A patch body stays JSON; the answer is protobuf.
    let r = call(
        &c,
        "PATCH",
        &format!("{LEASES}/leader"),
        Some("application/merge-patch+json"),
        PB_FIRST,
        serde_json::to_vec(&json!({"spec": {"holderIdentity": "c"}})).unwrap(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", String::from_utf8_lossy(&r.body));
    let (_, patched) = r.pb::<Lease>();
    assert_eq!(
        patched.spec.unwrap_or_default().holder_identity.as_deref(),
        Some("c")
    );

    // 404 and 409 (AlreadyExists) as protobuf Status.
    let r = call(
        &c,
        "GET",
        &format!("{LEASES}/missing"),
        None,
        PB_FIRST,
        vec![],
    )
    .await;
    assert_eq!(r.code, 404);
    let (_, st) = r.pb::<Status>();
    assert_eq!(
        (st.code, st.reason.as_deref()),
        (Some(404), Some("NotFound"))
    );
    assert_eq!(st.details.and_then(|d| d.name).as_deref(), Some("missing"));
    let body = envelope("coordination.k8s.io/v1", "Lease", &lease("leader", "z"));
    let r = call(&c, "POST", LEASES, Some(PB), PB_FIRST, body).await;
    assert_eq!(r.code, 409);
    assert_eq!(r.pb::<Status>().1.reason.as_deref(), Some("AlreadyExists"));
    // A client that prefers JSON still gets JSON errors.
    let r = call(
        &c,
        "GET",
        &format!("{LEASES}/missing"),
        None,
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(r.json()["reason"], "NotFound");

    // A PVC: Quantity map, and the meaningful empty storageClassName.
    let body = envelope("v1", "PersistentVolumeClaim", &pvc("data"));
    let r = call(&c, "POST", PVCS, Some(PB), PB_FIRST, body).await;
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    let (_, created) = r.pb::<PersistentVolumeClaim>();
    let spec = created.spec.clone().unwrap_or_default();
    assert_eq!(spec.storage_class_name.as_deref(), Some(""));
    let storage = spec
        .resources
        .unwrap_or_default()
        .requests
        .remove("storage");
    assert_eq!(storage.and_then(|q| q.string).as_deref(), Some("1Gi"));
    let j = call(
        &c,
        "GET",
        &format!("{PVCS}/data"),
        None,
        "application/json",
        vec![],
    )
    .await
    .json();
    assert_eq!(j["spec"]["storageClassName"], "");
    assert_eq!(j["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert_eq!(j["metadata"]["labels"]["app"], "db");

    // Delete with protobuf DeleteOptions, as client-go sends them; a wrong uid
    // precondition is refused, the right one deletes.
    let uid = created.metadata.and_then(|m| m.uid).unwrap_or_default();
    let opts = |uid: &str| {
        envelope(
            "v1",
            "DeleteOptions",
            &DeleteOptions {
                preconditions: Some(Preconditions {
                    uid: Some(uid.into()),
                    resource_version: None,
                }),
                ..Default::default()
            },
        )
    };
    let r = call(
        &c,
        "DELETE",
        &format!("{PVCS}/data"),
        Some(PB),
        PB_FIRST,
        opts("not-it"),
    )
    .await;
    assert_eq!(r.code, 409, "{}", String::from_utf8_lossy(&r.body));
    let r = call(
        &c,
        "DELETE",
        &format!("{PVCS}/data"),
        Some(PB),
        PB_FIRST,
        opts(&uid),
    )
    .await;
    assert_eq!(r.code, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Reads one length-prefixed frame from a streaming body; None at the end.
async fn next_frame(body: &mut Body, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if buf.len() >= 4 {
            #[allow(
                clippy::big_endian_bytes,
                reason = "watch frame lengths are big-endian"
            )]
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() >= 4 + len {
                let frame = buf[4..4 + len].to_vec();
                buf.drain(..4 + len);
                return Some(frame);
            }
        }
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
        if let Ok(data) = frame.unwrap().into_data() {
            buf.extend_from_slice(&data);
        }
    }
}

fn watch_event(frame: &[u8]) -> (String, PersistentVolumeClaim) {
    // The frame itself is a bare WatchEvent; its object is an enveloped PVC.
    let ev = WatchEvent::decode(frame).unwrap();
    let raw = ev.object.and_then(|o| o.raw).unwrap_or_default();
    let u = Unknown::decode(raw.strip_prefix(MAGIC).expect("magic")).unwrap();
    assert_eq!(
        u.type_meta.and_then(|t| t.kind).as_deref(),
        Some("PersistentVolumeClaim")
    );
    let pvc = PersistentVolumeClaim::decode(u.raw.as_deref().unwrap_or_default()).unwrap();
    (ev.r#type.unwrap_or_default(), pvc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_protobuf_frames() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let list = call(&c, "GET", PVCS, None, "application/json", vec![])
        .await
        .json();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let req = hyper::Request::builder()
        .uri(format!(
            "{PVCS}?watch=true&resourceVersion={rv}&timeoutSeconds=60"
        ))
        .header("Accept", PB_FIRST)
        .body(Body::from(Vec::new()))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/vnd.kubernetes.protobuf;stream=watch")
    );
    let mut body = resp.into_body();

    let r = call(
        &c,
        "POST",
        PVCS,
        Some(PB),
        PB_FIRST,
        envelope("v1", "PersistentVolumeClaim", &pvc("w")),
    )
    .await;
    assert_eq!(r.code, 201);
    let patch = serde_json::to_vec(&json!({"metadata": {"labels": {"phase": "two"}}})).unwrap();
    let r = call(
        &c,
        "PATCH",
        &format!("{PVCS}/w"),
        Some("application/merge-patch+json"),
        PB_FIRST,
        patch,
    )
    .await;
    assert_eq!(r.code, 200);
    let r = call(&c, "DELETE", &format!("{PVCS}/w"), None, PB_FIRST, vec![]).await;
    assert_eq!(r.code, 200);

    // The storage loops may write the claim too (its phase): read until DELETED.
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let read = async {
        while seen
            .last()
            .is_none_or(|(k, _): &(String, _)| k != "DELETED")
        {
            let Some(frame) = next_frame(&mut body, &mut buf).await else {
                break;
            };
            let (kind, obj) = watch_event(&frame);
            let meta = obj.metadata.unwrap_or_default();
            assert_eq!(meta.name.as_deref(), Some("w"));
            seen.push((kind, meta.labels.get("phase").cloned()));
        }
    };
    tokio::time::timeout(WATCH_DEADLINE, read)
        .await
        .expect("watch events in time");
    let two = Some("two".to_string());
    assert_eq!(seen.first(), Some(&("ADDED".to_string(), None)), "{seen:?}");
    assert!(
        seen.contains(&("MODIFIED".to_string(), two.clone())),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&("DELETED".to_string(), two)), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_stay_json() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "openebs"}});
    let r = call(
        &c,
        "POST",
        "/api/v1/namespaces",
        Some("application/json"),
        "application/json",
        ns.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.code, 201);
    let path = "/apis/cstor.openebs.io/v1/namespaces/openebs/cstorpoolclusters";
    // JSON is listed as the fallback: JSON it is.
    let r = call(&c, "GET", path, None, PB_FIRST, vec![]).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.json()["kind"], "CStorPoolClusterList");
    // Protobuf only: 406, as kube-apiserver answers for custom resources.
    let r = call(&c, "GET", path, None, PB, vec![]).await;
    assert_eq!(r.code, 406);
    let st = r.json();
    assert_eq!(st["reason"], "NotAcceptable");
    assert!(
        st["message"]
            .as_str()
            .unwrap_or("")
            .contains("application/json"),
        "{st}"
    );
    // A protobuf body for a custom resource: 415.
    let body = envelope(
        "cstor.openebs.io/v1",
        "CStorPoolCluster",
        &ObjectMeta::default(),
    );
    let r = call(&c, "POST", path, Some(PB), PB_FIRST, body).await;
    assert_eq!(r.code, 415);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");
}
