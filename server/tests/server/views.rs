//! `sluice.v1.Views/Subscribe`, server configuration and shutdown.

use std::time::Duration;

use sluice_runtime::{Row, Value};
use sluice_server::proto::sluice::v1::views_client::ViewsClient;
use sluice_server::proto::sluice::v1::{SubscribeRequest, SubscribeResponse};
use sluice_server::{ServerError, ServerHandle};
use tonic::{Code, Streaming};

use crate::support::{self, Fed, next, quiet};

const SECRET: &str = "subscribe secret";

fn row(k: i64, v: &str) -> Row {
    Row::derived(
        support::map([("k", Value::Int(k))]),
        support::map([("k", Value::Int(k)), ("v", Value::str(v))]),
    )
}

fn feed_row(user: &str, id: &str, timestamp: i64) -> Row {
    Row::derived(
        support::map([("user", Value::str(user)), ("id", Value::str(id))]),
        support::map([("id", Value::str(id)), ("timestamp", Value::Int(timestamp))]),
    )
}

fn serve(views: &[&Fed]) -> ServerHandle {
    let mut config = support::config();
    for fed in views {
        config.views.insert(fed.view.name().to_owned(), fed.view.clone());
    }
    config.subscribe_token = Some(SECRET.to_owned());
    sluice_server::start(config).expect("server starts")
}

async fn subscribe(
    server: &ServerHandle,
    output: &str,
    partition: &str,
    token: Vec<u8>,
) -> Result<Streaming<SubscribeResponse>, tonic::Status> {
    let mut client = ViewsClient::new(support::channel(server.grpc_addr()).await);
    let request = SubscribeRequest {
        output: output.to_owned(),
        token,
        partition: partition.to_owned(),
    };
    let response = client
        .subscribe(support::request(request, &[("x-sluice-auth-token", SECRET)]))
        .await?;
    Ok(response.into_inner())
}

/// `(key JSON, value JSON, diff)` of each change.
fn changes(message: &SubscribeResponse) -> Vec<(String, String, i64)> {
    message
        .changes
        .iter()
        .map(|c| (c.key.clone(), c.value.clone(), c.diff))
        .collect()
}

