//! `$CSTOR_HOME` (default /var/lib/cstor): which devices make up which pool, so that later
//! commands need only the pool name, and the last scan's result.
//!
//! Layout: `pools/<name>.json`, one [`PoolRecord`] each (JSON with a `version`), and
//! `run/<name>.sock`, the admin socket of the process holding the pool open.
//! Invariants: a record is replaced atomically (write to a temp file, fsync, rename), so a
//! crash leaves the old or the new record, never a torn one. The record is a hint: the
//! pool's own labels are the truth, and `import` works with an empty `$CSTOR_HOME`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result};
use crate::limits::CACHE_BYTES_MIN;

/// Version of the record format.
const RECORD_VERSION: u32 = 1;

/// What `$CSTOR_HOME` remembers of one pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// Record format version.
    pub version: u32,
    /// Pool name.
    pub name: String,
    /// Pool guid (from its labels).
    pub guid: u64,
    /// Device paths, as last opened.
    pub devices: Vec<String>,
    /// The last scrub or resilver, if any.
    #[serde(default)]
    pub last_scan: Option<ScanStatus>,
}

/// A scrub or resilver, running or finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanStatus {
    /// `scrub` or `resilver`.
    pub kind: String,
    /// `scanning`, `finished` or `failed`.
    pub state: String,
    /// 0..=100.
    pub progress_percent: f64,
    /// Bytes rewritten from redundancy.
    pub repaired_bytes: u64,
    /// Blocks that could not be repaired (no good copy).
    pub unrecoverable_blocks: u64,
    /// Bytes examined so far.
    pub examined_bytes: u64,
    /// Bytes to examine.
    pub total_bytes: u64,
    /// Error that stopped the scan.
    #[serde(default)]
    pub error: Option<String>,
}

impl ScanStatus {
    /// A scan of `kind` that has not examined anything yet.
    pub fn starting(kind: &str) -> ScanStatus {
        ScanStatus {
            kind: kind.to_owned(),
            state: "scanning".into(),
            progress_percent: 0.0,
            repaired_bytes: 0,
            unrecoverable_blocks: 0,
            examined_bytes: 0,
            total_bytes: 0,
            error: None,
        }
    }
}

/// The `$CSTOR_HOME` directory.
#[derive(Clone, Debug)]
pub struct Registry {
    home: PathBuf,
    /// Block cache of each pool opened through this registry.
    cache_bytes: u64,
}

fn valid_pool_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "invalid pool name {name:?}: use letters, digits, '-', '_', '.', ':' (at most 200)"
        )))
    }
}

impl Registry {
    /// The registry at `home` (created on first write).
    pub fn new(home: impl Into<PathBuf>) -> Registry {
        Registry {
            home: home.into(),
            cache_bytes: cstor_pool::limits::DEFAULT_CACHE_BYTES,
        }
    }

    /// Pools opened through this registry keep at most `bytes` of decompressed blocks
    /// in memory each (at least one maximum-size block).
    pub fn with_cache_bytes(mut self, bytes: u64) -> Registry {
        self.cache_bytes = bytes.max(CACHE_BYTES_MIN);
        self
    }

    /// The per-pool block cache size.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    /// `$CSTOR_HOME`, or /var/lib/cstor.
    pub fn from_env() -> Registry {
        Registry::new(
            std::env::var_os("CSTOR_HOME")
                .map_or_else(|| PathBuf::from("/var/lib/cstor"), PathBuf::from),
        )
    }

    /// The directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn record_path(&self, name: &str) -> Result<PathBuf> {
        valid_pool_name(name)?;
        Ok(self.home.join("pools").join(format!("{name}.json")))
    }

    /// Where the holder of pool `name` listens.
    pub fn socket_path(&self, name: &str) -> Result<PathBuf> {
        valid_pool_name(name)?;
        Ok(self.home.join("run").join(format!("{name}.sock")))
    }

    /// The record of pool `name`, if any.
    pub fn load(&self, name: &str) -> Result<Option<PoolRecord>> {
        let path = self.record_path(name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NodeError::Home {
                    context: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        let rec: PoolRecord = serde_json::from_slice(&bytes).map_err(|e| NodeError::Home {
            context: format!("parsing {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        if rec.version != RECORD_VERSION {
            return Err(NodeError::Home {
                context: format!("{}: record version {}", path.display(), rec.version),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unsupported (this cstor writes version {RECORD_VERSION})"),
                ),
            });
        }
        Ok(Some(rec))
    }

    /// Write a record atomically.
    pub fn save(&self, rec: &PoolRecord) -> Result<()> {
        let path = self.record_path(&rec.name)?;
        let io = |context: String| move |source| NodeError::Home { context, source };
        let dir = self.home.join("pools");
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = dir.join(format!(".{}.json.tmp", rec.name));
        let mut rec = rec.clone();
        rec.version = RECORD_VERSION;
        let body = serde_json::to_vec_pretty(&rec).map_err(|e| NodeError::Home {
            context: "encoding pool record".into(),
            source: std::io::Error::other(e),
        })?;
        let mut f = fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))?;
        // The rename is durable only once the directory is.
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("syncing {}", dir.display())))?;
        Ok(())
    }

    /// Forget pool `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.record_path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NodeError::Home {
                context: format!("removing {}", path.display()),
                source,
            }),
        }
    }

    /// Every known pool name, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = self.home.join("pools");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(NodeError::Home {
                    context: format!("listing {}", dir.display()),
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let stem = n.strip_suffix(".json")?;
                (!stem.starts_with('.')).then(|| stem.to_owned())
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        assert!(reg.load("tank").unwrap().is_none());
        let rec = PoolRecord {
            version: RECORD_VERSION,
            name: "tank".into(),
            guid: 7,
            devices: vec!["/d1".into(), "/d2".into()],
            last_scan: None,
        };
        reg.save(&rec).unwrap();
        assert_eq!(reg.load("tank").unwrap().unwrap(), rec);
        assert_eq!(reg.list().unwrap(), vec!["tank".to_string()]);
        reg.remove("tank").unwrap();
        assert!(reg.list().unwrap().is_empty());
    }

    #[test]
    fn bad_names_are_refused() {
        let reg = Registry::new("/nonexistent");
        for bad in ["", "a/b", "../x", ".hidden", "a b"] {
            assert!(reg.load(bad).is_err(), "{bad:?}");
        }
    }
}
