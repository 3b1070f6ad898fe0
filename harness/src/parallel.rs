//! Cases on parallel workers: each worker owns one target instance (for QEMU, one QEMU
//! process at a time) and takes the next case from a shared list until none is left. The
//! report lists the results in suite order whatever order they finished in.

use crate::case::Case;
use crate::report::{self, CaseResult, Expectations, Report};
use crate::suite::{run_suite, select, Options, Suite};
use crate::target::{Target, TargetError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Makes one more target instance for a worker (called on the worker's own thread).
pub type TargetFactory<'a> = dyn Fn() -> Result<Box<dyn Target + Send>, String> + Sync + 'a;

/// What [`run_parallel`] runs and how.
#[derive(Default)]
pub struct ParallelOptions<'a> {
    /// Number of workers (at least 1; `0` counts as 1).
    pub jobs: usize,
    /// Only cases whose id matches one of these globs (empty = all).
    pub only: Vec<String>,
    /// Skip cases whose id matches one of these globs.
    pub skip: Vec<String>,
    /// Expectations (known divergences) for the target.
    pub expectations: Option<(Expectations, Vec<globset::GlobMatcher>)>,
    /// The `--target` string and flags to print in replay commands.
    pub replay_prefix: Option<String>,
    /// Called with each result as soon as its case ends, from the worker that ran it.
    pub on_result: Option<&'a (dyn Fn(&CaseResult) + Sync)>,
    /// Called after each case with (done, total).
    pub progress: Option<&'a (dyn Fn(usize, usize) + Sync)>,
}

/// The number of workers to use by default: the machine's available parallelism.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the selected cases of `suite` on `opts.jobs` workers. `first` is the calling
/// thread's target (it also names the target in the report); `make` builds the other
/// workers' targets on their own threads. A worker whose target cannot be made takes no
/// case (the others do its share); the message is printed on stderr.
///
/// Errors: an invalid glob or an empty selection (nothing has run).
pub fn run_parallel(
    suite: &Suite,
    first: Box<dyn Target + Send>,
    make: &TargetFactory<'_>,
    opts: &ParallelOptions<'_>,
) -> Result<Report, String> {
    let start = Instant::now();
    let info = first.info();
    let first = Mutex::new(Some(first));
    let sel = Options {
        only: opts.only.clone(),
        skip: opts.skip.clone(),
        ..Options::default()
    };
    let selected: Vec<&Case> = select(suite, &info.device, info.version, &sel)?;
    let total = selected.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, CaseResult)>> = Mutex::new(Vec::with_capacity(total));
    // Each case runs through `run_suite` (its worker thread and budget); the worker's first
    // case uses the instance it was given, later cases a new one from `make`.
    let work = |t: Box<dyn Target + Send>| {
        let mut slot = Some(t);
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(case) = selected.get(i) else { break };
            let case_opts = Options {
                // Case ids are plain (lowercase letters, digits, `.`, `-`, `_`): a glob of one
                // id matches that case only.
                only: vec![case.id.clone()],
                expectations: opts.expectations.clone(),
                replay: opts
                    .replay_prefix
                    .as_ref()
                    .map(|p| format!("{p} --only '{{case}}'")),
                ..Options::default()
            };
            let factory = || match slot.take() {
                Some(t) => Ok(t),
                None => make().map_err(TargetError::Unavailable),
            };
            let r = run_suite(suite, factory, &case_opts);
            for res in r.results {
                if let Some(f) = opts.on_result {
                    f(&res);
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, res));
            }
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(p) = opts.progress {
                p(n, total);
            }
        }
    };
    let jobs = opts.jobs.clamp(1, total.max(1));
    std::thread::scope(|s| {
        for _ in 1..jobs {
            s.spawn(|| match make() {
                Ok(t) => work(t),
                Err(e) => eprintln!("virtio-conform: a worker could not start its target: {e}"),
            });
        }
        if let Some(t) = first.lock().unwrap_or_else(|p| p.into_inner()).take() {
            work(t);
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<CaseResult> = results.into_iter().map(|(_, r)| r).collect();
    Ok(Report {
        schema: report::REPORT_SCHEMA.into(),
        tool: format!("virtio-conform {}", env!("CARGO_PKG_VERSION")),
        spec: suite.catalog.spec.clone(),
        target: info.into(),
        summary: report::summarize(&results),
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        results,
        coverage: report::coverage(&suite.catalog, &suite.cases),
        interrupted: None,
        stale_expectations: Vec::new(),
    })
}
