//! The network device (§5.1) under the stream body of `device_chains` ([`super::stream`]).
//!
//! The reference device offers MAC, MTU 1500, STATUS, MRG_RXBUF, the control features and MQ
//! with two queue pairs ([`NetOptions::default`]). Feature selector bits: 1 MRG_RXBUF, 2 MTU,
//! 3 CTRL_VQ with CTRL_RX, CTRL_MAC_ADDR and GUEST_ANNOUNCE, 4 CTRL_VLAN, 5 MQ (4 and 5 only
//! with 3, as §5.1.3.1 requires of the driver), 6 MAC, 7 STATUS.
//!
//! Requests: on transmitq`k+1` a `virtio_net_hdr` of zeros and a frame of `14 + 4 * len +
//! kind % 4` bytes; on the controlq (`kind % 6`) promiscuous or all-multicast on/off,
//! MAC_ADDR_SET, a VLAN, VQ_PAIRS_SET of `len % 3` pairs, or the announce ack, each with a
//! one-byte device-writable ack. Host input on pair `port % 2`: a frame to the device's
//! address, broadcast, another unicast address or a multicast group (`kind % 4`), 802.1Q
//! tagged when `kind & 4`, of `14 + 4 * len` bytes or, when `kind & 0x80`, 1513 to 1515
//! bytes around the MTU's limit.
//!
//! | oracle | requirement |
//! |---|---|
//! | the offered features include every feature an offered one requires | NET-DEV-03 |
//! | the host receives, per queue pair and in order, the readable bytes after the header of each used transmit chain | NET-DEV-18, NET-DEV-19 |
//! | without MRG_RXBUF (modern header) a used receive buffer's `num_buffers` is 1 | NET-DEV-20 |
//! | with MTU negotiated and without MRG_RXBUF no received frame is longer than `mtu` + 14 | NET-DEV-08 |
//! | no frame lands on receiveq2 before VQ_PAIRS_SET enabled two pairs | NET-DEV-38, NET-DEV-39 |
//! | after a used MAC_ADDR_SET acknowledged OK, `mac` reads the address set | NET-DEV-33 |

use super::err;
use super::stream::{Request, Role, StreamDevice, UsedChain};
use crate::fuzz::Finding;
use virtio_reference_device::devices::net::{
    dependencies_met, NetBackend, NetOptions, ETH_HLEN, NET_CONFIG_MAC, VIRTIO_NET_CTRL_ANNOUNCE,
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_OK,
};
use virtio_reference_device::regs::bit;
use virtio_reference_device::DeviceBackend;

/// Queue pairs of the device driven here (`max_virtqueue_pairs`).
const PAIRS: u16 = 2;

#[derive(Default, Clone)]
struct Pair {
    /// Frames of used transmit chains, and the frames the host received.
    tx_expect: Vec<Vec<u8>>,
    tx_got: Vec<Vec<u8>>,
    tx_lenient: bool,
    tx_pending: usize,
}

/// The network device's model and oracles.
#[derive(Default)]
pub struct Net {
    negotiated: u64,
    legacy: bool,
    /// Most queue pairs a used VQ_PAIRS_SET enabled since the reset (1 after reset): a frame
    /// the device took in while more pairs were enabled may still land on their queues.
    enabled: u16,
    pairs: [Pair; PAIRS as usize],
    mac_expect: Option<Vec<u8>>,
    initialized: bool,
}

impl Net {
    fn has(&self, f: u32) -> bool {
        self.negotiated & bit(f) != 0
    }

    /// `virtio_net_hdr` size (§5.1.6): 12 with VERSION_1 or MRG_RXBUF, else 10.
    fn header_len(&self) -> usize {
        if !self.legacy || self.has(VIRTIO_NET_F_MRG_RXBUF) {
            12
        } else {
            10
        }
    }

    fn layout_pairs(&self) -> u16 {
        if self.has(VIRTIO_NET_F_MQ) {
            PAIRS
        } else {
            1
        }
    }
}

const OWN_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

impl StreamDevice for Net {
    fn backend(&self) -> Box<dyn DeviceBackend> {
        let opts = NetOptions {
            mac: OWN_MAC,
            max_pairs: PAIRS,
            ..NetOptions::default()
        };
        Box::new(NetBackend::new(opts))
    }

