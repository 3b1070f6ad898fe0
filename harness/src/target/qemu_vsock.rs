//! The QEMU vsock target (VIRTIO §5.10): QEMU's `vhost-user-vsock-device` on the microvm
//! machine, its virtqueues served by rust-vmm's `vhost-device-vsock` in a process of its own,
//! and the host side of its connections through that backend's hybrid vsock sockets
//! ([`super::hybrid_vsock`]).
//!
//! QEMU gets `-chardev socket,id=vsock0,path=<backend's vhost-user socket>
//! -device vhost-user-vsock-device,chardev=vsock0`. vhost-user needs guest RAM the backend
//! can map: the target's RAM file ([`super::qemu_ram`], `share=on`) is always used, and QEMU
//! hands its descriptor to the backend. The backend is started before QEMU (QEMU connects to
//! it at startup) and stopped with it; every case gets a new pair, since connections the
//! backend holds survive a device reset and would reach the next case.
//!
//! The guest CID the backend reports in the configuration space is [`GUEST_CID`]; the host
//! is CID 2 (§5.10.4).

use super::hybrid_vsock::{HybridVsockPeer, VsockBackendProcess};
use super::TargetError;
use std::path::Path;
use std::time::Duration;
use virtio_reference_device::{HostConn, HostOp};

/// The guest CID the backend is started with (`guest_cid` in the configuration space).
pub const GUEST_CID: u64 = 3;
/// Identifier of the chardev that connects QEMU to the backend.
pub const CHARDEV_ID: &str = "vsock0";

/// The QEMU arguments for a vhost-user vsock device whose backend listens on `socket`.
pub fn qemu_args(socket: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id={CHARDEV_ID},path={}", socket.display()),
        "-device".into(),
        format!("vhost-user-vsock-device,chardev={CHARDEV_ID}"),
    ]
}

/// The backend of one QEMU vsock device and the host side of its connections.
pub struct VsockHost {
    /// Dropped after the QEMU that uses it (field order of the owner).
    backend: VsockBackendProcess,
    peer: HybridVsockPeer,
}

impl VsockHost {
    /// Starts the backend for [`GUEST_CID`]; host-side writes wait up to `timeout`.
    /// Errors: [`TargetError::Unavailable`] when the backend cannot be started.
    pub fn start(timeout: Duration) -> Result<VsockHost, TargetError> {
        let (backend, peer) = VsockBackendProcess::start(GUEST_CID, timeout)?;
        Ok(VsockHost { backend, peer })
    }

    /// The vhost-user socket QEMU connects to.
    pub fn socket_path(&self) -> std::path::PathBuf {
        self.backend.socket_path()
    }

    /// The backend's `--version` line.
    pub fn version(&self) -> &str {
        self.backend.version()
    }

    /// The backend's stderr tail, prefixed with its exit status when it has exited.
    pub fn diagnostics(&self) -> String {
        let tail = self.backend.stderr_tail();
        match self.backend.exit_status() {
            Some(st) => format!("vhost-device-vsock exited ({st}); stderr:\n{tail}"),
            None if tail.trim().is_empty() => String::new(),
            None => format!("vhost-device-vsock stderr:\n{tail}"),
        }
    }

    /// An error that says the backend is gone, when it has exited.
    fn check_alive(&self) -> Result<(), TargetError> {
        match self.backend.exit_status() {
            Some(_) => Err(TargetError::Crashed(self.diagnostics())),
            None => Ok(()),
        }
    }

    /// [`HybridVsockPeer::op`], after checking the backend still runs.
    pub fn op(&mut self, op: HostOp) -> Result<(), TargetError> {
        self.check_alive()?;
        self.peer.op(op)
    }

    /// [`HybridVsockPeer::conn`].
    pub fn conn(&mut self, port: u32) -> Result<HostConn, TargetError> {
        self.check_alive()?;
        self.peer.conn(port)
    }

    /// [`HybridVsockPeer::send`].
    pub fn send(&mut self, port: u32, data: &[u8]) -> Result<(), TargetError> {
        self.check_alive()?;
        self.peer.send(port, data)
    }

    /// [`HybridVsockPeer::take`].
    pub fn take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        self.check_alive()?;
        self.peer.take(port)
    }
}
