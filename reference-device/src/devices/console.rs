//! The console device (virtio-console, DeviceID 3, VIRTIO §5.3).
//!
//! Queues (§5.3.2): 0 receiveq(port 0), 1 transmitq(port 0); with VIRTIO_CONSOLE_F_MULTIPORT
//! also 2 control receiveq, 3 control transmitq, then one receiveq/transmitq pair per further
//! port (4/5 for port 1, 6/7 for port 2, ...).
//!
//! Configuration space (§5.3.4, the field order Linux and QEMU use): `cols` (le16) at 0,
//! `rows` (le16) at 2, `max_nr_ports` (le32) at 4, `emerg_wr` (le32) at 8, which reads 0 and
//! takes driver writes.
//!
//! The host side: [`DeviceBackend::host_send`] queues input for a port (delivered into that
//! port's receive buffers as they become available); [`DeviceBackend::host_take`] returns what
//! the driver transmitted, one unit per transmit chain (its readable bytes) or per byte
//! written to `emerg_wr` (port 0).

use std::collections::VecDeque;

use crate::backend::{ChainReader, ChainWriter, Completion, DeviceBackend};
use crate::memory::GuestRam;
use crate::queue::Descriptor;
use crate::regs::bit;
use crate::Mutant;

/// Feature bit: `cols` and `rows` are valid (§5.3.3).
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Feature bit: several ports, `max_nr_ports` valid, control queues used (§5.3.3).
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
/// Feature bit: `emerg_wr` is valid (§5.3.3).
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;

/// Control event (driver to device): the driver is ready for control messages (§5.3.6.2).
pub const VIRTIO_CONSOLE_DEVICE_READY: u16 = 0;
/// Control event (device to driver): a port was added (the spec's DEVICE_ADD, Linux's
/// PORT_ADD).
pub const VIRTIO_CONSOLE_DEVICE_ADD: u16 = 1;
/// Control event (device to driver): a port was removed.
pub const VIRTIO_CONSOLE_DEVICE_REMOVE: u16 = 2;
/// Control event (driver to device): the port announced by DEVICE_ADD is ready.
pub const VIRTIO_CONSOLE_PORT_READY: u16 = 3;
/// Control event (device to driver): the port is a console port.
pub const VIRTIO_CONSOLE_CONSOLE_PORT: u16 = 4;
/// Control event (device to driver): console size change, followed by le16 cols, le16 rows.
pub const VIRTIO_CONSOLE_RESIZE: u16 = 5;
/// Control event (both directions): port opened (value 1) or closed (value 0).
pub const VIRTIO_CONSOLE_PORT_OPEN: u16 = 6;
/// Control event (device to driver): the port's name follows (UTF-8, no NUL).
pub const VIRTIO_CONSOLE_PORT_NAME: u16 = 7;
/// Length of `struct virtio_console_control` in bytes (le32 id, le16 event, le16 value).
pub const CONTROL_LEN: usize = 8;
/// Offset of `emerg_wr` in the configuration space, in bytes.
pub const EMERG_WR_OFFSET: u64 = 8;
/// The most bytes one transmit chain hands to the host (bounds the work of a hostile chain).
pub const MAX_TX_UNIT: u64 = 16 << 20;

/// One `struct virtio_console_control` message plus what follows it (RESIZE's size, a
/// PORT_NAME's name), as it is written into a control receiveq buffer.
pub fn control_message(id: u32, event: u16, value: u16, tail: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_LEN + tail.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(tail);
    m
}

/// What a queue index is for (§5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Receive(u32),
    Transmit(u32),
    ControlReceive,
    ControlTransmit,
}

