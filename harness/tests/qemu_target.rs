//! Integration tests of the QEMU target. They run only where `qemu-system-x86_64` works
//! (install it with `scripts/install-qemu.sh`); elsewhere each prints
//! `skipped: QEMU unavailable: <reason>` and passes. Set `VIRTIO_CONFORM_REQUIRE_QEMU=1` to
//! turn a missing QEMU into a failure instead.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use virtio_conform::target::qemu::{qemu_version, QemuOptions, QemuTarget};
use virtio_conform::target::{DeviceKind, IrqEvent, Target, TargetError, TargetMemory};
use virtio_reference_device::regs::*;
use virtio_reference_device::{Descriptor, DriverQueue, TransportVersion};

const VENDOR_QEMU: u32 = 0x554d_4551;

/// Options for `device`/`version`, or `None` (after printing why) when QEMU is unavailable.
fn options(device: DeviceKind, version: TransportVersion) -> Option<QemuOptions> {
    let opts = QemuOptions::new(device, version);
    match qemu_version(&opts.qemu) {
        Ok(_) => Some(opts),
        Err(e) => {
            if std::env::var_os("VIRTIO_CONFORM_REQUIRE_QEMU").is_some_and(|v| v == "1") {
                panic!("QEMU required but unavailable: {e}");
            }
            let reason = match e {
                TargetError::Unavailable(m) => m,
                other => other.to_string(),
            };
            println!("skipped: QEMU unavailable: {reason}");
            None
        }
    }
}

