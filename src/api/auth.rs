//! Authentication: bearer tokens, either JWTs or configured API keys. The
//! principal stamped on every event comes from here, never from a request
//! body.
//!
//! JWTs are HS256 (`auth.jwt_secret`), or RS256 and ES256 checked against
//! the public keys of a JWKS (`auth.jwks`: a file, or an identity
//! provider's URL, read again in the background). The key is chosen by the
//! token's algorithm and `kid`, and a JWK that names another algorithm is
//! refused, so a public key never verifies an HS256 token. `exp` and `sub`
//! are required, `nbf` is honoured, both with `auth.leeway_secs` of clock
//! skew, and `iss` and `aud` are checked when configured. The display name
//! and avatar come from configurable claims. An administrator is a subject
//! in `auth.admins`, or a token whose `auth.admin_claim` is (or contains)
//! `auth.admin_role`.
//!
//! API keys are looked up by their SHA-256 digest (the configuration may
//! hold `sha256:<hex>` instead of the key): the comparison an attacker can
//! time is between digests, which tells nothing about the key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::config::AuthConfig;
use crate::event::{Principal, UserId, Validate};

/// JWT claims atelier mints (the CLI, the load generator, tests).
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

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// Whether they may use the operations routes.
    pub admin: bool,
}

/// Verifies bearer tokens.
pub struct Auth {
    hs: Option<DecodingKey>,
    /// The JWKS's keys (empty without `auth.jwks`).
    jwks: parking_lot::RwLock<JwkSet>,
    jwks_source: String,
    /// API keys by SHA-256 of the key, so the keys themselves are not kept.
    keys: HashMap<[u8; 32], Principal>,
    /// Who may call the operations routes.
    admins: Vec<String>,
    admin_claim: String,
    admin_role: String,
    issuer: String,
    audience: Vec<String>,
    leeway: u64,
    name_claim: String,
    avatar_claim: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hs256", &self.hs.is_some())
            .field("jwks_keys", &self.jwks.read().keys.len())
            .field("api_keys", &self.keys.len())
            .field("admins", &self.admins)
            .finish()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// An API key's digest from its configured form: `sha256:<hex>`, or the
/// key itself.
fn key_digest(configured: &str) -> Result<[u8; 32], String> {
    match configured.strip_prefix("sha256:") {
        Some(h) => hex::decode(h)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| "api key sha256:<hex> needs 64 hex digits".to_owned()),
        None => Ok(digest(configured)),
    }
}

/// Whether `claim` is `role`, or an array (or space-separated list) with it.
fn has_role(claim: Option<&Value>, role: &str) -> bool {
    match claim {
        Some(Value::String(s)) => s.split_whitespace().any(|r| r == role),
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(role)),
        _ => false,
    }
}

