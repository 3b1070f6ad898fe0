//! What ends a coverage-guided `diff_mmio` run against Dragonball, and what is only noted.
//!
//! `virtio_conform::fuzz::diff_mmio_against` returns the first difference from the reference
//! that the spec does not leave to the device. Against Dragonball most inputs that touch the
//! Status register end in one of the known deviations of `FINDINGS.md` (F1, F2: FAILED where a
//! reset or a combined Status write was asked for), so a run that stopped at every divergence
//! would stop within a second on a known one and never explore further. The gate's fuzz runs
//! (`tests/fuzz.rs` and the libFuzzer target in `fuzz/`) therefore stop only when the adapter
//! or the device breaks, and note divergences for triage.

use std::collections::BTreeMap;
use virtio_conform::fuzz::Finding;

/// Environment variable: `divergence` makes every finding end the run (to collect a
/// reproducer of a divergence); unset, only [`breaks_the_run`] findings do.
pub const STOP_ON_ENV: &str = "VIRTIO_CONFORM_FUZZ_STOP_ON";

/// Whether `f` means the adapter or the device broke: the adapter could not reset or identify
/// the device (oracle `harness`), or a register access failed, the device crashed (a panic on
/// one of its threads) or hung (oracle `subject-failed`). Such a finding ends a fuzz run.
pub fn breaks_the_run(f: &Finding) -> bool {
    matches!(f.oracle, "harness" | "subject-failed")
}

/// Whether `f` ends the run under the [`STOP_ON_ENV`] setting `stop_on` (its value, if set).
/// An unknown setting is treated as unset.
pub fn stops(f: &Finding, stop_on: Option<&str>) -> bool {
    breaks_the_run(f) || stop_on == Some("divergence")
}

/// Divergences seen in a run, counted by oracle and by the register or ring they concern (the
/// message up to its first colon), so a long run prints each kind once.
#[derive(Debug, Default)]
pub struct DivergenceLog {
    kinds: BTreeMap<(String, String), usize>,
}

impl DivergenceLog {
    /// Records `f`; returns `true` the first time its kind is seen (print it then).
    pub fn note(&mut self, f: &Finding) -> bool {
        let place = f.message.split(':').next().unwrap_or("").trim().to_string();
        let n = self.kinds.entry((f.oracle.to_string(), place)).or_default();
        *n += 1;
        *n == 1
    }

    /// Each kind with how many inputs ended in it.
    pub fn kinds(&self) -> impl Iterator<Item = (&str, &str, usize)> {
        self.kinds
            .iter()
            .map(|((o, p), n)| (o.as_str(), p.as_str(), *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_conform::fuzz::diff_mmio_against;
    use virtio_conform::fuzz::seeds::seeds;
    use virtio_conform::target::{DeviceKind, ReferenceTarget};
    use virtio_reference_device::{Mutant, TransportVersion};

    /// A real divergence and a real adapter failure, from the harness itself (the reference
    /// against a mutant), classified.
    #[test]
    fn divergences_are_noted_failures_stop() {
        let mut log = DivergenceLog::default();
        let mut seen_divergence = None;
        for (_, data) in seeds("diff_mmio") {
            let mut subject = ReferenceTarget::new(
                DeviceKind::Block,
                TransportVersion::Modern,
                Some(Mutant::ResetSetsFailed),
            )
            .expect("the reference block device builds");
            if let Err(f) = diff_mmio_against(&data, &mut subject) {
                if f.oracle == "divergence" {
                    seen_divergence = Some(f);
                    break;
                }
            }
        }
        let f = seen_divergence.expect("a seed shows the reset-sets-failed mutant as a divergence");
        assert!(!breaks_the_run(&f));
        assert!(!stops(&f, None));
        assert!(!stops(&f, Some("nonsense")));
        assert!(stops(&f, Some("divergence")));
        assert!(log.note(&f), "first of its kind");
        assert!(!log.note(&f), "second of its kind");
        assert_eq!(log.kinds().map(|(_, _, n)| n).sum::<usize>(), 2);
        let broken = Finding {
            oracle: "subject-failed",
            ..f
        };
        assert!(breaks_the_run(&broken) && stops(&broken, None));
    }
}
