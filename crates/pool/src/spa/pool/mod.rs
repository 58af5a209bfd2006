//! The pool: create, import, export, destroy, config and labels, the uberblock ring, the
//! allocator's persistence (space map chain), status, add, replace/resilver, scrub, and
//! the [`BlockStore`] implementation the block-tree layer uses.
//!
//! Owns: the config (under `config`), the top-level vdevs (read-mostly lock, written only
//! by add), the sync state (one sync at a time, under `sync`).
//! Invariants:
//! - sync(T) flushes every data write, then writes T's space map blocks and flushes, then
//!   writes the uberblock of T into slot T % 128 of every label of every device and
//!   flushes; only then do T's frees become allocatable.
//! - labels are rewritten in two phases (labels 0 and 2, flush, then 1 and 3, flush), so a
//!   power cut leaves at least one whole copy of the old or new config.
//! - a failed sync latches the pool read-only for commits (re-import to recover): the
//!   in-memory allocator no longer matches any durable state.
//!
//! Never: interprets block contents; reuses space freed in an unsynced txg.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use xxhash_rust::xxh3::xxh3_64;

mod maint;
mod sync;

use super::alloc::{RangeSet, TxgDelta, VdevAlloc};
use super::device::{probe_existing_data, Device, FileDevice};
use super::error::SpaError;
use super::format::{
    self, ChildConfig, Label, PoolConfig, ReplacedDevice, SmBlock, SmPtr, SmRecord, Uberblock,
    VdevConfig, VdevKindConfig,
};
use super::leaf::{Leaf, LeafState};
use super::limits::*;
use super::vdev::{Health, TopVdev, VdevKind};
use crate::store::{
    AllocClass, BlockStore, Dva, SpaceStats, StoreError, Verify, WriteWait, MAX_ROOT_BYTES,
    SECTOR_SIZE,
};

/// How a raid group protects data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// Each disk its own top-level vdev, no redundancy.
    Stripe,
    /// n-way mirror (>= 2 disks).
    Mirror,
    /// Single parity (>= 3 disks).
    Raidz,
    /// Double parity (>= 4 disks).
    Raidz2,
}

impl GroupKind {
    /// The CLI word.
    pub fn as_str(&self) -> &'static str {
        match self {
            GroupKind::Stripe => "stripe",
            GroupKind::Mirror => "mirror",
            GroupKind::Raidz => "raidz",
            GroupKind::Raidz2 => "raidz2",
        }
    }
    /// Parse the CLI word.
    pub fn parse(s: &str) -> Option<GroupKind> {
        Some(match s {
            "stripe" => GroupKind::Stripe,
            "mirror" => GroupKind::Mirror,
            "raidz" | "raidz1" => GroupKind::Raidz,
            "raidz2" => GroupKind::Raidz2,
            _ => return None,
        })
    }
    fn min_devices(&self) -> usize {
        match self {
            GroupKind::Stripe => 1,
            GroupKind::Mirror => 2,
            GroupKind::Raidz => 3,
            GroupKind::Raidz2 => 4,
        }
    }
}

/// One raid group to create or add.
#[derive(Clone, Debug)]
pub struct GroupSpec<D> {
    /// Redundancy.
    pub kind: GroupKind,
    /// Devices (paths or open devices).
    pub devices: Vec<D>,
    /// True for the write-cache (intent log) group.
    pub log: bool,
}

/// Options for create and import.
#[derive(Clone, Debug)]
pub struct SpaOptions {
    /// Overwrite devices that hold a pool label, filesystem or partition table.
    pub force: bool,
    /// Bound on every device I/O.
    pub io_timeout: Duration,
}

impl Default for SpaOptions {
    fn default() -> Self {
        SpaOptions {
            force: false,
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

/// One device in [`PoolStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Path.
    pub path: String,
    /// Guid.
    pub guid: u64,
    /// ONLINE, FAULTED, UNAVAIL, REMOVED.
    pub state: String,
    /// Why it is not online.
    pub reason: Option<String>,
    /// Being resilvered (after a replace, or after missing writes while lost).
    pub resilvering: bool,
    /// The old device of a replace in progress (still read until it finishes).
    pub being_replaced: bool,
    /// Read errors since import.
    pub read_errors: u64,
    /// Write errors since import.
    pub write_errors: u64,
    /// Checksum errors since import.
    pub checksum_errors: u64,
}

/// Latency of one device's successful requests since import ([`Spa::device_latency`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLatency {
    /// Path.
    pub path: String,
    /// Guid.
    pub guid: u64,
    /// Reads (queued and served from cache).
    pub read: cstor_iostats::HistogramSnapshot,
    /// Writes.
    pub write: cstor_iostats::HistogramSnapshot,
}

/// One raid group in [`PoolStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// stripe, mirror, raidz, raidz2.
    pub kind: String,
    /// Write-cache group.
    pub log: bool,
    /// ONLINE, DEGRADED, FAULTED.
    pub health: String,
    /// Devices.
    pub devices: Vec<DeviceStatus>,
}