impl Auth {
    /// From configuration; invalid API-key principals are configuration
    /// errors. A JWKS file is read here; a URL by [`Auth::load_jwks`].
    pub fn new(cfg: &AuthConfig) -> Result<Self, String> {
        let hs = (!cfg.jwt_secret.expose().is_empty())
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
            keys.insert(key_digest(key)?, principal);
        }
        let auth = Self {
            hs,
            jwks: parking_lot::RwLock::new(JwkSet { keys: Vec::new() }),
            jwks_source: cfg.jwks.clone(),
            keys,
            admins: cfg.admins.clone(),
            admin_claim: cfg.admin_claim.clone(),
            admin_role: cfg.admin_role.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_secs,
            name_claim: cfg.name_claim.clone(),
            avatar_claim: cfg.avatar_claim.clone(),
        };
        if !auth.jwks_source.is_empty() && !auth.jwks_is_url() {
            let text = std::fs::read_to_string(&auth.jwks_source)
                .map_err(|e| format!("auth.jwks {}: {e}", auth.jwks_source))?;
            auth.set_jwks(&text)?;
        }
        Ok(auth)
    }

    fn jwks_is_url(&self) -> bool {
        self.jwks_source.starts_with("http://") || self.jwks_source.starts_with("https://")
    }

    fn set_jwks(&self, text: &str) -> Result<usize, String> {
        let set: JwkSet = serde_json::from_str(text)
            .map_err(|e| format!("auth.jwks {}: not a JWKS: {e}", self.jwks_source))?;
        let n = set.keys.len();
        *self.jwks.write() = set;
        Ok(n)
    }

    /// Reads the JWKS again (file or URL); the keys in use stay when it
    /// fails. `Ok(None)` without `auth.jwks`.
    pub async fn load_jwks(&self) -> Result<Option<usize>, String> {
        if self.jwks_source.is_empty() {
            return Ok(None);
        }
        let text = if self.jwks_is_url() {
            let res = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?
                .get(&self.jwks_source)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| format!("auth.jwks {}: {e}", self.jwks_source))?;
            res.text()
                .await
                .map_err(|e| format!("auth.jwks {}: {e}", self.jwks_source))?
        } else {
            tokio::fs::read_to_string(&self.jwks_source)
                .await
                .map_err(|e| format!("auth.jwks {}: {e}", self.jwks_source))?
        };
        self.set_jwks(&text).map(Some)
    }

    /// The principal a bearer token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        self.caller(token).map(|c| c.principal)
    }

    /// The caller a bearer token stands for, and whether they are an
    /// administrator.
    pub fn caller(&self, token: &str) -> Result<Caller, ApiError> {
        if let Some(p) = self.keys.get(&digest(token)) {
            return Ok(Caller {
                admin: self.admins.iter().any(|a| a == p.id.as_str()),
                principal: p.clone(),
            });
        }
        if token.split('.').count() != 3 {
            return Err(ApiError::unauthorized("unknown API key"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        let key = self.key_for(&header)?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !self.issuer.is_empty() {
            v.set_issuer(&[&self.issuer]);
            required.push("iss");
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?
            .claims;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let id = UserId::parse(sub)
            .map_err(|e| ApiError::unauthorized(format!("invalid token subject: {}", e.reason)))?;
        let text = |claim: &str| claims.get(claim).and_then(Value::as_str).map(str::to_owned);
        let principal = Principal {
            name: text(&self.name_claim).unwrap_or_else(|| id.to_string()),
            avatar_url: text(&self.avatar_claim),
            id,
        };
        principal
            .validate()
            .map_err(|e| ApiError::unauthorized(format!("invalid token claims: {e}")))?;
        let admin = self.admins.iter().any(|a| a == principal.id.as_str())
            || (!self.admin_claim.is_empty()
                && has_role(claims.get(&self.admin_claim), &self.admin_role));
        Ok(Caller { principal, admin })
    }

    /// The key that may verify a token with this header: the shared secret
    /// for HS256, a JWKS key of the same algorithm (by `kid`, or the only
    /// one) for RS256 and ES256.
    fn key_for(&self, header: &Header) -> Result<DecodingKey, ApiError> {
        match header.alg {
            Algorithm::HS256 => self.hs.clone().ok_or_else(|| {
                ApiError::unauthorized("HS256 tokens are not accepted (no auth.jwt_secret)")
            }),
            Algorithm::RS256 | Algorithm::ES256 => {
                let set = self.jwks.read();
                let fits = |k: &&Jwk| {
                    let alg_ok = k
                        .common
                        .key_algorithm
                        .is_none_or(|a| format!("{a:?}") == format!("{:?}", header.alg));
                    let kty_ok = matches!(
                        (&k.algorithm, header.alg),
                        (
                            jsonwebtoken::jwk::AlgorithmParameters::RSA(_),
                            Algorithm::RS256
                        ) | (
                            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_),
                            Algorithm::ES256
                        )
                    );
                    alg_ok && kty_ok
                };
                let jwk = match &header.kid {
                    Some(kid) => set
                        .keys
                        .iter()
                        .filter(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
                        .find(fits),
                    None => {
                        let mut it = set.keys.iter().filter(fits);
                        match (it.next(), it.next()) {
                            (Some(k), None) => Some(k),
                            _ => None,
                        }
                    }
                };
                let jwk = jwk.ok_or_else(|| {
                    ApiError::unauthorized(format!(
                        "no {:?} key{} in auth.jwks",
                        header.alg,
                        header
                            .kid
                            .as_deref()
                            .map(|k| format!(" with kid {k:?}"))
                            .unwrap_or_default()
                    ))
                })?;
                DecodingKey::from_jwk(jwk)
                    .map_err(|e| ApiError::unauthorized(format!("unusable JWKS key: {e}")))
            }
            other => Err(ApiError::unauthorized(format!(
                "tokens signed with {other:?} are not accepted (HS256, RS256, ES256)"
            ))),
        }
    }
}

/// Reads the JWKS again every `every` until `shutdown`.
pub async fn refresh_jwks(
    auth: Arc<Auth>,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match auth.load_jwks().await {
            Ok(Some(n)) => tracing::debug!(keys = n, "JWKS read again"),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "reading the JWKS failed; keeping the keys in use")
            }
        }
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

/// The bearer token of a request.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let text = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    text.strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = state.auth.verify(bearer(parts)?)?;
        // Every route that takes a principal and is no read is a write.
        if !matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD
        ) {
            state.limits.write(p.id.as_str())?;
        }
        Ok(Authed(p))
    }
}

