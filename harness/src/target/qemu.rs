//! QEMU over qtest as a target; see the module docs below.
//!
//! [`QemuTarget`] starts `qemu-system-x86_64 -M microvm` with one virtio-mmio device and
//! drives it over QEMU's qtest line protocol on a Unix socket: `readb`/`readw`/`readl`/`readq`
//! and `writeb`/`writew`/`writel`/`writeq` for registers, `read ADDR SIZE` / `write ADDR SIZE
//! 0x<hex>` for guest memory, and `irq_intercept_in /machine/ioapic` so that interrupt lines
//! arrive as asynchronous `IRQ raise N` / `IRQ lower N` lines.
//!
//! # Machine
//!
//! `-M microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=off,ioapic2=off`, a BIOS
//! of 64 KiB of `HLT` (the vCPU halts at the reset vector and leaves RAM alone), `-accel tcg`.
//! The machine has 8 virtio-mmio transports at `0xfeb00000 + i * 0x200`; the device's window
//! is found by probing MagicValue and DeviceID. Transport `i` raises GSI `16 + i`.
//! Guest RAM starts at guest physical address 0 and is [`QemuOptions::ram_mib`] MiB long;
//! `0xe0000..0x100000` is the read-only alias of the BIOS, so keep buffers at or above 1 MiB.
//!
//! # Speed
//!
//! A value-returning command costs one round trip (roughly 10k per second). Commands whose
//! reply carries no value (register writes, guest-memory writes) are pipelined: they are sent
//! without waiting, and their `OK`s are collected (and checked) before the next command that
//! needs a value, so a failed write surfaces as [`TargetError::Protocol`] at that point.
//!
//! # Clean-up
//!
//! QEMU is killed when the target is dropped or [`Target::fresh`] replaces it. It is started
//! with a parent-death signal (through util-linux `setpriv --pdeathsig KILL`, from one
//! long-lived spawner thread) so it also dies when the harness is killed, and the first QEMU
//! start installs a Ctrl-C/SIGTERM handler that kills every QEMU child and exits with 130.
//! An application that installs its own handler should call [`kill_all_qemu`] in it.

use super::{Capabilities, DeviceKind, IrqEvent, Target, TargetError, TargetInfo};
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};
use virtio_reference_device::TransportVersion;

/// Guest physical address of the first virtio-mmio transport on `-M microvm`.
pub const MICROVM_MMIO_BASE: u64 = 0xfeb0_0000;
/// Distance in bytes between two transports, and the size of one window.
pub const MICROVM_MMIO_STRIDE: u64 = 0x200;
/// Number of transports with `ioapic2=off`.
pub const MICROVM_MMIO_COUNT: u64 = 8;
/// First GSI of the transports: transport `i` raises `IRQ raise {16 + i}`.
pub const MICROVM_MMIO_FIRST_GSI: u32 = 16;

/// Lines of QEMU's stderr kept in crash messages and [`Target::diagnostics`].
const STDERR_TAIL_LINES: usize = 20;
/// Pipelined commands allowed in flight before their replies are collected. Bounded so
/// neither side's socket buffer fills up while the other waits.
const MAX_IN_FLIGHT: usize = 1024;
/// Unsent command bytes buffered before a `write(2)`.
const SEND_BUFFER: usize = 32 * 1024;
/// Largest guest-memory transfer per qtest command, in bytes.
const MEM_CHUNK: usize = 32 * 1024;
/// QEMU gets at least this long to start and connect, whatever the per-reply timeout.
const MIN_STARTUP: Duration = Duration::from_secs(10);
/// Longest line accepted from the target, in bytes: a guest-memory read reply of
/// [`MEM_CHUNK`] bytes is `OK 0x` and twice as many hex digits.
const MAX_LINE: usize = 2 * MEM_CHUNK + 64;
/// Most bytes accepted while waiting for one reply (asynchronous lines included): a target
/// that floods `IRQ` lines is cut off here.
const MAX_REPLY_BYTES: usize = 4 << 20;
/// Interrupt events kept between two `take_interrupts` calls; more are counted as one.
const MAX_IRQ_EVENTS: usize = 4096;
/// Prefix of the scratch folders; the owner's process id follows, so folders left by a run
/// that was killed (SIGKILL) are recognised and removed by the next run.
const SCRATCH_PREFIX: &str = "virtio-conform-qemu-";

/// Size of the raw disk image behind a QEMU block device: 2048 sectors of 512 bytes.
pub const BLOCK_IMAGE_BYTES: usize = 2048 * 512;

/// How to start QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// The QEMU binary (default `qemu-system-x86_64`, looked up on `PATH`).
    pub qemu: PathBuf,
    /// The device to attach (`virtio-rng-device`, `virtio-blk-device` on a `null-co://`
    /// drive, or `virtio-net-device` on a stream netdev whose other end the harness holds,
    /// see [`super::qemu_net`]).
    pub device: DeviceKind,
    /// `Modern` adds `-global virtio-mmio.force-legacy=false` (Version 2); `Legacy` is QEMU's
    /// default (Version 1).
    pub version: TransportVersion,
    /// Guest RAM in MiB (default 16, the size of the reference device's RAM, so `diff` and the
    /// canary oracle see the same layout and sweep little), at guest physical address 0.
    pub ram_mib: u64,
    /// How long to wait for one qtest reply before [`TargetError::Hung`] (default 5 s).
    pub timeout: Duration,
    /// Give QEMU its RAM through a file the harness maps too (default true), so the canary
    /// oracle can sweep all of guest RAM in milliseconds ([`Target::bulk_read`]); without it
    /// the oracle samples RAM over qtest.
    pub shared_ram: bool,
    /// Keep one QEMU across cases (default false): [`Target::fresh`] then resets the device
    /// (Status 0, selector registers 0), zeroes guest RAM and the disk image, and drops
    /// pending interrupt events, instead of starting a new QEMU. A QEMU that crashed or hung
    /// is still replaced.
    pub reuse: bool,
    /// A `-device` argument used instead of the one [`QemuOptions::device`] implies (no
    /// backend is added), e.g. `virtio-rng-device` for a run that expects a block device:
    /// the device is still found by MagicValue and Version, and the identity cases report
    /// the DeviceID it shows.
    pub device_override: Option<String>,
    /// Add `packed=on` to the virtio device (default false), so QEMU offers
    /// VIRTIO_F_RING_PACKED (§2.8); the harness negotiates it only in cases that ask for it.
    pub packed: bool,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            qemu: PathBuf::from("qemu-system-x86_64"),
            device: DeviceKind::Entropy,
            version: TransportVersion::Legacy,
            ram_mib: 16,
            timeout: Duration::from_secs(5),
            shared_ram: true,
            reuse: false,
            device_override: None,
            packed: false,
        }
    }
}

impl QemuOptions {
    /// Default options for `device` over transport `version`.
    pub fn new(device: DeviceKind, version: TransportVersion) -> Self {
        QemuOptions {
            device,
            version,
            ..Self::default()
        }
    }

