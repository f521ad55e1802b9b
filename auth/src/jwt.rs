//! HS256 JSON Web Token verification: who is calling the messages feed, who may publish.
//!
//! Written out so the rules are visible: the header's `alg` must be `HS256` (never `none`,
//! never whatever the token claims), the signature is checked in constant time before any
//! claim is trusted, and `exp` and `nbf` (when present) bound the validity in seconds since
//! the epoch with no leeway. [`verify`] also requires `sub`, which names the user.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value as Json;
use sha2::Sha256;

/// Why a bearer token is refused (the caller answers `UNAUTHENTICATED` / `401`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON object header and payload.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm than HS256 (or none).
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    /// The signature does not match the secret.
    #[error("bad token signature")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `sub` is missing, empty or not a string.
    #[error("token has no subject")]
    Subject,
}

/// The subject (`sub`, the user name) of a valid HS256 `token` signed with `secret`.
pub fn verify(secret: &[u8], token: &str) -> Result<String, JwtError> {
    verify_at(secret, token, now_seconds())
}

/// The claims of a valid HS256 `token` signed with `secret`, whatever they name.
pub fn verify_claims(secret: &[u8], token: &str) -> Result<serde_json::Map<String, Json>, JwtError> {
    claims_at(secret, token, now_seconds())
}

/// [`verify`] at a given time (seconds since the epoch), for tests.
fn verify_at(secret: &[u8], token: &str, now: f64) -> Result<String, JwtError> {
    let claims = claims_at(secret, token, now)?;
    match claims.get("sub").and_then(Json::as_str) {
        Some(sub) if !sub.is_empty() => Ok(sub.to_owned()),
        _ => Err(JwtError::Subject),
    }
}

/// [`verify_claims`] at a given time (seconds since the epoch).
fn claims_at(secret: &[u8], token: &str, now: f64) -> Result<serde_json::Map<String, Json>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header_part = header;
    let header = decode_object(header)?;
    match header.get("alg").and_then(Json::as_str) {
        Some("HS256") => {}
        other => return Err(JwtError::Algorithm(other.unwrap_or("").to_owned())),
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| JwtError::Malformed)?;
    // The signed input is the first two parts exactly as sent, not a re-encoding of them.
    let signed = &token.as_bytes()[..header_part.len() + 1 + payload.len()];
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| JwtError::Signature)?;
    mac.update(signed);
    mac.verify_slice(&signature).map_err(|_| JwtError::Signature)?;

    let claims = decode_object(payload)?;
    let seconds = |name: &str| {
        claims
            .get(name)
            .map(|v| v.as_f64().ok_or(JwtError::Malformed))
            .transpose()
    };
    if seconds("exp")?.is_some_and(|exp| exp <= now) {
        return Err(JwtError::Expired);
    }
    if seconds("nbf")?.is_some_and(|nbf| nbf > now) {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

fn decode_object(part: &str) -> Result<serde_json::Map<String, Json>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Json::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

fn now_seconds() -> f64 {
    // A clock before 1970 makes every `exp` look valid and every `nbf` passed; there is no
    // better answer, and it does not happen on a server.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Signs an HS256 token for `claims` (a JSON object), for tests and tools.
pub fn sign(secret: &[u8], claims: &Json) -> String {
    sign_with_header(secret, r#"{"alg":"HS256","typ":"JWT"}"#, claims)
}

/// Signs `claims` with `secret` under any header, even one naming another algorithm: for
/// tests that a verifier refuses what it must.
pub fn sign_with_header(secret: &[u8], header: &str, claims: &Json) -> String {
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // HMAC takes keys of any length, so this cannot fail; an empty tag would only make the
    // token invalid.
    if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        mac.update(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    }
    token
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"feed secret";
    const NOW: f64 = 1_700_000_000.0;

    #[test]
    fn good_tokens() {
        let token = sign(SECRET, &json!({"sub": "ann", "exp": NOW + 60.0, "nbf": NOW - 60.0}));
        assert_eq!(verify_at(SECRET, &token, NOW), Ok("ann".to_owned()));
        let token = sign(SECRET, &json!({"sub": "bob"}));
        assert_eq!(verify_at(SECRET, &token, NOW), Ok("bob".to_owned()));
        assert_eq!(verify(SECRET, &token), Ok("bob".to_owned()));
    }

    #[test]
    fn wrong_secret_or_tampering() {
        let token = sign(SECRET, &json!({"sub": "ann"}));
        assert_eq!(verify_at(b"other", &token, NOW), Err(JwtError::Signature));
        // Swap the payload for another user's, keeping the signature.
        let forged = sign(SECRET, &json!({"sub": "bob"}));
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = forged.split('.').nth(1).unwrap_or_default();
        assert_eq!(verify_at(SECRET, &parts.join("."), NOW), Err(JwtError::Signature));
        let mut bad_sig = token.clone();
        bad_sig.pop();
        bad_sig.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(verify_at(SECRET, &bad_sig, NOW).is_err());
    }

    #[test]
    fn expiry_and_not_before() {
        let expired = sign(SECRET, &json!({"sub": "ann", "exp": NOW - 1.0}));
        assert_eq!(verify_at(SECRET, &expired, NOW), Err(JwtError::Expired));
        let at_expiry = sign(SECRET, &json!({"sub": "ann", "exp": NOW}));
        assert_eq!(verify_at(SECRET, &at_expiry, NOW), Err(JwtError::Expired));
        let early = sign(SECRET, &json!({"sub": "ann", "nbf": NOW + 1.0}));
        assert_eq!(verify_at(SECRET, &early, NOW), Err(JwtError::NotYetValid));
        let odd = sign(SECRET, &json!({"sub": "ann", "exp": "tomorrow"}));
        assert_eq!(verify_at(SECRET, &odd, NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let claims = json!({"sub": "ann"});
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(verify_at(SECRET, &none, NOW), Err(JwtError::Algorithm("none".into())));
        let hs512 = sign_with_header(SECRET, r#"{"alg":"HS512"}"#, &claims);
        assert_eq!(verify_at(SECRET, &hs512, NOW), Err(JwtError::Algorithm("HS512".into())));
        let no_alg = sign_with_header(SECRET, r#"{"typ":"JWT"}"#, &claims);
        assert_eq!(verify_at(SECRET, &no_alg, NOW), Err(JwtError::Algorithm(String::new())));
    }

    #[test]
    fn claims_need_no_subject() {
        let token = sign(SECRET, &json!({"exp": NOW + 60.0, "scope": "publish"}));
        let claims = claims_at(SECRET, &token, NOW).expect("valid");
        assert_eq!(claims.get("scope"), Some(&json!("publish")));
        assert_eq!(claims_at(SECRET, &token, NOW + 61.0), Err(JwtError::Expired));
    }

    #[test]
    fn subject_and_shape() {
        for claims in [json!({}), json!({"sub": ""}), json!({"sub": 7})] {
            assert_eq!(verify_at(SECRET, &sign(SECRET, &claims), NOW), Err(JwtError::Subject));
        }
        for token in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30"] {
            assert!(verify_at(SECRET, token, NOW).is_err(), "{token}");
        }
        let array_payload = sign(SECRET, &json!([1, 2]));
        assert_eq!(verify_at(SECRET, &array_payload, NOW), Err(JwtError::Malformed));
    }
}
