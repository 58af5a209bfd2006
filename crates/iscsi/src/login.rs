//! The login phase (RFC 7143 §6, §11.12-13): stages, operational parameter negotiation,
//! CHAP, the initiator allow list, and session reinstatement.
//!
//! Owns: the connection until it reaches full feature phase. Invariants: no data of a
//! normal session flows before authentication succeeded when the target requires CHAP;
//! every negotiated value is within our limits (limits.rs); a failed login gets one
//! login response with a status class and the connection is closed.
//! Never: run longer than `limits::LOGIN_TIMEOUT` (the caller bounds it).

use crate::be;
use crate::chap;
use crate::limits;
use crate::pdu::{self, op, Digests, OutPdu, PduError, StatSn};
use crate::target::{Server, Target};
use crate::text;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Parameters agreed at login that govern the full feature phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Digests in use.
    pub digests: Digests,
    /// Largest data segment we accept.
    pub max_recv_data: u32,
    /// Largest data segment we may send (the initiator's MaxRecvDataSegmentLength).
    pub max_xmit_data: u32,
    /// Whether unsolicited Data-Out is forbidden.
    pub initial_r2t: bool,
    /// Whether data may ride in the command PDU.
    pub immediate_data: bool,
    /// Unsolicited data limit per command.
    pub first_burst: u32,
    /// Largest solicited sequence.
    pub max_burst: u32,
    /// R2Ts outstanding per command.
    pub max_outstanding_r2t: u32,
}

impl Default for Negotiated {
    /// RFC 7143 defaults for keys the initiator does not send.
    fn default() -> Self {
        Negotiated {
            digests: Digests::default(),
            max_recv_data: limits::MAX_RECV_DATA_SEGMENT_BYTES,
            max_xmit_data: 8192,
            initial_r2t: true,
            immediate_data: true,
            first_burst: 65536,
            max_burst: 262144,
            max_outstanding_r2t: 1,
        }
    }
}

/// What kind of session the login created.
#[derive(Debug, Clone)]
pub(crate) enum SessionKind {
    Discovery,
    Normal(Arc<Target>),
}

/// A successful login.
#[derive(Debug)]
pub(crate) struct LoginOutcome {
    pub kind: SessionKind,
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub params: Negotiated,
    /// Next StatSN to send.
    pub stat_sn: u32,
    /// The initiator's first CmdSN of the full feature phase.
    pub cmd_sn: u32,
    /// The CHAP secrets the initiator proved (`None`: it logged in without CHAP).
    pub chap: Option<crate::ChapConfig>,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Reading or writing the socket.
    #[error(transparent)]
    Pdu(#[from] PduError),
    /// Socket write failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The initiator sent something other than a login request.
    #[error("expected a login request, got opcode {0:#x}")]
    NotLogin(u8),
    /// Refused with this status (class, detail) after telling the initiator.
    #[error("login refused ({class:#04x}/{detail:#04x}): {reason}")]
    Refused {
        /// Status class.
        class: u8,
        /// Status detail.
        detail: u8,
        /// Why.
        reason: String,
    },
    /// The target moved (for now) to another portal; the initiator was told where
    /// (status 0x0101 with TargetAddress) and logs in there.
    #[error("target {target} redirected to {to}")]
    Redirected {
        /// The target asked for.
        target: String,
        /// `ADDR:PORT` it is served at now.
        to: String,
    },
}

/// Login status codes (RFC 7143 §11.13.5).
mod status {
    pub const AUTH_FAILED: (u8, u8) = (0x02, 0x01);
    pub const FORBIDDEN: (u8, u8) = (0x02, 0x02);
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    pub const SESSION_NOT_FOUND: (u8, u8) = (0x02, 0x0a);
    pub const INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
    pub const MOVED_TEMPORARILY: (u8, u8) = (0x01, 0x01);
}

#[derive(Debug)]
enum Auth {
    /// No CHAP in progress.
    Idle,
    /// AuthMethod=CHAP agreed, waiting for CHAP_A.
    Chosen,
    /// Challenge sent.
    Challenged { id: u8, challenge: [u8; 16] },
    /// Authenticated (or not required).
    Done,
}

struct State<'a> {
    server: &'a Server,
    initiator: Option<String>,
    kind: Option<SessionKind>,
    auth: Auth,
    /// The CHAP secrets the initiator proved.
    proved: Option<crate::ChapConfig>,
    params: Negotiated,
    tpgt_sent: bool,
    mrdsl_sent: bool,
}

