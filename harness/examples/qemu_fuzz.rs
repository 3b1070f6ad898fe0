//! Throughput of the `diff_mmio` body against QEMU: the `diff_mmio` seeds plus fixed-seed
//! mutations of them (`seeds::mutated_seeds`), once with one QEMU kept across inputs
//! (`QemuOptions::reuse`) and once with a fresh QEMU per input; prints inputs per second and
//! the number of inputs with a finding for each.
//!
//! ```sh
//! cargo run --release -p virtio-conform --example qemu_fuzz -- [inputs] [block|entropy] [1|2]
//! ```
//!
//! Defaults: 200 inputs (the fresh-QEMU pass runs a quarter of them), block, version 2.

use std::time::Instant;
use virtio_conform::fuzz::diff_mmio_against;
use virtio_conform::fuzz::seeds::{mutated_seeds, seeds};
use virtio_conform::target::qemu::{QemuOptions, QemuTarget};
use virtio_conform::target::DeviceKind;
use virtio_reference_device::TransportVersion;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);
    let device = match args.get(1).map(String::as_str) {
        None | Some("block") => DeviceKind::Block,
        Some("entropy") => DeviceKind::Entropy,
        Some(other) => {
            eprintln!("device must be block or entropy, got `{other}`");
            std::process::exit(2);
        }
    };
    let version = match args.get(2).map(String::as_str) {
        None | Some("2") => TransportVersion::Modern,
        Some("1") => TransportVersion::Legacy,
        Some(other) => {
            eprintln!("version must be 1 or 2, got `{other}`");
            std::process::exit(2);
        }
    };
    let mut inputs = seeds("diff_mmio");
    inputs.extend(mutated_seeds(
        "diff_mmio",
        n.saturating_sub(inputs.len()),
        1,
    ));
    inputs.truncate(n.max(1));
    for reuse in [true, false] {
        let opts = QemuOptions {
            reuse,
            ..QemuOptions::new(device, version)
        };
        let count = if reuse {
            inputs.len()
        } else {
            inputs.len().div_ceil(4)
        };
        let start = Instant::now();
        let mut shared = reuse.then(|| QemuTarget::new(opts.clone()));
        let mut findings = 0;
        for (_, data) in &inputs[..count] {
            let r = match shared.as_mut() {
                Some(Ok(t)) => diff_mmio_against(data, t),
                Some(Err(e)) => {
                    eprintln!("QEMU did not start: {e}");
                    std::process::exit(2);
                }
                None => match QemuTarget::new(opts.clone()) {
                    Ok(mut t) => diff_mmio_against(data, &mut t),
                    Err(e) => {
                        eprintln!("QEMU did not start: {e}");
                        std::process::exit(2);
                    }
                },
            };
            findings += r.is_err() as usize;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{} QEMU: {count} inputs in {secs:.1} s = {:.1} inputs/s ({findings} with a finding)",
            if reuse { "reused" } else { "fresh per input" },
            count as f64 / secs
        );
    }
}
