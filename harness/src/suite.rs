//! The library entry point: run the whole suite (or a filtered part) against one target.
//!
//! ```no_run
//! use virtio_conform::suite::{run_suite, Options, Suite};
//! use virtio_conform::target::{DeviceKind, ReferenceTarget};
//! use virtio_reference_device::TransportVersion;
//! let suite = Suite::load_default().unwrap();
//! // A factory: called once, and again whenever an instance timed out or panicked.
//! let factory = || ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None);
//! let report = run_suite(&suite, factory, &Options::default());
//! assert_eq!(report.exit_code(false), 0, "{}", suite.summary(&report));
//! ```

use crate::case::{self, Case};
use crate::catalog::Catalog;
use crate::outcome::{Outcome, Severity};
use crate::report::{self, CaseResult, ExpectationState, Expectations, Report};
use crate::target::{Target, TargetError, TargetFactory, TargetInfo};
pub use crate::worker::Budget;
use crate::worker::CaseWorker;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The catalog and the cases.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The spec catalog.
    pub catalog: Catalog,
    /// All cases, sorted by id.
    pub cases: Vec<Case>,
}

/// The specs this library was built with: `harness/specs` (a link to the repository's
/// `specs/`), copied into the library at build time.
static EMBEDDED_SPECS: include_dir::Dir<'static> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/specs");

/// The `specs/` directory of this source tree (only useful inside a checkout: installed
/// binaries and dependent crates use [`Suite::embedded`]).
pub fn default_specs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("specs")
}

impl Suite {
    /// Loads `<specs>/requirements.json` and `<specs>/sequences/*.jsonl`.
    pub fn load(specs: &Path) -> anyhow::Result<Suite> {
        let catalog = Catalog::load(&specs.join("requirements.json"))?;
        let cases = case::load_dir(&specs.join("sequences"), &catalog)?;
        Ok(Suite { catalog, cases })
    }

    /// The suite embedded in the library at build time (`specs/`: the catalog and every
    /// case), so an installed binary or a crate depending on the library needs no source
    /// tree. [`Suite::load`] reads another copy from disk instead.
    pub fn embedded() -> anyhow::Result<Suite> {
        let catalog_text = EMBEDDED_SPECS
            .get_file("requirements.json")
            .and_then(|f| f.contents_utf8())
            .ok_or_else(|| anyhow::anyhow!("the embedded specs lack requirements.json"))?;
        let catalog = Catalog::parse(catalog_text, "(embedded) specs/requirements.json")?;
        let mut files: Vec<(PathBuf, &str)> = EMBEDDED_SPECS
            .get_dir("sequences")
            .map(|d| d.files())
            .into_iter()
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|x| x == "jsonl"))
            .filter_map(|f| {
                Some((
                    Path::new("(embedded) specs").join(f.path()),
                    f.contents_utf8()?,
                ))
            })
            .collect();
        files.sort();
        let cases = case::load_files(files.iter().map(|(p, t)| (p.as_path(), *t)), &catalog)?;
        Ok(Suite { catalog, cases })
    }

    /// The suite embedded in the library (see [`Suite::embedded`]).
    pub fn load_default() -> anyhow::Result<Suite> {
        Self::embedded()
    }

    /// The terminal summary of a report.
    pub fn summary(&self, report: &Report) -> String {
        report::text_summary(report, &self.catalog, false)
    }
}

/// A callback handed each case's result as soon as the case ends ([`Options::on_result`]).
pub type ResultCallback = Box<dyn Fn(&CaseResult) + Send + Sync>;

/// What to run and how to grade it.
pub struct Options {
    /// Only cases whose id matches one of these globs (empty = all).
    pub only: Vec<String>,
    /// Skip cases whose id matches one of these globs.
    pub skip: Vec<String>,
    /// Expectations (known divergences) for the target.
    pub expectations: Option<(Expectations, Vec<globset::GlobMatcher>)>,
    /// The command that replays one case, printed with every result: `{case}`, `{target}`,
    /// `{device}` and `{version}` are replaced by the case id and the target's identity. A
    /// library user sets their own test command here, for example
    /// `VIRTIO_CONFORM_ONLY='{case}' cargo test --test gate`. A template without `{case}` gets
    /// ` --only '<case id>'` appended (the CLI's form). Default: [`CLI_REPLAY`].
    pub replay: Option<String>,
    /// Called after each case with (done, total), from the worker that ran it.
    pub progress: Option<Box<dyn Fn(usize, usize) + Send + Sync>>,
    /// Called with each result as soon as its case ends (to stream results to a file, so an
    /// interrupted run loses none), from the worker that ran it.
    pub on_result: Option<ResultCallback>,
    /// Wall-clock limits per case and per target call, enforced whatever the target.
    pub budget: Budget,
    /// Number of workers, each with its own target instance from the factory (`0` and `1`
    /// both mean one). Results are reported in suite order whatever order they end in.
    pub jobs: usize,
    /// The driver personality of every `init` step that pins no order (`--driver`).
    pub driver: crate::case::Order,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            only: Vec::new(),
            skip: Vec::new(),
            expectations: None,
            replay: None,
            progress: None,
            on_result: None,
            budget: Budget::default(),
            jobs: 1,
            driver: crate::case::Order::Spec,
        }
    }
}

