//! The HTTP edge: bearer-token check, routing of Kubernetes API paths, request parsing
//! (query, content types, bodies with a size bound) and response encoding (objects,
//! lists, Tables, watch streams, `Status` errors, `Warning` headers).
//!
//! Never: holds the core lock across an await, or answers before a write is durable
//! (writes run in `block_in_place` and return after the commit).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::core::{
    to_external, watch_event, Core, DeleteOpts, FieldValidation, Filter, ListAt, PatchKind,
    WriteCtx,
};
use crate::error::ApiError;
use crate::fields::Part;
use crate::pb::{self, Media};
use crate::registry::{ResourceType, Special};
use crate::select::{FieldSelector, LabelSelector};
use crate::{discovery, limits, table, time};

/// Shared state of the HTTP layer.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) core: Arc<Core>,
    pub(crate) token: String,
    pub(crate) address: String,
    /// One permit per open watch (`limits::WATCHES_MAX`).
    pub(crate) watches: Arc<tokio::sync::Semaphore>,
    /// The pod-log dir (crate::podlog).
    pub(crate) pod_log_dir: std::path::PathBuf,
}

fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (code, serde_json::to_vec(body).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// Answers in the negotiated encoding; a body with no protobuf form (a Table, an
/// unexpected kind) falls back to JSON, which every client that accepts protobuf also
/// accepts.
fn send(media: Media, code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    if media == Media::Protobuf {
        match pb::encode_object(body) {
            Ok(bytes) => {
                let mut resp = json_response(code, &Value::Null, warnings);
                *resp.body_mut() = Body::from(bytes);
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(pb::PROTOBUF));
                return resp;
            }
            Err(pb::PbError::NotServed { .. }) => {}
            Err(e) => return error_response(&ApiError::from(e)),
        }
    }
    json_response(code, body, warnings)
}

fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.status(), &[])
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = v.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant-time comparison: the token is the only credential.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The single entry point for every request.
pub(crate) async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    if !authorized(req.headers(), &app.token) && !is_public(req.method(), req.uri().path()) {
        return error_response(&ApiError::Unauthorized);
    }
    match route(&app, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// What a real cluster lets anonymous clients read (the `system:public-info-viewer`
/// role): health checks and the version.
fn is_public(method: &Method, path: &str) -> bool {
    let first = path.trim_matches('/').split('/').next().unwrap_or("");
    *method == Method::GET && matches!(first, "healthz" | "readyz" | "livez" | "version")
}

type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Reads a JSON body, or the protobuf body client-go and kubectl send for built-in kinds
/// (decoded to JSON; custom resources are JSON only, as on kube-apiserver).
async fn read_object(req: Request, rt: &ResourceType, version: &str) -> Result<Value, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = read_body(req).await?;
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == pb::PROTOBUF {
        if !protobuf_served(rt, version) {
            return Err(ApiError::UnsupportedMediaType(
                "application/json, application/yaml".into(),
            ));
        }
        return pb::decode_body(&bytes);
    }
    parse_json(&bytes)
}

fn protobuf_served(rt: &ResourceType, version: &str) -> bool {
    !rt.is_crd && pb::served(&rt.api_version(version), &rt.kind)
}

async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), limits::REQUEST_BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::TooLarge)
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::BadRequest(format!("the body of the request could not be decoded as JSON: {e} (cstor accepts JSON bodies only)"))
    })
}

