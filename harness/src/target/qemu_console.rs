//! The host side of QEMU's virtio-console (VIRTIO §5.3): port 0 is a `virtconsole` on a
//! chardev socket the harness connects to as a client.
//!
//! QEMU gets `-device virtio-serial-device -chardev socket,id=c0,path=<scratch>/con.sock,
//! server=on,wait=off -device virtconsole,chardev=c0`. Bytes the harness writes to the socket
//! are console input (QEMU reads them only while the guest has receive buffers); bytes the
//! device transmits (transmitq chains, `emerg_wr` writes) come out of the socket. A stream
//! socket keeps no message boundaries, so one [`ConsoleSocket::take`] returns everything
//! readable at that moment as one unit.

use super::TargetError;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// File name of the console socket in QEMU's scratch folder.
pub const SOCKET_NAME: &str = "con.sock";
/// The most bytes one [`ConsoleSocket::take`] returns (the rest waits for the next call).
const MAX_TAKE: usize = 1 << 20;

/// The QEMU arguments for a virtio-serial device whose port 0 is a console on a chardev
/// socket at `path` (QEMU listens; it does not wait for the harness to connect).
pub fn qemu_args(path: &Path) -> Vec<String> {
    vec![
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!("socket,id=c0,path={},server=on,wait=off", path.display()),
        "-device".into(),
        "virtconsole,chardev=c0".into(),
    ]
}

/// The harness's end of the console chardev.
pub struct ConsoleSocket {
    stream: UnixStream,
    timeout: Duration,
}

impl ConsoleSocket {
    /// Connects to the socket at `path`, retrying until `timeout` (QEMU creates it while it
    /// starts). Errors: [`TargetError::Unavailable`] naming the path's file name.
    pub fn connect(path: &Path, timeout: Duration) -> Result<ConsoleSocket, TargetError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(TargetError::Unavailable(format!(
                        "QEMU console chardev socket {}: {e}",
                        path.file_name().map_or("?".into(), |n| n.to_string_lossy())
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        stream.set_nonblocking(true).map_err(|e| {
            TargetError::Unavailable(format!("configuring the console socket: {e}"))
        })?;
        Ok(ConsoleSocket { stream, timeout })
    }

    /// Writes `data` as console input. Errors: [`TargetError::Hung`] when QEMU takes none of
    /// it for the timeout, [`TargetError::Protocol`] when the socket fails.
    pub fn send(&mut self, data: &[u8]) -> Result<(), TargetError> {
        let deadline = Instant::now() + self.timeout;
        let mut done = 0;
        while done < data.len() {
            match self.stream.write(&data[done..]) {
                Ok(0) => {
                    return Err(TargetError::Protocol(
                        "the console socket was closed".into(),
                    ))
                }
                Ok(n) => done += n,
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    if Instant::now() >= deadline {
                        return Err(TargetError::Hung(format!(
                            "QEMU took {done} of {} console input bytes within {:.1} s",
                            data.len(),
                            self.timeout.as_secs_f64()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(TargetError::Protocol(format!("console socket: {e}"))),
            }
        }
        Ok(())
    }

    /// Everything readable now, as one unit (none when nothing is readable). Errors:
    /// [`TargetError::Protocol`] when the socket fails.
    pub fn take(&mut self) -> Result<Vec<Vec<u8>>, TargetError> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < MAX_TAKE {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(TargetError::Protocol(format!("console socket: {e}"))),
            }
        }
        Ok(if got.is_empty() {
            Vec::new()
        } else {
            vec![got]
        })
    }
}
