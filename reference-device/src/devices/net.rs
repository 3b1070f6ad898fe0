//! The network device (virtio-net, DeviceID 1, VIRTIO §5.1).
//!
//! Queues (§5.1.2): receiveq`k` at `2k`, transmitq`k` at `2k+1` for each queue pair `k`, and
//! the controlq at `2N`, where `N` is `max_virtqueue_pairs` once VIRTIO_NET_F_MQ is negotiated
//! and 1 otherwise. The backend is built with `2 * max_pairs + 1` queues so every layout fits.
//!
//! The host side is one Ethernet link per queue pair: [`DeviceBackend::host_send`] with
//! `port = k` is one frame arriving for pair `k` (steered to receiveq1 while pair `k` is not
//! enabled, §5.1.6.5.6), [`DeviceBackend::host_take`] returns the frames the driver
//! transmitted on transmitq`k+1`, without their `virtio_net_hdr`.
//!
//! The header (§5.1.6) is 12 bytes when VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF is
//! negotiated and 10 bytes (no `num_buffers`) otherwise (legacy, §5.1.6.1). Frames and
//! headers are read and written as byte streams over the chain ([`ChainReader`],
//! [`ChainWriter`]): no descriptor layout is assumed (§2.7.4).

use std::collections::{BTreeSet, VecDeque};

use crate::backend::{ChainReader, ChainWriter, Completion, DeviceBackend};
use crate::memory::GuestRam;
use crate::queue::Descriptor;
use crate::regs::{bit, VIRTIO_F_VERSION_1};

/// Device handles packets with partial checksum (feature bit 0).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Driver handles packets with partial checksum (bit 1).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Device reports its maximum MTU in `mtu` (bit 3).
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Device has given MAC address in `mac` (bit 5).
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Driver can receive TSOv4 (bit 7); requires GUEST_CSUM.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Driver can receive TSOv6 (bit 8); requires GUEST_CSUM.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Driver can receive TSO with ECN (bit 9); requires GUEST_TSO4 or GUEST_TSO6.
pub const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
/// Driver can receive UFO (bit 10); requires GUEST_CSUM.
pub const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
/// Device can receive TSOv4 (bit 11); requires CSUM.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Device can receive TSOv6 (bit 12); requires CSUM.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Device can receive TSO with ECN (bit 13); requires HOST_TSO4 or HOST_TSO6.
pub const VIRTIO_NET_F_HOST_ECN: u32 = 13;
/// Device can receive UFO (bit 14); requires CSUM.
pub const VIRTIO_NET_F_HOST_UFO: u32 = 14;
/// Driver can merge receive buffers (bit 15).
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Configuration `status` field is available (bit 16).
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Control virtqueue is available (bit 17).
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// Control channel RX mode support (bit 18); requires CTRL_VQ.
pub const VIRTIO_NET_F_CTRL_RX: u32 = 18;
/// Control channel VLAN filtering (bit 19); requires CTRL_VQ.
pub const VIRTIO_NET_F_CTRL_VLAN: u32 = 19;
/// Control channel RX extra modes (bit 20); requires CTRL_VQ.
pub const VIRTIO_NET_F_CTRL_RX_EXTRA: u32 = 20;
/// Driver can send gratuitous packets (bit 21); requires CTRL_VQ.
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u32 = 21;
/// Multiqueue with automatic receive steering (bit 22); requires CTRL_VQ.
pub const VIRTIO_NET_F_MQ: u32 = 22;
/// Set MAC address through the control channel (bit 23); requires CTRL_VQ.
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u32 = 23;

/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// `status` bit: the device asks the driver to announce itself.
pub const VIRTIO_NET_S_ANNOUNCE: u16 = 2;

/// Control command acknowledged (§5.1.6.5).
pub const VIRTIO_NET_OK: u8 = 0;
/// Control command failed or unknown.
pub const VIRTIO_NET_ERR: u8 = 1;
/// Control class: receive modes.
pub const VIRTIO_NET_CTRL_RX: u8 = 0;
/// Control class: MAC filtering.
pub const VIRTIO_NET_CTRL_MAC: u8 = 1;
/// Control class: VLAN filtering.
pub const VIRTIO_NET_CTRL_VLAN: u8 = 2;
/// Control class: gratuitous packet announcement.
pub const VIRTIO_NET_CTRL_ANNOUNCE: u8 = 3;
/// Control class: multiqueue.
pub const VIRTIO_NET_CTRL_MQ: u8 = 4;

/// Byte offsets in the configuration space: `mac` (6 bytes), `status` (le16),
/// `max_virtqueue_pairs` (le16), `mtu` (le16).
pub const NET_CONFIG_MAC: usize = 0;
/// Offset of `status`.
pub const NET_CONFIG_STATUS: usize = 6;
/// Offset of `max_virtqueue_pairs`.
pub const NET_CONFIG_MAX_PAIRS: usize = 8;
/// Offset of `mtu`.
pub const NET_CONFIG_MTU: usize = 10;
/// Length of an Ethernet header (added to `mtu` for the largest frame, §5.1.4.1).
pub const ETH_HLEN: usize = 14;
/// Largest frame the reference accepts from the driver or the host without MTU (bytes).
pub const MAX_FRAME: usize = 65_550;

