//! `sluice.v1.Messages` and the HTTP feed routes against a started server.

use serde_json::{Value as Json, json};
use sluice_runtime::{Diff, Row, Value};
use sluice_server::proto::sluice::v1::messages_client::MessagesClient;
use sluice_server::proto::sluice::v1::{ChangesRequest, Message, WatchRequest};
use sluice_server::{MessagesConfig, ServerHandle, jwt};
use tonic::Code;

use crate::support::{self, Fed, JWT_SECRET, get, next, quiet};

fn id(n: u64) -> String {
    format!("{n:024x}")
}

/// A feed entry of message `n` for `user`, as the messages dataflow writes it.
fn entry(user: &str, n: u64, timestamp: i64, from: &str, to: &str, text: &str) -> Row {
    let key = support::map([("user", Value::str(user)), ("id", Value::str(id(n)))]);
    let value = support::map([
        ("id", Value::str(id(n))),
        ("timestamp", Value::Int(timestamp)),
        ("from", Value::str(from)),
        ("to", Value::str(to)),
        ("created", Value::Int(1_000)),
        ("edited", Value::Null),
        ("read", Value::Bool(false)),
        ("text", Value::str(text)),
        ("files", Value::list([Value::str("f".repeat(24))])),
    ]);
    Row::derived(key, value)
}

fn deleted(user: &str, n: u64, timestamp: i64) -> Row {
    let key = support::map([("user", Value::str(user)), ("id", Value::str(id(n)))]);
    let value = support::map([
        ("id", Value::str(id(n))),
        ("timestamp", Value::Int(timestamp)),
        ("deleted", Value::Bool(true)),
    ]);
    Row::derived(key, value)
}

/// ann→bob (1, later deleted), bob→carl (2), ann→ann (3).
fn feed() -> Fed {
    let mut feed = Fed::new("feed", Some("user"), Some("timestamp"), None);
    let sent: Vec<(Row, Diff)> = vec![
        (entry("ann", 1, 100, "ann", "bob", "hi"), 1),
        (entry("bob", 1, 100, "ann", "bob", "hi"), 1),
        (entry("bob", 2, 200, "bob", "carl", "yo"), 1),
        (entry("carl", 2, 200, "bob", "carl", "yo"), 1),
        (entry("ann", 3, 300, "ann", "ann", "note"), 1),
    ];
    feed.step(10, sent);
    feed.step(
        20,
        vec![
            (entry("ann", 1, 100, "ann", "bob", "hi"), -1),
            (deleted("ann", 1, 400), 1),
            (entry("bob", 1, 100, "ann", "bob", "hi"), -1),
            (deleted("bob", 1, 400), 1),
        ],
    );
    feed
}

fn serve(feed: &Fed) -> ServerHandle {
    let mut config = support::config();
    config.messages = Some(MessagesConfig {
        view: feed.view.clone(),
        jwt_secret: JWT_SECRET.to_vec(),
    });
    sluice_server::start(config).expect("server starts")
}

fn bearer(user: &str) -> String {
    jwt::sign(JWT_SECRET, &json!({"sub": user, "exp": support::now_ms() / 1000 + 600}))
}

fn summary(messages: &[Message]) -> Vec<(String, u64, bool)> {
    messages
        .iter()
        .map(|m| (m.id.clone(), m.timestamp, m.deleted))
        .collect()
}

