//! QEMU's monitor (QMP) for host-side changes the qtest protocol cannot make.
//!
//! QEMU listens on `-qmp unix:<scratch>/qmp.sock,server=on,wait=off`; the harness connects on
//! first use, reads the greeting, enters command mode (`qmp_capabilities`) and then sends one
//! command at a time, skipping asynchronous `{"event": ...}` lines until the command's
//! `{"return": ...}` or `{"error": ...}` arrives. Used for configuration changes of the
//! device (§2.5: the host changes the configuration space; `block_resize` changes a block
//! device's capacity, §5.2.4).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File name of the QMP socket in QEMU's scratch folder.
pub const SOCKET_NAME: &str = "qmp.sock";
/// Longest QMP reply line accepted, in bytes.
const MAX_LINE: usize = 1 << 20;

/// The arguments that give QEMU a QMP socket at `path`.
pub fn qemu_args(path: &Path) -> [String; 2] {
    [
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path.display()),
    ]
}

/// A QMP connection in command mode.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Qmp {
    /// Connects to the socket at `path` (retrying until `timeout`: QEMU creates it while it
    /// starts), reads the greeting and negotiates capabilities. Errors name the step.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("connecting to QMP at {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("configuring the QMP socket: {e}"))?;
        let reader = stream
            .try_clone()
            .map_err(|e| format!("cloning the QMP socket: {e}"))?;
        let mut q = Qmp {
            writer: stream,
            reader: BufReader::new(reader),
            path: path.to_path_buf(),
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected QMP greeting: {greeting}"));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// One JSON line from QEMU.
    fn line(&mut self) -> Result<Value, String> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("reading from QMP at {}: {e}", self.path.display()))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        if !buf.ends_with(b"\n") {
            return Err(format!("QMP reply longer than {MAX_LINE} bytes"));
        }
        serde_json::from_slice(&buf).map_err(|e| format!("QMP reply is not JSON: {e}"))
    }

    /// Runs `command` with `arguments`; returns its `return` value, or QEMU's error
    /// description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut msg = json!({ "execute": command, "arguments": arguments }).to_string();
        msg.push('\n');
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| format!("sending `{command}` to QMP: {e}"))?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(format!("QMP `{command}` failed: {desc}"));
            }
            // An asynchronous event: skip it.
        }
    }
}
