//! The replica wire protocol's frames (docs/format/replica-protocol.md): the only code
//! that knows header offsets and body layouts.
//!
//! Invariants: every frame carries magic, version, a request id, the sender's epoch, and
//! two CRC32C checksums (header, body); the header checksum is verified before any field
//! of it is trusted, the body checksum before the body is parsed. An unknown version is
//! refused (typed error), never guessed at. Bodies are bounded by [`MAX_BODY`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::WireError;

/// `CSRP` as little-endian bytes.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CSRP");
/// The only protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 40;
/// Largest body accepted: the largest command the iSCSI target accepts
/// (`cstor_iscsi::limits::MAX_TRANSFER_BYTES`, 32 MiB) as one write or read, plus room for
/// its fields, or a list page. A target never splits a command: a smaller bound here made
/// every replica drop its connection on the same large write.
pub const MAX_BODY: usize = 33 << 20;

const _: () = assert!(MAX_BODY >= cstor_iscsi::limits::MAX_TRANSFER_BYTES as usize + (1 << 20));

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 4;
const OFF_OP: usize = OFF_VERSION + 2;
const OFF_STATUS: usize = OFF_OP + 1;
const OFF_ID: usize = OFF_STATUS + 1;
const OFF_EPOCH: usize = OFF_ID + 8;
const OFF_LEN: usize = OFF_EPOCH + 8;
const OFF_BODY_CRC: usize = OFF_LEN + 4;
const OFF_RESERVED: usize = OFF_BODY_CRC + 4;
const OFF_HDR_CRC: usize = OFF_RESERVED + 4;
const _: () = assert!(OFF_HDR_CRC + 4 == HEADER_LEN);

/// Request opcodes; a reply carries the request's opcode with [`REPLY`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Version check and the server's challenge.
    Hello = 1,
    /// The client's response to the challenge.
    Auth = 2,
    /// Open (fence) a volume's session.
    Open = 3,
    /// Write data with an io number.
    Write = 4,
    /// Free a range with an io number.
    Unmap = 5,
    /// Make every acknowledged write stable.
    Flush = 6,
    /// Read a range.
    Read = 7,
    /// Liveness and watermarks.
    Ping = 8,
    /// Switch the session between crash-safe and write-through acks.
    SetMode = 9,
    /// Record the checkpoint C (target's contiguous completed io).
    Checkpoint = 10,
    /// List ranges whose io lies in (since, until].
    Changed = 11,
    /// Read whole blocks with the io of each.
    ReadIo = 12,
    /// Catch-up apply of whole blocks (the apply rule).
    Apply = 13,
    /// Persist (or clear) the catch-up cursor.
    SetCursor = 14,
    /// List the blocks a catch-up session holds as partly written (design §2.7, sub-block
    /// live writes).
    Partial = 15,
    /// Grow the volume online to a new size.
    Resize = 16,
    /// Take a snapshot at an io cut (JSON [`SnapReq`]).
    Snapshot = 17,
    /// List the volume's snapshots (reply JSON `Vec<`[`SnapInfo`]`>`).
    Snapshots = 18,
    /// Destroy a snapshot (JSON [`SnapReq`]; a missing one is not an error).
    DeleteSnapshot = 19,
    /// Clone a snapshot into a new volume of the same pool (JSON [`CloneReq`]).
    Clone = 20,
    /// Runs of a snapshot's blocks with io in (since, until] (JSON [`SnapBlocksReq`];
    /// reply as CHANGED, `io_max` being the run's one io).
    SnapBlocks = 21,
    /// Read a range of a snapshot (JSON [`SnapReadReq`]; reply: data).
    SnapRead = 22,
}

/// Bit set in the opcode of a reply.
pub const REPLY: u8 = 0x80;

