//! `--target vhost-user`: any vhost-user device back-end (rust-vmm's vhost-device-*, for
//! example) behind the reference virtio-mmio transport, with the harness as the vhost-user
//! front-end.
//!
//! The transport (registers, status machine, feature negotiation, configuration space) is the
//! reference [`MmioDevice`]; its queue work is handed to the back-end through the
//! [`QueueServicer`](virtio_reference_device::QueueServicer) hook ([`frontend`] says which
//! vhost-user requests each driver step becomes). Guest RAM is a memfd both sides map, so
//! the harness reads exactly what the back-end wrote. DeviceFeatures are the back-end's
//! GET_FEATURES less the vhost-only bits; the configuration space comes from GET_CONFIG when
//! the back-end has the CONFIG protocol feature, else from the [`BACKENDS`] table entry.
//!
//! The back-end is either started by the harness from a [`BACKENDS`] entry or a command line
//! (`--backend NAME|CMD`: socket in a private temporary folder, stderr kept for diagnostics,
//! the process group killed when the target is dropped), or already running (`--socket PATH`).
//!
//! Between cases ([`Target::fresh`]) the harness closes the connection and opens a new one
//! with new zeroed guest RAM: the back-ends of rust-vmm's `vhost-user-backend` start a new
//! device for every connection, so each case meets a device in its power-on state. A started
//! back-end that exited is started again.

pub mod frontend;

use self::frontend::{lock, shared_ram, Connection, OpenError, SharedConnection, VhostUserDevice};
use super::hybrid_vsock::HybridVsockPeer;
use super::reference::guarded_call;
use super::{Capabilities, DeviceKind, IrqEvent, Target, TargetError, TargetInfo};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use virtio_reference_device::{DeviceConfig, GuestRam, MmioDevice, TransportVersion};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// One vhost-user back-end the harness knows how to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEntry {
    /// Name given to `--backend`.
    pub name: &'static str,
    /// The device type it implements.
    pub device: DeviceKind,
    /// Command line, split at spaces; `{dir}` is the private temporary folder, `{socket}`
    /// the socket path below.
    pub command: &'static str,
    /// Path of the socket the back-end listens on (`{dir}` replaced).
    pub socket: &'static str,
    /// Number of queues, when the back-end cannot tell (no MQ protocol feature).
    pub queues: u16,
    /// Configuration space size in bytes: read with GET_CONFIG when the back-end has the
    /// CONFIG protocol feature, else zeros of this size.
    pub config_len: u16,
    /// For a vsock back-end, its hybrid vsock Unix socket (`{dir}` replaced), where the
    /// harness plays the host side of connections (see [`super::hybrid_vsock`]); `""` for
    /// none.
    pub uds: &'static str,
}

/// The back-ends `--backend NAME` starts: adding one is one line. vhost-device-rng appends
/// the socket index (`0`) to `--socket-path`; vhost-device-vsock serves guest CID
/// [`VSOCK_GUEST_CID`] (8 bytes of configuration space: `guest_cid`, §5.10.4) with its
/// hybrid vsock socket in the scratch folder.
pub const BACKENDS: &[BackendEntry] = &[
    //            name                device               command                                         socket                 queues config
    entry(
        "vhost-device-rng",
        DeviceKind::Entropy,
        "vhost-device-rng --socket-path {dir}/vhu.sock",
        "{dir}/vhu.sock0",
        1,
        0,
    ),
    BackendEntry {
        uds: "{dir}/vsock.uds",
        ..entry(
            "vhost-device-vsock",
            DeviceKind::Vsock,
            "vhost-device-vsock --guest-cid 3 --socket {dir}/vhu.sock --uds-path {dir}/vsock.uds",
            "{dir}/vhu.sock",
            3,
            8,
        )
    },
];

/// The guest CID the vhost-device-vsock entry of [`BACKENDS`] is started with.
pub const VSOCK_GUEST_CID: u64 = 3;

const fn entry(
    name: &'static str,
    device: DeviceKind,
    command: &'static str,
    socket: &'static str,
    queues: u16,
    config_len: u16,
) -> BackendEntry {
    BackendEntry {
        name,
        device,
        command,
        socket,
        queues,
        config_len,
        uds: "",
    }
}

/// The table entry named `name`.
pub fn backend_entry(name: &str) -> Option<&'static BackendEntry> {
    BACKENDS.iter().find(|b| b.name == name)
}

