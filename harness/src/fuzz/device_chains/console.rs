//! The console (§5.3) under the stream body of `device_chains` ([`super::stream`]).
//!
//! The reference console has two port slots, both ports existing. Feature selector bits: 1
//! VIRTIO_CONSOLE_F_MULTIPORT, 2 VIRTIO_CONSOLE_F_EMERG_WRITE, 3 VIRTIO_CONSOLE_F_SIZE.
//! Requests: on a transmitq `len * 8 + kind % 8` bytes of text; on the control transmitq
//! (`kind % 4`) DEVICE_READY, PORT_READY or PORT_OPEN for port `len % 2`, or an arbitrary
//! 8-byte message. Host input: `1 + len` bytes for port `port % 2`.
//!
//! | oracle | requirement |
//! |---|---|
//! | the bytes the host receives from a port are the bytes of the transmit chains the device used, in order | CON-DEV-09 |
//! | the bytes in used receive buffers of a port are the host's input for that port, in order, nothing added | CON-DEV-10 |
//! | no control message is used before the driver made DEVICE_READY (value 1) available | CON-DEV-13 |
//! | no DEVICE_ADD for a port already added since the reset, or at or above `max_nr_ports` | CON-DEV-14 |
//!
//! A port whose stream the model cannot follow (an ill-formed chain was used, a write to
//! `emerg_wr` may have joined port 0's output, or a reset left input undelivered or a
//! transmit chain unused) is no longer checked for the rest of the case.

use super::err;
use super::stream::{Request, Role, StreamDevice, UsedChain};
use crate::fuzz::Finding;
use std::collections::BTreeSet;
use virtio_reference_device::devices::console::{
    ConsoleBackend, CONTROL_LEN, EMERG_WR_OFFSET, VIRTIO_CONSOLE_DEVICE_ADD,
    VIRTIO_CONSOLE_DEVICE_READY, VIRTIO_CONSOLE_DEVICE_REMOVE, VIRTIO_CONSOLE_F_EMERG_WRITE,
    VIRTIO_CONSOLE_F_MULTIPORT, VIRTIO_CONSOLE_F_SIZE, VIRTIO_CONSOLE_PORT_OPEN,
    VIRTIO_CONSOLE_PORT_READY,
};
use virtio_reference_device::regs::bit;
use virtio_reference_device::DeviceBackend;

/// Port slots (`max_nr_ports`) of the console driven here; both ports exist.
pub const PORTS: u32 = 2;

/// Per-port stream state.
#[derive(Default, Clone)]
struct Port {
    /// Host input accepted, and the part of it found in used receive buffers.
    sent: Vec<u8>,
    got: Vec<u8>,
    rx_lenient: bool,
    /// Bytes of used transmit chains, and what the host received.
    tx_expect: Vec<u8>,
    tx_got: Vec<u8>,
    tx_lenient: bool,
    /// Transmit chains made available and not used yet.
    tx_pending: usize,
}

/// The console's model and oracles.
#[derive(Default)]
pub struct Console {
    multiport: bool,
    ports: [Port; PORTS as usize],
    device_ready: bool,
    added: BTreeSet<u32>,
    initialized: bool,
}

fn message(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_LEN);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m
}

fn parse(m: &[u8]) -> Option<(u32, u16, u16)> {
    let m = m.get(..CONTROL_LEN)?;
    Some((
        u32::from_le_bytes([m[0], m[1], m[2], m[3]]),
        u16::from_le_bytes([m[4], m[5]]),
        u16::from_le_bytes([m[6], m[7]]),
    ))
}

impl StreamDevice for Console {
    fn backend(&self) -> Box<dyn DeviceBackend> {
        Box::new(ConsoleBackend::new(80, 25, PORTS, PORTS))
    }

    fn wanted(&self, features: u8) -> u64 {
        let mut w = 0;
        if features & 2 != 0 {
            w |= bit(VIRTIO_CONSOLE_F_MULTIPORT);
        }
        if features & 4 != 0 {
            w |= bit(VIRTIO_CONSOLE_F_EMERG_WRITE);
        }
        if features & 8 != 0 {
            w |= bit(VIRTIO_CONSOLE_F_SIZE);
        }
        w
    }

    fn check_offer(&self, _offered: u64) -> Result<(), Finding> {
        Ok(())
    }

    fn negotiated(&mut self, features: u64, _legacy: bool) {
        self.multiport = features & bit(VIRTIO_CONSOLE_F_MULTIPORT) != 0;
        self.device_ready = false;
        self.added.clear();
        if std::mem::replace(&mut self.initialized, true) {
            // A reset: what the device does with undelivered input and chains it had not
            // used is its own choice.
            for p in &mut self.ports {
                if p.got.len() < p.sent.len() {
                    p.rx_lenient = true;
                }
                if p.tx_pending > 0 {
                    p.tx_lenient = true;
                }
                p.tx_pending = 0;
            }
        }
    }

    fn queue_count(&self) -> u16 {
        if self.multiport {
            2 * (PORTS as u16 + 1)
        } else {
            2
        }
    }

