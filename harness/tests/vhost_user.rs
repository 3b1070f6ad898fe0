//! The vhost-user target: a real run against vhost-device-rng and vhost-device-vsock (each
//! skipped with the reason when the binary is not installed), a back-end that never answers,
//! a back-end that closes connections before its first reply (retried, then an error),
//! a killed back-end, and a bad `--socket` on the command line.

mod common;

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use virtio_conform::expectations::Expectations;
use virtio_conform::suite::{run_suite, Options, Suite};
use virtio_conform::target::vhost_user::{
    on_path, BackendSource, VhostUserTarget, EARLY_DROP_ATTEMPTS, VSOCK_GUEST_CID,
};
use virtio_conform::target::{DeviceKind, IrqEvent, Target, TargetError, TargetMemory};
use virtio_reference_device::regs::*;
use virtio_reference_device::{Descriptor, DriverQueue, HostConn, HostOp};

const RNG: &str = "vhost-device-rng";
const VSOCK: &str = "vhost-device-vsock";

fn vsock_missing() -> bool {
    if on_path(VSOCK) {
        return false;
    }
    eprintln!(
        "skipped: {VSOCK} is not installed (scripts/install-vhost-device-vsock.sh installs it)"
    );
    true
}

fn rng_missing() -> bool {
    if on_path(RNG) {
        return false;
    }
    eprintln!("skipped: {RNG} is not installed (scripts/test.sh installs it with cargo install)");
    true
}

/// The driver side of §3.1.1 for queue 0 with the rings at `q`, up to DRIVER_OK.
fn init(t: &mut dyn Target, q: &DriverQueue) -> Result<(), TargetError> {
    t.write32(STATUS, 0)?;
    t.write32(STATUS, (ACKNOWLEDGE | DRIVER) as u32)?;
    t.write32(DEVICE_FEATURES_SEL, 1)?;
    let high = t.read32(DEVICE_FEATURES)?;
    assert_ne!(high & 1, 0, "VIRTIO_F_VERSION_1 offered");
    t.write32(DRIVER_FEATURES_SEL, 1)?;
    t.write32(DRIVER_FEATURES, 1)?;
    t.write32(STATUS, (ACKNOWLEDGE | DRIVER | FEATURES_OK) as u32)?;
    assert_ne!(t.read32(STATUS)? as u8 & FEATURES_OK, 0, "FEATURES_OK kept");
    t.write32(QUEUE_SEL, 0)?;
    t.write32(QUEUE_NUM, u32::from(q.size))?;
    for (lo, v) in [
        (QUEUE_DESC_LOW, q.desc),
        (QUEUE_DRIVER_LOW, q.avail),
        (QUEUE_DEVICE_LOW, q.used),
    ] {
        t.write32(lo, v as u32)?;
        t.write32(lo + 4, (v >> 32) as u32)?;
    }
    t.write32(QUEUE_READY, 1)?;
    t.write32(
        STATUS,
        (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) as u32,
    )
}

/// Polls the used ring of `q` until `n` elements arrived (bounded: the back-end answers in
/// well under a second; the bound only keeps a broken back-end from hanging the test).
fn wait_used(t: &mut dyn Target, q: &mut DriverQueue, n: usize) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    for _ in 0..2000 {
        t.settle().unwrap();
        got.extend(q.take_used(&mut TargetMemory(t)).unwrap());
        if got.len() >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    got
}

#[test]
fn entropy_bytes_arrive_through_vhost_device_rng() {
    if rng_missing() {
        return;
    }
    let mut t =
        VhostUserTarget::new(BackendSource::Start(RNG.into()), DeviceKind::Entropy).unwrap();
    for round in 0..2 {
        // Each case (fresh) meets a device in its power-on state, on new zeroed RAM.
        t.fresh().unwrap();
        assert_eq!(t.read32(MAGIC).unwrap(), MAGIC_VALUE);
        assert_eq!(t.read32(DEVICE_ID).unwrap(), 4);
        let mut q = DriverQueue::modern(0x10_0000, 16);
        init(&mut t, &q).unwrap();
        let buf = 0x80_0000u64;
        t.mem_write(buf, &[0xa5; 64]).unwrap();
        let d = Descriptor {
            addr: buf,
            len: 64,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        };
        q.write_descriptor(&mut TargetMemory(&mut t), 0, &d)
            .unwrap();
        q.publish(&mut TargetMemory(&mut t), &[0]).unwrap();
        t.notify(0).unwrap();
        let used = wait_used(&mut t, &mut q, 1);
        assert_eq!(
            used,
            vec![(0, 64)],
            "round {round}: head 0 used with all 64 bytes"
        );
        let mut got = [0u8; 64];
        t.mem_read(buf, &mut got).unwrap();
        assert!(
            got.iter().filter(|&&b| b != 0xa5).count() > 32,
            "round {round}: random bytes replaced the fill pattern: {got:02x?}"
        );
        t.settle().unwrap();
        assert_ne!(
            t.read32(INTERRUPT_STATUS).unwrap() & INT_USED_BUFFER,
            0,
            "round {round}: the call eventfd became InterruptStatus bit 0"
        );
        assert!(t.take_interrupts().contains(&IrqEvent::UsedBuffer(Some(0))));
    }
}

#[test]
fn a_back_end_that_never_answers_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Accepts the connection, reads nothing and answers nothing.
    let keep = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let r = VhostUserTarget::new(BackendSource::Socket(path.clone()), DeviceKind::Entropy);
    let Err(TargetError::Unavailable(msg)) = r else {
        panic!("expected Unavailable");
    };
    assert!(msg.contains("GET_FEATURES"), "{msg}");
    drop(keep.join());
}

