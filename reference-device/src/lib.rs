//! The reference virtio-mmio device of virtio-conform: the oracle every target is measured
//! against.
//!
//! - [`MmioDevice`]: the transport registers of VIRTIO 1.3 §4.2 (version 2 and legacy
//!   version 1), the device status state machine (§2.1), feature negotiation (§2.2), reset
//!   (§2.4), configuration space and generation (§2.5), virtqueue reset (§2.6.1).
//! - [`SplitQueue`]: the split virtqueue of §2.7 over vm-memory's guest memory, strict about
//!   every malformed chain and bounded in the work it does.
//! - [`EntropyBackend`] and [`BlockBackend`]: device types behind the [`DeviceBackend`] trait.
//! - [`GuestRam`]: bounds-checked guest memory with optional access recording.
//! - [`Mutant`]: historical bugs that can be injected to prove the checks can fail.
//!
//! Where the spec leaves a choice, [`Knobs`] documents and configures it.
//!
//! ```
//! use virtio_reference_device::{regs, DeviceConfig, EntropyBackend, GuestRam, MmioDevice, TransportVersion};
//! let ram = GuestRam::anonymous(1 << 20).unwrap();
//! let mut dev = MmioDevice::new(DeviceConfig::new(TransportVersion::Modern), Box::new(EntropyBackend::new(7)), ram);
//! assert_eq!(dev.read_u32(regs::MAGIC), regs::MAGIC_VALUE);
//! assert_eq!(dev.read_u32(regs::DEVICE_ID), 4);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod device;
pub mod devices;
pub mod driver;
pub mod driver_packed;
pub mod memory;
pub mod mutant;
pub mod packed;
pub mod queue;
pub mod regs;

pub use backend::{
    BalloonBackend, BlockBackend, ChainReader, ChainWriter, Completion, ConsoleBackend,
    DeviceBackend, EntropyBackend, HostConn, HostOp, NetBackend, NetOptions, VsockBackend,
    VsockHeader, VsockOptions,
};
pub use device::{
    DeviceConfig, Interrupt, Knobs, MalformedChainPolicy, MmioDevice, OpenRead, ShmRegion,
    TransportVersion,
};
pub use driver::{DriverMemory, DriverQueue};
pub use driver_packed::{DriverPackedQueue, PackedElem, PackedUsed};
pub use memory::{AccessKind, GuestRam, MemoryAccess, OutOfBounds};
pub use mutant::Mutant;
pub use packed::{PackedChain, PackedDesc, PackedQueue};
pub use queue::{Budget, Descriptor, QueueError, RingPart, SplitQueue, ZeroLengthPolicy};