    fn role(&self, q: u16) -> Role {
        match q {
            0 => Role::Receive(0),
            1 => Role::Transmit(0),
            2 => Role::ControlReceive,
            3 => Role::ControlTransmit,
            q => {
                let port = u32::from(q - 4) / 2 + 1;
                if q % 2 == 0 {
                    Role::Receive(port)
                } else {
                    Role::Transmit(port)
                }
            }
        }
    }

    fn request(&self, role: Role, kind: u8, len: u8) -> Request {
        let bytes = match role {
            Role::ControlTransmit => {
                let id = u32::from(len % 2);
                match kind % 4 {
                    0 => message(0, VIRTIO_CONSOLE_DEVICE_READY, 1),
                    1 => message(id, VIRTIO_CONSOLE_PORT_READY, 1),
                    2 => message(id, VIRTIO_CONSOLE_PORT_OPEN, u16::from(kind >> 7)),
                    _ => message(
                        u32::from(len % 4),
                        u16::from((kind >> 2) % 8),
                        u16::from((kind >> 5) & 1),
                    ),
                }
            }
            _ => {
                let n = usize::from(len) * 8 + usize::from(kind % 8);
                (0..n)
                    .map(|i| b' ' + ((i as u8).wrapping_mul(7).wrapping_add(kind) % 95))
                    .collect()
            }
        };
        Request { bytes, writable: 0 }
    }

    fn published(&mut self, role: Role, bytes: &[u8]) {
        match role {
            Role::ControlTransmit => {
                // The device may read the message as soon as it is available.
                if matches!(parse(bytes), Some((_, VIRTIO_CONSOLE_DEVICE_READY, 1))) {
                    self.device_ready = true;
                }
            }
            Role::Transmit(p) => {
                if let Some(port) = self.ports.get_mut(p as usize) {
                    port.tx_pending += 1;
                }
            }
            _ => {}
        }
    }

    fn host_input(&self, port: u8, kind: u8, len: u8) -> (u32, Vec<u8>) {
        let n = 1 + usize::from(len);
        let bytes = (0..n)
            .map(|i| b'a' + ((i as u8).wrapping_add(kind) % 26))
            .collect();
        (u32::from(port) % PORTS, bytes)
    }

    fn sent(&mut self, port: u32, bytes: &[u8]) {
        if let Some(p) = self.ports.get_mut(port as usize) {
            p.sent.extend_from_slice(bytes);
        }
    }

    fn ports(&self) -> u32 {
        PORTS
    }

    fn config_written(&mut self, offset: u64, _value: u32) {
        if offset == EMERG_WR_OFFSET {
            // The byte goes "to a log or output of its choice" (§5.3.5.1): maybe port 0's.
            self.ports[0].tx_lenient = true;
        }
    }

    fn used(&mut self, c: &UsedChain) -> Result<(), Finding> {
        match c.role {
            Role::Receive(p) => {
                let Some(port) = self.ports.get_mut(p as usize) else {
                    return Ok(());
                };
                if c.ill_formed {
                    port.rx_lenient = true;
                }
                if port.rx_lenient {
                    return Ok(());
                }
                port.got.extend_from_slice(c.written);
                if !port.sent.starts_with(&port.got) {
                    return Err(err(
                        "rx-bytes-differ",
                        &["CON-DEV-10"],
                        format!(
                            "port {p}: the receive buffers hold {:02x?}, the host sent {:02x?}",
                            port.got, port.sent
                        ),
                    ));
                }
            }
            Role::Transmit(p) => {
                let Some(port) = self.ports.get_mut(p as usize) else {
                    return Ok(());
                };
                port.tx_pending = port.tx_pending.saturating_sub(1);
                if c.ill_formed {
                    port.tx_lenient = true;
                } else {
                    port.tx_expect.extend_from_slice(c.request);
                }
            }
            Role::ControlReceive => {
                let Some((id, event, _)) = parse(c.written) else {
                    return Ok(());
                };
                if !self.device_ready {
                    return Err(err(
                        "control-before-device-ready",
                        &["CON-DEV-13"],
                        format!(
                            "the device sent control message {:02x?} before the driver made DEVICE_READY available",
                            &c.written[..CONTROL_LEN]
                        ),
                    ));
                }
                if event == VIRTIO_CONSOLE_DEVICE_ADD {
                    if id >= PORTS || !self.added.insert(id) {
                        return Err(err(
                            "device-add-twice",
                            &["CON-DEV-14"],
                            format!(
                                "DEVICE_ADD for port {id}, which exists already or is at or above max_nr_ports {PORTS}"
                            ),
                        ));
                    }
                } else if event == VIRTIO_CONSOLE_DEVICE_REMOVE {
                    self.added.remove(&id);
                }
            }
            Role::ControlTransmit => {}
        }
        Ok(())
    }

    fn host_records(&mut self, p: u32, records: Vec<Vec<u8>>) -> Result<(), Finding> {
        let Some(port) = self.ports.get_mut(p as usize) else {
            return Ok(());
        };
        for r in records {
            port.tx_got.extend(r);
        }
        if !port.tx_lenient && port.tx_got != port.tx_expect {
            return Err(err(
                "tx-bytes-differ",
                &["CON-DEV-09"],
                format!(
                    "port {p}: the host received {:02x?}, the used transmit chains held {:02x?}",
                    port.tx_got, port.tx_expect
                ),
            ));
        }
        Ok(())
    }
}
