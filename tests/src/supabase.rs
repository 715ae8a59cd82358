//! A stand-in for Supabase's auth server, for the dashboard's and the CLI's sign-in tests.

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::post;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A stand-in for Supabase's auth server (GoTrue cannot run here): the password and refresh-token grants,
/// with CORS as Supabase answers it, minting tokens the gateway accepts. Records the grants it served.
#[derive(Debug)]
pub struct FakeSupabase {
    /// Its base URL (what `SUPABASE_URL` should be).
    pub url: String,
    grants: Arc<Mutex<Vec<String>>>,
}

impl FakeSupabase {
    /// Starts it on loopback, minting HS256 tokens signed with `secret` that live `lifetime`. The one
    /// account is `ada@example.org` with the password `correct horse`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(secret: &str, lifetime: Duration) -> Self {
        #[derive(Clone)]
        struct Auth {
            secret: String,
            issuer: Arc<Mutex<String>>,
            lifetime: Duration,
            grants: Arc<Mutex<Vec<String>>>,
        }
        async fn token(
            State(auth): State<Auth>,
            Query(query): Query<HashMap<String, String>>,
            body: axum::Json<Value>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let grant = query.get("grant_type").cloned().unwrap_or_default();
            auth.grants.lock().unwrap().push(grant.clone());
            let valid = match grant.as_str() {
                "password" => {
                    body["email"] == "ada@example.org" && body["password"] == "correct horse"
                }
                "refresh_token" => body["refresh_token"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("refresh-")),
                _ => false,
            };
            if !valid {
                return (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "invalid_grant", "error_description": "Invalid login credentials"})),
                )
                    .into_response();
            }
            let exp = now() + auth.lifetime.as_secs();
            let claims = json!({"sub": "ada", "aud": "authenticated", "role": "authenticated",
                                "iss": *auth.issuer.lock().unwrap(), "exp": exp, "iat": now(),
                                "email": "ada@example.org"});
            let access = jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(auth.secret.as_bytes()),
            )
            .unwrap();
            axum::Json(json!({
                "access_token": access, "token_type": "bearer",
                "expires_in": auth.lifetime.as_secs(), "expires_at": exp,
                "refresh_token": format!("refresh-{}", uuid::Uuid::new_v4()),
                "user": {"id": "ada", "email": "ada@example.org"},
            }))
            .into_response()
        }
        let auth = Auth {
            secret: secret.to_owned(),
            issuer: Arc::new(Mutex::new(String::new())),
            lifetime,
            grants: Arc::new(Mutex::new(Vec::new())),
        };
        let router = Router::new()
            .route("/auth/v1/token", post(token))
            .with_state(auth.clone())
            .layer(tower_http::cors::CorsLayer::very_permissive());
        let address = crate::serve(router, 0).await.unwrap();
        let url = format!("http://{address}");
        *auth.issuer.lock().unwrap() = format!("{url}/auth/v1");
        Self {
            url,
            grants: auth.grants,
        }
    }

    /// The grant types served so far, in order.
    pub fn grants(&self) -> Vec<String> {
        self.grants.lock().unwrap().clone()
    }
}
