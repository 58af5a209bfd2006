//! Crash by SIGKILL: a child process (this test binary, re-run in child mode) holds a
//! raidz pool on sparse files with background txg commits, and writes 4 KiB-aligned
//! ranges of 4-32 KiB into a 16 KiB-block volume (so partial blocks go through
//! read-modify-write), flushing now and then and printing `acked N` after each flush
//! returns. The parent kills it at a random moment, imports the pool from its files and
//! checks that the volume equals the model after exactly K writes for some K at or
//! after the last acknowledged flush: nothing acknowledged is lost and nothing is
//! reordered or half-applied. Rounds: 8, `CSTOR_CRASH_ROUNDS` for more (e.g. 200).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_pool::spa::testdev::SeededRng;
use cstor_pool::spa::{GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::{Pool, PoolOptions};

const DEV: u64 = 64 << 20;
const VOL: u64 = 4 << 20;
const UNIT: u64 = 4096;
const UNITS: usize = (VOL / UNIT) as usize;
const SECTOR: usize = 512;
const SECTORS_PER_UNIT: usize = UNIT as usize / SECTOR;
/// The child never issues more writes than this, so the parent's search is bounded.
const MAX_WRITES: u64 = 200_000;
const CHILD_ENV: &str = "CSTOR_KILL_CHILD_DIR";

/// Write number `n` (1-based) of the sequence for `seed`: first unit and unit count.
fn sequence(seed: u64) -> impl Iterator<Item = (usize, usize)> {
    let mut rng = SeededRng::new(seed);
    (0..MAX_WRITES).map(move |_| {
        let len = 1 + rng.below(8) as usize;
        let first = rng.below((UNITS - len + 1) as u64) as usize;
        (first, len)
    })
}

/// Every 512-byte sector written by write `n` carries `n` and its sector index, so the
/// parent can tell which write each sector came from (the crash model allows the write
/// in flight to land torn at sector granularity, as on any disk).
fn unit_bytes(n: u64, unit: usize) -> Vec<u8> {
    let mut b = vec![0u8; UNIT as usize];
    for (i, sector) in b.chunks_mut(SECTOR).enumerate() {
        let index = (unit * SECTORS_PER_UNIT + i) as u64;
        for chunk in sector.chunks_mut(16) {
            chunk[..8].copy_from_slice(&n.to_le_bytes());
            chunk[8..].copy_from_slice(&index.to_le_bytes());
        }
    }
    b
}

/// Which write sector `index` read back came from (0: never written); None if garbage.
fn sector_origin(b: &[u8], index: usize) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let n = u64::from_le_bytes(b[..8].try_into().ok()?);
    let i = u64::from_le_bytes(b[8..16].try_into().ok()?);
    (i == index as u64 && b.chunks(16).all(|c| c == &b[..16])).then_some(n)
}

fn paths(dir: &std::path::Path) -> Vec<String> {
    (0..3)
        .map(|i| dir.join(format!("d{i}.img")).to_string_lossy().into_owned())
        .collect()
}

fn sopts() -> SpaOptions {
    SpaOptions {
        force: false,
        io_timeout: Duration::from_secs(10),
    }
}

fn popts() -> PoolOptions {
    PoolOptions {
        cache_bytes: 4 << 20,
        dirty_max_bytes: 2 << 20,
        txg_interval: Duration::from_millis(30),
        background_commit: true,
        ..PoolOptions::default()
    }
}

/// Child mode: create the pool, write and flush until killed.
fn child(dir: &std::path::Path, seed: u64) {
    let ps = paths(dir);
    for p in &ps {
        std::fs::File::create(p).unwrap().set_len(DEV).unwrap();
    }
    let spa = Spa::create(
        "killed",
        &[GroupSpec {
            kind: GroupKind::Raidz,
            devices: ps,
            log: false,
        }],
        sopts(),
    )
    .unwrap();
    let pool = Pool::create(Arc::new(spa), popts()).unwrap();
    let vol = pool.create_volume("v", VOL, Some(16384), None).unwrap();
    pool.sync().unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut rng = SeededRng::new(seed ^ 0x5eed);
    for (i, (first, len)) in sequence(seed).enumerate() {
        let n = i as u64 + 1;
        let mut data = Vec::with_capacity(len * UNIT as usize);
        for u in first..first + len {
            data.extend_from_slice(&unit_bytes(n, u));
        }
        vol.write(first as u64 * UNIT, &data, Some(n)).unwrap();
        if rng.below(8) == 0 {
            pool.flush().unwrap();
            writeln!(out, "acked {n}").unwrap();
            out.flush().unwrap();
        }
    }
    // Never reached in practice: the parent kills long before MAX_WRITES.
    std::thread::sleep(Duration::from_secs(3600));
}