async fn route(app: &Arc<App>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let reg = app.core.registry();
    let get_only = |r: Result<Response, ApiError>| {
        if req.method() == Method::GET {
            r
        } else {
            Err(ApiError::MethodNotAllowed)
        }
    };
    match segs.as_slice() {
        ["version"] => get_only(Ok(json_response(StatusCode::OK, &version(), &[]))),
        ["healthz" | "readyz" | "livez", ..] => {
            get_only(Ok((StatusCode::OK, "ok").into_response()))
        }
        ["api"] => {
            if let Some(v) = aggregated_accept(&accept) {
                return Ok(aggregated_response(discovery::aggregated(&reg, true, v), v));
            }
            Ok(json_response(
                StatusCode::OK,
                &discovery::api_versions(&app.address),
                &[],
            ))
        }
        ["apis"] => {
            if let Some(v) = aggregated_accept(&accept) {
                return Ok(aggregated_response(
                    discovery::aggregated(&reg, false, v),
                    v,
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &discovery::api_group_list(&reg),
                &[],
            ))
        }
        ["apis", g] => discovery::api_group(&reg, g)
            .map(|v| json_response(StatusCode::OK, &v, &[]))
            .ok_or(ApiError::NoRoute),
        ["api", v] => discovery::resource_list(&reg, "", v)
            .map(|v| json_response(StatusCode::OK, &v, &[]))
            .ok_or(ApiError::NoRoute),
        ["apis", g, v] => discovery::resource_list(&reg, g, v)
            .map(|v| json_response(StatusCode::OK, &v, &[]))
            .ok_or(ApiError::NoRoute),
        ["openapi", "v2"] => {
            if accept.contains("protobuf") && !accept.contains("json") {
                return Ok((
                    StatusCode::NOT_ACCEPTABLE,
                    "only application/json is served",
                )
                    .into_response());
            }
            Ok(json_response(
                StatusCode::OK,
                &discovery::openapi_v2(&reg),
                &[],
            ))
        }
        ["openapi", "v3"] => Ok(json_response(
            StatusCode::OK,
            &discovery::openapi_v3_root(&reg, &app.core.resource_version().to_string()),
            &[],
        )),
        ["openapi", "v3", "api", v] => discovery::openapi_v3_gv(&reg, "", v)
            .map(|d| json_response(StatusCode::OK, &d, &[]))
            .ok_or(ApiError::NoRoute),
        ["openapi", "v3", "apis", g, v] => discovery::openapi_v3_gv(&reg, g, v)
            .map(|d| json_response(StatusCode::OK, &d, &[]))
            .ok_or(ApiError::NoRoute),
        ["api", v, rest @ ..] => {
            let (v, rest) = (
                v.to_string(),
                rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
            resource(app, req, "", &v, &rest, query, &accept).await
        }
        ["apis", g, v, rest @ ..] => {
            let (g, v, rest) = (
                g.to_string(),
                v.to_string(),
                rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
            resource(app, req, &g, &v, &rest, query, &accept).await
        }
        _ => Err(ApiError::NoRoute),
    }
}

fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-cstor", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rust", "compiler": "rustc", "platform": "linux/amd64",
           "emulationMajor": "1", "emulationMinor": "32"})
}

fn aggregated_accept(accept: &str) -> Option<&'static str> {
    if !accept.contains("as=APIGroupDiscoveryList") {
        return None;
    }
    if accept.contains("v=v2;")
        || accept.contains("v=v2,")
        || accept.ends_with("v=v2")
        || accept.contains("v=v2;as")
    {
        Some("apidiscovery.k8s.io/v2")
    } else if accept.contains("v=v2beta1") {
        Some("apidiscovery.k8s.io/v2beta1")
    } else {
        None
    }
}

