//! Runs cases on a worker thread under a wall-clock budget, so no target can stop a run.
//!
//! One worker thread owns one target instance (behind [`Guarded`]) and runs the cases it is
//! sent one after another, calling [`Target::fresh`] before each; the calling thread waits
//! for each case's result with a deadline. A case that overruns its budget, or a target call
//! that does not return within its own budget, is graded `timeout` (severity high): the
//! worker and its instance are abandoned (the thread is left blocked; nothing waits for it)
//! and the next case runs on a new instance from the [`TargetFactory`]. An instance that
//! panicked is replaced the same way, after the runner graded the panic.

use crate::case::Case;
use crate::case::Order;
use crate::catalog::{Catalog, Level};
use crate::outcome::{Outcome, Severity};
use crate::runner::{run_case_as, CaseRun, Failure, LIVENESS};
use crate::target::guard::{guarded, panic_message, Guarded};
use crate::target::{Target, TargetError, TargetFactory, TargetInfo};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wall-clock limits [`run_suite`](crate::suite::run_suite) enforces whatever the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Longest a case may take, from `fresh()` to its last check. The interpreter checks it
    /// between steps and in its loops; `run_suite` abandons a case still running a little
    /// (a quarter of `call`) after it.
    pub case: Duration,
    /// Longest one call into the target (register access, memory access, notify, settle,
    /// fresh) may block. A stuck call is noticed within 1.25 times this.
    pub call: Duration,
}

impl Default for Budget {
    /// 60 s per case, 10 s per call: far above what any case needs on a working target (the
    /// slowest QEMU case takes well under a second), short enough to keep a hung run bounded.
    fn default() -> Self {
        Budget {
            case: Duration::from_secs(60),
            call: Duration::from_secs(10),
        }
    }
}

enum Done {
    /// The case ran; the instance is still usable.
    Ran(CaseRun),
    /// The case ran but the target panicked during it; the instance is gone.
    Poisoned(CaseRun),
    /// The harness itself panicked while running the case.
    HarnessPanic(String),
}

struct Worker {
    jobs: Sender<Case>,
    done: Receiver<Done>,
    beat: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

fn spawn(
    target: Box<dyn Target + Send>,
    catalog: Arc<Catalog>,
    budget: Budget,
    driver: Order,
) -> Result<Worker, TargetError> {
    let (jobs, job_rx) = mpsc::channel::<Case>();
    let (done_tx, done) = mpsc::channel();
    let guarded_target = Guarded::new(target);
    let beat = guarded_target.heartbeat();
    let thread = std::thread::Builder::new()
        .name("virtio-conform-case".into())
        .spawn(move || {
            let mut t = guarded_target;
            for case in job_rx {
                let r = catch_unwind(AssertUnwindSafe(|| match t.fresh() {
                    Ok(()) => run_case_as(&mut t, &case, &catalog, budget.case, driver),
                    Err(e) => CaseRun {
                        outcome: Outcome::Error,
                        severity: Severity::None,
                        failures: vec![],
                        reason: Some(format!("could not start a fresh target: {e}")),
                        diagnostics: t.diagnostics(),
                        duration: Duration::ZERO,
                        observations: Vec::new(),
                    },
                }));
                let msg = match r {
                    Ok(run) if t.poisoned().is_some() => Done::Poisoned(run),
                    Ok(run) => Done::Ran(run),
                    Err(p) => Done::HarnessPanic(panic_message(p.as_ref())),
                };
                let keep = matches!(msg, Done::Ran(_));
                if done_tx.send(msg).is_err() || !keep {
                    break;
                }
            }
            // Dropping a broken instance may panic again; that must not escape either.
            let _ = guarded(move || drop(t));
        })
        .map_err(|e| TargetError::Unavailable(format!("cannot start a worker thread: {e}")))?;
    Ok(Worker {
        jobs,
        done,
        beat,
        thread,
    })
}

/// Hands cases to a worker thread and enforces the [`Budget`].
pub(crate) struct CaseWorker<'f> {
    factory: &'f mut dyn TargetFactory,
    catalog: Arc<Catalog>,
    budget: Budget,
    driver: Order,
    worker: Option<Worker>,
    info: TargetInfo,
}

fn error_run(reason: String) -> CaseRun {
    CaseRun {
        outcome: Outcome::Error,
        severity: Severity::None,
        failures: vec![],
        reason: Some(reason),
        diagnostics: None,
        duration: Duration::ZERO,
        observations: Vec::new(),
    }
}

