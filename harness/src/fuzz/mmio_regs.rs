//! `mmio_regs`: operation streams against the reference [`MmioDevice`] (version 2 and legacy
//! version 1, entropy and block), with register-level oracles.
//!
//! The input is an [`MmioCase`] (see [`super::mmio`]); the subject is a [`SmallTarget`]. Every
//! register access passes through [`Oracles`], which models only what the driver did and
//! checks what the device shows:
//!
//! | oracle | requirement |
//! |---|---|
//! | no panic, no hang (step budget) | SPLIT-DEV-MALFORMED-CHAIN |
//! | MagicValue, Version and DeviceID read their constants | MMIO-DEV-01, MMIO-DEV-02, MMIO-LEG-01 |
//! | Status shows no bit the driver did not set (DEVICE_NEEDS_RESET excepted) and keeps the bits it did (FEATURES_OK may be refused) | STATUS-DEV-05, MMIO-REG-04 |
//! | FEATURES_OK never reads set while the driver accepted a feature that was not offered | FEAT-DEV-02b |
//! | after writing Status 0: Status, InterruptStatus and every QueueReady (legacy QueuePFN) read 0 | RESET-DEV-01, STATUS-DEV-04, MMIO-DEV-05, MMIO-DEV-06, MMIO-LEG-02 |
//! | InterruptStatus has only defined bits, a configuration-change bit only after a configuration change or DEVICE_NEEDS_RESET, and acknowledged bits clear | MMIO-DEV-04, MMIO-REG-06 |
//! | ConfigGeneration is stable without a configuration change and changes with one | MMIO-REG-07, MMIO-DEV-07 |
//! | the configuration space reads the same at every width | MMIO-REG-08 |
//! | QueueNumMax reads 0 for a queue that does not exist | MMIO-REG-02 |
//! | SHMLen/SHMBase read all ones for an unused region id | SHM-REG-01 |
//! | no guest-memory access on a notification before DRIVER_OK (version 2) | STATUS-DEV-01 |
//! | no ring access for a queue whose QueueNum is 0 or above QueueNumMax, or (split ring) not a power of 2 | VQ-DEV-20 |
//! | every device access lies inside guest memory | SPLIT-DEV-MALFORMED-CHAIN |

use super::mmio::{decode_mmio, Effects, Exec, Hook, MmioCase};
use super::small_target::{SmallTarget, SMALL_RAM};
use super::Finding;
use crate::target::{DeviceKind, IrqEvent, TargetError};
use std::cell::RefCell;
use virtio_reference_device::regs::*;
use virtio_reference_device::{Knobs, Mutant, TransportVersion};

const TARGET: &str = "mmio_regs";

/// Decodes `data` into the operation stream `mmio_regs` runs.
pub fn decode_mmio_regs(data: &[u8]) -> MmioCase {
    decode_mmio(data)
}

/// Runs `data` against the reference device, or against the mutant pinned with
/// [`MUTANT_ENV`](super::MUTANT_ENV). This is the body of the `mmio_regs` fuzz target.
pub fn mmio_regs(data: &[u8]) -> Result<(), Finding> {
    mmio_regs_on(data, super::pinned_mutant())
}

thread_local! {
    static SUBJECT: RefCell<Option<SmallTarget>> = const { RefCell::new(None) };
}

/// Runs `data` against the reference device (`None`) or `mutant`; returns the first oracle
/// that fired.
pub fn mmio_regs_on(data: &[u8], mutant: Option<Mutant>) -> Result<(), Finding> {
    let case = decode_mmio(data);
    // One target (and its guest memory) is reused across cases; `reuse` clears what the last
    // case wrote and builds a power-on device.
    let mut t = match SUBJECT.with(|s| s.borrow_mut().take()) {
        Some(mut t) => {
            t.reuse(case.device(), case.version(), mutant);
            t
        }
        None => SmallTarget::new(case.device(), case.version(), mutant)
            .map_err(|e| Finding::new(TARGET, "harness", &[], e.to_string()))?,
    };
    let result = run(&case, &mut t, mutant);
    SUBJECT.with(|s| *s.borrow_mut() = Some(t));
    result
}

