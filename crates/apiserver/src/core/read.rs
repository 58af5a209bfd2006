//! Reads: get is in `mod.rs`; here are paged lists (continue tokens), watch starts
//! and how a change shows in a filtered watch. Never: writes, or holds the lock longer
//! than it takes to copy `Arc`s out of the maps.

use super::*;

impl Core {
    /// Lists objects (stored form) in key order, as of one resourceVersion: the latest,
    /// or an older one still in the history (`ListAt::Exact`, and every page after the
    /// first, whose continue token carries the first page's resourceVersion), so a
    /// paged list is a consistent snapshot as on kube-apiserver.
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        limit: Option<usize>,
        cont: Option<&str>,
        at: ListAt,
    ) -> Result<ListPage, ApiError> {
        let prefix = match &filter.namespace {
            Some(ns) if rt.namespaced => format!("{}{ns}/", rt.key_prefix()),
            _ => rt.key_prefix(),
        };
        let (start, at) = match cont {
            Some(tok) => {
                let (rv, key) = decode_continue(tok)?;
                if !key.starts_with(&prefix) {
                    return Err(ApiError::BadRequest("continue key is not valid".into()));
                }
                (Some(key), ListAt::Continue(rv))
            }
            None => (None, at),
        };
        let limit = limit.map(|l| l.clamp(1, limits::LIST_PAGE_ITEMS_MAX));
        // Under the lock only Arcs are copied; objects are cloned after it is released.
        let (snapshot_rv, items, more, remaining) = {
            let inner = self.inner.read();
            let rv = match at {
                ListAt::Latest => inner.rv,
                ListAt::NotOlderThan(r) | ListAt::Exact(r) if r > inner.rv => {
                    return Err(ApiError::TooLargeResourceVersion {
                        requested: r,
                        current: inner.rv,
                    })
                }
                ListAt::NotOlderThan(_) => inner.rv,
                ListAt::Exact(r) if r < inner.floor => {
                    return Err(ApiError::Gone {
                        requested: r,
                        oldest: inner.floor,
                    })
                }
                ListAt::Continue(r) if r < inner.floor || r > inner.rv => {
                    return Err(ApiError::ContinueExpired)
                }
                ListAt::Exact(r) | ListAt::Continue(r) => r,
            };
            let undo = undo_after(&inner, &prefix, rv)?;
            let from = start.clone().unwrap_or_else(|| prefix.clone());
            let live = inner
                .objects
                .range(from.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.as_str(), Some(v)));
            let old = undo
                .range::<str, _>((
                    std::ops::Bound::Included(from.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(k, v)| (k.as_str(), v.as_ref()));
            let mut items: Vec<(String, Arc<Value>)> = Vec::new();
            let mut more = false;
            let mut remaining = 0u64;
            for (k, v) in merge_sorted(live, old) {
                let Some(v) = v else { continue };
                if start.as_deref() == Some(k) || !matches(rt, filter, v) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    more = true;
                    remaining += 1;
                    continue;
                }
                items.push((k.to_string(), v.clone()));
            }
            (rv, items, more, remaining)
        };
        let continue_token = if more {
            items.last().map(|(k, _)| encode_continue(snapshot_rv, k))
        } else {
            None
        };
        Ok(ListPage {
            items: items.into_iter().map(|(_, v)| (*v).clone()).collect(),
            resource_version: snapshot_rv,
            continue_token,
            remaining: if more { Some(remaining) } else { None },
        })
    }

    /// Starts a watch: the changes after `from` (or, with None, synthetic ADDED events for
    /// every current object) plus a live receiver subscribed under the same lock, so no
    /// change falls between them.
    pub(crate) fn watch(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let inner = self.inner.read();
        let prefix = rt.key_prefix();
        let replay: Vec<Arc<Change>> = match from {
            Some(from) => {
                if from < inner.floor {
                    return Err(ApiError::Gone {
                        requested: from,
                        oldest: inner.floor,
                    });
                }
                inner
                    .history
                    .iter()
                    .filter(|c| c.rv > from && c.key.starts_with(&prefix))
                    .cloned()
                    .collect()
            }
            None => inner
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter(|(_, v)| matches(rt, filter, v))
                .map(|(k, v)| {
                    Arc::new(Change {
                        rv: v["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        kind: EventType::Added,
                        key: k.clone(),
                        object: v.clone(),
                        at_ms: 0,
                        prev: None,
                    })
                })
                .collect(),
        };
        Ok((replay, self.tx.subscribe(), inner.rv))
    }
}

