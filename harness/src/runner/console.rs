//! Console-specific steps (virtio-console, VIRTIO §5.3): what the device wrote into receive
//! queues (`expect_received`) and the control messages of the multiport handshake
//! (`expect_control`), with the device rules of §5.3.6.2 checked on every message taken.

use super::{hex, Exec, R};
use crate::case::Grade;
use crate::outcome::Severity;
use crate::target::{POLL_INTERVAL, USED_WAIT};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Control event: a port was added (the spec's DEVICE_ADD, §5.3.6.2).
const DEVICE_ADD: u16 = 1;
/// Control event: a port was removed (DEVICE_REMOVE).
const DEVICE_REMOVE: u16 = 2;
/// Control event: console size (followed by le16 cols, le16 rows).
const RESIZE: u16 = 5;
/// Control event: the port's name follows (UTF-8, no NUL).
const PORT_NAME: u16 = 7;
/// Length of `struct virtio_console_control` in bytes.
const CONTROL_LEN: usize = 8;
/// Offset of `max_nr_ports` in the console configuration space (§5.3.4).
const MAX_NR_PORTS: u64 = 0x100 + 4;

/// What the harness remembers of the console's control traffic since the last reset.
#[derive(Debug, Default)]
pub(super) struct ConsoleState {
    /// Ports the device announced with DEVICE_ADD and has not removed.
    ports: BTreeSet<u32>,
    /// Per receive queue: input an earlier `expect_received` expected but the device had
    /// not delivered yet because it filled the buffers only partly (which §5.3.6 permits);
    /// it must come first on that queue.
    backlog: BTreeMap<u16, Vec<u8>>,
}

/// One used chain: its used len and the bytes the device wrote (its first `len` writable
/// bytes, capped by the chain's writable size).
struct Completion {
    len: u32,
    bytes: Vec<u8>,
}

impl Exec<'_> {
    /// Takes the used elements of `queue` now in the used ring: each must name an outstanding
    /// head (VQ-DEV-17) and its len must fit the chain's writable bytes (VQ-DEV-15).
    fn take_completions(&mut self, queue: u16) -> R<Vec<Completion>> {
        self.t.settle()?;
        let elems = self.take_used(queue)?;
        let mut out = Vec::new();
        for (id, l) in elems {
            let Some(p) = self.checked_used(queue, id, l)? else {
                continue;
            };
            let cap = p.writable_total();
            let mut left = (l as u64).min(cap).min(1 << 20);
            let mut bytes = Vec::new();
            for &(a, wl) in &p.writable {
                if left == 0 {
                    break;
                }
                let n = (wl as u64).min(left);
                let mut b = vec![0u8; n as usize];
                self.t.mem_read(a, &mut b)?;
                bytes.extend_from_slice(&b);
                left -= n;
            }
            out.push(Completion { len: l, bytes });
        }
        Ok(out)
    }

    /// `expect_received`: the bytes written into the chains used on `queue`, joined in used
    /// order, are the input `want` (after any input an earlier step still waited for),
    /// CON-DEV-10. Waits until that many bytes arrived or [`USED_WAIT`] passed. A device may
    /// fill receive buffers only partly: when the bytes are a correct beginning of the input
    /// and no receive buffer is left, the rest is expected at the next `expect_received` of
    /// the queue (informational); with buffers left over, the missing input fails.
    pub(super) fn expect_received(&mut self, queue: u16, want: &[u8], g: &Grade) -> R {
        let mut want_all = self.console.backlog.remove(&queue).unwrap_or_default();
        want_all.extend_from_slice(want);
        let start = Instant::now();
        let mut got = Vec::new();
        let mut chains = 0;
        loop {
            for c in self.take_completions(queue)? {
                got.extend_from_slice(&c.bytes);
                chains += 1;
            }
            let starved = self.q(queue)?.outstanding.is_empty();
            if got.len() >= want_all.len()
                || starved
                || start.elapsed() >= USED_WAIT
                || self.t.synchronous()
            {
                break;
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        }
        self.observe(format!("received q{queue}"), hex(&got));
        let left = self.q(queue)?.outstanding.len();
        let prefix = want_all.starts_with(&got);
        let ok = got == want_all || (prefix && left == 0);
        self.check(
            Some(g),
            &[],
            ok,
            Severity::Low,
            || format!("received on queue {queue}: {}", hex(&want_all)),
            || {
                if prefix {
                    format!(
                        "{chains} chain(s): {} ({} byte(s) missing with {left} receive buffer(s) available)",
                        hex(&got),
                        want_all.len() - got.len()
                    )
                } else {
                    format!("{chains} chain(s): {}", hex(&got))
                }
            },
        );
        if ok && got.len() < want_all.len() {
            self.check_at(
                crate::catalog::Level::May,
                &["CON-DEV-10"],
                false,
                Severity::None,
                || format!("all {} input byte(s) in the buffers posted", want_all.len()),
                || {
                    format!(
                        "{} byte(s) in {chains} chain(s), buffers filled partly (allowed); the rest is expected later",
                        got.len()
                    )
                },
            );
            self.console
                .backlog
                .insert(queue, want_all[got.len()..].to_vec());
        }
        Ok(())
    }

    /// `expect_control`: a control message with `event` (and `id`, `value` when given)
    /// arrives on `queue`. Every message taken meanwhile is checked against §5.3.6.2.
    pub(super) fn expect_control(
        &mut self,
        queue: u16,
        event: u16,
        id: Option<u32>,
        value: Option<u16>,
        g: &Grade,
    ) -> R {
        let max_nr_ports = self.r32(MAX_NR_PORTS)?;
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut found = false;
        loop {
            for c in self.take_completions(queue)? {
                let Some(m) = self.control_message(&c, max_nr_ports) else {
                    seen.push(format!("short message ({} bytes)", c.len));
                    continue;
                };
                seen.push(format!("id {} event {} value {}", m.0, m.1, m.2));
                if m.1 == event && id.is_none_or(|i| i == m.0) && value.is_none_or(|v| v == m.2) {
                    found = true;
                }
            }
            if found || start.elapsed() >= USED_WAIT || self.t.synchronous() {
                break;
            }
            self.check_deadline()?;
            std::thread::sleep(POLL_INTERVAL);
        }
        self.observe(format!("control q{queue}"), seen.join("; "));
        self.check(
            Some(g),
            &[],
            found,
            Severity::Low,
            || {
                let mut w = format!("control message with event {event}");
                if let Some(i) = id {
                    w.push_str(&format!(", id {i}"));
                }
                if let Some(v) = value {
                    w.push_str(&format!(", value {v}"));
                }
                w
            },
            || {
                if seen.is_empty() {
                    "no control message".into()
                } else {
                    seen.join("; ")
                }
            },
        );
        Ok(())
    }

    /// Decodes one control message and checks the device rules of §5.3.6.2 on it; `None`
    /// for a message shorter than its 8-byte header (then CON-DEV-16 fails).
    fn control_message(&mut self, c: &Completion, max_nr_ports: u32) -> Option<(u32, u16, u16)> {
        let b = &c.bytes;
        if !self.check(
            None,
            &["CON-DEV-16"],
            b.len() >= CONTROL_LEN,
            Severity::Low,
            || format!("a control message of at least {CONTROL_LEN} bytes"),
            || format!("used len {} ({} bytes)", c.len, b.len()),
        ) {
            return None;
        }
        let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let event = u16::from_le_bytes([b[4], b[5]]);
        let value = u16::from_le_bytes([b[6], b[7]]);
        let tail = &b[CONTROL_LEN..];
        match event {
            DEVICE_ADD => {
                let fresh = !self.console.ports.contains(&id);
                self.check(
                    None,
                    &["CON-DEV-14"],
                    fresh && id < max_nr_ports,
                    Severity::Low,
                    || format!("DEVICE_ADD of a new port below max_nr_ports ({max_nr_ports})"),
                    || {
                        if fresh {
                            format!("DEVICE_ADD of port {id}")
                        } else {
                            format!("DEVICE_ADD of port {id}, which already exists")
                        }
                    },
                );
                self.console.ports.insert(id);
            }
            DEVICE_REMOVE => {
                let known = self.console.ports.remove(&id);
                self.check(
                    None,
                    &["CON-DEV-15"],
                    known,
                    Severity::Low,
                    || "DEVICE_REMOVE of a port added earlier".into(),
                    || format!("DEVICE_REMOVE of port {id}, never added"),
                );
            }
            PORT_NAME => {
                let ok = std::str::from_utf8(tail).is_ok() && !tail.contains(&0);
                self.check(
                    None,
                    &["CON-DEV-16"],
                    ok,
                    Severity::Low,
                    || "PORT_NAME followed by a UTF-8 name without NUL".into(),
                    || format!("name bytes {}", hex(tail)),
                );
            }
            RESIZE => {
                self.check(
                    None,
                    &["CON-DEV-16"],
                    tail.len() >= 4,
                    Severity::Low,
                    || "RESIZE followed by le16 cols and le16 rows".into(),
                    || format!("{} bytes after the header", tail.len()),
                );
            }
            _ => {}
        }
        Some((id, event, value))
    }
}