impl Op {
    /// The opcode of a byte (reply bit cleared), if known.
    pub fn from_u8(b: u8) -> Option<Op> {
        Some(match b & !REPLY {
            1 => Op::Hello,
            2 => Op::Auth,
            3 => Op::Open,
            4 => Op::Write,
            5 => Op::Unmap,
            6 => Op::Flush,
            7 => Op::Read,
            8 => Op::Ping,
            9 => Op::SetMode,
            10 => Op::Checkpoint,
            11 => Op::Changed,
            12 => Op::ReadIo,
            13 => Op::Apply,
            14 => Op::SetCursor,
            15 => Op::Partial,
            16 => Op::Resize,
            17 => Op::Snapshot,
            18 => Op::Snapshots,
            19 => Op::DeleteSnapshot,
            20 => Op::Clone,
            21 => Op::SnapBlocks,
            22 => Op::SnapRead,
            _ => return None,
        })
    }
}

/// Status of a reply (0 in requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// Failed; the body is a UTF-8 message.
    Error = 1,
    /// The peer speaks another version; body JSON `{"supported":[..]}`; the connection closes.
    VersionMismatch = 2,
    /// Authentication failed; the connection closes.
    AuthFailed = 3,
    /// The request's epoch is below the stored one (header epoch = stored).
    Fenced = 4,
    /// No open session on this connection (or it was dropped by a newer one).
    NotOpen = 5,
    /// Malformed request.
    Invalid = 6,
    /// The pool has no space for the write.
    NoSpace = 7,
    /// The pool is read-only.
    ReadOnly = 8,
    /// The pool could not read the bytes (every copy failed verification, or a device
    /// error): the replica holds the block but not its data, and the session stays
    /// usable. The target reads the range elsewhere and repairs this replica (read
    /// repair, docs/replication.md).
    Medium = 9,
}

impl Status {
    fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Error,
            2 => Status::VersionMismatch,
            3 => Status::AuthFailed,
            4 => Status::Fenced,
            5 => Status::NotOpen,
            6 => Status::Invalid,
            7 => Status::NoSpace,
            8 => Status::ReadOnly,
            9 => Status::Medium,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Opcode byte as sent (reply bit included).
    pub op: u8,
    /// Status (requests: Ok).
    pub status: Status,
    /// Request id; a reply echoes its request's.
    pub id: u64,
    /// Sender's epoch: the session epoch in requests, the replica's stored epoch in replies.
    pub epoch: u64,
    /// Version in the header (checked against [`VERSION`] by the handshake).
    pub version: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Frame {
    /// A request frame.
    pub fn request(op: Op, id: u64, epoch: u64, body: Bytes) -> Frame {
        Frame {
            op: op as u8,
            status: Status::Ok,
            id,
            epoch,
            version: VERSION,
            body,
        }
    }

    /// The reply to `req` with `status` and `body`.
    pub fn reply(req: &Frame, status: Status, epoch: u64, body: Bytes) -> Frame {
        Frame {
            op: req.op | REPLY,
            status,
            id: req.id,
            epoch,
            version: VERSION,
            body,
        }
    }

    /// The opcode (reply bit cleared).
    pub fn opcode(&self) -> Option<Op> {
        Op::from_u8(self.op)
    }

    /// Encodes the frame (header then body).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(HEADER_LEN + self.body.len());
        let start = out.len();
        out.put_u32_le(MAGIC);
        out.put_u16_le(self.version);
        out.put_u8(self.op);
        out.put_u8(self.status as u8);
        out.put_u64_le(self.id);
        out.put_u64_le(self.epoch);
        out.put_u32_le(self.body.len() as u32);
        out.put_u32_le(crc32c::crc32c(&self.body));
        out.put_u32_le(0);
        let crc = crc32c::crc32c(&out[start..start + OFF_HDR_CRC]);
        out.put_u32_le(crc);
        out.extend_from_slice(&self.body);
    }
}