/// The `(feature, requirements)` pairs of §5.1.3.1 the reference knows: the feature needs at
/// least one bit of the mask (every listed bit, for single-bit masks).
pub const FEATURE_DEPENDENCIES: &[(u32, u64)] = &[
    (VIRTIO_NET_F_GUEST_TSO4, bit(VIRTIO_NET_F_GUEST_CSUM)),
    (VIRTIO_NET_F_GUEST_TSO6, bit(VIRTIO_NET_F_GUEST_CSUM)),
    (
        VIRTIO_NET_F_GUEST_ECN,
        bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6),
    ),
    (VIRTIO_NET_F_GUEST_UFO, bit(VIRTIO_NET_F_GUEST_CSUM)),
    (VIRTIO_NET_F_HOST_TSO4, bit(VIRTIO_NET_F_CSUM)),
    (VIRTIO_NET_F_HOST_TSO6, bit(VIRTIO_NET_F_CSUM)),
    (
        VIRTIO_NET_F_HOST_ECN,
        bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6),
    ),
    (VIRTIO_NET_F_HOST_UFO, bit(VIRTIO_NET_F_CSUM)),
    (VIRTIO_NET_F_CTRL_RX, bit(VIRTIO_NET_F_CTRL_VQ)),
    (VIRTIO_NET_F_CTRL_VLAN, bit(VIRTIO_NET_F_CTRL_VQ)),
    (VIRTIO_NET_F_GUEST_ANNOUNCE, bit(VIRTIO_NET_F_CTRL_VQ)),
    (VIRTIO_NET_F_MQ, bit(VIRTIO_NET_F_CTRL_VQ)),
    (VIRTIO_NET_F_CTRL_MAC_ADDR, bit(VIRTIO_NET_F_CTRL_VQ)),
];

/// Whether every feature in `features` has its §5.1.3.1 requirements in `features` too.
pub fn dependencies_met(features: u64) -> bool {
    FEATURE_DEPENDENCIES
        .iter()
        .all(|&(f, need)| features & bit(f) == 0 || features & need != 0)
}

/// What a reference network device offers; every choice the spec leaves open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    /// Device-type feature bits offered. Must satisfy [`dependencies_met`].
    pub features: u64,
    /// `mac` (valid with VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
    /// `max_virtqueue_pairs` (1..=0x8000; with VIRTIO_NET_F_MQ).
    pub max_pairs: u16,
    /// `mtu` (68..=65535; with VIRTIO_NET_F_MTU).
    pub mtu: u16,
    /// Receive header `hdr_len` value. Without receive offloads the spec constrains only
    /// `flags`, `gso_type` and `num_buffers` (§5.1.6.4.1), so any value is allowed; the
    /// reference writes 0, QEMU-like devices copy whatever their backend gave.
    pub rx_hdr_len: u16,
    /// Promiscuous mode after reset (the spec names no initial receive mode; QEMU starts
    /// promiscuous).
    pub promiscuous_after_reset: bool,
}

impl Default for NetOptions {
    /// MAC, MTU 1500, STATUS, MRG_RXBUF, CTRL_VQ with CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE,
    /// CTRL_MAC_ADDR, and MQ with 2 pairs. No offloads.
    fn default() -> Self {
        NetOptions {
            features: [
                VIRTIO_NET_F_MTU,
                VIRTIO_NET_F_MAC,
                VIRTIO_NET_F_MRG_RXBUF,
                VIRTIO_NET_F_STATUS,
                VIRTIO_NET_F_CTRL_VQ,
                VIRTIO_NET_F_CTRL_RX,
                VIRTIO_NET_F_CTRL_VLAN,
                VIRTIO_NET_F_GUEST_ANNOUNCE,
                VIRTIO_NET_F_MQ,
                VIRTIO_NET_F_CTRL_MAC_ADDR,
            ]
            .iter()
            .fold(0, |a, &b| a | bit(b)),
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            max_pairs: 2,
            mtu: 1500,
            rx_hdr_len: 0,
            promiscuous_after_reset: true,
        }
    }
}

/// A frame being spread over mergeable receive buffers.
#[derive(Debug, Clone)]
struct Partial {
    /// Header and frame bytes still to write.
    data: Vec<u8>,
    /// Guest addresses of the two `num_buffers` bytes in the first buffer.
    num_buffers_at: [u64; 2],
    /// Buffers used so far.
    buffers: u16,
}

