//! The backend contract: what a device type does with a descriptor chain (VIRTIO chapter 5).
//! Each device type lives in its own file under [`crate::devices`].
//!
//! A backend sees a validated chain (readable descriptors first, then writable ones) and
//! moves bytes through [`GuestRam`]. It never assumes how a request is split into
//! descriptors (§2.7.4.1): [`ChainReader`] and [`ChainWriter`] walk the buffers as one stream.

use crate::memory::{GuestRam, OutOfBounds};
use crate::queue::Descriptor;

pub use crate::devices::balloon::BalloonBackend;
pub use crate::devices::block::{
    BlockBackend, BLK_HEADER_LEN, BLK_ID_LEN, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
pub use crate::devices::console::ConsoleBackend;
pub use crate::devices::entropy::EntropyBackend;
pub use crate::devices::net::{NetBackend, NetOptions};
pub use crate::devices::vsock::{VsockBackend, VsockHeader, VsockOptions};

/// What a backend reports for one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The request was handled; the value is the number of bytes written into the chain's
    /// device-writable buffers (the used element's `len`).
    Written(u32),
    /// The request could not even be parsed (for example a block request without a status
    /// byte). The reference still returns the head with `len` 0.
    Malformed,
    /// The chain holds part of a unit that continues in the next chain of the same queue
    /// (a received frame spread over mergeable buffers, §5.1.6.4): `len` bytes were written.
    /// The device holds the used element back and publishes it together with the elements
    /// of the chains that complete the unit, so the driver sees them used together.
    Partial(u32),
    /// The device consumed the chain but keeps it: it is used (with `len` 0) only when the
    /// backend releases it ([`DeviceBackend::release_held`]), for example the balloon's statsq
    /// buffer, used when the host asks for statistics (§5.5.6.3).
    Held,
}

/// A host-side operation on the peer of a connection-oriented device (virtio-vsock, §5.10):
/// what the host application at the other end of the device does to a stream connection.
///
/// A connection is named by one port number on the host side: the host port the driver
/// connects to for connections the driver requests ([`HostOp::Listen`]), the driver's port
/// for connections the host opens ([`HostOp::Connect`]). [`DeviceBackend::host_send`],
/// [`DeviceBackend::host_take`] and [`DeviceBackend::host_conn`] use the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOp {
    /// The host accepts connection requests the driver sends to host port `port`.
    Listen {
        /// Host port (vsock port number on CID 2).
        port: u32,
    },
    /// The host opens a stream connection to the driver's port `port`.
    Connect {
        /// Port on the driver's side (the guest CID).
        port: u32,
    },
    /// The host closes its end of the connection named `port` (both directions).
    Close {
        /// The connection's name (see the enum's description).
        port: u32,
    },
}

/// What the host side sees of the connection named `port` (see [`HostOp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostConn {
    /// No connection by that name: never opened, or listening with nobody connected yet.
    None,
    /// The host asked to connect and has no answer yet.
    Pending,
    /// The connection is established and the driver has not closed it.
    Open,
    /// The driver refused the host's connection (the device answered with RST).
    Refused,
    /// The connection was established and the driver's side has since shut it down or reset it.
    Closed,
}

