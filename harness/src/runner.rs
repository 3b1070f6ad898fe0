//! The sequence interpreter: runs one [`Case`] against one [`Target`] with the driver model,
//! grading every check against the spec catalog.

mod balloon;
pub mod canary;
mod console;
pub mod packed;
mod personality;
mod vsock;

use crate::case::{Buf, Case, Grade, Op, Order, QueueSpec, Reg, Upto};
use crate::catalog::{Catalog, Level};
use crate::outcome::{Outcome, Severity};
use crate::target::{Target, TargetError, SENTINEL};
use canary::{Canary, GuardedMemory};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use virtio_reference_device::regs::*;
use virtio_reference_device::{AccessKind, Descriptor, DriverPackedQueue, DriverQueue};

/// One check that did not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// 0-based step index in the case (`None` for case-level oracles).
    pub step: Option<usize>,
    /// Line in the case file.
    pub line: Option<usize>,
    /// The step's op (or the oracle's name).
    pub op: String,
    /// Requirement ids the check proves.
    pub requirements: Vec<String>,
    /// How the failure is graded.
    pub level: Level,
    /// How bad it is.
    pub severity: Severity,
    /// What the spec asks for.
    pub expected: String,
    /// What the target did.
    pub observed: String,
}

/// One value the harness observed on the target, for differential comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// 0-based step index.
    pub step: usize,
    /// What was observed (`read Status@0x70`, `used q0`, ...).
    pub what: String,
    /// The value, rendered.
    pub value: String,
}

/// Result of running one case before expectations are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseRun {
    /// The outcome.
    pub outcome: Outcome,
    /// Worst severity among the failures.
    pub severity: Severity,
    /// Every failed check.
    pub failures: Vec<Failure>,
    /// Why the case stopped early, if it did (unsupported feature, target error).
    pub reason: Option<String>,
    /// Target diagnostics attached to a crash or hang.
    pub diagnostics: Option<String>,
    /// Wall time.
    pub duration: Duration,
    /// Values observed, in order (used by `diff`).
    pub observations: Vec<Observation>,
}

enum Stop {
    Target(TargetError),
    Unsupported(String),
    /// The case itself is wrong (a mistake in the case file, not the device's fault).
    Case(String),
    Abort,
}

impl From<TargetError> for Stop {
    fn from(e: TargetError) -> Self {
        match e {
            TargetError::Unsupported(s) => Stop::Unsupported(s),
            e => Stop::Target(e),
        }
    }
}

type R<T = ()> = Result<T, Stop>;

// Where the harness puts things in guest memory, and how long it polls for completions: the
// contract documented on `Target`.
use crate::target::layout::{BUF_BASE, BUF_END, MIN_RAM_SIZE, RING_BASE, RING_STRIDE};
use crate::target::{NONE_WAIT, POLL_INTERVAL, USED_WAIT};
const PAGE: u32 = 4096;
/// Default wall-clock budget of one case. The interpreter checks it between steps and inside
/// its own loops (`cycle`, polling for used buffers); a case that exceeds it ends as
/// `timeout` (severity high). A target call that blocks is bounded by the target's own
/// per-reply timeout (out-of-process targets) or by `run_suite`'s worker.
pub const CASE_BUDGET: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
struct Posted {
    head: u16,
    writable: Vec<(u64, u32)>,
}

impl Posted {
    fn writable_total(&self) -> u64 {
        self.writable.iter().map(|w| w.1 as u64).sum()
    }

    /// Writable bytes of the chain that lie inside guest memory of `ram` bytes.
    fn writable_in_ram(&self, ram: u64) -> u64 {
        self.writable
            .iter()
            .filter(|&&(a, l)| a.checked_add(l as u64).is_some_and(|e| e <= ram))
            .map(|w| w.1 as u64)
            .sum()
    }

    /// Whether some writable buffer lies (partly) outside guest memory of `ram` bytes.
    fn writable_outside_ram(&self, ram: u64) -> bool {
        self.writable
            .iter()
            .any(|&(a, l)| a.checked_add(l as u64).is_none_or(|e| e > ram))
    }
}

/// The requirement every target is graded on whatever the driver did: it keeps answering and
/// accepts a reset (a crash, panic or hang breaks it; severity high).
pub const LIVENESS: &str = "LIVE-DEV-01";

/// Block request status values that report an error in-band (§5.2.6: IOERR, UNSUPP).
const BLK_S_IOERR: u8 = 1;
const BLK_S_UNSUPP: u8 = 2;

/// What the driver concluded from reading FEATURES_OK back.
enum FeaturesOkReadBack {
    /// Clear after the driver accepted unoffered bits: the device refused, as it must.
    Refused,
    /// Clear although every accepted bit was offered.
    Lost,
    /// Set.
    Kept,
}

struct QState {
    dq: DriverQueue,
    /// The packed ring's driver state when RING_PACKED was negotiated (then `dq` is unused).
    pq: Option<DriverPackedQueue>,
    next_desc: u16,
    outstanding: Vec<Posted>,
    last: Option<Posted>,
}

