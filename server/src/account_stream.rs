//! `org.signal.AccountStreamService`: the cds directory as the original service streamed it
//! (spec/cds.md, "The gRPC service").
//!
//! The view is the cds `directory` output: rows keyed `{"e164": "+1…"}` with value
//! `{"e164", "aci": 16 bytes, "pni": bytes | null, "uak": bytes | null}`. A fresh client gets
//! `clear_all`, the live numbers whose account is in its shard in messages of at most
//! [`MAX_RECORDS`] records, then changes; a client with a token gets only the changes after
//! it. A change is the number's current state: a record, or an empty `aci` ("remove this
//! e164") when the number was deleted or its account is now outside the shard.
//!
//! Tokens name the view and the shard, so a token presented with another shard starts the
//! client afresh instead of sending it changes that say nothing about its new range.

use std::sync::Arc;

use sluice_served::{Entry, ServedView, Value};
use tonic::{Request, Response, Status};

use crate::follow::{self, Batch, Known, Source};
use crate::outbox::{self, ClientStream};
use crate::proto::org::signal::account_data_stream::Record;
use crate::proto::org::signal::account_stream_service_server::AccountStreamService;
use crate::proto::org::signal::{AccountDataRequest, AccountDataStream, Shard};
use crate::{Shared, auth, token};

/// The most records in one message (the original's batch size; clients size buffers by it).
pub const MAX_RECORDS: usize = 4000;
/// The metadata key of the shared secret.
const AUTH_HEADER: &str = "x-signal-auth-token";

/// The service over one directory view.
pub(crate) struct AccountStream {
    pub view: ServedView,
    pub auth_token: Option<String>,
    pub shared: Shared,
}

/// A range of account uuids as unsigned 128-bit integers: start inclusive, limit exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: Option<u128>,
    limit: Option<u128>,
}

impl Range {
    fn parse(shard: Option<&Shard>) -> Result<Range, Status> {
        let end = |bytes: Option<&Vec<u8>>, name: &str| match bytes.map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some(bytes) => <[u8; 16]>::try_from(bytes)
                .map(|b| Some(u128::from_be_bytes(b)))
                .map_err(|_| Status::invalid_argument(format!("shard {name} must be empty or 16 bytes"))),
        };
        let range = Range {
            start: end(shard.map(|s| &s.start), "start")?,
            limit: end(shard.map(|s| &s.limit), "limit")?,
        };
        if let (Some(start), Some(limit)) = (range.start, range.limit)
            && start >= limit
        {
            return Err(Status::invalid_argument("shard start must be below its limit"));
        }
        Ok(range)
    }

    fn contains(&self, uuid: u128) -> bool {
        self.start.is_none_or(|s| s <= uuid) && self.limit.is_none_or(|l| uuid < l)
    }

    /// The range as part of a token's output name.
    fn name(&self) -> String {
        let end = |e: Option<u128>| e.map_or(String::new(), |e| format!("{e:032x}"));
        format!("[{}..{})", end(self.start), end(self.limit))
    }
}

#[tonic::async_trait]
impl AccountStreamService for AccountStream {
    type StreamAccountDataStream = ClientStream<AccountDataStream>;

    async fn stream_account_data(
        &self,
        request: Request<AccountDataRequest>,
    ) -> Result<Response<Self::StreamAccountDataStream>, Status> {
        auth::check_secret(request.metadata(), AUTH_HEADER, self.auth_token.as_deref())?;
        let request = request.into_inner();
        let range = Range::parse(request.shard.as_ref())?;
        let output = format!("{} {}", self.view.name(), range.name());
        let key = Arc::clone(&self.shared.token_key);
        let start = follow::start_from(
            &key,
            &output,
            &request.last_continuation_token,
            self.view.progress(),
            true,
        )?;
        let (mut out, stream) = outbox::channel(self.shared.limits, self.shared.shutdown.clone());
        let view = self.view.clone();
        tokio::spawn(async move {
            let source = Source {
                view: &view,
                partition: &Value::Null,
                batch_size: MAX_RECORDS,
            };
            let select = |entry: &Entry, known| record(entry, known, &range);
            let shape = |batch: Batch<Record>| Some(message(batch, &key, &output));
            let stop = follow::follow(source, start, &mut out, select, shape).await;
            tracing::debug!(view = view.name(), ?stop, "account stream ended");
            out.finish(stop);
        });
        Ok(Response::new(stream))
    }
}

