//! Big-endian field access for iSCSI PDUs and SCSI CDBs and parameter lists.
//!
//! Owns: the only place that reads or writes multi-byte big-endian integers. RFC 7143 and
//! the SCSI standards define every wire field as big-endian, so the workspace-wide
//! `big_endian_bytes` lint (meant for our own on-disk formats) is allowed here and only here.
//! Never: index past a slice; callers pass slices whose length they have checked, and these
//! helpers panic on a short slice because that is a bug in the caller, not bad input.
#![allow(clippy::big_endian_bytes)]

/// Reads a big-endian u16 at `at`.
pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Reads a big-endian 24-bit value at `at`.
pub(crate) fn u24_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]])
}

/// Reads a big-endian u32 at `at`.
pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a big-endian u64 at `at`.
pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Writes a big-endian u16 at `at`.
pub(crate) fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian 24-bit value at `at`; the top byte of `v` must be zero.
pub(crate) fn put_u24(buf: &mut [u8], at: usize, v: u32) {
    debug_assert!(v < 1 << 24, "24-bit field overflow");
    buf[at..at + 3].copy_from_slice(&v.to_be_bytes()[1..]);
}

/// Writes a big-endian u32 at `at`.
pub(crate) fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian u64 at `at`.
pub(crate) fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
