//! Injected bugs: each [`Mutant`] turns the reference device into a target that reproduces one
//! historical bug of a real virtio implementation (bug catalog of the project's peer study,
//! ids B01..B36 and B-L*), so every conformance check can be shown able to fail.

/// One injected bug. `None` in a device or queue configuration is the reference behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mutant {
    /// B01: no check that `avail.idx` runs at most queue-size entries ahead.
    AvailIdxJumpUnchecked,
    /// B35 / B-L8: `InterruptStatus` survives a device reset.
    ResetKeepsInterruptStatus,
    /// B02-like / C7: `QueueReady` survives a device reset.
    ResetKeepsQueueReady,
    /// B03 / B33: queue size 0 accepted; ring slot computed with `%` (divides by zero).
    QueueSizeZeroAccepted,
    /// B33: `QueueNum` truncated to 16 bits before it is validated.
    QueueNumTruncated,
    /// B07 / B-L1: status writes accepted only when they set exactly one new bit.
    SingleBitStatusWrites,
    /// B10: writing 0 to `Status` sets FAILED instead of resetting.
    ResetSetsFailed,
    /// B11: an activation failure at DRIVER_OK neither sets DEVICE_NEEDS_RESET nor interrupts.
    ActivationFailureSilent,
    /// B14: a buffer that ends exactly at the end of guest memory is rejected.
    BufferEndOffByOne,
    /// B15: no bound on chain length, so a looped chain spins until the step budget.
    NoChainLengthCap,
    /// B17: `SHMSel` bound checked with `>` instead of `>=` (index out of bounds).
    ShmSelOffByOne,
    /// B19: invalid queue activated at DRIVER_OK; the first notification then panics.
    InvalidQueueActivated,
    /// B20: a request the backend cannot parse is never returned in the used ring.
    MalformedRequestNotReturned,
    /// B21: `QueueSel` beyond the last queue wraps around instead of selecting nothing.
    QueueSelUnbounded,
    /// B22: the EVENT_IDX feature tested with the bit number (29) as a mask.
    EventIdxBitNumberAsMask,
    /// B23: `avail_event` written even when EVENT_IDX was not negotiated.
    AvailEventAlwaysWritten,
    /// B27: a zero-length descriptor is retried forever.
    ZeroLengthLoops,
    /// B28: legacy `QueueAlign` 0 divides by zero when the ring layout is computed.
    QueueAlignZeroDivides,
    /// B31: a rejected chain is not consumed and is parsed again and again.
    RejectedChainNotConsumed,
    /// B34: FEATURES_OK acted on at every status write that contains it (level-triggered),
    /// so DRIVER_OK re-negotiates and ends in DEVICE_NEEDS_RESET.
    FeaturesOkLevelTriggered,
    /// B36: DRIVER_OK bumps ConfigGeneration and raises a configuration-change interrupt.
    ConfigInterruptOnDriverOk,
    /// B-L10: unoffered features are masked off and FEATURES_OK is accepted anyway.
    FeaturesOkNeverRefused,
    /// B-L2: a reset while DEVICE_NEEDS_RESET is set leaves the device FAILED.
    ResetFromNeedsResetFails,
    /// B-L4: 8- and 16-bit accesses to the configuration space are ignored.
    NarrowConfigAccessIgnored,
    /// C9: `used_event` compared off by one.
    EventIdxOffByOne,
    /// C9: `VIRTQ_AVAIL_F_NO_INTERRUPT` ignored.
    IgnoresNoInterrupt,
    /// C5: `used.idx` saturates at 65535 instead of wrapping.
    UsedIdxSaturates,
    /// VQ-DEV-03 / C1: the entropy device also writes into device-readable buffers.
    WritesReadableBuffers,
    /// STATUS-DEV-01: buffers are consumed before DRIVER_OK.
    ConsumesBeforeDriverOk,
    /// C10: InterruptACK ignored, so InterruptStatus never clears.
    InterruptAckIgnored,
    /// Config: ConfigGeneration never changes when the configuration space changes.
    ConfigGenerationStatic,
    /// BLK-DEV-UNSUPP (§5.2.6): a block request of an unknown type completes with status
    /// OK, as if it had been carried out.
    BlockUnknownTypeOk,
    /// FEAT-DEV-01 (§2.2.2, §5.2.3): a block device offers VIRTIO_BLK_F_CONFIG_WCE without
    /// VIRTIO_BLK_F_FLUSH, which that feature depends on.
    WceWithoutFlush,
    /// §2.8.1: the device's copy of the Driver Ring Wrap Counter is not flipped when a list ends
    /// exactly at the last descriptor of the ring, so the device stalls at the full-ring wrap.
    PackedWrapNotFlipped,
    /// §2.8.5: no bound on the length of a packed list, so a list whose every descriptor has
    /// NEXT is walked round the ring until the step budget.
    PackedNoListCap,
    /// §2.8.1: used descriptors always carry AVAIL|USED = 1, whatever the Device Ring Wrap
    /// Counter, so after the first wrap the driver never sees them used.
    PackedUsedWrapBitConstant,
    /// §2.8.15: the used descriptor's flags (USED bit) are written before its id and len.
    PackedUsedFlagsBeforeId,
    /// §2.8.10: the Driver Event Suppression structure is not read; every use notifies.
    PackedIgnoresEventSuppression,
    /// §2.8.8: a batched in-order used descriptor carries the id of the batch's first buffer
    /// instead of its last.
    PackedInOrderFirstId,
}

