//! `atelier schemas`: write `schemas/` from the event types and
//! `openapi.json` from the API's route table, or check that the files match
//! (and that every event schema change is additive).

use std::path::{Path, PathBuf};

use clap::Subcommand;

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

/// Compares the generated schemas with the files in `dir`: (drifted, breaking).
pub fn diff(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut drifted = Vec::new();
    let mut breaking = Vec::new();
    for (name, generated) in schema::generate() {
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
            for (name, s) in schema::generate() {
                std::fs::write(dir.join(format!("{name}.json")), schema::render(&s))?;
            }
            println!("wrote {}", dir.display());
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
