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
use cstor_replication::volume::Phase;
use cstor_replication::{
    AuthKey, FileStore, MemberState, ReplicaServer, ReplicatedVolume, StoreError, VolumeConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BS: u64 = 4096;
pub const VOL: &str = "pvc-1";

/// A pool on a sparse file in `dir`.
pub fn pool_on_file(dir: &std::path::Path, name: &str) -> Arc<Pool> {
    pool_on_file_booted(dir, name, None)
}

fn pool_opts(boot: Option<&str>) -> PoolOptions {
    PoolOptions {
        cache_bytes: 16 << 20,
        boot_id: boot.map(str::to_string),
        ..PoolOptions::default()
    }
}

/// The pool `name` of `dir`, imported again (after a power cut) under boot id `boot`.
pub fn import_pool(dir: &std::path::Path, name: &str, boot: &str) -> Arc<Pool> {
    import_pool_booted(dir, name, Some(boot))
}

/// The pool `name` of `dir`, imported again under this host's boot id (no power cut).
pub fn import_pool_host(dir: &std::path::Path, name: &str) -> Arc<Pool> {
    import_pool_booted(dir, name, None)
}

fn import_pool_booted(dir: &std::path::Path, name: &str, boot: Option<&str>) -> Arc<Pool> {
    let p = dir.join(format!("{name}.img"));
    let spa = Spa::import(
        name,
        &[p.to_string_lossy().into_owned()],
        SpaOptions::default(),
    )
    .unwrap();
    Arc::new(Pool::open(Arc::new(spa), pool_opts(boot)).unwrap())
}

/// A pool on a sparse file in `dir`, opened under boot id `boot` (None: the host's).
pub fn pool_on_file_booted(dir: &std::path::Path, name: &str, boot: Option<&str>) -> Arc<Pool> {
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
    Arc::new(Pool::create(Arc::new(spa), pool_opts(boot)).unwrap())
}

/// A replica server over a pool, on a fixed port once bound (restarts reuse it).
pub struct Rep {
    pool: Option<Arc<Pool>>,
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
            pool: Some(pool),
            port,
            id: id.into(),
            key,
            server: None,
        };
        r.serve(l);
        r
    }

    fn serve(&mut self, l: TcpListener) {
        let s = ReplicaServer::new(self.pool(), self.id.clone(), self.key.clone());
        let s2 = s.clone();
        tokio::spawn(async move {
            let _ = s2.serve(l).await;
        });
        self.server = Some(s);
    }

    pub fn pool(&self) -> Arc<Pool> {
        self.pool.clone().expect("the replica's pool is open")
    }

    /// The replica process dies and its pool closes (every handle of it dropped), then a
    /// new process runs on the pool `reopen` opens (after a power cut), same port.
    pub async fn restart_on(&mut self, reopen: impl FnOnce() -> Arc<Pool> + Send + 'static) {
        self.kill();
        let weak = Arc::downgrade(&self.pool.take().expect("pool"));
        wait_for(20, "the old pool closed", || weak.strong_count() == 0).await;
        self.pool = Some(tokio::task::spawn_blocking(reopen).await.unwrap());
        self.restart().await;
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
        let v = self.pool().volume(VOL).unwrap();
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
    /// Bytes forwarded towards the replica (requests) and back (replies).
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    /// Connections accepted from now on join this group (one group per client, as
    /// two targets reaching the same replica address).
    join: Arc<AtomicU64>,
    /// Groups cut off (their connections closed and refused).
    cut_groups: Arc<parking_lot::Mutex<Vec<u64>>>,
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
        let up = Arc::new(AtomicU64::new(0));
        let down_n = Arc::new(AtomicU64::new(0));
        let join = Arc::new(AtomicU64::new(0));
        let cut_groups: Arc<parking_lot::Mutex<Vec<u64>>> = Arc::default();
        let (m, g, u, dn) = (mode.clone(), gen.clone(), up.clone(), down_n.clone());
        let (j, cg) = (join.clone(), cut_groups.clone());
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = l.accept().await else {
                    return;
                };
                let group = j.load(Ordering::SeqCst);
                if m.load(Ordering::SeqCst) == CUT || cg.lock().contains(&group) {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let my_gen = g.load(Ordering::SeqCst);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let ctl = PumpCtl {
                    mode: m.clone(),
                    gen: g.clone(),
                    my_gen,
                    group,
                    cut_groups: cg.clone(),
                };
                tokio::spawn(pump(dr, uw, ctl.clone(), u.clone()));
                tokio::spawn(pump(ur, dw, ctl, dn.clone()));
            }
        });
        Proxy {
            addr,
            mode,
            gen,
            up,
            down: down_n,
            join,
            cut_groups,
        }
    }

    /// Connections accepted from now on belong to group `g` (0 at start).
    pub fn set_group(&self, g: u64) {
        self.join.store(g, Ordering::SeqCst);
    }

    /// Cuts (or heals) the connections of group `g` only.
    pub fn cut_group(&self, g: u64, cut: bool) {
        let mut c = self.cut_groups.lock();
        c.retain(|x| *x != g);
        if cut {
            c.push(g);
        }
    }

    pub fn set(&self, mode: u8) {
        if mode == CUT {
            self.gen.fetch_add(1, Ordering::SeqCst);
        }
        self.mode.store(mode, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct PumpCtl {
    mode: Arc<AtomicU8>,
    gen: Arc<AtomicU64>,
    my_gen: u64,
    group: u64,
    cut_groups: Arc<parking_lot::Mutex<Vec<u64>>>,
}

impl PumpCtl {
    fn gone(&self) -> bool {
        self.gen.load(Ordering::SeqCst) != self.my_gen
            || self.cut_groups.lock().contains(&self.group)
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    ctl: PumpCtl,
    count: Arc<AtomicU64>,
) {
    let mode = &ctl.mode;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        while mode.load(Ordering::SeqCst) == STALL {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if ctl.gone() {
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
        if ctl.gone() || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// Predicate on the record a CAS is about to store.
pub type RecordPred = Box<dyn Fn(&Record) -> bool + Send + Sync>;
/// A change another writer makes to the stored record.
pub type RecordChange = Box<dyn FnOnce(&mut Record) + Send>;

/// A file store whose operations can be made to fail: unreachable (`down`), a CAS that
/// is applied but answered as a timeout (`lose_reply_when`, once, optionally with the
/// store unreachable for `down_after_loss` afterwards), and another writer's change
/// stored just before our next CAS (`interleave`, once). `history` keeps every record
/// stored through it.
pub struct FaultyStore {
    pub inner: FileStore,
    pub down: Arc<AtomicBool>,
    pub lose_reply_when: parking_lot::Mutex<Option<RecordPred>>,
    pub down_after_loss: parking_lot::Mutex<Option<Duration>>,
    pub interleave: parking_lot::Mutex<Option<RecordChange>>,
    pub history: parking_lot::Mutex<Vec<Record>>,
    pub lost_replies: AtomicU64,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    /// Over the membership file in `state`, up.
    pub fn over(state: &std::path::Path) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: FileStore::new(state).unwrap(),
            down: Arc::new(AtomicBool::new(false)),
            lose_reply_when: parking_lot::Mutex::new(None),
            down_after_loss: parking_lot::Mutex::new(None),
            interleave: parking_lot::Mutex::new(None),
            history: parking_lot::Mutex::new(Vec::new()),
            lost_replies: AtomicU64::new(0),
        })
    }
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
        if let Some(change) = self.interleave.lock().take() {
            let (mut other, ov) = self.inner.read()?;
            change(&mut other);
            assert!(matches!(self.inner.cas(ov, &other)?, Cas::Ok(_)));
            self.history.lock().push(other);
        }
        let lose = {
            let mut p = self.lose_reply_when.lock();
            let hit = p.as_ref().is_some_and(|f| f(r));
            if hit {
                *p = None;
            }
            hit
        };
        let out = self.inner.cas(v, r)?;
        if matches!(out, Cas::Ok(_)) {
            self.history.lock().push(r.clone());
        }
        if lose && matches!(out, Cas::Ok(_)) {
            self.lost_replies.fetch_add(1, Ordering::SeqCst);
            if let Some(d) = *self.down_after_loss.lock() {
                self.down.store(true, Ordering::SeqCst);
                let down = self.down.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    down.store(false, Ordering::SeqCst);
                });
            }
            return Err(StoreError::Unavailable(
                "injected: timed out after applying".into(),
            ));
        }
        Ok(out)
    }
}

