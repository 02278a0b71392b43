//! Bearer-token checks: API keys or HS256 JWTs.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;

/// Why a token was refused. Never carries the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    /// The token is not valid.
    #[error("invalid token")]
    Invalid,
}

/// Checks bearer tokens against the configured mode: API keys compared in constant time,
/// HS256 JWTs (signature, `exp` required, issuer/audience when configured), or disabled.
/// The one implementation every Weir listener uses (gateway, services, `weir serve`).
pub struct Authenticator {
    mode: Mode,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("required", &self.required())
            .finish()
    }
}

enum Mode {
    Disabled,
    Keys(Vec<Vec<u8>>),
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
    },
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// JWT `sub` (`jwt` without one), `api-key:<n>` for the n-th configured key (from 1),
    /// `anonymous` with auth disabled.
    pub subject: String,
}

impl Authenticator {
    /// An authenticator for `cfg`.
    pub fn new(cfg: &AuthConfig) -> Self {
        let mode = match cfg {
            AuthConfig::Disabled => Mode::Disabled,
            AuthConfig::ApiKeys { keys } => {
                if keys.is_empty() {
                    tracing::warn!(
                        "gateway auth: no API keys configured, every request is refused"
                    );
                }
                // An empty key would let an empty token in: never a valid key.
                Mode::Keys(
                    keys.iter()
                        .filter(|k| !k.is_empty())
                        .map(|k| k.expose().as_bytes().to_vec())
                        .collect(),
                )
            }
            AuthConfig::Jwt {
                secret,
                issuer,
                audience,
                clock_skew,
            } => {
                let mut validation = Validation::new(Algorithm::HS256);
                // A configured issuer or audience is a requirement: a token that leaves the
                // claim out is refused, not waved through.
                let mut required = vec!["exp"];
                match issuer {
                    Some(i) => {
                        validation.set_issuer(&[i]);
                        required.push("iss");
                    }
                    None => validation.iss = None,
                }
                match audience {
                    Some(a) => {
                        validation.set_audience(&[a]);
                        required.push("aud");
                    }
                    None => validation.validate_aud = false,
                }
                validation.set_required_spec_claims(&required);
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.leeway = clock_skew.as_secs();
                Mode::Jwt {
                    key: DecodingKey::from_secret(secret.expose().as_bytes()),
                    validation: Box::new(validation),
                }
            }
        };
        Self { mode }
    }

    /// Checks the `Authorization: Bearer <token>` header of a request.
    pub fn check_headers(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        self.check(token)
    }

    /// Whether a token is needed at all.
    pub fn required(&self) -> bool {
        !matches!(self.mode, Mode::Disabled)
    }

    /// Checks a bearer token (`None` when none was sent).
    pub fn check(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        match &self.mode {
            Mode::Disabled => Ok(Principal {
                subject: "anonymous".into(),
            }),
            Mode::Keys(keys) => {
                let token = token.ok_or(AuthError::Missing)?;
                // Compare against every key so timing does not tell which one nearly matched.
                let mut matched = None;
                for (i, k) in keys.iter().enumerate() {
                    if constant_time_eq(k, token.as_bytes()) {
                        matched = Some(i);
                    }
                }
                match matched {
                    // Which key (its place in the list), never the key itself.
                    Some(i) => Ok(Principal {
                        subject: format!("api-key:{}", i + 1),
                    }),
                    None => Err(AuthError::Invalid),
                }
            }
            Mode::Jwt { key, validation } => {
                let token = token.ok_or(AuthError::Missing)?;
                let data = jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|_| AuthError::Invalid)?;
                Ok(Principal {
                    subject: data.claims.sub.unwrap_or_else(|| "jwt".into()),
                })
            }
        }
    }
}

