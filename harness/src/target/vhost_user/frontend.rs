//! The vhost-user front-end half of the `vhost-user` target: one connection to a back-end
//! (rust-vmm's `vhost` crate, `Frontend`), guest RAM in a memfd the back-end maps, and the
//! [`VhostUserDevice`] that sits behind the reference transport as its [`DeviceBackend`] and
//! [`QueueServicer`].
//!
//! What the transport does and what goes over the socket (vhost-user protocol, front-end side):
//! connecting sends SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES (MQ, CONFIG and
//! RESET_DEVICE when offered), GET_QUEUE_NUM (MQ), GET_CONFIG (CONFIG) and SET_MEM_TABLE with
//! the memfd; FEATURES_OK sends SET_FEATURES; a queue that becomes usable sends SET_VRING_NUM,
//! SET_VRING_ADDR (front-end virtual addresses of the driver's rings), SET_VRING_BASE 0,
//! SET_VRING_CALL, SET_VRING_KICK and SET_VRING_ENABLE 1 (when protocol features were
//! negotiated); QueueNotify writes the kick eventfd; QueueReady 0, QueueReset and device reset
//! send GET_VRING_BASE (the back-end stops the ring) once the back-end has read the kicks
//! already sent (bounded wait, see `Connection::await_kicks_taken`), and device reset also
//! RESET_DEVICE when the back-end has it.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_reference_device::{
    Completion, Descriptor, DeviceBackend, GuestRam, QueueRing, QueueServicer,
};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::poll::PollContext;

/// How long one vhost-user request may wait for the back-end's reply before the back-end is
/// declared hung (a reply that never comes becomes a verdict, not a hang).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long stopping a ring waits for the back-end to take the kicks already sent
/// (see `Connection::await_kicks_taken`).
pub const KICK_PICKUP_WAIT: Duration = Duration::from_millis(100);

/// Ends a request the back-end does not answer within [`REPLY_TIMEOUT`]: the `vhost` crate
/// retries a timed-out receive forever, so a thread of the watchdog's own shuts the socket
/// down instead, which makes the pending request fail.
struct Watchdog {
    state: Arc<(Mutex<WatchState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<std::time::Instant>,
    fired: bool,
    closed: bool,
}

impl Watchdog {
    fn new(stream: UnixStream) -> Result<Self, String> {
        let state = Arc::new((Mutex::new(WatchState::default()), std::sync::Condvar::new()));
        let s2 = state.clone();
        std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                let (m, cv) = &*s2;
                let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
                while !st.closed {
                    st = match st.deadline {
                        None => cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                        Some(d) if std::time::Instant::now() >= d => {
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                            st.fired = true;
                            st.deadline = None;
                            st
                        }
                        Some(d) => {
                            let left = d.saturating_duration_since(std::time::Instant::now());
                            cv.wait_timeout(st, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                    };
                }
            })
            .map_err(|e| format!("watchdog thread: {e}"))?;
        Ok(Watchdog { state })
    }

    /// Whether the watchdog has ended the connection because a request timed out.
    fn fired(&self) -> bool {
        let (m, _) = &*self.state;
        m.lock().unwrap_or_else(|p| p.into_inner()).fired
    }

    /// Runs one request under the deadline; a request the watchdog ended says so.
    fn run<R, E: std::fmt::Display>(&self, f: impl FnOnce() -> Result<R, E>) -> Result<R, String> {
        let (m, cv) = &*self.state;
        {
            let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
            if st.fired {
                return Err("the connection was closed after an earlier request timed out".into());
            }
            st.deadline = Some(std::time::Instant::now() + REPLY_TIMEOUT);
            cv.notify_all();
        }
        let r = f();
        let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
        st.deadline = None;
        match r {
            Ok(v) => Ok(v),
            Err(_) if st.fired => Err(format!(
                "the back-end did not answer within {REPLY_TIMEOUT:?}"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        cv.notify_all();
    }
}

/// Why [`Connection::open`] failed; each variant carries a message naming the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Nothing accepted the connection at the socket (not created yet, or refused).
    NotListening(String),
    /// The back-end closed the connection before its first reply. A back-end that serves one
    /// front-end at a time and re-creates its listener after each can drop a connection that
    /// arrived while it was between listeners; another attempt is worth making.
    DroppedEarly(String),
    /// Any other failure: a later request failed, or a request timed out.
    Failed(String),
}

impl OpenError {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            OpenError::NotListening(m) | OpenError::DroppedEarly(m) | OpenError::Failed(m) => m,
        }
    }
}

impl From<String> for OpenError {
    fn from(m: String) -> Self {
        OpenError::Failed(m)
    }
}

/// Feature bits that belong to the vhost-user protocol, not to the device: never offered to
/// the driver (VHOST_USER_F_PROTOCOL_FEATURES, bit 30, and VHOST_F_LOG_ALL, bit 26).
const VHOST_ONLY_FEATURES: u64 = (1 << 30) | (1 << 26);

/// Guest RAM shared with a back-end: a memfd of `size` bytes at guest physical address 0,
/// mapped shared with vm-memory.
pub fn shared_ram(size: u64) -> Result<GuestMemoryMmap, String> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create("virtio-conform-guest-ram", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| format!("memfd_create: {e}"))?;
    let file = File::from(fd);
    file.set_len(size)
        .map_err(|e| format!("sizing the guest RAM memfd to {size} bytes: {e}"))?;
    let len = usize::try_from(size).map_err(|_| format!("guest RAM size {size} too large"))?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        len,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(|e| format!("mapping the guest RAM memfd: {e}"))
}