/// Guest RAM of the vhost-user target: 16 MiB at guest physical address 0.
pub const VHOST_USER_RAM: u64 = 16 << 20;
/// How long a started back-end may take to create its socket, and a reconnection to succeed.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections in a row the back-end may close before its first reply before
/// [`VhostUserTarget`] gives up (see `OpenError::DroppedEarly`).
pub const EARLY_DROP_ATTEMPTS: u32 = 5;
const STDERR_TAIL_LINES: usize = 20;

/// Where the back-end comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSource {
    /// Start it: a [`BACKENDS`] name, or a command line containing `{socket}`.
    Start(String),
    /// Connect to one already listening at this path.
    Socket(PathBuf),
}

/// A started back-end process (its own process group), killed on drop.
struct BackendProcess {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// The hybrid vsock socket of a vsock back-end ([`BackendEntry::uds`]).
    uds: Option<PathBuf>,
    program: String,
}

impl BackendProcess {
    fn start(spec: &str, device: DeviceKind) -> Result<(Self, BackendEntry), String> {
        let dir = tempfile::Builder::new()
            .prefix("virtio-conform-vhu-")
            .tempdir()
            .map_err(|e| format!("temporary folder: {e}"))?;
        let e = match backend_entry(spec) {
            Some(e) if e.device != device => {
                return Err(format!(
                    "back-end `{spec}` is a {} device; pass --device {}",
                    e.device.name(),
                    e.device.name()
                ))
            }
            Some(e) => *e,
            None if spec.contains("{socket}") => entry(
                "custom",
                device,
                "",
                "{dir}/vhu.sock",
                default_queues(device),
                0,
            ),
            None => {
                let known: Vec<&str> = BACKENDS.iter().map(|b| b.name).collect();
                return Err(format!(
                    "unknown back-end `{spec}`: expected one of {} or a command line containing {{socket}}",
                    known.join(", ")
                ));
            }
        };
        let command = if e.name == "custom" { spec } else { e.command };
        let d = dir.path().display().to_string();
        let socket = PathBuf::from(e.socket.replace("{dir}", &d));
        let uds = (!e.uds.is_empty()).then(|| PathBuf::from(e.uds.replace("{dir}", &d)));
        let subst = |w: &str| {
            w.replace("{dir}", &d)
                .replace("{socket}", &socket.display().to_string())
        };
        let words: Vec<String> = command.split_whitespace().map(subst).collect();
        let (program, args) = words
            .split_first()
            .ok_or_else(|| "empty back-end command line".to_string())?;
        let stderr = std::fs::File::create(dir.path().join("stderr"))
            .map_err(|e| format!("back-end stderr file: {e}"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .map_err(|err| format!("starting `{program}`: {err} (is it installed and on PATH?)"))?;
        let mut p = BackendProcess {
            child,
            dir,
            socket,
            uds,
            program: program.clone(),
        };
        let t0 = Instant::now();
        while !(p.socket.exists() && p.uds.as_ref().is_none_or(|u| u.exists())) {
            if let Some(st) = p.exited() {
                return Err(p.with_tail(format!(
                    "`{}` exited ({st}) before creating its socket",
                    p.program
                )));
            }
            if t0.elapsed() > START_TIMEOUT {
                return Err(p.with_tail(format!(
                    "`{}` created no socket at {} within {:?}",
                    p.program,
                    p.socket.display(),
                    START_TIMEOUT
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok((p, e))
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read(self.dir.path().join("stderr")).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
    }

    fn with_tail(&self, msg: String) -> String {
        let tail = self.stderr_tail();
        if tail.trim().is_empty() {
            msg
        } else {
            format!("{msg}; last lines of the back-end's stderr:\n{tail}")
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if self.exited().is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Queues of each device type (used for a back-end started from a command line without MQ).
fn default_queues(device: DeviceKind) -> u16 {
    match device {
        DeviceKind::Net => 2,
        DeviceKind::Console => 2,
        DeviceKind::Balloon => 3,
        _ => 1,
    }
}

/// A vhost-user back-end behind the reference transport (see the module docs).
pub struct VhostUserTarget {
    source: BackendSource,
    device: DeviceKind,
    entry: BackendEntry,
    process: Option<BackendProcess>,
    /// The host side of a vsock back-end's connections (a new one every case).
    peer: Option<HybridVsockPeer>,
    conn: Option<SharedConnection>,
    dev: Option<MmioDevice>,
    mem: GuestMemoryMmap,
}

impl VhostUserTarget {
    /// Starts or connects to the back-end for a `device` and readies the first case.
    ///
    /// Errors ([`TargetError::Unavailable`]) when the back-end cannot be started, its socket
    /// cannot be reached, or the handshake fails; the message names the step.
    pub fn new(source: BackendSource, device: DeviceKind) -> Result<Self, TargetError> {
        let entry = match &source {
            BackendSource::Start(s) => backend_entry(s).copied(),
            BackendSource::Socket(_) => None,
        }
        .unwrap_or(entry("custom", device, "", "", default_queues(device), 0));
        let mut t = VhostUserTarget {
            source,
            device,
            entry,
            process: None,
            peer: None,
            conn: None,
            dev: None,
            mem: shared_ram(4096).map_err(TargetError::Unavailable)?,
        };
        t.fresh()?;
        Ok(t)
    }

    /// Process id of the back-end the target started (`None` with `--socket`), for
    /// diagnostics and for tests that end it behind the target's back.
    pub fn backend_pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    fn socket(&self) -> PathBuf {
        match (&self.source, &self.process) {
            (BackendSource::Socket(p), _) => p.clone(),
            (_, Some(p)) => p.socket.clone(),
            _ => PathBuf::new(),
        }
    }

    fn with_tail(&self, msg: String) -> String {
        match &self.process {
            Some(p) => p.with_tail(msg),
            None => msg,
        }
    }

    /// Opens a connection, retrying while the back-end re-creates its listener: while nothing
    /// listens (up to [`START_TIMEOUT`]), and up to [`EARLY_DROP_ATTEMPTS`] connections in a
    /// row that the back-end closes before its first reply. The last error is kept when the
    /// retries run out.
    fn connect(&mut self, mem: GuestMemoryMmap) -> Result<Connection, TargetError> {
        let socket = self.socket();
        let t0 = Instant::now();
        let mut drops = 0;
        loop {
            let e = match Connection::open(
                &socket,
                mem.clone(),
                self.entry.queues,
                &vec![0; usize::from(self.entry.config_len)],
            ) {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            if let Some(st) = self.process.as_mut().and_then(|p| p.exited()) {
                return Err(TargetError::Unavailable(
                    self.with_tail(format!("the back-end exited ({st}): {}", e.message())),
                ));
            }
            let in_time = t0.elapsed() < START_TIMEOUT;
            let pause = match &e {
                OpenError::NotListening(_) if in_time => Duration::from_millis(1),
                OpenError::DroppedEarly(_) if in_time && drops + 1 < EARLY_DROP_ATTEMPTS => {
                    drops += 1;
                    Duration::from_millis(10)
                }
                OpenError::DroppedEarly(m) => {
                    return Err(TargetError::Unavailable(self.with_tail(format!(
                        "{m} (the back-end closed {} connections in a row before its first reply)",
                        drops + 1
                    ))))
                }
                _ => return Err(TargetError::Unavailable(self.with_tail(e.message().into()))),
            };
            std::thread::sleep(pause);
        }
    }

    /// The connection's failure, if a request failed or the back-end exited.
    fn check(&mut self) -> Result<(), TargetError> {
        let broken = self.conn.as_ref().and_then(|c| lock(c).broken.clone());
        if let Some(e) = broken {
            return Err(TargetError::Crashed(self.with_tail(e)));
        }
        if let Some(st) = self.process.as_mut().and_then(|p| p.exited()) {
            return Err(TargetError::Crashed(
                self.with_tail(format!("the back-end exited ({st})")),
            ));
        }
        Ok(())
    }

    /// The host side of a vsock back-end's connections, after checking the back-end still
    /// runs; [`TargetError::Unsupported`] for a back-end without a hybrid vsock socket.
    fn peer(&mut self) -> Result<&mut HybridVsockPeer, TargetError> {
        self.check()?;
        self.peer.as_mut().ok_or_else(|| {
            TargetError::Unsupported(
                "host-side connections (only a started back-end with a hybrid vsock socket has them)"
                    .into(),
            )
        })
    }

    fn call<R>(&mut self, f: impl FnOnce(&mut MmioDevice) -> R) -> Result<R, TargetError> {
        let r = guarded_call(&mut self.dev, f)?;
        self.check()?;
        Ok(r)
    }
}

impl Target for VhostUserTarget {
    fn info(&self) -> TargetInfo {
        let implementation = match &self.source {
            BackendSource::Start(s) => format!(
                "{} (vhost-user back-end)",
                backend_entry(s).map_or(s.as_str(), |e| e.name)
            ),
            BackendSource::Socket(p) => format!("vhost-user back-end at {}", p.display()),
        };
        TargetInfo {
            name: "vhost-user".into(),
            device: self.device.name().into(),
            version: 2,
            implementation,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            config_change: false,
            memory_log: false,
            interrupts: true,
        }
    }

    fn ram_size(&self) -> u64 {
        VHOST_USER_RAM
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        if offset == virtio_reference_device::regs::INTERRUPT_STATUS {
            self.call(|d| d.poll_queue_servicer())?;
        }
        self.call(|d| d.read(offset, data))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.call(|d| d.write(offset, data))
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(format!("guest memory write at {gpa:#x}: {e}")))
    }

    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| TargetError::Protocol(format!("guest memory read at {gpa:#x}: {e}")))
    }

    fn fresh(&mut self) -> Result<(), TargetError> {
        // Closing the connection ends the back-end's device; the next one starts anew.
        self.dev = None;
        self.conn = None;
        // A vsock back-end keeps its host-side connections across connections of the
        // front-end, so every case gets a new process (and a new host side).
        self.peer = None;
        let restart = match &mut self.process {
            None => matches!(self.source, BackendSource::Start(_)),
            Some(p) => p.exited().is_some() || p.uds.is_some(),
        };
        if restart {
            self.process = None;
            if let BackendSource::Start(spec) = &self.source {
                let (p, _) =
                    BackendProcess::start(spec, self.device).map_err(TargetError::Unavailable)?;
                self.process = Some(p);
            }
        }
        let mem = shared_ram(VHOST_USER_RAM).map_err(TargetError::Unavailable)?;
        let conn = Arc::new(Mutex::new(self.connect(mem.clone())?));
        let mut cfg = DeviceConfig::new(TransportVersion::Modern);
        let backend = VhostUserDevice::new(conn.clone(), self.device.device_id());
        cfg.offered_features = Some(lock(&conn).device_features());
        cfg.queue_num_max = vec![256; usize::from(lock(&conn).queues)];
        self.dev = Some(MmioDevice::new(
            cfg,
            Box::new(backend),
            GuestRam::new(mem.clone()),
        ));
        self.mem = mem;
        self.conn = Some(conn);
        self.peer = self
            .process
            .as_ref()
            .and_then(|p| p.uds.as_deref())
            .map(|uds| HybridVsockPeer::new(uds, START_TIMEOUT));
        Ok(())
    }

    fn settle(&mut self) -> Result<(), TargetError> {
        self.call(|d| d.poll_queue_servicer())
    }

    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        let Some(d) = self.dev.as_mut() else {
            return Vec::new();
        };
        d.poll_queue_servicer();
        d.take_interrupts()
            .into_iter()
            .map(IrqEvent::from)
            .collect()
    }

    /// Guest RAM is a mapping in this process: sweeping all of it costs milliseconds, so the
    /// canary oracle watches every byte.
    fn bulk_cheap(&self) -> bool {
        true
    }

    fn host_op(&mut self, op: virtio_reference_device::HostOp) -> Result<(), TargetError> {
        self.peer()?.op(op)
    }

    fn host_conn(&mut self, port: u32) -> Result<virtio_reference_device::HostConn, TargetError> {
        self.peer()?.conn(port)
    }

    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<(), TargetError> {
        self.peer()?.send(port, data)
    }

    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        self.peer()?.take(port)
    }

    fn diagnostics(&mut self) -> Option<String> {
        let tail = self.process.as_ref()?.stderr_tail();
        (!tail.trim().is_empty()).then(|| format!("last lines of the back-end's stderr:\n{tail}"))
    }
}

/// Whether `path` names a vhost-user back-end program found on `PATH` (for tests and
/// scripts that skip when it is missing).
pub fn on_path(program: &str) -> bool {
    let Some(paths) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&paths).any(|d| Path::new(&d).join(program).is_file())
}
