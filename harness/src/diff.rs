//! Differential comparison (`virtio-conform diff`): the reference device, configured to match
//! the target's profile, and the target are driven with the same step stream — every scripted
//! case and seeded random streams — and every observation is compared.
//!
//! A difference is classified as
//! - a **spec violation by the target**: the target failed a check of a MUST (or SHOULD) that
//!   the reference passed;
//! - an **implementation-defined divergence**: both held every check; the explanation cites
//!   why the spec leaves the behaviour open;
//! - a **reference bug**: the reference itself failed a check (there must be none).
//!
//! Each divergence carries the first diverging step, both observations, and a minimal step
//! stream (shrunk by removing steps while the same divergence persists), printed in the case
//! format so it can be saved as a case file and replayed.

use crate::case::{Buf, Case, Feature, Hex, Num, Op, QueueSpec, Step, Upto};
use crate::catalog::Catalog;
use crate::outcome::Outcome;
use crate::report::{cite, Cited};
use crate::runner::{run_case, CaseRun, Observation};
use crate::target::reference::{
    backend, backend_with_disk, DeviceFactory, ReferenceTarget, REFERENCE_DISK_SECTORS,
};
use crate::target::{DeviceKind, Target, TargetError, TargetInfo};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use virtio_reference_device::regs::*;
use virtio_reference_device::{DeviceConfig, MmioDevice, TransportVersion};

/// What discovery reads off a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Transport version (1 or 2).
    pub version: u32,
    /// DeviceID.
    pub device_id: u32,
    /// VendorID.
    pub vendor_id: u32,
    /// Offered feature bits (pages 0 and 1).
    pub features: u64,
    /// Every DeviceFeatures page read (0 to [`FEATURE_PAGES`] - 1), as the target answered.
    pub feature_pages: Vec<u32>,
    /// QueueNumMax of queues 0, 1, ... up to the first absent one (at most [`MAX_QUEUES`]).
    pub queue_num_max: Vec<u16>,
    /// The first [`CONFIG_BYTES`] bytes of the configuration space (32-bit reads), read where
    /// a driver may read them: at once, or after FEATURES_OK when the target answered zeros
    /// before and something else after.
    pub config: Vec<u8>,
    /// The configuration space read only after FEATURES_OK (what was read before differed).
    pub config_after_features_ok: bool,
}

/// DeviceFeatures pages discovery reads.
pub const FEATURE_PAGES: u32 = 4;
/// Queues discovery looks at.
pub const MAX_QUEUES: u32 = 64;
/// Bytes of configuration space discovery reads.
pub const CONFIG_BYTES: u64 = 64;

fn read_config(t: &mut dyn Target) -> Result<Vec<u8>, TargetError> {
    let mut config = Vec::new();
    for off in (0..CONFIG_BYTES).step_by(4) {
        config.extend_from_slice(&t.read32(CONFIG + off)?.to_le_bytes());
    }
    Ok(config)
}

/// Reads the profile of a (fresh) target: Version, DeviceID, VendorID, every DeviceFeatures
/// page up to [`FEATURE_PAGES`], QueueNumMax of every queue, and the configuration space —
/// read again after FEATURES_OK (§3.1.1 step 5 lets a driver read it from then on at the
/// latest); the later read wins when the earlier one was all zeros. Leaves the target fresh.
pub fn discover(t: &mut dyn Target) -> Result<Profile, TargetError> {
    t.fresh()?;
    let version = t.read32(VERSION)?;
    let device_id = t.read32(DEVICE_ID)?;
    let vendor_id = t.read32(VENDOR_ID)?;
    let mut feature_pages = Vec::new();
    for page in 0..FEATURE_PAGES {
        t.write32(DEVICE_FEATURES_SEL, page)?;
        feature_pages.push(t.read32(DEVICE_FEATURES)?);
    }
    let features = feature_pages[0] as u64 | (feature_pages[1] as u64) << 32;
    let mut queue_num_max = Vec::new();
    for q in 0..MAX_QUEUES {
        t.write32(QUEUE_SEL, q)?;
        let max = t.read32(QUEUE_NUM_MAX)?;
        if max == 0 {
            break;
        }
        queue_num_max.push(max.min(32768) as u16);
    }
    t.write32(QUEUE_SEL, 0)?;
    let early = read_config(t)?;
    // The driver's handshake up to FEATURES_OK with every offered ring-independent bit the
    // reference can honour left out: VERSION_1 only (none on version 1).
    t.write32(STATUS, 0)?;
    t.write32(STATUS, ACKNOWLEDGE as u32)?;
    t.write32(STATUS, (ACKNOWLEDGE | DRIVER) as u32)?;
    let accept = if version == 1 {
        0
    } else {
        features & bit(VIRTIO_F_VERSION_1)
    };
    t.write32(DRIVER_FEATURES_SEL, 0)?;
    t.write32(DRIVER_FEATURES, accept as u32)?;
    t.write32(DRIVER_FEATURES_SEL, 1)?;
    t.write32(DRIVER_FEATURES, (accept >> 32) as u32)?;
    if version != 1 {
        t.write32(STATUS, (ACKNOWLEDGE | DRIVER | FEATURES_OK) as u32)?;
    }
    let late = read_config(t)?;
    t.fresh()?;
    let after = early.iter().all(|&b| b == 0) && late != early;
    Ok(Profile {
        version,
        device_id,
        vendor_id,
        features,
        feature_pages,
        queue_num_max,
        config: if after { late } else { early },
        config_after_features_ok: after,
    })
}

