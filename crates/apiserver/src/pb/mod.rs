//! The Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`) of the
//! built-in kinds, transcoded at the HTTP edge: the server keeps its JSON model, request
//! bodies are decoded to JSON here and responses encoded from JSON here. Spec and
//! limits: docs/apiserver.md, "Protobuf".
//!
//! Owns: the message table (`schema`, generated from k8s-pb + k8s-openapi by
//! scripts/gen-k8s-pb-schema.py), the wire codec, the `k8s\0` + `runtime.Unknown`
//! envelope, the watch frame, and Accept negotiation.
//! Invariants: only kinds listed in the table are ever encoded or decoded as protobuf
//! (custom resources never are, as on kube-apiserver); bytes from a client never panic
//! the decoder (truncation, bad lengths, wrong wire types and depth are typed errors);
//! JSON stays the default whenever the client does not prefer protobuf.
//! Never: changes what is stored; every object goes through the same JSON path.

mod codec;
mod schema;
mod wire;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

use crate::error::ApiError;
use schema::Schema;

/// The protobuf media type.
pub(crate) const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// The media type of a protobuf watch stream.
pub(crate) const PROTOBUF_WATCH: &str = "application/vnd.kubernetes.protobuf;stream=watch";
/// What a protobuf body starts with, before the `runtime.Unknown` envelope.
pub(crate) const MAGIC: &[u8; 4] = b"k8s\0";

/// Errors of the protobuf edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PbError {
    /// The bytes end inside a field.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The bytes are not a valid message.
    #[error("{0}")]
    Malformed(String),
    /// The compiled-in table is broken (a build bug, caught by the unit tests).
    #[error("protobuf table: {0}")]
    Schema(String),
    /// Nested deeper than `limits::OBJECT_DEPTH_MAX`.
    #[error("nested too deeply")]
    Depth,
    /// The kind has no protobuf form here.
    #[error("{kind} ({api_version}) is not served as protobuf")]
    NotServed {
        /// Kind asked for.
        kind: String,
        /// Its apiVersion.
        api_version: String,
    },
    /// A JSON value does not fit its protobuf field.
    #[error("{path}: {message}")]
    Encode {
        /// JSON path of the field.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl From<PbError> for ApiError {
    fn from(e: PbError) -> ApiError {
        match e {
            PbError::Schema(_) | PbError::Encode { .. } => {
                ApiError::Internal(format!("protobuf encoding: {e}"))
            }
            PbError::NotServed { .. } => {
                ApiError::UnsupportedMediaType(format!("application/json, application/yaml ({e})"))
            }
            other => ApiError::BadRequest(format!("invalid protobuf body: {other}")),
        }
    }
}

/// Whether objects of `kind` in `api_version` are served in protobuf.
pub(crate) fn served(api_version: &str, kind: &str) -> bool {
    Schema::get().is_ok_and(|s| s.kind(api_version, kind).is_some())
}

fn message_of(s: &Schema, api_version: &str, kind: &str) -> Result<usize, PbError> {
    // DeleteOptions is registered in every group version (client-go envelopes it as
    // `storage.k8s.io/v1` when deleting a StorageClass); it is the same message.
    if kind.is_empty() {
        return Err(PbError::Malformed("the envelope names no kind".into()));
    }
    let api_version = if kind == "DeleteOptions" {
        "v1"
    } else {
        api_version
    };
    s.kind(api_version, kind).ok_or_else(|| PbError::NotServed {
        kind: kind.to_string(),
        api_version: api_version.to_string(),
    })
}

/// Decodes a request body (`k8s\0` + Unknown) into the JSON object it stands for.
pub(crate) fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    Ok(Value::Object(decode_enveloped(body)?))
}

pub(super) fn decode_enveloped(body: &[u8]) -> Result<Map<String, Value>, PbError> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| PbError::Malformed("missing the k8s\\0 magic".into()))?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], &[][..]);
    for (num, w) in wire::fields(inner)? {
        match (num, w) {
            (1, wire::Wire::Bytes(tm)) => {
                for (n, v) in wire::fields(tm)? {
                    match (n, v) {
                        (1, wire::Wire::Bytes(v)) => api_version = utf8(v)?,
                        (2, wire::Wire::Bytes(v)) => kind = utf8(v)?,
                        _ => {}
                    }
                }
            }
            (2, wire::Wire::Bytes(r)) => raw = r,
            (3, wire::Wire::Bytes(e)) => encoding = e,
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(PbError::Malformed(format!(
            "contentEncoding {:?} is not supported",
            String::from_utf8_lossy(encoding)
        )));
    }
    let s = Schema::get()?;
    let msg = message_of(s, &api_version, &kind)?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    obj.extend(codec::decode(s, msg, raw, 0)?);
    Ok(obj)
}

