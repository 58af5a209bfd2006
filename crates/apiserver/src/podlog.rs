//! `pods/log` (`kubectl logs`): a Pod's container log read from a file the server knows
//! (docs/apiserver-pod-logs.md). Nothing runs containers here, so the processes `cstor
//! up` registers as Pods write their logs to files, and this serves them.
//!
//! Owns: finding the file and the query options. The file of container C of Pod P in
//! namespace N is the annotation `cstor.openebs.io/log-path.C` (or
//! `cstor.openebs.io/log-path` for every container), else `DIR/N_P_C.log`, where DIR is
//! the pod-log dir (`--pod-log-dir`, default `DATA_DIR/pod-logs`); `previous=true`
//! reads the rotated `<file>.1`. Options: `container`, `tailLines`, `sinceSeconds`,
//! `sinceTime` (by each line's leading RFC 3339 timestamp; a line without one belongs
//! with the line before), `limitBytes`, `follow` (polls the file, restarts from the
//! start when it shrinks, ends when the Pod is deleted or the client goes).
//! Invariants: only regular files inside the pod-log dir are ever read, wherever an
//! annotation points (resolved through symlinks first): the annotation names a file,
//! it cannot open the host to a Pod author. At most `READ_MAX_BYTES` of the file's end
//! are read per request. Never: blocks an async thread on file IO (it runs in
//! `spawn_blocking`).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::core::Core;
use crate::error::ApiError;

/// Annotation naming the log file of every container of a Pod.
pub(crate) const LOG_PATH_ANNOTATION: &str = "cstor.openebs.io/log-path";
/// Bytes read from the end of a log file at most.
const READ_MAX_BYTES: u64 = 16 << 20;
/// How often `follow` looks for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// The log file of `container` of `pod`, checked to lie inside `dir`.
fn log_file(dir: &Path, pod: &Value, container: &str, previous: bool) -> Result<PathBuf, ApiError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let ann = &pod["metadata"]["annotations"];
    let path = ann[format!("{LOG_PATH_ANNOTATION}.{container}")]
        .as_str()
        .or_else(|| ann[LOG_PATH_ANNOTATION].as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join(format!("{ns}_{name}_{container}.log")));
    let path = if previous {
        let mut p = path.into_os_string();
        p.push(".1");
        PathBuf::from(p)
    } else {
        path
    };
    let missing = || {
        if previous {
            bad(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            ))
        } else {
            bad(format!(
                "container \"{container}\" in pod \"{name}\" has no log yet (no file {})",
                path.display()
            ))
        }
    };
    let real = path.canonicalize().map_err(|_| missing())?;
    let root = dir.canonicalize().map_err(|_| missing())?;
    if !real.starts_with(&root) {
        return Err(ApiError::Forbidden {
            resource: "pods/log".into(),
            name: name.into(),
            message: format!(
                "pods \"{name}\" is forbidden: its log file {} is outside the pod-log dir {}",
                path.display(),
                dir.display()
            ),
        });
    }
    if !real.is_file() {
        return Err(missing());
    }
    Ok(real)
}

/// The container a request means.
fn container_of(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let names: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let regular: Vec<&String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter_map(|n| names.iter().find(|x| *x == n))
        .collect();
    match asked.filter(|a| !a.is_empty()) {
        Some(c) if names.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(bad(format!("container {c} is not valid for pod {name}"))),
        None if regular.len() == 1 => Ok(regular[0].clone()),
        None => Err(bad(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            regular
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ))),
    }
}

/// Options of one request.
#[derive(Debug, Default)]
struct Opts {
    tail: Option<usize>,
    since: Option<i64>,
    limit: Option<usize>,
    follow: bool,
}

fn opts(query: &std::collections::HashMap<String, String>) -> Result<Opts, ApiError> {
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        query
            .get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| bad(format!("invalid {k}: {v}")))
            })
            .transpose()
    };
    let since = match (num("sinceSeconds")?, query.get("sinceTime")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "at most one of sinceTime or sinceSeconds may be specified".into(),
            ))
        }
        (Some(s), None) if s < 1 => return Err(bad("sinceSeconds: must be greater than 0".into())),
        (Some(s), None) => Some(crate::time::now_secs() - s),
        (None, Some(t)) => Some(
            crate::time::parse_rfc3339(t).ok_or_else(|| bad(format!("invalid sinceTime: {t}")))?,
        ),
        (None, None) => None,
    };
    let tail = num("tailLines")?;
    if tail.is_some_and(|t| t < 0) {
        return Err(bad("tailLines: must be greater than or equal to 0".into()));
    }
    let limit = num("limitBytes")?;
    if limit.is_some_and(|l| l < 1) {
        return Err(bad("limitBytes: must be greater than 0".into()));
    }
    Ok(Opts {
        tail: tail.map(|t| t as usize),
        since,
        limit: limit.map(|l| l as usize),
        follow: query.get("follow").is_some_and(|f| f == "true" || f == "1"),
    })
}

/// Reads the end of the file; returns the bytes and the offset after them.
fn read_end(path: &Path) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(READ_MAX_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(len - start).read_to_end(&mut buf)?;
    if start > 0 {
        // Drop the partial first line.
        if let Some(p) = buf.iter().position(|b| *b == b'\n') {
            buf.drain(..=p);
        }
    }
    Ok((buf, start + (len - start)))
}

