//! Caller checks shared by the gRPC services and the HTTP routes.

use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::jwt;

/// Checks a shared-secret header: `secret` `None` means auth is off (warned about at start).
pub(crate) fn check_secret(metadata: &MetadataMap, header: &str, secret: Option<&str>) -> Result<(), Status> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let Some(given) = metadata.get(header) else {
        return Err(Status::unauthenticated("no authorization"));
    };
    // Constant time, so the secret cannot be found a byte at a time from response timing.
    if bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
        Ok(())
    } else {
        Err(Status::unauthenticated("bad token"))
    }
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BearerError {
    /// No `authorization` header, or not `Bearer …`.
    #[error("no bearer token")]
    Missing,
    /// The token does not verify.
    #[error(transparent)]
    Invalid(#[from] jwt::JwtError),
}

/// The user named by an `authorization: Bearer <jwt>` header value.
pub(crate) fn bearer_user(header: Option<&[u8]>, secret: &[u8]) -> Result<String, BearerError> {
    let header = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or(BearerError::Missing)?;
    let (scheme, token) = header.trim().split_once(' ').ok_or(BearerError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Missing);
    }
    Ok(jwt::verify(secret, token.trim())?)
}

/// The user named by the bearer token of a gRPC call.
pub(crate) fn grpc_user(metadata: &MetadataMap, secret: &[u8]) -> Result<String, Status> {
    let header = metadata.get("authorization").map(|v| v.as_bytes());
    bearer_user(header, secret).map_err(|e| Status::unauthenticated(e.to_string()))
}
