//! The admin socket: while a process holds a pool open, `cstor pool` and `cstor volume`
//! commands for that pool are served by it over `$CSTOR_HOME/run/<pool>.sock`.
//! Spec: docs/format/admin-socket.md.
//!
//! Wire: a sequence of frames `kind u8 | len u32 LE | crc32c(payload) u32 LE | payload`,
//! payload at most [`ADMIN_FRAME_MAX_BYTES`]. Client → server: one `Q` (request JSON with
//! `version`), then `D` frames of input data, then `Z`. Server → client: any number of `P`
//! (progress JSON) and `D` (output data) frames, then exactly one `R` (result JSON) or `E`
//! (error message JSON), then it closes.
//!
//! Owns: the listener thread and one thread per connection (at most
//! [`ADMIN_CONNECTIONS_MAX`]). Never: trusts a frame length before checking the bound.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::admin::{self, Progress, Request};
use crate::error::{NodeError, Result};
use crate::host::OpenPool;
use crate::limits::*;

/// Version of the admin protocol.
pub const ADMIN_PROTOCOL_VERSION: u32 = 1;

const KIND_REQUEST: u8 = b'Q';
const KIND_DATA: u8 = b'D';
const KIND_END: u8 = b'Z';
const KIND_PROGRESS: u8 = b'P';
const KIND_RESULT: u8 = b'R';
const KIND_ERROR: u8 = b'E';

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    version: u32,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    message: String,
}

fn write_frame(w: &mut dyn Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    debug_assert!(payload.len() <= ADMIN_FRAME_MAX_BYTES as usize);
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    let mut header = [0u8; 9];
    header[0] = kind;
    header[1..5].copy_from_slice(&len.to_le_bytes());
    header[5..9].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    w.write_all(&header)?;
    w.write_all(payload)
}

fn read_frame(r: &mut dyn Read) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 9];
    r.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let crc = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    if len > ADMIN_FRAME_MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("admin frame of {len} bytes exceeds {ADMIN_FRAME_MAX_BYTES}"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if crc32c::crc32c(&payload) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "admin frame checksum mismatch",
        ));
    }
    Ok((header[0], payload))
}

/// Reads `D` frames up to the `Z` that ends the input.
struct FrameReader<'a> {
    inner: &'a mut dyn Read,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            let (kind, payload) = read_frame(self.inner)?;
            match kind {
                KIND_DATA => {
                    self.buf = payload;
                    self.pos = 0;
                }
                KIND_END => self.done = true,
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected admin frame {:?} in input", other as char),
                    ))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes output as `D` frames.
