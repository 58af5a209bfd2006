//! A local pool volume as an iSCSI LUN: the adapter from the blocking engine's
//! [`VolumeHandle`] to the target's async [`BlockBackend`] seam.
//!
//! Invariants: every engine call runs on a blocking thread (never on the async runtime);
//! a write with FUA returns only after the engine's `flush` (intent log) made it durable.
//! Errors map once, here, from [`PoolError`] to [`BackendError`], which the target maps to
//! sense data.

use std::sync::Arc;

use bytes::Bytes;
use cstor_iscsi::backend::{BackendError, BackendFuture, BackendIdentity, BlockBackend};
use cstor_pool::{Pool, PoolError, VolumeHandle};

use crate::host::OpenPool;

/// A pool volume served as a LUN.
#[derive(Debug)]
pub struct PoolVolumeBackend {
    pool: Arc<OpenPool>,
    volume: VolumeHandle,
    identity: BackendIdentity,
}

impl PoolVolumeBackend {
    /// Serve volume `name` of `pool`.
    pub fn new(pool: Arc<OpenPool>, name: &str) -> Result<PoolVolumeBackend, PoolError> {
        let volume = pool.engine().volume(name)?;
        // Pool and volume guids together: stable across restarts and unique per volume,
        // so VPD 0x83 names the same LUN after the target restarts.
        let pool_guid = pool.engine().guid();
        let vol_guid = volume.guid();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&pool_guid.to_le_bytes());
        id[8..].copy_from_slice(&vol_guid.to_le_bytes());
        let identity = BackendIdentity {
            id,
            serial: format!("{vol_guid:016x}"),
        };
        Ok(PoolVolumeBackend {
            pool,
            volume,
            identity,
        })
    }

    fn engine(&self) -> &Pool {
        self.pool.engine()
    }
}

fn map_err(offset: u64, e: PoolError) -> BackendError {
    match e {
        PoolError::OutOfRange {
            offset, len, size, ..
        } => BackendError::OutOfRange {
            offset,
            len,
            size_bytes: size,
        },
        PoolError::ReadOnly { .. } => BackendError::ReadOnly,
        PoolError::NoSpace => BackendError::NoSpace,
        other => BackendError::Medium {
            offset,
            source: std::io::Error::other(other),
        },
    }
}

async fn blocking<T: Send + 'static>(
    offset: u64,
    f: impl FnOnce() -> Result<T, PoolError> + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| map_err(offset, e)),
        Err(join) => Err(BackendError::Other(std::io::Error::other(join))),
    }
}

impl BlockBackend for PoolVolumeBackend {
    fn identity(&self) -> &BackendIdentity {
        &self.identity
    }

    fn size_bytes(&self) -> u64 {
        self.volume.size()
    }

    fn read_only(&self) -> bool {
        self.engine().space().read_only
    }

    fn read(&self, offset: u64, len: u32) -> BackendFuture<'_, Bytes> {
        let vol = self.volume.clone();
        Box::pin(blocking(offset, move || {
            let mut buf = vec![0u8; len as usize];
            vol.read(offset, &mut buf)?;
            Ok(Bytes::from(buf))
        }))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BackendFuture<'_, ()> {
        let vol = self.volume.clone();
        Box::pin(blocking(offset, move || {
            // Every modifying command carries an io number (replication and the
            // changed-range walks key on it); drawn here until the target hands one in
            // in dispatch order.
            let io = vol.next_io()?;
            vol.write(offset, &data, Some(io))?;
            if fua {
                vol.flush()?;
            }
            Ok(())
        }))
    }

    fn flush(&self) -> BackendFuture<'_, ()> {
        let vol = self.volume.clone();
        Box::pin(blocking(0, move || vol.flush()))
    }

    fn unmap(&self, offset: u64, len: u64) -> BackendFuture<'_, ()> {
        let vol = self.volume.clone();
        Box::pin(blocking(offset, move || {
            let io = vol.next_io()?;
            vol.unmap(offset, len, Some(io))
        }))
    }
}
