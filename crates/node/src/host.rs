//! Pools open in this process: the device layer ([`Spa`]) and the block-tree engine
//! ([`Pool`]) of each, opened and closed together, plus the scan (scrub/resilver) state.
//!
//! Invariants: an [`OpenPool`] is the only opener of its devices (the device layer's
//! locks); its `$CSTOR_HOME` record lists the devices it was last opened with.
//! Never: closes the device layer before the engine has committed its last txg.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cstor_pool::spa::device::Device;
use cstor_pool::spa::pool::{open_paths, GroupSpec, Spa, SpaOptions};
use cstor_pool::store::BlockStore;
use cstor_pool::{Compression, Pool, PoolOptions};
use parking_lot::Mutex;

use crate::error::{NodeError, Result};
use crate::limits::SCAN_STOP_WAIT;
use crate::registry::{PoolRecord, Registry, ScanStatus};

/// What `cstor pool create` asks for.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Default compression of the pool's volumes.
    pub compression: Compression,
    /// Fill percentage at which the pool turns read-only.
    pub ro_threshold_pct: u8,
    /// Overwrite devices holding a pool, a filesystem or a partition table.
    pub force: bool,
}

/// One pool open in this process.
#[derive(Debug)]
pub struct OpenPool {
    name: String,
    spa: Arc<Spa>,
    engine: Pool,
    registry: Registry,
    scan: Mutex<Option<ScanStatus>>,
    /// Set while a scrub or resilver runs: one scan at a time.
    scanning: AtomicBool,
    /// Asks a running scan to stop (the pool is closing).
    stop_scan: AtomicBool,
}

/// The right to run the pool's one scan; released on drop.
#[derive(Debug)]
pub struct ScanSlot(Arc<OpenPool>);

impl ScanSlot {
    /// The pool being scanned.
    pub fn pool(&self) -> &Arc<OpenPool> {
        &self.0
    }
}

impl Drop for ScanSlot {
    fn drop(&mut self) {
        self.0.scanning.store(false, Ordering::SeqCst);
    }
}

fn engine_options(registry: &Registry) -> PoolOptions {
    PoolOptions {
        cache_bytes: registry.cache_bytes(),
        ..PoolOptions::default()
    }
}

/// Open the devices that exist; a missing one is left out so the pool imports DEGRADED
/// (the device layer reports it UNAVAIL from the labels of the others). Any other failure
/// (in use by another process, no permission) is an error.
fn open_present(paths: &[String]) -> Result<Vec<Arc<dyn Device>>> {
    let mut devices = Vec::with_capacity(paths.len());
    for path in paths {
        if !std::path::Path::new(path).exists() {
            tracing::warn!(device = %path, "device missing; importing without it");
            continue;
        }
        devices.extend(open_paths(std::slice::from_ref(path))?);
    }
    if devices.is_empty() {
        return Err(NodeError::Invalid(format!(
            "none of the pool's devices exist: {}",
            paths.join(", ")
        )));
    }
    Ok(devices)
}

fn all_paths(groups: &[GroupSpec<String>]) -> Vec<String> {
    groups
        .iter()
        .flat_map(|g| g.devices.iter().cloned())
        .collect()
}

impl OpenPool {
    /// Create a pool on `groups` and remember it in `registry`.
    pub fn create(
        registry: &Registry,
        name: &str,
        groups: &[GroupSpec<String>],
        opts: &CreateOptions,
    ) -> Result<OpenPool> {
        if registry.load(name)?.is_some() {
            return Err(NodeError::PoolExists(name.to_owned()));
        }
        let spa = Arc::new(Spa::create(
            name,
            groups,
            SpaOptions {
                force: opts.force,
                ..SpaOptions::default()
            },
        )?);
        let store: Arc<dyn BlockStore> = spa.clone();
        let engine = Pool::create(
            store,
            PoolOptions {
                compression: opts.compression,
                ro_threshold_pct: opts.ro_threshold_pct,
                ..engine_options(registry)
            },
        )?;
        let open = OpenPool {
            name: name.to_owned(),
            spa,
            engine,
            registry: registry.clone(),
            scan: Mutex::new(None),
            scanning: AtomicBool::new(false),
            stop_scan: AtomicBool::new(false),
        };
        open.remember(all_paths(groups))?;
        Ok(open)
    }

    /// Import the pool `name` from `paths` (any order, any names) and remember it.
    pub fn import(registry: &Registry, name: &str, paths: &[String]) -> Result<OpenPool> {
        Self::import_with(registry, name, paths, false)
    }

    /// [`OpenPool::import`]; with `discard_log_tail`, an unreadable intent-log block drops
    /// the log from there on instead of refusing the import (`zpool import -m`); what was
    /// dropped is in `engine().log_tail_dropped()`.
    pub fn import_with(
        registry: &Registry,
        name: &str,
        paths: &[String],
        discard_log_tail: bool,
    ) -> Result<OpenPool> {
        let spa = Arc::new(Spa::import_devices(
            name,
            open_present(paths)?,
            SpaOptions::default(),
        )?);
        let store: Arc<dyn BlockStore> = spa.clone();
        let engine = Pool::open(
            store,
            PoolOptions {
                discard_log_tail,
                ..engine_options(registry)
            },
        )?;
        let last_scan = registry.load(name)?.and_then(|r| r.last_scan);
        let open = OpenPool {
            name: name.to_owned(),
            spa,
            engine,
            registry: registry.clone(),
            scan: Mutex::new(last_scan),
            scanning: AtomicBool::new(false),
            stop_scan: AtomicBool::new(false),
        };
        open.remember(paths.to_vec())?;
        Ok(open)
    }

