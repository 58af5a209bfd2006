//! Admin requests of `cstor pool` and `cstor volume` on an open pool, and the one function
//! that executes them, [`execute`], whether the command runs in-process or is served by
//! the process holding the pool (over [`crate::socket`]).
//!
//! Invariants: a request either completes or changes nothing it could check up front
//! (alignment, ranges and names are validated before the first byte is written).
//! Long operations (scrub, replace) report [`Progress`] at most every
//! [`PROGRESS_INTERVAL_MS`](crate::limits::PROGRESS_INTERVAL_MS).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_pool::spa::pool::{GroupKind, GroupSpec};
use cstor_pool::{Compression, PoolError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{NodeError, Result};
use crate::host::{OpenPool, ScanSlot};
use crate::limits::PROGRESS_INTERVAL_MS;
use crate::registry::ScanStatus;

/// Volume data moves in chunks of this size (a multiple of every block size).
const IO_CHUNK_BYTES: usize = 1 << 20;
/// Offsets and lengths of volume I/O are multiples of this.
pub const SECTOR_BYTES: u64 = 512;

/// One admin request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `cstor pool status`.
    PoolStatus,
    /// `cstor pool scrub [--wait]`; a resilver instead while a device that missed writes
    /// is marked resilvering.
    PoolScrub {
        /// Return at once and scan in the serving process (`pool status` shows progress).
        #[serde(default)]
        background: bool,
    },
    /// `cstor pool replace OLD NEW [--wait]`.
    PoolReplace {
        /// Device to replace (path as in status).
        old: String,
        /// New device path.
        new: String,
        /// Return once the resilver started (`pool status` shows progress).
        #[serde(default)]
        background: bool,
    },
    /// `cstor pool add`.
    PoolAdd {
        /// stripe, mirror, raidz, raidz2.
        kind: String,
        /// Device paths.
        devices: Vec<String>,
        /// A write-cache (log) group.
        log: bool,
    },
    /// `cstor volume create`.
    VolumeCreate {
        /// Volume name (without the pool).
        volume: String,
        /// Size in bytes.
        size: u64,
        /// Block size in bytes (default: the engine's).
        block_size: Option<u32>,
        /// off, lz4, zstd (default: the pool's).
        compression: Option<String>,
    },
    /// `cstor volume list`.
    VolumeList,
    /// `cstor volume write`: the input is the data.
    VolumeWrite {
        /// Volume name.
        volume: String,
        /// Byte offset.
        offset: u64,
        /// Length of the input when known, checked before anything is written.
        length: Option<u64>,
        /// io number kept with the written blocks.
        io_number: Option<u64>,
    },
    /// `cstor volume read`: the output is the data.
    VolumeRead {
        /// Volume or `volume@snapshot`.
        volume: String,
        /// Byte offset.
        offset: u64,
        /// Bytes (default: to the end).
        length: Option<u64>,
    },
    /// `cstor volume unmap`.
    VolumeUnmap {
        /// Volume name.
        volume: String,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        length: u64,
    },
    /// `cstor volume changed`.
    VolumeChanged {
        /// Volume or `volume@snapshot`.
        target: String,
        /// Ranges whose io number is above this.
        since: u64,
        /// ... and at most this (none: no bound).
        #[serde(default)]
        until: Option<u64>,
    },
    /// `cstor volume snapshot`.
    VolumeSnapshot {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        snapshot: String,
        /// Take it at this io cut (refused once a write at or above it exists).
        #[serde(default)]
        io_cut: Option<u64>,
    },
    /// `cstor volume clone`.
    VolumeClone {
        /// Origin volume.
        volume: String,
        /// Origin snapshot.
        snapshot: String,
        /// New volume name.
        new_volume: String,
    },
    /// `cstor volume rollback`.
    VolumeRollback {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        snapshot: String,
        /// Destroy snapshots newer than `snapshot` in the same txg (else they refuse it).
        #[serde(default)]
        destroy_newer: bool,
    },
    /// `cstor volume resize`.
    VolumeResize {
        /// Volume name.
        volume: String,
        /// New size in bytes.
        size: u64,
    },
    /// `cstor volume destroy`.
    VolumeDestroy {
        /// Volume name.
        volume: String,
        /// Destroy only this snapshot.
        snapshot: Option<String>,
    },
    /// `cstor volume send`: the output is the stream.
    VolumeSend {
        /// Volume name.
        volume: String,
        /// Snapshot to send.
        snapshot: String,
        /// Incremental from this snapshot.
        from: Option<String>,
    },
    /// `cstor volume recv`: the input is the stream.
    VolumeRecv {
        /// Volume name.
        volume: String,
    },
}

