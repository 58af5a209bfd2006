//! Power cuts through the real file I/O code (a raidz pool on three device files inside a
//! cstor-powercut mount) against the replication records (issue 8 item 2): one thread
//! writes io-numbered 4 KiB blocks, flushes, raises the epoch and sets checkpoints while
//! background commits run; the power goes at a random moment, and after each import:
//! - the epoch is at least the last one `set_epoch` acknowledged (it never goes back);
//! - the checkpoint is one that was set, and every write with io up to it (any round)
//!   reads back, or a newer write of its block: it never claims writes that vanished;
//! - every write of the round with io up to the highest `flush_point` read reads back;
//! - each block's bytes are those of the write `read_with_io` names.
//!
//! CI mode: `CI_CUTS` cuts (a few seconds). Long mode: CSTOR_POWERCUT_RECORD_CUTS=N. A
//! failure names the round and the base seed; CSTOR_POWERCUT_SEED=<base> replays it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cstor_pool::spa::{GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::{Compression, Pool, PoolOptions, VolumeHandle};
use cstor_powercut::{seed_base, PowerCut, Rng, SEED_ENV};

const DEV: u64 = 48 << 20;
const BS: u64 = 4096;
const BLOCKS: u64 = 1024;
const CI_CUTS: u64 = 24;

