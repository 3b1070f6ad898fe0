//! Fuzz target `vsock_packets`: the reference socket device's backend (VIRTIO §5.10) driven by
//! a stream of driver packets (any header fields, payload and split into descriptors), rx
//! buffers of any layout, and host-side operations (listen, connect, close, send).
//!
//! Oracles, checked on every packet the device writes into an rx buffer:
//! - no panic and bounded work (the backend is called once per operation);
//! - the packet fits the buffer and its used length is the header plus `len` payload bytes
//!   (VSOCK-DEV-08);
//! - src_cid 2 and dst_cid `guest_cid` (VSOCK-DEV-19);
//! - RW payload within credit the driver advertised on that connection (VSOCK-DEV-10). The
//!   device may send up to buf_alloc - (bytes sent - fwd_cnt), i.e. up to stream offset
//!   fwd_cnt + buf_alloc. The oracle allows the highest such offset of any driver packet
//!   on the connection: a device may take credit from a packet it then rejects (wrong CID or
//!   type), may have queued data under a larger credit before a smaller one arrived, and a
//!   driver may claim a fwd_cnt above what it received; none of that breaks the rule, so only
//!   payload past every offset the driver ever allowed on those ports is a finding (a REQUEST
//!   restarts the byte count, not the allowance: lenient on reused ports, never wrong).
//! - with a mutant pinned, the rx packets match the unmodified reference's
//!   ([`vsock_packets_on`]).
//!
//! The input decodes leniently (missing bytes read as zeros), at most [`MAX_OPS`] operations.
//! [`seeds`] writes the committed seed inputs (`corpora/vsock_packets/seed-*`) from
//! structured streams with [`encode_vsock_packets`], the inverse of [`decode_vsock_packets`].

use super::encode::{variant, Encode};
use super::Finding;
use arbitrary::{Arbitrary, Unstructured};
use std::collections::BTreeMap;
use virtio_reference_device::devices::vsock::{
    FIRST_HOST_PORT, HOST_CID, VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RW, VSOCK_HDR_LEN,
};
use virtio_reference_device::regs::VIRTQ_DESC_F_WRITE;
use virtio_reference_device::{
    Completion, Descriptor, DeviceBackend, GuestRam, HostOp, Mutant, VsockBackend, VsockHeader,
};

const TARGET: &str = "vsock_packets";
/// Most operations decoded from one input.
pub const MAX_OPS: usize = 256;
/// The driver's CID in the fuzzed device.
const GUEST_CID: u64 = 3;
/// Ports the fuzzer picks from (driver and host side), so packets meet connections.
const PORTS: [u32; 6] = [1000, 1001, 5201, 5202, FIRST_HOST_PORT, FIRST_HOST_PORT + 1];

/// One decoded operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum VsockStep {
    /// The driver sends a packet on the tx queue.
    Tx {
        /// Index into the port table for src_port / dst_port.
        src: u8,
        /// Index into the port table for dst_port.
        dst: u8,
        /// 0..=7 a valid op, else raw.
        op: u8,
        /// 0 the stream type, else raw.
        type_: u8,
        /// SHUTDOWN flags and others.
        flags: u8,
        /// Advertised buffer space.
        buf_alloc: u16,
        /// Advertised forwarded count (added to the bytes received).
        fwd_extra: u8,
        /// Payload length.
        len: u8,
        /// Header split point (0: none).
        split: u8,
        /// Use a wrong src_cid (1) or dst_cid (2).
        bad_cid: u8,
    },
    /// The driver offers one rx buffer of `a` + `b` bytes in two descriptors.
    Rx {
        /// First descriptor length.
        a: u8,
        /// Second descriptor length.
        b: u8,
    },
    /// Host listens on a port.
    Listen(u8),
    /// Host connects to a driver port.
    Connect(u8),
    /// Host closes a connection.
    Close(u8),
    /// Host sends `n` bytes on a connection.
    HostSend(u8, u8),
}

fn port(i: u8) -> u32 {
    PORTS[usize::from(i) % PORTS.len()]
}

