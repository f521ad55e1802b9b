//! `org.signal.AccountStreamService/StreamAccountData` against a started server.

use std::sync::Arc;
use std::time::Duration;

use sluice_runtime::{Diff, Row, Value};
use sluice_server::proto::org::signal::account_data_stream::Record;
use sluice_server::proto::org::signal::account_stream_service_client::AccountStreamServiceClient;
use sluice_server::proto::org::signal::{AccountDataRequest, AccountDataStream, Shard};
use sluice_server::{AccountStreamConfig, ServerHandle};
use tonic::{Code, Streaming};

use crate::support::{self, Fed, next, quiet};

const SECRET: &str = "cds secret";

fn number(n: u64) -> String {
    format!("+1555{n:07}")
}

/// The directory row of number `n`, its account's uuid all `aci` bytes.
fn account(n: u64, aci: u8, with_keys: bool) -> Row {
    let bytes = |b: u8| Value::Bytes(Arc::from(vec![b; 16]));
    let key = support::map([("e164", Value::str(number(n)))]);
    let value = support::map([
        ("e164", Value::str(number(n))),
        ("aci", bytes(aci)),
        ("pni", if with_keys { bytes(aci ^ 0xff) } else { Value::Null }),
        (
            "uak",
            if with_keys {
                Value::Bytes(Arc::from(vec![7u8; 16]))
            } else {
                Value::Null
            },
        ),
    ]);
    Row::derived(key, value)
}

fn shard(start: u8, limit: u8) -> Option<Shard> {
    Some(Shard {
        start: vec![start; 16],
        limit: vec![limit; 16],
    })
}

fn serve(directory: &Fed, auth: Option<&str>, tune: impl FnOnce(&mut sluice_server::ServerConfig)) -> ServerHandle {
    let mut config = support::config();
    config.account_stream = Some(AccountStreamConfig {
        view: directory.view.clone(),
        auth_token: auth.map(str::to_owned),
    });
    tune(&mut config);
    sluice_server::start(config).expect("server starts")
}

async fn open(
    server: &ServerHandle,
    shard: Option<Shard>,
    token: Vec<u8>,
) -> Result<Streaming<AccountDataStream>, tonic::Status> {
    let mut client = AccountStreamServiceClient::new(support::channel(server.grpc_addr()).await);
    let request = AccountDataRequest {
        shard,
        last_continuation_token: token,
    };
    let response = client
        .stream_account_data(support::request(request, &[("x-signal-auth-token", SECRET)]))
        .await?;
    Ok(response.into_inner())
}

/// `(e164, first aci byte)` of each record, 0 for a removal.
fn records(message: &AccountDataStream) -> Vec<(i64, u8)> {
    message
        .records
        .iter()
        .map(|r| (r.e164, r.aci.first().copied().unwrap_or(0)))
        .collect()
}

fn e164(n: u64) -> i64 {
    number(n)[1..].parse().expect("digits")
}

/// The spec's snapshot scenario: 11 and 13 in the shard, 21 outside, 12 deleted before.
fn scenario(base: u64) -> Fed {
    let mut directory = Fed::new("directory", None, None, None);
    directory.step(
        base,
        vec![
            (account(11, 0x11, true), 1),
            (account(12, 0x12, false), 1),
            (account(13, 0x13, false), 1),
            (account(21, 0x21, false), 1),
        ],
    );
    directory.step(base + 10, vec![(account(12, 0x12, false), -1)]);
    directory
}

