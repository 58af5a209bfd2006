//! SCSI-3 persistent reservations (SPC-4 §5.13) from the initiator's side: the fencing
//! of other nodes that the CSI node service asks for at NodeStage.
//!
//! Owns: the PERSISTENT RESERVE IN/OUT CDBs and parameter lists, their parsers, and the
//! fencing procedure ([`Session::fence_others`]). A fenced-off session (its registration
//! removed by another initiator's PREEMPT) is latched as such in the session
//! (`Inner::fence`), and a latched session never registers again: a node whose key was
//! preempted must not win the volume back by reconnecting.
//! Invariants: every REGISTER sets APTPL, so the target keeps the registrations across its
//! restarts and moves (a REGISTER without it would switch persistence off for the LU);
//! the only re-registration without a new stage is after a reconnect that found the
//! target's reservation state empty *and* its generation lower than the one we last saw
//! (a target that lost its state), never when another key took over.

use crate::be;
use crate::error::{Error, ScsiError};
use crate::session::Session;

/// The reservation type the node service holds: Write Exclusive – Registrants Only.
/// Every I_T nexus registered with a key may write (a node's new session after a plugin
/// restart registers the node's key again); one whose key was preempted may still read
/// but every write is RESERVATION CONFLICT.
pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
const ALL_REGISTRANTS: [u8; 2] = [7, 8];
/// PERSISTENT RESERVE IN/OUT operation codes.
pub(crate) const PR_IN: u8 = 0x5e;
pub(crate) const PR_OUT: u8 = 0x5f;
/// Allocation length of READ KEYS / READ RESERVATION (8 + 8 bytes a key; the target
/// allows far fewer registrations than this holds).
const PR_IN_LEN: u16 = 8 + 8 * 256;
/// PREEMPT races (another node's stage between our READ and our PREEMPT) retried.
const FENCE_ATTEMPTS: usize = 4;

/// PERSISTENT RESERVE OUT service actions.
#[derive(Debug, Clone, Copy)]
enum OutAction {
    Reserve = 1,
    PreemptAndAbort = 5,
    RegisterAndIgnore = 6,
}

pub(crate) fn pr_in(service_action: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = PR_IN;
    c[1] = service_action;
    be::put_u16(&mut c, 7, PR_IN_LEN);
    c
}

fn pr_out(action: OutAction, kind: u8, key: u64, sa_key: u64) -> ([u8; 16], Vec<u8>) {
    let mut p = vec![0u8; 24];
    be::put_u64(&mut p, 0, key);
    be::put_u64(&mut p, 8, sa_key);
    p[20] = 0x01; // APTPL
    let mut c = [0u8; 16];
    c[0] = PR_OUT;
    c[1] = action as u8;
    c[2] = kind & 0x0f; // scope 0: the LU
    be::put_u32(&mut c, 5, p.len() as u32);
    (c, p)
}

/// READ KEYS: the generation and every registered key (one per registered I_T nexus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registrations {
    /// PRgeneration: bumped by the target on every registration change.
    pub generation: u32,
    /// Registered keys, one per I_T nexus (so a key may appear more than once).
    pub keys: Vec<u64>,
}

impl Registrations {
    pub(crate) fn parse(d: &[u8]) -> Option<Registrations> {
        if d.len() < 8 {
            return None;
        }
        let len = (be::u32_at(d, 4) as usize).min(d.len() - 8);
        let keys = d[8..8 + len]
            .chunks_exact(8)
            .map(|k| be::u64_at(k, 0))
            .collect();
        Some(Registrations {
            generation: be::u32_at(d, 0),
            keys,
        })
    }
}

/// READ RESERVATION: who holds the LU's persistent reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The holder's key (0 for the all-registrants types).
    pub key: u64,
    /// The reservation type.
    pub kind: u8,
}

pub(crate) fn parse_reservation(d: &[u8]) -> Option<Option<Holder>> {
    if d.len() < 8 {
        return None;
    }
    if be::u32_at(d, 4) < 16 {
        return Some(None);
    }
    if d.len() < 24 {
        return None;
    }
    Some(Some(Holder {
        key: be::u64_at(d, 8),
        kind: d[21] & 0x0f,
    }))
}

/// What [`Session::fence_others`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fenced {
    /// Keys of other initiators whose registrations were removed (PREEMPT AND ABORT),
    /// the previous holder's first.
    pub preempted: Vec<u64>,
    /// The generation after the last change.
    pub generation: u32,
}

impl Session {
    /// PERSISTENT RESERVE IN, READ KEYS.
    pub async fn read_keys(&self) -> Result<Registrations, Error> {
        let r = self
            .command(pr_in(0), u32::from(PR_IN_LEN), Vec::new())
            .await?;
        Registrations::parse(&r).ok_or_else(|| Error::Protocol("READ KEYS data unusable".into()))
    }

    /// PERSISTENT RESERVE IN, READ RESERVATION: the holder, if any.
    pub async fn read_reservation(&self) -> Result<Option<Holder>, Error> {
        let r = self
            .command(pr_in(1), u32::from(PR_IN_LEN), Vec::new())
            .await?;
        parse_reservation(&r)
            .ok_or_else(|| Error::Protocol("READ RESERVATION data unusable".into()))
    }