impl Mutant {
    /// Every mutant, in declaration order.
    pub const ALL: &'static [Mutant] = &[
        Mutant::AvailIdxJumpUnchecked,
        Mutant::ResetKeepsInterruptStatus,
        Mutant::ResetKeepsQueueReady,
        Mutant::QueueSizeZeroAccepted,
        Mutant::QueueNumTruncated,
        Mutant::SingleBitStatusWrites,
        Mutant::ResetSetsFailed,
        Mutant::ActivationFailureSilent,
        Mutant::BufferEndOffByOne,
        Mutant::NoChainLengthCap,
        Mutant::ShmSelOffByOne,
        Mutant::InvalidQueueActivated,
        Mutant::MalformedRequestNotReturned,
        Mutant::QueueSelUnbounded,
        Mutant::EventIdxBitNumberAsMask,
        Mutant::AvailEventAlwaysWritten,
        Mutant::ZeroLengthLoops,
        Mutant::QueueAlignZeroDivides,
        Mutant::RejectedChainNotConsumed,
        Mutant::FeaturesOkLevelTriggered,
        Mutant::ConfigInterruptOnDriverOk,
        Mutant::FeaturesOkNeverRefused,
        Mutant::ResetFromNeedsResetFails,
        Mutant::NarrowConfigAccessIgnored,
        Mutant::EventIdxOffByOne,
        Mutant::IgnoresNoInterrupt,
        Mutant::UsedIdxSaturates,
        Mutant::WritesReadableBuffers,
        Mutant::ConsumesBeforeDriverOk,
        Mutant::InterruptAckIgnored,
        Mutant::ConfigGenerationStatic,
        Mutant::BlockUnknownTypeOk,
        Mutant::WceWithoutFlush,
        Mutant::PackedWrapNotFlipped,
        Mutant::PackedNoListCap,
        Mutant::PackedUsedWrapBitConstant,
        Mutant::PackedUsedFlagsBeforeId,
        Mutant::PackedIgnoresEventSuppression,
        Mutant::PackedInOrderFirstId,
    ];

    /// Command-line name, e.g. `avail-idx-jump-unchecked` (used as `mutant:<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Mutant::AvailIdxJumpUnchecked => "avail-idx-jump-unchecked",
            Mutant::ResetKeepsInterruptStatus => "reset-keeps-interrupt-status",
            Mutant::ResetKeepsQueueReady => "reset-keeps-queue-ready",
            Mutant::QueueSizeZeroAccepted => "queue-size-zero-accepted",
            Mutant::QueueNumTruncated => "queue-num-truncated",
            Mutant::SingleBitStatusWrites => "single-bit-status-writes",
            Mutant::ResetSetsFailed => "reset-sets-failed",
            Mutant::ActivationFailureSilent => "activation-failure-silent",
            Mutant::BufferEndOffByOne => "buffer-end-off-by-one",
            Mutant::NoChainLengthCap => "no-chain-length-cap",
            Mutant::ShmSelOffByOne => "shm-sel-off-by-one",
            Mutant::InvalidQueueActivated => "invalid-queue-activated",
            Mutant::MalformedRequestNotReturned => "malformed-request-not-returned",
            Mutant::QueueSelUnbounded => "queue-sel-unbounded",
            Mutant::EventIdxBitNumberAsMask => "event-idx-bit-number-as-mask",
            Mutant::AvailEventAlwaysWritten => "avail-event-always-written",
            Mutant::ZeroLengthLoops => "zero-length-loops",
            Mutant::QueueAlignZeroDivides => "queue-align-zero-divides",
            Mutant::RejectedChainNotConsumed => "rejected-chain-not-consumed",
            Mutant::FeaturesOkLevelTriggered => "features-ok-level-triggered",
            Mutant::ConfigInterruptOnDriverOk => "config-interrupt-on-driver-ok",
            Mutant::FeaturesOkNeverRefused => "features-ok-never-refused",
            Mutant::ResetFromNeedsResetFails => "reset-from-needs-reset-fails",
            Mutant::NarrowConfigAccessIgnored => "narrow-config-access-ignored",
            Mutant::EventIdxOffByOne => "event-idx-off-by-one",
            Mutant::IgnoresNoInterrupt => "ignores-no-interrupt",
            Mutant::UsedIdxSaturates => "used-idx-saturates",
            Mutant::WritesReadableBuffers => "writes-readable-buffers",
            Mutant::ConsumesBeforeDriverOk => "consumes-before-driver-ok",
            Mutant::InterruptAckIgnored => "interrupt-ack-ignored",
            Mutant::ConfigGenerationStatic => "config-generation-static",
            Mutant::BlockUnknownTypeOk => "block-unknown-type-ok",
            Mutant::WceWithoutFlush => "wce-without-flush",
            Mutant::PackedWrapNotFlipped => "packed-wrap-not-flipped",
            Mutant::PackedNoListCap => "packed-no-list-cap",
            Mutant::PackedUsedWrapBitConstant => "packed-used-wrap-bit-constant",
            Mutant::PackedUsedFlagsBeforeId => "packed-used-flags-before-id",
            Mutant::PackedIgnoresEventSuppression => "packed-ignores-event-suppression",
            Mutant::PackedInOrderFirstId => "packed-in-order-first-id",
        }
    }

    /// The bug-catalog entry this mutant reproduces (e.g. `B01`), or the bug class.
    pub fn catalog_id(self) -> &'static str {
        match self {
            Mutant::AvailIdxJumpUnchecked => "B01",
            Mutant::ResetKeepsInterruptStatus => "B35",
            Mutant::ResetKeepsQueueReady => "B02/C7",
            Mutant::QueueSizeZeroAccepted => "B03",
            Mutant::QueueNumTruncated => "B33",
            Mutant::SingleBitStatusWrites => "B07",
            Mutant::ResetSetsFailed => "B10",
            Mutant::ActivationFailureSilent => "B11",
            Mutant::BufferEndOffByOne => "B14",
            Mutant::NoChainLengthCap => "B15",
            Mutant::ShmSelOffByOne => "B17",
            Mutant::InvalidQueueActivated => "B19",
            Mutant::MalformedRequestNotReturned => "B20",
            Mutant::QueueSelUnbounded => "B21",
            Mutant::EventIdxBitNumberAsMask => "B22",
            Mutant::AvailEventAlwaysWritten => "B23",
            Mutant::ZeroLengthLoops => "B27",
            Mutant::QueueAlignZeroDivides => "B28",
            Mutant::RejectedChainNotConsumed => "B31",
            Mutant::FeaturesOkLevelTriggered => "B34",
            Mutant::ConfigInterruptOnDriverOk => "B36",
            Mutant::FeaturesOkNeverRefused => "B-L10",
            Mutant::ResetFromNeedsResetFails => "B-L2",
            Mutant::NarrowConfigAccessIgnored => "B-L4",
            Mutant::EventIdxOffByOne => "C9",
            Mutant::IgnoresNoInterrupt => "C9",
            Mutant::UsedIdxSaturates => "C5",
            Mutant::WritesReadableBuffers => "C1",
            Mutant::ConsumesBeforeDriverOk => "C8",
            Mutant::InterruptAckIgnored => "C10",
            Mutant::ConfigGenerationStatic => "C10",
            Mutant::BlockUnknownTypeOk => "BLK-status",
            Mutant::WceWithoutFlush => "FEAT-deps",
            Mutant::PackedWrapNotFlipped => "PK-wrap",
            Mutant::PackedNoListCap => "PK-loop",
            Mutant::PackedUsedWrapBitConstant => "PK-used-wrap",
            Mutant::PackedUsedFlagsBeforeId => "PK-publish-order",
            Mutant::PackedIgnoresEventSuppression => "PK-event",
            Mutant::PackedInOrderFirstId => "PK-in-order",
        }
    }

    /// Looks a mutant up by its [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.iter().copied().find(|m| m.name() == name)
    }
}