    /// The `-device` (and backend) arguments for [`QemuOptions::device`]. A block device
    /// gets a zero-filled raw image `disk` of [`BLOCK_IMAGE_BYTES`] (the same size as the
    /// reference block device), so written sectors read back. A console gets a `virtconsole`
    /// on a chardev socket next to `disk` in the scratch folder (see
    /// [`super::qemu_console`]); a net device a stream netdev on `net_sock` (see
    /// [`super::qemu_net`]); a vsock device a `vhost-user-vsock-device` whose backend
    /// listens on `vsock_sock` (see [`super::qemu_vsock`]). With [`QemuOptions::packed`] the
    /// device offers the packed ring.
    fn device_args(&self, disk: &Path, net_sock: &Path, vsock_sock: &Path) -> Vec<String> {
        if let Some(d) = &self.device_override {
            return vec!["-device".into(), d.clone()];
        }
        let mut args = self.device_args_plain(disk, net_sock, vsock_sock);
        if self.packed {
            if let Some(dev) = args.get_mut(1) {
                dev.push_str(",packed=on");
            }
        }
        args
    }

    fn device_args_plain(&self, disk: &Path, net_sock: &Path, vsock_sock: &Path) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self.device {
            DeviceKind::Entropy => v(&["-device", "virtio-rng-device"]),
            DeviceKind::Block => vec![
                "-device".into(),
                "virtio-blk-device,drive=d0,discard=on,write-zeroes=on".into(),
                "-drive".into(),
                format!(
                    "if=none,id=d0,file={},format=raw,discard=unmap",
                    disk.display()
                ),
            ],
            DeviceKind::Net => super::qemu_net::qemu_args(net_sock),
            DeviceKind::Console => super::qemu_console::qemu_args(
                &disk.with_file_name(super::qemu_console::SOCKET_NAME),
            ),
            DeviceKind::Balloon => super::qemu_balloon::qemu_args(),
            DeviceKind::Vsock => super::qemu_vsock::qemu_args(vsock_sock),
        }
    }

    /// Whether the host can change the device's configuration space over QMP: a block
    /// device on the harness's own drive (`block_resize` changes its capacity), a net
    /// device (`set_link` and `announce-self` change `status`), or a balloon (`balloon`
    /// changes `num_pages`).
    pub fn host_config_changes(&self) -> bool {
        matches!(
            self.device,
            DeviceKind::Block | DeviceKind::Net | DeviceKind::Balloon
        ) && self.device_override.is_none()
    }

    /// Whether the harness holds the device's network backend (a net device, not overridden).
    fn owns_netdev(&self) -> bool {
        self.device == DeviceKind::Net && self.device_override.is_none()
    }

    /// Whether the harness runs the device's vhost-user vsock backend (a vsock device, not
    /// overridden); such a device always gets its RAM through the shared file.
    fn owns_vsock_backend(&self) -> bool {
        self.device == DeviceKind::Vsock && self.device_override.is_none()
    }

    /// The DeviceID the device presents (§5).
    fn device_id(&self) -> u32 {
        self.device.device_id()
    }
}

/// How long the net target keeps QEMU's main loop turning after its stream netdev connected,
/// before the first case step (see `Instance::start`).
const NET_CONNECT_SETTLE: Duration = Duration::from_millis(250);

/// The first line of `<qemu> --version`, or why QEMU cannot be run
/// ([`TargetError::Unavailable`]). Tests use it to decide whether to skip.
pub fn qemu_version(qemu: &Path) -> Result<String, TargetError> {
    let out = retry_if_busy(|| {
        Command::new(qemu)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
    })
    .map_err(|e| {
        TargetError::Unavailable(format!(
            "cannot run `{}`: {e} (install it with scripts/install-qemu.sh)",
            qemu.display()
        ))
    })?;
    if !out.status.success() {
        return Err(TargetError::Unavailable(format!(
            "`{} --version` failed with {}: {}",
            qemu.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Child processes: spawning with a parent-death signal, and a registry for Ctrl-C.

/// A QEMU process shared between its target and the Ctrl-C registry.
pub(crate) type SharedChild = Arc<Mutex<Child>>;

#[derive(Default)]
struct Registry {
    next: u64,
    children: HashMap<u64, (SharedChild, PathBuf)>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| Mutex::new(Registry::default()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn lock_child(c: &SharedChild) -> MutexGuard<'_, Child> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills every QEMU this process started and still owns, and removes their scratch folders.
/// Installed as the Ctrl-C handler by the first QEMU start; call it from your own handler
/// if the application installs one first.
pub fn kill_all_qemu() {
    let all: Vec<(SharedChild, PathBuf)> = registry().children.drain().map(|(_, v)| v).collect();
    for (child, dir) in all {
        kill_group(&mut lock_child(&child));
        let _ = fs::remove_dir_all(dir);
    }
}

static HANDLER: Once = Once::new();

/// Tells the QEMU target not to install its own Ctrl-C/SIGTERM handler: the application
/// handles the signals and calls [`kill_all_qemu`] itself (the CLI does, to finish its
/// report first). Call it before the first QEMU starts.
pub fn application_handles_signals() {
    HANDLER.call_once(|| {});
}

fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        // Fails when the application already has a handler; it then owns the clean-up.
        let _ = ctrlc::set_handler(|| {
            kill_all_qemu();
            std::process::exit(130);
        });
    });
}

/// Whether `setpriv --pdeathsig` is available (util-linux 2.33 and later).
fn have_setpriv() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        Command::new("setpriv")
            .arg("--help")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--pdeathsig"))
            .unwrap_or(false)
    })
}

/// Runs `start` again (up to 50 times, 10 ms apart) while it fails with "text file busy"
/// (ETXTBSY). A wrapper script that was just written can stay open for writing for a moment in
/// a child another thread forked before the writer closed it; exec then fails although
/// nothing is wrong with the file.
fn retry_if_busy<T>(mut start: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut tries = 0;
    loop {
        match start() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process: the parent-death signal
/// fires when the *thread* that forked the child ends, so children must not come from
/// short-lived threads (a test thread, a worker).
fn spawn_long_lived(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("qemu-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(retry_if_busy(|| cmd.spawn()));
                }
            })
            .ok()
            .map(|_| tx)
    });
    let mut cmd = cmd;
    let Some(tx) = tx else {
        return retry_if_busy(|| cmd.spawn());
    };
    let (rtx, rrx) = mpsc::channel();
    if let Err(mpsc::SendError((mut back, _))) = tx.send((cmd, rtx)) {
        return retry_if_busy(|| back.spawn());
    }
    rrx.recv()
        .unwrap_or_else(|_| Err(io::Error::other("the QEMU spawner thread is gone")))
}

