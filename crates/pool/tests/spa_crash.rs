//! Guards durability under power cuts: a workload of writes, frees and syncs runs on
//! power-cut devices until the power goes off at a random device operation (also in the
//! middle of a sync); the crash image (unflushed writes dropped, torn or kept, in any
//! order) is imported, and then: the root is at least the last sync that returned, every
//! block it names reads back intact, and no live block is free in the allocator. The pool
//! then continues from the crash image into the next round.
//! Rounds: 12 by default; set CSTOR_CRASH_ROUNDS (e.g. 200) for the long mode.

use std::sync::Arc;
use std::time::Duration;

use cstor_pool::spa::testdev::{PowerCutDevice, PowerSwitch, SeededRng};
use cstor_pool::spa::{Device, GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::store::{AllocClass, BlockStore, Dva};
use xxhash_rust::xxh3::xxh3_64;

const DEV: u64 = 16 * 1024 * 1024;

#[derive(Clone, Debug)]
struct Live {
    dva: Dva,
    len: u32,
    sum: u64,
}

fn encode_manifest(live: &[Live]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(live.len() as u64).to_le_bytes());
    for l in live {
        b.extend_from_slice(&l.dva.vdev.to_le_bytes());
        b.extend_from_slice(&l.dva.offset.to_le_bytes());
        b.extend_from_slice(&l.dva.asize.to_le_bytes());
        b.extend_from_slice(&l.len.to_le_bytes());
        b.extend_from_slice(&l.sum.to_le_bytes());
    }
    b.resize(b.len().div_ceil(4096) * 4096, 0);
    b
}

fn decode_manifest(b: &[u8]) -> Vec<Live> {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let n = u64_at(0) as usize;
    (0..n)
        .map(|i| {
            let o = 8 + i * 32;
            Live {
                dva: Dva {
                    vdev: u32_at(o),
                    offset: u64_at(o + 4),
                    asize: u64_at(o + 12),
                },
                len: u32_at(o + 20),
                sum: u64_at(o + 24),
            }
        })
        .collect()
}

fn root_of(m: &Live) -> Vec<u8> {
    encode_manifest(std::slice::from_ref(m))[..40].to_vec()
}

fn opts() -> SpaOptions {
    SpaOptions {
        force: false,
        io_timeout: Duration::from_secs(10),
    }
}

/// Runs txgs until the power is off; returns the last txg whose sync returned Ok.
fn workload(
    spa: &Spa,
    switch: &PowerSwitch,
    rng: &mut SeededRng,
    live: &mut Vec<Live>,
    manifest: &mut Option<Live>,
    mut txg: u64,
) -> Option<u64> {
    let mut durable = None;
    for _ in 0..40 {
        txg += 1;
        for _ in 0..rng.below(6) {
            let len = 4096 * (1 + rng.below(8) as u32);
            let mut d = vec![0u8; len as usize];
            rng.fill(&mut d);
            let Ok(dva) = spa.alloc(len, AllocClass::Data, txg) else {
                break;
            };
            if spa.write(dva, &d).is_err() {
                return durable;
            }
            live.push(Live {
                dva,
                len,
                sum: xxh3_64(&d),
            });
        }
        while live.len() > 30 {
            let i = rng.below(live.len() as u64) as usize;
            let l = live.swap_remove(i);
            spa.free(l.dva, txg);
        }
        let m = encode_manifest(live);
        let Ok(mdva) = spa.alloc(m.len() as u32, AllocClass::Metadata, txg) else {
            return durable;
        };
        if spa.write(mdva, &m).is_err() {
            return durable;
        }
        if let Some(old) = manifest.take() {
            spa.free(old.dva, txg);
        }
        let ml = Live {
            dva: mdva,
            len: m.len() as u32,
            sum: xxh3_64(&m),
        };
        *manifest = Some(ml.clone());
        let ok = spa.sync(txg, &root_of(&ml)).is_ok();
        if switch.is_off() {
            return durable;
        }
        assert!(ok, "sync failed with power on");
        durable = Some(txg);
    }
    durable
}

fn check_pool(spa: &Spa, min_txg: Option<u64>) -> (u64, Vec<Live>, Live) {
    let (txg, root) = spa.last_root().expect("a root after the first sync");
    if let Some(min) = min_txg {
        assert!(
            txg >= min,
            "root txg {txg} older than the last completed sync {min}"
        );
    }
    let m = &decode_manifest(&root)[0];
    let mb = spa
        .read(m.dva, m.len, &|b: &[u8]| xxh3_64(b) == m.sum)
        .expect("manifest readable");
    let live = decode_manifest(&mb);
    for l in &live {
        let got = spa.read(l.dva, l.len, &|b: &[u8]| xxh3_64(b) == l.sum);
        assert!(got.is_ok(), "live block {:?} unreadable after crash", l.dva);
    }
    // No block both free and in use.
    for l in live.iter().chain(std::iter::once(m)) {
        assert!(
            spa.is_allocated(l.dva),
            "live block {:?} is free after import",
            l.dva
        );
    }
    (txg, live, m.clone())
}

