//! `openapi.json` is the document the API serves; every operation in it is
//! routed, nothing else is; and real answers match the documented schemas.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{Value, json};

use crate::helpers::{Backends, TestApp};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Requests that no route may answer: each must meet the fallback.
const NOT_ROUTED: &[(&str, &str)] = &[
    ("GET", "/v1/nope"),
    ("GET", "/v1"),
    ("GET", "/v2/polls"),
    ("POST", "/v1/poll"),
    ("GET", "/v1/users/ann"),
    (
        "GET",
        "/v1/polls/0190a5c4-2b7e-7cc0-8f00-000000000000/questions",
    ),
    (
        "POST",
        "/v1/polls/0190a5c4-2b7e-7cc0-8f00-000000000000/open",
    ),
    (
        "DELETE",
        "/v1/feed/0190a5c4-2b7e-7cc0-8f00-000000000000/likes/ann",
    ),
    ("GET", "/v1/sessions/s1"),
    ("GET", "/openapi.yaml"),
];

fn document() -> Value {
    atelier::api::document()
}

async fn spawn() -> TestApp {
    TestApp::spawn(Backends::Embedded)
        .await
        .expect("embedded backends always start")
}

#[test]
fn committed_file_matches_the_routes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = atelier::cli::schemas::render_openapi();
    let first_difference = committed
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .map_or_else(|| "its length".to_owned(), |i| format!("line {}", i + 1));
    assert!(
        committed == generated,
        "openapi.json drifted from the API's route table (first at {first_difference}): \
         run `cargo run -- schemas write`"
    );
    let parsed: Value = serde_json::from_str(&committed).expect("openapi.json is JSON");
    assert_eq!(parsed, document());
    assert_eq!(parsed["openapi"], "3.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_at_openapi_json() {
    let t = spawn().await;
    let (s, v) = t.get("/openapi.json").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, document());
    t.stop().await;
}

/// Every (method, path template) of the document: `[("get", "/v1/feed"), ...]`.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unexpected key {method}"
            );
            out.push((method.clone(), path.clone()));
        }
    }
    assert!(!out.is_empty());
    out
}