/// The network device (DeviceID 1, §5.1) with an in-memory link per queue pair.
pub struct NetBackend {
    opts: NetOptions,
    config: Vec<u8>,
    negotiated: u64,
    /// Queue pairs enabled by VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (1 after reset).
    pairs: u16,
    rx_pending: Vec<VecDeque<Vec<u8>>>,
    partial: Vec<Option<Partial>>,
    tx_out: Vec<Vec<Vec<u8>>>,
    promisc: bool,
    allmulti: bool,
    mac_table: Vec<[u8; 6]>,
    vlans: BTreeSet<u16>,
    config_update: Option<(usize, Vec<u8>)>,
    mutant: Option<crate::Mutant>,
}

impl NetBackend {
    /// A network device with `opts` (link up, no frames pending).
    pub fn new(opts: NetOptions) -> Self {
        let mut config = vec![0u8; 12];
        config[NET_CONFIG_MAC..NET_CONFIG_MAC + 6].copy_from_slice(&opts.mac);
        config[NET_CONFIG_STATUS..NET_CONFIG_STATUS + 2]
            .copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[NET_CONFIG_MAX_PAIRS..NET_CONFIG_MAX_PAIRS + 2]
            .copy_from_slice(&opts.max_pairs.to_le_bytes());
        config[NET_CONFIG_MTU..NET_CONFIG_MTU + 2].copy_from_slice(&opts.mtu.to_le_bytes());
        let n = opts.max_pairs.max(1) as usize;
        let promisc = opts.promiscuous_after_reset;
        NetBackend {
            opts,
            config,
            negotiated: 0,
            pairs: 1,
            rx_pending: vec![VecDeque::new(); n],
            partial: vec![None; n],
            tx_out: vec![Vec::new(); n],
            promisc,
            allmulti: false,
            mac_table: Vec::new(),
            vlans: BTreeSet::new(),
            config_update: None,
            mutant: None,
        }
    }

    fn is(&self, m: crate::Mutant) -> bool {
        self.mutant == Some(m)
    }

    fn has(&self, f: u32) -> bool {
        self.negotiated & bit(f) != 0
    }

    /// Size in bytes of `virtio_net_hdr` for the negotiated features: 12 with VERSION_1 or
    /// MRG_RXBUF, 10 otherwise (§5.1.6, §5.1.6.1).
    pub fn header_len(&self) -> usize {
        let twelve = self.has(VIRTIO_F_VERSION_1) || self.has(VIRTIO_NET_F_MRG_RXBUF);
        let twelve = if self.is(crate::Mutant::NetHeaderLenIgnoresMrgRxbuf) {
            self.has(VIRTIO_F_VERSION_1)
        } else {
            twelve
        };
        if twelve {
            12
        } else {
            10
        }
    }

    /// Number of queue pairs in the queue layout: `max_virtqueue_pairs` once MQ is
    /// negotiated, 1 otherwise (§5.1.2).
    fn layout_pairs(&self) -> u16 {
        if self.has(VIRTIO_NET_F_MQ) {
            self.opts.max_pairs.max(1)
        } else {
            1
        }
    }

    /// Index of the controlq, when CTRL_VQ is negotiated.
    pub fn control_queue(&self) -> Option<u16> {
        self.has(VIRTIO_NET_F_CTRL_VQ)
            .then(|| 2 * self.layout_pairs())
    }

    /// Queue pairs enabled by VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (1 after reset).
    pub fn active_pairs(&self) -> u16 {
        self.pairs
    }

    /// The MAC filtering table (unicast then multicast entries).
    pub fn mac_table(&self) -> &[[u8; 6]] {
        &self.mac_table
    }

    /// The VLAN filter table.
    pub fn vlans(&self) -> &BTreeSet<u16> {
        &self.vlans
    }

    /// Whether promiscuous mode is on (it is after reset).
    pub fn promiscuous(&self) -> bool {
        self.promisc
    }

    /// Largest frame the device passes to the driver: `mtu` + Ethernet header once
    /// VIRTIO_NET_F_MTU is negotiated (§5.1.4.1).
    fn max_rx_frame(&self) -> usize {
        if self.has(VIRTIO_NET_F_MTU) && !self.is(crate::Mutant::NetRxIgnoresMtu) {
            self.opts.mtu as usize + ETH_HLEN
        } else {
            MAX_FRAME
        }
    }

