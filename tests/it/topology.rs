//! compose and the local cluster harness describe the same deployment: the
//! same role commands and the same environment (the shared file, plus the
//! addresses and secrets each sets for its own services).

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `ATELIER_...` variable names in `text`, comments left out.
fn names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"ATELIER_[A-Z0-9_]+__[A-Z0-9_]+").unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            re.find_iter(l)
                .map(|m| m.as_str().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn compose_and_the_cluster_harness_agree() {
    let compose = read("compose/docker-compose.yml");
    let harness = read("scripts/cluster");
    // Both read the shared file.
    assert!(compose.contains("env_file: [atelier.env]"));
    assert!(harness.contains("compose/atelier.env"));
    // Every variable compose gives the atelier roles (its shared block and
    // the inference worker's), the harness sets too, or the shared file does.
    let start = compose.find("x-atelier-env:").unwrap();
    let end = compose.find("x-atelier:").unwrap();
    let mut given = names(&compose[start..end]);
    given.extend(names(&compose[compose.find("  infer:").unwrap()..]));
    let shared = names(&read("compose/atelier.env"));
    let set: BTreeSet<String> = names(&harness).union(&shared).cloned().collect();
    let missing: Vec<&String> = given.difference(&set).collect();
    assert!(
        missing.is_empty(),
        "compose sets, the harness does not: {missing:?}"
    );
    // No per-replica identity pinned in compose (every role scales).
    assert!(!given.contains("ATELIER_INFER__INSTANCE"), "{given:?}");
    // The same role commands.
    for (compose_cmd, harness_cmd) in [
        (r#"command: ["serve", "--listen""#, "args=(serve --listen"),
        (r#"command: ["project"]"#, "args=(project)"),
        (r#"command: ["infer"]"#, "args=(infer)"),
        (r#"command: ["topics", "apply"]"#, r#""$BIN" topics apply"#),
    ] {
        assert!(compose.contains(compose_cmd), "compose: {compose_cmd}");
        assert!(harness.contains(harness_cmd), "harness: {harness_cmd}");
    }
    // compose ships no usable secret: it refuses to start without them.
    for secret in [
        "ATELIER_AUTH__JWT_SECRET",
        "ATELIER_AUTH__VOTER_KEY",
        "ATELIER_AUTH__LINK_KEY",
    ] {
        let line = compose
            .lines()
            .find(|l| l.contains(secret))
            .unwrap_or_else(|| panic!("{secret} in compose"));
        assert!(line.contains(":?"), "{line}");
    }
}

/// With compose's files as shipped, no request can act as an administrator:
/// neither file names one (`auth.admins`, `auth.admin_claim`), and the
/// configuration they make (the defaults plus their variables) makes none
/// of a token for `admin`, or of one carrying a `roles: ["admin"]` claim.
#[test]
fn compose_as_shipped_has_no_administrator() {
    let compose = read("compose/docker-compose.yml");
    let shared = read("compose/atelier.env");
    for text in [&compose, &shared] {
        let admin_vars: Vec<String> = names(text)
            .into_iter()
            .filter(|n| n.starts_with("ATELIER_AUTH__ADMIN"))
            .collect();
        assert!(admin_vars.is_empty(), "{admin_vars:?}");
    }
    // What compose's processes run with: the defaults, a secret from the
    // operator, and what the files set (none of it about administrators).
    let cfg = atelier::config::AuthConfig {
        jwt_secret: atelier::config::Secret("operator-secret".into()),
        ..Default::default()
    };
    let auth = atelier::api::Auth::new(&cfg).unwrap();
    let admin = atelier::api::mint("operator-secret", "admin", "Admin", 60);
    assert!(
        !auth.caller(&admin).unwrap().admin,
        "the subject `admin` is no administrator"
    );
    let claims = serde_json::json!({
        "sub": "someone", "exp": 4_000_000_000u64, "roles": ["admin"]
    });
    let with_role = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"operator-secret"),
    )
    .unwrap();
    assert!(
        !auth.caller(&with_role).unwrap().admin,
        "a roles claim makes no administrator unless configured"
    );
}
