//! Fuzz target bodies (queue_chain, mmio_regs, diff_mmio) with their oracles; see fuzz/.
//!
//! Every target is a plain library function from the fuzzer's bytes to `Result<(), Finding>`,
//! so the cargo-fuzz binaries in `fuzz/fuzz_targets/` are three-line wrappers and the committed
//! corpora (`corpora/<target>/`) replay under a plain `cargo test` on stable.
//!
//! | target | what it drives | oracles |
//! |---|---|---|
//! | [`queue_chain`](queue_chain()) | the reference [`SplitQueue`](virtio_reference_device::SplitQueue) and rust-vmm `virtio-queue` 0.18 over the same rings | memory-access confinement, used-ring entries, notification suppression, bounded work, differential with justified differences ([`queue_chain::JUSTIFIED_DIFFERENCES`]) |
//! | [`mmio_regs`](mmio_regs()) | the reference [`MmioDevice`](virtio_reference_device::MmioDevice) (both transport versions, entropy and block) | no panic or hang, identity registers, Status bits, FEATURES_OK, reset, InterruptStatus/ACK, ConfigGeneration, configuration space, QueueNumMax, no work before DRIVER_OK, invalid queue sizes |
//! | [`diff_mmio`](diff_mmio()) | the reference and one [`Mutant`] through [`ReferenceTarget`](crate::target::ReferenceTarget) | any observable divergence |
//! | [`diff_mmio_against`] (for a VMM crate's own `fuzz/`) | the reference and any [`Target`](crate::target::Target) (notified through `notify`, settled with `settle`) | differences the spec does not leave to the device |
//!
//! Inputs are decoded leniently: a short header and then operations, each an
//! `arbitrary`-derived value of fixed size, read from an [`arbitrary::Unstructured`] until the
//! bytes run out. Every byte string decodes; missing bytes read as zeros. The `decode_*`
//! functions return the same operation stream in readable form.
//!
//! A [`Mutant`] can be pinned for a whole fuzzing run with the environment variable
//! [`MUTANT_ENV`] (`VIRTIO_CONFORM_MUTANT=<name>`), read once per process.

mod buffer_filler;
pub mod crash;
pub mod device_chains;
pub mod diff_mmio;
pub mod diff_target;
mod encode;
pub mod mmio;
pub mod mmio_regs;
pub mod packed_chain;
pub mod queue_chain;
pub mod seeds;
pub mod small_target;
pub mod vsock_packets;

use std::fmt;
use std::sync::OnceLock;
use virtio_reference_device::Mutant;

pub use diff_mmio::{decode_diff_mmio, diff_mmio, diff_mmio_on, DiffCase};
pub use diff_target::diff_mmio_against;
pub use mmio::MmioCase;
pub use mmio_regs::{decode_mmio_regs, mmio_regs, mmio_regs_on};
pub use queue_chain::{decode_queue_chain, queue_chain, queue_chain_on, QueueChainCase};

/// Names of the fuzz targets, as used by `cargo fuzz run <name>`, the corpus folders and
/// [`replay`].
pub const TARGETS: &[&str] = &[
    "queue_chain",
    "mmio_regs",
    "diff_mmio",
    "packed_chain",
    "device_chains",
    "vsock_packets",
];

/// Environment variable that pins one mutant (by its [`Mutant::name`]) for a whole run.
pub const MUTANT_ENV: &str = "VIRTIO_CONFORM_MUTANT";

/// What an oracle found: the input is a reproducer.
///
/// Serialized into the JSON report of `virtio-conform replay`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Fuzz target that found it (`queue_chain`, `mmio_regs`, `diff_mmio`).
    pub target: &'static str,
    /// Name of the oracle that fired, e.g. `descriptor-table-written` or `divergence`.
    pub oracle: &'static str,
    /// What happened, with addresses, values and the step.
    pub message: String,
    /// Requirement ids of `specs/requirements.json` the oracle enforces (may be empty when
    /// the oracle is a robustness property with no single normative statement).
    pub requirements: Vec<&'static str>,
    /// Index of the operation (in the decoded stream) at which it fired.
    pub op: Option<usize>,
    /// The mutant the body ran against (`None` for the reference).
    pub mutant: Option<&'static str>,
}

