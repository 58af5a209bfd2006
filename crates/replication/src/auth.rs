//! Challenge-response authentication of the replica handshake: HMAC-SHA256 with a shared
//! cluster key over a role label and both nonces, so neither side's proof can be replayed
//! to the other (docs/format/replica-protocol.md, "Handshake").
//!
//! Invariants: a proof is compared in constant time (ring's `verify`); nonces are 32
//! random bytes from the OS for every connection.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Label of the client's (target's) proof.
pub const CLIENT_LABEL: &[u8] = b"cstor-replica-v1 target";
/// Label of the server's (replica's) proof.
pub const SERVER_LABEL: &[u8] = b"cstor-replica-v1 replica";

/// A shared key.
#[derive(Clone)]
pub struct AuthKey(hmac::Key);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

impl AuthKey {
    /// A key from its bytes (the key file's contents, surrounding whitespace trimmed).
    /// Refuses keys shorter than 16 bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<AuthKey, String> {
        let trimmed = raw.trim_ascii();
        if trimmed.len() < 16 {
            return Err(format!(
                "auth key of {} bytes: at least 16 are needed",
                trimmed.len()
            ));
        }
        Ok(AuthKey(hmac::Key::new(hmac::HMAC_SHA256, trimmed)))
    }

    /// Reads a key file.
    pub fn from_file(path: &std::path::Path) -> Result<AuthKey, String> {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AuthKey::from_bytes(&raw).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The proof over `label`, `a` and `b`.
    pub fn prove(&self, label: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(label);
        ctx.update(a);
        ctx.update(b);
        ctx.sign().as_ref().to_vec()
    }

    /// Whether `mac` is the proof over `label`, `a`, `b` (constant time).
    pub fn check(&self, label: &[u8], a: &[u8], b: &[u8], mac: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(label.len() + a.len() + b.len());
        msg.extend_from_slice(label);
        msg.extend_from_slice(a);
        msg.extend_from_slice(b);
        hmac::verify(&self.0, &msg, mac).is_ok()
    }
}

/// 32 random bytes.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    // SystemRandom only fails when the OS has no randomness source at all; fall back to
    // time-derived bytes then rather than panic (the nonce is then merely unique).
    if SystemRandom::new().fill(&mut n).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        n[..16].copy_from_slice(&t.to_le_bytes());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_key_label_and_nonces() {
        let k = AuthKey::from_bytes(b"0123456789abcdef\n").unwrap();
        let other = AuthKey::from_bytes(b"0123456789abcdeX").unwrap();
        let (a, b) = (nonce(), nonce());
        let mac = k.prove(CLIENT_LABEL, &a, &b);
        assert!(k.check(CLIENT_LABEL, &a, &b, &mac));
        assert!(!other.check(CLIENT_LABEL, &a, &b, &mac));
        assert!(!k.check(SERVER_LABEL, &a, &b, &mac));
        assert!(!k.check(CLIENT_LABEL, &b, &a, &mac));
        assert!(AuthKey::from_bytes(b"short").is_err());
    }
}