/// Starts `program` with `args` the way QEMU is started (parent-death signal through
/// `setpriv` when available, its own process group, stdin and stdout to `/dev/null`, stderr
/// to `stderr`) and registers it, with its scratch folder `dir`, for [`kill_all_qemu`].
/// Returns the child and its registry id for [`kill_and_forget`]. Used for helper processes
/// that live as long as one QEMU (the vhost-user vsock backend).
pub(crate) fn spawn_registered(
    program: &Path,
    args: &[std::ffi::OsString],
    stderr: fs::File,
    dir: &Path,
) -> io::Result<(SharedChild, u64)> {
    let mut cmd = if have_setpriv() {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    install_interrupt_handler();
    let child: SharedChild = Arc::new(Mutex::new(spawn_long_lived(cmd)?));
    let mut r = registry();
    r.next += 1;
    let id = r.next;
    r.children.insert(id, (child.clone(), dir.to_path_buf()));
    Ok((child, id))
}

/// Removes the scratch folders under `tmp` left by earlier runs whose process is gone
/// (killed with SIGKILL, or a crash): their name carries the owner's process id. Runs once
/// per process; returns how many folders it removed.
pub fn remove_stale_scratch_dirs(tmp: &Path) -> usize {
    static DONE: Once = Once::new();
    let mut removed = 0;
    DONE.call_once(|| removed = remove_stale_in(tmp));
    removed
}

/// [`remove_stale_scratch_dirs`] without the once-per-process guard.
#[doc(hidden)]
pub fn remove_stale_in(tmp: &Path) -> usize {
    let Ok(rd) = fs::read_dir(tmp) else { return 0 };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// `msg`, followed by the last lines of QEMU's stderr when there are any.
fn with_stderr_tail(msg: String, stderr: &Path) -> String {
    let tail = file_tail(stderr, STDERR_TAIL_LINES);
    if tail.trim().is_empty() {
        msg
    } else {
        format!("{msg}; last lines of QEMU's stderr:\n{tail}")
    }
}

/// The last `n` lines of the file at `path` (empty when unreadable).
pub(crate) fn file_tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The qtest connection.

/// Why a qtest exchange failed, before it is mapped to a [`TargetError`].
#[derive(Debug)]
enum LinkError {
    /// No reply within the timeout.
    Timeout(String),
    /// The connection closed or broke (QEMU exited).
    Closed(String),
    /// QEMU answered `FAIL ...`/`ERR ...` or something unparsable; the link stays usable.
    Reply(String),
    /// The target sent more than a reply may hold (a line longer than [`MAX_LINE`], or
    /// [`MAX_REPLY_BYTES`] without the reply); the link is out of step.
    Flood(String),
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Commands sent whose replies (no value expected) are not collected yet.
    in_flight: VecDeque<String>,
    irqs: Vec<IrqEvent>,
    /// Wall time of the first complete line received (startup measurement).
    first_reply: Option<Instant>,
    /// Longest wait for one reply, asynchronous lines included.
    timeout: Duration,
}

impl Conn {
    fn new(stream: UnixStream, timeout: Duration) -> io::Result<Conn> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        Ok(Conn {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(SEND_BUFFER + 256),
            in_flight: VecDeque::new(),
            irqs: Vec::new(),
            first_reply: None,
            timeout: timeout.max(Duration::from_millis(1)),
        })
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.wbuf);
        self.wbuf.clear();
        r.map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                LinkError::Timeout("QEMU stopped reading qtest commands".into())
            }
            _ => LinkError::Closed(format!("sending to QEMU: {e}")),
        })
    }

    /// Reads more bytes into `rbuf`, blocking up to the read timeout; returns how many.
    fn fill(&mut self, waiting_for: &str) -> Result<usize, LinkError> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    return Err(LinkError::Closed(format!(
                        "qtest connection closed while waiting for the reply to `{waiting_for}`"
                    )))
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(LinkError::Timeout(format!(
                        "no reply to `{waiting_for}` in time"
                    )))
                }
                Err(e) => return Err(LinkError::Closed(format!("reading from QEMU: {e}"))),
            }
        }
    }

    /// Takes one complete line out of `rbuf`, if there is one.
    fn take_line(&mut self) -> Option<String> {
        let pos = self.rbuf.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&self.rbuf[..pos])
            .trim()
            .to_string();
        self.rbuf.drain(..=pos);
        if self.first_reply.is_none() {
            self.first_reply = Some(Instant::now());
        }
        Some(line)
    }

    /// Records an asynchronous `IRQ ...` line; false when `line` is something else.
    fn absorb_irq(&mut self, line: &str) -> bool {
        match line.strip_prefix("IRQ ") {
            Some(rest) => {
                if rest.starts_with("raise") && self.irqs.len() < MAX_IRQ_EVENTS {
                    self.irqs.push(IrqEvent::Raised);
                }
                true
            }
            None => false,
        }
    }

    /// The next reply line, skipping (and recording) asynchronous IRQ lines.
    ///
    /// Bounded whatever the target sends: a reply must come within the timeout (asynchronous
    /// lines do not extend it), no line may exceed [`MAX_LINE`] bytes, and no more than
    /// [`MAX_REPLY_BYTES`] may arrive before it.
    fn next_reply(&mut self, waiting_for: &str) -> Result<String, LinkError> {
        let start = Instant::now();
        let mut received = 0usize;
        loop {
            while let Some(line) = self.take_line() {
                if !self.absorb_irq(&line) {
                    return Ok(line);
                }
            }
            if self.rbuf.len() > MAX_LINE {
                return Err(LinkError::Flood(format!(
                    "a line longer than {MAX_LINE} bytes while waiting for the reply to `{waiting_for}`"
                )));
            }
            if received > MAX_REPLY_BYTES {
                return Err(LinkError::Flood(format!(
                    "{received} bytes of other lines while waiting for the reply to `{waiting_for}`"
                )));
            }
            if start.elapsed() >= self.timeout {
                return Err(LinkError::Timeout(format!(
                    "no reply to `{waiting_for}` in time (other lines kept arriving)"
                )));
            }
            received += self.fill(waiting_for)?;
        }
    }

    /// Queues a command whose reply carries no value; its `OK` is checked later.
    fn post(&mut self, cmd: String) -> Result<(), LinkError> {
        self.wbuf.extend_from_slice(cmd.as_bytes());
        self.wbuf.push(b'\n');
        self.in_flight.push_back(cmd);
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.sync()
        } else if self.wbuf.len() >= SEND_BUFFER {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Sends everything queued and collects every outstanding reply. The first non-`OK`
    /// reply becomes [`LinkError::Reply`] after all replies are in (the link stays in step).
    fn sync(&mut self) -> Result<(), LinkError> {
        self.flush()?;
        let mut failure = None;
        while let Some(cmd) = self.in_flight.front().cloned() {
            let line = self.next_reply(&cmd)?;
            self.in_flight.pop_front();
            if line != "OK" && !line.starts_with("OK ") && failure.is_none() {
                failure = Some(format!("`{cmd}` -> `{line}`"));
            }
        }
        match failure {
            Some(f) => Err(LinkError::Reply(f)),
            None => Ok(()),
        }
    }

    /// Sends `cmds` back to back and returns their `OK` payloads in order.
    fn query_many(&mut self, cmds: &[String]) -> Result<Vec<String>, LinkError> {
        self.sync()?;
        for c in cmds {
            self.wbuf.extend_from_slice(c.as_bytes());
            self.wbuf.push(b'\n');
        }
        self.flush()?;
        let mut out = Vec::with_capacity(cmds.len());
        let mut failure = None;
        for c in cmds {
            let line = self.next_reply(c)?;
            match line.strip_prefix("OK") {
                Some(rest) => out.push(rest.trim().to_string()),
                None => {
                    out.push(String::new());
                    failure.get_or_insert_with(|| format!("`{c}` -> `{line}`"));
                }
            }
        }
        match failure {
            Some(f) => Err(LinkError::Reply(f)),
            None => Ok(out),
        }
    }

    /// Sends one command and returns the payload of its `OK` reply.
    fn query(&mut self, cmd: String) -> Result<String, LinkError> {
        let mut v = self.query_many(std::slice::from_ref(&cmd))?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Reads whatever QEMU has already sent (asynchronous IRQ lines) without waiting.
    fn poll_async(&mut self) -> Result<(), LinkError> {
        self.stream
            .set_nonblocking(true)
            .map_err(|e| LinkError::Closed(e.to_string()))?;
        let mut tmp = [0u8; 4096];
        let mut received = 0usize;
        let res = loop {
            if received > MAX_REPLY_BYTES || self.rbuf.len() > MAX_LINE + MAX_REPLY_BYTES {
                break Err(LinkError::Flood(format!(
                    "{received} bytes of unrequested lines"
                )));
            }
            match self.stream.read(&mut tmp) {
                Ok(0) => break Err(LinkError::Closed("qtest connection closed".into())),
                Ok(n) => {
                    received += n;
                    self.rbuf.extend_from_slice(&tmp[..n]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(LinkError::Closed(format!("reading from QEMU: {e}"))),
            }
        };
        let _ = self.stream.set_nonblocking(false);
        // Nothing is in flight here, so every complete line is asynchronous.
        while let Some(line) = self.take_line() {
            if !self.absorb_irq(&line) {
                return Err(LinkError::Reply(format!(
                    "unexpected line from QEMU: `{line}`"
                )));
            }
        }
        res
    }
}

fn parse_u64(payload: &str) -> Result<u64, LinkError> {
    let hex = payload.strip_prefix("0x").unwrap_or(payload);
    u64::from_str_radix(hex, 16)
        .map_err(|_| LinkError::Reply(format!("expected a hex value, got `{payload}`")))
}

fn hex_encode(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * data.len());
    s.push_str("0x");
    for &b in data {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn hex_decode(payload: &str, out: &mut [u8]) -> Result<(), LinkError> {
    let hex = payload.strip_prefix("0x").unwrap_or(payload).as_bytes();
    if hex.len() != 2 * out.len() {
        return Err(LinkError::Reply(format!(
            "expected {} hex bytes, got {} characters",
            out.len(),
            hex.len()
        )));
    }
    let nib = |c: u8| -> Result<u8, LinkError> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| LinkError::Reply("bad hex digit in a read reply".into()))
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(hex[2 * i])? << 4) | nib(hex[2 * i + 1])?;
    }
    Ok(())
}

fn width_suffix(len: usize) -> Option<char> {
    match len {
        1 => Some('b'),
        2 => Some('w'),
        4 => Some('l'),
        8 => Some('q'),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// One running QEMU.

struct Instance {
    /// Scratch folder (socket, BIOS image, stderr log); removed on drop.
    dir: tempfile::TempDir,
    child: SharedChild,
    registry_id: u64,
    pid: u32,
    conn: Conn,
    /// Guest physical address of the device's transport window.
    base: u64,
    /// Spawn to first qtest reply.
    startup: Duration,
    /// Guest RAM shared through a file, when [`QemuOptions::shared_ram`] is set.
    ram: Option<super::qemu_ram::SharedRam>,
    /// The QMP connection, opened at the first host-side change.
    qmp: Option<super::qmp::Qmp>,
    /// The console's chardev socket (console device only), connected at startup.
    console: Option<super::qemu_console::ConsoleSocket>,
    /// The harness's end of the net device's backend ([`QemuOptions::owns_netdev`]).
    net: Option<super::qemu_net::NetLink>,
    /// The vsock device's backend process and host side
    /// ([`QemuOptions::owns_vsock_backend`]); dropped after QEMU is killed.
    vsock: Option<super::qemu_vsock::VsockHost>,
}

impl Instance {
    /// Brings the running QEMU back to the state a new one starts in, for the next case: the
    /// virtio device reset (§2.4: Status 0, read back), DeviceFeaturesSel, DriverFeaturesSel
    /// and QueueSel at 0, guest RAM zeroed (through the shared mapping, else qtest `memset`),
    /// the disk image zeroed, pending interrupt events dropped. Errors (the caller then starts
    /// a new QEMU): Status does not read 0, or shared guest RAM changed after the reset.
    fn reset_in_place(&mut self, opts: &QemuOptions) -> Result<(), LinkError> {
        use virtio_reference_device::regs::{
            DEVICE_FEATURES_SEL, DRIVER_FEATURES_SEL, QUEUE_SEL, STATUS,
        };
        self.conn.sync()?;
        let b = self.base;
        let mut cmds = vec![format!("writel 0x{:x} 0x0", b + STATUS)];
        for r in [DEVICE_FEATURES_SEL, DRIVER_FEATURES_SEL, QUEUE_SEL] {
            cmds.push(format!("writel 0x{:x} 0x0", b + r));
        }
        if self.ram.is_none() {
            cmds.push(format!("memset 0x0 0x{:x} 0x0", opts.ram_mib << 20));
        }
        self.conn.query_many(&cmds)?;
        if opts.device == DeviceKind::Block {
            fs::write(
                self.dir.path().join("disk.img"),
                vec![0u8; BLOCK_IMAGE_BYTES],
            )
            .map_err(|e| LinkError::Reply(format!("zeroing the disk image: {e}")))?;
        }
        if let Some(net) = self.net.as_mut() {
            net.drain().map_err(LinkError::Reply)?;
        }
        // §2.4: the reset is complete when Status reads 0. One more round trip also lets QEMU
        // run work it deferred (bottom halves) before the next case fills guest RAM.
        let st = parse_u64(&self.conn.query(format!("readl 0x{:x}", b + STATUS))?)?;
        if st != 0 {
            return Err(LinkError::Reply(format!(
                "Status reads {st:#x} after the reset; starting a new QEMU"
            )));
        }
        if let Some(ram) = &self.ram {
            // Zeroed through the harness's mapping: a qtest `memset` would leave the RAM under
            // the BIOS's ROM alias below 1 MiB as it was (writes there go to the ROM).
            ram.zero().map_err(LinkError::Reply)?;
            self.conn.query(format!("readl 0x{:x}", b + STATUS))?;
            // A device still writing after the reset (work of the previous case landing late)
            // would reach the next case: such a QEMU is replaced by a new one.
            if let Some(at) = ram.first_nonzero().map_err(LinkError::Reply)? {
                return Err(LinkError::Reply(format!(
                    "guest RAM at {at:#x} changed after the reset; starting a new QEMU"
                )));
            }
        }
        self.conn.poll_async()?;
        self.conn.irqs.clear();
        Ok(())
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("qemu.stderr")
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("qtest.sock")
    }

    /// The exit status if QEMU has exited, waiting up to `grace` for it to do so.
    fn exit_status(&self, grace: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = lock_child(&self.child).try_wait() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn start(opts: &QemuOptions) -> Result<Instance, TargetError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            TargetError::Unavailable(format!("QEMU target: {what}: {e}"))
        };
        remove_stale_scratch_dirs(&std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| unavailable("creating a scratch folder", &e))?;
        let bios = dir.path().join("hlt.bin");
        fs::write(&bios, vec![0xf4u8; 65536]).map_err(|e| unavailable("writing hlt.bin", &e))?;
        let disk = dir.path().join("disk.img");
        if opts.device == DeviceKind::Block {
            fs::write(&disk, vec![0u8; BLOCK_IMAGE_BYTES])
                .map_err(|e| unavailable("writing the disk image", &e))?;
        }
        let sock = dir.path().join("qtest.sock");
        let listener =
            UnixListener::bind(&sock).map_err(|e| unavailable("binding the qtest socket", &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| unavailable("configuring the qtest socket", &e))?;
        let stderr_path = dir.path().join("qemu.stderr");
        let stderr = fs::File::create(&stderr_path)
            .map_err(|e| unavailable("creating the stderr log", &e))?;

        let mut machine =
            "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=off,ioapic2=off"
                .to_string();
        let ram = shared_ram_args(opts, dir.path(), &mut machine);
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |s: &dyn AsRef<std::ffi::OsStr>| args.push(s.as_ref().to_os_string());
        for a in ["-M", machine.as_str(), "-display", "none", "-nodefaults"] {
            push(&a);
        }
        if let Some((_, object)) = &ram {
            push(&"-object");
            push(object);
        }
        push(&"-m");
        push(&format!("{}M", opts.ram_mib));
        push(&"-bios");
        push(&bios);
        push(&"-qtest-log");
        push(&"none");
        let net_sock = dir.path().join(super::qemu_net::SOCKET_NAME);
        let net = if opts.owns_netdev() {
            Some(
                super::qemu_net::NetLink::listen(&net_sock, opts.timeout.max(MIN_STARTUP))
                    .map_err(|e| unavailable("binding the netdev socket", &e))?,
            )
        } else {
            None
        };
        // The vhost-user backend runs before QEMU starts: QEMU connects to it at startup.
        let vsock = if opts.owns_vsock_backend() {
            if ram.is_none() {
                return Err(TargetError::Unavailable(
                    "QEMU vsock target: vhost-user needs guest RAM in a shared file, which could not be created".into(),
                ));
            }
            Some(super::qemu_vsock::VsockHost::start(
                opts.timeout.max(MIN_STARTUP),
            )?)
        } else {
            None
        };
        let vsock_sock = vsock.as_ref().map(|v| v.socket_path()).unwrap_or_default();
        for a in opts.device_args(&disk, &net_sock, &vsock_sock) {
            push(&a);
        }
        if opts.version == TransportVersion::Modern {
            push(&"-global");
            push(&"virtio-mmio.force-legacy=false");
        }
        if opts.host_config_changes() {
            for a in super::qmp::qemu_args(&dir.path().join(super::qmp::SOCKET_NAME)) {
                push(&a);
            }
        }
        push(&"-qtest");
        push(&format!("unix:{}", sock.display()));
        push(&"-accel");
        push(&"tcg");

        let mut cmd = if have_setpriv() {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&opts.qemu);
            c
        } else {
            Command::new(&opts.qemu)
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        // Its own process group: a wrapper that forks instead of exec'ing is ended together
        // with everything it started.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);

        install_interrupt_handler();
        let spawned = Instant::now();
        let child = spawn_long_lived(cmd)
            .map_err(|e| unavailable(&format!("starting {}", opts.qemu.display()), &e))?;
        let pid = child.id();
        let child: SharedChild = Arc::new(Mutex::new(child));
        let registry_id = {
            let mut r = registry();
            r.next += 1;
            let id = r.next;
            r.children
                .insert(id, (child.clone(), dir.path().to_path_buf()));
            id
        };

        // From here on, dropping `inst` (on any error) kills QEMU.
        let deadline = spawned + opts.timeout.max(MIN_STARTUP);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break Ok(s),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    if let Ok(Some(st)) = lock_child(&child).try_wait() {
                        break Err(with_stderr_tail(
                            format!("QEMU exited at startup ({st})"),
                            &stderr_path,
                        ));
                    }
                    if Instant::now() >= deadline {
                        break Err("QEMU did not connect to the qtest socket in time".to_string());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => break Err(format!("accepting the qtest connection: {e}")),
            }
        };
        let stream = match stream {
            Ok(s) => s,
            Err(msg) => {
                kill_and_forget(registry_id, &child);
                return Err(TargetError::Unavailable(msg));
            }
        };
        let conn = match Conn::new(stream, opts.timeout.max(MIN_STARTUP)) {
            Ok(c) => c,
            Err(e) => {
                kill_and_forget(registry_id, &child);
                return Err(unavailable("configuring the qtest connection", &e));
            }
        };
        let mut inst = Instance {
            dir,
            child,
            registry_id,
            pid,
            conn,
            base: 0,
            startup: Duration::ZERO,
            ram: ram.map(|r| r.0),
            qmp: None,
            console: None,
            net,
            vsock,
        };
        inst.setup(opts, spawned).map_err(|e| {
            let msg = match e {
                LinkError::Timeout(m)
                | LinkError::Closed(m)
                | LinkError::Reply(m)
                | LinkError::Flood(m) => m,
            };
            TargetError::Unavailable(with_stderr_tail(
                format!("QEMU target setup: {msg}"),
                &inst.stderr_path(),
            ))
        })?;
        if opts.device == DeviceKind::Console && opts.device_override.is_none() {
            let path = inst.dir.path().join(super::qemu_console::SOCKET_NAME);
            inst.console = Some(super::qemu_console::ConsoleSocket::connect(
                &path,
                opts.timeout.max(MIN_STARTUP),
            )?);
        }
        if let Some(net) = inst.net.as_mut() {
            net.accept().map_err(|e| {
                TargetError::Unavailable(with_stderr_tail(
                    format!("QEMU target setup: {e}"),
                    &inst.stderr_path(),
                ))
            })?;
            // QEMU completes its connect in a thread and then in its main loop, and drops the
            // guest's frames until then; nothing in QMP shows the moment. Keep its main loop
            // turning with qtest round trips for NET_CONNECT_SETTLE (a few round trips were
            // not enough on a loaded machine).
            let settle = Instant::now() + NET_CONNECT_SETTLE;
            let mut trips = 0;
            while trips < 4 || Instant::now() < settle {
                inst.conn
                    .query("readl 0x0".into())
                    .map_err(|_| TargetError::Unavailable("QEMU target setup: qtest".into()))?;
                trips += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Back to the per-reply timeout for normal operation.
        inst.conn.timeout = opts.timeout.max(Duration::from_millis(1));
        let t = Some(inst.conn.timeout);
        inst.conn
            .stream
            .set_read_timeout(t)
            .and_then(|_| inst.conn.stream.set_write_timeout(t))
            .map_err(|e| unavailable("configuring the qtest connection", &e))?;
        Ok(inst)
    }

    /// Intercepts the IOAPIC's inputs and finds the device's transport window.
    fn setup(&mut self, opts: &QemuOptions, spawned: Instant) -> Result<(), LinkError> {
        self.conn.query("irq_intercept_in /machine/ioapic".into())?;
        self.startup = self
            .conn
            .first_reply
            .map(|t| t.duration_since(spawned))
            .unwrap_or_default();
        // MagicValue, Version, DeviceID of every transport, in the order a driver reads them.
        let mut cmds = Vec::new();
        for i in 0..MICROVM_MMIO_COUNT {
            let base = MICROVM_MMIO_BASE + i * MICROVM_MMIO_STRIDE;
            for off in [0, 4, 8] {
                cmds.push(format!("readl 0x{:x}", base + off));
            }
        }
        let replies = self.conn.query_many(&cmds)?;
        let n = MICROVM_MMIO_COUNT as usize;
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            slots.push(TransportId {
                magic: parse_u64(&replies[3 * i])? as u32,
                version: parse_u64(&replies[3 * i + 1])? as u32,
                device_id: parse_u64(&replies[3 * i + 2])? as u32,
            });
        }
        match discover(&slots, opts.device_id()) {
            Some(i) => {
                self.base = MICROVM_MMIO_BASE + i as u64 * MICROVM_MMIO_STRIDE;
                Ok(())
            }
            None => Err(LinkError::Reply(format!(
                "no virtio-mmio device (MagicValue 0x74726976, Version 1 or 2, DeviceID not 0) among the {MICROVM_MMIO_COUNT} transports at {MICROVM_MMIO_BASE:#x}"
            ))),
        }
    }
}

/// The shared RAM file and its `-object` argument when [`QemuOptions::shared_ram`] is set
/// (`machine` gets `memory-backend=`).
fn shared_ram_args(
    opts: &QemuOptions,
    scratch: &Path,
    machine: &mut String,
) -> Option<(super::qemu_ram::SharedRam, String)> {
    if !opts.shared_ram && !opts.owns_vsock_backend() {
        return None;
    }
    let size = opts.ram_mib.checked_mul(1 << 20)?;
    // Without the file (no room, a size the harness cannot map) QEMU keeps its own RAM and
    // the canary oracle samples it over qtest.
    let ram = super::qemu_ram::SharedRam::create(size, scratch).ok()?;
    machine.push_str(",memory-backend=");
    machine.push_str(super::qemu_ram::BACKEND_ID);
    let object = ram.object_arg(size);
    Some((ram, object))
}

impl QemuTarget {
    /// The harness's end of the net device's stream netdev for queue pair `port` (QEMU's
    /// stream netdev has one pair), after every pipelined command reached QEMU; `what` names
    /// the direction for the error of a target without one.
    fn net_link(
        &mut self,
        port: u32,
        what: &str,
    ) -> Result<&mut super::qemu_net::NetLink, TargetError> {
        if port != 0 {
            return Err(TargetError::Unsupported(format!(
                "net port {port} (QEMU: one stream netdev, queue pair 0)"
            )));
        }
        self.sync()?;
        self.inst
            .as_mut()
            .ok_or_else(|| TargetError::Unavailable("QEMU is not running".into()))?
            .net
            .as_mut()
            .ok_or_else(|| TargetError::Unsupported(format!("host-side {what}")))
    }

    /// The vsock device's host side, after every pipelined command reached QEMU and one
    /// qtest round trip let QEMU's main loop forward the backend's interrupts.
    fn vsock_host(&mut self) -> Result<&mut super::qemu_vsock::VsockHost, TargetError> {
        self.read32(0)?;
        self.inst
            .as_mut()
            .and_then(|i| i.vsock.as_mut())
            .ok_or_else(|| TargetError::Unavailable("QEMU is not running".into()))
    }

    /// Whether this target runs the harness's own console (a `virtconsole` on its socket).
    fn device_is_console(&self) -> bool {
        self.inst.as_ref().is_some_and(|i| i.console.is_some())
    }

    /// The console chardev of port `port` (only port 0, the `virtconsole`, has one).
    fn console_socket(
        &mut self,
        port: u32,
    ) -> Result<&mut super::qemu_console::ConsoleSocket, TargetError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        match self.inst.as_mut().and_then(|i| i.console.as_mut()) {
            Some(c) if port == 0 => Ok(c),
            Some(_) => Err(TargetError::Unsupported(format!(
                "host side of console port {port} (QEMU target: port 0 only)"
            ))),
            None => Err(TargetError::Unsupported("host-side input/output".into())),
        }
    }

    /// The QMP connection of the running QEMU, opened on first use.
    fn qmp(&mut self) -> Result<&mut super::qmp::Qmp, TargetError> {
        let timeout = self.opts.timeout;
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| TargetError::Unavailable("QEMU is not running".into()))?;
        if inst.qmp.is_none() {
            let path = inst.dir.path().join(super::qmp::SOCKET_NAME);
            inst.qmp =
                Some(super::qmp::Qmp::connect(&path, timeout).map_err(TargetError::Protocol)?);
        }
        Ok(inst.qmp.as_mut().expect("connected above"))
    }

    /// Balloon statistics request on `port` 2 (see `qemu_balloon`): the polling timer is
    /// switched off and on again, which makes QEMU ask at once.
    fn balloon_stats_request(&mut self, port: u32) -> Result<(), TargetError> {
        use super::qemu_balloon::{PORT_STATS, QOM_PATH, STATS_INTERVAL_S};
        if port != PORT_STATS {
            return Err(TargetError::Unsupported(format!(
                "balloon host input on port {port} (QEMU: statistics requests on port 2 only)"
            )));
        }
        self.sync()?;
        let qmp = self.qmp()?;
        for value in [0, STATS_INTERVAL_S] {
            qmp.execute(
                "qom-set",
                serde_json::json!({ "path": QOM_PATH, "property": "guest-stats-polling-interval", "value": value }),
            )
            .map_err(TargetError::Protocol)?;
        }
        // One qtest round trip lets QEMU's main loop run the timer.
        self.read32(0).map(|_| ())
    }

    /// What the balloon's host sees on `port` (see `qemu_balloon`).
    fn balloon_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        use super::qemu_balloon::{actual_from_query, stats_from_qom, PORT_ACTUAL, PORT_STATS};
        self.sync()?;
        let ram = self.ram_size();
        match port {
            PORT_STATS => {
                let reply = self
                    .qmp()?
                    .execute(
                        "qom-get",
                        serde_json::json!({ "path": super::qemu_balloon::QOM_PATH, "property": "guest-stats" }),
                    )
                    .map_err(TargetError::Protocol)?;
                let now = stats_from_qom(&reply).map_err(TargetError::Protocol)?;
                if now == self.balloon_stats {
                    return Ok(Vec::new());
                }
                self.balloon_stats = now.clone();
                Ok(vec![now])
            }
            PORT_ACTUAL => {
                let reply = self
                    .qmp()?
                    .execute("query-balloon", serde_json::json!({}))
                    .map_err(TargetError::Protocol)?;
                Ok(vec![actual_from_query(&reply, ram).map_err(TargetError::Protocol)?])
            }
            _ => Err(TargetError::Unsupported(format!(
                "balloon host port {port} (QEMU has no host view of inflated or deflated page frame numbers)"
            ))),
        }
    }

    /// Net `status` (le16 at configuration offset 6, §5.1.4) changed by the host: bit 0
    /// (LINK_UP) through `set_link`, bit 1 (ANNOUNCE) through one round of `announce-self`
    /// (QEMU sets the bit when the driver negotiated GUEST_ANNOUNCE). QEMU updates `status`
    /// and raises the configuration-change interrupt itself.
    fn qmp_net_status(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let status = match (offset, data) {
            (6, [lo, hi]) => u16::from_le_bytes([*lo, *hi]),
            _ => {
                return Err(TargetError::Unsupported(format!(
                    "host-side change of {} bytes at configuration offset {offset:#x} (QEMU net: only the 2-byte status at 6, through set_link / announce-self)",
                    data.len()
                )))
            }
        };
        self.sync()?;
        let name = super::qemu_net::NETDEV_ID;
        let qmp = self.qmp()?;
        qmp.execute(
            "set_link",
            serde_json::json!({ "name": name, "up": status & 1 != 0 }),
        )
        .map_err(TargetError::Protocol)?;
        if status & 2 != 0 {
            qmp.execute(
                "announce-self",
                serde_json::json!({ "initial": 1, "max": 1, "rounds": 1, "step": 1 }),
            )
            .map_err(TargetError::Protocol)?;
        }
        self.read32(0).map(|_| ())
    }

    /// A host-side configuration change over QMP. Block: 8 bytes at offset 0 are the new
    /// `capacity` in 512-byte sectors (§5.2.4), made with `block_resize` on the drive, which
    /// makes QEMU update the configuration space, bump ConfigGeneration and raise the
    /// configuration-change interrupt. Anything else is [`TargetError::Unsupported`].
    fn qmp_config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        if !self.opts.host_config_changes() {
            return Err(TargetError::Unsupported(
                "host-side configuration change (QEMU: block capacity, net status only)".into(),
            ));
        }
        if self.opts.device == DeviceKind::Net {
            return self.qmp_net_status(offset, data);
        }
        if self.opts.device == DeviceKind::Balloon {
            let value = super::qemu_balloon::balloon_value(offset, data, self.ram_size())
                .map_err(TargetError::Unsupported)?;
            self.sync()?;
            self.qmp()?
                .execute("balloon", serde_json::json!({ "value": value }))
                .map_err(TargetError::Protocol)?;
            return self.read32(0).map(|_| ());
        }
        let capacity: [u8; 8] = match (offset, data.try_into()) {
            (0, Ok(c)) => c,
            _ => {
                return Err(TargetError::Unsupported(format!(
                    "host-side change of {} bytes at configuration offset {offset:#x} (QEMU block: only the 8-byte capacity at 0, through block_resize)",
                    data.len()
                )))
            }
        };
        let size = u64::from_le_bytes(capacity)
            .checked_mul(512)
            .ok_or_else(|| TargetError::Unsupported("capacity beyond 2^64 bytes".into()))?;
        // Everything the driver did before happens before the change.
        self.sync()?;
        let timeout = self.opts.timeout;
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| TargetError::Unavailable("QEMU is not running".into()))?;
        if inst.qmp.is_none() {
            let path = inst.dir.path().join(super::qmp::SOCKET_NAME);
            inst.qmp =
                Some(super::qmp::Qmp::connect(&path, timeout).map_err(TargetError::Protocol)?);
        }
        let qmp = inst.qmp.as_mut().expect("connected above");
        qmp.execute(
            "block_resize",
            serde_json::json!({ "device": "d0", "size": size }),
        )
        .map_err(TargetError::Protocol)?;
        // QEMU signals the change from a bottom half of its main loop; one qtest round trip
        // lets that run before the driver looks.
        self.read32(0).map(|_| ())
    }
}

