//! The initiator side of login (RFC 7143 §6, §11.12-13): security stage with CHAP
//! (one-way and mutual), operational negotiation, redirects; and SendTargets discovery.
//!
//! Owns: a TCP stream until it reaches full feature phase. Invariants: stages go 0 -> 1 ->
//! 3; CHAP uses MD5 (CHAP_A=5) only; with mutual CHAP the login fails unless the target
//! proved it knows its secret; the negotiated values used later are the target's answers
//! (bounded by what we offered). Never: log a secret.

use crate::error::Error;
use bytes::Bytes;
use cstor_iscsi::chap;
use cstor_iscsi::pdu::{self, op, Digests, OutPdu, StatSn, NO_TAG};
use cstor_iscsi::text;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What we offer for MaxRecvDataSegmentLength (the target sends at most 256 KiB anyway).
pub(crate) const OUR_MAX_RECV_DATA: u32 = 256 * 1024;
/// MaxBurstLength we offer: the target's largest.
const OUR_MAX_BURST: u32 = 1024 * 1024;
/// FirstBurstLength we offer.
const OUR_FIRST_BURST: u32 = 256 * 1024;
/// MaxOutstandingR2T we offer: the target's largest; more R2Ts in flight keep a large
/// write streaming instead of waiting a round trip per burst.
const OUR_MAX_OUTSTANDING_R2T: u32 = 4;
/// Login PDUs we exchange before giving up (a target that never lets us transit).
const MAX_LOGIN_STEPS: usize = 16;
/// Text continuation PDUs we gather for one answer.
const MAX_TEXT_PARTS: usize = 256;
/// Total text we accept in one answer.
const MAX_TEXT_BYTES: usize = 1 << 20;

/// CHAP credentials of the initiator (and, for mutual CHAP, the target's).
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    /// CHAP_N we present.
    pub user: String,
    /// Secret shared with the target.
    pub secret: Vec<u8>,
    /// Mutual CHAP: the name and secret the target must answer our challenge with.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("user", &self.user)
            .field("mutual_user", &self.mutual.as_ref().map(|m| &m.0))
            .finish_non_exhaustive()
    }
}

/// Where and as whom to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSpec {
    /// Portal `HOST:PORT`.
    pub portal: String,
    /// Target name.
    pub target_iqn: String,
    /// Our initiator name (what the target's ACL lists).
    pub initiator_iqn: String,
    /// CHAP credentials; `None` offers AuthMethod=None only.
    pub chap: Option<Chap>,
    /// Logical unit number.
    pub lun: u64,
}

/// Operational parameters of the full feature phase, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) digests: Digests,
    /// Largest data segment we may send (the target's MaxRecvDataSegmentLength).
    pub(crate) max_xmit_data: u32,
    pub(crate) initial_r2t: bool,
    pub(crate) immediate_data: bool,
    pub(crate) first_burst: u32,
    pub(crate) max_burst: u32,
}

/// What we ask for in the operational stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) digests: Digests,
    pub(crate) initial_r2t: bool,
    pub(crate) immediate_data: bool,
}

/// A connection in full feature phase.
#[derive(Debug)]
pub(crate) struct LoggedIn {
    pub(crate) params: Params,
    /// StatSN we expect next.
    pub(crate) exp_stat_sn: u32,
    /// The first CmdSN of the full feature phase.
    pub(crate) cmd_sn: u32,
    pub(crate) max_cmd_sn: u32,
}

/// Outcome of one login attempt on one connection.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(LoggedIn),
    /// Status 0x0101/0x0102: log in at this `HOST:PORT` instead.
    Redirect(String),
}

/// Which session a login asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind<'a> {
    Normal(&'a str),
    Discovery,
}

struct Exchange<'a> {
    stream: &'a mut TcpStream,
    isid: [u8; 6],
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    target: String,
}

struct Answer {
    flags: u8,
    pairs: Vec<(String, String)>,
    max_cmd_sn: u32,
    status: (u8, u8),
}

