//! The protobuf wire format (varints, tags, length-delimited fields) as far as the
//! Kubernetes messages use it: wire types 0 (varint), 1 (fixed64, only `double`),
//! 2 (length-delimited) and 5 (fixed32, skipped). Groups (3, 4) do not occur in the
//! Kubernetes protos and are refused.
//!
//! Invariants: reading never panics and never reads past the slice: every length is
//! checked against the remaining bytes before it is used; a varint longer than 10 bytes
//! is an error.

use super::PbError;

/// One field as read from the wire.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, PbError> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*pos).ok_or(PbError::Truncated("varint"))?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err(PbError::Malformed("varint overflows 64 bits".into()));
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(PbError::Malformed("varint longer than 10 bytes".into()))
}

fn take<'a>(b: &'a [u8], pos: &mut usize, len: usize) -> Result<&'a [u8], PbError> {
    let end = pos
        .checked_add(len)
        .filter(|e| *e <= b.len())
        .ok_or(PbError::Truncated("field"))?;
    let out = &b[*pos..end];
    *pos = end;
    Ok(out)
}

/// The fields of one message, in wire order.
pub(super) fn fields(b: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, PbError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let num = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| PbError::Malformed(format!("field number {}", key >> 3)))?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(b, &mut pos)?),
            1 => {
                let raw = take(b, &mut pos, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(raw);
                Wire::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?)
                    .map_err(|_| PbError::Truncated("length"))?;
                Wire::Bytes(take(b, &mut pos, len)?)
            }
            5 => {
                take(b, &mut pos, 4)?;
                Wire::Fixed32
            }
            w => return Err(PbError::Malformed(format!("wire type {w}"))),
        };
        out.push((num, value));
    }
    Ok(out)
}

/// The varints of a packed repeated field.
pub(super) fn packed(b: &[u8]) -> Result<Vec<u64>, PbError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        out.push(varint(b, &mut pos)?);
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes a varint field (negative int32/int64 sign-extend to 10 bytes, as Go does).
pub(super) fn put_varint_field(out: &mut Vec<u8>, num: u32, v: u64) {
    put_varint(out, u64::from(num) << 3);
    put_varint(out, v);
}

/// Writes a length-delimited field.
pub(super) fn put_bytes_field(out: &mut Vec<u8>, num: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(num) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes a fixed64 field (`double`).
pub(super) fn put_fixed64_field(out: &mut Vec<u8>, num: u32, v: u64) {
    put_varint(out, (u64::from(num) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_including_negative_numbers() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            (-1i64) as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint_field(&mut out, 7, v);
            let f = fields(&out).unwrap();
            assert!(matches!(f[..], [(7, Wire::Varint(x))] if x == v), "{v}");
        }
    }

    #[test]
    fn truncated_and_hostile_bytes_are_errors() {
        assert!(fields(&[0x0a, 0x05, b'a']).is_err());
        assert!(fields(&[0x08]).is_err());
        assert!(
            fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err()
        );
        assert!(fields(&[0x0b]).is_err());
        assert!(fields(&[0x00, 0x01]).is_err());
        assert!(fields(&[0x09, 1, 2, 3]).is_err());
    }
}