/// What the identification registers of one transport read (§4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportId {
    /// MagicValue.
    pub magic: u32,
    /// DeviceID (0: an empty slot).
    pub device_id: u32,
    /// Version.
    pub version: u32,
}

/// Picks the transport to test the way a driver finds devices (§4.2.3.1.1): MagicValue
/// 0x74726976, Version 1 or 2, DeviceID not 0. Among those, the first with DeviceID `want`,
/// else the first device found, so a device whose DeviceID is not the one the run asked for
/// is still tested (and its identity cases fail) instead of being invisible.
pub fn discover(slots: &[TransportId], want: u32) -> Option<usize> {
    let present: Vec<usize> = (0..slots.len())
        .filter(|&i| {
            let s = slots[i];
            s.magic == 0x7472_6976 && matches!(s.version, 1 | 2) && s.device_id != 0
        })
        .collect();
    present
        .iter()
        .copied()
        .find(|&i| slots[i].device_id == want)
        .or_else(|| present.first().copied())
}

/// Kills the child's whole process group (it leads its own), then the child, and reaps it.
fn kill_group(c: &mut Child) {
    if let Ok(pid) = i32::try_from(c.id()) {
        // The group is gone already when the child exited and took its children with it.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub(crate) fn kill_and_forget(registry_id: u64, child: &SharedChild) {
    registry().children.remove(&registry_id);
    kill_group(&mut lock_child(child));
}

impl Drop for Instance {
    fn drop(&mut self) {
        kill_and_forget(self.registry_id, &self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// The target.

/// A QEMU `-M microvm` with one virtio-mmio device, driven over qtest.
///
/// Register offsets are relative to the device's transport window (0..0x200); guest
/// addresses are guest physical addresses in `0..ram_size()`.
pub struct QemuTarget {
    opts: QemuOptions,
    implementation: String,
    inst: Option<Instance>,
    /// Set when the running QEMU crashed or hung; every operation returns it until `fresh`.
    broken: Option<TargetError>,
    /// stderr tail of the last QEMU that went away with an error.
    last_tail: Option<String>,
    /// Balloon: the statistics view last returned by `host_take` (see `qemu_balloon`).
    balloon_stats: Vec<u8>,
}

impl QemuTarget {
    /// Checks that QEMU runs, then starts the first instance.
    ///
    /// Errors: [`TargetError::Unavailable`] when QEMU is missing, exits at startup, does not
    /// connect, or has no transport with the wanted DeviceID.
    pub fn new(opts: QemuOptions) -> Result<QemuTarget, TargetError> {
        let implementation = qemu_version(&opts.qemu)?;
        let mut t = QemuTarget {
            opts,
            implementation,
            inst: None,
            broken: None,
            last_tail: None,
            balloon_stats: Vec::new(),
        };
        t.fresh()?;
        if let Some(v) = t.inst.as_ref().and_then(|i| i.vsock.as_ref()) {
            t.implementation = format!("{} + {}", t.implementation, v.version());
        }
        Ok(t)
    }

    /// The options this target was started with.
    pub fn options(&self) -> &QemuOptions {
        &self.opts
    }

    /// Process id of the running QEMU (`None` after a crash or hang was reported).
    pub fn pid(&self) -> Option<u32> {
        self.inst.as_ref().map(|i| i.pid)
    }

    /// Path of the running QEMU's qtest socket (it appears on QEMU's command line).
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.inst.as_ref().map(|i| i.socket_path())
    }

    /// Guest physical address of the device's transport window.
    pub fn window_base(&self) -> Option<u64> {
        self.inst.as_ref().map(|i| i.base)
    }

    /// Time from spawning the running QEMU to its first qtest reply.
    pub fn startup_time(&self) -> Option<Duration> {
        self.inst.as_ref().map(|i| i.startup)
    }

    /// Sends every pipelined command and checks its reply (a failed one becomes
    /// [`TargetError::Protocol`]).
    pub fn sync(&mut self) -> Result<(), TargetError> {
        self.with_conn(|c, _| c.sync())
    }

    /// Runs `f` on the live connection; maps a link failure to a [`TargetError`], and on a
    /// crash or hang records it and kills the QEMU.
    fn with_conn<R>(
        &mut self,
        f: impl FnOnce(&mut Conn, u64) -> Result<R, LinkError>,
    ) -> Result<R, TargetError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| TargetError::Unavailable("QEMU is not running".into()))?;
        let err = match f(&mut inst.conn, inst.base) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let stderr_path = inst.stderr_path();
        let error = match err {
            // QEMU refused one command; the link is still in step.
            LinkError::Reply(m) => return Err(TargetError::Protocol(m)),
            LinkError::Timeout(m) => match inst.exit_status(Duration::ZERO) {
                Some(st) => TargetError::Crashed(with_stderr_tail(
                    format!("QEMU exited ({st}): {m}"),
                    &stderr_path,
                )),
                None => TargetError::Hung(format!(
                    "{m} (timeout {:?}); QEMU killed",
                    self.opts.timeout
                )),
            },
            LinkError::Flood(m) => TargetError::Hung(format!(
                "the target sent more than a reply may hold: {m}; QEMU killed"
            )),
            LinkError::Closed(m) => {
                let st = inst
                    .exit_status(Duration::from_secs(2))
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running; killed".into());
                TargetError::Crashed(with_stderr_tail(
                    format!("QEMU went away ({st}): {m}"),
                    &stderr_path,
                ))
            }
        };
        self.last_tail = Some(file_tail(&stderr_path, STDERR_TAIL_LINES));
        self.inst = None;
        self.broken = Some(match &error {
            TargetError::Crashed(m) => TargetError::Crashed(format!("earlier in this case: {m}")),
            TargetError::Hung(m) => TargetError::Hung(format!("earlier in this case: {m}")),
            other => other.clone(),
        });
        Err(error)
    }

    fn check_window(offset: u64, len: usize) -> Result<(), TargetError> {
        if width_suffix(len).is_none() {
            return Err(TargetError::Unsupported(format!(
                "{len}-byte register access (qtest does 1, 2, 4 or 8)"
            )));
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= MICROVM_MMIO_STRIDE => Ok(()),
            _ => Err(TargetError::Unsupported(format!(
                "offset {offset:#x} (+{len}) is outside the {MICROVM_MMIO_STRIDE:#x}-byte transport window"
            ))),
        }
    }

    fn check_ram(&self, gpa: u64, len: usize) -> Result<(), TargetError> {
        match gpa.checked_add(len as u64) {
            Some(end) if end <= self.ram_size() => Ok(()),
            _ => Err(TargetError::Protocol(format!(
                "guest memory access {gpa:#x}+{len:#x} outside guest RAM (0..{:#x})",
                self.ram_size()
            ))),
        }
    }
}

impl Target for QemuTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: "qemu".into(),
            device: self.opts.device.name().into(),
            version: self.opts.version.register_value(),
            implementation: self.implementation.clone(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            config_change: self.opts.host_config_changes(),
            memory_log: false,
            interrupts: true,
        }
    }

    fn ram_size(&self) -> u64 {
        self.opts.ram_mib << 20
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TargetError> {
        if data.is_empty() {
            return Ok(());
        }
        Self::check_window(offset, data.len())?;
        let w = width_suffix(data.len()).unwrap_or('l');
        let n = data.len();
        let v = self.with_conn(|c, base| {
            let p = c.query(format!("read{w} 0x{:x}", base + offset))?;
            parse_u64(&p)
        })?;
        data.copy_from_slice(&v.to_le_bytes()[..n]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        if data.is_empty() {
            return Ok(());
        }
        Self::check_window(offset, data.len())?;
        let w = width_suffix(data.len()).unwrap_or('l');
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        self.with_conn(|c, base| c.post(format!("write{w} 0x{:x} 0x{v:x}", base + offset)))
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        self.check_ram(gpa, data.len())?;
        self.with_conn(|c, _| {
            for (i, chunk) in data.chunks(MEM_CHUNK).enumerate() {
                let a = gpa + (i * MEM_CHUNK) as u64;
                c.post(format!(
                    "write 0x{a:x} {} {}",
                    chunk.len(),
                    hex_encode(chunk)
                ))?;
            }
            Ok(())
        })
    }

    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.check_ram(gpa, buf.len())?;
        self.with_conn(|c, _| {
            for (i, chunk) in buf.chunks_mut(MEM_CHUNK).enumerate() {
                let a = gpa + (i * MEM_CHUNK) as u64;
                let p = c.query(format!("read 0x{a:x} {}", chunk.len()))?;
                hex_decode(&p, chunk)?;
            }
            Ok(())
        })
    }

    fn fresh(&mut self) -> Result<(), TargetError> {
        // A console is always restarted: input QEMU has not read yet stays in its chardev and
        // would reach the next case.
        // A balloon too: QEMU keeps the last statistics across a device reset.
        // A vsock device too (with a new backend): the backend keeps its connections across a
        // device reset.
        self.balloon_stats.clear();
        if self.opts.reuse
            && self.broken.is_none()
            && !matches!(
                self.opts.device,
                DeviceKind::Console | DeviceKind::Balloon | DeviceKind::Vsock
            )
        {
            if let Some(inst) = self.inst.as_mut() {
                if inst.reset_in_place(&self.opts).is_ok() {
                    return Ok(());
                }
            }
        }
        self.inst = None;
        self.broken = None;
        self.inst = Some(Instance::start(&self.opts)?);
        Ok(())
    }

    fn config_change(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.qmp_config_change(offset, data)
    }

    fn host_send(&mut self, port: u32, data: &[u8]) -> Result<(), TargetError> {
        if self.opts.device == DeviceKind::Balloon {
            return self.balloon_stats_request(port);
        }
        if self.device_is_console() {
            return self.console_socket(port)?.send(data);
        }
        if self.opts.owns_vsock_backend() {
            return self.vsock_host()?.send(port, data);
        }
        // Everything the driver did before reaches QEMU first.
        let net = self.net_link(port, "input")?;
        net.send(data).map_err(TargetError::Protocol)?;
        // One qtest round trip lets QEMU's main loop read the socket.
        self.read32(0).map(|_| ())
    }

    fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, TargetError> {
        if self.opts.device == DeviceKind::Balloon {
            return self.balloon_take(port);
        }
        if self.device_is_console() {
            // Every pipelined command (a notification among them) is processed first.
            self.sync()?;
            return self.console_socket(port)?.take();
        }
        if self.opts.owns_vsock_backend() {
            return self.vsock_host()?.take(port);
        }
        let net = self.net_link(port, "output")?;
        net.take().map_err(TargetError::Protocol)
    }

    fn host_op(&mut self, op: virtio_reference_device::HostOp) -> Result<(), TargetError> {
        if !self.opts.owns_vsock_backend() {
            return Err(TargetError::Unsupported("host-side connections".into()));
        }
        self.vsock_host()?.op(op)
    }

    fn host_conn(&mut self, port: u32) -> Result<virtio_reference_device::HostConn, TargetError> {
        if !self.opts.owns_vsock_backend() {
            return Err(TargetError::Unsupported("host-side connections".into()));
        }
        self.vsock_host()?.conn(port)
    }

    fn bulk_read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        if !self.bulk_cheap() {
            return self.mem_read(gpa, buf);
        }
        self.check_ram(gpa, buf.len())?;
        // Every pipelined command (a notification among them) is processed first.
        self.sync()?;
        let ram = self.inst.as_ref().and_then(|i| i.ram.as_ref());
        ram.map_or(Ok(()), |r| r.read(gpa, buf))
            .map_err(TargetError::Protocol)
    }

    fn bulk_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), TargetError> {
        if !self.bulk_cheap() {
            return self.mem_write(gpa, data);
        }
        self.check_ram(gpa, data.len())?;
        self.sync()?;
        let ram = self.inst.as_ref().and_then(|i| i.ram.as_ref());
        ram.map_or(Ok(()), |r| r.write(gpa, data))
            .map_err(TargetError::Protocol)
    }

    fn bulk_cheap(&self) -> bool {
        self.inst.as_ref().is_some_and(|i| i.ram.is_some())
    }

    fn take_interrupts(&mut self) -> Vec<IrqEvent> {
        // A failure is recorded in `broken` (or is a stray line) and shows at the next access.
        let _ = self.with_conn(|c, _| {
            c.sync()?;
            c.poll_async()
        });
        self.inst
            .as_mut()
            .map(|i| std::mem::take(&mut i.conn.irqs))
            .unwrap_or_default()
    }

    fn flush(&mut self) -> Result<(), TargetError> {
        self.sync()
    }

    fn diagnostics(&mut self) -> Option<String> {
        let mut tail = match &self.inst {
            Some(i) => file_tail(&i.stderr_path(), STDERR_TAIL_LINES),
            None => self.last_tail.clone().unwrap_or_default(),
        };
        if let Some(v) = self.inst.as_ref().and_then(|i| i.vsock.as_ref()) {
            let d = v.diagnostics();
            if !d.is_empty() {
                tail = format!("{tail}\n{d}");
            }
        }
        (!tail.trim().is_empty()).then_some(tail)
    }
}
