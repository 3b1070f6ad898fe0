//! Socket-device steps (virtio-vsock, VIRTIO 1.3 §5.10): packets built from header fields on
//! the tx queue (`vsock_send`), packets taken from the rx queue and matched field by field
//! (`vsock_expect`), stream payload joined per connection (`vsock_expect_data`), and the host
//! side through the target's connection API (`host_op`, `expect_host_conn`).
//!
//! The steps use only the [`Target`](crate::target::Target) trait (registers, guest memory,
//! `host_op`/`host_conn`/`host_send`/`host_take`), so they run unchanged on out-of-process
//! targets. They assume nothing the spec leaves to the device: the host port of a connection
//! the host opens is whatever the device chose (saved with `save_src_port`), any `buf_alloc`
//! the device states is accepted, unprompted CREDIT_UPDATE and CREDIT_REQUEST packets and packets
//! with op 0 are noted and passed over, and stream
//! data may arrive split into RW packets of any size.
//!
//! Every packet taken is checked against the device rules that hold for all packets: a
//! complete header whose `len` payload bytes were written (VSOCK-DEV-08), the host's CID as
//! source and `guest_cid` as destination with the stream type (VSOCK-DEV-19), RW payload
//! within the credit the driver advertised (VSOCK-DEV-10), and a `fwd_cnt` that never counts
//! more bytes than the driver sent on the connection (VSOCK-DEV-11).

use super::{hex, Exec, Stop, R};
use crate::case::{Buf, Grade, HostAction, HostState, Num, Op, VarNum};
use crate::outcome::Severity;
use crate::target::{NONE_WAIT, POLL_INTERVAL, USED_WAIT};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use virtio_reference_device::regs::CONFIG;
use virtio_reference_device::{HostConn, HostOp, VsockHeader};

/// Size of `struct virtio_vsock_hdr` in bytes (§5.10.6).
const HDR_LEN: usize = 44;
/// The host's well-known CID (§5.10.4).
const HOST_CID: u64 = 2;
/// `type` of stream packets.
const TYPE_STREAM: u16 = 1;
/// `op` values the steps treat specially.
const OP_REQUEST: u16 = 1;
const OP_RST: u16 = 3;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
/// `op` 0 (VIRTIO_VSOCK_OP_INVALID): the spec gives it no meaning.
const OP_INVALID: u16 = 0;
/// `buf_alloc` a driver port advertises until a step gives another.
const DEFAULT_BUF_ALLOC: u32 = 64 << 10;
/// Size of an rx buffer when `vsock_rx` names none.
const DEFAULT_RX_BUFFER: u32 = 4096;

fn op_name(op: u16) -> String {
    match op {
        0 => "INVALID".into(),
        1 => "REQUEST".into(),
        2 => "RESPONSE".into(),
        3 => "RST".into(),
        4 => "SHUTDOWN".into(),
        5 => "RW".into(),
        6 => "CREDIT_UPDATE".into(),
        7 => "CREDIT_REQUEST".into(),
        n => format!("op {n}"),
    }
}

fn describe(h: &VsockHeader) -> String {
    format!(
        "{} {}:{} -> {}:{} len {} type {} flags {:#x} buf_alloc {} fwd_cnt {}",
        op_name(h.op),
        h.src_cid,
        h.src_port,
        h.dst_cid,
        h.dst_port,
        h.len,
        h.type_,
        h.flags,
        h.buf_alloc,
        h.fwd_cnt
    )
}

/// What the harness, as the driver, knows of one connection, named by the driver's port.
#[derive(Debug, Default)]
struct ConnView {
    /// The largest `buf_alloc` this port advertised since the connection began.
    buf_alloc: u32,
    /// The `fwd_cnt` this port last advertised.
    fwd_cnt: u32,
    /// Whether the port advertised anything yet.
    told: bool,
    /// RW payload bytes the device sent to this port (the driver's received count).
    received: u32,
    /// RW payload bytes the driver sent from this port.
    sent: u32,
    /// RW payload received and not yet matched by `vsock_expect_data`.
    data: Vec<u8>,
}

