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
    /// STATUS-DEV-01 (§2.1.2), console: host input is delivered into receive buffers before DRIVER_OK.
    HostInputBeforeDriverOk,
    /// CON-DEV-TX (§5.3.6, §2.7.4): the console transmits only the first descriptor of a chain, assuming the whole message sits in one buffer.
    ConsoleTxFirstDescriptorOnly,
    /// VQ-DEV-15 (§2.7.8.2), console: a receive buffer is returned with the whole writable length as `len`, not the bytes written.
    ConsoleRxLenOverstated,
    /// CON-DEV-06 (§5.3.5, §5.3.6.2): port announcements are sent on the control receiveq before the driver's DEVICE_READY.
    ConsoleControlBeforeDeviceReady,
    /// CON-DEV-03 (§5.3.6.2.1): DEVICE_ADD is sent again for a port that already exists.
    ConsolePortAddTwice,
    /// CON-DEV-02 (§5.3.5.1): a byte written to `emerg_wr` is dropped.
    ConsoleEmergWriteIgnored,
    /// NET-DEV-TX (§2.7.4, §5.1.6.2): the transmit path takes the whole first descriptor as the `virtio_net_hdr` (the layout legacy drivers used), so a header and frame in one descriptor, or a header split across several, loses or corrupts frame bytes.
    NetTxHeaderOwnDescriptor,
    /// NET-DEV (§5.1.6.4): a frame spread over several mergeable receive buffers reports `num_buffers` 1.
    NetNumBuffersAlwaysOne,
    /// VQ-DEV-15 (§2.7.8.2): a receive buffer's used `len` is the buffer's size, not the bytes written.
    NetRxLenIncludesWholeBuffer,
    /// NET-DEV (§5.1.6.1): a legacy device uses the 10-byte header even when VIRTIO_NET_F_MRG_RXBUF was negotiated.
    NetHeaderLenIgnoresMrgRxbuf,
    /// NET-DEV (§5.1.4.1): received frames longer than `mtu` plus the Ethernet header reach the driver although VIRTIO_NET_F_MTU was negotiated.
    NetRxIgnoresMtu,
    /// NET-DEV (§5.1.6.5.2): VIRTIO_NET_CTRL_MAC_ADDR_SET is acknowledged but `mac` in the configuration space does not change.
    NetMacAddrSetIgnored,
    /// NET-DEV-35 (§5.1.6.5.3): 802.1Q-tagged frames are dropped although VIRTIO_NET_F_CTRL_VLAN was not negotiated.
    NetDropsTaggedWithoutCtrlVlan,
    /// NET-DEV-38 (§5.1.6.5.6): frames are steered to receive queues beyond receiveq1 before the driver enabled multiqueue.
    NetMqSteersBeforePairsSet,
    /// NET-DEV (§5.1.3.1, §2.2.2): the device offers VIRTIO_NET_F_MQ, CTRL_RX and others without VIRTIO_NET_F_CTRL_VQ, which they require.
    NetOffersMqWithoutCtrlVq,
    /// STATUS-DEV-01 (§2.1.2): a frame arriving from the host is written into receive buffers posted before DRIVER_OK.
    NetRxBeforeDriverOk,
    /// MMIO-REG-09 (§4.2.2): MagicValue is returned byte-swapped (big-endian), the classic
    /// endianness bug of a register file built on a big-endian host.
    MagicValueBigEndian,
    /// MMIO-REG-10 (§4.2.2): a QueueNotify write is ignored, so buffers made available are
    /// never used.
    NotifyIgnored,
    /// ENT-DEV-02 / BLK-DEV-02 (§5.4.2, §5.2.2): the device exposes a second virtqueue its
    /// device type does not define (block without VIRTIO_BLK_F_MQ has only requestq).
    ExtraQueue,
    /// ENT-ID-01 / BLK-ID-01 (§5.4.1, §5.2.1): DeviceID names another device type (the ID of
    /// the type plus one).
    WrongDeviceId,
    /// BLK-DEV-RO (§5.2.6.2): the block device offers VIRTIO_BLK_F_RO but carries out write
    /// requests and answers them with status OK.
    ReadOnlyWritesAccepted,
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
    /// PVQ-DEV-03 (§2.8.15): in a NEXT list each element takes the WRITE flag of the
    /// descriptor after it (the flags read one descriptor ahead), so the readable data
    /// buffer of a block write before its writable status byte is written.
    PackedWriteFlagOfNext,
    /// PACKED-DEV-04 (§2.8.10): the device publishes its event suppression structure (next
    /// used position, flags ENABLE) at QueueDriver instead of QueueDevice, overwriting the
    /// driver's.
    PackedDeviceEventInDriverArea,
    /// PVQ-DEV-02 (§2.8.12, §2.8.6): after an indirect list the device's used position
    /// advances by the table's entries instead of the one ring descriptor, so the next used
    /// descriptor is written past a gap, not at the next used position.
    PackedUsedSkipsTableEntries,
    /// MMIO-REG-05 (§4.2.2): the queue size is one device-wide field, so a QueueNum write for
    /// the selected queue also resizes every other queue, ready ones included.
    QueueNumNotPerQueue,
    /// NET-DEV-41 (§5.1.4.3): a legacy network device serves `status` and
    /// `max_virtqueue_pairs` big-endian instead of in the guest's native (little-endian) order.
    NetLegacyConfigBigEndian,
    /// INIT-LEG-02 (§3.1.2): a legacy device drops driver writes to its configuration space
    /// between ACKNOWLEDGE and DRIVER_OK, as if configuration were only writable once the
    /// device is live.
    LegacyConfigWriteBeforeDriverOkDropped,
    /// BLK-DEV-DISCARD-UNMAP (§5.2.6.2): a discard request with the unmap flag set is carried
    /// out and answered OK instead of VIRTIO_BLK_S_UNSUPP.
    BlockDiscardUnmapAccepted,
    /// BLK-DEV-WZ-ZEROES (§5.2.6.2): a write-zeroes segment with the unmap flag set is taken
    /// as a discard and leaves the old data readable.
    BlockWriteZeroesUnmapKeepsData,
    /// LIVE-DEV-01: the segments of a discard / write-zeroes request go into a fixed table of
    /// `max_*_seg` entries indexed without a bound, so a request with more segments panics.
    BlockDwzSegmentsUnbounded,
    /// BLK-DEV-UNSUPP (§5.2.6): a discard / write-zeroes segment past the end of the disk is
    /// skipped and the request answered OK, as if sectors that do not exist had been handled.
    BlockDwzRangeUnchecked,
    /// LIVE-DEV-01 (§4.2.2): DriverFeatures indexes a two-page array with DriverFeaturesSel
    /// unchecked, so a write on a page beyond 1 panics (the pattern of B17).
    DriverFeaturesSelUnchecked,
    /// B14 for rings (§2.7): a ring part that ends exactly at the last byte of guest RAM is
    /// taken as lying outside it, so a queue placed at the top of RAM is refused.
    RingEndOffByOne,
    /// BAL-DEV-05 (§5.5.6, §2.7.4): inflate and deflate read page frame numbers from the first descriptor only, assuming the whole array sits in one buffer.
    BalloonPfnFirstDescriptorOnly,
    /// BAL-DEV-03 (§5.5.3.2.1): without VIRTIO_BALLOON_F_MUST_TELL_HOST negotiated, inflate and deflate requests are used but never reach the host.
    BalloonNeedsMustTellHost,
    /// BAL-DEV-13 (§5.5.6.3.3): on the legacy interface the values of the first statsq buffer (historically uninitialized) are passed to the host.
    BalloonLegacyFirstStatsUsed,
    /// BAL-DEV-11 (§5.5.6.3.2): statistics parsing stops at the first tag the device does not recognize, dropping the entries after it.
    BalloonStatsStopAtUnknownTag,
    /// BAL-DEV-12 (§5.5.6.3.2): statistics parsing stops when a tag is lower than the one before, assuming the driver sorts its entries.
    BalloonStatsAssumeAscendingTags,
    /// BAL-DEV-10 (§5.5.6.3): a host request for statistics never uses the held statsq buffer, so the driver is never asked.
    BalloonStatsRequestIgnored,
    /// BAL-DEV-09 (§5.5.6.2.1): `actual` is used after every byte the driver writes, so the host sees half-written values.
    BalloonActualTornWrite,
    /// BAL-DEV-08 (§5.5.4, §5.5.6): the driver's writes to `actual` never reach the host.
    BalloonActualIgnored,
    /// VSOCK-DEV-19 (§5.10.6.2): device packets carry the guest's CID as source and the host's as destination.
    VsockCidsSwapped,
    /// VSOCK-DEV-10 (§5.10.6.3.2): host data goes to the driver without regard to the driver's free buffer space.
    VsockIgnoresCredit,
    /// VSOCK-DEV-13 (§5.10.6.4.2): a packet of unknown type is dropped without an RST reply.
    VsockUnknownTypeIgnored,
    /// VSOCK-DEV-16 (§5.10.6.5): a connection request to a host port nobody listens on is accepted.
    VsockAcceptsWithoutListener,
    /// VSOCK-DEV-12 (§5.10.6.3): CREDIT_REQUEST is never answered with CREDIT_UPDATE.
    VsockCreditRequestIgnored,
    /// VSOCK-DEV-14 (§5.10.6.4, §2.7.4): a tx packet whose header does not fit in its first descriptor is dropped.
    VsockTxHeaderFirstDescriptorOnly,
    /// VSOCK-DEV-17 (§5.10.6.5): SHUTDOWN hints are not remembered, so RECEIVE then SEND never ends the connection.
    VsockShutdownNotCumulative,
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
        Mutant::HostInputBeforeDriverOk,
        Mutant::ConsoleTxFirstDescriptorOnly,
        Mutant::ConsoleRxLenOverstated,
        Mutant::ConsoleControlBeforeDeviceReady,
        Mutant::ConsolePortAddTwice,
        Mutant::ConsoleEmergWriteIgnored,
        Mutant::NetTxHeaderOwnDescriptor,
        Mutant::NetNumBuffersAlwaysOne,
        Mutant::NetRxLenIncludesWholeBuffer,
        Mutant::NetHeaderLenIgnoresMrgRxbuf,
        Mutant::NetRxIgnoresMtu,
        Mutant::NetMacAddrSetIgnored,
        Mutant::NetDropsTaggedWithoutCtrlVlan,
        Mutant::NetMqSteersBeforePairsSet,
        Mutant::NetOffersMqWithoutCtrlVq,
        Mutant::NetRxBeforeDriverOk,
        Mutant::MagicValueBigEndian,
        Mutant::NotifyIgnored,
        Mutant::ExtraQueue,
        Mutant::WrongDeviceId,
        Mutant::ReadOnlyWritesAccepted,
        Mutant::PackedWrapNotFlipped,
        Mutant::PackedNoListCap,
        Mutant::PackedUsedWrapBitConstant,
        Mutant::PackedUsedFlagsBeforeId,
        Mutant::PackedIgnoresEventSuppression,
        Mutant::PackedInOrderFirstId,
        Mutant::PackedWriteFlagOfNext,
        Mutant::PackedDeviceEventInDriverArea,
        Mutant::PackedUsedSkipsTableEntries,
        Mutant::QueueNumNotPerQueue,
        Mutant::NetLegacyConfigBigEndian,
        Mutant::LegacyConfigWriteBeforeDriverOkDropped,
        Mutant::BlockDiscardUnmapAccepted,
        Mutant::BlockWriteZeroesUnmapKeepsData,
        Mutant::BlockDwzSegmentsUnbounded,
        Mutant::BlockDwzRangeUnchecked,
        Mutant::DriverFeaturesSelUnchecked,
        Mutant::RingEndOffByOne,
        Mutant::BalloonPfnFirstDescriptorOnly,
        Mutant::BalloonNeedsMustTellHost,
        Mutant::BalloonLegacyFirstStatsUsed,
        Mutant::BalloonStatsStopAtUnknownTag,
        Mutant::BalloonStatsAssumeAscendingTags,
        Mutant::BalloonStatsRequestIgnored,
        Mutant::BalloonActualTornWrite,
        Mutant::BalloonActualIgnored,
        Mutant::VsockCidsSwapped,
        Mutant::VsockIgnoresCredit,
        Mutant::VsockUnknownTypeIgnored,
        Mutant::VsockAcceptsWithoutListener,
        Mutant::VsockCreditRequestIgnored,
        Mutant::VsockTxHeaderFirstDescriptorOnly,
        Mutant::VsockShutdownNotCumulative,
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
            Mutant::HostInputBeforeDriverOk => "host-input-before-driver-ok",
            Mutant::ConsoleTxFirstDescriptorOnly => "console-tx-first-descriptor-only",
            Mutant::ConsoleRxLenOverstated => "console-rx-len-overstated",
            Mutant::ConsoleControlBeforeDeviceReady => "console-control-before-device-ready",
            Mutant::ConsolePortAddTwice => "console-port-add-twice",
            Mutant::ConsoleEmergWriteIgnored => "console-emerg-write-ignored",
            Mutant::NetTxHeaderOwnDescriptor => "net-tx-header-own-descriptor",
            Mutant::NetNumBuffersAlwaysOne => "net-num-buffers-always-one",
            Mutant::NetRxLenIncludesWholeBuffer => "net-rx-len-whole-buffer",
            Mutant::NetHeaderLenIgnoresMrgRxbuf => "net-header-len-ignores-mrg-rxbuf",
            Mutant::NetRxIgnoresMtu => "net-rx-ignores-mtu",
            Mutant::NetMacAddrSetIgnored => "net-mac-addr-set-ignored",
            Mutant::NetDropsTaggedWithoutCtrlVlan => "net-drops-tagged-without-ctrl-vlan",
            Mutant::NetMqSteersBeforePairsSet => "net-mq-steers-before-pairs-set",
            Mutant::NetOffersMqWithoutCtrlVq => "net-offers-mq-without-ctrl-vq",
            Mutant::NetRxBeforeDriverOk => "net-rx-before-driver-ok",
            Mutant::MagicValueBigEndian => "magic-value-big-endian",
            Mutant::NotifyIgnored => "notify-ignored",
            Mutant::ExtraQueue => "extra-queue",
            Mutant::WrongDeviceId => "wrong-device-id",
            Mutant::ReadOnlyWritesAccepted => "read-only-writes-accepted",
            Mutant::PackedWrapNotFlipped => "packed-wrap-not-flipped",
            Mutant::PackedNoListCap => "packed-no-list-cap",
            Mutant::PackedUsedWrapBitConstant => "packed-used-wrap-bit-constant",
            Mutant::PackedUsedFlagsBeforeId => "packed-used-flags-before-id",
            Mutant::PackedIgnoresEventSuppression => "packed-ignores-event-suppression",
            Mutant::PackedInOrderFirstId => "packed-in-order-first-id",
            Mutant::PackedWriteFlagOfNext => "packed-write-flag-of-next",
            Mutant::PackedDeviceEventInDriverArea => "packed-device-event-in-driver-area",
            Mutant::PackedUsedSkipsTableEntries => "packed-used-skips-table-entries",
            Mutant::QueueNumNotPerQueue => "queue-num-not-per-queue",
            Mutant::NetLegacyConfigBigEndian => "net-legacy-config-big-endian",
            Mutant::LegacyConfigWriteBeforeDriverOkDropped => {
                "legacy-config-write-before-driver-ok-dropped"
            }
            Mutant::BlockDiscardUnmapAccepted => "block-discard-unmap-accepted",
            Mutant::BlockWriteZeroesUnmapKeepsData => "block-write-zeroes-unmap-keeps-data",
            Mutant::BlockDwzSegmentsUnbounded => "block-dwz-segments-unbounded",
            Mutant::BlockDwzRangeUnchecked => "block-dwz-range-unchecked",
            Mutant::DriverFeaturesSelUnchecked => "driver-features-sel-unchecked",
            Mutant::RingEndOffByOne => "ring-end-off-by-one",
            Mutant::BalloonPfnFirstDescriptorOnly => "balloon-pfn-first-descriptor-only",
            Mutant::BalloonNeedsMustTellHost => "balloon-needs-must-tell-host",
            Mutant::BalloonLegacyFirstStatsUsed => "balloon-legacy-first-stats-used",
            Mutant::BalloonStatsStopAtUnknownTag => "balloon-stats-stop-at-unknown-tag",
            Mutant::BalloonStatsAssumeAscendingTags => "balloon-stats-assume-ascending-tags",
            Mutant::BalloonStatsRequestIgnored => "balloon-stats-request-ignored",
            Mutant::BalloonActualTornWrite => "balloon-actual-torn-write",
            Mutant::BalloonActualIgnored => "balloon-actual-ignored",
            Mutant::VsockCidsSwapped => "vsock-cids-swapped",
            Mutant::VsockIgnoresCredit => "vsock-ignores-credit",
            Mutant::VsockUnknownTypeIgnored => "vsock-unknown-type-ignored",
            Mutant::VsockAcceptsWithoutListener => "vsock-accepts-without-listener",
            Mutant::VsockCreditRequestIgnored => "vsock-credit-request-ignored",
            Mutant::VsockTxHeaderFirstDescriptorOnly => "vsock-tx-header-first-descriptor-only",
            Mutant::VsockShutdownNotCumulative => "vsock-shutdown-not-cumulative",
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
            Mutant::HostInputBeforeDriverOk => "C8",
            Mutant::ConsoleTxFirstDescriptorOnly => "B-layout",
            Mutant::ConsoleRxLenOverstated => "C2",
            Mutant::ConsoleControlBeforeDeviceReady => "CON-ctrl",
            Mutant::ConsolePortAddTwice => "CON-ctrl",
            Mutant::ConsoleEmergWriteIgnored => "CON-emerg",
            Mutant::NetTxHeaderOwnDescriptor => "NET-layout",
            Mutant::NetNumBuffersAlwaysOne => "NET-mrg",
            Mutant::NetRxLenIncludesWholeBuffer => "NET-len",
            Mutant::NetHeaderLenIgnoresMrgRxbuf => "NET-hdr",
            Mutant::NetRxIgnoresMtu => "NET-mtu",
            Mutant::NetMacAddrSetIgnored => "NET-ctrl",
            Mutant::NetDropsTaggedWithoutCtrlVlan => "NET-vlan",
            Mutant::NetMqSteersBeforePairsSet => "NET-mq",
            Mutant::NetOffersMqWithoutCtrlVq => "FEAT-deps",
            Mutant::NetRxBeforeDriverOk => "C8",
            Mutant::MagicValueBigEndian => "REG-endian",
            Mutant::NotifyIgnored => "REG-notify",
            Mutant::ExtraQueue => "VQ-count",
            Mutant::WrongDeviceId => "ID",
            Mutant::ReadOnlyWritesAccepted => "BLK-RO",
            Mutant::PackedWrapNotFlipped => "PK-wrap",
            Mutant::PackedNoListCap => "PK-loop",
            Mutant::PackedUsedWrapBitConstant => "PK-used-wrap",
            Mutant::PackedUsedFlagsBeforeId => "PK-publish-order",
            Mutant::PackedIgnoresEventSuppression => "PK-event",
            Mutant::PackedInOrderFirstId => "PK-in-order",
            Mutant::PackedWriteFlagOfNext => "PK-write-flag",
            Mutant::PackedDeviceEventInDriverArea => "PK-event-area",
            Mutant::PackedUsedSkipsTableEntries => "PK-used-gap",
            Mutant::QueueNumNotPerQueue => "REG-per-queue",
            Mutant::NetLegacyConfigBigEndian => "REG-endian",
            Mutant::LegacyConfigWriteBeforeDriverOkDropped => "LEG-init",
            Mutant::BlockDiscardUnmapAccepted => "BLK-status",
            Mutant::BlockWriteZeroesUnmapKeepsData => "BLK-wz",
            Mutant::BlockDwzSegmentsUnbounded => "B-bounds",
            Mutant::BlockDwzRangeUnchecked => "BLK-status",
            Mutant::DriverFeaturesSelUnchecked => "B17",
            Mutant::RingEndOffByOne => "B14",
            Mutant::BalloonPfnFirstDescriptorOnly => "BAL-layout",
            Mutant::BalloonNeedsMustTellHost => "BAL-legacy",
            Mutant::BalloonLegacyFirstStatsUsed => "BAL-legacy",
            Mutant::BalloonStatsStopAtUnknownTag => "BAL-stats",
            Mutant::BalloonStatsAssumeAscendingTags => "BAL-stats",
            Mutant::BalloonStatsRequestIgnored => "BAL-stats",
            Mutant::BalloonActualTornWrite => "BAL-actual",
            Mutant::BalloonActualIgnored => "BAL-actual",
            Mutant::VsockCidsSwapped => "VSOCK-addr",
            Mutant::VsockIgnoresCredit => "VSOCK-credit",
            Mutant::VsockUnknownTypeIgnored => "VSOCK-rst",
            Mutant::VsockAcceptsWithoutListener => "VSOCK-rst",
            Mutant::VsockCreditRequestIgnored => "VSOCK-credit",
            Mutant::VsockTxHeaderFirstDescriptorOnly => "B-layout",
            Mutant::VsockShutdownNotCumulative => "VSOCK-shutdown",
        }
    }

    /// Looks a mutant up by its [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.iter().copied().find(|m| m.name() == name)
    }
}