impl QState {
    /// A queue just set up: nothing posted yet.
    fn new(dq: DriverQueue, pq: Option<DriverPackedQueue>) -> Self {
        QState {
            dq,
            pq,
            next_desc: 0,
            outstanding: Vec::new(),
            last: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Area {
    Ring,
    ReadOnly,
    Writable,
    DescTable,
    AvailRing,
    /// A packed ring's Driver Event Suppression structure (read-only by the device).
    DriverEvent,
}

struct Exec<'a> {
    t: &'a mut dyn Target,
    case: &'a Case,
    catalog: &'a Catalog,
    legacy: bool,
    ram: u64,
    queues: BTreeMap<u16, QState>,
    alloc: u64,
    vars: HashMap<String, u64>,
    failures: Vec<Failure>,
    areas: Vec<(u64, u64, Area)>,
    step: Option<usize>,
    line: Option<usize>,
    op: &'static str,
    obs: Vec<Observation>,
    /// Device type, to leave nondeterministic entropy bytes out of the observations.
    deterministic_data: bool,
    /// The device type reports errors in-band (block: the status byte, §5.2.6).
    inband_status: bool,
    /// When the case's wall-clock budget runs out.
    deadline: Instant,
    /// The budget, for messages.
    budget: Duration,
    /// The canary oracle (guest RAM patterns), when the target's RAM can be filled.
    canary: Option<Canary>,
    /// Device writes the target's memory log reported (start, end), for the canary's
    /// cross-check.
    logged_writes: Vec<(u64, u64)>,
    /// Whether the target reports its memory accesses.
    memory_log: bool,
    /// The run's driver personality, used by `init` steps that pin no order.
    driver: Order,
    /// Console ports announced so far (§5.3.6.2).
    console: console::ConsoleState,
    /// What the harness remembers of the socket device's connections (§5.10.6).
    vsock: vsock::VsockState,
    /// The last `init` negotiated VIRTIO_F_RING_PACKED: queues set up after it are packed.
    packed: bool,
    /// The last `init` negotiated VIRTIO_F_IN_ORDER.
    in_order: bool,
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Read { .. } => "read",
        Op::Write { .. } => "write",
        Op::Reset { .. } => "reset",
        Op::Init { .. } => "init",
        Op::Queue { .. } => "queue",
        Op::Post { .. } => "post",
        Op::Blk { .. } => "blk",
        Op::Kick { .. } => "kick",
        Op::ExpectUsed { .. } => "expect_used",
        Op::ExpectData { .. } => "expect_data",
        Op::ExpectInterrupt { .. } => "expect_interrupt",
        Op::Ack { .. } => "ack",
        Op::ConfigChange { .. } => "config_change",
        Op::SetAvailIdx { .. } => "set_avail_idx",
        Op::SetAvailFlags { .. } => "set_avail_flags",
        Op::SetUsedEvent { .. } => "set_used_event",
        Op::Cycle { .. } => "cycle",
        Op::ExpectGraceful { .. } => "expect_graceful",
        Op::MemWrite { .. } => "mem_write",
        Op::MemExpect { .. } => "mem_expect",
        Op::Observe { .. } => "observe",
        Op::HostSend { .. } => "host_send",
        Op::ExpectHost { .. } => "expect_host",
        Op::ExpectReceived { .. } => "expect_received",
        Op::ExpectControl { .. } => "expect_control",
        Op::ReadRange { .. } => "read_range",
        Op::Require { .. } => "require",
        Op::SetDriverEvent { .. } => "set_driver_event",
        Op::QueueAt { .. } => "queue_at",
        Op::VsockRx { .. } => "vsock_rx",
        Op::VsockSend { .. } => "vsock_send",
        Op::VsockExpect { .. } => "vsock_expect",
        Op::VsockExpectData { .. } => "vsock_expect_data",
        Op::HostOp { .. } => "host_op",
        Op::ExpectHostConn { .. } => "expect_host_conn",
    }
}

/// Whether `op` checks how the device treated guest memory it must not misuse (the canary
/// oracle runs before it, so a corruption is attributed to the step that caused it; every
/// other corruption is found by the sweep at the end of the case).
fn checks(op: &Op) -> bool {
    matches!(op, Op::ExpectGraceful { .. } | Op::MemExpect { .. })
}

/// Whether `op` can let the device run (a register write, a notification).
fn lets_device_run(op: &Op) -> bool {
    !matches!(
        op,
        Op::Read { .. }
            | Op::ExpectUsed { .. }
            | Op::ExpectData { .. }
            | Op::ExpectInterrupt { .. }
            | Op::MemExpect { .. }
            | Op::ExpectGraceful { .. }
            | Op::Observe { .. }
            | Op::MemWrite { .. }
            | Op::SetAvailIdx { .. }
            | Op::SetAvailFlags { .. }
            | Op::SetUsedEvent { .. }
            | Op::SetDriverEvent { .. }
            | Op::ExpectHost { .. }
            | Op::ExpectReceived { .. }
            | Op::ExpectControl { .. }
            | Op::ReadRange { .. }
            | Op::Require { .. }
            | Op::ExpectHostConn { .. }
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `case` on `target` (which must be fresh) within [`CASE_BUDGET`]. Never panics on
/// target behaviour: every misbehaviour becomes a failure or an outcome.
pub fn run_case(target: &mut dyn Target, case: &Case, catalog: &Catalog) -> CaseRun {
    run_case_within(target, case, catalog, CASE_BUDGET)
}

/// Runs `case` on `target` (which must be fresh) with a wall-clock `budget`: past it the case
/// stops at the next step or loop iteration as `timeout` (severity high). A mistake in the
/// case itself (a step on a queue no step set up, rings beyond guest RAM) is an `error`
/// naming the file and line, never the device's `fail`.
pub fn run_case_within(
    target: &mut dyn Target,
    case: &Case,
    catalog: &Catalog,
    budget: Duration,
) -> CaseRun {
    run_case_as(target, case, catalog, budget, Order::Spec)
}

/// [`run_case_within`] with the driver personality `driver` for every `init` step that
/// names no order (`--driver`; see `runner/personality.rs`).
pub fn run_case_as(
    target: &mut dyn Target,
    case: &Case,
    catalog: &Catalog,
    budget: Duration,
    driver: Order,
) -> CaseRun {
    let start = Instant::now();
    let info = target.info();
    let caps = target.capabilities();
    let ram = target.ram_size();
    let mut ex = Exec {
        t: target,
        case,
        catalog,
        legacy: info.version == 1,
        ram,
        queues: BTreeMap::new(),
        alloc: BUF_BASE,
        vars: HashMap::new(),
        failures: Vec::new(),
        areas: Vec::new(),
        step: None,
        line: None,
        op: "setup",
        obs: Vec::new(),
        deterministic_data: info.device != "entropy",
        inband_status: info.device == "block",
        deadline: start + budget,
        budget,
        canary: None,
        logged_writes: Vec::new(),
        memory_log: caps.memory_log,
        driver,
        console: Default::default(),
        vsock: Default::default(),
        packed: false,
        in_order: false,
    };
    let mut reason = None;
    let result = (|| -> R {
        if ram < MIN_RAM_SIZE {
            return Err(Stop::Target(TargetError::Unavailable(format!(
                "guest RAM of {ram} bytes is below the {MIN_RAM_SIZE} bytes the harness needs"
            ))));
        }
        for need in &case.needs {
            let ok = match need.as_str() {
                "config_change" => caps.config_change,
                "memory_log" => caps.memory_log,
                _ => false,
            };
            if !ok {
                return Err(Stop::Unsupported(format!(
                    "target lacks capability `{need}`"
                )));
            }
        }
        if !case.features.is_empty() {
            let wanted = case.features.iter().fold(0u64, |a, &b| a | bit(b));
            ex.t.request_features(wanted)?;
            let offered = ex.offered()?;
            for &b in &case.features {
                if offered & bit(b) == 0 {
                    return Err(Stop::Unsupported(format!("feature bit {b} not offered")));
                }
            }
        }
        // Block write requests: `blk` steps of type OUT, DISCARD or WRITE_ZEROES, and raw
        // chains whose header starts with one of those types (1, 11, 13).
        let writes = case.steps.iter().any(|s| match &s.op {
            Op::Blk { kind, .. } => matches!(kind.0, 1 | 11 | 13),
            Op::Post { chain, .. } => {
                chain
                    .first()
                    .and_then(|b| b.data.as_ref())
                    .is_some_and(|d| {
                        [1u8, 11, 13]
                            .iter()
                            .any(|&t| d.0.starts_with(&[t, 0, 0, 0]))
                    })
            }
            _ => false,
        });
        if ex.inband_status && writes && !case.features.contains(&VIRTIO_BLK_F_RO) {
            // A read-only block device must fail every write (§5.2.6.2): a case that expects a
            // write to succeed does not apply to it.
            if ex.offered()? & bit(VIRTIO_BLK_F_RO) != 0 {
                return Err(Stop::Unsupported(
                    "the block device is read-only (VIRTIO_BLK_F_RO offered): writes cannot succeed"
                        .into(),
                ));
            }
        }
        let _ = ex.t.take_accesses();
        ex.start_canary(case)?;
        for (i, step) in case.steps.iter().enumerate() {
            ex.check_deadline()?;
            ex.step = Some(i);
            ex.line = Some(step.line);
            ex.op = op_name(&step.op);
            if checks(&step.op) {
                ex.canary_oracle(false)?;
            }
            ex.exec(&step.op)?;
            if lets_device_run(&step.op) {
                if let Some(c) = ex.canary.as_mut() {
                    c.mark_dirty();
                }
            }
            ex.memory_oracle();
        }
        // Pipelined operations still queued reach the target (and their failures show)
        // before the case ends.
        ex.t.flush()?;
        ex.memory_oracle();
        ex.canary_oracle(true)?;
        Ok(())
    })();
    let mut diagnostics = None;
    let (mut outcome, mut severity) = grade_failures(&ex.failures);
    match result {
        Ok(()) | Err(Stop::Abort) => {}
        Err(Stop::Unsupported(why)) => {
            if ex.failures.is_empty() {
                outcome = Outcome::Unsupported;
            }
            reason = Some(why);
        }
        Err(Stop::Case(why)) => {
            outcome = Outcome::Error;
            severity = Severity::None;
            reason = Some(format!(
                "case error at {}:{}: {why}",
                case.file,
                ex.line.map_or("-".into(), |l| l.to_string())
            ));
        }
        Err(Stop::Target(e)) => {
            diagnostics = ex.t.diagnostics();
            let (o, what) = match &e {
                TargetError::Crashed(_) => (Outcome::Fail, "the target must not crash"),
                TargetError::Hung(_) => {
                    (Outcome::Timeout, "the target must answer within its budget")
                }
                _ => (Outcome::Error, "a working target connection"),
            };
            if o != Outcome::Error {
                ex.failures.push(Failure {
                    step: ex.step,
                    line: ex.line,
                    op: ex.op.to_string(),
                    requirements: vec![LIVENESS.to_string()]
                        .into_iter()
                        .filter(|id| catalog.requirements.contains_key(id))
                        .collect(),
                    level: Level::Must,
                    severity: Severity::High,
                    expected: what.into(),
                    observed: e.to_string(),
                });
                severity = Severity::High;
            }
            outcome = o;
            reason = Some(e.to_string());
        }
    }
    CaseRun {
        outcome,
        severity,
        failures: ex.failures,
        reason,
        diagnostics,
        duration: start.elapsed(),
        observations: ex.obs,
    }
}

/// The outcome and severity of a list of failed checks: the worst level decides the outcome
/// (MUST `fail`, SHOULD `non_strict`, MAY `informational`, none `pass`); MAY-level checks
/// never raise the severity.
pub fn grade_failures(failures: &[Failure]) -> (Outcome, Severity) {
    let worst = failures.iter().map(|f| f.level).min();
    let outcome = match worst {
        None => Outcome::Pass,
        Some(Level::Must) => Outcome::Fail,
        Some(Level::Should) => Outcome::NonStrict,
        Some(Level::May) => Outcome::Informational,
    };
    let severity = failures
        .iter()
        .filter(|f| f.level != Level::May)
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::None);
    (outcome, severity)
}

impl Exec<'_> {
    /// Stops the case as a hang once its wall-clock budget is spent.
    fn check_deadline(&self) -> R {
        if Instant::now() >= self.deadline {
            return Err(Stop::Target(TargetError::Hung(format!(
                "the case did not finish within its wall-clock budget of {:.1} s",
                self.budget.as_secs_f64()
            ))));
        }
        Ok(())
    }

    fn reqs(&self, g: Option<&Grade>, default: &[&str]) -> (Vec<String>, Level) {
        let ids = match g.and_then(|g| g.req.as_ref()) {
            Some(r) => r.ids(),
            None if !default.is_empty() => default.iter().map(|s| s.to_string()).collect(),
            None => self.case.requirements.clone(),
        };
        let level = g
            .and_then(|g| g.level)
            .unwrap_or_else(|| self.catalog.level(&ids));
        (ids, level)
    }

    /// Records a check; returns whether it held.
    fn check(
        &mut self,
        g: Option<&Grade>,
        default: &[&str],
        ok: bool,
        severity: Severity,
        expected: impl FnOnce() -> String,
        observed: impl FnOnce() -> String,
    ) -> bool {
        if !ok {
            let (requirements, level) = self.reqs(g, default);
            let severity = if requirements.iter().any(|r| r == LIVENESS) {
                severity.max(Severity::High)
            } else {
                severity
            };
            self.failures.push(Failure {
                step: self.step,
                line: self.line,
                op: self.op.to_string(),
                requirements,
                level,
                severity,
                expected: expected(),
                observed: observed(),
            });
        }
        ok
    }

    /// Records a check graded at `level` whatever the catalog says (used where the spec
    /// leaves the behaviour open: MAY, informational).
    #[allow(clippy::too_many_arguments)]
    fn check_at(
        &mut self,
        level: Level,
        ids: &[&str],
        ok: bool,
        severity: Severity,
        expected: impl FnOnce() -> String,
        observed: impl FnOnce() -> String,
    ) -> bool {
        let g = Grade {
            req: Some(crate::case::Reqs::Many(
                ids.iter().map(|s| s.to_string()).collect(),
            )),
            level: Some(level),
        };
        self.check(Some(&g), &[], ok, severity, expected, observed)
    }

    /// How many bytes from the start of the chain's writable buffers (in chain order) the
    /// device has written in this case; a buffer outside guest memory ends the count.
    fn written_prefix(&self, p: &Posted) -> u64 {
        let mut total = 0;
        for &(a, l) in &p.writable {
            let end = match a.checked_add(l as u64) {
                Some(e) if e <= self.ram => e,
                _ => return total,
            };
            let mut covered = a;
            loop {
                let next = self
                    .logged_writes
                    .iter()
                    .filter(|&&(s, e)| s <= covered && e > covered)
                    .map(|&(_, e)| e)
                    .max();
                match next {
                    Some(e) if e < end => covered = e,
                    Some(_) => {
                        covered = end;
                        break;
                    }
                    None => break,
                }
            }
            total += covered - a;
            if covered < end {
                return total;
            }
        }
        total
    }

    /// VQ-DEV-15 (§2.7.8.2), for targets that report their memory accesses: the device wrote
    /// at least `len` bytes of the chain before using it.
    fn check_len_honest(&mut self, p: &Posted, len: u32) {
        if !self.memory_log {
            return;
        }
        self.memory_oracle();
        let w = self.written_prefix(p);
        self.check(
            None,
            &["VQ-DEV-15"],
            len as u64 <= w,
            Severity::Low,
            || format!("at least used len ({len}) bytes written from the first writable buffer"),
            || format!("{w} bytes written"),
        );
    }

    fn observe(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.obs.push(Observation {
            step: self.step.unwrap_or(0),
            what: what.into(),
            value: value.into(),
        });
    }

    /// One read of `at` (after selecting its queue) of its width (default 4 bytes, at most 8),
    /// recorded as an observation: (register name, value).
    fn read_field(&mut self, at: &Reg) -> R<(String, u64)> {
        if let Some(q) = at.queue {
            self.w32(QUEUE_SEL, q)?;
        }
        let off = Self::offset(at);
        let width = usize::from(at.width.unwrap_or(4)).clamp(1, 8);
        let mut buf = [SENTINEL; 8];
        self.t.read(off, &mut buf[..width])?;
        let mut full = [0u8; 8];
        full[..width].copy_from_slice(&buf[..width]);
        let raw = u64::from_le_bytes(full);
        let name = at.reg.clone().unwrap_or_else(|| format!("{off:#x}"));
        self.observe(format!("read {name}@{off:#x}/{width}"), format!("{raw:#x}"));
        Ok((name, raw))
    }

    /// A 32-bit read whose value is recorded as an observation.
    fn r32o(&mut self, off: u64) -> R<u32> {
        let v = self.r32(off)?;
        let name = register_name(off, self.legacy).unwrap_or("?");
        self.observe(format!("read {name}@{off:#x}"), format!("{v:#x}"));
        Ok(v)
    }

    fn r32(&mut self, off: u64) -> R<u32> {
        Ok(self.t.read32(off)?)
    }

    /// An available-buffer notification, routed through the target's notify hook.
    fn notify(&mut self, value: u32) -> R {
        Ok(self.t.notify(value)?)
    }

    fn w32(&mut self, off: u64, v: u32) -> R {
        Ok(self.t.write32(off, v)?)
    }

    fn offered(&mut self) -> R<u64> {
        self.w32(DEVICE_FEATURES_SEL, 0)?;
        let lo = self.r32o(DEVICE_FEATURES)? as u64;
        self.w32(DEVICE_FEATURES_SEL, 1)?;
        let hi = self.r32o(DEVICE_FEATURES)? as u64;
        Ok(lo | hi << 32)
    }

    fn offset(at: &Reg) -> u64 {
        let base = at.reg.as_deref().and_then(register_offset).unwrap_or(0);
        base + at.offset.map_or(0, |n| n.0)
    }

    fn mem(&mut self) -> GuardedMemory<'_> {
        GuardedMemory {
            t: &mut *self.t,
            canary: self.canary.as_mut(),
        }
    }