fn run(case: &MmioCase, t: &mut SmallTarget, mutant: Option<Mutant>) -> Result<(), Finding> {
    let oracles = Oracles::new(case, t);
    let mut exec = Exec::new(t, oracles, case, false);
    for (i, op) in case.ops.iter().enumerate() {
        exec.op(op).map_err(|f| f.at(i).on(mutant))?;
    }
    Ok(())
}

/// The register-level oracles of `mmio_regs`, fed every access by [`Exec`].
pub struct Oracles {
    legacy: bool,
    device_id: u32,
    queue_max: Vec<u32>,
    default_num: bool,
    /// Status bits written since the last reset.
    written: u8,
    /// Bits of the last non-zero Status write that must read back (FEATURES_OK excluded).
    expect: u8,
    driver_sel: u32,
    features: u64,
    features_beyond: bool,
    /// The driver accepted VIRTIO_F_RING_PACKED at some point since the last reset.
    packed_accepted: bool,
    queue_sel: u32,
    /// Per queue: the QueueNum the driver set (`None`: unknown, written while the queue was
    /// live) and whether the driver enabled it.
    queue_num: Vec<Option<u32>>,
    queue_ready: Vec<bool>,
    /// A Status 0 write with nothing but reads and QueueSel writes since.
    after_reset: bool,
    ack_mask: u32,
    config_irq_ok: bool,
    last_gen: Option<u32>,
    /// A host configuration change happened since the last ConfigGeneration read (the
    /// generation may move).
    gen_may_change: bool,
    /// ... and it changed bytes of the configuration space (the generation must move).
    gen_must_change: bool,
    config_before: Vec<u8>,
}

impl Oracles {
    fn new(case: &MmioCase, t: &mut SmallTarget) -> Self {
        let block = case.device() == DeviceKind::Block;
        let (queue_max, default_num) = match t.device() {
            Some(d) => (
                d.config().queue_num_max.iter().map(|&m| m as u32).collect(),
                d.config().knobs.queue_num_defaults_to_max,
            ),
            None => (vec![256], Knobs::default().queue_num_defaults_to_max),
        };
        let n = queue_max.len();
        let mut o = Oracles {
            legacy: case.version() == TransportVersion::Legacy,
            device_id: if block { 2 } else { 4 },
            queue_max,
            default_num,
            written: 0,
            expect: 0,
            driver_sel: 0,
            features: 0,
            features_beyond: false,
            packed_accepted: false,
            queue_sel: 0,
            queue_num: vec![None; n],
            queue_ready: vec![false; n],
            after_reset: true,
            ack_mask: 0,
            config_irq_ok: false,
            last_gen: None,
            gen_may_change: false,
            gen_must_change: false,
            config_before: Vec::new(),
        };
        o.reset_model();
        o
    }

    fn reset_model(&mut self) {
        self.written = 0;
        self.expect = 0;
        self.driver_sel = 0;
        self.features = 0;
        self.features_beyond = false;
        self.packed_accepted = false;
        self.queue_sel = 0;
        for (i, n) in self.queue_num.iter_mut().enumerate() {
            *n = Some(if self.default_num {
                self.queue_max[i]
            } else {
                0
            });
        }
        self.queue_ready.iter_mut().for_each(|r| *r = false);
        self.after_reset = true;
        self.ack_mask = 0;
        self.config_irq_ok = false;
        self.last_gen = None;
    }

