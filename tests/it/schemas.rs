//! `schemas/` must match the event types; a change must be additive.

#[test]
fn schema_files_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let (drifted, breaking) = atelier::cli::schemas::diff(&dir);
    assert!(
        breaking.is_empty(),
        "breaking schema changes (add a new event type or topic version instead): {breaking:#?}"
    );
    assert!(
        drifted.is_empty(),
        "schemas/ drifted from the types (additive: run `atelier schemas write`): {drifted:#?}"
    );
}

/// `schemas write --force` writes a breaking change into `schemas/` but
/// never into the baseline, so the check still fails: here the baseline
/// promised `VoteCast` a required field that the type no longer has.
#[test]
fn a_forced_breaking_change_still_fails_against_the_baseline() {
    use atelier::cli::schemas::{RELEASED, diff};
    use serde_json::{Value, json};

    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let dir = tempfile::tempdir().unwrap();
    let mut released: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(real.join(RELEASED)).unwrap()).unwrap();
    let vote = released.get_mut("VoteCast").expect("VoteCast is released");
    vote["properties"]["weight"] = json!({"type": "integer"});
    vote["required"]
        .as_array_mut()
        .expect("VoteCast has required fields")
        .push(json!("weight"));
    let baseline = atelier::event::schema::render(&Value::Object(released));
    std::fs::write(dir.path().join(RELEASED), &baseline).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(["schemas", "write", "--force", "--dir"])
        .arg(dir.path())
        .arg("--openapi")
        .arg(dir.path().join("openapi.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still refuses"),
        "the forced write says the baseline refuses it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(RELEASED)).unwrap(),
        baseline,
        "--force rewrote the baseline"
    );
    let (drifted, breaking) = diff(dir.path());
    assert!(drifted.is_empty(), "{drifted:#?}");
    assert!(
        breaking
            .iter()
            .any(|b| b.starts_with("VoteCast") && b.contains(RELEASED)),
        "{breaking:#?}"
    );
}
