//! The trace file format (`traces/README.md`, `format` 1): JSON Lines, a header object then
//! one event per line, as `scripts/capture-linux-trace.sh` writes them.

use serde::Deserialize;
use std::path::Path;

/// Highest byte offset (exclusive) of the traced register window: registers up to 0x100,
/// configuration space from 0x100 (§4.2.2).
pub const WINDOW: u64 = 0x200;

/// The phases a trace marks, in the order the guest reaches them.
pub const PHASES: [&str; 5] = ["probe", "driver", "io", "remove", "poweroff"];

/// The first line of a trace: how and from what it was captured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// File name without `.jsonl`.
    pub trace: String,
    /// Format version; 1 is the only one.
    pub format: u32,
    /// Device type (`entropy`, `block`).
    pub device: String,
    /// MMIO Version register the guest saw (1 legacy, 2 modern).
    pub transport_version: u32,
    /// Guest kernel package and version.
    pub kernel: Option<String>,
    /// busybox-static package version of the initramfs.
    pub busybox: Option<String>,
    /// `qemu-system-x86_64 --version` of the traced device.
    pub qemu: Option<String>,
    /// QEMU machine type.
    pub machine: Option<String>,
    /// QEMU accelerator.
    pub accel: Option<String>,
    /// Command that recreates the file.
    pub captured: Option<String>,
    /// What the guest's `/init` did.
    pub guest: Option<String>,
}

/// One event of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The driver read `width` bytes at `offset` of the register window and got `value`.
    Read {
        /// Byte offset in the window.
        offset: u64,
        /// 1, 2 or 4 bytes.
        width: u8,
        /// Little-endian value read.
        value: u64,
    },
    /// The driver wrote `value` (`width` bytes) at `offset`.
    Write {
        /// Byte offset in the window.
        offset: u64,
        /// 1, 2 or 4 bytes.
        width: u8,
        /// Little-endian value written.
        value: u64,
    },
    /// The device's interrupt line changed to `level`.
    Irq {
        /// 0 or 1.
        level: u8,
    },
    /// The guest reached phase `name` (one of [`PHASES`]).
    Phase {
        /// Phase name.
        name: String,
    },
}

/// An event with the 1-based line of the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub line: usize,
    /// The event.
    pub event: Event,
}

/// A parsed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Where it was read from (for messages).
    pub file: String,
    /// The header line.
    pub header: Header,
    /// The events, in file order.
    pub events: Vec<Line>,
}

/// A malformed trace: the file, the 1-based line (0 when the file as a whole is wrong) and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {what}")]
pub struct TraceError {
    /// File name as given.
    pub file: String,
    /// 1-based line (0: the file itself).
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

/// serde_json's message without its "at line 1 column C" tail (each trace line is parsed on
/// its own, so the file's line is given instead).
fn serde_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => format!("{} (column {})", &s[..i], e.column()),
        None => s,
    }
}

impl Trace {
    /// Reads and checks the trace at `path`; see [`Trace::parse`].
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TraceError {
            file: file.clone(),
            line: 0,
            what: e.to_string(),
        })?;
        Trace::parse(&text, &file)
    }

    /// Parses a trace from `text` (named `file` in errors). Every line must be one JSON
    /// object of the format; offsets lie in the window ([`WINDOW`]), widths are 1, 2 or 4 and
    /// values fit them, interrupt levels are 0 or 1, phases are known and in order. Blank
    /// lines are ignored.
    pub fn parse(text: &str, file: &str) -> Result<Trace, TraceError> {
        let err = |line: usize, what: String| TraceError {
            file: file.to_string(),
            line,
            what,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.trim().is_empty());
        let (hl, first) = lines
            .next()
            .ok_or_else(|| err(0, "empty file: expected a header line".into()))?;
        let header: Header = serde_json::from_str(first)
            .map_err(|e| err(hl, format!("bad header: {}", serde_message(&e))))?;
        if header.format != 1 {
            return Err(err(
                hl,
                format!("format {} is not supported (expected 1)", header.format),
            ));
        }
        if !matches!(header.transport_version, 1 | 2) {
            return Err(err(
                hl,
                format!(
                    "transport_version {} (expected 1 or 2)",
                    header.transport_version
                ),
            ));
        }
        if header.device.parse::<crate::target::DeviceKind>().is_err() {
            return Err(err(hl, format!("unknown device `{}`", header.device)));
        }
        let mut events = Vec::new();
        let mut phase = 0usize;
        for (n, l) in lines {
            let event: Event = serde_json::from_str(l)
                .map_err(|e| err(n, format!("bad event: {}", serde_message(&e))))?;
            match &event {
                Event::Read {
                    offset,
                    width,
                    value,
                }
                | Event::Write {
                    offset,
                    width,
                    value,
                } => {
                    if !matches!(width, 1 | 2 | 4) {
                        return Err(err(n, format!("width {width} (expected 1, 2 or 4)")));
                    }
                    if offset % *width as u64 != 0 || offset + *width as u64 > WINDOW {
                        return Err(err(
                            n,
                            format!(
                                "offset {offset:#x} with width {width} is not an aligned access inside the {WINDOW:#x}-byte register window"
                            ),
                        ));
                    }
                    if *value >> (8 * *width as u32) != 0 {
                        return Err(err(
                            n,
                            format!("value {value:#x} does not fit in {width} bytes"),
                        ));
                    }
                }
                Event::Irq { level } => {
                    if *level > 1 {
                        return Err(err(n, format!("irq level {level} (expected 0 or 1)")));
                    }
                }
                Event::Phase { name } => {
                    let Some(i) = PHASES.iter().position(|p| p == name) else {
                        return Err(err(
                            n,
                            format!("unknown phase `{name}` (expected one of {PHASES:?})"),
                        ));
                    };
                    if i < phase {
                        return Err(err(n, format!("phase `{name}` after `{}`", PHASES[phase])));
                    }
                    phase = i;
                }
            }
            events.push(Line { line: n, event });
        }
        Ok(Trace {
            file: file.to_string(),
            header,
            events,
        })
    }
}