fn run(kind: GroupKind, n: usize, rounds: u64, seed: u64) {
    let mut rng = SeededRng::new(seed);
    let mut images: Vec<Vec<u8>> = vec![vec![0u8; DEV as usize]; n];
    let mut created = false;
    let mut state: Option<(u64, Vec<Live>, Live)> = None;
    for round in 0..rounds {
        let switch = PowerSwitch::never();
        let devs: Vec<Arc<PowerCutDevice>> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                PowerCutDevice::with_switch(&format!("pc{i}"), img.clone(), switch.clone())
            })
            .collect();
        let dyns: Vec<Arc<dyn Device>> =
            devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
        let spa = if created {
            Spa::import_devices("tank", dyns, opts())
                .unwrap_or_else(|e| panic!("round {round}: import failed: {e}"))
        } else {
            created = true;
            let spa = Spa::create_on(
                "tank",
                vec![GroupSpec {
                    kind,
                    devices: dyns,
                    log: false,
                }],
                opts(),
            )
            .unwrap();
            for d in &devs {
                d.flush().unwrap();
            }
            spa
        };
        let (mut live, mut manifest, txg) = match &state {
            Some((txg, live, m)) => (live.clone(), Some(m.clone()), *txg),
            None => (Vec::new(), None, 0),
        };
        switch.cut_after(1 + rng.below(400));
        let durable = workload(&spa, &switch, &mut rng, &mut live, &mut manifest, txg);
        switch.cut_after(0);
        drop(spa);
        let crash_seed = rng.next_u64();
        images = devs
            .iter()
            .enumerate()
            .map(|(i, d)| d.crash_image(crash_seed.wrapping_add(i as u64)))
            .collect();
        // Import the crash image and check it.
        let devs2: Vec<Arc<dyn Device>> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                PowerCutDevice::from_image(&format!("pc{i}"), img.clone()) as Arc<dyn Device>
            })
            .collect();
        let spa = Spa::import_devices("tank", devs2, opts())
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): import failed: {e}"));
        if spa.last_root().is_none() {
            assert!(
                durable.is_none() && state.is_none(),
                "round {round}: root lost"
            );
            continue;
        }
        state = Some(check_pool(&spa, durable.or(state.as_ref().map(|s| s.0))));
    }
}

fn rounds() -> u64 {
    std::env::var("CSTOR_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

#[test]
fn power_cuts_on_raidz_never_lose_synced_state() {
    run(GroupKind::Raidz, 3, rounds(), 1);
}

#[test]
fn power_cuts_on_mirror_never_lose_synced_state() {
    run(GroupKind::Mirror, 2, rounds(), 2);
}

#[test]
fn power_cuts_on_stripe_never_lose_synced_state() {
    run(GroupKind::Stripe, 2, rounds(), 3);
}

#[test]
fn power_cut_during_config_changes_leaves_an_importable_pool() {
    for seed in 0..24u64 {
        let switch = PowerSwitch::never();
        let devs: Vec<Arc<PowerCutDevice>> = (0..4)
            .map(|i| {
                PowerCutDevice::with_switch(
                    &format!("cfg{i}"),
                    vec![0u8; DEV as usize],
                    switch.clone(),
                )
            })
            .collect();
        let dyns: Vec<Arc<dyn Device>> =
            devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
        let spa = Spa::create_on(
            "tank",
            vec![GroupSpec {
                kind: GroupKind::Mirror,
                devices: dyns[..2].to_vec(),
                log: false,
            }],
            opts(),
        )
        .unwrap();
        let mut blocks = Vec::new();
        for i in 0..5u64 {
            let mut d = vec![0u8; 8192];
            SeededRng::new(seed * 10 + i).fill(&mut d);
            let dva = spa.alloc(8192, AllocClass::Data, 1).unwrap();
            spa.write(dva, &d).unwrap();
            blocks.push((dva, xxh3_64(&d)));
        }
        spa.sync(1, b"1").unwrap();
        let mut rng = SeededRng::new(seed);
        switch.cut_after(rng.below(40));
        let _ = if seed % 2 == 0 {
            spa.replace_device("cfg0", dyns[2].clone())
        } else {
            spa.add_group(GroupSpec {
                kind: GroupKind::Mirror,
                devices: dyns[2..].to_vec(),
                log: false,
            })
        };
        switch.cut_after(0);
        drop(spa);
        let images: Vec<Arc<dyn Device>> = devs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                PowerCutDevice::from_image(&format!("cfg{i}"), d.crash_image(seed + i as u64))
                    as Arc<dyn Device>
            })
            .collect();
        // Devices that never got a label are simply not passed (as a user would not).
        let labelled: Vec<Arc<dyn Device>> = images
            .into_iter()
            .filter(|d| cstor_pool::spa::device::probe_existing_data(d.as_ref()).is_some())
            .collect();
        let spa = Spa::import_devices("tank", labelled, opts())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(spa.last_root().unwrap().0, 1, "seed {seed}");
        for (dva, sum) in &blocks {
            spa.read(*dva, 8192, &|b: &[u8]| xxh3_64(b) == *sum)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }
}
