//! The durable store: one redb file holding every object, the global resourceVersion and
//! a bounded watch history (layout in docs/format/apiserver-store.md).
//!
//! Owns: the redb `Database`. Invariants: a commit writes the new objects, their history
//! entries and the new resourceVersion in one redb write transaction with
//! `Durability::Immediate`, so after `commit` returns the change survives kill -9 and
//! power loss; the stored resourceVersion never decreases. Never: interprets objects
//! beyond the record envelope, or is called from more than one writer at a time (the
//! caller, `core::Core`, has one commit leader at a time; each commit carries a whole
//! group of writers' changes, so concurrent writes share one fsync).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");

/// Store format version written in `meta["format_version"]`; see the spec's version rules.
pub(crate) const FORMAT_VERSION: u64 = 1;
/// Magic at the start of every record value.
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"CSAO";
/// Record envelope version.
pub(crate) const RECORD_VERSION: u16 = 1;
const HEADER_LEN: usize = 4 + 2 + 2 + 4 + 4;
const _: () = assert!(HEADER_LEN == 16);

/// Store failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb reported an error (IO, corruption, commit failure).
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// A record failed its magic, version, length or checksum check.
    #[error("corrupt record {key}: {what}")]
    Corrupt {
        /// Table key of the record.
        key: String,
        /// What was wrong.
        what: String,
    },
    /// The file was written by a newer, unknown store format.
    #[error("store format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// Version found in the file.
        found: u64,
    },
}

fn redb_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb(e.into())
}

/// Kind of change in the watch history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ADDED" => Some(EventType::Added),
            "MODIFIED" => Some(EventType::Modified),
            "DELETED" => Some(EventType::Deleted),
            _ => None,
        }
    }
}

/// One committed change: the object's state after it (for a deletion, its last state
/// stamped with the deletion's resourceVersion).
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: EventType,
    pub(crate) key: String,
    pub(crate) object: Arc<Value>,
    /// Commit time, milliseconds since the Unix epoch (history is kept by age).
    pub(crate) at_ms: u64,
    /// State before the change (None for a creation; stored in the history entry), so
    /// selector watches turn leaving/entering the selection into DELETED/ADDED, also
    /// when resumed after a restart, and lists can be served as of an older
    /// resourceVersion (undoing the changes after it).
    pub(crate) prev: Option<Arc<Value>>,
}

/// Everything read at open.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) resource_version: u64,
    /// Watches from below this resourceVersion get 410 Gone.
    pub(crate) history_floor: u64,
    pub(crate) objects: BTreeMap<String, Arc<Value>>,
    pub(crate) history: VecDeque<Arc<Change>>,
}

/// The redb-backed store.
#[derive(Debug)]
pub(crate) struct Store {
    db: Database,
    /// Durable commits made (group commit is measured by it).
    commits: std::sync::atomic::AtomicU64,
    /// Tests: fail the next commit, as a failed fsync would.
    #[cfg(test)]
    pub(crate) fail_next: std::sync::atomic::AtomicBool,
}

pub(crate) fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub(crate) fn decode_record<'a>(key: &str, bytes: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt {
        key: key.to_string(),
        what: what.to_string(),
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("shorter than the record header"));
    }
    if bytes[0..4] != RECORD_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != RECORD_VERSION {
        return Err(corrupt(&format!("unknown record version {version}")));
    }
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if bytes.len() - HEADER_LEN != len {
        return Err(corrupt("payload length mismatch"));
    }
    let payload = &bytes[HEADER_LEN..];
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(payload)
}

fn decode_json(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    let payload = decode_record(key, bytes)?;
    serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        what: format!("json: {e}"),
    })
}