/// One live connection to a back-end and what the handshake learned.
pub struct Connection {
    frontend: Frontend,
    watchdog: Watchdog,
    /// GET_FEATURES, as the back-end answered (including vhost-only bits).
    pub backend_features: u64,
    /// Protocol features both sides use.
    pub protocol: VhostUserProtocolFeatures,
    /// Number of queues the device has.
    pub queues: u16,
    /// Configuration space (GET_CONFIG when the back-end has the CONFIG protocol feature,
    /// else the table's bytes).
    pub config: Vec<u8>,
    mem: GuestMemoryMmap,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    started: Vec<bool>,
    /// VHOST_USER_F_PROTOCOL_FEATURES was acknowledged in SET_FEATURES: rings start disabled
    /// and need SET_VRING_ENABLE.
    acked_protocol: bool,
    /// The first request that failed: the connection is unusable from then on.
    pub broken: Option<String>,
}

impl Connection {
    /// Connects to the back-end listening on `socket` and does the handshake over `mem`
    /// (see the module docs). `queues` and `config` are what the table says of the device,
    /// used when the back-end has no MQ / CONFIG protocol feature.
    ///
    /// Errors: [`OpenError::NotListening`] when the socket cannot be connected to,
    /// [`OpenError::DroppedEarly`] when the back-end closes the connection before its first
    /// reply (GET_FEATURES), [`OpenError::Failed`] for any later failure or a timeout.
    pub fn open(
        socket: &Path,
        mem: GuestMemoryMmap,
        queues: u16,
        config: &[u8],
    ) -> Result<Self, OpenError> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            OpenError::NotListening(format!("connecting to {}: {e}", socket.display()))
        })?;
        let watchdog = Watchdog::new(
            stream
                .try_clone()
                .map_err(|e| format!("socket clone: {e}"))?,
        )?;
        let mut frontend = Frontend::from_stream(stream, u64::from(queues.max(1)));
        let step = |what: &str, e: String| format!("vhost-user {what}: {e}");
        // Until the back-end has answered once, a closed connection means it was not ready
        // for this one (a timeout is not that: the back-end is there and silent).
        let early = |what: &str, e: String, w: &Watchdog| match w.fired() {
            true => OpenError::Failed(step(what, e)),
            false => OpenError::DroppedEarly(step(what, e)),
        };
        watchdog
            .run(|| frontend.set_owner())
            .map_err(|e| early("SET_OWNER", e, &watchdog))?;
        let backend_features = watchdog
            .run(|| frontend.get_features())
            .map_err(|e| early("GET_FEATURES", e, &watchdog))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = watchdog
                .run(|| frontend.get_protocol_features())
                .map_err(|e| step("GET_PROTOCOL_FEATURES", e))?;
            protocol = offered
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::RESET_DEVICE);
            watchdog
                .run(|| frontend.set_protocol_features(protocol))
                .map_err(|e| step("SET_PROTOCOL_FEATURES", e))?;
        }
        let mut queues = queues;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = watchdog
                .run(|| frontend.get_queue_num())
                .map_err(|e| step("GET_QUEUE_NUM", e))?;
            queues = u16::try_from(n).unwrap_or(u16::MAX).clamp(1, 64);
        }
        let mut config = config.to_vec();
        if protocol.contains(VhostUserProtocolFeatures::CONFIG) && !config.is_empty() {
            let (_, bytes) = watchdog
                .run(|| {
                    frontend.get_config(
                        0,
                        config.len() as u32,
                        VhostUserConfigFlags::WRITABLE,
                        &config,
                    )
                })
                .map_err(|e| step("GET_CONFIG", e))?;
            config = bytes;
        }
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("guest RAM region: {e}"))?;
        watchdog
            .run(|| frontend.set_mem_table(&regions))
            .map_err(|e| step("SET_MEM_TABLE", e))?;
        let eventfds = |n: u16| -> Result<Vec<EventFd>, String> {
            (0..n)
                .map(|_| EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}")))
                .collect()
        };
        Ok(Connection {
            frontend,
            watchdog,
            backend_features,
            protocol,
            queues,
            config,
            mem,
            kicks: eventfds(queues)?,
            calls: eventfds(queues)?,
            started: vec![false; usize::from(queues)],
            acked_protocol: false,
            broken: None,
        })
    }

    /// The device feature bits to offer the driver: the back-end's, less the vhost-only bits.
    pub fn device_features(&self) -> u64 {
        self.backend_features & !VHOST_ONLY_FEATURES
    }

    fn fail(&mut self, what: &str, e: impl std::fmt::Display) {
        if self.broken.is_none() {
            self.broken = Some(format!("vhost-user {what}: {e}"));
        }
    }

    /// The front-end's virtual address of the `len` bytes at guest physical address `gpa`
    /// (what SET_VRING_ADDR carries), when they lie inside guest RAM.
    fn user_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        self.mem.iter().find_map(|r| {
            let start = r.start_addr().0;
            (gpa >= start && end <= start + r.len()).then(|| r.as_ptr() as u64 + (gpa - start))
        })
    }

    fn negotiated(&mut self, features: u64) {
        if self.broken.is_some() {
            return;
        }
        let vhost = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let f = &self.frontend;
        if let Err((what, e)) = self
            .watchdog
            .run(|| f.set_features(features | vhost))
            .map_err(|e| ("SET_FEATURES", e))
            .and_then(|_| self.barrier())
        {
            self.fail(what, e);
        }
        self.acked_protocol = vhost != 0;
    }

    fn start(&mut self, q: u16, ring: QueueRing) {
        let i = usize::from(q);
        if self.broken.is_some() || i >= self.started.len() {
            return;
        }
        let n = u64::from(ring.size);
        // A ring outside guest RAM (or of size 0) is not handed over: the queue stays idle,
        // as a device that ignores an unusable queue.
        let addrs = (ring.size > 0)
            .then(|| {
                Some((
                    self.user_addr(ring.desc, 16 * n)?,
                    self.user_addr(ring.driver, 6 + 2 * n)?,
                    self.user_addr(ring.device, 6 + 8 * n)?,
                ))
            })
            .flatten();
        let Some((desc, avail, used)) = addrs else {
            return;
        };
        let cfg = VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: 0,
            desc_table_addr: desc,
            used_ring_addr: used,
            avail_ring_addr: avail,
            log_addr: None,
        };
        let (f, w) = (&mut self.frontend, &self.watchdog);
        let (calls, kicks) = (&self.calls, &self.kicks);
        let acked_protocol = self.acked_protocol;
        let r = w
            .run(|| f.set_vring_num(i, ring.size))
            .map_err(|e| ("SET_VRING_NUM", e))
            .and_then(|_| {
                w.run(|| f.set_vring_addr(i, &cfg))
                    .map_err(|e| ("SET_VRING_ADDR", e))
            })
            .and_then(|_| {
                w.run(|| f.set_vring_base(i, 0))
                    .map_err(|e| ("SET_VRING_BASE", e))
            })
            .and_then(|_| {
                w.run(|| f.set_vring_call(i, &calls[i]))
                    .map_err(|e| ("SET_VRING_CALL", e))
            })
            .and_then(|_| {
                w.run(|| f.set_vring_kick(i, &kicks[i]))
                    .map_err(|e| ("SET_VRING_KICK", e))
            })
            .and_then(|_| {
                if acked_protocol {
                    w.run(|| f.set_vring_enable(i, true))
                        .map_err(|e| ("SET_VRING_ENABLE", e))
                } else {
                    Ok(())
                }
            });
        match r.and_then(|_| self.barrier()) {
            Ok(()) => self.started[i] = true,
            Err((what, e)) => self.fail(what, e),
        }
    }

    /// Waits until the back-end has handled every request sent so far. Requests without
    /// REPLY_ACK get no answer, so a kick could otherwise overtake the SET_VRING_* that set
    /// the ring up; GET_FEATURES always has one, and a back-end handles requests in order.
    fn barrier(&self) -> Result<(), (&'static str, String)> {
        let f = &self.frontend;
        self.watchdog
            .run(|| f.get_features())
            .map(|_| ())
            .map_err(|e| ("GET_FEATURES (barrier)", e))
    }

    fn stop(&mut self, q: u16) {
        let i = usize::from(q);
        if self.broken.is_some() || !self.started.get(i).copied().unwrap_or(false) {
            return;
        }
        self.started[i] = false;
        self.await_kicks_taken(i);
        let f = &self.frontend;
        if let Err(e) = self.watchdog.run(|| f.get_vring_base(i)) {
            self.fail("GET_VRING_BASE", e);
        }
        // A call that arrived before the stop belongs to the old ring.
        let _ = self.calls[i].read();
    }

    /// Waits (at most [`KICK_PICKUP_WAIT`]) until the back-end has read the kick eventfd of
    /// queue `i`, i.e. has taken every notification sent before the ring is stopped.
    ///
    /// Why: a driver may notify a queue and reset the device right after (the register-write
    /// cases do, on an empty ring). The back-end's worker thread picks up a kick
    /// asynchronously, while GET_VRING_BASE is handled on the socket's thread; when the stop
    /// lands between the worker's wake-up and its look at the ring, vhost-user-backend 0.10
    /// finds the queue not ready, vhost-device-rng returns that as an error, and the worker
    /// thread ends for good: the ring started next on this connection is never serviced
    /// (seen as an intermittent "used.idx advanced by 0"). The vhost-user protocol ("Ring
    /// states": a stopped ring is not processed; GET_VRING_BASE stops it) does not make a
    /// front-end wait, so this only keeps the harness's own stop from racing a notification
    /// it sent: the verdict of a case then no longer depends on thread timing. A back-end
    /// that never reads its kicks (no worker, queue not registered) costs the bounded wait.
    /// It narrows the race, not closes it: the few instructions between the worker's read of
    /// the eventfd and its lock of the ring remain; the back-end defect itself is unchanged.
    fn await_kicks_taken(&self, i: usize) {
        let Ok(ctx) = PollContext::<u32>::new() else {
            return;
        };
        if ctx.add(&self.kicks[i], 0).is_err() {
            return;
        }
        let t0 = std::time::Instant::now();
        while t0.elapsed() < KICK_PICKUP_WAIT {
            match ctx.wait_timeout(Duration::ZERO) {
                Ok(ev) if ev.iter_readable().next().is_some() => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return,
            }
        }
    }

    fn reset(&mut self) {
        for q in 0..self.queues {
            self.stop(q);
        }
        if self.broken.is_none()
            && self
                .protocol
                .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            let f = &mut self.frontend;
            if let Err(e) = self.watchdog.run(|| f.reset_device()) {
                self.fail("RESET_DEVICE", e);
            }
        }
    }

    fn kick(&mut self, q: u16) {
        let i = usize::from(q);
        if !self.started.get(i).copied().unwrap_or(false) {
            return;
        }
        if let Err(e) = self.kicks[i].write(1) {
            self.fail("kick eventfd", e);
        }
    }

    fn take_used(&mut self) -> Vec<u16> {
        (0..self.queues)
            .filter(|&q| {
                let i = usize::from(q);
                self.started[i] && matches!(self.calls[i].read(), Ok(n) if n > 0)
            })
            .collect()
    }
}

