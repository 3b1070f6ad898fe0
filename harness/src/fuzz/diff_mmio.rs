//! `diff_mmio`: the same operation stream against the reference and one [`Mutant`], both as
//! a [`ReferenceTarget`] (which turns panics into [`TargetError::Crashed`] and an exhausted
//! step budget into [`TargetError::Hung`]), built with a 16-sector disk and a step budget of
//! [`DIFF_STEP_BUDGET`] descriptor reads per notification.
//!
//! # Input
//!
//! The first byte selects the mutant by name ([`mutant_for_selector`]: of all mutants, the one
//! whose name hashed together with the byte scores highest), so adding a mutant at the end of
//! [`Mutant::ALL`] only takes over the selector values it now wins (about `256 / N` of them)
//! and leaves every other input on the mutant it had; the order of the list plays no part.
//! The rest is an [`MmioCase`]. [`MUTANT_ENV`](super::MUTANT_ENV) overrides the byte: a
//! mutant name pins that mutant, `reference` compares the reference with itself (what the
//! smoke run does, so every crash is a reference bug).
//!
//! # Oracle
//!
//! After every operation the observations of both sides must be equal: the bytes of every
//! register read (sentinel-prefilled), which accesses failed and how, the interrupts raised
//! and the guest-memory accesses made by each write, and the used ring after each
//! notification; for the block device (deterministic: same disk, same requests) also the
//! bytes of every guest-memory range the device wrote (status bytes, data read, device ID).
//! The reference itself must never crash or hang.

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

/// Score of mutant name `name` for selector byte `selector`: FNV-1a (64 bits) over the name's
/// bytes and then the selector, finished with a 64-bit mix so nearby selectors spread.
fn score(name: &str, selector: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes().iter().chain(std::iter::once(&selector)) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The mutant among `candidates` that selector byte `selector` picks (rendezvous hashing on
/// the names: highest [`score`], ties to the smaller name). Depends only on the names, not on
/// their order; `None` when `candidates` is empty.
pub fn pick_by_name(candidates: &[Mutant], selector: u8) -> Option<Mutant> {
    candidates.iter().copied().max_by(|a, b| {
        (score(a.name(), selector), std::cmp::Reverse(a.name()))
            .cmp(&(score(b.name(), selector), std::cmp::Reverse(b.name())))
    })
}

/// The mutant selector byte `selector` picks from [`candidates`] (see [`pick_by_name`]);
/// computed once per process for all 256 values.
pub fn mutant_for_selector(selector: u8) -> Mutant {
    static TABLE: std::sync::OnceLock<Vec<Mutant>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let candidates = candidates();
        (0..=255u8)
            .map(|b| pick_by_name(&candidates, b).expect("Mutant::ALL is not empty"))
            .collect()
    })[selector as usize]
}

/// The mutants the selector byte chooses from: every mutant except the packed-ring ones
/// (`packed-*`), which cannot diverge on the split rings this target drives (the
/// `packed_chain` target covers them). Leaving them out only gives their bytes back to the
/// others, so no other mutant's selector moves.
pub fn candidates() -> Vec<Mutant> {
    Mutant::ALL
        .iter()
        .copied()
        .filter(|m| !m.name().starts_with("packed-"))
        .collect()
}

/// The smallest selector byte that picks `m`, or `None` when no byte does (possible for a
/// name that loses every one of the 256 draws; pin it with
/// [`MUTANT_ENV`](super::MUTANT_ENV) instead).
pub fn selector_for(m: Mutant) -> Option<u8> {
    (0..=255u8).find(|&b| mutant_for_selector(b) == m)
}

fn mutant_of(selector: u8) -> Mutant {
    mutant_for_selector(selector)
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
        if block {
            written_bytes_agree(&oa, &mut ea, &mut eb).map_err(|(gpa, ra, rb)| {
                Finding::new(
                    TARGET,
                    "divergence",
                    &[],
                    format!(
                        "{}: the device wrote {} bytes at {gpa:#x}; the reference wrote {ra:02x?}, {} wrote {rb:02x?}",
                        op.describe(legacy, block),
                        ra.len(),
                        mutant.map_or("the second reference".to_string(), |m| format!(
                            "mutant:{} ({})",
                            m.name(),
                            m.catalog_id()
                        )),
                    ),
                )
                .at(i)
                .on(mutant)
            })?;
        }
    }
    Ok(())
}

