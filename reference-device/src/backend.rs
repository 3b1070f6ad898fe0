//! Device backends: what a device type does with a descriptor chain (VIRTIO chapter 5).
//!
//! A backend sees a validated chain (readable descriptors first, then writable ones) and
//! moves bytes through [`GuestRam`]. It never assumes how a request is split into
//! descriptors (§2.7.4.1): [`ChainReader`] and [`ChainWriter`] walk the buffers as one stream.

use crate::memory::{GuestRam, OutOfBounds};
use crate::queue::Descriptor;
use crate::regs::{bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a backend reports for one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The request was handled; the value is the number of bytes written into the chain's
    /// device-writable buffers (the used element's `len`).
    Written(u32),
    /// The request could not even be parsed (for example a block request without a status
    /// byte). The reference still returns the head with `len` 0.
    Malformed,
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

/// The entropy device (DeviceID 4, §5.4): fills every writable buffer with bytes from a
/// seeded ChaCha8 generator, so runs are reproducible. One queue (`requestq`).
pub struct EntropyBackend {
    rng: ChaCha8Rng,
    writes_readable: bool,
    scratch: Vec<u8>,
}

impl EntropyBackend {
    /// An entropy device whose output stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        EntropyBackend {
            rng: ChaCha8Rng::seed_from_u64(seed),
            writes_readable: false,
            scratch: Vec::new(),
        }
    }
}

impl DeviceBackend for EntropyBackend {
    fn device_id(&self) -> u32 {
        4
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn config(&self) -> &[u8] {
        &[]
    }
    fn name(&self) -> &'static str {
        "entropy"
    }
    fn set_writes_readable(&mut self, on: bool) {
        self.writes_readable = on;
    }

    fn process(&mut self, _queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let mut written: u32 = 0;
        for d in chain {
            if !d.is_write_only() && !self.writes_readable {
                continue;
            }
            // Fill in pieces so a huge descriptor does not allocate its whole length.
            let mut addr = d.addr;
            let mut left = d.len as usize;
            while left > 0 {
                let n = left.min(4096);
                self.scratch.resize(n, 0);
                self.rng.fill_bytes(&mut self.scratch[..n]);
                if ram.write(addr, &self.scratch[..n]).is_err() {
                    return Completion::Written(written);
                }
                addr += n as u64;
                left -= n;
                if d.is_write_only() {
                    written = written.saturating_add(n as u32);
                }
            }
        }
        Completion::Written(written)
    }
}

/// Block request type: read sectors into the driver's buffer (§5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Block request type: write sectors from the driver's buffer.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Block request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Block request type: return the 20-byte device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Block status byte: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Block status byte: I/O error (for example a sector beyond the capacity).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Block status byte: request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Sector size of the block device in bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Length of a block request header in bytes (type le32, reserved le32, sector le64).
pub const BLK_HEADER_LEN: usize = 16;
/// Length of the GET_ID string in bytes.
pub const BLK_ID_LEN: usize = 20;

/// The block device (DeviceID 2, §5.2) over an in-memory disk. One queue.
///
/// Configuration space: `capacity` (le64, in 512-byte sectors) at 0, `size_max` (le32) at 8,
/// `seg_max` (le32) at 12, geometry (le16 cylinders, u8 heads, u8 sectors) at 16, `blk_size`
/// (le32) at 20. Offered features: VIRTIO_BLK_F_BLK_SIZE and VIRTIO_BLK_F_FLUSH.
///
/// A request is a 16-byte header in the readable part, then for OUT the data, and in the
/// writable part (IN / GET_ID) the data followed by one status byte, which is always the last
/// writable byte. The used `len` counts every byte written: data plus status.
pub struct BlockBackend {
    disk: Vec<u8>,
    config: Vec<u8>,
    id: [u8; BLK_ID_LEN],
    mutant: Option<crate::Mutant>,
}