/// The operations an input decodes to.
pub fn decode_vsock_packets(data: &[u8]) -> Vec<VsockStep> {
    let mut u = Unstructured::new(data);
    let mut steps = Vec::new();
    while !u.is_empty() && steps.len() < MAX_OPS {
        match VsockStep::arbitrary(&mut u) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    steps
}

/// Number of [`VsockStep`] variants (the derived decoder's selector range).
const STEP_KINDS: u32 = 6;

impl VsockStep {
    /// Appends the bytes `arbitrary` decodes back into this step.
    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            VsockStep::Tx {
                src,
                dst,
                op,
                type_,
                flags,
                buf_alloc,
                fwd_extra,
                len,
                split,
                bad_cid,
            } => {
                variant(out, 0, STEP_KINDS);
                [src, dst, op, type_, flags].encode(out);
                buf_alloc.encode(out);
                [fwd_extra, len, split, bad_cid].encode(out);
            }
            VsockStep::Rx { a, b } => {
                variant(out, 1, STEP_KINDS);
                [a, b].encode(out);
            }
            VsockStep::Listen(p) => {
                variant(out, 2, STEP_KINDS);
                p.encode(out);
            }
            VsockStep::Connect(p) => {
                variant(out, 3, STEP_KINDS);
                p.encode(out);
            }
            VsockStep::Close(p) => {
                variant(out, 4, STEP_KINDS);
                p.encode(out);
            }
            VsockStep::HostSend(p, n) => {
                variant(out, 5, STEP_KINDS);
                [p, n].encode(out);
            }
        }
    }
}

/// The bytes [`decode_vsock_packets`] turns back into `steps` (for seeds).
pub fn encode_vsock_packets(steps: &[VsockStep]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in steps {
        s.encode(&mut out);
    }
    out
}

/// A driver packet for the seeds: every field of [`VsockStep::Tx`], zero unless set.
#[derive(Clone, Copy, Default)]
struct Pkt {
    src: u8,
    dst: u8,
    op: u8,
    type_: u8,
    flags: u8,
    buf_alloc: u16,
    len: u8,
    split: u8,
    bad_cid: u8,
}

impl Pkt {
    /// A stream packet from port index `src` to port index `dst` advertising `buf_alloc`.
    fn new(src: u8, dst: u8, op: u16, buf_alloc: u16) -> Self {
        Pkt {
            src,
            dst,
            op: op as u8,
            buf_alloc,
            ..Pkt::default()
        }
    }
    fn len(self, len: u8) -> Self {
        Pkt { len, ..self }
    }
    fn split(self, split: u8) -> Self {
        Pkt { split, ..self }
    }
    fn flags(self, flags: u8) -> Self {
        Pkt { flags, ..self }
    }
    fn type_(self, type_: u8) -> Self {
        Pkt { type_, ..self }
    }
    fn bad_cid(self, bad_cid: u8) -> Self {
        Pkt { bad_cid, ..self }
    }
    fn tx(self) -> VsockStep {
        VsockStep::Tx {
            src: self.src,
            dst: self.dst,
            op: self.op,
            type_: self.type_,
            flags: self.flags,
            buf_alloc: self.buf_alloc,
            fwd_extra: 0,
            len: self.len,
            split: self.split,
            bad_cid: self.bad_cid,
        }
    }
}