/// Profile values the spec forbids, as (requirement id, what, observed): a DeviceID that is
/// not the `device` type's, DeviceFeatures pages beyond 1 that are not 0, VERSION_1 missing
/// on version 2. The mirror does not copy them into the
/// reference, so they are reported as the target's violations.
pub fn profile_violations(
    profile: &Profile,
    device: DeviceKind,
) -> Vec<(&'static str, String, String)> {
    let mut v = Vec::new();
    let want_id = device.device_id();
    if profile.device_id != want_id {
        v.push((
            "MMIO-DEV-14",
            format!("DeviceID {want_id} for a {} device (§5)", device.name()),
            format!("DeviceID {:#x}", profile.device_id),
        ));
    }
    for (page, &w) in profile.feature_pages.iter().enumerate().skip(2) {
        if w != 0 {
            v.push((
                "MMIO-REG-01",
                format!("DeviceFeatures page {page} reads 0 (no feature bits are defined there)"),
                format!("DeviceFeatures page {page} = {w:#x}"),
            ));
        }
    }
    if profile.version == 2 && profile.features & bit(VIRTIO_F_VERSION_1) == 0 {
        v.push((
            "RSV-DEV-01",
            "VIRTIO_F_VERSION_1 offered by a version-2 device".into(),
            format!("DeviceFeatures pages 0-1 = {:#x}", profile.features),
        ));
    }
    v
}

/// The reference device configured like `profile`: the DeviceID of `device`, the target's
/// VendorID, exactly the target's offered features (pages 0 and 1, never the backend's own
/// extra bits), its queue count and sizes and its configuration space (block: a disk of the
/// capacity the configuration space states, up to 64 Ki sectors, read-only when the target
/// offers VIRTIO_BLK_F_RO).
pub fn mirror(profile: &Profile, device: DeviceKind) -> Result<ReferenceTarget, TargetError> {
    mirror_with(profile, device, None)
}

/// As [`mirror`], with one historical bug injected (`mutant`), so a check against the
/// mirrored profile can be shown able to fail (`trace replay --target mutant:<name>`).
pub fn mirror_with(
    profile: &Profile,
    device: DeviceKind,
    mutant: Option<virtio_reference_device::Mutant>,
) -> Result<ReferenceTarget, TargetError> {
    let version = if profile.version == 1 {
        TransportVersion::Legacy
    } else {
        TransportVersion::Modern
    };
    let p = profile.clone();
    backend(device)?;
    let sectors = if device == DeviceKind::Block && p.config.len() >= 8 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&p.config[..8]);
        match u64::from_le_bytes(c) {
            n @ 1..=65536 => n,
            _ => REFERENCE_DISK_SECTORS,
        }
    } else {
        REFERENCE_DISK_SECTORS
    };
    let factory: DeviceFactory = Box::new(move |ram| {
        let mut cfg = DeviceConfig::new(version);
        cfg.mutant = mutant;
        cfg.vendor_id = p.vendor_id;
        cfg.offered_features = Some(p.features);
        if !p.queue_num_max.is_empty() {
            cfg.queue_num_max = p.queue_num_max.clone();
        }
        if device == DeviceKind::Block {
            cfg.config_space = Some(p.config.clone());
        }
        cfg.step_budget = 1 << 20;
        // A block device offering VIRTIO_BLK_F_RO (bit 5) is read-only (§5.2.6.2).
        let b: Box<dyn virtio_reference_device::DeviceBackend> =
            if device == DeviceKind::Block && p.features & (1 << 5) != 0 {
                Box::new(virtio_reference_device::BlockBackend::read_only(sectors))
            } else {
                backend_with_disk(device, sectors)
                    .unwrap_or_else(|_| Box::new(virtio_reference_device::EntropyBackend::new(0)))
            };
        MmioDevice::new(cfg, b, ram)
    });
    let name = match mutant {
        Some(m) => format!("mutant:{} (mirrored)", m.name()),
        None => "reference (mirrored)".into(),
    };
    ReferenceTarget::with_factory(name, device, version, factory)
}

/// How a divergence is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceClass {
    /// The target broke a check the reference passed.
    SpecViolation,
    /// Both passed every check; the spec leaves the behaviour open.
    ImplementationDefined,
    /// The reference failed a check: a bug in the oracle.
    ReferenceBug,
}

/// One difference between the reference and the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// Case id, or `random.<seed>.<n>` for a random stream.
    pub source: String,
    /// Classification.
    pub class: DivergenceClass,
    /// First diverging step (0-based) of the original stream.
    pub step: usize,
    /// What was observed there.
    pub what: String,
    /// The reference's observation (`<none>` when it has none).
    pub reference: String,
    /// The target's observation.
    pub target: String,
    /// Requirements the target broke (spec violations) or that the reference broke.
    pub requirements: Vec<Cited>,
    /// Why this is (not) a violation.
    pub explanation: String,
    /// Minimal step stream that still shows the divergence, one JSON object per line.
    pub minimal: Vec<String>,
}

/// The diff report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    /// Always `virtio-conform/diff/1`.
    pub schema: String,
    /// The target.
    pub target: TargetInfo,
    /// Its discovered profile.
    pub profile: Profile,
    /// Streams compared (cases plus random streams).
    pub streams: usize,
    /// Count per class.
    pub spec_violations: usize,
    /// Count per class.
    pub implementation_defined: usize,
    /// Count per class.
    pub reference_bugs: usize,
    /// The divergences, one per stream at most.
    pub divergences: Vec<Divergence>,
    /// The random streams per class ([`STREAM_CLASSES`]), in that order: how many ran and
    /// how many of them diverged, per divergence class. Classes with no stream are left out.
    pub random_streams: Vec<StreamClassCount>,
}

/// How many random streams of one class ran, and their divergences per divergence class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamClassCount {
    /// The stream class (one of [`STREAM_CLASSES`]).
    pub class: String,
    /// Streams of this class compared.
    pub streams: usize,
    /// Of them, streams whose divergence is a spec violation by the target.
    pub spec_violations: usize,
    /// Of them, streams with an implementation-defined divergence.
    pub implementation_defined: usize,
    /// Of them, streams on which the reference failed a check of its own.
    pub reference_bugs: usize,
}

impl DiffReport {
    /// 2 when the reference failed a check of its own (a bug in the oracle), 1 when the
    /// target committed a spec violation, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.reference_bugs > 0 {
            2
        } else if self.spec_violations > 0 {
            1
        } else {
            0
        }
    }
}

