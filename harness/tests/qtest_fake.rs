//! The out-of-process target against a misbehaving peer: a fake QEMU (a shell wrapper that
//! forks, plus a qtest server in this test) that floods, never ends a line, or trickles
//! interrupt lines. Every misbehaviour must end as a bounded `Hung`, never a hang of the
//! harness; the wrapper's children must not outlive the target; a trailing pipelined write
//! must reach the target before the case ends.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use virtio_conform::target::qemu::{QemuOptions, QemuTarget};
use virtio_conform::target::{DeviceKind, Target, TargetError};
use virtio_reference_device::TransportVersion;

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Answers like a QEMU with an entropy device at the first transport (reads 0 elsewhere).
    Normal,
    /// After set-up, answers the next command with a line that never ends.
    NoNewline,
    /// After set-up, answers the next command with endless `IRQ raise` lines.
    Flood,
    /// After set-up, never answers, but sends an `IRQ raise` line every 20 ms.
    Trickle,
}

struct Fake {
    dir: tempfile::TempDir,
    /// Every command received, over all connections.
    log: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    /// A fake QEMU whose n-th start behaves as `plan[n]` (the last entry repeats).
    fn new(plan: Vec<Behaviour>) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-qemu");
        let d = dir.path().display();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 if [ \"$1\" = --version ]; then echo 'QEMU emulator version 0.0.0 (fake qtest peer)'; exit 0; fi\n\
                 for a in \"$@\"; do case \"$a\" in unix:*) s=\"${{a#unix:}}\";; esac; done\n\
                 # Fork instead of exec: the child must not outlive the target.\n\
                 sleep 1000 &\n\
                 echo $! >> {d}/children\n\
                 echo \"$s\" >> {d}/socks\n\
                 wait\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (socks, log2) = (dir.path().join("socks"), log.clone());
        std::thread::spawn(move || {
            let mut served = 0;
            loop {
                let lines: Vec<String> = std::fs::read_to_string(&socks)
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect();
                for sock in lines.iter().skip(served) {
                    let b = plan[served.min(plan.len() - 1)];
                    let (sock, log) = (PathBuf::from(sock), log2.clone());
                    std::thread::spawn(move || serve(&sock, b, log));
                    served += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Fake { dir, log }
    }

    fn options(&self) -> QemuOptions {
        QemuOptions {
            qemu: self.dir.path().join("fake-qemu"),
            timeout: Duration::from_millis(500),
            ..QemuOptions::new(DeviceKind::Entropy, TransportVersion::Modern)
        }
    }

    fn children(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.path().join("children"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

fn serve(sock: &Path, b: Behaviour, log: Arc<Mutex<Vec<String>>>) {
    let Ok(s) = UnixStream::connect(sock) else {
        return;
    };
    let mut w = s.try_clone().unwrap();
    let mut setup_done = false;
    for line in BufReader::new(s).lines() {
        let Ok(cmd) = line else { return };
        log.lock().unwrap().push(cmd.clone());
        let reply = if cmd.starts_with("irq_intercept_in") {
            "OK".to_string()
        } else if let Some(a) = cmd.strip_prefix("readl 0x") {
            let addr = u64::from_str_radix(a.trim(), 16).unwrap_or(0);
            // The set-up probes 8 transports (MagicValue, Version, DeviceID); the last is
            // 0xfeb00e08.
            if addr == 0xfeb0_0e08 {
                setup_done = true;
                "OK 0x0".to_string()
            } else if !setup_done || matches!(b, Behaviour::Normal) {
                match addr {
                    0xfeb0_0000 => "OK 0x74726976".into(),
                    0xfeb0_0004 => "OK 0x2".into(),
                    0xfeb0_0008 => "OK 0x4".into(),
                    _ => "OK 0x0".into(),
                }
            } else {
                return misbehave(&mut w, b);
            }
        } else if cmd.starts_with("read ") {
            let n: usize = cmd.rsplit(' ').next().unwrap().parse().unwrap_or(0);
            format!("OK 0x{}", "00".repeat(n))
        } else {
            "OK".to_string()
        };
        if w.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn misbehave(w: &mut UnixStream, b: Behaviour) {
    let chunk = match b {
        Behaviour::NoNewline => "0".repeat(4096),
        _ => "IRQ raise 16\n".repeat(256),
    };
    if matches!(b, Behaviour::NoNewline) {
        let _ = w.write_all(b"OK 0x");
    }
    loop {
        if w.write_all(chunk.as_bytes()).is_err() {
            return;
        }
        if matches!(b, Behaviour::Trickle) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hung(r: Result<u32, TargetError>) -> String {
    match r {
        Err(TargetError::Hung(m)) => m,
        other => panic!("expected Hung, got {other:?}"),
    }
}

#[test]
fn a_reply_without_newline_is_cut_off_and_the_next_instance_works() {
    let fake = Fake::new(vec![Behaviour::NoNewline, Behaviour::Normal]);
    let mut t = QemuTarget::new(fake.options()).unwrap();
    let m = hung(t.read32(0));
    assert!(m.contains("longer than"), "{m}");
    // The run goes on with a fresh instance.
    t.fresh().unwrap();
    assert_eq!(t.read32(0).unwrap(), 0x7472_6976);
}

#[test]
fn an_irq_flood_is_cut_off() {
    let fake = Fake::new(vec![Behaviour::Flood, Behaviour::Normal]);
    let mut t = QemuTarget::new(fake.options()).unwrap();
    let m = hung(t.read32(0));
    assert!(m.contains("bytes") || m.contains("in time"), "{m}");
    assert!(t.take_interrupts().len() <= 4096);
    t.fresh().unwrap();
    assert_eq!(t.read32(8).unwrap(), 4);
}

#[test]
fn interrupt_lines_do_not_extend_the_reply_deadline() {
    let fake = Fake::new(vec![Behaviour::Trickle]);
    let mut t = QemuTarget::new(fake.options()).unwrap();
    let start = Instant::now();
    let m = hung(t.read32(0));
    assert!(m.contains("other lines kept arriving"), "{m}");
    // Bounded by the per-reply timeout, not by how long the peer keeps talking.
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_forking_wrapper_leaves_no_child_behind() {
    let fake = Fake::new(vec![Behaviour::Normal]);
    let t = QemuTarget::new(fake.options()).unwrap();
    let children = fake.children();
    assert_eq!(children.len(), 1);
    assert!(alive(children[0]));
    drop(t);
    let end = Instant::now() + Duration::from_secs(10);
    while alive(children[0]) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !alive(children[0]),
        "the wrapper's child {} survived",
        children[0]
    );
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

#[test]
fn a_trailing_write_reaches_the_target_before_the_case_ends() {
    let fake = Fake::new(vec![Behaviour::Normal]);
    let suite = virtio_conform::suite::Suite::load_default().unwrap();
    let text =
        "{\"case\": \"x.trailing\", \"title\": \"t\", \"requirements\": [\"MMIO-DEV-01\"]}\n\
                {\"op\": \"write\", \"reg\": \"Status\", \"value\": 128}\n";
    let case = virtio_conform::case::Case::parse(text, "x.jsonl", &suite.catalog).unwrap();
    let mut t = QemuTarget::new(fake.options()).unwrap();
    let run = virtio_conform::runner::run_case(&mut t, &case, &suite.catalog);
    assert_eq!(
        run.outcome,
        virtio_conform::outcome::Outcome::Pass,
        "{run:?}"
    );
    let end = Instant::now() + Duration::from_secs(5);
    let sent = || {
        fake.log
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == "writel 0xfeb00070 0x80")
    };
    while !sent() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(sent(), "{:?}", fake.log.lock().unwrap());
}

#[test]
fn scratch_folders_of_killed_runs_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = tmp
        .path()
        .join(format!("virtio-conform-qemu-{dead_pid}-abc123"));
    let mine = tmp
        .path()
        .join(format!("virtio-conform-qemu-{}-def456", std::process::id()));
    let other = tmp.path().join("virtio-conform-qemu-notapid");
    for d in [&stale, &mine, &other] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("qemu.stderr"), "x").unwrap();
    }
    // A run started with TMPDIR there cleans up before it starts QEMU.
    let fake = Fake::new(vec![Behaviour::Normal]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .env("TMPDIR", tmp.path())
        .args([
            "run",
            "--target",
            "qemu",
            "--only",
            "init.spec-order",
            "--qemu",
        ])
        .arg(fake.options().qemu)
        .output()
        .unwrap();
    let code = out.status.code();
    assert!(
        code == Some(1) || code == Some(0),
        "{code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stale.exists(), "stale scratch folder still there");
    assert!(mine.exists() && other.exists());
    // Nothing of the run itself is left.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