/// What the harness remembers of the socket device's traffic since the last reset.
#[derive(Debug, Default)]
pub(super) struct VsockState {
    /// The rx queue and descriptor sizes of the buffers `vsock_rx` posted (for refills).
    rx_layout: Option<(u16, Vec<u32>)>,
    /// Per driver port.
    conns: BTreeMap<u32, ConnView>,
    /// Non-RW packets taken from the rx queue and not yet matched by `vsock_expect`.
    backlog: VecDeque<VsockHeader>,
    /// Descriptors of each tx chain `vsock_send` posted, by (queue, head).
    tx_descs: BTreeMap<(u16, u16), usize>,
}

impl Exec<'_> {
    /// `guest_cid` as the device reports it now (le64 at configuration offset 0).
    fn guest_cid(&mut self) -> R<u64> {
        let mut b = [0u8; 8];
        self.t.read(CONFIG, &mut b[..4])?;
        let mut hi = [0u8; 4];
        self.t.read(CONFIG + 4, &mut hi)?;
        b[4..].copy_from_slice(&hi);
        Ok(u64::from_le_bytes(b))
    }

    fn resolve(&mut self, v: &VarNum) -> R<u64> {
        match v {
            VarNum::Num(n) => Ok(n.0),
            VarNum::Var(name) => self.vars.get(name).copied().ok_or_else(|| {
                Stop::Case(format!(
                    "variable `${name}` is used before any step saves it"
                ))
            }),
        }
    }

    /// Posts one rx buffer of the layout `split` on `queue`, without kicking.
    fn vsock_post_rx(&mut self, queue: u16, split: &[u32]) -> R {
        let chain: Vec<Buf> = split
            .iter()
            .map(|&l| Buf {
                len: Num(u64::from(l)),
                write: true,
                // Zeroed, so a buffer the device claims to have filled but left alone shows.
                fill: Some(0),
                ..Buf::default()
            })
            .collect();
        self.post(queue, &chain, false, None, None, None)
    }

    /// `vsock_rx`: posts `count` rx buffers of the layout `split` and kicks.
    pub(super) fn vsock_rx(&mut self, queue: u16, count: u16, split: Option<&[u32]>) -> R {
        let split = split
            .filter(|s| !s.is_empty())
            .map(<[u32]>::to_vec)
            .unwrap_or_else(|| vec![DEFAULT_RX_BUFFER]);
        for _ in 0..count {
            self.vsock_post_rx(queue, &split)?;
        }
        self.vsock.rx_layout = Some((queue, split));
        self.notify(u32::from(queue))
    }

    /// `vsock_send`: one packet from the step's fields, framed as `split` says.
    pub(super) fn vsock_send(&mut self, op: &Op) -> R {
        let Op::VsockSend {
            queue,
            packet,
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            len,
            type_,
            flags,
            buf_alloc,
            fwd_cnt,
            data,
            split,
        } = op
        else {
            return Ok(());
        };
        let src_cid = match src_cid {
            Some(v) => self.resolve(v)?,
            None => self.guest_cid()?,
        };
        let dst_cid = match dst_cid {
            Some(v) => self.resolve(v)?,
            None => HOST_CID,
        };
        let src_port = self.resolve(src_port)? as u32;
        let dst_port = self.resolve(dst_port)? as u32;
        let payload = data.as_ref().map(|d| d.0.clone()).unwrap_or_default();
        if packet.0 == OP_REQUEST {
            // A new connection from this port starts its counts afresh.
            self.vsock.conns.remove(&src_port);
        }
        let view = self.vsock.conns.entry(src_port).or_default();
        let buf_alloc = buf_alloc.map_or(
            if view.told {
                view.buf_alloc
            } else {
                DEFAULT_BUF_ALLOC
            },
            |n| n.0 as u32,
        );
        let fwd_cnt = fwd_cnt.map_or(view.received, |n| n.0 as u32);
        view.buf_alloc = if view.told {
            view.buf_alloc.max(buf_alloc)
        } else {
            buf_alloc
        };
        view.fwd_cnt = fwd_cnt;
        view.told = true;
        if packet.0 == OP_RW {
            view.sent = view.sent.wrapping_add(payload.len() as u32);
        }
        let h = VsockHeader {
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            len: len.map_or(payload.len() as u32, |n| n.0 as u32),
            type_: type_.map_or(TYPE_STREAM, |n| n.0 as u16),
            op: packet.0,
            flags: flags.map_or(0, |n| n.0 as u32),
            buf_alloc,
            fwd_cnt,
        };
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        self.observe(format!("vsock q{queue} sent"), describe(&h));
        let mut chain = Vec::new();
        let mut at = 0usize;
        for &p in split.as_deref().unwrap_or(&[]) {
            let end = (at + p as usize).min(bytes.len());
            chain.push(Buf {
                len: Num((end - at) as u64),
                data: Some(crate::case::Hex(bytes[at..end].to_vec())),
                ..Buf::default()
            });
            at = end;
        }
        if at < bytes.len() || chain.is_empty() {
            chain.push(Buf {
                len: Num((bytes.len() - at) as u64),
                data: Some(crate::case::Hex(bytes[at..].to_vec())),
                ..Buf::default()
            });
        }
        self.make_room(*queue, chain.len())?;
        self.post(*queue, &chain, false, None, None, None)?;
        if let Some(p) = self.q(*queue)?.outstanding.last() {
            let head = p.head;
            self.vsock.tx_descs.insert((*queue, head), chain.len());
        }
        self.notify(u32::from(*queue))
    }

    /// Before `need` more descriptors go on tx queue `queue`: when the chains still
    /// outstanding there would leave too few free entries, takes back what the device used
    /// (waiting for it up to the used-ring wait). A case that checks tx completions itself
    /// does so before the queue fills.
    fn make_room(&mut self, queue: u16, need: usize) -> R {
        let size = usize::from(self.q(queue)?.dq.size);
        let start = Instant::now();
        loop {
            let heads: Vec<u16> = self.q(queue)?.outstanding.iter().map(|p| p.head).collect();
            self.vsock
                .tx_descs
                .retain(|&(q, h), _| q != queue || heads.contains(&h));
            let busy: usize = heads
                .iter()
                .map(|h| self.vsock.tx_descs.get(&(queue, *h)).copied().unwrap_or(1))
                .sum();
            if busy + need <= size || heads.is_empty() {
                return Ok(());
            }
            self.t.settle()?;
            for (id, l) in self.take_used(queue)? {
                self.checked_used(queue, id, l)?;
            }
            if start.elapsed() >= USED_WAIT || self.t.synchronous() {
                return Ok(());
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Takes the rx buffers the device used on `queue`, checks every packet in them, files
    /// RW payload under its connection and every other packet in the backlog, and posts one
    /// fresh rx buffer per buffer taken. Returns how many buffers were taken.
    fn vsock_pump(&mut self, queue: u16) -> R<usize> {
        self.t.settle()?;
        let elems = self.take_used(queue)?;
        let taken = elems.len();
        if taken == 0 {
            return Ok(0);
        }
        let guest_cid = self.guest_cid()?;
        for (id, l) in elems {
            let Some(p) = self.checked_used(queue, id, l)? else {
                continue;
            };
            let mut left = u64::from(l).min(p.writable_total()).min(1 << 20);
            let mut bytes = Vec::new();
            for &(a, wl) in &p.writable {
                if left == 0 {
                    break;
                }
                let n = u64::from(wl).min(left);
                let mut b = vec![0u8; n as usize];
                self.t.mem_read(a, &mut b)?;
                bytes.extend_from_slice(&b);
                left -= n;
            }
            self.vsock_packet(queue, &bytes, guest_cid);
        }
        if let Some((q, split)) = self.vsock.rx_layout.clone() {
            if q == queue {
                for _ in 0..taken {
                    self.vsock_post_rx(queue, &split)?;
                }
                self.notify(u32::from(queue))?;
            }
        }
        Ok(taken)
    }

    /// Checks one packet the device wrote (`bytes`: the used length of its buffer) and files
    /// it.
    fn vsock_packet(&mut self, queue: u16, bytes: &[u8], guest_cid: u64) {
        let Ok(hdr) = <[u8; HDR_LEN]>::try_from(bytes.get(..HDR_LEN).unwrap_or(&[])) else {
            self.observe(format!("vsock q{queue} packet"), hex(bytes));
            self.check(
                None,
                &["VSOCK-DEV-08"],
                false,
                Severity::Low,
                || format!("a packet of at least its {HDR_LEN}-byte header"),
                || format!("{} byte(s) used", bytes.len()),
            );
            return;
        };
        if hdr.iter().all(|&b| b == 0) {
            // Not a packet: the buffer was posted zeroed and no header was written into it.
            self.observe(format!("vsock q{queue} packet"), hex(bytes));
            self.check(
                None,
                &["VQ-DEV-15"],
                false,
                Severity::Low,
                || "a used rx buffer holds the packet its used len counts".into(),
                || {
                    format!(
                        "used len {} but the header bytes are untouched (zero)",
                        bytes.len()
                    )
                },
            );
            return;
        }
        let h = VsockHeader::from_bytes(&hdr);
        self.observe(format!("vsock q{queue} packet"), describe(&h));
        let payload = &bytes[HDR_LEN..];
        self.check(
            None,
            &["VSOCK-DEV-08"],
            payload.len() as u64 >= u64::from(h.len),
            Severity::Low,
            || format!("header and the {} payload byte(s) `len` counts", h.len),
            || format!("{} payload byte(s) written", payload.len()),
        );
        self.check(
            None,
            &["VSOCK-DEV-19"],
            h.src_cid == HOST_CID
                && h.dst_cid == guest_cid
                && (h.type_ == TYPE_STREAM || h.op == OP_RST),
            Severity::Low,
            || format!("src_cid {HOST_CID} (host), dst_cid {guest_cid} (guest_cid), type 1 (an RST may echo the type it answers)"),
            || describe(&h),
        );
        let payload = payload[..payload.len().min(h.len as usize)].to_vec();
        if h.op == OP_REQUEST {
            // The host opens a connection to this port: counts start afresh.
            self.vsock.conns.remove(&h.dst_port);
        }
        let view = self.vsock.conns.entry(h.dst_port).or_default();
        let sent = view.sent;
        let fwd_ok = h.fwd_cnt <= sent;
        if h.op == OP_RW {
            let before = view.received;
            view.received = view.received.wrapping_add(payload.len() as u32);
            view.data.extend_from_slice(&payload);
            let (told, buf_alloc, fwd_cnt) = (view.told, view.buf_alloc, view.fwd_cnt);
            let in_flight = view.received.wrapping_sub(fwd_cnt);
            self.check(
                None,
                &["VSOCK-DEV-10"],
                told && in_flight <= buf_alloc,
                Severity::Low,
                || {
                    if told {
                        format!(
                            "RW payload within the driver's free space: buf_alloc {buf_alloc} - (bytes sent {before} - fwd_cnt {fwd_cnt})"
                        )
                    } else {
                        "no RW before the driver advertised buffer space on the connection".into()
                    }
                },
                || format!("{} byte(s) more: {in_flight} in flight", payload.len()),
            );
        } else {
            self.vsock.backlog.push_back(h);
        }
        self.check(
            None,
            &["VSOCK-DEV-11"],
            fwd_ok,
            Severity::Low,
            || format!("fwd_cnt at most the {sent} byte(s) the driver sent on the connection"),
            || describe(&h),
        );
    }

    /// Pumps `queue` until `done` holds, the wait is over, or (synchronous targets) once.
    fn vsock_wait(
        &mut self,
        queue: u16,
        wait: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> R {
        let start = Instant::now();
        let mut rounds = 0u32;
        loop {
            let taken = self.vsock_pump(queue)?;
            if done(self) || start.elapsed() >= wait {
                return Ok(());
            }
            if self.t.synchronous() {
                // All work is done inside the calls: only the buffers just refilled can
                // bring more.
                rounds += 1;
                if taken == 0 || rounds >= 4096 {
                    return Ok(());
                }
                continue;
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// `vsock_expect`: the next packet (other than an unprompted CREDIT_UPDATE or
    /// CREDIT_REQUEST, or one with op 0) matches.
    pub(super) fn vsock_expect(&mut self, op: &Op) -> R {
        let Op::VsockExpect {
            queue,
            packet,
            packet_in,
            src_port,
            dst_port,
            flags,
            len,
            data,
            save_src_port,
            none,
            skip_unmatched,
            grade,
        } = op
        else {
            return Ok(());
        };
        let mut ops: Vec<u16> = packet_in
            .as_ref()
            .map(|v| v.iter().map(|o| o.0).collect())
            .unwrap_or_default();
        if let Some(p) = packet {
            ops.push(p.0);
        }
        let src_port = match src_port {
            Some(p) => Some(self.resolve(p)? as u32),
            None => None,
        };
        let dst_port = match dst_port {
            Some(p) => Some(self.resolve(p)? as u32),
            None => None,
        };
        let flags = flags.map(|f| f.0);
        let len = len.map(|l| l.0);
        // Control packets carry no payload: `data` can only ask for an empty one.
        let empty = data.as_ref().map(|d| d.0.is_empty());
        let matches = |h: &VsockHeader| {
            (ops.is_empty() || ops.contains(&h.op))
                && src_port.is_none_or(|p| h.src_port == p)
                && dst_port.is_none_or(|p| h.dst_port == p)
                && flags.is_none_or(|f| u64::from(h.flags) == f)
                && len.is_none_or(|l| u64::from(h.len) == l)
                && empty.is_none_or(|e| e && h.len == 0)
        };
        let mut want = Vec::new();
        if !ops.is_empty() {
            want.push(
                ops.iter()
                    .map(|&o| op_name(o))
                    .collect::<Vec<_>>()
                    .join(" or "),
            );
        }
        if let Some(p) = src_port {
            want.push(format!("src_port {p}"));
        }
        if let Some(p) = dst_port {
            want.push(format!("dst_port {p}"));
        }
        if let Some(f) = flags {
            want.push(format!("flags {f:#x}"));
        }
        if let Some(l) = len {
            want.push(format!("len {l}"));
        }
        if empty.is_some() {
            want.push("no payload".into());
        }
        // Packets the device may send whenever it likes (§5.10.6.3: CREDIT_UPDATE, and
        // CREDIT_REQUEST when it wants the driver's credit) and packets with op 0, to which the
        // spec gives no meaning, are noted and passed over unless the step asks for them.
        let unprompted = |op: u16| {
            matches!(op, OP_CREDIT_UPDATE | OP_CREDIT_REQUEST | OP_INVALID) && !ops.contains(&op)
        };
        let candidate = |s: &Self| {
            s.vsock
                .backlog
                .iter()
                .position(|h| !unprompted(h.op) && (!*skip_unmatched || matches(h)))
        };
        let wait = if *none { NONE_WAIT } else { USED_WAIT };
        self.vsock_wait(*queue, wait, |s| candidate(s).is_some())?;
        let skipped: Vec<String> = match candidate(self) {
            Some(i) => self.vsock.backlog.iter().take(i).map(describe).collect(),
            None => Vec::new(),
        };
        if !skipped.is_empty() {
            self.observe("vsock skipped", skipped.join("; "));
        }
        // With `skip_unmatched` the packets passed over stay for later steps (replies on
        // different connections come in any order); otherwise everything up to the match is
        // consumed.
        let found = candidate(self).map(|i| {
            let h = self.vsock.backlog[i];
            if *skip_unmatched {
                self.vsock.backlog.remove(i);
            } else {
                self.vsock.backlog.drain(..=i);
            }
            h
        });
        if *none {
            self.check(
                Some(grade),
                &[],
                found.is_none(),
                Severity::Low,
                || {
                    format!(
                        "no packet{}",
                        if *skip_unmatched {
                            format!(" with {}", want.join(", "))
                        } else {
                            String::new()
                        }
                    )
                },
                || found.map(|h| describe(&h)).unwrap_or_default(),
            );
            return Ok(());
        }
        let Some(h) = found else {
            self.check(
                Some(grade),
                &[],
                false,
                Severity::Low,
                || format!("a packet on the rx queue: {}", want.join(", ")),
                || "no packet".into(),
            );
            return Ok(());
        };
        self.check(
            Some(grade),
            &[],
            matches(&h),
            Severity::Low,
            || want.join(", "),
            || describe(&h),
        );
        if let Some(var) = save_src_port {
            self.vars.insert(var.clone(), u64::from(h.src_port));
        }
        Ok(())
    }

    /// `vsock_expect_data`: the stream bytes the device sent to driver port `port` begin
    /// with `want`.
    pub(super) fn vsock_expect_data(&mut self, queue: u16, port: u32, want: &[u8], g: &Grade) -> R {
        let have = |s: &Self| s.vsock.conns.get(&port).map_or(0, |c| c.data.len());
        self.vsock_wait(queue, USED_WAIT, |s| have(s) >= want.len())?;
        let got = self
            .vsock
            .conns
            .get(&port)
            .map(|c| c.data.clone())
            .unwrap_or_default();
        let n = got.len().min(want.len());
        self.observe(format!("vsock data for port {port}"), hex(&got[..n]));
        let ok = got.starts_with(want);
        self.check(
            Some(g),
            &[],
            ok,
            Severity::Low,
            || format!("stream data to port {port}: {}", hex(want)),
            || {
                if want.starts_with(&got) {
                    format!("{} ({} byte(s) missing)", hex(&got), want.len() - got.len())
                } else {
                    hex(&got)
                }
            },
        );
        if let Some(c) = self.vsock.conns.get_mut(&port) {
            c.data.drain(..n);
        }
        Ok(())
    }

    /// `host_op`: the host side listens, connects or closes.
    pub(super) fn host_op(&mut self, action: HostAction, port: u32) -> R {
        let op = match action {
            HostAction::Listen => HostOp::Listen { port },
            HostAction::Connect => HostOp::Connect { port },
            HostAction::Close => HostOp::Close { port },
        };
        self.observe("host_op", format!("{op:?}"));
        Ok(self.t.host_op(op)?)
    }

    /// `expect_host_conn`: the host side sees the connection named `port` in `state`.
    pub(super) fn expect_host_conn(&mut self, port: u32, state: HostState, g: &Grade) -> R {
        let want = match state {
            HostState::None => HostConn::None,
            HostState::Pending => HostConn::Pending,
            HostState::Open => HostConn::Open,
            HostState::Refused => HostConn::Refused,
            HostState::Closed => HostConn::Closed,
        };
        let start = Instant::now();
        let got = loop {
            self.t.settle()?;
            let got = self.t.host_conn(port)?;
            if got == want || start.elapsed() >= USED_WAIT || self.t.synchronous() {
                break got;
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        };
        self.observe(format!("host connection {port}"), format!("{got:?}"));
        self.check(
            Some(g),
            &[],
            got == want,
            Severity::Low,
            || format!("host connection {port} {want:?}"),
            || format!("{got:?}"),
        );
        Ok(())
    }
}
