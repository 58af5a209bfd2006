//! JSON <-> protobuf for one message of the table, with the Kubernetes JSON forms of the
//! leaf messages: Time and MicroTime (RFC 3339 strings, seconds or microseconds; the
//! protobuf form is {seconds, nanos}), Duration (Go duration string; nanoseconds),
//! Quantity (string), IntOrString (number or string), FieldsV1 and RawExtension (JSON
//! embedded as bytes), bytes as base64, maps as JSON objects.
//!
//! Invariants: encoding walks the table, never the JSON, so fields the table does not
//! know are dropped (as Go's typed decoding drops unknown JSON fields); a JSON value of
//! the wrong type for its field is an error naming the field, never a guess. Decoding
//! skips unknown field numbers (newer clients) and drops empty strings and empty Times,
//! which are what Go writes for unset non-pointer fields (see `EMPTY_MEANINGFUL`).
//! Recursion is bounded by `limits::OBJECT_DEPTH_MAX`.

use serde_json::{Map, Value};

use super::schema::{Field, Leaf, Schema, Ty};
use super::wire::{self, Wire};
use super::PbError;
use crate::limits::OBJECT_DEPTH_MAX;

/// String fields whose empty value means something else than absent (`*string` in Go
/// where "" is documented): a PVC with `storageClassName: ""` asks for no class at all.
const EMPTY_MEANINGFUL: [&str; 2] = ["storageClassName", "volumeAttributesClassName"];

fn mismatch(path: &str, want: &str, got: &Value) -> PbError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    PbError::Encode {
        path: path.to_string(),
        message: format!("expected {want}, found {got}"),
    }
}

/// Encodes `obj` as message `msg` (apiVersion and kind, which no message holds, are
/// ignored).
pub(super) fn encode(
    s: &Schema,
    msg: usize,
    obj: &Map<String, Value>,
    path: &str,
    depth: usize,
) -> Result<Vec<u8>, PbError> {
    if depth > OBJECT_DEPTH_MAX {
        return Err(PbError::Depth);
    }
    let mut out = Vec::new();
    for f in &s.messages[msg].fields {
        let Some(json) = &f.json else {
            // Inline embedding: the embedded struct's fields live in this object.
            let Ty::Message(m) = f.ty else {
                return Err(PbError::Schema(format!(
                    "inline field {} of {} is no message",
                    f.num, s.messages[msg].name
                )));
            };
            let inner = encode(s, m, obj, path, depth + 1)?;
            wire::put_bytes_field(&mut out, f.num, &inner);
            continue;
        };
        let Some(v) = obj.get(json).filter(|v| !v.is_null()) else {
            continue;
        };
        let p = format!("{path}.{json}");
        if f.map {
            let m = v.as_object().ok_or_else(|| mismatch(&p, "an object", v))?;
            // serde_json's Map is ordered by key here, as Go sorts map keys.
            for (k, item) in m {
                if item.is_null() {
                    continue;
                }
                let mut entry = Vec::new();
                wire::put_bytes_field(&mut entry, 1, k.as_bytes());
                put_value(s, f, 2, item, &format!("{p}[{k}]"), depth, &mut entry)?;
                wire::put_bytes_field(&mut out, f.num, &entry);
            }
        } else if f.repeated {
            let items = v.as_array().ok_or_else(|| mismatch(&p, "an array", v))?;
            for (i, item) in items.iter().enumerate() {
                put_value(s, f, f.num, item, &format!("{p}[{i}]"), depth, &mut out)?;
            }
        } else {
            put_value(s, f, f.num, v, &p, depth, &mut out)?;
        }
    }
    Ok(out)
}

fn int(v: &Value, path: &str, want: &str) -> Result<i64, PbError> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|x| x.fract() == 0.0).map(|x| x as i64))
        .ok_or_else(|| mismatch(path, want, v))
}

