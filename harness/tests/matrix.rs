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

fn headless(browser: &str, profile: &std::path::Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A matrix of the reference and a mutant, with one expected failure (xfail) on the mutant.
fn matrix_with_xfail() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ex = dir.path().join("ex.json");
    std::fs::write(
        &ex,
        r#"{"schema": "virtio-conform/expectations/1", "target": "mutant", "entries": [{"case": "reset.reinit-works", "expect": "fail", "reason": "known"}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-conform"))
        .args([
            "matrix",
            "--target",
            "reference",
            "--target",
            "mutant:reset-sets-failed",
            "--expectations",
        ])
        .arg(format!("mutant:reset-sets-failed={}", ex.display()))
        .arg("-o")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn matrix_page_has_legend_totals_metadata_and_a_detail_panel_at_the_cell() {
    let dir = matrix_with_xfail();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("matrix.json")).unwrap()).unwrap();
    assert!(m["tool"].as_str().unwrap().starts_with("virtio-conform "));
    assert!(m["generated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(m["columns"][1]["totals"]["xfail"], 1);
    assert!(m["columns"][0]["implementation"]
        .as_str()
        .unwrap()
        .contains("virtio-reference-device"));
    assert_eq!(m["rows"]["reset.reinit-works"][1]["outcome"], "xfail");
    assert_eq!(m["rows"]["reset.reinit-works"][1]["severity"], "low");

    let page = std::fs::read_to_string(dir.path().join("matrix.html")).unwrap();
    // Legend: every outcome with its meaning; xfail looks different from pass.
    assert_eq!(page.matches("data-legend=").count(), 10);
    assert!(page.contains(".pass{background:#8c8}"));
    assert!(page.contains(".xfail{background:repeating-linear-gradient"));
    assert!(page.contains(">xfail</td>") && page.contains(">pass</td>"));
    // Totals per column, metadata with tool version, date and each target's version.
    assert!(page.contains("<tfoot>") && page.contains("1 xfail"));
    assert!(page.contains(m["generated"].as_str().unwrap()));
    assert!(page.contains("virtio-reference-device"));

    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("VIRTIO_CONFORM_REQUIRE_CHROMIUM").is_none(),
            "Chromium required but missing"
        );
        eprintln!("skipped: Chromium unavailable (install Debian's chromium package)");
        return;
    };
    // A click (through the page's cell link) opens the panel next to that cell, naming the
    // case and the target.
    let panel = |case: &str, col: usize| -> (String, f64) {
        let profile = tempfile::tempdir().unwrap();
        let url = format!(
            "file://{}#cell={case}/{col}",
            dir.path().join("matrix.html").display()
        );
        let dom = headless(browser, profile.path())
            .args(["--dump-dom", &url])
            .output()
            .unwrap();
        let html = String::from_utf8_lossy(&dom.stdout).into_owned();
        let start = html.find("<div id=\"detail\"").expect("detail panel");
        let div = &html[start..start + html[start..].find("</div>").unwrap()];
        assert!(div.contains("display: block"), "{div}");
        let top: f64 = div
            .split("top: ")
            .nth(1)
            .and_then(|t| t.split("px").next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{div}"));
        (div.to_string(), top)
    };
    let (first, top1) = panel("features.page-0-and-1", 0);
    assert!(
        first.contains("features.page-0-and-1 on reference entropy v2: pass"),
        "{first}"
    );
    let (second, top2) = panel("reset.reinit-works", 1);
    assert!(
        second.contains("reset.reinit-works on mutant:reset-sets-failed entropy v2: xfail (low)"),
        "{second}"
    );
    assert!(second.contains("reason: known"), "{second}");
    assert!(top2 > top1 + 100.0, "{top1} {top2}");
}

#[test]
fn matrix_legend_screenshot_shows_distinct_outcome_colours() {
    let dir = matrix_with_xfail();
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("VIRTIO_CONFORM_REQUIRE_CHROMIUM").is_none(),
            "Chromium required but missing"
        );
        eprintln!("skipped: Chromium unavailable (install Debian's chromium package)");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shot = dir.path().join("legend.png");
    let out = headless(browser, profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=900,700")
        .arg(format!(
            "file://{}",
            dir.path().join("matrix.html").display()
        ))
        .output()
        .unwrap();
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected colour type {other:?}"),
    };
    let count = |rgb: [u8; 3]| {
        buf[..info.buffer_size()]
            .chunks(px)
            .filter(|p| p[..3] == rgb)
            .count()
    };
    // Each legend swatch is a solid block of its outcome's colour (xfail: hatched).
    for (name, rgb) in [
        ("pass", [0x88, 0xcc, 0x88]),
        ("fail", [0xee, 0x66, 0x66]),
        ("non_strict", [0xff, 0xcc, 0x66]),
        ("informational", [0x99, 0xcc, 0xff]),
        ("xfail", [0xc9, 0xb3, 0xe6]),
        ("xpass", [0xff, 0x99, 0xcc]),
        ("timeout", [0xcc, 0x66, 0xff]),
    ] {
        assert!(count(rgb) > 50, "no {name} swatch in the legend screenshot");
    }
}
