//! Discovery by MagicValue and Version: a device whose identity differs from what the run
//! expects is reported as a failed check with its section (exit 1), never an exit 2 without
//! a report.

use std::process::Command;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::qemu::{discover, qemu_version, TransportId};
use virtio_conform::target::{
    once, Capabilities, DeviceKind, ReferenceTarget, Target, TargetError, TargetInfo,
};
use virtio_reference_device::TransportVersion;

const MAGIC: u32 = 0x7472_6976;

fn slot(magic: u32, version: u32, device_id: u32) -> TransportId {
    TransportId {
        magic,
        device_id,
        version,
    }
}

#[test]
fn discovery_follows_magic_and_version() {
    let empty = slot(MAGIC, 2, 0);
    let rng = slot(MAGIC, 2, 4);
    let blk = slot(MAGIC, 2, 2);
    // The wanted DeviceID is preferred, wherever it sits.
    assert_eq!(discover(&[empty, rng, blk], 2), Some(2));
    // Otherwise the first device present, so its identity can be reported.
    assert_eq!(discover(&[empty, rng, blk], 1), Some(1));
    // Empty slots, a wrong magic value and an unknown version are not devices.
    assert_eq!(
        discover(&[empty, slot(0, 2, 4), slot(MAGIC, 3, 4)], 4),
        None
    );
    assert_eq!(discover(&[slot(MAGIC, 1, 4)], 2), Some(0));
}

/// The reference entropy device presented to a run that expects a block device.
struct Disguised(ReferenceTarget);

impl Target for Disguised {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            device: "block".into(),
            ..self.0.info()
        }
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn ram_size(&self) -> u64 {
        self.0.ram_size()
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        self.0.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.0.write(offset, data)
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.0.mem_write(gpa, data)
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.0.mem_read(gpa, buf)
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        self.0.fresh()
    }
    fn synchronous(&self) -> bool {
        true
    }
}

#[test]
fn wrong_device_id_is_a_failed_check_in_the_report() {
    let s = Suite::load_default().unwrap();
    let t = Disguised(
        ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None).unwrap(),
    );
    let opts = Options {
        only: vec!["identity.*".into()],
        ..Options::default()
    };
    let report = run_suite(&s, once(t), &opts);
    let r = report
        .results
        .iter()
        .find(|r| r.case == "identity.block-device-id")
        .expect("the block identity case runs");
    let f = &r.failures[0];
    assert_eq!(f.requirements[0].id, "BLK-ID-01");
    assert_eq!(f.requirements[0].section, "5.2.1");
    assert!(f.observed.contains("0x4"), "{}", f.observed);
    assert_eq!(report.exit_code(false), 1);
    // The identity the run expects passes on the reference itself.
    let t = ReferenceTarget::new(DeviceKind::Block, TransportVersion::Modern, None).unwrap();
    assert_eq!(run_suite(&s, once(t), &opts).exit_code(true), 0);
}

/// QEMU started with an entropy device for a run that expects block: exit 1 and a JSON
/// report whose failed check cites §5.2.1.
#[test]
fn qemu_with_another_device_reports_exit_1() {
    if let Err(e) = qemu_version("qemu-system-x86_64".as_ref()) {
        println!("skipped: QEMU unavailable: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let st = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args(["run", "--target", "qemu", "--device", "block"])
        .args(["--qemu-device", "virtio-rng-device", "--only", "identity.*"])
        .args(["--format", "json", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let failed: Vec<_> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["failures"].as_array().unwrap().clone())
        .collect();
    assert!(
        failed
            .iter()
            .any(|f| f["requirements"][0]["section"] == "5.2.1"),
        "{failed:?}"
    );
}
