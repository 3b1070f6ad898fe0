//! Targets: anything that answers register accesses of one virtio-mmio window and shares a
//! guest memory with the harness.

pub mod guard;
pub mod hybrid_vsock;
pub mod layout;
pub mod qemu;
pub mod qemu_balloon;
pub mod qemu_console;
pub mod qemu_net;
pub mod qemu_ram;
pub mod qemu_vsock;
pub mod qmp;
pub mod reference;
pub mod vhost_user;
pub mod virtio_queue;

pub use reference::ReferenceTarget;

use virtio_reference_device::{DriverMemory, MemoryAccess, Mutant, TransportVersion};

/// Byte the harness pre-fills read buffers with, so "untouched" differs from "returned 0".
pub const SENTINEL: u8 = 0xa5;

/// Why a target operation failed. Each becomes a verdict, never a harness crash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target cannot do this (for example a host-side configuration change).
    #[error("unsupported by the target: {0}")]
    Unsupported(String),
    /// The target crashed or panicked (severity high).
    #[error("target crashed: {0}")]
    Crashed(String),
    /// The target exceeded its step or time budget (severity high).
    #[error("target hung: {0}")]
    Hung(String),
    /// The target answered something the harness cannot interpret.
    #[error("target protocol error: {0}")]
    Protocol(String),
    /// The harness could not reach or start the target.
    #[error("target unavailable: {0}")]
    Unavailable(String),
}

/// An interrupt a target raised, when the target can observe its interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqEvent {
    /// Used buffer notification (queue if known).
    UsedBuffer(Option<u16>),
    /// Configuration change notification.
    ConfigChange,
    /// The line was raised, cause unknown (read InterruptStatus).
    Raised,
}

impl From<virtio_reference_device::Interrupt> for IrqEvent {
    fn from(i: virtio_reference_device::Interrupt) -> Self {
        match i {
            virtio_reference_device::Interrupt::UsedBuffer { queue } => {
                IrqEvent::UsedBuffer(Some(queue))
            }
            virtio_reference_device::Interrupt::ConfigChange => IrqEvent::ConfigChange,
        }
    }
}

/// What a target can do beyond register and memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `config_change` works (the host side can change the configuration space).
    pub config_change: bool,
    /// `take_accesses` reports every guest-memory access the device made.
    pub memory_log: bool,
    /// `take_interrupts` reports raised interrupts.
    pub interrupts: bool,
}

/// Identity of a target for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetInfo {
    /// The `--target` string that names it (`reference`, `mutant:<name>`, `qemu`).
    pub name: String,
    /// Device type (`entropy`, `block`, `net`).
    pub device: String,
    /// Transport version (1 or 2).
    pub version: u32,
    /// Implementation version string (crate version, QEMU version, ...).
    pub implementation: String,
}