/// One round: run the child, kill it, import and check the prefix property.
/// Returns the number of acknowledged writes (0 if killed before the first flush).
fn round(seed: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_loses_nothing_acknowledged",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .env("CSTOR_KILL_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = c.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = 0u64;
        let mut ready = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                ready = true;
            } else if let Some(n) = line.strip_prefix("acked ") {
                acked = n.trim().parse().unwrap();
            }
        }
        (ready, acked)
    });
    // Kill somewhere between 50 ms and 1 s into the writes (after creation).
    let mut rng = SeededRng::new(seed);
    let delay = Duration::from_millis(50 + rng.below(950));
    let start = Instant::now();
    while start.elapsed() < delay {
        if let Ok(Some(st)) = c.try_wait() {
            panic!("child exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    c.kill().unwrap();
    c.wait().unwrap();
    let (ready, acked) = reader.join().unwrap();
    if !ready {
        // Killed while still creating the pool: nothing was promised.
        return 0;
    }
    let spa = Spa::import("killed", &paths(dir.path()), sopts()).unwrap();
    let pool = Pool::open(Arc::new(spa), popts()).unwrap();
    let vol = pool.volume("v").unwrap();
    let mut got = vec![0u8; VOL as usize];
    vol.read(0, &mut got).unwrap();
    let origin: Vec<u64> = got
        .chunks(SECTOR)
        .enumerate()
        .map(|(i, b)| {
            sector_origin(b, i).unwrap_or_else(|| {
                panic!(
                    "seed {seed}: sector {i} holds bytes no write made (acked {acked}): {:?}",
                    &b[..16]
                )
            })
        })
        .collect();
    // Walk the model forward, counting sectors that differ from what was read. The
    // state must be the model after some K >= acked writes, or that plus part of write
    // K+1 (the one in flight: a write is atomic only per sector, as on any disk).
    let mut model = vec![0u64; UNITS * SECTORS_PER_UNIT];
    let mut seq =
        sequence(seed).map(|(first, len)| (first * SECTORS_PER_UNIT, len * SECTORS_PER_UNIT));
    for n in 1..=acked {
        let (first, len) = seq.next().unwrap();
        model[first..first + len].fill(n);
    }
    let newest = origin.iter().copied().max().unwrap_or(0);
    let mut differ = model.iter().zip(&origin).filter(|(m, o)| m != o).count();
    let mut k = acked;
    let consistent = loop {
        if differ == 0 {
            break true;
        }
        let Some((first, len)) = seq.next() else {
            break false;
        };
        let torn = (first..first + len)
            .filter(|&u| origin[u] == k + 1 && model[u] != origin[u])
            .count();
        if torn == differ {
            break true;
        }
        k += 1;
        if k > newest {
            break false;
        }
        for u in first..first + len {
            differ -= usize::from(model[u] != origin[u]);
            model[u] = k;
            differ += usize::from(model[u] != origin[u]);
        }
    };
    assert!(
        consistent,
        "seed {seed}: volume is not the state after any K >= {acked} acknowledged writes"
    );
    eprintln!("seed {seed}: {acked} writes acknowledged, state after {k}, newest {newest}");
    pool.close().unwrap();
    acked
}

#[test]
fn sigkill_loses_nothing_acknowledged() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let seed = std::env::var("CSTOR_KILL_SEED").unwrap().parse().unwrap();
        child(std::path::Path::new(&dir), seed);
        return;
    }
    let rounds: u64 = std::env::var("CSTOR_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let base: u64 = std::env::var("CSTOR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b11);
    let with_acks = (0..rounds).filter(|r| round(base + r) > 0).count();
    // A test that never got past pool creation proves nothing.
    assert!(
        with_acks * 2 >= rounds as usize,
        "only {with_acks} of {rounds} rounds reached a flush"
    );
}
