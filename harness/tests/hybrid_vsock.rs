//! The hybrid vsock host-side peer against a stand-in backend played by the test (both
//! connection directions, refusal, a malformed answer), and the real `vhost-device-vsock`
//! process started and stopped (skipped with the reason where the binary is missing;
//! `VIRTIO_CONFORM_REQUIRE_VHOST_DEVICE_VSOCK=1` turns that into a failure).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};
use virtio_conform::target::hybrid_vsock::{
    backend_binary, backend_version, HybridVsockPeer, VsockBackendProcess,
};
use virtio_conform::target::TargetError;
use virtio_reference_device::{HostConn, HostOp};

const WAIT: Duration = Duration::from_secs(10);

/// Polls the peer until connection `port` is no longer in `from`, or WAIT passes.
fn wait_leaves(peer: &mut HybridVsockPeer, port: u32, from: HostConn) -> HostConn {
    let start = Instant::now();
    loop {
        let c = peer.conn(port).unwrap();
        if c != from || start.elapsed() > WAIT {
            return c;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn take_all(peer: &mut HybridVsockPeer, port: u32, want: usize) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < want && start.elapsed() < WAIT {
        got.extend(peer.take(port).unwrap().concat());
        std::thread::sleep(Duration::from_millis(2));
    }
    got
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn host_initiated_connection_opens_carries_bytes_and_sees_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.uds");
    let backend = UnixListener::bind(&uds).unwrap();
    let mut peer = HybridVsockPeer::new(&uds, WAIT);
    assert_eq!(peer.conn(1234).unwrap(), HostConn::None);
    peer.op(HostOp::Connect { port: 1234 }).unwrap();
    let (mut s, _) = backend.accept().unwrap();
    assert_eq!(read_line(&mut s), "CONNECT 1234");
    // No answer yet: pending; sending is refused until the connection is open.
    assert_eq!(peer.conn(1234).unwrap(), HostConn::Pending);
    assert!(matches!(
        peer.send(1234, b"x"),
        Err(TargetError::Protocol(_))
    ));
    // The answer and the first bytes of the connection in one write.
    s.write_all(b"OK 1073741824\nhello").unwrap();
    assert_eq!(
        wait_leaves(&mut peer, 1234, HostConn::Pending),
        HostConn::Open
    );
    assert_eq!(take_all(&mut peer, 1234, 5), b"hello");
    assert!(peer.take(1234).unwrap().is_empty());
    peer.send(1234, b"from the host").unwrap();
    let mut buf = [0u8; 13];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the host");
    // A second connection by the same name is refused while the first is open.
    assert!(peer.op(HostOp::Connect { port: 1234 }).is_err());
    drop(s);
    assert_eq!(
        wait_leaves(&mut peer, 1234, HostConn::Open),
        HostConn::Closed
    );
    // Bytes for a connection the backend closed go nowhere (a verdict for the case's next
    // expectation, not a harness error).
    peer.send(1234, b"late").unwrap();
    assert!(peer.take(1234).unwrap().is_empty());
    // Never opened: an error of the case.
    assert!(matches!(
        peer.send(4321, b"x"),
        Err(TargetError::Protocol(_))
    ));
}

#[test]
fn end_of_file_before_the_answer_is_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.uds");
    let backend = UnixListener::bind(&uds).unwrap();
    let mut peer = HybridVsockPeer::new(&uds, WAIT);
    peer.op(HostOp::Connect { port: 7 }).unwrap();
    let (mut s, _) = backend.accept().unwrap();
    assert_eq!(read_line(&mut s), "CONNECT 7");
    drop(s);
    assert_eq!(
        wait_leaves(&mut peer, 7, HostConn::Pending),
        HostConn::Refused
    );
    // After a refusal the name can be used again.
    peer.op(HostOp::Connect { port: 7 }).unwrap();
    assert_eq!(peer.conn(7).unwrap(), HostConn::Pending);
}

#[test]
fn an_answer_other_than_ok_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.uds");
    let backend = UnixListener::bind(&uds).unwrap();
    let mut peer = HybridVsockPeer::new(&uds, WAIT);
    peer.op(HostOp::Connect { port: 9 }).unwrap();
    let (mut s, _) = backend.accept().unwrap();
    read_line(&mut s);
    s.write_all(b"NO\n").unwrap();
    let start = Instant::now();
    let err = loop {
        match peer.conn(9) {
            Ok(HostConn::Pending) if start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(2))
            }
            other => break other,
        }
    };
    assert!(
        matches!(&err, Err(TargetError::Protocol(m)) if m.contains("`NO`")),
        "{err:?}"
    );
    assert_eq!(peer.conn(9).unwrap(), HostConn::Refused);
    // Endless garbage without a line end is cut off too.
    peer.op(HostOp::Connect { port: 10 }).unwrap();
    let (mut s, _) = backend.accept().unwrap();
    read_line(&mut s);
    s.write_all(&[b'O'; 200]).unwrap();
    let start = Instant::now();
    let err = loop {
        match peer.conn(10) {
            Ok(HostConn::Pending) if start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(2))
            }
            other => break other,
        }
    };
    assert!(matches!(err, Err(TargetError::Protocol(_))), "{err:?}");
}

