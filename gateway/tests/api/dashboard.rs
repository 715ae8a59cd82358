//! The dashboard's files and the fleet figures it polls (the browser tests are end to end, in `tests/`).

use crate::helpers::{eventually, spawn_app, spawn_app_with};
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn the_page_is_served_fresh_under_a_strict_policy_and_its_assets_for_a_year() {
    let app = spawn_app().await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(headers["cache-control"], "no-cache");
    let policy = headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self';",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"));
    let html = page.text().await.unwrap();
    assert!(!html.contains("__ASSETS__"));
    let script = html
        .split('"')
        .find(|part| part.starts_with("/assets/") && part.ends_with("/app.js"))
        .expect("the page loads its script from a versioned path")
        .to_owned();

    let asset = app.get(&script).await;
    assert_eq!(asset.status(), 200);
    assert!(
        asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        asset.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(asset.text().await.unwrap().contains("import"));
    let nested = script.replace("app.js", "views/task.js");
    assert_eq!(app.get(&nested).await.status(), 200);

    for missing in [
        script.replace("app.js", "nope.js"),
        "/assets/0000000000/app.js".to_owned(),
        script.replace("app.js", "README.md"),
    ] {
        let response = app.get(&missing).await;
        assert_eq!(response.status(), 404, "{missing}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}

#[tokio::test]
async fn password_sign_in_is_offered_only_when_supabase_and_its_public_key_are_configured() {
    let app = spawn_app().await;
    let config: Value = app
        .get("/dashboard/config.json")
        .await
        .json()
        .await
        .unwrap();
    assert!(config["supabase_url"].is_null() && config["supabase_anon_key"].is_null());

    let app = spawn_app_with(&[("SUPABASE_ANON_KEY", "public-anon-key")]).await;
    let config: Value = app
        .get("/dashboard/config.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(config["supabase_url"], app.jwks.base_url.as_str());
    assert_eq!(config["supabase_anon_key"], "public-anon-key");
    let page = app.get("/").await;
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains(&format!("connect-src 'self' {};", app.jwks.base_url)),
        "{policy}"
    );
}

#[tokio::test]
async fn the_queue_figures_need_a_token_and_count_what_waits() {
    let app = spawn_app().await;
    assert_eq!(app.get("/queue").await.status(), 401);
    let token = app.token("alice");
    let figures = |token: String| {
        let (client, url) = (app.client.clone(), format!("{}/queue", app.address));
        async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let empty = figures(token.clone()).await;
    assert_eq!(
        (&empty["ready"], &empty["in_flight"], &empty["agents"]),
        (&0.into(), &0.into(), &0.into())
    );
    app.create("alice", 2).await;
    app.create("alice", 2).await;
    let seen = eventually(Duration::from_secs(10), || async {
        let now = figures(token.clone()).await;
        (now["ready"] == 2).then_some(now)
    })
    .await;
    assert!(seen.is_some(), "two tasks wait in the queue");
}