/// A virtio-mmio device under test.
///
/// Offsets are byte offsets inside the transport window; widths are 1, 2, 4 or 8 bytes.
///
/// # Guest memory
///
/// Guest RAM starts at guest physical address 0 and is [`ram_size`](Target::ram_size) bytes
/// long, at least [`layout::MIN_RAM_SIZE`] (16 MiB). The harness writes rings and buffers with
/// [`mem_write`](Target::mem_write) and reads what the device wrote with
/// [`mem_read`](Target::mem_read); the device must see the same bytes. Where the harness puts
/// what is fixed in [`layout`]: rings of queue `i` at `RING_BASE + i * RING_STRIDE`, buffers in
/// `BUF_BASE..BUF_END`. [`fresh`](Target::fresh) starts every case with zeroed RAM.
///
/// # Notifications
///
/// Every available-buffer notification (VIRTIO 1.3 §4.2.3.3) goes through
/// [`notify`](Target::notify). The default writes the value to QueueNotify (offset 0x50); a VMM
/// that takes notifications through KVM ioeventfds overrides it to signal the queue's eventfd,
/// as KVM would for a guest write, and falls back to the register write for values no eventfd
/// matches.
///
/// # Completions and settling
///
/// After a notification the harness polls the used ring for completions. Before every poll it
/// calls [`settle`](Target::settle), where a VMM whose device work runs in an event loop turns
/// that loop (for example `EventManager::run_with_timeout(0)`) or waits for its I/O threads.
/// The polling budget is [`USED_WAIT`] for completions a case expects and [`NONE_WAIT`] before
/// concluding that nothing was used, polling every [`POLL_INTERVAL`]; a target whose work is
/// done inside the call that triggered it returns `true` from
/// [`synchronous`](Target::synchronous) and is never waited for.
///
/// # Time and panics
///
/// [`run_suite`](crate::suite::run_suite) runs each case on a worker thread under a wall-clock
/// budget per case and per call ([`Options`](crate::suite::Options)): a target that blocks
/// yields `timeout` (severity high) and the run continues on a new instance from the
/// [`TargetFactory`]. A panic inside any `Target` method is caught and graded `fail` (severity
/// high) with its message; panics on the device's own threads are the adapter's to report,
/// with [`guard::ThreadPanics`].
pub trait Target {
    /// Identity for reports.
    fn info(&self) -> TargetInfo;
    /// Optional abilities.
    fn capabilities(&self) -> Capabilities;
    /// Size of guest RAM in bytes, starting at guest physical address 0; at least
    /// [`layout::MIN_RAM_SIZE`].
    fn ram_size(&self) -> u64;
    /// Reads `data.len()` bytes at `offset`; `data` arrives filled with [`SENTINEL`].
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError>;
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError>;
    /// Writes `data` to guest memory at guest physical address `gpa`.
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError>;
    /// Reads `buf.len()` bytes of guest memory at guest physical address `gpa`.
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError>;
    /// Replaces the target with a fresh instance (power-on state, zeroed RAM). Called before
    /// every case so cases are independent.
    fn fresh(&mut self) -> Result<(), TargetError>;
    /// The driver notifies the device: `value` is what a guest writes to QueueNotify, the
    /// queue index (or, with VIRTIO_F_NOTIFICATION_DATA, the notification data of §4.2.3.3),
    /// and deliberately invalid values in robustness cases. Default: a 32-bit write of `value`
    /// at offset 0x50.
    fn notify(&mut self, value: u32) -> Result<(), TargetError> {
        self.write32(virtio_reference_device::regs::QUEUE_NOTIFY, value)
    }
    /// A case needs the target to offer the feature bits `bits` (a mask of `1 << bit`):
    /// called before the case reads DeviceFeatures, on a fresh target. A target that offers
    /// optional features only on demand (the reference's VIRTIO_F_RING_PACKED and
    /// VIRTIO_F_IN_ORDER) turns them on; bits it cannot offer are left alone (the case is
    /// then `unsupported`). Default: nothing to do.
    fn request_features(&mut self, bits: u64) -> Result<(), TargetError> {
        let _ = bits;
        Ok(())
    }
    /// Lets device work that runs outside the calls finish: called before every poll of the
    /// used ring (see the trait's "Completions and settling"). Default: nothing to do.
    fn settle(&mut self) -> Result<(), TargetError> {
        Ok(())
    }
    /// Interrupts raised since the last call (empty when not observable).
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        Vec::new()
    }
    /// Device memory accesses since the last call (`None` when not observable).
    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        None
    }
    /// The host changes `data.len()` bytes of the configuration space at `offset`.
    fn config_change(&mut self, _offset: u64, _data: &[u8]) -> Result<(), TargetError> {
        Err(TargetError::Unsupported(
            "host-side configuration change".into(),
        ))
    }
    /// The host side of a device with an external peer delivers `data` toward the driver on
    /// `port`: one Ethernet frame for net (port = queue pair), input bytes for console port
    /// `port`. The device fills available receive buffers with it (now or, for out-of-process
    /// targets, soon: poll the used ring). Default: [`TargetError::Unsupported`].
    fn host_send(&mut self, _port: u32, _data: &[u8]) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("host-side input".into()))
    }
    /// What the device transmitted to the host on `port` since the last call, one entry per
    /// unit (a frame for net, the bytes of one transmit chain for console; an out-of-process
    /// target may split or join console bytes differently). Default:
    /// [`TargetError::Unsupported`].
    fn host_take(&mut self, _port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        Err(TargetError::Unsupported("host-side output".into()))
    }
    /// The host side of a connection-oriented device (virtio-vsock, §5.10) does `op`: listens
    /// on a host port, connects to a driver's port, or closes a connection; see
    /// [`HostOp`](virtio_reference_device::HostOp) for how connections are named. Default:
    /// [`TargetError::Unsupported`].
    fn host_op(&mut self, op: virtio_reference_device::HostOp) -> Result<(), TargetError> {
        let _ = op;
        Err(TargetError::Unsupported("host-side connections".into()))
    }
    /// What the host side sees of the connection named `port`. Default:
    /// [`TargetError::Unsupported`].
    fn host_conn(&mut self, port: u32) -> Result<virtio_reference_device::HostConn, TargetError> {
        let _ = port;
        Err(TargetError::Unsupported("host-side connections".into()))
    }
    /// Whether the device finishes all work inside the call that triggered it (in-process
    /// targets). The harness then never waits for completions that cannot come later.
    fn synchronous(&self) -> bool {
        false
    }
    /// Extra diagnostics to attach to a failure (for example the tail of QEMU's stderr).
    fn diagnostics(&mut self) -> Option<String> {
        None
    }
    /// Carries out every operation the target accepted but has not performed yet (pipelined
    /// writes of an out-of-process target) and reports the first that failed. The runner
    /// calls it at the end of every case, so a trailing write is never lost. Default: nothing.
    fn flush(&mut self) -> Result<(), TargetError> {
        Ok(())
    }

    /// Reads a large range of guest memory (the canary oracle's sweeps). It observes every
    /// operation issued before it. The default is [`Target::mem_read`]; a target with a faster
    /// path (QEMU with its RAM shared through a file) overrides it.
    fn bulk_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.mem_read(gpa, buf)
    }
    /// Writes a large range of guest memory (the canary oracle's fill); the default is
    /// [`Target::mem_write`].
    fn bulk_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.mem_write(gpa, data)
    }
    /// Whether [`Target::bulk_read`] of the whole guest RAM costs milliseconds, not seconds
    /// (in-process targets, shared RAM), so the canary oracle can watch every byte.
    fn bulk_cheap(&self) -> bool {
        self.synchronous()
    }

    /// 32-bit register read.
    fn read32(&mut self, offset: u64) -> Result<u32, TargetError> {
        let mut b = [SENTINEL; 4];
        self.read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// 32-bit register write.
    fn write32(&mut self, offset: u64, value: u32) -> Result<(), TargetError> {
        self.write(offset, &value.to_le_bytes())
    }
}