#[tokio::test]
async fn changes_and_watch_over_grpc() {
    let mut feed = feed();
    let server = serve(&feed);
    let mut client = MessagesClient::new(support::channel(server.grpc_addr()).await);
    let ann = format!("Bearer {}", bearer("ann"));
    let changes = |after, limit| support::request(ChangesRequest { after, limit }, &[("authorization", ann.as_str())]);

    let missing = client.changes(ChangesRequest::default()).await.expect_err("no bearer");
    assert_eq!(missing.code(), Code::Unauthenticated);
    let other_secret = jwt::sign(b"another secret", &json!({"sub": "ann"}));
    let forged = support::request(
        ChangesRequest::default(),
        &[("authorization", &format!("Bearer {other_secret}"))],
    );
    assert_eq!(
        client.changes(forged).await.expect_err("forged").code(),
        Code::Unauthenticated
    );
    let expired = jwt::sign(JWT_SECRET, &json!({"sub": "ann", "exp": 1}));
    let expired = support::request(
        ChangesRequest::default(),
        &[("authorization", &format!("Bearer {expired}"))],
    );
    assert_eq!(
        client.changes(expired).await.expect_err("expired").code(),
        Code::Unauthenticated
    );

    let all = client
        .changes(changes(0, 0))
        .await
        .expect("changes")
        .into_inner()
        .messages;
    assert_eq!(summary(&all), vec![(id(3), 300, false), (id(1), 400, true)]);
    let note = &all[0];
    assert_eq!(
        (note.from.as_str(), note.to.as_str(), note.text.as_str()),
        ("ann", "ann", "note")
    );
    assert_eq!(
        (note.created, note.edited, note.read, note.files.len()),
        (1_000, None, false, 1)
    );
    assert!(all[1].text.is_empty() && all[1].from.is_empty());
    let after = client
        .changes(changes(300, 0))
        .await
        .expect("changes")
        .into_inner()
        .messages;
    assert_eq!(summary(&after), vec![(id(1), 400, true)]);
    let limited = client
        .changes(changes(0, 1))
        .await
        .expect("changes")
        .into_inner()
        .messages;
    assert_eq!(summary(&limited), vec![(id(3), 300, false)]);
    assert!(
        client
            .changes(changes(400, 100))
            .await
            .expect("changes")
            .into_inner()
            .messages
            .is_empty()
    );
    let too_many = client.changes(changes(0, 101)).await.expect_err("limit 101");
    assert_eq!(too_many.code(), Code::InvalidArgument);

    // A user sees only their own feed.
    let carl = format!("Bearer {}", bearer("carl"));
    let request = support::request(ChangesRequest::default(), &[("authorization", carl.as_str())]);
    let carls = client.changes(request).await.expect("changes").into_inner().messages;
    assert_eq!(summary(&carls), vec![(id(2), 200, false)]);

    let watch = support::request(WatchRequest { after: 100 }, &[("authorization", ann.as_str())]);
    let mut watch = client.watch(watch).await.expect("watch").into_inner();
    assert_eq!(
        summary(&next(&mut watch).await.messages),
        vec![(id(3), 300, false), (id(1), 400, true)]
    );
    quiet(&mut watch).await;
    feed.step(
        30,
        vec![
            (entry("ann", 4, 500, "carl", "ann", "hey"), 1),
            (entry("carl", 4, 500, "carl", "ann", "hey"), 1),
        ],
    );
    assert_eq!(summary(&next(&mut watch).await.messages), vec![(id(4), 500, false)]);
    quiet(&mut watch).await;
    support::stop(server).await;
}

#[tokio::test]
async fn http_routes() {
    let feed = feed();
    let server = serve(&feed);
    let addr = server.http_addr();
    let ann = bearer("ann");

    let health = get(addr, "/health", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert!(health.content_type.starts_with("text/plain"), "{health:?}");

    for path in ["/messages?after=0", "/messages/x"] {
        assert_eq!(get(addr, path, None).await.status, 401, "{path}");
        assert_eq!(get(addr, path, Some("not.a.jwt")).await.status, 401, "{path}");
    }

    for bad in [
        "after=-1",
        "after=x",
        "after=1.5",
        "limit=0",
        "limit=101",
        "limit=ten",
        "after=1&limit=-3",
    ] {
        let response = get(addr, &format!("/messages?{bad}"), Some(&ann)).await;
        assert_eq!(response.status, 400, "{bad}: {response:?}");
        assert!(response.content_type.starts_with("text/plain"), "{bad}: {response:?}");
        assert!(!response.body.is_empty());
    }

    let page = get(addr, "/messages?after=0&limit=100", Some(&ann)).await;
    assert_eq!(
        (page.status, page.content_type.as_str()),
        (200, "application/vnd.messageUpdates.v1+json")
    );
    let body: Json = serde_json::from_str(&page.body).expect("JSON body");
    assert_eq!(body["total"], 2);
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["id"], id(3));
    assert_eq!(messages[0]["timestamp"], 300);
    assert_eq!(messages[0]["text"], "note");
    assert!(messages[0].get("user").is_none());
    assert_eq!(messages[1], json!({"id": id(1), "timestamp": 400, "deleted": true}));
    let limited: Json = serde_json::from_str(&get(addr, "/messages?limit=1", Some(&ann)).await.body).expect("JSON");
    assert_eq!(limited["total"], 1);

    let empty = get(addr, "/messages?after=400", Some(&ann)).await;
    assert_eq!(empty.status, 200);
    assert_eq!(
        serde_json::from_str::<Json>(&empty.body).expect("JSON"),
        json!({"total": 0})
    );

    let own = get(addr, &format!("/messages/{}", id(3)), Some(&ann)).await;
    assert_eq!((own.status, own.content_type.as_str()), (200, "application/json"));
    let own: Json = serde_json::from_str(&own.body).expect("JSON");
    assert_eq!(
        (own["id"].clone(), own["text"].clone(), own.get("user")),
        (json!(id(3)), json!("note"), None)
    );
    let others = get(addr, &format!("/messages/{}", id(2)), Some(&ann)).await;
    assert_eq!(others.status, 404, "bob and carl's message is not ann's");
    assert_eq!(get(addr, &format!("/messages/{}", id(9)), Some(&ann)).await.status, 404);
    assert_eq!(get(addr, "/nothing", None).await.status, 404);
    support::stop(server).await;
}

#[tokio::test]
async fn without_a_feed_only_health_is_served() {
    let server = sluice_server::start(support::config()).expect("server starts");
    assert_eq!(get(server.http_addr(), "/health", None).await.status, 200);
    assert_eq!(
        get(server.http_addr(), "/messages", Some(&bearer("ann"))).await.status,
        404
    );
    support::stop(server).await;
}