impl Exchange<'_> {
    /// Sends one login request and gathers the response text, following the C bit.
    async fn step(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        pairs: &[(String, String)],
    ) -> Result<Answer, Error> {
        let mut flags = csg << 2;
        if transit {
            flags |= 0x80 | nsg;
        }
        let mut data = Bytes::from(text::encode(pairs));
        let mut gathered = Vec::new();
        for _ in 0..MAX_TEXT_PARTS {
            let mut req = OutPdu::new(op::LOGIN | 0x40, flags, StatSn::None);
            req.bhs[8..14].copy_from_slice(&self.isid);
            req.set_u32(16, self.itt)
                .set_u32(24, self.cmd_sn)
                .set_u32(28, self.exp_stat_sn);
            req.data = std::mem::take(&mut data);
            pdu::write_pdu(self.stream, &mut req, Digests::default()).await?;
            self.stream.flush().await?;
            let rsp = pdu::read_pdu(self.stream, OUR_MAX_RECV_DATA, Digests::default()).await?;
            if rsp.opcode() != op::LOGIN_RSP {
                return Err(Error::Protocol(format!(
                    "login answered with opcode {:#x}",
                    rsp.opcode()
                )));
            }
            self.exp_stat_sn = rsp.u32_at(24).wrapping_add(1);
            let status = (rsp.bhs[36], rsp.bhs[37]);
            gathered.extend_from_slice(&rsp.data);
            if gathered.len() > MAX_TEXT_BYTES {
                return Err(Error::Protocol("login text too long".into()));
            }
            // C bit: more text follows; ask for it with an empty request (T=0).
            if rsp.bhs[1] & 0x40 != 0 && status.0 == 0 {
                flags = csg << 2;
                continue;
            }
            let pairs = text::parse(&gathered).map_err(|e| Error::Protocol(e.to_string()))?;
            return Ok(Answer {
                flags: rsp.bhs[1],
                pairs,
                max_cmd_sn: rsp.u32_at(32),
                status,
            });
        }
        Err(Error::Protocol("endless login text".into()))
    }
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_owned(), v.into())
}

