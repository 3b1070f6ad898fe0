//! Replays fuzz inputs through a target body in a loop, without libFuzzer: the uninstrumented
//! cost of the body, for a profiler or an instruction counter.
//!
//! ```sh
//! cargo build --release -p virtio-conform --example fuzz_body_loop
//! valgrind --tool=callgrind target/release/examples/fuzz_body_loop queue_chain 100 corpora/queue_chain
//! ```
//!
//! Arguments: target name, rounds (each input replayed that many times), then files or
//! folders of inputs (folders are read one level deep). Prints inputs, rounds and findings.
//! `VIRTIO_CONFORM_MUTANT` pins the subject as in the fuzz binaries.

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(rounds)) = (args.next(), args.next()) else {
        eprintln!("usage: fuzz_body_loop <target> <rounds> <file or folder>...");
        std::process::exit(2);
    };
    let rounds: usize = rounds.parse().unwrap_or_else(|_| {
        eprintln!("rounds must be a number, got `{rounds}`");
        std::process::exit(2);
    });
    let mut inputs = Vec::new();
    for a in args {
        let p = std::path::Path::new(&a);
        let files: Vec<_> = if p.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap_or_else(|e| {
                    eprintln!("{a}: {e}");
                    std::process::exit(2)
                })
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![p.to_path_buf()]
        };
        for f in files {
            match std::fs::read(&f) {
                Ok(d) => inputs.push(d),
                Err(e) => {
                    eprintln!("{}: {e}", f.display());
                    std::process::exit(2);
                }
            }
        }
    }
    let body: fn(&[u8]) -> Result<(), virtio_conform::fuzz::Finding> = match target.as_str() {
        "queue_chain" => virtio_conform::fuzz::queue_chain,
        "mmio_regs" => virtio_conform::fuzz::mmio_regs,
        "diff_mmio" => virtio_conform::fuzz::diff_mmio,
        other => {
            eprintln!(
                "unknown target `{other}`: expected one of {}",
                virtio_conform::fuzz::TARGETS.join(", ")
            );
            std::process::exit(2);
        }
    };
    let mut findings = 0usize;
    for _ in 0..rounds {
        for d in &inputs {
            findings += body(d).is_err() as usize;
        }
    }
    println!(
        "{} inputs x {rounds} rounds, {findings} findings",
        inputs.len()
    );
}