    /// A driver write to guest memory, mirrored into the canary's expected image.
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        if let Some(c) = self.canary.as_mut() {
            c.driver_wrote(&mut *self.t, gpa, data)?;
        }
        self.t.mem_write(gpa, data)
    }

    fn q(&mut self, index: u16) -> R<&mut QState> {
        if !self.queues.contains_key(&index) {
            return Err(Stop::Case(format!(
                "queue {index} is used before any earlier step sets it up"
            )));
        }
        Ok(self.queues.get_mut(&index).expect("checked above"))
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.clamp(1, 1 << 20);
        let aligned = (len + 15) & !15;
        if self.alloc + aligned > BUF_END {
            self.alloc = BUF_BASE;
        }
        let a = self.alloc;
        self.alloc += aligned;
        a
    }

    fn allow(&mut self, addr: u64, len: u64, area: Area) {
        if matches!(area, Area::Writable | Area::Ring) {
            if let Some(c) = self.canary.as_mut() {
                c.device_may_write(addr, len);
            }
        }
        if let Some(end) = addr.checked_add(len) {
            if end <= self.ram && len > 0 {
                self.areas.push((addr, end, area));
            }
        }
    }

    /// Checks the device's guest-memory accesses since the last call (targets with a log).
    fn memory_oracle(&mut self) {
        let Some(log) = self.t.take_accesses() else {
            return;
        };
        self.packed_publish_order(&log);
        let readable_id = self.readable_written_id();
        let mut seen = 0;
        for a in log {
            let end = a.gpa.saturating_add(a.len);
            if a.kind == AccessKind::Write {
                self.logged_writes.push((a.gpa, end));
            }
            let inside = |k: Area| {
                self.areas
                    .iter()
                    .any(|&(s, e, area)| area == k && a.gpa >= s && end <= e)
            };
            let problem = if end > self.ram || a.gpa.checked_add(a.len).is_none() {
                Some(("SPLIT-DEV-MALFORMED-CHAIN", "an access inside guest memory"))
            } else if a.kind == AccessKind::Write {
                if inside(Area::Writable) || inside(Area::Ring) {
                    None
                } else if inside(Area::DescTable) {
                    Some(("VQ-DEV-05", "no write to a descriptor table"))
                } else if inside(Area::AvailRing) {
                    Some(("VQ-DEV-22", "no write to the available ring"))
                } else if inside(Area::DriverEvent) {
                    Some((
                        "PACKED-DEV-04",
                        "no write to the Driver Event Suppression structure",
                    ))
                } else if inside(Area::ReadOnly) {
                    Some((readable_id, "no write to a device-readable buffer"))
                } else {
                    Some((
                        "SPLIT-DEV-MALFORMED-CHAIN",
                        "writes only into the used ring and writable buffers",
                    ))
                }
            } else if [
                Area::Writable,
                Area::Ring,
                Area::DescTable,
                Area::AvailRing,
                Area::ReadOnly,
                Area::DriverEvent,
            ]
            .iter()
            .any(|&k| inside(k))
            {
                None
            } else {
                Some((
                    "SPLIT-DEV-MALFORMED-CHAIN",
                    "reads only of rings, tables and posted buffers",
                ))
            };
            if let Some((id, what)) = problem {
                seen += 1;
                if seen > 3 {
                    continue;
                }
                let kind = if a.kind == AccessKind::Write {
                    "write"
                } else {
                    "read"
                };
                self.check(
                    None,
                    &[id],
                    false,
                    Severity::Critical,
                    || what.to_string(),
                    || format!("device {kind} of {} bytes at {:#x}", a.len, a.gpa),
                );
            }
        }
    }

    fn exec(&mut self, op: &Op) -> R {
        if matches!(op, Op::Init { .. } | Op::Reset { .. }) {
            // A device reset forgets the console ports announced (§5.3.6.2).
            self.console = Default::default();
            self.vsock = Default::default();
        }
        match op {
            Op::Read {
                at,
                expect,
                mask,
                bits_set,
                bits_clear,
                expect_ne,
                expect_in,
                save,
                expect_var,
                expect_ne_var,
                grade,
            } => {
                let (name, raw) = self.read_field(at)?;
                let v = raw & mask.map_or(u64::MAX, |m| m.0);
                let obs = || format!("{name} = {raw:#x}");
                let g = Some(grade);
                if let Some(e) = expect {
                    self.check(
                        g,
                        &[],
                        v == e.0,
                        Severity::Low,
                        || format!("{name} = {:#x}", e.0),
                        obs,
                    );
                }
                if let Some(e) = expect_ne {
                    self.check(
                        g,
                        &[],
                        v != e.0,
                        Severity::Low,
                        || format!("{name} != {:#x}", e.0),
                        obs,
                    );
                }
                if let Some(b) = bits_set {
                    self.check(
                        g,
                        &[],
                        v & b.0 == b.0,
                        Severity::Low,
                        || format!("{name} has bits {:#x} set", b.0),
                        obs,
                    );
                }
                if let Some(b) = bits_clear {
                    self.check(
                        g,
                        &[],
                        v & b.0 == 0,
                        Severity::Low,
                        || format!("{name} has bits {:#x} clear", b.0),
                        obs,
                    );
                }
                if let Some(list) = expect_in {
                    let ok = list.iter().any(|n| n.0 == v);
                    self.check(
                        g,
                        &[],
                        ok,
                        Severity::Low,
                        || {
                            format!(
                                "{name} one of {:?}",
                                list.iter().map(|n| n.0).collect::<Vec<_>>()
                            )
                        },
                        obs,
                    );
                }
                if let Some(var) = expect_var {
                    let want = self.vars.get(var).copied();
                    self.check(
                        g,
                        &[],
                        want == Some(v),
                        Severity::Low,
                        || format!("{name} = ${var} ({})", saved_text(want)),
                        obs,
                    );
                }
                if let Some(var) = expect_ne_var {
                    let want = self.vars.get(var).copied();
                    self.check(
                        g,
                        &[],
                        want != Some(v),
                        Severity::Low,
                        || format!("{name} != ${var} ({})", saved_text(want)),
                        obs,
                    );
                }
                if let Some(var) = save {
                    self.vars.insert(var.clone(), v);
                }
            }
            Op::Write { at, value } => {
                if let Some(q) = at.queue {
                    self.w32(QUEUE_SEL, q)?;
                }
                let width = at.width.unwrap_or(4) as usize;
                let bytes = value.0.to_le_bytes();
                self.t.write(Self::offset(at), &bytes[..width])?;
            }
            Op::Reset { grade } => self.reset(Some(grade))?,
            Op::Init {
                features,
                order,
                upto,
                queues,
                grade,
            } => {
                let feats = match features {
                    Some(list) => list
                        .iter()
                        .filter_map(|f| f.bit())
                        .map(bit)
                        .fold(0, |a, b| a | b),
                    None if self.legacy => 0,
                    None => bit(VIRTIO_F_VERSION_1),
                };
                let order = order.unwrap_or(self.driver);
                // A case that pins no queue gets queue 0 at the size the driver picks.
                let queues = queues.clone().unwrap_or_else(|| {
                    let device = self.t.info().device;
                    vec![QueueSpec {
                        index: 0,
                        size: personality::queue_size(order, &device),
                        align: None,
                    }]
                });
                self.init(feats, order, *upto, &queues, grade)?;
            }
            Op::Queue { index, size, align } => self.setup_queue(*index, *size, *align)?,
            Op::QueueAt { index, size, at } => self.setup_queue_at(*index, *size, *at)?,
            Op::Post {
                queue,
                chain,
                indirect,
                indirect_flags,
                indirect_len,
                kick,
                head,
            } => {
                self.post(
                    *queue,
                    chain,
                    *indirect,
                    indirect_flags.map(|n| n.0 as u16),
                    indirect_len.map(|n| n.0 as u32),
                    head.map(|n| n.0 as u16),
                )?;
                if kick.unwrap_or(true) {
                    self.notify(*queue as u32)?;
                }
            }
            Op::Blk {
                queue,
                kind,
                sector,
                data_len,
                data,
                split,
                kick,
            } => {
                let mut hdr = [0u8; 16];
                hdr[..4].copy_from_slice(&kind.0.to_le_bytes());
                hdr[8..].copy_from_slice(&sector.map_or(0, |n| n.0).to_le_bytes());
                let mut chain = Vec::new();
                let parts = split.clone().unwrap_or_else(|| vec![16]);
                let mut at = 0usize;
                for p in parts {
                    let end = (at + p as usize).min(16);
                    chain.push(Buf {
                        len: crate::case::Num((end - at) as u64),
                        data: Some(crate::case::Hex(hdr[at..end].to_vec())),
                        ..Buf::default()
                    });
                    at = end;
                }
                // OUT carries sectors, DISCARD / WRITE_ZEROES their segments: driver-readable.
                let out = matches!(kind.0, 1 | 11 | 13);
                let len = match (data, data_len) {
                    (Some(d), _) if out => d.0.len() as u64,
                    (_, Some(n)) => n.0,
                    _ => 0,
                };
                if len > 0 {
                    chain.push(Buf {
                        len: crate::case::Num(len),
                        write: !out,
                        data: data.clone().filter(|_| out),
                        ..Buf::default()
                    });
                }
                chain.push(Buf {
                    len: crate::case::Num(1),
                    write: true,
                    fill: Some(0xff),
                    ..Buf::default()
                });
                self.post(*queue, &chain, false, None, None, None)?;
                if kick.unwrap_or(true) {
                    self.notify(*queue as u32)?;
                }
            }
            Op::Kick { queue, value } => {
                self.notify(value.map_or(*queue as u32, |v| v.0 as u32))?
            }
            Op::ExpectUsed {
                queue,
                count,
                count_min,
                len,
                len_max,
                len_min,
                none,
                grade,
            } => self.expect_used(
                *queue,
                UsedCount::from_step(*count, *count_min),
                *len,
                *len_max,
                *len_min,
                *none,
                grade,
            )?,
            Op::ExpectData {
                queue,
                data,
                status,
                status_in,
                grade,
            } => {
                let last = self.q(*queue)?.last.clone();
                let Some(p) = last else {
                    self.check(
                        Some(grade),
                        &[],
                        false,
                        Severity::Low,
                        || "a completed chain".into(),
                        || "none completed".into(),
                    );
                    return Ok(());
                };
                let total = p.writable_total().min(1 << 20) as usize;
                let mut bytes = Vec::with_capacity(total);
                for &(a, l) in &p.writable {
                    let mut b = vec![0u8; l.min(1 << 20) as usize];
                    self.t.mem_read(a, &mut b)?;
                    bytes.extend_from_slice(&b);
                }
                if self.deterministic_data {
                    self.observe(format!("data q{queue}"), hex(&bytes));
                } else if let Some(&st) = bytes.last() {
                    self.observe(format!("last byte q{queue}"), st.to_string());
                }
                if let Some(d) = data {
                    let got = &bytes[..d.0.len().min(bytes.len())];
                    self.check(
                        Some(grade),
                        &[],
                        got == &d.0[..],
                        Severity::Low,
                        || hex(&d.0),
                        || hex(got),
                    );
                }
                if let Some(list) = status_in {
                    let got = bytes.last().copied();
                    self.check(
                        Some(grade),
                        &[],
                        got.is_some_and(|b| list.contains(&b)),
                        Severity::Low,
                        || format!("status byte one of {list:?}"),
                        || status_byte(got),
                    );
                }
                if let Some(s) = status {
                    let got = bytes.last().copied();
                    self.check(
                        Some(grade),
                        &[],
                        got == Some(*s),
                        Severity::Low,
                        || format!("status byte {s}"),
                        || status_byte(got),
                    );
                }
            }
            Op::ExpectInterrupt {
                used,
                config,
                grade,
            } => {
                let isr = self.r32o(INTERRUPT_STATUS)?;
                if let Some(u) = used {
                    let got = isr & INT_USED_BUFFER != 0;
                    self.check(
                        Some(grade),
                        &[],
                        got == *u,
                        Severity::Low,
                        || format!("InterruptStatus used-buffer bit {}", *u as u8),
                        || format!("InterruptStatus = {isr:#x}"),
                    );
                }
                if let Some(c) = config {
                    let got = isr & INT_CONFIG_CHANGE != 0;
                    self.check(
                        Some(grade),
                        &[],
                        got == *c,
                        Severity::Low,
                        || format!("InterruptStatus configuration-change bit {}", *c as u8),
                        || format!("InterruptStatus = {isr:#x}"),
                    );
                }
            }
            Op::Ack { value } => {
                let v = match value {
                    Some(v) => v.0 as u32,
                    None => self.r32o(INTERRUPT_STATUS)?,
                };
                // rcore's `ack_interrupt` writes nothing when InterruptStatus read 0.
                if v != 0 || value.is_some() || personality::acks_zero(self.driver) {
                    self.w32(INTERRUPT_ACK, v)?;
                }
            }
            Op::ConfigChange { offset, data } => self.t.config_change(offset.0, &data.0)?,
            Op::SetAvailIdx { queue, .. } if self.is_packed(*queue) => {
                return Err(Stop::Unsupported(format!(
                    "`{}` names a split-ring structure; queue {queue} is packed",
                    self.op
                )))
            }
            Op::SetAvailIdx { queue, value } => {
                let mut dq = self.q(*queue)?.dq.clone();
                dq.set_avail_idx(&mut self.mem(), value.0 as u16)?;
                self.q(*queue)?.dq = dq;
            }
            Op::SetAvailFlags { queue, .. } if self.is_packed(*queue) => {
                return Err(Stop::Unsupported(format!(
                    "`{}` names a split-ring structure; queue {queue} is packed",
                    self.op
                )))
            }
            Op::SetAvailFlags { queue, value } => {
                let dq = self.q(*queue)?.dq.clone();
                dq.set_avail_flags(&mut self.mem(), value.0 as u16)?;
            }
            Op::SetUsedEvent { queue, .. } if self.is_packed(*queue) => {
                return Err(Stop::Unsupported(format!(
                    "`{}` names a split-ring structure; queue {queue} is packed",
                    self.op
                )))
            }
            Op::SetUsedEvent { queue, value } => {
                let dq = self.q(*queue)?.dq.clone();
                dq.set_used_event(&mut self.mem(), value.0 as u16)?;
            }
            Op::Cycle {
                queue,
                count,
                batch,
                len,
                grade,
            } => self.cycle(*queue, *count, *batch, len.unwrap_or(1), grade)?,
            Op::ExpectGraceful {
                queue,
                returned,
                grade,
            } => self.expect_graceful(*queue, *returned, grade)?,
            Op::MemWrite { addr, data } => self.mem_write(addr.0, &data.0)?,
            Op::Observe { queue } => {
                if self.queues.contains_key(queue) {
                    // Give an asynchronous target the time to complete what is outstanding.
                    let want = self.q(*queue)?.outstanding.len() as u16;
                    let n = self.wait_used(*queue, want.max(1), NONE_WAIT * 4)?;
                    self.observe(format!("used q{queue} count"), n.to_string());
                    let elems = self.take_used(*queue)?;
                    for (id, l) in elems {
                        let posted = self.take_outstanding(*queue, id)?;
                        let l = if self.deterministic_data {
                            l.to_string()
                        } else {
                            "n".into()
                        };
                        self.observe(format!("used q{queue} element"), format!("id {id} len {l}"));
                        // What a deterministic device (block) wrote: data and status byte
                        // (the in-RAM writable bytes of the chain, at most 4 KiB).
                        if let (true, Some(p)) = (self.deterministic_data, posted) {
                            let mut bytes = Vec::new();
                            for &(a, n) in &p.writable {
                                let room = 4096usize.saturating_sub(bytes.len());
                                let inside =
                                    a.checked_add(u64::from(n)).is_some_and(|e| e <= self.ram);
                                if !inside || room == 0 {
                                    continue;
                                }
                                let mut b = vec![0u8; (n as usize).min(room)];
                                self.t.mem_read(a, &mut b)?;
                                bytes.extend_from_slice(&b);
                            }
                            self.observe(format!("data q{queue} id {id}"), hex(&bytes));
                        }
                    }
                }
                self.r32o(STATUS)?;
                self.r32o(INTERRUPT_STATUS)?;
            }
            Op::HostSend { port, data } => self.t.host_send(*port, &data.0)?,
            Op::SetDriverEvent {
                queue,
                flags,
                off,
                wrap,
                ahead,
            } => self.set_driver_event(*queue, *flags, *off, *wrap, *ahead)?,
            Op::ExpectHost {
                port,
                data,
                units,
                grade,
            } => self.expect_host(*port, &data.0, *units, grade)?,
            Op::ExpectReceived { queue, data, grade } => {
                self.expect_received(*queue, &data.0, grade)?
            }
            Op::ExpectControl {
                queue,
                event,
                id,
                value,
                grade,
            } => self.expect_control(*queue, *event, *id, *value, grade)?,
            Op::VsockRx {
                queue,
                count,
                split,
            } => self.vsock_rx(*queue, count.unwrap_or(1), split.as_deref())?,
            Op::VsockSend { .. } => self.vsock_send(op)?,
            Op::VsockExpect { .. } => self.vsock_expect(op)?,
            Op::VsockExpectData {
                queue,
                port,
                data,
                grade,
            } => self.vsock_expect_data(*queue, *port, &data.0, grade)?,
            Op::HostOp { action, port } => self.host_op(*action, *port)?,
            Op::ExpectHostConn { port, state, grade } => {
                self.expect_host_conn(*port, *state, grade)?
            }
            Op::Require { at, mask, expect } => {
                let (name, raw) = self.read_field(at)?;
                let v = raw & mask.map_or(u64::MAX, |m| m.0);
                if v != expect.0 {
                    return Err(Stop::Unsupported(format!(
                        "the case is written for {name} = {:#x}; this device reads {v:#x}",
                        expect.0
                    )));
                }
            }
            Op::ReadRange {
                at,
                mask,
                min,
                max,
                grade,
            } => {
                let (name, raw) = self.read_field(at)?;
                let v = raw & mask.map_or(u64::MAX, |m| m.0);
                self.check(
                    Some(grade),
                    &[],
                    (min.0..=max.0).contains(&v),
                    Severity::Low,
                    || format!("{name} in {:#x}..={:#x}", min.0, max.0),
                    || format!("{name} = {raw:#x}"),
                );
            }
            Op::MemExpect { addr, data, grade } => {
                let mut b = vec![0u8; data.0.len()];
                self.t.mem_read(addr.0, &mut b)?;
                self.observe(format!("memory {:#x}", addr.0), hex(&b));
                self.check(
                    Some(grade),
                    &[],
                    b == data.0,
                    Severity::Low,
                    || hex(&data.0),
                    || hex(&b),
                );
            }
        }
        Ok(())
    }

    fn reset(&mut self, g: Option<&Grade>) -> R {
        self.w32(STATUS, 0)?;
        let st = self.r32o(STATUS)?;
        self.check(
            g,
            &["RESET-DEV-01"],
            st == 0,
            Severity::Low,
            || "Status = 0 after reset".into(),
            || format!("Status = {st:#x}"),
        );
        for q in self.queues.values_mut() {
            q.outstanding.clear();
        }
        Ok(())
    }

    fn init(&mut self, feats: u64, order: Order, upto: Upto, queues: &[QueueSpec], g: &Grade) -> R {
        if !matches!(order, Order::Spec | Order::Combined) {
            return self.init_as(order, feats, upto, queues, g);
        }
        self.reset(None)?;
        self.w32(STATUS, ACKNOWLEDGE as u32)?;
        let st = self.r32o(STATUS)?;
        self.check(
            None,
            &["STATUS-DEV-05"],
            st as u8 & !DEVICE_NEEDS_RESET == ACKNOWLEDGE,
            Severity::Low,
            || "Status = ACKNOWLEDGE".into(),
            || format!("Status = {st:#x}"),
        );
        if upto == Upto::Acknowledge {
            return Ok(());
        }
        if order == Order::Combined {
            // rcore's virtio-drivers writes ACKNOWLEDGE|DRIVER in one go after a reset.
            self.w32(STATUS, 0)?;
        }
        self.w32(STATUS, (ACKNOWLEDGE | DRIVER) as u32)?;
        let st = self.r32o(STATUS)?;
        if !self.check(
            None,
            &["STATUS-DEV-05"],
            st as u8 == ACKNOWLEDGE | DRIVER,
            Severity::Low,
            || "Status = ACKNOWLEDGE|DRIVER".into(),
            || format!("Status = {st:#x}"),
        ) {
            return Err(Stop::Abort);
        }
        if upto == Upto::Driver {
            return Ok(());
        }
        let offered = self.offered()?;
        self.packed = !self.legacy && feats & bit(VIRTIO_F_RING_PACKED) != 0;
        self.in_order = feats & bit(VIRTIO_F_IN_ORDER) != 0;
        self.w32(DRIVER_FEATURES_SEL, 0)?;
        self.w32(DRIVER_FEATURES, feats as u32)?;
        self.w32(DRIVER_FEATURES_SEL, 1)?;
        self.w32(DRIVER_FEATURES, (feats >> 32) as u32)?;
        if !self.legacy {
            self.w32(STATUS, (ACKNOWLEDGE | DRIVER | FEATURES_OK) as u32)?;
            match self.features_ok_read_back(feats, offered, g)? {
                FeaturesOkReadBack::Refused => return Ok(()),
                FeaturesOkReadBack::Lost => return Err(Stop::Abort),
                FeaturesOkReadBack::Kept => {}
            }
        }
        if upto == Upto::FeaturesOk {
            return Ok(());
        }
        if self.legacy {
            self.w32(GUEST_PAGE_SIZE, PAGE)?;
        }
        for q in queues {
            self.setup_queue(q.index, q.size, q.align)?;
        }
        if upto == Upto::Queues {
            return Ok(());
        }
        let ok = if self.legacy {
            ACKNOWLEDGE | DRIVER | DRIVER_OK
        } else {
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        };
        self.w32(STATUS, ok as u32)?;
        let st = self.r32o(STATUS)? as u8;
        self.check(
            None,
            &["STATUS-DEV-05"],
            st == ok,
            Severity::Low,
            || format!("Status = {ok:#x}"),
            || format!("Status = {st:#x}"),
        );
        Ok(())
    }

    /// Reads Status after the driver set FEATURES_OK and grades it (§2.2.2): clear when the
    /// driver accepted bits that were not offered (FEAT-DEV-02b), kept otherwise
    /// (FEAT-DEV-01, graded with the step's `g`).
    fn features_ok_read_back(
        &mut self,
        feats: u64,
        offered: u64,
        g: &Grade,
    ) -> R<FeaturesOkReadBack> {
        let st = self.r32o(STATUS)? as u8;
        if feats & !offered != 0 {
            // The driver accepted something not offered, a subset the device cannot honour:
            // FEATURES_OK must read back clear (§2.2.2).
            self.check(
                None,
                &["FEAT-DEV-02b"],
                st & FEATURES_OK == 0,
                Severity::Low,
                || {
                    format!(
                        "FEATURES_OK clear after accepting unoffered bits {:#x}",
                        feats & !offered
                    )
                },
                || format!("Status = {st:#x}"),
            );
            return Ok(FeaturesOkReadBack::Refused);
        }
        let kept = self.check(
            Some(g),
            &["FEAT-DEV-01"],
            st & FEATURES_OK != 0,
            Severity::Low,
            || format!("FEATURES_OK kept for offered features {feats:#x}"),
            || format!("Status = {st:#x}"),
        );
        Ok(if kept {
            FeaturesOkReadBack::Kept
        } else {
            FeaturesOkReadBack::Lost
        })
    }

    /// Sets queue `index` up (version 2, split ring) with its parts at an edge of guest RAM
    /// ([`crate::case::RingPlace`]): the parts' bytes inside RAM are zeroed, QueueNum, the
    /// addresses and QueueReady written.
    fn setup_queue_at(&mut self, index: u16, size: u16, at: crate::case::RingPlace) -> R {
        if self.legacy || self.packed {
            return Err(Stop::Unsupported(
                "`queue_at` places split rings through the version 2 address registers".into(),
            ));
        }
        self.w32(QUEUE_SEL, index as u32)?;
        let max = self.r32o(QUEUE_NUM_MAX)?;
        if max == 0 {
            return Err(Stop::Unsupported(format!("queue {index} does not exist")));
        }
        let size = size.min(max.min(u16::MAX as u32) as u16);
        let n = size as u64;
        let shift = match at {
            crate::case::RingPlace::RamEnd => 0,
            crate::case::RingPlace::AcrossRamEnd => 16,
        };
        let room = 16 * n + 6 + 8 * n + 6 + 2 * n + 32;
        if self.ram < room {
            return Err(Stop::Case(format!(
                "guest RAM is smaller than queue {index}'s rings"
            )));
        }
        let avail = self.ram - (6 + 2 * n) + shift;
        let used = (self.ram - (6 + 2 * n) - (6 + 8 * n)) / 4 * 4 + shift;
        let desc = (used - shift - 16 * n) / 16 * 16 + shift;
        let dq = DriverQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
        };
        for (addr, len) in [(desc, 16 * n), (avail, 6 + 2 * n), (used, 6 + 8 * n)] {
            let inside = self.ram.saturating_sub(addr).min(len);
            if inside > 0 {
                virtio_reference_device::driver::DriverMemory::write_bytes(
                    &mut self.mem(),
                    addr,
                    &vec![0u8; inside as usize],
                )?;
            }
        }
        self.w32(QUEUE_NUM, size as u32)?;
        self.enable_queue(desc, avail, used)?;
        self.allow(desc, 16 * n, Area::DescTable);
        self.allow(avail, 6 + 2 * n, Area::AvailRing);
        self.allow(used, 6 + 8 * n, Area::Ring);
        self.queues.insert(index, QState::new(dq, None));
        Ok(())
    }

    /// Version 2 queue enable for the selected queue (§4.2.3.2): QueueDesc, QueueDriver and
    /// QueueDevice (guest physical addresses, low word then high word of each), then
    /// QueueReady = 1. On a packed ring the last two name the event suppression structures.
    fn enable_queue(&mut self, desc: u64, driver: u64, device: u64) -> R {
        for (lo, v) in [
            (QUEUE_DESC_LOW, desc),
            (QUEUE_DRIVER_LOW, driver),
            (QUEUE_DEVICE_LOW, device),
        ] {
            self.w32(lo, v as u32)?;
            self.w32(lo + 4, (v >> 32) as u32)?;
        }
        self.w32(QUEUE_READY, 1)
    }

    fn setup_queue(&mut self, index: u16, size: u16, align: Option<u32>) -> R {
        self.w32(QUEUE_SEL, index as u32)?;
        self.setup_selected_queue(index, size, align, false)
    }

    /// Sets queue `index` up once QueueSel already names it: reads QueueNumMax, then writes
    /// QueueNum and the ring addresses (and QueueReady, or QueueAlign/QueuePFN on a legacy
    /// device). `reselect_before_num` writes QueueSel again right before QueueNum, as a driver
    /// that selects the queue in every helper does (rcore `queue.rs:queue_set`).
    fn setup_selected_queue(
        &mut self,
        index: u16,
        size: u16,
        align: Option<u32>,
        reselect_before_num: bool,
    ) -> R {
        let max = self.r32o(QUEUE_NUM_MAX)?;
        if max == 0 {
            return Err(Stop::Unsupported(format!("queue {index} does not exist")));
        }
        let size = if (size as u32) > max {
            max as u16
        } else {
            size
        };
        let base = RING_BASE + RING_STRIDE * index as u64;
        if base + RING_STRIDE > BUF_BASE || base + RING_STRIDE > self.ram {
            return Err(Stop::Case(format!(
                "queue index {index}: the harness lays out the rings of queues 0..={} only",
                (BUF_BASE.min(self.ram).saturating_sub(RING_BASE) / RING_STRIDE).saturating_sub(1)
            )));
        }
        if self.packed {
            return self.packed_setup_queue(index, size, base);
        }
        let dq = if self.legacy {
            DriverQueue::legacy(
                (base / PAGE as u64) as u32,
                PAGE,
                size,
                align.unwrap_or(PAGE),
            )
        } else {
            DriverQueue::modern(base, size)
        };
        dq.clear(&mut self.mem())?;
        if reselect_before_num {
            self.w32(QUEUE_SEL, index as u32)?;
        }
        self.w32(QUEUE_NUM, size as u32)?;
        if self.legacy {
            self.w32(QUEUE_ALIGN, align.unwrap_or(PAGE))?;
            self.w32(QUEUE_PFN, (base / PAGE as u64) as u32)?;
        } else {
            self.enable_queue(dq.desc, dq.avail, dq.used)?;
        }
        let n = size as u64;
        self.allow(dq.desc, 16 * n, Area::DescTable);
        self.allow(dq.avail, 6 + 2 * n, Area::AvailRing);
        self.allow(dq.used, 6 + 8 * n, Area::Ring);
        if self.legacy && !align.unwrap_or(PAGE).is_power_of_two() {
            // The driver broke the legacy layout (§4.2.4: QueueAlign is a power of two). Where
            // the device then puts its used ring is not specified; any power-of-two alignment
            // up to a page (QEMU keeps its default of 4096) is the device's used ring, not
            // stray memory, for the memory oracles.
            for shift in 0..=PAGE.trailing_zeros() {
                let alt = DriverQueue::legacy((base / PAGE as u64) as u32, PAGE, size, 1 << shift);
                self.allow(alt.used, 6 + 8 * n, Area::Ring);
            }
        }
        self.queues.insert(index, QState::new(dq, None));
        Ok(())
    }

    fn post(
        &mut self,
        queue: u16,
        chain: &[Buf],
        indirect: bool,
        indirect_flags: Option<u16>,
        indirect_len: Option<u32>,
        head: Option<u16>,
    ) -> R {
        let size = self.q(queue)?.dq.size;
        if size == 0 {
            return Err(Stop::Case(format!(
                "queue {queue} has size 0: no descriptor can be posted on it"
            )));
        }
        let mut descs = Vec::new();
        let mut posted = Posted::default();
        for b in chain {
            let len = b.len.0 as u32;
            let addr = match (b.addr, b.from_ram_end) {
                (Some(a), _) => a.0,
                (None, Some(back)) => self.ram.wrapping_sub(back.0),
                (None, None) => self.alloc(len as u64),
            };
            let inside = addr.checked_add(len as u64).is_some_and(|e| e <= self.ram);
            if inside && len as u64 <= 1 << 20 {
                let content = match (&b.data, b.fill) {
                    (Some(d), _) => {
                        let mut c = d.0.clone();
                        c.resize(len as usize, b.fill.unwrap_or(0));
                        Some(c)
                    }
                    (None, Some(f)) => Some(vec![f; len as usize]),
                    (None, None) if !b.write => Some(vec![0x5a; len as usize]),
                    _ => None,
                };
                if let Some(c) = content {
                    self.mem_write(addr, &c)?;
                }
            }
            if b.write {
                posted.writable.push((addr, len));
                self.allow(addr, len as u64, Area::Writable);
            } else {
                self.allow(addr, len as u64, Area::ReadOnly);
            }
            descs.push((b, addr, len));
        }
        self.balloon_inflate_pages(queue, chain);
        let n = descs.len() as u16;
        if self.is_packed(queue) {
            let table = if indirect {
                let bytes = 16 * n.max(1) as u64;
                let t = self.alloc(bytes);
                self.allow(t, bytes, Area::DescTable);
                Some((t, indirect_flags, indirect_len))
            } else {
                None
            };
            return self.packed_post(queue, &descs, posted, table, head);
        }
        let (table, table_len, first) = if indirect {
            let bytes = 16 * n.max(1) as u64;
            let t = self.alloc(bytes);
            self.allow(t, bytes, Area::DescTable);
            (Some(t), n, 0u16)
        } else {
            let q = self.q(queue)?;
            let first = q.next_desc % size;
            q.next_desc = (first + n.max(1)) % size;
            (None, size, first)
        };
        for (k, (b, addr, len)) in descs.iter().enumerate() {
            let idx = (first + k as u16) % table_len.max(1);
            let last = k + 1 == descs.len();
            let flags = match b.flags {
                Some(f) => f.0 as u16,
                None => {
                    (if b.write { VIRTQ_DESC_F_WRITE } else { 0 })
                        | if last { 0 } else { VIRTQ_DESC_F_NEXT }
                }
            };
            let next = b.next.map_or((idx + 1) % table_len.max(1), |n| n.0 as u16);
            let d = Descriptor {
                addr: *addr,
                len: *len,
                flags,
                next,
            };
            match table {
                Some(t) => DriverQueue::write_descriptor_at(&mut self.mem(), t, idx, &d)?,
                None => {
                    let dq = self.q(queue)?.dq.clone();
                    dq.write_descriptor(&mut self.mem(), idx, &d)?;
                }
            }
        }
        let mut head_idx = first;
        if let Some(t) = table {
            let q = self.q(queue)?;
            head_idx = q.next_desc % size;
            q.next_desc = (head_idx + 1) % size;
            let d = Descriptor {
                addr: t,
                len: indirect_len.unwrap_or(16 * n as u32),
                flags: indirect_flags.unwrap_or(VIRTQ_DESC_F_INDIRECT),
                next: 0,
            };
            let dq = self.q(queue)?.dq.clone();
            dq.write_descriptor(&mut self.mem(), head_idx, &d)?;
        }
        let h = head.unwrap_or(head_idx);
        posted.head = h;
        let mut dq = self.q(queue)?.dq.clone();
        dq.publish(&mut self.mem(), &[h])?;
        let q = self.q(queue)?;
        q.dq = dq;
        q.outstanding.push(posted);
        Ok(())
    }

    /// Removes the chain whose head the used element `id` names from the queue's outstanding
    /// chains and returns it; `None` when no outstanding chain has that head (§2.7.8: a used
    /// id names a head the driver made available and did not get back yet).
    fn take_outstanding(&mut self, queue: u16, id: u32) -> R<Option<Posted>> {
        let q = self.q(queue)?;
        let pos = q.outstanding.iter().position(|p| u32::from(p.head) == id);
        Ok(pos.map(|p| q.outstanding.remove(p)))
    }

    /// The outstanding chain a used element `id` of `queue` returns, now the queue's last
    /// used chain; `None`, graded under VQ-DEV-17, when `id` names no outstanding head.
    fn used_chain(&mut self, queue: u16, id: u32) -> R<Option<Posted>> {
        let posted = self.take_outstanding(queue, id)?;
        match &posted {
            Some(p) => self.q(queue)?.last = Some(p.clone()),
            None => {
                self.check(
                    None,
                    &["VQ-DEV-17"],
                    false,
                    Severity::Low,
                    || "used id names an outstanding head".into(),
                    || format!("used id {id}"),
                );
            }
        }
        Ok(posted)
    }

    /// One used element (`id`, `len`) of `queue`, observed and checked: it must name an
    /// outstanding head (VQ-DEV-17, see [`Self::used_chain`]), its len must fit the chain's
    /// writable bytes (VQ-DEV-15) and not claim bytes the device did not write.
    fn checked_used(&mut self, queue: u16, id: u32, l: u32) -> R<Option<Posted>> {
        self.observe(format!("used q{queue} element"), format!("id {id} len {l}"));
        let Some(p) = self.used_chain(queue, id)? else {
            return Ok(None);
        };
        let cap = p.writable_total();
        self.check(
            None,
            &["VQ-DEV-15"],
            l as u64 <= cap,
            Severity::Low,
            || format!("used len <= {cap} writable bytes"),
            || format!("used len {l}"),
        );
        self.check_len_honest(&p, l);
        Ok(Some(p))
    }

    fn wait_used(&mut self, queue: u16, want: u16, wait: Duration) -> R<u16> {
        if self.is_packed(queue) {
            return self.packed_wait_used(queue, want, wait);
        }
        let start = Instant::now();
        loop {
            self.t.settle()?;
            let dq = self.q(queue)?.dq.clone();
            let idx = dq.used_idx(&mut self.mem())?;
            let n = idx.wrapping_sub(dq.last_used);
            if n >= want || start.elapsed() >= wait || self.t.synchronous() {
                return Ok(n);
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Collects what the device transmitted on `port` until `want` bytes (and `units` units,
    /// when given) arrived or [`USED_WAIT`] passed, then compares it with `want`.
    fn expect_host(&mut self, port: u32, want: &[u8], units: Option<u32>, g: &Grade) -> R {
        let start = Instant::now();
        let mut got: Vec<Vec<u8>> = Vec::new();
        loop {
            self.t.settle()?;
            got.extend(self.t.host_take(port)?);
            let bytes: usize = got.iter().map(Vec::len).sum();
            let enough =
                bytes >= want.len() && units.is_none_or(|u| got.len() as u64 >= u64::from(u));
            if enough || start.elapsed() >= USED_WAIT || self.t.synchronous() {
                break;
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        }
        let joined = got.concat();
        self.observe(format!("host port {port}"), hex(&joined));
        let units_ok = units.is_none_or(|u| got.len() as u64 == u64::from(u));
        self.check(
            Some(g),
            &[],
            joined == want && units_ok,
            Severity::Low,
            || match units {
                Some(u) => format!("{u} unit(s) on host port {port}: {}", hex(want)),
                None => format!("host port {port}: {}", hex(want)),
            },
            || format!("{} unit(s): {}", got.len(), hex(&joined)),
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn expect_used(
        &mut self,
        queue: u16,
        count: UsedCount,
        len: Option<crate::case::Num>,
        len_max: Option<crate::case::Num>,
        len_min: Option<crate::case::Num>,
        none: bool,
        g: &Grade,
    ) -> R {
        let g = Some(g);
        if none {
            let n = self.wait_used(queue, 1, NONE_WAIT)?;
            self.observe(format!("used q{queue} count"), n.to_string());
            self.check(
                g,
                &[],
                n == 0,
                Severity::Low,
                || "no used element".into(),
                || format!("{n} used element(s)"),
            );
            return Ok(());
        }
        let (want, at_least) = match count {
            UsedCount::Exactly(n) => (n, false),
            UsedCount::AtLeast(n) => (n, true),
        };
        let n = self.wait_used(queue, want, USED_WAIT)?;
        self.observe(format!("used q{queue} count"), n.to_string());
        if !self.check(
            g,
            &[],
            if at_least { n >= want } else { n == want },
            Severity::Low,
            || {
                if at_least {
                    format!("used.idx advanced by at least {want}")
                } else {
                    format!("used.idx advanced by {want}")
                }
            },
            || format!("advanced by {n}"),
        ) && n == 0
        {
            return Ok(());
        }
        let elems = self.take_used(queue)?;
        for (id, l) in elems {
            if self.checked_used(queue, id, l)?.is_none() {
                continue;
            }
            if let Some(e) = len {
                // §2.7.8.2: `len` may underestimate what was written (VQ-DEV-16, informational);
                // more than the request can have produced fails.
                self.check(
                    g,
                    &[],
                    l as u64 <= e.0,
                    Severity::Low,
                    || format!("used len <= {}", e.0),
                    || format!("used len {l}"),
                );
                if l as u64 <= e.0 {
                    self.check_at(
                        Level::May,
                        &["VQ-DEV-16"],
                        l as u64 == e.0,
                        Severity::None,
                        || format!("used len {} (every byte the request produced)", e.0),
                        || format!("used len {l} (an underestimate, allowed)"),
                    );
                }
            }
            if let Some(e) = len_max {
                self.check(
                    g,
                    &[],
                    l as u64 <= e.0,
                    Severity::Low,
                    || format!("used len <= {}", e.0),
                    || format!("used len {l}"),
                );
            }
            if let Some(e) = len_min {
                self.check(
                    g,
                    &[],
                    l as u64 >= e.0,
                    Severity::Low,
                    || format!("used len >= {}", e.0),
                    || format!("used len {l}"),
                );
            }
        }
        Ok(())
    }

    /// Collects every used element published since the last call, `(id, len)`, oldest
    /// first, on either ring layout.
    fn take_used(&mut self, queue: u16) -> R<Vec<(u32, u32)>> {
        if self.is_packed(queue) {
            return self.packed_take_used(queue);
        }
        let mut dq = self.q(queue)?.dq.clone();
        let elems = dq.take_used(&mut self.mem())?;
        self.q(queue)?.dq = dq;
        Ok(elems)
    }

    fn cycle(&mut self, queue: u16, count: u32, batch: u16, len: u32, g: &Grade) -> R {
        if self.is_packed(queue) {
            return self.packed_cycle(queue, count, batch, len, g);
        }
        let size = self.q(queue)?.dq.size;
        if size == 0 {
            return Err(Stop::Case(format!(
                "queue {queue} has size 0: `cycle` cannot post on it"
            )));
        }
        let batch = batch.clamp(1, size);
        let mut addrs = Vec::new();
        for i in 0..batch {
            let a = self.alloc(len as u64);
            self.allow(a, len as u64, Area::Writable);
            let d = Descriptor {
                addr: a,
                len,
                flags: VIRTQ_DESC_F_WRITE,
                next: 0,
            };
            let dq = self.q(queue)?.dq.clone();
            dq.write_descriptor(&mut self.mem(), i, &d)?;
            addrs.push(a);
        }
        let mut done = 0u32;
        while done < count {
            self.check_deadline()?;
            let k = batch.min((count - done).min(u16::MAX as u32) as u16);
            let mut dq = self.q(queue)?.dq.clone();
            // One write for the ring slots (two when they wrap), then the index.
            let start = dq.avail_idx;
            let slots: Vec<u16> = (0..k).collect();
            let first_slot = start % size;
            let run = k.min(size - first_slot);
            let bytes = |s: &[u16]| s.iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<u8>>();
            self.mem_write(
                dq.avail + 4 + 2 * first_slot as u64,
                &bytes(&slots[..run as usize]),
            )?;
            if run < k {
                self.mem_write(dq.avail + 4, &bytes(&slots[run as usize..]))?;
            }
            dq.avail_idx = start.wrapping_add(k);
            self.mem_write(dq.avail + 2, &dq.avail_idx.to_le_bytes())?;
            self.q(queue)?.dq = dq.clone();
            self.notify(queue as u32)?;
            let n = self.wait_used(queue, k, USED_WAIT)?;
            if !self.check(
                Some(g),
                &[],
                n == k,
                Severity::Low,
                || {
                    format!(
                        "{k} used elements after {done} completions (used.idx {:#x})",
                        dq.last_used
                    )
                },
                || format!("{n}"),
            ) {
                return Err(Stop::Abort);
            }
            // Read the used elements in one go (two when they wrap).
            let first = dq.last_used % size;
            let run = k.min(size - first);
            let mut raw = vec![0u8; 8 * k as usize];
            self.t
                .mem_read(dq.used + 4 + 8 * first as u64, &mut raw[..8 * run as usize])?;
            if run < k {
                self.t.mem_read(dq.used + 4, &mut raw[8 * run as usize..])?;
            }
            for (j, e) in raw.chunks(8).enumerate() {
                let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                let l = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                if !self.check(
                    Some(g),
                    &[],
                    id == j as u32 && l <= len,
                    Severity::Low,
                    || {
                        format!(
                            "used element {{id {j}, len <= {len}}} at used index {:#x}",
                            dq.last_used.wrapping_add(j as u16)
                        )
                    },
                    || format!("{{id {id}, len {l}}}"),
                ) {
                    return Err(Stop::Abort);
                }
            }
            dq.last_used = dq.last_used.wrapping_add(k);
            self.q(queue)?.dq = dq;
            done += k as u32;
            self.cycle_round_done(queue, done, count, k as u32)?;
        }
        Ok(())
    }

    /// After a `cycle` round that completed `k` buffers (`done` of `count` so far) on either
    /// ring layout: records the end of the cycle, and acknowledges interrupts every 4096
    /// completions so InterruptStatus does not stay raised for the whole cycle.
    fn cycle_round_done(&mut self, queue: u16, done: u32, count: u32, k: u32) -> R {
        if done >= count {
            self.observe(format!("cycle q{queue} completed"), done.to_string());
        }
        if done % 4096 < k {
            let isr = self.r32(INTERRUPT_STATUS)?;
            self.w32(INTERRUPT_ACK, isr)?;
        }
        Ok(())
    }

    /// Grades the device's handling of a chain or ring the driver made invalid (§2.7.5,
    /// §2.1.2). Graceful is any of: DEVICE_NEEDS_RESET (with the configuration-change
    /// interrupt after DRIVER_OK, STATUS-DEV-03); the chain not used; the chain used with len
    /// 0; for a device type with an in-band status (block), the chain used with an error
    /// status and a len no larger than what was written. A chain used as if it were valid is
    /// informational (no statement prescribes the handling of this driver error), unless its
    /// len counts bytes of buffers outside guest memory (VQ-DEV-15). DEVICE_NEEDS_RESET is
    /// never demanded (STATUS-DEV-02 is a SHOULD). The device must still answer (LIVE-DEV-01).
    fn expect_graceful(&mut self, queue: u16, returned: bool, g: &Grade) -> R {
        let magic = self.r32o(MAGIC)?;
        self.check(
            None,
            &[LIVENESS],
            magic == MAGIC_VALUE,
            Severity::High,
            || "device still answers MagicValue".into(),
            || format!("MagicValue = {magic:#x}"),
        );
        let st = self.r32o(STATUS)? as u8;
        let n = self.wait_used(queue, 1, NONE_WAIT)?;
        if st & DEVICE_NEEDS_RESET != 0 && !self.legacy {
            if st & DRIVER_OK != 0 {
                let isr = self.r32o(INTERRUPT_STATUS)?;
                self.check(
                    None,
                    &["STATUS-DEV-03"],
                    isr & INT_CONFIG_CHANGE != 0,
                    Severity::Low,
                    || "configuration-change interrupt after DEVICE_NEEDS_RESET".into(),
                    || format!("InterruptStatus = {isr:#x}"),
                );
            }
            return Ok(());
        }
        if n == 0 {
            if returned {
                // The request can never complete, and the driver can take its descriptors back
                // only by resetting the device (§3.3.1): an error state only a reset clears,
                // which the device should announce (STATUS-DEV-02, a SHOULD).
                self.check(
                    None,
                    &["STATUS-DEV-02"],
                    false,
                    Severity::Low,
                    || "the rejected chain returned in the used ring, or DEVICE_NEEDS_RESET".into(),
                    || {
                        format!(
                            "chain silently dropped (used.idx unchanged, Status {st:#x}): its descriptors can only be reclaimed by a reset"
                        )
                    },
                );
            }
            return Ok(());
        }
        let elems = self.take_used(queue)?;
        self.observe(
            format!("used q{queue} after malformed chain"),
            format!("{elems:?}"),
        );
        for (id, l) in elems {
            let posted = self.take_outstanding(queue, id)?;
            if l == 0 {
                continue;
            }
            let Some(p) = posted else {
                // §2.7.8: a used element names a head the driver made available and that is
                // still outstanding; a head returned twice means the device re-walked ring
                // slots the driver never filled (bug B01).
                self.check(
                    None,
                    &["VQ-DEV-17"],
                    false,
                    Severity::Low,
                    || "used elements name outstanding heads, each once".into(),
                    || format!("used id {id} len {l}, which is not outstanding"),
                );
                continue;
            };
            let in_ram = p.writable_in_ram(self.ram);
            if p.writable_outside_ram(self.ram) {
                self.check(
                    g.req.is_some().then_some(g),
                    &["VQ-DEV-15", "SPLIT-DEV-MALFORMED-CHAIN"],
                    l as u64 <= in_ram,
                    Severity::Low,
                    || {
                        format!(
                            "used len <= {in_ram}: only that many writable bytes of the chain lie in guest memory"
                        )
                    },
                    || format!("used id {id} len {l} (chain completed as valid), Status {st:#x}"),
                );
                if l as u64 > in_ram {
                    continue;
                }
            }
            self.check_len_honest(&p, l);
            let status = match p.writable.last() {
                Some(&(a, len))
                    if self.inband_status && len > 0 && a + (len as u64) <= self.ram =>
                {
                    let mut b = [0u8; 1];
                    self.t.mem_read(a + len as u64 - 1, &mut b)?;
                    Some(b[0])
                }
                _ => None,
            };
            let error_status = matches!(status, Some(BLK_S_IOERR | BLK_S_UNSUPP));
            if !error_status {
                self.check_at(
                    Level::May,
                    &["SPLIT-DEV-MALFORMED-CHAIN"],
                    false,
                    Severity::None,
                    || "the malformed chain not used, used with len 0 or an error status, or DEVICE_NEEDS_RESET".into(),
                    || {
                        format!(
                            "chain used as if valid: id {id} len {l}{}, Status {st:#x} (allowed: no statement prescribes the handling of this driver error)",
                            status.map_or(String::new(), |s| format!(", status byte {s}"))
                        )
                    },
                );
            }
        }
        Ok(())
    }
}

/// Observed text of a request's status byte (the last writable byte of its chain):
/// `status byte <n>`, or that the chain has no writable byte.
fn status_byte(got: Option<u8>) -> String {
    match got {
        Some(b) => format!("status byte {b}"),
        None => "no status byte (the chain has no writable bytes)".to_string(),
    }
}

/// A saved register value for a message: `0x..`, or that no earlier step saved it.
fn saved_text<T: std::fmt::LowerHex>(v: Option<T>) -> String {
    match v {
        Some(v) => format!("{v:#x}"),
        None => "not saved by an earlier step".to_string(),
    }
}

/// How many used elements an `expect_used` step asks for.
#[derive(Debug, Clone, Copy)]
enum UsedCount {
    /// Exactly this many (`count`, default 1).
    Exactly(u16),
    /// At least this many (`count_min`).
    AtLeast(u16),
}

impl UsedCount {
    fn from_step(count: Option<u16>, count_min: Option<u16>) -> Self {
        match (count, count_min) {
            (_, Some(m)) => UsedCount::AtLeast(m),
            (c, None) => UsedCount::Exactly(c.unwrap_or(1)),
        }
    }
}
