//! `virtio-conform matrix` writes a JSON grid and a self-contained HTML page; the page is
//! rendered in headless Chromium and the grid read back from the DOM.

use std::process::Command;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn matrix_page_renders_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args([
            "matrix",
            "--target",
            "reference",
            "--target",
            "mutant:reset-sets-failed",
            "-o",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("matrix.json")).unwrap()).unwrap();
    assert_eq!(m["schema"], "virtio-conform/matrix/1");
    let rows = m["rows"].as_object().unwrap();
    assert!(rows.len() > 60);
    assert_eq!(rows["reset.reinit-works"][0]["outcome"], "pass");
    assert_eq!(rows["reset.reinit-works"][1]["outcome"], "fail");

    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("VIRTIO_CONFORM_REQUIRE_CHROMIUM").is_none(),
            "Chromium required but missing"
        );
        eprintln!("skipped: Chromium unavailable (install Debian's chromium package)");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let page = format!("file://{}", dir.path().join("matrix.html").display());
    let dom = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &page])
        .output()
        .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout);
    // The script ran (it stamps the cell count on <body>) and the grid has every cell.
    let cells = rows.len() * 2;
    assert!(
        html.contains(&format!("data-cells=\"{cells}\"")),
        "{}",
        &html[..html.len().min(2000)]
    );
    assert_eq!(html.matches("<td class=\"cell").count(), cells);
    assert!(html.contains("data-outcome=\"fail\""));
    assert!(html.contains("RESET-DEV-01"));
}