fn put_value(
    s: &Schema,
    f: &Field,
    num: u32,
    v: &Value,
    path: &str,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), PbError> {
    match f.ty {
        Ty::String => {
            let t = v.as_str().ok_or_else(|| mismatch(path, "a string", v))?;
            wire::put_bytes_field(out, num, t.as_bytes());
        }
        Ty::Bytes => {
            let t = v
                .as_str()
                .ok_or_else(|| mismatch(path, "a base64 string", v))?;
            let b = crate::tls::base64_decode(t).ok_or_else(|| PbError::Encode {
                path: path.to_string(),
                message: "not valid base64".into(),
            })?;
            wire::put_bytes_field(out, num, &b);
        }
        Ty::Bool => {
            let b = v.as_bool().ok_or_else(|| mismatch(path, "a boolean", v))?;
            wire::put_varint_field(out, num, u64::from(b));
        }
        Ty::Int32 => {
            let n = int(v, path, "an int32")?;
            let n = i32::try_from(n).map_err(|_| mismatch(path, "an int32", v))?;
            // Negative int32 values are sign-extended to 64 bits on the wire.
            wire::put_varint_field(out, num, i64::from(n) as u64);
        }
        Ty::Int64 => wire::put_varint_field(out, num, int(v, path, "an int64")? as u64),
        Ty::Double => {
            let x = v.as_f64().ok_or_else(|| mismatch(path, "a number", v))?;
            wire::put_fixed64_field(out, num, x.to_bits());
        }
        Ty::Message(m) => {
            let o = v
                .as_object()
                .ok_or_else(|| mismatch(path, "an object", v))?;
            let inner = encode(s, m, o, path, depth + 1)?;
            wire::put_bytes_field(out, num, &inner);
        }
        Ty::Leaf(l) => {
            let inner = encode_leaf(l, v, path)?;
            wire::put_bytes_field(out, num, &inner);
        }
    }
    Ok(())
}

