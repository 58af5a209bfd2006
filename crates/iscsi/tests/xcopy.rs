//! EXTENDED COPY and RECEIVE COPY RESULTS as a raw initiator sees them: a copy within the
//! LU read back over iSCSI and on disk, an overlapping copy, COPY STATUS for the list
//! identifier, an unknown copy target, and DATA PROTECT on a read-only LU.
#![allow(clippy::big_endian_bytes)] // SCSI parameter fields are big-endian.

mod initiator;
use initiator::*;
use std::sync::Arc;

const IQN: &str = "iqn.2024-01.io.cstor.test:xcopy";
const INI: &str = "iqn.2024-01.io.cstor.test:initiator";

/// The NAA designator (type 3) VPD 0x83 reports: (code set, value).
async fn naa_of(ini: &mut Ini) -> (u8, Vec<u8>) {
    let r = ini.scsi(&[0x12, 0x01, 0x83, 0x01, 0x00, 0], 256, &[]).await;
    assert_eq!(r.status, 0);
    let mut at = 4;
    while at + 4 <= r.data.len() {
        let len = usize::from(r.data[at + 3]);
        if r.data[at + 1] & 0x3f == 0x03 {
            return (r.data[at] & 0x0f, r.data[at + 4..at + 4 + len].to_vec());
        }
        at += 4 + len;
    }
    panic!("no NAA designator in VPD 0x83");
}

/// A parameter list with one identification target descriptor and block-to-block
/// segments (src lba, dst lba, blocks), all on target 0.
fn param_list(list_id: u8, naa: &(u8, Vec<u8>), segs: &[(u64, u64, u16)]) -> Vec<u8> {
    let segs: Vec<_> = segs.iter().map(|&(s, d, n)| (0, 0, s, d, n)).collect();
    param_list_n(list_id, std::slice::from_ref(naa), &segs)
}

/// A parameter list naming `naas` as targets 0.. and segments (src target, dst target,
/// src lba, dst lba, blocks).
fn param_list_n(
    list_id: u8,
    naas: &[(u8, Vec<u8>)],
    segs: &[(u16, u16, u64, u64, u16)],
) -> Vec<u8> {
    let mut t = Vec::new();
    for naa in naas {
        let mut d = vec![0u8; 32];
        d[0] = 0xe4;
        d[4] = naa.0;
        d[5] = 0x03;
        d[7] = naa.1.len() as u8;
        d[8..8 + naa.1.len()].copy_from_slice(&naa.1);
        d[30] = 0x02; // disk block length 512
        t.extend_from_slice(&d);
    }
    let mut s = Vec::new();
    for &(si, di, src, dst, blocks) in segs {
        let mut d = vec![0u8; 28];
        d[0] = 0x02;
        d[3] = 0x18;
        d[4..6].copy_from_slice(&si.to_be_bytes());
        d[6..8].copy_from_slice(&di.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src.to_be_bytes());
        d[20..28].copy_from_slice(&dst.to_be_bytes());
        s.extend_from_slice(&d);
    }
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    p[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
    put32(&mut p, 8, s.len() as u32);
    p.extend_from_slice(&t);
    p.extend_from_slice(&s);
    p
}

fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    put32(&mut c, 10, len as u32);
    c
}

fn copy_status_cdb(list_id: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x84;
    c[2] = list_id;
    put32(&mut c, 10, 1024);
    c
}

fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
    (0..blocks * 512)
        .map(|i| (i / 512) as u8 ^ seed ^ (i % 7) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_copies_a_range_and_reports_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 1, 1], false)
        .await
        .unwrap();
    let naa = naa_of(&mut ini).await;

    // 3000 blocks (more than two 1 MiB chunks) from LBA 0 to LBA 20000.
    let data = pattern(3000, 0x5a);
    for (i, part) in data.chunks(256 * 512).enumerate() {
        let cdb = cdb_rw(0x2a, (i * 256) as u32, (part.len() / 512) as u16);
        assert_eq!(ini.scsi(&cdb, 0, part).await.status, 0);
    }
    let p = param_list(9, &naa, &[(0, 20000, 3000)]);
    let r = ini.scsi(&xcopy_cdb(p.len()), 0, &p).await;
    assert_eq!(r.status, 0, "sense {:?}", r.sense_key());
    let r = ini.scsi(&copy_status_cdb(9), 1024, &[]).await;
    assert_eq!(r.status, 0);
    assert_eq!(r.data[4], 0x01, "completed without errors");
    assert_eq!(u16::from_be_bytes([r.data[5], r.data[6]]), 1);
    assert_eq!((r.data[7], get32(&r.data, 8)), (0, 3000 * 512));
    let r = ini.scsi(&copy_status_cdb(9), 1024, &[]).await;
    assert_eq!(r.sense_key(), (5, 0x24, 0x00), "status is reported once");

    let mut back = Vec::new();
    for i in 0..12u32 {
        let n = if i == 11 { 3000 - 11 * 256 } else { 256 };
        let r = ini
            .scsi(&cdb_rw(0x28, 20000 + i * 256, n as u16), n * 512, &[])
            .await;
        assert_eq!(r.status, 0);
        back.extend_from_slice(&r.data);
    }
    assert!(back == data, "copied blocks differ");
    let on_disk = std::fs::read(dir.path().join("lun.img")).unwrap();
    assert!(on_disk[20000 * 512..23000 * 512] == data[..]);

    // Overlapping copy forwards by 100 blocks: the result is the original range moved.
    let p = param_list(10, &naa, &[(0, 100, 3000)]);
    assert_eq!(ini.scsi(&xcopy_cdb(p.len()), 0, &p).await.status, 0);
    let on_disk = std::fs::read(dir.path().join("lun.img")).unwrap();
    assert!(
        on_disk[100 * 512..3100 * 512] == data[..],
        "overlap corrupted"
    );

    // CSCD ID F800h names this LU without a target descriptor.
    let p = param_list_n(12, &[], &[(0xf800, 0xf800, 100, 9000, 16)]);
    assert_eq!(ini.scsi(&xcopy_cdb(p.len()), 0, &p).await.status, 0);
    let on_disk = std::fs::read(dir.path().join("lun.img")).unwrap();
    assert!(on_disk[9000 * 512..9016 * 512] == data[..16 * 512]);

    // A designator of another LU is unreachable: COPY ABORTED, nothing written.
    let mut other = naa.clone();
    other.1[15] ^= 0xff;
    let p = param_list(11, &other, &[(0, 5000, 8)]);
    let r = ini.scsi(&xcopy_cdb(p.len()), 0, &p).await;
    assert_eq!(r.sense_key(), (0x0a, 0x08, 0x04));
    let on_disk = std::fs::read(dir.path().join("lun.img")).unwrap();
    assert!(on_disk[5000 * 512..5008 * 512].iter().all(|b| *b == 0));
    let r = ini.scsi(&copy_status_cdb(11), 1024, &[]).await;
    assert_eq!(r.data[4], 0x02, "held as completed with errors");

    // The Third-party Copy VPD page is listed and names RECEIVE COPY RESULTS COPY STATUS.
    let r = ini.scsi(&[0x12, 0x01, 0x00, 0x00, 0xff, 0], 255, &[]).await;
    assert!(r.data[4..].contains(&0x8f));
    let r = ini
        .scsi(&[0x12, 0x01, 0x8f, 0x04, 0x00, 0], 1024, &[])
        .await;
    assert_eq!((r.status, r.data[1]), (0, 0x8f));
    assert_eq!(
        &r.data[4..6],
        &[0x00, 0x01],
        "Supported Commands descriptor first"
    );
    assert!(r.data[8..16] == [7, 0x83, 1, 0, 0x84, 2, 0, 3]);

    // OPERATING PARAMETERS report the limits.
    let mut c = copy_status_cdb(0);
    c[1] = 0x03;
    let r = ini.scsi(&c, 1024, &[]).await;
    assert_eq!(r.status, 0);
    assert_eq!(u16::from_be_bytes([r.data[8], r.data[9]]), 8);
    assert_eq!(u16::from_be_bytes([r.data[10], r.data[11]]), 16);
    assert_eq!(get32(&r.data, 16), 16 << 20, "MAXIMUM SEGMENT LENGTH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_on_a_read_only_lu_is_data_protect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    let (_s, addr, _b) = start(dir.path(), IQN, |cfg| {
        cfg.backend = Arc::new(cstor_iscsi::FileBackend::open(&path, None, true).unwrap());
    })
    .await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 1, 2], false)
        .await
        .unwrap();
    let naa = naa_of(&mut ini).await;
    let p = param_list(1, &naa, &[(0, 100, 8)]);
    let r = ini.scsi(&xcopy_cdb(p.len()), 0, &p).await;
    assert_eq!(r.sense_key(), (0x07, 0x27, 0x00));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_between_two_targets_of_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, _b) = start(dir.path(), IQN, |_| {}).await;
    let iqn_b = "iqn.2024-01.io.cstor.test:xcopy-b";
    let path_b = dir.path().join("b.img");
    let backend_b =
        Arc::new(cstor_iscsi::FileBackend::open(&path_b, Some(8 << 20), false).unwrap());
    server
        .add_target(cstor_iscsi::TargetConfig::new(iqn_b, backend_b))
        .unwrap();
    let mut a = login(&addr, IQN, INI, [0x80, 0, 0, 0, 2, 1], false)
        .await
        .unwrap();
    let mut b = login(&addr, iqn_b, INI, [0x80, 0, 0, 0, 2, 1], false)
        .await
        .unwrap();
    let (naa_a, naa_b) = (naa_of(&mut a).await, naa_of(&mut b).await);
    assert_ne!(naa_a, naa_b);

    let data = pattern(64, 0x33);
    assert_eq!(a.scsi(&cdb_rw(0x2a, 10, 64), 0, &data).await.status, 0);
    let naas = [naa_a.clone(), naa_b.clone()];
    let p = param_list_n(1, &naas, &[(0, 1, 10, 1000, 64)]);
    let r = a.scsi(&xcopy_cdb(p.len()), 0, &p).await;
    assert_eq!(r.status, 0, "sense {:?}", r.sense_key());
    let r = b.scsi(&cdb_rw(0x28, 1000, 64), 64 * 512, &[]).await;
    assert!(r.data == data, "target B holds the copy");
    let on_disk = std::fs::read(&path_b).unwrap();
    assert!(on_disk[1000 * 512..1064 * 512] == data[..]);

    // The destination range must fit target B (8 MiB = 16384 blocks), not target A.
    let p = param_list_n(2, &naas, &[(0, 1, 0, 16380, 8)]);
    let r = a.scsi(&xcopy_cdb(p.len()), 0, &p).await;
    assert_eq!(r.sense_key().0, 0x0a, "beyond B's end is COPY ABORTED");

    // Another initiator reserves B: the copy may not write there for this initiator.
    let ini2 = "iqn.2024-01.io.cstor.test:other";
    let mut other = login(&addr, iqn_b, ini2, [0x80, 0, 0, 0, 2, 2], false)
        .await
        .unwrap();
    assert_eq!(other.scsi(&[0x16, 0, 0, 0, 0, 0], 0, &[]).await.status, 0);
    let p = param_list_n(3, &naas, &[(0, 1, 10, 2000, 64)]);
    let r = a.scsi(&xcopy_cdb(p.len()), 0, &p).await;
    assert_eq!(r.status, 0x18, "RESERVATION CONFLICT on the other target");
    let on_disk = std::fs::read(&path_b).unwrap();
    assert!(on_disk[2000 * 512..2064 * 512].iter().all(|x| *x == 0));
}