impl aide::OperationInput for Authed {
    fn operation_input(_: &mut aide::generate::GenContext, op: &mut aide::openapi::Operation) {
        super::contract::secured(op);
        super::contract::add_errors(op, &[401, 429]);
    }
}

/// The caller of a read, when it says who it is: no `Authorization` header
/// is an anonymous caller, a bad one is refused (401) as on writes.
#[derive(Clone, Debug, Default)]
pub struct Reader(pub Option<Caller>);

impl Reader {
    /// Whether the caller is an administrator.
    pub fn admin(&self) -> bool {
        self.0.as_ref().is_some_and(|c| c.admin)
    }

    /// The caller's user id.
    pub fn user(&self) -> Option<&crate::event::UserId> {
        self.0.as_ref().map(|c| &c.principal.id)
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Ok(Reader(None));
        }
        Ok(Reader(Some(state.auth.caller(bearer(parts)?)?)))
    }
}

impl aide::OperationInput for Reader {
    fn operation_input(_: &mut aide::generate::GenContext, op: &mut aide::openapi::Operation) {
        super::contract::optionally_secured(op);
        super::contract::add_errors(op, &[401]);
    }
}

/// An authenticated administrator (`auth.admins` or `auth.admin_claim`):
/// the operations routes (replay, DLQ, export) take this instead of
/// [`Authed`].
#[derive(Clone, Debug)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let c = state.auth.caller(bearer(parts)?)?;
        if c.admin {
            Ok(Admin(c.principal))
        } else {
            Err(ApiError::forbidden(
                "not_admin",
                format!(
                    "{} is not an administrator (auth.admins, auth.admin_claim)",
                    c.principal.id
                ),
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

/// A signed-in caller of a read, with the role it holds: a bearer token is
/// required (401 without one).
#[derive(Clone, Debug)]
pub struct SignedIn(pub Caller);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(SignedIn(state.auth.caller(bearer(parts)?)?))
    }
}

impl aide::OperationInput for SignedIn {
    fn operation_input(_: &mut aide::generate::GenContext, op: &mut aide::openapi::Operation) {
        super::contract::secured(op);
        super::contract::add_errors(op, &[401]);
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

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/jwt/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// An IdP-style configuration: JWKS file, issuer, audience, roles.
    fn idp() -> Auth {
        let cfg = AuthConfig {
            jwks: format!(
                "{}/tests/fixtures/jwt/jwks.json",
                env!("CARGO_MANIFEST_DIR")
            ),
            issuer: "https://id.example.test/".into(),
            audience: vec!["atelier".into()],
            admin_claim: "roles".into(),
            name_claim: "preferred_username".into(),
            ..Default::default()
        };
        Auth::new(&cfg).unwrap()
    }

    fn sign(alg: Algorithm, kid: Option<&str>, pem: &str, claims: &serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(fixture(pem).as_bytes()).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(fixture(pem).as_bytes()).unwrap(),
            _ => EncodingKey::from_secret(pem.as_bytes()),
        };
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({
            "sub": "ann",
            "preferred_username": "Ann",
            "iss": "https://id.example.test/",
            "aud": "atelier",
            "exp": now() + 600,
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn accepts_rs256_and_es256_tokens_from_the_jwks_issuer() {
        let a = idp();
        let rs = sign(
            Algorithm::RS256,
            Some("rsa-1"),
            "rsa.pem",
            &claims(serde_json::json!({})),
        );
        let c = a.caller(&rs).unwrap();
        assert_eq!(
            (c.principal.id.as_str(), c.principal.name.as_str()),
            ("ann", "Ann")
        );
        assert!(!c.admin);
        let es = sign(
            Algorithm::ES256,
            Some("ec-1"),
            "ec.pem",
            &claims(serde_json::json!({"roles": ["viewer", "admin"]})),
        );
        let c = a.caller(&es).unwrap();
        assert!(c.admin, "roles contains admin");
        // Within the clock skew allowance.
        let skewed = sign(
            Algorithm::RS256,
            Some("rsa-1"),
            "rsa.pem",
            &claims(serde_json::json!({"exp": now() - 10, "nbf": now() + 10})),
        );
        assert!(a.caller(&skewed).is_ok());
    }

    #[test]
    fn refuses_wrong_audience_issuer_key_algorithm_and_times() {
        let a = idp();
        let refused = |t: &str, why: &str| {
            let e = a.caller(t).expect_err(why);
            assert_eq!(e.status.as_u16(), 401, "{why}: {e}");
        };
        let rs =
            |c: serde_json::Value| sign(Algorithm::RS256, Some("rsa-1"), "rsa.pem", &claims(c));
        refused(&rs(serde_json::json!({"aud": "someone-else"})), "wrong aud");
        refused(
            &rs(serde_json::json!({"iss": "https://evil.test/"})),
            "wrong iss",
        );
        refused(&rs(serde_json::json!({"exp": now() - 120})), "expired");
        refused(
            &rs(serde_json::json!({"nbf": now() + 120})),
            "not yet valid",
        );
        let mut no_aud = claims(serde_json::json!({}));
        no_aud.as_object_mut().unwrap().remove("aud");
        refused(
            &sign(Algorithm::RS256, Some("rsa-1"), "rsa.pem", &no_aud),
            "no aud",
        );
        // Signed by a key the JWKS does not hold, under its kid.
        refused(
            &sign(
                Algorithm::RS256,
                Some("rsa-1"),
                "rsa-other.pem",
                &claims(serde_json::json!({})),
            ),
            "other key",
        );
        // An RSA kid for an ES256 token, an unknown kid.
        refused(
            &sign(
                Algorithm::ES256,
                Some("rsa-1"),
                "ec.pem",
                &claims(serde_json::json!({})),
            ),
            "kty mismatch",
        );
        refused(
            &sign(
                Algorithm::RS256,
                Some("nope"),
                "rsa.pem",
                &claims(serde_json::json!({})),
            ),
            "unknown kid",
        );
        // HS256 with no shared secret configured (a public key is no secret).
        refused(
            &sign(
                Algorithm::HS256,
                None,
                "anything",
                &claims(serde_json::json!({})),
            ),
            "HS256 without a secret",
        );
        refused(
            &sign(
                Algorithm::HS384,
                None,
                "anything",
                &claims(serde_json::json!({})),
            ),
            "other algorithm",
        );
    }

    #[test]
    fn api_keys_may_be_configured_hashed_and_admins_are_only_configured() {
        let mut cfg = AuthConfig::default();
        assert!(cfg.admins.is_empty(), "no administrator by default");
        cfg.api_keys.insert(
            format!("sha256:{}", hex::encode(digest("the-key"))),
            ApiKeyPrincipal {
                id: "svc".into(),
                name: "Service".into(),
                avatar_url: None,
            },
        );
        cfg.admins = vec!["svc".into()];
        let a = Auth::new(&cfg).unwrap();
        let c = a.caller("the-key").unwrap();
        assert_eq!(c.principal.id.as_str(), "svc");
        assert!(c.admin);
        assert!(a.caller("sha256:whatever").is_err());
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
