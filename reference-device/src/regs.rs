//! Register offsets, status bits, interrupt bits and feature bits of the virtio-mmio transport.
//!
//! Offsets are byte offsets from the start of one transport window (VIRTIO 1.3 §4.2.2 for
//! version 2, §4.2.4 for the legacy version 1). All control registers are 32 bits wide and
//! little-endian; the device configuration space starts at [`CONFIG`].

/// `MagicValue` (R): always [`MAGIC_VALUE`], "virt" in little-endian bytes.
pub const MAGIC: u64 = 0x000;
/// `Version` (R): 2 for the modern transport, 1 for the legacy one.
pub const VERSION: u64 = 0x004;
/// `DeviceID` (R): the device type of VIRTIO chapter 5 (4 = entropy, 2 = block).
pub const DEVICE_ID: u64 = 0x008;
/// `VendorID` (R): subsystem vendor id; the spec mandates no value.
pub const VENDOR_ID: u64 = 0x00c;
/// `DeviceFeatures` (R): the 32 offered feature bits of the page chosen by `DeviceFeaturesSel`.
pub const DEVICE_FEATURES: u64 = 0x010;
/// `DeviceFeaturesSel` (W): page number (bits `32*sel ..= 32*sel+31`) read through `DeviceFeatures`.
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// `DriverFeatures` (W): the accepted feature bits of the page chosen by `DriverFeaturesSel`.
pub const DRIVER_FEATURES: u64 = 0x020;
/// `DriverFeaturesSel` (W): page number written through `DriverFeatures`.
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// `GuestPageSize` (W, legacy only): guest page size in bytes, the unit of `QueuePFN`.
pub const GUEST_PAGE_SIZE: u64 = 0x028;
/// `QueueSel` (W): the virtqueue the queue registers apply to.
pub const QUEUE_SEL: u64 = 0x030;
/// `QueueNumMax` (R): largest queue size the selected queue supports; 0 when the queue is absent.
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// `QueueNum` (W): queue size the driver uses for the selected queue.
pub const QUEUE_NUM: u64 = 0x038;
/// `QueueAlign` (W, legacy only): used-ring alignment in bytes of the selected queue.
pub const QUEUE_ALIGN: u64 = 0x03c;
/// `QueuePFN` (RW, legacy only): guest page number of the selected queue; 0 stops the queue.
pub const QUEUE_PFN: u64 = 0x040;
/// `QueueReady` (RW, version 2): 1 lets the device use the selected queue.
pub const QUEUE_READY: u64 = 0x044;
/// `QueueNotify` (W): available-buffer notification; the value is the queue index.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// `InterruptStatus` (R): bit 0 used buffer, bit 1 configuration change.
pub const INTERRUPT_STATUS: u64 = 0x060;
/// `InterruptACK` (W): clears the written bits of `InterruptStatus`.
pub const INTERRUPT_ACK: u64 = 0x064;
/// `Status` (RW): device status field (§2.1); writing 0 resets the device.
pub const STATUS: u64 = 0x070;
/// `QueueDescLow` (W): low 32 bits of the descriptor area's guest physical address.
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// `QueueDescHigh` (W): high 32 bits of the descriptor area's guest physical address.
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// `QueueDriverLow` (W): low 32 bits of the driver area (available ring).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// `QueueDriverHigh` (W): high 32 bits of the driver area (available ring).
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// `QueueDeviceLow` (W): low 32 bits of the device area (used ring).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// `QueueDeviceHigh` (W): high 32 bits of the device area (used ring).
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// `SHMSel` (W): shared memory region id.
pub const SHM_SEL: u64 = 0x0ac;
/// `SHMLenLow` (R): low 32 bits of the selected region's length in bytes (all ones when absent).
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// `SHMLenHigh` (R): high 32 bits of the selected region's length.
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// `SHMBaseLow` (R): low 32 bits of the selected region's guest physical base.
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// `SHMBaseHigh` (R): high 32 bits of the selected region's guest physical base.
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// `QueueReset` (RW): writing 1 resets the selected queue (only with VIRTIO_F_RING_RESET).
pub const QUEUE_RESET: u64 = 0x0c0;
/// `ConfigGeneration` (R): changes whenever the device configuration space changes.
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device configuration space.
pub const CONFIG: u64 = 0x100;
/// Size in bytes of one transport window as laid out by QEMU's microvm (0x200).
pub const WINDOW_SIZE: u64 = 0x200;

