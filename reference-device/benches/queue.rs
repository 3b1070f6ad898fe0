//! Split-virtqueue throughput: the reference [`SplitQueue`] against rust-vmm's
//! `virtio_queue::Queue`, on identical descriptor chains laid out in guest memory.
//!
//! Each group (`chains/1desc`, `chains/2desc`, `chains/4desc`, `chains/indirect4`) has two
//! functions, `reference` and `virtio-queue`. One iteration is a steady-state batch: the driver
//! side bumps `avail.idx` by [`BATCH`] (16-bit wrapping) over a ring whose slots already hold the
//! heads, then the device side pops every chain, reads each descriptor (addr, len, flags) and
//! adds a used element. Throughput is in chains (elem/s).
//!
//! Run with `cargo bench -p virtio-reference-device --bench queue`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_queue::{Queue, QueueT};
use virtio_reference_device::{Budget, GuestRam, SplitQueue};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 256;
/// Chains popped and completed per iteration.
const BATCH: u16 = 256;

const MEM_SIZE: usize = 1 << 20;
const DESC_TABLE: u64 = 0x0000; // 256 * 16 bytes
const AVAIL_RING: u64 = 0x1000; // 6 + 2 * 256 bytes
const USED_RING: u64 = 0x2000; // 6 + 8 * 256 bytes
const INDIRECT_TABLES: u64 = 0x4000; // 256 tables of 4 entries (64 bytes each)
const BUFFERS: u64 = 0x10000; // one 512-byte slot per descriptor

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const READ_LEN: u32 = 16;
const WRITE_LEN: u32 = 512;

#[derive(Clone, Copy)]
enum Shape {
    /// `n` descriptors in the descriptor table: the first `readable` device-readable, the rest
    /// device-writable.
    Direct { n: u16, readable: u16 },
    /// One INDIRECT descriptor pointing at a 4-entry table (2 readable + 2 writable).
    Indirect4,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Direct { n: 1, .. } => "1desc",
            Shape::Direct { n: 2, .. } => "2desc",
            Shape::Direct { n: 4, .. } => "4desc",
            Shape::Direct { .. } => "ndesc",
            Shape::Indirect4 => "indirect4",
        }
    }
}

fn write_desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(at)).unwrap();
}

/// Writes `n` chained descriptors (readable first) into the table at `table`, starting at entry
/// `first`, with buffers taken from slot `buf_slot` on.
fn write_chain(
    mem: &GuestMemoryMmap,
    table: u64,
    first: u16,
    n: u16,
    readable: u16,
    buf_slot: u64,
) {
    for k in 0..n {
        let idx = first + k;
        let (len, mut flags) = if k < readable {
            (READ_LEN, 0)
        } else {
            (WRITE_LEN, F_WRITE)
        };
        let next = if k + 1 < n {
            flags |= F_NEXT;
            idx + 1
        } else {
            0
        };
        let addr = BUFFERS + 512 * (buf_slot + k as u64);
        write_desc(mem, table + 16 * idx as u64, addr, len, flags, next);
    }
}

/// Fresh guest memory with the descriptor table, the available ring (every slot filled, idx 0)
/// and an empty used ring for `shape`.
fn build(shape: Shape) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let heads: Vec<u16> = match shape {
        Shape::Direct { n, readable } => {
            let chains = QUEUE_SIZE / n;
            for c in 0..chains {
                write_chain(&mem, DESC_TABLE, c * n, n, readable, (c * n) as u64);
            }
            // 256 ring slots over 256/n distinct chains: the driver republishes them.
            (0..QUEUE_SIZE).map(|i| (i % chains) * n).collect()
        }
        Shape::Indirect4 => {
            for h in 0..QUEUE_SIZE {
                let table = INDIRECT_TABLES + 64 * h as u64;
                write_desc(&mem, DESC_TABLE + 16 * h as u64, table, 64, F_INDIRECT, 0);
                write_chain(&mem, table, 0, 4, 2, 0);
            }
            (0..QUEUE_SIZE).collect()
        }
    };
    // avail ring: flags 0, idx 0, ring[], used_event 0.
    mem.write_obj(0u16, GuestAddress(AVAIL_RING)).unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL_RING + 2)).unwrap();
    for (i, h) in heads.iter().enumerate() {
        mem.write_obj(h.to_le(), GuestAddress(AVAIL_RING + 4 + 2 * i as u64))
            .unwrap();
    }
    // used ring: flags 0, idx 0.
    mem.write_obj(0u32, GuestAddress(USED_RING)).unwrap();
    mem
}