/// The template with its path parameters replaced by valid values, chosen
/// from each parameter's schema: UUID v7 for ids, `0` for integers (the
/// question), `s1` for text ids (session keys, user ids).
fn concrete(doc: &Value, method: &str, path: &str) -> String {
    let params = doc["paths"][path][method]["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    path.split('/')
        .map(|seg| {
            let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                return seg.to_owned();
            };
            let p = params
                .iter()
                .find(|p| p["in"] == "path" && p["name"] == name)
                .unwrap_or_else(|| {
                    panic!("{method} {path}: {{{name}}} is not a declared parameter")
                });
            match (p["schema"]["type"].as_str(), p["schema"]["format"].as_str()) {
                (Some("string"), Some("uuid")) => uuid::Uuid::now_v7().to_string(),
                (Some("integer"), _) => "0".to_owned(),
                _ => "s1".to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// What a request answered: status, content type and JSON body (`Null`
/// when not JSON, or not read because it is a stream).
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

/// Sends `method path` with a bearer token (and `{}` for a POST); an event
/// stream is not read past its headers.
async fn send(t: &TestApp, method: &str, path: &str) -> Answer {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut req = t
        .http
        .request(method.clone(), format!("{}{path}", t.url))
        .bearer_auth(t.token("ann"));
    if method == Method::POST {
        req = req.json(&json!({}));
    }
    let res = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 10 s"))
        .expect("request sent");
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = if content_type.starts_with("text/event-stream") {
        Value::Null
    } else {
        let text = tokio::time::timeout(Duration::from_secs(10), res.text())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no body within 10 s"))
            .unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    Answer {
        status,
        content_type,
        body,
    }
}

fn is_no_route(a: &Answer) -> bool {
    a.status == 404 && a.body["error"] == "no_route"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let t = spawn().await;
    let doc = document();
    let checker = Checker { doc: &doc };
    let ops = operations(&doc);
    for (method, template) in &ops {
        let path = concrete(&doc, method, template);
        let a = send(&t, method, &path).await;
        let what = format!("{method} {path} ({template}) answered {}", a.status);
        assert!(!is_no_route(&a), "{what}: the router has no such route");
        assert_ne!(a.status, 405, "{what}: the route has no such method");
        // Whatever it answered is documented, with the documented body.
        let response = checker
            .response(method, template, a.status)
            .unwrap_or_else(|| panic!("{what}, which the document does not list"));
        if let Some(schema) = response.pointer("/content/application~1json/schema") {
            assert!(
                a.content_type.starts_with("application/json"),
                "{what} as {:?}",
                a.content_type
            );
            checker.assert_matches(schema, &a.body, &what);
        }
    }
    // The other methods of every documented path are refused as such: a
    // route the router has on a documented path but the document lacks
    // fails here.
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for template in paths {
        for method in METHODS {
            if ops.iter().any(|(m, p)| m == method && p == template) {
                continue;
            }
            // Parameters are declared per operation; take any operation's.
            let (any, _) = ops.iter().find(|(_, p)| p == template).unwrap();
            let path = concrete(&doc, any, template);
            let a = send(&t, method, &path).await;
            assert_eq!(
                a.status, 405,
                "{method} {path} ({template}) is not documented, yet answered {}",
                a.status
            );
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_meet_the_fallback() {
    let t = spawn().await;
    let doc = document();
    let documented = operations(&doc);
    for (method, path) in NOT_ROUTED {
        assert!(
            !documented
                .iter()
                .any(|(m, p)| m.eq_ignore_ascii_case(method) && p == path),
            "{method} {path} is documented"
        );
        let a = send(&t, method, path).await;
        assert!(
            is_no_route(&a),
            "{method} {path} should not be routed, yet answered {} {}",
            a.status,
            a.body
        );
        Checker { doc: &doc }.assert_matches(
            &json!({"$ref": "#/components/schemas/Error"}),
            &a.body,
            &format!("{method} {path}"),
        );
    }
    t.stop().await;
}

/// Real answers of every kind, each checked against the schema the document
/// gives for that operation and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_documented_schemas() {
    let t = spawn().await;
    let doc = document();
    let c = Checker { doc: &doc };
    let check = |method: &str, template: &str, (status, body): &(u16, Value), want: u16| {
        let what = format!("{method} {template} answered {status} {body}");
        assert_eq!(*status, want, "{what}");
        let schema = c
            .response(method, template, *status)
            .and_then(|r| r.pointer("/content/application~1json/schema"))
            .unwrap_or_else(|| panic!("{what}: no JSON answer documented"));
        c.assert_matches(schema, body, &what);
    };

    // Polls.
    let created = t
        .post(
            "/v1/polls",
            "ann",
            json!({"head": "Lunch?", "message": "Today", "questions": ["Pizza", "Sushi"]}),
        )
        .await;
    check("post", "/v1/polls", &created, 202);
    let id = created.1["poll_id"].as_str().unwrap().to_owned();
    let token = created.1["token"].as_str().unwrap().to_owned();
    let voted = t
        .post(
            &format!("/v1/polls/{id}/votes?after={token}"),
            "bob",
            json!({"question_ids": [1]}),
        )
        .await;
    check("post", "/v1/polls/{id}/votes", &voted, 202);
    let after = voted.1["token"].as_str().unwrap().to_owned();
    let poll = t.get(&format!("/v1/polls/{id}?after={after}")).await;
    check("get", "/v1/polls/{id}", &poll, 200);
    assert_eq!(poll.1["recent_voters"].as_array().map(Vec::len), Some(1));
    check(
        "get",
        "/v1/polls/{id}/questions/{q}/voters",
        &t.get(&format!("/v1/polls/{id}/questions/1/voters?after={after}"))
            .await,
        200,
    );
    check(
        "get",
        "/v1/users/{id}/polls",
        &t.get(&format!("/v1/users/ann/polls?after={after}")).await,
        200,
    );
    check(
        "delete",
        "/v1/polls/{id}/votes",
        &t.call(
            Method::DELETE,
            &format!("/v1/polls/{id}/votes"),
            Some("bob"),
            None,
        )
        .await,
        202,
    );
    let closed = t
        .call(
            Method::POST,
            &format!("/v1/polls/{id}/close"),
            Some("ann"),
            None,
        )
        .await;
    check("post", "/v1/polls/{id}/close", &closed, 202);
    let after = closed.1["token"].as_str().unwrap().to_owned();
    let poll = t.get(&format!("/v1/polls/{id}?after={after}")).await;
    check("get", "/v1/polls/{id}", &poll, 200);
    assert!(poll.1["closed_at"].is_string(), "{}", poll.1);

    // 304 for a matching If-None-Match.
    let res = t
        .http
        .get(format!("{}/v1/polls/{id}", t.url))
        .send()
        .await
        .unwrap();
    let etag = res.headers().get(ETAG).expect("an ETag").clone();
    let res = t
        .http
        .get(format!("{}/v1/polls/{id}", t.url))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 304);
    assert!(c.response("get", "/v1/polls/{id}", 304).is_some());

    // Feed: a game joined, a post liked.
    let game = t
        .post(
            "/v1/feed",
            "ann",
            json!({"kind": "game", "name": "Go", "location": "Hall"}),
        )
        .await;
    check("post", "/v1/feed", &game, 202);
    let game_id = game.1["item_id"].as_str().unwrap().to_owned();
    let token = game.1["token"].as_str().unwrap();
    let joined = t
        .call(
            Method::POST,
            &format!("/v1/feed/{game_id}/members?after={token}"),
            Some("bob"),
            None,
        )
        .await;
    check("post", "/v1/feed/{id}/members", &joined, 202);
    let post = t
        .post("/v1/feed", "bob", json!({"kind": "post", "title": "Hi"}))
        .await;
    check("post", "/v1/feed", &post, 202);
    let post_id = post.1["item_id"].as_str().unwrap().to_owned();
    let token = post.1["token"].as_str().unwrap();
    let liked = t
        .call(
            Method::POST,
            &format!("/v1/feed/{post_id}/likes?after={token}"),
            Some("ann"),
            None,
        )
        .await;
    check("post", "/v1/feed/{id}/likes", &liked, 202);
    let after_join = joined.1["token"].as_str().unwrap();
    let item = t
        .get(&format!("/v1/feed/{game_id}?after={after_join}"))
        .await;
    check("get", "/v1/feed/{id}", &item, 200);
    assert_eq!(item.1["recent_members"].as_array().map(Vec::len), Some(1));
    let after_like = liked.1["token"].as_str().unwrap();
    check(
        "get",
        "/v1/feed/{id}",
        &t.get(&format!("/v1/feed/{post_id}?after={after_like}"))
            .await,
        200,
    );
    let page = t.get(&format!("/v1/feed?limit=1&after={after_like}")).await;
    check("get", "/v1/feed", &page, 200);
    assert!(page.1["next_cursor"].is_string(), "{}", page.1);
    let deleted = t
        .call(
            Method::DELETE,
            &format!("/v1/feed/{post_id}?after={after_like}"),
            Some("bob"),
            None,
        )
        .await;
    check("delete", "/v1/feed/{id}", &deleted, 202);
    let after = deleted.1["token"].as_str().unwrap();
    check(
        "get",
        "/v1/feed/{id}",
        &t.get(&format!("/v1/feed/{post_id}?after={after}")).await,
        410,
    );

    // Sessions and cards.
    let minted = t.post("/v1/sessions", "ann", json!({})).await;
    check("post", "/v1/sessions", &minted, 200);
    let mine = minted.1["session_key"].as_str().unwrap().to_owned();
    check(
        "post",
        "/v1/sessions/{key}/share",
        &t.post(&format!("/v1/sessions/{mine}/share"), "ann", json!({}))
            .await,
        200,
    );
    check(
        "get",
        "/v1/sessions/{key}/cards",
        &t.get_as("ann", &format!("/v1/sessions/{mine}/cards")).await,
        200,
    );
    check(
        "get",
        "/v1/sessions/{key}/cards",
        &t.get(&format!("/v1/sessions/{mine}/cards")).await,
        404,
    );
    let unknown = uuid::Uuid::now_v7();
    check(
        "get",
        "/v1/uploads/{id}",
        &t.get(&format!("/v1/uploads/{unknown}")).await,
        404,
    );

    // Errors.
    check(
        "post",
        "/v1/polls",
        &t.call(Method::POST, "/v1/polls", None, Some(json!({})))
            .await,
        401,
    );
    check(
        "post",
        "/v1/polls",
        &t.post(
            "/v1/polls",
            "ann",
            json!({"head": "x", "questions": ["a", "b"], "nope": 1}),
        )
        .await,
        422,
    );
    check(
        "post",
        "/v1/polls/{id}/votes",
        &t.post(
            &format!("/v1/polls/{id}/votes"),
            "bob",
            json!({"question_ids": [0]}),
        )
        .await,
        409,
    );
    check("get", "/v1/feed", &t.get("/v1/feed?limit=0").await, 400);
    check(
        "get",
        "/v1/polls/{id}",
        &t.get(&format!("/v1/polls/{unknown}")).await,
        404,
    );
    t.stop().await;
}

/// Checks JSON values against the document's schemas with the `jsonschema`
/// crate (JSON Schema 2020-12, the dialect of OpenAPI 3.1), strictly: an
/// object schema that lists its properties admits no other property unless
/// it says so (`additionalProperties`), so an answer carrying a field the
/// document does not declare fails.
pub(crate) struct Checker<'a> {
    pub(crate) doc: &'a Value,
}

/// Closes every object schema that declares `properties` and says nothing
/// of others: `unevaluatedProperties: false`, which (unlike
/// `additionalProperties`) counts what `allOf`/`oneOf`/`anyOf` branches
/// evaluate. The branches themselves stay open: they are parts of the
/// object (a flattened enum), not the whole of it.
fn strict(v: &Value) -> Value {
    close(v, true)
}

fn close(v: &Value, whole: bool) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let part = matches!(k.as_str(), "allOf" | "oneOf" | "anyOf");
                let v = match (part, v) {
                    (true, Value::Array(branches)) => {
                        Value::Array(branches.iter().map(|b| close(b, false)).collect())
                    }
                    // Components and properties: each value is a whole.
                    _ => close(v, true),
                };
                out.insert(k.clone(), v);
            }
            let declares = out.contains_key("properties");
            let open = out.contains_key("additionalProperties")
                || out.contains_key("unevaluatedProperties");
            if whole && declares && !open {
                out.insert("unevaluatedProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| close(x, whole)).collect()),
        other => other.clone(),
    }
}

impl<'a> Checker<'a> {
    fn resolve(&self, mut s: &'a Value) -> &'a Value {
        while let Some(r) = s.get("$ref").and_then(Value::as_str) {
            s = r
                .strip_prefix('#')
                .and_then(|p| self.doc.pointer(p))
                .unwrap_or_else(|| panic!("dangling {r}"));
        }
        s
    }

    /// The documented response of an operation for a status, resolved.
    pub(crate) fn response(&self, method: &str, template: &str, status: u16) -> Option<&'a Value> {
        let r = self
            .doc
            .get("paths")?
            .get(template)?
            .get(method)?
            .get("responses")?
            .get(status.to_string())?;
        Some(self.resolve(r))
    }

    /// Validates `v` against `schema`, whose `$ref`s point into the
    /// document's components.
    pub(crate) fn assert_matches(&self, schema: &Value, v: &Value, what: &str) {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [strict(schema)],
            "components": strict(&self.doc["components"]),
        });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{v:#}");
    }
}
