//! The README's first command, as a user runs it: `atelier up` on the
//! embedded defaults, then `atelier emit` creates a poll and votes, and the
//! printed poll shows the tallies; SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

fn atelier(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(args)
        .env("ATELIER_DATA_DIR", data)
        .output()
        .expect("atelier runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn up_then_emit_shows_tallies_and_sigterm_stops() {
    let data = crate::helpers::scratch().join(format!("atelier-cli-{}", crate::helpers::unique()));
    let log_path =
        crate::helpers::scratch().join(format!("atelier-cli-{}.log", crate::helpers::unique()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(["up", "--listen", "127.0.0.1:0"])
        .env("ATELIER_DATA_DIR", &data)
        .env("ATELIER_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("atelier up starts");
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.trim().strip_prefix("API") {
            url = Some(u.trim().to_owned());
            break;
        }
    }
    let url = url.expect("atelier up prints the API URL");
    // Keep draining its stdout, as a terminal would.
    std::thread::spawn(move || for _ in lines {});

    let (ok, out, err) = atelier(
        &data,
        &[
            "emit",
            "poll",
            "--api",
            &url,
            "--head",
            "Lunch?",
            "--question",
            "Pizza",
            "--question",
            "Sushi",
            "--as",
            "ann",
        ],
    );
    assert!(ok, "{err}");
    let poll: Value = serde_json::from_str(&out).unwrap();
    let id = poll["poll_id"].as_str().unwrap().to_owned();
    let vote = |q: &str, who: &str| {
        atelier(
            &data,
            &[
                "emit",
                "vote",
                "--api",
                &url,
                "--poll",
                &id,
                "--question",
                q,
                "--as",
                who,
            ],
        )
    };
    for (who, q) in [("bob", "1"), ("cid", "1"), ("dan", "0")] {
        let (ok, out, err) = vote(q, who);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["poll_id"], id.as_str());
    }
    let (ok, out, _) = vote("0", "eve");
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    let votes: Vec<u64> = v["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["votes"].as_u64().unwrap())
        .collect();
    assert_eq!(votes, vec![2, 2]);
    // A bad vote is refused with the API's reason, not a crash.
    let (ok, _, err) = vote("9", "eve");
    assert!(!ok && err.contains("unknown_question"), "{err}");

    // The feed, the same way: a game, two joins, a like.
    let (ok, out, err) = atelier(
        &data,
        &[
            "emit",
            "item",
            "--api",
            &url,
            "--kind",
            "game",
            "--name",
            "Chess",
            "--location",
            "Park",
            "--as",
            "ann",
        ],
    );
    assert!(ok, "{err}");
    let item: Value = serde_json::from_str(&out).unwrap();
    let item = item["item_id"].as_str().unwrap().to_owned();
    for (cmd, who) in [("join", "bob"), ("join", "cid"), ("like", "bob")] {
        let (ok, out, err) = atelier(
            &data,
            &["emit", cmd, "--api", &url, "--item", &item, "--as", who],
        );
        assert!(ok, "{cmd}: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["item_id"], item.as_str());
    }
    let (ok, out, _) = atelier(
        &data,
        &[
            "emit", "leave", "--api", &url, "--item", &item, "--as", "cid",
        ],
    );
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["joined"].as_u64(), v["likes"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let (ok, _, err) = atelier(
        &data,
        &[
            "emit", "item", "--api", &url, "--kind", "post", "--as", "ann",
        ],
    );
    assert!(!ok && err.contains("--title"), "{err}");

    let status = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = up.wait().unwrap();
    assert!(
        exit.success(),
        "atelier up exits cleanly on SIGTERM: {exit:?}"
    );
    // Quiet when healthy: the whole run, start to stop, logged no ERROR.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("\"level\":\"INFO\""),
        "the log was captured: {log:.500}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        errors.is_empty(),
        "a healthy run logged ERROR lines: {errors:#?}"
    );
}

/// On a shared log, a process refuses to start without the secrets its
/// role shares with other processes, and says which (before it connects to
/// anything: the broker here does not exist). Secrets from the environment
/// of the caller must not leak in.
#[test]
fn shared_roles_refuse_to_start_without_their_secrets() {
    let data = crate::helpers::scratch().join(format!("atelier-cli-{}", crate::helpers::unique()));
    let run = |role: &str, envs: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
            .arg(role)
            .env("ATELIER_DATA_DIR", &data)
            .env("ATELIER_KAFKA__BROKERS", "127.0.0.1:1")
            .env_remove("ATELIER_AUTH__JWT_SECRET")
            .env_remove("ATELIER_AUTH__VOTER_KEY")
            .env_remove("ATELIER_CONFIG")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("atelier runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run("project", &[]);
    assert!(!ok && err.contains("auth.voter_key"), "{err}");
    assert!(
        !err.contains("auth.jwt_secret"),
        "a projector needs no JWT secret: {err}"
    );
    let (ok, err) = run("serve", &[("ATELIER_AUTH__VOTER_KEY", "v")]);
    assert!(!ok && err.contains("auth.jwt_secret"), "{err}");
    assert!(
        !err.contains("auth.voter_key"),
        "an API process needs no voter key: {err}"
    );
}

/// `atelier bench reads` on the embedded defaults runs in a scratch data
/// directory: the configured one is `atelier up`'s, whose log would
/// otherwise journal the run's topics (and refuse to start on them
/// afterwards) and whose view snapshot the run would overwrite.
#[test]
fn bench_reads_leaves_the_configured_data_directory_alone() {
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = atelier(
        data.path(),
        &[
            "bench",
            "reads",
            "--brokers",
            "",
            "--views",
            "embedded",
            "--items",
            "60",
            "--polls",
            "2",
            "--clients",
            "2",
            "--warmup-secs",
            "0",
            "--duration-secs",
            "1",
            "--rate",
            "100",
        ],
    );
    assert!(ok, "bench reads failed:\n{out}\n{err}");
    assert!(out.contains("produce -> visible"), "{out}");
    assert!(out.contains("of which produce -> applied"), "{out}");
    let left: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the configured data directory holds {left:?}"
    );
}
