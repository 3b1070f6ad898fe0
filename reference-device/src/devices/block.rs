//! The block device (virtio-blk, DeviceID 2, VIRTIO §5.2).

use crate::backend::{ChainReader, ChainWriter, Completion, DeviceBackend};
use crate::memory::GuestRam;
use crate::queue::Descriptor;
use crate::regs::{
    bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
};

/// Block request type: read sectors into the driver's buffer (§5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Block request type: write sectors from the driver's buffer.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Block request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Block request type: return the 20-byte device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Block request type: discard ranges of sectors (VIRTIO_BLK_F_DISCARD, §5.2.6).
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Block request type: write zeroes to ranges of sectors (VIRTIO_BLK_F_WRITE_ZEROES, §5.2.6).
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Flag of a discard / write-zeroes segment: the device may deallocate the range (only
/// meaningful for write zeroes; a discard with it set is unsupported, §5.2.6.2).
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Length of one discard / write-zeroes segment in bytes (`sector` le64, `num_sectors`
/// le32, `flags` le32).
pub const BLK_SEGMENT_LEN: u64 = 16;
/// `max_discard_sectors` and `max_write_zeroes_sectors` of the reference (per segment).
pub const BLK_MAX_DWZ_SECTORS: u32 = 1024;
/// `max_discard_seg` and `max_write_zeroes_seg` of the reference.
pub const BLK_MAX_DWZ_SEG: u32 = 4;
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
/// (le32) at 20, topology (24..32, zero), `writeback` at 32, `num_queues` (le16) at 34,
/// `max_discard_sectors` (le32) at 36, `max_discard_seg` (le32) at 40,
/// `discard_sector_alignment` (le32, sectors) at 44, `max_write_zeroes_sectors` (le32) at 48,
/// `max_write_zeroes_seg` (le32) at 52, `write_zeroes_may_unmap` (u8) at 56 (§5.2.4).
/// Offered features: VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH and, on a writable disk,
/// VIRTIO_BLK_F_DISCARD and VIRTIO_BLK_F_WRITE_ZEROES.
///
/// Discard and write zeroes (§5.2.6): the readable data after the header is an array of
/// 16-byte segments. Every segment is checked before any is carried out: a length that is not
/// a whole number of segments, more segments than `max_*_seg`, a segment longer than
/// `max_*_sectors` or past the capacity end with VIRTIO_BLK_S_IOERR; an unknown flag, or the
/// unmap flag on a discard, with VIRTIO_BLK_S_UNSUPP (§5.2.6.2). Write zeroes zeroes every
/// range; discard leaves the data as it was (deallocation is optional).
///
/// A request is a 16-byte header in the readable part, then for OUT the data, and in the
/// writable part (IN / GET_ID) the data followed by one status byte, which is always the last
/// writable byte. The used `len` counts every byte written: data plus status.
pub struct BlockBackend {
    disk: Vec<u8>,
    config: Vec<u8>,
    id: [u8; BLK_ID_LEN],
    mutant: Option<crate::Mutant>,
    read_only: bool,
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
        config.resize(60, 0);
        config[36..40].copy_from_slice(&BLK_MAX_DWZ_SECTORS.to_le_bytes());
        config[40..44].copy_from_slice(&BLK_MAX_DWZ_SEG.to_le_bytes());
        config[44..48].copy_from_slice(&1u32.to_le_bytes());
        config[48..52].copy_from_slice(&BLK_MAX_DWZ_SECTORS.to_le_bytes());
        config[52..56].copy_from_slice(&BLK_MAX_DWZ_SEG.to_le_bytes());
        config[56] = 1;
        let mut id = [0u8; BLK_ID_LEN];
        id[..14].copy_from_slice(b"virtio-conform");
        BlockBackend {
            disk: vec![0; (sectors * SECTOR_SIZE) as usize],
            config,
            id,
            mutant: None,
            read_only: false,
        }
    }

    /// A read-only disk of `sectors` zeroed sectors: VIRTIO_BLK_F_RO is offered and every
    /// write request ends with VIRTIO_BLK_S_IOERR, the disk untouched (§5.2.6.2).
    pub fn read_only(sectors: u64) -> Self {
        BlockBackend {
            read_only: true,
            ..Self::new(sectors)
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

    /// Carries out a discard (`zero` false) or write-zeroes (`zero` true) request whose
    /// segments follow the header in `reader`; returns the status byte, or `None` when the
    /// chain's memory cannot be read.
    fn discard_write_zeroes(
        &mut self,
        chain: &[Descriptor],
        reader: &mut ChainReader<'_>,
        ram: &mut GuestRam,
        zero: bool,
    ) -> Option<u8> {
        use crate::Mutant as M;
        let len = ChainReader::available(chain) - BLK_HEADER_LEN as u64;
        if len == 0 || !len.is_multiple_of(BLK_SEGMENT_LEN) {
            return Some(VIRTIO_BLK_S_IOERR);
        }
        let n = len / BLK_SEGMENT_LEN;
        if n > BLK_MAX_DWZ_SEG as u64 && self.mutant != Some(M::BlockDwzSegmentsUnbounded) {
            return Some(VIRTIO_BLK_S_IOERR);
        }
        let mut ranges = Vec::new();
        let mut status = VIRTIO_BLK_S_OK;
        for k in 0..n {
            let mut seg = [0u8; BLK_SEGMENT_LEN as usize];
            if reader.read(ram, &mut seg).ok()? != seg.len() {
                return None;
            }
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
                || (!zero && unmap && self.mutant != Some(M::BlockDiscardUnmapAccepted))
            {
                status = VIRTIO_BLK_S_UNSUPP;
                continue;
            }
            if num > BLK_MAX_DWZ_SECTORS {
                status = status.max(VIRTIO_BLK_S_IOERR);
                continue;
            }
            match self.range(sector, num as u64 * SECTOR_SIZE) {
                Some(r) => ranges.push((r, unmap)),
                None if self.mutant == Some(M::BlockDwzRangeUnchecked) => {}
                None => status = status.max(VIRTIO_BLK_S_IOERR),
            }
            if k >= BLK_MAX_DWZ_SEG as u64 {
                // BlockDwzSegmentsUnbounded: a fixed table of `max_*_seg` ranges indexed
                // without a bound.
                #[allow(clippy::panic)]
                {
                    panic!("discard/write-zeroes segment table overflow: segment {k}");
                }
            }
        }
        if status != VIRTIO_BLK_S_OK {
            return Some(status);
        }
        if zero {
            for (r, unmap) in ranges {
                if unmap && self.mutant == Some(M::BlockWriteZeroesUnmapKeepsData) {
                    continue;
                }
                self.disk[r].fill(0);
            }
        }
        Some(VIRTIO_BLK_S_OK)
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
        let ro = self.read_only || self.mutant == Some(crate::Mutant::ReadOnlyWritesAccepted);
        bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | if ro {
                bit(VIRTIO_BLK_F_RO)
            } else {
                bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)
            }
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
            VIRTIO_BLK_T_OUT if self.read_only => VIRTIO_BLK_S_IOERR,
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
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if self.read_only => {
                VIRTIO_BLK_S_UNSUPP
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let zero = kind == VIRTIO_BLK_T_WRITE_ZEROES;
                match self.discard_write_zeroes(chain, &mut reader, ram, zero) {
                    Some(s) => s,
                    None => return Completion::Malformed,
                }
            }
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