/// Largest device write (in bytes) whose contents [`written_bytes_agree`] compares.
const MAX_COMPARED_WRITE: u64 = 4096;

/// The bytes of every guest-memory range the device wrote during one operation (the write
/// accesses in `obs`, the same on both sides) must be the same on both sides: the block
/// device is deterministic (same disk, same requests), so its status bytes, read data and
/// device ID must agree byte for byte. Ranges longer than [`MAX_COMPARED_WRITE`] are compared
/// over their first bytes. Errors with the first differing range and both contents.
fn written_bytes_agree<H: super::mmio::Hook<ReferenceTarget>>(
    obs: &[Obs],
    ea: &mut Exec<'_, ReferenceTarget, H>,
    eb: &mut Exec<'_, ReferenceTarget, H>,
) -> Result<(), (u64, Vec<u8>, Vec<u8>)> {
    use crate::target::Target;
    for o in obs {
        let Obs::Effects { effects, .. } = o else {
            continue;
        };
        for a in &effects.accesses {
            if a.kind != virtio_reference_device::AccessKind::Write || a.len == 0 {
                continue;
            }
            let n = a.len.min(MAX_COMPARED_WRITE) as usize;
            let (mut ra, mut rb) = (vec![0u8; n], vec![0u8; n]);
            let ok_a = ea.t.mem_read(a.gpa, &mut ra).is_ok();
            let ok_b = eb.t.mem_read(a.gpa, &mut rb).is_ok();
            if ok_a != ok_b || ra != rb {
                return Err((a.gpa, ra, rb));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::mmio::{MmioCase, MmioOp};

    /// A block request of an unknown type: the reference completes it with UNSUPP, the
    /// mutant `block-unknown-type-ok` with OK; only the status byte differs.
    pub(crate) fn unknown_block_request() -> MmioCase {
        use super::super::mmio::MmioHeader;
        MmioCase {
            header: MmioHeader { flags: 2 },
            ops: vec![
                MmioOp::Init {
                    features: 15,
                    size: 3,
                },
                MmioOp::Chain {
                    bufs: [0x83, 0, 0, 0],
                    n: 0,
                    knob: 0,
                    req: 4,
                },
                MmioOp::Notify { queue: 0 },
            ],
        }
    }

    /// The status byte of an unknown request type tells the mutant from the reference (the
    /// register reads, accesses and used ring are the same on both), and the reference
    /// agrees with itself.
    #[test]
    fn written_status_byte_finds_block_unknown_type_ok() {
        let m = Mutant::BlockUnknownTypeOk;
        let dc = DiffCase {
            selector: selector_for(m).unwrap_or(0),
            mutant: m,
            case: unknown_block_request(),
        };
        let bytes = dc.encode();
        if std::env::var_os("DIFF_PRINT").is_some() {
            println!(
                "{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
        assert!(diff_mmio_on(&bytes, None).is_ok());
        let f = diff_mmio_on(&bytes, Some(m)).expect_err("the status byte differs");
        assert!(f.to_string().contains("wrote 1 bytes"), "{f}");
    }

    /// A block case: init, then each `(bufs, req)` as a chain followed by a notification.
    fn block_requests(chains: &[([u8; 4], u8)]) -> MmioCase {
        use super::super::mmio::MmioHeader;
        let mut ops = vec![MmioOp::Init {
            features: 15,
            size: 3,
        }];
        for &(bufs, req) in chains {
            ops.push(MmioOp::Chain {
                bufs,
                n: 0,
                knob: 0,
                req,
            });
            ops.push(MmioOp::Notify { queue: 0 });
        }
        MmioCase {
            header: MmioHeader { flags: 2 },
            ops,
        }
    }

    /// DISCARD and WRITE_ZEROES requests (§5.2.6) tell each of the four discard/write-zeroes
    /// mutants from the reference; the reference agrees with itself on all of them.
    #[test]
    fn discard_and_write_zeroes_requests_find_their_mutants() {
        // bufs[1]: 0xf0 DISCARD 1 segment, 0xf1 WRITE_ZEROES 1 segment, 0xfa DISCARD 6
        // segments; bufs[2] the first sector; bufs[3] bit 7 UNMAP.
        let out_sector_3 = ([0x83, 0, 0, 0], 1 + 5 * 3); // OUT of 32 bytes to sector 3
        let in_sector_3 = ([0x83, 0, 0, 0], 5 * 3); // IN of 32 bytes from sector 3
        let cases = [
            (
                Mutant::BlockDiscardUnmapAccepted,
                block_requests(&[([0x83, 0xf0, 3, 0x80], 4)]),
            ),
            (
                Mutant::BlockWriteZeroesUnmapKeepsData,
                block_requests(&[
                    ([0x83, 0xf0, 3, 0], 4), // segments bytes left at DATA + SLOT
                    out_sector_3,            // ...written to sector 3: not all zero
                    ([0x83, 0xf1, 3, 0x80], 4),
                    in_sector_3,
                ]),
            ),
            (
                Mutant::BlockDwzSegmentsUnbounded,
                block_requests(&[([0x83, 0xfa, 1, 0], 4)]),
            ),
            (
                Mutant::BlockDwzRangeUnchecked,
                block_requests(&[([0x83, 0xf1, 19, 0], 4)]),
            ),
        ];
        for (m, case) in cases {
            let dc = DiffCase {
                selector: selector_for(m).unwrap_or(0),
                mutant: m,
                case,
            };
            let bytes = dc.encode();
            assert!(diff_mmio_on(&bytes, None).is_ok(), "{}", m.name());
            assert!(
                diff_mmio_on(&bytes, Some(m)).is_err(),
                "{} not found",
                m.name()
            );
        }
    }

    /// The block mutants are found from the committed seeds, and the reference is not.
    #[test]
    fn block_mutants_are_found_from_the_seeds() {
        for m in [
            Mutant::BlockUnknownTypeOk,
            Mutant::WceWithoutFlush,
            Mutant::BlockDiscardUnmapAccepted,
            Mutant::BlockWriteZeroesUnmapKeepsData,
            Mutant::BlockDwzSegmentsUnbounded,
            Mutant::BlockDwzRangeUnchecked,
            // Not a block mutant: the seed with rings ending at the last byte of RAM.
            Mutant::RingEndOffByOne,
        ] {
            let found: Vec<String> = crate::fuzz::seeds::seeds(TARGET)
                .into_iter()
                .filter(|(_, bytes)| {
                    assert!(diff_mmio_on(bytes, None).is_ok());
                    diff_mmio_on(bytes, Some(m)).is_err()
                })
                .map(|(name, _)| name)
                .collect();
            assert!(!found.is_empty(), "no seed finds {}", m.name());
        }
    }

    #[test]
    fn every_mutant_is_reachable_from_the_selector_byte() {
        let unreachable: Vec<&str> = candidates()
            .iter()
            .filter(|&&m| selector_for(m).is_none())
            .map(|m| m.name())
            .collect();
        assert!(
            unreachable.is_empty(),
            "no selector byte picks {unreachable:?} (they stay reachable with VIRTIO_CONFORM_MUTANT)"
        );
    }

    /// Adding a mutant (here: taking one away and putting it back, at any position) moves
    /// only the selector values it wins; the order of the list does not matter.
    #[test]
    fn the_choice_is_stable_when_mutants_are_added_or_reordered() {
        let all = candidates();
        for (i, &added) in all.iter().enumerate() {
            let mut without: Vec<Mutant> = all.clone();
            without.remove(i);
            let mut reversed = all.clone();
            reversed.reverse();
            for b in 0..=255u8 {
                let with = mutant_for_selector(b);
                assert_eq!(pick_by_name(&reversed, b), Some(with));
                if with != added {
                    assert_eq!(
                        pick_by_name(&without, b),
                        Some(with),
                        "adding {} moved selector {b}",
                        added.name()
                    );
                }
            }
        }
    }
}