    fn rx(&mut self, pair: usize, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let cap = ChainWriter::capacity(chain);
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let hlen = self.header_len();
        let (mut data, first) = match self.partial[pair].take() {
            Some(p) => (p, false),
            None => {
                let Some(frame) = self.rx_pending[pair].pop_front() else {
                    return Completion::Written(0);
                };
                let mut d = vec![0u8; hlen];
                d[2..4].copy_from_slice(&self.opts.rx_hdr_len.to_le_bytes());
                if hlen == 12 {
                    d[10..12].copy_from_slice(&1u16.to_le_bytes());
                }
                d.extend_from_slice(&frame);
                (
                    Partial {
                        data: d,
                        num_buffers_at: [0; 2],
                        buffers: 0,
                    },
                    true,
                )
            }
        };
        let fits = data.data.len() as u64 <= cap;
        if first && !mrg && !fits {
            // One buffer per frame without MRG_RXBUF (§5.1.6.3.2): a frame that does not fit
            // is dropped and the buffer returned empty.
            return Completion::Written(0);
        }
        if first && mrg && cap < hlen as u64 {
            // A mergeable buffer smaller than the header breaks §5.1.6.3.1; drop the frame.
            return Completion::Written(0);
        }
        if first && hlen == 12 {
            data.num_buffers_at = [stream_addr(chain, 10), stream_addr(chain, 11)];
        }
        let n = (cap as usize).min(data.data.len());
        let mut w = ChainWriter::new(chain);
        if w.write(ram, &data.data[..n]).is_err() {
            return Completion::Malformed;
        }
        data.buffers += 1;
        data.data.drain(..n);
        let mut len = w.written();
        if self.is(crate::Mutant::NetRxLenIncludesWholeBuffer) {
            len = cap.min(u32::MAX as u64) as u32;
        }
        if data.data.is_empty() {
            if data.buffers > 1 && !self.is(crate::Mutant::NetNumBuffersAlwaysOne) {
                for (k, b) in data.buffers.to_le_bytes().iter().enumerate() {
                    if hlen == 12 && ram.write(data.num_buffers_at[k], &[*b]).is_err() {
                        return Completion::Malformed;
                    }
                }
            }
            Completion::Written(len)
        } else {
            self.partial[pair] = Some(data);
            Completion::Partial(len)
        }
    }

    fn tx(&mut self, pair: usize, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let total = ChainReader::available(chain);
        let hlen = self.header_len() as u64;
        if total < hlen || total - hlen > MAX_FRAME as u64 {
            // Not a packet the device can send; the chain is returned unsent.
            return Completion::Written(0);
        }
        let mut r = ChainReader::new(chain);
        let mut all = vec![0u8; total as usize];
        if self.is(crate::Mutant::NetTxHeaderOwnDescriptor) {
            // Historical bug: the header is taken to be the whole first descriptor and the
            // frame the rest of the chain.
            let first = chain.first().map_or(0, |d| d.len as usize).min(all.len());
            if r.read(ram, &mut all).is_err() {
                return Completion::Malformed;
            }
            self.tx_out[pair].push(all[first..].to_vec());
            return Completion::Written(0);
        }
        if r.read(ram, &mut all).is_err() {
            return Completion::Malformed;
        }
        self.tx_out[pair].push(all[hlen as usize..].to_vec());
        Completion::Written(0)
    }

    fn control(&mut self, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        if ChainWriter::capacity(chain) < 1 {
            return Completion::Malformed;
        }
        let total = ChainReader::available(chain).min(1 << 16) as usize;
        let mut cmd = vec![0u8; total];
        if ChainReader::new(chain).read(ram, &mut cmd).is_err() {
            return Completion::Malformed;
        }
        let ack = if cmd.len() < 2 {
            VIRTIO_NET_ERR
        } else {
            self.command(cmd[0], cmd[1], &cmd[2..])
        };
        let mut w = ChainWriter::new(chain);
        if w.write(ram, &[ack]).is_err() {
            return Completion::Malformed;
        }
        Completion::Written(w.written())
    }