fn utf8(b: &[u8]) -> Result<String, PbError> {
    String::from_utf8(b.to_vec()).map_err(|_| PbError::Malformed("string is not UTF-8".into()))
}

/// Encodes a JSON object (with apiVersion and kind) as `k8s\0` + Unknown.
pub(crate) fn encode_object(obj: &Value) -> Result<Vec<u8>, PbError> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    let map = obj.as_object().ok_or_else(|| PbError::Encode {
        path: String::new(),
        message: "not an object".into(),
    })?;
    let s = Schema::get()?;
    let msg = message_of(s, api_version, kind)?;
    let raw = codec::encode(s, msg, map, "", 0)?;
    let mut type_meta = Vec::new();
    wire::put_bytes_field(&mut type_meta, 1, api_version.as_bytes());
    wire::put_bytes_field(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    wire::put_bytes_field(&mut out, 1, &type_meta);
    wire::put_bytes_field(&mut out, 2, &raw);
    // contentEncoding and contentType: empty, written as Go writes them.
    wire::put_bytes_field(&mut out, 3, b"");
    wire::put_bytes_field(&mut out, 4, b"");
    Ok(out)
}

/// One frame of a protobuf watch stream: a 4-byte big-endian length, then a
/// `meta.v1.WatchEvent` without envelope (kube-apiserver's stream serializer is the raw
/// one) whose `object.raw` is the enveloped object.
pub(crate) fn watch_frame(event_type: &str, object: &Value) -> Result<Vec<u8>, PbError> {
    let inner = encode_object(object)?;
    let mut raw_ext = Vec::new();
    wire::put_bytes_field(&mut raw_ext, 1, &inner);
    let mut event = Vec::new();
    wire::put_bytes_field(&mut event, 1, event_type.as_bytes());
    wire::put_bytes_field(&mut event, 2, &raw_ext);
    let len = u32::try_from(event.len()).map_err(|_| PbError::Encode {
        path: String::new(),
        message: "watch event larger than 4 GiB".into(),
    })?;
    #[allow(
        clippy::big_endian_bytes,
        reason = "the length-delimited framer of Kubernetes watch streams is big-endian"
    )]
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&event);
    Ok(out)
}

/// Decodes one watch frame body (after its length) into (type, object).
#[cfg(test)]
pub(crate) fn decode_watch_event(frame: &[u8]) -> Result<(String, Value), PbError> {
    let (mut kind, mut object) = (String::new(), Value::Null);
    for (num, w) in wire::fields(frame)? {
        match (num, w) {
            (1, wire::Wire::Bytes(t)) => kind = utf8(t)?,
            (2, wire::Wire::Bytes(ext)) => {
                for (n, v) in wire::fields(ext)? {
                    if let (1, wire::Wire::Bytes(raw)) = (n, v) {
                        object = Value::Object(decode_enveloped(raw)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok((kind, object))
}

/// The response encoding chosen from an Accept header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Media {
    /// `application/json` (the default).
    Json,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

/// Picks the response encoding from `accept` by q-value, then order, as kube-apiserver's
/// negotiation does. `protobuf_ok` says whether the resource has a protobuf form
/// (built-ins do, custom resources do not). No Accept, or one naming `*/*` or
/// `application/*`, gets JSON; one naming only types not served here is 406.
pub(crate) fn negotiate(accept: &str, protobuf_ok: bool) -> Result<Media, ApiError> {
    if accept.trim().is_empty() {
        return Ok(Media::Json);
    }
    let mut ranges: Vec<(f32, usize, Media)> = Vec::new();
    for (i, part) in accept.split(',').enumerate() {
        let mut params = part.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut other_params = false;
        for p in params {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.trim() {
                "q" => q = v.trim().parse().unwrap_or(0.0),
                // The stream serializer of the same type.
                "stream" if v.trim() == "watch" => {}
                "charset" => {}
                _ => other_params = true,
            }
        }
        // `as=Table` and friends ask for a different object; they are answered before
        // negotiation, and a plain range later in the header is the fallback.
        if q <= 0.0 || other_params {
            continue;
        }
        let m = match media.as_str() {
            "application/json" | "application/*" | "*/*" => Media::Json,
            PROTOBUF if protobuf_ok => Media::Protobuf,
            _ => continue,
        };
        ranges.push((q, i, m));
    }
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    match ranges.first() {
        Some((_, _, m)) => Ok(*m),
        None => Err(ApiError::NotAcceptable(if protobuf_ok {
            format!("application/json, {PROTOBUF}")
        } else {
            "application/json, application/yaml".into()
        })),
    }
}