/// Driver side: makes another `BATCH` entries available (the ring slots are unchanged).
#[inline]
fn publish(mem: &GuestMemoryMmap) {
    let at = GuestAddress(AVAIL_RING + 2);
    let idx: u16 = mem.read_obj(at).unwrap();
    mem.write_obj(u16::from_le(idx).wrapping_add(BATCH).to_le(), at)
        .unwrap();
}

fn bench_reference(mem: GuestMemoryMmap) -> impl FnMut() {
    let mut ram = GuestRam::new(mem.clone());
    let mut q = SplitQueue::new(QUEUE_SIZE);
    q.desc_table = DESC_TABLE;
    q.avail_ring = AVAIL_RING;
    q.used_ring = USED_RING;
    q.indirect = true;
    q.event_idx = false;
    q.validate(&ram, QUEUE_SIZE).unwrap();
    move || {
        publish(&mem);
        let mut budget = Budget::new(u64::MAX);
        for _ in 0..BATCH {
            let head = q.pop(&mut ram, &mut budget).unwrap().unwrap();
            let mut written = 0u32;
            for d in q.chain() {
                black_box((d.addr, d.len, d.flags));
                if d.is_write_only() {
                    written += d.len;
                }
            }
            q.add_used(&mut ram, head, written).unwrap();
        }
        assert_eq!(q.pop(&mut ram, &mut budget), Ok(None));
    }
}

fn bench_virtio_queue(mem: GuestMemoryMmap) -> impl FnMut() {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some((DESC_TABLE >> 32) as u32));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some((AVAIL_RING >> 32) as u32));
    q.set_used_ring_address(Some(USED_RING as u32), Some((USED_RING >> 32) as u32));
    q.set_event_idx(false);
    q.set_ready(true);
    assert!(q.is_valid(&mem));
    move || {
        publish(&mem);
        for _ in 0..BATCH {
            let chain = q.pop_descriptor_chain(&mem).unwrap();
            let head = chain.head_index();
            let mut written = 0u32;
            for d in chain {
                black_box((d.addr(), d.len(), d.flags()));
                if d.is_write_only() {
                    written += d.len();
                }
            }
            q.add_used(&mem, head, written).unwrap();
        }
        assert!(q.pop_descriptor_chain(&mem).is_none());
    }
}

/// Both implementations see the same chains; check they agree on one batch before timing.
fn cross_check(shape: Shape) {
    let mem_a = build(shape);
    let mem_b = build(shape);
    bench_reference(mem_a.clone())();
    bench_virtio_queue(mem_b.clone())();
    let used_len = 4 + 8 * QUEUE_SIZE as usize;
    let mut a = vec![0u8; used_len];
    let mut b = vec![0u8; used_len];
    mem_a.read_slice(&mut a, GuestAddress(USED_RING)).unwrap();
    mem_b.read_slice(&mut b, GuestAddress(USED_RING)).unwrap();
    assert_eq!(a, b, "{}: used rings differ", shape.name());
    assert_eq!(u16::from_le_bytes([a[2], a[3]]), BATCH);
}

fn chains(c: &mut Criterion) {
    let shapes = [
        Shape::Direct { n: 1, readable: 0 },
        Shape::Direct { n: 2, readable: 1 },
        Shape::Direct { n: 4, readable: 2 },
        Shape::Indirect4,
    ];
    for shape in shapes {
        cross_check(shape);
        let mut g = c.benchmark_group(format!("chains/{}", shape.name()));
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut run = bench_reference(build(shape));
        g.bench_function("reference", |b| b.iter(&mut run));
        let mut run = bench_virtio_queue(build(shape));
        g.bench_function("virtio-queue", |b| b.iter(&mut run));
        g.finish();
    }
}

criterion_group!(benches, chains);
criterion_main!(benches);
