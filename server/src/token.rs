//! Continuation tokens: opaque to clients, signed by the server, naming a point to resume from.
//!
//! A token says "every change of `output` before time `through` has been delivered". Layout:
//!
//! ```text
//! [1: version] [2: output length, big-endian] [output bytes] [8: through, big-endian] [16: tag]
//! ```
//!
//! The tag is HMAC-SHA256 over everything before it, truncated to 16 bytes (128 bits is
//! plenty against forgery and keeps tokens short). The output name is inside the signed part,
//! so a token cannot be replayed against another output, and a genuine token for another
//! output can be told apart from a forged one ([`TokenError::OtherOutput`]). Tokens carry no
//! expiry: whether a view can still honour one is decided against its horizon, at use.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The format version written as the first byte.
pub const VERSION: u8 = 1;
/// Bytes of the truncated HMAC tag.
const TAG_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Why a token is refused (the caller answers `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The bytes are not a token of any known layout (truncated, wrong lengths).
    #[error("malformed continuation token")]
    Malformed,
    /// The first byte names a format this server does not know.
    #[error("unknown continuation token version {0}")]
    Version(u8),
    /// The tag does not match: corrupted or forged.
    #[error("continuation token signature does not match")]
    Signature,
    /// A genuine token, but for another output.
    #[error("continuation token is for another output")]
    OtherOutput,
}

/// A token for `output` through frontier `through`, signed with `key`.
pub fn issue(key: &[u8], output: &str, through: u64) -> Vec<u8> {
    // Output names are sink names; one longer than 64 KiB is cut, which only makes the
    // token fail verification for it: never a panic, never a token for another name.
    let name = &output.as_bytes()[..output.len().min(usize::from(u16::MAX))];
    let mut token = Vec::with_capacity(1 + 2 + name.len() + 8 + TAG_LEN);
    token.push(VERSION);
    token.extend_from_slice(&(name.len() as u16).to_be_bytes());
    token.extend_from_slice(name);
    token.extend_from_slice(&through.to_be_bytes());
    let tag = mac(key, &token).finalize().into_bytes();
    token.extend_from_slice(&tag[..TAG_LEN]);
    token
}

/// The `through` frontier of a token for `output` signed with `key`.
pub fn verify(key: &[u8], output: &str, token: &[u8]) -> Result<u64, TokenError> {
    let (&version, rest) = token.split_first().ok_or(TokenError::Malformed)?;
    if version != VERSION {
        return Err(TokenError::Version(version));
    }
    let (len, rest) = rest.split_first_chunk::<2>().ok_or(TokenError::Malformed)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() != len + 8 + TAG_LEN {
        return Err(TokenError::Malformed);
    }
    let body_len = 1 + 2 + len + 8;
    let (body, tag) = token.split_at(body_len);
    // `verify_truncated_left` compares in constant time, so the tag cannot be guessed byte by
    // byte from response timing.
    mac(key, body)
        .verify_truncated_left(tag)
        .map_err(|_| TokenError::Signature)?;
    let name = &body[3..3 + len];
    if name != output.as_bytes() {
        return Err(TokenError::OtherOutput);
    }
    let through = body[3 + len..]
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| TokenError::Malformed)?;
    Ok(through)
}

fn mac(key: &[u8], body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip() {
        let token = issue(KEY, "directory", 1_700_000_000_123);
        assert_eq!(token[0], VERSION);
        assert_eq!(verify(KEY, "directory", &token), Ok(1_700_000_000_123));
        assert_eq!(verify(KEY, "directory", &issue(KEY, "directory", 0)), Ok(0));
        assert_eq!(verify(KEY, "", &issue(KEY, "", u64::MAX)), Ok(u64::MAX));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let token = issue(KEY, "directory", 42);
        for i in 0..token.len() * 8 {
            let mut bad = token.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(verify(KEY, "directory", &bad).is_err(), "bit {i}");
        }
    }

    #[test]
    fn refusals_are_classified() {
        let token = issue(KEY, "directory", 42);
        assert_eq!(verify(b"another key", "directory", &token), Err(TokenError::Signature));
        assert_eq!(verify(KEY, "feed", &token), Err(TokenError::OtherOutput));
        let mut v2 = token.clone();
        v2[0] = 2;
        assert_eq!(verify(KEY, "directory", &v2), Err(TokenError::Version(2)));
        assert_eq!(verify(KEY, "directory", &[]), Err(TokenError::Malformed));
        assert_eq!(
            verify(KEY, "directory", &token[..token.len() - 1]),
            Err(TokenError::Malformed)
        );
        assert_eq!(verify(KEY, "directory", &[1, 0xff, 0xff]), Err(TokenError::Malformed));
        let mut longer = token.clone();
        longer.push(0);
        assert_eq!(verify(KEY, "directory", &longer), Err(TokenError::Malformed));
    }

    #[test]
    fn a_changed_frontier_breaks_the_signature() {
        let mut token = issue(KEY, "directory", 42);
        let at = token.len() - TAG_LEN - 1;
        token[at] = 43;
        assert_eq!(verify(KEY, "directory", &token), Err(TokenError::Signature));
    }
}