fn fail<T>(code: (u8, u8), reason: impl Into<String>) -> Result<T, LoginError> {
    Err(LoginError::Refused {
        class: code.0,
        detail: code.1,
        reason: reason.into(),
    })
}

fn num(v: &str, lo: u32, hi: u32) -> Option<u32> {
    v.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n))
}

fn yes(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_owned()
}

impl State<'_> {
    fn chap_required(&self) -> bool {
        matches!(&self.kind, Some(SessionKind::Normal(t)) if t.chap().is_some())
    }

    /// Keys valid in the first PDU only, which decide the session kind and target.
    fn identify(&mut self, pairs: &[(String, String)]) -> Result<(), LoginError> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let Some(initiator) = get("InitiatorName") else {
            return fail(status::MISSING_PARAMETER, "no InitiatorName");
        };
        self.initiator = Some(initiator.to_owned());
        let kind = get("SessionType").unwrap_or("Normal");
        self.kind = Some(match kind {
            "Discovery" => SessionKind::Discovery,
            "Normal" => {
                let Some(name) = get("TargetName") else {
                    return fail(status::MISSING_PARAMETER, "no TargetName");
                };
                let Some(t) = self.server.target(name) else {
                    return fail(status::NOT_FOUND, format!("no target {name}"));
                };
                if !t.allows(initiator) {
                    return fail(
                        status::FORBIDDEN,
                        format!("{initiator} not allowed on {name}"),
                    );
                }
                if let Some(to) = t.redirect() {
                    return Err(LoginError::Redirected {
                        target: name.to_owned(),
                        to,
                    });
                }
                SessionKind::Normal(t)
            }
            other => return fail(status::INITIATOR_ERROR, format!("bad SessionType {other}")),
        });
        Ok(())
    }

    fn security(
        &mut self,
        pairs: &[(String, String)],
        out: &mut Vec<(String, String)>,
    ) -> Result<(), LoginError> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        if let Some(methods) = get("AuthMethod") {
            let offered: Vec<&str> = methods.split(',').collect();
            let choice = if self.chap_required() {
                if offered.contains(&"CHAP") {
                    "CHAP"
                } else {
                    "Reject"
                }
            } else if offered.contains(&"None") {
                "None"
            } else {
                "Reject"
            };
            out.push(("AuthMethod".into(), choice.into()));
            match choice {
                "CHAP" => self.auth = Auth::Chosen,
                "None" => self.auth = Auth::Done,
                _ => return fail(status::AUTH_FAILED, "no acceptable AuthMethod"),
            }
        }
        if let Some(algs) = get("CHAP_A") {
            if !matches!(self.auth, Auth::Chosen) {
                return fail(status::INITIATOR_ERROR, "CHAP_A out of sequence");
            }
            if !algs.split(',').any(|a| a == "5") {
                out.push(("CHAP_A".into(), "Reject".into()));
                return fail(
                    status::AUTH_FAILED,
                    "initiator does not offer CHAP with MD5",
                );
            }
            let mut challenge = [0u8; 16];
            let mut id = [0u8; 1];
            chap::random(&mut challenge)?;
            chap::random(&mut id)?;
            out.push(("CHAP_A".into(), "5".into()));
            out.push(("CHAP_I".into(), id[0].to_string()));
            out.push(("CHAP_C".into(), chap::to_hex(&challenge)));
            self.auth = Auth::Challenged {
                id: id[0],
                challenge,
            };
        }
        if let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) {
            let Auth::Challenged { id, challenge } = self.auth else {
                return fail(status::INITIATOR_ERROR, "CHAP_R out of sequence");
            };
            let Some(SessionKind::Normal(t)) = &self.kind else {
                return fail(status::AUTH_FAILED, "CHAP on a discovery session");
            };
            let Some(cfg) = t.chap() else {
                return fail(status::AUTH_FAILED, "CHAP not configured");
            };
            let expected = chap::response(id, &cfg.secret, &challenge);
            let got = chap::from_binary(resp).unwrap_or_default();
            if name != cfg.user || !chap::ct_eq(&got, &expected) {
                return fail(
                    status::AUTH_FAILED,
                    format!("CHAP response of {name:?} does not match"),
                );
            }
            if let (Some(i), Some(c)) = (get("CHAP_I"), get("CHAP_C")) {
                let Some((muser, msecret)) = &cfg.mutual else {
                    return fail(status::AUTH_FAILED, "mutual CHAP asked but not configured");
                };
                let (Some(i), Some(c)) = (num(i, 0, 255), chap::from_binary(c)) else {
                    return fail(status::AUTH_FAILED, "bad CHAP_I/CHAP_C");
                };
                if c == challenge || c.is_empty() {
                    return fail(status::AUTH_FAILED, "reflected CHAP challenge");
                }
                out.push(("CHAP_N".into(), muser.clone()));
                out.push((
                    "CHAP_R".into(),
                    chap::to_hex(&chap::response(i as u8, msecret, &c)),
                ));
            }
            self.auth = Auth::Done;
            self.proved = Some(cfg);
        }
        Ok(())
    }

    fn operational(&mut self, pairs: &[(String, String)], out: &mut Vec<(String, String)>) {
        let p = &mut self.params;
        for (k, v) in pairs {
            let reply: Option<String> = match k.as_str() {
                "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType" => None,
                "AuthMethod" | "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => None,
                "HeaderDigest" | "DataDigest" => {
                    let pick = v.split(',').find(|x| *x == "CRC32C" || *x == "None");
                    if k == "HeaderDigest" {
                        p.digests.header = pick == Some("CRC32C");
                    } else {
                        p.digests.data = pick == Some("CRC32C");
                    }
                    Some(pick.unwrap_or("Reject").to_owned())
                }
                "MaxRecvDataSegmentLength" => {
                    if let Some(n) = num(v, 512, (1 << 24) - 1) {
                        p.max_xmit_data = n.min(limits::MAX_SEND_DATA_SEGMENT_BYTES);
                    }
                    None
                }
                "MaxConnections" => Some(num(v, 1, 65535).map_or("Reject".into(), |_| "1".into())),
                "InitialR2T" => Some(yes(v).map_or("Reject".into(), |b| {
                    p.initial_r2t = b;
                    yn(b)
                })),
                "ImmediateData" => Some(yes(v).map_or("Reject".into(), |b| {
                    p.immediate_data = b;
                    yn(b)
                })),
                "MaxBurstLength" => Some(num(v, 512, (1 << 24) - 1).map_or("Reject".into(), |n| {
                    p.max_burst = n.min(limits::MAX_BURST_BYTES);
                    p.max_burst.to_string()
                })),
                "FirstBurstLength" => {
                    Some(num(v, 512, (1 << 24) - 1).map_or("Reject".into(), |n| {
                        p.first_burst = n.min(limits::MAX_BURST_BYTES);
                        p.first_burst.to_string()
                    }))
                }
                "MaxOutstandingR2T" => Some(num(v, 1, 65535).map_or("Reject".into(), |n| {
                    p.max_outstanding_r2t = n.min(limits::MAX_OUTSTANDING_R2T);
                    p.max_outstanding_r2t.to_string()
                })),
                "DefaultTime2Wait" => {
                    Some(num(v, 0, 3600).map_or("Reject".into(), |n| n.max(2).to_string()))
                }
                "DefaultTime2Retain" => {
                    Some(num(v, 0, 3600).map_or("Reject".into(), |_| "0".into()))
                }
                "DataPDUInOrder" | "DataSequenceInOrder" => {
                    Some(yes(v).map_or("Reject".into(), |_| "Yes".into()))
                }
                "ErrorRecoveryLevel" => Some(num(v, 0, 2).map_or("Reject".into(), |_| "0".into())),
                "IFMarker" | "OFMarker" => Some("No".into()),
                "IFMarkInt" | "OFMarkInt" => Some("Irrelevant".into()),
                "TaskReporting" => Some("RFC3720".into()),
                "iSCSIProtocolLevel" => Some("0".into()),
                _ => Some("NotUnderstood".into()),
            };
            if let Some(r) = reply {
                out.push((k.clone(), r));
            }
        }
        if p.first_burst > p.max_burst {
            p.first_burst = p.max_burst;
        }
    }
}

