//! Which failed AWS requests are worth retrying, from the SDK error's kind, the service's
//! error code and the HTTP status.
//!
//! The codes are the same across the services sluice talks to (Kinesis, DynamoDB): a
//! throttling code means "too fast" whichever service sends it. What a caller does with a
//! kind that retrying cannot help (fail the run, report a configuration error, get a new
//! iterator) is the caller's business.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// What kind of failure a request had, deciding what the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Over a limit (`ProvisionedThroughputExceeded`, `LimitExceeded`, `Throttling`): retry
    /// after a backoff.
    Throttled,
    /// The network, a timeout or the service's own fault (5xx): retry after a backoff.
    Transient,
    /// An iterator (a Kinesis shard's, a DynamoDB stream's) is older than five minutes: get
    /// a new one.
    ExpiredIterator,
    /// The stream, shard or table does not exist.
    NotFound,
    /// The service refused an argument (`InvalidArgument`, `Validation`): for a shard
    /// iterator, a sequence number it cannot honour; for a scan, a bad projection or start key.
    InvalidArgument,
    /// Anything else (access denied, a KMS key disabled): retrying the same request cannot help.
    Fatal,
}

impl Kind {
    /// Whether waiting and trying again can succeed.
    pub fn retryable(self) -> bool {
        matches!(self, Kind::Throttled | Kind::Transient)
    }

    /// The kind of a service's error code, as in an error answer or a per-record error of a
    /// `PutRecords` answer.
    pub fn of_code(code: &str) -> Kind {
        match code {
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "ThrottlingException"
            | "Throttling"
            | "RequestLimitExceeded" => Kind::Throttled,
            "InternalFailure"
            | "InternalFailureException"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException" => Kind::Transient,
            // The resource is being created or updated: it will be usable soon.
            "ResourceInUseException" | "ExpiredNextTokenException" => Kind::Transient,
            "ExpiredIteratorException" => Kind::ExpiredIterator,
            "ResourceNotFoundException" => Kind::NotFound,
            "InvalidArgumentException" | "ValidationException" => Kind::InvalidArgument,
            _ => Kind::Fatal,
        }
    }
}

/// A failed request: its kind and a message for logs and errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What the caller does about it.
    pub kind: Kind,
    /// The service's or the client's description.
    pub message: String,
}

impl Failure {
    /// Classifies an SDK error.
    pub fn of<E>(err: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = DisplayErrorContext(err).to_string();
        let kind = match err {
            SdkError::ServiceError(_) => match err.code() {
                Some(code) => Kind::of_code(code),
                // An answer the SDK could not name (a proxy's page, a truncated body).
                None => Kind::Transient,
            },
            // Timeouts, refused connections, unreadable answers, and also a region or
            // credentials that cannot be had (the SDK resolves both while dispatching, and a
            // credential provider fails for a moment while an instance role is refreshed):
            // the network or the service.
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Kind::Transient,
            // The request could not be built (serializing it, resolving its endpoint): the
            // same request fails the same way every time, so waiting cannot help. (A missing
            // region or credentials surface as dispatch failures, above.)
            SdkError::ConstructionFailure(_) => Kind::Fatal,
            // Kinds a later SDK adds: assume they pass, as most failures do.
            _ => Kind::Transient,
        };
        // An unknown code with a 5xx status is the service's fault and passes.
        let kind = match (kind, err.raw_response().map(|r| r.status().as_u16())) {
            (Kind::Fatal, Some(status)) if status >= 500 => Kind::Transient,
            (kind, _) => kind,
        };
        Failure { kind, message }
    }
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    #[test]
    fn error_codes_are_classified() {
        for code in [
            "ProvisionedThroughputExceededException",
            "LimitExceededException",
            "ThrottlingException",
            "Throttling",
            "RequestLimitExceeded",
        ] {
            assert_eq!(Kind::of_code(code), Kind::Throttled, "{code}");
        }
        for code in ["InternalFailure", "InternalServerError", "ServiceUnavailable"] {
            assert_eq!(Kind::of_code(code), Kind::Transient, "{code}");
        }
        assert_eq!(Kind::of_code("ExpiredIteratorException"), Kind::ExpiredIterator);
        assert_eq!(Kind::of_code("ResourceNotFoundException"), Kind::NotFound);
        assert_eq!(Kind::of_code("InvalidArgumentException"), Kind::InvalidArgument);
        assert_eq!(Kind::of_code("ValidationException"), Kind::InvalidArgument);
        assert_eq!(Kind::of_code("AccessDeniedException"), Kind::Fatal);
        assert_eq!(Kind::of_code("KMSDisabledException"), Kind::Fatal);
        assert!(Kind::Throttled.retryable() && Kind::Transient.retryable());
        assert!(!Kind::Fatal.retryable() && !Kind::NotFound.retryable() && !Kind::ExpiredIterator.retryable());
    }

    #[test]
    fn a_request_that_cannot_be_built_is_not_retried() {
        let err: SdkError<ErrorMetadata, HttpResponse> = SdkError::construction_failure("no endpoint for this stream");
        assert_eq!(Failure::of(&err).kind, Kind::Fatal);
        let err: SdkError<ErrorMetadata, HttpResponse> = SdkError::timeout_error("took too long");
        assert_eq!(Failure::of(&err).kind, Kind::Transient);
    }

    /// A service error with `code` (none: unnamed) answered with `status`.
    fn service_error(code: Option<&str>, status: u16) -> SdkError<ErrorMetadata, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("refused");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let status = StatusCode::try_from(status).expect("a status");
        SdkError::service_error(meta.build(), HttpResponse::new(status, SdkBody::empty()))
    }

    #[test]
    fn sdk_errors_are_classified_by_code_then_status() {
        let kind = |code, status| Failure::of(&service_error(code, status)).kind;
        assert_eq!(kind(Some("ThrottlingException"), 400), Kind::Throttled);
        assert_eq!(kind(Some("AccessDeniedException"), 400), Kind::Fatal);
        // An unknown code from a failing server passes; a known one keeps its meaning.
        assert_eq!(kind(Some("SomethingNew"), 503), Kind::Transient);
        assert_eq!(kind(Some("ResourceNotFoundException"), 500), Kind::NotFound);
        assert_eq!(kind(None, 403), Kind::Transient);
        let timeout: SdkError<ErrorMetadata, HttpResponse> = SdkError::timeout_error("slow");
        assert_eq!(Failure::of(&timeout).kind, Kind::Transient);
        let failure = Failure::of(&service_error(Some("AccessDeniedException"), 400));
        assert!(failure.message.contains("refused"), "{failure}");
    }
}
