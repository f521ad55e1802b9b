//! The requests: `Scan` pages fetched in the background with backoff, projections with
//! placeholder names, and which failures are retried.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use sluice_aws::{Backoff, Kind};
use sluice_runtime::source::SourceError;
use tokio::sync::mpsc;

use crate::item::Item;
use crate::progress::Progress;
use crate::reader::{Fetch, Fetched, Fetching, Page};

/// Pages fetched ahead of the reader, per segment: enough that the next page is usually
/// there when the reader wants it, few enough that memory stays bounded (a page is up to
/// 1 MB of items, several times that once parsed).
const PAGES_AHEAD: usize = 2;

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
    // The same request would fail to build again: a scan fails at once rather than retry it.
    if let SdkError::ConstructionFailure(_) = err {
        return Failure::Fail(SourceError::Config(format!(
            "cannot build a request for table `{table}`: {}",
            DisplayErrorContext(err)
        )));
    }
    let failure = sluice_aws::Failure::of(err);
    let text = failure.message;
    match failure.kind {
        Kind::Throttled | Kind::Transient => Failure::Retry(text),
        Kind::NotFound => Failure::Fail(SourceError::Config(format!(
            "DynamoDB table `{table}` does not exist: {text}"
        ))),
        // A bad projection, a key from another table: no retry can fix them.
        Kind::InvalidArgument => Failure::Fail(SourceError::Config(format!(
            "DynamoDB refused a scan of `{table}`: {text}"
        ))),
        // Access denied, expired credentials and the like: a person may fix them while the
        // pipeline waits, so they are reported and retried, not fatal.
        Kind::ExpiredIterator | Kind::Fatal => {
            Failure::Fail(SourceError::Transient(format!("scan of `{table}`: {text}")))
        }
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
    let mut backoff = Backoff::default();
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
}
