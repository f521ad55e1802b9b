//! The requests: `Scan` pages fetched in the background with backoff, projections with
//! placeholder names, and which failures are retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use sluice_runtime::source::SourceError;
use tokio::sync::mpsc;

use crate::item::Item;
use crate::progress::Progress;
use crate::reader::{Fetch, Fetched, Fetching, Page};

/// Pages fetched ahead of the reader, per segment: enough that the next page is usually
/// there when the reader wants it, few enough that memory stays bounded (a page is up to
/// 1 MB of items, several times that once parsed).
const PAGES_AHEAD: usize = 2;

/// The first retry waits about this long…
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// …doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Error codes that mean "too fast" or "not now": retried with backoff, never fatal.
const RETRIED_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingException",
    "Throttling",
    "InternalServerError",
    "ServiceUnavailable",
];

/// Error codes that no retry can fix: the pipeline names a missing table or asks for
/// something the service refuses (a bad projection, a key from another table).
const CONFIG_CODES: &[&str] = &["ValidationException", "ResourceNotFoundException"];

/// A `ProjectionExpression` with every name behind a placeholder (`#p0, #p1`), so reserved
/// words (`Name`, `Date`, `Value`…) and odd characters need no care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Projection {
    /// The expression: `#p0, #p1, …`.
    pub(crate) expression: String,
    /// `ExpressionAttributeNames`: placeholder → attribute name.
    pub(crate) names: HashMap<String, String>,
    /// Key attributes the projection did not ask for, added so every item's key is known;
    /// they are left out of the payloads.
    pub(crate) added: Vec<String>,
}

/// The attribute names of a `projection` setting: comma-separated, trimmed, each taken
/// literally as a top-level attribute name; a name given twice counts once.
pub(crate) fn projection_names(list: &str) -> Result<Vec<String>, SourceError> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(SourceError::Config(format!(
                "projection `{list}` has an empty attribute name: write names separated by commas"
            )));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The projection of `names`, plus the `keys` it lacks.
pub(crate) fn projection(names: &[String], keys: &[String]) -> Projection {
    let added: Vec<String> = keys.iter().filter(|k| !names.contains(k)).cloned().collect();
    let all: Vec<&String> = names.iter().chain(&added).collect();
    let placeholders: Vec<String> = (0..all.len()).map(|i| format!("#p{i}")).collect();
    Projection {
        expression: placeholders.join(", "),
        names: placeholders.into_iter().zip(all.into_iter().cloned()).collect(),
        added,
    }
}

/// What to do about a failed request.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Throttling, a network error, a server error: wait and send it again.
    Retry(String),
    /// Anything else, already classified (`Config` when no retry can help).
    Fail(SourceError),
}

/// Classifies an SDK error from a request about `table`.
pub(crate) fn classify<E>(err: &SdkError<E>, table: &str) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ConstructionFailure(_) => Failure::Fail(SourceError::Config(format!(
            "cannot build a request for table `{table}`: {text}"
        ))),
        SdkError::ServiceError(service) => {
            let code = err.code().unwrap_or("");
            if code == "ResourceNotFoundException" {
                Failure::Fail(SourceError::Config(format!(
                    "DynamoDB table `{table}` does not exist: {text}"
                )))
            } else if CONFIG_CODES.contains(&code) {
                Failure::Fail(SourceError::Config(format!(
                    "DynamoDB refused a scan of `{table}`: {text}"
                )))
            } else if RETRIED_CODES.contains(&code) || service.raw().status().is_server_error() {
                Failure::Retry(text)
            } else {
                // Access denied, expired credentials and the like: a person may fix them
                // while the pipeline waits, so they are reported and retried, not fatal.
                Failure::Fail(SourceError::Transient(format!("scan of `{table}`: {text}")))
            }
        }
        // Timeouts, connection failures, truncated responses, and kinds added later.
        _ => Failure::Retry(text),
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each wait between half and all
/// of its step, so segments throttled together do not retry in lockstep.
pub(crate) struct Backoff {
    step: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// A backoff whose jitter is seeded with `seed` (the segment).
    pub(crate) fn new(seed: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Backoff {
            step: BACKOFF_FIRST,
            rng: SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(nanos)),
        }
    }

    /// The next wait.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + Duration::from_micros(self.rng.random_range(0..=half.as_micros() as u64))
    }

    /// Back to the first step, after a success.
    pub(crate) fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
    }
}

