//! Unit tests of the reference device, one or more per register and spec statement.
mod common;
use common::*;
use virtio_reference_device::regs::*;
use virtio_reference_device::*;

const M: TransportVersion = TransportVersion::Modern;
const L: TransportVersion = TransportVersion::Legacy;

#[test]
fn s4_2_2_identification_registers() {
    let mut r = entropy(M);
    assert_eq!(r.r(MAGIC), 0x7472_6976);
    assert_eq!(r.r(VERSION), 2);
    assert_eq!(r.r(DEVICE_ID), 4);
    assert_eq!(r.r(VENDOR_ID), u32::from_le_bytes(*b"VCFM"));
    let mut b = block(L);
    assert_eq!(b.r(VERSION), 1);
    assert_eq!(b.r(DEVICE_ID), 2);
}

#[test]
fn s4_2_2_device_features_pages() {
    let mut r = block(M);
    r.w(DEVICE_FEATURES_SEL, 0);
    let lo = r.r(DEVICE_FEATURES);
    assert_ne!(lo & (1 << VIRTIO_F_INDIRECT_DESC), 0);
    assert_ne!(lo & (1 << VIRTIO_BLK_F_FLUSH), 0);
    r.w(DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        r.r(DEVICE_FEATURES) & 1,
        1,
        "VERSION_1 offered in page 1 (§6.2)"
    );
    for sel in [2, 3, 0x7fff_ffff, u32::MAX] {
        r.w(DEVICE_FEATURES_SEL, sel);
        assert_eq!(
            r.r(DEVICE_FEATURES),
            0,
            "page {sel} beyond offered bits reads 0"
        );
    }
    let mut l = block(L);
    l.w(DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        l.r(DEVICE_FEATURES),
        0,
        "legacy device does not offer VERSION_1"
    );
}

#[test]
fn s4_2_2_queue_num_max_of_absent_queue_is_zero() {
    let mut r = entropy(M);
    r.w(QUEUE_SEL, 0);
    assert_eq!(r.r(QUEUE_NUM_MAX), 256);
    for sel in [1, 2, 1000, u32::MAX] {
        r.w(QUEUE_SEL, sel);
        assert_eq!(r.r(QUEUE_NUM_MAX), 0);
        assert_eq!(r.r(QUEUE_READY), 0);
        r.w(QUEUE_READY, 1);
        assert_eq!(r.r(QUEUE_READY), 0, "absent queue stays not ready");
    }
}