fn response(
    req: &pdu::Pdu,
    flags: u8,
    stat_sn: u32,
    cmd_sn: u32,
    tsih: u16,
    code: (u8, u8),
) -> OutPdu {
    let mut r = OutPdu::new(op::LOGIN_RSP, flags, StatSn::Advance);
    r.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
    be::put_u16(&mut r.bhs, 14, tsih);
    r.set_u32(16, req.itt());
    pdu::stamp(
        &mut r,
        Some(stat_sn),
        cmd_sn,
        cmd_sn.wrapping_add(limits::CMD_WINDOW - 1),
    );
    r.bhs[36] = code.0;
    r.bhs[37] = code.1;
    r
}

/// Runs the login phase to full feature phase or failure.
pub(crate) async fn login<R, W>(
    r: &mut R,
    w: &mut W,
    server: &Server,
) -> Result<LoginOutcome, LoginError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut st = State {
        server,
        initiator: None,
        kind: None,
        auth: Auth::Idle,
        proved: None,
        params: Negotiated::default(),
        tpgt_sent: false,
        mrdsl_sent: false,
    };
    let mut stat_sn: u32 = 1;
    let mut first: Option<([u8; 6], u16, u32)> = None;
    let mut pending: Vec<u8> = Vec::new();
    for _ in 0..limits::MAX_LOGIN_PDUS {
        let req = pdu::read_pdu(r, limits::MAX_RECV_DATA_SEGMENT_BYTES, Digests::default()).await?;
        if req.opcode() != op::LOGIN {
            return Err(LoginError::NotLogin(req.opcode()));
        }
        let flags = req.bhs[1];
        let (transit, cont) = (flags & 0x80 != 0, flags & 0x40 != 0);
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        let cmd_sn = req.u32_at(24);
        let (isid, tsih) = match first {
            Some((isid, tsih, _)) => (isid, tsih),
            None => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&req.bhs[8..14]);
                let tsih = be::u16_at(&req.bhs, 14);
                first = Some((isid, tsih, cmd_sn));
                (isid, tsih)
            }
        };
        let outcome = step(&mut st, &req, &mut pending, (transit, cont, csg, nsg), tsih).await;
        let (flags_out, pairs, done) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let refusal = match &e {
                    LoginError::Refused { class, detail, .. } => Some(((*class, *detail), None)),
                    LoginError::Redirected { to, .. } => {
                        // RFC 7143 §11.13.5: the new portal, with our portal group tag.
                        let keys = vec![("TargetAddress".to_owned(), format!("{to},1"))];
                        Some((status::MOVED_TEMPORARILY, Some(keys)))
                    }
                    _ => None,
                };
                if let Some((code, keys)) = refusal {
                    let mut resp = response(&req, 0, stat_sn, cmd_sn, 0, code);
                    if let Some(k) = keys {
                        resp.data = text::encode(&k).into();
                    }
                    pdu::write_pdu(w, &mut resp, Digests::default()).await?;
                    w.flush().await?;
                }
                return Err(e);
            }
        };
        let new_tsih = if done { server.new_tsih() } else { 0 };
        let mut resp = response(
            &req,
            flags_out,
            stat_sn,
            cmd_sn,
            if done { new_tsih } else { tsih },
            (0, 0),
        );
        resp.data = text::encode(&pairs).into();
        pdu::write_pdu(w, &mut resp, Digests::default()).await?;
        w.flush().await?;
        stat_sn = stat_sn.wrapping_add(1);
        if done {
            let (Some(kind), Some(initiator)) = (st.kind, st.initiator) else {
                return fail(
                    status::INITIATOR_ERROR,
                    "login finished without identification",
                );
            };
            return Ok(LoginOutcome {
                kind,
                initiator,
                isid,
                tsih: new_tsih,
                params: st.params,
                stat_sn,
                cmd_sn,
                chap: st.proved,
            });
        }
    }
    fail(status::INITIATOR_ERROR, "too many login PDUs")
}

