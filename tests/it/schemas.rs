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
