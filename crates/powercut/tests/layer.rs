//! The power-cut layer itself, through a real mount and std file I/O: synced data
//! survives every cut, unsynced data comes back old or new per 4 KiB sector, reads see
//! unsynced writes, a seed replays its cut, injected faults reach the caller, and nothing
//! lands after a cut. Seeds come from `CSTOR_POWERCUT_SEED` when set.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use cstor_powercut::{seed_base, PowerCut, Rng, SECTOR};

const S: usize = SECTOR as usize;

fn mount(test: &str) -> Option<PowerCut> {
    PowerCut::for_test(test)
}

/// Sector `i` of generation `g`: every byte says which it is.
fn sector(g: u8, i: usize) -> Vec<u8> {
    (0..S).map(|b| g ^ (i as u8) ^ (b as u8 & 0x0f)).collect()
}

fn image(g: u8, sectors: usize) -> Vec<u8> {
    (0..sectors).flat_map(|i| sector(g, i)).collect()
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

fn read_all(p: &Path) -> Vec<u8> {
    let mut b = Vec::new();
    File::open(p).unwrap().read_to_end(&mut b).unwrap();
    b
}

fn is_eio(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

#[test]
fn synced_data_survives_every_cut() {
    let Some(pc) = mount("synced_data_survives_every_cut") else {
        return;
    };
    let base = seed_base(0x5afe);
    let p = pc.path().join("dev.img");
    for round in 0..20u64 {
        let seed = base + round;
        let g = round as u8;
        // Sectors 0..32 synced in this round, 32..64 written after the sync only.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .unwrap();
        f.write_all_at(&image(g, 32), 0).unwrap();
        f.sync_data().unwrap();
        let before_tail = if round == 0 {
            vec![0u8; 32 * S]
        } else {
            read_all(&p)[32 * S..].to_vec()
        };
        let tail: Vec<u8> = (32..64)
            .flat_map(|i| sector(g.wrapping_add(100), i))
            .collect();
        f.write_all_at(&tail, 32 * S as u64).unwrap();
        let per_mille = [0u16, 500, 1000][round as usize % 3];
        let report = pc.control().cut_with(seed, per_mille);
        drop(f);
        pc.power_on();
        let got = read_all(&p);
        assert_eq!(got.len(), 64 * S, "seed {seed}: size");
        assert_eq!(
            &got[..32 * S],
            &image(g, 32)[..],
            "seed {seed}: synced data lost"
        );
        for i in 32..64 {
            let s = &got[i * S..(i + 1) * S];
            let old = &before_tail[(i - 32) * S..(i - 31) * S];
            assert!(
                s == sector(g.wrapping_add(100), i).as_slice() || s == old,
                "seed {seed}: sector {i} is neither old nor new"
            );
        }
        assert_eq!(report.survived + report.lost, 32, "seed {seed}: {report:?}");
        match per_mille {
            0 => assert_eq!(report.survived, 0, "seed {seed}"),
            1000 => assert_eq!(report.lost, 0, "seed {seed}"),
            _ => {}
        }
    }
}

#[test]
fn unsynced_data_is_old_or_new_per_sector_never_torn() {
    let Some(pc) = mount("unsynced_data_is_old_or_new_per_sector_never_torn") else {
        return;
    };
    let seed = seed_base(0x7041);
    let p = pc.path().join("dev.img");
    let n = 256;
    let old = image(1, n);
    {
        let mut f = File::create(&p).unwrap();
        f.write_all(&old).unwrap();
        f.sync_all().unwrap();
    }
    // Unaligned writes of 1..3 sectors' worth, so sectors are built from old + new bytes.
    let f = open_rw(&p);
    let mut model = old.clone();
    let mut rng = Rng::new(seed);
    for _ in 0..300 {
        let len = 1 + rng.below(3 * S as u64) as usize;
        let off = rng.below((n * S - len) as u64) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        f.write_all_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    assert_eq!(read_all(&p), model, "seed {seed}: reads before the cut");
    let report = pc.cut(seed);
    drop(f);
    pc.power_on();
    let got = read_all(&p);
    let (mut kept, mut lost) = (0, 0);
    for i in 0..n {
        let r = i * S..(i + 1) * S;
        if got[r.clone()] == model[r.clone()] && model[r.clone()] != old[r.clone()] {
            kept += 1;
        } else if got[r.clone()] == old[r.clone()] && model[r.clone()] != old[r.clone()] {
            lost += 1;
        } else {
            assert!(
                got[r.clone()] == model[r.clone()],
                "seed {seed}: sector {i} torn (neither all old nor all new)"
            );
        }
    }
    assert!(
        kept > 0 && lost > 0,
        "seed {seed}: half the sectors should survive: kept {kept}, lost {lost}, {report:?}"
    );
    assert_eq!(
        report.survived + report.lost,
        (kept + lost) as u64,
        "seed {seed}"
    );
}

#[test]
fn reads_see_unsynced_writes_and_the_backing_file_does_not() {
    let Some(pc) = mount("reads_see_unsynced_writes_and_the_backing_file_does_not") else {
        return;
    };
    let p = pc.path().join("f");
    std::fs::write(&p, image(1, 4)).unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    let f = open_rw(&p);
    f.write_all_at(b"hello", 4096 + 10).unwrap();
    // Another descriptor, as another process would, sees the write.
    let mut b = vec![0u8; 5];
    File::open(&p)
        .unwrap()
        .read_exact_at(&mut b, 4096 + 10)
        .unwrap();
    assert_eq!(&b, b"hello");
    // The durable state does not have it yet.
    let durable = std::fs::read(pc.backing().join("f")).unwrap();
    assert_eq!(durable, image(1, 4));
    assert_eq!(pc.control().unsynced_sectors(), 1);
    f.sync_data().unwrap();
    assert_eq!(pc.control().unsynced_sectors(), 0);
    let durable = std::fs::read(pc.backing().join("f")).unwrap();
    assert_eq!(&durable[4096 + 10..4096 + 15], b"hello");
    // A write past the end grows the file at once; the new sectors are volatile.
    f.write_all_at(&[7u8; 100], 5 * 4096 + 1).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 5 * 4096 + 101);
    let after = read_all(&p);
    assert_eq!(&after[5 * 4096 + 1..], &[7u8; 100][..]);
    assert!(after[4 * 4096..5 * 4096 + 1].iter().all(|&x| x == 0));
}

#[test]
fn the_same_seed_gives_the_same_result() {
    let Some(pc) = mount("the_same_seed_gives_the_same_result") else {
        return;
    };
    let seed = seed_base(0xd00d);
    let run = |seed: u64| -> Vec<u8> {
        let p = pc.path().join("dev.img");
        {
            let mut f = File::create(&p).unwrap();
            f.write_all(&image(3, 128)).unwrap();
            f.sync_all().unwrap();
        }
        let f = open_rw(&p);
        let mut rng = Rng::new(99);
        for _ in 0..200 {
            let off = rng.below(128 * S as u64 - 512) / 512 * 512;
            f.write_all_at(&[rng.next_u64() as u8; 512], off).unwrap();
        }
        pc.cut(seed);
        drop(f);
        pc.power_on();
        read_all(&p)
    };
    let a = run(seed);
    let b = run(seed);
    assert!(a == b, "seed {seed}: two cuts with the same seed differ");
    let c = run(seed ^ 0xffff);
    assert!(
        a != c,
        "seed {seed}: another seed gave the same 128 sectors"
    );
}

#[test]
fn a_failed_fsync_is_reported_and_its_data_never_becomes_durable() {
    let Some(pc) = mount("a_failed_fsync_is_reported_and_its_data_never_becomes_durable") else {
        return;
    };
    let ctl = pc.control();
    let p = pc.path().join("log.img");
    let other = pc.path().join("other.img");
    std::fs::write(&p, image(1, 8)).unwrap();
    std::fs::write(&other, image(1, 8)).unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    File::open(&other).unwrap().sync_all().unwrap();
    let f = open_rw(&p);
    let g = open_rw(&other);
    f.write_all_at(&sector(9, 2), 2 * SECTOR).unwrap();
    f.write_all_at(&sector(9, 3), 3 * SECTOR).unwrap();
    g.write_all_at(&sector(9, 2), 2 * SECTOR).unwrap();
    ctl.fail_next_fsync(Some(Path::new("log.img")));
    // Another file's fsync is not hit.
    g.sync_data().unwrap();
    let e = f
        .sync_data()
        .expect_err("the injected fsync failure must reach the caller");
    assert!(is_eio(&e), "{e}");
    assert_eq!(ctl.stats().fsync_faults, 1);
    // Still readable (cached, clean), and a later fsync succeeds without writing it.
    let mut b = vec![0u8; S];
    f.read_exact_at(&mut b, 2 * SECTOR).unwrap();
    assert_eq!(b, sector(9, 2));
    f.sync_data().unwrap();
    // Rewriting sector 3 makes it dirty again: that one is written back.
    f.write_all_at(&sector(10, 3), 3 * SECTOR).unwrap();
    f.sync_data().unwrap();
    // Even a cut that keeps every unsynced sector loses the failed write-back.
    pc.control().cut_with(1, 1000);
    drop((f, g));
    pc.power_on();
    let got = read_all(&p);
    assert_eq!(
        &got[2 * S..3 * S],
        &sector(1, 2)[..],
        "failed write-back landed"
    );
    assert_eq!(
        &got[3 * S..4 * S],
        &sector(10, 3)[..],
        "rewritten sector lost"
    );
    assert_eq!(&read_all(&other)[2 * S..3 * S], &sector(9, 2)[..]);
    // A fault on any file, then cleared.
    ctl.fail_fsyncs(None, 2);
    let f = open_rw(&p);
    f.write_all_at(b"x", 0).unwrap();
    assert!(f.sync_data().is_err());
    ctl.clear_faults();
    f.sync_data().unwrap();
}

#[test]
fn nothing_lands_after_a_cut_and_old_handles_stay_dead() {
    let Some(pc) = mount("nothing_lands_after_a_cut_and_old_handles_stay_dead") else {
        return;
    };
    let p = pc.path().join("f");
    std::fs::write(&p, image(1, 4)).unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    let f = open_rw(&p);
    pc.cut(5);
    assert!(pc.control().is_off());
    assert!(is_eio(&f.write_all_at(b"late", 0).unwrap_err()));
    assert!(is_eio(&f.sync_data().unwrap_err()));
    let mut b = [0u8; 4];
    assert!(f.read_exact_at(&mut b, 0).is_err());
    assert!(std::fs::write(pc.path().join("new"), b"x").is_err());
    // A second cut while off changes nothing.
    assert_eq!(pc.cut(6).survived + pc.cut(6).lost, 0);
    pc.power_on();
    // The handle from before the cut belongs to a dead process.
    assert!(is_eio(&f.write_all_at(b"late", 0).unwrap_err()));
    assert_eq!(read_all(&p), image(1, 4));
    let g = open_rw(&p);
    g.write_all_at(b"new!", 0).unwrap();
    g.sync_data().unwrap();
    assert_eq!(&read_all(&p)[..4], b"new!");
}

#[test]
fn sync_opens_write_through_and_metadata_is_durable_at_once() {
    let Some(pc) = mount("sync_opens_write_through_and_metadata_is_durable_at_once") else {
        return;
    };
    let dir = pc.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let p = dir.join("store.pr");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DSYNC)
        .open(&p)
        .unwrap();
    f.write_all_at(&image(4, 3), 0).unwrap();
    // Temp + rename: the rename is durable at once, as are the O_DSYNC writes.
    std::fs::rename(&p, dir.join("store")).unwrap();
    let t = dir.join("trunc");
    std::fs::write(&t, image(5, 4)).unwrap();
    File::open(&t).unwrap().sync_all().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&t)
        .unwrap()
        .set_len(SECTOR + 100)
        .unwrap();
    pc.control().cut_with(7, 0);
    drop(f);
    pc.power_on();
    assert!(!p.exists());
    assert_eq!(read_all(&dir.join("store")), image(4, 3));
    let got = read_all(&t);
    assert_eq!(got.len(), S + 100);
    assert_eq!(&got[..], &image(5, 2)[..S + 100]);
    // Entries list, unlink works.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_file(dir.join("store")).unwrap();
    std::fs::remove_file(&t).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn injected_read_errors_and_stalls() {
    let Some(pc) = mount("injected_read_errors_and_stalls") else {
        return;
    };
    let ctl = pc.control();
    let p = pc.path().join("dev.img");
    std::fs::write(&p, image(1, 8)).unwrap();
    ctl.fail_reads(Path::new("dev.img"), 3 * SECTOR..3 * SECTOR + 1);
    let f = open_rw(&p);
    let mut b = vec![0u8; S];
    f.read_exact_at(&mut b, 2 * SECTOR).unwrap();
    let e = f.read_exact_at(&mut b, 3 * SECTOR).unwrap_err();
    assert!(is_eio(&e), "{e}");
    ctl.clear_faults();
    f.read_exact_at(&mut b, 3 * SECTOR).unwrap();
    // A stall delays ops on that file only.
    ctl.stall(Some(&p), Duration::from_millis(1000));
    let t = Instant::now();
    std::fs::write(pc.path().join("other"), b"x").unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    f.write_all_at(b"slow", 0).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // A cut during a stall fails the stalled op at once.
    ctl.stall(None, Duration::from_secs(30));
    let ctl2 = ctl.clone();
    let cutter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        ctl2.cut(3)
    });
    let t = Instant::now();
    let e = f.write_all_at(b"late", 0).unwrap_err();
    assert!(is_eio(&e) || e.kind() == ErrorKind::Other, "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    cutter.join().unwrap();
    ctl.clear_faults();
    pc.power_on();
}