impl Store {
    /// Opens (creating if missing) the store file and reads everything into memory.
    pub(crate) fn open(path: &Path) -> Result<(Store, Loaded), StoreError> {
        let db = Database::create(path).map_err(redb_err)?;
        let mut txn = db.begin_write().map_err(redb_err)?;
        txn.set_durability(Durability::Immediate)
            .map_err(redb_err)?;
        {
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            let version = meta
                .get("format_version")
                .map_err(redb_err)?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert("format_version", FORMAT_VERSION)
                        .map_err(redb_err)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(found) => return Err(StoreError::UnsupportedVersion { found }),
            }
            txn.open_table(OBJECTS).map_err(redb_err)?;
            txn.open_table(HISTORY).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;

        let read = db.begin_read().map_err(redb_err)?;
        let meta = read.open_table(META).map_err(redb_err)?;
        let resource_version = meta
            .get("resource_version")
            .map_err(redb_err)?
            .map_or(1, |v| v.value());
        let history_floor = meta
            .get("history_floor")
            .map_err(redb_err)?
            .map_or(0, |v| v.value());
        let mut objects = BTreeMap::new();
        for item in read
            .open_table(OBJECTS)
            .map_err(redb_err)?
            .iter()
            .map_err(redb_err)?
        {
            let (k, v) = item.map_err(redb_err)?;
            let key = k.value().to_string();
            let obj = decode_json(&key, v.value())?;
            objects.insert(key, Arc::new(obj));
        }
        let mut history = VecDeque::new();
        for item in read
            .open_table(HISTORY)
            .map_err(redb_err)?
            .iter()
            .map_err(redb_err)?
        {
            let (k, v) = item.map_err(redb_err)?;
            let rv = k.value();
            let name = format!("history/{rv}");
            let entry = decode_json(&name, v.value())?;
            let corrupt = || StoreError::Corrupt {
                key: name.clone(),
                what: "history entry fields".into(),
            };
            let kind = entry["type"]
                .as_str()
                .and_then(EventType::parse)
                .ok_or_else(corrupt)?;
            let key = entry["key"].as_str().ok_or_else(corrupt)?.to_string();
            // Entries written before commit times were recorded count from the open.
            let at_ms = entry["time"].as_u64().unwrap_or_else(crate::time::now_ms);
            let prev = entry
                .get("prev")
                .filter(|p| !p.is_null())
                .map(|p| Arc::new(p.clone()));
            history.push_back(Arc::new(Change {
                rv,
                kind,
                key,
                object: Arc::new(entry["object"].clone()),
                at_ms,
                prev,
            }));
        }
        drop(meta);
        drop(read);
        Ok((
            Store {
                db,
                commits: std::sync::atomic::AtomicU64::new(0),
                #[cfg(test)]
                fail_next: std::sync::atomic::AtomicBool::new(false),
            },
            Loaded {
                resource_version,
                history_floor,
                objects,
                history,
            },
        ))
    }

    /// Durably commits `changes` (in resourceVersion order), the new resourceVersion
    /// and the history trim: entries with rv <= `floor` (the newest dropped
    /// resourceVersion) are removed and `floor` recorded.
    pub(crate) fn commit(
        &self,
        changes: &[Arc<Change>],
        resource_version: u64,
        floor: u64,
    ) -> Result<(), StoreError> {
        #[cfg(test)]
        if self
            .fail_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Redb(redb::Error::Io(std::io::Error::other(
                "injected commit failure",
            ))));
        }
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(Durability::Immediate)
            .map_err(redb_err)?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(redb_err)?;
            let mut history = txn.open_table(HISTORY).map_err(redb_err)?;
            for change in changes {
                assert!(
                    change.rv <= resource_version,
                    "change beyond the committed resourceVersion"
                );
                match change.kind {
                    EventType::Deleted => {
                        objects.remove(change.key.as_str()).map_err(redb_err)?;
                    }
                    _ => {
                        let bytes =
                            encode_record(&serde_json::to_vec(&*change.object).unwrap_or_default());
                        objects
                            .insert(change.key.as_str(), bytes.as_slice())
                            .map_err(redb_err)?;
                    }
                }
                let mut entry = serde_json::json!({
                    "type": change.kind.as_str(),
                    "key": change.key,
                    "object": &*change.object,
                });
                if let Some(prev) = &change.prev {
                    entry["prev"] = (**prev).clone();
                }
                entry["time"] = serde_json::json!(change.at_ms);
                let bytes = encode_record(&serde_json::to_vec(&entry).unwrap_or_default());
                history
                    .insert(change.rv, bytes.as_slice())
                    .map_err(redb_err)?;
            }
            loop {
                let first = history.first().map_err(redb_err)?.map(|(k, _)| k.value());
                match first {
                    Some(rv) if rv <= floor => {
                        history.remove(rv).map_err(redb_err)?;
                    }
                    _ => break,
                }
            }
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            meta.insert("resource_version", resource_version)
                .map_err(redb_err)?;
            meta.insert("history_floor", floor).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Durable commits made since open.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_corruption() {
        let rec = encode_record(b"{\"a\":1}");
        assert_eq!(decode_record("k", &rec).unwrap(), b"{\"a\":1}");
        let mut bad = rec.clone();
        bad[HEADER_LEN] ^= 1;
        assert!(matches!(
            decode_record("k", &bad),
            Err(StoreError::Corrupt { .. })
        ));
        let mut bad = rec.clone();
        bad[0] = b'X';
        assert!(decode_record("k", &bad).is_err());
        assert!(decode_record("k", &rec[..10]).is_err());
    }

    #[test]
    fn commit_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let (store, loaded) = Store::open(&path).unwrap();
            assert_eq!(loaded.resource_version, 1);
            let c = Arc::new(Change {
                rv: 2,
                kind: EventType::Added,
                key: "core/namespaces//a".into(),
                object: Arc::new(serde_json::json!({"kind": "Namespace"})),
                at_ms: 1,
                prev: None,
            });
            store.commit(&[c], 2, 0).unwrap();
        }
        let (_store, loaded) = Store::open(&path).unwrap();
        assert_eq!(loaded.resource_version, 2);
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(loaded.history.len(), 1);
        assert_eq!(loaded.history[0].kind, EventType::Added);
    }
}
