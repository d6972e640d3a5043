//! Authentication: bearer tokens, either HS256 JWTs (`sub`, `name`,
//! optional `picture`, `exp`) or configured API keys. The principal stamped
//! on every event comes from here, never from a request body.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::config::AuthConfig;
use crate::event::{Principal, UserId, Validate};

/// JWT claims atelier reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Avatar URL.
    #[serde(default)]
    pub picture: Option<String>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Auth {
    jwt: Option<DecodingKey>,
    /// API keys by SHA-256 of the key, so the keys themselves are not kept.
    keys: HashMap<[u8; 32], Principal>,
    /// Who may call the operations routes.
    admins: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("jwt", &self.jwt.is_some())
            .field("api_keys", &self.keys.len())
            .field("admins", &self.admins)
            .finish()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Auth {
    /// From configuration; invalid API-key principals are configuration errors.
    pub fn new(cfg: &AuthConfig) -> Result<Self, String> {
        let jwt = (!cfg.jwt_secret.expose().is_empty())
            .then(|| DecodingKey::from_secret(cfg.jwt_secret.expose().as_bytes()));
        let mut keys = HashMap::new();
        for (key, p) in &cfg.api_keys {
            let principal = Principal {
                id: UserId::parse(&p.id).map_err(|e| format!("api key principal: {e}"))?,
                name: p.name.clone(),
                avatar_url: p.avatar_url.clone(),
            };
            principal
                .validate()
                .map_err(|e| format!("api key principal: {e}"))?;
            keys.insert(digest(key), principal);
        }
        Ok(Self {
            jwt,
            keys,
            admins: cfg.admins.clone(),
        })
    }

    /// The principal a bearer token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if let Some(p) = self.keys.get(&digest(token)) {
            return Ok(p.clone());
        }
        let Some(key) = &self.jwt else {
            return Err(ApiError::unauthorized("unknown API key"));
        };
        if token.split('.').count() != 3 {
            return Err(ApiError::unauthorized("unknown API key"));
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        let c = data.claims;
        let id = UserId::parse(&c.sub)
            .map_err(|e| ApiError::unauthorized(format!("invalid token subject: {}", e.reason)))?;
        let principal = Principal {
            name: c.name.unwrap_or_else(|| id.to_string()),
            id,
            avatar_url: c.picture,
        };
        principal
            .validate()
            .map_err(|e| ApiError::unauthorized(format!("invalid token claims: {e}")))?;
        Ok(principal)
    }
}

/// Mints an HS256 token (CLI, load generator, tests).
pub fn mint(secret: &str, sub: &str, name: &str, ttl_secs: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        + ttl_secs;
    let claims = Claims {
        sub: sub.to_owned(),
        name: Some(name.to_owned()),
        picture: None,
        exp,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Authed(pub Principal);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let text = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
        state.auth.verify(token).map(Authed)
    }
}

impl aide::OperationInput for Authed {
    fn operation_input(_: &mut aide::generate::GenContext, op: &mut aide::openapi::Operation) {
        super::contract::secured(op);
        super::contract::add_errors(op, &[401]);
    }
}

/// An authenticated caller listed in `auth.admins`: the operations routes
/// (replay, DLQ, export) take this instead of [`Authed`].
#[derive(Clone, Debug)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authed(p) = Authed::from_request_parts(parts, state).await?;
        if state.auth.admins.iter().any(|a| a == p.id.as_str()) {
            Ok(Admin(p))
        } else {
            Err(ApiError::forbidden(
                "not_admin",
                format!("{} is not in auth.admins", p.id),
            ))
        }
    }
}

impl aide::OperationInput for Admin {
    fn operation_input(_: &mut aide::generate::GenContext, op: &mut aide::openapi::Operation) {
        super::contract::secured(op);
        super::contract::add_errors(op, &[401, 403]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyPrincipal, Secret};

    fn auth() -> Auth {
        let mut cfg = AuthConfig {
            jwt_secret: Secret("s3cret".into()),
            ..Default::default()
        };
        cfg.api_keys.insert(
            "key-1".into(),
            ApiKeyPrincipal {
                id: "svc".into(),
                name: "Service".into(),
                avatar_url: None,
            },
        );
        Auth::new(&cfg).unwrap()
    }

    #[test]
    fn accepts_signed_tokens_and_keys() {
        let a = auth();
        assert_eq!(
            a.verify(&mint("s3cret", "alice", "Alice", 60))
                .unwrap()
                .name,
            "Alice"
        );
        assert_eq!(a.verify("key-1").unwrap().id.as_str(), "svc");
    }

    #[test]
    fn rejects_forged_expired_and_unknown() {
        let a = auth();
        assert!(a.verify(&mint("other", "alice", "Alice", 60)).is_err());
        assert!(a.verify("nope").is_err());
        let mut t = mint("s3cret", "alice", "Alice", 60);
        t.push('x');
        assert!(a.verify(&t).is_err());
        assert!(a.verify(&mint("s3cret", "bad id!", "x", 60)).is_err());
    }
}