fn paths(pc: &PowerCut) -> Vec<String> {
    (0..3)
        .map(|i| {
            pc.path()
                .join(format!("r{i}.img"))
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn sopts() -> SpaOptions {
    SpaOptions {
        force: true,
        io_timeout: Duration::from_secs(20),
    }
}

fn popts(rng: &mut Rng) -> PoolOptions {
    PoolOptions {
        cache_bytes: 8 << 20,
        dirty_max_bytes: 4 << 20,
        txg_interval: Duration::from_millis(10 + rng.below(80)),
        background_commit: true,
        ..PoolOptions::default()
    }
}

fn block_data(blk: u64, io: u64) -> Vec<u8> {
    let mut x = (io ^ (blk << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut d: Vec<u8> = (0..BS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    d[..8].copy_from_slice(&io.to_le_bytes());
    d[8..16].copy_from_slice(&blk.to_le_bytes());
    d
}

/// What one round's writer did and saw.
#[derive(Default)]
struct Seen {
    /// (block, io) of every write that returned Ok, in order.
    writes: Mutex<Vec<(u64, u64)>>,
    epoch_acked: AtomicU64,
    checkpoints: Mutex<Vec<u64>>,
    flush_point: AtomicU64,
    stop: AtomicBool,
}

fn writer(v: &VolumeHandle, seen: &Seen, seed: u64) {
    let mut rng = Rng::new(seed);
    while !seen.stop.load(Ordering::SeqCst) {
        let r = match rng.below(20) {
            0..=11 => {
                let Ok(io) = v.next_io() else { break };
                let blk = rng.below(BLOCKS);
                v.write(blk * BS, &block_data(blk, io), Some(io)).map(|()| {
                    seen.writes.lock().unwrap().push((blk, io));
                })
            }
            12..=15 => v.flush(),
            16 | 17 => {
                let e = seen.epoch_acked.load(Ordering::SeqCst) + 1;
                v.set_epoch(e)
                    .map(|()| seen.epoch_acked.store(e, Ordering::SeqCst))
            }
            _ => {
                // Every write with io up to the last one was applied before this call.
                let last = seen.writes.lock().unwrap().last().map_or(0, |w| w.1);
                seen.checkpoints.lock().unwrap().push(last);
                v.set_checkpoint(last)
            }
        };
        if r.is_err() {
            break;
        }
        seen.flush_point
            .fetch_max(v.flush_point(), Ordering::SeqCst);
    }
}

#[test]
fn records_survive_power_cuts_through_the_file_layer() {
    let Some(pc) = PowerCut::for_test("records_survive_power_cuts_through_the_file_layer") else {
        return;
    };
    let cuts: u64 = std::env::var("CSTOR_POWERCUT_RECORD_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_CUTS);
    let base = seed_base(0x0008_0002);
    let replay = format!("{SEED_ENV}={base}");
    let mut rng = Rng::new(base);
    for p in paths(&pc) {
        std::fs::File::create(&p).unwrap().set_len(DEV).unwrap();
    }
    {
        let spa = Arc::new(
            Spa::create(
                "rec",
                &[GroupSpec {
                    kind: GroupKind::Raidz,
                    devices: paths(&pc),
                    log: false,
                }],
                sopts(),
            )
            .unwrap(),
        );
        let pool = Pool::create(spa, popts(&mut rng)).unwrap();
        pool.create_volume("v", BLOCKS * BS, Some(BS as u32), Some(Compression::Off))
            .unwrap();
        pool.close().unwrap();
    }
    // Per round: the blocks' ios its import showed, and its writes; every checkpoint
    // ever set with its round; the highest epoch ever acknowledged.
    let mut shown: Vec<Vec<u64>> = Vec::new();
    let mut rounds: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut ckpts: Vec<(u64, usize)> = vec![(0, 0)];
    let mut epoch_acked = 0u64;
    let ctl = pc.control();
    for round in 0..=cuts {
        let ctx = format!("round {round} (replay with {replay})");
        let spa = Arc::new(Spa::import("rec", &paths(&pc), sopts()).unwrap());
        let pool = Pool::open(spa.clone(), popts(&mut rng))
            .unwrap_or_else(|e| panic!("{ctx}: import: {e}"));
        let v = pool.volume("v").unwrap();
        let rec = v.records();
        assert!(
            rec.epoch >= epoch_acked,
            "{ctx}: epoch {} < acked {epoch_acked}",
            rec.epoch
        );
        let Some(&(_, c_round)) = ckpts.iter().find(|c| c.0 == rec.checkpoint) else {
            panic!("{ctx}: checkpoint {} never set", rec.checkpoint)
        };
        if round > 0 {
            assert!(
                !rec.last_shutdown_clean,
                "{ctx}: a cut is no clean shutdown"
            );
        }
        let mut buf = vec![0u8; (BLOCKS * BS) as usize];
        let ios = v.read_with_io(0, &mut buf).unwrap();
        // What the checkpoint covers: the state its round started from and that round's
        // writes up to it (a checkpoint covers the writes applied before it was set).
        let mut need = vec![0u64; BLOCKS as usize];
        if let Some(start) = shown.get(c_round) {
            need.clone_from(start);
        }
        for &(blk, io) in rounds.get(c_round).into_iter().flatten() {
            if io <= rec.checkpoint {
                need[blk as usize] = need[blk as usize].max(io);
            }
        }
        let mut now = vec![0u64; BLOCKS as usize];
        for blk in 0..BLOCKS {
            let b = &buf[(blk * BS) as usize..((blk + 1) * BS) as usize];
            let got = if b.iter().all(|&x| x == 0) {
                0
            } else {
                u64::from_le_bytes(b[..8].try_into().unwrap())
            };
            if got != 0 {
                assert!(
                    b == block_data(blk, got),
                    "{ctx}: block {blk} torn or foreign"
                );
            }
            assert_eq!(
                ios[blk as usize], got,
                "{ctx}: block {blk}: io and bytes differ"
            );
            assert!(
                got >= need[blk as usize],
                "{ctx}: block {blk} holds io {got}, below io {} that the checkpoint {} \
                 (set in round {c_round}) covers",
                need[blk as usize],
                rec.checkpoint
            );
            if let Some(prev) = shown.last() {
                assert!(got >= prev[blk as usize], "{ctx}: block {blk} went back");
            }
            now[blk as usize] = got;
        }
        shown.push(now);
        if round == cuts {
            break;
        }
        let seen = Seen::default();
        let delay = Duration::from_millis(20 + rng.below(150));
        let seed = base ^ round.wrapping_mul(0x9E37_79B9);
        std::thread::scope(|s| {
            let w = s.spawn(|| writer(&v, &seen, seed));
            std::thread::sleep(delay);
            ctl.cut(seed);
            seen.stop.store(true, Ordering::SeqCst);
            w.join().unwrap();
        });
        let writes = seen.writes.into_inner().unwrap();
        let fp = seen.flush_point.load(Ordering::SeqCst);
        let covered = writes.iter().filter(|w| w.1 <= fp).map(|w| w.1).max();
        ckpts.extend(
            seen.checkpoints
                .into_inner()
                .unwrap()
                .into_iter()
                .map(|c| (c, round as usize)),
        );
        rounds.push(writes.clone());
        epoch_acked = epoch_acked.max(seen.epoch_acked.load(Ordering::SeqCst));
        drop(v);
        drop(pool);
        drop(spa);
        pc.power_on();
        // Check the flush point's promise at once, on its own import.
        if let Some(fp_io) = covered {
            let spa = Arc::new(Spa::import("rec", &paths(&pc), sopts()).unwrap());
            let pool = Pool::open(spa, popts(&mut rng))
                .unwrap_or_else(|e| panic!("{ctx}: import after the cut: {e}"));
            let v = pool.volume("v").unwrap();
            let mut b = vec![0u8; BS as usize];
            let mut need = std::collections::BTreeMap::new();
            for &(blk, io) in writes.iter().filter(|w| w.1 <= fp_io) {
                need.insert(blk, io);
            }
            for (blk, io) in need {
                let got = v.read_with_io(blk * BS, &mut b).unwrap()[0];
                assert!(
                    got >= io,
                    "{ctx}: block {blk} holds io {got}, below io {io} under the flush point {fp}"
                );
            }
            drop(v);
            // Closed without a cut; the next round imports it again.
            drop(pool);
        }
    }
}