fn make(factory: &mut dyn TargetFactory) -> Result<Box<dyn Target + Send>, TargetError> {
    guarded(|| factory.make()).and_then(|r| r)
}

impl<'f> CaseWorker<'f> {
    /// Builds the first instance (its identity names the run).
    pub(crate) fn start(
        factory: &'f mut dyn TargetFactory,
        catalog: &Catalog,
        budget: Budget,
        driver: Order,
    ) -> Result<Self, TargetError> {
        let target = make(factory)?;
        let info = guarded(|| target.info())?;
        let catalog = Arc::new(catalog.clone());
        let worker = spawn(target, catalog.clone(), budget, driver)?;
        Ok(CaseWorker {
            factory,
            catalog,
            budget,
            driver,
            worker: Some(worker),
            info,
        })
    }

    /// The identity of the target, from its first instance.
    pub(crate) fn info(&self) -> &TargetInfo {
        &self.info
    }

    /// Runs one case on the current instance (a new one if the last was abandoned).
    pub(crate) fn run(&mut self, case: &Case) -> CaseRun {
        if self.worker.is_none() {
            match make(self.factory)
                .and_then(|t| spawn(t, self.catalog.clone(), self.budget, self.driver))
            {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    return error_run(format!(
                    "could not start a new target instance after the last one was abandoned: {e}"
                ))
                }
            }
        }
        let Some(w) = self.worker.as_ref() else {
            return error_run("no worker".into());
        };
        if w.jobs.send(case.clone()).is_err() {
            self.worker = None;
            return error_run("the worker thread is gone".into());
        }
        let start = Instant::now();
        let mut beat = w.beat.load(Ordering::Relaxed);
        let mut beat_at = start;
        let tick = (self.budget.call / 4).max(Duration::from_millis(1));
        loop {
            let now = Instant::now();
            let case_left = self.budget.case.saturating_sub(now - start);
            match w.done.recv_timeout(case_left.min(tick)) {
                Ok(Done::Ran(run)) => return run,
                Ok(Done::Poisoned(run)) => {
                    self.worker = None;
                    return run;
                }
                Ok(Done::HarnessPanic(msg)) => {
                    self.worker = None;
                    return error_run(format!("the harness panicked running this case: {msg}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.worker = None;
                    return error_run("the worker thread ended without a result".into());
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let b = w.beat.load(Ordering::Relaxed);
                    if b != beat {
                        beat = b;
                        beat_at = now;
                    }
                    let stuck_call = b % 2 == 1 && now - beat_at >= self.budget.call;
                    // The interpreter stops a slow case itself at the next step (naming it);
                    // this catches a case that cannot get there.
                    let over = now - start >= self.budget.case + tick;
                    if stuck_call || over {
                        let why = if stuck_call {
                            format!(
                                "a call into the target did not return within the {:?} per-call budget",
                                self.budget.call
                            )
                        } else {
                            format!(
                                "the case did not finish within the {:?} per-case budget",
                                self.budget.case
                            )
                        };
                        // Abandon the worker: its thread stays blocked, detached.
                        self.worker = None;
                        return CaseRun {
                            outcome: Outcome::Timeout,
                            severity: Severity::High,
                            failures: vec![Failure {
                                step: None,
                                line: None,
                                op: "run_suite budget".into(),
                                // A device that stops answering breaks liveness (LIVE-DEV-01,
                                // harness-derived from §2.4.1 and §2.1.2).
                                requirements: [LIVENESS]
                                    .into_iter()
                                    .filter(|id| self.catalog.requirements.contains_key(*id))
                                    .map(String::from)
                                    .collect(),
                                level: Level::Must,
                                severity: Severity::High,
                                expected: "the device keeps answering: every call returns and the case ends within its budget".into(),
                                observed: why.clone(),
                            }],
                            reason: Some(format!(
                                "{why}; the instance was abandoned and the run continues on a new one"
                            )),
                            diagnostics: None,
                            duration: now - start,
                            observations: Vec::new(),
                        };
                    }
                }
            }
        }
    }

    /// Ends the run: the current worker finishes and drops its instance.
    pub(crate) fn finish(mut self) {
        if let Some(w) = self.worker.take() {
            drop(w.jobs);
            let _ = w.thread.join();
        }
    }
}
