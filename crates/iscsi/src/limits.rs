//! Every bound of the iSCSI target in one place, each with the reason for its value.

use std::time::Duration;

/// Largest data segment we accept in one PDU (our MaxRecvDataSegmentLength). 256 KiB keeps
/// per-connection buffering small while letting a 128 KiB I/O arrive in one PDU.
pub const MAX_RECV_DATA_SEGMENT_BYTES: u32 = 256 * 1024;

/// Largest data segment we ever send, whatever the initiator declares (RFC 7143 allows up
/// to 2^24-1); bounds the size of one outgoing PDU.
pub const MAX_SEND_DATA_SEGMENT_BYTES: u32 = 256 * 1024;

/// Largest MaxBurstLength and FirstBurstLength we agree to: one R2T never asks for more.
pub const MAX_BURST_BYTES: u32 = 1024 * 1024;

/// Largest transfer of one SCSI command (reported in VPD 0xB0). 32 MiB because initiators
/// (and libiscsi's conformance suite) send 65536-block writes.
pub const MAX_TRANSFER_BYTES: u32 = 32 * 1024 * 1024;

/// Data buffered for one session's commands at once; a command that would exceed it gets
/// TASK SET FULL and is retried by the initiator, so memory per session stays bounded
/// whatever the CmdSN window and transfer sizes.
pub const SESSION_BUFFER_BYTES: u32 = 128 * 1024 * 1024;

/// Data of NOP-In echoes queued for one connection's writer; beyond it the reader stops
/// reading until the client reads, so a client that pings without reading pins at most
/// this (plus one PDU) in the target.
pub const NOP_ECHO_BUFFER_BYTES: u32 = 256 * 1024;

/// Buffered command data (Data-Out gathered, Data-In not yet written) across all sessions
/// of a process, the default of `--max-buffered`; a command beyond it gets TASK SET FULL.
pub const MAX_BUFFERED_BYTES: u64 = 512 * 1024 * 1024;

/// Free buffer budget (a session's or the process's) below which completed commands no
/// longer reopen the CmdSN window: one largest transfer, so any command that could find
/// the budget full (and get TASK SET FULL) finds the window already closing.
pub const WINDOW_LOW_WATER_BYTES: u64 = MAX_TRANSFER_BYTES as u64;

/// A socket write that makes no progress for this long drops the connection: the client
/// stopped reading (or vanished), and its buffers and budget are released.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A discovery session with no text request for this long is closed (discovery clients
/// log out as soon as they have their list).
pub const DISCOVERY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections from one source address still logging in; beyond it the oldest is closed
/// to make room (a slow or hostile client cannot starve the others of login slots).
pub const MAX_LOGINS_PER_SOURCE: usize = 64;

/// Commands a session may have in flight (the CmdSN window). Deep enough for queue depth
/// 64 initiators; each in-flight command may hold up to MAX_TRANSFER_BYTES.
pub const CMD_WINDOW: u32 = 64;

/// R2Ts outstanding per command that we offer (MaxOutstandingR2T).
pub const MAX_OUTSTANDING_R2T: u32 = 4;

/// Login and text key=value payload across continuation PDUs. RFC 7143 requires at least
/// 8 KiB support; 64 KiB is ample and bounds a hostile login.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Key=value pairs in one login or text exchange.
pub const MAX_TEXT_KEYS: usize = 256;

/// Login PDUs exchanged before the connection must reach full feature phase.
pub const MAX_LOGIN_PDUS: u32 = 32;

/// A login must complete within this time or the connection is closed, so idle or hostile
/// connections cannot hold a slot forever.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// An idle full-feature connection gets a NOP-In ping after this long.
pub const NOP_IN_INTERVAL: Duration = Duration::from_secs(10);

/// A NOP-In ping unanswered for this long drops the connection (dead initiator).
pub const NOP_IN_TIMEOUT: Duration = Duration::from_secs(20);