/// Options of a differential run.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Only cases matching these globs.
    pub only: Vec<String>,
    /// Number of random streams.
    pub random: usize,
    /// Seed of the random streams.
    pub seed: u64,
    /// Shrink each divergence to a minimal stream.
    pub shrink: bool,
}

fn first_difference(
    a: &[Observation],
    b: &[Observation],
) -> Option<(usize, String, String, String)> {
    let n = a.len().max(b.len());
    for i in 0..n {
        match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) if x.what == y.what && x.value == y.value => continue,
            (Some(x), Some(y)) if x.what == y.what => {
                return Some((
                    x.step.min(y.step),
                    x.what.clone(),
                    x.value.clone(),
                    y.value.clone(),
                ))
            }
            (Some(x), Some(y)) => {
                return Some((
                    x.step.min(y.step),
                    format!("{} / {}", x.what, y.what),
                    x.value.clone(),
                    y.value.clone(),
                ))
            }
            (Some(x), None) => {
                return Some((x.step, x.what.clone(), x.value.clone(), "<none>".into()))
            }
            (None, Some(y)) => {
                return Some((y.step, y.what.clone(), "<none>".into(), y.value.clone()))
            }
            (None, None) => break,
        }
    }
    None
}

/// The observations before the first difference that belong to the step it happens in.
fn prior_same_step<'a>(a: &'a [Observation], b: &[Observation]) -> Vec<&'a Observation> {
    let i = a
        .iter()
        .zip(b)
        .take_while(|(x, y)| x.what == y.what && x.value == y.value)
        .count();
    let Some(step) = a.get(i).or(b.get(i)).map(|o| o.step) else {
        return Vec::new();
    };
    a[..i].iter().filter(|o| o.step == step).collect()
}

fn parse_hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()
}

