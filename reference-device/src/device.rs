//! The virtio-mmio transport (VIRTIO 1.3 §4.2) around a [`DeviceBackend`]: registers, device
//! status (§2.1), feature negotiation (§2.2), reset (§2.4), configuration space with its
//! generation counter (§2.5), virtqueue reset (§2.6.1), notifications and interrupts.

use crate::backend::{Completion, DeviceBackend};
use crate::memory::GuestRam;
use crate::mutant::Mutant;
use crate::packed::PackedQueue;
use crate::queue::{Budget, QueueError, SplitQueue, ZeroLengthPolicy, MAX_QUEUE_SIZE};
use crate::regs::*;

/// Which register map the transport presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportVersion {
    /// Version 1, the legacy interface of §4.2.4 (GuestPageSize, QueueAlign, QueuePFN).
    Legacy,
    /// Version 2, the modern interface of §4.2.2.
    Modern,
}

impl TransportVersion {
    /// The value of the `Version` register (1 or 2).
    pub fn register_value(self) -> u32 {
        match self {
            TransportVersion::Legacy => 1,
            TransportVersion::Modern => 2,
        }
    }
}

/// What a read returns where the spec leaves it open (a write-only or unknown register, or
/// an access narrower than 32 bits to a control register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenRead {
    /// The read returns zeros (default).
    #[default]
    Zero,
    /// The read leaves the caller's buffer untouched.
    Untouched,
}

/// What the device does with a malformed descriptor chain or an invalid ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MalformedChainPolicy {
    /// Stop processing, set DEVICE_NEEDS_RESET and, after DRIVER_OK, raise a
    /// configuration-change interrupt (§2.1.2). The default, like QEMU's virtio_error().
    #[default]
    NeedsReset,
    /// Return the chain's head with `len` 0 and go on with the next chain.
    SkipChain,
    /// Stop using the queue (it ignores every later notification until a reset) without
    /// setting DEVICE_NEEDS_RESET. What the legacy interface, which has no
    /// DEVICE_NEEDS_RESET bit, always does whatever this knob says.
    StopQueue,
}

/// Implementation-defined choices (where the spec leaves the behaviour open), each with the
/// reference's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// Reads of write-only registers and of offsets that name no register.
    pub open_read: OpenRead,
    /// Reads of a control register (below 0x100) that are not 32 bits wide and aligned; such
    /// writes are always ignored.
    pub narrow_control_read: OpenRead,
    /// Zero-length descriptors.
    pub zero_length: ZeroLengthPolicy,
    /// Malformed chains and invalid rings.
    pub malformed_chain: MalformedChainPolicy,
    /// FEATURES_OK is refused when a version-2 driver does not accept VIRTIO_F_VERSION_1.
    pub require_version_1: bool,
    /// Queue size a queue starts with after reset, before the driver writes QueueNum:
    /// `true` = QueueNumMax (as QEMU and virtio-queue do), `false` = 0.
    pub queue_num_defaults_to_max: bool,
    /// Legacy GuestPageSize before the driver writes one, in bytes.
    pub default_guest_page_size: u32,
    /// Offer VIRTIO_F_RING_PACKED (version 2 only; off by default so the offered feature set
    /// of existing configurations does not change).
    pub offer_ring_packed: bool,
    /// Offer VIRTIO_F_IN_ORDER (version 2 only; off by default).
    pub offer_in_order: bool,
    /// With VIRTIO_F_IN_ORDER on a packed ring, write one used descriptor per batch of
    /// buffers used in one notification (§2.8.8, the default) instead of one per buffer
    /// (also allowed).
    pub batch_in_order: bool,
    /// On a packed ring, after using buffers, write the Device Event Suppression structure
    /// (QueueDevice: next used position and wrap counter, flags ENABLE), as a device may
    /// (§2.8.10); off by default: the reference leaves it as the driver initialised it.
    pub publish_device_event: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            open_read: OpenRead::Zero,
            narrow_control_read: OpenRead::Untouched,
            zero_length: ZeroLengthPolicy::Accept,
            malformed_chain: MalformedChainPolicy::NeedsReset,
            require_version_1: true,
            queue_num_defaults_to_max: true,
            default_guest_page_size: 4096,
            offer_ring_packed: false,
            offer_in_order: false,
            batch_in_order: true,
            publish_device_event: false,
        }
    }
}

/// A shared memory region (§2.10) as SHMLen/SHMBase report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmRegion {
    /// Guest physical base address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Everything that distinguishes one reference device instance from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Register map: version 2 or legacy version 1.
    pub version: TransportVersion,
    /// `VendorID` register value.
    pub vendor_id: u32,
    /// `DeviceID` override; `None` uses the backend's.
    pub device_id: Option<u32>,
    /// Transport/ring feature bits offered on top of the backend's device-type bits.
    pub transport_features: u64,
    /// QueueNumMax of each queue; the length is the number of queues.
    pub queue_num_max: Vec<u16>,
    /// Shared memory regions by SHMSel id.
    pub shm_regions: Vec<ShmRegion>,
    /// Configuration space contents; `None` uses the backend's (set by the differential
    /// runner to mirror another implementation's configuration space).
    pub config_space: Option<Vec<u8>>,
    /// Implementation-defined choices.
    pub knobs: Knobs,
    /// Injected bug for mutant targets; `None` for the reference.
    pub mutant: Option<Mutant>,
    /// Descriptors the device may read per notification before it stops (a hang guard).
    pub step_budget: u64,
    /// Exactly the feature bits offered (transport and device type), replacing
    /// `transport_features` plus the backend's bits; `None` offers those. Set by the
    /// differential runner so the reference offers what the target offers and nothing more.
    pub offered_features: Option<u64>,
}

