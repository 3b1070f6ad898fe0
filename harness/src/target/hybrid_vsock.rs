//! The host side of a virtio-vsock device (VIRTIO §5.10) served by rust-vmm's
//! `vhost-device-vsock` backend, through its hybrid vsock Unix sockets (the scheme Firecracker
//! introduced), and the backend process itself.
//!
//! # The hybrid vsock scheme
//!
//! The backend listens on one Unix socket, the *uds path*. A host application that wants a
//! stream connection to port `P` of the guest (CID given to the backend) connects there and
//! writes the line `CONNECT P\n`; the backend sends the driver a connection request, and once
//! the driver answers it writes `OK <n>\n` back and the stream carries the connection's bytes
//! in both directions. When the driver refuses (or the backend gives up) the stream is closed
//! without the `OK` line.
//!
//! When the driver requests a connection to host port `P`, the backend connects to the Unix
//! socket `<uds path>_P`; a host application listening there accepts it and the stream carries
//! that connection. Closing a stream shuts the connection down; the driver's shutdown or reset
//! closes the stream (end of file on the host side).
//!
//! [`HybridVsockPeer`] implements the harness's host-side connection API
//! ([`HostOp`], [`HostConn`], host send and take by connection name) on these sockets, and
//! [`VsockBackendProcess`] starts and stops one backend in a scratch folder.

use super::TargetError;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use virtio_reference_device::{HostConn, HostOp};

/// The backend binary looked up on `PATH` when no other is given.
pub const BACKEND_BINARY: &str = "vhost-device-vsock";
/// Environment variable naming another backend binary.
pub const BACKEND_ENV: &str = "VIRTIO_CONFORM_VHOST_DEVICE_VSOCK";
/// File name of the vhost-user socket in the backend's scratch folder (QEMU connects here).
pub const VHOST_SOCKET_NAME: &str = "vhost-vsock.sock";
/// File name of the hybrid vsock socket in the backend's scratch folder.
pub const UDS_NAME: &str = "vsock.uds";
/// Lines of the backend's stderr kept in diagnostics.
const STDERR_TAIL_LINES: usize = 20;
/// Longest `OK ...` line accepted from the backend, in bytes.
const MAX_ANSWER_LINE: usize = 64;
/// The most bytes one [`HybridVsockPeer::host_take`] returns (the rest waits for the next call).
const MAX_TAKE: usize = 1 << 20;

/// The backend binary to use: `$VIRTIO_CONFORM_VHOST_DEVICE_VSOCK`, else
/// [`BACKEND_BINARY`] on `PATH`.
pub fn backend_binary() -> PathBuf {
    std::env::var_os(BACKEND_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BACKEND_BINARY))
}