/// The number of workers the CLI uses by default: the machine's available parallelism.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CLI's replay command, the default template of [`Options::replay`].
pub const CLI_REPLAY: &str =
    "virtio-conform run --target {target} --device {device} --version {version} --only '{case}'";

/// Fills a replay template (see [`Options::replay`]) for one case.
pub fn replay_command(template: &str, info: &TargetInfo, case: &str) -> String {
    let filled = template
        .replace("{target}", &info.name)
        .replace("{device}", &info.device)
        .replace("{version}", &info.version.to_string());
    if filled.contains("{case}") {
        filled.replace("{case}", case)
    } else {
        format!("{filled} --only '{case}'")
    }
}

/// Compiles the globs of command-line flag `flag` (`--only`, `--skip`); an invalid glob is
/// an error naming the flag and the pattern.
pub fn compile_globs(flag: &str, pats: &[String]) -> Result<Vec<globset::GlobMatcher>, String> {
    pats.iter()
        .map(|p| {
            globset::Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("{flag} `{p}`: invalid glob: {e}"))
        })
        .collect()
}

/// The cases of `suite` that apply to `device` over transport `version` and that `opts`
/// selects (`only`, `skip`), in suite order.
///
/// Errors: an invalid glob (naming the flag), or a selection that matches no case.
pub fn select<'a>(
    suite: &'a Suite,
    device: &str,
    version: u32,
    opts: &Options,
) -> Result<Vec<&'a Case>, String> {
    let only = compile_globs("--only", &opts.only)?;
    let skip = compile_globs("--skip", &opts.skip)?;
    let selected: Vec<&Case> = suite
        .cases
        .iter()
        .filter(|c| c.applies_to(device, version))
        .filter(|c| only.is_empty() || only.iter().any(|g| g.is_match(&c.id)))
        .filter(|c| !skip.iter().any(|g| g.is_match(&c.id)))
        .collect();
    if selected.is_empty() {
        let mut what = format!("device {device}, version {version}");
        for (flag, pats) in [("--only", &opts.only), ("--skip", &opts.skip)] {
            for p in pats {
                what.push_str(&format!(", {flag} '{p}'"));
            }
        }
        return Err(format!("no case matches the selection ({what})"));
    }
    Ok(selected)
}

impl Report {
    /// 0 nothing unexpected, 1 unexpected results (fail, timeout, xpass; `strict` adds
    /// non_strict and stale expectations entries), 2 a harness or target error, or a run in
    /// which no case ran.
    pub fn exit_code(&self, strict: bool) -> i32 {
        if self.results.is_empty() || self.results.iter().any(|r| r.outcome == Outcome::Error) {
            2
        } else if self.results.iter().any(|r| r.outcome.is_unexpected(strict))
            || (strict && !self.stale_expectations.is_empty())
        {
            1
        } else {
            0
        }
    }
}