/// Reads one frame. `Ok(None)` on a clean end of stream before a header.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, WireError> {
    let mut h = [0u8; HEADER_LEN];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(WireError::Io(e)),
    }
    let le32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let mut le64 = [0u8; 8];
    if le32(OFF_MAGIC) != MAGIC {
        return Err(WireError::BadMagic(le32(OFF_MAGIC)));
    }
    if le32(OFF_HDR_CRC) != crc32c::crc32c(&h[..OFF_HDR_CRC]) {
        return Err(WireError::HeaderChecksum);
    }
    let version = u16::from_le_bytes([h[OFF_VERSION], h[OFF_VERSION + 1]]);
    let len = le32(OFF_LEN) as usize;
    if len > MAX_BODY {
        return Err(WireError::TooLarge(len));
    }
    let status = Status::from_u8(h[OFF_STATUS]).ok_or(WireError::BadStatus(h[OFF_STATUS]))?;
    le64.copy_from_slice(&h[OFF_ID..OFF_ID + 8]);
    let id = u64::from_le_bytes(le64);
    le64.copy_from_slice(&h[OFF_EPOCH..OFF_EPOCH + 8]);
    let epoch = u64::from_le_bytes(le64);
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body).await.map_err(WireError::Io)?;
    if le32(OFF_BODY_CRC) != crc32c::crc32c(&body) {
        return Err(WireError::BodyChecksum { id });
    }
    Ok(Some(Frame {
        op: h[OFF_OP],
        status,
        id,
        epoch,
        version,
        body: body.freeze(),
    }))
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), WireError> {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    w.write_all(&b).await.map_err(WireError::Io)?;
    w.flush().await.map_err(WireError::Io)
}

/// HELLO request body (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Client nonce, hex (32 bytes).
    pub nonce: String,
    /// Versions the client speaks.
    pub versions: Vec<u16>,
}

/// HELLO reply body (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    /// Server nonce, hex (32 bytes).
    pub nonce: String,
    /// Whether the server requires AUTH.
    pub auth: bool,
}

/// AUTH request and reply body (JSON): the HMAC-SHA256 proof, hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthProof {
    /// HMAC-SHA256 over the role label and both nonces, hex.
    pub mac: String,
}

/// The role a target opens a replica in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Holds every acknowledged write.
    Current,
    /// Evicted; receives writes, catches up.
    Stale,
    /// No usable history; full copy.
    New,
}

/// OPEN request body (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenReq {
    /// Volume name (the pool volume POOL/volume on the replica).
    pub volume: String,
    /// Volume size, bytes (a missing volume is created at it).
    pub size: u64,
    /// Target epoch.
    pub epoch: u64,
    /// Target instance (random per process).
    pub instance: String,
    /// Role in the record.
    pub role: Role,
    /// Session start io X0.
    pub x0: u64,
}

/// OPEN reply body (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenReply {
    /// Replica id (the slot).
    pub id: String,
    /// Replica volume guid (the instance), hex.
    pub guid: String,
    /// Checkpoint C.
    pub checkpoint: u64,
    /// Flush point F.
    pub flush_point: u64,
    /// Last shutdown unclean and the boot id changed.
    pub lost_tail: bool,
    /// Highest io the volume holds.
    pub max_io: u64,
    /// Catch-up cursor, hex, if one is stored.
    pub cursor: Option<String>,
    /// Volume size, bytes.
    pub size: u64,
    /// Pool block size of the volume, bytes.
    pub block_size: u32,
    /// The volume was created by this OPEN.
    pub created: bool,
    /// Epoch the replica stored before this OPEN (0 from a replica that does not say).
    /// A target re-opening a member it opened before expects its own epoch here; a lower
    /// one means the replica's pool went back in time (restored, or another copy).
    #[serde(default)]
    pub prev_epoch: u64,
}

/// A range listed by CHANGED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Start, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// Highest io in it.
    pub io_max: u64,
}

/// SNAPSHOT and DELETE_SNAPSHOT request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapReq {
    /// Snapshot name (without the volume).
    pub name: String,
    /// The io cut (SNAPSHOT only; 0 in DELETE_SNAPSHOT).
    #[serde(default)]
    pub io_cut: u64,
}