#[test]
fn s2_2_2_features_ok_refused_for_unoffered_feature() {
    let mut r = entropy(M);
    let st = r.negotiate(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH));
    assert_eq!(st as u8 & FEATURES_OK, 0);
    assert_eq!(st as u8, ACKNOWLEDGE | DRIVER);
    let st = r.negotiate(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX));
    assert_eq!(st as u8, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

#[test]
fn s2_2_2_features_ok_refused_for_bit_in_page_two() {
    let mut r = entropy(M);
    r.w(STATUS, 3);
    r.w(DRIVER_FEATURES_SEL, 1);
    r.w(DRIVER_FEATURES, 1);
    r.w(DRIVER_FEATURES_SEL, 2);
    r.w(DRIVER_FEATURES, 1);
    r.w(STATUS, 0xb);
    assert_eq!(r.r(STATUS), 3);
}

#[test]
fn s6_2_features_ok_refused_without_version_1() {
    let mut r = entropy(M);
    assert_eq!(r.negotiate(0) as u8 & FEATURES_OK, 0);
    let mut k = DeviceConfig::new(M);
    k.knobs.require_version_1 = false;
    let mut r = rig(k, Box::new(EntropyBackend::new(0)));
    assert_ne!(r.negotiate(0) as u8 & FEATURES_OK, 0);
}

#[test]
fn s2_2_2_driver_features_ignored_after_features_ok() {
    let mut r = entropy(M);
    r.negotiate(bit(VIRTIO_F_VERSION_1));
    r.w(DRIVER_FEATURES_SEL, 0);
    r.w(DRIVER_FEATURES, 1 << VIRTIO_F_EVENT_IDX);
    assert_eq!(r.dev.driver_features(), bit(VIRTIO_F_VERSION_1));
}

#[test]
fn s2_1_status_reads_back_and_single_write_ack_driver() {
    let mut r = entropy(M);
    assert_eq!(r.r(STATUS), 0, "status starts at 0");
    r.w(STATUS, 3);
    assert_eq!(r.r(STATUS), 3, "ACKNOWLEDGE|DRIVER in one write");
}

#[test]
fn s2_4_reset_clears_everything() {
    let mut r = entropy(M);
    r.init(0);
    r.post(0, &[(16, true)]);
    assert_eq!(r.r(INTERRUPT_STATUS), INT_USED_BUFFER);
    r.w(QUEUE_SEL, 0);
    assert_eq!(r.r(QUEUE_READY), 1);
    r.w(STATUS, 0);
    assert_eq!(r.r(STATUS), 0);
    assert_eq!(r.r(INTERRUPT_STATUS), 0);
    assert_eq!(r.r(QUEUE_READY), 0);
    assert_eq!(r.dev.driver_features(), 0);
    // Re-initialisation works and the queue restarts at index 0.
    r.q = DriverQueue::modern(RING_BASE, 8);
    r.init(0);
    r.post(0, &[(8, true)]);
    assert_eq!(r.used(), vec![(0, 8)]);
}

#[test]
fn s2_5_config_generation_and_config_interrupt() {
    let mut r = block(M);
    let g0 = r.r(CONFIG_GENERATION);
    assert_eq!(r.r(CONFIG_GENERATION), g0, "stable when nothing changed");
    r.dev.update_config(0, &128u64.to_le_bytes());
    assert_ne!(r.r(CONFIG_GENERATION), g0);
    assert_eq!(
        r.r(INTERRUPT_STATUS),
        0,
        "no config interrupt before DRIVER_OK"
    );
    r.init(0);
    r.dev.update_config(0, &256u64.to_le_bytes());
    assert_eq!(r.r(INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    r.w(INTERRUPT_ACK, INT_CONFIG_CHANGE);
    assert_eq!(r.r(INTERRUPT_STATUS), 0);
}

#[test]
fn s4_2_2_config_space_widths_agree() {
    let mut r = block(M);
    let mut b8 = [0u8; 8];
    r.dev.read(CONFIG, &mut b8);
    assert_eq!(u64::from_le_bytes(b8), 64);
    let lo = r.r(CONFIG);
    let hi = r.r(CONFIG + 4);
    assert_eq!((hi as u64) << 32 | lo as u64, 64);
    let mut bytes = [0u8; 8];
    for k in 0..8 {
        let mut one = [0xa5u8];
        r.dev.read(CONFIG + k, &mut one);
        bytes[k as usize] = one[0];
    }
    assert_eq!(bytes, b8);
    let mut two = [0u8; 2];
    r.dev.read(CONFIG + 16, &mut two);
    assert_eq!(u16::from_le_bytes(two), 16, "geometry.cylinders");
    let mut past = [0xa5u8; 4];
    r.dev.read(CONFIG + 0x80, &mut past);
    assert_eq!(past, [0; 4], "beyond the config space reads 0");
}

#[test]
fn s4_2_2_narrow_control_access_is_ignored() {
    let mut r = entropy(M);
    let mut b = [0xa5u8; 2];
    r.dev.read(MAGIC, &mut b);
    assert_eq!(b, [0xa5, 0xa5], "untouched by default knob");
    r.dev.write(STATUS, &[1]);
    assert_eq!(r.r(STATUS), 0);
    let mut u = [0xa5u8; 4];
    r.dev.read(0x2, &mut u);
    assert_eq!(u, [0xa5; 4], "misaligned read untouched");
}

#[test]
fn s4_2_2_shared_memory_regions() {
    let mut r = entropy(M);
    r.w(SHM_SEL, 0);
    assert_eq!(r.r(SHM_LEN_LOW), u32::MAX);
    assert_eq!(r.r(SHM_LEN_HIGH), u32::MAX);
    let mut cfg = DeviceConfig::new(M);
    cfg.shm_regions = vec![ShmRegion {
        base: 0x1_2345_6000,
        len: 0x2000,
    }];
    let mut r = rig(cfg, Box::new(EntropyBackend::new(0)));
    r.w(SHM_SEL, 0);
    assert_eq!(r.r(SHM_LEN_LOW), 0x2000);
    assert_eq!(r.r(SHM_BASE_HIGH), 1);
    r.w(SHM_SEL, 1);
    assert_eq!(r.r(SHM_BASE_LOW), u32::MAX);
}

#[test]
fn s2_6_1_queue_reset_only_when_negotiated() {
    let mut r = entropy(M);
    r.init(0);
    r.w(QUEUE_SEL, 0);
    r.w(QUEUE_RESET, 1);
    assert_eq!(r.r(QUEUE_READY), 1, "RING_RESET not negotiated: ignored");
    let mut r = entropy(M);
    r.init(bit(VIRTIO_F_RING_RESET));
    r.post(0, &[(4, true)]);
    r.w(QUEUE_RESET, 1);
    assert_eq!(r.r(QUEUE_RESET), 0, "reset complete");
    assert_eq!(r.r(QUEUE_READY), 0);
    // Re-enable with a fresh ring: indices start at 0 again.
    r.q = DriverQueue::modern(RING_BASE + 0x1_0000, 8);
    r.setup_queue();
    r.post(0, &[(4, true)]);
    assert_eq!(r.used(), vec![(0, 4)]);
}

#[test]
fn s5_4_entropy_request_completes_with_interrupt() {
    let mut r = entropy(M);
    r.init(0);
    r.dev.ram_mut().set_recording(true);
    r.post(0, &[(16, true), (16, true)]);
    assert_eq!(r.used(), vec![(0, 32)]);
    assert_eq!(r.r(INTERRUPT_STATUS), INT_USED_BUFFER);
    assert_eq!(
        r.dev.take_interrupts(),
        vec![Interrupt::UsedBuffer { queue: 0 }]
    );
    // §2.7.5.1 / §2.7.8: no write to the descriptor table or the available ring.
    let q = r.q.clone();
    for a in r.dev.ram().accesses() {
        if a.kind == AccessKind::Write {
            let in_used = a.gpa >= q.used && a.end() <= q.used + 6 + 8 * 8;
            let in_buf = a.gpa >= BUF_BASE && a.end() <= BUF_BASE + 32;
            assert!(in_used || in_buf, "unexpected write {a:?}");
        }
    }
}

#[test]
fn s2_1_2_no_buffers_consumed_before_driver_ok() {
    let mut r = entropy(M);
    r.negotiate(bit(VIRTIO_F_VERSION_1));
    r.setup_queue();
    r.post(0, &[(16, true)]);
    assert_eq!(r.q.used_idx(&mut r.mem).unwrap(), 0);
    assert_eq!(r.r(INTERRUPT_STATUS), 0);
    r.w(STATUS, 0xf);
    r.w(QUEUE_NOTIFY, 0);
    assert_eq!(r.used(), vec![(0, 16)]);
}

fn blk_request(
    r: &mut Rig,
    kind: u32,
    sector: u64,
    data: &[u8],
    readable_data: bool,
    status_len: u32,
) -> (u32, u32) {
    use vm_memory::Bytes;
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..].copy_from_slice(&sector.to_le_bytes());
    r.mem
        .write_slice(&hdr, vm_memory::GuestAddress(BUF_BASE))
        .unwrap();
    if readable_data {
        r.mem
            .write_slice(data, vm_memory::GuestAddress(BUF_BASE + 16))
            .unwrap();
    }
    let mut bufs = vec![(16, false), (data.len() as u32, !readable_data)];
    if status_len > 0 {
        bufs.push((status_len, true));
    }
    let head = r.q.avail_idx.wrapping_mul(4) % r.q.size;
    r.post(head, &bufs);
    let used = r.used();
    assert_eq!(used.len(), 1);
    used[0]
}

#[test]
fn s5_2_block_write_then_read_back() {
    use vm_memory::Bytes;
    let mut r = block(M);
    r.init(bit(VIRTIO_BLK_F_FLUSH));
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let (_, len) = blk_request(&mut r, 1, 2, &data, true, 1);
    assert_eq!(len, 1, "OUT writes only the status byte");
    let (_, len) = blk_request(&mut r, 0, 2, &[0u8; 1024], false, 1);
    assert_eq!(len, 1025);
    let mut back = vec![0u8; 1024];
    r.mem
        .read_slice(&mut back, vm_memory::GuestAddress(BUF_BASE + 16))
        .unwrap();
    assert_eq!(back, data);
    let mut st = [9u8];
    r.mem
        .read_slice(&mut st, vm_memory::GuestAddress(BUF_BASE + 16 + 1024))
        .unwrap();
    assert_eq!(st[0], 0);
    let (_, len) = blk_request(&mut r, 4, 0, &[], false, 1);
    assert_eq!(len, 1, "FLUSH");
    let (_, len) = blk_request(&mut r, 8, 0, &[0u8; 20], false, 1);
    assert_eq!(len, 21, "GET_ID");
    let (_, len) = blk_request(&mut r, 99, 0, &[], false, 1);
    assert_eq!(len, 1);
    r.mem
        .read_slice(&mut st, vm_memory::GuestAddress(BUF_BASE + 16))
        .unwrap();
    assert_eq!(st[0], 2, "UNSUPP");
    let (_, len) = blk_request(&mut r, 0, 1 << 40, &[0u8; 512], false, 1);
    assert_eq!(len, 513);
    r.mem
        .read_slice(&mut st, vm_memory::GuestAddress(BUF_BASE + 16 + 512))
        .unwrap();
    assert_eq!(st[0], 1, "IOERR past capacity");
}

#[test]
fn s5_2_block_header_only_request_returned_with_len_0() {
    let mut r = block(M);
    r.init(0);
    r.post(0, &[(16, false)]);
    assert_eq!(r.used(), vec![(0, 0)]);
    assert_eq!(r.r(STATUS) as u8 & DEVICE_NEEDS_RESET, 0);
}

fn expect_needs_reset(r: &mut Rig, what: &str) {
    let st = r.r(STATUS) as u8;
    assert_ne!(
        st & DEVICE_NEEDS_RESET,
        0,
        "{what}: DEVICE_NEEDS_RESET expected, status {st:#x}"
    );
    assert_ne!(
        r.r(INTERRUPT_STATUS) & INT_CONFIG_CHANGE,
        0,
        "{what}: config interrupt (§2.1.2)"
    );
    assert_eq!(
        r.q.used_idx(&mut r.mem).unwrap(),
        0,
        "{what}: chain not used"
    );
    assert!(!r.dev.budget_exhausted(), "{what}: no hang");
}

fn raw_chain(r: &mut Rig, descs: &[(u16, Descriptor)], features: u64) {
    r.init(features);
    for (i, d) in descs {
        r.q.write_descriptor(&mut r.mem, *i, d).unwrap();
    }
    r.q.publish(&mut r.mem, &[0]).unwrap();
    r.dev.ram_mut().set_recording(true);
    r.w(QUEUE_NOTIFY, 0);
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
    Descriptor {
        addr,
        len,
        flags,
        next,
    }
}

#[test]
fn s2_7_5_looped_chain_sets_needs_reset() {
    let mut r = entropy(M);
    raw_chain(
        &mut r,
        &[(0, d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0))],
        0,
    );
    expect_needs_reset(&mut r, "loop");
    assert!(matches!(
        r.dev.last_error(),
        Some(QueueError::ChainTooLong { limit: 8 })
    ));
    // Reset recovers the device.
    r.w(STATUS, 0);
    r.q = DriverQueue::modern(RING_BASE, 8);
    r.init(0);
    r.post(0, &[(8, true)]);
    assert_eq!(r.used(), vec![(0, 8)]);
}

#[test]
fn s2_7_5_next_out_of_range() {
    let mut r = entropy(M);
    raw_chain(
        &mut r,
        &[(0, d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 8))],
        0,
    );
    expect_needs_reset(&mut r, "next out of range");
}