/// Runs every applicable case on a target from `factory`, each after [`Target::fresh`].
///
/// Cases run on a worker thread under [`Options::budget`]: a case that overruns, or a target
/// call that blocks, is graded `timeout` (severity high) and the run goes on with a new
/// instance from `factory`; a panic in the target is graded `fail` (severity high) with its
/// message, and the instance is replaced the same way. When `factory` cannot build the first
/// instance, the report holds one `error` result (exit code 2) saying why.
///
/// [`Target::fresh`]: crate::target::Target::fresh
pub fn run_suite(suite: &Suite, factory: impl TargetFactory + Send, opts: &Options) -> Report {
    let start = Instant::now();
    let started = report::now_rfc3339();
    let factory = Mutex::new(factory);
    let mut first_factory = SharedFactory(&factory);
    let first =
        match CaseWorker::start(&mut first_factory, &suite.catalog, opts.budget, opts.driver) {
            Ok(w) => w,
            Err(e) => return unavailable_report(suite, e.to_string(), start),
        };
    let info = first.info().clone();
    // An invalid glob or an empty selection runs nothing, and a report without results
    // exits 2; the CLI checks `select` first to name the reason.
    let selected = select(suite, &info.device, info.version, opts).unwrap_or_default();
    let template = opts.replay.as_deref().unwrap_or(CLI_REPLAY);
    let state = Mutex::new(opts.expectations.as_ref().map(ExpectationState::new));
    let total = selected.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, CaseResult)>> = Mutex::new(Vec::with_capacity(total));
    let work = |w: &mut CaseWorker<'_>| loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(case) = selected.get(i) else { break };
        let r = run_one(suite, case, &info, template, w, &state);
        if let Some(f) = &opts.on_result {
            f(&r);
        }
        locked(&results).push((i, r));
        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(p) = &opts.progress {
            p(n, total);
        }
    };
    let jobs = opts.jobs.clamp(1, total.max(1));
    std::thread::scope(|s| {
        for _ in 1..jobs {
            s.spawn(|| {
                let mut f = SharedFactory(&factory);
                match CaseWorker::start(&mut f, &suite.catalog, opts.budget, opts.driver) {
                    Ok(mut w) => {
                        work(&mut w);
                        w.finish();
                    }
                    // The other workers do its share.
                    Err(e) => eprintln!("virtio-conform: a worker could not start its target: {e}"),
                }
            });
        }
        let mut first = first;
        work(&mut first);
        first.finish();
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<CaseResult> = results.into_iter().map(|(_, r)| r).collect();
    let state = state.into_inner().unwrap_or_else(|p| p.into_inner());
    Report {
        schema: report::REPORT_SCHEMA.into(),
        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        spec: suite.catalog.spec.clone(),
        target: report::TargetInfoOut {
            driver: Some(opts.driver.name().into()),
            ..info.into()
        },
        summary: report::summarize(&results),
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        results,
        coverage: report::coverage(&suite.catalog, &suite.cases),
        stale_expectations: state.map(|s| s.stale(&suite.cases)).unwrap_or_default(),
        interrupted: None,
        started: Some(started),
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One factory shared by every worker of a run: instances are made one at a time.
struct SharedFactory<'a, F>(&'a Mutex<F>);

impl<F: TargetFactory> TargetFactory for SharedFactory<'_, F> {
    fn make(&mut self) -> Result<Box<dyn Target + Send>, TargetError> {
        locked(self.0).make()
    }
}

/// Runs one case on `w` and grades it with the run's expectations.
fn run_one(
    suite: &Suite,
    case: &Case,
    info: &TargetInfo,
    template: &str,
    w: &mut CaseWorker<'_>,
    state: &Mutex<Option<ExpectationState<'_>>>,
) -> CaseResult {
    let cited = report::cite(&suite.catalog, &case.requirements);
    let replay = replay_command(template, info, &case.id);
    let skip = locked(state)
        .as_mut()
        .and_then(|st| st.skip(&case.id, &info.device, info.version))
        .map(|e| e.reason.clone());
    if let Some(reason) = skip {
        return CaseResult {
            case: case.id.clone(),
            title: case.title.clone(),
            outcome: Outcome::Skipped,
            severity: Severity::None,
            requirements: cited,
            failures: vec![],
            reason: Some(reason),
            diagnostics: None,
            replay,
            duration_ms: 0.0,
        };
    }
    let run = w.run(case);
    let mut failures = report::failures_out(&suite.catalog, &run.failures);
    let (outcome, reason) = match locked(state).as_mut() {
        Some(st) => {
            let applied = st.apply(&case.id, &info.device, info.version, &run);
            for (f, why) in failures.iter_mut().zip(applied.excused) {
                f.xfail = why;
            }
            (applied.outcome, applied.reason)
        }
        None => (run.outcome, run.reason.clone()),
    };
    CaseResult {
        case: case.id.clone(),
        title: case.title.clone(),
        outcome,
        severity: run.severity,
        requirements: cited,
        failures,
        reason,
        diagnostics: run.diagnostics,
        replay,
        duration_ms: run.duration.as_secs_f64() * 1000.0,
    }
}

/// The report of a run whose target could not be started: one `error` result.
fn unavailable_report(suite: &Suite, why: String, start: Instant) -> Report {
    let results = vec![CaseResult {
        case: "target".into(),
        title: "start the target".into(),
        outcome: Outcome::Error,
        severity: Severity::None,
        requirements: vec![],
        failures: vec![],
        reason: Some(format!("could not start the target: {why}")),
        diagnostics: None,
        replay: String::new(),
        duration_ms: 0.0,
    }];
    Report {
        schema: report::REPORT_SCHEMA.into(),
        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        spec: suite.catalog.spec.clone(),
        target: TargetInfo {
            name: "unavailable".into(),
            device: String::new(),
            version: 0,
            implementation: why,
        }
        .into(),
        summary: report::summarize(&results),
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        results,
        coverage: report::coverage(&suite.catalog, &suite.cases),
        stale_expectations: Vec::new(),
        interrupted: None,
        started: Some(report::now_rfc3339()),
    }
}