fn aggregated_response(body: Value, api_version: &str) -> Response {
    let mut r = json_response(StatusCode::OK, &body, &[]);
    let v = api_version.trim_start_matches("apidiscovery.k8s.io/");
    if let Ok(ct) = HeaderValue::from_str(&format!(
        "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
    )) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

/// Where a resource path points.
struct Target {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn resolve(app: &App, group: &str, version: &str, rest: &[String]) -> Result<Target, ApiError> {
    let reg = app.core.registry();
    let (namespace, rest): (Option<String>, &[String]) = match rest {
        [ns_kw, ns, plural, tail @ ..]
            if ns_kw == "namespaces" && plural != "status" && plural != "finalize" =>
        {
            let _ = tail;
            (Some(ns.clone()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (p.clone(), None, false),
        [p, n] => (p.clone(), Some(n.clone()), false),
        [p, n, s] if s == "status" => (p.clone(), Some(n.clone()), true),
        [p, n, s] if s == "finalize" && p == "namespaces" => (p.clone(), Some(n.clone()), false),
        _ => return Err(ApiError::NoRoute),
    };
    let rt = reg.find(group, version, &plural).ok_or(ApiError::NoRoute)?;
    if namespace.is_some() && !rt.namespaced {
        return Err(ApiError::NoRoute);
    }
    if status && !rt.has_status {
        return Err(ApiError::NoRoute);
    }
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return Err(ApiError::NoRoute);
    }
    Ok(Target {
        rt,
        namespace,
        name,
        status,
    })
}

fn manager(query: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.chars().take(128).collect();
    }
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    ua.split('/')
        .next()
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

fn validation(query: &Query) -> FieldValidation {
    match query.get("fieldValidation").map(String::as_str) {
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        _ => FieldValidation::Warn,
    }
}

fn filter(
    query: &Query,
    namespace: Option<String>,
    rt: &ResourceType,
    version: &str,
) -> Result<Filter, ApiError> {
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
    let crd_fields = rt.selectable.get(version).map_or(&[][..], Vec::as_slice);
    fields.check_supported(&rt.group, &rt.plural, crd_fields)?;
    Ok(Filter {
        namespace,
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        fields,
    })
}

async fn resource(
    app: &Arc<App>,
    req: Request,
    group: &str,
    version: &str,
    rest: &[String],
    query: Query,
    accept: &str,
) -> Result<Response, ApiError> {
    if let (true, [ns_kw, ns, pods, name, log]) = (group.is_empty() && version == "v1", rest) {
        if ns_kw == "namespaces" && pods == "pods" && log == "log" {
            if req.method() != Method::GET {
                return Err(ApiError::MethodNotAllowed);
            }
            let dir = app.pod_log_dir.clone();
            return crate::podlog::serve(app.core.clone(), dir, ns, name, &query).await;
        }
    }
    let t = resolve(app, group, version, rest)?;
    let method = req.method().clone();
    let headers = req.headers().clone();
    let ctx = WriteCtx {
        rt: t.rt.clone(),
        version: version.to_string(),
        namespace: t.namespace.clone().unwrap_or_default(),
        manager: manager(&query, &headers),
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
        validation: validation(&query),
    };
    let want_table = accept.contains("as=Table");
    let media = if want_table {
        Media::Json
    } else {
        pb::negotiate(accept, protobuf_served(&t.rt, version))?
    };
    let include = query
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());
    let core = app.core.clone();
    let part = if t.status {
        Part::Status
    } else {
        Part::Main {
            has_status: t.rt.has_status,
        }
    };
    let result: Result<Response, ApiError> = async { match (&method, &t.name) {
        (&Method::GET, None) => {
            let f = filter(&query, t.namespace.clone(), &t.rt, version)?;
            let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
            if watching {
                let permit = app.watches.clone().try_acquire_owned().map_err(|_| {
                    ApiError::TooManyRequests(format!(
                        "more than {} watches are open",
                        limits::WATCHES_MAX
                    ))
                })?;
                return watch(
                    permit,
                    core,
                    t.rt.clone(),
                    version.to_string(),
                    f,
                    &query,
                    Render {
                        table: want_table,
                        media,
                    },
                );
            }
            let limit = query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|l| *l > 0);
            let cont = query
                .get("continue")
                .map(String::as_str)
                .filter(|c| !c.is_empty());
            let at = list_at(&query, cont.is_some())?;
            let page = core.list(&t.rt, &f, limit, cont, at)?;
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|o| to_external(&t.rt, version, o))
                .collect();
            if want_table {
                let tb = table::table(
                    &t.rt,
                    version,
                    &items,
                    &include,
                    page.resource_version,
                    page.continue_token.as_deref(),
                );
                return Ok(json_response(StatusCode::OK, &tb, &[]));
            }
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(r) = page.remaining {
                meta["remainingItemCount"] = json!(r);
            }
            let list = json!({"kind": t.rt.list_kind, "apiVersion": t.rt.api_version(version), "metadata": meta, "items": items});
            Ok(send(media, StatusCode::OK, &list, &[]))
        }
        (&Method::POST, None) if t.rt.special == Special::AccessReview => {
            let body = read_object(req, &t.rt, version).await?;
            Ok(send(
                media,
                StatusCode::CREATED,
                &access_review(&t.rt, version, body)?,
                &[],
            ))
        }
        (_, _) if t.rt.special == Special::AccessReview => Err(ApiError::MethodNotAllowed),
        (&Method::POST, None) => {
            let body = read_object(req, &t.rt, version).await?;
            let w = tokio::task::block_in_place(|| core.create(&ctx, body))?;
            Ok(send(media, StatusCode::CREATED, &w.object, &w.warnings))
        }
        (&Method::DELETE, None) => {
            let f = filter(&query, t.namespace.clone(), &t.rt, version)?;
            let page = core.list(&t.rt, &f, None, None, ListAt::Latest)?;
            let mut deleted = Vec::new();
            for o in &page.items {
                let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
                let mut c = ctx.clone();
                c.namespace = o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                match tokio::task::block_in_place(|| core.delete(&c, &name, &DeleteOpts::default()))
                {
                    Ok(v) => deleted.push(v),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let list = json!({"kind": t.rt.list_kind, "apiVersion": t.rt.api_version(version),
                              "metadata": {"resourceVersion": core.resource_version().to_string()}, "items": deleted});
            Ok(send(media, StatusCode::OK, &list, &[]))
        }
        (&Method::GET, Some(name)) => {
            let o = core.get(&t.rt, &ctx.namespace, name)?;
            let ext = to_external(&t.rt, version, &o);
            if want_table && !t.status {
                let tb = table::table(
                    &t.rt,
                    version,
                    std::slice::from_ref(&ext),
                    &include,
                    core.resource_version(),
                    None,
                );
                return Ok(json_response(StatusCode::OK, &tb, &[]));
            }
            Ok(send(media, StatusCode::OK, &ext, &[]))
        }
        (&Method::PUT, Some(name)) => {
            let body = read_object(req, &t.rt, version).await?;
            let w = tokio::task::block_in_place(|| core.update(&ctx, name, body, part))?;
            Ok(send(media, StatusCode::OK, &w.object, &w.warnings))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = match ct.split(';').next().unwrap_or("").trim() {
                "application/json-patch+json" => PatchKind::Json,
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+json" => {
                    if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                        return Err(ApiError::Invalid {
                            kind: "PatchOptions".into(),
                            group: "meta.k8s.io".into(),
                            name: String::new(),
                            causes: vec![crate::error::FieldCause {
                                reason: "FieldValueRequired",
                                field: "fieldManager".into(),
                                message: "Required value: is required for apply patch".into(),
                            }],
                        });
                    }
                    PatchKind::Apply { force: query.get("force").is_some_and(|f| f == "true") }
                }
                other => {
                    return Err(ApiError::UnsupportedMediaType(format!(
                        "{other} is not supported; use application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                    )))
                }
            };
            let body = parse_json(&read_body(req).await?)?;
            let w = tokio::task::block_in_place(|| core.patch(&ctx, name, kind, body, part))?;
            let code = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(send(media, code, &w.object, &w.warnings))
        }
        (&Method::DELETE, Some(name)) => {
            let is_protobuf = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.trim_start().starts_with(pb::PROTOBUF));
            let bytes = read_body(req).await?;
            // client-go sends its DeleteOptions in the client's encoding.
            let body = if bytes.is_empty() {
                json!({})
            } else if is_protobuf {
                pb::decode_body(&bytes)?
            } else {
                parse_json(&bytes)?
            };
            let policy = query
                .get("propagationPolicy")
                .cloned()
                .or_else(|| body["propagationPolicy"].as_str().map(str::to_string))
                .unwrap_or_default();
            let opts = DeleteOpts {
                precondition_rv: body["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string),
                precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_string),
                orphan: policy == "Orphan" || body["orphanDependents"].as_bool() == Some(true),
                foreground: policy == "Foreground",
            };
            let o = tokio::task::block_in_place(|| core.delete(&ctx, name, &opts))?;
            Ok(send(media, StatusCode::OK, &o, &[]))
        }
        _ => Err(ApiError::MethodNotAllowed),
    } }
    .await;
    // Errors of a resource request are a Status in the negotiated encoding.
    Ok(result.unwrap_or_else(|e| {
        let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        send(media, code, &e.status(), &[])
    }))
}

/// The resourceVersion a list is served at, from `resourceVersion` and
/// `resourceVersionMatch` (kube-apiserver's rules: no match means NotOlderThan, "0" means
/// any, a continue token excludes both).
fn list_at(query: &Query, continuing: bool) -> Result<ListAt, ApiError> {
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|r| !r.is_empty());
    let rv_match = query
        .get("resourceVersionMatch")
        .map(String::as_str)
        .filter(|m| !m.is_empty());
    if continuing {
        if rv.is_some_and(|r| r != "0") || rv_match.is_some() {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        return Ok(ListAt::Latest);
    }
    let parsed = match rv {
        None => None,
        Some(r) => Some(
            r.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {r}")))?,
        ),
    };
    match (parsed, rv_match) {
        (None, None) | (Some(0), None) => Ok(ListAt::Latest),
        (None, Some(_)) => Err(ApiError::BadRequest(
            "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
        )),
        (Some(0), Some("NotOlderThan")) => Ok(ListAt::Latest),
        (Some(r), None) | (Some(r), Some("NotOlderThan")) => Ok(ListAt::NotOlderThan(r)),
        (Some(0), Some("Exact")) => Err(ApiError::BadRequest(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".into(),
        )),
        (Some(r), Some("Exact")) => Ok(ListAt::Exact(r)),
        (Some(_), Some(m)) => Err(ApiError::BadRequest(format!(
            "resourceVersionMatch: Unsupported value: \"{m}\": supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

/// Answers a SelfSubjectAccessReview. The server has one credential, the admin token
/// (every other request gets 401), so its holder may do everything: what `kubectl auth
/// can-i` and the CSI sidecars' permission checks see on a cluster-admin binding.
fn access_review(rt: &ResourceType, version: &str, body: Value) -> Result<Value, ApiError> {
    if !body["spec"].is_object() {
        return Err(ApiError::Invalid {
            kind: rt.kind.clone(),
            group: rt.group.clone(),
            name: String::new(),
            causes: vec![crate::error::FieldCause {
                reason: "FieldValueRequired",
                field: "spec".into(),
                message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
            }],
        });
    }
    let mut out = body;
    out["apiVersion"] = json!(rt.api_version(version));
    out["kind"] = json!(rt.kind);
    if !out["metadata"].is_object() {
        out["metadata"] = json!({});
    }
    out["metadata"]["creationTimestamp"] = Value::Null;
    out["status"] = json!({"allowed": true, "reason": "cstor apiserver: the bearer-token holder is the cluster administrator"});
    Ok(out)
}

/// How a watch renders its events: Table rows (always JSON) or objects in `media`.
#[derive(Debug, Clone, Copy)]
struct Render {
    table: bool,
    media: Media,
}

/// One watch event in the stream's encoding: a JSON line, or a protobuf frame (an
/// object that cannot be encoded ends the stream with an ERROR event, as a real server's
/// encoder failure would).
fn event_bytes(media: Media, kind: &str, object: &Value) -> Bytes {
    if media == Media::Json {
        return event_line(kind, object);
    }
    match pb::watch_frame(kind, object) {
        Ok(frame) => Bytes::from(frame),
        Err(e) => {
            let status = ApiError::from(e).status();
            Bytes::from(pb::watch_frame("ERROR", &status).unwrap_or_default())
        }
    }
}

/// Serialises one watch event as a JSON line.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn watch(
    permit: tokio::sync::OwnedSemaphorePermit,
    core: Arc<Core>,
    rt: Arc<ResourceType>,
    version: String,
    f: Filter,
    query: &Query,
    render_as: Render,
) -> Result<Response, ApiError> {
    let (want_table, media) = (render_as.table, render_as.media);
    let initial = query.get("sendInitialEvents").is_some_and(|s| s == "true");
    let from: Option<u64> = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) if initial => {
            let _ = rv;
            None
        }
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))?,
        ),
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(limits::WATCH_DURATION_MAX, |s| {
            Duration::from_secs(s).min(limits::WATCH_DURATION_MAX)
        });
    let include = query
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());
    let (tx, rx) =
        mpsc::channel::<Result<Bytes, Infallible>>(limits::WATCH_CONNECTION_BUFFER_EVENTS);
    let started = core.watch(&rt, &f, from);
    tokio::spawn(async move {
        let _permit = permit;
        let (replay, mut live, mut last_rv) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(Ok(event_bytes(media, "ERROR", &e.status()))).await;
                return;
            }
        };
        let mut first_table = true;
        let render = |obj: &Value, first: &mut bool| -> Value {
            let ext = to_external(&rt, &version, obj);
            if want_table {
                let now = time::now_secs();
                let mut tb = table::table(&rt, &version, &[], &include, 0, None);
                tb["rows"] = json!([table::row(&rt, &rt.columns(&version), &ext, &include, now)]);
                tb["metadata"] =
                    json!({"resourceVersion": ext["metadata"]["resourceVersion"].clone()});
                if !*first {
                    tb["columnDefinitions"] = json!([]);
                }
                *first = false;
                tb
            } else {
                ext
            }
        };
        for c in &replay {
            let kind = if from.is_some() {
                watch_event(&rt, &f, c)
            } else {
                Some(c.kind)
            };
            let Some(kind) = kind else { continue };
            let line = event_bytes(media, kind.as_str(), &render(&c.object, &mut first_table));
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        if initial {
            let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(&version),
                            "metadata": {"resourceVersion": last_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx
                .send(Ok(event_bytes(media, "BOOKMARK", &bm)))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(limits::WATCH_BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(c) => {
                        if c.rv <= last_rv {
                            continue;
                        }
                        last_rv = c.rv;
                        let Some(kind) = watch_event(&rt, &f, &c) else { continue };
                        let line = event_bytes(media, kind.as_str(), &render(&c.object, &mut first_table));
                        if tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    }
                    // Too far behind: end the stream; the client resumes from its last
                    // resourceVersion and is replayed from history.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(&version), "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(Ok(event_bytes(media, "BOOKMARK", &bm))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    let content_type = match media {
        Media::Json => "application/json",
        Media::Protobuf => pb::PROTOBUF_WATCH,
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}
