//! `diff_mmio`: the same operation stream against the reference and one [`Mutant`], both as
//! a [`ReferenceTarget`] (which turns panics into [`TargetError::Crashed`] and an exhausted
//! step budget into [`TargetError::Hung`]), built with a 16-sector disk and a step budget of
//! [`DIFF_STEP_BUDGET`] descriptor reads per notification.
//!
//! # Input
//!
//! The first byte selects the mutant, `Mutant::ALL[byte % Mutant::ALL.len()]`; the rest is an
//! [`MmioCase`]. [`MUTANT_ENV`](super::MUTANT_ENV) overrides the byte: a mutant name pins
//! that mutant, `reference` compares the reference with itself (what the smoke run does, so
//! every crash is a reference bug).
//!
//! # Oracle
//!
//! After every operation the observations of both sides must be equal: the bytes of every
//! register read (sentinel-prefilled), which accesses failed and how, the interrupts raised
//! and the guest-memory accesses made by each write, and the used ring after each
//! notification. The reference itself must never crash or hang.

use super::mmio::{decode_mmio, Exec, MmioCase, NoHook, Obs};
use super::Finding;
use crate::target::{DeviceKind, ReferenceTarget, TargetError};
use std::fmt;
use virtio_reference_device::Mutant;

const TARGET: &str = "diff_mmio";

/// A decoded `diff_mmio` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffCase {
    /// The first input byte.
    pub selector: u8,
    /// The mutant it selects (before any [`MUTANT_ENV`](super::MUTANT_ENV) override).
    pub mutant: Mutant,
    /// The operation stream.
    pub case: MmioCase,
}

impl DiffCase {
    /// The bytes that decode to this case.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.selector];
        out.extend(self.case.encode());
        out
    }
}

/// The selector byte that picks `m`.
pub fn selector_for(m: Mutant) -> u8 {
    Mutant::ALL.iter().position(|&x| x == m).unwrap_or(0) as u8
}

fn mutant_of(selector: u8) -> Mutant {
    Mutant::ALL[selector as usize % Mutant::ALL.len()]
}

/// What the fuzz target compares the reference with: the subject pinned by
/// [`MUTANT_ENV`](super::MUTANT_ENV) (`None` = the reference itself), else the mutant the
/// first byte selects.
pub fn select_mutant(data: &[u8]) -> Option<Mutant> {
    super::pinned().unwrap_or_else(|| Some(mutant_of(data.first().copied().unwrap_or(0))))
}

/// Decodes `data` into the mutant selector and the operation stream.
pub fn decode_diff_mmio(data: &[u8]) -> DiffCase {
    let selector = data.first().copied().unwrap_or(0);
    DiffCase {
        selector,
        mutant: mutant_of(selector),
        case: decode_mmio(data.get(1..).unwrap_or(&[])),
    }
}

impl fmt::Display for DiffCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "diff_mmio: reference vs mutant:{} ({}; selector byte {})",
            self.mutant.name(),
            self.mutant.catalog_id(),
            self.selector
        )?;
        write!(f, "{}", self.case)
    }
}

/// The body of the `diff_mmio` fuzz target: the reference vs the subject of
/// [`select_mutant`].
pub fn diff_mmio(data: &[u8]) -> Result<(), Finding> {
    diff_mmio_on(data, select_mutant(data))
}

fn show(o: Option<&Obs>) -> String {
    match o {
        None => "nothing".into(),
        Some(Obs::Read { off, bytes }) => format!("read at {off:#x} = {bytes:02x?}"),
        Some(Obs::Failed { off, kind }) if *off == u64::MAX => {
            format!("configuration change failed ({kind})")
        }
        Some(Obs::Failed { off, kind }) => format!("access at {off:#x} failed ({kind})"),
        Some(Obs::Effects { off, effects }) => {
            let n = effects.accesses.len();
            let shown: Vec<String> = effects
                .accesses
                .iter()
                .take(6)
                .map(|a| format!("{:?} {:#x}+{}", a.kind, a.gpa, a.len))
                .collect();
            format!(
                "write at {off:#x}: interrupts {:?}, {n} memory accesses [{}{}]",
                effects.irqs,
                shown.join(", "),
                if n > 6 { ", ..." } else { "" }
            )
        }
        Some(Obs::Used { bytes }) => format!("used ring {:02x?}", &bytes[..bytes.len().min(24)]),
    }
}

/// Descriptors a device may read per notification before it reports a hang, in this target.
pub const DIFF_STEP_BUDGET: u64 = 1 << 14;

/// Capacity in 512-byte sectors of the block device in this target.
pub const DIFF_DISK_SECTORS: u64 = 16;

/// A [`ReferenceTarget`] for `case`'s device (with `mutant`), as `ReferenceTarget::new` builds
/// it except for a smaller disk and step budget: a 1 MiB disk zeroed twice per case would
/// dominate the run time, and a hang shows after [`DIFF_STEP_BUDGET`] descriptor reads.
fn target(case: &MmioCase, mutant: Option<Mutant>) -> Result<ReferenceTarget, TargetError> {
    ReferenceTarget::configured(
        case.device(),
        case.version(),
        mutant,
        DIFF_STEP_BUDGET,
        DIFF_DISK_SECTORS,
    )
}

/// Runs `data` (its first byte ignored) against the reference and `mutant`; `None` compares
/// the reference with itself (a determinism and robustness check). Returns the first
/// divergence.
pub fn diff_mmio_on(data: &[u8], mutant: Option<Mutant>) -> Result<(), Finding> {
    let dc = decode_diff_mmio(data);
    let case = &dc.case;
    let harness = |e: TargetError| Finding::new(TARGET, "harness", &[], e.to_string());
    let mut a = target(case, None).map_err(harness)?;
    let mut b = target(case, mutant).map_err(harness)?;
    let mut ea = Exec::new(&mut a, NoHook, case, true);
    let mut eb = Exec::new(&mut b, NoHook, case, true);
    let legacy = case.version() == virtio_reference_device::TransportVersion::Legacy;
    let block = case.device() == DeviceKind::Block;
    for (i, op) in case.ops.iter().enumerate() {
        ea.op(op)?;
        eb.op(op)?;
        let (oa, ob) = (ea.take_obs(), eb.take_obs());
        if let Some(f) = oa.iter().find(|o| matches!(o, Obs::Failed { .. })) {
            return Err(Finding::new(
                TARGET,
                "reference-failed",
                &[],
                format!(
                    "{}: the reference: {}",
                    op.describe(legacy, block),
                    show(Some(f))
                ),
            )
            .at(i)
            .on(mutant));
        }
        if oa != ob {
            let k = oa.iter().zip(&ob).take_while(|(x, y)| x == y).count();
            return Err(Finding::new(
                TARGET,
                "divergence",
                &[],
                format!(
                    "{}: the reference gave {}; {} gave {}",
                    op.describe(legacy, block),
                    show(oa.get(k)),
                    mutant.map_or("the second reference".to_string(), |m| format!(
                        "mutant:{} ({})",
                        m.name(),
                        m.catalog_id()
                    )),
                    show(ob.get(k))
                ),
            )
            .at(i)
            .on(mutant));
        }
    }
    Ok(())
}