/// Logs in on `stream` up to full feature phase.
pub(crate) async fn login(
    stream: &mut TcpStream,
    kind: Kind<'_>,
    initiator: &str,
    chap_cfg: Option<&Chap>,
    isid: [u8; 6],
    offer: Offer,
) -> Result<Outcome, Error> {
    let target = match kind {
        Kind::Normal(t) => t.to_owned(),
        Kind::Discovery => "discovery".to_owned(),
    };
    let mut x = Exchange {
        stream,
        isid,
        itt: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        target,
    };
    let mut first = vec![kv("InitiatorName", initiator)];
    match kind {
        Kind::Normal(t) => {
            first.push(kv("SessionType", "Normal"));
            first.push(kv("TargetName", t));
        }
        Kind::Discovery => first.push(kv("SessionType", "Discovery")),
    }
    first.push(kv(
        "AuthMethod",
        if chap_cfg.is_some() {
            "CHAP,None"
        } else {
            "None"
        },
    ));
    // Security stage.
    let mut to_send = first;
    let mut our_challenge: Option<(u8, [u8; 16])> = None;
    let mut transit = true;
    let mut security_done = false;
    for _ in 0..MAX_LOGIN_STEPS {
        let a = x.step(0, 1, transit, &to_send).await?;
        if let Some(out) = refused(&x, &a)? {
            return Ok(out);
        }
        if let Some(r) = get(&a.pairs, "CHAP_R") {
            // Mutual CHAP: the target's answer to our challenge.
            let (Some((id, c)), Some(cfg)) = (our_challenge, chap_cfg) else {
                return Err(Error::Protocol("CHAP_R we did not ask for".into()));
            };
            let Some((muser, msecret)) = &cfg.mutual else {
                return Err(Error::TargetAuthFailed);
            };
            let expected = chap::response(id, msecret, &c);
            let got = chap::from_binary(r).unwrap_or_default();
            if get(&a.pairs, "CHAP_N") != Some(muser.as_str()) || !chap::ct_eq(&got, &expected) {
                return Err(Error::TargetAuthFailed);
            }
            our_challenge = None;
        } else if our_challenge.is_some() && a.flags & 0x80 != 0 {
            // The target let us in without proving itself: refuse to go on.
            return Err(Error::TargetAuthFailed);
        }
        if a.flags & 0x80 != 0 {
            security_done = (a.flags & 3) == 1;
            if !security_done {
                return Err(Error::Protocol(format!(
                    "target moved to stage {} from security",
                    a.flags & 3
                )));
            }
            break;
        }
        to_send = Vec::new();
        transit = true;
        match get(&a.pairs, "AuthMethod") {
            Some("CHAP") if get(&a.pairs, "CHAP_C").is_none() => {
                to_send.push(kv("CHAP_A", "5"));
                transit = false;
            }
            Some("CHAP") | None => {}
            Some("None") => {}
            Some(other) => {
                return Err(Error::Protocol(format!("AuthMethod {other} not offered")));
            }
        }
        if let (Some(i), Some(c)) = (get(&a.pairs, "CHAP_I"), get(&a.pairs, "CHAP_C")) {
            let Some(cfg) = chap_cfg else {
                return Err(Error::Protocol("CHAP challenge without credentials".into()));
            };
            if get(&a.pairs, "CHAP_A") != Some("5") {
                return Err(Error::Protocol(
                    "target chose a CHAP algorithm other than MD5".into(),
                ));
            }
            let id: u8 = i
                .parse()
                .map_err(|_| Error::Protocol(format!("bad CHAP_I {i:?}")))?;
            let challenge = chap::from_binary(c)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Error::Protocol("bad CHAP_C".into()))?;
            to_send.push(kv("CHAP_N", cfg.user.clone()));
            to_send.push(kv(
                "CHAP_R",
                chap::to_hex(&chap::response(id, &cfg.secret, &challenge)),
            ));
            if cfg.mutual.is_some() {
                let mut mine = [0u8; 16];
                let mut mid = [0u8; 1];
                chap::random(&mut mine)?;
                chap::random(&mut mid)?;
                to_send.push(kv("CHAP_I", mid[0].to_string()));
                to_send.push(kv("CHAP_C", chap::to_hex(&mine)));
                our_challenge = Some((mid[0], mine));
            }
        }
    }
    if !security_done {
        return Err(Error::Protocol("security stage did not end".into()));
    }
    // Operational stage.
    let yn = |b: bool| if b { "Yes" } else { "No" };
    let digest = |b: bool| if b { "CRC32C,None" } else { "None" };
    let mut to_send = vec![
        kv("HeaderDigest", digest(offer.digests.header)),
        kv("DataDigest", digest(offer.digests.data)),
        kv("MaxRecvDataSegmentLength", OUR_MAX_RECV_DATA.to_string()),
        kv("ErrorRecoveryLevel", "0"),
        kv("InitialR2T", yn(offer.initial_r2t)),
        kv("ImmediateData", yn(offer.immediate_data)),
        kv("MaxBurstLength", OUR_MAX_BURST.to_string()),
        kv("FirstBurstLength", OUR_FIRST_BURST.to_string()),
        kv("MaxOutstandingR2T", OUR_MAX_OUTSTANDING_R2T.to_string()),
        kv("MaxConnections", "1"),
        kv("DefaultTime2Wait", "2"),
        kv("DefaultTime2Retain", "0"),
        kv("DataPDUInOrder", "Yes"),
        kv("DataSequenceInOrder", "Yes"),
        kv("IFMarker", "No"),
        kv("OFMarker", "No"),
    ];
    if matches!(kind, Kind::Discovery) {
        // Session-wide keys are irrelevant to discovery (RFC 7143 §13).
        to_send.retain(|(k, _)| {
            matches!(
                k.as_str(),
                "HeaderDigest" | "DataDigest" | "MaxRecvDataSegmentLength" | "ErrorRecoveryLevel"
            )
        });
    }
    let mut answers: Vec<(String, String)> = Vec::new();
    for _ in 0..MAX_LOGIN_STEPS {
        let a = x.step(1, 3, true, &to_send).await?;
        if let Some(out) = refused(&x, &a)? {
            return Ok(out);
        }
        answers.extend(a.pairs);
        if a.flags & 0x80 != 0 {
            if a.flags & 3 != 3 {
                return Err(Error::Protocol(
                    "target did not move to full feature".into(),
                ));
            }
            let params = negotiated(&answers, offer)?;
            return Ok(Outcome::Done(LoggedIn {
                params,
                exp_stat_sn: x.exp_stat_sn,
                cmd_sn: x.cmd_sn,
                max_cmd_sn: a.max_cmd_sn,
            }));
        }
        to_send = Vec::new();
    }
    Err(Error::Protocol("operational stage did not end".into()))
}