    /// Open a pool `registry` knows, from the devices it remembers.
    pub fn open(registry: &Registry, name: &str) -> Result<OpenPool> {
        let rec = registry
            .load(name)?
            .ok_or_else(|| NodeError::UnknownPool(name.to_owned()))?;
        OpenPool::import(registry, name, &rec.devices)
    }

    fn remember(&self, devices: Vec<String>) -> Result<()> {
        let last_scan = self.scan.lock().clone();
        self.registry.save(&PoolRecord {
            version: 1,
            name: self.name.clone(),
            guid: self.spa.guid(),
            devices,
            last_scan,
        })
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device layer.
    pub fn spa(&self) -> &Spa {
        &self.spa
    }

    /// The block-tree engine.
    pub fn engine(&self) -> &Pool {
        &self.engine
    }

    /// The `$CSTOR_HOME` this pool is recorded in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Claim the pool's one scan slot (refused while a scrub or resilver runs).
    pub fn claim_scan(self: &Arc<Self>) -> Result<ScanSlot> {
        if self
            .scanning
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            let what = self
                .scan()
                .map(|s| format!("a {} is running ({:.1}% done)", s.kind, s.progress_percent))
                .unwrap_or_else(|| "a scan is running".into());
            return Err(NodeError::Busy(format!("pool '{}': {what}", self.name)));
        }
        Ok(ScanSlot(self.clone()))
    }

    /// Whether a running scan should stop now.
    pub fn scan_stopping(&self) -> bool {
        self.stop_scan.load(Ordering::SeqCst)
    }

    /// Stop a running scan and wait (bounded) until it has let go of the pool.
    pub fn stop_scan(&self) {
        self.stop_scan.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + SCAN_STOP_WAIT;
        while self.scanning.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The running or last scan.
    pub fn scan(&self) -> Option<ScanStatus> {
        self.scan.lock().clone()
    }

    /// Record scan progress; the finished state is also written to `$CSTOR_HOME`.
    pub(crate) fn set_scan(&self, scan: ScanStatus) -> Result<()> {
        let finished = scan.state != "scanning";
        *self.scan.lock() = Some(scan);
        if finished {
            self.remember(self.device_paths())?;
        }
        Ok(())
    }

    /// Paths of every device, as the device layer knows them now.
    pub fn device_paths(&self) -> Vec<String> {
        self.spa
            .status()
            .groups
            .iter()
            .flat_map(|g| g.devices.iter().map(|d| d.path.clone()))
            .collect()
    }

    /// Rewrite the record after the devices changed (add, replace).
    pub(crate) fn remember_devices(&self) -> Result<()> {
        self.remember(self.device_paths())
    }

    /// Commit and release the devices (`cstor pool export`, end of a command).
    pub fn close(self) -> Result<()> {
        self.engine.close()?;
        // If a clone still lives (a store handle kept by the engine), the locks go when
        // the last handle drops; the txg is committed already.
        if let Ok(spa) = Arc::try_unwrap(self.spa) {
            spa.export()?;
        }
        Ok(())
    }

    /// Destroy the pool: wipe its labels and forget it.
    pub fn destroy(self) -> Result<()> {
        let registry = self.registry.clone();
        let name = self.name.clone();
        self.engine.close()?;
        let spa = Arc::try_unwrap(self.spa).map_err(|_| {
            NodeError::Invalid(format!("pool '{name}' is still in use in this process"))
        })?;
        spa.destroy()?;
        registry.remove(&name)
    }
}

/// Process-wide list of open pools, for daemons serving many (the target, the node agent).
#[derive(Debug, Default)]
pub struct PoolHost {
    pools: Mutex<Vec<Arc<OpenPool>>>,
}

impl PoolHost {
    /// The pool `name`, opening it from `registry` if it is not open yet.
    pub fn get_or_open(&self, registry: &Registry, name: &str) -> Result<(Arc<OpenPool>, bool)> {
        let mut pools = self.pools.lock();
        if let Some(p) = pools.iter().find(|p| p.name() == name) {
            return Ok((p.clone(), false));
        }
        let p = Arc::new(OpenPool::open(registry, name)?);
        pools.push(p.clone());
        // A device back after missing writes is rebuilt while the pool serves I/O.
        crate::admin::resilver_if_needed(&p)?;
        Ok((p, true))
    }

    /// Every open pool.
    pub fn pools(&self) -> Vec<Arc<OpenPool>> {
        self.pools.lock().clone()
    }

    /// Close every pool no one else holds; commit the others.
    pub fn close_all(&self) -> Vec<NodeError> {
        let mut errors = Vec::new();
        for p in std::mem::take(&mut *self.pools.lock()) {
            p.stop_scan();
            match Arc::try_unwrap(p) {
                Ok(p) => {
                    if let Err(e) = p.close() {
                        errors.push(e);
                    }
                }
                Err(p) => {
                    if let Err(e) = p.engine().sync() {
                        errors.push(e.into());
                    }
                }
            }
        }
        errors
    }
}