impl DeviceConfig {
    /// The defaults for `version`: VendorID "VCFM", 1 queue of up to 256 entries, no shared
    /// memory, and offered transport features INDIRECT_DESC, EVENT_IDX, plus VERSION_1 and
    /// RING_RESET for version 2 and ANY_LAYOUT for version 1.
    pub fn new(version: TransportVersion) -> Self {
        let mut transport_features = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX);
        if version == TransportVersion::Modern {
            transport_features |= bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_RESET);
        } else {
            // §6.3: the device accepts any descriptor layout (the reference never assumes
            // one), which a legacy driver learns from VIRTIO_F_ANY_LAYOUT.
            transport_features |= bit(VIRTIO_F_ANY_LAYOUT);
        }
        DeviceConfig {
            version,
            vendor_id: u32::from_le_bytes(*b"VCFM"),
            device_id: None,
            transport_features,
            queue_num_max: vec![256],
            shm_regions: Vec::new(),
            config_space: None,
            knobs: Knobs::default(),
            mutant: None,
            step_budget: 1 << 20,
            offered_features: None,
        }
    }
}

/// An interrupt the device raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interrupt {
    /// Used buffer notification for `queue` (InterruptStatus bit 0).
    UsedBuffer {
        /// The queue whose used ring advanced.
        queue: u16,
    },
    /// Configuration change notification (InterruptStatus bit 1).
    ConfigChange,
}

#[derive(Debug, Clone)]
struct QueueSlot {
    max: u16,
    num: u32,
    ready: bool,
    /// Ring features copied and layout validated (at DRIVER_OK, or at first use when early
    /// use is allowed).
    active: bool,
    broken: bool,
    pfn: u32,
    align: u32,
    q: SplitQueue,
    /// Used elements of chains holding part of a unit ([`Completion::Partial`]), published
    /// together with the chain that completes it: (head index or buffer id, len, ring
    /// descriptors the buffer occupies on a packed ring; 1 on the split ring).
    held: Vec<(u16, u32, u16)>,
    /// Buffers the backend holds ([`Completion::Held`], the balloon's statsq buffer): head
    /// index or buffer id and descriptor count (1 on the split ring), used with len 0 when
    /// the backend releases them.
    held_by_backend: Vec<(u16, u16)>,
    /// VIRTIO_F_RING_PACKED was negotiated when the queue was activated: `p` is in use, and
    /// QueueDesc / QueueDriver / QueueDevice (kept in `q`) name the descriptor ring and the
    /// driver and device event suppression structures (§4.2.3).
    packed: bool,
    p: PackedQueue,
}

impl QueueSlot {
    fn new(max: u16, knobs: &Knobs, mutant: Option<Mutant>) -> Self {
        let num = if knobs.queue_num_defaults_to_max {
            max as u32
        } else {
            0
        };
        let mut q = SplitQueue::new(0);
        q.zero_length = knobs.zero_length;
        q.mutant = mutant;
        let mut p = PackedQueue::new(0);
        p.zero_length = knobs.zero_length;
        p.mutant = mutant;
        QueueSlot {
            max,
            num,
            ready: false,
            active: false,
            broken: false,
            pfn: 0,
            align: 4096,
            q,
            held: Vec::new(),
            held_by_backend: Vec::new(),
            packed: false,
            p,
        }
    }
}

/// Copies a change a request made to the configuration space (see
/// [`DeviceBackend::take_config_update`]) into `config` and bumps `config_generation`, so it
/// is visible before the request is used (e.g. §5.1.6.5.2). Either ring layout.
fn apply_config_update(
    backend: &mut dyn DeviceBackend,
    config: &mut [u8],
    config_generation: &mut u32,
) {
    if let Some((off, data)) = backend.take_config_update() {
        let start = off.min(config.len());
        let end = off.saturating_add(data.len()).min(config.len());
        config[start..end].copy_from_slice(&data[..end - start]);
        *config_generation = config_generation.wrapping_add(1);
    }
}

/// The reference virtio-mmio device: one transport window, one backend, one guest memory.
///
/// Register accesses never panic and never hang, whatever the offset, width or value (the
/// mutants excepted, which reproduce bugs that did). Every guest-memory access goes through
/// [`GuestRam`] and can be recorded.
pub struct MmioDevice {
    cfg: DeviceConfig,
    backend: Box<dyn DeviceBackend>,
    ram: GuestRam,
    status: u8,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    driver_features_beyond: bool,
    queue_sel: u32,
    queues: Vec<QueueSlot>,
    interrupt_status: u32,
    interrupts: Vec<Interrupt>,
    config_generation: u32,
    config: Vec<u8>,
    shm_sel: u32,
    guest_page_size: u32,
    budget_exhausted: bool,
    last_error: Option<QueueError>,
}

impl MmioDevice {
    /// A device in its reset state over `ram`, running `backend`.
    pub fn new(cfg: DeviceConfig, backend: Box<dyn DeviceBackend>, ram: GuestRam) -> Self {
        let mut backend = backend;
        if cfg.mutant == Some(Mutant::WritesReadableBuffers) {
            backend.set_writes_readable(true);
        }
        if let Some(m) = cfg.mutant {
            backend.set_mutant(m);
        }
        let mut queues: Vec<QueueSlot> = cfg
            .queue_num_max
            .iter()
            .map(|&m| QueueSlot::new(m.min(MAX_QUEUE_SIZE), &cfg.knobs, cfg.mutant))
            .collect();
        if cfg.mutant == Some(Mutant::ExtraQueue) {
            queues.push(QueueSlot::new(
                cfg.queue_num_max
                    .first()
                    .copied()
                    .unwrap_or(256)
                    .min(MAX_QUEUE_SIZE),
                &cfg.knobs,
                cfg.mutant,
            ));
        }
        let config = cfg
            .config_space
            .clone()
            .unwrap_or_else(|| backend.config().to_vec());
        let guest_page_size = cfg.knobs.default_guest_page_size;
        MmioDevice {
            cfg,
            backend,
            ram,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            interrupts: Vec::new(),
            config_generation: 0,
            config,
            shm_sel: 0,
            guest_page_size,
            budget_exhausted: false,
            last_error: None,
        }
    }

    fn is(&self, m: Mutant) -> bool {
        self.cfg.mutant == Some(m)
    }

