//! Property test of volume I/O, snapshots, clones, rollback and destroy against an
//! in-memory model (a byte array per volume and per snapshot), with commits and reopens
//! mixed in, and a leak check (allocated == live) at the end of every case.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use cstor_pool::memstore::MemStore;
use cstor_pool::{Compression, Pool};
use proptest::prelude::*;

const VOL_BYTES: u64 = 256 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Write {
        vol: usize,
        off: u64,
        len: u64,
        seed: u64,
    },
    Unmap {
        vol: usize,
        off: u64,
        len: u64,
    },
    Snapshot {
        vol: usize,
    },
    Rollback {
        vol: usize,
        which: usize,
    },
    Clone {
        vol: usize,
    },
    DestroySnapshot {
        vol: usize,
        which: usize,
    },
    DestroyVolume {
        vol: usize,
    },
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 0..VOL_BYTES / 512, 1..80u64, any::<u64>())
            .prop_map(|(vol, o, l, seed)| Op::Write { vol, off: o * 512, len: l * 512, seed }),
        2 => (0..4usize, 0..VOL_BYTES / 512, 1..200u64)
            .prop_map(|(vol, o, l)| Op::Unmap { vol, off: o * 512, len: l * 512 }),
        2 => (0..4usize).prop_map(|vol| Op::Snapshot { vol }),
        2 => (0..4usize, 0..8usize).prop_map(|(vol, which)| Op::Rollback { vol, which }),
        1 => (0..4usize).prop_map(|vol| Op::Clone { vol }),
        1 => (0..4usize, 0..4usize).prop_map(|(vol, which)| Op::DestroySnapshot { vol, which }),
        1 => (0..4usize).prop_map(|vol| Op::DestroyVolume { vol }),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    vols: BTreeMap<String, Vec<u8>>,
    snaps: BTreeMap<String, Vec<(String, Vec<u8>)>>,
    origin: BTreeMap<String, String>,
    next: u64,
}

fn check(pool: &Pool, m: &Model) {
    let names: Vec<String> = pool.list_volumes().into_iter().map(|v| v.name).collect();
    let want: Vec<String> = m.vols.keys().cloned().collect();
    assert_eq!(names, want);
    for (name, data) in &m.vols {
        let v = pool.volume(name).unwrap();
        let mut buf = vec![0u8; data.len()];
        v.read(0, &mut buf).unwrap();
        assert!(buf == *data, "volume {name} differs from the model");
        for (s, sdata) in &m.snaps[name] {
            let mut buf = vec![0u8; sdata.len()];
            pool.read_snapshot(name, s, 0, &mut buf).unwrap();
            assert!(buf == *sdata, "snapshot {name}@{s} differs from the model");
        }
    }
}

