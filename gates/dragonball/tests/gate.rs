//! The gate: the whole virtio-conform suite against Dragonball's devices, from this crate's
//! own `cargo test`, through the library API. Writes the JSON and JUnit reports under
//! `target/virtio-conform/` and fails on anything the committed expectations do not excuse.
//!
//! Needs a usable `/dev/kvm` (Dragonball's transport needs a KVM VM with an in-kernel
//! irqchip). Without it the test prints that it skipped and why, unless
//! `VIRTIO_CONFORM_REQUIRE_KVM=1`, which turns the skip into a failure.
//! `VIRTIO_CONFORM_ONLY=<glob>` runs only the matching cases (the replay command of every
//! result uses it).

use std::path::{Path, PathBuf};
use virtio_conform::report::{self, Expectations};
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform_gate_dragonball::{Device, DragonballTarget};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Why KVM cannot be used here, if it cannot.
fn kvm_unusable() -> Option<String> {
    match DragonballTarget::new(Device::Block) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn gate(device: Device) {
    if let Some(why) = kvm_unusable() {
        if std::env::var_os("VIRTIO_CONFORM_REQUIRE_KVM").is_some() {
            panic!("VIRTIO_CONFORM_REQUIRE_KVM is set but KVM is unusable: {why}");
        }
        println!("skipped: the Dragonball gate needs a usable /dev/kvm: {why}");
        return;
    }
    let suite = Suite::load_default().expect("the suite loads");
    let ex_path = manifest_dir().join("expectations.json");
    let expectations = Expectations::load(&ex_path).expect("expectations.json loads");
    let opts = Options {
        only: std::env::var("VIRTIO_CONFORM_ONLY")
            .map(|g| vec![g])
            .unwrap_or_default(),
        expectations: Some(expectations),
        replay: Some(
            "cd gates/dragonball && VIRTIO_CONFORM_ONLY='{case}' cargo test --test gate -- --nocapture"
                .into(),
        ),
        ..Options::default()
    };
    let report = run_suite(&suite, || DragonballTarget::new(device), &opts);
    let out: PathBuf = manifest_dir().join("target").join("virtio-conform");
    std::fs::create_dir_all(&out).expect("report directory");
    let stem = format!("dragonball-{}", device.name());
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    std::fs::write(out.join(format!("{stem}.json")), json).expect("JSON report written");
    std::fs::write(
        out.join(format!("{stem}.junit.xml")),
        report::junit(&report),
    )
    .expect("JUnit report written");
    let summary = report::text_summary(&report, &suite.catalog, false);
    println!("{summary}");
    assert!(report.results.len() > 1, "the suite ran: {summary}");
    assert_eq!(report.exit_code(true), 0, "unexpected results:\n{summary}");
}

#[test]
fn dragonball_block() {
    gate(Device::Block);
}