/// A refusal or redirect in a login response.
fn refused(x: &Exchange<'_>, a: &Answer) -> Result<Option<Outcome>, Error> {
    match a.status {
        (0, _) => Ok(None),
        (1, _) => {
            let to = get(&a.pairs, "TargetAddress")
                .ok_or_else(|| Error::Protocol("redirect without TargetAddress".into()))?;
            let addr = to.split(',').next().unwrap_or(to).to_owned();
            Ok(Some(Outcome::Redirect(addr)))
        }
        (class, detail) => Err(Error::LoginRefused {
            target: x.target.clone(),
            class,
            detail,
        }),
    }
}

/// The values in force, from the target's answers (RFC 7143 §13 result functions).
fn negotiated(ans: &[(String, String)], offer: Offer) -> Result<Params, Error> {
    let num = |k: &str, default: u32| -> Result<u32, Error> {
        match get(ans, k) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 512)
                .ok_or_else(|| Error::Protocol(format!("bad {k}={v}"))),
        }
    };
    let flag = |k: &str, default: bool| match get(ans, k) {
        Some("Yes") => true,
        Some("No") => false,
        _ => default,
    };
    let digest = |k: &str| get(ans, k) == Some("CRC32C");
    let max_burst = num("MaxBurstLength", 262_144)?.min(OUR_MAX_BURST);
    let first_burst = num("FirstBurstLength", 65_536)?
        .min(OUR_FIRST_BURST)
        .min(max_burst);
    Ok(Params {
        digests: Digests {
            header: digest("HeaderDigest") && offer.digests.header,
            data: digest("DataDigest") && offer.digests.data,
        },
        // Declarative: absent means the RFC default of 8 KiB.
        max_xmit_data: num("MaxRecvDataSegmentLength", 8192)?.min(1 << 24),
        initial_r2t: flag("InitialR2T", true) || offer.initial_r2t,
        immediate_data: flag("ImmediateData", true) && offer.immediate_data,
        first_burst,
        max_burst,
    })
}

/// One target found by SendTargets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    /// Target name.
    pub iqn: String,
    /// Its portals, `HOST:PORT,TPGT` as announced.
    pub addresses: Vec<String>,
}

/// Asks `portal` for the targets it offers us (a discovery session with
/// `SendTargets=All`, continuation PDUs followed, then logout).
pub async fn discover(
    portal: &str,
    initiator_iqn: &str,
    chap_cfg: Option<&Chap>,
) -> Result<Vec<DiscoveredTarget>, Error> {
    let fut = discover_inner(portal, initiator_iqn, chap_cfg);
    tokio::time::timeout(std::time::Duration::from_secs(30), fut)
        .await
        .map_err(|_| Error::Timeout("discovery"))?
}