fn run(ops: Vec<Op>, bs: u32, comp: Compression) {
    let store = Arc::new(MemStore::new(1 << 30));
    let mut pool = Pool::create(store.clone(), opts()).unwrap();
    let mut m = Model::default();
    for name in ["a", "b"] {
        pool.create_volume(name, VOL_BYTES, Some(bs), Some(comp))
            .unwrap();
        m.vols.insert(name.into(), vec![0u8; VOL_BYTES as usize]);
        m.snaps.insert(name.into(), Vec::new());
    }
    for op in ops {
        let names: Vec<String> = m.vols.keys().cloned().collect();
        let pick = |i: usize| names.get(i % names.len().max(1)).cloned();
        match op {
            Op::Write {
                vol,
                off,
                len,
                seed,
            } => {
                let Some(name) = pick(vol) else { continue };
                let len = len.min(VOL_BYTES - off);
                let data = pattern(seed, len as usize);
                pool.volume(&name)
                    .unwrap()
                    .write(off, &data, Some(seed))
                    .unwrap();
                m.vols.get_mut(&name).unwrap()[off as usize..(off + len) as usize]
                    .copy_from_slice(&data);
            }
            Op::Unmap { vol, off, len } => {
                let Some(name) = pick(vol) else { continue };
                let len = len.min(VOL_BYTES - off);
                pool.volume(&name).unwrap().unmap(off, len, None).unwrap();
                m.vols.get_mut(&name).unwrap()[off as usize..(off + len) as usize].fill(0);
            }
            Op::Snapshot { vol } => {
                let Some(name) = pick(vol) else { continue };
                m.next += 1;
                let s = format!("s{}", m.next);
                pool.snapshot(&name, &s).unwrap();
                let data = m.vols[&name].clone();
                m.snaps.get_mut(&name).unwrap().push((s, data));
            }
            Op::Rollback { vol, which } => {
                // Even `which`: the newest snapshot with plain rollback; odd: any
                // snapshot, destroying the newer ones unless one has clones.
                let Some(name) = pick(vol) else { continue };
                let snaps = m.snaps[&name].clone();
                if snaps.is_empty() {
                    continue;
                }
                let i = if which % 2 == 0 {
                    snaps.len() - 1
                } else {
                    (which / 2) % snaps.len()
                };
                let (s, data) = snaps[i].clone();
                let newer: Vec<String> = snaps[i + 1..].iter().map(|(x, _)| x.clone()).collect();
                let cloned = newer
                    .iter()
                    .any(|x| m.origin.values().any(|o| *o == format!("{name}@{x}")));
                if newer.is_empty() {
                    pool.rollback(&name, &s).unwrap();
                } else if cloned {
                    let e = pool.rollback_destroying_newer(&name, &s).unwrap_err();
                    assert!(e.to_string().contains("has clones"), "{e}");
                    continue;
                } else {
                    let mut destroyed = pool.rollback_destroying_newer(&name, &s).unwrap();
                    destroyed.reverse();
                    assert_eq!(destroyed, newer);
                    m.snaps.get_mut(&name).unwrap().truncate(i + 1);
                }
                m.vols.insert(name, data);
            }
            Op::Clone { vol } => {
                let Some(name) = pick(vol) else { continue };
                let Some((s, data)) = m.snaps[&name].last().cloned() else {
                    continue;
                };
                m.next += 1;
                let c = format!("c{}", m.next);
                pool.clone_snapshot(&name, &s, &c).unwrap();
                m.vols.insert(c.clone(), data);
                m.snaps.insert(c.clone(), Vec::new());
                m.origin.insert(c, format!("{name}@{s}"));
            }
            Op::DestroySnapshot { vol, which } => {
                let Some(name) = pick(vol) else { continue };
                let snaps = &m.snaps[&name];
                if snaps.is_empty() {
                    continue;
                }
                let (s, _) = snaps[which % snaps.len()].clone();
                let full = format!("{name}@{s}");
                let has_clones = m.origin.values().any(|o| *o == full);
                let r = pool.destroy_snapshot(&name, &s);
                if has_clones {
                    let e = r.unwrap_err().to_string();
                    assert!(e.contains("has clones"), "{e}");
                } else {
                    r.unwrap();
                    m.snaps.get_mut(&name).unwrap().retain(|(x, _)| *x != s);
                }
            }
            Op::DestroyVolume { vol } => {
                let Some(name) = pick(vol) else { continue };
                let prefix = format!("{name}@");
                let has_clones = m.origin.values().any(|o| o.starts_with(&prefix));
                let r = pool.destroy_volume(&name);
                if has_clones {
                    assert!(r.is_err());
                } else {
                    r.unwrap();
                    m.vols.remove(&name);
                    m.snaps.remove(&name);
                    m.origin.remove(&name);
                }
            }
            Op::Sync => {
                pool.sync().unwrap();
            }
            Op::Reopen => {
                pool.close().unwrap();
                pool = reopen(&store);
            }
        }
        check(&pool, &m);
    }
    check_no_leaks(&store, &pool);
    // Destroying everything returns all data space.
    let mut names: Vec<String> = m.vols.keys().cloned().collect();
    while !names.is_empty() {
        names.retain(|n| {
            let prefix = format!("{n}@");
            let has_clones = m.origin.values().any(|o| o.starts_with(&prefix));
            if has_clones {
                return true;
            }
            pool.destroy_volume(n).unwrap();
            m.origin.remove(n);
            false
        });
    }
    check_no_leaks(&store, &pool);
    let left = store.allocated_blocks().len();
    assert!(left <= 4, "{left} blocks left after destroying everything");
}

/// Cases per run: 48 in the suite, more with `CSTOR_PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("CSTOR_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn volumes_snapshots_clones_match_the_model(
        ops in proptest::collection::vec(op(), 1..40),
        bs in prop_oneof![Just(4096u32), Just(16384u32), Just(65536u32)],
        comp in prop_oneof![Just(Compression::Off), Just(Compression::Lz4), Just(Compression::Zstd)],
    ) {
        run(ops, bs, comp);
    }
}
