//! Optional TLS on the replica port (design rule 11): confidentiality and integrity of
//! every frame after the handshake, which the shared-key challenge alone does not give
//! (it proves who connected; frames after it carry a CRC, not a MAC).
//!
//! Owns: loading the replica's certificate and key (PEM) into an acceptor, loading the
//! CA the target trusts into a connector, and `cstor replica tls-init`'s generation of a
//! CA plus a replica certificate for given addresses. The challenge-response runs inside
//! the TLS session unchanged, so a replica still admits only targets holding the key.
//!
//! Invariants: a replica with TLS answers a plain HELLO with AUTH_FAILED "requires TLS"
//! (never serves it); a target with a CA refuses a replica whose certificate does not
//! verify for the address it dialled (IP or DNS name).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Generating certificates failed.
    #[error("generating certificates: {0}")]
    Generate(String),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE in the PEM file"));
    }
    Ok(certs)
}

/// The replica side: its certificate chain and private key, PEM files.
#[derive(Clone)]
pub struct ReplicaTlsServer(pub(crate) tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for ReplicaTlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaTlsServer")
    }
}

impl ReplicaTlsServer {
    /// Loads `cert` (chain, leaf first) and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<ReplicaTlsServer, TlsError> {
        let chain = certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
        Self::new(chain, key)
    }

    /// From PEM text held elsewhere (a Kubernetes Secret); `what` names it in errors.
    pub fn from_pem(cert: &[u8], key: &[u8], what: &str) -> Result<ReplicaTlsServer, TlsError> {
        let chain = pem_certs(cert, what)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::File {
            path: what.to_string(),
            why: format!("private key: {e}"),
        })?;
        Self::new(chain, key)
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ReplicaTlsServer, TlsError> {
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(ReplicaTlsServer(tokio_rustls::TlsAcceptor::from(Arc::new(
            cfg,
        ))))
    }
}

/// The target side: the CA (or the replicas' self-signed certificates) it trusts.
#[derive(Clone)]
pub struct ReplicaTlsClient(pub(crate) tokio_rustls::TlsConnector);

impl std::fmt::Debug for ReplicaTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaTlsClient")
    }
}

impl ReplicaTlsClient {
    /// Trusts every certificate in the PEM file `ca`.
    pub fn load(ca: &Path) -> Result<ReplicaTlsClient, TlsError> {
        Self::new(certs(ca)?, &ca.display().to_string())
    }

    /// Trusts every certificate in PEM text held elsewhere (a Kubernetes Secret); `what`
    /// names it in errors.
    pub fn from_pem(ca: &[u8], what: &str) -> Result<ReplicaTlsClient, TlsError> {
        Self::new(pem_certs(ca, what)?, what)
    }

    fn new(cas: Vec<CertificateDer<'static>>, what: &str) -> Result<ReplicaTlsClient, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in cas {
            roots.add(c).map_err(|e| TlsError::File {
                path: what.to_string(),
                why: e.to_string(),
            })?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ReplicaTlsClient(tokio_rustls::TlsConnector::from(
            Arc::new(cfg),
        )))
    }
}

fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |why: String| TlsError::File {
        path: what.to_string(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE in the PEM text".into()));
    }
    Ok(certs)
}

/// The name a replica's certificate must carry for `addr` (`IP:PORT` or `HOST:PORT`).
pub(crate) fn server_name(addr: &str) -> Option<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).ok()
}

/// PEM files written by [`generate`].
#[derive(Debug, Clone)]
pub struct Generated {
    /// CA certificate (give it to targets: `--replica-ca`).
    pub ca_cert: String,
    /// Replica certificate, signed by the CA.
    pub cert: String,
    /// Replica private key.
    pub key: String,
}

/// A new CA and a replica certificate for `names` (IP addresses or DNS names), valid
/// for `days`.
pub fn generate(names: &[String], days: u32) -> Result<Generated, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let g = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(days));
    let ca_key = KeyPair::generate().map_err(g)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "cstor replica CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = until;
    let ca_cert = ca.self_signed(&ca_key).map_err(g)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(g)?;
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "cstor replica");
    p.not_before = now - time::Duration::hours(1);
    p.not_after = until;
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    for n in names {
        let san = match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                n.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| TlsError::Generate(format!("{n}: {e}")))?,
            ),
        };
        p.subject_alt_names.push(san);
    }
    if p.subject_alt_names.is_empty() {
        return Err(TlsError::Generate(
            "give at least one address or name the replica is reached at".into(),
        ));
    }
    let cert = p.signed_by(&key, &issuer).map_err(g)?;
    Ok(Generated {
        ca_cert: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