async fn discover_inner(
    portal: &str,
    initiator_iqn: &str,
    chap_cfg: Option<&Chap>,
) -> Result<Vec<DiscoveredTarget>, Error> {
    let mut stream = TcpStream::connect(portal)
        .await
        .map_err(|source| Error::Connect {
            addr: portal.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let mut isid = [0x80u8, 0, 0, 0, 0, 0];
    chap::random(&mut isid[1..])?;
    let offer = Offer {
        digests: Digests::default(),
        initial_r2t: true,
        immediate_data: false,
    };
    let li = match login(
        &mut stream,
        Kind::Discovery,
        initiator_iqn,
        chap_cfg,
        isid,
        offer,
    )
    .await?
    {
        Outcome::Done(li) => li,
        Outcome::Redirect(to) => {
            return Err(Error::Protocol(format!("discovery redirected to {to}")));
        }
    };
    let mut exp_stat_sn = li.exp_stat_sn;
    let cmd_sn = li.cmd_sn;
    let itt = 1u32;
    let mut ttt = NO_TAG;
    let mut data = Bytes::from(text::encode(&[kv("SendTargets", "All")]));
    let mut gathered = Vec::new();
    let digests = li.params.digests;
    for _ in 0..MAX_TEXT_PARTS {
        let mut req = OutPdu::new(op::TEXT | 0x40, 0x80, StatSn::None);
        req.set_u32(16, itt)
            .set_u32(20, ttt)
            .set_u32(24, cmd_sn)
            .set_u32(28, exp_stat_sn);
        req.data = std::mem::take(&mut data);
        pdu::write_pdu(&mut stream, &mut req, digests).await?;
        stream.flush().await?;
        let rsp = loop {
            let p = pdu::read_pdu(&mut stream, OUR_MAX_RECV_DATA, digests).await?;
            if p.opcode() == op::TEXT_RSP && p.itt() == itt {
                break p;
            }
            // NOP-In pings and the like are not expected in the few round trips this takes.
            if p.opcode() == op::REJECT {
                return Err(Error::Protocol("SendTargets rejected".into()));
            }
        };
        exp_stat_sn = rsp.u32_at(24).wrapping_add(1);
        gathered.extend_from_slice(&rsp.data);
        if gathered.len() > MAX_TEXT_BYTES {
            return Err(Error::Protocol("SendTargets answer too long".into()));
        }
        if rsp.bhs[1] & 0x40 == 0 {
            let mut logout = OutPdu::new(op::LOGOUT | 0x40, 0x80, StatSn::None);
            logout
                .set_u32(16, itt + 1)
                .set_u32(24, cmd_sn)
                .set_u32(28, exp_stat_sn);
            // Best effort: the answer is already complete.
            if pdu::write_pdu(&mut stream, &mut logout, digests)
                .await
                .is_ok()
            {
                let _ = stream.flush().await;
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    pdu::read_pdu(&mut stream, OUR_MAX_RECV_DATA, digests),
                )
                .await;
            }
            return Ok(parse_send_targets(&gathered));
        }
        ttt = rsp.u32_at(20);
    }
    Err(Error::Protocol("endless SendTargets answer".into()))
}

fn parse_send_targets(data: &[u8]) -> Vec<DiscoveredTarget> {
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in text::parse(data).unwrap_or_default() {
        match k.as_str() {
            "TargetName" => out.push(DiscoveredTarget {
                iqn: v,
                addresses: Vec::new(),
            }),
            "TargetAddress" => {
                if let Some(t) = out.last_mut() {
                    t.addresses.push(v);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_targets_groups_addresses() {
        let data = text::encode(&[
            kv("TargetName", "iqn.a"),
            kv("TargetAddress", "1.2.3.4:3260,1"),
            kv("TargetAddress", "5.6.7.8:3260,1"),
            kv("TargetName", "iqn.b"),
        ]);
        let t = parse_send_targets(&data);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].addresses.len(), 2);
        assert!(t[1].addresses.is_empty());
    }

    #[test]
    fn negotiation_takes_the_targets_answers_within_our_offer() {
        let offer = Offer {
            digests: Digests::default(),
            initial_r2t: false,
            immediate_data: true,
        };
        let ans = vec![
            kv("MaxRecvDataSegmentLength", "262144"),
            kv("MaxBurstLength", "1048576"),
            kv("FirstBurstLength", "2097152"),
            kv("InitialR2T", "No"),
        ];
        let p = negotiated(&ans, offer).unwrap();
        assert_eq!(p.max_xmit_data, 262_144);
        assert_eq!(p.first_burst, OUR_FIRST_BURST);
        assert!(!p.initial_r2t && p.immediate_data);
        let p = negotiated(&[], offer).unwrap();
        assert_eq!((p.max_xmit_data, p.first_burst), (8192, 65_536));
        assert!(negotiated(&[kv("MaxBurstLength", "x")], offer).is_err());
    }
}