/// Deadline of one backend call: past it the command's cancel signal is raised, so work the
/// backend has not started is refused (answered BUSY: the initiator retries) while work
/// under way finishes. Well below Linux's 15 s abort and 30 s command timeouts.
pub const BACKEND_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// T_hold (replication design §2.11): how long a command waits while its backend holds
/// (a membership change being recorded) before it is answered BUSY; with the settle bound
/// it stays below Linux's 15 s abort timeout, far below its 30 s command timeout.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(4);

/// Longest T_hold `--hold-timeout` accepts.
pub const MAX_HOLD_TIMEOUT: Duration = Duration::from_secs(10);

/// Every backend call settles within this bound (backend.rs); a call still unsettled past
/// it makes the LU answer NOT READY until it settles. The pool faults a hung device inside
/// it; below Linux's 15 s abort timeout so an initiator's abort finds the call ended.
pub const BACKEND_SETTLE_BOUND: Duration = Duration::from_secs(10);

/// Before a planned stop or target removal, how long initiators get to log out after the
/// asynchronous "request logout" event (also its Parameter3, in seconds) before their
/// sessions are ended.
pub const LOGOUT_REQUEST_WAIT: Duration = Duration::from_secs(3);

/// How long a write waits for the Data-Out PDUs it solicited before the command fails;
/// below Linux's 15 s abort timeout (a logout aborts such commands at once).
pub const DATA_OUT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long session end, logout and reinstatement wait for running commands to end:
/// above the backend settle bound (so a settled call is always seen) and below Linux's
/// 15 s abort timeout.
pub const TASK_DRAIN_TIMEOUT: Duration = Duration::from_secs(12);

/// How long task management waits for the tasks it aborted to end before answering
/// FUNCTION REJECTED; above the settle bound, below Linux's 15 s abort timeout.
pub const TMF_WAIT: Duration = Duration::from_secs(12);

/// Outgoing PDU batches queued to the connection writer; commands block (backpressure)
/// when the socket is slower than the backend.
pub const WRITER_QUEUE: usize = 256;

/// Bytes the connection writer gathers before one vectored write; bounds the copy buffer
/// for headers and small segments (large data segments are referenced, not copied).
pub const WRITER_BATCH_BYTES: usize = 1024 * 1024;

/// Data-Out PDUs queued to one command before the reader blocks on it.
pub const DATA_OUT_QUEUE: usize = 16;

/// Concurrent connections per portal; beyond this new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// Persistent reservation registrations per logical unit (PR IN READ KEYS must fit).
pub const MAX_PR_REGISTRATIONS: usize = 256;

/// UNMAP block descriptors per command (VPD 0xB0 MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// Blocks one UNMAP descriptor may cover (VPD 0xB0 MAXIMUM UNMAP LBA COUNT); bounds the
/// time one hole punch takes.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;

/// Blocks WRITE ATOMIC(16) may write (128 KiB): one backend write under the exclusive
/// write gate, so no other command's write interleaves with it.
pub const MAX_ATOMIC_BLOCKS: u32 = 256;

/// Blocks for COMPARE AND WRITE (VPD 0xB0 MAXIMUM COMPARE AND WRITE LENGTH).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u32 = 255;

/// Targets one process serves.
pub const MAX_TARGETS: usize = 4096;

/// Writes queued to one file's writer thread; beyond it a write awaits (backpressure). At
/// least the CmdSN window, so one session at full depth never waits for queue space.
pub const FILE_WRITE_QUEUE: usize = 256;

/// Largest single pwrite of the file backend. The kernel sizes page-cache folios by the
/// write creating them; 64 KiB folios keep later 4 KiB overwrites cheap (about 5 us,
/// against 22 us in a 1 MiB folio on ext4) while a 1 MiB write still needs only 16 calls.
pub const FILE_WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// Stack of a file writer thread: it only calls pwrite, and a target may serve thousands
/// of files, so the default 2 MiB per thread would be waste.
pub const FILE_WRITER_STACK_BYTES: usize = 64 * 1024;