#[test]
fn s2_7_5_descriptor_beyond_memory_and_overflow() {
    for (addr, len) in [(RAM, 8), (RAM - 4, 8), (u64::MAX - 3, 8), (u64::MAX, 1)] {
        let mut r = entropy(M);
        raw_chain(&mut r, &[(0, d(addr, len, VIRTQ_DESC_F_WRITE, 0))], 0);
        expect_needs_reset(&mut r, "beyond memory");
        for a in r.dev.ram().accesses() {
            assert!(a.end() <= RAM, "access outside memory {a:?}");
            assert!(
                !(a.kind == AccessKind::Write && a.gpa >= BUF_BASE),
                "buffer written {a:?}"
            );
        }
    }
}

#[test]
fn s2_7_5_buffer_ending_at_last_byte_of_memory_is_valid() {
    let mut r = entropy(M);
    raw_chain(&mut r, &[(0, d(RAM - 16, 16, VIRTQ_DESC_F_WRITE, 0))], 0);
    assert_eq!(r.used(), vec![(0, 16)]);
    assert_eq!(r.r(STATUS), 0xf);
}

#[test]
fn s2_7_13_avail_index_jump_is_an_error() {
    let mut r = entropy(M);
    r.init(0);
    r.q.write_descriptor(&mut r.mem, 0, &d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE, 0))
        .unwrap();
    r.q.set_avail_idx(&mut r.mem, 9).unwrap();
    r.w(QUEUE_NOTIFY, 0);
    expect_needs_reset(&mut r, "avail jump");
    assert!(matches!(
        r.dev.last_error(),
        Some(QueueError::AvailIdxJump { ahead: 9, .. })
    ));
}

