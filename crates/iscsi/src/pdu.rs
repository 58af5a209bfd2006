//! iSCSI PDU framing (RFC 7143 §11): the basic header segment, AHS, data segment, padding
//! and CRC32C digests.
//!
//! Owns: reading one PDU from a byte stream and encoding one PDU onto it.
//! Invariants: a data segment longer than the negotiated limit is refused from its header
//! alone, before any buffer of that size exists; digests are checked before any field of
//! the PDU is used. Never: interpret opcode-specific fields (login.rs, connection.rs do).

use crate::be;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Length of the basic header segment.
pub const BHS_LEN: usize = 48;

/// Opcodes sent by initiators.
pub mod op {
    #![allow(missing_docs)]
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TASK_MGMT: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const TASK_MGMT_RSP: u8 = 0x22;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const TEXT_RSP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    #![allow(missing_docs)]
    pub const DATA_DIGEST: u8 = 0x02;
    pub const SNACK: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const CMD_NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// The reserved tag value meaning "no task".
pub const NO_TAG: u32 = 0xffff_ffff;

/// Which digests the connection uses; both off until login negotiates them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    /// CRC32C over BHS and AHS.
    pub header: bool,
    /// CRC32C over the data segment and its padding.
    pub data: bool,
}

/// Errors reading a PDU; every one of them ends the connection (error recovery level 0).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PduError {
    /// The peer closed the connection between PDUs.
    #[error("connection closed by peer")]
    Closed,
    /// Socket error or a PDU cut short.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Header digest mismatch: the header cannot be trusted, not even its length.
    #[error("header digest mismatch (got {got:#010x}, computed {computed:#010x})")]
    HeaderDigest {
        /// Digest received.
        got: u32,
        /// Digest computed.
        computed: u32,
    },
    /// Data digest mismatch.
    #[error("data digest mismatch on task {itt:#x}")]
    DataDigest {
        /// Initiator task tag of the PDU.
        itt: u32,
    },
    /// Data segment longer than negotiated.
    #[error("data segment of {len} bytes exceeds the negotiated {max}")]
    DataTooLong {
        /// Claimed length.
        len: u32,
        /// Negotiated maximum.
        max: u32,
    },
}

/// One PDU as received.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// Basic header segment.
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments, rarely used (extended CDBs).
    pub ahs: Vec<u8>,
    /// Data segment without padding.
    pub data: Bytes,
}

impl Pdu {
    /// Opcode without the immediate bit.
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    /// Immediate delivery bit.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    /// Final bit.
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }
    /// Initiator task tag.
    pub fn itt(&self) -> u32 {
        be::u32_at(&self.bhs, 16)
    }
    /// 8-byte LUN field.
    pub fn lun(&self) -> u64 {
        be::u64_at(&self.bhs, 8)
    }
    /// A big-endian u32 at a BHS offset.
    pub fn u32_at(&self, at: usize) -> u32 {
        be::u32_at(&self.bhs, at)
    }
}

fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The iSCSI digest of `parts` (CRC32C, sent little-endian as the Linux initiator does).
pub fn digest(parts: &[&[u8]]) -> u32 {
    let mut crc = 0u32;
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    crc
}

/// Reads one PDU. `max_data` is our MaxRecvDataSegmentLength (or the login limit).
pub async fn read_pdu<R: AsyncRead + Unpin>(
    r: &mut R,
    max_data: u32,
    digests: Digests,
) -> Result<Pdu, PduError> {
    let mut bhs = [0u8; BHS_LEN];
    // A clean close is only a close between PDUs; a close inside one is an error.
    let n = r.read(&mut bhs).await?;
    if n == 0 {
        return Err(PduError::Closed);
    }
    r.read_exact(&mut bhs[n..]).await?;
    let ahs_len = usize::from(bhs[4]) * 4;
    let mut ahs = vec![0u8; ahs_len];
    r.read_exact(&mut ahs).await?;
    if digests.header {
        let mut d = [0u8; 4];
        r.read_exact(&mut d).await?;
        let got = u32::from_le_bytes(d);
        let computed = digest(&[&bhs, &ahs]);
        if got != computed {
            return Err(PduError::HeaderDigest { got, computed });
        }
    }
    let len = be::u24_at(&bhs, 5);
    if len > max_data {
        return Err(PduError::DataTooLong { len, max: max_data });
    }
    let len = len as usize;
    let pad = pad_len(len);
    let mut data = BytesMut::zeroed(len + pad);
    r.read_exact(&mut data).await?;
    if digests.data && len > 0 {
        let mut d = [0u8; 4];
        r.read_exact(&mut d).await?;
        if u32::from_le_bytes(d) != digest(&[&data]) {
            return Err(PduError::DataDigest {
                itt: be::u32_at(&bhs, 16),
            });
        }
    }
    data.truncate(len);
    Ok(Pdu {
        bhs,
        ahs,
        data: data.freeze(),
    })
}

