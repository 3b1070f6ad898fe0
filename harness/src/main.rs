//! The `virtio-conform` command line.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use virtio_conform::records::{RecordSink, RecordsHeader};
use virtio_conform::report::{self, Expectations, Report};
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::{
    parse_version, DeviceKind, ReferenceTarget, Target, TargetError, TargetKind,
};
use virtio_reference_device::Mutant;

/// What a `run` has produced so far, shared with the signal handler.
struct RunState {
    /// Results of the cases that finished, in the order they finished.
    results: Vec<report::CaseResult>,
    /// The records file and the report path (`-o`).
    sink: Option<RecordSink>,
    /// The report is written (or being written): later results and signals change nothing.
    finished: bool,
}

type SignalHook = Box<dyn FnOnce(&str) + Send>;

fn signal_hook() -> std::sync::MutexGuard<'static, Option<SignalHook>> {
    static HOOK: Mutex<Option<SignalHook>> = Mutex::new(None);
    HOOK.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to do on SIGINT/SIGTERM before QEMU children are killed and the process exits with
/// 128 + the signal number (130, 143).
fn on_signal(f: SignalHook) {
    *signal_hook() = Some(f);
}

/// Blocks SIGINT and SIGTERM in every thread and waits for them on one thread of its own, so
/// the handler can take locks and write files (nothing runs in signal context).
fn handle_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    virtio_conform::target::qemu::application_handles_signals();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                let hook = signal_hook().take();
                if let Some(h) = hook {
                    h(sig.as_str());
                }
                virtio_conform::target::qemu::kill_all_qemu();
                std::process::exit(128 + sig as i32);
            }
        });
    if spawned.is_err() {
        let _ = set.thread_unblock();
    }
}