    /// Carries out one control command (§5.1.6.5); returns the ack byte.
    fn command(&mut self, class: u8, cmd: u8, data: &[u8]) -> u8 {
        let ok = |b: bool| if b { VIRTIO_NET_OK } else { VIRTIO_NET_ERR };
        let onoff = |d: &[u8]| (d.len() == 1 && d[0] <= 1).then(|| d[0] == 1);
        match (class, cmd) {
            (VIRTIO_NET_CTRL_RX, 0 | 1) if self.has(VIRTIO_NET_F_CTRL_RX) => match onoff(data) {
                Some(on) if cmd == 0 => {
                    self.promisc = on;
                    VIRTIO_NET_OK
                }
                Some(on) => {
                    self.allmulti = on;
                    VIRTIO_NET_OK
                }
                None => VIRTIO_NET_ERR,
            },
            (VIRTIO_NET_CTRL_MAC, 0) if self.has(VIRTIO_NET_F_CTRL_RX) => {
                match parse_mac_tables(data) {
                    Some(t) => {
                        self.mac_table = t;
                        VIRTIO_NET_OK
                    }
                    None => VIRTIO_NET_ERR,
                }
            }
            (VIRTIO_NET_CTRL_MAC, 1) if self.has(VIRTIO_NET_F_CTRL_MAC_ADDR) => {
                if data.len() != 6 {
                    return VIRTIO_NET_ERR;
                }
                if self.has(VIRTIO_NET_F_MAC) && !self.is(crate::Mutant::NetMacAddrSetIgnored) {
                    self.set_config(NET_CONFIG_MAC, data.to_vec());
                }
                VIRTIO_NET_OK
            }
            (VIRTIO_NET_CTRL_VLAN, 0 | 1) if self.has(VIRTIO_NET_F_CTRL_VLAN) => {
                if data.len() != 2 {
                    return VIRTIO_NET_ERR;
                }
                let vid = u16::from_le_bytes([data[0], data[1]]);
                if vid >= 4096 {
                    return VIRTIO_NET_ERR;
                }
                if cmd == 0 {
                    self.vlans.insert(vid);
                } else {
                    self.vlans.remove(&vid);
                }
                VIRTIO_NET_OK
            }
            (VIRTIO_NET_CTRL_ANNOUNCE, 0) if self.has(VIRTIO_NET_F_GUEST_ANNOUNCE) => {
                if !data.is_empty() {
                    return VIRTIO_NET_ERR;
                }
                let st = u16::from_le_bytes([
                    self.config[NET_CONFIG_STATUS],
                    self.config[NET_CONFIG_STATUS + 1],
                ]);
                if st & VIRTIO_NET_S_ANNOUNCE != 0 {
                    let cleared = st & !VIRTIO_NET_S_ANNOUNCE;
                    self.set_config(NET_CONFIG_STATUS, cleared.to_le_bytes().to_vec());
                }
                VIRTIO_NET_OK
            }
            (VIRTIO_NET_CTRL_MQ, 0) if self.has(VIRTIO_NET_F_MQ) => {
                if data.len() != 2 {
                    return VIRTIO_NET_ERR;
                }
                let n = u16::from_le_bytes([data[0], data[1]]);
                let valid = (1..=self.opts.max_pairs).contains(&n);
                if valid {
                    self.pairs = n;
                }
                ok(valid)
            }
            _ => VIRTIO_NET_ERR,
        }
    }

    /// The receive filter (§5.1.6.5.1 to §5.1.6.5.3), as QEMU orders it: promiscuous mode
    /// (on after reset) takes everything; otherwise a tagged frame needs its VLAN in the
    /// table (with CTRL_VLAN), broadcast passes, multicast needs ALLMULTI or a table entry,
    /// unicast needs `mac` or a table entry. Frames too short for an Ethernet header pass.
    fn accepts(&self, frame: &[u8]) -> bool {
        if self.is(crate::Mutant::NetDropsTaggedWithoutCtrlVlan)
            && frame.get(12..14) == Some(&[0x81, 0x00][..])
        {
            return false;
        }
        if self.promisc || frame.len() < ETH_HLEN {
            return true;
        }
        if self.has(VIRTIO_NET_F_CTRL_VLAN) && frame[12..14] == [0x81, 0x00] {
            let vid = frame
                .get(14..16)
                .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]) & 0x0fff);
            if !self.vlans.contains(&vid) {
                return false;
            }
        }
        let dst = &frame[..6];
        let listed = self.mac_table.iter().any(|m| m[..] == *dst);
        if dst == [0xff; 6] {
            true
        } else if dst[0] & 1 != 0 {
            self.allmulti || listed
        } else {
            dst == &self.config[NET_CONFIG_MAC..NET_CONFIG_MAC + 6] || listed
        }
    }

    fn set_config(&mut self, offset: usize, data: Vec<u8>) {
        if let Some(dst) = self.config.get_mut(offset..offset + data.len()) {
            dst.copy_from_slice(&data);
        }
        self.config_update = Some((offset, data));
    }

    /// Which (pair, role) queue `queue` is under the negotiated layout.
    fn role(&self, queue: u16) -> Role {
        if Some(queue) == self.control_queue() {
            return Role::Control;
        }
        let pair = (queue / 2) as usize;
        if queue >= 2 * self.layout_pairs() {
            return Role::None;
        }
        if queue.is_multiple_of(2) {
            Role::Rx(pair)
        } else {
            Role::Tx(pair)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Rx(usize),
    Tx(usize),
    Control,
    None,
}

/// Guest address of byte `offset` of the writable stream of `chain` (0 when the stream is
/// shorter).
fn stream_addr(chain: &[Descriptor], offset: u64) -> u64 {
    let mut left = offset;
    for d in chain.iter().filter(|d| d.is_write_only()) {
        if left < d.len as u64 {
            return d.addr + left;
        }
        left -= d.len as u64;
    }
    0
}

/// Parses the two `virtio_net_ctrl_mac` tables of MAC_TABLE_SET (§5.1.6.5.2); `None` when
/// the lengths do not add up exactly.
fn parse_mac_tables(data: &[u8]) -> Option<Vec<[u8; 6]>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..2 {
        let n = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let bytes = n.checked_mul(6)?;
        let table = data.get(at..at.checked_add(bytes)?)?;
        out.extend(table.chunks_exact(6).map(|c| {
            let mut m = [0u8; 6];
            m.copy_from_slice(c);
            m
        }));
        at += bytes;
    }
    (at == data.len()).then_some(out)
}

