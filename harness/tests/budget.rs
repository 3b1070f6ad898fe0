//! `run_suite` keeps going whatever the target does: a target that blocks forever is graded
//! `timeout` (high) and replaced, a target that panics is graded `fail` (high) with the panic
//! message and replaced, a factory that cannot build a target yields one `error` (exit 2),
//! and panics on a device's own threads are seen through `ThreadPanics`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use virtio_conform::outcome::{Outcome, Severity};
use virtio_conform::report::Report;
use virtio_conform::suite::{replay_command, run_suite, Budget, Options, Suite};
use virtio_conform::target::guard::ThreadPanics;
use virtio_conform::target::{
    Capabilities, DeviceKind, ReferenceTarget, Target, TargetError, TargetInfo,
};
use virtio_reference_device::TransportVersion;

/// What the misbehaving target does on its first notification.
#[derive(Clone, Copy)]
enum Misbehave {
    /// Blocks inside `notify` forever.
    BlockInNotify,
    /// Every read takes 200 ms once notified (no single call is stuck; the case is slow).
    Crawl,
    /// Panics inside `notify`.
    PanicInNotify,
    /// Sleeps 1.5 s inside `notify` once (longer than the case budget plus a quarter of the
    /// call budget, shorter than the call budget): only `run_suite`'s per-case budget stops it.
    SleepInNotify,
}

/// A reference device that misbehaves in the cases whose id the test names.
struct Bad {
    inner: ReferenceTarget,
    how: Misbehave,
    armed: bool,
    notified: bool,
}

impl Target for Bad {
    fn info(&self) -> TargetInfo {
        self.inner.info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        if self.notified && matches!(self.how, Misbehave::Crawl) {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.inner.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.write(offset, data)
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.inner.mem_write(gpa, data)
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        if self.notified && matches!(self.how, Misbehave::Crawl) {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.inner.mem_read(gpa, buf)
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        self.notified = false;
        self.inner.fresh()
    }
    fn notify(&mut self, value: u32) -> Result<(), TargetError> {
        if self.armed {
            self.notified = true;
            match self.how {
                Misbehave::BlockInNotify => loop {
                    std::thread::park();
                },
                Misbehave::PanicInNotify => panic!("device model bug: queue {value} exploded"),
                Misbehave::SleepInNotify => std::thread::sleep(Duration::from_millis(1500)),
                Misbehave::Crawl => {}
            }
        }
        self.inner.notify(value)
    }
    fn synchronous(&self) -> bool {
        // Not synchronous: the harness polls, so a crawling target keeps being called.
        !matches!(self.how, Misbehave::Crawl)
    }
}

const CASES: [&str; 3] = [
    "mmio.identity",
    "split.batch-of-requests",
    "status.initial-zero",
];

/// Runs three cases; the misbehaving instance is armed only for the first one it makes, so
/// the instance the run continues on is a healthy one.
fn run(how: Misbehave, budget: Budget) -> (Report, usize) {
    let suite = Suite::load_default().unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let factory = move || {
        let n = m.fetch_add(1, Ordering::SeqCst);
        Ok::<_, TargetError>(Bad {
            inner: ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None)?,
            how,
            armed: n == 0,
            notified: false,
        })
    };
    let opts = Options {
        only: CASES.iter().map(|s| s.to_string()).collect(),
        budget,
        ..Options::default()
    };
    let report = run_suite(&suite, factory, &opts);
    (report, made.load(Ordering::SeqCst))
}

fn result<'a>(r: &'a Report, case: &str) -> &'a virtio_conform::report::CaseResult {
    r.results.iter().find(|x| x.case == case).unwrap()
}

#[test]
fn a_target_that_blocks_forever_times_out_and_the_run_continues() {
    let budget = Budget {
        case: Duration::from_secs(30),
        call: Duration::from_secs(1),
    };
    let (r, made) = run(Misbehave::BlockInNotify, budget);
    assert_eq!(r.results.len(), 3);
    // mmio.identity never notifies; split.batch-of-requests is the first case that does.
    assert_eq!(result(&r, "mmio.identity").outcome, Outcome::Pass);
    let hung = result(&r, "split.batch-of-requests");
    assert_eq!(hung.outcome, Outcome::Timeout, "{hung:?}");
    assert_eq!(hung.severity, Severity::High);
    assert!(hung.reason.as_deref().unwrap().contains("per-call budget"));
    let ids: Vec<&str> = hung.failures[0]
        .requirements
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids, ["LIVE-DEV-01"], "{hung:?}");
    assert_eq!(result(&r, "status.initial-zero").outcome, Outcome::Pass);
    assert_eq!(made, 2, "one new instance after the hung one");
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn a_case_over_its_budget_times_out_even_when_every_call_returns() {
    let budget = Budget {
        case: Duration::from_millis(400),
        call: Duration::from_secs(10),
    };
    let (r, made) = run(Misbehave::Crawl, budget);
    let slow = result(&r, "split.batch-of-requests");
    assert_eq!(slow.outcome, Outcome::Timeout, "{slow:?}");
    // Stopped by the interpreter at a step boundary or by run_suite, whichever comes first.
    assert!(
        slow.reason.as_deref().unwrap().contains("budget"),
        "{slow:?}"
    );
    assert_eq!(result(&r, "status.initial-zero").outcome, Outcome::Pass);
    assert_eq!(made, 2);
}

