//! TLS on the replica port (design rule 11): a replicated volume over TLS replicas serves
//! and stays byte-identical; a plain target is refused by a TLS replica with a reason; a
//! target trusting another CA, or dialling a plain replica over TLS, is refused; the
//! shared key still applies inside TLS. Prints the write rate plain vs TLS (the overhead).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use cstor_iscsi::backend::{BlockBackend, IoCtx};
use cstor_replication::client::ReplicaConn;
use cstor_replication::tls::{generate, ReplicaTlsClient, ReplicaTlsServer};
use cstor_replication::{AuthKey, FileStore, ReplicaError, ReplicaServer, ReplicatedVolume};
use tokio::net::TcpListener;

struct TlsFiles {
    _dir: tempfile::TempDir,
    server: ReplicaTlsServer,
    client: ReplicaTlsClient,
}

fn tls_files() -> TlsFiles {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(&["127.0.0.1".to_string()], 30).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.crt"), &g.ca_cert).unwrap();
    std::fs::write(p("replica.crt"), &g.cert).unwrap();
    std::fs::write(p("replica.key"), &g.key).unwrap();
    let server = ReplicaTlsServer::load(&p("replica.crt"), &p("replica.key")).unwrap();
    let client = ReplicaTlsClient::load(&p("ca.crt")).unwrap();
    TlsFiles {
        _dir: dir,
        server,
        client,
    }
}

/// A replica server on a new pool in `dir`; over TLS when `tls` is given.
async fn replica(
    dir: &std::path::Path,
    i: usize,
    tls: Option<&ReplicaTlsServer>,
    key: Option<AuthKey>,
) -> (ReplicaServer, String) {
    let pool = pool_on_file(dir, &format!("p{i}"));
    let s = ReplicaServer::new(pool, format!("r{i}"), key);
    if let Some(t) = tls {
        s.require_tls(t.clone());
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let s2 = s.clone();
    tokio::spawn(async move {
        let _ = s2.serve(l).await;
    });
    (s, addr)
}

fn noise(len: usize) -> Bytes {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// Writes `total` bytes in 128 KiB writes at queue depth 8; returns MB/s.
async fn write_rate(v: &ReplicatedVolume, total: u64) -> f64 {
    let chunk = 128 << 10;
    let data = noise(chunk as usize);
    let t = Instant::now();
    let mut off = 0u64;
    while off < total {
        let batch: Vec<_> = (0..8)
            .map(|k| {
                let v = v.clone();
                let d = data.clone();
                let o = off + k * chunk;
                async move { v.write(&ctx(&v, false), o, d).await }
            })
            .collect();
        for r in futures::future::join_all(batch).await {
            r.unwrap();
        }
        off += 8 * chunk;
    }
    total as f64 / t.elapsed().as_secs_f64() / 1e6
}

async fn volume(
    addrs: Vec<String>,
    tls: Option<ReplicaTlsClient>,
) -> (ReplicatedVolume, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::new(state.path()).unwrap());
    let mut c = cfg(SIZE, addrs);
    c.tls = tls;
    let v = ReplicatedVolume::start(c, store).await.unwrap();
    let p = v.ready().await;
    assert_eq!(p, cstor_replication::volume::Phase::Healthy);
    (v, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_volume_over_tls_serves_and_costs_what_it_costs() {
    let t = tls_files();
    let dir = tempfile::tempdir().unwrap();
    let key = AuthKey::from_bytes(b"0123456789abcdef0123456789abcdef").unwrap();
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let (s, a) = replica(dir.path(), i, Some(&t.server), Some(key.clone())).await;
        servers.push(s);
        addrs.push(a);
    }
    let state = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::new(state.path()).unwrap());
    let mut c = cfg(SIZE, addrs.clone());
    c.tls = Some(t.client.clone());
    c.key = Some(key.clone());
    let v = ReplicatedVolume::start(c, store).await.unwrap();
    assert_eq!(v.ready().await, cstor_replication::volume::Phase::Healthy);
    let tls_rate = write_rate(&v, 8 << 20).await;
    let rd = IoCtx::new(Instant::now() + Duration::from_secs(10));
    let got = v.read(&rd, 0, 128 << 10).await.unwrap();
    assert!(got == noise(128 << 10), "read back over TLS");
    v.shutdown().await.unwrap();
    // The same over plain connections, for the overhead.
    let dir2 = tempfile::tempdir().unwrap();
    let mut plain_servers = Vec::new();
    let mut plain = Vec::new();
    for i in 0..2 {
        let (s, a) = replica(dir2.path(), i, None, None).await;
        plain_servers.push(s);
        plain.push(a);
    }
    let (pv, _state) = volume(plain, None).await;
    let plain_rate = write_rate(&pv, 8 << 20).await;
    pv.shutdown().await.unwrap();
    eprintln!(
        "RF=2, 128 KiB writes at QD8: plain {plain_rate:.0} MB/s, TLS {tls_rate:.0} MB/s ({:.2}x)",
        tls_rate / plain_rate
    );
    for s in servers.iter().chain(plain_servers.iter()) {
        s.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_tls_settings_are_refused_with_a_reason() {
    let t = tls_files();
    let other = tls_files();
    let dir = tempfile::tempdir().unwrap();
    let (s_tls, tls_addr) = replica(dir.path(), 0, Some(&t.server), None).await;
    let (s_plain, plain_addr) = replica(dir.path(), 1, None, None).await;
    let to = Duration::from_secs(5);
    let v = cstor_replication::wire::VERSION;
    // A plain target at a TLS replica: told why.
    let e = ReplicaConn::connect(&tls_addr, None, to).await.unwrap_err();
    assert!(
        matches!(&e, ReplicaError::AuthFailed { why, .. } if why.contains("requires TLS")),
        "{e}"
    );
    // A target trusting another CA.
    let e = ReplicaConn::connect_with(&tls_addr, None, Some(&other.client), to, v)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ReplicaError::AuthFailed { why, .. } if why.contains("TLS handshake failed")),
        "{e}"
    );
    // A TLS target at a plain replica.
    let e = ReplicaConn::connect_with(&plain_addr, None, Some(&t.client), to, v)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ReplicaError::AuthFailed { why, .. } if why.contains("TLS handshake failed")),
        "{e}"
    );
    // The right CA: connected.
    ReplicaConn::connect_with(&tls_addr, None, Some(&t.client), to, v)
        .await
        .unwrap();
    s_tls.stop();
    s_plain.stop();
}