fn encode_leaf(l: Leaf, v: &Value, path: &str) -> Result<Vec<u8>, PbError> {
    let mut out = Vec::new();
    match l {
        Leaf::Time | Leaf::MicroTime => {
            let t = v
                .as_str()
                .ok_or_else(|| mismatch(path, "an RFC 3339 time", v))?;
            let (secs, nanos) = parse_time(t).ok_or_else(|| PbError::Encode {
                path: path.to_string(),
                message: format!("{t:?} is not an RFC 3339 time"),
            })?;
            wire::put_varint_field(&mut out, 1, secs as u64);
            wire::put_varint_field(&mut out, 2, u64::from(nanos));
        }
        Leaf::Duration => {
            let t = v.as_str().ok_or_else(|| mismatch(path, "a duration", v))?;
            let n = parse_duration(t).ok_or_else(|| PbError::Encode {
                path: path.to_string(),
                message: format!("{t:?} is not a duration"),
            })?;
            wire::put_varint_field(&mut out, 1, n as u64);
        }
        Leaf::Quantity => {
            let q = match v {
                Value::String(q) => q.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(mismatch(path, "a quantity", other)),
            };
            wire::put_bytes_field(&mut out, 1, q.as_bytes());
        }
        Leaf::IntOrString => match v {
            Value::String(t) => {
                wire::put_varint_field(&mut out, 1, 1);
                wire::put_varint_field(&mut out, 2, 0);
                wire::put_bytes_field(&mut out, 3, t.as_bytes());
            }
            other => {
                let n = int(other, path, "an integer or string")?;
                let n = i32::try_from(n).map_err(|_| mismatch(path, "an int32", other))?;
                wire::put_varint_field(&mut out, 1, 0);
                wire::put_varint_field(&mut out, 2, i64::from(n) as u64);
                wire::put_bytes_field(&mut out, 3, b"");
            }
        },
        Leaf::FieldsV1 | Leaf::RawExtension => {
            let raw = serde_json::to_vec(v).map_err(|e| PbError::Encode {
                path: path.to_string(),
                message: e.to_string(),
            })?;
            wire::put_bytes_field(&mut out, 1, &raw);
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, PbError> {
    String::from_utf8(b.to_vec()).map_err(|_| PbError::Malformed("string is not UTF-8".into()))
}

fn wrong_wire(field: &Field) -> PbError {
    PbError::Malformed(format!("field {} has the wrong wire type", field.num))
}

/// Decodes message `msg` into its JSON object.
pub(super) fn decode(
    s: &Schema,
    msg: usize,
    bytes: &[u8],
    depth: usize,
) -> Result<Map<String, Value>, PbError> {
    if depth > OBJECT_DEPTH_MAX {
        return Err(PbError::Depth);
    }
    let fields = &s.messages[msg].fields;
    let mut out = Map::new();
    for (num, w) in wire::fields(bytes)? {
        let Some(f) = fields.iter().find(|f| f.num == num) else {
            continue;
        };
        let Some(json) = &f.json else {
            let (Ty::Message(m), Wire::Bytes(b)) = (f.ty, w) else {
                return Err(wrong_wire(f));
            };
            out.extend(decode(s, m, b, depth + 1)?);
            continue;
        };
        if f.map {
            let Wire::Bytes(entry) = w else {
                return Err(wrong_wire(f));
            };
            let (mut key, mut value) = (String::new(), None);
            for (n, ew) in wire::fields(entry)? {
                match (n, ew) {
                    (1, Wire::Bytes(k)) => key = text(k)?,
                    (2, ew) => value = Some(decode_value(s, f, ew, depth)?),
                    _ => {}
                }
            }
            let value = value.unwrap_or_else(|| empty_value(s, f));
            let slot = out
                .entry(json.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = slot {
                m.insert(key, value);
            }
        } else if f.repeated {
            let slot = out
                .entry(json.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = slot else { continue };
            match (f.ty, w) {
                // Packed repeated scalars (proto3 style); Go's proto2 writes them unpacked.
                (Ty::Int32 | Ty::Int64 | Ty::Bool, Wire::Bytes(b)) => {
                    for v in wire::packed(b)? {
                        items.push(scalar(f.ty, v));
                    }
                }
                (_, w) => items.push(decode_value(s, f, w, depth)?),
            }
        } else {
            let v = decode_value(s, f, w, depth)?;
            let drop = match &v {
                Value::String(t) => t.is_empty() && !EMPTY_MEANINGFUL.contains(&json.as_str()),
                Value::Null => true,
                _ => false,
            };
            if drop {
                out.remove(json);
            } else {
                out.insert(json.clone(), v);
            }
        }
    }
    Ok(out)
}

fn scalar(ty: Ty, v: u64) -> Value {
    match ty {
        Ty::Bool => Value::Bool(v != 0),
        // int32 travels sign-extended; truncating recovers it.
        Ty::Int32 => Value::from(v as u32 as i32),
        _ => Value::from(v as i64),
    }
}

/// What an entry without a value stands for (Go writes empty values out, but an entry
/// may omit them).
fn empty_value(s: &Schema, f: &Field) -> Value {
    match f.ty {
        Ty::String | Ty::Bytes => Value::String(String::new()),
        Ty::Bool => Value::Bool(false),
        Ty::Int32 | Ty::Int64 | Ty::Double => Value::from(0),
        Ty::Message(m) => decode(s, m, &[], 0).map_or(Value::Null, Value::Object),
        Ty::Leaf(l) => decode_leaf(l, &[]).unwrap_or(Value::Null),
    }
}

fn decode_value(s: &Schema, f: &Field, w: Wire<'_>, depth: usize) -> Result<Value, PbError> {
    Ok(match (f.ty, w) {
        (Ty::String, Wire::Bytes(b)) => Value::String(text(b)?),
        (Ty::Bytes, Wire::Bytes(b)) => Value::String(crate::tls::base64_encode(b)),
        (Ty::Bool | Ty::Int32 | Ty::Int64, Wire::Varint(v)) => scalar(f.ty, v),
        (Ty::Double, Wire::Fixed64(v)) => {
            serde_json::Number::from_f64(f64::from_bits(v)).map_or(Value::Null, Value::Number)
        }
        (Ty::Message(m), Wire::Bytes(b)) => Value::Object(decode(s, m, b, depth + 1)?),
        (Ty::Leaf(l), Wire::Bytes(b)) => decode_leaf(l, b)?,
        _ => return Err(wrong_wire(f)),
    })
}

fn decode_leaf(l: Leaf, b: &[u8]) -> Result<Value, PbError> {
    let fields = wire::fields(b)?;
    let varint = |n: u32| {
        fields.iter().rev().find_map(|(num, w)| match (num, w) {
            (x, Wire::Varint(v)) if *x == n => Some(*v),
            _ => None,
        })
    };
    let bytes = |n: u32| {
        fields.iter().rev().find_map(|(num, w)| match (num, w) {
            (x, Wire::Bytes(v)) if *x == n => Some(*v),
            _ => None,
        })
    };
    Ok(match l {
        Leaf::Time | Leaf::MicroTime => {
            // An empty Time is Go's zero time, which its JSON writes as null.
            if fields.is_empty() {
                return Ok(Value::Null);
            }
            let secs = varint(1).unwrap_or(0) as i64;
            let nanos = varint(2).unwrap_or(0) as u32 as i32;
            if !(0..1_000_000_000).contains(&nanos) {
                return Err(PbError::Malformed(format!("timestamp nanos {nanos}")));
            }
            let base = crate::time::format_rfc3339(secs);
            if l == Leaf::MicroTime {
                let stem = base.trim_end_matches('Z');
                Value::String(format!("{stem}.{:06}Z", nanos / 1000))
            } else {
                Value::String(base)
            }
        }
        Leaf::Duration => Value::String(format_duration(varint(1).unwrap_or(0) as i64)),
        Leaf::Quantity => Value::String(text(bytes(1).unwrap_or_default())?),
        Leaf::IntOrString => {
            if varint(1).unwrap_or(0) == 1 {
                Value::String(text(bytes(3).unwrap_or_default())?)
            } else {
                Value::from(varint(2).unwrap_or(0) as u32 as i32)
            }
        }
        Leaf::FieldsV1 | Leaf::RawExtension => {
            let raw = bytes(1).unwrap_or_default();
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            if raw.starts_with(super::MAGIC) {
                Value::Object(super::decode_enveloped(raw)?)
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| PbError::Malformed(format!("embedded JSON: {e}")))?
            }
        }
    })
}

/// Seconds and nanoseconds of an RFC 3339 time; the fraction may have 0-9 digits.
fn parse_time(t: &str) -> Option<(i64, u32)> {
    let secs = crate::time::parse_rfc3339(t)?;
    let nanos = match t.get(19..).and_then(|r| r.strip_prefix('.')) {
        Some(frac) => {
            let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() || digits.len() > 9 {
                return None;
            }
            format!("{digits:0<9}").parse().ok()?
        }
        None => 0,
    };
    Some((secs, nanos))
}

const UNITS: [(&str, i64); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Go's `time.ParseDuration` for integer components (`1h30m`, `90s`, `250ms`).
fn parse_duration(t: &str) -> Option<i64> {
    let (neg, mut rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        let whole: i64 = rest.get(..n)?.parse().ok()?;
        rest = &rest[n..];
        let mut frac = "";
        if let Some(r) = rest.strip_prefix('.') {
            let f = r.bytes().take_while(u8::is_ascii_digit).count();
            frac = &r[..f];
            rest = &r[f..];
        }
        let unit = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit_text = if &rest[..unit] == "µs" {
            "us"
        } else {
            &rest[..unit]
        };
        let scale = UNITS.iter().find(|(u, _)| *u == unit_text)?.1;
        let mut part = whole.checked_mul(scale)?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let f: i64 = frac[..digits as usize].parse().ok()?;
            part = part.checked_add(f.checked_mul(scale)? / 10i64.pow(digits))?;
        }
        total = total.checked_add(part)?;
        rest = &rest[unit..];
    }
    Some(if neg { -total } else { total })
}

/// Go's `Duration.String` for whole seconds and below (`1h0m0s`, `1.5s`, `250ms`).
fn format_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let n = ns.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, scale) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_frac(n, scale));
    }
    let (h, m) = (n / 3_600_000_000_000, (n / 60_000_000_000) % 60);
    let s = trim_frac(n % 60_000_000_000, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn trim_frac(n: u64, scale: u64) -> String {
    let (whole, frac) = (n / scale, n % scale);
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go() {
        for (text, ns) in [
            ("0s", 0),
            ("1h0m0s", 3_600_000_000_000),
            ("1m30s", 90_000_000_000),
            ("1.5s", 1_500_000_000),
            ("250ms", 250_000_000),
            ("-2s", -2_000_000_000),
        ] {
            assert_eq!(format_duration(ns), text);
            assert_eq!(parse_duration(text), Some(ns), "{text}");
        }
        assert_eq!(parse_duration("90s"), Some(90_000_000_000));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn times_keep_their_precision() {
        assert_eq!(parse_time("2026-01-02T03:04:05Z"), Some((1_767_323_045, 0)));
        assert_eq!(
            parse_time("2026-01-02T03:04:05.123456Z"),
            Some((1_767_323_045, 123_456_000))
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}
