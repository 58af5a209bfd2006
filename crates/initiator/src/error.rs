//! Errors of the initiator, and SCSI sense data decoded into them.
//!
//! Invariants: every failure an I/O call can return is one of these variants; a command
//! never reports success unless the target answered GOOD for it.

use crate::be;
use std::time::Duration;

/// Everything a session call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection to a portal could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Portal `HOST:PORT`.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket error during login or discovery.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A PDU could not be read (bad digest, oversized segment, cut short).
    #[error("reading a PDU: {0}")]
    Pdu(#[from] cstor_iscsi::pdu::PduError),
    /// The target refused the login with this status.
    #[error("login to {target} refused ({class:#04x}/{detail:#04x}: {})", login_status(*class, *detail))]
    LoginRefused {
        /// Target name.
        target: String,
        /// Status class (2: initiator error, 3: target error).
        class: u8,
        /// Status detail.
        detail: u8,
    },
    /// Mutual CHAP: the target's answer to our challenge is wrong.
    #[error("mutual CHAP: the target did not prove it knows the secret")]
    TargetAuthFailed,
    /// The target broke the protocol (an answer we cannot use).
    #[error("protocol: {0}")]
    Protocol(String),
    /// Login redirects went round more often than we follow.
    #[error("more than {0} login redirects")]
    TooManyRedirects(usize),
    /// Login or discovery did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The connection was down longer than the replacement timeout: queued and new I/O
    /// fails until a reconnect succeeds (which goes on in the background).
    #[error("no connection to {target} for {waited:?} (replacement timeout)")]
    ReplacementTimeout {
        /// Target name.
        target: String,
        /// How long the session has been without a connection.
        waited: Duration,
    },
    /// The command ended with a SCSI error.
    #[error(transparent)]
    Scsi(#[from] ScsiError),
    /// A request outside the LUN or not in whole blocks.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The target does not offer this command (e.g. UNMAP without thin provisioning).
    #[error("the target does not support {0}")]
    Unsupported(&'static str),
    /// The session was logged out.
    #[error("session closed")]
    Closed,
}

/// A SCSI command that failed at the target.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScsiError {
    /// CHECK CONDITION with sense data.
    #[error("{0}")]
    Check(Sense),
    /// CHECK CONDITION without (usable) sense data.
    #[error("CHECK CONDITION without sense data")]
    NoSense,
    /// RESERVATION CONFLICT: another initiator holds a persistent reservation.
    #[error("reservation conflict")]
    ReservationConflict,
    /// BUSY, TASK SET FULL or NOT READY (becoming ready) kept coming for this long.
    #[error("target stayed busy (status {status:#04x}) for {waited:?}")]
    Busy {
        /// Last status.
        status: u8,
        /// How long the command was retried.
        waited: Duration,
    },
    /// Unit attentions kept coming: the command was retried this many times.
    #[error("{0} unit attentions in a row")]
    UnitAttentionStorm(u32),
    /// The target answered a status we do not retry or know.
    #[error("SCSI status {0:#04x}")]
    Status(u8),
    /// The iSCSI response code says the target failed the command outside SCSI.
    #[error("iSCSI response {0:#04x} (target failure)")]
    Response(u8),
}

/// Sense keys (SPC-4 §4.5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenseKey {
    /// 0h.
    NoSense,
    /// 1h.
    RecoveredError,
    /// 2h.
    NotReady,
    /// 3h.
    MediumError,
    /// 4h.
    HardwareError,
    /// 5h.
    IllegalRequest,
    /// 6h.
    UnitAttention,
    /// 7h.
    DataProtect,
    /// 8h.
    BlankCheck,
    /// 9h.
    VendorSpecific,
    /// Ah.
    CopyAborted,
    /// Bh.
    AbortedCommand,
    /// Dh.
    VolumeOverflow,
    /// Eh.
    Miscompare,
    /// Fh and Ch (reserved and completed).
    Other(u8),
}

impl SenseKey {
    fn from_u8(k: u8) -> SenseKey {
        match k & 0x0f {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0x8 => SenseKey::BlankCheck,
            0x9 => SenseKey::VendorSpecific,
            0xa => SenseKey::CopyAborted,
            0xb => SenseKey::AbortedCommand,
            0xd => SenseKey::VolumeOverflow,
            0xe => SenseKey::Miscompare,
            k => SenseKey::Other(k),
        }
    }
}