/// How long the harness polls the used ring for completions a case expects.
pub const USED_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);
/// How long the harness polls before concluding that the device used nothing.
pub const NONE_WAIT: std::time::Duration = std::time::Duration::from_millis(30);
/// Interval between two polls of the used ring (each preceded by [`Target::settle`]).
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// A boxed target is a target, so factories can hand out `Box<dyn Target + Send>`.
impl<T: Target + ?Sized> Target for Box<T> {
    fn info(&self) -> TargetInfo {
        (**self).info()
    }
    fn request_features(&mut self, bits: u64) -> Result<(), TargetError> {
        (**self).request_features(bits)
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn ram_size(&self) -> u64 {
        (**self).ram_size()
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        (**self).read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        (**self).write(offset, data)
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        (**self).mem_write(gpa, data)
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        (**self).mem_read(gpa, buf)
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        (**self).fresh()
    }
    fn notify(&mut self, value: u32) -> Result<(), TargetError> {
        (**self).notify(value)
    }
    fn settle(&mut self) -> Result<(), TargetError> {
        (**self).settle()
    }
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        (**self).take_interrupts()
    }
    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        (**self).take_accesses()
    }
    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        (**self).config_change(offset, data)
    }
    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<(), TargetError> {
        (**self).host_send(port, data)
    }
    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        (**self).host_take(port)
    }
    fn host_op(&mut self, op: virtio_reference_device::HostOp) -> Result<(), TargetError> {
        (**self).host_op(op)
    }
    fn host_conn(&mut self, port: u32) -> Result<virtio_reference_device::HostConn, TargetError> {
        (**self).host_conn(port)
    }
    fn synchronous(&self) -> bool {
        (**self).synchronous()
    }
    fn diagnostics(&mut self) -> Option<String> {
        (**self).diagnostics()
    }
    fn bulk_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        (**self).bulk_read(gpa, buf)
    }
    fn bulk_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        (**self).bulk_write(gpa, data)
    }
    fn bulk_cheap(&self) -> bool {
        (**self).bulk_cheap()
    }
    fn flush(&mut self) -> Result<(), TargetError> {
        (**self).flush()
    }
}

/// Builds target instances for [`run_suite`](crate::suite::run_suite): once at the start, and
/// again whenever an instance timed out or panicked (the old one is abandoned). Any
/// `FnMut() -> Result<T, TargetError>` with `T: Target + Send + 'static` is a factory.
pub trait TargetFactory {
    /// A new instance; its [`Target::fresh`] is still called before each case.
    fn make(&mut self) -> Result<Box<dyn Target + Send>, TargetError>;
}

