//! The host side of a QEMU virtio-net device (§5.1): the harness owns the other end of the
//! device's network backend.
//!
//! QEMU gets `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=<scratch>/net.sock`
//! and connects to a Unix socket the harness listens on before QEMU starts. On that stream
//! every Ethernet frame is preceded by its length as a 4-byte big-endian number (QEMU's
//! stream framing); frames carry no `virtio_net_hdr` (the netdev has no vnet header, so
//! QEMU strips it on transmit and prepends a zeroed one on receive). One `send` is one frame
//! the device receives; `take` returns the frames the driver transmitted, in order.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// File name of the netdev socket in QEMU's scratch folder.
pub const SOCKET_NAME: &str = "net.sock";
/// Netdev id the device is attached to (also the `set_link` name).
pub const NETDEV_ID: &str = "n0";
/// Largest frame accepted from QEMU, in bytes (QEMU's own receive buffer is 68 KiB).
const MAX_FRAME: usize = 1 << 17;
/// Most bytes of frames kept between two `take` calls.
const MAX_PENDING: usize = 16 << 20;

/// The `-device`/`-netdev` arguments for a virtio-net device on the socket at `path`.
/// `host_mtu=1500` makes QEMU offer VIRTIO_NET_F_MTU, so the MTU cases run.
pub fn qemu_args(path: &Path) -> Vec<String> {
    vec![
        "-device".into(),
        format!("virtio-net-device,netdev={NETDEV_ID},host_mtu=1500"),
        "-netdev".into(),
        format!(
            "stream,id={NETDEV_ID},server=off,addr.type=unix,addr.path={}",
            path.display()
        ),
    ]
}

/// The harness's end of QEMU's stream netdev.
pub struct NetLink {
    listener: UnixListener,
    stream: Option<UnixStream>,
    /// Bytes read but not yet parsed into frames.
    inbox: Vec<u8>,
    timeout: Duration,
}

impl NetLink {
    /// Listens at `path` (before QEMU starts, so its connect finds the socket). `timeout`
    /// bounds the wait for QEMU's connection and every write.
    pub fn listen(path: &Path, timeout: Duration) -> std::io::Result<NetLink> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(NetLink {
            listener,
            stream: None,
            inbox: Vec::new(),
            timeout,
        })
    }

    /// Waits (up to the timeout) for QEMU's connection. QEMU drops frames it transmits
    /// before its stream netdev is connected, so the target calls this before the first case.
    pub fn accept(&mut self) -> Result<(), String> {
        self.stream().map(|_| ())
    }

    fn stream(&mut self) -> Result<&mut UnixStream, String> {
        if self.stream.is_none() {
            let deadline = Instant::now() + self.timeout;
            let s = loop {
                match self.listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err("QEMU did not connect to the netdev socket".into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("accepting QEMU's netdev connection: {e}")),
                }
            };
            s.set_nonblocking(false)
                .and_then(|_| s.set_write_timeout(Some(self.timeout)))
                .map_err(|e| format!("configuring the netdev socket: {e}"))?;
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("set above"))
    }

    /// Sends one Ethernet frame toward the device (4-byte big-endian length, then the bytes).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        let len = u32::try_from(frame.len())
            .map_err(|_| format!("a frame of {} bytes is too long", frame.len()))?;
        let mut msg = Vec::with_capacity(4 + frame.len());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(frame);
        self.stream()?
            .write_all(&msg)
            .map_err(|e| format!("writing a frame to the netdev socket: {e}"))
    }

    /// The frames the device transmitted since the last call (never blocks).
    pub fn take(&mut self) -> Result<Vec<Vec<u8>>, String> {
        self.stream()?;
        let NetLink { stream, inbox, .. } = self;
        let s = stream.as_mut().expect("connected above");
        s.set_nonblocking(true)
            .map_err(|e| format!("netdev socket: {e}"))?;
        let mut buf = [0u8; 65536];
        let mut closed = false;
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    inbox.extend_from_slice(&buf[..n]);
                    if inbox.len() > MAX_PENDING {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the netdev socket: {e}")),
            }
        }
        if let Some(s) = self.stream.as_mut() {
            s.set_nonblocking(false)
                .map_err(|e| format!("netdev socket: {e}"))?;
        }
        let frames = split_frames(&mut self.inbox)?;
        if closed && frames.is_empty() {
            return Err("QEMU closed the netdev socket".into());
        }
        Ok(frames)
    }

    /// Drops every frame QEMU sent so far (between cases of a reused QEMU).
    pub fn drain(&mut self) -> Result<(), String> {
        self.take().map(|_| ())
    }
}

/// Splits complete length-prefixed frames off the front of `inbox`.
fn split_frames(inbox: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while inbox.len() - at >= 4 {
        let len =
            u32::from_be_bytes([inbox[at], inbox[at + 1], inbox[at + 2], inbox[at + 3]]) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "QEMU sent a frame length of {len} bytes on the netdev socket"
            ));
        }
        if inbox.len() - at - 4 < len {
            break;
        }
        out.push(inbox[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    inbox.drain(..at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_on_length_prefixes() {
        let mut inbox = vec![0, 0, 0, 2, 0xaa, 0xbb, 0, 0, 0, 0, 0, 0, 0, 3, 1];
        let f = split_frames(&mut inbox).unwrap();
        assert_eq!(f, vec![vec![0xaa, 0xbb], vec![]]);
        assert_eq!(inbox, vec![0, 0, 0, 3, 1]);
        inbox.extend([2, 3]);
        assert_eq!(split_frames(&mut inbox).unwrap(), vec![vec![1, 2, 3]]);
        assert!(inbox.is_empty());
        let mut bad = vec![0xff, 0xff, 0xff, 0xff];
        assert!(split_frames(&mut bad).is_err());
    }

    #[test]
    fn link_round_trip_over_a_socket_pair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let mut link = NetLink::listen(&path, Duration::from_secs(5)).unwrap();
        let mut peer = UnixStream::connect(&path).unwrap();
        link.send(&[1, 2, 3]).unwrap();
        let mut got = [0u8; 7];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 3, 1, 2, 3]);
        peer.write_all(&[0, 0, 0, 1, 9, 0, 0]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(link.take().unwrap(), vec![vec![9]]);
        peer.write_all(&[0, 1, 7]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(link.take().unwrap(), vec![vec![7]]);
    }
}
