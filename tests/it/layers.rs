//! The house's floors hold: every `crate::` import in `src/` runs from a
//! module to one on a lower floor, so the pure core (`fold`, `event`, the
//! bottom floors) imports nothing with I/O, the stores and the log import
//! nothing above them, and no import runs in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The floors, top to bottom (the README's Layout and `src/lib.rs` say the
/// same).
const FLOORS: &[&[&str]] = &[
    &["cli"],
    &["app"],
    &["api"],
    &["infer"],
    &["ops"],
    &["project"],
    &["dlq"],
    &["view", "bus", "blob", "image"],
    &["config", "telemetry", "edge"],
    &["fold"],
    &["event"],
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

/// The top-level module of each file under `src/` (`None`: `lib.rs`,
/// `main.rs`), with the `crate::X` modules its code outside `#[cfg(test)]`
/// modules names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    out.entry(top.clone())
                        .or_default()
                        .insert((name, rel.display().to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn every_import_runs_down_the_floors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = imports(&src);
    assert!(
        all.get("api")
            .is_some_and(|i| i.iter().any(|(m, _)| m == "view")),
        "the scan finds imports (api reads views)"
    );
    let mut wrong = Vec::new();
    for (module, names) in &all {
        let from = floor(module).unwrap_or_else(|| {
            panic!("src/{module} is on no floor: add it to FLOORS (and the README's Layout)")
        });
        for (name, file) in names {
            let Some(to) = floor(name) else {
                continue; // not a module of the crate (a macro path, say)
            };
            if to <= from {
                wrong.push(format!(
                    "src/{file}: {module} imports {name}, which is not below it"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_floor_check_can_fail() {
    // The same rule, on a made-up import upwards.
    let (from, to) = (floor("view").unwrap(), floor("project").unwrap());
    assert!(to < from, "project is above view");
    for io in ["bus", "view", "blob", "telemetry", "edge", "config"] {
        assert!(
            floor(io).unwrap() < floor("fold").unwrap(),
            "{io} is above fold: the pure core may not import it"
        );
    }
    assert!(floor("event").unwrap() > floor("fold").unwrap());
}