impl<F, T> TargetFactory for F
where
    F: FnMut() -> Result<T, TargetError>,
    T: Target + Send + 'static,
{
    fn make(&mut self) -> Result<Box<dyn Target + Send>, TargetError> {
        self().map(|t| Box::new(t) as Box<dyn Target + Send>)
    }
}

/// A factory handing out one existing instance: a run that has to replace it (after a
/// timeout or a panic) reports the remaining cases as `error`. Prefer a real factory where
/// instances can be rebuilt.
pub fn once<T: Target + Send + 'static>(target: T) -> impl TargetFactory {
    let mut slot = Some(target);
    move || {
        slot.take().ok_or_else(|| {
            TargetError::Unavailable(
                "the run was given one instance, which cannot be replaced after a timeout or panic"
                    .into(),
            )
        })
    }
}

/// [`DriverMemory`] over a target's guest memory, so the ring model works on any target.
pub struct TargetMemory<'a>(pub &'a mut dyn Target);

impl DriverMemory for TargetMemory<'_> {
    type Error = TargetError;
    fn write_bytes(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.0.mem_write(gpa, data)
    }
    fn read_bytes(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.0.mem_read(gpa, buf)
    }
}

/// A parsed `--target` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// The reference device.
    Reference,
    /// The reference device with one injected bug.
    Mutant(Mutant),
    /// QEMU over qtest.
    Qemu,
    /// rust-vmm's virtio-queue behind the reference transport (entropy, version 2).
    VirtioQueue,
    /// A vhost-user device back-end behind the reference transport (version 2), the harness
    /// being the front-end ([`vhost_user`]).
    VhostUser,
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reference" => Ok(TargetKind::Reference),
            "qemu" => Ok(TargetKind::Qemu),
            "virtio-queue" => Ok(TargetKind::VirtioQueue),
            "vhost-user" => Ok(TargetKind::VhostUser),
            _ => match s.strip_prefix("mutant:") {
                Some(name) => Mutant::from_name(name)
                    .map(TargetKind::Mutant)
                    .ok_or_else(|| {
                        let all: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
                        format!("unknown mutant `{name}`; known: {}", all.join(", "))
                    }),
                None => Err(format!(
                    "unknown target `{s}`: expected `reference`, `qemu`, `virtio-queue`, `vhost-user` or `mutant:<name>`"
                )),
            },
        }
    }
}

/// Device type selector shared by the in-process and QEMU targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// virtio-rng, DeviceID 4.
    Entropy,
    /// virtio-blk, DeviceID 2.
    Block,
    /// virtio-net, DeviceID 1.
    Net,
    /// virtio-console, DeviceID 3.
    Console,
    /// virtio-balloon (traditional memory balloon), DeviceID 5.
    Balloon,
    /// virtio-vsock (socket device), DeviceID 19; version 2 (modern) only.
    Vsock,
}

impl DeviceKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Entropy => "entropy",
            DeviceKind::Block => "block",
            DeviceKind::Net => "net",
            DeviceKind::Console => "console",
            DeviceKind::Balloon => "balloon",
            DeviceKind::Vsock => "vsock",
        }
    }

    /// The DeviceID this device type presents (VIRTIO chapter 5).
    pub fn device_id(self) -> u32 {
        match self {
            DeviceKind::Net => 1,
            DeviceKind::Block => 2,
            DeviceKind::Console => 3,
            DeviceKind::Entropy => 4,
            DeviceKind::Balloon => 5,
            DeviceKind::Vsock => 19,
        }
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "entropy" | "rng" => Ok(DeviceKind::Entropy),
            "block" | "blk" => Ok(DeviceKind::Block),
            "net" => Ok(DeviceKind::Net),
            "console" => Ok(DeviceKind::Console),
            "balloon" => Ok(DeviceKind::Balloon),
            "vsock" => Ok(DeviceKind::Vsock),
            _ => Err(format!(
                "unknown device `{s}`: expected entropy, block, net, console, balloon or vsock"
            )),
        }
    }
}

/// Parses a transport version number (1 or 2).
pub fn parse_version(v: u32) -> Result<TransportVersion, String> {
    match v {
        1 => Ok(TransportVersion::Legacy),
        2 => Ok(TransportVersion::Modern),
        _ => Err(format!("unknown transport version {v}: expected 1 or 2")),
    }
}