    fn fail(oracle: &'static str, ids: &[&'static str], msg: String) -> Result<(), Finding> {
        Err(Finding::new(TARGET, oracle, ids, msg))
    }

    /// Whether a queue of `num` entries is one the device may use: 1 to QueueNumMax, and a
    /// power of 2 for a split ring (§2.7). A packed ring's size need not be a power of 2
    /// (§2.8), so once the driver accepted VIRTIO_F_RING_PACKED only the bounds are judged,
    /// from the first acceptance until the next reset: the driver may take the bit back, or
    /// set DRIVER_OK without FEATURES_OK (with the bit offered or not), and the spec does not
    /// say which layout a device then uses for a queue (FEATURES_OK with an unoffered bit is
    /// graded by FEAT-DEV-02b).
    fn valid_num(&self, q: usize, num: u32) -> bool {
        let packed = !self.legacy && self.packed_accepted;
        num != 0 && (packed || num.is_power_of_two()) && num <= self.queue_max[q]
    }

    /// Checks that hold after every access, from the device's own state.
    fn white_box(&mut self, t: &mut SmallTarget) -> Result<(), Finding> {
        let Some(d) = t.device() else { return Ok(()) };
        let status = d.status();
        if status & DEVICE_NEEDS_RESET != 0 {
            self.config_irq_ok = true;
        }
        if !self.legacy && status & FEATURES_OK != 0 {
            let offered = d.device_features();
            let extra = self.features & !offered;
            if extra != 0 || self.features_beyond {
                return Self::fail(
                    "features-ok-with-unoffered",
                    &["FEAT-DEV-02b"],
                    format!(
                        "FEATURES_OK is set although the driver accepted {:#x} (offered {offered:#x}{})",
                        self.features,
                        if self.features_beyond { ", and bits on a page past 1" } else { "" }
                    ),
                );
            }
        }
        Ok(())
    }

    fn accesses(&self, fx: &Effects, what: &str) -> Result<(), Finding> {
        for a in &fx.accesses {
            if a.gpa.checked_add(a.len).is_none_or(|e| e > SMALL_RAM) {
                return Self::fail(
                    "access-outside-guest-memory",
                    &["SPLIT-DEV-MALFORMED-CHAIN"],
                    format!("{what}: {:?} of {} bytes at {:#x} is outside guest memory (0..{SMALL_RAM:#x})", a.kind, a.len, a.gpa),
                );
            }
        }
        Ok(())
    }
}