#[test]
fn s2_7_5_3_indirect_rules() {
    let table = BUF_BASE + 0x1000;
    let ind = VIRTQ_DESC_F_INDIRECT;
    // Not negotiated.
    let mut r = entropy(M);
    raw_chain(&mut r, &[(0, d(table, 16, ind, 0))], 0);
    expect_needs_reset(&mut r, "indirect not negotiated");
    // INDIRECT with NEXT.
    let mut r = entropy(M);
    raw_chain(
        &mut r,
        &[(0, d(table, 16, ind | VIRTQ_DESC_F_NEXT, 1))],
        bit(VIRTIO_F_INDIRECT_DESC),
    );
    expect_needs_reset(&mut r, "indirect with next");
    // Length not a multiple of 16, and 0.
    for len in [0, 15, 24] {
        let mut r = entropy(M);
        raw_chain(
            &mut r,
            &[(0, d(table, len, ind, 0))],
            bit(VIRTIO_F_INDIRECT_DESC),
        );
        expect_needs_reset(&mut r, "indirect length");
    }
    // Nested.
    let mut r = entropy(M);
    DriverQueue::write_descriptor_at(&mut r.mem, table, 0, &d(table, 16, ind, 0)).unwrap();
    raw_chain(
        &mut r,
        &[(0, d(table, 16, ind, 0))],
        bit(VIRTIO_F_INDIRECT_DESC),
    );
    expect_needs_reset(&mut r, "nested indirect");
}