impl DeviceBackend for NetBackend {
    fn device_id(&self) -> u32 {
        1
    }
    fn features(&self) -> u64 {
        if self.is(crate::Mutant::NetOffersMqWithoutCtrlVq) {
            return self.opts.features & !bit(VIRTIO_NET_F_CTRL_VQ);
        }
        self.opts.features
    }
    fn num_queues(&self) -> u16 {
        2 * self.opts.max_pairs.max(1) + 1
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn name(&self) -> &'static str {
        "net"
    }
    fn set_mutant(&mut self, m: crate::Mutant) {
        self.mutant = Some(m);
    }
    fn negotiated(&mut self, features: u64) {
        self.negotiated = features;
    }
    fn reset(&mut self) {
        self.negotiated = 0;
        self.pairs = 1;
        for q in &mut self.rx_pending {
            q.clear();
        }
        for p in &mut self.partial {
            *p = None;
        }
        self.promisc = self.opts.promiscuous_after_reset;
        self.allmulti = false;
        self.mac_table.clear();
        self.vlans.clear();
    }
    fn take_config_update(&mut self) -> Option<(usize, Vec<u8>)> {
        self.config_update.take()
    }
    fn host_config_changed(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = self.config.get_mut(offset..offset + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    fn ready_for(&self, queue: u16) -> bool {
        match self.role(queue) {
            Role::Rx(p) => self.partial[p].is_some() || !self.rx_pending[p].is_empty(),
            _ => true,
        }
    }

    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<Vec<u16>, String> {
        let n = self.opts.max_pairs.max(1) as u32;
        if port >= n {
            return Err(format!(
                "net port {port} is not a queue pair (max_virtqueue_pairs {n})"
            ));
        }
        if data.len() > self.max_rx_frame() {
            // §5.1.4.1: no received packet longer than mtu + Ethernet header once MTU is
            // negotiated. The frame is dropped on the link.
            return Ok(Vec::new());
        }
        if !self.accepts(data) {
            return Ok(Vec::new());
        }
        // Before VQ_PAIRS_SET only receiveq1 is used (§5.1.6.5.6); a frame for a pair that
        // is not enabled is steered there.
        let enabled = if self.is(crate::Mutant::NetMqSteersBeforePairsSet) {
            self.opts.max_pairs
        } else {
            self.pairs
        };
        let pair = if port < enabled as u32 && (port as u16) < self.layout_pairs() {
            port as usize
        } else {
            0
        };
        self.rx_pending[pair].push_back(data.to_vec());
        Ok(vec![2 * pair as u16])
    }

    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
        self.tx_out
            .get_mut(port as usize)
            .map(std::mem::take)
            .ok_or_else(|| format!("net port {port} is not a queue pair"))
    }

    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        match self.role(queue) {
            Role::Rx(p) => self.rx(p, chain, ram),
            Role::Tx(p) => self.tx(p, chain, ram),
            Role::Control => self.control(chain, ram),
            Role::None => Completion::Written(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::VIRTQ_DESC_F_WRITE;

    fn ram() -> GuestRam {
        GuestRam::anonymous(1 << 20).unwrap()
    }

    fn wdesc(addr: u64, len: u32) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        }
    }

    fn rdesc(addr: u64, len: u32) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    fn modern(extra: u64) -> NetBackend {
        let mut b = NetBackend::new(NetOptions::default());
        b.negotiated(bit(VIRTIO_F_VERSION_1) | extra);
        b
    }

    fn read(ram: &mut GuestRam, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        ram.read(addr, &mut v).unwrap();
        v
    }

    #[test]
    fn default_offer_meets_dependencies() {
        let b = NetBackend::new(NetOptions::default());
        assert!(dependencies_met(b.features()));
        assert!(!dependencies_met(bit(VIRTIO_NET_F_MQ)));
        assert!(!dependencies_met(
            bit(VIRTIO_NET_F_GUEST_ECN) | bit(VIRTIO_NET_F_GUEST_CSUM)
        ));
        assert!(dependencies_met(
            bit(VIRTIO_NET_F_GUEST_ECN)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_CSUM)
        ));
        assert_eq!(b.num_queues(), 5);
    }

    #[test]
    fn header_sizes() {
        let mut b = NetBackend::new(NetOptions::default());
        assert_eq!(b.header_len(), 10);
        b.negotiated(bit(VIRTIO_NET_F_MRG_RXBUF));
        assert_eq!(b.header_len(), 12);
        b.negotiated(bit(VIRTIO_F_VERSION_1));
        assert_eq!(b.header_len(), 12);
    }

