//! Credentials in the data directory: a certificate authority (`ca.crt`, `ca.key`), a
//! bearer token (`token`), both generated on first start and reused after; a serving
//! certificate signed by the CA is made fresh at each start for the listen address
//! (so a changed address still verifies). Key and token files are mode 0600.
//! Never: logs or prints the token or keys.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::limits::CERT_VALIDITY_DAYS;
use crate::ServerError;

/// What the server needs to serve and what clients need to trust it.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub(crate) ca_pem: String,
    pub(crate) token: String,
    pub(crate) tls: Arc<rustls::ServerConfig>,
}

fn io_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{what}: {e}"))
}

/// Writes `contents` to `path` atomically (temp file + rename) with `mode`.
pub(crate) fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), ServerError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(contents).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    Ok(())
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cstor-apiserver-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    p.not_before = now - rcgen_days(1);
    p.not_after = now + rcgen_days(CERT_VALIDITY_DAYS);
    p
}

fn time_now() -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::now_utc()
}

fn rcgen_days(d: i64) -> ::time::Duration {
    ::time::Duration::days(d)
}

/// Loads or creates the CA and token in `dir`, and makes a serving certificate for
/// `hosts` (DNS names or IP addresses).
pub(crate) fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Credentials, ServerError> {
    let ca_key_path = dir.join("ca.key");
    let ca_crt_path = dir.join("ca.crt");
    let token_path = dir.join("token");
    let (ca_key, ca_pem) = if ca_key_path.exists() && ca_crt_path.exists() {
        let key_pem = fs::read_to_string(&ca_key_path).map_err(|e| io_err(&ca_key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| tls_err("ca.key", e))?;
        let pem = fs::read_to_string(&ca_crt_path).map_err(|e| io_err(&ca_crt_path, e))?;
        (key, pem)
    } else {
        let key = KeyPair::generate().map_err(|e| tls_err("generate CA key", e))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| tls_err("self-sign CA", e))?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&ca_crt_path, cert.pem().as_bytes(), 0o644)?;
        (key, cert.pem())
    };
    let token = if token_path.exists() {
        fs::read_to_string(&token_path)
            .map_err(|e| io_err(&token_path, e))?
            .trim()
            .to_string()
    } else {
        let t = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        write_private(&token_path, t.as_bytes(), 0o600)?;
        t
    };
    if token.len() < 32 {
        return Err(ServerError::Tls(format!(
            "{}: token too short",
            token_path.display()
        )));
    }
    // The issuer only needs the CA's name, key-id method and key: the same as at creation.
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cstor-apiserver");
    params.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(
        "localhost".try_into().map_err(|e| tls_err("san", e))?,
    )];
    for h in hosts {
        match h.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(
                h.clone().try_into().map_err(|e| tls_err("san", e))?,
            )),
        }
    }
    for ip in ["127.0.0.1", "::1"] {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            if !sans.contains(&SanType::IpAddress(ip)) {
                sans.push(SanType::IpAddress(ip));
            }
        }
    }
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time_now();
    params.not_before = now - rcgen_days(1);
    params.not_after = now + rcgen_days(CERT_VALIDITY_DAYS);
    let serving_key = KeyPair::generate().map_err(|e| tls_err("generate serving key", e))?;
    let serving = params
        .signed_by(&serving_key, &issuer)
        .map_err(|e| tls_err("sign serving cert", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_der = rustls::pki_types::CertificateDer::from(
        pem_to_der(&ca_pem).ok_or_else(|| ServerError::Tls("ca.crt is not PEM".into()))?,
    );
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(
            vec![serving.der().clone(), ca_der],
            rustls::pki_types::PrivateKeyDer::Pkcs8(serving_key.serialize_der().into()),
        )
        .map_err(|e| tls_err("serving certificate", e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Credentials {
        ca_pem,
        token,
        tls: Arc::new(cfg),
    })
}

pub(crate) fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&body)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (kubeconfig `certificate-authority-data`).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [&b""[..], b"f", b"fo", b"foo", b"foob", b"hello world!"] {
            assert_eq!(base64_decode(&base64_encode(s)).unwrap(), s);
        }
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
    }

    #[test]
    fn credentials_are_reused_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), &["127.0.0.1".into()]).unwrap();
        let b = load_or_create(dir.path(), &["127.0.0.1".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.token, b.token);
        let mode = fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
