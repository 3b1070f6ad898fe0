//! The `diff_mmio` fuzz body against QEMU with one QEMU kept across inputs
//! (`QemuOptions::reuse`: `fresh()` resets the device, zeroes guest RAM and the disk instead of
//! starting a new QEMU): every input gives exactly what it gives on a QEMU of its own (the same
//! finding and the same register reads, interrupts and guest-memory reads), in input order and
//! in reverse order, so no state leaks from one input into the next.
//! Throughput: `cargo run --release -p virtio-conform --example qemu_fuzz`.

mod common;
use common::qemu_or_skip;
use virtio_conform::fuzz::diff_mmio_against;
use virtio_conform::fuzz::mmio::{reg_selector, MmioCase, MmioHeader, MmioOp};
use virtio_conform::fuzz::seeds::{mutated_seeds, seeds};
use virtio_conform::target::qemu::{QemuOptions, QemuTarget};
use virtio_conform::target::{Capabilities, DeviceKind, IrqEvent, Target, TargetError, TargetInfo};
use virtio_reference_device::regs::{CONFIG, INTERRUPT_STATUS, QUEUE_NUM_MAX, QUEUE_READY, STATUS};
use virtio_reference_device::TransportVersion;

/// A target that forwards everything to `inner` and logs what the harness observes: every
/// register read (offset, bytes), every interrupt, and every guest-memory read (the bytes for
/// block, whose data is deterministic; only address and length for entropy, whose data is
/// random). With `keep_state`, `fresh()` does nothing: the negative control, in which the
/// state an input left is still there for the next.
struct Traced<T> {
    inner: T,
    keep_state: bool,
    data: bool,
    log: Vec<String>,
}

impl<T: Target> Target for Traced<T> {
    fn info(&self) -> TargetInfo {
        self.inner.info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        let r = self.inner.read(offset, data);
        self.log.push(format!("read {offset:#x} {data:02x?} {r:?}"));
        r
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.write(offset, data)
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.mem_write(gpa, data)
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let r = self.inner.mem_read(gpa, buf);
        let shown = if self.data {
            format!("{buf:02x?}")
        } else {
            String::new()
        };
        self.log
            .push(format!("mem_read {gpa:#x}+{} {shown} {r:?}", buf.len()));
        r
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        self.log.push("fresh".into());
        if self.keep_state {
            return Ok(());
        }
        self.inner.fresh()
    }
    fn notify(&mut self, value: u32) -> Result<(), TargetError> {
        self.inner.notify(value)
    }
    fn settle(&mut self) -> Result<(), TargetError> {
        self.inner.settle()
    }
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        let v = self.inner.take_interrupts();
        self.log.push(format!("interrupts {v:?}"));
        v
    }
    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.config_change(offset, data)
    }
    fn synchronous(&self) -> bool {
        self.inner.synchronous()
    }
    fn bulk_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.inner.bulk_read(gpa, buf)
    }
    fn bulk_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.bulk_write(gpa, data)
    }
    fn bulk_cheap(&self) -> bool {
        self.inner.bulk_cheap()
    }
    fn flush(&mut self) -> Result<(), TargetError> {
        self.inner.flush()
    }
}

/// Per input: its finding (`None`: no difference from the reference) and everything the
/// harness observed of QEMU while running it, in input order.
fn outcomes(
    inputs: &[(String, Vec<u8>)],
    opts: &QemuOptions,
    reuse: bool,
    keep_state: bool,
) -> Vec<(Option<String>, Vec<String>)> {
    let opts = QemuOptions {
        reuse,
        ..opts.clone()
    };
    let traced = |opts: &QemuOptions| Traced {
        inner: QemuTarget::new(opts.clone()).expect("QEMU starts"),
        keep_state,
        data: opts.device == DeviceKind::Block,
        log: Vec::new(),
    };
    let mut shared = reuse.then(|| traced(&opts));
    inputs
        .iter()
        .map(|(_, data)| {
            let mut own;
            let t = match shared.as_mut() {
                Some(t) => t,
                None => {
                    own = traced(&opts);
                    &mut own
                }
            };
            let finding = diff_mmio_against(data, t).err().map(|f| f.to_string());
            (finding, std::mem::take(&mut t.log))
        })
        .collect()
}

#[test]
fn a_reused_qemu_gives_every_input_the_result_of_a_fresh_one() {
    if !qemu_or_skip() {
        return;
    }
    // After every input a probe that only reads (Status, InterruptStatus, QueueReady, the
    // configuration space) before touching anything: it sees whatever the reset let through.
    let probe_case = MmioCase {
        header: MmioHeader { flags: 0 },
        ops: [STATUS, INTERRUPT_STATUS, QUEUE_READY, QUEUE_NUM_MAX, CONFIG]
            .into_iter()
            .map(|r| MmioOp::Read {
                reg: reg_selector(r),
                width: 0,
            })
            .collect(),
    };
    let mut probe = vec![0u8];
    probe.extend(probe_case.encode());
    let mut inputs = Vec::new();
    for (name, data) in seeds("diff_mmio")
        .into_iter()
        .chain(mutated_seeds("diff_mmio", 16, 7))
    {
        inputs.push((name.clone(), data));
        inputs.push((format!("probe after {name}"), probe.clone()));
    }
    for (device, version) in [
        (DeviceKind::Block, TransportVersion::Modern),
        (DeviceKind::Entropy, TransportVersion::Legacy),
    ] {
        let opts = QemuOptions::new(device, version);
        let fresh = outcomes(&inputs, &opts, false, false);
        let reused = outcomes(&inputs, &opts, true, false);
        let mut reversed_inputs = inputs.clone();
        reversed_inputs.reverse();
        let mut reused_reversed = outcomes(&reversed_inputs, &opts, true, false);
        reused_reversed.reverse();
        for (i, (name, _)) in inputs.iter().enumerate() {
            assert_eq!(
                reused[i], fresh[i],
                "{device:?} {version:?}, {name}: reused QEMU (input order) differs from a fresh one"
            );
            assert_eq!(
                reused_reversed[i], fresh[i],
                "{device:?} {version:?}, {name}: reused QEMU (reverse order) differs from a fresh one"
            );
        }
        // Negative control: without the reset, the probes see what the input before them left.
        let leaky = outcomes(&inputs, &opts, true, true);
        let leaked = (0..inputs.len()).filter(|&i| leaky[i] != fresh[i]).count();
        assert!(
            leaked > 0,
            "{device:?} {version:?}: the probes cannot see state left over from an earlier input"
        );
        eprintln!(
            "{device:?} {version:?}: {} inputs identical on a reused and a fresh QEMU ({} with a finding; {} differ when fresh() does not reset)",
            inputs.len(),
            fresh.iter().filter(|f| f.0.is_some()).count(),
            leaked
        );
    }
}