#[test]
fn s2_7_5_3_2_indirect_chain_and_write_flag_ignored() {
    let table = BUF_BASE + 0x1000;
    for flags in [
        VIRTQ_DESC_F_INDIRECT,
        VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE,
    ] {
        let mut r = entropy(M);
        DriverQueue::write_descriptor_at(
            &mut r.mem,
            table,
            0,
            &d(BUF_BASE, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1),
        )
        .unwrap();
        DriverQueue::write_descriptor_at(
            &mut r.mem,
            table,
            1,
            &d(BUF_BASE + 4, 12, VIRTQ_DESC_F_WRITE, 0),
        )
        .unwrap();
        raw_chain(
            &mut r,
            &[(0, d(table, 32, flags, 0))],
            bit(VIRTIO_F_INDIRECT_DESC),
        );
        assert_eq!(r.used(), vec![(0, 16)]);
        for a in r.dev.ram().accesses() {
            assert!(
                !(a.kind == AccessKind::Write && a.gpa >= table && a.gpa < table + 32),
                "table written"
            );
        }
    }
}

#[test]
fn s2_7_4_2_readable_after_writable_rejected() {
    let mut r = entropy(M);
    raw_chain(
        &mut r,
        &[
            (0, d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)),
            (1, d(BUF_BASE + 8, 8, 0, 0)),
        ],
        0,
    );
    expect_needs_reset(&mut r, "readable after writable");
}