fn role(queue: u16) -> Role {
    match queue {
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

/// The receiveq index of `port`.
pub fn receiveq(port: u32) -> u16 {
    if port == 0 {
        0
    } else {
        (4 + 2 * (port - 1)) as u16
    }
}

/// The console device (DeviceID 3, §5.3) with port 0 a console and, with MULTIPORT, room for
/// `max_nr_ports` ports of which the first `ports` exist.
///
/// Offered features: VIRTIO_CONSOLE_F_SIZE, VIRTIO_CONSOLE_F_MULTIPORT and
/// VIRTIO_CONSOLE_F_EMERG_WRITE. The host side of every existing port is connected, so a port
/// the driver declares ready is answered with PORT_OPEN (value 1); port 0 is also nominated a
/// console (CONSOLE_PORT), and ports other than 0 get a PORT_NAME.
///
/// Control messages are sent only after the driver's DEVICE_READY (value 1); it announces every
/// existing port once with DEVICE_ADD. A device reset forgets that handshake; host input not
/// yet delivered stays pending across the reset.
pub struct ConsoleBackend {
    config: Vec<u8>,
    max_nr_ports: u32,
    ports: u32,
    input: Vec<VecDeque<u8>>,
    output: Vec<Vec<Vec<u8>>>,
    control_out: VecDeque<Vec<u8>>,
    device_ready: bool,
    announced: Vec<bool>,
    driver_open: Vec<bool>,
    wakeups: Vec<u16>,
    mutant: Option<Mutant>,
}

impl ConsoleBackend {
    /// A console of `cols` x `rows` characters with `max_nr_ports` port slots (at least 1)
    /// of which the first `ports` (1..=max_nr_ports) exist.
    pub fn new(cols: u16, rows: u16, max_nr_ports: u32, ports: u32) -> Self {
        let max_nr_ports = max_nr_ports.clamp(1, 64);
        let ports = ports.clamp(1, max_nr_ports);
        let mut config = vec![0u8; 12];
        config[0..2].copy_from_slice(&cols.to_le_bytes());
        config[2..4].copy_from_slice(&rows.to_le_bytes());
        config[4..8].copy_from_slice(&max_nr_ports.to_le_bytes());
        let n = max_nr_ports as usize;
        let mut b = ConsoleBackend {
            config,
            max_nr_ports,
            ports,
            input: vec![VecDeque::new(); n],
            output: vec![Vec::new(); n],
            control_out: VecDeque::new(),
            device_ready: false,
            announced: vec![false; n],
            driver_open: vec![false; n],
            wakeups: Vec::new(),
            mutant: None,
        };
        b.reset();
        b
    }

    /// Whether the driver last declared port `port` open (PORT_OPEN value 1).
    pub fn driver_open(&self, port: u32) -> bool {
        self.driver_open
            .get(port as usize)
            .copied()
            .unwrap_or(false)
    }

    fn is(&self, m: Mutant) -> bool {
        self.mutant == Some(m)
    }

    fn announce_ports(&mut self) {
        for p in 0..self.ports {
            self.control_out
                .push_back(control_message(p, VIRTIO_CONSOLE_DEVICE_ADD, 0, &[]));
            self.announced[p as usize] = true;
        }
        if self.is(Mutant::ConsolePortAddTwice) {
            self.control_out
                .push_back(control_message(0, VIRTIO_CONSOLE_DEVICE_ADD, 0, &[]));
        }
        self.wakeups.push(2);
    }

    fn port_ready(&mut self, port: u32) {
        if port == 0 {
            self.control_out
                .push_back(control_message(0, VIRTIO_CONSOLE_CONSOLE_PORT, 1, &[]));
        } else {
            let name = format!("org.virtio-conform.port{port}");
            self.control_out.push_back(control_message(
                port,
                VIRTIO_CONSOLE_PORT_NAME,
                0,
                name.as_bytes(),
            ));
        }
        self.control_out
            .push_back(control_message(port, VIRTIO_CONSOLE_PORT_OPEN, 1, &[]));
        self.wakeups.push(2);
    }

    fn control(&mut self, msg: &[u8; CONTROL_LEN]) {
        let id = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let event = u16::from_le_bytes([msg[4], msg[5]]);
        let value = u16::from_le_bytes([msg[6], msg[7]]);
        match event {
            VIRTIO_CONSOLE_DEVICE_READY if value == 1 && !self.device_ready => {
                self.device_ready = true;
                if !self.is(Mutant::ConsoleControlBeforeDeviceReady) {
                    self.announce_ports();
                }
            }
            VIRTIO_CONSOLE_PORT_READY
                if value == 1 && self.announced.get(id as usize) == Some(&true) =>
            {
                self.port_ready(id)
            }
            VIRTIO_CONSOLE_PORT_OPEN => {
                if let Some(o) = self.driver_open.get_mut(id as usize) {
                    *o = value == 1;
                }
            }
            // A failed DEVICE_READY/PORT_READY, a repeated one, or an event the driver does
            // not send: nothing to do.
            _ => {}
        }
    }

    fn transmit(&mut self, port: u32, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let mut total = ChainReader::available(chain).min(MAX_TX_UNIT);
        if self.is(Mutant::ConsoleTxFirstDescriptorOnly) {
            total = chain
                .iter()
                .find(|d| !d.is_write_only())
                .map_or(0, |d| u64::from(d.len));
        }
        let mut data = vec![0u8; total as usize];
        let mut reader = ChainReader::new(chain);
        let Ok(n) = reader.read(ram, &mut data) else {
            return Completion::Malformed;
        };
        data.truncate(n);
        if let Some(out) = self.output.get_mut(port as usize) {
            out.push(data);
        }
        // The device writes nothing into a transmit buffer.
        Completion::Written(0)
    }

    fn receive(&mut self, port: u32, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let cap = ChainWriter::capacity(chain);
        let Some(pending) = self.input.get_mut(port as usize) else {
            return Completion::Written(0);
        };
        let n = (cap.min(pending.len() as u64)) as usize;
        let chunk: Vec<u8> = pending.iter().take(n).copied().collect();
        let mut writer = ChainWriter::new(chain);
        if writer.write(ram, &chunk).is_err() {
            return Completion::Malformed;
        }
        pending.drain(..n);
        if self.is(Mutant::ConsoleRxLenOverstated) {
            return Completion::Written(cap.min(u64::from(u32::MAX)) as u32);
        }
        Completion::Written(writer.written())
    }
}

impl Default for ConsoleBackend {
    /// An 80 x 25 console with two port slots of which port 0 exists.
    fn default() -> Self {
        ConsoleBackend::new(80, 25, 2, 1)
    }
}

impl DeviceBackend for ConsoleBackend {
    fn device_id(&self) -> u32 {
        3
    }
    fn features(&self) -> u64 {
        bit(VIRTIO_CONSOLE_F_SIZE)
            | bit(VIRTIO_CONSOLE_F_MULTIPORT)
            | bit(VIRTIO_CONSOLE_F_EMERG_WRITE)
    }
    fn num_queues(&self) -> u16 {
        (2 * (self.max_nr_ports + 1)) as u16
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn name(&self) -> &'static str {
        "console"
    }
    fn set_mutant(&mut self, m: Mutant) {
        self.mutant = Some(m);
        self.reset();
    }

    fn ready_for(&self, queue: u16) -> bool {
        match role(queue) {
            Role::Receive(p) => self.input.get(p as usize).is_some_and(|i| !i.is_empty()),
            Role::ControlReceive => !self.control_out.is_empty(),
            Role::Transmit(_) | Role::ControlTransmit => true,
        }
    }

    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        match role(queue) {
            Role::Transmit(p) => self.transmit(p, chain, ram),
            Role::Receive(p) => self.receive(p, chain, ram),
            Role::ControlTransmit => {
                let mut msg = [0u8; CONTROL_LEN];
                match ChainReader::new(chain).read(ram, &mut msg) {
                    Ok(CONTROL_LEN) => {
                        self.control(&msg);
                        Completion::Written(0)
                    }
                    Ok(_) => Completion::Written(0),
                    Err(_) => Completion::Malformed,
                }
            }
            Role::ControlReceive => {
                if ChainWriter::capacity(chain) == 0 {
                    return Completion::Written(0);
                }
                let Some(msg) = self.control_out.pop_front() else {
                    return Completion::Written(0);
                };
                let mut writer = ChainWriter::new(chain);
                if writer.write(ram, &msg).is_err() {
                    return Completion::Malformed;
                }
                Completion::Written(writer.written())
            }
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == EMERG_WR_OFFSET && !self.is(Mutant::ConsoleEmergWriteIgnored) {
            if let Some(&b) = data.first() {
                self.output[0].push(vec![b]);
            }
        }
    }

    fn take_wakeups(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.wakeups)
    }

    fn reset(&mut self) {
        self.device_ready = false;
        self.control_out.clear();
        self.announced.fill(false);
        self.driver_open.fill(false);
        self.wakeups.clear();
        if self.is(Mutant::ConsoleControlBeforeDeviceReady) {
            self.announce_ports();
            self.wakeups.clear();
        }
    }

    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<Vec<u16>, String> {
        if port >= self.ports {
            return Err(format!(
                "the console has {} port(s); there is no port {port}",
                self.ports
            ));
        }
        self.input[port as usize].extend(data.iter().copied());
        Ok(vec![receiveq(port)])
    }

    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
        match self.output.get_mut(port as usize) {
            Some(out) if port < self.ports => Ok(std::mem::take(out)),
            _ => Err(format!(
                "the console has {} port(s); there is no port {port}",
                self.ports
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::anonymous(1 << 20).expect("ram")
    }

    fn rd(addr: u64, len: u32) -> Descriptor {
        Descriptor::readable(addr, len)
    }

    fn wr(addr: u64, len: u32) -> Descriptor {
        Descriptor::writable(addr, len)
    }

    #[test]
    fn transmit_joins_every_readable_descriptor_and_writes_nothing() {
        let mut ram = ram();
        ram.write(0x1000, b"hel").unwrap();
        ram.write(0x2000, b"lo").unwrap();
        ram.write(0x3000, b"!").unwrap();
        let mut c = ConsoleBackend::default();
        let chain = [rd(0x1000, 3), rd(0x2000, 2), rd(0x3000, 1)];
        assert_eq!(c.process(1, &chain, &mut ram), Completion::Written(0));
        assert_eq!(c.host_take(0).unwrap(), vec![b"hello!".to_vec()]);
        assert!(c.host_take(0).unwrap().is_empty());
    }

    #[test]
    fn first_descriptor_mutant_truncates() {
        let mut ram = ram();
        ram.write(0x1000, b"hel").unwrap();
        ram.write(0x2000, b"lo").unwrap();
        let mut c = ConsoleBackend::default();
        c.set_mutant(Mutant::ConsoleTxFirstDescriptorOnly);
        c.process(1, &[rd(0x1000, 3), rd(0x2000, 2)], &mut ram);
        assert_eq!(c.host_take(0).unwrap(), vec![b"hel".to_vec()]);
    }

    #[test]
    fn receive_waits_for_input_and_fills_buffers_in_order() {
        let mut ram = ram();
        let mut c = ConsoleBackend::default();
        assert!(!c.ready_for(0));
        assert_eq!(c.host_send(0, b"abcdefg").unwrap(), vec![0]);
        assert!(c.ready_for(0));
        let chain = [wr(0x1000, 2), wr(0x2000, 3)];
        assert_eq!(c.process(0, &chain, &mut ram), Completion::Written(5));
        let mut b = [0u8; 3];
        ram.read(0x2000, &mut b).unwrap();
        assert_eq!(&b, b"cde");
        assert_eq!(
            c.process(0, &[wr(0x3000, 16)], &mut ram),
            Completion::Written(2)
        );
        assert!(!c.ready_for(0));
        let mut b = [0u8; 2];
        ram.read(0x3000, &mut b).unwrap();
        assert_eq!(&b, b"fg");
    }

    #[test]
    fn rx_len_mutant_overstates() {
        let mut ram = ram();
        let mut c = ConsoleBackend::default();
        c.set_mutant(Mutant::ConsoleRxLenOverstated);
        c.host_send(0, b"ab").unwrap();
        assert_eq!(
            c.process(0, &[wr(0x1000, 16)], &mut ram),
            Completion::Written(16)
        );
    }

    #[test]
    fn control_messages_wait_for_device_ready() {
        let mut ram = ram();
        let mut c = ConsoleBackend::new(80, 25, 4, 2);
        assert!(!c.ready_for(2));
        ram.write(
            0x1000,
            &control_message(0, VIRTIO_CONSOLE_DEVICE_READY, 1, &[]),
        )
        .unwrap();
        assert_eq!(
            c.process(3, &[rd(0x1000, 8)], &mut ram),
            Completion::Written(0)
        );
        assert_eq!(c.take_wakeups(), vec![2]);
        let mut got = Vec::new();
        while c.ready_for(2) {
            assert_eq!(
                c.process(2, &[wr(0x2000, 64)], &mut ram),
                Completion::Written(8)
            );
            let mut m = [0u8; 8];
            ram.read(0x2000, &mut m).unwrap();
            got.push(m.to_vec());
        }
        assert_eq!(
            got,
            vec![
                control_message(0, VIRTIO_CONSOLE_DEVICE_ADD, 0, &[]),
                control_message(1, VIRTIO_CONSOLE_DEVICE_ADD, 0, &[])
            ]
        );
        // PORT_READY for port 0: console nomination, then open.
        ram.write(
            0x1000,
            &control_message(0, VIRTIO_CONSOLE_PORT_READY, 1, &[]),
        )
        .unwrap();
        c.process(3, &[rd(0x1000, 8)], &mut ram);
        assert_eq!(
            c.process(2, &[wr(0x2000, 64)], &mut ram),
            Completion::Written(8)
        );
        let mut m = [0u8; 8];
        ram.read(0x2000, &mut m).unwrap();
        assert_eq!(
            m.to_vec(),
            control_message(0, VIRTIO_CONSOLE_CONSOLE_PORT, 1, &[])
        );
        c.process(2, &[wr(0x2000, 64)], &mut ram);
        // Port 1 gets a name.
        ram.write(
            0x1000,
            &control_message(1, VIRTIO_CONSOLE_PORT_READY, 1, &[]),
        )
        .unwrap();
        c.process(3, &[rd(0x1000, 8)], &mut ram);
        let name = b"org.virtio-conform.port1";
        assert_eq!(
            c.process(2, &[wr(0x2000, 64)], &mut ram),
            Completion::Written((8 + name.len()) as u32)
        );
        // A driver PORT_OPEN is recorded; a reset forgets the handshake.
        ram.write(
            0x1000,
            &control_message(0, VIRTIO_CONSOLE_PORT_OPEN, 1, &[]),
        )
        .unwrap();
        c.process(3, &[rd(0x1000, 8)], &mut ram);
        assert!(c.driver_open(0));
        c.reset();
        assert!(!c.ready_for(2));
        assert!(!c.driver_open(0));
    }

    #[test]
    fn control_before_ready_mutant_has_messages_at_once() {
        let mut c = ConsoleBackend::default();
        c.set_mutant(Mutant::ConsoleControlBeforeDeviceReady);
        assert!(c.ready_for(2));
    }

    #[test]
    fn emergency_write_delivers_the_low_byte_to_port_0() {
        let mut c = ConsoleBackend::default();
        c.write_config(EMERG_WR_OFFSET, &0x1234_5641u32.to_le_bytes());
        c.write_config(0, &[7]);
        assert_eq!(c.host_take(0).unwrap(), vec![vec![0x41]]);
        c.set_mutant(Mutant::ConsoleEmergWriteIgnored);
        c.write_config(EMERG_WR_OFFSET, &[0x42]);
        assert!(c.host_take(0).unwrap().is_empty());
    }

    #[test]
    fn config_and_queues_follow_max_nr_ports() {
        let c = ConsoleBackend::new(100, 40, 3, 1);
        assert_eq!(&c.config()[0..8], &[100, 0, 40, 0, 3, 0, 0, 0]);
        assert_eq!(c.num_queues(), 8);
        assert_eq!(role(6), Role::Receive(2));
        assert_eq!(role(7), Role::Transmit(2));
        assert_eq!(receiveq(2), 6);
    }

    #[test]
    fn unknown_ports_are_errors_not_panics() {
        let mut c = ConsoleBackend::default();
        assert!(c.host_send(1, b"x").is_err());
        assert!(c.host_take(7).is_err());
        let mut ram = ram();
        // A receive chain for a port slot that does not exist, a short control message and a
        // readable-only receive chain are all answered without panicking.
        assert_eq!(
            c.process(4, &[wr(0x1000, 4)], &mut ram),
            Completion::Written(0)
        );
        assert_eq!(
            c.process(3, &[rd(0x1000, 4)], &mut ram),
            Completion::Written(0)
        );
        c.host_send(0, b"x").unwrap();
        assert_eq!(
            c.process(0, &[rd(0x1000, 4)], &mut ram),
            Completion::Written(0)
        );
        assert!(c.ready_for(0));
    }
}
