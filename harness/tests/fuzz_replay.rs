//! Replays the committed fuzz corpora under a plain `cargo test` (stable, no libFuzzer).
//!
//! - `corpora/<target>/*` (files directly in the folder): no finding on the reference (for
//!   `diff_mmio`: the reference compared with itself).
//! - `corpora/<target>/regressions/<mutant-name>/*`: a finding on that mutant, and none on the
//!   reference.
//! - `corpora/<target>/seed-*` equal what `virtio_conform::fuzz::seeds::seeds` generates;
//!   with `VIRTIO_CONFORM_WRITE_CORPORA=1` the seeds are (re)written first.
//! - A few thousand pseudo-random inputs per target run clean on the reference
//!   (`VIRTIO_CONFORM_RANDOM_INPUTS=<n>` changes how many).

use std::path::{Path, PathBuf};
use virtio_conform::fuzz::{self, replay_on, seeds::seeds, TARGETS};
use virtio_reference_device::Mutant;

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpora")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn write_requested() -> bool {
    std::env::var("VIRTIO_CONFORM_WRITE_CORPORA").is_ok_and(|v| v == "1")
}

#[test]
fn seed_files_match_the_generator() {
    for t in TARGETS {
        let dir = corpora().join(t);
        if write_requested() {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds(t) {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
        for (name, bytes) in seeds(t) {
            let path = dir.join(&name);
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; regenerate with VIRTIO_CONFORM_WRITE_CORPORA=1 cargo test -p virtio-conform --test fuzz_replay",
                    path.display()
                )
            });
            assert_eq!(
                on_disk,
                bytes,
                "{} differs from the generator (the input encoding changed?); regenerate with VIRTIO_CONFORM_WRITE_CORPORA=1",
                path.display()
            );
        }
    }
}

#[test]
fn corpora_are_clean_on_the_reference() {
    let mut n = 0;
    for t in TARGETS {
        for path in files(&corpora().join(t)) {
            let data = std::fs::read(&path).unwrap();
            let r = replay_on(t, &data, None).unwrap();
            assert!(
                r.finding.is_none(),
                "{}: {}\n{}",
                path.display(),
                r.finding.unwrap(),
                r.ops
            );
            n += 1;
        }
    }
    assert!(
        n >= 30,
        "only {n} corpus files found under {}",
        corpora().display()
    );
}

#[test]
fn regressions_find_their_mutant() {
    let mut found = Vec::new();
    for t in TARGETS {
        let root = corpora().join(t).join("regressions");
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for dir in rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
        {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let m = Mutant::from_name(&name)
                .unwrap_or_else(|| panic!("{}: not a mutant name", dir.display()));
            for path in files(&dir) {
                let data = std::fs::read(&path).unwrap();
                let on_mutant = replay_on(t, &data, Some(m)).unwrap();
                assert!(
                    on_mutant.finding.is_some(),
                    "{}: no finding on mutant:{name}\n{}",
                    path.display(),
                    on_mutant.ops
                );
                let on_ref = replay_on(t, &data, None).unwrap();
                assert!(
                    on_ref.finding.is_none(),
                    "{}: finding on the reference: {}",
                    path.display(),
                    on_ref.finding.unwrap()
                );
                found.push(m);
            }
        }
    }
    let missing: Vec<&str> = Mutant::ALL
        .iter()
        .filter(|m| !found.contains(m))
        .map(|m| m.name())
        .collect();
    eprintln!("mutants without a regression input: {missing:?}");
}

#[test]
fn replay_reports_ops_and_rejects_unknown_targets() {
    assert!(fuzz::replay("no_such_target", b"").is_err());
    for t in TARGETS {
        let r = fuzz::replay_on(t, b"", None).unwrap();
        assert!(r.finding.is_none());
        assert!(!r.ops.is_empty());
    }
    // A finding serializes to JSON for the CLI's report.
    let data = [0u8; 4];
    let r = replay_on("mmio_regs", &data, Some(Mutant::ResetSetsFailed)).unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"ops\""));
}

/// xorshift64*: a tiny deterministic byte source.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_inputs_are_clean_on_the_reference() {
    let n: usize = std::env::var("VIRTIO_CONFORM_RANDOM_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for t in TARGETS {
        // Random bytes, and seeds with random bytes spliced in (closer to what a fuzzer does).
        let seeds: Vec<Vec<u8>> = seeds(t).into_iter().map(|(_, b)| b).collect();
        let count = if *t == "diff_mmio" { n / 10 } else { n };
        for i in 0..count {
            let len = (rng.next() % 300) as usize;
            let mut data = if i % 2 == 0 || seeds.is_empty() {
                rng.bytes(len)
            } else {
                let mut s = seeds[i % seeds.len()].clone();
                for _ in 0..1 + rng.next() % 4 {
                    if s.is_empty() {
                        break;
                    }
                    let at = (rng.next() as usize) % s.len();
                    s[at] = rng.next() as u8;
                }
                s
            };
            if *t == "diff_mmio" && !data.is_empty() {
                data[0] = 0;
            }
            let r = replay_on(t, &data, None).unwrap();
            assert!(
                r.finding.is_none(),
                "{t} input {i} {data:02x?}: {}\n{}",
                r.finding.unwrap(),
                r.ops
            );
        }
    }
}

/// Every mutant of the reference device is found by at least one fuzz target from the
/// committed corpora alone (seeds, regressions and the other committed inputs of every
/// target): a finding on the mutant for some input.
#[test]
fn every_mutant_is_found_by_a_fuzz_target_from_the_corpora() {
    let mut inputs: Vec<(&str, Vec<u8>)> = Vec::new();
    for t in TARGETS {
        let dir = corpora().join(t);
        let mut paths = files(&dir);
        let regs = dir.join("regressions");
        for m in std::fs::read_dir(&regs).into_iter().flatten().flatten() {
            paths.extend(files(&m.path()));
        }
        for p in paths {
            inputs.push((t, std::fs::read(&p).unwrap()));
        }
    }
    let mut missed = Vec::new();
    for &m in Mutant::ALL {
        let found = inputs
            .iter()
            .any(|(t, data)| replay_on(t, data, Some(m)).unwrap().finding.is_some());
        if !found {
            missed.push(m.name());
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} mutants found by no committed fuzz input: {missed:?}",
        missed.len(),
        Mutant::ALL.len()
    );
}