/// The pool as `cstor pool status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Guid.
    pub guid: u64,
    /// ONLINE, DEGRADED, FAULTED.
    pub health: Health,
    /// Names the devices behind a non-ONLINE health.
    pub message: Option<String>,
    /// Raid groups.
    pub groups: Vec<GroupStatus>,
    /// Usable bytes.
    pub size_bytes: u64,
    /// Allocated (usable terms).
    pub allocated_bytes: u64,
    /// Free (usable terms).
    pub free_bytes: u64,
    /// Last synced txg.
    pub txg: Option<u64>,
}

#[derive(Debug)]
struct SyncState {
    last_txg: Option<u64>,
    /// Space map chain, oldest first.
    chain: Vec<SmPtr>,
    failed: Option<String>,
}

/// A storage pool allocator: an open pool.
#[derive(Debug)]
pub struct Spa {
    name: String,
    guid: u64,
    opts: SpaOptions,
    config: Mutex<PoolConfig>,
    vdevs: RwLock<Vec<Arc<TopVdev>>>,
    sync: Mutex<SyncState>,
    last_root: Mutex<Option<(u64, Vec<u8>)>>,
    rotor: AtomicU64,
    bad_frees: AtomicU64,
}

fn new_guid() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn child_data_bytes(v: &VdevConfig) -> u64 {
    match v.kind {
        VdevKindConfig::Disk | VdevKindConfig::Mirror => v.asize,
        VdevKindConfig::Raidz1 | VdevKindConfig::Raidz2 => v.asize / v.children.len() as u64,
    }
}

fn kind_config(kind: GroupKind) -> VdevKindConfig {
    match kind {
        GroupKind::Stripe => VdevKindConfig::Disk,
        GroupKind::Mirror => VdevKindConfig::Mirror,
        GroupKind::Raidz => VdevKindConfig::Raidz1,
        GroupKind::Raidz2 => VdevKindConfig::Raidz2,
    }
}

/// Refuse a device named twice (also through different paths to the same file).
fn check_distinct(paths: &[String]) -> Result<(), SpaError> {
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        let canon = std::fs::canonicalize(p).map_err(|e| SpaError::io(p, "open", 0, e))?;
        if !seen.insert(canon) {
            return Err(SpaError::InvalidLayout(format!(
                "device {p} is given twice"
            )));
        }
    }
    Ok(())
}

/// Open devices by path (each locked exclusively).
pub fn open_paths(paths: &[String]) -> Result<Vec<Arc<dyn Device>>, SpaError> {
    paths
        .iter()
        .map(|p| FileDevice::open(p).map(|d| Arc::new(d) as Arc<dyn Device>))
        .collect()
}

impl Spa {
    /// Create a pool on device paths.
    pub fn create(
        name: &str,
        groups: &[GroupSpec<String>],
        opts: SpaOptions,
    ) -> Result<Spa, SpaError> {
        let all: Vec<String> = groups.iter().flat_map(|g| g.devices.clone()).collect();
        check_distinct(&all)?;
        let mut opened = Vec::new();
        for g in groups {
            opened.push(GroupSpec {
                kind: g.kind,
                devices: open_paths(&g.devices)?,
                log: g.log,
            });
        }
        Self::create_on(name, opened, opts)
    }

    /// Create a pool on open devices (tests use memory and fault-injecting devices).
    pub fn create_on(
        name: &str,
        groups: Vec<GroupSpec<Arc<dyn Device>>>,
        opts: SpaOptions,
    ) -> Result<Spa, SpaError> {
        validate_name(name)?;
        validate_groups(&groups, true)?;
        let guid = new_guid();
        let mut config = PoolConfig {
            name: name.to_owned(),
            guid,
            generation: 1,
            created_unix_secs: now_secs(),
            created_host: hostname(),
            vdevs: Vec::new(),
        };
        let vdevs = build_vdevs(&mut config, groups, &opts)?;
        let spa = Spa::assemble(name, guid, opts, config, vdevs);
        let leaves: Vec<Arc<Leaf>> = spa.all_leaves();
        spa.clear_rings(&leaves)?;
        spa.write_labels()?;
        Ok(spa)
    }

