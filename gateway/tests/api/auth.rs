//! Who may call: Supabase JWTs, HS256 and JWKS-backed ES256/RS256.

use crate::helpers::{
    EC_PRIVATE, RSA_PRIVATE, RSA_PUBLIC, TestApp, encoding_key, jwk, now_secs, spawn_app,
    spawn_app_with,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

async fn status_of(app: &TestApp, token: Option<&str>) -> (u16, Value) {
    let response = app
        .post_task(token, &json!({"mandate": "m", "max_ticks": 1}))
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn signed(claims: &Value, alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token whose header and payload are given as JSON and whose signature is `signature`.
fn handmade(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_and_change_nothing() {
    let app = spawn_app().await;
    let claims = app.claims("alice");
    let mut expired = claims.clone();
    expired["exp"] = json!(now_secs() - 120);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("service_role");
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example/auth/v1");
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut anon_role = claims.clone();
    anon_role["role"] = json!("anon");
    let mut not_yet = claims.clone();
    not_yet["nbf"] = json!(now_secs() + 600);
    let rsa = encoding_key(RSA_PRIVATE, Algorithm::RS256);

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("garbage", Some("garbage".into())),
        ("three garbage parts", Some("a.b.c".into())),
        ("expired", Some(app.hs256(&expired))),
        ("wrong aud", Some(app.hs256(&wrong_aud))),
        ("wrong iss", Some(app.hs256(&wrong_iss))),
        ("no exp", Some(app.hs256(&no_exp))),
        ("anon role", Some(app.hs256(&anon_role))),
        ("nbf in the future", Some(app.hs256(&not_yet))),
        (
            "wrong secret",
            Some(signed(
                &claims,
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(b"guess"),
            )),
        ),
        (
            "alg none",
            Some(handmade(&json!({"alg": "none", "typ": "JWT"}), &claims, "")),
        ),
        (
            "alg HS512",
            Some(signed(
                &claims,
                Algorithm::HS512,
                None,
                &EncodingKey::from_secret(app.secret.as_bytes()),
            )),
        ),
        (
            "HS256 signed with the RSA public key (algorithm confusion)",
            Some(signed(
                &claims,
                Algorithm::HS256,
                Some("rsa-1"),
                &EncodingKey::from_secret(RSA_PUBLIC),
            )),
        ),
        (
            "unknown kid",
            Some(signed(&claims, Algorithm::RS256, Some("nope"), &rsa)),
        ),
        (
            "RS256 without kid",
            Some(signed(&claims, Algorithm::RS256, None, &rsa)),
        ),
        (
            "RS256 under the EC key's kid",
            Some(signed(&claims, Algorithm::RS256, Some("ec-1"), &rsa)),
        ),
    ];
    for (case, token) in cases {
        let (status, body) = status_of(&app, token.as_deref()).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");
        let message = body["error"]["message"].as_str().unwrap();
        for internal in [
            "Error", "Kind", "line ", "column", "Base64", "Utf8", "Json", "serde",
        ] {
            assert!(
                !message.contains(internal),
                "{case}: the 401 echoes library internals: {message}"
            );
        }
    }
    let get = app
        .client
        .get(format!("{}/tasks/{}", app.address, uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 401);
    assert!(app.redis_keys().await.is_empty());
    assert!(app.next_message().await.is_none());
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_accepted() {
    let app = spawn_app().await;
    let mut claims = app.claims("alice");
    claims["exp"] = json!(now_secs() - 20);
    let (status, _) = status_of(&app, Some(&app.hs256(&claims))).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn es256_and_rs256_tokens_are_accepted_through_the_jwks() {
    let app = spawn_app().await;
    let claims = app.claims("alice");
    let rs = signed(
        &claims,
        Algorithm::RS256,
        Some("rsa-1"),
        &encoding_key(RSA_PRIVATE, Algorithm::RS256),
    );
    let es = signed(
        &claims,
        Algorithm::ES256,
        Some("ec-1"),
        &encoding_key(EC_PRIVATE, Algorithm::ES256),
    );

    assert_eq!(status_of(&app, Some(&rs)).await.0, 202);
    assert_eq!(status_of(&app, Some(&es)).await.0, 202);
    assert_eq!(
        app.jwks.fetches.load(Ordering::SeqCst),
        1,
        "the JWKS is cached"
    );
}

#[tokio::test]
async fn a_key_rotated_into_the_jwks_is_fetched_at_once_for_its_unknown_kid() {
    let app = spawn_app_with(&[("SUPABASE_JWKS_MIN_REFETCH_MS", "1000")]).await;
    let claims = app.claims("alice");
    let rs = signed(
        &claims,
        Algorithm::RS256,
        Some("rsa-1"),
        &encoding_key(RSA_PRIVATE, Algorithm::RS256),
    );
    assert_eq!(status_of(&app, Some(&rs)).await.0, 202);

    app.jwks
        .keys
        .write()
        .unwrap()
        .keys
        .push(jwk(EC_PRIVATE, Algorithm::ES256, "ec-2"));
    // Past the rate limit, the first token naming the new kid triggers the refetch.
    tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
    let rotated = signed(
        &claims,
        Algorithm::ES256,
        Some("ec-2"),
        &encoding_key(EC_PRIVATE, Algorithm::ES256),
    );

    assert_eq!(status_of(&app, Some(&rotated)).await.0, 202);
    assert_eq!(app.jwks.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_gateway_hammer_the_jwks() {
    let app = spawn_app().await;
    let claims = app.claims("alice");
    let rsa = encoding_key(RSA_PRIVATE, Algorithm::RS256);
    for n in 0..20 {
        let token = signed(
            &claims,
            Algorithm::RS256,
            Some(&format!("made-up-{n}")),
            &rsa,
        );
        assert_eq!(status_of(&app, Some(&token)).await.0, 401);
    }
    assert_eq!(
        app.jwks.fetches.load(Ordering::SeqCst),
        1,
        "one refetch per interval"
    );
}

#[tokio::test]
async fn anonymous_users_are_403_unless_allowed_and_user_metadata_decides_nothing() {
    let app = spawn_app().await;
    let mut anonymous = app.claims("anon-1");
    anonymous["is_anonymous"] = json!(true);
    let (status, body) = status_of(&app, Some(&app.hs256(&anonymous))).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "email_not_confirmed");
    assert!(app.redis_keys().await.is_empty());

    // The user edits `user_metadata` at will: it neither refuses nor admits anyone.
    let mut edited = app.claims("anon-2");
    edited["is_anonymous"] = json!(true);
    edited["user_metadata"] = json!({"email_verified": true, "is_anonymous": false});
    assert_eq!(status_of(&app, Some(&app.hs256(&edited))).await.0, 403);
    let mut self_denied = app.claims("new-1");
    self_denied["user_metadata"]["email_verified"] = json!(false);
    assert_eq!(status_of(&app, Some(&app.hs256(&self_denied))).await.0, 202);

    let lenient = spawn_app_with(&[("SUPABASE_ALLOW_UNCONFIRMED", "true")]).await;
    let mut anonymous = lenient.claims("anon-1");
    anonymous["is_anonymous"] = json!(true);
    assert_eq!(
        status_of(&lenient, Some(&lenient.hs256(&anonymous)))
            .await
            .0,
        202
    );
}
