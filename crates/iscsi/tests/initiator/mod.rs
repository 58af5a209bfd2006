//! A minimal raw iSCSI initiator for tests: login (operational stage only), SCSI commands
//! with immediate data and R2T handling, digests. Only what the tests need.
#![allow(dead_code, unused_macros, unused_imports, clippy::big_endian_bytes)] // iSCSI fields are big-endian by RFC 7143.

use bytes::Bytes;
use cstor_iscsi::pdu::{self, op, Digests, OutPdu, Pdu, StatSn};
use cstor_iscsi::text;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub struct Ini {
    pub s: TcpStream,
    pub digests: Digests,
    pub cmd_sn: u32,
    pub itt: u32,
    pub exp_stat_sn: u32,
}

pub struct Reply {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
}

impl Reply {
    pub fn sense_key(&self) -> (u8, u8, u8) {
        if self.sense.len() < 14 {
            return (0, 0, 0);
        }
        (self.sense[2] & 0x0f, self.sense[12], self.sense[13])
    }
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
pub fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub async fn send(s: &mut TcpStream, mut p: OutPdu, d: Digests) {
    let mut buf = Vec::new();
    pdu::write_pdu(&mut buf, &mut p, d).await.unwrap();
    s.write_all(&buf).await.unwrap();
}

/// Sends one leading login request (CSG operational, NSG full feature, transit) with
/// `keys` and returns the login response.
pub async fn login_exchange(s: &mut TcpStream, isid: [u8; 6], keys: &[(&str, &str)]) -> Pdu {
    let mut p = OutPdu::new(op::LOGIN | 0x40, 0x80 | (1 << 2) | 3, StatSn::None);
    p.bhs[8..14].copy_from_slice(&isid);
    put32(&mut p.bhs, 16, 1);
    let keys: Vec<(String, String)> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p.data = Bytes::from(text::encode(&keys));
    send(s, p, Digests::default()).await;
    let r = pdu::read_pdu(s, 1 << 20, Digests::default()).await.unwrap();
    assert_eq!(r.opcode(), op::LOGIN_RSP);
    r
}

/// Logs in; returns the initiator or the login status (class, detail).
pub async fn login(
    addr: &str,
    target: &str,
    initiator: &str,
    isid: [u8; 6],
    digests: bool,
) -> Result<Ini, (u8, u8)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let d = if digests { "CRC32C" } else { "None" };
    let r = login_exchange(
        &mut s,
        isid,
        &[
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("HeaderDigest", d),
            ("DataDigest", d),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "Yes"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("FirstBurstLength", "65536"),
            ("MaxBurstLength", "262144"),
        ],
    )
    .await;
    if r.bhs[36] != 0 {
        return Err((r.bhs[36], r.bhs[37]));
    }
    let pairs = text::parse(&r.data).unwrap();
    let on = |k: &str| pairs.iter().any(|(kk, v)| kk == k && v == "CRC32C");
    Ok(Ini {
        s,
        digests: Digests {
            header: on("HeaderDigest"),
            data: on("DataDigest"),
        },
        cmd_sn: r.u32_at(28),
        itt: 100,
        exp_stat_sn: r.u32_at(24).wrapping_add(1),
    })
}

/// Logs in a discovery session offering `mrdsl`; returns the stream and the next CmdSN.
pub async fn discovery_login(addr: &str, mrdsl: u32) -> (TcpStream, u32) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let r = login_exchange(
        &mut s,
        [0x80, 0, 0, 0, 0, 9],
        &[
            ("InitiatorName", "iqn.2024-01.io.cstor.test:discoverer"),
            ("SessionType", "Discovery"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", &mrdsl.to_string()),
        ],
    )
    .await;
    assert_eq!(r.bhs[36], 0, "discovery login accepted");
    (s, r.u32_at(28))
}

impl Ini {
    /// Sends a one-block WRITE(10) of `fill` at `lba` with immediate data, without waiting
    /// for its response.
    pub async fn send_write(&mut self, itt: u32, lba: u32, fill: u8) {
        let mut p = OutPdu::new(op::SCSI_CMD, 0xa0, StatSn::None);
        put32(&mut p.bhs, 16, itt);
        put32(&mut p.bhs, 20, 512);
        put32(&mut p.bhs, 24, self.cmd_sn);
        p.bhs[32..42].copy_from_slice(&cdb_rw(0x2a, lba, 1));
        p.data = Bytes::from(vec![fill; 512]);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        send(&mut self.s, p, Digests::default()).await;
    }

