//! Seed corpora, written from structured cases so they stay meaningful and small.
//!
//! [`seeds`] returns `(file name, bytes)` pairs per fuzz target; the files live in
//! `corpora/<target>/seed-<name>`. `harness/tests/fuzz_replay.rs` checks that the committed
//! files equal these bytes, and rewrites them when `VIRTIO_CONFORM_WRITE_CORPORA=1` is set
//! (see `corpora/README.md`).

use super::diff_mmio::DiffCase;
use super::mmio::{reg_selector, MmioCase, MmioHeader, MmioOp, CHAIN_CORRUPTIONS, KNOWN_REGS};
use super::queue_chain::{ChainSpec, Corruption, QcHeader, QcOp, QueueChainCase};
use virtio_reference_device::regs::*;

/// The seed files of `target` (`queue_chain`, `mmio_regs` or `diff_mmio`), as
/// `(file name, bytes)`. Unknown targets have none.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "queue_chain" => queue_chain_seeds()
            .into_iter()
            .map(|(n, c)| (format!("seed-{n}"), c.encode()))
            .collect(),
        "mmio_regs" => mmio_seeds()
            .into_iter()
            .map(|(n, c)| (format!("seed-{n}"), c.encode()))
            .collect(),
        "diff_mmio" => mmio_seeds()
            .into_iter()
            .enumerate()
            .map(|(i, (n, case))| {
                // Spread the seeds over the selector values (a fixed byte per seed, so adding
                // a mutant changes no seed file); the fuzzer varies the byte anyway.
                let selector = (i * 37 % 256) as u8;
                let dc = DiffCase {
                    selector,
                    mutant: super::diff_mmio::mutant_for_selector(selector),
                    case,
                };
                (format!("seed-{n}"), dc.encode())
            })
            .collect(),
        "device_chains" => super::device_chains::seeds(),
        "vsock_packets" => super::vsock_packets::seeds(),
        _ => Vec::new(),
    }
}

fn chain(bufs: &[u8], indirect: u8, knob: u8, arg: u8) -> QcOp {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(bufs) {
        *d = *s;
    }
    QcOp::Chain(ChainSpec {
        n: (bufs.len().max(1) - 1) as u8,
        bufs: b,
        indirect,
        knob,
        arg,
    })
}

const W: u8 = 0x80;

fn queue_chain_seeds() -> Vec<(String, QueueChainCase)> {
    let h = |flags, start| QcHeader { flags, start };
    let mut v = vec![
        (
            "basic".to_string(),
            QueueChainCase {
                header: h(3, 0),
                ops: vec![
                    chain(&[15, W | 63], 0, 0, 0),
                    QcOp::Kick(0),
                    chain(&[W | 127], 0, 0, 0),
                    QcOp::Kick(0),
                ],
            },
        ),
        (
            "many-chains".to_string(),
            QueueChainCase {
                header: h(2, 0),
                ops: vec![
                    chain(&[7, 7, W | 31], 0, 0, 0),
                    chain(&[W | 1], 0, 0, 0),
                    chain(&[3, W | 3], 0, 0, 0),
                    QcOp::Kick(0),
                    chain(&[1, 2, 3, W | 4, W | 5], 0, 0, 0),
                    QcOp::Kick(0),
                ],
            },
        ),
        (
            "event-idx".to_string(),
            QueueChainCase {
                header: h(2 | 8, 0),
                ops: vec![
                    QcOp::UsedEvent(1),
                    chain(&[W | 15], 0, 0, 0),
                    QcOp::Kick(0),
                    chain(&[W | 15], 0, 0, 0),
                    QcOp::Kick(0),
                    QcOp::UsedEvent(0),
                    chain(&[W | 15], 0, 0, 0),
                    chain(&[W | 15], 0, 0, 0),
                    QcOp::Kick(0),
                ],
            },
        ),
        (
            "no-interrupt".to_string(),
            QueueChainCase {
                header: h(2, 0),
                ops: vec![
                    QcOp::NoInterrupt(true),
                    chain(&[W | 15], 0, 0, 0),
                    QcOp::Kick(0),
                    QcOp::NoInterrupt(false),
                    chain(&[W | 15], 0, 0, 0),
                    QcOp::Kick(0),
                ],
            },
        ),
        (
            "indirect".to_string(),
            QueueChainCase {
                header: h(2 | 16, 0),
                ops: vec![
                    chain(&[15, 15, W | 31, W | 31], 0x81, 0, 0),
                    chain(&[W | 127, W | 127, W | 127], 0x80, 0, 0),
                    QcOp::Kick(0),
                ],
            },
        ),
        (
            "wrap".to_string(),
            QueueChainCase {
                header: h(1 | 64, 2),
                ops: (0..6)
                    .flat_map(|_| [chain(&[3, W | 7], 0, 0, 0), QcOp::Kick(0)])
                    .collect(),
            },
        ),
        (
            "wrap-event-idx".to_string(),
            QueueChainCase {
                header: h(2 | 8 | 64, 1),
                ops: (0..5)
                    .flat_map(|i| {
                        [
                            QcOp::UsedEvent(i),
                            chain(&[W | 7], 0, 0, 0),
                            chain(&[W | 9], 0, 0, 0),
                            QcOp::Kick(0),
                        ]
                    })
                    .collect(),
            },
        ),
        (
            "avail-jump".to_string(),
            QueueChainCase {
                header: h(2, 0),
                ops: vec![chain(&[W | 7], 0, 0, 0), QcOp::Kick(0xf000 | 9)],
            },
        ),
    ];
    for c in Corruption::ALL {
        let name = format!("corrupt-{:?}", c).to_lowercase();
        v.push((
            name,
            QueueChainCase {
                header: h(3 | 16 | 32, 0),
                ops: vec![
                    chain(&[15, W | 31, W | 15], 0x81, c.knob(), 1),
                    QcOp::Kick(0),
                    chain(&[15, W | 31], 0, 0, 0),
                    QcOp::Kick(0),
                ],
            },
        ));
    }
    v
}