#[test]
fn a_back_end_that_closes_every_connection_early_is_an_error_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closing.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // Accepts every connection and closes it at once, before any reply.
    let acceptor = std::thread::spawn(move || {
        let mut accepted = 0u32;
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    accepted += 1;
                    drop(s);
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        accepted
    });
    let r = VhostUserTarget::new(BackendSource::Socket(path.clone()), DeviceKind::Entropy);
    stop.store(true, Ordering::Relaxed);
    let accepted = acceptor.join().unwrap();
    let Err(TargetError::Unavailable(msg)) = r else {
        panic!("expected Unavailable");
    };
    assert!(
        msg.contains(&format!(
            "closed {EARLY_DROP_ATTEMPTS} connections in a row before its first reply"
        )),
        "{msg}"
    );
    assert!(
        msg.contains("SET_OWNER") || msg.contains("GET_FEATURES"),
        "{msg}"
    );
    assert_eq!(accepted, EARLY_DROP_ATTEMPTS);
}

#[test]
fn a_connection_closed_before_the_first_reply_is_retried() {
    if rng_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // vhost-device-rng adds the back-end's index to the path it is given.
    let path = dir.path().join("vhu.sock0");
    let listener = UnixListener::bind(&path).unwrap();
    let given = dir.path().join("vhu.sock");
    // The first connection is closed before any reply, as by a back-end between listeners;
    // then the real back-end takes the socket over.
    let handover = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        drop(s);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        Command::new(RNG)
            .arg("--socket-path")
            .arg(&given)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    let r = VhostUserTarget::new(
        BackendSource::Socket(dir.path().join("vhu.sock0")),
        DeviceKind::Entropy,
    );
    let mut rng = handover.join().unwrap();
    let outcome = r.and_then(|mut t| t.read32(DEVICE_ID));
    let _ = rng.kill();
    let _ = rng.wait();
    assert_eq!(outcome.unwrap(), 4);
}

#[test]
fn a_killed_back_end_becomes_a_crash_verdict() {
    if rng_missing() {
        return;
    }
    let mut t =
        VhostUserTarget::new(BackendSource::Start(RNG.into()), DeviceKind::Entropy).unwrap();
    let q = DriverQueue::modern(0x10_0000, 16);
    init(&mut t, &q).unwrap();
    let pid = t.backend_pid().expect("the target started the back-end");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut err = None;
    for _ in 0..1000 {
        if let Err(e) = t.settle() {
            err = Some(e);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(
        matches!(err, Some(TargetError::Crashed(ref m)) if m.contains("exited")),
        "{err:?}"
    );
    // The next case starts a new back-end.
    t.fresh().unwrap();
    assert_eq!(t.read32(DEVICE_ID).unwrap(), 4);
}

#[test]
fn a_bad_socket_path_exits_2_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args([
            "run",
            "--target",
            "vhost-user",
            "--socket",
            "/nonexistent/vhost-user.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--socket /nonexistent/vhost-user.sock: no such socket"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args(["run", "--target", "vhost-user"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--socket PATH"));
}

#[test]
fn the_cli_run_on_vhost_device_rng_meets_its_expectations() {
    if rng_missing() {
        return;
    }
    let specs = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../specs/expectations/vhost-user-rng.json"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args([
            "run",
            "--target",
            "vhost-user",
            "--backend",
            RNG,
            "--device",
            "entropy",
            "--strict",
            "--expectations",
            specs,
            "--only",
            "split.*",
            "--only",
            "reset.*",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(" pass"), "{text}");
    assert!(text.contains("xfail"), "{text}");
}

#[test]
fn vhost_device_vsock_shows_its_guest_cid_and_a_host_side() {
    if vsock_missing() {
        return;
    }
    let mut t =
        VhostUserTarget::new(BackendSource::Start(VSOCK.into()), DeviceKind::Vsock).unwrap();
    assert!(t.info().implementation.contains(VSOCK));
    assert_eq!(t.read32(DEVICE_ID).unwrap(), 19);
    // guest_cid, le64 at configuration offset 0 (§5.10.4), read from the back-end.
    let lo = u64::from(t.read32(CONFIG).unwrap());
    let hi = u64::from(t.read32(CONFIG + 4).unwrap());
    assert_eq!(lo | hi << 32, VSOCK_GUEST_CID);
    // The host side is the back-end's hybrid vsock socket, new for every case.
    assert_eq!(t.host_conn(5000).unwrap(), HostConn::None);
    t.host_op(HostOp::Listen { port: 5000 }).unwrap();
    assert!(t.host_send(5000, b"x").is_err(), "no connection yet");
    t.fresh().unwrap();
    assert_eq!(t.host_conn(5000).unwrap(), HostConn::None);
    // A back-end without a hybrid vsock socket has no host side.
    if on_path(RNG) {
        let mut r =
            VhostUserTarget::new(BackendSource::Start(RNG.into()), DeviceKind::Entropy).unwrap();
        assert!(matches!(
            r.host_op(HostOp::Listen { port: 1 }),
            Err(TargetError::Unsupported(_))
        ));
    }
}

#[test]
fn vsock_connections_flow_both_ways_through_vhost_device_vsock() {
    if vsock_missing() {
        return;
    }
    let suite = Suite::load_default().unwrap();
    let expectations = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs/expectations/vhost-user-vsock.json");
    let report = run_suite(
        &suite,
        || VhostUserTarget::new(BackendSource::Start(VSOCK.into()), DeviceKind::Vsock),
        &Options {
            only: vec!["vsock.*".into()],
            expectations: Some(Expectations::load(&expectations).unwrap()),
            ..Options::default()
        },
    );
    common::assert_vsock_backend_report(&report);
}