/// Progress of a long operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    /// `scrub` or `resilver`.
    pub kind: String,
    /// 0..=100.
    pub percent: f64,
    /// Bytes examined.
    pub examined_bytes: u64,
    /// Bytes to examine.
    pub total_bytes: u64,
}

impl Progress {
    fn of(scan: &ScanStatus) -> Progress {
        Progress {
            kind: scan.kind.clone(),
            percent: scan.progress_percent,
            examined_bytes: scan.examined_bytes,
            total_bytes: scan.total_bytes,
        }
    }
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Stream {
        context: context.to_owned(),
        source,
    }
}

fn parse_compression(text: Option<&str>) -> Result<Option<Compression>> {
    text.map(|t| t.parse::<Compression>().map_err(NodeError::from))
        .transpose()
}

/// Execute `req` on `pool`; `input` and `output` carry the request's data, if any.
pub fn execute(
    pool: &Arc<OpenPool>,
    req: Request,
    input: &mut dyn Read,
    output: &mut dyn Write,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Value> {
    let engine = pool.engine();
    match req {
        Request::PoolStatus => Ok(pool_status(pool)),
        Request::PoolScrub { background } => {
            let slot = pool.claim_scan()?;
            let kind = if pool.spa().is_resilvering() {
                ScanKind::Resilver
            } else {
                ScanKind::Scrub
            };
            start_scan(slot, kind, background, progress)
        }
        Request::PoolReplace {
            old,
            new,
            background,
        } => {
            let slot = pool.claim_scan()?;
            let dev = cstor_pool::spa::pool::open_paths(std::slice::from_ref(&new))?
                .pop()
                .ok_or_else(|| NodeError::Invalid(format!("cannot open {new}")))?;
            pool.spa().replace_device(&old, dev)?;
            pool.remember_devices()?;
            start_scan(slot, ScanKind::Resilver, background, progress)
        }
        Request::PoolAdd { kind, devices, log } => {
            let kind = GroupKind::parse(&kind)
                .ok_or_else(|| NodeError::Invalid(format!("unknown raid group kind {kind:?}")))?;
            pool.spa()
                .add_group_paths(&GroupSpec { kind, devices, log })?;
            pool.remember_devices()?;
            Ok(pool_status(pool))
        }
        Request::VolumeCreate {
            volume,
            size,
            block_size,
            compression,
        } => {
            let compression = parse_compression(compression.as_deref())?;
            engine.create_volume(&volume, size, block_size, compression)?;
            Ok(volume_json(pool, &volume)?)
        }
        Request::VolumeList => {
            let vols = engine.list_volumes();
            let mut out = Vec::with_capacity(vols.len());
            for v in vols {
                out.push(volume_json(pool, &v.name)?);
            }
            Ok(Value::Array(out))
        }
        Request::VolumeWrite {
            volume,
            offset,
            length,
            io_number,
        } => volume_write(pool, &volume, offset, length, io_number, input),
        Request::VolumeRead {
            volume,
            offset,
            length,
        } => volume_read(pool, &volume, offset, length, output),
        Request::VolumeUnmap {
            volume,
            offset,
            length,
        } => {
            let h = engine.volume(&volume)?;
            h.unmap(offset, length, None)?;
            h.flush()?;
            Ok(json!({"unmapped_bytes": length}))
        }
        Request::VolumeChanged {
            target,
            since,
            until,
        } => {
            let ranges = engine.changed_between_vec(&target, since, until)?;
            Ok(Value::Array(
                ranges
                    .iter()
                    .map(|r| json!({"offset": r.offset, "length": r.len, "io_number_max": r.io_number_max}))
                    .collect(),
            ))
        }
        Request::VolumeSnapshot {
            volume,
            snapshot,
            io_cut,
        } => {
            match io_cut {
                Some(n) => engine.snapshot_at_io(&volume, &snapshot, n)?,
                None => engine.snapshot(&volume, &snapshot)?,
            }
            Ok(json!({"snapshot": format!("{volume}@{snapshot}")}))
        }
        Request::VolumeClone {
            volume,
            snapshot,
            new_volume,
        } => {
            engine.clone_snapshot(&volume, &snapshot, &new_volume)?;
            volume_json(pool, &new_volume)
        }
        Request::VolumeRollback {
            volume,
            snapshot,
            destroy_newer,
        } => {
            let destroyed = if destroy_newer {
                engine.rollback_destroying_newer(&volume, &snapshot)?
            } else {
                engine.rollback(&volume, &snapshot)?;
                Vec::new()
            };
            let mut v = volume_json(pool, &volume)?;
            v["destroyed_snapshots"] = json!(destroyed);
            Ok(v)
        }
        Request::VolumeResize { volume, size } => {
            engine.resize(&volume, size)?;
            // Targets serving it in this process raise CAPACITY DATA HAS CHANGED.
            crate::events::raise(
                engine.guid(),
                &volume,
                cstor_iscsi::BackendEvent::CapacityChanged,
            );
            volume_json(pool, &volume)
        }
        Request::VolumeDestroy { volume, snapshot } => {
            match &snapshot {
                Some(s) => engine.destroy_snapshot(&volume, s)?,
                None => engine.destroy_volume(&volume)?,
            }
            engine.sync()?;
            Ok(json!({"destroyed": match snapshot {
                Some(s) => format!("{volume}@{s}"),
                None => volume,
            }}))
        }
        Request::VolumeSend {
            volume,
            snapshot,
            from,
        } => {
            let stats = engine.send(&volume, &snapshot, from.as_deref(), output)?;
            output.flush().map_err(io_err("writing the stream"))?;
            Ok(json!({"records": stats.records, "data_bytes": stats.data_bytes}))
        }
        Request::VolumeRecv { volume } => {
            let stats = engine.recv(&volume, input)?;
            engine.sync()?;
            Ok(json!({"records": stats.records, "data_bytes": stats.data_bytes}))
        }
    }
}

/// `pool status -o json`.
pub fn pool_status(pool: &OpenPool) -> Value {
    let st = pool.spa().status();
    let space = pool.engine().space();
    let devices: Vec<Value> = st
        .groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| {
            g.devices.iter().map(move |d| {
                json!({
                    "path": d.path,
                    "state": d.state,
                    "reason": d.reason,
                    "resilvering": d.resilvering,
                    "read_errors": d.read_errors,
                    "write_errors": d.write_errors,
                    "checksum_errors": d.checksum_errors,
                    "group": i,
                })
            })
        })
        .collect();
    let groups: Vec<Value> = st
        .groups
        .iter()
        .map(|g| {
            json!({
                "kind": g.kind,
                "log": g.log,
                "health": g.health,
                "devices": g.devices.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "name": st.name,
        "guid": st.guid,
        "health": st.health.as_str(),
        "message": st.message,
        "devices": devices,
        "groups": groups,
        "scan": pool.scan(),
        "size": space.size,
        "allocated": space.allocated,
        "free": space.free,
        "read_only": space.read_only,
        "ro_threshold_pct": space.ro_threshold_pct,
        "txg": st.txg,
    })
}

fn volume_json(pool: &OpenPool, name: &str) -> Result<Value> {
    let engine = pool.engine();
    let v = engine.volume_info(name)?;
    let snaps = engine.list_snapshots(name)?;
    Ok(json!({
        "name": v.name,
        "size": v.size,
        "block_size": v.block_size,
        "compression": v.compression,
        "used": v.used,
        "referenced": v.referenced,
        "compression_ratio": v.compression_ratio,
        "origin": v.origin,
        "io_number_max": v.io_number_max,
        "checkpoint": v.checkpoint,
        "epoch": v.epoch,
        "flush_point": v.flush_point,
        "snapshots": snaps.iter().map(|s| json!({
            "name": s.name,
            "used": s.used,
            "referenced": s.referenced,
            "written": s.written,
            "clones": s.clones,
            "io_cut": s.io_cut,
        })).collect::<Vec<_>>(),
    }))
}

fn check_range(offset: u64, length: u64, size: u64, volume: &str) -> Result<()> {
    if !offset.is_multiple_of(SECTOR_BYTES) || !length.is_multiple_of(SECTOR_BYTES) {
        return Err(PoolError::Unaligned {
            offset,
            len: length,
            align: SECTOR_BYTES,
        }
        .into());
    }
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(PoolError::OutOfRange {
            volume: volume.to_owned(),
            offset,
            len: length,
            size,
        }
        .into());
    }
    Ok(())
}

fn volume_write(
    pool: &OpenPool,
    volume: &str,
    offset: u64,
    length: Option<u64>,
    io_number: Option<u64>,
    input: &mut dyn Read,
) -> Result<Value> {
    let h = pool.engine().volume(volume)?;
    let size = h.size();
    if let Some(len) = length {
        check_range(offset, len, size, volume)?;
    } else {
        check_range(offset, 0, size, volume)?;
    }
    let mut buf = vec![0u8; IO_CHUNK_BYTES];
    let mut at = offset;
    loop {
        let n = read_full(input, &mut buf).map_err(io_err("reading the input"))?;
        if n == 0 {
            break;
        }
        check_range(at, n as u64, size, volume)?;
        h.write(at, &buf[..n], io_number)?;
        at += n as u64;
        if n < buf.len() {
            break;
        }
    }
    h.flush()?;
    Ok(json!({"written_bytes": at - offset}))
}

/// Reads `buf.len()` bytes at an offset of a volume or a snapshot.
type RangeReader<'a> = Box<dyn Fn(u64, &mut [u8]) -> cstor_pool::Result<()> + 'a>;

fn volume_read(
    pool: &OpenPool,
    target: &str,
    offset: u64,
    length: Option<u64>,
    output: &mut dyn Write,
) -> Result<Value> {
    let engine = pool.engine();
    // A snapshot reads through the engine's snapshot path; a volume through its handle.
    let (size, read): (u64, RangeReader<'_>) = match target.split_once('@') {
        Some((vol, snap)) => {
            let info = engine
                .list_snapshots(vol)?
                .into_iter()
                .find(|s| s.name == snap)
                .ok_or_else(|| PoolError::UnknownSnapshot {
                    volume: vol.to_owned(),
                    snapshot: snap.to_owned(),
                })?;
            let read = move |off: u64, buf: &mut [u8]| engine.read_snapshot(vol, snap, off, buf);
            (info.size, Box::new(read))
        }
        None => {
            let h = engine.volume(target)?;
            (
                h.size(),
                Box::new(move |off: u64, buf: &mut [u8]| h.read(off, buf)),
            )
        }
    };
    let length = length.unwrap_or(size.saturating_sub(offset));
    check_range(offset, length, size, target)?;
    let mut buf = vec![0u8; IO_CHUNK_BYTES];
    let mut done = 0u64;
    while done < length {
        let n = (length - done).min(IO_CHUNK_BYTES as u64) as usize;
        read(offset + done, &mut buf[..n])?;
        output
            .write_all(&buf[..n])
            .map_err(io_err("writing the output"))?;
        done += n as u64;
    }
    output.flush().map_err(io_err("writing the output"))?;
    Ok(json!({"read_bytes": length}))
}

/// Fill `buf` as far as the input goes; returns bytes read (short only at end of input).
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a scan does with each live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanKind {
    /// Verify every copy or column and repair bad ones from redundancy.
    Scrub,
    /// Rebuild the share of resilvering devices (replaced, or back after missing writes).
    Resilver,
}

impl ScanKind {
    fn as_str(self) -> &'static str {
        match self {
            ScanKind::Scrub => "scrub",
            ScanKind::Resilver => "resilver",
        }
    }
}