/// Value of `MagicValue`: the bytes 'v','i','r','t' read as a little-endian u32.
pub const MAGIC_VALUE: u32 = 0x7472_6976;

/// Device status bit: the guest noticed the device (§2.1).
pub const ACKNOWLEDGE: u8 = 1;
/// Device status bit: the guest knows how to drive the device.
pub const DRIVER: u8 = 2;
/// Device status bit: the driver is set up and ready to drive the device.
pub const DRIVER_OK: u8 = 4;
/// Device status bit: feature negotiation is complete (version 2 only).
pub const FEATURES_OK: u8 = 8;
/// Device status bit: the device hit an error it cannot recover from without a reset.
pub const DEVICE_NEEDS_RESET: u8 = 64;
/// Device status bit: the guest gave up on the device.
pub const FAILED: u8 = 128;

/// `InterruptStatus` bit: the device used a buffer in at least one virtqueue.
pub const INT_USED_BUFFER: u32 = 1;
/// `InterruptStatus` bit: the device configuration changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Descriptor flag: the chain continues at `next` (§2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors (§2.7.5.3).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks for no used-buffer notification (§2.7.7).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks for no available-buffer notification (§2.7.10).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Feature bit 27 (legacy): the device accepts any descriptor layout (§6.3).
pub const VIRTIO_F_ANY_LAYOUT: u32 = 27;
/// Feature bit 28: indirect descriptors.
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
/// Feature bit 29: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_F_EVENT_IDX: u32 = 29;
/// Feature bit 32: compliance with VIRTIO 1.0 and later; a version-2 device offers it (§6.2).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit 33: the device is behind an IOMMU or other platform translation.
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
/// Feature bit 34: packed virtqueue layout.
pub const VIRTIO_F_RING_PACKED: u32 = 34;
/// Feature bit 35: buffers are used in the order they were made available.
pub const VIRTIO_F_IN_ORDER: u32 = 35;
/// Feature bit 38: QueueNotify carries extra notification data.
pub const VIRTIO_F_NOTIFICATION_DATA: u32 = 38;
/// Feature bit 40: individual virtqueue reset through `QueueReset` (§2.6.1).
pub const VIRTIO_F_RING_RESET: u32 = 40;

/// Block feature bit 6: `blk_size` in the configuration space is valid (§5.2.3).
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Block feature: the device is read-only (§5.2.3); writes end with IOERR (§5.2.6.2).
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Block feature bit 9: the device supports the flush command.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Block feature bit 11: the cache mode (`writeback`) is in the configuration space; it
/// depends on VIRTIO_BLK_F_FLUSH (§5.2.5).
pub const VIRTIO_BLK_F_CONFIG_WCE: u32 = 11;
/// Block feature bit 13: the device supports discard requests; `max_discard_sectors`,
/// `max_discard_seg` and `discard_sector_alignment` are valid (§5.2.3, §5.2.4).
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Block feature bit 14: the device supports write-zeroes requests;
/// `max_write_zeroes_sectors`, `max_write_zeroes_seg` and `write_zeroes_may_unmap` are valid.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Mask with only `bit` set.
pub const fn bit(bit: u32) -> u64 {
    1u64 << bit
}

