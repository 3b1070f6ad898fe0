//! One file per device type (VIRTIO chapter 5), each implementing
//! [`DeviceBackend`](crate::backend::DeviceBackend).

pub mod balloon;
pub mod block;
pub mod console;
pub mod entropy;
pub mod net;
pub mod vsock;