/// Writes to standard output; a closed pipe (`virtio-conform list | head`) ends the output
/// quietly instead of panicking, and the command keeps its exit code.
fn write_stdout(text: &str) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static CLOSED: AtomicBool = AtomicBool::new(false);
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if o.write_all(text.as_bytes())
        .and_then(|_| o.flush())
        .is_err()
    {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

macro_rules! out {
    ($($a:tt)*) => { write_stdout(&format!($($a)*)) };
}
macro_rules! outln {
    () => { write_stdout("\n") };
    ($($a:tt)*) => { write_stdout(&format!("{}\n", format!($($a)*))) };
}

#[derive(Parser)]
#[command(
    name = "virtio-conform",
    version,
    about = "Conformance harness and fuzzer for virtio-mmio devices"
)]
struct Cli {
    /// Directory holding requirements.json and sequences/ (default: the specs embedded in
    /// this binary when it was built).
    #[arg(long, global = true)]
    specs: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Virtqueue layout `run` drives (`--ring`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ring {
    /// The cases as written (split ring unless a case negotiates RING_PACKED).
    Split,
    /// Every case that is not layout-specific also negotiates VIRTIO_F_RING_PACKED (§2.8) and
    /// runs as `<id>@packed`; split-only cases are left out, `packed.*` cases run as written.
    Packed,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Junit,
}

#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// `reference`, `mutant:<name>` or `qemu`.
    #[arg(long, default_value = "reference")]
    target: String,
    /// Device type: entropy, block, net, console, balloon or vsock.
    #[arg(long, default_value = "entropy")]
    device: String,
    /// Transport version: 1 (legacy) or 2.
    #[arg(long, default_value_t = 2)]
    version: u32,
    /// QEMU binary for `--target qemu`.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Keep one QEMU per worker across cases, reset between cases (device reset read back,
    /// guest RAM and disk zeroed, a QEMU whose RAM changes after the reset replaced). The
    /// default; `harness/tests/qemu_reuse.rs` shows cases stay independent.
    #[arg(long, conflicts_with = "fresh_qemu")]
    reuse_qemu: bool,
    /// Start a fresh QEMU for every case instead of reusing one per worker (slower: a QEMU
    /// start costs about 50 ms of CPU time).
    #[arg(long)]
    fresh_qemu: bool,
    /// For `--target qemu`: this `-device` argument instead of the one `--device` implies
    /// (the run still expects `--device`; a different DeviceID fails the identity cases).
    #[arg(long)]
    qemu_device: Option<String>,
    /// For `--target qemu`: add `packed=on` to the device, so QEMU offers
    /// VIRTIO_F_RING_PACKED (implied by `run --ring packed`).
    #[arg(long)]
    qemu_packed: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite against a target.
    Run {
        #[command(flatten)]
        t: TargetArgs,
        /// Only cases whose id matches this glob (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Skip cases whose id matches this glob (repeatable).
        #[arg(long)]
        skip: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Write the report to FILE instead of standard output (the text summary still prints).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Expectations file (known divergences → xfail / skipped).
        #[arg(long)]
        expectations: Option<PathBuf>,
        /// Count non_strict (SHOULD) results as unexpected.
        #[arg(long)]
        strict: bool,
        /// Also list passing cases in the text summary.
        #[arg(short, long)]
        verbose: bool,
        /// Run cases on N parallel workers, each with its own target instance (default: the
        /// number of cores; twice that for `--target qemu`).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Driver personality of every `init` step that pins no order: spec, linux, netbsd,
        /// freebsd, rcore or legacy (what each does: harness/src/runner/personality.rs).
        #[arg(long, default_value = "spec")]
        driver: virtio_conform::case::Order,
        /// Virtqueue layout: `packed` runs every layout-neutral case on a packed ring.
        #[arg(long, value_enum, default_value = "split")]
        ring: Ring,
    },
    /// List cases, requirements or mutants.
    List {
        /// List requirements instead of cases.
        #[arg(long)]
        requirements: bool,
        /// List mutant target names.
        #[arg(long)]
        mutants: bool,
    },
    /// Print which spec statements have at least one case.
    Coverage {
        /// Print the uncovered ids too.
        #[arg(long)]
        uncovered: bool,
    },
    /// Differential comparison: the reference, configured like the target, and the target
    /// run the same step streams; every observation is compared.
    Diff {
        #[command(flatten)]
        t: TargetArgs,
        /// Only cases whose id matches this glob (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Also compare this many random step streams.
        #[arg(long, default_value_t = 0)]
        random: usize,
        /// Seed of the random streams.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Do not shrink divergences to minimal streams.
        #[arg(long)]
        no_shrink: bool,
        /// Write the JSON diff report to FILE.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Run every case on several targets and write a case × target grid (JSON and HTML).
    Matrix {
        /// Targets (repeatable): reference, qemu, mutant:<name>.
        #[arg(long = "target", default_value = "reference")]
        targets: Vec<String>,
        /// Devices (repeatable).
        #[arg(long = "device", default_value = "entropy")]
        devices: Vec<String>,
        /// Transport versions (repeatable).
        #[arg(long = "version", default_value = "2")]
        versions: Vec<u32>,
        /// QEMU binary for the qemu target.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// Expectations file per target, as TARGET=FILE (repeatable).
        #[arg(long)]
        expectations: Vec<String>,
        /// Output directory for matrix.json and matrix.html.
        #[arg(short = 'o', long, default_value = "matrix")]
        output: PathBuf,
        /// Driver personalities (repeatable; `all` = every one): one column per target,
        /// device, version and personality.
        #[arg(long = "driver", default_value = "spec")]
        drivers: Vec<String>,
    },
    /// Replay one fuzz input: print the decoded operation stream and report what the
    /// target's oracles find (the same JSON report as `run`).
    ///
    /// `replay <input>` takes the fuzz target and the mutant from the crash record the fuzz
    /// binary wrote beside the artifact (`<input>.json` or `finding-<key>.json`);
    /// `replay <fuzz_target> <input>` names the target (a record still supplies the mutant).
    Replay {
        /// `[FUZZ_TARGET] INPUT`: the fuzz target (queue_chain, mmio_regs or diff_mmio;
        /// optional when a crash record names it) and the input file (a corpus entry or a
        /// crash artifact).
        #[arg(num_args = 1..=2, required = true, value_names = ["FUZZ_TARGET", "INPUT"])]
        args: Vec<String>,
        /// Run against this mutant (`reference` or a mutant name); default: the crash
        /// record's, else as the fuzz binary would (VIRTIO_CONFORM_MUTANT, or diff_mmio's
        /// first input byte).
        #[arg(long)]
        mutant: Option<String>,
        /// Output format of the report.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Write the report to FILE.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Traces of real drivers (`traces/*.jsonl`).
    Trace {
        #[command(subcommand)]
        cmd: TraceCmd,
    },
    /// Compare two JSON reports: fixed, broken and new errors.
    Compare {
        /// Older report.
        old: PathBuf,
        /// Newer report.
        new: PathBuf,
    },
}

#[derive(Subcommand)]
enum TraceCmd {
    /// Replay a trace's register accesses, interrupts and requests against a target, graded
    /// like a run (one result per phase; the same report shapes and exit codes as `run`).
    /// The device type and transport version are the trace's; `reference` and
    /// `mutant:<name>` are configured like the traced device (features, queue sizes,
    /// configuration space).
    Replay {
        /// The trace file (JSON Lines, see traces/README.md).
        file: PathBuf,
        /// `reference`, `mutant:<name>`, `qemu` or `virtio-queue`.
        #[arg(long, default_value = "reference")]
        target: String,
        /// QEMU binary for `--target qemu`.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Write the report to FILE (the text summary still prints).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Count non_strict (SHOULD) results as unexpected.
        #[arg(long)]
        strict: bool,
        /// Also list passing phases in the text summary.
        #[arg(short, long)]
        verbose: bool,
    },
}

/// `trace replay`: the report of replaying `file` against `target`.
fn trace_replay(
    catalog: &virtio_conform::catalog::Catalog,
    file: &Path,
    target: &str,
    qemu: &Path,
    specs: Option<&Path>,
) -> Result<Report, String> {
    use virtio_conform::trace;
    let tr = trace::Trace::load(file).map_err(|e| e.to_string())?;
    let kind: TargetKind = target.parse()?;
    let device: DeviceKind = tr.header.device.parse()?;
    let args = TargetArgs {
        target: target.to_string(),
        device: tr.header.device.clone(),
        version: tr.header.transport_version,
        qemu: qemu.to_path_buf(),
        reuse_qemu: false,
        fresh_qemu: true,
        qemu_device: None,
        qemu_packed: false,
    };
    check_target_args(&args)?;
    let profile = trace::traced_profile(&tr);
    let mut t: Box<dyn Target + Send> = match kind {
        TargetKind::Reference => Box::new(
            virtio_conform::diff::mirror_with(&profile, device, None).map_err(|e| e.to_string())?,
        ),
        TargetKind::Mutant(m) => Box::new(
            virtio_conform::diff::mirror_with(&profile, device, Some(m))
                .map_err(|e| e.to_string())?,
        ),
        _ => make_target(&args)?,
    };
    let mut cmd = format!(
        "virtio-conform trace replay {} --target {target}",
        file.display()
    );
    if let Some(p) = specs {
        cmd = format!("{cmd} --specs {}", p.display());
    }
    let started = report::now_rfc3339();
    let t0 = std::time::Instant::now();
    let results = trace::replay(&tr, t.as_mut(), catalog, &cmd)?;
    let mut info: report::TargetInfoOut = t.info().into();
    // The personality the traced driver matches (traces/README.md).
    info.driver = Some(
        if tr.header.transport_version == 1 {
            "legacy"
        } else {
            "linux"
        }
        .into(),
    );
    Ok(Report {
        schema: report::REPORT_SCHEMA.into(),
        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        spec: catalog.spec.clone(),
        target: info,
        summary: report::summarize(&results),
        duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
        results,
        coverage: Default::default(),
        interrupted: None,
        started: Some(started),
        stale_expectations: Vec::new(),
    })
}

/// Checks a target selection without starting anything: the names parse and the target
/// supports the device and version.
fn check_target_args(t: &TargetArgs) -> Result<(), String> {
    let kind: TargetKind = t.target.parse()?;
    let device: DeviceKind = t.device.parse()?;
    let version = parse_version(t.version)?;
    if kind == TargetKind::VirtioQueue
        && (device != DeviceKind::Entropy
            || version != virtio_reference_device::TransportVersion::Modern)
    {
        return Err("the virtio-queue target is an entropy device over transport version 2".into());
    }
    if device == DeviceKind::Vsock && version == virtio_reference_device::TransportVersion::Legacy {
        return Err(
            "the socket device (vsock) is unsupported over transport version 1: §5.10 defines no legacy interface; use --version 2"
                .into(),
        );
    }
    Ok(())
}

/// A report whose every applicable case is an `error` because the target could not start.
fn error_report(suite: &Suite, t: &TargetArgs, why: &str) -> Report {
    use virtio_conform::outcome::{Outcome, Severity};
    let results: Vec<report::CaseResult> = suite
        .cases
        .iter()
        .filter(|c| c.applies_to(&t.device, t.version))
        .map(|c| report::CaseResult {
            case: c.id.clone(),
            title: c.title.clone(),
            outcome: Outcome::Error,
            severity: Severity::None,
            requirements: report::cite(&suite.catalog, &c.requirements),
            failures: vec![],
            reason: Some(format!("the target could not start: {why}")),
            diagnostics: None,
            replay: format!(
                "virtio-conform run --target {} --device {} --version {} --only '{}'",
                t.target, t.device, t.version, c.id
            ),
            duration_ms: 0.0,
        })
        .collect();
    Report {
        schema: report::REPORT_SCHEMA.into(),
        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        spec: suite.catalog.spec.clone(),
        target: report::TargetInfoOut {
            name: t.target.clone(),
            device: t.device.clone(),
            version: t.version,
            implementation: "unavailable".into(),
            driver: None,
        },
        summary: report::summarize(&results),
        duration_ms: 0.0,
        results,
        coverage: report::coverage(&suite.catalog, &suite.cases),
        interrupted: None,
        started: Some(report::now_rfc3339()),
        stale_expectations: Vec::new(),
    }
}

fn make_target(t: &TargetArgs) -> Result<Box<dyn Target + Send>, String> {
    let kind: TargetKind = t.target.parse()?;
    let device: DeviceKind = t.device.parse()?;
    let version = parse_version(t.version)?;
    match kind {
        TargetKind::Reference => Ok(Box::new(
            ReferenceTarget::new(device, version, None).map_err(|e| e.to_string())?,
        )),
        TargetKind::Mutant(m) => Ok(Box::new(
            ReferenceTarget::new(device, version, Some(m)).map_err(|e| e.to_string())?,
        )),
        TargetKind::VirtioQueue => {
            if device != DeviceKind::Entropy
                || version != virtio_reference_device::TransportVersion::Modern
            {
                return Err(
                    "the virtio-queue target is an entropy device over transport version 2".into(),
                );
            }
            Ok(Box::new(
                virtio_conform::target::virtio_queue::VirtioQueueTarget::new()
                    .map_err(|e| e.to_string())?,
            ))
        }
        TargetKind::Qemu => {
            use virtio_conform::target::qemu::{QemuOptions, QemuTarget};
            let opts = QemuOptions {
                qemu: t.qemu.clone(),
                reuse: !t.fresh_qemu,
                device_override: t.qemu_device.clone(),
                packed: t.qemu_packed,
                ..QemuOptions::new(device, version)
            };
            Ok(Box::new(QemuTarget::new(opts).map_err(|e| e.to_string())?))
        }
    }
}

/// A target factory for `run_suite`: `first` (already started, so a target that cannot start
/// is reported before the run), then new instances after a timeout or panic.
fn first_then_new(
    first: Box<dyn Target + Send>,
    args: &TargetArgs,
) -> impl FnMut() -> Result<Box<dyn Target + Send>, TargetError> + '_ {
    let mut first = Some(first);
    move || match first.take() {
        Some(t) => Ok(t),
        None => make_target(args).map_err(TargetError::Unavailable),
    }
}

/// The `run` report shape for one replayed fuzz input.
fn replay_report(
    catalog: &virtio_conform::catalog::Catalog,
    target: &str,
    input: &std::path::Path,
    r: &virtio_conform::fuzz::ReplayResult,
) -> Report {
    use virtio_conform::outcome::{Outcome, Severity};
    use virtio_conform::report::{cite, CaseResult, FailureOut};
    let ids = |f: &virtio_conform::fuzz::Finding| {
        f.requirements
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let mutant = r.mutant.clone().unwrap_or_else(|| "reference".into());
    let replay = format!(
        "virtio-conform replay {target} {} --mutant {mutant}",
        input.display()
    );
    let failures: Vec<FailureOut> = r
        .finding
        .iter()
        .map(|f| FailureOut {
            step: f.op,
            line: None,
            op: f.oracle.to_string(),
            requirements: cite(catalog, &ids(f)),
            level: "MUST".into(),
            severity: if f.oracle.contains("written") || f.oracle.contains("outside") {
                Severity::Critical
            } else {
                Severity::High
            },
            expected: format!("oracle `{}` holds", f.oracle),
            observed: f.message.clone(),
            xfail: None,
        })
        .collect();
    let result = CaseResult {
        case: format!(
            "fuzz.{target}.{}",
            input
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("input")
        ),
        title: format!("{target} input replayed against {mutant}"),
        outcome: if failures.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail
        },
        severity: failures
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::None),
        requirements: r
            .finding
            .as_ref()
            .map(|f| cite(catalog, &ids(f)))
            .unwrap_or_default(),
        failures,
        reason: None,
        diagnostics: None,
        replay,
        duration_ms: 0.0,
    };
    let results = vec![result];
    Report {
        schema: report::REPORT_SCHEMA.into(),
        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        spec: catalog.spec.clone(),
        target: virtio_conform::report::TargetInfoOut {
            name: if mutant == "reference" {
                "reference".into()
            } else {
                format!("mutant:{mutant}")
            },
            // The fuzz target stands in for the device: its input picks what it drives.
            device: target.to_string(),
            version: 0,
            implementation: format!("virtio-reference-device {}", env!("CARGO_PKG_VERSION")),
            driver: None,
        },
        summary: report::summarize(&results),
        duration_ms: 0.0,
        results,
        coverage: Default::default(),
        stale_expectations: Vec::new(),
        interrupted: None,
        started: Some(report::now_rfc3339()),
    }
}

fn load_report(p: &PathBuf) -> Result<Report, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Report::parse(&text, &p.display().to_string()).map_err(|e| format!("{e:#}"))
}