/// Spec name of the control register at `offset`, for messages and reports.
///
/// `legacy` selects the version-1 register map (§4.2.4). Returns `None` for offsets that name
/// no register in that map, and `"Config"` for offsets at or past [`CONFIG`].
pub fn register_name(offset: u64, legacy: bool) -> Option<&'static str> {
    Some(match offset {
        MAGIC => "MagicValue",
        VERSION => "Version",
        DEVICE_ID => "DeviceID",
        VENDOR_ID => "VendorID",
        DEVICE_FEATURES => "DeviceFeatures",
        DEVICE_FEATURES_SEL => "DeviceFeaturesSel",
        DRIVER_FEATURES => "DriverFeatures",
        DRIVER_FEATURES_SEL => "DriverFeaturesSel",
        GUEST_PAGE_SIZE if legacy => "GuestPageSize",
        QUEUE_SEL => "QueueSel",
        QUEUE_NUM_MAX => "QueueNumMax",
        QUEUE_NUM => "QueueNum",
        QUEUE_ALIGN if legacy => "QueueAlign",
        QUEUE_PFN if legacy => "QueuePFN",
        QUEUE_READY if !legacy => "QueueReady",
        QUEUE_NOTIFY => "QueueNotify",
        INTERRUPT_STATUS => "InterruptStatus",
        INTERRUPT_ACK => "InterruptACK",
        STATUS => "Status",
        QUEUE_DESC_LOW if !legacy => "QueueDescLow",
        QUEUE_DESC_HIGH if !legacy => "QueueDescHigh",
        QUEUE_DRIVER_LOW if !legacy => "QueueDriverLow",
        QUEUE_DRIVER_HIGH if !legacy => "QueueDriverHigh",
        QUEUE_DEVICE_LOW if !legacy => "QueueDeviceLow",
        QUEUE_DEVICE_HIGH if !legacy => "QueueDeviceHigh",
        SHM_SEL if !legacy => "SHMSel",
        SHM_LEN_LOW if !legacy => "SHMLenLow",
        SHM_LEN_HIGH if !legacy => "SHMLenHigh",
        SHM_BASE_LOW if !legacy => "SHMBaseLow",
        SHM_BASE_HIGH if !legacy => "SHMBaseHigh",
        QUEUE_RESET if !legacy => "QueueReset",
        CONFIG_GENERATION if !legacy => "ConfigGeneration",
        o if o >= CONFIG => "Config",
        _ => return None,
    })
}

/// Offset of the register named `name` (spec names as in [`register_name`], case-sensitive).
/// `QueueSizeMax`/`QueueSize` (the v1.3 names) are accepted as aliases of `QueueNumMax`/`QueueNum`.
pub fn register_offset(name: &str) -> Option<u64> {
    Some(match name {
        "MagicValue" => MAGIC,
        "Version" => VERSION,
        "DeviceID" => DEVICE_ID,
        "VendorID" => VENDOR_ID,
        "DeviceFeatures" | "HostFeatures" => DEVICE_FEATURES,
        "DeviceFeaturesSel" | "HostFeaturesSel" => DEVICE_FEATURES_SEL,
        "DriverFeatures" | "GuestFeatures" => DRIVER_FEATURES,
        "DriverFeaturesSel" | "GuestFeaturesSel" => DRIVER_FEATURES_SEL,
        "GuestPageSize" => GUEST_PAGE_SIZE,
        "QueueSel" => QUEUE_SEL,
        "QueueNumMax" | "QueueSizeMax" => QUEUE_NUM_MAX,
        "QueueNum" | "QueueSize" => QUEUE_NUM,
        "QueueAlign" => QUEUE_ALIGN,
        "QueuePFN" => QUEUE_PFN,
        "QueueReady" => QUEUE_READY,
        "QueueNotify" => QUEUE_NOTIFY,
        "InterruptStatus" => INTERRUPT_STATUS,
        "InterruptACK" => INTERRUPT_ACK,
        "Status" => STATUS,
        "QueueDescLow" => QUEUE_DESC_LOW,
        "QueueDescHigh" => QUEUE_DESC_HIGH,
        "QueueDriverLow" | "QueueAvailLow" => QUEUE_DRIVER_LOW,
        "QueueDriverHigh" | "QueueAvailHigh" => QUEUE_DRIVER_HIGH,
        "QueueDeviceLow" | "QueueUsedLow" => QUEUE_DEVICE_LOW,
        "QueueDeviceHigh" | "QueueUsedHigh" => QUEUE_DEVICE_HIGH,
        "SHMSel" => SHM_SEL,
        "SHMLenLow" => SHM_LEN_LOW,
        "SHMLenHigh" => SHM_LEN_HIGH,
        "SHMBaseLow" => SHM_BASE_LOW,
        "SHMBaseHigh" => SHM_BASE_HIGH,
        "QueueReset" => QUEUE_RESET,
        "ConfigGeneration" => CONFIG_GENERATION,
        "Config" => CONFIG,
        _ => return None,
    })
}
