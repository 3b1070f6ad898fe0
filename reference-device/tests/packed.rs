//! The packed virtqueue (§2.8) through the MMIO transport: negotiation, register meaning
//! (§4.2.3), in-order batching, and properties: no ring content panics or hangs the device.

mod common;
use common::*;
use proptest::prelude::*;
use virtio_reference_device::packed::*;
use virtio_reference_device::regs::*;
use virtio_reference_device::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const DRV_EVT: u64 = RING_BASE + 0x2000;
const DEV_EVT: u64 = RING_BASE + 0x2004;

fn packed_rig(size: u16, extra: u64, backend: Box<dyn DeviceBackend>) -> Rig {
    let mut cfg = DeviceConfig::new(TransportVersion::Modern);
    cfg.knobs.offer_ring_packed = true;
    cfg.knobs.offer_in_order = true;
    cfg.step_budget = 4096;
    let mut r = rig(cfg, backend);
    let st = r.negotiate(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_PACKED) | extra);
    assert_eq!(st as u8 & FEATURES_OK, FEATURES_OK);
    r.mem
        .write_slice(&vec![0u8; 16 * size as usize], GuestAddress(RING_BASE))
        .unwrap();
    r.mem.write_slice(&[0u8; 8], GuestAddress(DRV_EVT)).unwrap();
    r.w(QUEUE_SEL, 0);
    r.w(QUEUE_NUM, size as u32);
    r.w(QUEUE_DESC_LOW, RING_BASE as u32);
    r.w(QUEUE_DRIVER_LOW, DRV_EVT as u32);
    r.w(QUEUE_DEVICE_LOW, DEV_EVT as u32);
    r.w(QUEUE_READY, 1);
    r.w(
        STATUS,
        (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) as u32,
    );
    r
}

fn write_desc(mem: &GuestMemoryMmap, pos: u16, d: PackedDesc) {
    mem.write_slice(&d.encode(), GuestAddress(RING_BASE + 16 * pos as u64))
        .unwrap();
}

fn read_desc(mem: &GuestMemoryMmap, pos: u16) -> PackedDesc {
    let mut raw = [0u8; 16];
    mem.read_slice(&mut raw, GuestAddress(RING_BASE + 16 * pos as u64))
        .unwrap();
    PackedDesc::parse(&raw)
}

#[test]
fn ring_packed_offered_only_when_configured() {
    let mut r = entropy(TransportVersion::Modern);
    assert_eq!(r.dev.device_features() & bit(VIRTIO_F_RING_PACKED), 0);
    let r2 = packed_rig(4, 0, Box::new(EntropyBackend::new(1)));
    assert_ne!(r2.dev.device_features() & bit(VIRTIO_F_RING_PACKED), 0);
    let _ = r.r(STATUS);
}

#[test]
fn queue_registers_name_ring_and_event_structures() {
    // Queue size 3: a packed ring need not be a power of 2.
    let mut r = packed_rig(3, 0, Box::new(EntropyBackend::new(1)));
    assert_eq!(r.r(STATUS) as u8 & DEVICE_NEEDS_RESET, 0);
    let q = r.dev.packed_queue(0).expect("packed queue active");
    assert_eq!(
        (q.desc_ring, q.driver_event, q.device_event),
        (RING_BASE, DRV_EVT, DEV_EVT)
    );
    for round in 0..7u16 {
        let pos = round % 3;
        let wrap = (round / 3) % 2 == 0;
        write_desc(
            &r.mem,
            pos,
            PackedDesc {
                addr: BUF_BASE,
                len: 8,
                id: round,
                flags: VIRTQ_DESC_F_WRITE | avail_bits(wrap),
            },
        );
        r.w(QUEUE_NOTIFY, 0);
        let u = read_desc(&r.mem, pos);
        assert!(u.is_used(wrap), "round {round}: {u:?}");
        assert_eq!((u.id, u.len), (round, 8));
        assert!(r
            .dev
            .take_interrupts()
            .contains(&Interrupt::UsedBuffer { queue: 0 }));
    }
}

#[test]
fn in_order_batches_one_used_descriptor_with_the_last_id() {
    let mut r = packed_rig(8, bit(VIRTIO_F_IN_ORDER), Box::new(EntropyBackend::new(1)));
    for pos in 0..3u16 {
        write_desc(
            &r.mem,
            pos,
            PackedDesc {
                addr: BUF_BASE + 64 * pos as u64,
                len: 4,
                id: 10 + pos,
                flags: VIRTQ_DESC_F_WRITE | avail_bits(true),
            },
        );
    }
    r.w(QUEUE_NOTIFY, 0);
    let u = read_desc(&r.mem, 0);
    assert!(u.is_used(true));
    assert_eq!(u.id, 12, "the batch's last buffer id");
    assert_eq!(r.dev.packed_queue(0).unwrap().next_used(), (3, true));
    // The skipped descriptors stay as the driver wrote them.
    assert!(read_desc(&r.mem, 1).is_avail(true));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any descriptor ring and indirect table content: no panic, bounded work (the budget is
    /// never exhausted because every list is bounded by the ring size), the device either
    /// keeps going or enters DEVICE_NEEDS_RESET.
    #[test]
    fn any_ring_content_is_handled(
        size in 1u16..9,
        ring in proptest::collection::vec(any::<u8>(), 16 * 8),
        table in proptest::collection::vec(any::<u8>(), 64),
        flags_bias in proptest::collection::vec(prop_oneof![Just(0x80u16), Just(0x8000), Just(0x81), Just(0x85), Just(0x83), any::<u16>()], 8),
        addrs in proptest::collection::vec(prop_oneof![Just(BUF_BASE), Just(BUF_BASE + 0x1000), Just(RAM - 4), any::<u64>()], 8),
        extra in prop_oneof![Just(0u64), Just(bit(VIRTIO_F_IN_ORDER)), Just(bit(VIRTIO_F_INDIRECT_DESC)), Just(bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC))],
        kicks in 1usize..4,
        block in any::<bool>(),
    ) {
        let backend: Box<dyn DeviceBackend> = if block { Box::new(BlockBackend::new(64)) } else { Box::new(EntropyBackend::new(1)) };
        let mut r = packed_rig(size, extra, backend);
        r.mem.write_slice(&ring, GuestAddress(RING_BASE)).unwrap();
        for pos in 0..8u16 {
            let at = RING_BASE + 16 * pos as u64;
            r.mem.write_slice(&addrs[pos as usize].to_le_bytes(), GuestAddress(at)).unwrap();
            r.mem.write_slice(&flags_bias[pos as usize].to_le_bytes(), GuestAddress(at + 14)).unwrap();
        }
        r.mem.write_slice(&table, GuestAddress(BUF_BASE + 0x1000)).unwrap();
        for _ in 0..kicks {
            r.w(QUEUE_NOTIFY, 0);
        }
        prop_assert!(!r.dev.budget_exhausted());
        let _ = r.r(STATUS);
        r.w(STATUS, 0);
        prop_assert_eq!(r.r(STATUS), 0);
    }
}
