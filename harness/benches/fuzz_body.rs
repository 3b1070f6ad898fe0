//! The `queue_chain` fuzz body on its own: release build, no coverage instrumentation, no
//! libFuzzer. One iteration runs every input of a corpus once against the reference (no
//! mutant): by default the committed `corpora/queue_chain` (top folder and `regressions/`,
//! small hand-made inputs), or the folder named by `FUZZ_BODY_CORPUS`, such as the corpus a
//! `cargo fuzz run queue_chain` session left in `fuzz/corpus/queue_chain` (the larger inputs a
//! fuzzer grows). Throughput is in inputs (elem/s), so the time per input is the body's cost
//! per input of that corpus.
//!
//! What it isolates: the harness side of a fuzz iteration (decoding, the driver model laying
//! out chains, both queue implementations on their one shared guest memory, the
//! oracles). `fuzz/bench-vs-rust-vmm.sh` gives the exec/s a user of `cargo fuzz run` sees.
//!
//! Run with `cargo bench -p virtio-conform --bench fuzz_body` (or
//! `FUZZ_BODY_CORPUS=<folder> cargo bench -p virtio-conform --bench fuzz_body`).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_conform::fuzz::queue_chain::queue_chain_on;

/// Every file of `dir` and of its `regressions/` folder, in name order.
fn inputs(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths = Vec::new();
    for d in [dir.to_path_buf(), dir.join("regressions")] {
        if let Ok(entries) = std::fs::read_dir(&d) {
            paths.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

fn queue_chain_body(c: &mut Criterion) {
    let dir = match std::env::var_os("FUZZ_BODY_CORPUS") {
        Some(d) => std::path::PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpora/queue_chain"),
    };
    let inputs = inputs(&dir);
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    let mut g = c.benchmark_group("fuzz_body");
    g.throughput(Throughput::Elements(inputs.len() as u64));
    g.bench_function("queue_chain", |b| {
        b.iter(|| {
            for data in &inputs {
                let _ = black_box(queue_chain_on(black_box(data), None));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, queue_chain_body);
criterion_main!(benches);
