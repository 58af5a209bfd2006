//! SCSI status and sense data, and the one mapping from backend errors to them.
//!
//! Owns: every status/sense key/ASC/ASCQ the target returns; no other module builds sense
//! bytes. Fixed-format sense (SPC-4 §4.5.3), 18 bytes.

use crate::backend::BackendError;

/// SCSI status codes (SAM-5).
pub mod status {
    #![allow(missing_docs)]
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys.
pub mod key {
    #![allow(missing_docs)]
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xa;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Sense data: key, additional sense code and qualifier, optional information field and
/// sense-key specific field pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (e.g. the offset of a miscompare).
    pub info: Option<u32>,
    /// COMMAND-SPECIFIC INFORMATION field (EXTENDED COPY: the failing segment's index).
    pub cmd_info: Option<u32>,
    /// Field pointer: (in CDB rather than parameter list, byte, bit).
    pub field: Option<(bool, u16, Option<u8>)>,
}

impl Sense {
    /// A sense without information or field pointer.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            cmd_info: None,
            field: None,
        }
    }

    /// Fixed-format sense bytes.
    pub fn to_bytes(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key;
        if let Some(info) = self.info {
            b[0] |= 0x80;
            crate::be::put_u32(&mut b, 3, info);
        }
        b[7] = 10;
        if let Some(ci) = self.cmd_info {
            crate::be::put_u32(&mut b, 8, ci);
        }
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some((cdb, byte, bit)) = self.field {
            b[15] = 0x80 | if cdb { 0x40 } else { 0 };
            if let Some(bit) = bit {
                b[15] |= 0x08 | (bit & 7);
            }
            crate::be::put_u16(&mut b, 16, byte);
        }
        b
    }
}

/// A failed command: its status and, for CHECK CONDITION, the sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiError {
    /// SCSI status.
    pub status: u8,
    /// Sense data for CHECK CONDITION.
    pub sense: Option<Sense>,
}