/// Where the reference's observation is the only one the spec allows, the requirement that
/// fixes it: a difference there is a spec violation by the target even in a stream that
/// checks nothing (random streams).
///
/// `prior` are the observations of the same step before the difference (equal on both
/// sides): a missing notification is mandated only when they show both sides in the same
/// state (the same chains used; DEVICE_NEEDS_RESET set after DRIVER_OK).
pub fn mandated(
    what: &str,
    reference: &str,
    target: &str,
    prior: &[&Observation],
) -> Option<(&'static str, String)> {
    let reg = what
        .strip_prefix("read ")
        .and_then(|r| r.split('@').next())
        .unwrap_or("");
    let (r, t) = (parse_hex(reference), parse_hex(target));
    match reg {
        "MagicValue" => Some(("MMIO-DEV-01", "MagicValue always reads 0x74726976".into())),
        "Version" => Some(("MMIO-DEV-02", "Version is fixed for the device".into())),
        "DeviceFeatures" => Some((
            "MMIO-REG-01",
            "DeviceFeatures pages beyond the offered bits read 0".into(),
        )),
        "QueueNumMax" if r == Some(0) => Some((
            "MMIO-REG-02",
            "QueueNumMax of a queue that does not exist reads 0".into(),
        )),
        "SHMLenLow" | "SHMLenHigh" | "SHMBaseLow" | "SHMBaseHigh" if r == Some(0xffff_ffff) => {
            Some((
                "SHM-REG-01",
                "a shared memory region that does not exist reads all ones".into(),
            ))
        }
        "Status" => {
            let (r, t) = (r? as u8, t? as u8);
            // DEVICE_NEEDS_RESET is a SHOULD (§2.1.2) and does not exist on version 1:
            // stopping, skipping the chain or flagging the device are all allowed.
            ((r ^ t) & FEATURES_OK != 0 && r & FEATURES_OK == 0).then(|| {
                ("FEAT-DEV-02b", "FEATURES_OK must read back clear when the driver accepted features the device did not offer".into())
            })
        }
        "InterruptStatus" => {
            let (r, t) = (r? as u32, t? as u32);
            // The same step observed equal used counts (the same chains used) or an equal
            // Status with DEVICE_NEEDS_RESET after DRIVER_OK: the notification the reference
            // sent was mandatory, and it is missing on the target.
            let used_same = prior.iter().any(|o| {
                o.what.starts_with("used q")
                    && o.what.ends_with(" count")
                    && o.value.parse::<u64>().is_ok_and(|n| n > 0)
            });
            let needs_reset_same = prior.iter().any(|o| {
                o.what.starts_with("read Status@")
                    && parse_hex(&o.value).is_some_and(|v| {
                        let v = v as u8;
                        v & DEVICE_NEEDS_RESET != 0 && v & DRIVER_OK != 0
                    })
            });
            if used_same && r & INT_USED_BUFFER != 0 && t & INT_USED_BUFFER == 0 {
                Some((
                    "VQ-DEV-10",
                    "a used buffer notification is mandatory here (avail.flags 0 or used_event reached, §2.7.7.2) and the target did not send it".into(),
                ))
            } else if needs_reset_same && r & INT_CONFIG_CHANGE != 0 && t & INT_CONFIG_CHANGE == 0 {
                Some((
                    "STATUS-DEV-03",
                    "DEVICE_NEEDS_RESET was set after DRIVER_OK, so a configuration change notification is mandatory (§2.1.2) and the target did not send it".into(),
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Whether two Status values differ in DEVICE_NEEDS_RESET alone.
fn status_differs_only_in_needs_reset(reference: &str, target: &str) -> bool {
    match (parse_hex(reference), parse_hex(target)) {
        (Some(r), Some(t)) => (r ^ t) == DEVICE_NEEDS_RESET as u64,
        _ => false,
    }
}

/// Why the spec leaves an observation open, for implementation-defined divergences.
pub fn explain(what: &str, reference: &str, target: &str) -> String {
    let write_only = [
        "DeviceFeaturesSel",
        "DriverFeatures",
        "DriverFeaturesSel",
        "QueueSel",
        "QueueNum",
        "QueueNotify",
        "InterruptACK",
        "QueueDescLow",
        "QueueDescHigh",
        "QueueDriverLow",
        "QueueDriverHigh",
        "QueueDeviceLow",
        "QueueDeviceHigh",
        "SHMSel",
        "GuestPageSize",
        "QueueAlign",
    ];
    let reg = what
        .strip_prefix("read ")
        .and_then(|r| r.split('@').next())
        .unwrap_or("");
    let narrow = what.ends_with("/1") || what.ends_with("/2") || what.ends_with("/8");
    if reg == "VendorID" {
        "§4.2.2: no VendorID value is mandated".into()
    } else if reg == "QueueNumMax" || reg == "QueueSizeMax" {
        "§4.2.2: the device chooses the maximum size of each queue".into()
    } else if write_only.contains(&reg) {
        format!("§4.2.2: {reg} is write-only; what a read returns is not defined")
    } else if narrow && !reg.starts_with("Config") {
        "§4.2.2.2: the driver must use 32-bit aligned accesses for control registers, so the answer to other widths is not defined".into()
    } else if what.contains("element") {
        "§5.4.6.2 / §2.7.8: a device may use less than the whole buffer (entropy), and the used length only bounds what was written".into()
    } else if what.contains("malformed chain") {
        "§2.7.5 / §2.1.2: on a chain the driver made invalid the spec prescribes no handling (using it, skipping it with len 0, not using it or DEVICE_NEEDS_RESET are allowed)".into()
    } else if reg == "Status" && status_differs_only_in_needs_reset(reference, target) {
        "§2.1.2 / §4.2.4: DEVICE_NEEDS_RESET is a SHOULD (and has no bit on version 1); stopping the queue, skipping the chain or announcing DEVICE_NEEDS_RESET are all allowed".into()
    } else if what.starts_with("used") && what.ends_with("count") {
        "§2.7.5 / §2.1.2: on a chain one side judged malformed the spec prescribes no handling (using it, skipping it or stopping are allowed; memory safety and an honest len are graded by the checks)".into()
    } else if reg == "InterruptStatus" {
        "§2.7.7.1: the driver must tolerate spurious notifications, so an extra InterruptStatus bit is allowed".into()
    } else if reg == "ConfigGeneration" {
        "§2.5: drivers only compare the generation around a configuration read; a change with no visible field change is allowed".into()
    } else if reg.starts_with("0x") {
        "§4.2.2: the offset names no register; what a read returns is not defined".into()
    } else {
        "no normative statement the suite checks covers this difference; reported for review".into()
    }
}

fn run_both(
    reference: &mut dyn Target,
    target: &mut dyn Target,
    case: &Case,
    catalog: &Catalog,
) -> Result<(CaseRun, CaseRun), TargetError> {
    reference.fresh()?;
    let r = run_case(reference, case, catalog);
    target.fresh()?;
    let t = run_case(target, case, catalog);
    Ok((r, t))
}

/// The requirement ids a run's failures cite, sorted, each once.
fn failed_ids(run: &CaseRun) -> Vec<String> {
    let mut ids: Vec<String> = run
        .failures
        .iter()
        .filter(|f| f.level != crate::catalog::Level::May)
        .flat_map(|f| f.requirements.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Compares one stream; returns the divergence, if any (unshrunk).
fn compare(
    reference: &mut dyn Target,
    target: &mut dyn Target,
    case: &Case,
    catalog: &Catalog,
) -> Result<Option<Divergence>, TargetError> {
    let (r, t) = run_both(reference, target, case, catalog)?;
    let diff = first_difference(&r.observations, &t.observations);
    if r.outcome == Outcome::Unsupported || t.outcome == Outcome::Unsupported {
        // The stream cannot run on one side (a capability or feature is missing).
        return Ok(None);
    }
    let reference_failed = r.outcome.is_failure() || r.outcome == Outcome::Error;
    let target_failed = t.outcome.is_failure() || t.outcome == Outcome::Error;
    if diff.is_none() && !target_failed && !reference_failed {
        return Ok(None);
    }
    let (step, what, rv, tv) = diff.unwrap_or_else(|| {
        let f = t.failures.first().or(r.failures.first());
        (
            f.and_then(|f| f.step).unwrap_or(0),
            f.map_or("outcome".into(), |f| f.op.clone()),
            r.outcome.name().into(),
            t.outcome.name().into(),
        )
    });
    let (r_ids, t_ids) = (failed_ids(&r), failed_ids(&t));
    let mirrored_fault =
        reference_failed && target_failed && r_ids.iter().all(|id| t_ids.contains(id));
    let (class, requirements, explanation) = if reference_failed && !mirrored_fault {
        (
            DivergenceClass::ReferenceBug,
            cite(catalog, &r_ids),
            "the reference failed a check of its own suite".to_string(),
        )
    } else if mirrored_fault {
        // The mirrored profile (for example the target's offered features) made both fail
        // the same checks: the fault is the target's.
        (
            DivergenceClass::SpecViolation,
            cite(catalog, &t_ids),
            "the target failed these checks; the reference failed them only with the target's profile mirrored".to_string(),
        )
    } else if target_failed {
        let ids = failed_ids(&t);
        let why = t
            .failures
            .first()
            .map(|f| format!("expected {}; observed {}", f.expected, f.observed))
            .or(t.reason.clone())
            .unwrap_or_default();
        (DivergenceClass::SpecViolation, cite(catalog, &ids), why)
    } else if let Some((id, why)) = mandated(
        &what,
        &rv,
        &tv,
        &prior_same_step(&r.observations, &t.observations),
    ) {
        (
            DivergenceClass::SpecViolation,
            cite(catalog, &[id.to_string()]),
            why,
        )
    } else {
        (
            DivergenceClass::ImplementationDefined,
            Vec::new(),
            explain(&what, &rv, &tv),
        )
    };
    Ok(Some(Divergence {
        source: case.id.clone(),
        class,
        step,
        what,
        reference: rv,
        target: tv,
        requirements,
        explanation,
        minimal: Vec::new(),
    }))
}

fn step_json(step: &Step, originals: &std::collections::HashMap<usize, String>) -> String {
    originals
        .get(&step.line)
        .cloned()
        .unwrap_or_else(|| step.op.to_line())
}

/// Removes steps while the same divergence (same class and observation) persists.
fn shrink(
    reference: &mut dyn Target,
    target: &mut dyn Target,
    case: &Case,
    catalog: &Catalog,
    d: &Divergence,
) -> Result<Vec<Step>, TargetError> {
    let same = |x: &Divergence| x.class == d.class && x.what == d.what;
    let mut steps: Vec<Step> = case.steps.iter().take(d.step + 1).cloned().collect();
    let mut trials = 0;
    let mut changed = true;
    while changed && trials < 300 {
        changed = false;
        let mut i = steps.len();
        while i > 0 && trials < 300 {
            i -= 1;
            if steps.len() == 1 {
                break;
            }
            let mut candidate = case.clone();
            candidate.steps = steps.clone();
            candidate.steps.remove(i);
            trials += 1;
            if let Some(x) = compare(reference, target, &candidate, catalog)? {
                if same(&x) {
                    steps = candidate.steps;
                    changed = true;
                }
            }
        }
    }
    Ok(steps)
}

/// Classes of random streams. Stream `index` belongs to the `index`-th class (cycling) among
/// those that apply to the profile ([`stream_classes`]); every stream also draws from the
/// general vocabulary (register reads and writes, chains, observations, resets).
///
/// | class | what it stresses |
/// |---|---|
/// | `registers` | reads of every register (the other layout's too), writes of any 32-bit value to the selectors, InterruptACK, read-only registers |
/// | `notify` | QueueNotify with any 32-bit value (other queues, notification data) |
/// | `chains` | direct chains of 1 to 4 buffers, readable and writable, rarely looped or outside RAM |
/// | `indirect` | indirect tables (INDIRECT_DESC offered), rarely with odd flags or lengths |
/// | `edges` | buffers ending at the last byte of RAM, straddling its end, above it, wrapping past 2^64 |
/// | `features` | DeviceFeatures pages 0 to 5, DriverFeatures written on pages ≥ 2, re-negotiation |
/// | `config` | configuration-space reads of every width, ConfigGeneration, host-side changes |
/// | `resets` | initialization stopped in every device status state, then reset and re-initialized |
/// | `event_idx` | used_event / avail flags with EVENT_IDX (offered) |
/// | `queue_reset` | QueueReset of a live queue and re-enabling it (RING_RESET offered) |
/// | `block` | block requests of every type (and unknown ones) in every framing of the header, the header with its data in one descriptor, data and status in one; DISCARD / WRITE_ZEROES negotiated where offered, with 1 to 3 (rarely 40) segments inside and past the disk and every flag |
/// | `legacy` | the legacy layout: QueueAlign values and re-setup of the queue (version 1) |
pub const STREAM_CLASSES: &[&str] = &[
    "registers",
    "notify",
    "chains",
    "indirect",
    "edges",
    "features",
    "config",
    "resets",
    "event_idx",
    "queue_reset",
    "block",
    "legacy",
];

/// The random-stream classes that apply to `profile` (see [`STREAM_CLASSES`]).
pub fn stream_classes(profile: &Profile) -> Vec<&'static str> {
    let legacy = profile.version == 1;
    let offers = |b: u32| profile.features & bit(b) != 0;
    STREAM_CLASSES
        .iter()
        .copied()
        .filter(|c| match *c {
            "indirect" => offers(VIRTIO_F_INDIRECT_DESC),
            "event_idx" => offers(VIRTIO_F_EVENT_IDX),
            "queue_reset" => !legacy && offers(VIRTIO_F_RING_RESET),
            "block" => profile.device_id == 2,
            "legacy" => legacy,
            _ => true,
        })
        .collect()
}

/// The class of random stream `index` for `profile`.
pub fn stream_class(profile: &Profile, index: usize) -> &'static str {
    let classes = stream_classes(profile);
    classes[index % classes.len()]
}

fn reg_at(reg: &str) -> crate::case::Reg {
    crate::case::Reg {
        reg: Some(reg.into()),
        offset: None,
        width: None,
        queue: None,
    }
}

fn read_op(at: crate::case::Reg) -> Op {
    Op::Read {
        at,
        expect: None,
        mask: None,
        bits_set: None,
        bits_clear: None,
        expect_ne: None,
        expect_in: None,
        save: None,
        expect_var: None,
        expect_ne_var: None,
        grade: Default::default(),
    }
}

fn write_op(reg: &str, value: u64) -> Op {
    Op::Write {
        at: reg_at(reg),
        value: Num(value),
    }
}

fn post_op(chain: Vec<Buf>, indirect: bool) -> Op {
    Op::Post {
        queue: 0,
        chain,
        indirect,
        indirect_flags: None,
        indirect_len: None,
        kick: Some(true),
        head: None,
    }
}

/// A random step stream for `profile`, reproducible from `seed`; its class is
/// [`stream_class`]`(profile, index)` and its id `random.<seed>.<index>`.
pub fn random_case(profile: &Profile, seed: u64, index: usize) -> Case {
    let class = stream_class(profile, index);
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut pick = |n: u32| rng.next_u32() % n.max(1);
    let legacy = profile.version == 1;
    let offers = |b: u32| profile.features & bit(b) != 0;
    let mut steps = Vec::new();
    let push = |op: Op, steps: &mut Vec<Step>| {
        let line = steps.len() + 2;
        steps.push(Step { line, op });
    };
    let mut features = if legacy {
        vec![]
    } else {
        vec![Feature::Bit(VIRTIO_F_VERSION_1)]
    };
    for b in [
        VIRTIO_F_INDIRECT_DESC,
        VIRTIO_F_EVENT_IDX,
        VIRTIO_F_RING_RESET,
    ] {
        let wanted = match class {
            "indirect" => b == VIRTIO_F_INDIRECT_DESC,
            "event_idx" => b == VIRTIO_F_EVENT_IDX,
            "queue_reset" => b == VIRTIO_F_RING_RESET,
            _ => false,
        };
        let legal = !legacy || b != VIRTIO_F_RING_RESET;
        if legal && offers(b) && (wanted || pick(2) == 0) {
            features.push(Feature::Bit(b));
        }
    }
    // Block streams negotiate DISCARD and WRITE_ZEROES where offered (usually), so their
    // segment requests reach the device's handling rather than only its UNSUPP answer.
    if class == "block" && profile.device_id == 2 {
        for b in [VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES] {
            if offers(b) && pick(4) != 0 {
                features.push(Feature::Bit(b));
            }
        }
    }
    let init = |upto: Upto| Op::Init {
        features: Some(features.clone()),
        order: None,
        upto,
        queues: Some(vec![QueueSpec {
            index: 0,
            size: 8,
            align: None,
        }]),
        grade: Default::default(),
    };
    push(init(Upto::DriverOk), &mut steps);
    // Every register of both layouts is read: an offset the transport version does not
    // define reads as whatever the device answers (the mirror answers the same).
    let regs_all: &[&str] = &[
        "MagicValue",
        "Version",
        "DeviceID",
        "VendorID",
        "Status",
        "InterruptStatus",
        "QueueNumMax",
        "QueueReady",
        "ConfigGeneration",
        "DeviceFeatures",
        "QueueSel",
        "QueueNum",
        "DriverFeatures",
        "SHMLenLow",
        "SHMLenHigh",
        "SHMBaseLow",
        "QueueReset",
        "QueueDescLow",
        "QueueDeviceHigh",
        "QueuePFN",
        "QueueAlign",
        "GuestPageSize",
    ];
    let wide = |pick: &mut dyn FnMut(u32) -> u32| -> u64 {
        match pick(4) {
            0 => u64::from(pick(4)),
            1 => 0xffff_ffff,
            2 => 0x8000_0000 | u64::from(pick(16)),
            _ => u64::from(pick(u32::MAX)),
        }
    };
    let chain = |pick: &mut dyn FnMut(u32) -> u32, max: u32| -> Vec<Buf> {
        let len = 1 + pick(max) as usize;
        (0..len)
            .map(|k| {
                let write = k + 1 == len || pick(3) == 0;
                Buf {
                    len: Num(1 + pick(64) as u64),
                    write,
                    data: (!write).then(|| Hex(vec![pick(256) as u8; 4])),
                    ..Buf::default()
                }
            })
            .collect()
    };
    let n = 4 + pick(20) as usize;
    for _ in 0..n {
        // Half the steps come from the stream's class, half from the general vocabulary.
        let themed = pick(2) == 0;
        let ops: Vec<Op> = match (themed, class) {
            (true, "registers") => match pick(3) {
                0 => {
                    // A selector, then a register it selects.
                    let (sel, reads) = [
                        ("QueueSel", "QueueNumMax"),
                        ("QueueSel", "QueueReady"),
                        ("DeviceFeaturesSel", "DeviceFeatures"),
                        ("SHMSel", "SHMLenLow"),
                    ][pick(4) as usize];
                    vec![write_op(sel, wide(&mut pick)), read_op(reg_at(reads))]
                }
                1 => vec![write_op(
                    [
                        "MagicValue",
                        "Version",
                        "DeviceID",
                        "VendorID",
                        "QueueNumMax",
                    ][pick(5) as usize],
                    wide(&mut pick),
                )],
                _ => vec![write_op("InterruptACK", wide(&mut pick))],
            },
            (true, "notify") => vec![Op::Kick {
                queue: 0,
                value: Some(Num(wide(&mut pick))),
            }],
            (true, "chains") => {
                let mut c = chain(&mut pick, 4);
                if pick(10) == 0 {
                    let last = c.len() - 1;
                    c[last].flags = Some(Num((VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE) as u64));
                    c[last].next = Some(Num(pick(8) as u64));
                }
                vec![post_op(c, false)]
            }
            (true, "indirect") => {
                let c = chain(&mut pick, 4);
                let n = c.len() as u64;
                let mut op = post_op(c, true);
                if let Op::Post {
                    indirect_flags,
                    indirect_len,
                    ..
                } = &mut op
                {
                    match pick(10) {
                        0 => *indirect_len = Some(Num(16 * n + 8)),
                        1 => *indirect_len = Some(Num(0)),
                        2 => {
                            *indirect_flags =
                                Some(Num((VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE) as u64))
                        }
                        _ => {}
                    }
                }
                vec![op]
            }
            (true, "edges") => {
                let len = 1 + pick(64) as u64;
                let mut b = Buf {
                    len: Num(len),
                    write: true,
                    ..Buf::default()
                };
                match pick(5) {
                    // Ends exactly at the last byte of RAM.
                    0 | 1 => b.from_ram_end = Some(Num(len)),
                    // Straddles the end of RAM.
                    2 => b.from_ram_end = Some(Num(len / 2)),
                    // Just above RAM.
                    3 => b.from_ram_end = Some(Num(0)),
                    // Wraps past 2^64.
                    _ => b.addr = Some(Num(u64::MAX - len / 2)),
                }
                let mut c = vec![b];
                if pick(2) == 0 {
                    c.insert(
                        0,
                        Buf {
                            len: Num(4),
                            data: Some(Hex(vec![1, 2, 3, 4])),
                            ..Buf::default()
                        },
                    );
                }
                vec![post_op(c, false)]
            }
            (true, "features") => match pick(3) {
                0 => vec![
                    write_op("DeviceFeaturesSel", pick(6) as u64),
                    read_op(reg_at("DeviceFeatures")),
                ],
                1 => vec![
                    write_op("DriverFeaturesSel", 2 + pick(4) as u64),
                    write_op("DriverFeatures", wide(&mut pick)),
                    read_op(reg_at("Status")),
                ],
                _ => vec![init(Upto::DriverOk)],
            },
            (true, "config") => {
                let width = [1u8, 2, 4, 8][pick(4) as usize];
                let off = CONFIG + u64::from(pick(32)) / u64::from(width) * u64::from(width);
                if pick(6) == 0 {
                    vec![Op::ConfigChange {
                        offset: Num(0),
                        data: Hex((1 + pick(4096) as u64).to_le_bytes().to_vec()),
                    }]
                } else {
                    vec![
                        read_op(crate::case::Reg {
                            reg: None,
                            offset: Some(Num(off)),
                            width: Some(width),
                            queue: None,
                        }),
                        read_op(reg_at(if legacy {
                            "InterruptStatus"
                        } else {
                            "ConfigGeneration"
                        })),
                    ]
                }
            }
            (true, "resets") => {
                let upto = [
                    Upto::Acknowledge,
                    Upto::Driver,
                    Upto::FeaturesOk,
                    Upto::Queues,
                    Upto::DriverOk,
                ][pick(5) as usize];
                vec![
                    init(upto),
                    Op::Observe { queue: 0 },
                    Op::Reset {
                        grade: Default::default(),
                    },
                    init(Upto::DriverOk),
                ]
            }
            (true, "event_idx") => match pick(4) {
                0 => vec![Op::SetUsedEvent {
                    queue: 0,
                    value: Num(pick(12) as u64),
                }],
                1 => vec![Op::SetAvailFlags {
                    queue: 0,
                    value: Num(pick(2) as u64),
                }],
                2 => vec![read_op(reg_at("InterruptStatus")), Op::Ack { value: None }],
                _ => vec![post_op(chain(&mut pick, 2), false)],
            },
            (true, "queue_reset") => match pick(3) {
                0 => vec![
                    write_op("QueueSel", 0),
                    write_op("QueueReset", 1),
                    read_op(reg_at("QueueReset")),
                    read_op(reg_at("QueueReady")),
                ],
                1 => vec![Op::Queue {
                    index: 0,
                    size: [2u16, 4, 8][pick(3) as usize],
                    align: None,
                }],
                _ => vec![post_op(chain(&mut pick, 2), false)],
            },
            (true, "block") => {
                let kind = [0u32, 1, 4, 8, 8, 0, 1, 99, 11, 13, 11, 13][pick(12) as usize];
                let split = match pick(4) {
                    0 => Some(vec![8, 8]),
                    1 => Some(vec![1, 15]),
                    2 => Some(vec![4, 4, 4, 4]),
                    _ => None,
                };
                let data_len = match kind {
                    8 => [20u64, 8, 0, 32][pick(4) as usize],
                    4 => 0,
                    _ => [512u64, 1024, 0, 100][pick(4) as usize],
                };
                let sector = match pick(4) {
                    0 => u64::MAX,
                    1 => 1 << 20,
                    _ => pick(8) as u64,
                };
                // DISCARD / WRITE_ZEROES: 1 to 3 segments (rarely 40, beyond any small
                // max_*_seg), sectors inside and past the disk, flags 0, unmap or unknown.
                let segments = matches!(kind, 11 | 13).then(|| {
                    let n = if pick(8) == 0 { 40 } else { 1 + pick(3) };
                    let mut d = Vec::new();
                    for _ in 0..n {
                        let sector = if pick(6) == 0 {
                            1u64 << 40
                        } else {
                            pick(64) as u64
                        };
                        d.extend(sector.to_le_bytes());
                        d.extend((1 + pick(16)).to_le_bytes());
                        d.extend([0u32, 0, 1, 2][pick(4) as usize].to_le_bytes());
                    }
                    d
                });
                let data = match &segments {
                    Some(d) => Some(Hex(d.clone())),
                    None => (kind == 1 && data_len > 0)
                        .then(|| Hex(vec![pick(256) as u8; data_len as usize])),
                };
                if pick(5) == 0 {
                    // The framings the `blk` step does not build: the header and the
                    // driver-readable data in one descriptor, or the data and the status
                    // byte in one device-writable descriptor.
                    let mut hdr = kind.to_le_bytes().to_vec();
                    hdr.extend([0u8; 4]);
                    hdr.extend(sector.to_le_bytes());
                    let c = match &data {
                        Some(d) => {
                            hdr.extend(&d.0);
                            vec![
                                Buf {
                                    len: Num(hdr.len() as u64),
                                    data: Some(Hex(hdr)),
                                    ..Buf::default()
                                },
                                Buf {
                                    len: Num(1),
                                    write: true,
                                    ..Buf::default()
                                },
                            ]
                        }
                        None => vec![
                            Buf {
                                len: Num(16),
                                data: Some(Hex(hdr)),
                                ..Buf::default()
                            },
                            Buf {
                                len: Num(data_len + 1),
                                write: true,
                                ..Buf::default()
                            },
                        ],
                    };
                    vec![post_op(c, false)]
                } else {
                    vec![Op::Blk {
                        queue: 0,
                        kind: crate::case::BlkType(kind),
                        sector: Some(Num(sector)),
                        data_len: Some(Num(data_len)),
                        data,
                        split,
                        kick: Some(true),
                    }]
                }
            }
            (true, "legacy") => vec![
                Op::Reset {
                    grade: Default::default(),
                },
                init(Upto::FeaturesOk),
                Op::Queue {
                    index: 0,
                    size: [4u16, 8, 16][pick(3) as usize],
                    align: Some([4096u32, 64, 16, 8192, 4][pick(5) as usize]),
                },
                write_op("Status", 0x0f),
            ],
            _ => match pick(10) {
                0 | 1 => vec![read_op(reg_at(
                    regs_all[pick(regs_all.len() as u32) as usize],
                ))],
                2 => {
                    let (reg, value) = match pick(5) {
                        0 => ("QueueSel", pick(3) as u64),
                        1 => ("DeviceFeaturesSel", pick(4) as u64),
                        2 => ("InterruptACK", pick(4) as u64),
                        3 => ("QueueNotify", pick(2) as u64),
                        _ => ("SHMSel", pick(2) as u64),
                    };
                    vec![write_op(reg, value)]
                }
                3..=6 => {
                    let mut c = chain(&mut pick, 3);
                    // Rarely malformed: a loop or a buffer outside guest RAM.
                    match pick(12) {
                        0 => {
                            let last = c.len() - 1;
                            c[last].flags =
                                Some(Num((VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE) as u64));
                            c[last].next = Some(Num(0));
                        }
                        1 => c[0].addr = Some(Num(0xffff_ffff_0000_0000)),
                        _ => {}
                    }
                    vec![post_op(c, false)]
                }
                7 | 8 => vec![Op::Observe { queue: 0 }],
                _ => vec![
                    Op::Reset {
                        grade: Default::default(),
                    },
                    init(Upto::DriverOk),
                ],
            },
        };
        for op in ops {
            push(op, &mut steps);
        }
    }
    push(Op::Observe { queue: 0 }, &mut steps);
    Case {
        id: format!("random.{seed}.{index}"),
        title: format!("random step stream ({class})"),
        description: Some(format!("class {class}")),
        requirements: Vec::new(),
        versions: vec![1, 2],
        devices: vec!["any".into()],
        features: Vec::new(),
        needs: Vec::new(),
        steps,
        file: "<random>".into(),
    }
}

/// Renders steps in the case format (one JSON object per line), using the original lines of
/// the case file where the step came from one.
fn render(case: &Case, steps: &[Step]) -> Vec<String> {
    let originals: std::collections::HashMap<usize, String> = std::fs::read_to_string(&case.file)
        .map(|t| {
            t.lines()
                .enumerate()
                .map(|(i, l)| (i + 1, l.to_string()))
                .collect()
        })
        .unwrap_or_default();
    steps.iter().map(|s| step_json(s, &originals)).collect()
}

/// Runs the differential comparison of `target` against the mirrored reference.
pub fn run_diff(
    cases: &[Case],
    catalog: &Catalog,
    target: &mut dyn Target,
    device: DeviceKind,
    opts: &DiffOptions,
) -> Result<DiffReport, TargetError> {
    let info = target.info();
    let profile = discover(target)?;
    let mut reference = mirror(&profile, device)?;
    let only: Vec<_> = opts
        .only
        .iter()
        .filter_map(|p| globset::Glob::new(p).ok().map(|g| g.compile_matcher()))
        .collect();
    // Features the target offers that the reference cannot honour (for example legacy
    // NOTIFY_ON_EMPTY): cases that need one are not compared, since the mirrored reference
    // would fail them for want of an implementation, not by a fault of either side.
    let version = if profile.version == 1 {
        TransportVersion::Legacy
    } else {
        TransportVersion::Modern
    };
    // The reference also honours the packed ring and in-order use, offered on request.
    let on_request = if version == TransportVersion::Modern {
        bit(VIRTIO_F_RING_PACKED) | bit(VIRTIO_F_IN_ORDER)
    } else {
        0
    };
    let mut honoured =
        DeviceConfig::new(version).transport_features | backend(device)?.features() | on_request;
    if device == DeviceKind::Block {
        // The mirror builds a read-only disk for a target that offers VIRTIO_BLK_F_RO.
        honoured |= 1 << 5;
    }
    let mut streams: Vec<Case> = cases
        .iter()
        .filter(|c| c.applies_to(&info.device, info.version))
        .filter(|c| c.features.iter().all(|&b| honoured & bit(b) != 0))
        .filter(|c| only.is_empty() || only.iter().any(|g| g.is_match(&c.id)))
        .cloned()
        .collect();
    let mut random_streams: Vec<StreamClassCount> = STREAM_CLASSES
        .iter()
        .map(|c| StreamClassCount {
            class: c.to_string(),
            streams: 0,
            spec_violations: 0,
            implementation_defined: 0,
            reference_bugs: 0,
        })
        .collect();
    let mut class_of: std::collections::HashMap<String, usize> = Default::default();
    for i in 0..opts.random {
        let c = stream_class(&profile, i);
        if let Some(k) = STREAM_CLASSES.iter().position(|x| *x == c) {
            random_streams[k].streams += 1;
            class_of.insert(format!("random.{}.{i}", opts.seed), k);
        }
        streams.push(random_case(&profile, opts.seed, i));
    }
    let mut divergences: Vec<Divergence> = profile_violations(&profile, device)
        .into_iter()
        .map(|(id, expected, observed)| Divergence {
            source: "profile".into(),
            class: DivergenceClass::SpecViolation,
            step: 0,
            what: "discovery".into(),
            reference: expected,
            target: observed,
            requirements: cite(catalog, &[id.to_string()]),
            explanation:
                "a profile value the spec forbids; the mirrored reference does not copy it".into(),
            minimal: Vec::new(),
        })
        .collect();
    for case in &streams {
        if let Some(mut d) = compare(&mut reference, target, case, catalog)? {
            let steps = if opts.shrink {
                shrink(&mut reference, target, case, catalog, &d)?
            } else {
                case.steps.iter().take(d.step + 1).cloned().collect()
            };
            d.minimal = render(case, &steps);
            divergences.push(d);
        }
    }
    for d in &divergences {
        if let Some(&k) = class_of.get(&d.source) {
            let c = &mut random_streams[k];
            match d.class {
                DivergenceClass::SpecViolation => c.spec_violations += 1,
                DivergenceClass::ImplementationDefined => c.implementation_defined += 1,
                DivergenceClass::ReferenceBug => c.reference_bugs += 1,
            }
        }
    }
    random_streams.retain(|c| c.streams > 0);
    let count = |c: DivergenceClass| divergences.iter().filter(|d| d.class == c).count();
    Ok(DiffReport {
        schema: "virtio-conform/diff/1".into(),
        target: info,
        profile,
        streams: streams.len(),
        spec_violations: count(DivergenceClass::SpecViolation),
        implementation_defined: count(DivergenceClass::ImplementationDefined),
        reference_bugs: count(DivergenceClass::ReferenceBug),
        divergences,
        random_streams,
    })
}