/// Throughput of one EXTENDED COPY of 256 MiB (16 segments of 16 MiB) on a file
/// target; a benchmark, so ignored by the suite: `cargo test --release -p cstor-iscsi
/// --test xcopy -- --ignored`. Checks the copy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn extended_copy_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.img");
    let seg_blocks = 32768u64;
    let total = 16 * seg_blocks * 512;
    let src: Vec<u8> = (0..total)
        .map(|i| (i / 4096) as u8 ^ (i % 13) as u8)
        .collect();
    let mut img = src.clone();
    img.resize(3 * total as usize, 0);
    std::fs::write(&path, &img).unwrap();
    drop(img);
    let backend = Arc::new(cstor_iscsi::FileBackend::open(&path, None, false).unwrap());
    let server = cstor_iscsi::Server::new();
    server
        .add_target(cstor_iscsi::TargetConfig::new(IQN, backend))
        .unwrap();
    let addr = listen(&server).await;
    let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 3, 1], false)
        .await
        .unwrap();
    let naa = naa_of(&mut ini).await;
    let dst0 = 2 * 16 * seg_blocks;
    let segs: Vec<(u64, u64, u16)> = (0..16)
        .map(|i| (i * seg_blocks, dst0 + i * seg_blocks, seg_blocks as u16))
        .collect();
    let p = param_list(1, &naa, &segs);
    let started = std::time::Instant::now();
    let r = ini.scsi(&xcopy_cdb(p.len()), 0, &p).await;
    let took = started.elapsed();
    assert_eq!(r.status, 0, "sense {:?}", r.sense_key());
    println!(
        "EXTENDED COPY of {} MiB in {:.2?}: {:.0} MiB/s",
        total >> 20,
        took,
        (total >> 20) as f64 / took.as_secs_f64()
    );
    let on_disk = std::fs::read(&path).unwrap();
    let d = dst0 as usize * 512;
    assert!(on_disk[d..d + total as usize] == src[..]);
}
