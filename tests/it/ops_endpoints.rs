//! `/metrics` and `/v1/pipeline`: open on the API's listener by default;
//! for administrators only with `http.ops_token`; only on their own
//! listener with `http.ops_listen`.

use atelier::app::Roles;

use crate::helpers::{self, Backends, TestApp};

async fn status(t: &TestApp, base: &str, path: &str, user: Option<&str>) -> u16 {
    let mut req = t.http.get(format!("{base}{path}"));
    if let Some(u) = user {
        req = req.bearer_auth(t.token(u));
    }
    req.send().await.unwrap().status().as_u16()
}

async fn start(tune: impl FnOnce(&mut atelier::config::HttpConfig)) -> TestApp {
    let mut cfg = helpers::config(Backends::Embedded).await.unwrap();
    tune(&mut cfg.http);
    TestApp::start(
        cfg,
        Roles {
            infer: false,
            ..Roles::ALL
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_can_need_a_token_or_move_to_their_own_listener() {
    // The embedded default: open.
    let t = start(|_| {}).await;
    assert_eq!(status(&t, &t.url, "/metrics", None).await, 200);
    assert_eq!(status(&t, &t.url, "/v1/pipeline", None).await, 200);
    t.stop().await;

    // A token: administrators only.
    let t = start(|h| h.ops_token = true).await;
    for path in ["/metrics", "/v1/pipeline"] {
        assert_eq!(status(&t, &t.url, path, None).await, 401, "{path}");
        assert_eq!(status(&t, &t.url, path, Some("ann")).await, 403, "{path}");
        assert_eq!(status(&t, &t.url, path, Some("admin")).await, 200, "{path}");
    }
    assert_eq!(status(&t, &t.url, "/readyz", None).await, 200);
    t.stop().await;

    // Their own listener: there and only there, with the probes.
    let t = start(|h| h.ops_listen = "127.0.0.1:0".into()).await;
    let ops = format!("http://{}", t.app.ops_addr.expect("an ops listener"));
    for path in ["/metrics", "/v1/pipeline"] {
        assert_eq!(status(&t, &t.url, path, None).await, 404, "{path}");
        assert_eq!(status(&t, &ops, path, None).await, 200, "{path}");
    }
    assert_eq!(status(&t, &ops, "/readyz", None).await, 200);
    assert_eq!(status(&t, &ops, "/v1/styles", None).await, 404);
    assert_eq!(status(&t, &t.url, "/v1/styles", None).await, 200);
    t.stop().await;
}
