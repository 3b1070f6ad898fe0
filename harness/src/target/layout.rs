//! The guest-memory contract between the harness and a [`Target`](super::Target).
//!
//! Guest RAM is one contiguous range starting at guest physical address 0, of
//! [`Target::ram_size`](super::Target::ram_size) bytes, at least [`MIN_RAM_SIZE`]. The harness
//! is the only driver: it writes rings and buffers there through
//! [`Target::mem_write`](super::Target::mem_write), reads back what the device wrote through
//! [`Target::mem_read`](super::Target::mem_read), and the device reaches the same bytes through
//! its own guest-memory mapping (a VMM adapter usually hands both sides one `GuestMemoryMmap`).
//!
//! | guest physical range | what the harness places there |
//! |---|---|
//! | `0 .. RING_BASE` (first MiB) | nothing, except explicit `mem_write` steps of a case |
//! | `RING_BASE + i * RING_STRIDE ..` | virtqueue `i`: descriptor table, driver area (available ring), device area (used ring), legacy layout when version 1 |
//! | `BUF_BASE .. BUF_END` | data buffers and indirect tables of descriptor chains, allocated upwards and wrapping |
//! | near `ram_size` (and beyond it) | only malformed-chain probes, which point buffers at or past the end of RAM on purpose |
//!
//! A device must never touch guest memory outside the rings and the buffers it was given
//! (VIRTIO 1.3 §2.7.4, §2.7.5); targets with a memory log are checked access by access.

/// Smallest guest RAM, in bytes, the harness needs (16 MiB).
pub const MIN_RAM_SIZE: u64 = 16 << 20;
/// Guest physical address of queue 0's rings (1 MiB).
pub const RING_BASE: u64 = 0x10_0000;
/// Distance in bytes between the ring areas of consecutive queues (1 MiB).
pub const RING_STRIDE: u64 = 0x10_0000;
/// First guest physical address of the buffer area (8 MiB).
pub const BUF_BASE: u64 = 0x100_0000 - 0x80_0000;
/// End (exclusive) of the buffer area: 16 MiB minus one page.
pub const BUF_END: u64 = 0x100_0000 - 0x1000;
/// Offset of the QueueNotify register in the transport window, where
/// [`Target::notify`](super::Target::notify)'s default writes.
pub const QUEUE_NOTIFY_OFFSET: u64 = virtio_reference_device::regs::QUEUE_NOTIFY;