#[test]
fn a_target_that_panics_fails_high_with_the_message_and_the_run_continues() {
    let (r, made) = run(Misbehave::PanicInNotify, Budget::default());
    let p = result(&r, "split.batch-of-requests");
    assert_eq!(p.outcome, Outcome::Fail, "{p:?}");
    assert_eq!(p.severity, Severity::High);
    let f = &p.failures[0];
    assert!(
        f.observed.contains("device model bug: queue 0 exploded"),
        "{f:?}"
    );
    assert!(f.step.is_some(), "the failing step is named: {f:?}");
    assert_eq!(result(&r, "status.initial-zero").outcome, Outcome::Pass);
    assert_eq!(made, 2, "the panicked instance is replaced");
}

#[test]
fn a_factory_that_cannot_build_a_target_gives_one_error() {
    let suite = Suite::load_default().unwrap();
    let r = run_suite(
        &suite,
        || -> Result<ReferenceTarget, TargetError> {
            Err(TargetError::Unavailable("no /dev/kvm".into()))
        },
        &Options::default(),
    );
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].outcome, Outcome::Error);
    assert!(r.results[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("no /dev/kvm"));
    assert_eq!(r.exit_code(false), 2);
}

#[test]
fn a_factory_that_panics_later_gives_errors_not_a_crash() {
    let suite = Suite::load_default().unwrap();
    let mut n = 0;
    let factory = move || {
        n += 1;
        if n > 1 {
            panic!("factory broke");
        }
        Ok(Bad {
            inner: ReferenceTarget::new(DeviceKind::Entropy, TransportVersion::Modern, None)?,
            how: Misbehave::PanicInNotify,
            armed: true,
            notified: false,
        })
    };
    let opts = Options {
        only: CASES.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    };
    let r = run_suite(&suite, factory, &opts);
    assert_eq!(result(&r, "split.batch-of-requests").outcome, Outcome::Fail);
    let after = result(&r, "status.initial-zero");
    assert_eq!(after.outcome, Outcome::Error);
    assert!(
        after.reason.as_deref().unwrap().contains("factory broke"),
        "{after:?}"
    );
}

#[test]
fn panics_on_a_device_thread_are_reported_by_thread_panics() {
    let mut watch = ThreadPanics::new(["mydev-io"]);
    let h = std::thread::Builder::new()
        .name("mydev-io-0".into())
        .spawn(|| panic!("io thread bug"))
        .unwrap();
    assert!(h.join().is_err());
    let other = std::thread::Builder::new()
        .name("unrelated".into())
        .spawn(|| panic!("not ours"))
        .unwrap();
    assert!(other.join().is_err());
    match watch.check() {
        Err(TargetError::Crashed(m)) => {
            assert!(
                m.contains("mydev-io-0") && m.contains("io thread bug"),
                "{m}"
            )
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert_eq!(watch.check(), Ok(()), "each panic is reported once");
}

#[test]
fn the_replay_command_is_the_library_users_template() {
    let suite = Suite::load_default().unwrap();
    let opts = Options {
        only: vec!["mmio.identity".into()],
        replay: Some(
            "VIRTIO_CONFORM_ONLY='{case}' cargo test --test gate # {target} v{version}".into(),
        ),
        ..Options::default()
    };
    let r = run_suite(
        &suite,
        || ReferenceTarget::new(DeviceKind::Block, TransportVersion::Modern, None),
        &opts,
    );
    assert_eq!(
        r.results[0].replay,
        "VIRTIO_CONFORM_ONLY='mmio.identity' cargo test --test gate # reference v2"
    );
    let info = r.target.clone();
    let _ = info;
    let cli = Options::default();
    assert!(cli.replay.is_none());
    let t = TargetInfo {
        name: "qemu".into(),
        device: "block".into(),
        version: 1,
        implementation: String::new(),
    };
    assert_eq!(
        replay_command(virtio_conform::suite::CLI_REPLAY, &t, "x.y"),
        "virtio-conform run --target qemu --device block --version 1 --only 'x.y'"
    );
    assert_eq!(
        replay_command("my-cli run", &t, "x.y"),
        "my-cli run --only 'x.y'"
    );
}

#[test]
fn a_case_over_the_run_suite_budget_cites_liveness() {
    // Case budget 200 ms, call budget 2 s: run_suite gives up on the case at 200 ms + 500 ms,
    // while the target is still inside one 1.5 s call (not yet a stuck call).
    let budget = Budget {
        case: Duration::from_millis(200),
        call: Duration::from_secs(2),
    };
    let (r, made) = run(Misbehave::SleepInNotify, budget);
    let slow = result(&r, "split.batch-of-requests");
    assert_eq!(slow.outcome, Outcome::Timeout, "{slow:?}");
    assert_eq!(slow.severity, Severity::High);
    assert!(
        slow.reason.as_deref().unwrap().contains("per-case budget"),
        "{slow:?}"
    );
    let f = &slow.failures[0];
    assert_eq!(f.op, "run_suite budget");
    let ids: Vec<&str> = f.requirements.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["LIVE-DEV-01"], "{slow:?}");
    assert_eq!(result(&r, "status.initial-zero").outcome, Outcome::Pass);
    assert_eq!(made, 2);
}