/// Run a scan in this thread, or in a new one when `background` (the reply is then the
/// status at its start, and `pool status` follows it). A finished resilver marks the
/// rebuilt devices trusted.
fn start_scan(
    slot: ScanSlot,
    kind: ScanKind,
    background: bool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Value> {
    if !background {
        return run_scan(&slot, kind, progress);
    }
    let pool = slot.pool().clone();
    pool.set_scan(ScanStatus::starting(kind.as_str()))?;
    std::thread::Builder::new()
        .name(format!("{}-{}", kind.as_str(), pool.name()))
        .spawn(move || {
            if let Err(e) = run_scan(&slot, kind, &mut |_| {}) {
                tracing::error!(pool = %slot.pool().name(), "{}: {e}", kind.as_str());
            }
        })
        .map_err(|e| NodeError::Invalid(format!("cannot start a scan thread: {e}")))?;
    serde_json::to_value(pool.scan()).map_err(|e| NodeError::Protocol(e.to_string()))
}

/// Resilver in the background if a device came back after missing writes (called when a
/// serving process opens a pool). Does nothing if a scan is running already.
pub fn resilver_if_needed(pool: &Arc<OpenPool>) -> Result<()> {
    if !pool.spa().is_resilvering() {
        return Ok(());
    }
    let slot = pool.claim_scan()?;
    tracing::info!(pool = %pool.name(), "a device missed writes: resilvering it");
    start_scan(slot, ScanKind::Resilver, true, &mut |_| {}).map(|_| ())
}

fn run_scan(slot: &ScanSlot, kind: ScanKind, progress: &mut dyn FnMut(&Progress)) -> Result<Value> {
    scan(slot.pool(), kind, progress)
}

/// Scrub (verify every copy of every live block, repair from redundancy) or resilver
/// (rebuild a replaced device's part of every live block).
fn scan(pool: &OpenPool, kind: ScanKind, progress: &mut dyn FnMut(&Progress)) -> Result<Value> {
    let engine = pool.engine();
    // Everything written so far must be in the tree the traversal walks.
    engine.sync()?;
    let total = engine.space().allocated.max(1);
    let mut status = ScanStatus {
        total_bytes: total,
        ..ScanStatus::starting(kind.as_str())
    };
    pool.set_scan(status.clone())?;
    let spa = pool.spa();
    let mut last_report = Instant::now();
    let interval = Duration::from_millis(PROGRESS_INTERVAL_MS);
    let resilver = kind == ScanKind::Resilver;
    let mut unrecoverable = Vec::new();
    let walk = engine.visit_live_blocks(&mut |dva, psize, verify| {
        if pool.scan_stopping() {
            return Err(PoolError::Closed(format!(
                "{} stopped: pool '{}' is closing",
                kind.as_str(),
                pool.name()
            )));
        }
        let r = if resilver {
            spa.resilver_block(dva, psize, verify)
        } else {
            spa.scrub_block(dva, psize, verify)
        };
        match r {
            Ok(repaired) => status.repaired_bytes += repaired,
            Err(e) => {
                status.unrecoverable_blocks += 1;
                if unrecoverable.len() < 10 {
                    unrecoverable.push(e.to_string());
                }
            }
        }
        // Stored bytes, the terms `allocated` is reported in (parity excluded).
        status.examined_bytes += u64::from(psize);
        if last_report.elapsed() >= interval {
            last_report = Instant::now();
            status.progress_percent =
                (status.examined_bytes as f64 * 100.0 / total as f64).min(99.9);
            let _ = pool.set_scan(status.clone());
            progress(&Progress::of(&status));
        }
        Ok(())
    });
    // The device layer's own metadata (space maps) is not in the block tree.
    let internal = if resilver {
        spa.resilver_internal()
    } else {
        spa.scrub_internal()
    };
    let mut trusted = Ok(());
    match (&walk, &internal) {
        (Ok(_), Ok(repaired)) => {
            status.repaired_bytes += repaired;
            status.state = "finished".into();
            status.progress_percent = 100.0;
            // The rebuilt devices are trusted before the scan reads as finished, so no
            // `pool status` ever shows a finished resilver beside a resilvering device.
            if resilver {
                trusted = spa
                    .finish_replace()
                    .map_err(NodeError::from)
                    .and_then(|()| pool.remember_devices());
                if let Err(e) = &trusted {
                    status.state = "failed".into();
                    status.error = Some(format!("rebuilt devices not marked trusted: {e}"));
                }
            }
        }
        (Err(e), _) => {
            status.state = "failed".into();
            status.error = Some(e.to_string());
        }
        (_, Err(e)) => {
            status.state = "failed".into();
            status.error = Some(e.to_string());
        }
    }
    if status.unrecoverable_blocks > 0 && status.error.is_none() {
        status.error = Some(format!(
            "{} blocks have no good copy: {}",
            status.unrecoverable_blocks,
            unrecoverable.join("; ")
        ));
    }
    pool.set_scan(status.clone())?;
    progress(&Progress::of(&status));
    walk?;
    internal?;
    trusted?;
    serde_json::to_value(&status).map_err(|e| NodeError::Protocol(e.to_string()))
}
