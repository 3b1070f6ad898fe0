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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Num(n)),
            Raw::S(s) => {
                let t = s.trim().replace('_', "");
                let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => t.parse(),
                };
                r.map(Num)
                    .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a number")))
            }
        }
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
        let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let t = t.strip_prefix("0x").unwrap_or(&t);
        if t.len() % 2 != 0 {
            return Err(serde::de::Error::custom("hex string of odd length"));
        }
        (0..t.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&t[i..i + 2], 16))
            .collect::<Result<Vec<_>, _>>()
            .map(Hex)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not hex")))
    }
}

/// One requirement id or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Reqs {
    /// One id.
    One(String),
    /// Several ids.
    Many(Vec<String>),
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

/// Initialization order variants (`init` step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// §3.1.1 order, one status bit per write.
    #[default]
    Spec,
    /// Linux `virtio_mmio.c` order (reset, ACK, DRIVER, features, FEATURES_OK, queues read
    /// QueueReady first, DRIVER_OK).
    Linux,
    /// ACKNOWLEDGE|DRIVER in a single write (as rcore's virtio-drivers does).
    Combined,
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Feature {
    /// Bit number.
    Bit(u32),
    /// Name without the `VIRTIO_F_` prefix (or with it).
    Name(String),
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
        #[serde(default)]
        order: Order,
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
}

/// Block request type of a `blk` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkType(pub u32);

impl<'de> Deserialize<'de> for BlkType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        Ok(BlkType(match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => match s.as_str() {
                "in" => 0,
                "out" => 1,
                "flush" => 4,
                "get_id" => 8,
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown block request `{s}`"
                    )))
                }
            },
        }))
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

impl Case {
    /// Parses a case file's text. Errors name `origin` and the line.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog) -> anyhow::Result<Case> {
        let mut header: Option<Header> = None;
        let mut steps = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with("//") {
                continue;
            }
            let err = |e: serde_json::Error| anyhow::anyhow!("{origin}:{line}: {e}");
            if header.is_none() {
                header = Some(serde_json::from_str(t).map_err(err)?);
                continue;
            }
            let op: Op = serde_json::from_str(t).map_err(err)?;
            validate(&op, catalog).map_err(|e| anyhow::anyhow!("{origin}:{line}: {e}"))?;
            steps.push(Step { line, op });
        }
        let h = header.ok_or_else(|| anyhow::anyhow!("{origin}: empty case file"))?;
        for id in &h.requirements {
            if !catalog.requirements.contains_key(id) {
                anyhow::bail!("{origin}:1: unknown requirement id `{id}`");
            }
        }
        let mut features = Vec::new();
        for f in &h.features {
            features.push(
                f.bit()
                    .ok_or_else(|| anyhow::anyhow!("{origin}:1: unknown feature {f:?}"))?,
            );
        }
        for n in &h.needs {
            if n != "config_change" && n != "memory_log" {
                anyhow::bail!("{origin}:1: unknown capability `{n}` in needs");
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

fn validate(op: &Op, catalog: &Catalog) -> anyhow::Result<()> {
    let check_reqs = |g: &Grade| -> anyhow::Result<()> {
        for id in g.req.as_ref().map(|r| r.ids()).unwrap_or_default() {
            if !catalog.requirements.contains_key(&id) {
                anyhow::bail!("unknown requirement id `{id}`");
            }
        }
        Ok(())
    };
    let check_reg = |r: &Reg| -> anyhow::Result<()> {
        if let Some(name) = &r.reg {
            if regs::register_offset(name).is_none() {
                anyhow::bail!("unknown register name `{name}`");
            }
        } else if r.offset.is_none() {
            anyhow::bail!("a register step needs `reg` or `offset`");
        }
        if let Some(w) = r.width {
            if ![1, 2, 4, 8].contains(&w) {
                anyhow::bail!("width {w} is not 1, 2, 4 or 8");
            }
        }
        Ok(())
    };
    match op {
        Op::Read { at, grade, .. } => {
            check_reg(at)?;
            check_reqs(grade)
        }
        Op::Write { at, .. } => check_reg(at),
        Op::Init {
            features, grade, ..
        } => {
            for f in features.iter().flatten() {
                if f.bit().is_none() {
                    anyhow::bail!("unknown feature {f:?}");
                }
            }
            check_reqs(grade)
        }
        Op::Reset { grade }
        | Op::ExpectUsed { grade, .. }
        | Op::ExpectData { grade, .. }
        | Op::ExpectInterrupt { grade, .. }
        | Op::Cycle { grade, .. }
        | Op::ExpectGraceful { grade, .. }
        | Op::MemExpect { grade, .. } => check_reqs(grade),
        _ => Ok(()),
    }
}

/// Loads every `*.jsonl` case under `dir`, sorted by id. Duplicate ids are an error.
pub fn load_dir(dir: &Path, catalog: &Catalog) -> anyhow::Result<Vec<Case>> {
    let mut cases = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut paths: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let case = Case::parse(&text, &p.display().to_string(), catalog)?;
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if stem != case.id {
            anyhow::bail!(
                "{}:1: case id `{}` differs from the file name",
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
