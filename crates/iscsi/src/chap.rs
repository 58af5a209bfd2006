//! CHAP authentication (RFC 1994 with MD5, as RFC 7143 §12.1.3 uses it), one-way and
//! mutual, with secrets read from a file.
//!
//! Invariants: a challenge is 16 random bytes from the OS and is used once; a response is
//! compared in constant time; the initiator may not reflect our challenge back (mutual).
//! Never: log or echo a secret.

use md5::{Digest, Md5};
use std::path::Path;

/// Secrets of one target.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapConfig {
    /// User name the initiator must present (CHAP_N).
    pub user: String,
    /// Secret shared with the initiator.
    pub secret: Vec<u8>,
    /// For mutual CHAP: the name and secret the target answers the initiator's challenge with.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig")
            .field("user", &self.user)
            .field("mutual_user", &self.mutual.as_ref().map(|m| &m.0))
            .finish_non_exhaustive()
    }
}

/// Errors reading a CHAP secret file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChapFileError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not `user:secret` lines.
    #[error("{path}: line {line} is not 'user:secret' (secret 12 to 255 bytes)")]
    Format {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
    },
}

impl ChapConfig {
    /// Reads `user:secret` on the first line and, for mutual CHAP, the target's
    /// `user:secret` on the second.
    pub fn from_file(path: &Path) -> Result<Self, ChapFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ChapFileError::Io {
            path: p.clone(),
            source,
        })?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let parse = |i: usize| -> Result<(String, Vec<u8>), ChapFileError> {
            let err = || ChapFileError::Format {
                path: p.clone(),
                line: i + 1,
            };
            let (u, s) = lines
                .get(i)
                .and_then(|l| l.split_once(':'))
                .ok_or_else(err)?;
            // RFC 7143 §12.1.3 asks for at least 96-bit secrets.
            if u.is_empty() || s.len() < 12 || s.len() > 255 {
                return Err(err());
            }
            Ok((u.to_owned(), s.as_bytes().to_vec()))
        };
        let (user, secret) = parse(0)?;
        let mutual = if lines.len() > 1 {
            Some(parse(1)?)
        } else {
            None
        };
        if lines.len() > 2 {
            return Err(ChapFileError::Format { path: p, line: 3 });
        }
        Ok(ChapConfig {
            user,
            secret,
            mutual,
        })
    }
}

/// MD5(id || secret || challenge): the CHAP response (also used by the initiator).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Fills `buf` from the OS random source (challenges, identifiers, ISIDs).
pub fn random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Hex with the `0x` prefix CHAP uses.
pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes `0x..` hex or `0b..` base64 binary values (RFC 7143 §6.1).
pub fn from_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 2048 {
            return None;
        }
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_owned()
        };
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
            .collect();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return base64(b);
    }
    None
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() > 4096 {
        return None;
    }
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Constant-time equality, so timing does not reveal how much of a response matched.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values() {
        assert_eq!(from_binary("0x0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(from_binary("zz"), None);
        assert_eq!(to_hex(&[1, 0xab]), "0x01ab");
    }

    #[test]
    fn secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("chap");
        std::fs::write(&p, "alice:secret-of-alice\ntarget:secret-of-target\n").unwrap();
        let c = ChapConfig::from_file(&p).unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.mutual.as_ref().unwrap().0, "target");
        std::fs::write(&p, "alice:short\n").unwrap();
        assert!(ChapConfig::from_file(&p).is_err());
    }
}