/// Bytes one backend call of WRITE SAME (zeros or UNMAP) covers: a WRITE SAME over the
/// whole medium becomes many calls, each well inside its deadline even where zeros are
/// written as data (64 MiB at 100 MiB/s is under a second).
pub const ZERO_RANGE_CHUNK_BYTES: u64 = 64 * 1024 * 1024;

/// Descriptors returned by one GET LBA STATUS.
pub const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// Target (CSCD) descriptors in one EXTENDED COPY: a copy names at most a source and a
/// destination per segment, and every copy target is a LUN of this process.
pub const XCOPY_MAX_TARGET_DESCRIPTORS: u16 = 8;

/// Segment descriptors in one EXTENDED COPY. With XCOPY_MAX_SEGMENT_BYTES it bounds one
/// command to 256 MiB copied, a few seconds even on slow media, so it ends well inside
/// initiators' command timeouts (ESXi sends 4 MiB per command by default).
pub const XCOPY_MAX_SEGMENT_DESCRIPTORS: u16 = 16;

/// Bytes of target plus segment descriptor lists (RECEIVE COPY RESULTS MAXIMUM
/// DESCRIPTOR LIST LENGTH): exactly the largest legal lists of 32-byte identification
/// target descriptors and 28-byte block-to-block segment descriptors.
pub const XCOPY_MAX_DESCRIPTOR_LIST_BYTES: u32 =
    XCOPY_MAX_TARGET_DESCRIPTORS as u32 * 32 + XCOPY_MAX_SEGMENT_DESCRIPTORS as u32 * 28;

/// Bytes one segment may copy (MAXIMUM SEGMENT LENGTH), as Linux LIO allows; a longer
/// segment is refused before anything is copied.
pub const XCOPY_MAX_SEGMENT_BYTES: u32 = 16 * 1024 * 1024;

/// Bytes read then written per step of a copy: the buffer one copy holds at a time.
pub const XCOPY_CHUNK_BYTES: u32 = 1024 * 1024;

/// Finished copies whose status is held for RECEIVE COPY RESULTS per logical unit; the
/// oldest is forgotten beyond this, so initiators that never ask cannot grow memory.
pub const XCOPY_MAX_HELD_RESULTS: usize = 64;

/// EXTENDED COPY commands running at once per logical unit with a list identifier
/// (TOTAL CONCURRENT COPIES): bounds the copy state kept per LU.
pub const XCOPY_MAX_CONCURRENT: u16 = 16;

const _: () = assert!(TMF_WAIT.as_secs() > BACKEND_SETTLE_BOUND.as_secs());
const _: () = assert!(TASK_DRAIN_TIMEOUT.as_secs() > BACKEND_SETTLE_BOUND.as_secs());
const _: () = assert!(TMF_WAIT.as_secs() < 15 && DATA_OUT_TIMEOUT.as_secs() < 15);
const _: () = assert!(HOLD_TIMEOUT.as_secs() + BACKEND_SETTLE_BOUND.as_secs() < 15);
const _: () = assert!(XCOPY_CHUNK_BYTES <= MAX_TRANSFER_BYTES);
const _: () = assert!(XCOPY_MAX_SEGMENT_BYTES.is_multiple_of(XCOPY_CHUNK_BYTES));
const _: () = assert!(MAX_BURST_BYTES <= MAX_TRANSFER_BYTES);
const _: () = assert!(FILE_WRITE_QUEUE >= CMD_WINDOW as usize);
const _: () = assert!(MAX_TRANSFER_BYTES <= SESSION_BUFFER_BYTES);
const _: () = assert!(2 * WINDOW_LOW_WATER_BYTES <= SESSION_BUFFER_BYTES as u64);
const _: () = assert!(2 * WINDOW_LOW_WATER_BYTES <= MAX_BUFFERED_BYTES);
const _: () = assert!(MAX_RECV_DATA_SEGMENT_BYTES < 1 << 24);
const _: () = assert!(MAX_SEND_DATA_SEGMENT_BYTES < 1 << 24);