/// A device type behind the virtio-mmio transport.
pub trait DeviceBackend: Send {
    /// DeviceID (chapter 5): 4 for entropy, 2 for block.
    fn device_id(&self) -> u32;
    /// Device-type feature bits the backend offers (bits 0..=23 and 50..=127 by chapter 6).
    fn features(&self) -> u64;
    /// Number of virtqueues.
    fn num_queues(&self) -> u16;
    /// The device configuration space as it currently reads.
    fn config(&self) -> &[u8];
    /// Handles one chain popped from queue `queue`.
    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion;
    /// A short name for reports (`entropy`, `block`).
    fn name(&self) -> &'static str;
    /// Switches on the entropy mutant that writes into readable buffers (test only).
    fn set_writes_readable(&mut self, _on: bool) {}
    /// Turns on the injected bug `m` where it lives in the backend (default: nowhere).
    fn set_mutant(&mut self, _m: crate::Mutant) {}
    /// Whether the backend can use a chain from `queue` now. A receive queue answers `false`
    /// while the host has nothing to deliver, so the driver's buffers stay available until
    /// input arrives (default: always ready).
    fn ready_for(&self, _queue: u16) -> bool {
        true
    }
    /// The host side delivers `data` toward the driver on `port` (net: one Ethernet frame;
    /// console: input bytes for port `port`). Returns the queues the device should service
    /// now, or why the backend has no host side for it.
    fn host_send(&mut self, _port: u32, _data: &[u8]) -> Result<Vec<u16>, String> {
        Err(format!("the {} device has no host-side input", self.name()))
    }
    /// The driver wrote `data` at byte `offset` of the device configuration space (for
    /// example the console's `emerg_wr`, §5.3.5.1). Default: the write is ignored.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Queues the backend wants serviced after a chain it just handled (for example the
    /// console's control receiveq once the driver's DEVICE_READY queued port announcements).
    /// Default: none.
    fn take_wakeups(&mut self) -> Vec<u16> {
        Vec::new()
    }
    /// Device reset (§2.4): forget negotiated features and what the driver set up through
    /// the queues (default: nothing to forget).
    fn reset(&mut self) {}
    /// The features the driver accepted: called when a version-2 device accepts FEATURES_OK
    /// and whenever a legacy driver writes DriverFeatures (default: ignored).
    fn negotiated(&mut self, _features: u64) {}
    /// A change the backend made to its own configuration space since the last call (byte
    /// offset and new bytes), for example a MAC set through a control command. The device
    /// copies it into the configuration space and changes ConfigGeneration.
    fn take_config_update(&mut self) -> Option<(usize, Vec<u8>)> {
        None
    }
    /// The host side changed the configuration space (`data` at byte `offset`, already
    /// clipped to the space), e.g. the link went down; the backend keeps its copy in step.
    fn host_config_changed(&mut self, _offset: usize, _data: &[u8]) {}
    /// What the device passed to the host on `port` since the last call, one entry per unit
    /// (net: one frame; console: the bytes of one transmit chain).
    fn host_take(&mut self, _port: u32) -> Result<Vec<Vec<u8>>, String> {
        Err(format!(
            "the {} device has no host-side output",
            self.name()
        ))
    }
    /// The host side does `op` on a connection-oriented device's peer ([`HostOp`]). Returns
    /// the queues the device should service now, or why the backend has no such host side.
    fn host_op(&mut self, op: HostOp) -> Result<Vec<u16>, String> {
        let _ = op;
        Err(format!(
            "the {} device has no host-side connections",
            self.name()
        ))
    }
    /// What the host side sees of the connection named `port` ([`HostConn`]), or why the
    /// backend has no such host side.
    fn host_conn(&self, port: u32) -> Result<HostConn, String> {
        let _ = port;
        Err(format!(
            "the {} device has no host-side connections",
            self.name()
        ))
    }
    /// Whether the chains of `queue` the backend holds ([`Completion::Held`]) are to be used
    /// now. Asked whenever the queue is serviced while it holds chains. Default: never.
    fn release_held(&mut self, _queue: u16) -> bool {
        false
    }
    /// A driver write the backend accepted into its configuration space since the last call
    /// (byte offset and the bytes now there), for example the balloon's `actual`. The device
    /// copies it into the configuration space the driver reads, without changing
    /// ConfigGeneration (the driver made the change). Default: none.
    fn take_driver_write(&mut self) -> Option<(usize, Vec<u8>)> {
        None
    }
}

/// Reads the device-readable part of a chain as one byte stream.
pub struct ChainReader<'a> {
    descs: std::slice::Iter<'a, Descriptor>,
    cur: Option<(u64, u32)>,
}

impl<'a> ChainReader<'a> {
    /// A reader over the readable descriptors of `chain`.
    pub fn new(chain: &'a [Descriptor]) -> Self {
        ChainReader {
            descs: chain.iter(),
            cur: None,
        }
    }

    /// Total readable bytes of `chain`.
    pub fn available(chain: &[Descriptor]) -> u64 {
        chain
            .iter()
            .filter(|d| !d.is_write_only())
            .map(|d| d.len as u64)
            .sum()
    }

    /// Fills `buf` from the stream; returns how many bytes were read (less at the end).
    pub fn read(&mut self, ram: &mut GuestRam, buf: &mut [u8]) -> Result<usize, OutOfBounds> {
        let mut done = 0;
        while done < buf.len() {
            let (addr, left) = match self.cur {
                Some((a, l)) if l > 0 => (a, l),
                _ => match self.descs.next() {
                    Some(d) if !d.is_write_only() => {
                        self.cur = Some((d.addr, d.len));
                        continue;
                    }
                    _ => break,
                },
            };
            let n = (left as usize).min(buf.len() - done);
            ram.read(addr, &mut buf[done..done + n])?;
            self.cur = Some((addr + n as u64, left - n as u32));
            done += n;
        }
        Ok(done)
    }
}

/// Writes the device-writable part of a chain as one byte stream.
pub struct ChainWriter<'a> {
    descs: std::slice::Iter<'a, Descriptor>,
    cur: Option<(u64, u32)>,
    written: u32,
}

impl<'a> ChainWriter<'a> {
    /// A writer over the writable descriptors of `chain`.
    pub fn new(chain: &'a [Descriptor]) -> Self {
        ChainWriter {
            descs: chain.iter(),
            cur: None,
            written: 0,
        }
    }

    /// Total writable bytes of `chain`.
    pub fn capacity(chain: &[Descriptor]) -> u64 {
        chain
            .iter()
            .filter(|d| d.is_write_only())
            .map(|d| d.len as u64)
            .sum()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u32 {
        self.written
    }

    /// Writes `data` into the stream; returns how many bytes fitted.
    pub fn write(&mut self, ram: &mut GuestRam, data: &[u8]) -> Result<usize, OutOfBounds> {
        let mut done = 0;
        while done < data.len() {
            let (addr, left) = match self.cur {
                Some((a, l)) if l > 0 => (a, l),
                _ => match self.descs.next() {
                    Some(d) if d.is_write_only() => {
                        self.cur = Some((d.addr, d.len));
                        continue;
                    }
                    Some(_) => continue,
                    None => break,
                },
            };
            let n = (left as usize).min(data.len() - done);
            ram.write(addr, &data[done..done + n])?;
            self.cur = Some((addr + n as u64, left - n as u32));
            done += n;
            self.written = self.written.saturating_add(n as u32);
        }
        Ok(done)
    }
}