type Step = (u8, Vec<(String, String)>, bool);

async fn step(
    st: &mut State<'_>,
    req: &pdu::Pdu,
    pending: &mut Vec<u8>,
    (transit, cont, csg, nsg): (bool, bool, u8, u8),
    tsih: u16,
) -> Result<Step, LoginError> {
    if req.bhs[3] > 0 {
        return fail(status::UNSUPPORTED_VERSION, "VersionMin above 0");
    }
    if tsih != 0 {
        // One connection per session: adding a connection to an existing session is not offered.
        return fail(
            status::SESSION_NOT_FOUND,
            "multiple connections per session not supported",
        );
    }
    if pending.len() + req.data.len() > limits::MAX_TEXT_BYTES {
        return fail(status::INITIATOR_ERROR, "login text too long");
    }
    pending.extend_from_slice(&req.data);
    if cont {
        // More text follows; acknowledge with an empty response in the same stage.
        return Ok(((csg << 2), Vec::new(), false));
    }
    let data = std::mem::take(pending);
    let pairs = match text::parse(&data) {
        Ok(p) => p,
        Err(e) => return fail(status::INITIATOR_ERROR, e.to_string()),
    };
    if st.initiator.is_none() {
        st.identify(&pairs)?;
    }
    let mut out = Vec::new();
    if !st.tpgt_sent {
        if let Some(SessionKind::Normal(_)) = st.kind {
            out.push(("TargetPortalGroupTag".into(), "1".into()));
        }
        st.tpgt_sent = true;
    }
    match csg {
        0 => st.security(&pairs, &mut out)?,
        1 => {
            if st.chap_required() && !matches!(st.auth, Auth::Done) {
                return fail(
                    status::AUTH_FAILED,
                    "operational stage before authentication",
                );
            }
            st.operational(&pairs, &mut out);
            if !st.mrdsl_sent {
                out.push((
                    "MaxRecvDataSegmentLength".into(),
                    st.params.max_recv_data.to_string(),
                ));
                st.mrdsl_sent = true;
            }
        }
        _ => return fail(status::INITIATOR_ERROR, format!("bad current stage {csg}")),
    }
    if !transit {
        return Ok(((csg << 2), out, false));
    }
    if nsg <= csg || nsg == 2 {
        return fail(
            status::INITIATOR_ERROR,
            format!("bad stage transition {csg}->{nsg}"),
        );
    }
    if csg == 0 {
        match st.auth {
            Auth::Done => {}
            // No AuthMethod sent at all: acceptable only when no CHAP is required.
            Auth::Idle if !st.chap_required() => {}
            Auth::Idle => return fail(status::AUTH_FAILED, "authentication required"),
            // CHAP still in progress: the target declines the transit (T=0) and the
            // exchange continues in the security stage.
            Auth::Chosen | Auth::Challenged { .. } => return Ok((csg << 2, out, false)),
        }
    }
    Ok((0x80 | (csg << 2) | nsg, out, nsg == 3))
}