/// How an outgoing PDU relates to the connection's StatSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatSn {
    /// The PDU carries no StatSN (Data-In without status).
    None,
    /// The PDU carries the current StatSN and advances it (responses).
    Advance,
    /// The PDU carries the current StatSN without advancing it (R2T, unsolicited NOP-In).
    Peek,
}

/// One PDU to send; the writer fills StatSN, ExpCmdSN and MaxCmdSN at send time so they
/// are in order on the wire whatever order commands complete in.
#[derive(Debug, Clone)]
pub struct OutPdu {
    /// Basic header segment; DataSegmentLength is filled from `data` when sent.
    pub bhs: [u8; BHS_LEN],
    /// Data segment.
    pub data: Bytes,
    /// StatSN handling.
    pub stat_sn: StatSn,
}

impl OutPdu {
    /// A PDU with the given opcode and flags byte, no data.
    pub fn new(opcode: u8, flags: u8, stat_sn: StatSn) -> Self {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode;
        bhs[1] = flags;
        OutPdu {
            bhs,
            data: Bytes::new(),
            stat_sn,
        }
    }
    /// Sets a big-endian u32 field.
    pub fn set_u32(&mut self, at: usize, v: u32) -> &mut Self {
        be::put_u32(&mut self.bhs, at, v);
        self
    }
    /// Sets the LUN field.
    pub fn set_lun(&mut self, lun: u64) -> &mut Self {
        be::put_u64(&mut self.bhs, 8, lun);
        self
    }
}

/// Writes one PDU with digests; `stat_sn`, `exp_cmd_sn` and `max_cmd_sn` are stamped in.
pub async fn write_pdu<W: AsyncWrite + Unpin>(
    w: &mut W,
    pdu: &mut OutPdu,
    digests: Digests,
) -> std::io::Result<()> {
    let len = pdu.data.len();
    debug_assert!(len < 1 << 24, "data segment too long for the wire");
    be::put_u24(&mut pdu.bhs, 5, len as u32);
    w.write_all(&pdu.bhs).await?;
    if digests.header {
        w.write_all(&digest(&[&pdu.bhs]).to_le_bytes()).await?;
    }
    if len > 0 {
        w.write_all(&pdu.data).await?;
        let pad = [0u8; 3];
        let pad = &pad[..pad_len(len)];
        w.write_all(pad).await?;
        if digests.data {
            w.write_all(&digest(&[&pdu.data, pad]).to_le_bytes())
                .await?;
        }
    }
    Ok(())
}

/// Outgoing bytes of a batch of PDUs, ready for one vectored write: headers, padding,
/// digests and small data segments are copied into one buffer, large data segments are
/// kept as they are (no copy), so a batch costs one `writev` whatever it holds.
#[derive(Debug, Default)]
pub struct Segments {
    small: BytesMut,
    parts: Vec<Bytes>,
    len: usize,
}

/// Data segments at least this long are sent from their own buffer instead of being
/// copied; below it a copy is cheaper than another iovec entry.
const NO_COPY_BYTES: usize = 2048;

impl Segments {
    fn push_small(&mut self, b: &[u8]) {
        self.small.extend_from_slice(b);
        self.len += b.len();
    }