    fn assemble(
        name: &str,
        guid: u64,
        opts: SpaOptions,
        config: PoolConfig,
        vdevs: Vec<Arc<TopVdev>>,
    ) -> Spa {
        Spa {
            name: name.to_owned(),
            guid,
            opts,
            config: Mutex::new(config),
            vdevs: RwLock::new(vdevs),
            sync: Mutex::new(SyncState {
                last_txg: None,
                chain: Vec::new(),
                failed: None,
            }),
            last_root: Mutex::new(None),
            rotor: AtomicU64::new(0),
            bad_frees: AtomicU64::new(0),
        }
    }

    /// Import a pool from device paths (any order, after renames).
    pub fn import(name: &str, paths: &[String], opts: SpaOptions) -> Result<Spa, SpaError> {
        check_distinct(paths)?;
        Self::import_devices(name, open_paths(paths)?, opts)
    }

    /// Import a pool from open devices.
    pub fn import_devices(
        name: &str,
        devices: Vec<Arc<dyn Device>>,
        opts: SpaOptions,
    ) -> Result<Spa, SpaError> {
        let mut found: Vec<(Arc<Leaf>, Label)> = Vec::new();
        let mut others: Vec<String> = Vec::new();
        let leaves: Vec<Arc<Leaf>> = devices
            .into_iter()
            .map(|d| Leaf::open(d, 0, opts.io_timeout))
            .collect();
        // Labels of all devices are read at once, so hung devices cost one timeout in all.
        let reads: Vec<LabelRead> = std::thread::scope(|s| {
            let hs: Vec<_> = leaves
                .iter()
                .map(|l| s.spawn(|| read_best_label(l)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(LabelRead::Unreadable))
                .collect()
        });
        for (leaf, read) in leaves.into_iter().zip(reads) {
            match read {
                LabelRead::Found(l) => found.push((leaf, l)),
                LabelRead::Invalid => {
                    others.push(format!("{} has no valid cstor label", leaf.path))
                }
                // An unreadable or hung device is left out: it shows as UNAVAIL if the
                // config names it, and redundancy serves.
                LabelRead::Unreadable => {}
            }
        }
        let mut pool_guid = None;
        for (leaf, l) in &found {
            if l.config.name != name {
                return Err(SpaError::ForeignDevice {
                    path: leaf.path.clone(),
                    name: name.to_owned(),
                    other_pool: l.config.name.clone(),
                    other_guid: l.pool_guid,
                });
            }
            match pool_guid {
                None => pool_guid = Some(l.pool_guid),
                Some(g) if g != l.pool_guid => {
                    return Err(SpaError::ForeignDevice {
                        path: leaf.path.clone(),
                        name: name.to_owned(),
                        other_pool: l.config.name.clone(),
                        other_guid: l.pool_guid,
                    });
                }
                Some(_) => {}
            }
        }
        if !others.is_empty() {
            return Err(SpaError::PoolNotFound {
                name: name.to_owned(),
                detail: format!(": {}", others.join("; ")),
            });
        }
        let Some(guid) = pool_guid else {
            return Err(SpaError::PoolNotFound {
                name: name.to_owned(),
                detail: String::new(),
            });
        };
        let mut config = found
            .iter()
            .max_by_key(|(_, l)| l.generation)
            .map(|(_, l)| l.config.clone())
            .ok_or_else(|| SpaError::PoolNotFound {
                name: name.to_owned(),
                detail: String::new(),
            })?;
        let mut by_guid: HashMap<u64, Arc<Leaf>> = HashMap::new();
        for (leaf, l) in found {
            leaf.set_guid(l.device_guid);
            by_guid.insert(l.device_guid, leaf);
        }
        let mut paths_changed = false;
        let mut vdevs = Vec::new();
        for vc in config.vdevs.iter_mut() {
            let need = child_data_bytes(vc);
            let mut children = Vec::new();
            let mut replacing = Vec::new();
            for ch in vc.children.iter_mut() {
                replacing.push(ch.replacing.as_ref().and_then(|r| by_guid.remove(&r.guid)));
                let leaf = match by_guid.remove(&ch.guid) {
                    Some(l) => {
                        if l.path != ch.path {
                            ch.path = l.path.clone();
                            paths_changed = true;
                        }
                        l
                    }
                    None => Leaf::missing(ch.guid, &ch.path, LeafState::Unavail),
                };
                if leaf.is_online() && format::data_region_bytes(leaf.size()) < need {
                    // A device that shrank would fail I/O near its end: take it out now.
                    leaf.fault(format!(
                        "device has {} data bytes, its raid group needs {need}",
                        format::data_region_bytes(leaf.size())
                    ));
                }
                leaf.set_untrusted(ch.resilvering);
                children.push(leaf);
            }
            vdevs.push(Arc::new(TopVdev {
                id: vc.id,
                kind: VdevKind::from_config(vc.kind),
                group: vc.group,
                log: vc.log,
                asize: vc.asize,
                children: RwLock::new(children),
                replacing: RwLock::new(replacing),
                alloc: Mutex::new(VdevAlloc::new(vc.asize)),
                log_used: std::sync::atomic::AtomicBool::new(false),
            }));
        }
        // Devices labelled for this pool but no longer in its config (replaced out) are
        // left alone and closed.
        drop(by_guid);
        let spa = Spa::assemble(name, guid, opts, config, vdevs);
        spa.check_not_faulted()?;
        spa.load_newest_state()?;
        if paths_changed {
            spa.config.lock().generation += 1;
            spa.write_labels()?;
        }
        Ok(spa)
    }

    fn check_not_faulted(&self) -> Result<(), SpaError> {
        let st = self.status();
        if st.health == Health::Faulted {
            return Err(SpaError::PoolFaulted {
                name: self.name.clone(),
                reason: st.message.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pool guid.
    pub fn guid(&self) -> u64 {
        self.guid
    }

    /// A copy of the config.
    pub fn config(&self) -> PoolConfig {
        self.config.lock().clone()
    }

    fn all_leaves(&self) -> Vec<Arc<Leaf>> {
        self.vdevs
            .read()
            .iter()
            .flat_map(|v| v.children.read().clone())
            .collect()
    }

    fn vdev(&self, id: u32) -> Option<Arc<TopVdev>> {
        self.vdevs.read().get(id as usize).cloned()
    }

    /// Zero the uberblock rings of new devices so stale uberblocks never resurface.
    fn clear_rings(&self, leaves: &[Arc<Leaf>]) -> Result<(), SpaError> {
        let zeros = Arc::new(vec![0u8; (UBERBLOCK_SLOTS * UBERBLOCK_SLOT_BYTES) as usize]);
        let mut subs = Vec::new();
        for leaf in leaves.iter().filter(|l| l.is_online()) {
            for lo in format::label_offsets(leaf.size()) {
                subs.push((
                    leaf.clone(),
                    leaf.submit_write(zeros.clone(), 0..zeros.len(), lo + UBERBLOCK_RING_OFFSET),
                ));
            }
        }
        for (leaf, s) in subs {
            s.and_then(|p| leaf.wait(p))?;
        }
        Ok(())
    }

    /// Write the current config into every online device's labels, in two phases.
    fn write_labels(&self) -> Result<(), SpaError> {
        self.write_labels_new_first(&[])
    }

    /// Write the config into every online device's labels; the devices in `new_first`
    /// (just added or put in by a replace) get both phases before any other device, so a
    /// config naming them never reaches an old device while they still lack labels.
    fn write_labels_new_first(&self, new_first: &[u64]) -> Result<(), SpaError> {
        let config = self.config.lock().clone();
        let vdevs = self.vdevs.read().clone();
        let mut first = Vec::new();
        let mut rest = Vec::new();
        for v in &vdevs {
            for (ci, leaf) in v.children.read().iter().enumerate() {
                if !leaf.is_online() {
                    continue;
                }
                let label = Label {
                    pool_guid: self.guid,
                    device_guid: leaf.guid(),
                    generation: config.generation,
                    vdev: v.id,
                    child: ci as u32,
                    config: config.clone(),
                };
                let entry = (leaf.clone(), Arc::new(format::encode_label(&label)?));
                if new_first.contains(&leaf.guid()) {
                    first.push(entry);
                } else {
                    rest.push(entry);
                }
            }
        }
        let total = first.len() + rest.len();
        let mut failed = 0;
        for set in [first, rest] {
            for phase in [[0usize, 2], [1, 3]] {
                let mut subs = Vec::new();
                for (leaf, bytes) in &set {
                    let offs = format::label_offsets(leaf.size());
                    for i in phase {
                        subs.push((
                            leaf.clone(),
                            leaf.submit_write(bytes.clone(), 0..bytes.len(), offs[i]),
                        ));
                    }
                }
                for (leaf, s) in subs {
                    if s.and_then(|p| leaf.wait(p)).is_err() {
                        failed += 1;
                    }
                }
                self.flush_all()?;
            }
        }
        if failed >= 4 * total {
            return Err(SpaError::PoolFaulted {
                name: self.name.clone(),
                reason: "no device took the new labels".into(),
            });
        }
        Ok(())
    }

    /// Flush every device of every vdev at once; fails if any group lost too many.
    fn flush_all(&self) -> Result<(), SpaError> {
        let vdevs = self.vdevs.read().clone();
        let mut subs = Vec::new();
        for v in &vdevs {
            // Devices being replaced are flushed too: they are read in place of the new
            // device after a power cut.
            let mut leaves = v.children.read().clone();
            leaves.extend(v.replacing_leaves());
            for leaf in leaves {
                if leaf.is_online() {
                    subs.push((v.id, leaf.clone(), leaf.submit_flush()));
                }
            }
        }
        for (_, leaf, s) in subs {
            let _ = s.and_then(|p| leaf.wait(p));
        }
        self.require_writable(&vdevs)
    }

    fn require_writable(&self, vdevs: &[Arc<TopVdev>]) -> Result<(), SpaError> {
        let bad: Vec<String> = vdevs
            .iter()
            .filter_map(|v| {
                let (h, devs) = v.health();
                // A lost write-cache group fails the flush only when it may hold log
                // blocks: the writes in them would be acknowledged but not durable.
                (h == Health::Faulted && (!v.log || v.log_used.load(Ordering::SeqCst)))
                    .then(|| format!("vdev {}: {}", v.id, devs.join(", ")))
            })
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(SpaError::PoolFaulted {
                name: self.name.clone(),
                reason: bad.join("; "),
            })
        }
    }

    fn normal_vdevs(&self, class: AllocClass) -> Vec<Arc<TopVdev>> {
        let vdevs = self.vdevs.read();
        if class == AllocClass::Log && vdevs.iter().any(|v| v.log) {
            let mut out: Vec<_> = vdevs.iter().filter(|v| v.log).cloned().collect();
            out.extend(vdevs.iter().filter(|v| !v.log).cloned());
            return out;
        }
        vdevs.iter().filter(|v| !v.log).cloned().collect()
    }

    fn alloc_inner(
        &self,
        psize: u32,
        class: AllocClass,
        txg: u64,
        use_reserve: bool,
        track: bool,
    ) -> Result<Dva, SpaError> {
        if psize == 0 || !psize.is_multiple_of(SECTOR_SIZE) || psize > MAX_BLOCK_BYTES {
            return Err(SpaError::InvalidState(format!("allocation of {psize} bytes is not a positive multiple of {SECTOR_SIZE} up to {MAX_BLOCK_BYTES}")));
        }
        let cands: Vec<Arc<TopVdev>> = self
            .normal_vdevs(class)
            .into_iter()
            .filter(|v| v.health().0 != Health::Faulted)
            .collect();
        if cands.is_empty() {
            return Err(SpaError::PoolFaulted {
                name: self.name.clone(),
                reason: "no writable raid group".into(),
            });
        }
        let n = cands.len();
        let start = self.rotor.fetch_add(1, Ordering::Relaxed) as usize % n;
        let log_first = class == AllocClass::Log && cands[0].log;
        // Weight by free space: a vdev far fuller than the emptiest is skipped on the
        // first pass, so a newly added group fills up first.
        let ratio = |v: &TopVdev| {
            let a = v.alloc.lock();
            a.free.total() as f64 / a.asize as f64
        };
        let best = cands
            .iter()
            .filter(|v| !v.log)
            .map(|v| ratio(v))
            .fold(0.0, f64::max);
        for pass in 0..2 {
            for i in 0..n {
                let v = if log_first {
                    &cands[i]
                } else {
                    &cands[(start + i) % n]
                };
                if pass == 0 && !v.log && ratio(v) < best * 0.5 {
                    continue;
                }
                let asize = v.asize_of(psize as u64);
                let reserve = if use_reserve {
                    v.asize >> SLOP_SHIFT
                } else {
                    0
                };
                let mut a = v.alloc.lock();
                let got = if track {
                    a.alloc(asize, txg, reserve)
                } else {
                    a.alloc_untracked(asize, reserve)
                };
                if let Some(off) = got {
                    if v.log {
                        v.log_used.store(true, Ordering::SeqCst);
                    }
                    return Ok(Dva {
                        vdev: v.id,
                        offset: off,
                        asize,
                    });
                }
            }
        }
        Err(SpaError::NoSpace {
            wanted_bytes: psize as u64,
        })
    }

    /// True if no byte of the block is free in the allocator (allocated, or freed in a
    /// txg not yet durable).
    pub fn is_allocated(&self, dva: Dva) -> bool {
        self.vdev(dva.vdev).is_some_and(|v| {
            dva.offset
                .checked_add(dva.asize)
                .is_some_and(|e| e <= v.asize)
                && !v.alloc.lock().free.overlaps(dva.offset, dva.asize)
        })
    }

    /// Frees refused as double frees or bad addresses since open (a bug or corruption).
    pub fn bad_frees(&self) -> u64 {
        self.bad_frees.load(Ordering::Relaxed)
    }

    /// Flush and close the pool, releasing the device locks.
    pub fn export(self) -> Result<(), SpaError> {
        let r = self.flush_all();
        drop(self);
        r
    }

    /// Close the pool (same as [`Spa::export`]: labels need no export mark, a pool is
    /// importable whether or not it was closed cleanly).
    pub fn close(self) -> Result<(), SpaError> {
        self.export()
    }

    /// Wipe every device's labels and close the pool.
    pub fn destroy(self) -> Result<(), SpaError> {
        // Every device is wiped even if one fails; the first failure is reported after.
        let zeros = Arc::new(vec![0u8; LABEL_BYTES as usize]);
        let mut first_err = None;
        let mut leaves = self.all_leaves();
        for v in self.vdevs.read().iter() {
            leaves.extend(v.replacing_leaves());
        }
        for leaf in leaves.iter().filter(|l| l.is_online()) {
            let wipe = || -> Result<(), SpaError> {
                for lo in format::label_offsets(leaf.size()) {
                    let p = leaf.submit_write(zeros.clone(), 0..zeros.len(), lo)?;
                    leaf.wait(p)?;
                }
                leaf.flush()
            };
            if let Err(e) = wipe() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn validate_name(name: &str) -> Result<(), SpaError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.as_bytes()[0].is_ascii_alphabetic();
    if ok {
        Ok(())
    } else {
        Err(SpaError::InvalidLayout(format!("pool name {name:?} must start with a letter and use letters, digits, - _ . (at most 64)")))
    }
}

fn validate_groups(groups: &[GroupSpec<Arc<dyn Device>>], creating: bool) -> Result<(), SpaError> {
    if creating && !groups.iter().any(|g| !g.log) {
        return Err(SpaError::InvalidLayout(
            "a pool needs at least one data raid group".into(),
        ));
    }
    if groups.iter().filter(|g| g.log).count() > 1 {
        return Err(SpaError::InvalidLayout("at most one log group".into()));
    }
    let mut paths = std::collections::HashSet::new();
    for g in groups {
        let n = g.devices.len();
        if n < g.kind.min_devices() {
            return Err(SpaError::InvalidLayout(format!(
                "{} needs at least {} devices, got {n}",
                g.kind.as_str(),
                g.kind.min_devices()
            )));
        }
        if n > MAX_GROUP_DEVICES {
            return Err(SpaError::InvalidLayout(format!(
                "{} has {n} devices, at most {MAX_GROUP_DEVICES}",
                g.kind.as_str()
            )));
        }
        if g.log && matches!(g.kind, GroupKind::Raidz | GroupKind::Raidz2) {
            return Err(SpaError::InvalidLayout(
                "a log group is a stripe or a mirror".into(),
            ));
        }
        for d in &g.devices {
            if !paths.insert(d.path().to_owned()) {
                return Err(SpaError::InvalidLayout(format!(
                    "device {} is given twice",
                    d.path()
                )));
            }
            if d.size() < MIN_DEVICE_BYTES {
                return Err(SpaError::DeviceTooSmall {
                    path: d.path().to_owned(),
                    size_bytes: d.size(),
                    min_bytes: MIN_DEVICE_BYTES,
                });
            }
        }
    }
    Ok(())
}

fn build_vdevs(
    config: &mut PoolConfig,
    groups: Vec<GroupSpec<Arc<dyn Device>>>,
    opts: &SpaOptions,
) -> Result<Vec<Arc<TopVdev>>, SpaError> {
    if !opts.force {
        for d in groups.iter().flat_map(|g| &g.devices) {
            if let Some(what) = probe_existing_data(d.as_ref()) {
                return Err(SpaError::DeviceHasData {
                    path: d.path().to_owned(),
                    what,
                });
            }
        }
    }
    let first_group = config.vdevs.iter().map(|v| v.group + 1).max().unwrap_or(0);
    let mut out = Vec::new();
    for (group_id, g) in (first_group..).zip(groups) {
        let members: Vec<Vec<Arc<dyn Device>>> = match g.kind {
            GroupKind::Stripe => g.devices.into_iter().map(|d| vec![d]).collect(),
            _ => vec![g.devices],
        };
        for devs in members {
            let id = config.vdevs.len() as u32;
            let min = devs
                .iter()
                .map(|d| format::data_region_bytes(d.size()))
                .min()
                .unwrap_or(0);
            let asize = match g.kind {
                GroupKind::Stripe | GroupKind::Mirror => min,
                GroupKind::Raidz | GroupKind::Raidz2 => min * devs.len() as u64,
            };
            let mut children = Vec::new();
            let mut leaves = Vec::new();
            let replacing = RwLock::new(vec![None; devs.len()]);
            for d in devs {
                let guid = new_guid();
                children.push(ChildConfig {
                    guid,
                    path: d.path().to_owned(),
                    resilvering: false,
                    replacing: None,
                });
                leaves.push(Leaf::open(d, guid, opts.io_timeout));
            }
            config.vdevs.push(VdevConfig {
                id,
                kind: kind_config(g.kind),
                group: group_id,
                log: g.log,
                asize,
                children,
            });
            out.push(Arc::new(TopVdev {
                id,
                kind: VdevKind::from_config(kind_config(g.kind)),
                group: group_id,
                log: g.log,
                asize,
                children: RwLock::new(leaves),
                replacing,
                alloc: Mutex::new(VdevAlloc::new(asize)),
                log_used: std::sync::atomic::AtomicBool::new(false),
            }));
        }
    }
    Ok(out)
}

enum LabelRead {
    Found(Label),
    Invalid,
    Unreadable,
}

fn read_best_label(leaf: &Leaf) -> LabelRead {
    let mut best: Option<Label> = None;
    if leaf.size() < MIN_DEVICE_BYTES {
        return LabelRead::Invalid;
    }
    let mut readable = false;
    for lo in format::label_offsets(leaf.size()) {
        if !leaf.is_online() {
            break;
        }
        let Ok(bytes) = leaf.read(lo, CONFIG_AREA_BYTES as usize) else {
            continue;
        };
        readable = true;
        if let Ok(l) = format::decode_label(&bytes, &leaf.path, lo) {
            if best.as_ref().is_none_or(|b| l.generation > b.generation) {
                best = Some(l);
            }
        }
    }
    match best {
        Some(l) => LabelRead::Found(l),
        None if readable => LabelRead::Invalid,
        None => LabelRead::Unreadable,
    }
}

impl Spa {
    /// The blocks of `reqs` by group ([`TopVdev::read_unverified_many`]).
    fn read_batch(&self, reqs: &[(Dva, u32)], cached_only: bool) -> Vec<Option<Vec<u8>>> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; reqs.len()];
        let mut by_vdev: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, (dva, _)) in reqs.iter().enumerate() {
            by_vdev.entry(dva.vdev).or_default().push(i);
        }
        for (vdev, idx) in by_vdev {
            let Some(v) = self.vdev(vdev) else { continue };
            let sub: Vec<(Dva, u64)> = idx
                .iter()
                .map(|&i| (reqs[i].0, u64::from(reqs[i].1)))
                .collect();
            for (i, r) in idx
                .into_iter()
                .zip(v.read_unverified_many(&sub, cached_only))
            {
                out[i] = r;
            }
        }
        out
    }
}

impl BlockStore for Spa {
    fn space(&self) -> SpaceStats {
        self.space_stats()
    }

    fn asize(&self, vdev: u32, psize_bytes: u32) -> u64 {
        self.vdev(vdev)
            .map_or(psize_bytes as u64, |v| v.asize_of(psize_bytes as u64))
    }

    fn alloc(&self, psize_bytes: u32, class: AllocClass, txg: u64) -> Result<Dva, StoreError> {
        Ok(self.alloc_inner(psize_bytes, class, txg, true, true)?)
    }

    fn free(&self, dva: Dva, txg: u64) {
        let ok = self
            .vdev(dva.vdev)
            .is_some_and(|v| v.alloc.lock().free(dva.offset, dva.asize, txg));
        if !ok {
            self.bad_frees.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write(&self, dva: Dva, data: &[u8]) -> Result<(), StoreError> {
        if data.is_empty() || !data.len().is_multiple_of(SECTOR_SIZE as usize) {
            return Err(SpaError::InvalidAddress { dva }.into());
        }
        let v = self
            .vdev(dva.vdev)
            .ok_or(SpaError::InvalidAddress { dva })?;
        Ok(v.write(dva, data)?)
    }

    fn write_start(&self, dva: Dva, data: Arc<Vec<u8>>) -> Result<WriteWait, StoreError> {
        if data.is_empty() || !data.len().is_multiple_of(SECTOR_SIZE as usize) {
            return Err(SpaError::InvalidAddress { dva }.into());
        }
        let v = self
            .vdev(dva.vdev)
            .ok_or(SpaError::InvalidAddress { dva })?;
        let w = v.write_submit(dva, data)?;
        Ok(Box::new(move || Ok(w.finish()?)))
    }

    fn write_start_many(&self, blocks: Vec<(Dva, Arc<Vec<u8>>)>) -> Result<WriteWait, StoreError> {
        let Some(first) = blocks.first().map(|b| b.0) else {
            return Ok(Box::new(|| Ok(())));
        };
        if blocks.iter().any(|(d, b)| {
            d.vdev != first.vdev || b.is_empty() || !b.len().is_multiple_of(SECTOR_SIZE as usize)
        }) {
            // Mixed groups or odd sizes: block by block (each checked there).
            let mut waits = Vec::new();
            for (dva, data) in blocks {
                waits.push(self.write_start(dva, data)?);
            }
            return Ok(Box::new(move || {
                let mut first = Ok(());
                for w in waits {
                    if let (Err(e), Ok(())) = (w(), &first) {
                        first = Err(e);
                    }
                }
                first
            }));
        }
        let v = self
            .vdev(first.vdev)
            .ok_or(SpaError::InvalidAddress { dva: first })?;
        let w = v.write_submit_many(&blocks)?;
        Ok(Box::new(move || Ok(w.finish()?)))
    }

    fn read_unverified(&self, reqs: &[(Dva, u32)]) -> Vec<Option<Vec<u8>>> {
        self.read_batch(reqs, false)
    }

    fn read_cached(&self, reqs: &[(Dva, u32)]) -> Vec<Option<Vec<u8>>> {
        self.read_batch(reqs, true)
    }

    fn read(&self, dva: Dva, psize_bytes: u32, verify: Verify<'_>) -> Result<Vec<u8>, StoreError> {
        if psize_bytes == 0 || !psize_bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(SpaError::InvalidAddress { dva }.into());
        }
        let v = self
            .vdev(dva.vdev)
            .ok_or(SpaError::InvalidAddress { dva })?;
        Ok(v.read(dva, psize_bytes as u64, verify)?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(self.flush_all()?)
    }

    fn sync(&self, txg: u64, root: &[u8]) -> Result<(), StoreError> {
        if root.len() > MAX_ROOT_BYTES {
            return Err(SpaError::RootTooLarge {
                len: root.len(),
                max: MAX_ROOT_BYTES,
            }
            .into());
        }
        let mut st = self.sync.lock();
        if let Some(f) = &st.failed {
            return Err(SpaError::InvalidState(format!(
                "an earlier sync failed ({f}); export and import the pool"
            ))
            .into());
        }
        if let Some(last) = st.last_txg {
            if txg <= last {
                return Err(SpaError::TxgOrder { txg, last }.into());
            }
        }
        let r = self.sync_inner(&mut st, txg, root);
        if let Err(e) = &r {
            st.failed = Some(e.to_string());
        }
        Ok(r?)
    }

    fn last_root(&self) -> Option<(u64, Vec<u8>)> {
        self.last_root.lock().clone()
    }

    fn claim(&self, dva: Dva, txg: u64) -> Result<(), StoreError> {
        let v = self
            .vdev(dva.vdev)
            .ok_or(SpaError::InvalidAddress { dva })?;
        if dva.asize == 0
            || dva
                .offset
                .checked_add(dva.asize)
                .is_none_or(|e| e > v.asize)
        {
            return Err(SpaError::InvalidAddress { dva }.into());
        }
        let mut a = v.alloc.lock();
        if a.claim(dva.offset, dva.asize, txg) || !a.free.overlaps(dva.offset, dva.asize) {
            // Claimed now, or allocated already: both leave the block safe from reuse.
            Ok(())
        } else {
            // Partly free: not a block this pool ever allocated whole.
            Err(SpaError::InvalidAddress { dva }.into())
        }
    }
}

// Volumes' threads share one pool.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Spa>();
};
