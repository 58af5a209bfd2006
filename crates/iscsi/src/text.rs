//! iSCSI text keys (RFC 7143 §6): `key=value` pairs separated by NUL bytes, used by login
//! and text requests.
//!
//! Invariants: at most `limits::MAX_TEXT_KEYS` pairs, keys and values are UTF-8.
//! Never: interpret key meaning (login.rs does).

use crate::limits;

/// A text parse error; answered with a login or text reject.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextError {
    /// A pair without `=`.
    #[error("text pair without '=': {0:?}")]
    NoEquals(String),
    /// Bytes that are not UTF-8.
    #[error("text data is not UTF-8")]
    NotUtf8,
    /// More pairs than allowed.
    #[error("more than {} text keys", limits::MAX_TEXT_KEYS)]
    TooManyKeys,
}

/// Parses NUL-separated `key=value` pairs in order.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for item in data.split(|b| *b == 0) {
        if item.is_empty() {
            continue;
        }
        if out.len() >= limits::MAX_TEXT_KEYS {
            return Err(TextError::TooManyKeys);
        }
        let s = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoEquals(s.to_owned()))?;
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Encodes pairs as NUL-terminated `key=value` strings.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let pairs = parse(b"A=1\0B=x=y\0\0").unwrap();
        assert_eq!(
            pairs,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(encode(&pairs), b"A=1\0B=x=y\0".to_vec());
        assert_eq!(
            parse(b"novalue\0"),
            Err(TextError::NoEquals("novalue".into()))
        );
    }
}