#[test]
fn ops_in_flight_finish_before_the_cut_resolves() {
    let Some(pc) = mount("ops_in_flight_finish_before_the_cut_resolves") else {
        return;
    };
    let seed = seed_base(0xf11e);
    // Writers hammer a file while a cut comes; every write that returned Ok before the
    // cut began is in the overlay or the file, never half-applied within a sector.
    let p = pc.path().join("dev.img");
    std::fs::write(&p, vec![0u8; 64 * S]).unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let p = p.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let f = open_rw(&p);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let i = (n % 16) as usize + 16 * w as usize;
                    let g = (n % 251) as u8 + 1;
                    if f.write_all_at(&vec![g; S], (i * S) as u64).is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let report = pc.cut(seed);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
    pc.power_on();
    let got = read_all(&p);
    for (i, s) in got.chunks(S).enumerate() {
        assert!(
            s.iter().all(|&x| x == s[0]),
            "seed {seed}: sector {i} torn after {total} writes ({report:?})"
        );
    }
    assert!(total > 10, "seed {seed}: only {total} writes");
}

#[test]
fn concurrent_writers_keep_every_synced_write_across_cuts() {
    let Some(pc) = mount("concurrent_writers_keep_every_synced_write_across_cuts") else {
        return;
    };
    let base = seed_base(0xc0c0);
    // Two files shared by four threads, each thread owning its own sectors; one fsync
    // covers every write of that file that returned before it started, whoever made it.
    let files: Vec<_> = (0..2).map(|i| pc.path().join(format!("f{i}"))).collect();
    for f in &files {
        std::fs::write(f, vec![0u8; 64 * S]).unwrap();
        File::open(f).unwrap().sync_all().unwrap();
    }
    let mut floor = vec![vec![0u8; 64]; 2];
    for round in 0..30u64 {
        let seed = base + round;
        let clock = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4usize)
            .map(|t| {
                let (clock, stop) = (clock.clone(), stop.clone());
                let files = files.clone();
                let mut gen0 = floor.clone();
                std::thread::spawn(move || {
                    let fds: Vec<File> = files.iter().map(|p| open_rw(p)).collect();
                    let mut rng = Rng::new(seed ^ t as u64);
                    // (file, sector, gen, done clock, covered by a completed fsync)
                    let mut log: Vec<(usize, usize, u8, u64)> = Vec::new();
                    let mut fsynced: Vec<(usize, u64)> = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let f = rng.below(2) as usize;
                        let s = t * 16 + rng.below(16) as usize;
                        let g = gen0[f][s].wrapping_add(1).max(1);
                        gen0[f][s] = g;
                        if fds[f].write_all_at(&vec![g; S], (s * S) as u64).is_err() {
                            break;
                        }
                        let done = clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        log.push((f, s, g, done));
                        if rng.below(2) == 0 {
                            let sf = rng.below(2) as usize;
                            let start = clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if fds[sf].sync_data().is_err() {
                                break;
                            }
                            fsynced.push((sf, start));
                        }
                    }
                    (log, fsynced)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5 + Rng::new(seed).below(40)));
        pc.cut(seed);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let results: Vec<_> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        pc.power_on();
        let bound: Vec<u64> = (0..2)
            .map(|f| {
                results
                    .iter()
                    .flat_map(|(_, fs)| fs.iter().filter(|x| x.0 == f).map(|x| x.1))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (f, path) in files.iter().enumerate() {
            let got = read_all(path);
            for s in 0..64 {
                let sec = &got[s * S..(s + 1) * S];
                assert!(sec.iter().all(|&x| x == sec[0]), "seed {seed}: torn sector");
                let writes: Vec<(u8, u64)> = results
                    .iter()
                    .flat_map(|(l, _)| l.iter())
                    .filter(|w| w.0 == f && w.1 == s)
                    .map(|w| (w.2, w.3))
                    .collect();
                let covered = writes.iter().rposition(|w| w.1 < bound[f]);
                let allowed: Vec<u8> = match covered {
                    Some(i) => writes[i..].iter().map(|w| w.0).collect(),
                    None => std::iter::once(floor[f][s])
                        .chain(writes.iter().map(|w| w.0))
                        .collect(),
                };
                assert!(
                    allowed.contains(&sec[0]),
                    "seed {seed}: file {f} sector {s} reads {} allowed {allowed:?}",
                    sec[0]
                );
                floor[f][s] = sec[0];
            }
        }
    }
}
