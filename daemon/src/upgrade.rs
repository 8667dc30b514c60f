//! `switchback upgrade`: a new process (a new binary, or the same one for keys a reload cannot
//! change) takes the listening sockets over, with no refused connection and no failed request.
//!
//! ```text
//!   old process                                  new process
//!   ───────────                                  ───────────
//!   end running rollouts (on the stable pool)
//!   freeze: no more state writes
//!   start the binary at the path it was
//!   started from, same arguments, holding  ───▶  adopt the state dir's lock (the same open
//!   the state lock's descriptor open              file: it never goes free), load the config,
//!                                                 state and certificates, take the control
//!                                                 socket's path, probe every backend once,
//!                                   ◀───────────  listen on the upgrade socket for the fds
//!   see the upgrade socket: hand the listening
//!   sockets over (pingora's SIGQUIT path)  ───▶  serve on them
//!   keep accepting 5 s (pingora), then stop,
//!   drain (server.shutdown_grace), exit
//! ```
//!
//! If the new process exits before it listens for the sockets (a binary that does not start, a
//! config with a problem), nothing was handed over: the old process thaws and keeps serving,
//! and the command fails.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchback_control::{ControlError, ErrorCode};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::controller::{Controller, STATE_LOCK_FD_ENV};

/// Set in the new process's environment: the pid of the process it takes over from.
pub const UPGRADE_ENV: &str = "SWITCHBACK_UPGRADE_FROM";

/// How long the new process has to reach the point where it takes the sockets.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this process was started by an upgrade, to take over from another.
pub fn taking_over() -> bool {
    std::env::var_os(UPGRADE_ENV).is_some()
}

/// Starts an upgrade's new process and hands the listening sockets over once it is ready.
pub struct Upgrader {
    /// The binary's path and arguments as this process was started: after
    /// `install new-switchback /usr/local/bin/switchback`, the path names the new binary.
    exe: PathBuf,
    args: Vec<OsString>,
    /// Where the new process listens for the sockets (pingora's `upgrade_sock`).
    socket: PathBuf,
    /// Tells the signal watcher to hand the sockets over, as a SIGQUIT would.
    hand_over: Arc<Notify>,
    under_way: AtomicBool,
}

impl Upgrader {
    pub fn new(socket: PathBuf, hand_over: Arc<Notify>) -> Upgrader {
        let mut args = std::env::args_os();
        let argv0 = args.next().map(PathBuf::from);
        let exe = std::env::current_exe()
            .ok()
            .filter(|p| p.exists())
            .or(argv0)
            .unwrap_or_else(|| PathBuf::from("switchback"));
        Upgrader {
            exe,
            args: args.collect(),
            socket,
            hand_over,
            under_way: AtomicBool::new(false),
        }
    }

    /// Starts the new process and, once it waits for the sockets, hands them over. Returns the
    /// old and the new pid; the new process serves a moment later (it answers `status` with
    /// its pid once it does).
    pub async fn upgrade(&self, controller: &Controller) -> Result<(u32, u32), ControlError> {
        if self.under_way.swap(true, Ordering::SeqCst) {
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                "an upgrade is already under way",
            ));
        }
        let result = self.start_new(controller).await;
        if result.is_err() {
            controller.freeze(false);
            self.under_way.store(false, Ordering::SeqCst);
        }
        result
    }

    async fn start_new(&self, controller: &Controller) -> Result<(u32, u32), ControlError> {
        let failed = |message: String| ControlError::new(ErrorCode::UpgradeFailed, message);
        // A rollout cannot go on across processes: it ends here on its stable pool, written
        // down, before the state is frozen.
        for service in controller.config().services.iter().map(|s| s.name.clone()) {
            if let Some(rollout) = controller.running_rollout(&service) {
                rollout
                    .abort("ended by an upgrade (start it again with `switchback rollout`)".into());
                rollout.finished().await;
                warn!(service = %service, pool = %rollout.pool, "the rollout was ended by an upgrade; all traffic is on the stable pool");
            }
        }
        controller.freeze(true);
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(format!("{}: {e}", self.socket.display()))),
        }
        let lock_fd = controller.state_lock_fd();
        let mut child = {
            // The lock's descriptor stays open in the new process: it holds the same lock.
            let _inherited = Inheritable::new(lock_fd);
            let mut cmd = std::process::Command::new(&self.exe);
            cmd.args(&self.args)
                .env(UPGRADE_ENV, std::process::id().to_string())
                .env(STATE_LOCK_FD_ENV, lock_fd.to_string())
                .stdin(Stdio::null());
            // Not in this process's group: a signal to the old one's group must not reach it.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            cmd.spawn()
                .map_err(|e| failed(format!("cannot start {}: {e}", self.exe.display())))?
        };
        let new_pid = child.id();
        info!(pid = new_pid, exe = %self.exe.display(), "upgrade: the new process is starting");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                error!(pid = new_pid, %status, "upgrade: the new process exited before it took over; this one keeps serving");
                return Err(failed(format!(
                    "the new process ({}, pid {new_pid}) exited with {status} before it took over (its log says why); this process keeps serving",
                    self.exe.display()
                )));
            }
            if self.socket.exists() {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "the new process (pid {new_pid}) was not ready to take over within {START_TIMEOUT:?}; it was stopped and this process keeps serving"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!(pid = new_pid, "upgrade: handing the listening sockets over");
        self.hand_over.notify_one();
        // The new process outlives this one; its exit status is not this process's to collect.
        drop(child);
        Ok((std::process::id(), new_pid))
    }
}

/// Clears close-on-exec on a descriptor for as long as it lives, so a process started meanwhile
/// inherits it.
struct Inheritable(std::os::unix::io::RawFd);

impl Inheritable {
    fn new(fd: std::os::unix::io::RawFd) -> Inheritable {
        // SAFETY: fcntl on a descriptor the caller keeps open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        Inheritable(fd)
    }
}

impl Drop for Inheritable {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::fcntl(self.0, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Tells systemd (a `Type=notify` unit, `NotifyAccess=all`) which process is the service's now
/// and that it is ready: at start, and in an upgrade's new process once it took over. Nothing
/// without `NOTIFY_SOCKET`.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("MAINPID={}\nREADY=1\n", std::process::id());
    let sent = if let Some(abstract_name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name).and_then(|addr| {
            std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)
        })
    } else {
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.send_to(message.as_bytes(), &path))
    };
    if let Err(e) = sent {
        warn!("cannot tell systemd this process is ready: {e}");
    }
}