struct FrameWriter<'a> {
    inner: &'a mut dyn Write,
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(ADMIN_FRAME_MAX_BYTES as usize);
        if n > 0 {
            write_frame(self.inner, KIND_DATA, &data[..n])?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A pool's admin socket, served until dropped.
#[derive(Debug)]
pub struct AdminServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Listen on `path` (replacing a stale socket) and serve requests for `pool`.
    pub fn start(path: &Path, pool: Arc<OpenPool>) -> Result<AdminServer> {
        let home_err = |context: String| move |source| NodeError::Home { context, source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(home_err(format!("creating {}", dir.display())))?;
        }
        // The caller holds the pool's device locks, so any socket left here belongs to a
        // process that is gone.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NodeError::Home {
                    context: format!("removing stale {}", path.display()),
                    source,
                })
            }
        }
        let listener =
            UnixListener::bind(path).map_err(home_err(format!("binding {}", path.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let active = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name(format!("admin-{}", pool.name()))
            .spawn(move || accept_loop(listener, pool, stop2, active))
            .map_err(home_err("spawning admin thread".into()))?;
        Ok(AdminServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; it sees `stop` and returns.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs until the server is dropped.
fn accept_loop(
    listener: UnixListener,
    pool: Arc<OpenPool>,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        if active.load(Ordering::SeqCst) >= ADMIN_CONNECTIONS_MAX {
            let mut w = &stream;
            let _ = send_error(&mut w, "too many admin connections; retry later");
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let pool = pool.clone();
        let active2 = active.clone();
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &pool) {
                    tracing::debug!("admin connection: {e}");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn send_error(w: &mut dyn Write, message: &str) -> io::Result<()> {
    let body = serde_json::to_vec(&ErrorBody {
        message: message.to_owned(),
    })
    .map_err(io::Error::other)?;
    write_frame(w, KIND_ERROR, &body)?;
    w.flush()
}

fn serve_connection(stream: UnixStream, pool: &Arc<OpenPool>) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    let (kind, payload) = read_frame(&mut reader)?;
    if kind != KIND_REQUEST {
        return send_error(&mut writer, "expected a request frame");
    }
    let env: Envelope = match serde_json::from_slice(&payload) {
        Ok(e) => e,
        Err(e) => return send_error(&mut writer, &format!("bad request: {e}")),
    };
    if env.version != ADMIN_PROTOCOL_VERSION {
        return send_error(
            &mut writer,
            &format!(
                "admin protocol version {} not supported (this process speaks {ADMIN_PROTOCOL_VERSION})",
                env.version
            ),
        );
    }
    let mut input = FrameReader {
        inner: &mut reader,
        buf: Vec::new(),
        pos: 0,
        done: false,
    };
    // Progress frames interleave with data frames on the same writer.
    let writer_cell = std::cell::RefCell::new(&mut writer);
    let result = {
        let mut progress = |p: &Progress| {
            if let Ok(body) = serde_json::to_vec(p) {
                let mut w = writer_cell.borrow_mut();
                let _ = write_frame(&mut **w, KIND_PROGRESS, &body).and_then(|()| w.flush());
            }
        };
        let mut out = ProgressSafeWriter { cell: &writer_cell };
        admin::execute(pool, env.request, &mut input, &mut out, &mut progress)
    };
    // Drain unread input so the client's writes never block on a full socket.
    let _ = io::copy(&mut input, &mut io::sink());
    let w = writer_cell.into_inner();
    match result {
        Ok(value) => {
            let body = serde_json::to_vec(&value).map_err(io::Error::other)?;
            write_frame(w, KIND_RESULT, &body)?;
            w.flush()
        }
        Err(e) => send_error(w, &e.to_string()),
    }
}

struct ProgressSafeWriter<'a, 'b> {
    cell: &'a std::cell::RefCell<&'b mut BufWriter<UnixStream>>,
}

impl Write for ProgressSafeWriter<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut w = self.cell.borrow_mut();
        FrameWriter { inner: &mut **w }.write(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.cell.borrow_mut().flush()
    }
}

/// Connect to the process holding pool `name`, if one does. `Ok(None)` when no process
/// listens (no socket, or a stale one).
pub fn connect(path: &Path) -> Result<Option<UnixStream>> {
    match UnixStream::connect(path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(NodeError::Home {
            context: format!("connecting to {}", path.display()),
            source,
        }),
    }
}

/// Send `request` over `stream` with `input` as its data, write the data that comes back
/// to `output` and report progress; returns the result JSON.
pub fn call(
    stream: UnixStream,
    request: Request,
    input: &mut dyn Read,
    output: &mut dyn Write,
    progress: &mut dyn FnMut(&Progress),
) -> Result<serde_json::Value> {
    let proto = |e: io::Error| NodeError::Protocol(e.to_string());
    let mut reader = BufReader::new(stream.try_clone().map_err(proto)?);
    let mut writer = BufWriter::new(stream);
    let env = serde_json::to_vec(&Envelope {
        version: ADMIN_PROTOCOL_VERSION,
        request,
    })
    .map_err(|e| NodeError::Protocol(e.to_string()))?;
    write_frame(&mut writer, KIND_REQUEST, &env).map_err(proto)?;
    // If the server fails early it closes its side; stop sending and read its answer.
    let mut sent = send_input(&mut writer, input);
    if sent.is_ok() {
        sent = write_frame(&mut writer, KIND_END, &[]).and_then(|()| writer.flush());
    }
    loop {
        let (kind, payload) = match read_frame(&mut reader) {
            Ok(f) => f,
            Err(e) => {
                return Err(match sent {
                    Err(s) => NodeError::Stream {
                        context: "sending input to the pool's process".into(),
                        source: s,
                    },
                    Ok(()) => proto(e),
                })
            }
        };
        match kind {
            KIND_DATA => output
                .write_all(&payload)
                .map_err(|source| NodeError::Stream {
                    context: "writing output".into(),
                    source,
                })?,
            KIND_PROGRESS => {
                if let Ok(p) = serde_json::from_slice::<Progress>(&payload) {
                    progress(&p);
                }
            }
            KIND_RESULT => {
                return serde_json::from_slice(&payload)
                    .map_err(|e| NodeError::Protocol(e.to_string()))
            }
            KIND_ERROR => {
                let body: ErrorBody = serde_json::from_slice(&payload)
                    .map_err(|e| NodeError::Protocol(e.to_string()))?;
                return Err(NodeError::Remote(body.message));
            }
            other => {
                return Err(NodeError::Protocol(format!(
                    "unexpected frame {:?}",
                    other as char
                )))
            }
        }
    }
}

fn send_input(w: &mut dyn Write, input: &mut dyn Read) -> io::Result<()> {
    let mut buf = vec![0u8; ADMIN_FRAME_MAX_BYTES as usize];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write_frame(w, KIND_DATA, &buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_damage() {
        let mut buf = Vec::new();
        write_frame(&mut buf, KIND_DATA, b"hello").unwrap();
        let (k, p) = read_frame(&mut &buf[..]).unwrap();
        assert_eq!((k, p.as_slice()), (KIND_DATA, &b"hello"[..]));
        let mut bad = buf.clone();
        bad[10] ^= 1;
        assert!(read_frame(&mut &bad[..]).is_err());
        let mut huge = buf.clone();
        huge[1..5].copy_from_slice(&(ADMIN_FRAME_MAX_BYTES + 1).to_le_bytes());
        assert!(read_frame(&mut &huge[..]).is_err());
    }
}
