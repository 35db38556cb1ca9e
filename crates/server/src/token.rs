//! Bearer tokens: compact JWTs (`header.payload.signature`, HS256) signed
//! with the registry's secret.
//!
//! zuul-registry signed its tokens with a hard-coded key and put neither an
//! expiry, a user nor a repository in them, so anyone could forge a write
//! token. Here the key is the configured secret (or a random one per start),
//! and every token names its issuer, audience (the service), subject (the
//! user, empty for anonymous), lifetime and the repositories and actions it
//! grants. Verification accepts only `HS256`, compares the signature in
//! constant time, and checks audience, issuer and time.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The issuer every token carries.
pub const ISSUER: &str = "speculum-registry";

/// Tokens longer than this are refused unread.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Clock skew tolerated on `nbf`/`iat`.
const LEEWAY: u64 = 30;

/// One grant: a resource and the actions allowed on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository name (`catalog` for `registry`).
    pub name: String,
    /// `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

impl Grant {
    /// Whether this grant allows `action` on `kind`/`name`.
    pub fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        self.kind == kind
            && self.name == name
            && self.actions.iter().any(|a| a == action || a == "*")
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user name, empty for anonymous.
    pub sub: String,
    /// Audience: the service.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// A unique id.
    pub jti: String,
    /// What the token grants.
    #[serde(default)]
    pub access: Vec<Grant>,
}

impl Claims {
    /// Whether the claims grant `action` on `kind`/`name`.
    pub fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|g| g.allows(kind, name, action))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url parts with JSON in them.
    #[error("malformed token")]
    Malformed,
    /// Not HS256.
    #[error("unsupported token algorithm")]
    Algorithm,
    /// The signature does not match.
    #[error("invalid token signature")]
    Signature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Not yet valid.
    #[error("token not yet valid")]
    NotYetValid,
    /// For another service or from another issuer.
    #[error("token issued for another service")]
    Audience,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Issues and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    key: Vec<u8>,
    service: String,
    ttl: Duration,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("key", &"<redacted>")
            .field("service", &self.service)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| TokenError::Malformed)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenKey {
    /// A key signing with `secret` for `service`; tokens live `ttl`.
    pub fn new(secret: &[u8], service: impl Into<String>, ttl: Duration) -> TokenKey {
        TokenKey {
            key: secret.to_vec(),
            service: service.into(),
            ttl,
        }
    }

    /// The service (the tokens' audience).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// How long tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; the error type exists only for
        // MACs with fixed key sizes.
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    /// Claims for `subject` granting `access`, valid from `now` for the TTL.
    pub fn claims(&self, subject: &str, access: Vec<Grant>, now: SystemTime) -> Claims {
        let iat = unix(now);
        Claims {
            iss: ISSUER.to_string(),
            sub: subject.to_string(),
            aud: self.service.clone(),
            exp: iat + self.ttl.as_secs(),
            nbf: iat,
            iat,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            access,
        }
    }

    /// Sign `claims` into a compact token.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "HS256".to_string(),
            typ: Some("JWT".to_string()),
        };
        // Serializing these plain structs cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!("{}.{}", b64(&header), b64(&payload));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = mac.finalize().into_bytes();
        format!("{signing_input}.{}", b64(&signature))
    }

    /// Check `token`'s algorithm, signature, audience, issuer and times.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header =
            serde_json::from_slice(&unb64(h)?).map_err(|_| TokenError::Malformed)?;
        // Only the algorithm we sign with: never `none`, never another one
        // a forger could pick.
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let signature = unb64(s)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&unb64(p)?).map_err(|_| TokenError::Malformed)?;
        if claims.aud != self.service || claims.iss != ISSUER {
            return Err(TokenError::Audience);
        }
        let now = unix(now);
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + LEEWAY || claims.iat > now + LEEWAY {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str, actions: &[&str]) -> Grant {
        Grant {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = TokenKey::new(b"k1", "svc", Duration::from_secs(60));
        let now = SystemTime::now();
        let claims = key.claims("alice", vec![grant("a/b", &["pull", "push"])], now);
        let token = key.sign(&claims);
        let back = key.verify(&token, now).unwrap();
        assert_eq!(back, claims);
        assert!(back.allows("repository", "a/b", "push"));
        assert!(!back.allows("repository", "a/c", "pull"));
        assert!(!back.allows("repository", "a/b", "delete"));

        // Another secret.
        let other = TokenKey::new(b"k2", "svc", Duration::from_secs(60));
        assert_eq!(other.verify(&token, now), Err(TokenError::Signature));
        // Another service.
        let other = TokenKey::new(b"k1", "svc2", Duration::from_secs(60));
        assert_eq!(other.verify(&token, now), Err(TokenError::Audience));
        // Expired.
        assert_eq!(
            key.verify(&token, now + Duration::from_secs(61)),
            Err(TokenError::Expired)
        );
        // Tampered payload, signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims.clone();
        forged.access = vec![grant("x", &["*"])];
        let forged_payload = b64(&serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(key.verify(&tampered, now), Err(TokenError::Signature));
        // alg none, empty signature.
        let none = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none}.{forged_payload}.");
        assert_eq!(key.verify(&unsigned, now), Err(TokenError::Algorithm));
        // Garbage.
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(key.verify(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_actions() {
        let g = grant("a", &["*"]);
        assert!(g.allows("repository", "a", "delete"));
        assert!(!g.allows("registry", "a", "pull"));
    }
}
