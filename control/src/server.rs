//! The control socket's server side: accepts connections, reads request lines, hands each
//! request to the [`Handler`] the binary provides, and writes the answers back.
//!
//! This module knows the protocol but nothing of the proxy. It protects the proxy from its
//! clients: a request line is capped at [`MAX_LINE`] bytes (a client that sends 10 MB without a
//! newline gets `line_too_long` and is disconnected after 1 MiB), an idle client is dropped after
//! [`IDLE_TIMEOUT`], a client that stops reading is dropped after [`WRITE_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] clients are served at once. None of them can block another.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::protocol::*;

pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_CONNECTIONS: usize = 64;

/// Who is on the other end of a control connection, from the kernel (SO_PEERCRED).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

/// Where a long command reports progress; each event becomes one `{"event":...}` line.
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Progress {
    /// A sink that drops every event, for callers with no client to tell.
    pub fn discard() -> Progress {
        Progress { tx: None }
    }

    /// A sink whose events arrive on the returned receiver, for callers that handle requests
    /// in process (tests, embedders).
    pub fn channel() -> (Progress, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Progress { tx: Some(tx) }, rx)
    }

    pub fn send(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }
}

/// What the binary plugs in: turns a request into an answer.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(
        &self,
        request: Request,
        caller: Caller,
        progress: Progress,
    ) -> Result<Reply, ControlError>;
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket {}: another process is already listening there", path.display())]
    InUse { path: PathBuf },
    #[error("control socket {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("control socket {}: no group named {group:?}", path.display())]
    UnknownGroup { path: PathBuf, group: String },
}

/// Binds the control socket with the given mode and group, replacing a stale socket file left
/// by a process that died, but never one that a live process is listening on.
pub fn bind(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    bind_with(path, mode, group, false)
}

/// As [`bind`], taking the path over from a live process: the new process of an upgrade, whose
/// old process keeps answering on the socket it already accepted on until it exits.
pub fn bind_taking_over(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    bind_with(path, mode, group, true)
}

fn bind_with(
    path: &Path,
    mode: u32,
    group: Option<&str>,
    take_over: bool,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    let io_err = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| BindError::Io { path, what, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create its directory"))?;
    }
    if path.exists() {
        if !take_over && std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err("cannot remove the stale socket file"))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err("cannot bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot set its mode"))?;
    if let Some(group) = group {
        let gid = lookup_group(group).ok_or_else(|| BindError::UnknownGroup {
            path: path.to_path_buf(),
            group: group.to_string(),
        })?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err("cannot set its group"))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(io_err("cannot make it non-blocking"))?;
    Ok(listener)
}

/// A group id from a name or a number.
fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf outlives it; getgrnam_r writes only
    // into group and buf, and sets result to null or to &group.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}

/// Serves the control socket until `shutdown` turns true. Must run inside a tokio runtime.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    handler: Arc<dyn Handler>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = UnixListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return Ok(()); }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut stream = stream;
            let line = encode_err(&ControlError::new(
                ErrorCode::Unavailable,
                format!("too many control connections (at most {MAX_CONNECTIONS}); try again"),
            ));
            let _ = tokio::time::timeout(
                WRITE_TIMEOUT,
                stream.write_all(format!("{line}\n").as_bytes()),
            )
            .await;
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let caller = stream
                .peer_cred()
                .map(|c| Caller {
                    uid: Some(c.uid()),
                    pid: c.pid(),
                })
                .unwrap_or_default();
            if let Err(e) = connection(stream, handler, caller).await {
                debug!(error = %e, "control connection ended");
            }
            drop(permit);
        });
    }
}

async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, line: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?
}

async fn connection(
    stream: UnixStream,
    handler: Arc<dyn Handler>,
    caller: Caller,
) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    loop {
        let mut buf = Vec::new();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let read = limited.read_until(b'\n', &mut buf);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        let complete = buf.last() == Some(&b'\n');
        if !complete && buf.len() > MAX_LINE {
            let err = ControlError::new(
                ErrorCode::LineTooLong,
                format!("request line longer than {MAX_LINE} bytes; closing the connection"),
            );
            write_line(&mut w, &encode_err(&err)).await?;
            return Ok(());
        }
        let line = buf.trim_ascii();
        if !line.is_empty() {
            answer(line, &handler, caller, &mut w).await?;
        }
        if !complete {
            // The client closed its side after a last line without a newline.
            return Ok(());
        }
    }
}

async fn answer(
    line: &[u8],
    handler: &Arc<dyn Handler>,
    caller: Caller,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> io::Result<()> {
    let request = match decode_request(line) {
        Ok(r) => r,
        Err(e) => return write_line(w, &encode_err(&e)).await,
    };
    if !matches!(request, Request::Status { .. } | Request::Certs) {
        info!(uid = ?caller.uid, pid = ?caller.pid, request = %String::from_utf8_lossy(line), "control request");
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let progress = Progress { tx: Some(tx) };
    let work = handler.handle(request, caller, progress);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(event) = rx.recv() => write_line(w, &encode_event(&event)).await?,
        }
    };
    while let Ok(event) = rx.try_recv() {
        write_line(w, &encode_event(&event)).await?;
    }
    let line = match &result {
        Ok(reply) => encode_ok(reply),
        Err(e) => encode_err(e),
    };
    write_line(w, &line).await
}