/// A connection shared by the target and the device behind its transport.
pub type SharedConnection = Arc<Mutex<Connection>>;

/// Locks `c`, also after a panic elsewhere.
pub fn lock(c: &SharedConnection) -> MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// The device behind the reference transport: identity, features and configuration space
/// from the back-end, every queue serviced by the back-end ([`QueueServicer`]).
pub struct VhostUserDevice {
    conn: SharedConnection,
    device_id: u32,
    queues: u16,
    config: Vec<u8>,
    features: u64,
}

impl VhostUserDevice {
    /// The device of DeviceID `device_id` over `conn`.
    pub fn new(conn: SharedConnection, device_id: u32) -> Self {
        let c = lock(&conn);
        let (queues, config, features) = (c.queues, c.config.clone(), c.device_features());
        drop(c);
        VhostUserDevice {
            conn,
            device_id,
            queues,
            config,
            features,
        }
    }
}

impl DeviceBackend for VhostUserDevice {
    fn device_id(&self) -> u32 {
        self.device_id
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn num_queues(&self) -> u16 {
        self.queues
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    /// Never called: the back-end services the queues.
    fn process(&mut self, _q: u16, _chain: &[Descriptor], _ram: &mut GuestRam) -> Completion {
        Completion::Malformed
    }
    fn name(&self) -> &'static str {
        "vhost-user"
    }
    fn reset(&mut self) {
        lock(&self.conn).reset();
    }
    fn negotiated(&mut self, features: u64) {
        lock(&self.conn).negotiated(features);
    }
    fn queue_servicer(&mut self) -> Option<&mut dyn QueueServicer> {
        Some(self)
    }
}

impl QueueServicer for VhostUserDevice {
    fn start(&mut self, queue: u16, ring: QueueRing) {
        lock(&self.conn).start(queue, ring);
    }
    fn notify(&mut self, queue: u16) {
        lock(&self.conn).kick(queue);
    }
    fn stop(&mut self, queue: u16) {
        lock(&self.conn).stop(queue);
    }
    fn take_used(&mut self) -> Vec<u16> {
        lock(&self.conn).take_used()
    }
}