/// One snapshot in a SNAPSHOTS reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapInfo {
    /// Snapshot name.
    pub name: String,
    /// Its io cut (None: not taken at a cut, so not the target's).
    pub io_cut: Option<u64>,
    /// Volume size when taken.
    pub size: u64,
    /// Bytes its contents reference.
    pub referenced: u64,
    /// Bytes only it holds.
    pub used: u64,
    /// Volumes cloned from it.
    pub clones: Vec<String>,
}

/// CLONE request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneReq {
    /// Snapshot of the session's volume.
    pub snapshot: String,
    /// New volume name.
    pub clone: String,
}

/// CLONE reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneReply {
    /// Guid of the new volume (as OPEN reports it).
    pub guid: String,
    /// Size, bytes.
    pub size: u64,
}

/// SNAP_BLOCKS request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapBlocksReq {
    /// Snapshot name.
    pub snapshot: String,
    /// Lower io bound (exclusive).
    pub since: u64,
    /// Upper io bound (inclusive).
    pub until: u64,
    /// First byte.
    pub from: u64,
    /// Most runs in the reply.
    pub max: u64,
}

/// SNAP_READ request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapReadReq {
    /// Snapshot name.
    pub snapshot: String,
    /// Offset, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
}

/// A JSON request body.
pub fn enc_json<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Encodes WRITE: offset, io, data.
pub fn enc_write(offset: u64, io: u64, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + data.len());
    b.put_u64_le(offset);
    b.put_u64_le(io);
    b.extend_from_slice(data);
    b.freeze()
}

/// Decodes WRITE.
pub fn dec_write(mut body: Bytes) -> Result<(u64, u64, Bytes), WireError> {
    need(&body, 16)?;
    let off = body.get_u64_le();
    let io = body.get_u64_le();
    Ok((off, io, body))
}

/// Encodes a list of u64 fields (UNMAP, READ, CHECKPOINT, CHANGED, PING replies...).
pub fn enc_u64s(v: &[u64]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 * v.len());
    for x in v {
        b.put_u64_le(*x);
    }
    b.freeze()
}

/// Decodes a body of any number of u64 fields (PARTIAL replies).
pub fn dec_u64_list(mut body: Bytes) -> Result<Vec<u64>, WireError> {
    if !body.len().is_multiple_of(8) {
        return Err(WireError::Malformed("u64 list length"));
    }
    let mut out = Vec::with_capacity(body.len() / 8);
    while body.has_remaining() {
        out.push(body.get_u64_le());
    }
    Ok(out)
}

/// Decodes exactly `N` u64 fields.
pub fn dec_u64s<const N: usize>(mut body: Bytes) -> Result<[u64; N], WireError> {
    need(&body, 8 * N)?;
    let mut out = [0u64; N];
    for x in out.iter_mut() {
        *x = body.get_u64_le();
    }
    Ok(out)
}

/// Encodes a CHANGED reply: count, then (offset, len, io_max) triples.
pub fn enc_ranges(r: &[Range]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + 24 * r.len());
    b.put_u64_le(r.len() as u64);
    for x in r {
        b.put_u64_le(x.offset);
        b.put_u64_le(x.len);
        b.put_u64_le(x.io_max);
    }
    b.freeze()
}

/// Decodes a CHANGED reply.
pub fn dec_ranges(mut body: Bytes) -> Result<Vec<Range>, WireError> {
    need(&body, 8)?;
    let n = body.get_u64_le() as usize;
    if n > body.len() / 24 {
        return Err(WireError::Malformed("range count beyond the body"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Range {
            offset: body.get_u64_le(),
            len: body.get_u64_le(),
            io_max: body.get_u64_le(),
        });
    }
    Ok(out)
}

/// Encodes a READ_IO reply: exact flag, block count, io per block, data.
pub fn enc_read_io(exact: bool, ios: &[u64], data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + 8 * ios.len() + data.len());
    b.put_u64_le(u64::from(exact));
    b.put_u64_le(ios.len() as u64);
    for x in ios {
        b.put_u64_le(*x);
    }
    b.extend_from_slice(data);
    b.freeze()
}