    /// Runs one SCSI command; data-out goes as immediate data, the rest on R2T.
    pub async fn scsi(&mut self, cdb: &[u8], read_len: u32, data_out: &[u8]) -> Reply {
        self.itt += 1;
        let itt = self.itt;
        let mut flags = 0x80u8;
        if read_len > 0 {
            flags |= 0x40;
        }
        if !data_out.is_empty() {
            flags |= 0x20;
        }
        let mut p = OutPdu::new(op::SCSI_CMD, flags, StatSn::None);
        put32(&mut p.bhs, 16, itt);
        put32(&mut p.bhs, 20, read_len.max(data_out.len() as u32));
        put32(&mut p.bhs, 24, self.cmd_sn);
        put32(&mut p.bhs, 28, self.exp_stat_sn);
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        let imm = data_out.len().min(65536);
        p.data = Bytes::copy_from_slice(&data_out[..imm]);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        send(&mut self.s, p, self.digests).await;
        let mut data = Vec::new();
        loop {
            let r = self.read().await.expect("response");
            match r.opcode() {
                op::DATA_IN => {
                    data.extend_from_slice(&r.data);
                    if r.bhs[1] & 0x01 != 0 {
                        self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
                        return Reply {
                            status: r.bhs[3],
                            data,
                            sense: Vec::new(),
                        };
                    }
                }
                op::R2T => {
                    let ttt = r.u32_at(20);
                    let off = r.u32_at(40) as usize;
                    let len = r.u32_at(44) as usize;
                    for (sn, chunk_off) in (off..off + len).step_by(65536).enumerate() {
                        let end = (chunk_off + 65536).min(off + len);
                        let mut d = OutPdu::new(
                            op::DATA_OUT,
                            if end == off + len { 0x80 } else { 0 },
                            StatSn::None,
                        );
                        put32(&mut d.bhs, 16, itt);
                        put32(&mut d.bhs, 20, ttt);
                        put32(&mut d.bhs, 36, sn as u32);
                        put32(&mut d.bhs, 40, chunk_off as u32);
                        d.data = Bytes::copy_from_slice(&data_out[chunk_off..end]);
                        send(&mut self.s, d, self.digests).await;
                    }
                }
                op::SCSI_RSP => {
                    self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
                    let sense = if r.data.len() > 2 {
                        r.data[2..].to_vec()
                    } else {
                        Vec::new()
                    };
                    return Reply {
                        status: r.bhs[3],
                        data,
                        sense,
                    };
                }
                op::NOP_IN => {}
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    pub async fn read(&mut self) -> Result<Pdu, pdu::PduError> {
        pdu::read_pdu(&mut self.s, 1 << 20, self.digests).await
    }
}

pub fn cdb_rw(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    put32(&mut c, 2, lba);
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A server with one file target on a free port; returns (server, addr, backend).
pub async fn start(
    dir: &std::path::Path,
    iqn: &str,
    tweak: impl FnOnce(&mut cstor_iscsi::TargetConfig),
) -> (
    Arc<cstor_iscsi::Server>,
    String,
    Arc<cstor_iscsi::FileBackend>,
) {
    let backend = Arc::new(
        cstor_iscsi::FileBackend::open(&dir.join("lun.img"), Some(16 << 20), false).unwrap(),
    );
    let mut cfg = cstor_iscsi::TargetConfig::new(iqn, backend.clone());
    tweak(&mut cfg);
    let server = cstor_iscsi::Server::new();
    server.add_target(cfg).unwrap();
    let addr = listen(&server).await;
    (server, addr, backend)
}

/// Serves `server` on a free loopback port in a background task; returns the address.
pub async fn listen(server: &Arc<cstor_iscsi::Server>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(server.clone().serve(l));
    addr
}

// Each test file uses some of these; the allow above covers the rest.
// Pieces every test backend (a `BlockBackend` with an `id: BackendIdentity` field) shares,
// so each test spells out only the behaviour it is about.

/// `identity` from the `id` field, a 1 MiB size, writable.
macro_rules! fixed_lu {
    () => {
        fn identity(&self) -> &cstor_iscsi::BackendIdentity {
            &self.id
        }
        fn size_bytes(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            false
        }
    };
}
pub(crate) use fixed_lu;

/// `read` that returns zeros.
macro_rules! zero_read {
    () => {
        fn read(
            &self,
            _c: &cstor_iscsi::IoCtx,
            _o: u64,
            len: u32,
        ) -> cstor_iscsi::BackendFuture<'_, bytes::Bytes> {
            Box::pin(async move { Ok(bytes::Bytes::from(vec![0u8; len as usize])) })
        }
    };
}
pub(crate) use zero_read;

/// `write` that succeeds at once and keeps nothing.
macro_rules! ignored_write {
    () => {
        fn write(
            &self,
            _c: &cstor_iscsi::IoCtx,
            _o: u64,
            _d: bytes::Bytes,
        ) -> cstor_iscsi::BackendFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
    };
}
pub(crate) use ignored_write;

/// `flush` that succeeds at once.
macro_rules! instant_flush {
    () => {
        fn flush(&self, _c: &cstor_iscsi::IoCtx) -> cstor_iscsi::BackendFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
    };
}
pub(crate) use instant_flush;

/// `unmap` that succeeds at once and frees nothing.
macro_rules! ignored_unmap {
    () => {
        fn unmap(
            &self,
            _c: &cstor_iscsi::IoCtx,
            _o: u64,
            _l: u64,
        ) -> cstor_iscsi::BackendFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
    };
}
pub(crate) use ignored_unmap;