fn message(batch: Batch<Record>, key: &[u8], output: &str) -> AccountDataStream {
    AccountDataStream {
        clear_all: batch.reset,
        records: batch.items,
        continuation_token: batch.through.map_or_else(Vec::new, |t| token::issue(key, output, t)),
        dataset_current: batch.current,
    }
}

/// The record for a directory entry: its number's state as the client should hold it.
fn record(entry: &Entry, known: Known, range: &Range) -> Option<Record> {
    let e164_text = entry
        .value
        .as_ref()
        .and_then(|v| v.get("e164"))
        .or_else(|| entry.key.get("e164"))
        .and_then(Value::as_str);
    let Some(e164) = e164_text.and_then(parse_e164) else {
        tracing::warn!(key = %entry.key, "directory entry without a usable e164; skipped");
        return None;
    };
    let remove = Record {
        e164,
        ..Record::default()
    };
    let Some(value) = &entry.value else {
        return (known == Known::Maybe).then_some(remove);
    };
    let aci = match value.get("aci") {
        Some(Value::Bytes(aci)) => <[u8; 16]>::try_from(&aci[..]).ok(),
        _ => None,
    };
    let Some(aci) = aci else {
        // Unservable: tell a client that may hold the number to drop it rather than keep a
        // state the directory no longer has.
        tracing::warn!(key = %entry.key, "directory entry without a 16-byte aci; sent as a removal");
        return (known == Known::Maybe).then_some(remove);
    };
    if !range.contains(u128::from_be_bytes(aci)) {
        return (known == Known::Maybe).then_some(remove);
    }
    Some(Record {
        e164,
        aci: aci.to_vec(),
        pni: bytes(value.get("pni")),
        uak: bytes(value.get("uak")),
    })
}

/// The digits of `+digits` as the wire's int64.
fn parse_e164(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('+')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn bytes(value: Option<&Value>) -> Vec<u8> {
    match value {
        Some(Value::Bytes(b)) => b.to_vec(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_digits() {
        assert_eq!(parse_e164("+15550000011"), Some(15_550_000_011));
        for bad in ["15550000011", "+", "+1-555", "+ 1", "+99999999999999999999", "+-1"] {
            assert_eq!(parse_e164(bad), None, "{bad}");
        }
    }

    #[test]
    fn shard_ranges() {
        let shard = |start: Vec<u8>, limit: Vec<u8>| Range::parse(Some(&Shard { start, limit }));
        let open = shard(vec![], vec![]).ok();
        assert_eq!(
            open,
            Some(Range {
                start: None,
                limit: None
            })
        );
        assert_eq!(Range::parse(None).ok(), open);
        let mid = shard(vec![0x80; 16], vec![]).ok();
        assert!(mid.is_some_and(|r| r.contains(u128::MAX) && !r.contains(0x7f << 120)));
        assert!(shard(vec![1; 15], vec![]).is_err());
        assert!(shard(vec![], vec![1; 17]).is_err());
        assert!(shard(vec![2; 16], vec![2; 16]).is_err());
        assert!(shard(vec![3; 16], vec![2; 16]).is_err());
        let r = shard(vec![1; 16], vec![2; 16]).ok();
        assert!(
            r.is_some_and(|r| r.contains(u128::from_be_bytes([1; 16])) && !r.contains(u128::from_be_bytes([2; 16])))
        );
    }
}