/// Decodes a READ_IO reply into (exact, ios, data).
pub fn dec_read_io(mut body: Bytes) -> Result<(bool, Vec<u64>, Bytes), WireError> {
    need(&body, 16)?;
    let exact = body.get_u64_le() != 0;
    let n = body.get_u64_le() as usize;
    if n > body.len() / 8 {
        return Err(WireError::Malformed("io count beyond the body"));
    }
    let ios = (0..n).map(|_| body.get_u64_le()).collect();
    Ok((exact, ios, body))
}

/// Encodes APPLY: session start x0, then per block (offset, io) pairs count, pairs, data.
pub fn enc_apply(x0: u64, blocks: &[(u64, u64)], data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + 16 * blocks.len() + data.len());
    b.put_u64_le(x0);
    b.put_u64_le(blocks.len() as u64);
    for (o, io) in blocks {
        b.put_u64_le(*o);
        b.put_u64_le(*io);
    }
    b.extend_from_slice(data);
    b.freeze()
}

/// One decoded APPLY request: session start, (offset, io) per block, blocks' data.
pub type ApplyReq = (u64, Vec<(u64, u64)>, Bytes);

/// Decodes APPLY.
pub fn dec_apply(mut body: Bytes) -> Result<ApplyReq, WireError> {
    need(&body, 16)?;
    let x0 = body.get_u64_le();
    let n = body.get_u64_le() as usize;
    if n > body.len() / 16 {
        return Err(WireError::Malformed("block count beyond the body"));
    }
    let blocks = (0..n)
        .map(|_| (body.get_u64_le(), body.get_u64_le()))
        .collect();
    Ok((x0, blocks, body))
}

fn need(b: &Bytes, n: usize) -> Result<(), WireError> {
    if b.len() < n {
        return Err(WireError::Malformed("body too short"));
    }
    Ok(())
}

/// Hex of bytes (nonces, macs, guids).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes of a hex string.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_and_checksums() {
        let f = Frame::request(Op::Write, 7, 3, enc_write(4096, 99, b"abcd"));
        let mut b = BytesMut::new();
        f.encode(&mut b);
        // Golden header prefix: magic, version 1, op 4, status 0, id 7.
        assert_eq!(&b[..8], b"CSRP\x01\x00\x04\x00");
        assert_eq!(&b[8..16], &7u64.to_le_bytes());
        let got = read_frame(&mut &b[..]).await.unwrap().unwrap();
        assert_eq!(got.id, 7);
        assert_eq!(got.epoch, 3);
        let (o, io, d) = dec_write(got.body).unwrap();
        assert_eq!((o, io, &d[..]), (4096, 99, &b"abcd"[..]));
        // A flipped body byte fails the body checksum; a flipped header byte the header's.
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            read_frame(&mut &bad[..]).await,
            Err(WireError::BodyChecksum { .. })
        ));
        let mut bad = b.clone();
        bad[9] ^= 1;
        assert!(matches!(
            read_frame(&mut &bad[..]).await,
            Err(WireError::HeaderChecksum)
        ));
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_frame(&mut &bad[..]).await,
            Err(WireError::BadMagic(_))
        ));
    }

    #[test]
    fn bodies_round_trip_and_reject_short_input() {
        let r = vec![Range {
            offset: 1,
            len: 2,
            io_max: 3,
        }];
        assert_eq!(dec_ranges(enc_ranges(&r)).unwrap(), r);
        let (x0, blocks, data) = dec_apply(enc_apply(5, &[(0, 4)], b"zz")).unwrap();
        assert_eq!((x0, blocks, &data[..]), (5, vec![(0, 4)], &b"zz"[..]));
        assert!(dec_u64s::<3>(enc_u64s(&[1, 2])).is_err());
        let mut huge = BytesMut::new();
        huge.put_u64_le(u64::MAX);
        assert!(dec_ranges(huge.freeze()).is_err());
        assert_eq!(unhex(&hex(&[0, 255, 16])).unwrap(), vec![0, 255, 16]);
        assert!(unhex("zz").is_none());
    }
}
