//! Replays a trace of a real driver against any target (`virtio-conform trace replay`).
//!
//! The register accesses run in the traced order. Each read falls in one of three classes:
//!
//! - values the specification mandates are graded like a case's checks: MagicValue
//!   (§4.2.2.1), Version, DeviceID (§5.2.1, §5.4.1), Status reading back what the driver wrote
//!   (§4.2.2) including FEATURES_OK (§2.2.2) and 0 after a reset (§2.4.1), QueueReady /
//!   QueuePFN reading back what was written (0 after a reset, §4.2.2.1, §4.2.4), InterruptStatus
//!   bits (§4.2.2.1, §2.7.7.2);
//! - values the device chooses (VendorID, offered feature bits beyond the ones the traced
//!   driver needs, QueueNumMax, configuration fields) are compared with the trace as
//!   `informational` differences;
//! - values the driver acts on are substituted into its later writes: the features it
//!   accepts are the traced accepted features that the target offers, QueueNum is the
//!   smaller of the traced one and the target's QueueNumMax, InterruptACK acknowledges the
//!   InterruptStatus the target showed, ring addresses point at rings laid out in the
//!   target's RAM.
//!
//! Where the real driver would take its error path (a wrong MagicValue, a modern device
//! without VIRTIO_F_VERSION_1, FEATURES_OK refused, QueueNumMax 0, a queue already in use,
//! a request that completes with an error status) the replay of that phase stops with the
//! verdict of what the device did, and later phases are `skipped`.
//!
//! Ring memory is not in a trace. The replay lays it out as Linux 6.1 does
//! (`drivers/virtio/virtio_ring.c`, `vring_init`: descriptor table, then the available ring,
//! then the used ring aligned to the MMIO transport's 4096-byte alignment; the whole ring
//! zeroed), at `RING_BASE + queue * RING_STRIDE` of the target's RAM. Every QueueNotify in the
//! trace first makes one request available, shaped as the traced driver builds it: virtio-rng
//! posts one 64-byte device-writable buffer (`drivers/char/hw_random/virtio-rng.c`,
//! `request_entropy`); virtio-blk posts a 16-byte request header, the data and a 1-byte status
//! (`drivers/block/virtio_blk.c`), through one indirect table when VIRTIO_F_INDIRECT_DESC is
//! negotiated (`virtqueue_add_split`: more than one buffer and indirect enabled). Descriptors
//! come from Linux's free list (chains return to its head), and with VIRTIO_F_EVENT_IDX the
//! driver writes used_event after each completion as `virtqueue_get_buf` does. The block
//! requests follow the capturing guest's script (`scripts/capture-linux-trace.sh`): the
//! partition scan reads the first page; in the `io` phase the guest reads sectors 0-3, reads
//! the page holding sector 8, writes it back and flushes. Each traced interrupt (line going
//! to 1) becomes a wait for the outstanding requests, whose completions are checked. The
//! rings and buffers are registered with the memory oracles (the access log of targets that
//! keep one, and the canary pattern elsewhere), so the device's legitimate accesses raise
//! nothing and every other one is a `critical` failure.

use super::format::{Event, Trace};
use crate::catalog::{Catalog, Level};
use crate::diff::Profile;
use crate::outcome::{Outcome, Severity};
use crate::report::{cite, failures_out, CaseResult};
use crate::runner::canary::{case_seed, Canary, Coverage};
use crate::runner::{grade_failures, Failure, LIVENESS};
use crate::target::layout::{BUF_BASE, BUF_END, MIN_RAM_SIZE, RING_BASE, RING_STRIDE};
use crate::target::{DeviceKind, Target, TargetError, POLL_INTERVAL, SENTINEL, USED_WAIT};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use virtio_reference_device::regs::*;
use virtio_reference_device::AccessKind;

/// Bytes of the buffer virtio-rng posts per request (`SMP_CACHE_BYTES` on x86-64).
pub const ENTROPY_BUF: u32 = 64;
/// Bytes of a Linux page, the unit of a block request's data here.
const PAGE: u32 = 4096;
/// Alignment of the used ring of a Linux virtio-mmio queue (`VIRTIO_MMIO_VRING_ALIGN`).
const MMIO_VRING_ALIGN: u64 = 4096;
/// Block request types (§5.2.6).
const BLK_T_IN: u32 = 0;
const BLK_T_OUT: u32 = 1;
const BLK_T_FLUSH: u32 = 4;

fn bit(b: u32) -> u64 {
    1u64 << b
}