#[test]
fn driver_initiated_connection_is_accepted_on_the_port_socket() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.uds");
    let mut peer = HybridVsockPeer::new(&uds, WAIT);
    // Nobody listens yet: the backend's connect fails (it would reset the driver's request).
    assert!(UnixStream::connect(peer.listen_path(5000)).is_err());
    peer.op(HostOp::Listen { port: 5000 }).unwrap();
    assert_eq!(peer.listen_path(5000), dir.path().join("v.uds_5000"));
    assert_eq!(peer.conn(5000).unwrap(), HostConn::None);
    let mut s = UnixStream::connect(peer.listen_path(5000)).unwrap();
    assert_eq!(wait_leaves(&mut peer, 5000, HostConn::None), HostConn::Open);
    s.write_all(b"ping").unwrap();
    assert_eq!(take_all(&mut peer, 5000, 4), b"ping");
    peer.send(5000, b"pong").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    // The host closes: the backend's end reads end of file.
    peer.op(HostOp::Close { port: 5000 }).unwrap();
    assert_eq!(peer.conn(5000).unwrap(), HostConn::Closed);
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    assert!(matches!(
        peer.send(5000, b"x"),
        Err(TargetError::Protocol(_))
    ));
    // The listener stays: a second request to the same port is accepted under the same name.
    let _s2 = UnixStream::connect(peer.listen_path(5000)).unwrap();
    assert_eq!(
        wait_leaves(&mut peer, 5000, HostConn::Closed),
        HostConn::Open
    );
    // Closing with no connection left stops listening and removes the socket.
    peer.op(HostOp::Close { port: 5000 }).unwrap();
    peer.op(HostOp::Close { port: 5000 }).unwrap();
    // Connections left are closed, and the socket file removed, when the peer goes away.
    peer.op(HostOp::Listen { port: 6000 }).unwrap();
    let path = peer.listen_path(6000);
    assert!(path.exists());
    drop(peer);
    assert!(!path.exists());
}

fn backend_or_skip() -> bool {
    match backend_version(&backend_binary()) {
        Ok(v) => {
            assert!(v.starts_with("vhost-device-vsock"), "{v}");
            true
        }
        Err(e) => {
            if std::env::var_os("VIRTIO_CONFORM_REQUIRE_VHOST_DEVICE_VSOCK")
                .is_some_and(|v| v == "1")
            {
                panic!("vhost-device-vsock required but unavailable: {e}");
            }
            println!("skipped: vhost-device-vsock unavailable: {e}");
            false
        }
    }
}

#[test]
fn backend_process_starts_with_its_sockets_and_dies_with_its_owner() {
    if !backend_or_skip() {
        return;
    }
    let (backend, mut peer) = VsockBackendProcess::start(3, WAIT).unwrap();
    assert_eq!(backend.guest_cid(), 3);
    assert!(backend.socket_path().exists());
    assert!(backend.uds_path().exists());
    assert!(backend.exit_status().is_none(), "{}", backend.stderr_tail());
    // No front-end has set the device up: the backend accepts a host connection and closes
    // it at once, which the peer reads as a refusal.
    peer.op(HostOp::Connect { port: 1024 }).unwrap();
    assert_eq!(
        wait_leaves(&mut peer, 1024, HostConn::Pending),
        HostConn::Refused
    );
    let pid = backend.pid();
    let dir = backend.socket_path().parent().unwrap().to_path_buf();
    drop(backend);
    // Killed and reaped, scratch folder gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn a_missing_backend_binary_is_unavailable_with_the_install_script_named() {
    let err = VsockBackendProcess::start_with(
        std::path::Path::new("/nonexistent/vhost-device-vsock"),
        3,
        WAIT,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, TargetError::Unavailable(m) if m.contains("install-vhost-device-vsock.sh")),
        "{err:?}"
    );
}