pub(super) fn matches(rt: &ResourceType, filter: &Filter, stored: &Value) -> bool {
    if let Some(ns) = &filter.namespace {
        if rt.namespaced && meta_str(stored, "namespace") != Some(ns.as_str()) {
            return false;
        }
    }
    if !filter.labels.matches(stored) {
        return false;
    }
    if rt.special == Special::EventsV1 {
        filter.fields.matches(&event_core_to_v1(stored))
    } else {
        filter.fields.matches(stored)
    }
}

/// How a change shows in a watch with this filter: an object entering the selection is
/// ADDED, one leaving it is DELETED (like kube-apiserver's watch cache); None when the
/// watch does not see it.
pub(crate) fn watch_event(
    rt: &ResourceType,
    filter: &Filter,
    change: &Change,
) -> Option<EventType> {
    if !change.key.starts_with(&rt.key_prefix()) {
        return None;
    }
    let now = matches(rt, filter, &change.object);
    let before = change.prev.as_ref().map(|p| matches(rt, filter, p));
    match (change.kind, before, now) {
        (EventType::Modified, Some(false), true) => Some(EventType::Added),
        (EventType::Modified, Some(true), false) => Some(EventType::Deleted),
        (_, _, true) => Some(change.kind),
        _ => None,
    }
}

/// Which resourceVersion a list is served at (`resourceVersion` and
/// `resourceVersionMatch`, or a continue token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListAt {
    /// The newest state (no resourceVersion, or "0").
    Latest,
    /// At least this new: served at the newest state; newer than the server's is 504.
    NotOlderThan(u64),
    /// Exactly this one: 410 Gone when compacted, 504 when newer than the server's.
    Exact(u64),
    /// The resourceVersion of a continue token: 410 Expired when compacted.
    Continue(u64),
}

/// For every key under `prefix` changed after `rv`: its state at `rv` (None: absent).
/// Walks the history newest first, so the oldest change after `rv` decides.
fn undo_after(
    inner: &Inner,
    prefix: &str,
    rv: u64,
) -> Result<BTreeMap<String, Option<Arc<Value>>>, ApiError> {
    let mut undo = BTreeMap::new();
    for c in inner.history.iter().rev() {
        if c.rv <= rv {
            break;
        }
        if !c.key.starts_with(prefix) {
            continue;
        }
        let before = match (c.kind, &c.prev) {
            (EventType::Added, _) => None,
            (_, Some(p)) => Some(p.clone()),
            // A change recorded before the store kept previous states: the state at
            // `rv` is unknown, so the snapshot cannot be served.
            (_, None) => return Err(ApiError::ContinueExpired),
        };
        undo.insert(c.key.clone(), before);
    }
    Ok(undo)
}

/// Merges two key-ordered sequences; on equal keys the second (the undo overlay) wins.
fn merge_sorted<'a, A, B>(a: A, b: B) -> impl Iterator<Item = (&'a str, Option<&'a Arc<Value>>)>
where
    A: Iterator<Item = (&'a str, Option<&'a Arc<Value>>)>,
    B: Iterator<Item = (&'a str, Option<&'a Arc<Value>>)>,
{
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => match x.0.cmp(y.0) {
            std::cmp::Ordering::Less => a.next(),
            std::cmp::Ordering::Greater => b.next(),
            std::cmp::Ordering::Equal => {
                a.next();
                b.next()
            }
        },
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// Continue tokens are opaque to clients: hex of `{rv}/{last key}`.
pub(super) fn encode_continue(rv: u64, key: &str) -> String {
    format!("{rv}/{key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn decode_continue(tok: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::BadRequest("continue key is not valid".into());
    if !tok.len().is_multiple_of(2) || !tok.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..tok.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&tok[i..i + 2], 16))
        .collect();
    let text = String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    let (rv, key) = text.split_once('/').ok_or_else(bad)?;
    Ok((rv.parse().map_err(|_| bad())?, key.to_string()))
}
