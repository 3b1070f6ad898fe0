//! The socket device (virtio-vsock, DeviceID 19, VIRTIO 1.3 §5.10).
//!
//! Queues (§5.10.2): 0 rx (device to driver packets), 1 tx (driver to device packets),
//! 2 event. Configuration space (§5.10.4): `guest_cid` (le64) at offset 0.
//!
//! Every packet is a 44-byte little-endian [`VsockHeader`] followed by `len` payload bytes
//! (§5.10.6). The device reads a tx packet as one byte stream over the chain's readable
//! descriptors and writes an rx packet as one stream over the writable ones, so any framing
//! works (§2.7.4).
//!
//! The host side (CID 2) is a model of a host application: [`HostOp::Listen`] opens a
//! listening port, [`HostOp::Connect`] sends a REQUEST to a driver port (from a host port the
//! device picks, counting up from [`FIRST_HOST_PORT`]), [`HostOp::Close`] shuts a connection
//! down (SHUTDOWN with both flags after the data still queued) or stops listening.
//! [`DeviceBackend::host_send`] queues stream bytes for the driver, sent as RW packets within
//! the driver's credit (§5.10.6.3); [`DeviceBackend::host_take`] returns the RW payloads the
//! driver sent, one entry per packet. The host consumes what it receives at once, so the
//! device's `fwd_cnt` is the count of payload bytes received on the connection.
//!
//! A host-side change of `guest_cid` (a configuration change, as after a migration) resets
//! the transport: every connection is dropped and a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET event
//! goes to the event queue (§5.10.6.7). Listening ports survive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::backend::{ChainReader, ChainWriter, Completion, DeviceBackend, HostConn, HostOp};
use crate::memory::GuestRam;
use crate::queue::Descriptor;
use crate::regs::bit;
use crate::Mutant;

/// Feature bit: stream sockets (§5.10.3).
pub const VIRTIO_VSOCK_F_STREAM: u32 = 0;
/// Feature bit: seqpacket sockets (§5.10.3); not offered by the reference.
pub const VIRTIO_VSOCK_F_SEQPACKET: u32 = 1;
/// Feature bit: the stream type is not implied when no type bit is negotiated (§5.10.3).
pub const VIRTIO_VSOCK_F_NO_IMPLIED_STREAM: u32 = 2;

/// Size of `struct virtio_vsock_hdr` in bytes.
pub const VSOCK_HDR_LEN: usize = 44;
/// The well-known CID of the host (§5.10.4).
pub const HOST_CID: u64 = 2;
/// The reference's default `guest_cid`.
pub const DEFAULT_GUEST_CID: u64 = 3;
/// The receive buffer space the device advertises per connection (`buf_alloc`), in bytes.
pub const DEVICE_BUF_ALLOC: u32 = 64 << 10;
/// The most payload bytes the device puts into one packet, and reads from one tx packet.
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// The first host port the device uses for connections the host opens.
pub const FIRST_HOST_PORT: u32 = 49152;
/// The most connections one device instance tracks (more are refused with RST).
pub const MAX_CONNS: usize = 1024;

/// `type`: stream socket.
pub const VIRTIO_VSOCK_TYPE_STREAM: u16 = 1;
/// `type`: seqpacket socket.
pub const VIRTIO_VSOCK_TYPE_SEQPACKET: u16 = 2;

/// `op`: invalid.
pub const VIRTIO_VSOCK_OP_INVALID: u16 = 0;
/// `op`: connection request.
pub const VIRTIO_VSOCK_OP_REQUEST: u16 = 1;
/// `op`: connection accepted.
pub const VIRTIO_VSOCK_OP_RESPONSE: u16 = 2;
/// `op`: connection refused or aborted.
pub const VIRTIO_VSOCK_OP_RST: u16 = 3;
/// `op`: shutdown hints in `flags`.
pub const VIRTIO_VSOCK_OP_SHUTDOWN: u16 = 4;
/// `op`: payload.
pub const VIRTIO_VSOCK_OP_RW: u16 = 5;
/// `op`: credit information.
pub const VIRTIO_VSOCK_OP_CREDIT_UPDATE: u16 = 6;
/// `op`: asks the peer for a CREDIT_UPDATE.
pub const VIRTIO_VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const VIRTIO_VSOCK_SHUTDOWN_F_SEND: u32 = 2;

