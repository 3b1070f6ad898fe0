//! The spec catalog (`specs/requirements.json`): normative statements with stable ids.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One normative statement of the VIRTIO specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Stable id, e.g. `STATUS-DEV-01`.
    pub id: String,
    /// Section in VIRTIO 1.3 numbering (equal to 1.2 for chapters 2, 3, 4.2, 6), e.g. `2.1.2`.
    pub section: String,
    /// Heading of the normative block, e.g. `Device Requirements: Device Status Field`.
    pub label: String,
    /// `MUST`, `MUST NOT`, `SHOULD`, `SHOULD NOT`, `MAY` or `desc`.
    pub level: String,
    /// Topic (`status`, `features`, `split-ring`, ...).
    pub area: String,
    /// Paraphrase of the statement.
    pub text: String,
    /// How observable it is from the driver side (letters R, M, I, H, P, N).
    pub checkable: String,
    /// How a driver-side harness checks it.
    pub how: String,
    /// True for rules the harness, acting as the driver, must obey.
    pub driver_obligation: bool,
}

impl Requirement {
    /// Whether a driver can observe the statement at all: its `checkable` letters do not
    /// include `N` (not observable from the driver side).
    pub fn is_checkable(&self) -> bool {
        !self.checkable.split(',').any(|l| l.trim() == "N")
    }
}

/// How a failed check of a statement is graded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// MUST / MUST NOT / descriptive behaviour: a failure is `fail`.
    Must,
    /// SHOULD / SHOULD NOT: a failure is `non_strict`.
    Should,
    /// MAY: a difference is `informational`.
    May,
}

impl Level {
    /// Grade of a catalog level string.
    pub fn of(level: &str) -> Level {
        match level {
            "SHOULD" | "SHOULD NOT" => Level::Should,
            "MAY" => Level::May,
            _ => Level::Must,
        }
    }
}

/// The loaded catalog, by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Spec edition the catalog follows.
    pub spec: String,
    /// Requirements by id.
    pub requirements: BTreeMap<String, Requirement>,
}

#[derive(Deserialize)]
struct CatalogFile {
    schema: String,
    spec: String,
    requirements: Vec<Requirement>,
}

/// The `level` values a catalog entry may carry.
pub const LEVELS: [&str; 6] = ["MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "MAY", "desc"];

/// Whether `s` is a spec section number: dot-separated decimal numbers (`2`, `2.7.5`).
fn is_section(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// 1-based line of the last `"id": "<id>"` in `text` (1 when not found).
fn line_of_id(text: &str, id: &str) -> usize {
    let needle = serde_json::to_string(id).unwrap_or_default();
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.find("\"id\"").is_some_and(|i| {
                l[i + 4..]
                    .trim_start_matches([' ', ':'])
                    .starts_with(&needle)
            })
        })
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(1)
}

/// Schema tag of the catalog file this version reads.
pub const CATALOG_SCHEMA: &str = "virtio-conform/requirements/1";

impl Catalog {
    /// Parses catalog JSON. `origin` names the file in errors (with line and column).
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Catalog> {
        let file: CatalogFile = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}:{}:{}: {e}", e.line(), e.column()))?;
        if file.schema != CATALOG_SCHEMA {
            anyhow::bail!(
                "{origin}: schema `{}` is not `{CATALOG_SCHEMA}`",
                file.schema
            );
        }
        let mut requirements = BTreeMap::new();
        for r in file.requirements {
            let line = line_of_id(text, &r.id);
            let at = |m: String| anyhow::anyhow!("{origin}:{line}: requirement `{}`: {m}", r.id);
            if r.id.trim().is_empty() {
                return Err(at("field `id` is empty".into()));
            }
            if !LEVELS.contains(&r.level.as_str()) {
                return Err(at(format!(
                    "field `level`: `{}` is not one of {}",
                    r.level,
                    LEVELS.join(", ")
                )));
            }
            if !is_section(&r.section) {
                return Err(at(format!(
                    "field `section`: `{}` is not a section number like `2.7.5`",
                    r.section
                )));
            }
            if let Some(old) = requirements.insert(r.id.clone(), r) {
                anyhow::bail!("{origin}:{line}: requirement id `{}` appears twice", old.id);
            }
        }
        Ok(Catalog {
            spec: file.spec,
            requirements,
        })
    }

    /// Loads `path`.
    pub fn load(path: &Path) -> anyhow::Result<Catalog> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The grade of a check that proves `ids` (the first known id decides).
    pub fn level(&self, ids: &[String]) -> Level {
        ids.iter()
            .find_map(|id| self.requirements.get(id))
            .map_or(Level::Must, |r| Level::of(&r.level))
    }

    /// Device-side statements (the ones a device can break).
    pub fn device_side(&self) -> impl Iterator<Item = &Requirement> {
        self.requirements.values().filter(|r| !r.driver_obligation)
    }
}