    fn wanted(&self, features: u8) -> u64 {
        let mut w = 0;
        let mut add = |sel: u8, f: &[u32]| {
            if features & sel != 0 {
                for &b in f {
                    w |= bit(b);
                }
            }
        };
        add(2, &[VIRTIO_NET_F_MRG_RXBUF]);
        add(4, &[VIRTIO_NET_F_MTU]);
        add(
            8,
            &[
                VIRTIO_NET_F_CTRL_VQ,
                VIRTIO_NET_F_CTRL_RX,
                VIRTIO_NET_F_CTRL_MAC_ADDR,
                VIRTIO_NET_F_GUEST_ANNOUNCE,
            ],
        );
        if features & 8 != 0 {
            add(16, &[VIRTIO_NET_F_CTRL_VLAN]);
            add(32, &[VIRTIO_NET_F_MQ]);
        }
        add(64, &[VIRTIO_NET_F_MAC]);
        add(128, &[VIRTIO_NET_F_STATUS]);
        w
    }

    fn check_offer(&self, offered: u64) -> Result<(), Finding> {
        if dependencies_met(offered) {
            Ok(())
        } else {
            Err(err(
                "offer-breaks-dependencies",
                &["NET-DEV-03", "FEAT-DEV-01"],
                format!(
                    "the device offers {offered:#x}, a network feature without a feature it requires"
                ),
            ))
        }
    }

    fn negotiated(&mut self, features: u64, legacy: bool) {
        self.negotiated = features;
        self.legacy = legacy;
        self.enabled = 1;
        self.mac_expect = None;
        if std::mem::replace(&mut self.initialized, true) {
            for p in &mut self.pairs {
                if p.tx_pending > 0 {
                    p.tx_lenient = true;
                }
                p.tx_pending = 0;
            }
        }
    }

    fn queue_count(&self) -> u16 {
        2 * self.layout_pairs() + u16::from(self.has(VIRTIO_NET_F_CTRL_VQ))
    }

    fn role(&self, q: u16) -> Role {
        if q == 2 * self.layout_pairs() {
            Role::ControlTransmit
        } else if q.is_multiple_of(2) {
            Role::Receive(u32::from(q / 2))
        } else {
            Role::Transmit(u32::from(q / 2))
        }
    }

    fn request(&self, role: Role, kind: u8, len: u8) -> Request {
        match role {
            Role::ControlTransmit => {
                let onoff = len & 1;
                let bytes = match kind % 6 {
                    0 => vec![VIRTIO_NET_CTRL_RX, 0, onoff],
                    1 => vec![VIRTIO_NET_CTRL_RX, 1, onoff],
                    2 => vec![VIRTIO_NET_CTRL_MAC, 1, 0x02, 0, 0, 0x5e, kind, len],
                    3 => {
                        let vid = u16::from(len % 4).to_le_bytes();
                        vec![VIRTIO_NET_CTRL_VLAN, 0, vid[0], vid[1]]
                    }
                    4 => {
                        let n = u16::from(len % 3).to_le_bytes();
                        vec![VIRTIO_NET_CTRL_MQ, 0, n[0], n[1]]
                    }
                    _ => vec![VIRTIO_NET_CTRL_ANNOUNCE, 0],
                };
                Request { bytes, writable: 1 }
            }
            _ => {
                let mut bytes = vec![0u8; self.header_len()];
                let n = ETH_HLEN + 4 * usize::from(len) + usize::from(kind % 4);
                let mut frame: Vec<u8> =
                    (0..n).map(|i| (i as u8).wrapping_mul(13) ^ kind).collect();
                frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
                frame[6..12].copy_from_slice(&OWN_MAC);
                frame[12..14].copy_from_slice(&[0x08, 0x00]);
                bytes.extend(frame);
                Request { bytes, writable: 0 }
            }
        }
    }

    fn published(&mut self, role: Role, _bytes: &[u8]) {
        if let Role::Transmit(p) = role {
            let enabled = self.enabled;
            if let Some(pair) = self.pairs.get_mut(p as usize) {
                pair.tx_pending += 1;
                if p >= u32::from(enabled) {
                    // The driver broke §5.1.6.5.6 (a transmitq of a pair it did not enable):
                    // whether the device sends it is its own choice.
                    pair.tx_lenient = true;
                }
            }
        }
    }