/// The seed streams, by name (files `seed-<name>`).
///
/// Port indices ([`PORTS`]): 0 and 1 are driver ports (1000, 1001), 2 and 3 host listening
/// ports (5201, 5202), 4 and 5 the host ports the device picks for the host's first two
/// connections (49152, 49153). A driver CREDIT_UPDATE or CREDIT_REQUEST carries
/// `fwd_cnt` = every payload byte it received (`fwd_extra` 0), so a seed frees space by
/// sending one.
fn seed_streams() -> Vec<(&'static str, Vec<VsockStep>)> {
    use virtio_reference_device::devices::vsock::{
        VIRTIO_VSOCK_OP_CREDIT_REQUEST as CREDIT_REQUEST,
        VIRTIO_VSOCK_OP_CREDIT_UPDATE as CREDIT_UPDATE, VIRTIO_VSOCK_OP_INVALID as INVALID,
        VIRTIO_VSOCK_OP_RESPONSE as RESPONSE, VIRTIO_VSOCK_OP_RST as RST,
        VIRTIO_VSOCK_OP_SHUTDOWN as SHUTDOWN,
    };
    use VsockStep::*;
    const REQUEST: u16 = VIRTIO_VSOCK_OP_REQUEST;
    const RW: u16 = VIRTIO_VSOCK_OP_RW;
    let p = Pkt::new;
    let hdr = Rx { a: 44, b: 0 };
    vec![
        (
            // The driver connects to a listening host port (§5.10.6.1); data both ways, the
            // host's RW packets cut by the rx buffer and by the driver's credit, which the
            // driver shrinks, asks about (CREDIT_REQUEST) and widens again (§5.10.6.3).
            "driver-connect",
            vec![
                Listen(2),
                p(0, 2, REQUEST, 256).tx(),
                hdr,
                p(0, 2, RW, 256).len(40).tx(),
                p(0, 2, RW, 256).len(200).tx(),
                HostSend(2, 200),
                Rx { a: 64, b: 10 },
                Rx { a: 44, b: 64 },
                p(0, 2, CREDIT_UPDATE, 256).tx(),
                p(0, 2, CREDIT_UPDATE, 16).tx(),
                HostSend(2, 100),
                Rx { a: 200, b: 0 },
                Rx { a: 200, b: 0 },
                p(0, 2, CREDIT_REQUEST, 16).tx(),
                hdr,
                Rx { a: 100, b: 0 },
                p(0, 2, CREDIT_UPDATE, 1024).tx(),
                Rx { a: 255, b: 10 },
            ],
        ),
        (
            // The host connects to a driver port; the driver accepts, receives within its
            // credit, sends, and answers the host's SHUTDOWN with its own (§5.10.6.5); a
            // second host connection is refused with RST.
            "host-connect",
            vec![
                Connect(1),
                hdr,
                p(1, 4, RESPONSE, 128).tx(),
                HostSend(1, 200),
                Rx { a: 100, b: 40 },
                Rx { a: 100, b: 40 },
                p(1, 4, CREDIT_UPDATE, 128).tx(),
                Rx { a: 100, b: 40 },
                p(1, 4, RW, 128).len(30).tx(),
                Close(1),
                hdr,
                p(1, 4, SHUTDOWN, 128).flags(3).tx(),
                hdr,
                Connect(0),
                hdr,
                p(0, 5, RST, 0).tx(),
                Rx { a: 100, b: 0 },
            ],
        ),
        (
            // RST for a REQUEST to no listener, cumulative SHUTDOWN hints ending in RST, RST
            // for packets of no connection, of an unknown type and to another CID, none for a
            // RST, nothing for a wrong source CID, an INVALID op aborting a connection, and a
            // host close that sends its queued data (within credit) before SHUTDOWN.
            "shutdown-rst",
            vec![
                p(1, 3, REQUEST, 64).tx(),
                hdr,
                Listen(3),
                p(1, 3, REQUEST, 64).tx(),
                hdr,
                p(1, 3, SHUTDOWN, 64).flags(1).tx(),
                HostSend(3, 10),
                p(1, 3, SHUTDOWN, 64).flags(2).tx(),
                hdr,
                p(1, 3, RW, 64).len(5).tx(),
                hdr,
                p(1, 3, RST, 64).tx(),
                Rx { a: 60, b: 0 },
                p(0, 3, REQUEST, 64).type_(2).tx(),
                hdr,
                p(0, 3, REQUEST, 64).bad_cid(2).tx(),
                hdr,
                p(0, 3, REQUEST, 64).bad_cid(1).tx(),
                Rx { a: 60, b: 0 },
                p(0, 3, REQUEST, 64).tx(),
                hdr,
                p(0, 3, INVALID, 64).tx(),
                hdr,
                Listen(2),
                p(0, 2, REQUEST, 8).tx(),
                hdr,
                HostSend(2, 20),
                Close(2),
                Rx { a: 44, b: 20 },
                p(0, 2, CREDIT_UPDATE, 8).tx(),
                Rx { a: 44, b: 20 },
                p(0, 2, CREDIT_UPDATE, 8).tx(),
                Rx { a: 44, b: 20 },
                hdr,
            ],
        ),
        (
            // Rx buffers of odd layouts (§2.7.4 framing): an empty first descriptor, the
            // header cut at 10 and at 43 bytes, a buffer with room for the header and one
            // word, buffers too small for a header (given back empty), a 1-byte first piece.
            "rx-layouts",
            vec![
                Connect(0),
                Rx { a: 0, b: 11 },
                p(0, 4, RESPONSE, 4096).tx(),
                HostSend(0, 255),
                Rx { a: 10, b: 9 },
                Rx { a: 43, b: 1 },
                Rx { a: 44, b: 1 },
                Rx { a: 20, b: 0 },
                Rx { a: 0, b: 0 },
                Rx { a: 1, b: 255 },
                Rx { a: 255, b: 255 },
            ],
        ),
        (
            // Driver packets whose header is split over two descriptors (at 1, 22, 30, 43
            // bytes), split exactly after it, inside the payload, and with an empty second
            // descriptor; a split CREDIT_UPDATE taking all credit away must hold the host's
            // data back.
            "tx-header-split",
            vec![
                Listen(2),
                p(0, 2, REQUEST, 512).split(1).tx(),
                hdr,
                p(0, 2, RW, 512).len(100).split(43).tx(),
                p(0, 2, RW, 512).len(100).split(44).tx(),
                p(0, 2, RW, 512).len(100).split(60).tx(),
                p(0, 2, RW, 512).len(20).split(64).tx(),
                p(0, 2, CREDIT_REQUEST, 512).split(22).tx(),
                hdr,
                p(0, 2, RW, 512).len(200).split(255).tx(),
                HostSend(2, 50),
                Rx { a: 100, b: 0 },
                p(0, 2, CREDIT_UPDATE, 0).split(30).tx(),
                HostSend(2, 10),
                Rx { a: 100, b: 0 },
                p(0, 2, SHUTDOWN, 0).flags(3).split(10).tx(),
                hdr,
            ],
        ),
    ]
}