/// The leading RFC 3339 timestamp of a line, if it has one.
fn line_time(line: &[u8]) -> Option<i64> {
    let word = line.split(|b| *b == b' ' || *b == b'\t').next()?;
    crate::time::parse_rfc3339(std::str::from_utf8(word).ok()?)
}

/// Applies sinceTime, tailLines and limitBytes to whole-file content.
fn select(content: &[u8], o: &Opts) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = content.split_inclusive(|b| *b == b'\n').collect();
    if let Some(since) = o.since {
        let mut keep = false;
        lines.retain(|l| {
            if let Some(t) = line_time(l) {
                keep = t >= since;
            }
            keep
        });
    }
    if let Some(t) = o.tail {
        let skip = lines.len().saturating_sub(t);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat();
    if let Some(l) = o.limit {
        out.truncate(l);
    }
    out
}

fn text_response(body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Serves `GET /api/v1/namespaces/NS/pods/NAME/log`.
pub(crate) async fn serve(
    core: Arc<Core>,
    dir: PathBuf,
    namespace: &str,
    name: &str,
    query: &std::collections::HashMap<String, String>,
) -> Result<Response, ApiError> {
    let reg = core.registry();
    let rt = reg.find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let pod = core.get(&rt, namespace, name)?;
    let container = container_of(&pod, query.get("container").map(String::as_str))?;
    let previous = query
        .get("previous")
        .is_some_and(|p| p == "true" || p == "1");
    let o = opts(query)?;
    let path = log_file(&dir, &pod, &container, previous)?;
    let p = path.clone();
    let (content, mut offset) = tokio::task::spawn_blocking(move || read_end(&p))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("reading {}: {e}", path.display())))?;
    let first = select(&content, &o);
    if !o.follow || previous {
        return Ok(text_response(Body::from(first)));
    }
    let mut budget = o.limit.map(|l| l.saturating_sub(first.len()));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let uid = pod["metadata"]["uid"].clone();
    let (ns, pod_name) = (namespace.to_string(), name.to_string());
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            if budget == Some(0) || tx.is_closed() {
                return;
            }
            let gone = core
                .get(&rt, &ns, &pod_name)
                .map_or(true, |p| p["metadata"]["uid"] != uid);
            let p = path.clone();
            let from = offset;
            let more = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
                let mut f = std::fs::File::open(&p)?;
                let len = f.metadata()?.len();
                // Truncated or replaced by a shorter file: start again from its start.
                let from = if len < from { 0 } else { from };
                let want = (len - from).min(READ_MAX_BYTES);
                f.seek(SeekFrom::Start(from))?;
                let mut buf = Vec::new();
                f.take(want).read_to_end(&mut buf)?;
                Ok((buf, from + want))
            })
            .await;
            match more {
                Ok(Ok((mut buf, next))) => {
                    offset = next;
                    if let Some(b) = budget.as_mut() {
                        buf.truncate(*b);
                        *b -= buf.len();
                    }
                    if !buf.is_empty() && tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                // The file went away (rotated and not yet recreated): wait for it.
                Ok(Err(_)) => {}
                Err(_) => return,
            }
            if gone {
                return;
            }
        }
    });
    Ok(text_response(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tail_since_and_limit_select_lines() {
        let content =
            b"2026-01-01T00:00:00Z a\ncontinued\n2026-01-01T00:01:00Z b\n2026-01-01T00:02:00Z c\n";
        let all = select(content, &Opts::default());
        assert_eq!(all, content.to_vec());
        let tail = select(
            content,
            &Opts {
                tail: Some(2),
                ..Opts::default()
            },
        );
        assert_eq!(
            tail,
            b"2026-01-01T00:01:00Z b\n2026-01-01T00:02:00Z c\n".to_vec()
        );
        let since = crate::time::parse_rfc3339("2026-01-01T00:00:30Z");
        let s = select(
            content,
            &Opts {
                since,
                ..Opts::default()
            },
        );
        assert_eq!(
            s,
            b"2026-01-01T00:01:00Z b\n2026-01-01T00:02:00Z c\n".to_vec()
        );
        let early = crate::time::parse_rfc3339("2025-01-01T00:00:00Z");
        let s = select(
            content,
            &Opts {
                since: early,
                ..Opts::default()
            },
        );
        assert_eq!(s, content.to_vec(), "continuation lines go with their line");
        let l = select(
            content,
            &Opts {
                limit: Some(5),
                ..Opts::default()
            },
        );
        assert_eq!(l, b"2026-".to_vec());
    }

    #[test]
    fn containers_and_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert!(container_of(&pod, None).is_err());
        assert_eq!(container_of(&pod, Some("b")).unwrap(), "b");
        assert!(container_of(&pod, Some("x")).is_err());
        assert!(log_file(dir.path(), &pod, "a", false).is_err());
        std::fs::write(dir.path().join("n_p_a.log"), "x\n").unwrap();
        assert!(log_file(dir.path(), &pod, "a", false).is_ok());
        assert!(log_file(dir.path(), &pod, "a", true).is_err());
        let outside = tempfile::NamedTempFile::new().unwrap();
        let evil = json!({"metadata": {"name": "p", "namespace": "n",
            "annotations": {LOG_PATH_ANNOTATION: outside.path()}},
            "spec": {"containers": [{"name": "a"}]}});
        assert!(matches!(
            log_file(dir.path(), &evil, "a", false),
            Err(ApiError::Forbidden { .. })
        ));
    }
}
