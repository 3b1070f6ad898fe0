//! Property tests: no register access, value sequence or guest-memory content panics or hangs
//! the reference device, and the invariants the spec fixes always hold.

mod common;
use common::*;
use proptest::prelude::*;
use virtio_reference_device::regs::*;
use virtio_reference_device::*;
use vm_memory::{Bytes, GuestAddress};

#[derive(Debug, Clone)]
enum Op {
    Read(u64, usize),
    Write(u64, usize, u64),
    Reset,
    Notify(u32),
    Mem(u64, Vec<u8>),
    Init(u64),
}

fn width() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(2), Just(4), Just(8)]
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets of real registers are drawn more often than arbitrary ones.
    let reg = prop_oneof![
        (0u64..0x40).prop_map(|i| i * 4),
        0u64..0x200,
        Just(u64::MAX - 3),
    ];
    prop_oneof![
        3 => (reg.clone(), width()).prop_map(|(o, w)| Op::Read(o, w)),
        4 => (reg, width(), prop_oneof![0u64..16, any::<u64>(), Just(0xf), Just(0xb)])
            .prop_map(|(o, w, v)| Op::Write(o, w, v)),
        1 => Just(Op::Reset),
        2 => prop_oneof![Just(0u32), any::<u32>()].prop_map(Op::Notify),
        // Random ring contents: the rig's ring lives at RING_BASE, buffers at BUF_BASE.
        3 => (prop_oneof![RING_BASE..RING_BASE + 0x3000, BUF_BASE..BUF_BASE + 0x100], proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(a, b)| Op::Mem(a, b)),
        1 => any::<u64>().prop_map(Op::Init),
    ]
}

fn apply(r: &mut Rig, op: &Op) {
    match op {
        Op::Read(o, w) => {
            let mut b = [0u8; 8];
            r.dev.read(*o, &mut b[..*w]);
        }
        Op::Write(o, w, v) => r.dev.write(*o, &v.to_le_bytes()[..*w]),
        Op::Reset => r.w(STATUS, 0),
        Op::Notify(q) => r.w(QUEUE_NOTIFY, *q),
        Op::Mem(a, b) => r.mem.write_slice(b, GuestAddress(*a)).unwrap(),
        Op::Init(f) => {
            let offered = r.dev.device_features();
            r.negotiate((f & offered) | bit(VIRTIO_F_VERSION_1));
            r.setup_queue();
            r.w(STATUS, 0xf);
        }
    }
}

fn check_invariants(r: &mut Rig, version: u32, device_id: u32) -> Result<(), TestCaseError> {
    prop_assert_eq!(r.r(MAGIC), MAGIC_VALUE);
    prop_assert_eq!(r.r(VERSION), version);
    prop_assert_eq!(r.r(DEVICE_ID), device_id);
    prop_assert!(
        !r.dev.budget_exhausted(),
        "reference exceeded its step budget"
    );
    let st = r.r(STATUS) as u8;
    if st & FEATURES_OK != 0 && version == 2 {
        let offered = r.dev.device_features();
        prop_assert_eq!(
            r.dev.driver_features() & !offered,
            0,
            "FEATURES_OK with unoffered features"
        );
    }
    for a in r.dev.ram_mut().take_accesses() {
        prop_assert!(a.end() <= RAM, "access outside guest memory: {:?}", a);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_never_break_the_device(
        ops in proptest::collection::vec(op(), 1..80),
        legacy in any::<bool>(),
        blk in any::<bool>(),
    ) {
        let version = if legacy { TransportVersion::Legacy } else { TransportVersion::Modern };
        let mut r = if blk { block(version) } else { entropy(version) };
        r.dev.ram_mut().set_recording(true);
        let id = if blk { 2 } else { 4 };
        for op in &ops {
            apply(&mut r, op);
            check_invariants(&mut r, version.register_value(), id)?;
        }
        // Reset restores the reset state (§2.4.1, §4.2.2).
        r.w(STATUS, 0);
        prop_assert_eq!(r.r(STATUS), 0);
        prop_assert_eq!(r.r(INTERRUPT_STATUS), 0);
        r.w(QUEUE_SEL, 0);
        if legacy {
            prop_assert_eq!(r.r(QUEUE_PFN), 0);
        } else {
            prop_assert_eq!(r.r(QUEUE_READY), 0);
        }
    }

    #[test]
    fn random_descriptor_tables_stay_inside_the_chain(
        table in proptest::collection::vec((
            // Buffers away from the rings (a buffer over a ring is the driver's own doing),
            // near and past the end of RAM, and anywhere in the 64-bit space.
            prop_oneof![BUF_BASE..BUF_BASE + 0x10000, RAM - 0x100..RAM + 64, any::<u64>()],
            prop_oneof![0u32..0x2000, any::<u32>()],
            0u16..8,
            0u16..10,
        ), 8),
        heads in proptest::collection::vec(0u16..10, 1..8),
        indirect in any::<bool>(),
    ) {
        let mut r = entropy(TransportVersion::Modern);
        r.init(if indirect { bit(VIRTIO_F_INDIRECT_DESC) } else { 0 });
        for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
            r.q.write_descriptor(&mut r.mem, i as u16, &Descriptor { addr, len, flags, next }).unwrap();
        }
        r.q.publish(&mut r.mem, &heads).unwrap();
        r.dev.ram_mut().set_recording(true);
        r.w(QUEUE_NOTIFY, 0);
        prop_assert!(!r.dev.budget_exhausted());
        let q = r.q.clone();
        for a in r.dev.ram().accesses() {
            prop_assert!(a.end() <= RAM);
            if a.kind == AccessKind::Write {
                // Only into a writable descriptor's buffer or the used ring; so never into the
                // descriptor table or the available ring unless the driver itself pointed a
                // writable buffer there (§2.7.5.1, §2.7.6).
                let in_used = a.gpa >= q.used && a.end() <= q.used + 6 + 8 * 8;
                let in_writable = table.iter().any(|&(addr, len, flags, _)| {
                    flags & VIRTQ_DESC_F_WRITE != 0 && a.gpa >= addr && a.end() <= addr + len as u64
                });
                let in_indirect_buf = indirect; // indirect tables may point anywhere the table says
                if !in_writable && !in_indirect_buf {
                    prop_assert!(!(a.gpa < q.desc + 16 * 8 && a.end() > q.desc), "desc table written: {:?}", a);
                    prop_assert!(!(a.gpa < q.avail + 6 + 16 && a.end() > q.avail), "avail ring written: {:?}", a);
                }
                prop_assert!(in_used || in_writable || in_indirect_buf, "write outside writable buffers: {:?}", a);
            }
        }
        // Used elements name heads that were made available, with len <= writable bytes.
        let used = r.used();
        for (id, _len) in used {
            prop_assert!(heads.contains(&(id as u16)), "used id {} not made available", id);
        }
        prop_assert_eq!(r.r(MAGIC), MAGIC_VALUE);
    }
}