/// Decoded sense data (fixed or descriptor format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// The INFORMATION field when valid (often the failing LBA).
    pub information: Option<u64>,
}

impl Sense {
    /// Decodes sense bytes; `None` when they are too short or of an unknown format.
    pub fn parse(b: &[u8]) -> Option<Sense> {
        let code = *b.first()? & 0x7f;
        match code {
            0x70 | 0x71 if b.len() >= 14 => Some(Sense {
                key: SenseKey::from_u8(b[2]),
                asc: b[12],
                ascq: b[13],
                information: (b[0] & 0x80 != 0).then(|| u64::from(be::u32_at(b, 3))),
            }),
            0x72 | 0x73 if b.len() >= 8 => {
                let mut information = None;
                let end = (8 + usize::from(b[7])).min(b.len());
                let mut at = 8;
                while at + 2 <= end {
                    let (kind, len) = (b[at], usize::from(b[at + 1]));
                    if kind == 0 && len >= 0x0a && at + 12 <= end {
                        information = Some(be::u64_at(b, at + 4));
                    }
                    at += 2 + len;
                }
                Some(Sense {
                    key: SenseKey::from_u8(b[1]),
                    asc: b[2],
                    ascq: b[3],
                    information,
                })
            }
            _ => None,
        }
    }

    /// ASC/ASCQ as one number (`0x2a09`), for matching.
    pub fn code(&self) -> u16 {
        (u16::from(self.asc) << 8) | u16::from(self.ascq)
    }

    /// What the additional sense code means, for the codes a block device meets.
    pub fn description(&self) -> &'static str {
        match (self.asc, self.ascq) {
            (0x04, 0x01) => "logical unit is becoming ready",
            (0x04, _) => "logical unit not ready",
            (0x11, _) => "unrecovered read error",
            (0x0c, _) => "write error",
            (0x1d, 0x00) => "miscompare during verify",
            (0x20, 0x00) => "invalid command operation code",
            (0x21, 0x00) => "logical block address out of range",
            (0x24, 0x00) => "invalid field in CDB",
            (0x25, 0x00) => "logical unit not supported",
            (0x26, _) => "invalid field in parameter list",
            (0x27, _) => "write protected",
            (0x29, _) => "power on, reset or I_T nexus loss",
            (0x2a, 0x09) => "capacity data has changed",
            (0x2a, _) => "parameters changed",
            (0x3f, 0x0e) => "reported LUNs data has changed",
            (0x47, _) => "SCSI parity error",
            (0x3e, _) => "logical unit failure",
            _ => "sense code not decoded",
        }
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}: {} (asc/ascq {:02x}/{:02x})",
            self.key,
            self.description(),
            self.asc,
            self.ascq
        )?;
        if let Some(i) = self.information {
            write!(f, " at {i}")?;
        }
        Ok(())
    }
}

fn login_status(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (2, 0x01) => "authentication failed",
        (2, 0x02) => "initiator not authorized for this target",
        (2, 0x03) => "target not found",
        (2, 0x04) => "target removed",
        (2, 0x05) => "unsupported version",
        (2, 0x06) => "too many connections",
        (2, 0x07) => "missing parameter",
        (2, 0x0a) => "session does not exist",
        (2, _) => "initiator error",
        (3, 0x01) => "target service unavailable",
        (3, 0x02) => "target out of resources",
        (3, _) => "target error",
        _ => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_sense() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0xf0;
        fixed[2] = 0x05;
        fixed[3..7].copy_from_slice(&[0, 0, 1, 0]);
        fixed[7] = 10;
        fixed[12] = 0x21;
        let s = Sense::parse(&fixed).unwrap();
        assert_eq!(s.key, SenseKey::IllegalRequest);
        assert_eq!(s.code(), 0x2100);
        assert_eq!(s.information, Some(256));
        assert!(s.to_string().contains("out of range"), "{s}");

        let desc = [
            0x72, 0x06, 0x2a, 0x09, 0, 0, 0, 12, 0, 10, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 7,
        ];
        let s = Sense::parse(&desc).unwrap();
        assert_eq!((s.key, s.code()), (SenseKey::UnitAttention, 0x2a09));
        assert_eq!(s.information, Some(7));
        assert_eq!(Sense::parse(&[0x70, 0, 6]), None);
        assert_eq!(Sense::parse(&[]), None);
    }
}
