//! `atelier schemas`: write `schemas/` from the event types and
//! `openapi.json` from the API's route table, or check that the files match
//! (and that every event schema change is additive).
//!
//! Additive is judged twice: against the files in `schemas/` (the working
//! copy) and against `schemas/released.json`, every event type's schema as
//! it was first written. `schemas write` adds new types to that baseline
//! and never changes an entry, `--force` included: a breaking change that
//! was forced into `schemas/` still fails the check until someone edits the
//! baseline by hand, in plain sight of review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::Value;

use crate::api;
use crate::event::schema;

#[derive(Debug, Subcommand)]
pub(super) enum SchemasCmd {
    /// Regenerate `schemas/*.json` (refuses breaking changes unless --force)
    /// and the OpenAPI document.
    Write {
        /// Directory.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// The OpenAPI document of the HTTP API.
        #[arg(long, default_value = "openapi.json")]
        openapi: PathBuf,
        /// Write even when a change is not additive.
        #[arg(long)]
        force: bool,
    },
    /// Fail when the files differ from the types or the route table.
    Check {
        /// Directory.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// The OpenAPI document of the HTTP API.
        #[arg(long, default_value = "openapi.json")]
        openapi: PathBuf,
    },
}

/// The OpenAPI document as it is stored (pretty JSON, trailing newline).
pub fn render_openapi() -> String {
    schema::render(&api::document())
}

/// Why the OpenAPI file at `path` differs from the API's route table, if it
/// does.
pub fn openapi_drift(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text == render_openapi() => None,
        Ok(_) => Some(format!(
            "{}: differs from the API's route table",
            path.display()
        )),
        Err(e) => Some(format!("{}: unreadable: {e}", path.display())),
    }
}

/// The baseline's file name in the schemas directory.
pub const RELEASED: &str = "released.json";

/// The baseline: every event type's schema as first written.
fn released(dir: &Path) -> Result<BTreeMap<String, Value>, String> {
    let path = dir.join(RELEASED);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Compares the generated schemas with the files in `dir` and with the
/// baseline: (drifted, breaking). A type missing from the baseline is
/// drift (`schemas write` adds it).
pub fn diff(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut drifted = Vec::new();
    let mut breaking = Vec::new();
    let baseline = released(dir).unwrap_or_else(|e| {
        breaking.push(format!("{RELEASED}: unreadable: {e}"));
        BTreeMap::new()
    });
    for (name, generated) in schema::generate() {
        match baseline.get(&name) {
            Some(first) => breaking.extend(
                schema::breaking_changes(first, &generated)
                    .into_iter()
                    .map(|b| format!("{name}: {b} (against {RELEASED})")),
            ),
            None => drifted.push(format!("{name}: not in {RELEASED}")),
        }
        let path = dir.join(format!("{name}.json"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            drifted.push(format!("{name}: missing file {}", path.display()));
            continue;
        };
        if text != schema::render(&generated) {
            drifted.push(format!("{name}: differs from the Rust type"));
            match serde_json::from_str(&text) {
                Ok(old) => breaking.extend(
                    schema::breaking_changes(&old, &generated)
                        .into_iter()
                        .map(|b| format!("{name}: {b}")),
                ),
                Err(e) => breaking.push(format!("{name}: unreadable: {e}")),
            }
        }
    }
    (drifted, breaking)
}

pub(super) fn run(cmd: SchemasCmd) -> anyhow::Result<()> {
    match cmd {
        SchemasCmd::Write {
            dir,
            openapi,
            force,
        } => {
            let (_, breaking) = diff(&dir);
            if !breaking.is_empty() && !force {
                anyhow::bail!(
                    "not additive (add a new event type or topic version instead):\n  {}",
                    breaking.join("\n  ")
                );
            }
            std::fs::create_dir_all(&dir)?;
            let mut baseline = released(&dir).map_err(anyhow::Error::msg)?;
            for (name, s) in schema::generate() {
                std::fs::write(dir.join(format!("{name}.json")), schema::render(&s))?;
                // New types join the baseline; existing entries never change.
                baseline.entry(name).or_insert(s);
            }
            std::fs::write(
                dir.join(RELEASED),
                schema::render(&serde_json::to_value(&baseline)?),
            )?;
            println!("wrote {}", dir.display());
            if force && !breaking.is_empty() {
                eprintln!(
                    "forced, but {RELEASED} still refuses it: `schemas check` and the tests fail \
                     until the baseline is edited by hand"
                );
            }
            std::fs::write(&openapi, render_openapi())?;
            println!("wrote {}", openapi.display());
            Ok(())
        }
        SchemasCmd::Check { dir, openapi } => {
            let (mut drifted, breaking) = diff(&dir);
            drifted.extend(openapi_drift(&openapi));
            if drifted.is_empty() {
                println!("schemas match the types; the OpenAPI document matches the routes");
                return Ok(());
            }
            anyhow::bail!(
                "schemas drifted:\n  {}\nbreaking:\n  {}",
                drifted.join("\n  "),
                if breaking.is_empty() {
                    "none (run `atelier schemas write`)".to_owned()
                } else {
                    breaking.join("\n  ")
                }
            )
        }
    }
}
