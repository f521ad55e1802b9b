//! `sluice.v1.Views/Subscribe`: any served output, as a snapshot then its changes.
//!
//! A fresh subscriber gets `reset`, the live entries as `+1` changes in pages, then every
//! change: a key's new state, `+1` with its value, or `-1` without one once deleted. Each
//! catch-up with the view carries `frontier` and a `token` to resume from. For a partitioned
//! view the partition is part of the token's output name, so a token only resumes the
//! partition it was issued for.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_served::{Entry, ServedView, Value};
use tonic::{Request, Response, Status};

use crate::follow::{self, Batch, Known, Source};
use crate::outbox::{self, ClientStream};
use crate::proto::sluice::v1::views_server::Views;
use crate::proto::sluice::v1::{Change, SubscribeRequest, SubscribeResponse};
use crate::{Shared, auth, token};

/// Changes per message.
const PAGE: usize = 1000;
/// The metadata key of the shared secret.
const AUTH_HEADER: &str = "x-sluice-auth-token";

/// The service over every served view of the pipeline.
pub(crate) struct ViewsService {
    pub views: Arc<BTreeMap<String, ServedView>>,
    pub auth_token: Option<String>,
    pub shared: Shared,
}

#[tonic::async_trait]
impl Views for ViewsService {
    type SubscribeStream = ClientStream<SubscribeResponse>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        auth::check_secret(request.metadata(), AUTH_HEADER, self.auth_token.as_deref())?;
        let request = request.into_inner();
        let Some(view) = self.views.get(&request.output).cloned() else {
            return Err(Status::not_found(format!("no served output {:?}", request.output)));
        };
        let (partition, output) = match (view.partition_by(), request.partition.trim()) {
            (None, "") => (Value::Null, request.output.clone()),
            (None, _) => {
                return Err(Status::invalid_argument(format!(
                    "output {:?} is not partitioned; leave partition empty",
                    request.output
                )));
            }
            (Some(field), "") => {
                return Err(Status::invalid_argument(format!(
                    "output {:?} is partitioned by {field:?}; give the partition as JSON",
                    request.output
                )));
            }
            (Some(_), text) => {
                let partition =
                    Value::from_json_str(text).map_err(|e| Status::invalid_argument(format!("partition: {e}")))?;
                // The canonical JSON, so equal partitions written differently share tokens.
                let output = format!("{} {}", request.output, partition.to_json_string());
                (partition, output)
            }
        };
        let key = Arc::clone(&self.shared.token_key);
        let start = follow::start_from(&key, &output, &request.token, view.progress(), false)?;
        let (mut out, stream) = outbox::channel(self.shared.limits, self.shared.shutdown.clone());
        tokio::spawn(async move {
            let source = Source {
                view: &view,
                partition: &partition,
                batch_size: PAGE,
            };
            let shape = |batch: Batch<Change>| Some(message(batch, &key, &output));
            let stop = follow::follow(source, start, &mut out, change, shape).await;
            tracing::debug!(view = view.name(), ?stop, "subscription ended");
            out.finish(stop);
        });
        Ok(Response::new(stream))
    }
}

fn message(batch: Batch<Change>, key: &[u8], output: &str) -> SubscribeResponse {
    SubscribeResponse {
        reset: batch.reset,
        changes: batch.items,
        frontier: batch.through.unwrap_or(0),
        token: batch.through.map_or_else(Vec::new, |t| token::issue(key, output, t)),
        current: batch.current,
    }
}

fn change(entry: &Entry, known: Known) -> Option<Change> {
    let key = entry.key.to_json_string();
    match &entry.value {
        Some(value) => Some(Change {
            key,
            value: value.to_json_string(),
            diff: 1,
            time: entry.time,
        }),
        None => (known == Known::Maybe).then_some(Change {
            key,
            value: String::new(),
            diff: -1,
            time: entry.time,
        }),
    }
}
