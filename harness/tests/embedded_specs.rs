//! The catalog and the cases are embedded in the library: the CLI runs the whole suite from a
//! directory outside the checkout with no `--specs`, `Suite::embedded` equals the source tree's
//! `specs/`, and `--specs DIR` still overrides.

use std::process::Command;
use virtio_conform::suite::{default_specs_dir, Suite};

#[test]
fn embedded_suite_is_the_source_trees() {
    let embedded = Suite::embedded().expect("embedded specs parse");
    let on_disk = Suite::load(&default_specs_dir()).expect("source specs parse");
    let ids = |s: &Suite| s.cases.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&embedded), ids(&on_disk));
    assert_eq!(
        embedded.catalog.requirements.len(),
        on_disk.catalog.requirements.len()
    );
    assert!(embedded.cases.len() >= 60);
}

#[test]
fn the_binary_runs_the_suite_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .current_dir(dir.path())
        .args([
            "run",
            "--target",
            "reference",
            "--device",
            "block",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = report["results"].as_array().unwrap().len();
    let want = Suite::embedded()
        .unwrap()
        .cases
        .iter()
        .filter(|c| c.applies_to("block", 2))
        .count();
    assert_eq!(n, want);
}

#[test]
fn specs_dir_overrides_the_embedded_suite() {
    // A copy of the specs with one case only.
    let dir = tempfile::tempdir().unwrap();
    let src = default_specs_dir();
    std::fs::create_dir_all(dir.path().join("sequences")).unwrap();
    std::fs::copy(
        src.join("requirements.json"),
        dir.path().join("requirements.json"),
    )
    .unwrap();
    std::fs::copy(
        src.join("sequences").join("mmio.identity.jsonl"),
        dir.path().join("sequences").join("mmio.identity.jsonl"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .current_dir(dir.path())
        .args(["--specs", ".", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("mmio.identity"));
}
