//! Shared harness of the replication scenario tests: real pools on sparse temp files,
//! replica servers on 127.0.0.1, a controllable TCP proxy per replica (pass, stall,
//! cut), a fault-injecting membership store, and a verifying writer that knows the last
//! acknowledged value of every block.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cstor_iscsi::backend::{BlockBackend, IoCtx};
use cstor_pool::spa::{GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::{Pool, PoolOptions};
use cstor_replication::membership::{Cas, MembershipStore, Record, Version};
use cstor_replication::{
    AuthKey, FileStore, ReplicaServer, ReplicatedVolume, StoreError, VolumeConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BS: u64 = 4096;
pub const VOL: &str = "pvc-1";

/// A pool on a sparse file in `dir`.
pub fn pool_on_file(dir: &std::path::Path, name: &str) -> Arc<Pool> {
    let p = dir.join(format!("{name}.img"));
    std::fs::File::create(&p)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let spa = Spa::create(
        name,
        &[GroupSpec {
            kind: GroupKind::Stripe,
            devices: vec![p.to_string_lossy().into_owned()],
            log: false,
        }],
        SpaOptions::default(),
    )
    .unwrap();
    Arc::new(
        Pool::create(
            Arc::new(spa),
            PoolOptions {
                cache_bytes: 16 << 20,
                ..PoolOptions::default()
            },
        )
        .unwrap(),
    )
}

/// A replica server over a pool, on a fixed port once bound (restarts reuse it).
pub struct Rep {
    pub pool: Arc<Pool>,
    pub port: u16,
    pub id: String,
    pub key: Option<AuthKey>,
    server: Option<ReplicaServer>,
}

impl Rep {
    pub async fn start(pool: Arc<Pool>, id: &str, key: Option<AuthKey>) -> Rep {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mut r = Rep {
            pool,
            port,
            id: id.into(),
            key,
            server: None,
        };
        r.serve(l);
        r
    }

    fn serve(&mut self, l: TcpListener) {
        let s = ReplicaServer::new(self.pool.clone(), self.id.clone(), self.key.clone());
        let s2 = s.clone();
        tokio::spawn(async move {
            let _ = s2.serve(l).await;
        });
        self.server = Some(s);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The replica process dies (its pool, like the page cache, survives).
    pub fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }

    /// A new replica process on the same pool and port.
    pub async fn restart(&mut self) {
        self.kill();
        let l = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(l);
    }

    /// The replica volume's bytes, read directly from the pool.
    pub fn image(&self, size: u64) -> Vec<u8> {
        let v = self.pool.volume(VOL).unwrap();
        let mut out = vec![0u8; size as usize];
        v.read(0, &mut out).unwrap();
        out
    }
}

impl Drop for Rep {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a replica: Pass, Stall (stops forwarding both ways, keeping
/// the connections) or Cut (closes them and refuses new ones).
pub struct Proxy {
    pub addr: String,
    mode: Arc<AtomicU8>,
    gen: Arc<AtomicU64>,
}

pub const PASS: u8 = 0;
pub const STALL: u8 = 1;
pub const CUT: u8 = 2;

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mode = Arc::new(AtomicU8::new(PASS));
        let gen = Arc::new(AtomicU64::new(0));
        let (m, g) = (mode.clone(), gen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = l.accept().await else {
                    return;
                };
                if m.load(Ordering::SeqCst) == CUT {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let my_gen = g.load(Ordering::SeqCst);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, m.clone(), g.clone(), my_gen));
                tokio::spawn(pump(ur, dw, m.clone(), g.clone(), my_gen));
            }
        });
        Proxy { addr, mode, gen }
    }

    pub fn set(&self, mode: u8) {
        if mode == CUT {
            self.gen.fetch_add(1, Ordering::SeqCst);
        }
        self.mode.store(mode, Ordering::SeqCst);
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    gen: Arc<AtomicU64>,
    my_gen: u64,
) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        while mode.load(Ordering::SeqCst) == STALL {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if gen.load(Ordering::SeqCst) != my_gen {
            return;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), r.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        while mode.load(Ordering::SeqCst) == STALL {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if gen.load(Ordering::SeqCst) != my_gen || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A file store whose operations can be made to fail (store unreachable).
#[derive(Debug)]
pub struct FaultyStore {
    pub inner: FileStore,
    pub down: AtomicBool,
}

impl MembershipStore for FaultyStore {
    fn read(&self) -> Result<(Record, Version), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.read()
    }
    fn cas(&self, v: Version, r: &Record) -> Result<Cas, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.cas(v, r)
    }
}