    fn legacy(&self) -> bool {
        self.cfg.version == TransportVersion::Legacy
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// DeviceID as the register reports it.
    pub fn device_id(&self) -> u32 {
        self.cfg
            .device_id
            .unwrap_or_else(|| self.backend.device_id())
    }

    /// All offered feature bits (transport and device type), plus RING_PACKED / IN_ORDER when
    /// the knobs turn them on (also on top of `offered_features`).
    pub fn device_features(&self) -> u64 {
        let mut extra = 0;
        if !self.legacy() {
            if self.cfg.knobs.offer_ring_packed {
                extra |= bit(VIRTIO_F_RING_PACKED);
            }
            if self.cfg.knobs.offer_in_order {
                extra |= bit(VIRTIO_F_IN_ORDER);
            }
        }
        if let Some(f) = self.cfg.offered_features {
            return f | extra;
        }
        self.cfg.transport_features | self.backend.features() | extra
    }

    /// The implementation-defined choices, to change before the driver starts (for example
    /// to offer VIRTIO_F_RING_PACKED when a case asks for it). Changing them while a driver
    /// is using the device gives unspecified results.
    pub fn knobs_mut(&mut self) -> &mut Knobs {
        &mut self.cfg.knobs
    }

    /// Feature bits the driver has written through DriverFeatures (pages 0 and 1).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The guest memory as the device sees it (recording switch and access log).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Mutable access to the guest memory wrapper, to switch recording or take the log.
    pub fn ram_mut(&mut self) -> &mut GuestRam {
        &mut self.ram
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Takes the interrupts raised since the last call, oldest first.
    pub fn take_interrupts(&mut self) -> Vec<Interrupt> {
        std::mem::take(&mut self.interrupts)
    }

    /// Whether a notification ran out of its step budget since the last reset (a hang).
    pub fn budget_exhausted(&self) -> bool {
        self.budget_exhausted
    }

    /// Why the device last entered DEVICE_NEEDS_RESET or refused a chain, if it did.
    pub fn last_error(&self) -> Option<QueueError> {
        self.last_error
    }

    /// The device-side state of queue `index`, if the queue exists.
    pub fn queue(&self, index: u16) -> Option<&SplitQueue> {
        self.queues.get(index as usize).map(|s| &s.q)
    }

    /// The device-side state of packed queue `index`, if the queue exists and was activated
    /// with VIRTIO_F_RING_PACKED.
    pub fn packed_queue(&self, index: u16) -> Option<&PackedQueue> {
        self.queues
            .get(index as usize)
            .filter(|s| s.packed)
            .map(|s| &s.p)
    }

    /// The current device configuration space.
    pub fn config_space(&self) -> &[u8] {
        &self.config
    }

    /// The device changes its own configuration space (host side, §2.5 / §3.2.1): `data` is
    /// written at byte `offset` (clipped to the space), ConfigGeneration changes, and a
    /// configuration-change interrupt is raised when DRIVER_OK is set.
    pub fn update_config(&mut self, offset: usize, data: &[u8]) {
        let start = offset.min(self.config.len());
        let end = offset.saturating_add(data.len()).min(self.config.len());
        self.config[start..end].copy_from_slice(&data[..end - start]);
        self.backend
            .host_config_changed(start, &data[..end - start]);
        if !self.is(Mutant::ConfigGenerationStatic) {
            self.config_generation = self.config_generation.wrapping_add(1);
        }
        if self.status & DRIVER_OK != 0 {
            self.raise(Interrupt::ConfigChange);
        }
        // Work the change caused (the socket device's transport-reset event, §5.10.6.7).
        let wakeups = self.backend.take_wakeups();
        if !wakeups.is_empty() {
            self.service_host_queues(wakeups);
        }
    }

    fn raise(&mut self, irq: Interrupt) {
        self.interrupt_status |= match irq {
            Interrupt::UsedBuffer { .. } => INT_USED_BUFFER,
            Interrupt::ConfigChange => INT_CONFIG_CHANGE,
        };
        self.interrupts.push(irq);
    }

    /// The device cannot go on without a reset (§2.1.2). A legacy device (no DEVICE_NEEDS_RESET
    /// bit, §4.2.4) and the [`MalformedChainPolicy::StopQueue`] knob only record the error;
    /// the queue concerned has been marked broken by the caller.
    fn enter_needs_reset(&mut self, why: QueueError) {
        self.last_error = Some(why);
        if self.legacy() || self.cfg.knobs.malformed_chain == MalformedChainPolicy::StopQueue {
            return;
        }
        if self.status & DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.status |= DEVICE_NEEDS_RESET;
        if self.status & DRIVER_OK != 0 {
            self.raise(Interrupt::ConfigChange);
        }
    }

    /// Device reset (§2.4): everything the driver configured returns to its initial state.
    fn reset(&mut self) {
        if self.is(Mutant::ResetSetsFailed) {
            self.status |= FAILED;
            return;
        }
        if self.is(Mutant::ResetFromNeedsResetFails) && self.status & DEVICE_NEEDS_RESET != 0 {
            self.status = FAILED;
            return;
        }
        self.status = 0;
        self.backend.reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        self.shm_sel = 0;
        if !self.is(Mutant::ResetKeepsInterruptStatus) {
            self.interrupt_status = 0;
        }
        let keep_ready = self.is(Mutant::ResetKeepsQueueReady);
        for slot in &mut self.queues {
            let ready = slot.ready;
            *slot = QueueSlot::new(slot.max, &self.cfg.knobs, self.cfg.mutant);
            slot.ready = keep_ready && ready;
        }
        self.budget_exhausted = false;
        self.last_error = None;
        self.backend.reset();
    }

    fn selected(&self) -> Option<usize> {
        let n = self.queues.len();
        let sel = self.queue_sel as usize;
        if self.is(Mutant::QueueSelUnbounded) && n > 0 {
            return Some(sel % n);
        }
        (sel < n).then_some(sel)
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device_features();
        if self.driver_features & !offered != 0 || self.driver_features_beyond {
            return false;
        }
        !(self.cfg.knobs.require_version_1
            && self.cfg.version == TransportVersion::Modern
            && self.driver_features & bit(VIRTIO_F_VERSION_1) == 0)
    }

    fn negotiated(&self, b: u32) -> bool {
        if b == VIRTIO_F_EVENT_IDX && self.is(Mutant::EventIdxBitNumberAsMask) {
            return self.driver_features & VIRTIO_F_EVENT_IDX as u64 != 0;
        }
        self.driver_features & bit(b) != 0
    }

    /// Device status write (§2.1, §2.2.2, §3.1).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = value as u8 | (old & DEVICE_NEEDS_RESET);
        let newly = new & !old;
        if self.is(Mutant::SingleBitStatusWrites) && newly.count_ones() != 1 {
            return;
        }
        if !self.legacy() && newly & FEATURES_OK != 0 {
            if self.is(Mutant::FeaturesOkNeverRefused) {
                self.driver_features &= self.device_features();
                self.driver_features_beyond = false;
            }
            if !self.features_acceptable() {
                new &= !FEATURES_OK;
            } else {
                self.backend.negotiated(self.driver_features);
            }
        }
        if self.is(Mutant::FeaturesOkLevelTriggered)
            && old & FEATURES_OK != 0
            && new & FEATURES_OK != 0
            && newly != 0
        {
            // Re-applying the features tears the queues down; the device cannot recover.
            self.status = new;
            self.enter_needs_reset(QueueError::BudgetExhausted);
            return;
        }
        self.status = new;
        if newly & DRIVER_OK != 0 {
            if self.is(Mutant::ConfigInterruptOnDriverOk) {
                self.config_generation = self.config_generation.wrapping_add(1);
                self.raise(Interrupt::ConfigChange);
            }
            for i in 0..self.queues.len() {
                if self.queues[i].ready && !self.queues[i].active {
                    self.activate(i);
                }
            }
        }
    }

    /// Makes queue `i` usable: copies negotiated ring features and validates its layout.
    fn activate(&mut self, i: usize) {
        let event_idx = self.negotiated(VIRTIO_F_EVENT_IDX);
        let indirect = self.negotiated(VIRTIO_F_INDIRECT_DESC);
        let legacy = self.legacy();
        if !legacy && self.negotiated(VIRTIO_F_RING_PACKED) {
            self.activate_packed(i, event_idx, indirect);
            return;
        }
        let page = self.guest_page_size as u64;
        let is_zero_size_mutant = self.is(Mutant::QueueSizeZeroAccepted);
        let align_mutant = self.is(Mutant::QueueAlignZeroDivides);
        let slot = &mut self.queues[i];
        slot.q.event_idx = event_idx;
        slot.q.indirect = indirect;
        slot.q.size = slot.num as u16;
        let mut err = None;
        if legacy {
            // §2.7.2 / §4.2.4: one area at QueuePFN * GuestPageSize; the used ring at the next
            // QueueAlign boundary after the available ring. Computed without overflow: a
            // layout that does not fit in 64 bits is a ring outside guest memory.
            let num = slot.num as u64;
            let desc = slot.pfn as u64 * page;
            let align = slot.align as u64;
            let avail = desc.checked_add(16 * num);
            let avail_end = avail.and_then(|a| a.checked_add(6 + 2 * num));
            let used = if align_mutant {
                // B28: align 0 divides by zero.
                #[allow(clippy::arithmetic_side_effects)]
                {
                    avail_end.map(|e| e.div_ceil(align) * align)
                }
            } else if align == 0 || !align.is_power_of_two() || page == 0 {
                err = Some(QueueError::Misaligned {
                    part: crate::queue::RingPart::UsedRing,
                    addr: avail_end.unwrap_or(u64::MAX),
                    align,
                });
                Some(0)
            } else {
                avail_end.and_then(|e| e.checked_next_multiple_of(align))
            };
            match (avail, used) {
                (Some(avail), Some(used)) => {
                    slot.q.desc_table = desc;
                    slot.q.avail_ring = avail;
                    slot.q.used_ring = used;
                }
                _ => {
                    err = err.or(Some(QueueError::RingOutOfMemory {
                        part: crate::queue::RingPart::AvailRing,
                        addr: desc,
                        len: 16 * num,
                    }));
                }
            }
        }
        if err.is_none() && !(is_zero_size_mutant && slot.num == 0) {
            if slot.num > slot.max as u32 || !slot.num.is_power_of_two() {
                err = Some(QueueError::InvalidSize {
                    size: slot.num,
                    max: slot.max,
                });
            } else if let Err(e) = slot.q.validate(&self.ram, slot.max) {
                err = Some(e);
            }
        }
        slot.q.set_indices(0, 0);
        slot.broken = false;
        slot.active = true;
        if err.is_none() {
            // A valid ring goes to the external servicer, if there is one.
            self.external_start(i);
        }
        if let Some(e) = err {
            if self.is(Mutant::InvalidQueueActivated) {
                return;
            }
            self.queues[i].broken = true;
            if self.is(Mutant::ActivationFailureSilent) {
                return;
            }
            self.enter_needs_reset(e);
        }
    }

    /// Makes packed queue `i` usable (§2.8): QueueDesc is the descriptor ring, QueueDriver
    /// the driver event suppression structure, QueueDevice the device event suppression
    /// structure (§4.2.3); both wrap counters start at 1.
    fn activate_packed(&mut self, i: usize, event_idx: bool, indirect: bool) {
        let in_order = self.negotiated(VIRTIO_F_IN_ORDER);
        let slot = &mut self.queues[i];
        slot.packed = true;
        let p = &mut slot.p;
        p.event_idx = event_idx;
        p.indirect = indirect;
        p.in_order = in_order;
        p.size = slot.num.min(u16::MAX as u32) as u16;
        p.desc_ring = slot.q.desc_table;
        p.driver_event = slot.q.avail_ring;
        p.device_event = slot.q.used_ring;
        p.reset_state();
        slot.broken = false;
        slot.active = true;
        let err = if slot.num > slot.max as u32 {
            Some(QueueError::InvalidSize {
                size: slot.num,
                max: slot.max,
            })
        } else {
            p.validate(&self.ram, slot.max).err()
        };
        if err.is_none() {
            self.external_start(i);
        }
        if let Some(e) = err {
            self.queues[i].broken = true;
            if self.is(Mutant::ActivationFailureSilent) {
                return;
            }
            self.enter_needs_reset(e);
        }
    }

    /// Uses every available list of packed queue `i` the backend is ready for (§2.8). With
    /// VIRTIO_F_IN_ORDER, buffers the backend filled completely are batched: one used
    /// descriptor per batch, with the id of its last buffer (§2.8.8).
    fn service_packed(&mut self, i: usize) {
        let mut budget = Budget::new(self.cfg.step_budget);
        let mut used_any = false;
        let mut failure = None;
        {
            let MmioDevice {
                ram,
                backend,
                queues,
                cfg,
                config,
                config_generation,
                ..
            } = self;
            let QueueSlot {
                p,
                held,
                held_by_backend,
                ..
            } = &mut queues[i];
            // An in-order batch not yet written: (first id, last id, len of last, descriptors).
            let mut batch: Option<(u16, u16, u32, u16)> = None;
            let first_id_mutant = cfg.mutant == Some(Mutant::PackedInOrderFirstId);
            let flush = |p: &mut PackedQueue,
                         ram: &mut GuestRam,
                         batch: &mut Option<(u16, u16, u32, u16)>|
             -> Result<bool, QueueError> {
                match batch.take() {
                    Some((first, last, len, n)) => {
                        let id = if first_id_mutant { first } else { last };
                        p.add_used(ram, id, len, n)?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            };
            let release = |p: &mut PackedQueue,
                           ram: &mut GuestRam,
                           kept: &mut Vec<(u16, u16)>,
                           backend: &mut Box<dyn DeviceBackend>|
             -> Result<bool, QueueError> {
                if kept.is_empty() || !backend.release_held(i as u16) {
                    return Ok(false);
                }
                for (id, count) in kept.drain(..) {
                    p.add_used(ram, id, 0, count)?;
                }
                Ok(true)
            };
            match release(p, ram, held_by_backend, backend) {
                Ok(u) => used_any |= u,
                Err(e) => failure = Some(e),
            }
            while failure.is_none() {
                if !backend.ready_for(i as u16) {
                    break;
                }
                match p.pop(ram, &mut budget) {
                    Ok(None) => break,
                    Ok(Some(c)) => {
                        let writable: u64 = p
                            .chain()
                            .iter()
                            .filter(|d| d.is_write_only())
                            .map(|d| d.len as u64)
                            .sum();
                        let len = match backend.process(i as u16, p.chain(), ram) {
                            Completion::Written(n) => n,
                            // Part of a unit spread over several buffers (net's mergeable
                            // receive buffers): used together with the buffer completing it.
                            Completion::Partial(n) => {
                                held.push((c.id, n, c.count));
                                continue;
                            }
                            Completion::Held => {
                                held_by_backend.push((c.id, c.count));
                                continue;
                            }
                            Completion::Malformed
                                if cfg.mutant == Some(Mutant::MalformedRequestNotReturned) =>
                            {
                                continue
                            }
                            Completion::Malformed => 0,
                        };
                        apply_config_update(&mut **backend, config, config_generation);
                        let full = len as u64 == writable;
                        if held.is_empty() && p.in_order && full && cfg.knobs.batch_in_order {
                            // Batches stay below the ring size so one used descriptor never
                            // skips a whole lap.
                            match &mut batch {
                                Some((_, last, l, n))
                                    if (*n as u32 + c.count as u32) < p.size as u32 =>
                                {
                                    *last = c.id;
                                    *l = len;
                                    *n += c.count;
                                }
                                _ => {
                                    match flush(p, ram, &mut batch) {
                                        Ok(u) => used_any |= u,
                                        Err(e) => {
                                            failure = Some(e);
                                            break;
                                        }
                                    }
                                    batch = Some((c.id, c.id, len, c.count));
                                }
                            }
                            continue;
                        }
                        // One used descriptor per buffer of a unit, in the order the buffers
                        // were made available, after any pending in-order batch (§2.8.12).
                        let unit = held.drain(..).chain(std::iter::once((c.id, len, c.count)));
                        let mut result = flush(p, ram, &mut batch).map(|_| ());
                        for (id, l, n) in unit {
                            result = result.and_then(|()| p.add_used(ram, id, l, n));
                        }
                        if let Err(e) = result {
                            failure = Some(e);
                            break;
                        }
                        used_any = true;
                    }
                    Err(QueueError::BudgetExhausted) => {
                        failure = Some(QueueError::BudgetExhausted);
                        break;
                    }
                    Err(e) => {
                        let skippable = !matches!(e, QueueError::RingOutOfMemory { .. });
                        if cfg.knobs.malformed_chain == MalformedChainPolicy::SkipChain && skippable
                        {
                            let c = p.last_chain();
                            if flush(p, ram, &mut batch).is_ok()
                                && p.add_used(ram, c.id, 0, c.count).is_ok()
                            {
                                used_any = true;
                                continue;
                            }
                        }
                        failure = Some(e);
                        break;
                    }
                }
            }
            match flush(p, ram, &mut batch) {
                Ok(u) => used_any |= u,
                Err(e) => failure = failure.or(Some(e)),
            }
            if failure.is_none() {
                match release(p, ram, held_by_backend, backend) {
                    Ok(u) => used_any |= u,
                    Err(e) => failure = Some(e),
                }
            }
        }
        let wrong_area = self.is(Mutant::PackedDeviceEventInDriverArea);
        if used_any && (self.cfg.knobs.publish_device_event || wrong_area) {
            // The Device Event Suppression structure: next used position and wrap counter,
            // flags ENABLE. The mutant writes it to QueueDriver instead of QueueDevice.
            let p = &self.queues[i].p;
            let (pos, wrap) = p.next_used();
            let mut raw = [0u8; 4];
            raw[..2].copy_from_slice(&((pos & 0x7fff) | (wrap as u16) << 15).to_le_bytes());
            let at = if wrong_area {
                p.driver_event
            } else {
                p.device_event
            };
            let _ = self.ram.write(at, &raw);
        }
        let notify = used_any
            && self.queues[i]
                .p
                .needs_notification(&mut self.ram)
                .unwrap_or(true);
        self.end_service(i, notify, failure);
    }

    /// Available buffer notification for queue `index` (§2.7.13, §4.2.3.3).
    fn notify(&mut self, index: u32) {
        let Some(i) = usize::try_from(index)
            .ok()
            .filter(|&i| i < self.queues.len())
        else {
            return;
        };
        if self.status & DEVICE_NEEDS_RESET != 0 || self.status & FAILED != 0 {
            return;
        }
        if self.status & DRIVER_OK == 0 {
            // §3.1.2: a legacy device lets the driver use it before DRIVER_OK; a modern one
            // must not consume buffers before DRIVER_OK (§2.1.2).
            if !self.legacy() && !self.is(Mutant::ConsumesBeforeDriverOk) {
                return;
            }
            if self.queues[i].ready && !self.queues[i].active {
                self.activate(i);
            }
        }
        if self.external(|s| s.notify(i as u16)) {
            return;
        }
        self.service(i);
    }

    // --- Queues serviced outside the device (`DeviceBackend::queue_servicer`) ---

    /// Runs `f` on the backend's queue servicer; `false` when the transport services the
    /// queues itself (no servicer, or a legacy device).
    fn external(&mut self, f: impl FnOnce(&mut dyn crate::backend::QueueServicer)) -> bool {
        if self.legacy() {
            return false;
        }
        match self.backend.queue_servicer() {
            Some(s) => {
                f(s);
                true
            }
            None => false,
        }
    }

    /// Hands ready queue `i`, whose size and layout the transport has validated, to the
    /// backend's queue servicer, if it has one. An invalid ring is never handed over: the
    /// transport treats it as it would its own (DEVICE_NEEDS_RESET).
    fn external_start(&mut self, i: usize) -> bool {
        let slot = &self.queues[i];
        let ring = crate::backend::QueueRing {
            size: slot.num.min(u16::MAX as u32) as u16,
            desc: slot.q.desc_table,
            driver: slot.q.avail_ring,
            device: slot.q.used_ring,
        };
        self.external(|s| s.start(i as u16, ring))
    }

    /// Raises the used-buffer notification (InterruptStatus bit 0) for every queue whose
    /// external servicer signalled used buffers since the last call
    /// ([`QueueServicer::take_used`](crate::backend::QueueServicer::take_used)). Nothing
    /// happens for a device that services its queues itself.
    pub fn poll_queue_servicer(&mut self) {
        let mut used = Vec::new();
        self.external(|s| used = s.take_used());
        for q in used {
            self.raise(Interrupt::UsedBuffer { queue: q });
        }
    }

    /// The host side delivers `data` on `port` (see [`DeviceBackend::host_send`]); the
    /// device then uses available buffers of the queues the backend names, provided the
    /// driver has set DRIVER_OK (§2.1.2) and the device is not in DEVICE_NEEDS_RESET or
    /// FAILED. Input that finds no buffer stays pending in the backend.
    ///
    /// # Errors
    /// The backend's reason when this device type has no host-side input.
    pub fn host_send(&mut self, port: u32, data: &[u8]) -> Result<(), String> {
        let queues = self.backend.host_send(port, data)?;
        self.service_host_queues(queues);
        Ok(())
    }

    /// The host side does `op` on a connection-oriented device's peer (see
    /// [`DeviceBackend::host_op`]); the device then services the queues the backend names,
    /// under the same conditions as [`MmioDevice::host_send`].
    ///
    /// # Errors
    /// The backend's reason when this device type has no host-side connections.
    pub fn host_op(&mut self, op: crate::backend::HostOp) -> Result<(), String> {
        let queues = self.backend.host_op(op)?;
        self.service_host_queues(queues);
        Ok(())
    }

    /// What the host side sees of the connection named `port` (see
    /// [`DeviceBackend::host_conn`]).
    ///
    /// # Errors
    /// The backend's reason when this device type has no host-side connections.
    pub fn host_conn(&self, port: u32) -> Result<crate::backend::HostConn, String> {
        self.backend.host_conn(port)
    }

    /// Services the queues a host-side event made ready, once the driver has set DRIVER_OK
    /// (§2.1.2) and the device is not in DEVICE_NEEDS_RESET or FAILED.
    fn service_host_queues(&mut self, queues: Vec<u16>) {
        let live = self.status & (DEVICE_NEEDS_RESET | FAILED) == 0
            && (self.status & DRIVER_OK != 0
                || self.legacy()
                || self.is(Mutant::HostInputBeforeDriverOk)
                || self.is(Mutant::NetRxBeforeDriverOk));
        if live {
            for q in queues {
                let i = usize::from(q);
                if i < self.queues.len() {
                    if self.status & DRIVER_OK == 0
                        && self.queues[i].ready
                        && !self.queues[i].active
                    {
                        // Only the legacy device and the mutants get here before DRIVER_OK.
                        self.activate(i);
                    }
                    self.service(i);
                }
            }
        }
    }

    /// What the device passed to the host on `port` since the last call (see
    /// [`DeviceBackend::host_take`]).
    ///
    /// # Errors
    /// The backend's reason when this device type has no host-side output.
    pub fn host_take(&mut self, port: u32) -> Result<Vec<Vec<u8>>, String> {
        self.backend.host_take(port)
    }

    /// Uses every available chain of queue `i` the backend is ready for, then the queues the
    /// backend asked for meanwhile ([`DeviceBackend::take_wakeups`]), a bounded number of
    /// rounds.
    fn service(&mut self, i: usize) {
        let mut work = vec![i];
        let mut rounds = 0;
        while let Some(q) = work.pop() {
            self.service_one(q);
            rounds += 1;
            if rounds >= 64 {
                break;
            }
            for w in self.backend.take_wakeups() {
                if usize::from(w) < self.queues.len() && !work.contains(&usize::from(w)) {
                    work.push(usize::from(w));
                }
            }
        }
    }

    /// Uses every available chain of queue `i` the backend is ready for.
    fn service_one(&mut self, i: usize) {
        let slot = &self.queues[i];
        if !slot.ready || slot.broken {
            return;
        }
        if slot.packed {
            self.service_packed(i);
            return;
        }
        let mut budget = Budget::new(self.cfg.step_budget);
        let mut used_any = false;
        let mut failure = None;
        {
            let MmioDevice {
                ram,
                backend,
                queues,
                cfg,
                config,
                config_generation,
                ..
            } = self;
            let QueueSlot {
                q,
                held,
                held_by_backend,
                ..
            } = &mut queues[i];
            // Chains the backend holds (the balloon's statsq buffer) go back when it says so.
            let release = |q: &mut SplitQueue,
                           ram: &mut GuestRam,
                           kept: &mut Vec<(u16, u16)>,
                           backend: &mut Box<dyn DeviceBackend>|
             -> Result<bool, QueueError> {
                if kept.is_empty() || !backend.release_held(i as u16) {
                    return Ok(false);
                }
                for (h, _) in kept.drain(..) {
                    q.add_used(ram, h, 0)?;
                }
                Ok(true)
            };
            match release(q, ram, held_by_backend, backend) {
                Ok(u) => used_any |= u,
                Err(e) => failure = Some(e),
            }
            while failure.is_none() {
                if !backend.ready_for(i as u16) {
                    break;
                }
                match q.pop(ram, &mut budget) {
                    Ok(None) => break,
                    Ok(Some(head)) => {
                        let len = match backend.process(i as u16, q.chain(), ram) {
                            Completion::Written(n) => n,
                            Completion::Partial(n) => {
                                held.push((head, n, 1));
                                continue;
                            }
                            Completion::Held => {
                                held_by_backend.push((head, 1));
                                continue;
                            }
                            Completion::Malformed
                                if cfg.mutant == Some(Mutant::MalformedRequestNotReturned) =>
                            {
                                continue
                            }
                            Completion::Malformed => 0,
                        };
                        apply_config_update(&mut **backend, config, config_generation);
                        let mut result = Ok(());
                        for (h, l, _) in held.drain(..).chain(std::iter::once((head, len, 1))) {
                            result = result.and_then(|()| q.add_used(ram, h, l));
                        }
                        if let Err(e) = result {
                            failure = Some(e);
                            break;
                        }
                        used_any = true;
                    }
                    Err(QueueError::BudgetExhausted) => {
                        failure = Some(QueueError::BudgetExhausted);
                        break;
                    }
                    Err(e @ QueueError::RingOutOfMemory { .. })
                        if cfg.mutant == Some(Mutant::InvalidQueueActivated) =>
                    {
                        panic!("mutant invalid-queue-activated: {e}");
                    }
                    Err(_) if cfg.mutant == Some(Mutant::RejectedChainNotConsumed) => {
                        // B31: the same bad entry is parsed again and again until the budget.
                        if budget.step().is_err() {
                            failure = Some(QueueError::BudgetExhausted);
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        let skippable = !matches!(
                            e,
                            QueueError::AvailIdxJump { .. } | QueueError::RingOutOfMemory { .. }
                        );
                        if cfg.knobs.malformed_chain == MalformedChainPolicy::SkipChain && skippable
                        {
                            // The entry was consumed; hand the head back unused.
                            let head = q.last_head();
                            if q.add_used(ram, head, 0).is_ok() {
                                used_any = true;
                                continue;
                            }
                        }
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_none() {
                match release(q, ram, held_by_backend, backend) {
                    Ok(u) => used_any |= u,
                    Err(e) => failure = Some(e),
                }
            }
            if failure.is_none() {
                if let Err(e) = q.publish_avail_event(ram) {
                    failure = Some(e);
                }
            }
        }
        let notify = used_any
            && self.queues[i]
                .q
                .needs_notification(&mut self.ram)
                .unwrap_or(true);
        self.end_service(i, notify, failure);
    }

    /// After servicing queue `i` (either layout): the used-buffer notification when one is due,
    /// then what a failure does — an exhausted step budget is recorded, any other error stops
    /// the queue and, on a modern device, announces DEVICE_NEEDS_RESET.
    fn end_service(&mut self, i: usize, notify: bool, failure: Option<QueueError>) {
        if notify {
            self.raise(Interrupt::UsedBuffer { queue: i as u16 });
        }
        match failure {
            Some(QueueError::BudgetExhausted) => {
                self.budget_exhausted = true;
                self.last_error = Some(QueueError::BudgetExhausted);
            }
            Some(e) => {
                self.queues[i].broken = true;
                self.enter_needs_reset(e)
            }
            None => {}
        }
    }

    fn shm_region(&self) -> Option<ShmRegion> {
        let sel = self.shm_sel as usize;
        let regions = &self.cfg.shm_regions;
        if self.is(Mutant::ShmSelOffByOne) {
            // B17: `>` where `>=` belongs; indexing with sel == len panics.
            #[allow(clippy::indexing_slicing)]
            return if sel > regions.len() {
                None
            } else {
                Some(regions[sel])
            };
        }
        regions.get(sel).copied()
    }

    /// Reads `data.len()` bytes (1, 2, 4 or 8) at `offset` of the transport window.
    ///
    /// Control registers (below 0x100) answer 32-bit aligned reads; other widths follow
    /// [`Knobs::narrow_control_read`]. The configuration space answers any width inside it;
    /// bytes past its end read as zero. Never panics (the mutants excepted).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            if self.cfg.knobs.narrow_control_read == OpenRead::Zero {
                data.fill(0);
            }
            return;
        }
        match self.read_register(offset) {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                if self.cfg.knobs.open_read == OpenRead::Zero {
                    data.fill(0)
                }
            }
        }
    }

    fn read_config(&mut self, off: u64, data: &mut [u8]) {
        if self.is(Mutant::NarrowConfigAccessIgnored) && data.len() < 4 {
            return;
        }
        // NET-DEV-41 mutant: the le16 fields at 6 (status) and 8 (max_virtqueue_pairs) of a
        // legacy network device served byte-swapped.
        let swap = self.is(Mutant::NetLegacyConfigBigEndian)
            && self.legacy()
            && self.backend.name() == "net";
        for (k, b) in data.iter_mut().enumerate() {
            *b = off
                .checked_add(k as u64)
                .map(|o| match o {
                    6..=9 if swap => o ^ 1,
                    o => o,
                })
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn read_register(&self, offset: u64) -> Option<u32> {
        let legacy = self.legacy();
        let q = self.selected().map(|i| &self.queues[i]);
        Some(match offset {
            MAGIC if self.is(Mutant::MagicValueBigEndian) => MAGIC_VALUE.swap_bytes(),
            MAGIC => MAGIC_VALUE,
            VERSION => self.cfg.version.register_value(),
            DEVICE_ID if self.is(Mutant::WrongDeviceId) => self.device_id() + 1,
            DEVICE_ID => self.device_id(),
            VENDOR_ID => self.cfg.vendor_id,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => q.map_or(0, |s| s.max as u32),
            QUEUE_READY if !legacy => q.map_or(0, |s| s.ready as u32),
            QUEUE_PFN if legacy => q.map_or(0, |s| s.pfn),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status as u32,
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH if !legacy => {
                let (base, len) = self
                    .shm_region()
                    .map_or((u64::MAX, u64::MAX), |r| (r.base, r.len));
                match offset {
                    SHM_LEN_LOW => len as u32,
                    SHM_LEN_HIGH => (len >> 32) as u32,
                    SHM_BASE_LOW => base as u32,
                    _ => (base >> 32) as u32,
                }
            }
            QUEUE_RESET if !legacy => 0,
            CONFIG_GENERATION if !legacy => self.config_generation,
            _ => return None,
        })
    }

    /// Writes `data` (1, 2, 4 or 8 bytes) at `offset` of the transport window.
    ///
    /// Control registers take 32-bit aligned writes only; anything else is ignored. Writes to
    /// the configuration space go to the backend ([`DeviceBackend::write_config`]).
    /// Never panics (the mutants excepted).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            if self.is(Mutant::LegacyConfigWriteBeforeDriverOkDropped)
                && self.legacy()
                && self.status & ACKNOWLEDGE != 0
                && self.status & DRIVER_OK == 0
            {
                return;
            }
            // Driver-writable fields (the console's emerg_wr) belong to the device type.
            self.backend.write_config(offset - CONFIG, data);
            if let Some((off, bytes)) = self.backend.take_driver_write() {
                let start = off.min(self.config.len());
                let end = off.saturating_add(bytes.len()).min(self.config.len());
                self.config[start..end].copy_from_slice(&bytes[..end - start]);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, v);
    }

    /// Convenience: a 32-bit register read.
    pub fn read_u32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Convenience: a 32-bit register write.
    pub fn write_u32(&mut self, offset: u64, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let legacy = self.legacy();
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES => {
                if !legacy && self.status & FEATURES_OK != 0 {
                    return;
                }
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | ((v as u64) << 32)
                    }
                    sel if self.is(Mutant::DriverFeaturesSelUnchecked) => {
                        // B17 pattern: the page index is not bounded.
                        let mut pages = [0u32; 2];
                        #[allow(clippy::indexing_slicing)]
                        {
                            pages[sel as usize] = v;
                        }
                        self.driver_features_beyond |= pages.iter().any(|&p| p != 0);
                    }
                    _ => self.driver_features_beyond |= v != 0,
                }
                if legacy {
                    self.backend.negotiated(self.driver_features);
                }
            }
            GUEST_PAGE_SIZE if legacy => self.guest_page_size = v,
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if self.is(Mutant::QueueNumNotPerQueue) => {
                for slot in &mut self.queues {
                    slot.num = v;
                }
            }
            QUEUE_NUM => {
                let truncate = self.is(Mutant::QueueNumTruncated);
                if let Some(slot) = self.selected().map(|i| &mut self.queues[i]) {
                    if !slot.ready {
                        slot.num = if truncate { v as u16 as u32 } else { v };
                    }
                }
            }
            QUEUE_ALIGN if legacy => {
                if let Some(slot) = self.selected().map(|i| &mut self.queues[i]) {
                    if !slot.ready {
                        slot.align = v;
                    }
                }
            }
            QUEUE_PFN if legacy => {
                if let Some(i) = self.selected() {
                    let slot = &mut self.queues[i];
                    slot.pfn = v;
                    slot.ready = v != 0;
                    slot.active = false;
                    slot.broken = false;
                    if slot.ready && self.status & DRIVER_OK != 0 {
                        self.activate(i);
                    }
                }
            }
            QUEUE_READY if !legacy => {
                if let Some(i) = self.selected() {
                    match v {
                        0 => {
                            if self.queues[i].active {
                                self.external(|s| s.stop(i as u16));
                            }
                            self.queues[i].ready = false;
                            self.queues[i].active = false;
                        }
                        1 if !self.queues[i].ready => {
                            self.queues[i].ready = true;
                            self.queues[i].active = false;
                            self.queues[i].broken = false;
                            self.queues[i].q.set_indices(0, 0);
                            if self.status & DRIVER_OK != 0 {
                                self.activate(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH
                if !legacy =>
            {
                if let Some(slot) = self.selected().map(|i| &mut self.queues[i]) {
                    if slot.ready {
                        return;
                    }
                    let q = &mut slot.q;
                    let (field, high) = match offset {
                        QUEUE_DESC_LOW => (&mut q.desc_table, false),
                        QUEUE_DESC_HIGH => (&mut q.desc_table, true),
                        QUEUE_DRIVER_LOW => (&mut q.avail_ring, false),
                        QUEUE_DRIVER_HIGH => (&mut q.avail_ring, true),
                        QUEUE_DEVICE_LOW => (&mut q.used_ring, false),
                        _ => (&mut q.used_ring, true),
                    };
                    *field = if high {
                        (*field & 0xffff_ffff) | ((v as u64) << 32)
                    } else {
                        (*field & !0xffff_ffff) | v as u64
                    };
                }
            }
            QUEUE_NOTIFY if self.is(Mutant::NotifyIgnored) => {}
            QUEUE_NOTIFY => self.notify(v & 0xffff),
            INTERRUPT_ACK if !self.is(Mutant::InterruptAckIgnored) => {
                self.interrupt_status &= !v;
            }
            STATUS => self.write_status(v),
            SHM_SEL if !legacy => self.shm_sel = v,
            QUEUE_RESET if !legacy && v == 1 && self.negotiated(VIRTIO_F_RING_RESET) => {
                if let Some(i) = self.selected() {
                    if self.queues[i].active {
                        self.external(|s| s.stop(i as u16));
                    }
                    let max = self.queues[i].max;
                    self.queues[i] = QueueSlot::new(max, &self.cfg.knobs, self.cfg.mutant);
                }
            }
            _ => {}
        }
    }
}
