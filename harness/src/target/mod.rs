//! Targets: anything that answers register accesses of one virtio-mmio window and shares a
//! guest memory with the harness.

pub mod qemu;
pub mod qemu_ram;
pub mod reference;
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
/// Guest addresses are guest physical addresses inside `0..ram_size()`.
pub trait Target {
    /// Identity for reports.
    fn info(&self) -> TargetInfo;
    /// Optional abilities.
    fn capabilities(&self) -> Capabilities;
    /// Size of guest RAM in bytes, starting at guest physical address 0.
    fn ram_size(&self) -> u64;
    /// Reads `data.len()` bytes at `offset`; `data` arrives filled with [`SENTINEL`].
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError>;
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError>;
    /// Writes guest memory.
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError>;
    /// Reads guest memory.
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError>;
    /// Replaces the target with a fresh instance (power-on state, zeroed RAM). Called before
    /// every case so cases are independent.
    fn fresh(&mut self) -> Result<(), TargetError>;
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
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reference" => Ok(TargetKind::Reference),
            "qemu" => Ok(TargetKind::Qemu),
            "virtio-queue" => Ok(TargetKind::VirtioQueue),
            _ => match s.strip_prefix("mutant:") {
                Some(name) => Mutant::from_name(name)
                    .map(TargetKind::Mutant)
                    .ok_or_else(|| {
                        let all: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
                        format!("unknown mutant `{name}`; known: {}", all.join(", "))
                    }),
                None => Err(format!(
                    "unknown target `{s}`: expected `reference`, `qemu`, `virtio-queue` or `mutant:<name>`"
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
    /// virtio-net, DeviceID 1 (QEMU only).
    Net,
}

impl DeviceKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Entropy => "entropy",
            DeviceKind::Block => "block",
            DeviceKind::Net => "net",
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
            _ => Err(format!(
                "unknown device `{s}`: expected entropy, block or net"
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