impl ScsiError {
    const fn check(key: u8, asc: u8, ascq: u8) -> Self {
        ScsiError {
            status: status::CHECK_CONDITION,
            sense: Some(Sense::new(key, asc, ascq)),
        }
    }
    /// LBA OUT OF RANGE.
    pub const fn lba_out_of_range() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x21, 0x00)
    }
    /// INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x20, 0x00)
    }
    /// INVALID FIELD IN CDB, pointing at `byte`.
    pub fn invalid_cdb_field(byte: u16) -> Self {
        let mut e = Self::check(key::ILLEGAL_REQUEST, 0x24, 0x00);
        if let Some(s) = e.sense.as_mut() {
            s.field = Some((true, byte, None));
        }
        e
    }
    /// INVALID FIELD IN PARAMETER LIST.
    pub fn invalid_param_field(byte: u16) -> Self {
        let mut e = Self::check(key::ILLEGAL_REQUEST, 0x26, 0x00);
        if let Some(s) = e.sense.as_mut() {
            s.field = Some((false, byte, None));
        }
        e
    }
    /// INVALID FIELD IN PARAMETER LIST, pointing at `bit` of `byte`.
    pub fn invalid_param_bit(byte: u16, bit: u8) -> Self {
        let mut e = Self::check(key::ILLEGAL_REQUEST, 0x26, 0x00);
        if let Some(s) = e.sense.as_mut() {
            s.field = Some((false, byte, Some(bit)));
        }
        e
    }
    /// An ILLEGAL REQUEST about an EXTENDED COPY descriptor (ASC 26h: too many or
    /// unsupported target/segment descriptors), pointing at the byte in the list.
    pub fn copy_descriptor(ascq: u8, byte: u16) -> Self {
        let mut e = Self::check(key::ILLEGAL_REQUEST, 0x26, ascq);
        if let Some(s) = e.sense.as_mut() {
            s.field = Some((false, byte, None));
        }
        e
    }
    /// COPY ABORTED while processing segment descriptor `segment` (its index in the
    /// list, reported in COMMAND-SPECIFIC INFORMATION as SPC-4 asks).
    pub fn copy_aborted(asc: u8, ascq: u8, segment: u32) -> Self {
        let mut e = Self::check(key::COPY_ABORTED, asc, ascq);
        if let Some(s) = e.sense.as_mut() {
            s.cmd_info = Some(segment);
        }
        e
    }
    /// INSUFFICIENT RESOURCES (too many copies running at once).
    pub const fn insufficient_resources() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x55, 0x03)
    }
    /// OPERATION IN PROGRESS (an EXTENDED COPY with this list identifier still runs).
    pub const fn operation_in_progress() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x00, 0x16)
    }
    /// PARAMETER LIST LENGTH ERROR.
    pub const fn param_list_length() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x1a, 0x00)
    }
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const fn lun_not_supported() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x25, 0x00)
    }
    /// WRITE PROTECTED (DATA PROTECT).
    pub const fn write_protected() -> Self {
        Self::check(key::DATA_PROTECT, 0x27, 0x00)
    }
    /// SPACE ALLOCATION FAILED WRITE PROTECT (thin provisioning exhausted).
    pub const fn space_allocation_failed() -> Self {
        Self::check(key::DATA_PROTECT, 0x27, 0x07)
    }
    /// MISCOMPARE DURING VERIFY OPERATION at byte `offset` of the compared data.
    pub fn miscompare(offset: u32) -> Self {
        let mut e = Self::check(key::MISCOMPARE, 0x1d, 0x00);
        if let Some(s) = e.sense.as_mut() {
            s.info = Some(offset);
        }
        e
    }
    /// UNRECOVERED READ ERROR.
    pub const fn medium_error() -> Self {
        Self::check(key::MEDIUM_ERROR, 0x11, 0x00)
    }
    /// WRITE ERROR.
    pub const fn write_error() -> Self {
        Self::check(key::MEDIUM_ERROR, 0x0c, 0x00)
    }
    /// INTERNAL TARGET FAILURE.
    pub const fn internal() -> Self {
        Self::check(key::HARDWARE_ERROR, 0x44, 0x00)
    }
    /// LOGICAL UNIT COMMUNICATION TIME-OUT (solicited Data-Out never came).
    pub const fn timeout() -> Self {
        Self::check(key::ABORTED_COMMAND, 0x08, 0x01)
    }
    /// LOGICAL UNIT NOT READY, IN PROCESS OF BECOMING READY: a backend call is still
    /// unsettled past its bound; Linux retries this with a delay.
    pub const fn becoming_ready() -> Self {
        Self::check(key::NOT_READY, 0x04, 0x01)
    }
    /// UNEXPECTED UNSOLICITED DATA (RFC 7143 §11.4.7.2): immediate data not allowed or
    /// longer than the expected transfer.
    pub const fn unexpected_unsolicited_data() -> Self {
        Self::check(key::ABORTED_COMMAND, 0x0e, 0x01)
    }
    /// OVERLAPPED COMMANDS ATTEMPTED: a task tag already in use.
    pub const fn overlapped_commands() -> Self {
        Self::check(key::ABORTED_COMMAND, 0x4e, 0x00)
    }
    /// INVALID FIELD IN CDB without a field pointer (the transfer length the iSCSI
    /// header announced is beyond the limit).
    pub const fn invalid_cdb_field_unknown() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x24, 0x00)
    }
    /// A unit attention with the given code.
    pub const fn unit_attention(asc: u8, ascq: u8) -> Self {
        Self::check(key::UNIT_ATTENTION, asc, ascq)
    }
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const fn invalid_release() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x26, 0x04)
    }
    /// MEDIUM NOT PRESENT is never used; SAVING PARAMETERS NOT SUPPORTED is.
    pub const fn saving_not_supported() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x39, 0x00)
    }
    /// INSUFFICIENT REGISTRATION RESOURCES.
    pub const fn insufficient_registration_resources() -> Self {
        Self::check(key::ILLEGAL_REQUEST, 0x55, 0x04)
    }
    /// RESERVATION CONFLICT status.
    pub const fn reservation_conflict() -> Self {
        ScsiError {
            status: status::RESERVATION_CONFLICT,
            sense: None,
        }
    }
    /// BUSY status.
    pub const fn busy() -> Self {
        ScsiError {
            status: status::BUSY,
            sense: None,
        }
    }
}

/// The one mapping from backend errors to SCSI (style.md §4); `writing` picks between
/// read and write medium errors.
pub fn from_backend(e: &BackendError, writing: bool) -> ScsiError {
    match e {
        BackendError::OutOfRange { .. } => ScsiError::lba_out_of_range(),
        BackendError::Medium { .. } if writing => ScsiError::write_error(),
        BackendError::Medium { .. } => ScsiError::medium_error(),
        BackendError::ReadOnly => ScsiError::write_protected(),
        BackendError::NoSpace => ScsiError::space_allocation_failed(),
        BackendError::Busy => ScsiError::busy(),
        // Refused before touching the medium: safe to retry, so BUSY, never an error.
        BackendError::NotStarted => ScsiError::busy(),
        BackendError::Unsupported => ScsiError::invalid_opcode(),
        BackendError::Other(_) => ScsiError::internal(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_layout() {
        let b = ScsiError::miscompare(513).sense.unwrap().to_bytes();
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], key::MISCOMPARE);
        assert_eq!(&b[3..7], &[0, 0, 2, 1]);
        assert_eq!((b[12], b[13]), (0x1d, 0));
        let e = from_backend(&BackendError::NoSpace, true);
        assert_eq!(e.sense.unwrap().key, key::DATA_PROTECT);
        assert_eq!(from_backend(&BackendError::Busy, true).status, status::BUSY);
    }
}