impl Hook<SmallTarget> for Oracles {
    fn read(&mut self, t: &mut SmallTarget, off: u64, data: &[u8]) -> Result<(), Finding> {
        if off >= CONFIG {
            let Some(d) = t.device() else { return Ok(()) };
            let cfg = d.config_space();
            for (k, &b) in data.iter().enumerate() {
                let i = (off - CONFIG) as usize + k;
                if let Some(&want) = cfg.get(i) {
                    if b != want {
                        return Self::fail(
                            "config-read",
                            &["MMIO-REG-08"],
                            format!("a {}-byte read at Config+{:#x} gave byte {k} = {b:#04x}; the configuration space holds {want:#04x}", data.len(), off - CONFIG),
                        );
                    }
                }
            }
            return Ok(());
        }
        if data.len() != 4 || !off.is_multiple_of(4) {
            return Ok(());
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let version = if self.legacy { 1 } else { 2 };
        let sel_exists = (self.queue_sel as usize) < self.queue_max.len();
        match off {
            MAGIC if v != MAGIC_VALUE => {
                return Self::fail(
                    "identity",
                    &["MMIO-DEV-01"],
                    format!("MagicValue reads {v:#x}"),
                )
            }
            VERSION if v != version => {
                return Self::fail(
                    "identity",
                    &["MMIO-DEV-02", "MMIO-LEG-01"],
                    format!("Version reads {v}, expected {version}"),
                )
            }
            DEVICE_ID if v != self.device_id => {
                return Self::fail(
                    "identity",
                    &[],
                    format!("DeviceID reads {v}, expected {}", self.device_id),
                )
            }
            STATUS => {
                if self.after_reset && v != 0 {
                    return Self::fail(
                        "reset",
                        &["RESET-DEV-01", "STATUS-DEV-04"],
                        format!("Status reads {v:#x} after the driver wrote 0"),
                    );
                }
                let allowed = (self.written | DEVICE_NEEDS_RESET) as u32;
                if v & !allowed != 0 {
                    return Self::fail(
                        "status-bits",
                        &["STATUS-DEV-05", "MMIO-REG-04"],
                        format!(
                            "Status reads {v:#x}; the driver only set {:#x} since the last reset",
                            self.written
                        ),
                    );
                }
                if v & self.expect as u32 != self.expect as u32 {
                    return Self::fail(
                        "status-bits",
                        &["STATUS-DEV-05", "MMIO-REG-04"],
                        format!("Status reads {v:#x} after the driver wrote {:#x}: written bits are missing", self.expect),
                    );
                }
            }
            INTERRUPT_STATUS => {
                if self.after_reset && v != 0 {
                    return Self::fail(
                        "reset",
                        &["MMIO-DEV-05"],
                        format!("InterruptStatus reads {v:#x} after a reset"),
                    );
                }
                if v & !(INT_USED_BUFFER | INT_CONFIG_CHANGE) != 0 {
                    return Self::fail(
                        "interrupt-status",
                        &["MMIO-DEV-04"],
                        format!("InterruptStatus reads {v:#x}: undefined bits set"),
                    );
                }
                if v & INT_CONFIG_CHANGE != 0 && !self.config_irq_ok {
                    return Self::fail(
                        "interrupt-status",
                        &["MMIO-DEV-04"],
                        format!("InterruptStatus reads {v:#x}: a configuration change was signalled but the configuration did not change and DEVICE_NEEDS_RESET was never set"),
                    );
                }
                if v & self.ack_mask != 0 {
                    return Self::fail(
                        "interrupt-ack",
                        &["MMIO-REG-06"],
                        format!(
                            "InterruptStatus reads {v:#x} right after InterruptACK {:#x}",
                            self.ack_mask
                        ),
                    );
                }
            }
            QUEUE_READY if !self.legacy && self.after_reset && v != 0 => {
                return Self::fail(
                    "reset",
                    &["MMIO-DEV-06"],
                    format!(
                        "QueueReady of queue {} reads {v} after a reset",
                        self.queue_sel
                    ),
                )
            }
            QUEUE_PFN if self.legacy && self.after_reset && v != 0 => {
                return Self::fail(
                    "reset",
                    &["MMIO-LEG-02"],
                    format!(
                        "QueuePFN of queue {} reads {v:#x} after a reset",
                        self.queue_sel
                    ),
                )
            }
            QUEUE_NUM_MAX if !sel_exists && v != 0 => {
                return Self::fail(
                    "queue-num-max",
                    &["MMIO-REG-02"],
                    format!(
                        "QueueNumMax reads {v} for queue {}, which does not exist",
                        self.queue_sel
                    ),
                )
            }
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH
                if !self.legacy && v != u32::MAX =>
            {
                return Self::fail(
                    "shm",
                    &["SHM-REG-01"],
                    format!(
                        "{} reads {v:#x} for an unused region id",
                        register_name(off, false).unwrap_or("SHM")
                    ),
                )
            }
            CONFIG_GENERATION if !self.legacy => {
                if let Some(g) = self.last_gen {
                    if self.gen_must_change && v == g {
                        return Self::fail(
                            "config-generation",
                            &["MMIO-DEV-07"],
                            format!(
                                "ConfigGeneration still reads {v} after the configuration changed"
                            ),
                        );
                    }
                    if !self.gen_may_change && v != g {
                        return Self::fail(
                            "config-generation",
                            &["MMIO-REG-07"],
                            format!("ConfigGeneration moved from {g} to {v} without a configuration change"),
                        );
                    }
                }
                self.last_gen = Some(v);
                self.gen_may_change = false;
                self.gen_must_change = false;
            }
            _ => {}
        }
        Ok(())
    }

    fn write(
        &mut self,
        t: &mut SmallTarget,
        off: u64,
        data: &[u8],
        fx: &Effects,
    ) -> Result<(), Finding> {
        self.accesses(fx, "register write")?;
        if off >= CONFIG || data.len() != 4 || !off.is_multiple_of(4) {
            return self.white_box(t);
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let sel = self.queue_sel as usize;
        let live = t.device().map_or(0, |d| d.status());
        if !matches!(off, QUEUE_SEL | INTERRUPT_ACK) {
            self.after_reset = false;
        }
        if matches!(
            off,
            STATUS | QUEUE_NOTIFY | QUEUE_READY | QUEUE_PFN | QUEUE_RESET
        ) {
            self.ack_mask = 0;
        }
        match off {
            STATUS if v == 0 => self.reset_model(),
            STATUS => {
                self.written |= v as u8;
                self.expect = v as u8 & !FEATURES_OK;
            }
            DRIVER_FEATURES_SEL => self.driver_sel = v,
            DRIVER_FEATURES if self.legacy || live & FEATURES_OK == 0 => match self.driver_sel {
                0 => self.features = (self.features & !0xffff_ffff) | v as u64,
                1 => {
                    self.features = (self.features & 0xffff_ffff) | (v as u64) << 32;
                    self.packed_accepted |= self.features & bit(VIRTIO_F_RING_PACKED) != 0;
                }
                _ => self.features_beyond |= v != 0,
            },
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if sel < self.queue_num.len() => {
                self.queue_num[sel] = if self.queue_ready[sel] { None } else { Some(v) };
            }
            QUEUE_READY if !self.legacy && sel < self.queue_ready.len() => match v {
                0 => self.queue_ready[sel] = false,
                1 => self.queue_ready[sel] = true,
                _ => {}
            },
            QUEUE_PFN if self.legacy && sel < self.queue_ready.len() => {
                self.queue_ready[sel] = v != 0
            }
            QUEUE_RESET if !self.legacy && v == 1 && sel < self.queue_ready.len() => {
                if self.features & bit(VIRTIO_F_RING_RESET) != 0 {
                    self.queue_ready[sel] = false;
                    self.queue_num[sel] = Some(if self.default_num {
                        self.queue_max[sel]
                    } else {
                        0
                    });
                } else {
                    self.queue_num[sel] = None;
                }
            }
            INTERRUPT_ACK => {
                self.ack_mask = v & (INT_USED_BUFFER | INT_CONFIG_CHANGE);
                if v & INT_CONFIG_CHANGE != 0 && live & DEVICE_NEEDS_RESET == 0 {
                    self.config_irq_ok = false;
                }
            }
            QUEUE_NOTIFY => {
                let q = (v & 0xffff) as usize;
                let used_irq = fx.irqs.iter().any(|i| matches!(i, IrqEvent::UsedBuffer(_)));
                if !self.legacy && live & DRIVER_OK == 0 && (!fx.accesses.is_empty() || used_irq) {
                    return Self::fail(
                        "work-before-driver-ok",
                        &["STATUS-DEV-01"],
                        format!("a notification before DRIVER_OK (Status {live:#x}) made the device touch guest memory {} times{}", fx.accesses.len(), if used_irq { " and raise a used-buffer interrupt" } else { "" }),
                    );
                }
                if !fx.accesses.is_empty() && q < self.queue_num.len() {
                    if let Some(num) = self.queue_num[q] {
                        if !self.valid_num(q, num) {
                            return Self::fail(
                                "invalid-queue-size-used",
                                &["VQ-DEV-20"],
                                format!("queue {q} has QueueNum {num:#x} (QueueNumMax {}), yet a notification made the device access its rings", self.queue_max[q]),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        self.white_box(t)
    }

    fn before_config(&mut self, t: &mut SmallTarget) {
        self.config_before = t
            .device()
            .map(|d| d.config_space().to_vec())
            .unwrap_or_default();
    }

    fn config(&mut self, t: &mut SmallTarget, fx: &Effects) -> Result<(), Finding> {
        self.accesses(fx, "configuration change")?;
        let now = t
            .device()
            .map(|d| d.config_space().to_vec())
            .unwrap_or_default();
        self.gen_may_change = true;
        self.gen_must_change |= now != self.config_before;
        self.config_irq_ok = true;
        self.after_reset = false;
        self.ack_mask = 0;
        self.white_box(t)
    }

    fn error(&mut self, e: &TargetError) -> Result<(), Finding> {
        match e {
            TargetError::Crashed(m) => Self::fail("no-panic", &[], m.clone()),
            TargetError::Hung(m) => {
                Self::fail("bounded-work", &["SPLIT-DEV-MALFORMED-CHAIN"], m.clone())
            }
            other => Self::fail("target-error", &[], other.to_string()),
        }
    }
}