    fn push_big(&mut self, b: Bytes) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
        self.len += b.len();
        self.parts.push(b);
    }

    /// Appends one PDU with its digests (sequence numbers must be stamped already).
    pub fn push(&mut self, pdu: &mut OutPdu, digests: Digests) {
        let len = pdu.data.len();
        debug_assert!(len < 1 << 24, "data segment too long for the wire");
        be::put_u24(&mut pdu.bhs, 5, len as u32);
        self.push_small(&pdu.bhs);
        if digests.header {
            self.push_small(&digest(&[&pdu.bhs]).to_le_bytes());
        }
        if len == 0 {
            return;
        }
        if len >= NO_COPY_BYTES {
            self.push_big(pdu.data.clone());
        } else {
            self.push_small(&pdu.data);
        }
        let pad = [0u8; 3];
        let pad = &pad[..pad_len(len)];
        self.push_small(pad);
        if digests.data {
            self.push_small(&digest(&[&pdu.data, pad]).to_le_bytes());
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes everything queued with as few `writev` calls as the socket allows, then
    /// empties the queue (the buffers are kept for the next batch).
    pub async fn write_all<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
        let mut first = 0usize;
        while first < self.parts.len() {
            let end = self.parts.len().min(first + MAX_IOVECS);
            let slices: Vec<std::io::IoSlice<'_>> = self.parts[first..end]
                .iter()
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            let mut n = w.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let head = &mut self.parts[first];
                if n >= head.len() {
                    n -= head.len();
                    first += 1;
                } else {
                    let _ = head.split_to(n);
                    n = 0;
                }
            }
        }
        self.parts.clear();
        self.len = 0;
        Ok(())
    }
}

/// iovec entries per `writev` (Linux allows 1024).
const MAX_IOVECS: usize = 64;

/// Stamps the sequence numbers every target PDU carries at bytes 24..36.
pub fn stamp(pdu: &mut OutPdu, stat_sn: Option<u32>, exp_cmd_sn: u32, max_cmd_sn: u32) {
    if let Some(sn) = stat_sn {
        be::put_u32(&mut pdu.bhs, 24, sn);
    }
    be::put_u32(&mut pdu.bhs, 28, exp_cmd_sn);
    be::put_u32(&mut pdu.bhs, 32, max_cmd_sn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_with_digests() {
        let digests = Digests {
            header: true,
            data: true,
        };
        let mut out = OutPdu::new(op::NOP_IN, 0x80, StatSn::Advance);
        out.set_u32(16, 7);
        out.data = Bytes::from_static(b"hello");
        let mut buf = Vec::new();
        write_pdu(&mut buf, &mut out, digests).await.unwrap();
        assert_eq!(buf.len(), 48 + 4 + 8 + 4);
        let pdu = read_pdu(&mut buf.as_slice(), 1024, digests).await.unwrap();
        assert_eq!(pdu.opcode(), op::NOP_IN);
        assert_eq!(pdu.itt(), 7);
        assert_eq!(&pdu.data[..], b"hello");
        // A flipped data byte must be caught by the data digest.
        buf[53] ^= 1;
        let err = read_pdu(&mut buf.as_slice(), 1024, digests)
            .await
            .unwrap_err();
        assert!(matches!(err, PduError::DataDigest { itt: 7 }));
    }

    #[tokio::test]
    async fn segments_match_write_pdu() {
        let digests = Digests {
            header: true,
            data: true,
        };
        let mut expected = Vec::new();
        let mut segs = Segments::default();
        for len in [0usize, 5, 2047, 2048, 4096, 70_001] {
            let mut p = OutPdu::new(op::DATA_IN, 0, StatSn::None);
            p.data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
            write_pdu(&mut expected, &mut p.clone(), digests)
                .await
                .unwrap();
            segs.push(&mut p, digests);
        }
        assert_eq!(segs.len(), expected.len());
        // A writer that takes a few bytes at a time exercises the partial-write path.
        let (mut a, mut b) = tokio::io::duplex(333);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        segs.write_all(&mut a).await.unwrap();
        assert!(segs.is_empty());
        drop(a);
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn oversized_segment_refused_before_reading_it() {
        let mut bhs = [0u8; BHS_LEN];
        be::put_u24(&mut bhs, 5, 0xff_ffff);
        let err = read_pdu(&mut &bhs[..], 8192, Digests::default())
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            PduError::DataTooLong {
                len: 0xff_ffff,
                max: 8192
            }
        ));
    }

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros give 0x8a9136aa.
        assert_eq!(digest(&[&[0u8; 32]]), 0x8a91_36aa);
    }
}