#[test]
fn knob_skip_chain_returns_head_with_len_0() {
    let mut cfg = DeviceConfig::new(M);
    cfg.knobs.malformed_chain = MalformedChainPolicy::SkipChain;
    let mut r = rig(cfg, Box::new(EntropyBackend::new(0)));
    raw_chain(
        &mut r,
        &[(0, d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0))],
        0,
    );
    assert_eq!(r.used(), vec![(0, 0)]);
    assert_eq!(r.r(STATUS), 0xf);
}

#[test]
fn s2_7_13_indices_wrap_past_65535() {
    let mut r = entropy(M);
    r.init(0);
    for i in 0..8u16 {
        r.q.write_descriptor(
            &mut r.mem,
            i,
            &d(BUF_BASE + 8 * i as u64, 1, VIRTQ_DESC_F_WRITE, 0),
        )
        .unwrap();
    }
    let mut total = 0u32;
    while total < 65536 + 24 {
        r.q.publish(&mut r.mem, &[0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        r.w(QUEUE_NOTIFY, 0);
        let used = r.used();
        assert_eq!(used.len(), 8, "at {total}");
        assert_eq!(
            used.iter().map(|u| u.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 6, 7]
        );
        total += 8;
    }
    assert_eq!(r.q.used_idx(&mut r.mem).unwrap(), (total % 65536) as u16);
    assert_eq!(r.r(STATUS), 0xf);
}

#[test]
fn s2_7_7_2_no_interrupt_flag_without_event_idx() {
    let mut r = entropy(M);
    r.init(0);
    r.q.set_avail_flags(&mut r.mem, VIRTQ_AVAIL_F_NO_INTERRUPT)
        .unwrap();
    r.q.set_used_event(&mut r.mem, 0x1234).unwrap();
    r.post(0, &[(4, true)]);
    assert_eq!(r.used().len(), 1);
    assert_eq!(
        r.r(INTERRUPT_STATUS),
        0,
        "SHOULD NOT notify with NO_INTERRUPT"
    );
    r.q.set_avail_flags(&mut r.mem, 0).unwrap();
    r.post(1, &[(4, true)]);
    assert_eq!(
        r.r(INTERRUPT_STATUS),
        INT_USED_BUFFER,
        "MUST notify, used_event ignored"
    );
}

#[test]
fn s2_7_7_2_event_idx_notifies_exactly_at_used_event() {
    let mut r = entropy(M);
    r.init(bit(VIRTIO_F_EVENT_IDX));
    r.q.set_avail_flags(&mut r.mem, VIRTQ_AVAIL_F_NO_INTERRUPT)
        .unwrap();
    r.q.set_used_event(&mut r.mem, 3).unwrap();
    let mut notified = vec![];
    for i in 0..6u16 {
        r.post(i % 8, &[(4, true)]);
        notified.push(r.r(INTERRUPT_STATUS) & INT_USED_BUFFER != 0);
        r.w(INTERRUPT_ACK, 1);
    }
    // The element placed at used index 3 (used.idx 3 -> 4) triggers the notification.
    assert_eq!(notified, vec![false, false, false, true, false, false]);
    // avail_event is published with the device's next available index.
    assert_eq!(r.mem_u16(r.q.avail_event_addr()), 6);
}

trait Peek {
    fn mem_u16(&mut self, gpa: u64) -> u16;
}
impl Peek for Rig {
    fn mem_u16(&mut self, gpa: u64) -> u16 {
        use virtio_reference_device::DriverMemory;
        self.mem.read_u16(gpa).unwrap()
    }
}

#[test]
fn s2_7_10_avail_event_not_written_without_event_idx() {
    let mut r = entropy(M);
    r.init(0);
    let at = r.q.avail_event_addr();
    use vm_memory::Bytes;
    r.mem
        .write_slice(&[0xa5, 0xa5], vm_memory::GuestAddress(at))
        .unwrap();
    r.post(0, &[(4, true)]);
    assert_eq!(r.mem_u16(at), 0xa5a5);
}

#[test]
fn s4_2_4_legacy_queue_pfn_layout() {
    let mut r = entropy(L);
    r.w(STATUS, 1);
    r.w(STATUS, 3);
    r.w(GUEST_PAGE_SIZE, 4096);
    r.w(QUEUE_SEL, 0);
    assert_eq!(r.r(QUEUE_PFN), 0);
    r.w(QUEUE_NUM, 8);
    r.w(QUEUE_ALIGN, 64);
    r.q = DriverQueue::legacy(0x20, 4096, 8, 64);
    r.q.clear(&mut r.mem).unwrap();
    r.w(QUEUE_PFN, 0x20);
    assert_eq!(r.r(QUEUE_PFN), 0x20);
    r.w(STATUS, 7);
    r.post(0, &[(16, true)]);
    assert_eq!(r.used(), vec![(0, 16)]);
    r.w(STATUS, 0);
    assert_eq!(r.r(QUEUE_PFN), 0, "reset clears QueuePFN");
}

#[test]
fn s4_2_4_legacy_queue_align_zero_is_harmless() {
    let mut r = entropy(L);
    r.w(STATUS, 3);
    r.w(QUEUE_NUM, 8);
    r.w(QUEUE_ALIGN, 0);
    r.w(QUEUE_PFN, 0x20);
    r.w(STATUS, 7);
    r.w(QUEUE_NOTIFY, 0);
    // The legacy interface has no DEVICE_NEEDS_RESET: the queue is stopped instead.
    assert_eq!(r.r(STATUS) as u8 & DEVICE_NEEDS_RESET, 0);
    assert!(r.dev.last_error().is_some(), "the queue was refused");
}

#[test]
fn s4_2_2_invalid_queue_size_at_driver_ok() {
    for num in [0u32, 3, 512, 0x10008] {
        let mut r = entropy(M);
        r.negotiate(bit(VIRTIO_F_VERSION_1));
        r.setup_queue();
        r.w(QUEUE_READY, 0);
        r.w(QUEUE_NUM, num);
        r.w(QUEUE_READY, 1);
        r.w(STATUS, 0xf);
        assert_ne!(
            r.r(STATUS) as u8 & DEVICE_NEEDS_RESET,
            0,
            "QueueNum {num:#x}"
        );
        assert_ne!(r.r(INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
    }
}

#[test]
fn s2_7_10_spurious_notifications_are_harmless() {
    let mut r = entropy(M);
    r.init(0);
    for v in [0, 0, 1, 7, 0xffff, u32::MAX] {
        r.w(QUEUE_NOTIFY, v);
    }
    assert_eq!(r.r(STATUS), 0xf);
    r.post(0, &[(4, true)]);
    assert_eq!(r.used(), vec![(0, 4)]);
}

#[test]
fn step_budget_bounds_a_mutant_loop() {
    let mut cfg = DeviceConfig::new(M);
    cfg.mutant = Some(Mutant::NoChainLengthCap);
    cfg.step_budget = 10_000;
    let mut r = rig(cfg, Box::new(EntropyBackend::new(0)));
    raw_chain(
        &mut r,
        &[(0, d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0))],
        0,
    );
    assert!(r.dev.budget_exhausted());
}

#[test]
fn every_mutant_has_a_unique_name() {
    let mut names: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Mutant::ALL.len());
    assert!(Mutant::ALL.len() >= 20);
    for m in Mutant::ALL {
        assert_eq!(Mutant::from_name(m.name()), Some(*m));
    }
}

#[test]
fn s4_2_4_legacy_layout_overflow_is_a_ring_outside_memory() {
    // Found by the mmio_regs fuzzer: GuestPageSize and QueuePFN of 0xffffffff with a huge
    // QueueNum overflowed the legacy layout computation.
    let mut r = entropy(L);
    r.w(STATUS, 3);
    r.w(GUEST_PAGE_SIZE, u32::MAX);
    r.w(QUEUE_NUM, u32::MAX);
    r.w(QUEUE_PFN, u32::MAX);
    r.w(STATUS, 7);
    r.w(QUEUE_NOTIFY, 0);
    assert_eq!(
        r.r(STATUS) as u8 & DEVICE_NEEDS_RESET,
        0,
        "legacy: no DEVICE_NEEDS_RESET"
    );
    assert!(r.dev.last_error().is_some(), "the queue was refused");
    assert_eq!(r.r(MAGIC), MAGIC_VALUE);
}

#[test]
fn s4_2_4_legacy_broken_chain_stops_the_queue_without_needs_reset() {
    // §4.2.4: the legacy interface has no DEVICE_NEEDS_RESET; the device stops using the queue.
    let mut r = entropy(L);
    r.w(STATUS, 3);
    r.w(GUEST_PAGE_SIZE, 4096);
    r.w(QUEUE_NUM, 8);
    r.w(QUEUE_ALIGN, 64);
    r.q = DriverQueue::legacy(0x20, 4096, 8, 64);
    r.q.clear(&mut r.mem).unwrap();
    r.w(QUEUE_PFN, 0x20);
    r.w(STATUS, 7);
    r.q.write_descriptor(
        &mut r.mem,
        0,
        &d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0),
    )
    .unwrap();
    r.q.publish(&mut r.mem, &[0]).unwrap();
    r.w(QUEUE_NOTIFY, 0);
    assert_eq!(
        r.r(STATUS),
        7,
        "no DEVICE_NEEDS_RESET bit on a legacy device"
    );
    assert_eq!(
        r.r(INTERRUPT_STATUS),
        0,
        "no configuration-change interrupt"
    );
    assert_eq!(
        r.q.used_idx(&mut r.mem).unwrap(),
        0,
        "the chain is not used"
    );
    // The queue stays stopped: a valid chain is not used either, until a reset.
    r.q.write_descriptor(&mut r.mem, 1, &d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE, 0))
        .unwrap();
    r.q.publish(&mut r.mem, &[1]).unwrap();
    r.w(QUEUE_NOTIFY, 0);
    assert_eq!(r.q.used_idx(&mut r.mem).unwrap(), 0);
    assert!(!r.dev.budget_exhausted());
    r.w(STATUS, 0);
    assert_eq!(r.r(STATUS), 0);
    assert_eq!(r.r(QUEUE_PFN), 0);
}

#[test]
fn s2_1_2_stop_queue_knob_stops_without_needs_reset() {
    let mut cfg = DeviceConfig::new(M);
    cfg.knobs.malformed_chain = virtio_reference_device::MalformedChainPolicy::StopQueue;
    let mut r = rig(cfg, Box::new(EntropyBackend::new(0)));
    raw_chain(
        &mut r,
        &[(0, d(BUF_BASE, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0))],
        0,
    );
    assert_eq!(r.r(STATUS) as u8 & DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.q.used_idx(&mut r.mem).unwrap(), 0);
    assert!(r.dev.last_error().is_some());
}