/// Takes the token from an `Authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Takes the token from a `connection_init` payload.
pub(crate) fn token_from_init(payload: &serde_json::Value) -> Option<&str> {
    let obj = payload.as_object()?;
    for k in ["Authorization", "authorization"] {
        if let Some(v) = obj.get(k).and_then(|v| v.as_str()) {
            return bearer(v).or(Some(v));
        }
    }
    for k in ["authToken", "token"] {
        if let Some(v) = obj.get(k).and_then(|v| v.as_str()) {
            return Some(v);
        }
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use weir_config::Secret;

    use super::*;

    #[test]
    fn api_keys() {
        let a = Authenticator::new(&AuthConfig::ApiKeys {
            keys: vec![Secret::new("k1"), Secret::new("key-two")],
        });
        assert!(a.check(Some("key-two")).is_ok());
        assert_eq!(a.check(Some("key-tw0")), Err(AuthError::Invalid));
        assert_eq!(a.check(Some("k")), Err(AuthError::Invalid));
        assert_eq!(a.check(None), Err(AuthError::Missing));
        let none = Authenticator::new(&AuthConfig::default());
        assert_eq!(none.check(Some("")), Err(AuthError::Invalid));
    }

    #[test]
    fn jwt_hs256() {
        let secret = "0123456789abcdef-secret";
        let a = Authenticator::new(&AuthConfig::Jwt {
            secret: Secret::new(secret),
            issuer: Some("weir".into()),
            audience: None,
            clock_skew: crate::config::DEFAULT_CLOCK_SKEW,
        });
        let make = |key: &str, iss: &str, exp: i64| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &serde_json::json!({"sub": "ana", "iss": iss, "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
            )
            .unwrap()
        };
        let later = 4_000_000_000;
        assert_eq!(
            a.check(Some(&make(secret, "weir", later))).unwrap().subject,
            "ana"
        );
        assert_eq!(
            a.check(Some(&make("other-secret-0123456", "weir", later))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.check(Some(&make(secret, "evil", later))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.check(Some(&make(secret, "weir", 1000))),
            Err(AuthError::Invalid)
        );
        assert_eq!(a.check(Some("not.a.jwt")), Err(AuthError::Invalid));
    }

    fn sign(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn configured_issuer_and_audience_are_required_claims() {
        let secret = "0123456789abcdef-secret";
        let a = Authenticator::new(&AuthConfig::Jwt {
            secret: Secret::new(secret),
            issuer: Some("weir".into()),
            audience: Some("gateway".into()),
            clock_skew: crate::config::DEFAULT_CLOCK_SKEW,
        });
        let exp = now() + 3600;
        let ok = sign(
            secret,
            serde_json::json!({"sub": "ana", "iss": "weir", "aud": "gateway", "exp": exp}),
        );
        assert!(a.check(Some(&ok)).is_ok());
        for claims in [
            serde_json::json!({"sub": "ana", "aud": "gateway", "exp": exp}),
            serde_json::json!({"sub": "ana", "iss": "weir", "exp": exp}),
            serde_json::json!({"sub": "ana", "exp": exp}),
            serde_json::json!({"sub": "ana", "iss": "weir", "aud": "other", "exp": exp}),
            serde_json::json!({"sub": "ana", "iss": "weir", "aud": "gateway"}),
        ] {
            assert_eq!(
                a.check(Some(&sign(secret, claims.clone()))),
                Err(AuthError::Invalid),
                "{claims}"
            );
        }
    }

    #[test]
    fn nbf_and_exp_are_checked_within_the_clock_skew() {
        let secret = "0123456789abcdef-secret";
        let a = Authenticator::new(&AuthConfig::Jwt {
            secret: Secret::new(secret),
            issuer: None,
            audience: None,
            clock_skew: std::time::Duration::from_secs(30),
        });
        let t = now();
        let tok = |nbf: i64, exp: i64| sign(secret, serde_json::json!({"nbf": nbf, "exp": exp}));
        // Not yet valid: refused beyond the skew, accepted within it.
        assert_eq!(
            a.check(Some(&tok(t + 120, t + 3600))),
            Err(AuthError::Invalid)
        );
        assert!(a.check(Some(&tok(t + 10, t + 3600))).is_ok());
        // Expired: accepted within the skew, refused beyond it.
        assert!(a.check(Some(&tok(t - 60, t - 10))).is_ok());
        assert_eq!(
            a.check(Some(&tok(t - 600, t - 120))),
            Err(AuthError::Invalid)
        );
        let strict = Authenticator::new(&AuthConfig::Jwt {
            secret: Secret::new(secret),
            issuer: None,
            audience: None,
            clock_skew: std::time::Duration::ZERO,
        });
        assert_eq!(
            strict.check(Some(&tok(t + 10, t + 3600))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            strict.check(Some(&tok(t - 60, t - 10))),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn token_extraction() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        let p = serde_json::json!({"Authorization": "Bearer t1"});
        assert_eq!(token_from_init(&p), Some("t1"));
        let p = serde_json::json!({"authToken": "t2"});
        assert_eq!(token_from_init(&p), Some("t2"));
        assert_eq!(token_from_init(&serde_json::json!(null)), None);
    }

    #[test]
    fn an_empty_configured_key_never_admits_an_empty_token() {
        let a = Authenticator::new(&AuthConfig::ApiKeys {
            keys: vec![Secret::new(""), Secret::new("k-0123456789")],
        });
        assert_eq!(a.check(Some("")), Err(AuthError::Invalid));
        assert!(a.check(Some("k-0123456789")).is_ok());
    }
}