/// The profile of the traced device, from what the driver read and wrote: Version, DeviceID,
/// VendorID, the features the driver accepted (as offered features; see below), QueueNumMax of each queue read, and the configuration bytes
/// read (bytes never read are 0). [`crate::diff::mirror_with`] turns it into a reference
/// device configured like the traced one.
pub fn traced_profile(trace: &Trace) -> Profile {
    let mut device_id = 0;
    let mut vendor_id = 0;
    let mut pages = [0u32; 2];
    let mut sel = 0u32;
    let mut dsel = 0u32;
    let mut accepted = [0u32; 2];
    let mut qsel = 0u32;
    let mut qmax: BTreeMap<u32, u16> = BTreeMap::new();
    let mut config = vec![0u8; crate::diff::CONFIG_BYTES as usize];
    for l in &trace.events {
        match l.event {
            Event::Write {
                offset: DEVICE_FEATURES_SEL,
                value,
                ..
            } => sel = value as u32,
            Event::Write {
                offset: DRIVER_FEATURES_SEL,
                value,
                ..
            } => dsel = value as u32,
            Event::Write {
                offset: DRIVER_FEATURES,
                value,
                ..
            } if dsel < 2 => accepted[dsel as usize] = value as u32,
            Event::Write {
                offset: QUEUE_SEL,
                value,
                ..
            } => qsel = value as u32,
            Event::Read {
                offset,
                width,
                value,
            } => match offset {
                DEVICE_ID => device_id = value as u32,
                VENDOR_ID => vendor_id = value as u32,
                DEVICE_FEATURES if sel < 2 => pages[sel as usize] = value as u32,
                QUEUE_NUM_MAX if value > 0 => {
                    qmax.insert(qsel, value.min(32768) as u16);
                }
                o if o >= CONFIG => {
                    let at = (o - CONFIG) as usize;
                    for i in 0..width as usize {
                        if let Some(b) = config.get_mut(at + i) {
                            *b = (value >> (8 * i)) as u8;
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    // Queues up to the first one never read (discovery's convention: 0.. contiguous).
    let queue_num_max: Vec<u16> = (0..).map_while(|q| qmax.get(&q).copied()).collect();
    // The offered features are the ones the traced driver accepted, where it accepted any:
    // every committed trace shows DeviceFeatures page 0 as 0x7fffffff, which cannot be what
    // Linux saw (it accepts VIRTIO_BLK_F_RO, SIZE_MAX and MQ when offered, and did not).
    let offered = if accepted != [0, 0] { accepted } else { pages };
    Profile {
        version: trace.header.transport_version,
        device_id,
        vendor_id,
        features: offered[0] as u64 | (offered[1] as u64) << 32,
        feature_pages: vec![offered[0], offered[1], 0, 0],
        queue_num_max,
        config,
        config_after_features_ok: false,
    }
}

/// Why the replay of a phase ended early.
enum Halt {
    /// The real driver would take its error path here; the reason.
    Driver(String),
    /// The target failed.
    Target(TargetError),
}

impl From<TargetError> for Halt {
    fn from(e: TargetError) -> Self {
        Halt::Target(e)
    }
}

type R<T = ()> = Result<T, Halt>;

/// What kind of guest memory an area holds, for the access-log oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    /// Descriptor table or indirect table: the device reads it.
    Table,
    /// Available ring: the device reads it.
    Avail,
    /// Used ring: the device writes (and may read) it.
    Used,
    /// Device-readable buffer.
    Readable,
    /// Device-writable buffer.
    Writable,
}

/// One buffer of a request: bytes, device-writable, contents.
type Buffer = (u32, bool, Vec<u8>);

/// One request the replay made available.
#[derive(Debug, Clone)]
struct Request {
    head: u16,
    /// Ring descriptors of the chain (returned to the free list on completion).
    descs: Vec<u16>,
    /// Device-writable buffers (guest physical address, bytes).
    writable: Vec<(u64, u32)>,
    /// Block: (type, sector, guest physical address of the status byte).
    blk: Option<(u32, u64, u64)>,
}

/// Driver-side state of one queue.
#[derive(Debug, Clone, Default)]
struct Queue {
    /// QueueNumMax the target showed.
    max: u32,
    /// Size in use.
    size: u16,
    /// QueueReady as last written (version 2).
    ready: u32,
    /// QueuePFN as last written (version 1).
    pfn: u32,
    /// Legacy used-ring alignment (QueueAlign).
    align: u64,
    desc: u64,
    avail: u64,
    used: u64,
    /// The rings are laid out and registered.
    live: bool,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
    outstanding: Vec<Request>,
}

/// Replays `trace` on `t`. Returns one result per phase of the trace (`trace.<name>.<phase>`,
/// in order), each graded like a case; `replay` is the command line recorded in each.
///
/// Errors when the target's transport version or device type is not the trace's (nothing
/// is replayed then).
pub fn replay(
    trace: &Trace,
    t: &mut dyn Target,
    catalog: &Catalog,
    replay: &str,
) -> Result<Vec<CaseResult>, String> {
    let device: DeviceKind = trace.header.device.parse()?;
    let info = t.info();
    if info.version != trace.header.transport_version || info.device != device.name() {
        return Err(format!(
            "{}: the trace is of a {} device over transport version {}; the target is {} version {}",
            trace.file,
            device.name(),
            trace.header.transport_version,
            info.device,
            info.version
        ));
    }
    let mut r = Replayer::new(trace, t, catalog, device);
    Ok(r.run(replay))
}

struct Replayer<'a> {
    trace: &'a Trace,
    t: &'a mut dyn Target,
    catalog: &'a Catalog,
    device: DeviceKind,
    legacy: bool,
    ram: u64,
    failures: Vec<Failure>,
    checked: Vec<String>,
    line: usize,
    op: &'static str,
    // Driver state.
    dev_sel: u32,
    drv_sel: u32,
    queue_sel: u32,
    offered: [Option<u32>; 2],
    accepted: u64,
    status: u32,
    features_ok_checked: bool,
    queues: BTreeMap<u32, Queue>,
    isr: u32,
    unacked_completion: bool,
    config_seen: BTreeMap<u64, u8>,
    generation: Option<u32>,
    requests: usize,
    // Memory.
    alloc: u64,
    areas: Vec<(u64, u64, Area)>,
    canary: Option<Canary>,
    memory_log: bool,
    /// The traced device's profile.
    profile: Profile,
}

impl<'a> Replayer<'a> {
    fn new(
        trace: &'a Trace,
        t: &'a mut dyn Target,
        catalog: &'a Catalog,
        device: DeviceKind,
    ) -> Self {
        let ram = t.ram_size();
        let memory_log = t.capabilities().memory_log;
        Replayer {
            trace,
            t,
            catalog,
            device,
            legacy: trace.header.transport_version == 1,
            ram,
            failures: Vec::new(),
            checked: Vec::new(),
            line: 0,
            op: "setup",
            dev_sel: 0,
            drv_sel: 0,
            queue_sel: 0,
            offered: [None; 2],
            accepted: 0,
            status: 0,
            features_ok_checked: false,
            queues: BTreeMap::new(),
            isr: 0,
            unacked_completion: false,
            config_seen: BTreeMap::new(),
            generation: None,
            requests: 0,
            alloc: BUF_BASE,
            areas: Vec::new(),
            canary: None,
            memory_log,
            profile: traced_profile(trace),
        }
    }

    fn run(&mut self, replay: &str) -> Vec<CaseResult> {
        // Split the events into phases (events before the first marker form `start`).
        let mut phases: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, l) in self.trace.events.iter().enumerate() {
            match &l.event {
                Event::Phase { name } => phases.push((name.clone(), Vec::new())),
                _ => {
                    if phases.is_empty() {
                        phases.push(("start".into(), Vec::new()));
                    }
                    phases.last_mut().expect("pushed").1.push(i);
                }
            }
        }
        let mut out = Vec::new();
        let mut stopped: Option<String> = None;
        let started = self.start();
        for (pi, (name, events)) in phases.iter().enumerate() {
            let t0 = Instant::now();
            let id = format!("trace.{}.{}", self.trace.header.trace, name);
            let title = format!(
                "`{name}` phase of {} replayed ({} events)",
                self.trace.header.trace,
                events.len()
            );
            if let Some(why) = &stopped {
                out.push(CaseResult {
                    case: id,
                    title,
                    outcome: Outcome::Skipped,
                    severity: Severity::None,
                    requirements: Vec::new(),
                    failures: Vec::new(),
                    reason: Some(why.clone()),
                    diagnostics: None,
                    replay: replay.to_string(),
                    duration_ms: 0.0,
                });
                continue;
            }
            self.failures.clear();
            self.checked.clear();
            let mut result = match (pi, &started) {
                (0, Err(e)) => Err(Halt::Target(e.clone())),
                _ => Ok(()),
            };
            if result.is_ok() {
                result = (|| -> R {
                    for &i in events {
                        let l = &self.trace.events[i];
                        self.line = l.line;
                        self.event(&l.event.clone())?;
                    }
                    self.t.flush()?;
                    self.memory_oracles()?;
                    Ok(())
                })();
            }
            let (mut outcome, mut severity) = grade_failures(&self.failures);
            let mut reason = None;
            let mut diagnostics = None;
            match result {
                Ok(()) => {}
                Err(Halt::Driver(why)) => {
                    let why = format!("{}:{}: {why}", self.trace.file, self.line);
                    stopped = Some(format!("not replayed: the driver stopped at {why}"));
                    reason = Some(why);
                }
                Err(Halt::Target(e)) => {
                    diagnostics = self.t.diagnostics();
                    let what = match &e {
                        TargetError::Crashed(_) => {
                            Some((Outcome::Fail, "the target must not crash"))
                        }
                        TargetError::Hung(_) => {
                            Some((Outcome::Timeout, "the target must answer within its budget"))
                        }
                        _ => None,
                    };
                    match what {
                        Some((o, expected)) => {
                            self.failures.push(Failure {
                                step: None,
                                line: Some(self.line),
                                op: self.op.to_string(),
                                requirements: vec![LIVENESS.to_string()],
                                level: Level::Must,
                                severity: Severity::High,
                                expected: expected.into(),
                                observed: e.to_string(),
                            });
                            outcome = o;
                            severity = Severity::High;
                        }
                        None => {
                            outcome = Outcome::Error;
                            severity = Severity::None;
                        }
                    }
                    let why = format!("{}:{}: {e}", self.trace.file, self.line);
                    stopped = Some(format!("not replayed: the target failed at {why}"));
                    reason = Some(why);
                }
            }
            let mut ids: Vec<String> = std::mem::take(&mut self.checked);
            ids.extend(self.failures.iter().flat_map(|f| f.requirements.clone()));
            ids.sort();
            ids.dedup();
            ids.retain(|i| self.catalog.requirements.contains_key(i));
            for f in &mut self.failures {
                f.requirements
                    .retain(|i| self.catalog.requirements.contains_key(i));
            }
            out.push(CaseResult {
                case: id,
                title,
                outcome,
                severity,
                requirements: cite(self.catalog, &ids),
                failures: failures_out(self.catalog, &self.failures),
                reason,
                diagnostics,
                replay: replay.to_string(),
                duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
            });
        }
        out
    }

    /// Fresh target, canary pattern over its RAM.
    fn start(&mut self) -> Result<(), TargetError> {
        self.t.fresh()?;
        self.ram = self.t.ram_size();
        if self.ram < MIN_RAM_SIZE {
            return Err(TargetError::Unavailable(format!(
                "guest RAM of {} bytes is below the {MIN_RAM_SIZE} bytes the replay needs",
                self.ram
            )));
        }
        let _ = self.t.take_accesses();
        if std::env::var_os("VIRTIO_CONFORM_CANARY").is_some_and(|v| v == "off") {
            return Ok(());
        }
        let coverage = if self.t.bulk_cheap() && !self.memory_log {
            Coverage::Full
        } else {
            Coverage::Sampled
        };
        let hot = [
            (RING_BASE, RING_BASE + RING_STRIDE),
            (BUF_BASE, BUF_BASE + RING_STRIDE),
        ];
        let mut c = Canary::new(
            case_seed(&self.trace.header.trace),
            self.ram,
            coverage,
            &hot,
        );
        c.fill(&mut *self.t)?;
        self.canary = Some(c);
        Ok(())
    }

    /// Records a check that did not hold.
    fn fail(
        &mut self,
        ids: &[&str],
        level: Level,
        severity: Severity,
        expected: impl Into<String>,
        observed: impl Into<String>,
    ) {
        self.failures.push(Failure {
            step: None,
            line: Some(self.line),
            op: self.op.to_string(),
            requirements: ids.iter().map(|s| s.to_string()).collect(),
            level,
            severity,
            expected: expected.into(),
            observed: observed.into(),
        });
    }

    /// Notes requirement ids a check covered (whether or not it held).
    fn covers(&mut self, ids: &[&str]) {
        self.checked.extend(ids.iter().map(|s| s.to_string()));
    }

    /// A device-chosen value that differs from the traced device's.
    fn differs(&mut self, ids: &[&str], what: &str, traced: u64, got: u64) {
        if traced != got {
            self.fail(
                ids,
                Level::May,
                Severity::None,
                format!("{what} {traced:#x} (the traced device's; the device chooses it)"),
                format!("{what} {got:#x}"),
            );
        }
    }

    fn read(&mut self, offset: u64, width: u8) -> R<u64> {
        let mut b = [SENTINEL; 4];
        self.t.read(offset, &mut b[..width as usize])?;
        let mut v = [0u8; 8];
        v[..width as usize].copy_from_slice(&b[..width as usize]);
        Ok(u64::from_le_bytes(v))
    }

    fn write(&mut self, offset: u64, width: u8, value: u64) -> R {
        self.t
            .write(offset, &value.to_le_bytes()[..width as usize])?;
        if let Some(c) = self.canary.as_mut() {
            c.mark_dirty();
        }
        Ok(())
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> R {
        self.t.mem_write(gpa, data)?;
        if let Some(c) = self.canary.as_mut() {
            c.driver_wrote(&mut *self.t, gpa, data)?;
        }
        Ok(())
    }

    fn mem_u16(&mut self, gpa: u64) -> R<u16> {
        let mut b = [0u8; 2];
        self.t.mem_read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn mem_u32(&mut self, gpa: u64) -> R<u32> {
        let mut b = [0u8; 4];
        self.t.mem_read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn allow(&mut self, gpa: u64, len: u64, area: Area) {
        if matches!(area, Area::Used | Area::Writable) {
            if let Some(c) = self.canary.as_mut() {
                c.device_may_write(gpa, len);
            }
        }
        self.areas.push((gpa, gpa + len, area));
    }

    /// Guest memory for a buffer of `len` bytes (16-byte aligned, pages page-aligned).
    fn alloc(&mut self, len: u32) -> u64 {
        let align = if len >= PAGE { PAGE as u64 } else { 16 };
        let mut a = self.alloc.div_ceil(align) * align;
        if a + len as u64 > BUF_END {
            a = BUF_BASE;
        }
        self.alloc = a + len as u64;
        a
    }

    fn event(&mut self, e: &Event) -> R {
        match *e {
            Event::Phase { .. } => Ok(()),
            Event::Irq { level } => {
                self.op = "wait";
                if level == 1 {
                    self.wait_completions()?;
                }
                Ok(())
            }
            Event::Read {
                offset,
                width,
                value,
            } => {
                self.op = "read";
                let got = self.read(offset, width)?;
                self.on_read(offset, width, value, got)
            }
            Event::Write {
                offset,
                width,
                value,
            } => {
                self.op = "write";
                self.on_write(offset, width, value)?;
                self.memory_oracles()
            }
        }
    }

    fn on_read(&mut self, offset: u64, width: u8, traced: u64, got: u64) -> R {
        match offset {
            MAGIC => {
                self.covers(&["MMIO-DEV-01"]);
                if got != MAGIC_VALUE as u64 {
                    self.fail(
                        &["MMIO-DEV-01"],
                        Level::Must,
                        Severity::Low,
                        format!("MagicValue {MAGIC_VALUE:#x}"),
                        format!("MagicValue {got:#x}"),
                    );
                    return Err(Halt::Driver(
                        "wrong MagicValue: virtio_mmio's probe fails (-ENODEV)".into(),
                    ));
                }
            }
            VERSION => {
                let id = if self.legacy {
                    "MMIO-LEG-01"
                } else {
                    "MMIO-DEV-02"
                };
                self.covers(&[id]);
                if got != self.trace.header.transport_version as u64 {
                    self.fail(
                        &[id],
                        Level::Must,
                        Severity::Low,
                        format!("Version {}", self.trace.header.transport_version),
                        format!("Version {got:#x}"),
                    );
                    return Err(Halt::Driver(format!(
                        "Version {got:#x}: virtio_mmio drives a different interface or none"
                    )));
                }
            }
            DEVICE_ID => {
                let id = match self.device {
                    DeviceKind::Block => "BLK-ID-01",
                    DeviceKind::Entropy => "ENT-ID-01",
                    _ => "MMIO-DEV-14",
                };
                self.covers(&[id]);
                if got != self.device.device_id() as u64 {
                    self.fail(
                        &[id],
                        Level::Must,
                        Severity::Low,
                        format!("DeviceID {}", self.device.device_id()),
                        format!("DeviceID {got:#x}"),
                    );
                    return Err(Halt::Driver(format!(
                        "DeviceID {got:#x}: the traced device driver does not bind"
                    )));
                }
            }
            VENDOR_ID => self.differs(&[], "VendorID", traced, got),
            DEVICE_FEATURES => {
                let sel = self.dev_sel;
                if sel < 2 {
                    self.offered[sel as usize] = Some(got as u32);
                    // Bits the traced driver needs are graded when it acts on them (VERSION_1
                    // in finalize_features); every other difference is the device's choice.
                    let needed = if self.legacy || sel != 1 {
                        0
                    } else {
                        1u64 << (VIRTIO_F_VERSION_1 - 32)
                    };
                    // The bits the traced driver accepted: a target without some of them
                    // makes the driver fall back (bits nobody accepted change nothing).
                    let used = self.profile.feature_pages[sel as usize] as u64 & !needed;
                    self.differs(
                        &[],
                        &format!(
                            "DeviceFeatures page {sel}, bits the traced driver accepted (mask {used:#x})"
                        ),
                        used,
                        got & used,
                    );
                }
            }
            QUEUE_NUM_MAX => {
                let q = self.queue_sel;
                let id = match self.device {
                    DeviceKind::Block => "BLK-DEV-02",
                    DeviceKind::Entropy => "ENT-DEV-02",
                    _ => "MMIO-REG-02",
                };
                self.covers(&[id, "MMIO-REG-02"]);
                self.queues.entry(q).or_default().max = got as u32;
                if got == 0 {
                    self.fail(
                        &[id, "MMIO-REG-02"],
                        Level::Must,
                        Severity::Low,
                        format!("queue {q} exists (QueueNumMax > 0)"),
                        "QueueNumMax 0".to_string(),
                    );
                    return Err(Halt::Driver(format!(
                        "QueueNumMax of queue {q} is 0: vm_setup_vq fails (-ENOENT)"
                    )));
                }
                self.differs(&["MMIO-REG-02"], "QueueNumMax", traced, got);
            }
            QUEUE_READY if !self.legacy => {
                let q = self.queue_sel;
                let want = self.queues.get(&q).map_or(0, |q| q.ready) as u64;
                self.covers(&["MMIO-REG-03", "MMIO-DEV-15"]);
                if got != want {
                    self.fail(
                        &["MMIO-REG-03", "MMIO-DEV-15", "MMIO-DEV-06"],
                        Level::Must,
                        Severity::Low,
                        format!("QueueReady of queue {q} reads {want} (the last value written; 0 after a reset)"),
                        format!("QueueReady {got:#x}"),
                    );
                    return Err(Halt::Driver(format!(
                        "QueueReady of queue {q} reads {got:#x}: the driver takes the queue for in use"
                    )));
                }
            }
            QUEUE_PFN if self.legacy => {
                let q = self.queue_sel;
                let want = self.queues.get(&q).map_or(0, |q| q.pfn) as u64;
                self.covers(&["MMIO-LEG-02", "MMIO-LEG-03"]);
                if got != want {
                    self.fail(
                        &["MMIO-LEG-02", "MMIO-LEG-03"],
                        Level::Must,
                        Severity::Low,
                        format!("QueuePFN of queue {q} reads {want:#x} (the last value written; 0 after a reset)"),
                        format!("QueuePFN {got:#x}"),
                    );
                    return Err(Halt::Driver(format!(
                        "QueuePFN of queue {q} reads {got:#x}: the driver takes the queue for in use"
                    )));
                }
            }
            INTERRUPT_STATUS => self.on_interrupt_status(got)?,
            STATUS => self.on_status(got)?,
            CONFIG_GENERATION if !self.legacy => {
                self.covers(&["MMIO-REG-07"]);
                match self.generation.take() {
                    Some(g) if g != got as u32 => self.fail(
                        &["MMIO-REG-07"],
                        Level::May,
                        Severity::None,
                        "ConfigGeneration unchanged around the configuration read (nothing changed)",
                        format!("ConfigGeneration {g:#x} then {got:#x}: Linux reads the fields again"),
                    ),
                    Some(_) => {}
                    None => self.generation = Some(got as u32),
                }
            }
            o if o >= CONFIG => {
                for i in 0..width as u64 {
                    self.config_seen
                        .insert(o - CONFIG + i, (got >> (8 * i)) as u8);
                }
                self.differs(
                    &[],
                    &format!("configuration field at {:#x} ({width} bytes)", o - CONFIG),
                    traced,
                    got,
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn on_status(&mut self, got: u64) -> R {
        let mut got = got as u32;
        let want = self.status;
        if want == 0 && got != 0 && !self.t.synchronous() {
            // A reset may take a while to finish (§2.4.2: the driver waits for 0).
            let until = Instant::now() + USED_WAIT;
            while got != 0 && Instant::now() < until {
                std::thread::sleep(POLL_INTERVAL);
                got = self.t.read32(STATUS)?;
            }
        }
        self.covers(&["MMIO-REG-04"]);
        if want == 0 {
            self.covers(&["RESET-DEV-01"]);
        }
        if got == want {
            if want & FEATURES_OK as u32 != 0 && !self.features_ok_checked {
                self.features_ok_checked = true;
                self.covers(&["FEAT-DEV-02a", "FEAT-DEV-02b"]);
            }
            return Ok(());
        }
        if want & FEATURES_OK as u32 != 0
            && !self.features_ok_checked
            && got == want & !(FEATURES_OK as u32)
        {
            self.covers(&["FEAT-DEV-02a"]);
            self.fail(
                &["FEAT-DEV-02a"],
                Level::Should,
                Severity::None,
                format!(
                    "FEATURES_OK kept for the features the driver accepted ({:#x}, all offered)",
                    self.accepted
                ),
                format!("Status {got:#x}"),
            );
            return Err(Halt::Driver(
                "FEATURES_OK refused: virtio_features_ok fails (\"device refuses features\")"
                    .into(),
            ));
        }
        let ids: &[&str] = if want == 0 {
            &["RESET-DEV-01", "MMIO-REG-04"]
        } else if got & DEVICE_NEEDS_RESET as u32 != 0 {
            // The device gave up during a sequence a real driver runs (§3.1: it must be
            // usable then); saying so with DEVICE_NEEDS_RESET is what §2.1.2 asks.
            &["INIT-DEV-01"]
        } else {
            &["MMIO-REG-04", "STATUS-DEV-05"]
        };
        self.fail(
            ids,
            Level::Must,
            Severity::Low,
            format!("Status {want:#x} (what the driver wrote)"),
            format!("Status {got:#x}"),
        );
        Err(Halt::Driver(format!(
            "Status reads {got:#x} after the driver wrote {want:#x}"
        )))
    }

    fn on_interrupt_status(&mut self, got: u64) -> R {
        let got = got as u32;
        self.isr = got;
        self.covers(&["MMIO-DEV-04"]);
        if got & !INT_USED_BUFFER != 0 {
            // No configuration change happens during a replay; undefined bits never.
            self.fail(
                &["MMIO-DEV-04"],
                Level::Must,
                Severity::Low,
                "InterruptStatus bit 0 at most (no configuration change occurred)",
                format!("InterruptStatus {got:#x}"),
            );
        }
        if self.unacked_completion {
            let ids: &[&str] = if self.accepted & bit(VIRTIO_F_EVENT_IDX) != 0 {
                &["VQ-DEV-12", "MMIO-DEV-03"]
            } else {
                &["VQ-DEV-10", "MMIO-DEV-03"]
            };
            self.covers(ids);
            if got & INT_USED_BUFFER == 0 {
                self.fail(
                    ids,
                    Level::Must,
                    Severity::Low,
                    "InterruptStatus bit 0 (the device used a buffer and the driver asked to be notified)",
                    format!("InterruptStatus {got:#x}"),
                );
                return Err(Halt::Driver(
                    "no used buffer notification: the driver waits for its request forever".into(),
                ));
            }
        }
        Ok(())
    }

    fn on_write(&mut self, offset: u64, width: u8, traced: u64) -> R {
        match offset {
            DEVICE_FEATURES_SEL => {
                self.dev_sel = traced as u32;
                self.write(offset, width, traced)
            }
            DRIVER_FEATURES_SEL => {
                if !self.legacy && self.offered.iter().all(|o| o.is_some()) {
                    self.covers(&["RSV-DEV-01"]);
                    let offered = self.offered_bits();
                    if offered & bit(VIRTIO_F_VERSION_1) == 0 {
                        self.fail(
                            &["RSV-DEV-01"],
                            Level::Must,
                            Severity::Low,
                            "VIRTIO_F_VERSION_1 offered by a version-2 device",
                            format!("DeviceFeatures pages 0-1 = {offered:#x}"),
                        );
                        return Err(Halt::Driver(
                            "no VIRTIO_F_VERSION_1 on a version-2 device: vm_finalize_features fails (-EINVAL)".into(),
                        ));
                    }
                }
                self.drv_sel = traced as u32;
                self.write(offset, width, traced)
            }
            DRIVER_FEATURES => {
                let sel = self.drv_sel;
                let offered = if sel < 2 {
                    self.offered[sel as usize].unwrap_or(0) as u64
                } else {
                    0
                };
                let v = traced & offered;
                if sel < 2 {
                    let shift = 32 * sel;
                    self.accepted = (self.accepted & !(0xffff_ffffu64 << shift)) | (v << shift);
                }
                self.write(offset, width, v)
            }
            STATUS => {
                self.status = traced as u32;
                if traced == 0 {
                    self.reset_state();
                }
                self.write(offset, width, traced)
            }
            QUEUE_SEL => {
                self.queue_sel = traced as u32;
                self.write(offset, width, traced)
            }
            QUEUE_NUM => {
                let qi = self.queue_sel;
                let q = self.queues.entry(qi).or_default();
                // Linux sizes the ring by QueueNumMax; a trace that never read it keeps its own.
                let max = if q.max == 0 { traced as u32 } else { q.max };
                let size = (traced as u32).min(max).clamp(1, 32768) as u16;
                q.size = size;
                self.layout(qi)?;
                self.write(offset, width, size as u64)
            }
            QUEUE_ALIGN => {
                let qi = self.queue_sel;
                self.queues.entry(qi).or_default().align = traced.max(1);
                self.write(offset, width, traced)
            }
            QUEUE_PFN => {
                let qi = self.queue_sel;
                if traced == 0 {
                    self.queues.entry(qi).or_default().pfn = 0;
                    return self.write(offset, width, 0);
                }
                // Linux allocates at a page boundary; the ring goes to the harness's area.
                self.layout(qi)?;
                let q = self.queues.get_mut(&qi).expect("laid out");
                let pfn = (q.desc / 4096) as u32;
                q.pfn = pfn;
                self.register_rings(qi);
                self.write(offset, width, pfn as u64)
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                let qi = self.queue_sel;
                let q = self.queues.entry(qi).or_default();
                let a = match offset {
                    QUEUE_DESC_LOW | QUEUE_DESC_HIGH => q.desc,
                    QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => q.avail,
                    _ => q.used,
                };
                let v = if offset & 4 == 0 {
                    a & 0xffff_ffff
                } else {
                    a >> 32
                };
                self.write(offset, width, v)
            }
            QUEUE_READY => {
                let qi = self.queue_sel;
                self.queues.entry(qi).or_default().ready = traced as u32;
                if traced == 1 {
                    self.register_rings(qi);
                }
                self.write(offset, width, traced)
            }
            QUEUE_NOTIFY => {
                let qi = (traced & 0xffff) as u32;
                self.post(qi)?;
                self.op = "notify";
                self.t.notify(traced as u32)?;
                if let Some(c) = self.canary.as_mut() {
                    c.mark_dirty();
                }
                Ok(())
            }
            INTERRUPT_ACK => {
                // The driver acknowledges what it read (vm_interrupt).
                let v = self.isr as u64;
                if v & INT_USED_BUFFER as u64 != 0 {
                    self.unacked_completion = false;
                }
                self.isr = 0;
                self.write(offset, width, v)
            }
            _ => self.write(offset, width, traced),
        }
    }

    fn offered_bits(&self) -> u64 {
        self.offered[0].unwrap_or(0) as u64 | (self.offered[1].unwrap_or(0) as u64) << 32
    }

    /// The driver reset the device: queues are off, nothing is outstanding.
    fn reset_state(&mut self) {
        for q in self.queues.values_mut() {
            q.ready = 0;
            q.pfn = 0;
            q.outstanding.clear();
        }
        self.isr = 0;
        self.unacked_completion = false;
        self.features_ok_checked = false;
        self.generation = None;
    }

    /// Lays out queue `qi`'s split ring of the chosen size at its place in the target's RAM,
    /// zeroed as Linux allocates it (`vring_alloc_queue` + `vring_init`).
    fn layout(&mut self, qi: u32) -> R {
        let legacy = self.legacy;
        let q = self.queues.entry(qi).or_default();
        if q.size == 0 {
            q.size = q.max.clamp(1, 32768) as u16;
        }
        let n = q.size as u64;
        let align = if legacy && q.align > 0 {
            q.align
        } else {
            MMIO_VRING_ALIGN
        };
        // Queues share the ring slots below the buffer area (`BUF_BASE`).
        let slots = (BUF_BASE - RING_BASE) / RING_STRIDE;
        let base = RING_BASE + (qi as u64 % slots) * RING_STRIDE;
        q.desc = base;
        q.avail = base + 16 * n;
        q.used = (q.avail + 6 + 2 * n).div_ceil(align) * align;
        q.avail_idx = 0;
        q.used_seen = 0;
        q.free = (0..q.size).collect();
        q.outstanding.clear();
        q.live = false;
        let total = q.used + 6 + 8 * n - base;
        if total > RING_STRIDE {
            return Err(Halt::Driver(format!(
                "a ring of {n} entries does not fit the {RING_STRIDE}-byte ring area"
            )));
        }
        self.mem_write(base, &vec![0u8; total as usize])
    }

    /// Registers queue `qi`'s rings with the memory oracles.
    fn register_rings(&mut self, qi: u32) {
        let Some(q) = self.queues.get_mut(&qi) else {
            return;
        };
        if q.live || q.size == 0 {
            return;
        }
        q.live = true;
        let (n, desc, avail, used) = (q.size as u64, q.desc, q.avail, q.used);
        self.allow(desc, 16 * n, Area::Table);
        self.allow(avail, 6 + 2 * n, Area::Avail);
        self.allow(used, 6 + 8 * n, Area::Used);
    }

    /// The buffers of the next request of the traced driver on queue `qi`: (bytes, device
    /// writable, contents) per buffer, and the block request's type and sector.
    fn next_request(&mut self) -> (Vec<Buffer>, Option<(u32, u64)>) {
        let k = self.requests;
        self.requests += 1;
        match self.device {
            DeviceKind::Block => {
                // Partition scan (first page), then the guest's script: read sectors 0-3,
                // read the page holding sector 8, write it back, flush; further requests
                // read the first page again.
                let (kind, sector, len): (u32, u64, u32) = match k {
                    1 => (BLK_T_IN, 0, PAGE),
                    2 => (BLK_T_IN, 8, PAGE),
                    3 => (BLK_T_OUT, 8, PAGE),
                    4 => (BLK_T_FLUSH, 0, 0),
                    _ => (BLK_T_IN, 0, PAGE),
                };
                let mut hdr = Vec::with_capacity(16);
                hdr.extend_from_slice(&kind.to_le_bytes());
                hdr.extend_from_slice(&0u32.to_le_bytes());
                hdr.extend_from_slice(&sector.to_le_bytes());
                let mut bufs = vec![(16, false, hdr)];
                if len > 0 {
                    let fill = if kind == BLK_T_OUT { 0x5a } else { SENTINEL };
                    bufs.push((len, kind == BLK_T_IN, vec![fill; len as usize]));
                }
                bufs.push((1, true, vec![0xff]));
                (bufs, Some((kind, sector)))
            }
            _ => (
                vec![(ENTROPY_BUF, true, vec![SENTINEL; ENTROPY_BUF as usize])],
                None,
            ),
        }
    }

    /// Makes one request of the traced driver available on queue `qi` (before its
    /// notification), as `virtqueue_add_split` does.
    fn post(&mut self, qi: u32) -> R {
        self.op = "post";
        let Some(q) = self.queues.get(&qi) else {
            return Ok(());
        };
        if !q.live || q.size == 0 {
            return Ok(());
        }
        let (bufs, blk) = self.next_request();
        if let (Some((kind, sector)), Some(cap)) = (blk, self.capacity()) {
            let sectors = bufs
                .iter()
                .filter(|b| b.0 >= 512)
                .map(|b| b.0 as u64 / 512)
                .sum::<u64>();
            if kind != BLK_T_FLUSH && sector + sectors > cap {
                return Err(Halt::Driver(format!(
                    "capacity {cap} sectors: the traced request (sector {sector}, {sectors} sectors) lies beyond it and the block layer never issues it"
                )));
            }
            if kind == BLK_T_OUT && self.accepted & bit(VIRTIO_BLK_F_RO) != 0 {
                return Err(Halt::Driver(
                    "the device is read-only (VIRTIO_BLK_F_RO): the guest's write fails in the block layer".into(),
                ));
            }
        }
        // Buffers in guest memory.
        let mut placed = Vec::new();
        for (len, w, data) in &bufs {
            let a = self.alloc(*len);
            self.mem_write(a, data)?;
            self.allow(
                a,
                *len as u64,
                if *w { Area::Writable } else { Area::Readable },
            );
            placed.push((a, *len, *w));
        }
        let writable: Vec<(u64, u32)> = placed.iter().filter(|p| p.2).map(|p| (p.0, p.1)).collect();
        let status = blk.map(|(kind, sector)| (kind, sector, placed.last().expect("status").0));
        let desc_bytes = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            d
        };
        let indirect = self.accepted & bit(VIRTIO_F_INDIRECT_DESC) != 0 && placed.len() > 1;
        let q = self.queues.get(&qi).expect("checked").clone();
        let need = if indirect { 1 } else { placed.len() };
        if q.free.len() < need {
            return Err(Halt::Driver(format!(
                "queue {qi} has {} free descriptors, the request needs {need}: the driver waits",
                q.free.len()
            )));
        }
        let descs: Vec<u16> = q.free[..need].to_vec();
        let after = q.free.get(need).copied().unwrap_or(0);
        if indirect {
            let mut table = Vec::new();
            for (i, &(a, len, w)) in placed.iter().enumerate() {
                let last = i + 1 == placed.len();
                let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT }
                    | if w { VIRTQ_DESC_F_WRITE } else { 0 };
                table.extend(desc_bytes(
                    a,
                    len,
                    flags,
                    if last { 0 } else { i as u16 + 1 },
                ));
            }
            let ta = self.alloc(table.len() as u32);
            self.mem_write(ta, &table)?;
            self.allow(ta, table.len() as u64, Area::Table);
            let d = desc_bytes(ta, table.len() as u32, VIRTQ_DESC_F_INDIRECT, after);
            self.mem_write(q.desc + 16 * descs[0] as u64, &d)?;
        } else {
            for (i, &(a, len, w)) in placed.iter().enumerate() {
                let last = i + 1 == placed.len();
                let next = if last { after } else { descs[i + 1] };
                let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT }
                    | if w { VIRTQ_DESC_F_WRITE } else { 0 };
                self.mem_write(
                    q.desc + 16 * descs[i] as u64,
                    &desc_bytes(a, len, flags, next),
                )?;
            }
        }
        let head = descs[0];
        let slot = q.avail + 4 + 2 * (q.avail_idx % q.size) as u64;
        self.mem_write(slot, &head.to_le_bytes())?;
        let idx = q.avail_idx.wrapping_add(1);
        self.mem_write(q.avail + 2, &idx.to_le_bytes())?;
        let qm = self.queues.get_mut(&qi).expect("checked");
        qm.free.drain(..need);
        qm.avail_idx = idx;
        qm.outstanding.push(Request {
            head,
            descs,
            writable,
            blk: status,
        });
        Ok(())
    }

    /// Block capacity in sectors, when the driver has read all of it.
    fn capacity(&self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..8 {
            v |= (*self.config_seen.get(&i)? as u64) << (8 * i);
        }
        Some(v)
    }

    /// A traced interrupt: waits until the device used every outstanding request (the real
    /// driver sleeps until then), and checks each completion.
    fn wait_completions(&mut self) -> R {
        let qs: Vec<u32> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.outstanding.is_empty())
            .map(|(&i, _)| i)
            .collect();
        for qi in qs {
            let until = Instant::now() + USED_WAIT;
            loop {
                let q = &self.queues[&qi];
                let (used, seen, waiting) = (q.used, q.used_seen, q.outstanding.len());
                let idx = self.mem_u16(used + 2)?;
                let new = idx.wrapping_sub(seen);
                for k in 0..new {
                    self.completion(qi, seen.wrapping_add(k))?;
                }
                if new as usize >= waiting || Instant::now() >= until {
                    break;
                }
                self.t.settle()?;
                if !self.t.synchronous() {
                    std::thread::sleep(POLL_INTERVAL.max(Duration::from_micros(200)));
                } else if new == 0 {
                    break;
                }
            }
            let left = self.queues[&qi].outstanding.len();
            if left > 0 {
                self.covers(&["INIT-DEV-01"]);
                self.fail(
                    &["INIT-DEV-01"],
                    Level::Must,
                    Severity::Low,
                    format!("the {left} request(s) made available on queue {qi} used (the traced device completed them and interrupted)"),
                    format!("still outstanding after {} ms", USED_WAIT.as_millis()),
                );
                return Err(Halt::Driver(
                    "the request never completes: the driver waits forever".into(),
                ));
            }
        }
        self.memory_oracles()
    }

    /// Checks the used element at used-ring position `pos` of queue `qi`.
    fn completion(&mut self, qi: u32, pos: u16) -> R {
        self.op = "used";
        let q = self.queues[&qi].clone();
        let elem = q.used + 4 + 8 * (pos % q.size) as u64;
        let id = self.mem_u32(elem)?;
        let len = self.mem_u32(elem + 4)?;
        self.covers(&["VQ-DEV-17", "VQ-DEV-15"]);
        let Some(at) = q.outstanding.iter().position(|r| r.head as u32 == id) else {
            self.fail(
                &["VQ-DEV-17"],
                Level::Must,
                Severity::Low,
                format!(
                    "a used element naming an outstanding head ({:?})",
                    q.outstanding.iter().map(|r| r.head).collect::<Vec<_>>()
                ),
                format!("used element {pos}: id {id}, len {len}"),
            );
            return Err(Halt::Driver(format!(
                "used id {id} is no outstanding request: Linux reports \"id {id} is not a head!\" and breaks the queue"
            )));
        };
        let qm = self.queues.get_mut(&qi).expect("present");
        let req = qm.outstanding.remove(at);
        qm.used_seen = pos.wrapping_add(1);
        let mut free = req.descs.clone();
        free.append(&mut qm.free);
        qm.free = free;
        let (avail, size, seen) = (qm.avail, qm.size, qm.used_seen);
        self.unacked_completion = true;
        if self.accepted & bit(VIRTIO_F_EVENT_IDX) != 0 {
            // virtqueue_get_buf: used_event = last_used_idx.
            self.mem_write(avail + 4 + 2 * size as u64, &seen.to_le_bytes())?;
        }
        let total: u64 = req.writable.iter().map(|w| w.1 as u64).sum();
        if len as u64 > total {
            self.fail(
                &["VQ-DEV-15"],
                Level::Must,
                Severity::Low,
                format!("used len at most the {total} writable bytes of the chain"),
                format!("len {len}"),
            );
        }
        match (self.device, req.blk) {
            (DeviceKind::Block, Some((kind, sector, status_gpa))) => {
                let mut s = [0u8; 1];
                self.t.mem_read(status_gpa, &mut s)?;
                self.covers(&["BLK-DEV-UNSUPP"]);
                match s[0] {
                    0 => {}
                    1 | 2 => {
                        self.fail(
                            &["BLK-DEV-UNSUPP"],
                            Level::May,
                            Severity::None,
                            format!("status VIRTIO_BLK_S_OK for request type {kind} at sector {sector} (the traced device's answer)"),
                            format!("status {}", s[0]),
                        );
                        return Err(Halt::Driver(format!(
                            "request type {kind} at sector {sector} failed with status {}: the guest sees an I/O error",
                            s[0]
                        )));
                    }
                    v => {
                        self.fail(
                            &["BLK-DEV-UNSUPP"],
                            Level::Must,
                            Severity::Low,
                            "status byte OK (0), IOERR (1) or UNSUPP (2)",
                            format!("status byte {v:#x}"),
                        );
                        return Err(Halt::Driver(format!(
                            "request type {kind}: status byte {v:#x} is no status"
                        )));
                    }
                }
            }
            (DeviceKind::Entropy, _) => {
                self.covers(&["ENT-DEV-01"]);
                if len == 0 {
                    self.fail(
                        &["ENT-DEV-01"],
                        Level::Must,
                        Severity::Low,
                        "at least one random byte (used len > 0)",
                        "len 0".to_string(),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The memory oracles: the target's access log (when it keeps one) against the areas
    /// handed to the device, and the canary pattern when the device may have run.
    fn memory_oracles(&mut self) -> R {
        if let Some(log) = self.t.take_accesses() {
            let mut shown = 0;
            for a in log {
                let end = a.gpa.saturating_add(a.len);
                let inside = |k: &[Area]| {
                    self.areas
                        .iter()
                        .any(|&(s, e, area)| k.contains(&area) && a.gpa >= s && end <= e)
                };
                let problem = if a.kind == AccessKind::Write {
                    if inside(&[Area::Used, Area::Writable]) {
                        None
                    } else if inside(&[Area::Table]) {
                        Some("VQ-DEV-05")
                    } else if inside(&[Area::Avail]) {
                        Some("VQ-DEV-22")
                    } else if inside(&[Area::Readable]) {
                        Some("VQ-DEV-03")
                    } else {
                        Some("SPLIT-DEV-MALFORMED-CHAIN")
                    }
                } else if inside(&[
                    Area::Used,
                    Area::Writable,
                    Area::Table,
                    Area::Avail,
                    Area::Readable,
                ]) {
                    None
                } else {
                    Some("SPLIT-DEV-MALFORMED-CHAIN")
                };
                if let Some(id) = problem {
                    shown += 1;
                    if shown <= 3 {
                        let kind = if a.kind == AccessKind::Write {
                            "write"
                        } else {
                            "read"
                        };
                        self.fail(
                            &[id],
                            Level::Must,
                            Severity::Critical,
                            "device accesses only the rings and the buffers it was given, as their direction allows",
                            format!("device {kind} of {} bytes at {:#x}", a.len, a.gpa),
                        );
                    }
                }
            }
        }
        let Some(c) = self.canary.as_mut() else {
            return Ok(());
        };
        if !c.dirty() {
            return Ok(());
        }
        let found = c.verify(&mut *self.t)?;
        for k in found.into_iter().take(3) {
            self.fail(
                &["SPLIT-DEV-MALFORMED-CHAIN"],
                Level::Must,
                Severity::Critical,
                "guest RAM outside the used rings and device-writable buffers unchanged (canary pattern)",
                format!(
                    "{} bytes changed at {:#x}..{:#x}",
                    k.len(),
                    k.start,
                    k.end
                ),
            );
        }
        Ok(())
    }
}
