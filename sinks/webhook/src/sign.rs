//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! `webhook-signature: v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`. The key
//! is the base64-decoded text after a `whsec_` prefix (the form Standard Webhooks
//! libraries generate and verify with), otherwise the secret's UTF-8 bytes as they are, so a
//! subscriber's plain shared secret works too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of secrets given in the Standard Webhooks form: base64 key bytes follow.
pub const WHSEC_PREFIX: &str = "whsec_";

/// Why a secret cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the secret starts with `whsec_` but the rest is not base64")]
pub struct BadSecret;

/// The HMAC key of a subscriber's secret (see the module doc for the rule).
pub fn signing_key(secret: &str) -> Result<Vec<u8>, BadSecret> {
    match secret.strip_prefix(WHSEC_PREFIX) {
        Some(encoded) => STANDARD.decode(encoded).map_err(|_| BadSecret),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` value for a message: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under `key`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; the error exists only for fixed-key MACs.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_example_signs_as_published() {
        // The example of the Standard Webhooks specification.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or_default();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_plain_secret_is_its_bytes_and_a_bad_whsec_secret_is_refused() {
        assert_eq!(signing_key("s3cret"), Ok(b"s3cret".to_vec()));
        assert_eq!(signing_key("whsec_not base64!"), Err(BadSecret));
    }
}