/// The first line of `<binary> --version` (e.g. `vhost-device-vsock 0.3.0`), or why the
/// backend cannot be run ([`TargetError::Unavailable`], naming the install script).
pub fn backend_version(binary: &Path) -> Result<String, TargetError> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            TargetError::Unavailable(format!(
                "cannot run `{}`: {e} (install it with scripts/install-vhost-device-vsock.sh)",
                binary.display()
            ))
        })?;
    if !out.status.success() {
        return Err(TargetError::Unavailable(format!(
            "`{} --version` failed with {}",
            binary.display(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

// ---------------------------------------------------------------------------------------------
// The backend process.

/// One running `vhost-device-vsock` serving one guest: its vhost-user socket (for the
/// front-end, e.g. QEMU's `vhost-user-vsock-device`) and its hybrid vsock uds path (for
/// [`HybridVsockPeer`]) live in a scratch folder that is removed, and the process killed,
/// when this value is dropped (or the harness is interrupted, see
/// [`super::qemu::kill_all_qemu`]).
pub struct VsockBackendProcess {
    dir: tempfile::TempDir,
    child: super::qemu::SharedChild,
    registry_id: u64,
    guest_cid: u64,
    version: String,
}

impl VsockBackendProcess {
    /// Starts the backend ([`backend_binary`]) for guest CID `guest_cid` and waits (up to
    /// `timeout`) until its vhost-user socket and uds path exist; returns it with a peer on
    /// its uds path whose operations wait up to `timeout`.
    ///
    /// Errors: [`TargetError::Unavailable`] when the binary is missing, exits at startup
    /// (with the tail of its stderr) or does not create its sockets in time.
    pub fn start(
        guest_cid: u64,
        timeout: Duration,
    ) -> Result<(VsockBackendProcess, HybridVsockPeer), TargetError> {
        Self::start_with(&backend_binary(), guest_cid, timeout)
    }

    /// [`VsockBackendProcess::start`] with the binary `binary`.
    pub fn start_with(
        binary: &Path,
        guest_cid: u64,
        timeout: Duration,
    ) -> Result<(VsockBackendProcess, HybridVsockPeer), TargetError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            TargetError::Unavailable(format!("vhost-device-vsock: {what}: {e}"))
        };
        let version = backend_version(binary)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("virtio-conform-vsock-{}-", std::process::id()))
            .tempdir()
            .map_err(|e| unavailable("creating a scratch folder", &e))?;
        let socket = dir.path().join(VHOST_SOCKET_NAME);
        let uds = dir.path().join(UDS_NAME);
        let stderr_path = dir.path().join("backend.stderr");
        let stderr = fs::File::create(&stderr_path)
            .map_err(|e| unavailable("creating the stderr log", &e))?;
        // The separate flags are accepted by every released version (newer ones also take
        // the `--vm key=value,...` form).
        let args: Vec<OsString> = vec![
            "--guest-cid".into(),
            guest_cid.to_string().into(),
            "--socket".into(),
            socket.clone().into(),
            "--uds-path".into(),
            uds.clone().into(),
        ];
        let (child, registry_id) = super::qemu::spawn_registered(binary, &args, stderr, dir.path())
            .map_err(|e| unavailable(&format!("starting {}", binary.display()), &e))?;
        let backend = VsockBackendProcess {
            dir,
            child,
            registry_id,
            guest_cid,
            version,
        };
        // From here on, dropping `backend` kills the process.
        let deadline = Instant::now() + timeout.max(Duration::from_secs(5));
        while !(socket.exists() && uds.exists()) {
            if let Some(st) = backend.exit_status() {
                return Err(TargetError::Unavailable(format!(
                    "vhost-device-vsock exited at startup ({st}); last lines of its stderr:\n{}",
                    backend.stderr_tail()
                )));
            }
            if Instant::now() >= deadline {
                return Err(TargetError::Unavailable(format!(
                    "vhost-device-vsock did not create its sockets within {:.1} s",
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let peer = HybridVsockPeer::new(&uds, timeout);
        Ok((backend, peer))
    }

    /// The vhost-user socket the front-end connects to (QEMU: `-chardev socket,path=...`).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join(VHOST_SOCKET_NAME)
    }

    /// The hybrid vsock uds path the host side uses.
    pub fn uds_path(&self) -> PathBuf {
        self.dir.path().join(UDS_NAME)
    }

    /// The guest CID the backend was started with (its configuration space shows it, §5.10.4).
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The first line of the backend's `--version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Process id of the backend.
    pub fn pid(&self) -> u32 {
        super::qemu::lock_child(&self.child).id()
    }

    /// The exit status when the backend has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        super::qemu::lock_child(&self.child)
            .try_wait()
            .ok()
            .flatten()
    }

    /// The last lines of the backend's stderr (empty when it wrote nothing).
    pub fn stderr_tail(&self) -> String {
        super::qemu::file_tail(&self.dir.path().join("backend.stderr"), STDERR_TAIL_LINES)
    }
}

impl Drop for VsockBackendProcess {
    fn drop(&mut self) {
        super::qemu::kill_and_forget(self.registry_id, &self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// The host-side peer.

/// The state a host-side connection starts in, from how sending its `CONNECT` went. A back-end
/// that closes the connection before reading the request (one with no device set up does so
/// at once) refuses it: usually that shows as the end of the stream before the answer, but
/// when the close comes first the send fails with a broken pipe or a reset, and that is the
/// same refusal, not a protocol error.
fn request_state(port: u32, sent: std::io::Result<()>) -> Result<State, TargetError> {
    match sent {
        Ok(()) => Ok(State::Pending),
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
            Ok(State::Refused)
        }
        Err(e) => Err(TargetError::Protocol(format!(
            "sending CONNECT {port}: {e}"
        ))),
    }
}

/// Where one host-side connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `CONNECT` sent, no answer line yet.
    Pending,
    Open,
    Refused,
    Closed,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// Bytes of the answer line read so far (state [`State::Pending`]).
    line: Vec<u8>,
    /// Connection bytes received and not taken yet.
    inbox: Vec<u8>,
    /// The host closed it ([`HostOp::Close`]), rather than the backend.
    closed_by_host: bool,
}

/// The host-side peer of a hybrid vsock backend: connections named by one port each (the
/// driver's port for connections the host opens, the host port for connections the driver
/// opens, see [`HostOp`]). Every call is non-blocking except [`HybridVsockPeer::send`], which
/// waits up to the timeout for the backend to take the bytes.
pub struct HybridVsockPeer {
    uds: PathBuf,
    timeout: Duration,
    conns: HashMap<u32, Conn>,
    listeners: HashMap<u32, (UnixListener, PathBuf)>,
}

impl HybridVsockPeer {
    /// A peer of the backend whose uds path is `uds`; [`HybridVsockPeer::send`] waits up to
    /// `timeout`.
    pub fn new(uds: &Path, timeout: Duration) -> HybridVsockPeer {
        HybridVsockPeer {
            uds: uds.to_path_buf(),
            timeout,
            conns: HashMap::new(),
            listeners: HashMap::new(),
        }
    }

    /// The socket a driver's connection to host port `port` reaches: `<uds path>_<port>`.
    pub fn listen_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// Does `op` (§5.10.6: the host end of a stream connection):
    /// - `Listen { port }`: binds `<uds path>_<port>`; a driver's request to host port `port`
    ///   is accepted at the next look ([`HybridVsockPeer::conn`], `take`).
    /// - `Connect { port }`: connects to the uds path and asks for the driver's port `port`;
    ///   the connection is [`HostConn::Pending`] until the backend answers.
    /// - `Close { port }`: shuts the connection named `port` down in both directions (it then
    ///   reads [`HostConn::Closed`]); with no connection by that name, stops listening there.
    ///
    /// Errors: [`TargetError::Protocol`] when a socket cannot be bound, reached or written, or
    /// a connection by that name is already open or pending.
    pub fn op(&mut self, op: HostOp) -> Result<(), TargetError> {
        match op {
            HostOp::Listen { port } => {
                if self.listeners.contains_key(&port) {
                    return Ok(());
                }
                let path = self.listen_path(port);
                let _ = fs::remove_file(&path);
                let l = UnixListener::bind(&path).map_err(|e| {
                    TargetError::Protocol(format!(
                        "listening on hybrid vsock host port {port}: {e}"
                    ))
                })?;
                l.set_nonblocking(true).map_err(|e| {
                    TargetError::Protocol(format!("configuring the listener of port {port}: {e}"))
                })?;
                self.listeners.insert(port, (l, path));
                Ok(())
            }
            HostOp::Connect { port } => {
                self.poll(port)?;
                if matches!(
                    self.conns.get(&port).map(|c| c.state),
                    Some(State::Pending | State::Open)
                ) {
                    return Err(TargetError::Protocol(format!(
                        "a host-side connection named {port} is already open"
                    )));
                }
                let mut s = UnixStream::connect(&self.uds).map_err(|e| {
                    TargetError::Protocol(format!(
                        "connecting to the hybrid vsock socket {}: {e}",
                        file_name(&self.uds)
                    ))
                })?;
                let state =
                    request_state(port, s.write_all(format!("CONNECT {port}\n").as_bytes()))?;
                s.set_nonblocking(true)
                    .map_err(|e| TargetError::Protocol(format!("sending CONNECT {port}: {e}")))?;
                self.conns.insert(
                    port,
                    Conn {
                        stream: s,
                        state,
                        line: Vec::new(),
                        inbox: Vec::new(),
                        closed_by_host: false,
                    },
                );
                Ok(())
            }
            HostOp::Close { port } => {
                match self.conns.get_mut(&port) {
                    Some(c) if matches!(c.state, State::Open | State::Pending) => {
                        let _ = c.stream.shutdown(Shutdown::Both);
                        c.state = State::Closed;
                        c.closed_by_host = true;
                    }
                    Some(_) => {}
                    None => {
                        if let Some((_, path)) = self.listeners.remove(&port) {
                            let _ = fs::remove_file(path);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// What the host sees of the connection named `port` now ([`HostConn`]). Reads what the
    /// backend sent (kept for [`HybridVsockPeer::take`]) to notice the answer line and end of
    /// file. Errors: [`TargetError::Protocol`] when the backend answers `CONNECT` with
    /// something other than an `OK` line, or a socket fails.
    pub fn conn(&mut self, port: u32) -> Result<HostConn, TargetError> {
        self.poll(port)?;
        Ok(match self.conns.get(&port).map(|c| c.state) {
            None => HostConn::None,
            Some(State::Pending) => HostConn::Pending,
            Some(State::Open) => HostConn::Open,
            Some(State::Refused) => HostConn::Refused,
            Some(State::Closed) => HostConn::Closed,
        })
    }

    /// Writes `data` to the open connection named `port`, waiting up to the timeout for the
    /// backend to take it all. On a connection the backend has closed (end of file seen) the
    /// bytes go nowhere, as a host application's write would fail there: the case's next
    /// expectation sees that nothing arrived, a verdict on the device rather than a harness
    /// error. Errors: [`TargetError::Protocol`] when no connection by that name was ever
    /// open, it is pending, the host closed it, or the stream fails; [`TargetError::Hung`]
    /// when the backend takes none of the rest within the timeout.
    pub fn send(&mut self, port: u32, data: &[u8]) -> Result<(), TargetError> {
        self.poll(port)?;
        let timeout = self.timeout;
        let c = match self.conns.get_mut(&port) {
            Some(c) if c.state == State::Open => c,
            Some(c) if c.state == State::Closed && !c.closed_by_host => return Ok(()),
            other => {
                return Err(TargetError::Protocol(format!(
                    "no open host-side connection named {port} (it is {:?})",
                    other.map(|c| c.state)
                )))
            }
        };
        let mut done = 0;
        let mut last_progress = Instant::now();
        while done < data.len() {
            match c.stream.write(&data[done..]) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    done += n;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if last_progress.elapsed() >= timeout {
                        return Err(TargetError::Hung(format!(
                            "the vsock backend took {done} of {} bytes on connection {port} within {:.1} s",
                            data.len(),
                            timeout.as_secs_f64()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                // The backend closed the connection meanwhile (see above).
                Err(e)
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) =>
                {
                    c.state = State::Closed;
                    return Ok(());
                }
                Err(e) => {
                    return Err(TargetError::Protocol(format!(
                        "writing to connection {port}: {e}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// The bytes received on the connection named `port` since the last call, as one unit
    /// (none when nothing arrived; a stream keeps no packet boundaries). Errors: as
    /// [`HybridVsockPeer::conn`].
    pub fn take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        self.poll(port)?;
        Ok(match self.conns.get_mut(&port) {
            Some(c) if !c.inbox.is_empty() => vec![std::mem::take(&mut c.inbox)],
            _ => Vec::new(),
        })
    }

    /// Accepts a waiting connection on the listener named `port` (when no live connection has
    /// that name) and reads what the connection named `port` has to read.
    fn poll(&mut self, port: u32) -> Result<(), TargetError> {
        let live = matches!(
            self.conns.get(&port).map(|c| c.state),
            Some(State::Pending | State::Open)
        );
        if !live {
            if let Some((l, _)) = self.listeners.get(&port) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(true).map_err(|e| {
                            TargetError::Protocol(format!("configuring connection {port}: {e}"))
                        })?;
                        self.conns.insert(
                            port,
                            Conn {
                                stream: s,
                                state: State::Open,
                                line: Vec::new(),
                                inbox: Vec::new(),
                                closed_by_host: false,
                            },
                        );
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => {
                        return Err(TargetError::Protocol(format!(
                            "accepting on host port {port}: {e}"
                        )))
                    }
                }
            }
        }
        let Some(c) = self.conns.get_mut(&port) else {
            return Ok(());
        };
        let mut buf = [0u8; 4096];
        while matches!(c.state, State::Pending | State::Open) && c.inbox.len() < MAX_TAKE {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.state = match c.state {
                        State::Pending => State::Refused,
                        _ => State::Closed,
                    };
                }
                Ok(n) => {
                    if c.state == State::Open {
                        c.inbox.extend_from_slice(&buf[..n]);
                        continue;
                    }
                    c.line.extend_from_slice(&buf[..n]);
                    if let Some(nl) = c.line.iter().position(|&b| b == b'\n') {
                        let line = String::from_utf8_lossy(&c.line[..nl]).trim().to_string();
                        if !line.starts_with("OK") {
                            c.state = State::Refused;
                            let _ = c.stream.shutdown(Shutdown::Both);
                            return Err(TargetError::Protocol(format!(
                                "the vsock backend answered CONNECT {port} with `{line}`"
                            )));
                        }
                        c.inbox.extend_from_slice(&c.line[nl + 1..]);
                        c.line.clear();
                        c.state = State::Open;
                    } else if c.line.len() > MAX_ANSWER_LINE {
                        c.state = State::Refused;
                        let _ = c.stream.shutdown(Shutdown::Both);
                        return Err(TargetError::Protocol(format!(
                            "the vsock backend answered CONNECT {port} with more than {MAX_ANSWER_LINE} bytes and no line end"
                        )));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    c.state = match c.state {
                        State::Pending => State::Refused,
                        _ => State::Closed,
                    };
                }
                Err(e) => {
                    return Err(TargetError::Protocol(format!(
                        "reading connection {port}: {e}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Drops every connection and listener (the backend sees the streams close), for a new
    /// case on the same backend.
    pub fn reset(&mut self) {
        self.conns.clear();
        for (_, (_, path)) in self.listeners.drain() {
            let _ = fs::remove_file(path);
        }
    }
}

impl Drop for HybridVsockPeer {
    fn drop(&mut self) {
        self.reset();
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send that fails because the back-end already closed is a refusal; any other failure
    /// stays a protocol error naming the port.
    #[test]
    fn a_close_before_the_request_is_a_refusal() {
        let err = |k| Err(std::io::Error::from(k));
        assert_eq!(request_state(7, Ok(())).unwrap(), State::Pending);
        assert_eq!(
            request_state(7, err(ErrorKind::BrokenPipe)).unwrap(),
            State::Refused
        );
        assert_eq!(
            request_state(7, err(ErrorKind::ConnectionReset)).unwrap(),
            State::Refused
        );
        let Err(TargetError::Protocol(m)) = request_state(7, err(ErrorKind::PermissionDenied))
        else {
            panic!("expected a protocol error");
        };
        assert!(m.starts_with("sending CONNECT 7: "), "{m}");
    }
}
