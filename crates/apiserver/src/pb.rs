//! Decoding of the Kubernetes protobuf encoding for the few built-in kinds kubectl's
//! typed `create` commands send that way (`create namespace`, `create secret`, `create
//! configmap`, `create serviceaccount`) and `kubectl auth can-i` (SelfSubjectAccessReview)
//! sends that way: the `k8s\0` envelope (runtime.Unknown) and the
//! fields of ObjectMeta, Namespace, Secret, ConfigMap and ServiceAccount that a create
//! carries. Responses are always JSON (kubectl accepts it). Unknown fields are skipped;
//! malformed bytes are a BadRequest, never a panic.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::limits::OBJECT_DEPTH_MAX;

const MAGIC: &[u8; 4] = b"k8s\0";

fn bad(what: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid protobuf body: {what}"))
}

#[derive(Debug)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, ApiError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or_else(|| bad("truncated varint"))?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint too long"))
}

fn fields(b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ApiError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(b, &mut pos)?))),
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).map_err(|_| bad("length"))?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= b.len())
                    .ok_or_else(|| bad("truncated field"))?;
                out.push((num, Field::Bytes(&b[pos..end])));
                pos = end;
            }
            1 => {
                pos = pos
                    .checked_add(8)
                    .filter(|p| *p <= b.len())
                    .ok_or_else(|| bad("truncated fixed64"))?
            }
            5 => {
                pos = pos
                    .checked_add(4)
                    .filter(|p| *p <= b.len())
                    .ok_or_else(|| bad("truncated fixed32"))?
            }
            _ => return Err(bad("unsupported wire type")),
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))
}

fn map_entry(b: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let mut k = String::new();
    let mut v: &[u8] = &[];
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = text(x)?,
            (2, Field::Bytes(x)) => v = x,
            _ => {}
        }
    }
    Ok((k, v))
}

fn string_map_insert(m: &mut Map<String, Value>, b: &[u8]) -> Result<(), ApiError> {
    let (k, v) = map_entry(b)?;
    m.insert(k, json!(text(v)?));
    Ok(())
}

fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        if let Field::Bytes(x) = f {
            // Go's protobuf writes empty strings too; JSON omits them.
            if x.is_empty() && n <= 6 {
                continue;
            }
            match n {
                1 => {
                    meta.insert("name".into(), json!(text(x)?));
                }
                2 => {
                    meta.insert("generateName".into(), json!(text(x)?));
                }
                3 => {
                    meta.insert("namespace".into(), json!(text(x)?));
                }
                6 => {
                    meta.insert("resourceVersion".into(), json!(text(x)?));
                }
                11 => string_map_insert(&mut labels, x)?,
                12 => string_map_insert(&mut annotations, x)?,
                14 => finalizers.push(json!(text(x)?)),
                _ => {}
            }
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub(crate) fn decode(body: &[u8], kind: &str) -> Result<Value, ApiError> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing k8s envelope magic"))?;
    let mut api_version = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(inner)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (m, g) in fields(tm)? {
                    if let (1, Field::Bytes(v)) = (m, g) {
                        api_version = text(v)?;
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    let mut data = Map::new();
    let mut binary = Map::new();
    let mut string_data = Map::new();
    let mut secrets = Vec::new();
    let _ = OBJECT_DEPTH_MAX;
    for (n, f) in fields(raw)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(m)) => {
                obj.insert("metadata".into(), object_meta(m)?);
            }
            ("Namespace", 2, Field::Bytes(spec)) => {
                let mut fins = Vec::new();
                for (m, g) in fields(spec)? {
                    if let (1, Field::Bytes(v)) = (m, g) {
                        fins.push(json!(text(v)?));
                    }
                }
                if !fins.is_empty() {
                    obj.insert("spec".into(), json!({"finalizers": fins}));
                }
            }
            ("Secret", 2, Field::Bytes(e)) => {
                let (k, v) = map_entry(e)?;
                data.insert(k, json!(crate::tls::base64_encode(v)));
            }
            ("Secret", 3, Field::Bytes(t)) if !t.is_empty() => {
                obj.insert("type".into(), json!(text(t)?));
            }
            ("Secret", 4, Field::Bytes(e)) => string_map_insert(&mut string_data, e)?,
            ("Secret", 5, Field::Varint(v)) | ("ConfigMap", 4, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("ConfigMap", 2, Field::Bytes(e)) => string_map_insert(&mut data, e)?,
            ("ConfigMap", 3, Field::Bytes(e)) => {
                let (k, v) = map_entry(e)?;
                binary.insert(k, json!(crate::tls::base64_encode(v)));
            }
            ("ServiceAccount", 2, Field::Bytes(r)) => {
                for (m, g) in fields(r)? {
                    if let (2, Field::Bytes(v)) = (m, g) {
                        secrets.push(json!({"name": text(v)?}));
                    }
                }
            }
            ("SelfSubjectAccessReview", 2, Field::Bytes(spec)) => {
                obj.insert("spec".into(), access_review_spec(spec)?);
            }
            (
                "Namespace" | "Secret" | "ConfigMap" | "ServiceAccount" | "SelfSubjectAccessReview",
                _,
                _,
            ) => {}
            _ => return Err(ApiError::UnsupportedMediaType("application/json".into())),
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    if !secrets.is_empty() {
        obj.insert("secrets".into(), Value::Array(secrets));
    }
    Ok(Value::Object(obj))
}

/// Kinds whose protobuf form `decode` understands.
pub(crate) fn supported(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace" | "Secret" | "ConfigMap" | "ServiceAccount" | "SelfSubjectAccessReview"
    )
}

/// SelfSubjectAccessReviewSpec: 1 resourceAttributes, 2 nonResourceAttributes.
fn access_review_spec(b: &[u8]) -> Result<Value, ApiError> {
    const RESOURCE: [&str; 7] = [
        "namespace",
        "verb",
        "group",
        "version",
        "resource",
        "subresource",
        "name",
    ];
    const NON_RESOURCE: [&str; 2] = ["path", "verb"];
    let mut spec = Map::new();
    for (n, f) in fields(b)? {
        let (key, names) = match n {
            1 => ("resourceAttributes", &RESOURCE[..]),
            2 => ("nonResourceAttributes", &NON_RESOURCE[..]),
            _ => continue,
        };
        let Field::Bytes(attrs) = f else { continue };
        let mut m = Map::new();
        for (a, g) in fields(attrs)? {
            let name = usize::try_from(a)
                .ok()
                .and_then(|i| names.get(i.wrapping_sub(1)));
            if let (Some(name), Field::Bytes(v)) = (name, g) {
                if !v.is_empty() {
                    m.insert((*name).into(), json!(text(v)?));
                }
            }
        }
        spec.insert(key.into(), Value::Object(m));
    }
    Ok(Value::Object(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u64, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn decodes_a_secret_like_kubectl_sends_it() {
        let meta = [ld(1, b"postgres-secret"), ld(3, b"database")].concat();
        let entry = [ld(1, b"password"), ld(2, b"supersecret")].concat();
        let raw = [ld(1, &meta), ld(2, &entry), ld(3, b"Opaque")].concat();
        let typemeta = [ld(1, b"v1"), ld(2, b"Secret")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &typemeta), ld(2, &raw)].concat();
        let v = decode(&body, "Secret").unwrap();
        assert_eq!(v["metadata"]["name"], "postgres-secret");
        assert_eq!(v["metadata"]["namespace"], "database");
        assert_eq!(v["type"], "Opaque");
        assert_eq!(
            v["data"]["password"],
            crate::tls::base64_encode(b"supersecret")
        );
    }

    #[test]
    fn garbage_is_a_bad_request_not_a_panic() {
        assert!(decode(b"nope", "Secret").is_err());
        assert!(decode(b"k8s\0\x0a\xff", "Secret").is_err());
        assert!(decode(b"k8s\0\x0a\x05ab", "Namespace").is_err());
    }
}