fn main() -> ExitCode {
    handle_signals();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("virtio-conform: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<i32, String> {
    let load = || {
        match &cli.specs {
            Some(dir) => Suite::load(dir),
            None => Suite::embedded(),
        }
        .map_err(|e| format!("{e:#}"))
    };
    match cli.cmd {
        Cmd::Run {
            mut t,
            only,
            skip,
            format,
            output,
            expectations,
            strict,
            verbose,
            jobs,
            driver,
            ring,
        } => {
            let mut suite = load()?;
            if ring == Ring::Packed {
                t.qemu_packed = true;
                suite.cases = suite
                    .cases
                    .iter()
                    .filter_map(|c| {
                        if c.id.starts_with("packed.") {
                            Some(c.clone())
                        } else {
                            virtio_conform::runner::packed::with_packed_ring(c)
                        }
                    })
                    .collect();
            }
            let expectations = match &expectations {
                Some(p) => Some(Expectations::load(p).map_err(|e| format!("{e:#}"))?),
                None => None,
            };
            virtio_conform::suite::select(
                &suite,
                &t.device,
                t.version,
                &Options {
                    only: only.clone(),
                    skip: skip.clone(),
                    ..Options::default()
                },
            )?;
            let mut prefix = format!(
                "virtio-conform run --target {} --device {} --version {}",
                t.target, t.device, t.version
            );
            if driver != virtio_conform::case::Order::Spec {
                prefix.push_str(&format!(" --driver {}", driver.name()));
            }
            if let Some(p) = &cli.specs {
                prefix.push_str(&format!(" --specs {}", p.display()));
            }
            let target = make_target(&t)?;
            let info = report::TargetInfoOut {
                driver: Some(driver.name().into()),
                ..target.info().into()
            };
            let started_at = report::now_rfc3339();
            // The report file is checked (and its records file started) before any case runs.
            let sink = match &output {
                Some(p) => Some(RecordSink::create(
                    p,
                    &RecordsHeader {
                        schema: virtio_conform::records::RECORDS_SCHEMA.into(),
                        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
                        spec: suite.catalog.spec.clone(),
                        target: info.clone(),
                        started: Some(started_at.clone()),
                    },
                )?),
                None => None,
            };
            let state = Arc::new(Mutex::new(RunState {
                results: Vec::new(),
                sink,
                finished: false,
            }));
            let started = std::time::Instant::now();
            let emit = {
                let catalog = suite.catalog.clone();
                let coverage = report::coverage(&suite.catalog, &suite.cases);
                let info = info.clone();
                let to_file = output.is_some();
                move |results: Vec<report::CaseResult>,
                      stale_expectations: Vec<report::StaleExpectation>,
                      sink: Option<RecordSink>,
                      interrupted: Option<String>|
                      -> Result<Report, String> {
                    let report = Report {
                        schema: report::REPORT_SCHEMA.into(),
                        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
                        spec: catalog.spec.clone(),
                        target: info.clone(),
                        summary: report::summarize(&results),
                        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                        results,
                        coverage: coverage.clone(),
                        interrupted,
                        started: Some(started_at.clone()),
                        stale_expectations,
                    };
                    let body = match format {
                        Format::Text => report::text_summary(&report, &catalog, verbose),
                        Format::Json => {
                            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                        }
                        Format::Junit => report::junit_with(&report, strict),
                    };
                    match sink {
                        Some(s) => {
                            s.finish(&body)?;
                            out!("{}", report::text_summary(&report, &catalog, verbose));
                        }
                        None if to_file => {}
                        None => out!("{body}"),
                    }
                    Ok(report)
                }
            };
            let emit = Arc::new(emit);
            {
                let (state, emit) = (state.clone(), emit.clone());
                on_signal(Box::new(move |sig| {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if st.finished {
                        return;
                    }
                    st.finished = true;
                    let results = std::mem::take(&mut st.results);
                    let n = results.len();
                    let why = format!("interrupted by {sig} after {n} finished cases");
                    if let Err(e) = emit(results, Vec::new(), st.sink.take(), Some(why.clone())) {
                        eprintln!("virtio-conform: error: {e}");
                    }
                    eprintln!("virtio-conform: {why}");
                }));
            }
            let bar = indicatif::ProgressBar::new(0);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} cases {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let b2 = bar.clone();
            let progress = move |done: usize, total: usize| {
                b2.set_length(total as u64);
                b2.set_position(done as u64);
            };
            let st2 = state.clone();
            let record = move |r: &report::CaseResult| {
                let mut st = st2.lock().unwrap_or_else(|p| p.into_inner());
                if st.finished {
                    return;
                }
                if let Some(s) = st.sink.as_mut() {
                    s.record(r);
                }
                st.results.push(r.clone());
            };
            let factory = first_then_new(target, &t);
            let opts = Options {
                only,
                skip,
                expectations,
                replay: Some(format!("{prefix} --only '{{case}}'")),
                on_result: Some(Box::new(record)),
                progress: Some(Box::new(progress)),
                jobs: jobs.unwrap_or_else(|| {
                    // A QEMU case mostly waits (QEMU's start, qtest round trips, bounded
                    // waits for completions), so two workers per core overlap those waits.
                    let per_core = if t.target == "qemu" { 2 } else { 1 };
                    per_core * virtio_conform::suite::default_jobs()
                }),
                driver,
                ..Options::default()
            };
            let report = run_suite(&suite, factory, &opts);
            bar.finish_and_clear();
            let sink = {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if st.finished {
                    // A signal arrived: its handler writes the partial report and exits.
                    drop(st);
                    loop {
                        std::thread::park();
                    }
                }
                st.finished = true;
                st.sink.take()
            };
            let code = report.exit_code(strict);
            emit(report.results, report.stale_expectations, sink, None)?;
            Ok(code)
        }
        Cmd::List {
            requirements,
            mutants,
        } => {
            if mutants {
                for m in Mutant::ALL {
                    outln!("mutant:{:<34} {}", m.name(), m.catalog_id());
                }
                return Ok(0);
            }
            let suite = load()?;
            if requirements {
                for r in suite.catalog.requirements.values() {
                    outln!("{:<28} §{:<10} {:<10} {}", r.id, r.section, r.level, r.text);
                }
            } else {
                for c in &suite.cases {
                    outln!(
                        "{:<44} v{:?} {:<16} {}",
                        c.id,
                        c.versions,
                        c.devices.join(","),
                        c.title
                    );
                }
            }
            Ok(0)
        }
        Cmd::Coverage { uncovered } => {
            let suite = load()?;
            let c = report::coverage(&suite.catalog, &suite.cases);
            for (sec, (cov, total)) in &c.by_section {
                outln!("§{sec:<8} {cov:>3}/{total:<3}");
            }
            outln!(
                "{}/{} device-side statements have at least one case",
                c.covered,
                c.device_statements
            );
            outln!(
                "{}/{} ({:.1} %) of the device-side statements a driver can observe (catalog `checkable` without N) have at least one case",
                c.checkable_covered,
                c.checkable_statements,
                c.checkable_percent()
            );
            if uncovered {
                outln!("uncovered: {}", c.uncovered.join(", "));
                let blind: Vec<&str> = suite
                    .catalog
                    .device_side()
                    .filter(|r| !r.is_checkable())
                    .map(|r| r.id.as_str())
                    .collect();
                outln!("not observable by a driver: {}", blind.join(", "));
            }
            Ok(0)
        }
        Cmd::Diff {
            t,
            only,
            random,
            seed,
            no_shrink,
            output,
        } => {
            let suite = load()?;
            let device: DeviceKind = t.device.parse()?;
            virtio_conform::suite::compile_globs("--only", &only)?;
            let mut target = make_target(&t)?;
            let opts = virtio_conform::diff::DiffOptions {
                only,
                random,
                seed,
                shrink: !no_shrink,
            };
            let report = virtio_conform::diff::run_diff(
                &suite.cases,
                &suite.catalog,
                target.as_mut(),
                device,
                &opts,
            )
            .map_err(|e| e.to_string())?;
            for d in &report.divergences {
                let ids: Vec<String> = d
                    .requirements
                    .iter()
                    .map(|c| format!("{} §{}", c.id, c.section))
                    .collect();
                outln!(
                    "{:?} in {} at step {}: {}",
                    d.class,
                    d.source,
                    d.step,
                    d.what
                );
                outln!(
                    "    reference: {}\n    target:    {}",
                    d.reference,
                    d.target
                );
                if !ids.is_empty() {
                    outln!("    requirements: {}", ids.join(", "));
                }
                outln!("    why: {}", d.explanation);
                outln!("    minimal stream ({} steps):", d.minimal.len());
                for l in &d.minimal {
                    outln!("      {l}");
                }
            }
            outln!(
                "{} streams compared: {} spec violations, {} implementation-defined, {} reference bugs",
                report.streams, report.spec_violations, report.implementation_defined, report.reference_bugs
            );
            if !report.random_streams.is_empty() {
                let per: Vec<String> = report
                    .random_streams
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} ({} spec violations, {} implementation-defined, {} reference bugs)",
                            c.class,
                            c.streams,
                            c.spec_violations,
                            c.implementation_defined,
                            c.reference_bugs
                        )
                    })
                    .collect();
                outln!("random streams by class: {}", per.join("; "));
            }
            if let Some(p) = output {
                let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
                std::fs::write(&p, json).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            Ok(report.exit_code())
        }
        Cmd::Matrix {
            targets,
            devices,
            versions,
            qemu,
            expectations,
            output,
            drivers,
        } => {
            let suite = load()?;
            let mut personalities = Vec::new();
            for d in &drivers {
                if d == "all" {
                    personalities.extend(virtio_conform::case::Order::DRIVERS);
                } else {
                    personalities.push(
                        d.parse::<virtio_conform::case::Order>()
                            .map_err(|e| format!("--driver: {e}"))?,
                    );
                }
            }
            personalities.dedup();
            let mut ex_files = std::collections::HashMap::new();
            for e in &expectations {
                let (t, f) = e
                    .split_once('=')
                    .ok_or_else(|| format!("--expectations `{e}`: expected TARGET=FILE"))?;
                let known = targets
                    .iter()
                    .any(|x| x == t || versions.iter().any(|v| format!("{x}:v{v}") == t));
                if !known {
                    return Err(format!(
                        "--expectations `{e}`: `{t}` names none of the requested targets (TARGET or TARGET:vN)"
                    ));
                }
                let loaded = Expectations::load(Path::new(f)).map_err(|e| format!("{e:#}"))?;
                ex_files.insert(t.to_string(), loaded);
            }
            // Every combination is checked before any runs: names, device and version,
            // what the target supports, and that the suite has cases for it.
            let mut combos = Vec::new();
            let mut qemu_checked = false;
            for target in &targets {
                for device in &devices {
                    for &version in &versions {
                        let args = TargetArgs {
                            target: target.clone(),
                            device: device.clone(),
                            version,
                            qemu: qemu.clone(),
                            reuse_qemu: false,
                            fresh_qemu: true,
                            qemu_device: None,
                            qemu_packed: false,
                        };
                        let what =
                            format!("--target {target} --device {device} --version {version}");
                        check_target_args(&args).map_err(|e| format!("{what}: {e}"))?;
                        if target == "qemu" && !qemu_checked {
                            virtio_conform::target::qemu::qemu_version(&qemu)
                                .map_err(|e| format!("{what}: {e}"))?;
                            qemu_checked = true;
                        }
                        virtio_conform::suite::select(&suite, device, version, &Options::default())
                            .map_err(|e| format!("{what}: {e}"))?;
                        let key = format!("{target}:v{version}");
                        let ex = ex_files.get(&key).or_else(|| ex_files.get(target)).cloned();
                        combos.push((args, ex));
                    }
                }
            }
            let mut reports = Vec::new();
            let mut failed = false;
            for (args, ex) in combos {
                for &driver in &personalities {
                    eprintln!(
                        "matrix: {} {} v{} driver {}",
                        args.target,
                        args.device,
                        args.version,
                        driver.name()
                    );
                    match make_target(&args) {
                        Ok(t) => {
                            let opts = Options {
                                expectations: ex.clone(),
                                driver,
                                ..Options::default()
                            };
                            let factory = first_then_new(t, &args);
                            reports.push(run_suite(&suite, factory, &opts));
                        }
                        Err(e) => {
                            // This column becomes errors; the other columns are kept.
                            eprintln!("matrix: {} could not start: {e}", args.target);
                            failed = true;
                            reports.push(error_report(&suite, &args, &e));
                        }
                    }
                }
            }
            let m = virtio_conform::matrix::build(&reports);
            std::fs::create_dir_all(&output).map_err(|e| format!("{}: {e}", output.display()))?;
            let json = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
            std::fs::write(output.join("matrix.json"), json).map_err(|e| e.to_string())?;
            std::fs::write(output.join("matrix.html"), virtio_conform::matrix::html(&m))
                .map_err(|e| e.to_string())?;
            outln!(
                "wrote {} and {} ({} cases × {} targets)",
                output.join("matrix.json").display(),
                output.join("matrix.html").display(),
                m.rows.len(),
                m.columns.len()
            );
            Ok(
                if failed || reports.iter().any(|r| r.exit_code(false) == 2) {
                    2
                } else {
                    0
                },
            )
        }
        Cmd::Replay {
            args,
            mutant,
            format,
            output,
        } => {
            use virtio_conform::fuzz::crash;
            let (named_target, input) = match args.as_slice() {
                [input] => (None, PathBuf::from(input)),
                [t, input] => (Some(t.clone()), PathBuf::from(input)),
                _ => return Err("replay takes [FUZZ_TARGET] INPUT".into()),
            };
            let data = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let record = crash::find_record(&input, &data)?;
            let fuzz_target = match (&named_target, &record) {
                (Some(t), Some((path, rec))) if *t != rec.target => {
                    eprintln!(
                        "warning: {} records fuzz target `{}`; replaying as `{t}` as asked",
                        path.display(),
                        rec.target
                    );
                    t.clone()
                }
                (Some(t), _) => t.clone(),
                (None, Some((_, rec))) => rec.target.clone(),
                (None, None) => {
                    return Err(format!(
                        "{}: no crash record beside it ({}.json or {}); name the fuzz target: virtio-conform replay <{}> {}",
                        input.display(),
                        input.display(),
                        crash::record_path(input.parent().unwrap_or(".".as_ref()), &data).display(),
                        virtio_conform::fuzz::TARGETS.join("|"),
                        input.display()
                    ))
                }
            };
            let same_target = record.as_ref().filter(|(_, r)| r.target == fuzz_target);
            let result = match (mutant.as_deref(), same_target) {
                (Some("reference"), _) => {
                    virtio_conform::fuzz::replay_on(&fuzz_target, &data, None)?
                }
                (Some(name), _) => {
                    let m = Mutant::from_name(name)
                        .ok_or_else(|| format!("unknown mutant `{name}`"))?;
                    virtio_conform::fuzz::replay_on(&fuzz_target, &data, Some(m))?
                }
                (None, Some((path, rec))) => {
                    let m = rec
                        .subject()
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    eprintln!(
                        "replaying against {} as recorded in {}",
                        rec.mutant,
                        path.display()
                    );
                    virtio_conform::fuzz::replay_on(&fuzz_target, &data, m)?
                }
                (None, None) => {
                    virtio_conform::fuzz::check_mutant_env()?;
                    virtio_conform::fuzz::replay(&fuzz_target, &data)?
                }
            };
            let catalog = load()?.catalog;
            let report = replay_report(&catalog, &fuzz_target, &input, &result);
            let body = match format {
                Format::Text => {
                    let mut t = format!(
                        "decoded {fuzz_target} input {}:\n{}\n",
                        input.display(),
                        result.ops
                    );
                    t.push_str(&report::text_summary(&report, &catalog, true));
                    t
                }
                Format::Json => {
                    let rr = report::ReplayReport {
                        schema: report::REPLAY_SCHEMA.into(),
                        tool: report.tool.clone(),
                        spec: report.spec.clone(),
                        fuzz_target: fuzz_target.clone(),
                        input: input.display().to_string(),
                        subject: report.target.name.clone(),
                        implementation: report.target.implementation.clone(),
                        ops: result.ops.lines().map(String::from).collect(),
                        summary: report.summary.clone(),
                        results: report.results.clone(),
                        started: report.started.clone(),
                    };
                    serde_json::to_string_pretty(&rr).map_err(|e| e.to_string())?
                }
                Format::Junit => report::junit(&report),
            };
            match output {
                Some(p) => std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?,
                None => out!("{body}"),
            }
            Ok(report.exit_code(false))
        }
        Cmd::Trace {
            cmd:
                TraceCmd::Replay {
                    file,
                    target,
                    qemu,
                    format,
                    output,
                    strict,
                    verbose,
                },
        } => {
            let catalog = load()?.catalog;
            let report = trace_replay(&catalog, &file, &target, &qemu, cli.specs.as_deref())?;
            let body = match format {
                Format::Text => report::text_summary(&report, &catalog, verbose),
                Format::Json => serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
                Format::Junit => report::junit_with(&report, strict),
            };
            match output {
                Some(p) => {
                    std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?;
                    out!("{}", report::text_summary(&report, &catalog, verbose));
                }
                None => out!("{body}"),
            }
            Ok(report.exit_code(strict))
        }
        Cmd::Compare { old, new } => {
            let c = report::compare(&load_report(&old)?, &load_report(&new)?);
            for (name, list) in [
                ("fixed", &c.fixed),
                ("broken", &c.broken),
                ("new errors", &c.new_errors),
                ("worsened", &c.worsened),
                ("added", &c.added),
                ("removed", &c.removed),
            ] {
                outln!(
                    "{name}: {}",
                    if list.is_empty() {
                        "-".to_string()
                    } else {
                        list.join(", ")
                    }
                );
            }
            Ok(if c.regressed() { 1 } else { 0 })
        }
    }
}