#[tokio::test]
async fn subscribe_snapshot_changes_and_resume() {
    let base = support::now_ms() + 60_000;
    let mut counts = Fed::new("counts", None, None, None);
    counts.step(base, vec![(row(1, "a"), 1), (row(2, "b"), 1), (row(3, "c"), 1)]);
    counts.step(base + 10, vec![(row(3, "c"), -1)]);
    let mut feed = Fed::new("feed", Some("user"), Some("timestamp"), None);
    feed.step(
        1,
        vec![(feed_row("ann", "m1", 100), 1), (feed_row("bob", "m2", 200), 1)],
    );
    let server = serve(&[&counts, &feed]);

    let mut client = ViewsClient::new(support::channel(server.grpc_addr()).await);
    let unauthenticated = client
        .subscribe(SubscribeRequest {
            output: "counts".into(),
            ..SubscribeRequest::default()
        })
        .await
        .expect_err("no auth");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let status = subscribe(&server, "nope", "", vec![])
        .await
        .expect_err("unknown output");
    assert_eq!(status.code(), Code::NotFound);
    for (output, partition) in [("counts", "\"ann\""), ("feed", ""), ("feed", "{not json")] {
        let status = subscribe(&server, output, partition, vec![])
            .await
            .expect_err("bad partition");
        assert_eq!(status.code(), Code::InvalidArgument, "{output} {partition}");
    }

    let mut live = subscribe(&server, "counts", "", vec![]).await.expect("subscribe");
    let reset = next(&mut live).await;
    assert!(reset.reset && reset.changes.is_empty() && reset.token.is_empty() && !reset.current);
    let snapshot = next(&mut live).await;
    assert!(!snapshot.reset && snapshot.current && !snapshot.token.is_empty());
    assert_eq!(snapshot.frontier, base + 11);
    assert_eq!(
        changes(&snapshot),
        vec![
            (r#"{"k":1}"#.into(), r#"{"k":1,"v":"a"}"#.into(), 1),
            (r#"{"k":2}"#.into(), r#"{"k":2,"v":"b"}"#.into(), 1),
        ]
    );
    assert_eq!(snapshot.changes[0].time, base);
    quiet(&mut live).await;

    counts.step(base + 20, vec![(row(1, "a"), -1), (row(1, "A"), 1), (row(2, "b"), -1)]);
    let update = next(&mut live).await;
    let expected = vec![
        (r#"{"k":1}"#.to_owned(), r#"{"k":1,"v":"A"}"#.to_owned(), 1),
        (r#"{"k":2}"#.to_owned(), String::new(), -1),
    ];
    assert_eq!(changes(&update), expected);
    assert!(update.current && update.frontier == base + 21 && !update.token.is_empty());

    let mut resumed = subscribe(&server, "counts", "", snapshot.token.clone())
        .await
        .expect("resume");
    let first = next(&mut resumed).await;
    assert!(!first.reset && first.current);
    assert_eq!(changes(&first), expected);
    quiet(&mut resumed).await;

    // A token names its output (and partition): elsewhere it is refused.
    let status = subscribe(&server, "feed", "\"ann\"", snapshot.token.clone())
        .await
        .expect_err("other output");
    assert_eq!(status.code(), Code::InvalidArgument);

    // A partitioned view: the partition's entries only.
    let mut anns = subscribe(&server, "feed", " \"ann\" ", vec![])
        .await
        .expect("partition");
    assert!(next(&mut anns).await.reset);
    let snapshot = next(&mut anns).await;
    assert_eq!(snapshot.changes.len(), 1);
    assert_eq!(snapshot.changes[0].key, r#"{"id":"m1","user":"ann"}"#);
    feed.step(
        2,
        vec![(feed_row("bob", "m3", 300), 1), (feed_row("ann", "m3", 300), 1)],
    );
    let update = next(&mut anns).await;
    assert_eq!(
        update.changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        vec![r#"{"id":"m3","user":"ann"}"#]
    );
    let status = subscribe(&server, "feed", "\"bob\"", update.token.clone())
        .await
        .expect_err("other partition");
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut again = subscribe(&server, "feed", "\"ann\"", snapshot.token.clone())
        .await
        .expect("resume");
    let first = next(&mut again).await;
    assert_eq!(
        first.changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        vec![r#"{"id":"m3","user":"ann"}"#]
    );
    support::stop(server).await;
}

#[tokio::test]
async fn stop_ends_open_streams() {
    let mut counts = Fed::new("counts", None, None, None);
    counts.step(support::now_ms() + 60_000, vec![(row(1, "a"), 1)]);
    let server = serve(&[&counts]);
    let mut stream = subscribe(&server, "counts", "", vec![]).await.expect("subscribe");
    assert!(next(&mut stream).await.reset);
    assert!(next(&mut stream).await.current);
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    let status = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("ended within 5s")
        .expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped within 10s")
        .expect("stop did not panic");
}

#[tokio::test]
async fn configuration_errors() {
    let taken = sluice_server::start(support::config()).expect("server starts");
    let mut config = support::config();
    config.http = taken.http_addr();
    assert!(matches!(sluice_server::start(config), Err(ServerError::Bind { .. })));

    let mut config = support::config();
    config.client_buffer = 0;
    assert!(matches!(sluice_server::start(config), Err(ServerError::Config(_))));
    let mut config = support::config();
    config.grpc = None;
    config.http = None;
    assert!(matches!(sluice_server::start(config), Err(ServerError::Config(_))));
    let mut config = support::config();
    let counts = Fed::new("counts", None, None, None);
    config.views.insert("counts".into(), counts.view.clone());
    config.token_key = b"short".to_vec();
    assert!(matches!(sluice_server::start(config), Err(ServerError::Config(_))));
    support::stop(taken).await;
}
