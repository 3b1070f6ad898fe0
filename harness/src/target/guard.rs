//! Panic guards: a panic inside a target becomes a verdict, never a dead test process.
//!
//! [`run_suite`](crate::suite::run_suite) wraps every target in [`Guarded`], so a panic inside
//! any [`Target`] method is graded `fail` (severity high) with the panic message. Devices that
//! do their work on threads of their own (a VMM's I/O threads, event loops) panic where no
//! caller sees it; an adapter watches those threads with [`ThreadPanics`] and reports what it
//! saw as [`TargetError::Crashed`] from its next call.

use super::{Capabilities, IrqEvent, Target, TargetError, TargetInfo};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use virtio_reference_device::MemoryAccess;

/// The text of a panic payload (`&str` or `String`; anything else reads "panic").
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs `f`, turning a panic into [`TargetError::Crashed`] carrying the panic message.
pub fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, TargetError> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|p| TargetError::Crashed(format!("panicked: {}", panic_message(p.as_ref()))))
}

/// A target behind a panic guard and a call counter.
///
/// Every call is run under [`guarded`]; after a panic the instance is considered broken
/// ([`poisoned`](Guarded::poisoned)) and every later call answers `Crashed` without touching
/// it. The counter (shared through [`Guarded::heartbeat`]) is odd while a call is in progress
/// and even between calls, so a watchdog on another thread can tell a call that does not
/// return from a case that is merely long.
pub struct Guarded<T> {
    inner: T,
    panic: Option<String>,
    beat: Arc<AtomicU64>,
}

impl<T: Target> Guarded<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Guarded {
            inner,
            panic: None,
            beat: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The call counter: odd while a call is in progress.
    pub fn heartbeat(&self) -> Arc<AtomicU64> {
        self.beat.clone()
    }

    /// The message of the panic that broke this instance, if one did.
    pub fn poisoned(&self) -> Option<&str> {
        self.panic.as_deref()
    }

    /// The wrapped target.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut T) -> Result<R, TargetError>,
    ) -> Result<R, TargetError> {
        if let Some(p) = &self.panic {
            return Err(TargetError::Crashed(format!("panicked earlier: {p}")));
        }
        self.beat.fetch_add(1, Ordering::Relaxed);
        let inner = &mut self.inner;
        let r = guarded(|| f(inner));
        self.beat.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(r) => r,
            Err(TargetError::Crashed(m)) => {
                self.panic = Some(m.clone());
                Err(TargetError::Crashed(m))
            }
            Err(e) => Err(e),
        }
    }

    fn call_infallible<R: Default>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        self.call(|t| Ok(f(t))).unwrap_or_default()
    }
}

impl<T: Target> Target for Guarded<T> {
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
        self.call(|t| t.read(offset, data))
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.call(|t| t.write(offset, data))
    }
    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.call(|t| t.mem_write(gpa, data))
    }
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.call(|t| t.mem_read(gpa, buf))
    }
    fn fresh(&mut self) -> Result<(), TargetError> {
        self.call(|t| t.fresh())
    }
    fn request_features(&mut self, bits: u64) -> Result<(), TargetError> {
        self.call(|t| t.request_features(bits))
    }
    fn notify(&mut self, value: u32) -> Result<(), TargetError> {
        self.call(|t| t.notify(value))
    }
    fn settle(&mut self) -> Result<(), TargetError> {
        self.call(|t| t.settle())
    }
    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        self.call_infallible(|t| t.take_interrupts())
    }
    fn take_accesses(&mut self) -> Option<Vec<MemoryAccess>> {
        self.call_infallible(|t| t.take_accesses())
    }
    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.call(|t| t.config_change(offset, data))
    }
    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<(), TargetError> {
        self.call(|t| t.host_send(port, data))
    }
    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        self.call(|t| t.host_take(port))
    }
    fn host_op(&mut self, op: virtio_reference_device::HostOp) -> Result<(), TargetError> {
        self.call(|t| t.host_op(op))
    }
    fn host_conn(&mut self, port: u32) -> Result<virtio_reference_device::HostConn, TargetError> {
        self.call(|t| t.host_conn(port))
    }
    fn synchronous(&self) -> bool {
        self.inner.synchronous()
    }
    fn bulk_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.call(|t| t.bulk_read(gpa, buf))
    }
    fn bulk_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.call(|t| t.bulk_write(gpa, data))
    }
    fn bulk_cheap(&self) -> bool {
        self.inner.bulk_cheap()
    }
    fn flush(&mut self) -> Result<(), TargetError> {
        self.call(|t| t.flush())
    }
    fn diagnostics(&mut self) -> Option<String> {
        match &self.panic {
            Some(_) => None,
            None => guarded(|| self.inner.diagnostics()).ok().flatten(),
        }
    }
}

/// One panic seen on a watched thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPanic {
    /// The thread's name (`<unnamed>` when it has none).
    pub thread: String,
    /// The panic message, with its source location when known.
    pub message: String,
}

type PanicLog = Mutex<Vec<ThreadPanic>>;

fn panic_log() -> &'static PanicLog {
    static LOG: OnceLock<PanicLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current()
                .name()
                .unwrap_or("<unnamed>")
                .to_string();
            let mut message = panic_message(info.payload());
            if let Some(l) = info.location() {
                message.push_str(&format!(" at {}:{}", l.file(), l.line()));
            }
            if let Some(log) = LOG.get() {
                if let Ok(mut v) = log.lock() {
                    v.push(ThreadPanic { thread, message });
                }
            }
            previous(info);
        }));
        Mutex::new(Vec::new())
    })
}

/// Watches the threads whose names start with one of a set of prefixes for panics.
///
/// Creating the first watcher installs a process-wide panic hook that records every panic
/// (and still calls the hook that was installed before). [`take`](ThreadPanics::take) returns
/// the panics on matching threads since the watcher was made or last asked;
/// [`check`](ThreadPanics::check) turns them into [`TargetError::Crashed`] for an adapter to
/// return from its next call.
pub struct ThreadPanics {
    prefixes: Vec<String>,
    seen: usize,
}

impl ThreadPanics {
    /// Watches threads whose names start with any of `prefixes` (for example the VMM's
    /// I/O thread names).
    pub fn new<S: Into<String>>(prefixes: impl IntoIterator<Item = S>) -> Self {
        let seen = panic_log().lock().map(|v| v.len()).unwrap_or(0);
        ThreadPanics {
            prefixes: prefixes.into_iter().map(Into::into).collect(),
            seen,
        }
    }

    /// Panics on watched threads since the last call.
    pub fn take(&mut self) -> Vec<ThreadPanic> {
        let Ok(log) = panic_log().lock() else {
            return Vec::new();
        };
        let new = log[self.seen.min(log.len())..]
            .iter()
            .filter(|p| {
                self.prefixes
                    .iter()
                    .any(|x| p.thread.starts_with(x.as_str()))
            })
            .cloned()
            .collect();
        self.seen = log.len();
        new
    }

    /// `Err(Crashed)` naming the first panic on a watched thread since the last call.
    pub fn check(&mut self) -> Result<(), TargetError> {
        match self.take().into_iter().next() {
            Some(p) => Err(TargetError::Crashed(format!(
                "thread `{}` panicked: {}",
                p.thread, p.message
            ))),
            None => Ok(()),
        }
    }
}