    fn host_input(&self, port: u8, kind: u8, len: u8) -> (u32, Vec<u8>) {
        let tagged = kind & 4 != 0;
        let n = if kind & 0x80 != 0 {
            1513 + usize::from(len % 3)
        } else {
            ETH_HLEN + 4 * usize::from(len)
        };
        let mut f: Vec<u8> = (0..n)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(kind))
            .collect();
        let dst: [u8; 6] = match kind % 4 {
            0 => OWN_MAC,
            1 => [0xff; 6],
            2 => [0x02, 0, 0, 0, 0, 0x77],
            _ => [0x01, 0x00, 0x5e, 0, 0, 1],
        };
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        if tagged && n >= 18 {
            let vid = u16::from((kind >> 3) % 4);
            f[12..14].copy_from_slice(&[0x81, 0x00]);
            f[14..16].copy_from_slice(&vid.to_be_bytes());
            f[16..18].copy_from_slice(&[0x08, 0x00]);
        } else {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
        }
        (u32::from(port % 2), f)
    }

    fn ports(&self) -> u32 {
        u32::from(PAIRS)
    }

    fn used(&mut self, c: &UsedChain) -> Result<(), Finding> {
        let hlen = self.header_len();
        match c.role {
            Role::Receive(p) => {
                if c.ill_formed || c.written.is_empty() {
                    return Ok(());
                }
                if p >= u32::from(self.enabled) {
                    return Err(err(
                        "steered-beyond-enabled-pairs",
                        &["NET-DEV-38", "NET-DEV-39"],
                        format!(
                            "a frame landed on receiveq{} while at most {} queue pair(s) were enabled since the reset",
                            p + 1,
                            self.enabled
                        ),
                    ));
                }
                if !self.has(VIRTIO_NET_F_MRG_RXBUF) {
                    if hlen == 12 && c.written.len() >= 12 {
                        let nb = u16::from_le_bytes([c.written[10], c.written[11]]);
                        if nb != 1 {
                            return Err(err(
                                "num-buffers-not-one",
                                &["NET-DEV-20"],
                                format!(
                                    "without MRG_RXBUF a receive header carries num_buffers {nb}"
                                ),
                            ));
                        }
                    }
                    let frame = c.written.len().saturating_sub(hlen);
                    if self.has(VIRTIO_NET_F_MTU) && frame > 1500 + ETH_HLEN {
                        return Err(err(
                            "rx-longer-than-mtu",
                            &["NET-DEV-08"],
                            format!("a received frame of {frame} bytes with mtu 1500 negotiated"),
                        ));
                    }
                }
            }
            Role::Transmit(p) => {
                let Some(pair) = self.pairs.get_mut(p as usize) else {
                    return Ok(());
                };
                pair.tx_pending = pair.tx_pending.saturating_sub(1);
                if c.ill_formed {
                    pair.tx_lenient = true;
                } else {
                    pair.tx_expect
                        .push(c.request.get(hlen..).unwrap_or(&[]).to_vec());
                }
            }
            Role::ControlTransmit => {
                if c.ill_formed {
                    // The device may have carried the command out anyway: MAC_ADDR_SET may have
                    // replaced the address expected, VQ_PAIRS_SET may have enabled pairs.
                    self.mac_expect = None;
                    if let (Some(&VIRTIO_NET_CTRL_MQ), Some(n)) =
                        (c.request.first(), c.request.get(2..4))
                    {
                        self.enabled = self.enabled.max(u16::from_le_bytes([n[0], n[1]]));
                    }
                    return Ok(());
                }
                if c.written.first() != Some(&VIRTIO_NET_OK) {
                    return Ok(());
                }
                match (c.request.first(), c.request.get(1)) {
                    (Some(&VIRTIO_NET_CTRL_MAC), Some(1)) if self.has(VIRTIO_NET_F_MAC) => {
                        self.mac_expect = c.request.get(2..8).map(<[u8]>::to_vec);
                    }
                    (Some(&VIRTIO_NET_CTRL_MQ), Some(0)) => {
                        if let Some(n) = c.request.get(2..4) {
                            self.enabled = self.enabled.max(u16::from_le_bytes([n[0], n[1]]));
                        }
                    }
                    _ => {}
                }
            }
            Role::ControlReceive => {}
        }
        Ok(())
    }

    fn host_records(&mut self, p: u32, records: Vec<Vec<u8>>) -> Result<(), Finding> {
        let Some(pair) = self.pairs.get_mut(p as usize) else {
            return Ok(());
        };
        pair.tx_got.extend(records);
        if !pair.tx_lenient && pair.tx_got != pair.tx_expect {
            return Err(err(
                "tx-frame-differs",
                &["NET-DEV-18", "NET-DEV-19"],
                format!(
                    "queue pair {p}: the host received {} frame(s) {:02x?}, the used transmit chains held {:02x?}",
                    pair.tx_got.len(),
                    pair.tx_got,
                    pair.tx_expect
                ),
            ));
        }
        Ok(())
    }

    fn config_expectation(
        &mut self,
    ) -> Option<(u64, Vec<u8>, &'static str, &'static [&'static str])> {
        self.mac_expect
            .take()
            .map(|m| (NET_CONFIG_MAC as u64, m, "mac-not-set", &["NET-DEV-33"][..]))
    }
}