impl BlockBackend {
    /// A disk of `sectors` 512-byte sectors filled with zeros.
    pub fn new(sectors: u64) -> Self {
        let mut config = vec![0u8; 24];
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        config[8..12].copy_from_slice(&65536u32.to_le_bytes());
        config[12..16].copy_from_slice(&126u32.to_le_bytes());
        config[16..18].copy_from_slice(&16u16.to_le_bytes());
        config[18] = 4;
        config[19] = 32;
        config[20..24].copy_from_slice(&512u32.to_le_bytes());
        let mut id = [0u8; BLK_ID_LEN];
        id[..14].copy_from_slice(b"virtio-conform");
        BlockBackend {
            disk: vec![0; (sectors * SECTOR_SIZE) as usize],
            config,
            id,
            mutant: None,
        }
    }

    /// The disk image.
    pub fn disk(&self) -> &[u8] {
        &self.disk
    }

    fn range(&self, sector: u64, len: u64) -> Option<std::ops::Range<usize>> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.disk.len() as u64).then_some(start as usize..end as usize)
    }
}

impl DeviceBackend for BlockBackend {
    fn device_id(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        if self.mutant == Some(crate::Mutant::WceWithoutFlush) {
            return bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_CONFIG_WCE);
        }
        bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH)
    }
    fn set_mutant(&mut self, m: crate::Mutant) {
        self.mutant = Some(m);
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn name(&self) -> &'static str {
        "block"
    }

    fn process(&mut self, _queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let mut header = [0u8; BLK_HEADER_LEN];
        let mut reader = ChainReader::new(chain);
        let writable = ChainWriter::capacity(chain);
        match reader.read(ram, &mut header) {
            Ok(BLK_HEADER_LEN) if writable >= 1 => {}
            _ => return Completion::Malformed,
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let data_in = writable - 1;
        let mut writer = ChainWriter::new(chain);
        let status = match kind {
            VIRTIO_BLK_T_IN => match self.range(sector, data_in) {
                Some(r) => {
                    if writer.write(ram, &self.disk[r]).is_err() {
                        return Completion::Malformed;
                    }
                    VIRTIO_BLK_S_OK
                }
                None => VIRTIO_BLK_S_IOERR,
            },
            VIRTIO_BLK_T_OUT => {
                let len = ChainReader::available(chain) - BLK_HEADER_LEN as u64;
                match self.range(sector, len) {
                    Some(r) => {
                        let mut data = vec![0u8; r.len()];
                        if reader.read(ram, &mut data).is_err() {
                            return Completion::Malformed;
                        }
                        self.disk[r].copy_from_slice(&data);
                        VIRTIO_BLK_S_OK
                    }
                    None => VIRTIO_BLK_S_IOERR,
                }
            }
            VIRTIO_BLK_T_FLUSH => VIRTIO_BLK_S_OK,
            VIRTIO_BLK_T_GET_ID => {
                let n = (data_in as usize).min(BLK_ID_LEN);
                if writer.write(ram, &self.id[..n]).is_err() {
                    return Completion::Malformed;
                }
                VIRTIO_BLK_S_OK
            }
            _ if self.mutant == Some(crate::Mutant::BlockUnknownTypeOk) => VIRTIO_BLK_S_OK,
            _ => VIRTIO_BLK_S_UNSUPP,
        };
        // The status byte is the last writable byte, whatever was written before it.
        // Data the device did not produce (an error, or the id's padding) reads as zeros.
        let mut skip = data_in.saturating_sub(writer.written() as u64);
        let zeros = [0u8; 4096];
        while skip > 0 {
            let n = skip.min(zeros.len() as u64) as usize;
            if writer.write(ram, &zeros[..n]).is_err() {
                return Completion::Malformed;
            }
            skip -= n as u64;
        }
        if writer.write(ram, &[status]).is_err() {
            return Completion::Malformed;
        }
        Completion::Written(writer.written())
    }
}
