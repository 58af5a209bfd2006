//! Measures user-data write and read throughput through the spa against the raw file on
//! the same filesystem, for stripe, mirror and raidz (1 MiB and 4 KiB blocks, 4 writer
//! threads, one sync at the end). Ignored by the suite, since timing on shared CI
//! machines is not a pass/fail signal: `cargo test --release -p cstor-pool --test
//! spa_perf -- --ignored --nocapture`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use cstor_pool::spa::{GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::store::{AllocClass, BlockStore};

const TOTAL: u64 = 512 * 1024 * 1024;
const THREADS: u64 = 4;

fn mk(dir: &std::path::Path, name: &str, size: u64) -> String {
    let p = dir.join(name);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.set_len(size).unwrap();
    p.to_string_lossy().into_owned()
}

fn raw(dir: &std::path::Path, bs: usize) -> f64 {
    let p = mk(dir, "raw.img", TOTAL + (64 << 20));
    let f = Arc::new(OpenOptions::new().read(true).write(true).open(&p).unwrap());
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..THREADS {
            let f = f.clone();
            s.spawn(move || {
                let buf = vec![0x5Au8; bs];
                let per = TOTAL / THREADS;
                let mut off = th * per;
                while off < (th + 1) * per {
                    f.write_all_at(&buf, off).unwrap();
                    off += bs as u64;
                }
            });
        }
    });
    f.sync_data().unwrap();
    let mbs = TOTAL as f64 / t.elapsed().as_secs_f64() / 1e6;
    std::fs::remove_file(p).unwrap();
    mbs
}

fn pool(dir: &std::path::Path, kind: GroupKind, n: usize, bs: usize) -> (f64, f64) {
    let amp = match kind {
        GroupKind::Stripe => 1.0,
        GroupKind::Mirror => n as f64,
        GroupKind::Raidz => n as f64 / (n as f64 - 1.0),
        GroupKind::Raidz2 => n as f64 / (n as f64 - 2.0),
    };
    let per_dev = ((TOTAL as f64 * amp / n as f64) as u64) * 5 / 4 + (64 << 20);
    let paths: Vec<String> = (0..n)
        .map(|i| mk(dir, &format!("{kind:?}{i}.img"), per_dev))
        .collect();
    let spa = Arc::new(
        Spa::create(
            "bench",
            &[GroupSpec {
                kind,
                devices: paths.clone(),
                log: false,
            }],
            SpaOptions::default(),
        )
        .unwrap(),
    );
    let t = Instant::now();
    let dvas = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let spa = spa.clone();
                s.spawn(move || {
                    let buf = vec![0x5Au8; bs];
                    let mut out = Vec::new();
                    for _ in 0..(TOTAL / THREADS / bs as u64) {
                        let dva = spa.alloc(bs as u32, AllocClass::Data, 1).unwrap();
                        spa.write(dva, &buf).unwrap();
                        out.push(dva);
                    }
                    out
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    spa.sync(1, b"bench").unwrap();
    let w = TOTAL as f64 / t.elapsed().as_secs_f64() / 1e6;
    let t = Instant::now();
    let ok = |b: &[u8]| b[0] == 0x5A;
    for d in &dvas {
        spa.read(*d, bs as u32, &ok).unwrap();
    }
    let r = TOTAL as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop(spa);
    for p in paths {
        std::fs::remove_file(p).unwrap();
    }
    (w, r)
}

#[test]
#[ignore = "benchmark"]
fn bench_write_throughput_against_raw_file() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sizes: Vec<usize> = match std::env::var("CSTOR_SPA_BENCH_BS") {
        Ok(v) => v.split(',').filter_map(|x| x.parse().ok()).collect(),
        Err(_) => vec![1024 * 1024, 128 * 1024, 4096],
    };
    for bs in sizes {
        let raw_mbs = raw(dir.path(), bs);
        println!("bs {bs}: raw file write {raw_mbs:.0} MB/s");
        for (kind, n) in [
            (GroupKind::Stripe, 1),
            (GroupKind::Mirror, 2),
            (GroupKind::Raidz, 3),
        ] {
            let amp = match kind {
                GroupKind::Mirror => n as f64,
                GroupKind::Raidz => n as f64 / (n as f64 - 1.0),
                _ => 1.0,
            };
            let (w, r) = pool(dir.path(), kind, n, bs);
            println!(
                "bs {bs}: {kind:?} x{n}: write {w:.0} MB/s ({:.2} of raw/amp), read {r:.0} MB/s",
                w / (raw_mbs / amp)
            );
        }
    }
}