pub fn cfg(size: u64, replicas: Vec<String>) -> VolumeConfig {
    let mut c = VolumeConfig::new(VOL, size, replicas);
    c.t_takeover = Duration::ZERO;
    // Above T_evict + flush + CAS, as the defaults (8 s against 2 s): a stalled Current
    // replica is evicted before the lease stops IO.
    c.t_lease = Duration::from_secs(4);
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
    /// (completion, ms) of every write slower than [`SLOW_MS`].
    pub slow: parking_lot::Mutex<Vec<(Instant, u64)>>,
}

/// A write slower than this counts as stalled.
pub const SLOW_MS: u64 = 400;

impl Truth {
    /// Stall episodes: slow writes grouped when they complete within `gap` of each other.
    pub fn stalls(&self, gap: Duration) -> Vec<(Instant, u64)> {
        let mut s = self.slow.lock().clone();
        s.sort_by_key(|x| x.0);
        let mut out: Vec<(Instant, u64)> = Vec::new();
        for (at, ms) in s {
            match out.last_mut() {
                Some(l) if at.duration_since(l.0) < gap => {
                    l.0 = at;
                    l.1 = l.1.max(ms);
                }
                _ => out.push((at, ms)),
            }
        }
        out
    }
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
    spawn_writers_fua(v, blocks, writers, truth, stop, 50)
}