/// The seed files of `vsock_packets`, as `(file name, bytes)` (written to
/// `corpora/vsock_packets/` and checked by `harness/tests/fuzz_replay.rs`).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    seed_streams()
        .into_iter()
        .map(|(n, steps)| (format!("seed-{n}"), encode_vsock_packets(&steps)))
        .collect()
}

/// The operations an input decodes to, one per line, numbered like a finding's `op`.
pub fn describe(data: &[u8]) -> String {
    let steps = decode_vsock_packets(data);
    if steps.is_empty() {
        return "(no operations)\n".to_string();
    }
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("#{i} {s:?}\n"))
        .collect()
}

/// Runs one input against the reference (or the pinned mutant).
pub fn vsock_packets(data: &[u8]) -> Result<(), Finding> {
    vsock_packets_on(data, super::pinned_mutant())
}

/// What the driver advertised on one connection (driver port, host port).
#[derive(Default)]
struct Credit {
    /// The highest stream offset (fwd_cnt + buf_alloc, bytes, modulo 2^32) any driver packet
    /// on the connection allowed; `None` before the first one.
    allowed_end: Option<u32>,
    /// The buf_alloc of the packet that set `allowed_end` (for the message).
    buf_alloc: u32,
    /// RW payload bytes the device delivered on the connection (modulo 2^32).
    received: u32,
}

/// Whether stream offset `a` lies after `b`, on counters that wrap at 2^32 (§5.10.6.3 keeps
/// them as free-running 32-bit counts).
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Credit {
    /// Takes in one driver packet's credit fields.
    fn advertise(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        let end = fwd_cnt.wrapping_add(buf_alloc);
        if self.allowed_end.is_none_or(|e| after(end, e)) {
            self.allowed_end = Some(end);
            self.buf_alloc = buf_alloc;
        }
    }
}

/// Runs one input against the reference socket backend with `mutant` injected.
///
/// With a mutant, the input also runs on the unmodified reference, and the packets the two
/// write into rx buffers (headers and lengths, in order) must agree: a difference is a
/// `divergence` finding, as in `diff_mmio`. A mutant models one bug, so whatever it changes
/// in what the driver sees comes from that bug; mutants that only leave out a reply (an RST
/// not sent, a CREDIT_UPDATE not given) are found this way, where the spec oracles above,
/// which judge each packet the device sends, see nothing. The unmodified reference never
/// takes this path, so `cargo fuzz run vsock_packets` pays nothing for it.
pub fn vsock_packets_on(data: &[u8], mutant: Option<Mutant>) -> Result<(), Finding> {
    let steps = decode_vsock_packets(data);
    let Some(m) = mutant else {
        return run_decoded(&steps, None);
    };
    let mut got = Vec::new();
    run_observed(&steps, Some(m), Some(&mut got))?;
    let mut want = Vec::new();
    if run_observed(&steps, None, Some(&mut want)).is_err() {
        // The reference's own finding is not the mutant's (the clean-run tests cover it).
        return Ok(());
    }
    let k = got.iter().zip(&want).take_while(|(g, w)| g == w).count();
    if k == got.len() && k == want.len() {
        return Ok(());
    }
    let show = |p: Option<&(VsockHeader, u8, usize)>| {
        p.map_or("no packet".to_string(), |(h, _, _)| {
            format!(
                "op {} {}:{} -> {}:{} len {} flags {:#x} buf_alloc {} fwd_cnt {}",
                h.op,
                h.src_cid,
                h.src_port,
                h.dst_cid,
                h.dst_port,
                h.len,
                h.flags,
                h.buf_alloc,
                h.fwd_cnt
            )
        })
    };
    let at = got
        .get(k)
        .or(want.get(k))
        .map_or(steps.len().saturating_sub(1), |p| p.2);
    Err(Finding::new(
        TARGET,
        "divergence",
        &[],
        format!(
            "rx packet {k}: the reference wrote {}; mutant:{} ({}) wrote {}",
            show(want.get(k)),
            m.name(),
            m.catalog_id(),
            show(got.get(k))
        ),
    )
    .at(at)
    .on(Some(m)))
}

