//! Guest-memory access for the device side: [`GuestRam`] and its access log.
//!
//! The implementation lives in the `virtio-conform-guest-ram` crate (`guest-ram/`), kept apart
//! so fuzz builds leave it uninstrumented (see that crate's documentation); this module
//! re-exports it under the name the reference device has always used.

pub use guest_ram::{AccessKind, GuestRam, MemoryAccess, OutOfBounds};