    #[test]
    fn control_queue_index_follows_mq() {
        let b = modern(bit(VIRTIO_NET_F_CTRL_VQ));
        assert_eq!(b.control_queue(), Some(2));
        let b = modern(bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_MQ));
        assert_eq!(b.control_queue(), Some(4));
        assert_eq!(modern(0).control_queue(), None);
    }

    #[test]
    fn tx_header_split_anywhere_gives_the_same_frame() {
        let mut m = ram();
        let mut pkt = vec![0u8; 12];
        pkt.extend(1..=40u8);
        m.write(0x1000, &pkt).unwrap();
        for cut in 0..pkt.len() as u32 {
            let mut b = modern(0);
            let chain = [rdesc(0x1000, cut), rdesc(0x1000 + cut as u64, 52 - cut)];
            assert_eq!(b.process(1, &chain, &mut m), Completion::Written(0));
            assert_eq!(
                b.host_take(0).unwrap(),
                vec![pkt[12..].to_vec()],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn tx_mutant_assumes_header_descriptor() {
        let mut m = ram();
        m.write(0x1000, &[0u8; 52]).unwrap();
        let mut b = modern(0);
        b.set_mutant(crate::Mutant::NetTxHeaderOwnDescriptor);
        b.process(1, &[rdesc(0x1000, 52)], &mut m);
        assert_eq!(b.host_take(0).unwrap(), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn rx_single_buffer_num_buffers_one() {
        let mut m = ram();
        let mut b = modern(0);
        assert!(!b.ready_for(0));
        assert_eq!(b.host_send(0, &[7; 60]).unwrap(), vec![0]);
        assert!(b.ready_for(0));
        let c = b.process(0, &[wdesc(0x2000, 8), wdesc(0x3000, 100)], &mut m);
        assert_eq!(c, Completion::Written(72));
        let h = [read(&mut m, 0x2000, 8), read(&mut m, 0x3000, 4)].concat();
        assert_eq!(&h[10..12], &[1, 0]);
        assert_eq!(read(&mut m, 0x3004, 60), vec![7; 60]);
        assert!(!b.ready_for(0));
    }

    #[test]
    fn rx_legacy_header_is_ten_bytes() {
        let mut m = ram();
        let mut b = NetBackend::new(NetOptions::default());
        b.negotiated(0);
        b.host_send(0, &[9; 20]).unwrap();
        assert_eq!(
            b.process(0, &[wdesc(0x2000, 64)], &mut m),
            Completion::Written(30)
        );
        assert_eq!(read(&mut m, 0x2000 + 10, 20), vec![9; 20]);
    }

    #[test]
    fn rx_too_small_without_mrg_drops() {
        let mut m = ram();
        let mut b = modern(0);
        b.host_send(0, &[1; 100]).unwrap();
        assert_eq!(
            b.process(0, &[wdesc(0x2000, 50)], &mut m),
            Completion::Written(0)
        );
        assert!(!b.ready_for(0));
    }

    #[test]
    fn rx_mergeable_spreads_and_counts_buffers() {
        let mut m = ram();
        let mut b = modern(bit(VIRTIO_NET_F_MRG_RXBUF));
        let frame: Vec<u8> = (0..100u8).collect();
        b.host_send(0, &frame).unwrap();
        // The num_buffers field straddles two descriptors of the first buffer.
        let first = [wdesc(0x2000, 11), wdesc(0x2100, 29)];
        assert_eq!(b.process(0, &first, &mut m), Completion::Partial(40));
        assert_eq!(
            b.process(0, &[wdesc(0x3000, 40)], &mut m),
            Completion::Partial(40)
        );
        assert_eq!(
            b.process(0, &[wdesc(0x4000, 40)], &mut m),
            Completion::Written(32)
        );
        let nb = [read(&mut m, 0x200a, 1), read(&mut m, 0x2100, 1)].concat();
        assert_eq!(nb, vec![3, 0]);
        let got = [
            read(&mut m, 0x2100 + 1, 28),
            read(&mut m, 0x3000, 40),
            read(&mut m, 0x4000, 32),
        ]
        .concat();
        assert_eq!(got, frame);
    }

    #[test]
    fn mtu_drops_oversized_frames_once_negotiated() {
        let mut b = modern(bit(VIRTIO_NET_F_MTU));
        assert!(b.host_send(0, &vec![0; 1515]).unwrap().is_empty());
        assert_eq!(b.host_send(0, &vec![0; 1514]).unwrap(), vec![0]);
        let mut b = modern(0);
        assert_eq!(b.host_send(0, &vec![0; 1515]).unwrap(), vec![0]);
    }

    #[test]
    fn control_commands() {
        let all = NetOptions::default().features | bit(VIRTIO_F_VERSION_1);
        let mut b = NetBackend::new(NetOptions::default());
        b.negotiated(all);
        assert_eq!(b.command(0, 0, &[0]), VIRTIO_NET_OK);
        assert!(!b.promiscuous());
        assert_eq!(b.command(0, 0, &[1]), VIRTIO_NET_OK);
        assert!(b.promiscuous());
        assert_eq!(b.command(0, 0, &[2]), VIRTIO_NET_ERR);
        assert_eq!(
            b.command(0, 2, &[1]),
            VIRTIO_NET_ERR,
            "RX_EXTRA not offered"
        );
        let mut t = 1u32.to_le_bytes().to_vec();
        t.extend([2, 0, 0, 0, 0, 1]);
        t.extend(0u32.to_le_bytes());
        assert_eq!(b.command(1, 0, &t), VIRTIO_NET_OK);
        assert_eq!(b.mac_table(), &[[2, 0, 0, 0, 0, 1]]);
        assert_eq!(b.command(1, 0, &t[..9]), VIRTIO_NET_ERR);
        assert_eq!(b.command(1, 1, &[2, 1, 1, 1, 1, 1]), VIRTIO_NET_OK);
        assert_eq!(&b.config()[..6], &[2, 1, 1, 1, 1, 1]);
        assert_eq!(b.take_config_update(), Some((0, vec![2, 1, 1, 1, 1, 1])));
        assert_eq!(b.command(2, 0, &5u16.to_le_bytes()), VIRTIO_NET_OK);
        assert!(b.vlans().contains(&5));
        assert_eq!(b.command(2, 1, &5u16.to_le_bytes()), VIRTIO_NET_OK);
        assert!(b.vlans().is_empty());
        assert_eq!(b.command(2, 0, &5000u16.to_le_bytes()), VIRTIO_NET_ERR);
        assert_eq!(b.command(4, 0, &2u16.to_le_bytes()), VIRTIO_NET_OK);
        assert_eq!(b.active_pairs(), 2);
        assert_eq!(b.command(4, 0, &3u16.to_le_bytes()), VIRTIO_NET_ERR);
        assert_eq!(b.command(4, 0, &0u16.to_le_bytes()), VIRTIO_NET_ERR);
        assert_eq!(b.active_pairs(), 2);
        assert_eq!(b.command(9, 0, &[]), VIRTIO_NET_ERR);
        b.config[NET_CONFIG_STATUS] |= VIRTIO_NET_S_ANNOUNCE as u8;
        assert_eq!(b.command(3, 0, &[]), VIRTIO_NET_OK);
        assert_eq!(b.config()[NET_CONFIG_STATUS], VIRTIO_NET_S_LINK_UP as u8);
        b.reset();
        assert_eq!(b.active_pairs(), 1);
        assert!(b.mac_table().is_empty());
    }

    #[test]
    fn receive_filter() {
        let all = NetOptions::default().features | bit(VIRTIO_F_VERSION_1);
        let mut b = NetBackend::new(NetOptions::default());
        b.negotiated(all);
        let frame = |dst: [u8; 6], tag: Option<u16>| {
            let mut f = dst.to_vec();
            f.extend([2, 0, 0, 0, 0, 9]);
            if let Some(v) = tag {
                f.extend([0x81, 0x00]);
                f.extend(v.to_be_bytes());
            }
            f.extend([0x08, 0x00, 1, 2, 3]);
            f
        };
        let other = [2, 0, 0, 0, 0, 0x99];
        let mine = NetOptions::default().mac;
        assert!(b.accepts(&frame(other, None)), "promiscuous after reset");
        b.command(0, 0, &[0]);
        assert!(!b.accepts(&frame(other, None)));
        assert!(b.accepts(&frame(mine, None)));
        assert!(b.accepts(&frame([0xff; 6], None)));
        assert!(!b.accepts(&frame([1, 0, 0x5e, 0, 0, 1], None)));
        b.command(0, 1, &[1]);
        assert!(b.accepts(&frame([1, 0, 0x5e, 0, 0, 1], None)));
        assert!(!b.accepts(&frame(mine, Some(5))));
        b.command(2, 0, &5u16.to_le_bytes());
        assert!(b.accepts(&frame(mine, Some(5))));
        assert!(!b.accepts(&frame(mine, Some(6))));
    }

    #[test]
    fn commands_of_unnegotiated_features_fail() {
        let mut b = modern(bit(VIRTIO_NET_F_CTRL_VQ));
        assert_eq!(b.command(0, 0, &[1]), VIRTIO_NET_ERR);
        assert_eq!(b.command(4, 0, &1u16.to_le_bytes()), VIRTIO_NET_ERR);
    }

    #[test]
    fn frames_for_disabled_pairs_go_to_receiveq1() {
        let mut b = modern(bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_MQ));
        assert_eq!(b.host_send(1, &[0; 20]).unwrap(), vec![0]);
        b.command(4, 0, &2u16.to_le_bytes());
        assert_eq!(b.host_send(1, &[0; 20]).unwrap(), vec![2]);
        assert!(b.host_send(2, &[0; 20]).is_err());
    }
}
