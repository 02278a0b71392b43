//! Bearer-token authentication with the gateway's settings.
//!
//! A thin wrapper over [`weir_gateway::Authenticator`], so the services and the gateway check
//! tokens with one implementation; it adds the services' stricter start-up check on secrets.

use weir_gateway::{AuthConfig, AuthError};

use crate::ServiceError;

pub use weir_gateway::bearer;

/// Checks `Authorization: Bearer <token>` exactly the way the gateway does.
pub struct Authenticator {
    inner: weir_gateway::Authenticator,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("required", &self.inner.required())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for `config`. An HS256 secret under 16 bytes is refused.
    pub fn new(config: &AuthConfig) -> Result<Self, ServiceError> {
        if let AuthConfig::Jwt { secret, .. } = config
            && secret.expose().len() < 16
        {
            return Err(ServiceError::Auth(
                "an HS256 secret needs at least 16 bytes".into(),
            ));
        }
        Ok(Self {
            inner: weir_gateway::Authenticator::new(config),
        })
    }

    /// Whether every request is let in.
    pub fn is_disabled(&self) -> bool {
        !self.inner.required()
    }

    /// Checks a bearer token (`None` when the request carried none).
    pub fn check(&self, token: Option<&str>) -> Result<(), AuthError> {
        self.inner.check(token).map(|_| ())
    }

    /// Checks the `Authorization` header of a request.
    pub fn check_headers(&self, headers: &axum::http::HeaderMap) -> Result<(), AuthError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        self.check(token)
    }
}

#[cfg(test)]
mod tests {
    use weir_config::Secret;

    use super::*;
    use jsonwebtoken::Algorithm;

    #[test]
    fn keys_are_checked() {
        let a = Authenticator::new(&AuthConfig::ApiKeys {
            keys: vec![Secret::new("k-0123456789")],
        })
        .unwrap();
        assert!(a.check(Some("k-0123456789")).is_ok());
        assert!(matches!(
            a.check(Some("k-012345678")),
            Err(AuthError::Invalid)
        ));
        assert!(matches!(a.check(None), Err(AuthError::Missing)));
    }

    #[test]
    fn no_keys_refuses_everyone_and_disabled_lets_everyone_in() {
        let a = Authenticator::new(&AuthConfig::default()).unwrap();
        assert!(a.check(Some("")).is_err());
        assert!(a.check(Some("anything")).is_err());
        let d = Authenticator::new(&AuthConfig::Disabled).unwrap();
        assert!(d.check(None).is_ok());
    }

    #[test]
    fn jwt_is_verified() {
        let secret = "0123456789abcdef0123";
        let a = Authenticator::new(&AuthConfig::Jwt {
            secret: Secret::new(secret),
            issuer: Some("weir".into()),
            audience: None,
        })
        .unwrap();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let make = |iss: &str, key: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &serde_json::json!({"sub": "t", "iss": iss, "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
            )
            .unwrap()
        };
        assert!(a.check(Some(&make("weir", secret))).is_ok());
        assert!(a.check(Some(&make("other", secret))).is_err());
        assert!(
            a.check(Some(&make("weir", "wrong-secret-0123456")))
                .is_err()
        );
    }

    #[test]
    fn bearer_parses() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
