//! Fuzz target `vsock_packets`: the reference socket device's backend (VIRTIO §5.10) driven by
//! a stream of driver packets (any header fields, payload and split into descriptors), rx
//! buffers of any layout, and host-side operations (listen, connect, close, send).
//!
//! Oracles, checked on every packet the device writes into an rx buffer:
//! - no panic and bounded work (the backend is called once per operation);
//! - the packet fits the buffer and its used length is the header plus `len` payload bytes
//!   (VSOCK-DEV-08);
//! - src_cid 2 and dst_cid `guest_cid` (VSOCK-DEV-19);
//! - RW payload within the credit the driver last advertised on that connection:
//!   buf_alloc - (bytes received - fwd_cnt) (VSOCK-DEV-10).
//!
//! The input decodes leniently (missing bytes read as zeros), at most [`MAX_OPS`] operations.

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
#[derive(Debug, Clone, Arbitrary)]
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

/// Runs one input against the reference (or the pinned mutant).
pub fn vsock_packets(data: &[u8]) -> Result<(), Finding> {
    vsock_packets_on(data, super::pinned_mutant())
}

/// What the driver advertised on one connection (driver port, host port).
#[derive(Default)]
struct Credit {
    buf_alloc: u32,
    fwd_cnt: u32,
    received: u32,
}

/// Runs one input against the reference socket backend with `mutant` injected.
pub fn vsock_packets_on(data: &[u8], mutant: Option<Mutant>) -> Result<(), Finding> {
    run_decoded(&decode_vsock_packets(data), mutant)
}

/// Runs already-decoded operations against the reference socket backend with `mutant`
/// injected (the body of [`vsock_packets_on`]; tests build streams with it by hand).
pub fn run_decoded(steps: &[VsockStep], mutant: Option<Mutant>) -> Result<(), Finding> {
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
                    *c = Credit::default();
                }
                c.buf_alloc = u32::from(buf_alloc);
                c.fwd_cnt = c.received.wrapping_add(u32::from(fwd_extra) & 0x3);
                let h = VsockHeader {
                    src_cid: if bad_cid == 1 { 99 } else { GUEST_CID },
                    dst_cid: if bad_cid == 2 { 77 } else { HOST_CID },
                    src_port: sp,
                    dst_port: dp,
                    len: u32::from(len),
                    type_: if type_ == 0 { 1 } else { u16::from(type_) },
                    op,
                    flags: u32::from(flags),
                    buf_alloc: c.buf_alloc,
                    fwd_cnt: c.fwd_cnt,
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
                    *c = Credit::default();
                }
                if h.op == VIRTIO_VSOCK_OP_RW {
                    c.received = c.received.wrapping_add(h.len);
                    let in_flight = c.received.wrapping_sub(c.fwd_cnt);
                    if in_flight > c.buf_alloc {
                        return Err(fail(
                            i,
                            "credit",
                            "VSOCK-DEV-10",
                            format!(
                                "RW of {} bytes to port {}: {in_flight} in flight, buf_alloc {}",
                                h.len, h.dst_port, c.buf_alloc
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