fn read(off: u64) -> MmioOp {
    MmioOp::Read {
        reg: reg_selector(off),
        width: 0,
    }
}

fn read_w(off: u64, width: u8) -> MmioOp {
    MmioOp::Read {
        reg: reg_selector(off),
        width,
    }
}

fn write(off: u64, value: u32) -> MmioOp {
    MmioOp::Write {
        reg: reg_selector(off),
        width: 0,
        value,
    }
}

fn mmio_chain(bufs: [u8; 4], n: u8, knob: u8, req: u8) -> MmioOp {
    MmioOp::Chain { bufs, n, knob, req }
}

fn mmio_seeds() -> Vec<(String, MmioCase)> {
    let hdr = |legacy: bool, block: bool| MmioHeader {
        flags: legacy as u8 | (block as u8) << 1,
    };
    let io = |legacy, block, ops: Vec<MmioOp>| MmioCase {
        header: hdr(legacy, block),
        ops,
    };
    let notify = MmioOp::Notify { queue: 0 };
    let ack = MmioOp::Ack { mask: 0 };
    let mut v = vec![
        (
            "registers".to_string(),
            io(false, false, KNOWN_REGS.iter().map(|&o| read(o)).collect()),
        ),
        (
            "registers-legacy".to_string(),
            io(true, true, KNOWN_REGS.iter().map(|&o| read(o)).collect()),
        ),
        (
            "entropy".to_string(),
            io(
                false,
                false,
                vec![
                    MmioOp::Init {
                        features: 3,
                        size: 4,
                    },
                    read(STATUS),
                    mmio_chain([W | 7, 0, 0, 0], 0, 0, 0),
                    notify,
                    ack,
                    mmio_chain([3, W | 15, W | 1, 0], 2, 0, 0),
                    notify,
                    read(INTERRUPT_STATUS),
                    MmioOp::Reset,
                ],
            ),
        ),
        (
            "entropy-legacy".to_string(),
            io(
                true,
                false,
                vec![
                    MmioOp::Init {
                        features: 1,
                        size: 3,
                    },
                    mmio_chain([W | 7, 0, 0, 0], 0, 0, 0),
                    notify,
                    ack,
                    read(QUEUE_PFN),
                    MmioOp::Reset,
                ],
            ),
        ),
        (
            "block".to_string(),
            io(
                false,
                true,
                vec![
                    MmioOp::Init {
                        features: 15,
                        size: 5,
                    },
                    mmio_chain([W | 63, 0, 0, 0], 0, 0, 1),
                    notify,
                    mmio_chain([W | 63, 0, 0, 0], 0, 0, 5),
                    notify,
                    mmio_chain([W | 3, 0, 0, 0], 0, 0, 3),
                    notify,
                    ack,
                    read_w(CONFIG, 5),
                    read_w(CONFIG + 1, 6),
                    read(CONFIG + 20),
                    read(CONFIG_GENERATION),
                ],
            ),
        ),
        (
            "block-legacy".to_string(),
            io(
                true,
                true,
                vec![
                    MmioOp::Init {
                        features: 0,
                        size: 2,
                    },
                    mmio_chain([W | 63, 0, 0, 0], 0, 0, 0),
                    notify,
                    mmio_chain([W | 7, 0, 0, 0], 0, 0, 2),
                    notify,
                    ack,
                    MmioOp::Reset,
                ],
            ),
        ),
        (
            "status-steps".to_string(),
            io(
                false,
                false,
                vec![
                    MmioOp::Status { step: 0 },
                    read(STATUS),
                    MmioOp::Status { step: 1 },
                    MmioOp::Features {
                        page: 0,
                        mode: 0,
                        bits: 0,
                    },
                    MmioOp::Features {
                        page: 1,
                        mode: 0,
                        bits: 0,
                    },
                    MmioOp::Status { step: 2 },
                    read(STATUS),
                    MmioOp::Queue {
                        sel: 0,
                        size: 3,
                        layout: 0,
                    },
                    MmioOp::Status { step: 3 },
                    read(STATUS),
                    MmioOp::Status { step: 5 },
                    read(STATUS),
                    MmioOp::Reset,
                ],
            ),
        ),
        (
            "features".to_string(),
            io(
                false,
                true,
                vec![
                    MmioOp::Status { step: 0 },
                    MmioOp::Status { step: 1 },
                    MmioOp::Features {
                        page: 0,
                        mode: 7,
                        bits: 3,
                    },
                    MmioOp::Features {
                        page: 1,
                        mode: 0,
                        bits: 0,
                    },
                    MmioOp::Features {
                        page: 0xf2,
                        mode: 6,
                        bits: 1,
                    },
                    MmioOp::Status { step: 2 },
                    read(STATUS),
                    MmioOp::Reset,
                    MmioOp::Init {
                        features: 0xff,
                        size: 2,
                    },
                    read(STATUS),
                ],
            ),
        ),
        (
            "queue-knobs".to_string(),
            io(
                false,
                false,
                vec![
                    MmioOp::Init {
                        features: 0,
                        size: 0xf0,
                    },
                    read(STATUS),
                    notify,
                    MmioOp::Reset,
                    MmioOp::Init {
                        features: 0,
                        size: 0xf2,
                    },
                    MmioOp::Reset,
                    MmioOp::Queue {
                        sel: 0xf1,
                        size: 2,
                        layout: 0,
                    },
                    read(QUEUE_NUM_MAX),
                    MmioOp::Queue {
                        sel: 0,
                        size: 2,
                        layout: 0xe1,
                    },
                    MmioOp::Status { step: 4 },
                    read(STATUS),
                    read(INTERRUPT_STATUS),
                    MmioOp::Reset,
                ],
            ),
        ),
        (
            "legacy-queue-knobs".to_string(),
            io(
                true,
                false,
                vec![
                    MmioOp::Status { step: 0 },
                    MmioOp::Status { step: 1 },
                    MmioOp::Queue {
                        sel: 0,
                        size: 3,
                        layout: 0xe1,
                    },
                    MmioOp::Status { step: 4 },
                    read(STATUS),
                    MmioOp::Reset,
                    MmioOp::Init {
                        features: 0,
                        size: 0xf0,
                    },
                    mmio_chain([W | 7, 0, 0, 0], 0, 0, 0),
                    notify,
                ],
            ),
        ),
        (
            "config".to_string(),
            io(
                false,
                true,
                vec![
                    read(CONFIG_GENERATION),
                    MmioOp::Config {
                        offset: 0,
                        value: 0x800,
                    },
                    read(CONFIG_GENERATION),
                    read_w(CONFIG, 5),
                    MmioOp::Init {
                        features: 0,
                        size: 2,
                    },
                    MmioOp::Config {
                        offset: 8,
                        value: 7,
                    },
                    read(INTERRUPT_STATUS),
                    ack,
                    read(CONFIG_GENERATION),
                    read(SHM_LEN_LOW),
                    write(SHM_SEL, 3),
                    read(SHM_BASE_HIGH),
                ],
            ),
        ),
        (
            "event-idx".to_string(),
            io(
                false,
                false,
                vec![
                    MmioOp::Init {
                        features: 1,
                        size: 2,
                    },
                    MmioOp::Ring { field: 1, value: 1 },
                    mmio_chain([W | 7, 0, 0, 0], 0, 0, 0),
                    notify,
                    mmio_chain([W | 7, 0, 0, 0], 0, 0, 0),
                    notify,
                    ack,
                    MmioOp::Ring { field: 0, value: 1 },
                    mmio_chain([W | 7, 0, 0, 0], 0, 0, 0),
                    notify,
                    read(INTERRUPT_STATUS),
                ],
            ),
        ),
        (
            "raw-writes".to_string(),
            io(
                false,
                false,
                vec![
                    write(STATUS, 3),
                    write(QUEUE_SEL, 0),
                    write(QUEUE_NUM, 8),
                    write(QUEUE_DESC_LOW, 0x1000),
                    write(QUEUE_DRIVER_LOW, 0x1080),
                    write(QUEUE_DEVICE_LOW, 0x2000),
                    write(QUEUE_READY, 1),
                    write(STATUS, 7),
                    MmioOp::Write {
                        reg: 0x8070,
                        width: 5,
                        value: 0,
                    },
                    MmioOp::Write {
                        reg: 0x8071,
                        width: 0,
                        value: 0,
                    },
                    write(QUEUE_RESET, 1),
                    write(INTERRUPT_ACK, 3),
                    write(STATUS, 0),
                    read(STATUS),
                ],
            ),
        ),
    ];
    for (i, name) in CHAIN_CORRUPTIONS.iter().enumerate() {
        v.push((
            format!("chain-{name}"),
            io(
                i % 2 == 1,
                false,
                vec![
                    MmioOp::Init {
                        features: 3,
                        size: 3,
                    },
                    mmio_chain([3, W | 15, 0, 0], 1, 0xe0 + i as u8, 1),
                    notify,
                    read(STATUS),
                    ack,
                    MmioOp::Reset,
                ],
            ),
        ));
    }
    // Init, then each (bufs, req) as a block request chain and its notification, then an
    // interrupt acknowledgement.
    let block_requests = |chains: &[([u8; 4], u8)]| {
        let mut ops = vec![MmioOp::Init {
            features: 15,
            size: 4,
        }];
        for &(bufs, req) in chains {
            ops.push(mmio_chain(bufs, 0, 0, req));
            ops.push(notify);
        }
        ops.push(ack);
        io(false, true, ops)
    };
    // Block requests of every kind one after the other, the unknown type (0x99) and FLUSH
    // included, each checked by its status byte (diff_mmio compares the bytes the device
    // writes). Appended last so no earlier seed changes its diff_mmio selector byte.
    v.push((
        "block-request-kinds".to_string(),
        block_requests(&[
            ([W | 3, 0, 0, 0], 4),
            ([W | 63, 0, 0, 0], 2),
            ([W | 19, 0, 0, 0], 3),
            ([63, 0, 0, 0], 6),
            ([W | 63, 0, 0, 0], 10),
        ]),
    ));
    // DISCARD and WRITE_ZEROES (§5.2.6): a DISCARD with UNMAP, six segments, a range past the
    // 16-sector disk, and a WRITE_ZEROES with UNMAP over sectors written just before, read
    // back. Appended last, as above.
    v.push((
        "block-discard-write-zeroes".to_string(),
        block_requests(&[
            ([W | 3, 0xf0, 3, 0x80], 4),
            ([W | 3, 0xfa, 1, 0], 4),
            ([W | 3, 0xf1, 19, 0], 4),
            ([3, 0, 0, 0], 16),
            ([W | 3, 0xf1, 3, 0x80], 4),
            ([W | 3, 0, 0, 0], 15),
        ]),
    ));
    // Rings at the very top of RAM (§2.7: any placement inside guest memory is valid): the
    // available ring, then the descriptor table, ending at the last byte. Appended last, as
    // above.
    let top = |layout| {
        vec![
            MmioOp::Status { step: 0 },
            MmioOp::Status { step: 1 },
            MmioOp::Features {
                page: 0,
                mode: 0,
                bits: 0,
            },
            MmioOp::Features {
                page: 1,
                mode: 0,
                bits: 0,
            },
            MmioOp::Status { step: 2 },
            MmioOp::Queue {
                sel: 0,
                size: 3,
                layout,
            },
            MmioOp::Status { step: 3 },
            mmio_chain([W | 7, 0, 0, 0], 0, 0, 0),
            notify,
            MmioOp::Reset,
        ]
    };
    let mut ops = top(0xe5);
    ops.extend(top(0xe6));
    v.push(("rings-at-top-of-ram".to_string(), io(false, false, ops)));
    v
}

/// `n` inputs derived from the seeds of `target` by a small byte mutator (one to four bit
/// flips, byte overwrites, insertions or deletions each) driven by a ChaCha8 stream from `seed`,
/// as `(description, bytes)`: the same arguments give the same inputs on every machine.
///
/// For runs that are bounded by a count instead of by time and need no libFuzzer (a gate's
/// `cargo test`, the QEMU reuse check); coverage-guided fuzzing is `cargo fuzz`'s job.
pub fn mutated_seeds(target: &str, n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let base = seeds(target);
    if base.is_empty() {
        return Vec::new();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut below = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    (0..n)
        .map(|i| {
            let (name, data) = &base[below(base.len())];
            let mut v = data.clone();
            for _ in 0..1 + below(4) {
                let op = below(4);
                let at = below(v.len() + 1);
                let byte = below(256) as u8;
                match op {
                    0 if at < v.len() => v[at] ^= 1 << (byte % 8),
                    1 if at < v.len() => v[at] = byte,
                    2 => v.insert(at, byte),
                    _ if at < v.len() && v.len() > 1 => {
                        v.remove(at);
                    }
                    _ => v.push(byte),
                }
            }
            (format!("mutation #{i} of {name}"), v)
        })
        .collect()
}
