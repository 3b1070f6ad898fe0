//! The `virtio-conform` command line.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use virtio_conform::report::{self, Expectations, Report};
use virtio_conform::suite::{default_specs_dir, run_suite, Options, Suite};
use virtio_conform::target::{parse_version, DeviceKind, ReferenceTarget, Target, TargetKind};
use virtio_reference_device::Mutant;

#[derive(Parser)]
#[command(
    name = "virtio-conform",
    version,
    about = "Conformance harness and fuzzer for virtio-mmio devices"
)]
struct Cli {
    /// Directory holding requirements.json and sequences/ (default: the source tree's specs/).
    #[arg(long, global = true)]
    specs: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Junit,
}

#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// `reference`, `mutant:<name>` or `qemu`.
    #[arg(long, default_value = "reference")]
    target: String,
    /// Device type: entropy, block or net.
    #[arg(long, default_value = "entropy")]
    device: String,
    /// Transport version: 1 (legacy) or 2.
    #[arg(long, default_value_t = 2)]
    version: u32,
    /// QEMU binary for `--target qemu`.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite against a target.
    Run {
        #[command(flatten)]
        t: TargetArgs,
        /// Only cases whose id matches this glob (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Skip cases whose id matches this glob (repeatable).
        #[arg(long)]
        skip: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Write the report to FILE instead of standard output (the text summary still prints).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Expectations file (known divergences → xfail / skipped).
        #[arg(long)]
        expectations: Option<PathBuf>,
        /// Count non_strict (SHOULD) results as unexpected.
        #[arg(long)]
        strict: bool,
        /// Also list passing cases in the text summary.
        #[arg(short, long)]
        verbose: bool,
    },
    /// List cases, requirements or mutants.
    List {
        /// List requirements instead of cases.
        #[arg(long)]
        requirements: bool,
        /// List mutant target names.
        #[arg(long)]
        mutants: bool,
    },
    /// Print which spec statements have at least one case.
    Coverage {
        /// Print the uncovered ids too.
        #[arg(long)]
        uncovered: bool,
    },
    /// Compare two JSON reports: fixed, broken and new errors.
    Compare {
        /// Older report.
        old: PathBuf,
        /// Newer report.
        new: PathBuf,
    },
}

fn make_target(t: &TargetArgs) -> Result<Box<dyn Target>, String> {
    let kind: TargetKind = t.target.parse()?;
    let device: DeviceKind = t.device.parse()?;
    let version = parse_version(t.version)?;
    match kind {
        TargetKind::Reference => Ok(Box::new(
            ReferenceTarget::new(device, version, None).map_err(|e| e.to_string())?,
        )),
        TargetKind::Mutant(m) => Ok(Box::new(
            ReferenceTarget::new(device, version, Some(m)).map_err(|e| e.to_string())?,
        )),
        TargetKind::Qemu => {
            use virtio_conform::target::qemu::{QemuOptions, QemuTarget};
            let opts = QemuOptions {
                qemu: t.qemu.clone(),
                ..QemuOptions::new(device, version)
            };
            Ok(Box::new(QemuTarget::new(opts).map_err(|e| e.to_string())?))
        }
    }
}

fn load_report(p: &PathBuf) -> Result<Report, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}:{}:{}: {e}", p.display(), e.line(), e.column()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("virtio-conform: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<i32, String> {
    let specs = cli.specs.clone().unwrap_or_else(default_specs_dir);
    let load = || Suite::load(&specs).map_err(|e| format!("{e:#}"));
    match cli.cmd {
        Cmd::Run {
            t,
            only,
            skip,
            format,
            output,
            expectations,
            strict,
            verbose,
        } => {
            let suite = load()?;
            let expectations = match &expectations {
                Some(p) => Some(Expectations::load(p).map_err(|e| format!("{e:#}"))?),
                None => None,
            };
            let mut target = make_target(&t)?;
            let mut prefix = format!(
                "virtio-conform run --target {} --device {} --version {}",
                t.target, t.device, t.version
            );
            if let Some(p) = &cli.specs {
                prefix.push_str(&format!(" --specs {}", p.display()));
            }
            let bar = indicatif::ProgressBar::new(0);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} cases {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let b2 = bar.clone();
            let opts = Options {
                only,
                skip,
                expectations,
                replay_prefix: Some(prefix),
                progress: Some(Box::new(move |done, total| {
                    b2.set_length(total as u64);
                    b2.set_position(done as u64);
                })),
            };
            let report = run_suite(&suite, target.as_mut(), &opts);
            bar.finish_and_clear();
            let body = match format {
                Format::Text => report::text_summary(&report, &suite.catalog, verbose),
                Format::Json => serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
                Format::Junit => report::junit(&report),
            };
            match output {
                Some(p) => {
                    std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?;
                    print!("{}", report::text_summary(&report, &suite.catalog, verbose));
                }
                None => print!("{body}"),
            }
            Ok(report.exit_code(strict))
        }
        Cmd::List {
            requirements,
            mutants,
        } => {
            if mutants {
                for m in Mutant::ALL {
                    println!("mutant:{:<34} {}", m.name(), m.catalog_id());
                }
                return Ok(0);
            }
            let suite = load()?;
            if requirements {
                for r in suite.catalog.requirements.values() {
                    println!("{:<28} §{:<10} {:<10} {}", r.id, r.section, r.level, r.text);
                }
            } else {
                for c in &suite.cases {
                    println!(
                        "{:<44} v{:?} {:<16} {}",
                        c.id,
                        c.versions,
                        c.devices.join(","),
                        c.title
                    );
                }
            }
            Ok(0)
        }
        Cmd::Coverage { uncovered } => {
            let suite = load()?;
            let c = report::coverage(&suite.catalog, &suite.cases);
            for (sec, (cov, total)) in &c.by_section {
                println!("§{sec:<8} {cov:>3}/{total:<3}");
            }
            println!(
                "{}/{} device-side statements have at least one case",
                c.covered, c.device_statements
            );
            if uncovered {
                println!("uncovered: {}", c.uncovered.join(", "));
            }
            Ok(0)
        }
        Cmd::Compare { old, new } => {
            let c = report::compare(&load_report(&old)?, &load_report(&new)?);
            for (name, list) in [
                ("fixed", &c.fixed),
                ("broken", &c.broken),
                ("new errors", &c.new_errors),
                ("added", &c.added),
                ("removed", &c.removed),
            ] {
                println!(
                    "{name}: {}",
                    if list.is_empty() {
                        "-".to_string()
                    } else {
                        list.join(", ")
                    }
                );
            }
            Ok(if c.broken.is_empty() && c.new_errors.is_empty() {
                0
            } else {
                1
            })
        }
    }
}
