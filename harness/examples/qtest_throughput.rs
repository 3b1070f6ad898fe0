//! Measures the QEMU target's speed over qtest: QEMU start to first reply, register round
//! trips one at a time (`readl` of MagicValue), and pipelined register writes (`writel` of
//! QueueSel, whose replies are collected in bulk).
//!
//! `cargo run --release -p virtio-conform --example qtest_throughput [N] [RUNS]`
//! (N operations per measurement, default 10000; RUNS repetitions, default 3).

use std::time::{Duration, Instant};
use virtio_conform::target::qemu::{QemuOptions, QemuTarget};
use virtio_conform::target::{DeviceKind, Target};
use virtio_reference_device::regs::{MAGIC, MAGIC_VALUE, QUEUE_SEL};
use virtio_reference_device::TransportVersion;

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let runs: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);

    let opts = QemuOptions::new(DeviceKind::Entropy, TransportVersion::Modern);
    let mut t = QemuTarget::new(opts)?;
    println!("{}", t.info().implementation);

    for run in 1..=runs {
        let spawn = Instant::now();
        t.fresh()?;
        let fresh = spawn.elapsed();
        let first = t.startup_time().unwrap_or_default();

        let start = Instant::now();
        for _ in 0..n {
            let m = t.read32(MAGIC)?;
            assert_eq!(m, MAGIC_VALUE);
        }
        let one = rate(n, start.elapsed());

        let start = Instant::now();
        for i in 0..n {
            t.write32(QUEUE_SEL, (i & 1) as u32)?;
        }
        t.sync()?;
        let piped = rate(n, start.elapsed());

        println!(
            "run {run}: startup to first reply {:.1} ms (fresh() total {:.1} ms); \
             readl one at a time {one:.0}/s; writel pipelined {piped:.0}/s ({n} ops each)",
            first.as_secs_f64() * 1e3,
            fresh.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