    async fn pr_out(
        &self,
        action: OutAction,
        kind: u8,
        key: u64,
        sa_key: u64,
    ) -> Result<(), Error> {
        let (cdb, p) = pr_out(action, kind, key, sa_key);
        self.command(cdb, 0, p).await.map(|_| ())
    }

    /// Registers `key` for this session's I_T nexus, whatever it had before (REGISTER AND
    /// IGNORE EXISTING KEY, APTPL); `key` 0 unregisters (and, for the holder, releases a
    /// registrants-only reservation).
    pub async fn register(&self, key: u64) -> Result<(), Error> {
        self.pr_out(OutAction::RegisterAndIgnore, 0, 0, key).await
    }

    /// Registers `key` and makes this session the only writer: holds a Write Exclusive –
    /// Registrants Only reservation (RESERVE when nobody holds one, else PREEMPT AND
    /// ABORT of the holder's key, which removes every registration with it and aborts
    /// their commands in flight), then removes every other key registered (a registrant
    /// could write). Preempting our own key is how a node's new session drops the
    /// registrations of its own dead sessions. Remembered: after a reconnect the session
    /// checks the registration is still there (see the module docs).
    pub async fn fence_others(&self, key: u64) -> Result<Fenced, Error> {
        if key == 0 {
            return Err(Error::Invalid("a reservation key must not be 0".into()));
        }
        let kind = WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
        let mut last = None;
        for _ in 0..FENCE_ATTEMPTS {
            match self.try_fence(key, kind).await {
                Ok(f) => {
                    self.remember_fence(key, f.generation);
                    return Ok(f);
                }
                // Another initiator changed the registrations between our READ and
                // our PREEMPT: look again.
                Err(Error::Scsi(ScsiError::ReservationConflict)) => {
                    last = Some(Error::Scsi(ScsiError::ReservationConflict));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::Scsi(ScsiError::ReservationConflict)))
    }

    async fn try_fence(&self, key: u64, kind: u8) -> Result<Fenced, Error> {
        self.register(key).await?;
        let mut preempted = Vec::new();
        match self.read_reservation().await? {
            None => self.pr_out(OutAction::Reserve, kind, key, 0).await?,
            Some(h) => {
                // An all-registrants reservation is taken over with service action key 0.
                let victim = if ALL_REGISTRANTS.contains(&h.kind) {
                    0
                } else {
                    h.key
                };
                self.pr_out(OutAction::PreemptAndAbort, kind, key, victim)
                    .await?;
                if victim != key && victim != 0 {
                    preempted.push(victim);
                }
            }
        }
        let regs = self.read_keys().await?;
        let mut others: Vec<u64> = regs.keys.iter().copied().filter(|k| *k != key).collect();
        others.sort_unstable();
        others.dedup();
        for k in others {
            self.pr_out(OutAction::PreemptAndAbort, kind, key, k)
                .await?;
            preempted.push(k);
        }
        let generation = self.read_keys().await?.generation;
        Ok(Fenced {
            preempted,
            generation,
        })
    }

    /// Gives the volume up cleanly: unregisters this nexus (which releases the
    /// reservation it holds), unless another initiator fenced it off already.
    pub async fn unfence(&self) -> Result<(), Error> {
        if self.forget_fence() {
            self.register(0).await?;
        }
        Ok(())
    }

    /// After a reconnect: whether our registration survived; see the module docs.
    pub(crate) async fn recheck_fence(&self, key: u64, generation: u32) {
        match self.read_keys().await {
            Ok(r) if r.keys.contains(&key) => {}
            Ok(r) if r.keys.is_empty() && r.generation < generation => {
                tracing::warn!(key = %format_args!("{key:#018x}"), "the target lost its reservations (generation {} < {generation}); registering again", r.generation);
                if let Err(e) = self.fence_others(key).await {
                    tracing::error!(error = %e, "registering the reservation key again failed");
                }
            }
            Ok(r) => {
                self.latch_fenced(&format!(
                    "key {key:#018x} is no longer registered (registered: {:x?})",
                    r.keys
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "checking the reservation after a reconnect failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_and_parsers() {
        let (c, p) = pr_out(OutAction::PreemptAndAbort, 5, 0x11, 0x22);
        assert_eq!((c[0], c[1], c[2], c[8]), (0x5f, 5, 5, 24));
        assert_eq!((p[7], p[15], p[20]), (0x11, 0x22, 1));
        let c = pr_in(1);
        assert_eq!((c[0], c[1], be::u16_at(&c, 7)), (0x5e, 1, PR_IN_LEN));
        let mut d = vec![0, 0, 0, 9, 0, 0, 0, 16];
        d.resize(24, 0);
        be::put_u64(&mut d, 8, 1);
        be::put_u64(&mut d, 16, 2);
        let r = Registrations::parse(&d).unwrap();
        assert_eq!((r.generation, r.keys), (9, vec![1, 2]));
        assert_eq!(Registrations::parse(&d[..4]), None);
        let mut res = vec![0, 0, 0, 9, 0, 0, 0, 16];
        res.resize(24, 0);
        be::put_u64(&mut res, 8, 7);
        res[21] = 5;
        assert_eq!(
            parse_reservation(&res),
            Some(Some(Holder { key: 7, kind: 5 }))
        );
        assert_eq!(parse_reservation(&res[..8]), None);
        assert_eq!(parse_reservation(&[0, 0, 0, 9, 0, 0, 0, 0]), Some(None));
    }
}
