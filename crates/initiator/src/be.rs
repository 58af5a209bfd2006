//! Big-endian field access for the initiator's PDUs, CDBs and SCSI parameter data.
//!
//! Owns: the only place in this crate that reads or writes multi-byte big-endian integers.
//! iSCSI and SCSI define every wire field as big-endian, so the workspace-wide
//! `big_endian_bytes` lint (meant for our own on-disk formats) is allowed here only.
//! Never: index past a slice: callers check lengths first (a short slice is a bug here).
#![allow(clippy::big_endian_bytes)]

pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

pub(crate) fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