/// Runs already-decoded operations against the reference socket backend with `mutant`
/// injected (the body of [`vsock_packets_on`]; tests build streams with it by hand).
pub fn run_decoded(steps: &[VsockStep], mutant: Option<Mutant>) -> Result<(), Finding> {
    run_observed(steps, mutant, None)
}

/// [`run_decoded`], also collecting into `seen` (when given) every packet the device wrote
/// into an rx buffer: its header, the rx buffer's first descriptor length and the index of
/// the operation that offered the buffer.
fn run_observed(
    steps: &[VsockStep],
    mutant: Option<Mutant>,
    mut seen: Option<&mut Vec<(VsockHeader, u8, usize)>>,
) -> Result<(), Finding> {
    let mut ram = GuestRam::anonymous(1 << 16)
        .map_err(|e| Finding::new(TARGET, "setup", &[], e.to_string()))?;
    let mut dev = VsockBackend::new(GUEST_CID);
    if let Some(m) = mutant {
        dev.set_mutant(m);
    }
    let mut credit: BTreeMap<(u32, u32), Credit> = BTreeMap::new();
    let fail = |i: usize, oracle: &'static str, req: &'static str, msg: String| {
        let mut f = Finding::new(TARGET, oracle, &[req], msg);
        f.op = Some(i);
        f.mutant = mutant.map(|m| m.name());
        f
    };
    for (i, s) in steps.iter().enumerate() {
        match *s {
            VsockStep::Tx {
                src,
                dst,
                op,
                type_,
                flags,
                buf_alloc,
                fwd_extra,
                len,
                split,
                bad_cid,
            } => {
                let (sp, dp) = (port(src), port(dst));
                let op = if op < 8 {
                    u16::from(op)
                } else {
                    u16::from(op) * 31
                };
                let c = credit.entry((sp, dp)).or_default();
                if op == VIRTIO_VSOCK_OP_REQUEST {
                    // Maybe a new connection from the driver: the counts start again. Earlier
                    // advertisements stay allowed (the device may still hold a connection on
                    // these ports and ignore this REQUEST).
                    c.received = 0;
                }
                let fwd_cnt = c.received.wrapping_add(u32::from(fwd_extra) & 0x3);
                c.advertise(u32::from(buf_alloc), fwd_cnt);
                let h = VsockHeader {
                    src_cid: if bad_cid == 1 { 99 } else { GUEST_CID },
                    dst_cid: if bad_cid == 2 { 77 } else { HOST_CID },
                    src_port: sp,
                    dst_port: dp,
                    len: u32::from(len),
                    type_: if type_ == 0 { 1 } else { u16::from(type_) },
                    op,
                    flags: u32::from(flags),
                    buf_alloc: u32::from(buf_alloc),
                    fwd_cnt,
                };
                let mut bytes = h.to_bytes().to_vec();
                bytes.extend((0..len).map(|b| b ^ 0xa5));
                let cut = usize::from(split).min(bytes.len());
                ram.write(0x1000, &bytes[..cut]).ok();
                ram.write(0x3000, &bytes[cut..]).ok();
                let mut chain = Vec::new();
                if cut > 0 {
                    chain.push(Descriptor {
                        addr: 0x1000,
                        len: cut as u32,
                        flags: 0,
                        next: 0,
                    });
                }
                chain.push(Descriptor {
                    addr: 0x3000,
                    len: (bytes.len() - cut) as u32,
                    flags: 0,
                    next: 0,
                });
                dev.process(1, &chain, &mut ram);
                dev.take_wakeups();
            }
            VsockStep::Rx { a, b } => {
                if !dev.ready_for(0) {
                    continue;
                }
                let chain = [
                    Descriptor {
                        addr: 0x5000,
                        len: u32::from(a),
                        flags: VIRTQ_DESC_F_WRITE,
                        next: 0,
                    },
                    Descriptor {
                        addr: 0x6000,
                        len: u32::from(b) * 4,
                        flags: VIRTQ_DESC_F_WRITE,
                        next: 0,
                    },
                ];
                let cap = u32::from(a) + u32::from(b) * 4;
                ram.write(0x5000, &[0u8; 256]).ok();
                ram.write(0x6000, &[0u8; 1024]).ok();
                let n = match dev.process(0, &chain, &mut ram) {
                    Completion::Written(n) => n,
                    other => {
                        return Err(fail(
                            i,
                            "rx-completion",
                            "VSOCK-DEV-08",
                            format!("rx buffer completed as {other:?}"),
                        ))
                    }
                };
                if n == 0 {
                    continue;
                }
                if n > cap || (n as usize) < VSOCK_HDR_LEN {
                    return Err(fail(
                        i,
                        "rx-length",
                        "VSOCK-DEV-08",
                        format!("{n} bytes written into a {cap}-byte buffer"),
                    ));
                }
                let mut buf = vec![0u8; usize::from(a) + usize::from(b) * 4];
                ram.read(0x5000, &mut buf[..usize::from(a)]).ok();
                ram.read(0x6000, &mut buf[usize::from(a)..]).ok();
                let hdr: [u8; VSOCK_HDR_LEN] = buf[..VSOCK_HDR_LEN].try_into().expect("44 bytes");
                let h = VsockHeader::from_bytes(&hdr);
                if let Some(seen) = seen.as_deref_mut() {
                    seen.push((h, a, i));
                }
                if n as usize != VSOCK_HDR_LEN + h.len as usize {
                    return Err(fail(
                        i,
                        "rx-length",
                        "VSOCK-DEV-08",
                        format!(
                            "used len {n} for a packet announcing {} payload bytes",
                            h.len
                        ),
                    ));
                }
                if h.src_cid != HOST_CID || h.dst_cid != GUEST_CID {
                    return Err(fail(
                        i,
                        "rx-cids",
                        "VSOCK-DEV-19",
                        format!("packet from CID {} to CID {}", h.src_cid, h.dst_cid),
                    ));
                }
                let c = credit.entry((h.dst_port, h.src_port)).or_default();
                if h.op == VIRTIO_VSOCK_OP_REQUEST {
                    // A new connection from the host: the device's count starts again. The
                    // driver's advertisements stay (the device may have read them before
                    // this REQUEST reached the driver).
                    c.received = 0;
                }
                if h.op == VIRTIO_VSOCK_OP_RW {
                    c.received = c.received.wrapping_add(h.len);
                    let end = c.allowed_end.unwrap_or(0);
                    if after(c.received, end) {
                        return Err(fail(
                            i,
                            "credit",
                            "VSOCK-DEV-10",
                            format!(
                                "RW of {} bytes to port {}: {} bytes sent, past offset {end} \
                                 (the most the driver allowed on the connection; buf_alloc {})",
                                h.len, h.dst_port, c.received, c.buf_alloc
                            ),
                        ));
                    }
                }
            }
            VsockStep::Listen(p) => {
                dev.host_op(HostOp::Listen { port: port(p) }).ok();
            }
            VsockStep::Connect(p) => {
                dev.host_op(HostOp::Connect { port: port(p) }).ok();
            }
            VsockStep::Close(p) => {
                dev.host_op(HostOp::Close { port: port(p) }).ok();
            }
            VsockStep::HostSend(p, n) => {
                let data: Vec<u8> = (0..n).collect();
                dev.host_send(port(p), &data).ok();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random inputs (xorshift), the same on every run.
    fn inputs(n: usize) -> Vec<Vec<u8>> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|i| {
                (0..64 + i % 512)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn encode_round_trips_through_decode() {
        for (name, steps) in seed_streams() {
            let bytes = encode_vsock_packets(&steps);
            assert_eq!(decode_vsock_packets(&bytes), steps, "seed {name}");
        }
        // Every field lands where the decoder reads it.
        let step = VsockStep::Tx {
            src: 1,
            dst: 2,
            op: 3,
            type_: 4,
            flags: 5,
            buf_alloc: 0x0706,
            fwd_extra: 8,
            len: 9,
            split: 10,
            bad_cid: 11,
        };
        let bytes = encode_vsock_packets(std::slice::from_ref(&step));
        assert_eq!(bytes.len(), 4 + 11);
        assert_eq!(&bytes[4..], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(decode_vsock_packets(&bytes), vec![step]);
    }

    /// The packets the device wrote into rx buffers for the seed `name`, on the reference.
    fn seen(name: &str) -> Vec<(VsockHeader, u8, usize)> {
        let steps = seed_streams()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("seed")
            .1;
        let mut seen = Vec::new();
        run_observed(&steps, None, Some(&mut seen)).expect("seed clean on the reference");
        seen
    }

    fn ops(seen: &[(VsockHeader, u8, usize)]) -> Vec<u16> {
        seen.iter().map(|(h, _, _)| h.op).collect()
    }

    /// RW payload lengths, in order.
    fn rw(seen: &[(VsockHeader, u8, usize)]) -> Vec<u32> {
        seen.iter()
            .filter(|(h, _, _)| h.op == VIRTIO_VSOCK_OP_RW)
            .map(|(h, _, _)| h.len)
            .collect()
    }

    #[test]
    fn seeds_are_clean_and_exercise_what_they_name() {
        use virtio_reference_device::devices::vsock::{
            VIRTIO_VSOCK_OP_CREDIT_UPDATE as CU, VIRTIO_VSOCK_OP_RESPONSE as RESP,
            VIRTIO_VSOCK_OP_RST as RST, VIRTIO_VSOCK_OP_SHUTDOWN as SHUT,
        };
        const REQ: u16 = VIRTIO_VSOCK_OP_REQUEST;
        assert_eq!(seeds().len(), 5);
        for (name, bytes) in seeds() {
            assert_eq!(vsock_packets_on(&bytes, None), Ok(()), "{name}");
        }

        // Host data cut by the rx buffer (60, 140), then by the 16-byte credit, the rest
        // after the driver widens it; a CREDIT_UPDATE answers the CREDIT_REQUEST.
        let s = seen("driver-connect");
        assert_eq!(ops(&s)[0], RESP);
        assert_eq!(rw(&s), vec![60, 140, 16, 16, 68]);
        assert!(ops(&s).contains(&CU));

        let s = seen("host-connect");
        assert_eq!(ops(&s), vec![REQ, 5, 5, SHUT, RST, REQ]);
        assert_eq!(rw(&s), vec![128, 72]);

        // RST for: no listener, cumulative SHUTDOWN, no connection, unknown type, other
        // CID, INVALID op; nothing for the RST or the wrong source CID; the host's close
        // sends its 20 queued bytes within the 8-byte credit, then SHUTDOWN.
        let s = seen("shutdown-rst");
        assert_eq!(
            ops(&s),
            vec![RST, RESP, RST, RST, RST, RST, RESP, RST, RESP, 5, 5, 5, SHUT]
        );
        assert_eq!(rw(&s), vec![8, 8, 4]);

        // The REQUEST lands in a buffer whose first descriptor is empty; RW headers are
        // cut at 10 and 43 bytes; the too-small buffers come back empty.
        let s = seen("rx-layouts");
        assert_eq!(s[0].0.op, REQ);
        assert_eq!(s[0].1, 0);
        assert_eq!(rw(&s), vec![2, 3, 4, 246]);
        let firsts: Vec<u8> = s.iter().map(|(_, a, _)| *a).collect();
        assert_eq!(firsts, vec![0, 10, 43, 44, 1]);

        // Split headers are read whole: the REQUEST is accepted, the CREDIT_REQUEST
        // answered, and the split CREDIT_UPDATE to buf_alloc 0 holds back the last 10 bytes.
        let s = seen("tx-header-split");
        assert_eq!(ops(&s), vec![RESP, CU, 5, RST]);
        assert_eq!(rw(&s), vec![50]);
    }

    #[test]
    fn seeds_catch_some_mutants() {
        let caught = |m: Mutant| {
            seeds()
                .iter()
                .filter(|(_, b)| vsock_packets_on(b, Some(m)).is_err())
                .count()
        };
        assert_eq!(caught(Mutant::VsockCidsSwapped), 5);
        assert!(caught(Mutant::VsockIgnoresCredit) >= 1);
        // Mutants that leave out a reply are found by the divergence from the reference.
        for m in [
            Mutant::VsockTxHeaderFirstDescriptorOnly,
            Mutant::VsockUnknownTypeIgnored,
            Mutant::VsockAcceptsWithoutListener,
            Mutant::VsockCreditRequestIgnored,
            Mutant::VsockShutdownNotCumulative,
        ] {
            assert!(caught(m) >= 1, "{} not caught by any seed", m.name());
        }
    }

    #[test]
    fn reference_survives_random_inputs_without_findings() {
        for (k, data) in inputs(400).iter().enumerate() {
            let r = vsock_packets_on(data, None);
            assert!(r.is_ok(), "input {k}: {:?}", r.err());
        }
    }

    #[test]
    fn credit_mutant_is_found_by_a_hand_built_stream() {
        use VsockStep::*;
        let steps = [
            Listen(2),
            Tx {
                src: 0,
                dst: 2,
                op: 1,
                type_: 0,
                flags: 0,
                buf_alloc: 4,
                fwd_extra: 0,
                len: 0,
                split: 0,
                bad_cid: 0,
            },
            Rx { a: 44, b: 0 },
            HostSend(2, 40),
            Rx { a: 44, b: 64 },
        ];
        let found = run_decoded(&steps, Some(Mutant::VsockIgnoresCredit)).err();
        assert_eq!(found.map(|f| f.oracle), Some("credit"));
        assert!(run_decoded(&steps, None).is_ok());
    }

    /// A driver packet on ports (index `src`, index `dst`): op, buf_alloc, fwd_extra, bad_cid.
    fn tx(src: u8, dst: u8, op: u8, buf_alloc: u16, fwd_extra: u8, bad_cid: u8) -> VsockStep {
        VsockStep::Tx {
            src,
            dst,
            op,
            type_: 0,
            flags: 0,
            buf_alloc,
            fwd_extra,
            len: 0,
            split: 0,
            bad_cid,
        }
    }

    /// What the spec allows is not a finding: a device that took its credit from a packet
    /// it then rejected (wrong CID, here the reference ignores it), and a driver claiming a
    /// fwd_cnt above what it received (the earlier oracle flagged both on the reference).
    #[test]
    fn credit_oracle_allows_what_the_spec_allows() {
        use VsockStep::*;
        // Connection 1000 -> 5201 with 64 bytes of credit, then a wrong-CID packet on the
        // same ports advertising 0, then the host sends 40 bytes.
        let rejected_packet = [
            Listen(2),
            tx(0, 2, 1, 64, 0, 0),
            Rx { a: 44, b: 0 },
            tx(0, 2, 6, 0, 0, 2),
            Rx { a: 44, b: 0 },
            HostSend(2, 40),
            Rx { a: 44, b: 64 },
        ];
        assert_eq!(run_decoded(&rejected_packet, None), Ok(()));
        // The driver's fwd_cnt runs 3 bytes ahead of what it received.
        let fwd_ahead = [
            Listen(2),
            tx(0, 2, 1, 8, 3, 0),
            Rx { a: 44, b: 0 },
            HostSend(2, 20),
            Rx { a: 44, b: 64 },
            tx(0, 2, 6, 8, 3, 0),
            Rx { a: 44, b: 64 },
        ];
        assert_eq!(run_decoded(&fwd_ahead, None), Ok(()));
        // Past every offset the driver allowed is still found.
        assert_eq!(
            run_decoded(&fwd_ahead, Some(Mutant::VsockIgnoresCredit))
                .err()
                .map(|f| f.oracle),
            Some("credit")
        );
    }

    #[test]
    fn swapped_cids_mutant_is_found() {
        use VsockStep::*;
        let steps = [
            Tx {
                src: 0,
                dst: 3,
                op: 1,
                type_: 0,
                flags: 0,
                buf_alloc: 64,
                fwd_extra: 0,
                len: 0,
                split: 7,
                bad_cid: 0,
            },
            Rx { a: 20, b: 10 },
        ];
        let found = run_decoded(&steps, Some(Mutant::VsockCidsSwapped)).err();
        assert_eq!(found.map(|f| f.oracle), Some("rx-cids"));
        assert!(run_decoded(&steps, None).is_ok());
    }
}