pub fn cfg(size: u64, replicas: Vec<String>) -> VolumeConfig {
    let mut c = VolumeConfig::new(VOL, size, replicas);
    c.t_takeover = Duration::ZERO;
    c.t_lease = Duration::from_millis(200);
    c.t_gather = Duration::from_secs(3);
    c.ping = Duration::from_millis(300);
    c
}

pub fn ctx(v: &ReplicatedVolume, fua: bool) -> IoCtx {
    let mut c = IoCtx::new(Instant::now() + Duration::from_secs(10));
    c.io = v.next_io();
    c.fua = fua;
    c
}

pub fn block(tag: u64) -> Bytes {
    let mut b = vec![0u8; BS as usize];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(tag ^ (i as u64).rotate_left(32)).to_le_bytes());
    }
    Bytes::from(b)
}

/// Last acknowledged tag per block; 0 = never written (zeros).
#[derive(Default)]
pub struct Truth {
    pub last: parking_lot::Mutex<HashMap<u64, u64>>,
    pub max_latency_ms: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
}

/// `writers` tasks each own the blocks b with b % writers == w, writing unique tags
/// until `stop`; every acknowledged write goes into `truth`.
pub fn spawn_writers(
    v: &ReplicatedVolume,
    blocks: u64,
    writers: u64,
    truth: Arc<Truth>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let v = v.clone();
            let truth = truth.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ w;
                while !stop.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = (x % (blocks / writers)) * writers + w;
                    n += 1;
                    let tag = (w << 48) | n;
                    let c = ctx(&v, n.is_multiple_of(50));
                    let t = Instant::now();
                    let r = v.write(&c, b * BS, block(tag)).await;
                    let ms = t.elapsed().as_millis() as u64;
                    truth.max_latency_ms.fetch_max(ms, Ordering::SeqCst);
                    match r {
                        Ok(()) => {
                            truth.last.lock().insert(b, tag);
                            truth.acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            // Unacknowledged: its block may hold either value; it is
                            // rewritten before verification counts it.
                            truth.failed.fetch_add(1, Ordering::SeqCst);
                            truth.last.lock().insert(b, u64::MAX);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Reads every block through the volume and checks it against `truth`.
pub async fn verify(v: &ReplicatedVolume, truth: &Truth, blocks: u64) {
    let last = truth.last.lock().clone();
    for b in 0..blocks {
        let want = last.get(&b).copied().unwrap_or(0);
        if want == u64::MAX {
            continue;
        }
        let c = IoCtx::new(Instant::now() + Duration::from_secs(10));
        let got = v.read(&c, b * BS, BS as u32).await.unwrap();
        let exp = if want == 0 {
            Bytes::from(vec![0u8; BS as usize])
        } else {
            block(want)
        };
        assert!(
            got == exp,
            "block {b}: lost or stale write (want tag {want:#x})"
        );
    }
}

/// Waits until `f` holds or panics after `secs`.
pub async fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` replica servers over pools on temp files, each behind a proxy, and a file store.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub reps: Vec<Rep>,
    pub proxies: Vec<Proxy>,
    pub store: Arc<FileStore>,
    pub state: std::path::PathBuf,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut reps = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..n {
            let r = Rep::start(
                pool_on_file(dir.path(), &format!("p{i}")),
                &format!("r{i}"),
                None,
            )
            .await;
            proxies.push(Proxy::start(r.addr()).await);
            reps.push(r);
        }
        let state = dir.path().join("state");
        let store = Arc::new(FileStore::new(&state).unwrap());
        Cluster {
            dir,
            reps,
            proxies,
            store,
            state,
        }
    }

    /// The proxies' addresses (what targets connect to).
    pub fn addrs(&self) -> Vec<String> {
        self.proxies.iter().map(|p| p.addr.clone()).collect()
    }

    /// Member `id`'s state in the stored record.
    pub fn member_state(&self, id: &str) -> Option<cstor_replication::MemberState> {
        let (r, _) = self.store.read().unwrap();
        r.member(id).map(|m| m.state)
    }
}