/// Event id: the transport was reset (§5.10.6.6).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// `struct virtio_vsock_hdr` (§5.10.6), every field little-endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Socket type (1 stream, 2 seqpacket).
    pub type_: u16,
    /// Operation (`VIRTIO_VSOCK_OP_*`).
    pub op: u16,
    /// Operation flags (SHUTDOWN hints, seqpacket EOM/EOR).
    pub flags: u32,
    /// The sender's receive buffer space for this connection, in bytes.
    pub buf_alloc: u32,
    /// The sender's free-running count of payload bytes received.
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// The 44 wire bytes.
    pub fn to_bytes(&self) -> [u8; VSOCK_HDR_LEN] {
        let mut b = [0u8; VSOCK_HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Decodes 44 wire bytes.
    pub fn from_bytes(b: &[u8; VSOCK_HDR_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VsockHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The host sent REQUEST and waits for the driver's answer.
    Connecting,
    Open,
    /// The host closed its end: SHUTDOWN goes out after the queued data.
    HostClosing,
    Refused,
    Closed,
}

#[derive(Debug)]
struct Conn {
    host_port: u32,
    guest_port: u32,
    state: State,
    /// The driver's advertised receive space and bytes-forwarded count.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes the device sent to the driver.
    tx_cnt: u32,
    /// Payload bytes the device received from the driver (its `fwd_cnt`).
    rx_cnt: u32,
    /// `rx_cnt` when the device last told the driver.
    fwd_told: u32,
    out: VecDeque<u8>,
    inbound: Vec<Vec<u8>>,
    shutdown_sent: bool,
    /// SHUTDOWN flags the driver sent so far (the hints are permanent, §5.10.6.5).
    driver_shutdown: u32,
}

impl Conn {
    fn new(host_port: u32, guest_port: u32, state: State) -> Self {
        Conn {
            host_port,
            guest_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            rx_cnt: 0,
            fwd_told: 0,
            out: VecDeque::new(),
            inbound: Vec::new(),
            shutdown_sent: false,
            driver_shutdown: 0,
        }
    }

    fn live(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Open | State::HostClosing
        )
    }

    /// Bytes the driver can take now: peer_buf_alloc - (tx_cnt - peer_fwd_cnt) (§5.10.6.3).
    fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}

/// The choices the spec leaves to a socket device, for permitted-variant tests. The
/// [`Default`] is the reference's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockOptions {
    /// `guest_cid` (§5.10.4; default [`DEFAULT_GUEST_CID`]).
    pub guest_cid: u64,
    /// `buf_alloc` the device advertises, in bytes (default [`DEVICE_BUF_ALLOC`]).
    pub buf_alloc: u32,
    /// The most payload bytes per RW packet the device sends (default [`MAX_PAYLOAD`]).
    pub max_rw_payload: u32,
    /// The first host port for host-initiated connections (default [`FIRST_HOST_PORT`]).
    pub first_host_port: u32,
    /// Answer packets for unknown connections with RST (default) or drop them.
    pub rst_unknown: bool,
    /// The host closes with RST instead of SHUTDOWN (both are allowed, §5.10.6.5).
    pub close_with_rst: bool,
    /// Send a CREDIT_UPDATE after every RW packet received, unasked (allowed, §5.10.6.3).
    pub eager_credit_updates: bool,
    /// Treat a host-side `guest_cid` change as interrupted communication and place a
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET event (default). §5.10.6.7 ties the event to
    /// interrupted communication (typically a migration), not to the CID, so a device that
    /// does not is allowed too.
    pub transport_reset_on_cid_change: bool,
}

impl Default for VsockOptions {
    fn default() -> Self {
        VsockOptions {
            guest_cid: DEFAULT_GUEST_CID,
            buf_alloc: DEVICE_BUF_ALLOC,
            max_rw_payload: MAX_PAYLOAD,
            first_host_port: FIRST_HOST_PORT,
            rst_unknown: true,
            close_with_rst: false,
            eager_credit_updates: false,
            transport_reset_on_cid_change: true,
        }
    }
}

/// The socket device (DeviceID 19, §5.10): stream sockets between the driver (CID
/// `guest_cid`) and the host (CID 2).
///
/// Offered features: VIRTIO_VSOCK_F_STREAM and VIRTIO_VSOCK_F_NO_IMPLIED_STREAM (which the
/// device SHOULD offer, §5.10.3.2). Stream packets are served when STREAM was negotiated or no
/// type bit was (§5.10.3.2); otherwise every packet gets RST.
///
/// Replies: REQUEST to a listening host port gets RESPONSE, else RST; a packet for no
/// connection gets RST (never an RST); CREDIT_REQUEST gets CREDIT_UPDATE; SHUTDOWN with both
/// flags (cumulative) gets RST, ending the connection; a packet of unknown `type` gets RST
/// (§5.10.6.4.2). A packet whose `src_cid` is not `guest_cid` is dropped; one whose
/// `dst_cid` is not the host gets RST (the device has no other peer).
pub struct VsockBackend {
    config: Vec<u8>,
    guest_cid: u64,
    negotiated: u64,
    listeners: BTreeSet<u32>,
    conns: Vec<Conn>,
    names: BTreeMap<u32, usize>,
    ctl: VecDeque<VsockHeader>,
    events: VecDeque<u32>,
    next_host_port: u32,
    wakeups: Vec<u16>,
    mutant: Option<Mutant>,
    opts: VsockOptions,
}

impl VsockBackend {
    /// A socket device whose driver has CID `guest_cid` (§5.10.4: not 0, 1, 2, 0xffffffff
    /// or all ones; the upper 32 bits are reserved).
    pub fn new(guest_cid: u64) -> Self {
        VsockBackend::with_options(VsockOptions {
            guest_cid,
            ..VsockOptions::default()
        })
    }

    /// A socket device making the choices `opts` describes.
    pub fn with_options(opts: VsockOptions) -> Self {
        let guest_cid = opts.guest_cid;
        VsockBackend {
            opts,
            config: guest_cid.to_le_bytes().to_vec(),
            guest_cid,
            negotiated: 0,
            listeners: BTreeSet::new(),
            conns: Vec::new(),
            names: BTreeMap::new(),
            ctl: VecDeque::new(),
            events: VecDeque::new(),
            next_host_port: opts.first_host_port,
            wakeups: Vec::new(),
            mutant: None,
        }
    }

    fn is(&self, m: Mutant) -> bool {
        self.mutant == Some(m)
    }

    /// Whether stream packets are served under the negotiated features (§5.10.3.2).
    fn stream_on(&self) -> bool {
        let types = bit(VIRTIO_VSOCK_F_STREAM)
            | bit(VIRTIO_VSOCK_F_SEQPACKET)
            | bit(VIRTIO_VSOCK_F_NO_IMPLIED_STREAM);
        self.negotiated & bit(VIRTIO_VSOCK_F_STREAM) != 0 || self.negotiated & types == 0
    }

    /// A device-to-driver header of connection `c` (or of no connection: ports given).
    fn header(&self, host_port: u32, guest_port: u32, op: u16, fwd_cnt: u32) -> VsockHeader {
        let (src_cid, dst_cid) = if self.is(Mutant::VsockCidsSwapped) {
            (self.guest_cid, HOST_CID)
        } else {
            (HOST_CID, self.guest_cid)
        };
        VsockHeader {
            src_cid,
            dst_cid,
            src_port: host_port,
            dst_port: guest_port,
            len: 0,
            type_: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.opts.buf_alloc,
            fwd_cnt,
        }
    }

    fn reply(&mut self, c: usize, op: u16) {
        let (hp, gp, fwd) = {
            let k = &self.conns[c];
            (k.host_port, k.guest_port, k.rx_cnt)
        };
        let h = self.header(hp, gp, op, fwd);
        self.conns[c].fwd_told = fwd;
        self.ctl.push_back(h);
    }

    fn rst_to(&mut self, req: &VsockHeader) {
        if req.op == VIRTIO_VSOCK_OP_RST {
            return;
        }
        let spec_answer = req.op == VIRTIO_VSOCK_OP_REQUEST
            || req.type_ != VIRTIO_VSOCK_TYPE_STREAM
            || req.dst_cid != HOST_CID;
        if !self.opts.rst_unknown && !spec_answer {
            // A packet for no connection: this variant drops it.
            return;
        }
        let h = self.header(req.dst_port, req.src_port, VIRTIO_VSOCK_OP_RST, 0);
        self.ctl.push_back(h);
    }

    fn find(&self, host_port: u32, guest_port: u32) -> Option<usize> {
        self.conns
            .iter()
            .rposition(|c| c.live() && c.host_port == host_port && c.guest_port == guest_port)
    }

    fn add_conn(&mut self, conn: Conn, name: u32) -> Option<usize> {
        if self.conns.len() >= MAX_CONNS {
            return None;
        }
        self.conns.push(conn);
        let i = self.conns.len() - 1;
        self.names.insert(name, i);
        Some(i)
    }

    fn sendable(&self, c: &Conn) -> bool {
        matches!(c.state, State::Open | State::HostClosing)
            && !c.out.is_empty()
            && (c.credit() > 0 || self.is(Mutant::VsockIgnoresCredit))
    }

    /// Handles one driver packet.
    fn handle(&mut self, h: VsockHeader, payload: Vec<u8>) {
        if h.src_cid != self.guest_cid {
            // Not from this driver's address: dropped.
            return;
        }
        let type_ok = h.type_ == VIRTIO_VSOCK_TYPE_STREAM && self.stream_on();
        if !type_ok {
            if !self.is(Mutant::VsockUnknownTypeIgnored) {
                self.rst_to(&h);
            }
            return;
        }
        if h.dst_cid != HOST_CID {
            self.rst_to(&h);
            return;
        }
        let found = self.find(h.dst_port, h.src_port);
        if let Some(c) = found {
            let k = &mut self.conns[c];
            k.peer_buf_alloc = h.buf_alloc;
            k.peer_fwd_cnt = h.fwd_cnt;
        }
        match (h.op, found) {
            (VIRTIO_VSOCK_OP_REQUEST, None) => {
                let listening = self.listeners.contains(&h.dst_port)
                    || self.is(Mutant::VsockAcceptsWithoutListener);
                let added = if listening {
                    let mut k = Conn::new(h.dst_port, h.src_port, State::Open);
                    k.peer_buf_alloc = h.buf_alloc;
                    k.peer_fwd_cnt = h.fwd_cnt;
                    self.add_conn(k, h.dst_port)
                } else {
                    None
                };
                match added {
                    Some(c) => self.reply(c, VIRTIO_VSOCK_OP_RESPONSE),
                    None => self.rst_to(&h),
                }
            }
            (VIRTIO_VSOCK_OP_RESPONSE, Some(c)) if self.conns[c].state == State::Connecting => {
                self.conns[c].state = State::Open;
            }
            (VIRTIO_VSOCK_OP_RST, Some(c)) => {
                let k = &mut self.conns[c];
                k.state = if k.state == State::Connecting {
                    State::Refused
                } else {
                    State::Closed
                };
            }
            (VIRTIO_VSOCK_OP_SHUTDOWN, Some(c)) if self.conns[c].state != State::Connecting => {
                // The hints are cumulative (§5.10.6.5); both set: the driver is done.
                if self.is(Mutant::VsockShutdownNotCumulative) {
                    self.conns[c].driver_shutdown = 0;
                }
                self.conns[c].driver_shutdown |= h.flags & 3;
                if self.conns[c].driver_shutdown == 3 || self.conns[c].state == State::HostClosing {
                    self.conns[c].state = State::Closed;
                    self.reply(c, VIRTIO_VSOCK_OP_RST);
                }
            }
            (VIRTIO_VSOCK_OP_RW, Some(c)) if self.conns[c].state != State::Connecting => {
                let k = &mut self.conns[c];
                k.rx_cnt = k.rx_cnt.wrapping_add(payload.len() as u32);
                k.inbound.push(payload);
                // The host consumed the bytes: tell the driver once half its view of the
                // space is used up.
                if k.rx_cnt.wrapping_sub(k.fwd_told) >= self.opts.buf_alloc / 2
                    || self.opts.eager_credit_updates
                {
                    self.reply(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
                }
            }
            (VIRTIO_VSOCK_OP_CREDIT_UPDATE, Some(_)) => {}
            (VIRTIO_VSOCK_OP_CREDIT_REQUEST, Some(c)) => {
                if !self.is(Mutant::VsockCreditRequestIgnored) {
                    self.reply(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
                }
            }
            (_, Some(c)) => {
                // A packet the connection's state does not allow: abort it.
                self.conns[c].state = State::Closed;
                self.reply(c, VIRTIO_VSOCK_OP_RST);
            }
            (_, None) => self.rst_to(&h),
        }
    }

    fn transmit(&mut self, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let mut hdr = [0u8; VSOCK_HDR_LEN];
        let mut reader = ChainReader::new(chain);
        if self.is(Mutant::VsockTxHeaderFirstDescriptorOnly) {
            let first = chain.iter().find(|d| !d.is_write_only());
            if first.is_none_or(|d| (d.len as usize) < VSOCK_HDR_LEN) {
                return Completion::Written(0);
            }
        }
        match reader.read(ram, &mut hdr) {
            Ok(VSOCK_HDR_LEN) => {}
            Ok(_) => return Completion::Written(0),
            Err(_) => return Completion::Malformed,
        }
        let h = VsockHeader::from_bytes(&hdr);
        let want = h.len.min(MAX_PAYLOAD) as usize;
        let mut payload = vec![0u8; want];
        let Ok(n) = reader.read(ram, &mut payload) else {
            return Completion::Malformed;
        };
        payload.truncate(n);
        self.handle(h, payload);
        if self.ready_for(0) {
            self.wakeups.push(0);
        }
        // The device writes nothing into a tx buffer.
        Completion::Written(0)
    }

    /// The next packet for the driver, at most `room` bytes long (header included).
    fn next_rx(&mut self, room: usize) -> Option<(VsockHeader, Vec<u8>)> {
        if let Some(h) = self.ctl.pop_front() {
            return Some((h, Vec::new()));
        }
        let c = self.conns.iter().position(|c| self.sendable(c))?;
        let ignore = self.is(Mutant::VsockIgnoresCredit);
        let max = self.opts.max_rw_payload.clamp(1, MAX_PAYLOAD) as usize;
        let k = &mut self.conns[c];
        let mut n = k.out.len().min(room - VSOCK_HDR_LEN).min(max);
        if !ignore {
            n = n.min(k.credit() as usize);
        }
        let data: Vec<u8> = k.out.drain(..n).collect();
        k.tx_cnt = k.tx_cnt.wrapping_add(n as u32);
        let (hp, gp, fwd) = (k.host_port, k.guest_port, k.rx_cnt);
        k.fwd_told = fwd;
        let closing = k.state == State::HostClosing && k.out.is_empty() && !k.shutdown_sent;
        let mut h = self.header(hp, gp, VIRTIO_VSOCK_OP_RW, fwd);
        h.len = n as u32;
        if closing {
            self.conns[c].shutdown_sent = true;
            let mut s = self.header(hp, gp, VIRTIO_VSOCK_OP_SHUTDOWN, fwd);
            s.flags = VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE | VIRTIO_VSOCK_SHUTDOWN_F_SEND;
            self.ctl.push_back(s);
        }
        Some((h, data))
    }

    fn receive(&mut self, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        let cap = ChainWriter::capacity(chain).min(u64::from(u32::MAX)) as usize;
        if cap < VSOCK_HDR_LEN {
            // No room for a header: the buffer goes back empty.
            return Completion::Written(0);
        }
        let Some((h, data)) = self.next_rx(cap) else {
            return Completion::Written(0);
        };
        let mut writer = ChainWriter::new(chain);
        if writer.write(ram, &h.to_bytes()).is_err() || writer.write(ram, &data).is_err() {
            return Completion::Malformed;
        }
        Completion::Written(writer.written())
    }

    fn conn_named(&self, port: u32) -> Option<usize> {
        self.names.get(&port).copied()
    }
}

impl Default for VsockBackend {
    /// A socket device with `guest_cid` [`DEFAULT_GUEST_CID`].
    fn default() -> Self {
        VsockBackend::new(DEFAULT_GUEST_CID)
    }
}

impl DeviceBackend for VsockBackend {
    fn device_id(&self) -> u32 {
        19
    }
    fn features(&self) -> u64 {
        bit(VIRTIO_VSOCK_F_STREAM) | bit(VIRTIO_VSOCK_F_NO_IMPLIED_STREAM)
    }
    fn num_queues(&self) -> u16 {
        3
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn name(&self) -> &'static str {
        "vsock"
    }
    fn set_mutant(&mut self, m: Mutant) {
        self.mutant = Some(m);
    }

    fn ready_for(&self, queue: u16) -> bool {
        match queue {
            0 => !self.ctl.is_empty() || self.conns.iter().any(|c| self.sendable(c)),
            2 => !self.events.is_empty(),
            _ => true,
        }
    }

    fn process(&mut self, queue: u16, chain: &[Descriptor], ram: &mut GuestRam) -> Completion {
        match queue {
            0 => self.receive(chain, ram),
            1 => self.transmit(chain, ram),
            2 => {
                if ChainWriter::capacity(chain) < 4 {
                    return Completion::Written(0);
                }
                let Some(id) = self.events.pop_front() else {
                    return Completion::Written(0);
                };
                let mut writer = ChainWriter::new(chain);
                if writer.write(ram, &id.to_le_bytes()).is_err() {
                    return Completion::Malformed;
                }
                Completion::Written(writer.written())
            }
            _ => Completion::Written(0),
        }
    }

    fn take_wakeups(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.wakeups)
    }

    fn reset(&mut self) {
        for c in &mut self.conns {
            if c.live() {
                c.state = State::Closed;
            }
        }
        self.ctl.clear();
        self.events.clear();
        self.negotiated = 0;
        self.wakeups.clear();
    }

    fn negotiated(&mut self, features: u64) {
        self.negotiated = features;
    }

    fn host_config_changed(&mut self, offset: usize, data: &[u8]) {
        let end = offset.saturating_add(data.len()).min(self.config.len());
        if offset >= end {
            return;
        }
        self.config[offset..end].copy_from_slice(&data[..end - offset]);
        let cid = u64::from_le_bytes(self.config[..8].try_into().expect("8 bytes"));
        if cid == self.guest_cid {
            return;
        }
        // The transport is reset (§5.10.6.7): connections end, listeners stay.
        self.guest_cid = cid;
        for c in &mut self.conns {
            if c.live() {
                c.state = State::Closed;
            }
        }
        self.ctl.clear();
        if self.opts.transport_reset_on_cid_change {
            self.events.push_back(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
            self.wakeups.push(2);
        }
    }

    fn host_op(&mut self, op: HostOp) -> Result<Vec<u16>, String> {
        match op {
            HostOp::Listen { port } => {
                self.listeners.insert(port);
                Ok(Vec::new())
            }
            HostOp::Connect { port } => {
                let hp = self.next_host_port;
                self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
                let c = self
                    .add_conn(Conn::new(hp, port, State::Connecting), port)
                    .ok_or_else(|| {
                        format!("the vsock device tracks at most {MAX_CONNS} connections")
                    })?;
                self.reply(c, VIRTIO_VSOCK_OP_REQUEST);
                Ok(vec![0])
            }
            HostOp::Close { port } => {
                self.listeners.remove(&port);
                let with_rst = self.opts.close_with_rst;
                if let Some(c) = self.conn_named(port) {
                    let k = &mut self.conns[c];
                    match k.state {
                        State::Open if with_rst => {
                            k.state = State::Closed;
                            self.reply(c, VIRTIO_VSOCK_OP_RST);
                        }
                        State::Open => {
                            k.state = State::HostClosing;
                            if k.out.is_empty() {
                                k.shutdown_sent = true;
                                let (hp, gp, fwd) = (k.host_port, k.guest_port, k.rx_cnt);
                                let mut s = self.header(hp, gp, VIRTIO_VSOCK_OP_SHUTDOWN, fwd);
                                s.flags =
                                    VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE | VIRTIO_VSOCK_SHUTDOWN_F_SEND;
                                self.ctl.push_back(s);
                            }
                        }
                        State::Connecting => {
                            k.state = State::Closed;
                            self.reply(c, VIRTIO_VSOCK_OP_RST);
                        }
                        _ => {}
                    }
                }
                Ok(vec![0])
            }
        }
    }

    fn host_conn(&self, port: u32) -> Result<HostConn, String> {
        Ok(match self.conn_named(port).map(|c| self.conns[c].state) {
            None => HostConn::None,
            Some(State::Connecting) => HostConn::Pending,
            Some(State::Open) => HostConn::Open,
            Some(State::Refused) => HostConn::Refused,
            Some(State::HostClosing | State::Closed) => HostConn::Closed,
        })
    }

    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<Vec<u16>, String> {
        match self.conn_named(port) {
            Some(c) if self.conns[c].state == State::Open => {
                self.conns[c].out.extend(data.iter().copied());
                Ok(vec![0])
            }
            _ => Err(format!("no open vsock connection named {port}")),
        }
    }

    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
        match self.conn_named(port) {
            Some(c) => Ok(std::mem::take(&mut self.conns[c].inbound)),
            None if self.listeners.contains(&port) => Ok(Vec::new()),
            None => Err(format!("no vsock connection named {port}")),
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

    fn pkt(op: u16, src_port: u32, dst_port: u32, data: &[u8]) -> Vec<u8> {
        let h = VsockHeader {
            src_cid: DEFAULT_GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: data.len() as u32,
            type_: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 16,
            fwd_cnt: 0,
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn send(v: &mut VsockBackend, ram: &mut GuestRam, bytes: &[u8], split: usize) {
        let split = split.min(bytes.len());
        ram.write(0x1000, &bytes[..split]).unwrap();
        ram.write(0x2000, &bytes[split..]).unwrap();
        let chain = [
            rd(0x1000, split as u32),
            rd(0x2000, (bytes.len() - split) as u32),
        ];
        assert_eq!(v.process(1, &chain, ram), Completion::Written(0));
    }

    fn recv(v: &mut VsockBackend, ram: &mut GuestRam) -> (VsockHeader, Vec<u8>) {
        assert!(v.ready_for(0));
        let Completion::Written(n) = v.process(0, &[wr(0x3000, 20), wr(0x4000, 200)], ram) else {
            panic!("rx not written");
        };
        let mut b = vec![0u8; 220];
        ram.read(0x3000, &mut b[..20]).unwrap();
        ram.read(0x4000, &mut b[20..]).unwrap();
        let h = VsockHeader::from_bytes(b[..44].try_into().unwrap());
        assert_eq!(n as usize, 44 + h.len as usize);
        (h, b[44..44 + h.len as usize].to_vec())
    }

    #[test]
    fn header_round_trips() {
        let h = VsockHeader {
            src_cid: 1,
            dst_cid: 2,
            src_port: 3,
            dst_port: 4,
            len: 5,
            type_: 6,
            op: 7,
            flags: 8,
            buf_alloc: 9,
            fwd_cnt: 10,
        };
        assert_eq!(VsockHeader::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn request_to_listener_gets_response_else_rst() {
        let mut ram = ram();
        let mut v = VsockBackend::default();
        send(
            &mut v,
            &mut ram,
            &pkt(VIRTIO_VSOCK_OP_REQUEST, 1000, 80, &[]),
            7,
        );
        let (h, _) = recv(&mut v, &mut ram);
        assert_eq!((h.op, h.src_cid, h.dst_cid), (VIRTIO_VSOCK_OP_RST, 2, 3));
        v.host_op(HostOp::Listen { port: 80 }).unwrap();
        send(
            &mut v,
            &mut ram,
            &pkt(VIRTIO_VSOCK_OP_REQUEST, 1000, 80, &[]),
            44,
        );
        let (h, _) = recv(&mut v, &mut ram);
        assert_eq!(
            (h.op, h.src_port, h.dst_port),
            (VIRTIO_VSOCK_OP_RESPONSE, 80, 1000)
        );
        assert_eq!(v.host_conn(80).unwrap(), HostConn::Open);
        send(
            &mut v,
            &mut ram,
            &pkt(VIRTIO_VSOCK_OP_RW, 1000, 80, b"hello"),
            3,
        );
        assert_eq!(v.host_take(80).unwrap(), vec![b"hello".to_vec()]);
    }

    #[test]
    fn host_data_respects_the_driver_credit() {
        let mut ram = ram();
        let mut v = VsockBackend::default();
        v.host_op(HostOp::Listen { port: 80 }).unwrap();
        send(
            &mut v,
            &mut ram,
            &pkt(VIRTIO_VSOCK_OP_REQUEST, 1000, 80, &[]),
            44,
        );
        recv(&mut v, &mut ram);
        v.host_send(80, &[0x55; 40]).unwrap();
        let (h, d) = recv(&mut v, &mut ram);
        assert_eq!((h.op, h.len, d.len()), (VIRTIO_VSOCK_OP_RW, 16, 16));
        assert!(!v.ready_for(0));
        // The driver forwarded 16 bytes: 16 more may come.
        let mut up = pkt(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 1000, 80, &[]);
        up[40..44].copy_from_slice(&16u32.to_le_bytes());
        send(&mut v, &mut ram, &up, 44);
        let (h, _) = recv(&mut v, &mut ram);
        assert_eq!(h.len, 16);
    }

    #[test]
    fn host_connect_and_refusal() {
        let mut ram = ram();
        let mut v = VsockBackend::default();
        v.host_op(HostOp::Connect { port: 5000 }).unwrap();
        assert_eq!(v.host_conn(5000).unwrap(), HostConn::Pending);
        let (h, _) = recv(&mut v, &mut ram);
        assert_eq!((h.op, h.dst_port), (VIRTIO_VSOCK_OP_REQUEST, 5000));
        send(
            &mut v,
            &mut ram,
            &pkt(VIRTIO_VSOCK_OP_RST, 5000, h.src_port, &[]),
            44,
        );
        assert_eq!(v.host_conn(5000).unwrap(), HostConn::Refused);
    }

    #[test]
    fn transport_reset_on_cid_change() {
        let mut v = VsockBackend::default();
        v.host_config_changed(0, &7u64.to_le_bytes());
        assert!(v.ready_for(2));
        assert_eq!(v.take_wakeups(), vec![2]);
        let mut ram = ram();
        assert_eq!(
            v.process(2, &[wr(0x1000, 4)], &mut ram),
            Completion::Written(4)
        );
    }

    #[test]
    fn short_packets_and_odd_input_do_not_panic() {
        let mut ram = ram();
        let mut v = VsockBackend::default();
        assert_eq!(
            v.process(1, &[rd(0x1000, 10)], &mut ram),
            Completion::Written(0)
        );
        assert_eq!(
            v.process(0, &[wr(0x1000, 10)], &mut ram),
            Completion::Written(0)
        );
        assert_eq!(
            v.process(2, &[wr(0x1000, 2)], &mut ram),
            Completion::Written(0)
        );
        assert!(v.host_send(1, b"x").is_err());
        assert!(v.host_take(1).is_err());
        v.host_op(HostOp::Close { port: 9 }).unwrap();
    }
}