/// Fetches segments' pages with `Scan` requests, on the shared AWS runtime.
pub(crate) struct ScanFetch {
    /// The client.
    pub(crate) client: Client,
    /// The table.
    pub(crate) table: String,
    /// `TotalSegments`.
    pub(crate) total_segments: i32,
    /// `Limit`, if set.
    pub(crate) limit: Option<i32>,
    /// The projection, if set.
    pub(crate) projection: Option<Projection>,
    /// For retry warnings.
    pub(crate) progress: Arc<Progress>,
}

impl Fetch for ScanFetch {
    fn start(self: Arc<Self>, segment: u32, after: Option<Item>) -> Fetching {
        let (tx, pages) = mpsc::channel(PAGES_AHEAD);
        let task = sluice_aws::runtime().spawn(fetch_pages(self, segment, after, tx));
        Fetching {
            pages,
            task: Some(task.abort_handle()),
        }
    }
}

/// Sends the pages of `segment` after `start` until the last one, a fatal error, or the
/// reader going away; retries throttling and network errors forever, with backoff.
async fn fetch_pages(fetch: Arc<ScanFetch>, segment: u32, mut start: Option<Item>, tx: mpsc::Sender<Fetched>) {
    let mut backoff = Backoff::new(u64::from(segment));
    let segment_arg = segment as i32;
    loop {
        let mut request = fetch
            .client
            .scan()
            .table_name(&fetch.table)
            .segment(segment_arg)
            .total_segments(fetch.total_segments)
            .set_exclusive_start_key(start.clone())
            .set_limit(fetch.limit);
        if let Some(p) = &fetch.projection {
            request = request
                .projection_expression(&p.expression)
                .set_expression_attribute_names(Some(p.names.clone()));
        }
        match request.send().await {
            Ok(output) => {
                backoff.reset();
                let last_key = output.last_evaluated_key.filter(|k| !k.is_empty());
                let done = last_key.is_none();
                start.clone_from(&last_key);
                let page = Page {
                    items: output.items.unwrap_or_default().into(),
                    last_key,
                };
                if tx.send(Ok(page)).await.is_err() || done {
                    return;
                }
            }
            Err(e) => match classify(&e, &fetch.table) {
                Failure::Retry(text) => {
                    let wait = backoff.next_wait();
                    fetch.progress.warn_retry(segment, &text, wait);
                    tokio::time::sleep(wait).await;
                }
                Failure::Fail(error) => {
                    // The reader may be gone; then nobody needs the error either.
                    let _ = tx.send(Err(error)).await;
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_names_are_trimmed_and_checked() {
        assert_eq!(
            projection_names(" U, P ,C,U").ok(),
            Some(vec!["U".to_owned(), "P".to_owned(), "C".to_owned()])
        );
        assert_eq!(projection_names("Name").ok(), Some(vec!["Name".to_owned()]));
        for bad in ["", "U,,P", "U,", " , "] {
            assert!(matches!(projection_names(bad), Err(SourceError::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn projections_use_placeholders_and_add_missing_keys() {
        let names = vec!["P".to_owned(), "Date".to_owned(), "a.b".to_owned()];
        let keys = vec!["U".to_owned(), "Date".to_owned()];
        let p = projection(&names, &keys);
        assert_eq!(p.expression, "#p0, #p1, #p2, #p3");
        let expected: HashMap<String, String> = [("#p0", "P"), ("#p1", "Date"), ("#p2", "a.b"), ("#p3", "U")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        assert_eq!(p.names, expected);
        assert_eq!(p.added, vec!["U".to_owned()]);
        assert!(projection(&["U".to_owned()], &["U".to_owned()]).added.is_empty());
    }

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter() {
        let mut b = Backoff::new(3);
        let waits: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
        let steps = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000];
        for (wait, step) in waits.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(*wait >= step / 2 && *wait <= step, "{wait:?} for a step of {step:?}");
        }
        b.reset();
        assert!(b.next_wait() <= BACKOFF_FIRST);
    }
}