/// [`spawn_writers`] with every `fua_every`-th write of each writer FUA (0: none).
pub fn spawn_writers_fua(
    v: &ReplicatedVolume,
    blocks: u64,
    writers: u64,
    truth: Arc<Truth>,
    stop: Arc<AtomicBool>,
    fua_every: u64,
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
                    let c = ctx(&v, fua_every != 0 && n.is_multiple_of(fua_every));
                    let t = Instant::now();
                    let r = v.write(&c, b * BS, block(tag)).await;
                    let ms = t.elapsed().as_millis() as u64;
                    truth.max_latency_ms.fetch_max(ms, Ordering::SeqCst);
                    if ms >= SLOW_MS {
                        truth.slow.lock().push((Instant::now(), ms));
                    }
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

/// Size and block count of the scenario volumes.
pub const SIZE: u64 = 16 << 20;
pub const BLOCKS: u64 = 512;

/// Replica servers on pools in one temp dir, each behind a proxy, and a file store.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub reps: Vec<Rep>,
    pub proxies: Vec<Proxy>,
    pub store: Arc<FileStore>,
    pub state: std::path::PathBuf,
    pub size: u64,
}

/// `n` replicas of a [`SIZE`] volume.
pub async fn cluster(n: usize) -> Cluster {
    cluster_sized(n, SIZE).await
}

pub async fn cluster_sized(n: usize, size: u64) -> Cluster {
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
        size,
    }
}

impl Cluster {
    /// `n` replicas of a [`SIZE`] volume.
    pub async fn start(n: usize) -> Cluster {
        cluster(n).await
    }
    /// Member `id`'s state in the stored record, if it is a member.
    pub fn member_state(&self, id: &str) -> Option<MemberState> {
        let (r, _) = self.store.read().unwrap();
        r.member(id).map(|m| m.state)
    }
    /// The proxies' addresses (what targets connect to).
    pub fn addrs(&self) -> Vec<String> {
        self.proxies.iter().map(|p| p.addr.clone()).collect()
    }
    /// A target over every proxy, serving.
    pub async fn target(&self) -> ReplicatedVolume {
        self.target_with(cfg(self.size, self.addrs())).await
    }
    pub async fn target_with(&self, c: VolumeConfig) -> ReplicatedVolume {
        let v = ReplicatedVolume::start(c, self.store.clone())
            .await
            .unwrap();
        let p = v.ready().await;
        assert!(matches!(p, Phase::Healthy | Phase::Degraded), "phase {p:?}");
        v
    }
    pub fn state_of(&self, id: &str) -> MemberState {
        let (r, _) = self.store.read().unwrap();
        r.member(id).unwrap().state
    }
    /// Every replica's volume, read from its pool, is byte-identical.
    pub fn identical(&self) {
        let imgs: Vec<Vec<u8>> = self.reps.iter().map(|r| r.image(self.size)).collect();
        for (i, img) in imgs.iter().enumerate().skip(1) {
            if let Some(at) = img.iter().zip(&imgs[0]).position(|(a, b)| a != b) {
                panic!("replica {i} differs from replica 0 at byte {at}");
            }
        }
    }
}

/// 4 verifying writers over [`BLOCKS`] for `secs`.
pub async fn run_writers(v: &ReplicatedVolume, truth: &Arc<Truth>, secs: f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let hs = spawn_writers(v, BLOCKS, 4, truth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::SeqCst);
    for h in hs {
        h.await.unwrap();
    }
}