#[tokio::test]
async fn authentication_and_bad_requests() {
    let directory = scenario(support::now_ms() + 60_000);
    let server = serve(&directory, Some(SECRET), |_| {});
    let mut client = AccountStreamServiceClient::new(support::channel(server.grpc_addr()).await);
    let request = || AccountDataRequest::default();

    let missing = client.stream_account_data(request()).await.expect_err("no auth header");
    assert_eq!(
        (missing.code(), missing.message()),
        (Code::Unauthenticated, "no authorization")
    );
    let wrong = client
        .stream_account_data(support::request(request(), &[("x-signal-auth-token", "guess")]))
        .await
        .expect_err("wrong secret");
    assert_eq!((wrong.code(), wrong.message()), (Code::Unauthenticated, "bad token"));

    for bad in [
        shard(0x20, 0x20),
        shard(0x30, 0x20),
        Some(Shard {
            start: vec![1; 15],
            limit: vec![],
        }),
        Some(Shard {
            start: vec![],
            limit: vec![1; 17],
        }),
    ] {
        let status = open(&server, bad.clone(), vec![]).await.expect_err("bad shard");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    let forged = sluice_server::token::issue(b"not the server's key, not at all", "directory", 1);
    let status = open(&server, None, forged).await.expect_err("forged token");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = open(&server, None, vec![1, 2, 3]).await.expect_err("garbage token");
    assert_eq!(status.code(), Code::InvalidArgument);
    support::stop(server).await;
}

#[tokio::test]
async fn snapshot_then_updates_then_resume_by_token() {
    let base = support::now_ms() + 60_000;
    let mut directory = scenario(base);
    let server = serve(&directory, Some(SECRET), |_| {});

    let mut live = open(&server, shard(0x10, 0x20), vec![]).await.expect("stream");
    let clear = next(&mut live).await;
    assert!(clear.clear_all && clear.records.is_empty() && clear.continuation_token.is_empty());
    let snapshot = next(&mut live).await;
    assert!(!snapshot.clear_all && snapshot.dataset_current && !snapshot.continuation_token.is_empty());
    assert_eq!(records(&snapshot), vec![(e164(11), 0x11), (e164(13), 0x13)]);
    let eleven = &snapshot.records[0];
    assert_eq!((eleven.pni.clone(), eleven.uak.clone()), (vec![0xee; 16], vec![7; 16]));
    let thirteen = &snapshot.records[1];
    assert!(thirteen.pni.is_empty() && thirteen.uak.is_empty());
    quiet(&mut live).await;

    // 13 moves to an account outside the shard, 11 is deleted, 14 is new, 21 (outside) changes.
    directory.step(
        base + 20,
        vec![
            (account(13, 0x13, false), -1),
            (account(13, 0x30, false), 1),
            (account(11, 0x11, true), -1),
            (account(14, 0x14, false), 1),
            (account(21, 0x21, false), -1),
            (account(21, 0x22, false), 1),
        ],
    );
    let update = next(&mut live).await;
    assert!(!update.clear_all && update.dataset_current && !update.continuation_token.is_empty());
    let mut got = records(&update);
    got.sort();
    assert_eq!(got, vec![(e164(11), 0), (e164(13), 0), (e164(14), 0x14), (e164(21), 0)]);
    quiet(&mut live).await;

    // Resuming from the snapshot's token: only what changed since, no clear, no snapshot.
    let mut resumed = open(&server, shard(0x10, 0x20), snapshot.continuation_token.clone())
        .await
        .expect("resume");
    let first = next(&mut resumed).await;
    assert!(!first.clear_all && first.dataset_current && !first.continuation_token.is_empty());
    let mut got = records(&first);
    got.sort();
    assert_eq!(got, vec![(e164(11), 0), (e164(13), 0), (e164(14), 0x14), (e164(21), 0)]);
    quiet(&mut resumed).await;

    // Resuming from the newest token: nothing changed, but the client learns it is current.
    let mut current = open(&server, shard(0x10, 0x20), update.continuation_token.clone())
        .await
        .expect("resume");
    let first = next(&mut current).await;
    assert!(!first.clear_all && first.dataset_current && first.records.is_empty());
    assert!(!first.continuation_token.is_empty());
    quiet(&mut current).await;

    // A genuine token presented with another shard says nothing about it: start afresh.
    let mut other = open(&server, None, update.continuation_token.clone())
        .await
        .expect("other shard");
    assert!(next(&mut other).await.clear_all);
    let mut got = records(&next(&mut other).await);
    got.sort();
    assert_eq!(got, vec![(e164(13), 0x30), (e164(14), 0x14), (e164(21), 0x22)]);

    // A token with a flipped byte is refused.
    let mut forged = update.continuation_token.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let status = open(&server, shard(0x10, 0x20), forged).await.expect_err("forged");
    assert_eq!(status.code(), Code::InvalidArgument);
    support::stop(server).await;
}

#[tokio::test]
async fn a_token_older_than_the_horizon_gets_a_fresh_snapshot() {
    let base = support::now_ms() + 60_000;
    let mut directory = Fed::new("directory", None, None, Some(1_000));
    directory.step(base, vec![(account(11, 0x11, false), 1), (account(12, 0x12, false), 1)]);
    let server = serve(&directory, None, |_| {});
    let mut stream = open(&server, None, vec![]).await.expect("stream");
    assert!(next(&mut stream).await.clear_all);
    let old = next(&mut stream).await.continuation_token;
    // 12 is deleted, and its tombstone dropped once the retention has passed: a client
    // through the old frontier would never learn of the deletion.
    directory.step(base + 10, vec![(account(12, 0x12, false), -1)]);
    directory.advance(base + 5_000);
    assert!(directory.view.progress().horizon > base + 1);

    let mut resumed = open(&server, None, old).await.expect("resume");
    let first = next(&mut resumed).await;
    assert!(first.clear_all, "reset expected, got {first:?}");
    let snapshot = next(&mut resumed).await;
    assert_eq!(records(&snapshot), vec![(e164(11), 0x11)]);
    support::stop(server).await;
}

#[tokio::test]
async fn a_stalled_client_is_ended_while_another_keeps_receiving() {
    const ACCOUNTS: u64 = 60_000;
    let base = support::now_ms() + 60_000;
    let mut directory = Fed::new("directory", None, None, None);
    let rows: Vec<(Row, Diff)> = (0..ACCOUNTS).map(|n| (account(n, 0x40, true), 1)).collect();
    directory.step(base, rows);
    let server = serve(&directory, None, |config| {
        config.client_buffer = 2;
        config.stall_timeout = Duration::from_millis(300);
    });

    // Small HTTP/2 windows: the transport stops taking data soon after the client stops reading.
    let slow_channel = support::endpoint(server.grpc_addr())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut slow_client = AccountStreamServiceClient::new(slow_channel);
    let mut slow = slow_client
        .stream_account_data(AccountDataRequest::default())
        .await
        .expect("slow stream")
        .into_inner();
    assert!(next(&mut slow).await.clear_all);

    // Meanwhile a reading client gets the whole snapshot and a later update.
    let mut fast = open(&server, None, vec![]).await.expect("fast stream");
    assert!(next(&mut fast).await.clear_all);
    let mut received = 0;
    loop {
        let message = next(&mut fast).await;
        assert_eq!(message.records.len(), sluice_server::MAX_RECORDS);
        received += message.records.len();
        if message.dataset_current {
            assert!(!message.continuation_token.is_empty());
            break;
        }
        assert!(message.continuation_token.is_empty());
    }
    assert_eq!(received, ACCOUNTS as usize);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    directory.step(base + 10, vec![(account(ACCOUNTS, 0x41, false), 1)]);
    let update = next(&mut fast).await;
    assert_eq!(
        update.records.iter().map(|r: &Record| r.e164).collect::<Vec<_>>(),
        vec![e164(ACCOUNTS)]
    );

    // The slow client, reading at last, gets what was buffered, then RESOURCE_EXHAUSTED.
    let mut slow_records = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.message())
            .await
            .expect("not stuck")
        {
            Ok(Some(message)) => slow_records += message.records.len(),
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too slow"));
    assert!(slow_records < ACCOUNTS as usize, "the stalled client got everything");
    support::stop(server).await;
}