fn start(device: DeviceKind, version: TransportVersion) -> Option<QemuTarget> {
    let opts = options(device, version)?;
    Some(QemuTarget::new(opts).expect("QEMU target starts"))
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only count processes that are not dead yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn pgrep(pattern: &Path) -> Vec<String> {
    Command::new("pgrep")
        .arg("-f")
        .arg(pattern)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

fn identity(t: &mut QemuTarget) -> (u32, u32, u32, u32) {
    (
        t.read32(MAGIC).unwrap(),
        t.read32(VERSION).unwrap(),
        t.read32(DEVICE_ID).unwrap(),
        t.read32(VENDOR_ID).unwrap(),
    )
}

#[test]
fn identity_registers_rng_v1_v2_block_v2_net_v2() {
    let cases = [
        (DeviceKind::Entropy, TransportVersion::Legacy, 1, 4),
        (DeviceKind::Entropy, TransportVersion::Modern, 2, 4),
        (DeviceKind::Block, TransportVersion::Modern, 2, 2),
        (DeviceKind::Net, TransportVersion::Modern, 2, 1),
    ];
    for (device, version, want_version, want_id) in cases {
        let Some(mut t) = start(device, version) else {
            return;
        };
        assert_eq!(
            identity(&mut t),
            (MAGIC_VALUE, want_version, want_id, VENDOR_QEMU),
            "{device:?} {version:?}"
        );
        let info = t.info();
        assert_eq!(info.name, "qemu");
        assert_eq!(info.device, device.name());
        assert_eq!(info.version, want_version);
        assert!(
            info.implementation.starts_with("QEMU emulator version"),
            "{info:?}"
        );
        let caps = t.capabilities();
        assert!(caps.interrupts && !caps.memory_log);
        // Host-side configuration changes go through QMP: block_resize for block,
        // set_link / announce-self for net.
        assert_eq!(
            caps.config_change,
            matches!(device, DeviceKind::Block | DeviceKind::Net),
            "{device:?}"
        );
        assert_eq!(t.ram_size(), 16 << 20);
        // Narrow reads of control registers are answered (QEMU returns 0 for them: the
        // spec leaves such reads open); the read must not fail.
        let mut b = [0xa5u8; 1];
        t.read(MAGIC, &mut b).unwrap();
        let mut h = [0xa5u8; 2];
        t.read(MAGIC, &mut h).unwrap();
        if device == DeviceKind::Block {
            // Configuration space takes any width: capacity (u64, in 512-byte sectors) of
            // the target's raw disk image, read as 8, 4, 2 and 1 bytes.
            let mut q = [0xa5u8; 8];
            t.read(CONFIG, &mut q).unwrap();
            let cap = u64::from_le_bytes(q);
            assert_eq!(
                cap,
                (virtio_conform::target::qemu::BLOCK_IMAGE_BYTES / 512) as u64
            );
            assert_eq!(t.read32(CONFIG).unwrap(), cap as u32);
            t.read(CONFIG, &mut h).unwrap();
            assert_eq!(u16::from_le_bytes(h), cap as u16);
            t.read(CONFIG + 2, &mut b).unwrap();
            assert_eq!(b[0], (cap >> 16) as u8);
        }
    }
}

/// Status handshake and feature negotiation of §3.1.1 for a version-2 device.
fn modern_handshake(t: &mut QemuTarget) {
    t.write32(STATUS, 0).unwrap();
    t.write32(STATUS, ACKNOWLEDGE as u32).unwrap();
    t.write32(STATUS, (ACKNOWLEDGE | DRIVER) as u32).unwrap();
    t.write32(DEVICE_FEATURES_SEL, 1).unwrap();
    let hi = t.read32(DEVICE_FEATURES).unwrap();
    assert_eq!(hi & 1, 1, "VIRTIO_F_VERSION_1 offered");
    t.write32(DRIVER_FEATURES_SEL, 0).unwrap();
    t.write32(DRIVER_FEATURES, 0).unwrap();
    t.write32(DRIVER_FEATURES_SEL, 1).unwrap();
    t.write32(DRIVER_FEATURES, 1).unwrap();
    t.write32(STATUS, (ACKNOWLEDGE | DRIVER | FEATURES_OK) as u32)
        .unwrap();
    assert_eq!(
        t.read32(STATUS).unwrap() as u8,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
        "FEATURES_OK accepted"
    );
}

/// Makes one 16-byte device-writable buffer available on `q`, notifies, and checks the
/// completion, the buffer contents, InterruptStatus and the interrupt line.
fn entropy_request(t: &mut QemuTarget, q: &mut DriverQueue) {
    const BUF: u64 = 0x20_0000;
    t.mem_write(BUF, &[0u8; 16]).unwrap();
    let d = Descriptor {
        addr: BUF,
        len: 16,
        flags: VIRTQ_DESC_F_WRITE,
        next: 0,
    };
    {
        let mut mem = TargetMemory(&mut *t);
        q.write_descriptor(&mut mem, 0, &d).unwrap();
        q.publish(&mut mem, &[0]).unwrap();
    }
    // Line events arrive asynchronously; collect them from here on (a raise may race ahead
    // of the notify's reply) and wait for the raise below.
    t.sync().unwrap();
    let mut irqs = t.take_interrupts();
    t.write32(QUEUE_NOTIFY, 0).unwrap();

    let end = Instant::now() + Duration::from_secs(5);
    let used = loop {
        let idx = q.used_idx(&mut TargetMemory(&mut *t)).unwrap();
        if idx != 0 || Instant::now() > end {
            break idx;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used, 1, "used.idx");
    let elems = q.take_used(&mut TargetMemory(&mut *t)).unwrap();
    assert_eq!(elems, vec![(0, 16)], "used element (id, len)");
    let mut buf = [0u8; 16];
    t.mem_read(BUF, &mut buf).unwrap();
    assert_ne!(buf, [0u8; 16], "the device wrote random bytes");

    assert_eq!(t.read32(INTERRUPT_STATUS).unwrap() & INT_USED_BUFFER, 1);
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        irqs.extend(t.take_interrupts());
        if irqs.contains(&IrqEvent::Raised) || Instant::now() > end {
            break;
        }
        t.read32(MAGIC).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        irqs.contains(&IrqEvent::Raised),
        "IRQ raise observed: {irqs:?}"
    );
    t.write32(INTERRUPT_ACK, INT_USED_BUFFER).unwrap();
    assert_eq!(t.read32(INTERRUPT_STATUS).unwrap(), 0);
}

#[test]
fn modern_handshake_and_entropy_request() {
    let Some(mut t) = start(DeviceKind::Entropy, TransportVersion::Modern) else {
        return;
    };
    modern_handshake(&mut t);

    let mut q = DriverQueue::modern(0x10_0000, 8);
    q.clear(&mut TargetMemory(&mut t)).unwrap();
    t.write32(QUEUE_SEL, 0).unwrap();
    assert_eq!(t.read32(QUEUE_READY).unwrap(), 0);
    assert!(t.read32(QUEUE_NUM_MAX).unwrap() >= 8);
    t.write32(QUEUE_NUM, q.size as u32).unwrap();
    for (lo, addr) in [
        (QUEUE_DESC_LOW, q.desc),
        (QUEUE_DRIVER_LOW, q.avail),
        (QUEUE_DEVICE_LOW, q.used),
    ] {
        t.write32(lo, addr as u32).unwrap();
        t.write32(lo + 4, (addr >> 32) as u32).unwrap();
    }
    t.write32(QUEUE_READY, 1).unwrap();
    assert_eq!(t.read32(QUEUE_READY).unwrap(), 1);
    t.write32(
        STATUS,
        (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) as u32,
    )
    .unwrap();
    assert_eq!(t.read32(STATUS).unwrap(), 0xf);

    entropy_request(&mut t, &mut q);
    assert!(t.diagnostics().is_none(), "{:?}", t.diagnostics());
}

#[test]
fn legacy_queue_pfn_entropy_request() {
    let Some(mut t) = start(DeviceKind::Entropy, TransportVersion::Legacy) else {
        return;
    };
    t.write32(STATUS, 0).unwrap();
    t.write32(STATUS, (ACKNOWLEDGE | DRIVER) as u32).unwrap();
    t.write32(GUEST_PAGE_SIZE, 4096).unwrap();
    let mut q = DriverQueue::legacy(0x100, 4096, 8, 4096);
    q.clear(&mut TargetMemory(&mut t)).unwrap();
    t.write32(QUEUE_SEL, 0).unwrap();
    assert_eq!(t.read32(QUEUE_PFN).unwrap(), 0);
    t.write32(QUEUE_NUM, 8).unwrap();
    t.write32(QUEUE_ALIGN, 4096).unwrap();
    t.write32(QUEUE_PFN, 0x100).unwrap();
    t.write32(STATUS, (ACKNOWLEDGE | DRIVER | DRIVER_OK) as u32)
        .unwrap();
    entropy_request(&mut t, &mut q);
}

#[test]
fn guest_memory_round_trip_and_bounds() {
    let Some(mut t) = start(DeviceKind::Entropy, TransportVersion::Modern) else {
        return;
    };
    // Larger than one qtest chunk, ending at the last byte of RAM.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let at = t.ram_size() - data.len() as u64;
    t.mem_write(at, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    t.mem_read(at, &mut back).unwrap();
    assert_eq!(back, data);

    assert!(matches!(
        t.mem_write(t.ram_size() - 1, &[0, 0]),
        Err(TargetError::Protocol(_))
    ));
    let mut three = [0xa5u8; 3];
    assert!(matches!(
        t.read(MAGIC, &mut three),
        Err(TargetError::Unsupported(_))
    ));
    let mut four = [0xa5u8; 4];
    assert!(matches!(
        t.read(0x200, &mut four),
        Err(TargetError::Unsupported(_))
    ));
    // The target is still usable after rejected accesses.
    assert_eq!(t.read32(MAGIC).unwrap(), MAGIC_VALUE);
}

#[test]
fn fresh_restarts_in_power_on_state() {
    let Some(mut t) = start(DeviceKind::Entropy, TransportVersion::Modern) else {
        return;
    };
    let first = t.pid().unwrap();
    t.write32(STATUS, ACKNOWLEDGE as u32).unwrap();
    t.mem_write(0x30_0000, &[0xee; 8]).unwrap();
    assert_eq!(t.read32(STATUS).unwrap(), 1);
    t.fresh().unwrap();
    assert_ne!(t.pid().unwrap(), first);
    assert!(!process_alive(first), "the old QEMU was killed");
    assert_eq!(t.read32(STATUS).unwrap(), 0);
    let mut b = [0xa5u8; 8];
    t.mem_read(0x30_0000, &mut b).unwrap();
    assert_eq!(b, [0u8; 8], "RAM is zeroed");
    assert!(t.startup_time().unwrap() < Duration::from_secs(10));
}

#[test]
fn killed_qemu_is_crashed_not_a_panic() {
    let Some(mut t) = start(DeviceKind::Entropy, TransportVersion::Modern) else {
        return;
    };
    // Pipelined writes in flight when QEMU dies.
    for i in 0..100 {
        t.write32(QUEUE_SEL, i % 2).unwrap();
    }
    signal(t.pid().unwrap(), "KILL");
    let err = loop {
        // Writes may still be buffered locally; a read needs QEMU.
        match t.read32(MAGIC) {
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, TargetError::Crashed(_)), "{err:?}");
    // Later operations keep reporting the crash until `fresh`.
    assert!(matches!(t.write32(STATUS, 0), Err(TargetError::Crashed(_))));
    assert!(matches!(
        t.mem_read(0x10_0000, &mut [0u8; 4]),
        Err(TargetError::Crashed(_))
    ));
    assert!(t.take_interrupts().is_empty());
    let _ = t.diagnostics();
    t.fresh().unwrap();
    assert_eq!(t.read32(MAGIC).unwrap(), MAGIC_VALUE);
}

#[test]
fn stopped_qemu_is_hung() {
    let Some(mut opts) = options(DeviceKind::Entropy, TransportVersion::Modern) else {
        return;
    };
    opts.timeout = Duration::from_millis(300);
    let mut t = QemuTarget::new(opts).unwrap();
    let pid = t.pid().unwrap();
    signal(pid, "STOP");
    let started = Instant::now();
    let err = t.read32(MAGIC).unwrap_err();
    assert!(matches!(err, TargetError::Hung(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!process_alive(pid), "a hung QEMU is killed");
    assert!(matches!(t.read32(MAGIC), Err(TargetError::Hung(_))));
}

#[test]
fn drop_leaves_no_qemu_process() {
    let Some(mut t) = start(DeviceKind::Block, TransportVersion::Modern) else {
        return;
    };
    let pid = t.pid().unwrap();
    let sock = t.socket_path().unwrap();
    assert_eq!(t.read32(DEVICE_ID).unwrap(), 2);
    assert!(process_alive(pid));
    assert_eq!(pgrep(&sock), vec![pid.to_string()]);
    // Leave writes in flight: drop must not wait for them.
    for _ in 0..10 {
        t.write32(QUEUE_SEL, 0).unwrap();
    }
    drop(t);
    assert!(!process_alive(pid), "QEMU {pid} still running after drop");
    assert!(
        pgrep(&sock).is_empty(),
        "a process still names {}",
        sock.display()
    );
    assert!(!sock.exists(), "scratch folder removed");
}

#[test]
fn missing_binary_is_unavailable() {
    let mut opts = QemuOptions::new(DeviceKind::Entropy, TransportVersion::Modern);
    opts.qemu = "/nonexistent/qemu-system-x86_64".into();
    match QemuTarget::new(opts) {
        Err(TargetError::Unavailable(m)) => assert!(m.contains("install-qemu.sh"), "{m}"),
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
}

#[test]
fn startup_failure_is_unavailable_with_stderr() {
    let Some(mut opts) = options(DeviceKind::Entropy, TransportVersion::Modern) else {
        return;
    };
    opts.ram_mib = 1 << 40; // 1 EiB of guest RAM: QEMU refuses to start.
                            // With the shared RAM file the harness itself cannot map that much: still Unavailable.
    match QemuTarget::new(opts.clone()) {
        Err(TargetError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
    // Without it, QEMU is started and refuses: its stderr is in the message.
    opts.shared_ram = false;
    match QemuTarget::new(opts) {
        Err(TargetError::Unavailable(m)) => {
            assert!(m.contains("QEMU's stderr"), "{m}");
        }
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
}

/// Every path some live process holds open (the targets of `/proc/*/fd/*`).
fn open_paths() -> std::collections::HashSet<std::path::PathBuf> {
    let mut open = std::collections::HashSet::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(fds) = std::fs::read_dir(p.path().join("fd")) {
            for fd in fds.flatten() {
                if let Ok(t) = std::fs::read_link(fd.path()) {
                    open.insert(t);
                }
            }
        }
    }
    open
}

/// QEMU's guest RAM file, shared with the harness, has no name anywhere: QEMU opens it
/// through the harness's descriptor, and the file has no link, so it cannot outlive the two
/// processes.
#[test]
fn shared_ram_file_has_no_name() {
    use std::os::unix::fs::MetadataExt;
    let Some(opts) = options(DeviceKind::Entropy, TransportVersion::Modern) else {
        return;
    };
    let ram_bytes = opts.ram_mib << 20;
    let mut t = QemuTarget::new(opts).expect("QEMU target starts");
    assert!(t.bulk_cheap(), "shared RAM in use");
    assert_eq!(t.read32(MAGIC).unwrap(), 0x7472_6976);
    let pid = t.pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let mem_path = cmdline
        .split([',', ' '])
        .find_map(|a| a.strip_prefix("mem-path="))
        .unwrap_or_else(|| panic!("no mem-path in {cmdline}"));
    let want = format!("/proc/{}/fd/", std::process::id());
    assert!(mem_path.starts_with(&want), "{mem_path}");
    let meta = std::fs::metadata(mem_path).unwrap();
    assert_eq!(meta.nlink(), 0, "the RAM file has a name");
    assert_eq!(meta.len(), ram_bytes);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.display().to_string();
            assert!(
                !target.contains("virtio-conform-ram-"),
                "QEMU holds {target}"
            );
        }
    }
}

/// Named RAM files that earlier versions left in a folder are removed when no process holds
/// them open; one that is open stays, and other names are untouched.
#[test]
fn orphaned_ram_files_are_removed_held_ones_stay() {
    use virtio_conform::target::qemu_ram::{remove_orphaned_in, LEGACY_PREFIX};
    let dir = tempfile::tempdir().unwrap();
    let orphan = dir.path().join(format!("{LEGACY_PREFIX}orphan"));
    let held = dir.path().join(format!("{LEGACY_PREFIX}held"));
    let other = dir.path().join("someone-elses-file");
    for p in [&orphan, &held, &other] {
        std::fs::write(p, b"ram").unwrap();
    }
    let _holder = std::fs::File::open(&held).unwrap();
    assert_eq!(remove_orphaned_in(dir.path()), 1);
    assert!(!orphan.exists());
    assert!(held.exists());
    assert!(other.exists());
}

/// A run of the built binary against QEMU leaves no RAM file behind in `/dev/shm`, and removes
/// one a killed earlier run left there: afterwards every `virtio-conform-ram-*` file that was
/// there when the run started is gone or held open by a live process (a run of an earlier
/// version in progress; files such runs create meanwhile are theirs, not this run's).
#[test]
fn a_qemu_run_leaves_no_ram_file_in_dev_shm() {
    if options(DeviceKind::Entropy, TransportVersion::Modern).is_none() {
        return;
    }
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        println!("skipped: no /dev/shm");
        return;
    }
    let orphan = shm.join(format!(
        "virtio-conform-ram-left-by-a-killed-run-{}",
        std::process::id()
    ));
    std::fs::write(&orphan, b"ram").unwrap();
    let named = |e: &std::fs::DirEntry| {
        e.file_name()
            .to_string_lossy()
            .starts_with("virtio-conform-ram-")
    };
    let before: Vec<std::path::PathBuf> = std::fs::read_dir(shm)
        .unwrap()
        .flatten()
        .filter(named)
        .map(|e| e.path())
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args([
            "run",
            "--target",
            "qemu",
            "--device",
            "entropy",
            "--version",
            "2",
        ])
        .args(["--only", "malformed.addr-len-overflow", "--format", "json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("all of guest RAM watched"), "{json}");
    assert!(!orphan.exists(), "the orphaned RAM file is still there");
    let open = open_paths();
    for p in before {
        assert!(
            !p.exists() || open.contains(&p),
            "{} outlived its process",
            p.display()
        );
    }
}

/// The shared RAM's zero check (a reused QEMU is replaced when RAM changed after its reset)
/// finds the first nonzero byte, past the first chunk too.
#[test]
fn shared_ram_finds_the_first_nonzero_byte() {
    use virtio_conform::target::qemu_ram::SharedRam;
    let dir = tempfile::tempdir().unwrap();
    let ram = SharedRam::create(3 << 20, dir.path()).unwrap();
    assert_eq!(ram.first_nonzero().unwrap(), None);
    ram.write(0x10_1234, &[7]).unwrap();
    ram.write(0x20_0000, &[1]).unwrap();
    assert_eq!(ram.first_nonzero().unwrap(), Some(0x10_1234));
    let path = ram.path().unwrap();
    assert!(path.starts_with("/proc"), "{}", path.display());
}
