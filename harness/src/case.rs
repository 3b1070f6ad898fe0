//! Scripted cases (`specs/sequences/*.jsonl`): a header line and one step per line. The format
//! is documented in `specs/README.md`.

use crate::catalog::{Catalog, Level};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::Path;
use virtio_reference_device::regs;

/// A number written as a JSON number or as a string (`"0x74726976"`, `"42"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number (a non-negative JSON integer or a string like \"0x10\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Num, E> {
                u64::try_from(v)
                    .map(Num)
                    .map_err(|_| E::custom(format!("`{v}` is negative; expected a number >= 0")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Num, E> {
                Err(E::custom(format!("`{v}` is not a whole number")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Num, E> {
                let t = s.trim().replace('_', "");
                let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => t.parse(),
                };
                r.map(Num).map_err(|_| {
                    E::custom(format!(
                        "`{s}` is not a number (expected decimal or 0x-prefixed hex below 2^64)"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &self
                .0
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    }
}

impl Serialize for BlkType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

/// Bytes written as a hex string (`"00ff10"`; spaces allowed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hex(pub Vec<u8>);

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_hex(&s).map(Hex).map_err(serde::de::Error::custom)
    }
}

/// Bytes of a hex string (`"00ff10"`, optional `0x` prefix, whitespace ignored). Errors name
/// the string and the first offending character.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let t = t.strip_prefix("0x").unwrap_or(&t);
    if let Some(c) = t.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not hex: `{c}` is not a hex digit"));
    }
    if !t.len().is_multiple_of(2) {
        return Err(format!(
            "`{s}` is not hex: odd number of digits ({})",
            t.len()
        ));
    }
    // Only ASCII hex digits remain, so every byte index is a character boundary.
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|e| format!("`{s}`: {e}")))
        .collect()
}

/// One requirement id or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reqs {
    /// One id.
    One(String),
    /// Several ids.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Reqs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Reqs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a requirement id or a list of requirement ids")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Reqs, E> {
                Ok(Reqs::One(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Reqs, A::Error> {
                let mut v = Vec::new();
                while let Some(id) = a.next_element::<String>()? {
                    v.push(id);
                }
                Ok(Reqs::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Reqs {
    /// The ids as a list.
    pub fn ids(&self) -> Vec<String> {
        match self {
            Reqs::One(s) => vec![s.clone()],
            Reqs::Many(v) => v.clone(),
        }
    }
}

/// Grading overrides a checking step may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Grade {
    /// Requirement ids this check proves (default: the case's).
    pub req: Option<Reqs>,
    /// Level override.
    pub level: Option<Level>,
}

/// The register a step addresses: by spec name or by offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Reg {
    /// Spec register name (`QueueNumMax`, `Config`, ...).
    pub reg: Option<String>,
    /// Byte offset in the window (added to `reg`'s offset when both are given).
    pub offset: Option<Num>,
    /// Access width in bytes: 1, 2, 4 or 8 (default 4).
    pub width: Option<u8>,
    /// Queue to select with QueueSel first.
    pub queue: Option<u32>,
}

/// Initialization order variants (`init` step): the spec's order or a real driver's
/// personality (see `harness/src/runner/personality.rs` for what each one does and where in
/// the driver's source it comes from). `--driver` sets the order of every `init` step that
/// does not name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// §3.1.1 order, one status bit per write, each read back.
    #[default]
    Spec,
    /// Linux `drivers/virtio/virtio_mmio.c` + `virtio.c` (version 2 path).
    Linux,
    /// ACKNOWLEDGE|DRIVER in a single write right after a reset (rcore's habit, in isolation).
    Combined,
    /// NetBSD `sys/dev/virtio/virtio_mmio.c` + the MI `virtio.c`.
    Netbsd,
    /// FreeBSD `sys/dev/virtio/mmio/virtio_mmio.c` + `virtio.c`.
    Freebsd,
    /// rcore-os `virtio-drivers` (`src/transport/mmio.rs`, `src/queue.rs`).
    Rcore,
    /// Linux `virtio_mmio.c` on a version 1 (legacy) device; on a version 2 device the same
    /// as `linux`.
    Legacy,
}

impl Order {
    /// The driver personalities `--driver` accepts, in report order.
    pub const DRIVERS: [Order; 6] = [
        Order::Spec,
        Order::Linux,
        Order::Netbsd,
        Order::Freebsd,
        Order::Rcore,
        Order::Legacy,
    ];

    /// Lower-case name (`spec`, `linux`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Order::Spec => "spec",
            Order::Linux => "linux",
            Order::Combined => "combined",
            Order::Netbsd => "netbsd",
            Order::Freebsd => "freebsd",
            Order::Rcore => "rcore",
            Order::Legacy => "legacy",
        }
    }
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Order::DRIVERS
            .iter()
            .copied()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown driver `{s}`: expected spec, linux, netbsd, freebsd, rcore or legacy"
                )
            })
    }
}

/// How far `init` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Upto {
    /// Status = ACKNOWLEDGE.
    Acknowledge,
    /// Status = ACKNOWLEDGE | DRIVER.
    Driver,
    /// Features negotiated, FEATURES_OK set and checked.
    FeaturesOk,
    /// Queues set up as well.
    Queues,
    /// DRIVER_OK set.
    #[default]
    DriverOk,
}

