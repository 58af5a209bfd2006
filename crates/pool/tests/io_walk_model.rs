//! The io-range walk against a model: random writes, UNMAPs (hole records keep their io),
//! commits and snapshots on a volume, mirrored in a map block -> io; for random (a, b]
//! the walk's ranges must cover exactly the blocks whose io lies in (a, b], on the head
//! (its dirty blocks and UNMAP ranges walked live, no commit) and on every snapshot; the
//! metadata-only listing must give each such block its io and whether it is a hole.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{opts, pattern};
use cstor_pool::memstore::MemStore;
use cstor_pool::{Compression, Pool};
use proptest::prelude::*;

const BS: u64 = 4096;

/// Block -> (io, hole).
type Model = BTreeMap<u64, (u64, bool)>;
const BLOCKS: u64 = 2048;

#[derive(Clone, Debug)]
enum Op {
    Write { blk: u64, n: u64 },
    Unmap { blk: u64, n: u64 },
    Sync,
    Snap,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..BLOCKS, 1..8u64).prop_map(|(blk, n)| Op::Write { blk, n }),
        2 => (0..BLOCKS, 1..300u64).prop_map(|(blk, n)| Op::Unmap { blk, n }),
        1 => Just(Op::Sync),
        1 => Just(Op::Snap),
    ]
}

fn blocks_of(pool: &Pool, target: &str, a: u64, b: u64) -> BTreeMap<u64, ()> {
    let mut got = BTreeMap::new();
    for r in pool.changed_between_vec(target, a, Some(b)).unwrap() {
        assert!(
            r.io_number_max > a && r.io_number_max <= b,
            "{r:?} outside ({a}, {b}]"
        );
        for blk in r.offset / BS..(r.offset + r.len) / BS {
            assert!(got.insert(blk, ()).is_none(), "block {blk} listed twice");
        }
    }
    got
}

fn want(model: &BTreeMap<u64, (u64, bool)>, a: u64, b: u64) -> BTreeMap<u64, ()> {
    model
        .iter()
        .filter(|(_, (io, _))| *io > a && *io <= b)
        .map(|(blk, _)| (*blk, ()))
        .collect()
}

/// Block -> (io, hole) from the metadata-only listing.
fn listed(pool: &Pool, target: &str, a: u64, b: u64) -> BTreeMap<u64, (u64, bool)> {
    let mut got = BTreeMap::new();
    let mut end = 0;
    for x in pool.block_ios_between_vec(target, a, Some(b)).unwrap() {
        assert!(x.offset >= end, "{x:?} out of order");
        end = x.offset + x.len;
        assert!(x.hole || x.len == BS, "{x:?}: a data entry is one block");
        for blk in x.offset / BS..(x.offset + x.len) / BS {
            assert!(
                got.insert(blk, (x.io, x.hole)).is_none(),
                "block {blk} listed twice"
            );
        }
    }
    got
}

fn want_listed(model: &BTreeMap<u64, (u64, bool)>, a: u64, b: u64) -> BTreeMap<u64, (u64, bool)> {
    model
        .iter()
        .filter(|(_, (io, _))| *io > a && *io <= b)
        .map(|(blk, v)| (*blk, *v))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn io_range_walk_matches_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        bounds in proptest::collection::vec((0..80u64, 0..80u64), 4),
    ) {
        let pool = Pool::create(Arc::new(MemStore::new(1 << 30)), opts()).unwrap();
        let v = pool
            .create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
            .unwrap();
        // Block -> io of the newest write or UNMAP touching it, and whether that was an
        // UNMAP (never-touched: absent).
        let mut model: Model = BTreeMap::new();
        let mut snaps: Vec<(String, Model)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Write { blk, n } => {
                    let n = (*n).min(BLOCKS - blk);
                    let io = v.next_io().unwrap();
                    v.write(blk * BS, &pattern(io, (n * BS) as usize), Some(io)).unwrap();
                    for b in *blk..blk + n {
                        model.insert(b, (io, false));
                    }
                }
                Op::Unmap { blk, n } => {
                    let n = (*n).min(BLOCKS - blk);
                    let io = v.next_io().unwrap();
                    v.unmap(blk * BS, n * BS, Some(io)).unwrap();
                    for b in *blk..blk + n {
                        model.insert(b, (io, true));
                    }
                }
                Op::Sync => {
                    pool.sync().unwrap();
                }
                Op::Snap => {
                    let name = format!("s{i}");
                    pool.snapshot("v", &name).unwrap();
                    snaps.push((name, model.clone()));
                }
            }
        }
        for (a, b) in &bounds {
            let (a, b) = (*a.min(b), *a.max(b));
            let dirty = pool.dirty_bytes();
            prop_assert_eq!(blocks_of(&pool, "v", a, b), want(&model, a, b), "head ({}, {}]", a, b);
            prop_assert_eq!(listed(&pool, "v", a, b), want_listed(&model, a, b), "head ({}, {}]", a, b);
            prop_assert_eq!(pool.dirty_bytes(), dirty, "a walk committed");
            for (name, m) in &snaps {
                prop_assert_eq!(
                    blocks_of(&pool, &format!("v@{name}"), a, b),
                    want(m, a, b),
                    "{} ({}, {}]", name, a, b
                );
                prop_assert_eq!(
                    listed(&pool, &format!("v@{name}"), a, b),
                    want_listed(m, a, b),
                    "{} ({}, {}]", name, a, b
                );
            }
        }
    }
}