impl Finding {
    pub(crate) fn new(
        target: &'static str,
        oracle: &'static str,
        requirements: &[&'static str],
        message: impl Into<String>,
    ) -> Self {
        Finding {
            target,
            oracle,
            message: message.into(),
            requirements: requirements.to_vec(),
            op: None,
            mutant: None,
        }
    }

    pub(crate) fn at(mut self, op: usize) -> Self {
        self.op.get_or_insert(op);
        self
    }

    pub(crate) fn on(mut self, mutant: Option<Mutant>) -> Self {
        self.mutant = mutant.map(|m| m.name());
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: [{}] {}", self.target, self.oracle, self.message)?;
        if !self.requirements.is_empty() {
            write!(f, " (requirements: {})", self.requirements.join(", "))?;
        }
        if let Some(op) = self.op {
            write!(f, " at op #{op}")?;
        }
        if let Some(m) = self.mutant {
            write!(f, " on mutant:{m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Finding {}

/// What [`MUTANT_ENV`] pins, read once per process: `None` when it is unset or empty,
/// `Some(None)` for `reference` (no mutant; `diff_mmio` then compares the reference with
/// itself), `Some(Some(m))` for a mutant name.
///
/// An unknown name is an error: the process prints it and exits with status 2 (a fuzz run
/// must never fuzz the reference while its user believes a mutant is pinned). Call
/// [`check_mutant_env`] first to handle the error yourself.
pub fn pinned() -> Option<Option<Mutant>> {
    static PINNED: OnceLock<Option<Option<Mutant>>> = OnceLock::new();
    *PINNED.get_or_init(|| match check_mutant_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    })
}

/// Reads [`MUTANT_ENV`]: `Ok(None)` unset or empty, `Ok(Some(None))` for `reference`,
/// `Ok(Some(Some(m)))` for a mutant. Errors: an unknown name, naming the variable, the value
/// and the known names.
pub fn check_mutant_env() -> Result<Option<Option<Mutant>>, String> {
    let Ok(name) = std::env::var(MUTANT_ENV) else {
        return Ok(None);
    };
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if name == "reference" {
        return Ok(Some(None));
    }
    match Mutant::from_name(name) {
        Some(m) => Ok(Some(Some(m))),
        None => {
            let known: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
            Err(format!(
                "{MUTANT_ENV}=`{name}` is not a mutant; expected `reference` or one of: {}",
                known.join(", ")
            ))
        }
    }
}

/// The mutant pinned through [`MUTANT_ENV`], if any (see [`pinned`]).
pub fn pinned_mutant() -> Option<Mutant> {
    pinned().flatten()
}

/// The result of replaying one input: the readable operation stream and what the oracles
/// said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayResult {
    /// The fuzz target.
    pub target: String,
    /// The mutant the body ran against (`None` for the reference; for `diff_mmio` the mutant
    /// compared with the reference).
    pub mutant: Option<String>,
    /// The decoded operation stream, one operation per line.
    pub ops: String,
    /// What an oracle found, if anything.
    pub finding: Option<Finding>,
}

/// Replays `data` through the fuzz target `target` exactly as the fuzz binary would: the
/// subject comes from [`MUTANT_ENV`] if set (see [`pinned`]), and for `diff_mmio` otherwise
/// from the first input byte.
///
/// Errors only for an unknown target name.
pub fn replay(target: &str, data: &[u8]) -> Result<ReplayResult, String> {
    let mutant = match target {
        "diff_mmio" => diff_mmio::select_mutant(data),
        _ => pinned_mutant(),
    };
    replay_on(target, data, mutant)
}

/// Replays `data` through `target` against an explicit subject: `None` is the reference (for
/// `diff_mmio`: the reference compared with itself), `Some(m)` the mutant `m`.
///
/// Errors only for an unknown target name.
pub fn replay_on(
    target: &str,
    data: &[u8],
    mutant: Option<Mutant>,
) -> Result<ReplayResult, String> {
    let (ops, finding) = match target {
        "queue_chain" => (
            decode_queue_chain(data).to_string(),
            queue_chain_on(data, mutant).err(),
        ),
        "mmio_regs" => (
            decode_mmio_regs(data).to_string(),
            mmio_regs_on(data, mutant).err(),
        ),
        "diff_mmio" => (
            decode_diff_mmio(data).to_string(),
            diff_mmio_on(data, mutant).err(),
        ),
        "packed_chain" => (
            packed_chain::decode_packed_chain(data).to_string(),
            packed_chain::packed_chain_on(data, mutant).err(),
        ),
        "device_chains" => (
            device_chains::describe(data),
            device_chains::device_chains_on(data, mutant).err(),
        ),
        "vsock_packets" => (
            vsock_packets::describe(data),
            vsock_packets::vsock_packets_on(data, mutant).err(),
        ),
        other => {
            return Err(format!(
                "unknown fuzz target `{other}`: expected one of {}",
                TARGETS.join(", ")
            ))
        }
    };
    Ok(ReplayResult {
        target: target.to_string(),
        mutant: mutant.map(|m| m.name().to_string()),
        ops,
        finding,
    })
}