/// A queue to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct QueueSpec {
    /// Queue index.
    pub index: u16,
    /// Queue size in entries.
    pub size: u16,
    /// Legacy QueueAlign in bytes.
    pub align: Option<u32>,
}

/// A feature: a name (`EVENT_IDX`) or a bit number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Feature {
    /// Bit number.
    Bit(u32),
    /// Name without the `VIRTIO_F_` prefix (or with it).
    Name(String),
}

impl<'de> Deserialize<'de> for Feature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Feature;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a feature name (`EVENT_IDX`) or a bit number (0..=63)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Feature, E> {
                match u32::try_from(v) {
                    Ok(b) if b < 64 => Ok(Feature::Bit(b)),
                    _ => Err(E::custom(format!(
                        "feature bit {v} is out of range (0..=63: the harness negotiates feature pages 0 and 1)"
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Feature, E> {
                Err(E::custom(format!(
                    "feature bit {v} is out of range (0..=63: the harness negotiates feature pages 0 and 1)"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Feature, E> {
                Ok(Feature::Name(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Feature::Bit(b) => write!(f, "bit {b}"),
            Feature::Name(n) => write!(f, "`{n}`"),
        }
    }
}

/// Feature bit number of a name; `None` when unknown.
pub fn feature_bit(name: &str) -> Option<u32> {
    let n = name.strip_prefix("VIRTIO_F_").unwrap_or(name);
    Some(match n {
        "INDIRECT_DESC" | "RING_INDIRECT_DESC" => regs::VIRTIO_F_INDIRECT_DESC,
        "EVENT_IDX" | "RING_EVENT_IDX" => regs::VIRTIO_F_EVENT_IDX,
        "VERSION_1" => regs::VIRTIO_F_VERSION_1,
        "ACCESS_PLATFORM" => regs::VIRTIO_F_ACCESS_PLATFORM,
        "RING_PACKED" => regs::VIRTIO_F_RING_PACKED,
        "IN_ORDER" => regs::VIRTIO_F_IN_ORDER,
        "NOTIFICATION_DATA" => regs::VIRTIO_F_NOTIFICATION_DATA,
        "RING_RESET" => regs::VIRTIO_F_RING_RESET,
        "BLK_F_FLUSH" | "VIRTIO_BLK_F_FLUSH" => regs::VIRTIO_BLK_F_FLUSH,
        "BLK_F_BLK_SIZE" | "VIRTIO_BLK_F_BLK_SIZE" => regs::VIRTIO_BLK_F_BLK_SIZE,
        "BLK_F_DISCARD" | "VIRTIO_BLK_F_DISCARD" => regs::VIRTIO_BLK_F_DISCARD,
        "BLK_F_WRITE_ZEROES" | "VIRTIO_BLK_F_WRITE_ZEROES" => regs::VIRTIO_BLK_F_WRITE_ZEROES,
        "CONSOLE_F_SIZE" | "VIRTIO_CONSOLE_F_SIZE" => 0,
        "CONSOLE_F_MULTIPORT" | "VIRTIO_CONSOLE_F_MULTIPORT" => 1,
        "CONSOLE_F_EMERG_WRITE" | "VIRTIO_CONSOLE_F_EMERG_WRITE" => 2,
        "ANY_LAYOUT" => regs::VIRTIO_F_ANY_LAYOUT,
        "BALLOON_F_MUST_TELL_HOST" | "VIRTIO_BALLOON_F_MUST_TELL_HOST" => 0,
        "BALLOON_F_STATS_VQ" | "VIRTIO_BALLOON_F_STATS_VQ" => 1,
        "BALLOON_F_DEFLATE_ON_OOM" | "VIRTIO_BALLOON_F_DEFLATE_ON_OOM" => 2,
        "BALLOON_F_FREE_PAGE_HINT" | "VIRTIO_BALLOON_F_FREE_PAGE_HINT" => 3,
        "BALLOON_F_PAGE_POISON" | "VIRTIO_BALLOON_F_PAGE_POISON" => 4,
        "BALLOON_F_PAGE_REPORTING" | "VIRTIO_BALLOON_F_PAGE_REPORTING" => 5,
        "VSOCK_F_STREAM" | "VIRTIO_VSOCK_F_STREAM" => 0,
        "VSOCK_F_SEQPACKET" | "VIRTIO_VSOCK_F_SEQPACKET" => 1,
        "VSOCK_F_NO_IMPLIED_STREAM" | "VIRTIO_VSOCK_F_NO_IMPLIED_STREAM" => 2,
        _ => return net_feature_bit(n.strip_prefix("VIRTIO_").unwrap_or(n)),
    })
}

/// Bit number of a virtio-net feature name (`NET_F_MRG_RXBUF`, §5.1.3).
fn net_feature_bit(name: &str) -> Option<u32> {
    use virtio_reference_device::devices::net as n;
    Some(match name.strip_prefix("NET_F_")? {
        "CSUM" => n::VIRTIO_NET_F_CSUM,
        "GUEST_CSUM" => n::VIRTIO_NET_F_GUEST_CSUM,
        "MTU" => n::VIRTIO_NET_F_MTU,
        "MAC" => n::VIRTIO_NET_F_MAC,
        "GUEST_TSO4" => n::VIRTIO_NET_F_GUEST_TSO4,
        "GUEST_TSO6" => n::VIRTIO_NET_F_GUEST_TSO6,
        "GUEST_ECN" => n::VIRTIO_NET_F_GUEST_ECN,
        "GUEST_UFO" => n::VIRTIO_NET_F_GUEST_UFO,
        "HOST_TSO4" => n::VIRTIO_NET_F_HOST_TSO4,
        "HOST_TSO6" => n::VIRTIO_NET_F_HOST_TSO6,
        "HOST_ECN" => n::VIRTIO_NET_F_HOST_ECN,
        "HOST_UFO" => n::VIRTIO_NET_F_HOST_UFO,
        "MRG_RXBUF" => n::VIRTIO_NET_F_MRG_RXBUF,
        "STATUS" => n::VIRTIO_NET_F_STATUS,
        "CTRL_VQ" => n::VIRTIO_NET_F_CTRL_VQ,
        "CTRL_RX" => n::VIRTIO_NET_F_CTRL_RX,
        "CTRL_VLAN" => n::VIRTIO_NET_F_CTRL_VLAN,
        "CTRL_RX_EXTRA" => n::VIRTIO_NET_F_CTRL_RX_EXTRA,
        "GUEST_ANNOUNCE" => n::VIRTIO_NET_F_GUEST_ANNOUNCE,
        "MQ" => n::VIRTIO_NET_F_MQ,
        "CTRL_MAC_ADDR" => n::VIRTIO_NET_F_CTRL_MAC_ADDR,
        _ => return None,
    })
}

impl Feature {
    /// The bit number.
    pub fn bit(&self) -> Option<u32> {
        match self {
            Feature::Bit(b) => Some(*b),
            Feature::Name(n) => feature_bit(n),
        }
    }
}

/// One buffer of a posted chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Buf {
    /// Length in bytes.
    pub len: Num,
    /// Device-writable.
    #[serde(default)]
    pub write: bool,
    /// Absolute guest physical address override (otherwise the harness allocates).
    pub addr: Option<Num>,
    /// Place the buffer this many bytes below the end of guest RAM (portable across targets
    /// with different RAM sizes).
    pub from_ram_end: Option<Num>,
    /// Flags override (otherwise NEXT/WRITE as the chain needs).
    pub flags: Option<Num>,
    /// `next` override.
    pub next: Option<Num>,
    /// Contents of a readable buffer.
    pub data: Option<Hex>,
    /// Fill byte of the buffer.
    pub fill: Option<u8>,
}

/// One step of a case (the `op` field selects the variant).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(missing_docs)]
pub enum Op {
    Read {
        #[serde(flatten)]
        at: Reg,
        expect: Option<Num>,
        mask: Option<Num>,
        bits_set: Option<Num>,
        bits_clear: Option<Num>,
        expect_ne: Option<Num>,
        expect_in: Option<Vec<Num>>,
        save: Option<String>,
        expect_var: Option<String>,
        expect_ne_var: Option<String>,
        #[serde(flatten)]
        grade: Grade,
    },
    Write {
        #[serde(flatten)]
        at: Reg,
        value: Num,
    },
    Reset {
        #[serde(flatten)]
        grade: Grade,
    },
    Init {
        features: Option<Vec<Feature>>,
        /// Pinned order; `None` follows the run's `--driver` (default `spec`).
        order: Option<Order>,
        #[serde(default)]
        upto: Upto,
        queues: Option<Vec<QueueSpec>>,
        #[serde(flatten)]
        grade: Grade,
    },
    Queue {
        index: u16,
        size: u16,
        align: Option<u32>,
    },
    Post {
        #[serde(default)]
        queue: u16,
        chain: Vec<Buf>,
        #[serde(default)]
        indirect: bool,
        indirect_flags: Option<Num>,
        indirect_len: Option<Num>,
        kick: Option<bool>,
        head: Option<Num>,
    },
    Blk {
        #[serde(default)]
        queue: u16,
        #[serde(rename = "type")]
        kind: BlkType,
        sector: Option<Num>,
        data_len: Option<Num>,
        data: Option<Hex>,
        split: Option<Vec<u32>>,
        kick: Option<bool>,
    },
    Kick {
        #[serde(default)]
        queue: u16,
        value: Option<Num>,
    },
    ExpectUsed {
        #[serde(default)]
        queue: u16,
        count: Option<u16>,
        /// At least this many elements are used (instead of exactly `count`), for statements
        /// that set no exact number.
        count_min: Option<u16>,
        len: Option<Num>,
        len_max: Option<Num>,
        len_min: Option<Num>,
        #[serde(default)]
        none: bool,
        #[serde(flatten)]
        grade: Grade,
    },
    ExpectData {
        #[serde(default)]
        queue: u16,
        data: Option<Hex>,
        status: Option<u8>,
        /// The status byte is one of these (where the spec allows several answers).
        status_in: Option<Vec<u8>>,
        #[serde(flatten)]
        grade: Grade,
    },
    ExpectInterrupt {
        used: Option<bool>,
        config: Option<bool>,
        #[serde(flatten)]
        grade: Grade,
    },
    Ack {
        value: Option<Num>,
    },
    ConfigChange {
        offset: Num,
        data: Hex,
    },
    SetAvailIdx {
        #[serde(default)]
        queue: u16,
        value: Num,
    },
    SetAvailFlags {
        #[serde(default)]
        queue: u16,
        value: Num,
    },
    SetUsedEvent {
        #[serde(default)]
        queue: u16,
        value: Num,
    },
    Cycle {
        #[serde(default)]
        queue: u16,
        count: u32,
        batch: u16,
        len: Option<u32>,
        #[serde(flatten)]
        grade: Grade,
    },
    ExpectGraceful {
        #[serde(default)]
        queue: u16,
        /// Also require that the chain came back (used) unless DEVICE_NEEDS_RESET is set: a
        /// silently dropped chain leaks its descriptors (graded under STATUS-DEV-02).
        #[serde(default)]
        returned: bool,
        #[serde(flatten)]
        grade: Grade,
    },
    MemWrite {
        addr: Num,
        data: Hex,
    },
    /// Records Status, InterruptStatus and the queue's used ring without checking them
    /// (differential runs).
    Observe {
        #[serde(default)]
        queue: u16,
    },
    MemExpect {
        addr: Num,
        data: Hex,
        #[serde(flatten)]
        grade: Grade,
    },
    /// The host side delivers `data` toward the driver on `port` (a received frame for net,
    /// console input for port `port`); see `Target::host_send`.
    HostSend {
        #[serde(default)]
        port: u32,
        data: Hex,
    },
    /// What the device transmitted to the host on `port` since the last check equals `data`
    /// (all units joined); with `units`, it also came as exactly that many frames/chunks.
    ExpectHost {
        #[serde(default)]
        port: u32,
        data: Hex,
        units: Option<u32>,
        #[serde(flatten)]
        grade: Grade,
    },
    /// Packed rings (§2.8.10, §2.8.14): writes the Driver Event Suppression structure of
    /// `queue`: `flags` 0 ENABLE, 1 DISABLE, 2 DESC; with DESC, the ring offset `off` and
    /// wrap counter `wrap` of the descriptor to notify at. Without `off`, DESC names the
    /// position of the next used descriptor plus `ahead` (default 0) buffers of one
    /// descriptor, with its wrap counter.
    SetDriverEvent {
        #[serde(default)]
        queue: u16,
        flags: u16,
        off: Option<u16>,
        wrap: Option<bool>,
        ahead: Option<u16>,
    },
    /// One register or configuration read (as `read`) whose value, after `mask`, must lie in
    /// `min..=max` (e.g. a configuration field with a range, §5.1.4.1).
    ReadRange {
        #[serde(flatten)]
        at: Reg,
        mask: Option<Num>,
        min: Num,
        max: Num,
        #[serde(flatten)]
        grade: Grade,
    },
    /// A precondition, not a check: one read whose value (after `mask`) must be `expect`,
    /// else the case is `unsupported` on this target (e.g. a case written for a device with
    /// `max_virtqueue_pairs` 2, which another permitted value cannot run).
    Require {
        #[serde(flatten)]
        at: Reg,
        mask: Option<Num>,
        expect: Num,
    },
    /// Waits until the chains the device used on receive queue `queue` since the last such
    /// step carry `data`: the first used-`len` bytes of each used chain's writable buffers,
    /// joined in used-ring order (console input, §5.3.6). Also checks each used len fits the
    /// chain (VQ-DEV-15).
    ExpectReceived {
        queue: u16,
        data: Hex,
        #[serde(flatten)]
        grade: Grade,
    },
    /// Waits until a console control message (`struct virtio_console_control`, §5.3.6.2) with
    /// `event` (and `id` / `value` when given) arrives on control receiveq `queue` (default
    /// 2), taking every used chain meanwhile. Every message taken is also checked against
    /// the device rules of §5.3.6.2 (CON-DEV-14/15/16) whatever the step looks for.
    ExpectControl {
        #[serde(default = "control_receiveq")]
        queue: u16,
        event: u16,
        id: Option<u32>,
        value: Option<u16>,
        #[serde(flatten)]
        grade: Grade,
    },
    /// Sets up split queue `index` (version 2) with its three parts placed at an edge of
    /// guest RAM (`at`, see [`RingPlace`]) instead of the harness's ring area (§2.7, §4.2.2).
    QueueAt {
        #[serde(default)]
        index: u16,
        size: u16,
        at: RingPlace,
    },
    /// virtio-vsock (§5.10.6): posts `count` (default 1) receive buffers on rx queue `queue`
    /// (default 0), each a chain of writable descriptors of the byte sizes in `split`
    /// (default one of 4096), and kicks. Later vsock steps post one more buffer of the same
    /// layout for every rx buffer they take, as a driver replenishes its rx queue.
    VsockRx {
        #[serde(default)]
        queue: u16,
        count: Option<u16>,
        split: Option<Vec<u32>>,
    },
    /// virtio-vsock (§5.10.6): posts one packet, a 44-byte header built from the fields plus
    /// `data`, on tx queue `queue` (default 1) as readable descriptors of the byte sizes in
    /// `split` (the rest in one last descriptor), and kicks. Defaults: `src_cid` the device's
    /// `guest_cid`, `dst_cid` 2 (the host), `len` the payload length, `type` 1 (stream),
    /// `buf_alloc` the last value this driver port advertised (65536 at first), `fwd_cnt`
    /// the payload bytes the harness took on this connection. Ports may be `"$var"`.
    VsockSend {
        #[serde(default = "vsock_txq")]
        queue: u16,
        packet: VsockOp,
        src_cid: Option<VarNum>,
        dst_cid: Option<VarNum>,
        src_port: VarNum,
        dst_port: VarNum,
        len: Option<Num>,
        #[serde(rename = "type")]
        type_: Option<Num>,
        flags: Option<Num>,
        buf_alloc: Option<Num>,
        fwd_cnt: Option<Num>,
        data: Option<Hex>,
        split: Option<Vec<u32>>,
    },
    /// virtio-vsock (§5.10.6): waits for the next packet the device sends on rx queue `queue`
    /// (default 0) other than an unsolicited CREDIT_UPDATE, and checks the fields given; RW
    /// payloads taken meanwhile are kept for `vsock_expect_data`. `save_src_port` stores the
    /// packet's `src_port` (e.g. the host port of a host-initiated connection) as a variable.
    /// With `none`, no such packet may arrive.
    VsockExpect {
        #[serde(default)]
        queue: u16,
        packet: Option<VsockOp>,
        /// Any of these ops matches (where the spec allows several answers).
        packet_in: Option<Vec<VsockOp>>,
        src_port: Option<VarNum>,
        dst_port: Option<VarNum>,
        flags: Option<Num>,
        len: Option<Num>,
        data: Option<Hex>,
        save_src_port: Option<String>,
        #[serde(default)]
        none: bool,
        /// Skip packets that do not match instead of failing on the first one (packets the
        /// spec lets the device send or not, e.g. answers to invalid packets).
        #[serde(default)]
        skip_unmatched: bool,
        #[serde(flatten)]
        grade: Grade,
    },
    /// virtio-vsock (§5.10.6): the RW payloads the device sent to driver port `port` on rx
    /// queue `queue` (default 0), joined in order, begin with `data` (bytes beyond it stay
    /// for the next such step). Waits until that many bytes arrived.
    VsockExpectData {
        #[serde(default)]
        queue: u16,
        port: u32,
        data: Hex,
        #[serde(flatten)]
        grade: Grade,
    },
    /// The host side of a connection-oriented device does `action` (`listen`, `connect`,
    /// `close`) on `port`; see `Target::host_op`.
    HostOp {
        action: HostAction,
        port: u32,
    },
    /// The host side sees the connection named `port` in `state` (`none`, `pending`,
    /// `open`, `refused`, `closed`); waits for it up to the used-ring wait.
    ExpectHostConn {
        port: u32,
        state: HostState,
        #[serde(flatten)]
        grade: Grade,
    },
}

fn vsock_txq() -> u16 {
    1
}

/// A number, or `"$name"`: a variable an earlier step saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VarNum {
    /// A literal.
    Num(Num),
    /// A variable name (without the `$`).
    Var(String),
}

impl<'de> Deserialize<'de> for VarNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = VarNum;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or \"$name\" (a saved variable)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<VarNum, E> {
                Ok(VarNum::Num(Num(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<VarNum, E> {
                u64::try_from(v)
                    .map(|v| VarNum::Num(Num(v)))
                    .map_err(|_| E::custom(format!("`{v}` is negative; expected a number >= 0")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<VarNum, E> {
                match s.strip_prefix('$') {
                    Some(name) if !name.is_empty() => Ok(VarNum::Var(name.to_string())),
                    _ => {
                        let n: Num =
                            Num::deserialize(serde::de::value::StrDeserializer::<E>::new(s))?;
                        Ok(VarNum::Num(n))
                    }
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A virtio-vsock packet operation (§5.10.6), by name or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockOp(pub u16);

impl Serialize for VsockOp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for VsockOp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = VsockOp;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a vsock op (`request`, `response`, `rst`, `shutdown`, `rw`, `credit_update`, `credit_request` or a number)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<VsockOp, E> {
                u16::try_from(v)
                    .map(VsockOp)
                    .map_err(|_| E::custom(format!("vsock op {v} does not fit in 16 bits")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<VsockOp, E> {
                Err(E::custom(format!("vsock op {v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<VsockOp, E> {
                Ok(VsockOp(match s {
                    "invalid" => 0,
                    "request" => 1,
                    "response" => 2,
                    "rst" => 3,
                    "shutdown" => 4,
                    "rw" => 5,
                    "credit_update" => 6,
                    "credit_request" => 7,
                    _ => return Err(E::custom(format!(
                        "unknown vsock op `{s}`: expected request, response, rst, shutdown, rw, credit_update, credit_request or a number"
                    ))),
                }))
            }
        }
        d.deserialize_any(V)
    }
}

/// What the host side does in a `host_op` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAction {
    /// `HostOp::Listen`.
    Listen,
    /// `HostOp::Connect`.
    Connect,
    /// `HostOp::Close`.
    Close,
}

/// A host-side connection state in an `expect_host_conn` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// `HostConn::None`.
    None,
    /// `HostConn::Pending`.
    Pending,
    /// `HostConn::Open`.
    Open,
    /// `HostConn::Refused`.
    Refused,
    /// `HostConn::Closed`.
    Closed,
}

/// Where [`Op::QueueAt`] puts a split queue's parts (guest physical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RingPlace {
    /// Packed at the top of RAM: the available ring (2-byte aligned) ends at the last byte
    /// of RAM, the used ring (4-byte aligned) right below it, the descriptor table (16-byte
    /// aligned) below that.
    RamEnd,
    /// As `ram_end`, moved 16 bytes up: the last 16 bytes of the available ring (its last
    /// entries and `used_event`) lie past the end of RAM.
    AcrossRamEnd,
}

fn control_receiveq() -> u16 {
    2
}

/// Block request type of a `blk` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkType(pub u32);

impl<'de> Deserialize<'de> for BlkType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BlkType;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a block request type (`in`, `out`, `flush`, `get_id`, `discard`, `write_zeroes` or a number)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BlkType, E> {
                u32::try_from(v).map(BlkType).map_err(|_| {
                    E::custom(format!("block request type {v} does not fit in 32 bits"))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BlkType, E> {
                Err(E::custom(format!("block request type {v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<BlkType, E> {
                Ok(BlkType(match s {
                    "in" => 0,
                    "out" => 1,
                    "flush" => 4,
                    "get_id" => 8,
                    "discard" => 11,
                    "write_zeroes" => 13,
                    _ => {
                        return Err(E::custom(format!(
                        "unknown block request `{s}`: expected in, out, flush, get_id, discard, write_zeroes or a number"
                    )))
                    }
                }))
            }
        }
        d.deserialize_any(V)
    }
}

impl Op {
    /// The step as one line of the case format (fields left unset are omitted).
    pub fn to_line(&self) -> String {
        fn strip(v: serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Object(m) => serde_json::Value::Object(
                    m.into_iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k, strip(v)))
                        .collect(),
                ),
                serde_json::Value::Array(a) => {
                    serde_json::Value::Array(a.into_iter().map(strip).collect())
                }
                v => v,
            }
        }
        serde_json::to_value(self)
            .map(strip)
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("{{\"op\": \"?\", \"error\": \"{e}\"}}"))
    }
}

/// A step with its source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line in the case file.
    pub line: usize,
    /// The operation.
    pub op: Op,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    case: String,
    title: String,
    requirements: Vec<String>,
    versions: Option<Vec<u32>>,
    devices: Option<Vec<String>>,
    #[serde(default)]
    features: Vec<Feature>,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

/// A scripted case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Case id (`init.spec-order`).
    pub id: String,
    /// One-line title.
    pub title: String,
    /// Longer explanation, if any.
    pub description: Option<String>,
    /// Requirement ids the case checks.
    pub requirements: Vec<String>,
    /// Transport versions it applies to.
    pub versions: Vec<u32>,
    /// Device types it applies to (`any` matches all).
    pub devices: Vec<String>,
    /// Feature bits the target must offer.
    pub features: Vec<u32>,
    /// Target capabilities it needs (`config_change`, `memory_log`).
    pub needs: Vec<String>,
    /// The steps.
    pub steps: Vec<Step>,
    /// Source file, for messages.
    pub file: String,
}

/// Device types a case header may name.
pub const DEVICE_NAMES: [&str; 7] = [
    "any", "entropy", "block", "net", "console", "balloon", "vsock",
];
/// Transport versions a case header may name.
pub const TRANSPORT_VERSIONS: [u32; 2] = [1, 2];
/// Largest register offset plus width a step may address: one 4 KiB page, the size of every
/// virtio-mmio window in use (registers up to 0x100, configuration space after it).
pub const MAX_REGISTER_END: u64 = 0x1000;

/// serde_json's message without its " at line L column C" suffix: the case file's own line
/// is given instead, and serde's position refers to the one-line JSON text, not the file.
fn serde_message(e: &serde_json::Error) -> String {
    let m = e.to_string();
    match m.rfind(" at line ") {
        Some(i) if e.line() > 0 => m[..i].to_string(),
        _ => m,
    }
}

/// Where a value rendered as `needle` sits in `v` (`chain[1].len`), for error messages.
fn locate(v: &serde_json::Value, needle: &str, path: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            locate(x, needle, &p)
        }),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| locate(x, needle, &format!("{path}[{i}]"))),
        serde_json::Value::String(s) if s == needle => Some(path.to_string()),
        serde_json::Value::Number(n) if n.to_string() == needle => Some(path.to_string()),
        _ => None,
    }
}

/// Parses one line of JSON into `T`; the error names the column of a syntax error, or the
/// field and value serde rejected.
fn parse_line<T: serde::de::DeserializeOwned>(t: &str) -> Result<T, String> {
    let v: serde_json::Value = serde_json::from_str(t)
        .map_err(|e| format!("column {}: {}", e.column(), serde_message(&e)))?;
    serde_json::from_value(v.clone()).map_err(|e| {
        let m = serde_message(&e);
        // Name the field whose value serde rejected (values are quoted with backticks).
        let field = m
            .split('`')
            .skip(1)
            .step_by(2)
            .find_map(|needle| locate(&v, needle, ""));
        match field {
            Some(f) if !f.is_empty() && !m.contains(&format!("`{f}`")) => {
                format!("field `{f}`: {m}")
            }
            _ => m,
        }
    })
}

impl Case {
    /// Parses a case file's text. Errors name `origin` and the line (`file:line: message`),
    /// and the field and value at fault.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog) -> anyhow::Result<Case> {
        let mut header: Option<(usize, Header)> = None;
        let mut steps = Vec::new();
        let mut flow = Flow::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with("//") {
                continue;
            }
            let at = |e: String| anyhow::anyhow!("{origin}:{line}: {e}");
            if header.is_none() {
                header = Some((line, parse_line(t).map_err(at)?));
                continue;
            }
            let op: Op = parse_line(t).map_err(at)?;
            validate(&op, catalog).map_err(|e| at(e.to_string()))?;
            flow.step(&op, line).map_err(at)?;
            steps.push(Step { line, op });
        }
        let (hl, h) = header.ok_or_else(|| anyhow::anyhow!("{origin}: empty case file"))?;
        let at = |e: String| anyhow::anyhow!("{origin}:{hl}: {e}");
        if h.case.is_empty()
            || !h
                .case
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(at(format!(
                "field `case`: `{}` is not a case id (lowercase letters, digits, `.`, `-`, `_`)",
                h.case
            )));
        }
        if h.requirements.is_empty() {
            return Err(at("`requirements` is empty: name at least one id".into()));
        }
        for id in &h.requirements {
            if !catalog.requirements.contains_key(id) {
                return Err(at(format!("unknown requirement id `{id}`")));
            }
        }
        let mut features = Vec::new();
        for f in &h.features {
            features.push(
                f.bit()
                    .ok_or_else(|| at(format!("unknown feature {f} in `features`")))?,
            );
        }
        for n in &h.needs {
            if n != "config_change" && n != "memory_log" {
                return Err(at(format!(
                    "unknown capability `{n}` in `needs`: expected config_change or memory_log"
                )));
            }
        }
        if let Some(vs) = &h.versions {
            if vs.is_empty() {
                return Err(at("`versions` is empty: the case would never run".into()));
            }
            if let Some(v) = vs.iter().find(|v| !TRANSPORT_VERSIONS.contains(v)) {
                return Err(at(format!(
                    "`versions` names transport version {v}: expected 1 or 2"
                )));
            }
        }
        if let Some(ds) = &h.devices {
            if ds.is_empty() {
                return Err(at("`devices` is empty: the case would never run".into()));
            }
            if let Some(d) = ds.iter().find(|d| !DEVICE_NAMES.contains(&d.as_str())) {
                return Err(at(format!(
                    "`devices` names `{d}`: expected {}",
                    DEVICE_NAMES.join(", ")
                )));
            }
        }
        Ok(Case {
            id: h.case,
            title: h.title,
            description: h.description,
            requirements: h.requirements,
            versions: h.versions.unwrap_or_else(|| vec![1, 2]),
            devices: h.devices.unwrap_or_else(|| vec!["any".into()]),
            features,
            needs: h.needs,
            steps,
            file: origin.to_string(),
        })
    }

    /// Whether the case applies to `device` over transport `version`.
    pub fn applies_to(&self, device: &str, version: u32) -> bool {
        self.versions.contains(&version) && self.devices.iter().any(|d| d == "any" || d == device)
    }
}

/// What earlier steps of a case set up, to reject steps that depend on something no earlier
/// step provides (a case error, never the device's fault).
#[derive(Default)]
struct Flow {
    /// Queue index → (size, line that set it up).
    queues: std::collections::BTreeMap<u16, (u16, usize)>,
    /// Variables saved by `read ... save`.
    vars: std::collections::BTreeSet<String>,
}

impl Flow {
    fn step(&mut self, op: &Op, line: usize) -> Result<(), String> {
        let mut set_up = |index: u16, size: u16| {
            self.queues.insert(index, (size, line));
        };
        match op {
            Op::Init { upto, queues, .. } if *upto >= Upto::Queues => match queues {
                Some(qs) => qs.iter().for_each(|q| set_up(q.index, q.size)),
                None => set_up(0, 8),
            },
            Op::Queue { index, size, .. } | Op::QueueAt { index, size, .. } => {
                set_up(*index, *size)
            }
            Op::Read {
                save,
                expect_var,
                expect_ne_var,
                ..
            } => {
                for v in [expect_var, expect_ne_var].into_iter().flatten() {
                    if !self.vars.contains(v) {
                        return Err(format!(
                            "`${v}` is compared before any earlier `read` saves it (`save`)"
                        ));
                    }
                }
                if let Some(v) = save {
                    self.vars.insert(v.clone());
                }
            }
            _ => {}
        }
        let (queue, needs_entries) = match op {
            Op::Post { queue, .. } | Op::Blk { queue, .. } | Op::Cycle { queue, .. } => {
                (*queue, true)
            }
            Op::ExpectUsed { queue, .. }
            | Op::ExpectData { queue, .. }
            | Op::SetAvailIdx { queue, .. }
            | Op::SetAvailFlags { queue, .. }
            | Op::SetUsedEvent { queue, .. }
            | Op::ExpectGraceful { queue, .. } => (*queue, false),
            _ => return Ok(()),
        };
        match self.queues.get(&queue) {
            None => Err(format!(
                "queue {queue} is used before any earlier step sets it up (`init` with `queues`, or `queue`)"
            )),
            Some(&(0, at)) if needs_entries => Err(format!(
                "queue {queue} has size 0 (set up at line {at}): no descriptor can be posted on it"
            )),
            _ => Ok(()),
        }
    }
}

/// Checks that a number fits a field `bits` wide.
fn fits(field: &str, n: Option<Num>, bits: u32) -> anyhow::Result<()> {
    match n {
        Some(Num(v)) if bits < 64 && v >> bits != 0 => anyhow::bail!(
            "field `{field}`: {v:#x} does not fit in {bits} bits (largest {:#x})",
            (1u64 << bits) - 1
        ),
        _ => Ok(()),
    }
}

fn validate(op: &Op, catalog: &Catalog) -> anyhow::Result<()> {
    let check_reqs = |g: &Grade| -> anyhow::Result<()> {
        for id in g.req.as_ref().map(|r| r.ids()).unwrap_or_default() {
            if !catalog.requirements.contains_key(&id) {
                anyhow::bail!("field `req`: unknown requirement id `{id}`");
            }
        }
        Ok(())
    };
    let check_reg = |r: &Reg| -> anyhow::Result<u32> {
        let base = match &r.reg {
            Some(name) => regs::register_offset(name)
                .ok_or_else(|| anyhow::anyhow!("field `reg`: unknown register name `{name}`"))?,
            None if r.offset.is_none() => {
                anyhow::bail!("a register step needs `reg` or `offset`")
            }
            None => 0,
        };
        let width = r.width.unwrap_or(4);
        if ![1, 2, 4, 8].contains(&width) {
            anyhow::bail!("field `width`: {width} is not 1, 2, 4 or 8");
        }
        let end = r
            .offset
            .map_or(Some(base), |o| base.checked_add(o.0))
            .and_then(|o| o.checked_add(width as u64));
        match end {
            Some(e) if e <= MAX_REGISTER_END => {}
            _ => anyhow::bail!(
                "field `offset`: {:#x} (+ register {:#x}, width {width}) is beyond the {MAX_REGISTER_END:#x}-byte register window",
                r.offset.map_or(0, |o| o.0),
                base
            ),
        }
        Ok(8 * width as u32)
    };
    let u16_ = |f: &str, n: Option<Num>| fits(f, n, 16);
    let u32_ = |f: &str, n: Option<Num>| fits(f, n, 32);
    match op {
        Op::Read {
            at,
            grade,
            expect,
            mask,
            bits_set,
            bits_clear,
            expect_ne,
            expect_in,
            ..
        } => {
            let bits = check_reg(at)?;
            for (f, n) in [
                ("expect", expect),
                ("mask", mask),
                ("bits_set", bits_set),
                ("bits_clear", bits_clear),
                ("expect_ne", expect_ne),
            ] {
                fits(f, *n, bits)?;
            }
            for n in expect_in.iter().flatten() {
                fits("expect_in", Some(*n), bits)?;
            }
            check_reqs(grade)
        }
        Op::Write { at, value } => {
            let bits = check_reg(at)?;
            fits("value", Some(*value), bits)
        }
        Op::Init {
            features, grade, ..
        } => {
            for f in features.iter().flatten() {
                if f.bit().is_none() {
                    anyhow::bail!("field `features`: unknown feature {f}");
                }
            }
            check_reqs(grade)
        }
        Op::Post {
            chain,
            indirect_flags,
            indirect_len,
            head,
            ..
        } => {
            u16_("indirect_flags", *indirect_flags)?;
            u32_("indirect_len", *indirect_len)?;
            u16_("head", *head)?;
            for (i, b) in chain.iter().enumerate() {
                u32_(&format!("chain[{i}].len"), Some(b.len))?;
                u16_(&format!("chain[{i}].flags"), b.flags)?;
                u16_(&format!("chain[{i}].next"), b.next)?;
            }
            Ok(())
        }
        Op::Blk { data_len, .. } => u32_("data_len", *data_len),
        Op::Kick { value, .. } => u32_("value", *value),
        Op::Ack { value } => u32_("value", *value),
        Op::SetAvailIdx { value, .. }
        | Op::SetAvailFlags { value, .. }
        | Op::SetUsedEvent { value, .. } => u16_("value", Some(*value)),
        Op::ExpectUsed {
            len,
            len_max,
            len_min,
            grade,
            ..
        } => {
            u32_("len", *len)?;
            u32_("len_max", *len_max)?;
            u32_("len_min", *len_min)?;
            check_reqs(grade)
        }
        Op::Reset { grade }
        | Op::ExpectData { grade, .. }
        | Op::ExpectInterrupt { grade, .. }
        | Op::Cycle { grade, .. }
        | Op::ExpectGraceful { grade, .. }
        | Op::ExpectHost { grade, .. }
        | Op::ExpectReceived { grade, .. }
        | Op::ExpectControl { grade, .. }
        | Op::ReadRange { grade, .. }
        | Op::MemExpect { grade, .. } => check_reqs(grade),
        _ => Ok(()),
    }
}

/// Loads every `*.jsonl` case under `dir`, sorted by id. Duplicate ids are an error.
pub fn load_dir(dir: &Path, catalog: &Catalog) -> anyhow::Result<Vec<Case>> {
    let rd = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut paths: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        files.push((p, text));
    }
    load_files(
        files.iter().map(|(p, t)| (p.as_path(), t.as_str())),
        catalog,
    )
}

/// Parses case files given as (path, text), for example the copies embedded in the library;
/// `path` names the file in messages and its stem must equal the case id. Sorted by id;
/// duplicate ids are an error.
pub fn load_files<'a>(
    files: impl IntoIterator<Item = (&'a Path, &'a str)>,
    catalog: &Catalog,
) -> anyhow::Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (p, text) in files {
        let case = Case::parse(text, &p.display().to_string(), catalog)?;
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if stem != case.id {
            let header_line = text
                .lines()
                .position(|l| !l.trim().is_empty() && !l.trim().starts_with("//"))
                .map_or(1, |i| i + 1);
            anyhow::bail!(
                "{}:{header_line}: case id `{}` differs from the file name",
                p.display(),
                case.id
            );
        }
        cases.push(case);
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    for w in cases.windows(2) {
        if w[0].id == w[1].id {
            anyhow::bail!("duplicate case id `{}`", w[0].id);
        }
    }
    Ok(cases)
}
