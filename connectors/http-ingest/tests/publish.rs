//! The endpoint over real HTTP on 127.0.0.1: authentication, bodies, limits, and what the
//! log holds afterwards.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use serde_json::json;
use sluice_connector_http_ingest::partition_of;
use sluice_runtime::source::{Lag, Position, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn published_events_are_read_back_as_topic_and_data_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    let addr = source.local_addr();
    let client = reqwest::Client::new();

    let data = json!({"body": {"x": 1}, "headers": {"y": "z"}});
    let lower = format!("bearer {}", token());
    let answer = post(&client, addr, "/publish", Some(&lower), publish_body("orders", &data)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json(), json!({"partition": "p0", "offset": 1}));

    // Upper-case scheme and keys, URL-safe base64 without padding, pretty-printed data.
    let pretty = "{\n  \"body\": {\"q\": \"a b\"},\n  \"http_method\": \"put\"\n}";
    let body = json!({"TOPIC": "orders", "payload": URL_SAFE_NO_PAD.encode(pretty)}).to_string();
    let upper = format!("BEARER {}", token());
    let answer = post(&client, addr, "/publish", Some(&upper), body).await;
    assert_eq!(answer.json(), json!({"partition": "p0", "offset": 2}));

    let auth = format!("Bearer {}", token());
    let answer = post(
        &client,
        addr,
        "/v1/topics/invoices/events",
        Some(&auth),
        r#"{"body": {}}"#.into(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json(), json!({"partition": "p0", "offset": 3}));

    let records = read(&source, "p0", &Position::Start);
    let lines: Vec<String> = records.iter().map(text).collect();
    assert_eq!(
        lines,
        [
            r#"{"topic":"orders","data":{"body":{"x":1},"headers":{"y":"z"}}}"#,
            r#"{"topic":"orders","data":{"body":{"q":"a b"},"http_method":"put"}}"#,
            r#"{"topic":"invoices","data":{"body":{}}}"#,
        ]
    );
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(records.iter().all(|r| r.key.is_none()));
    drop(client);
}

#[tokio::test]
async fn refused_tokens_get_401_and_nothing_is_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    let addr = source.local_addr();
    let client = reqwest::Client::new();
    let claims = json!({"sub": "tests", "exp": now() + 3600});
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let cases = [
        (None, "missing bearer token"),
        (Some(format!("Basic {}", token())), "missing bearer token"),
        (Some("Bearer".to_owned()), "missing bearer token"),
        (
            Some(format!("Bearer {}", sluice_auth::jwt::sign(b"another secret", &claims))),
            "signature",
        ),
        (Some(format!("Bearer {none}")), "algorithm"),
        (
            Some(format!(
                "Bearer {}",
                sluice_auth::jwt::sign_with_header(SECRET, r#"{"alg":"HS512","typ":"JWT"}"#, &claims)
            )),
            "algorithm",
        ),
        (
            Some(format!(
                "Bearer {}",
                sluice_auth::jwt::sign(SECRET, &json!({"exp": now() - 10}))
            )),
            "expired",
        ),
        (
            Some(format!(
                "Bearer {}",
                sluice_auth::jwt::sign(SECRET, &json!({"nbf": now() + 600}))
            )),
            "not yet valid",
        ),
        (Some("Bearer not.a.token".to_owned()), "malformed"),
    ];
    for (auth, reason) in cases {
        for path in ["/publish", "/v1/topics/orders/events"] {
            let body = if path == "/publish" {
                publish_body("orders", &json!({"x": 1}))
            } else {
                r#"{"x": 1}"#.to_owned()
            };
            let answer = post(&client, addr, path, auth.as_deref(), body).await;
            assert_eq!(answer.status, 401, "{auth:?} {path}: {}", answer.text);
            assert_eq!(answer.www_authenticate.as_deref(), Some("Bearer"), "{auth:?}");
            assert!(answer.text.contains(reason), "{auth:?}: {}", answer.text);
        }
    }
    assert_eq!(source.durable_end("p0"), Some(Position::Line { byte: 0, line: 0 }));
    assert!(read(&source, "p0", &Position::Start).is_empty());
    // A token without `sub` is fine: the endpoint checks who signed it, not who it names.
    let bare = format!("Bearer {}", sluice_auth::jwt::sign(SECRET, &json!({})));
    let answer = post(&client, addr, "/publish", Some(&bare), publish_body("t", &json!({}))).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    drop(client);
}

#[tokio::test]
async fn bad_bodies_get_400_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    let addr = source.local_addr();
    let client = reqwest::Client::new();
    let auth = format!("Bearer {}", token());
    let cases = [
        ("/publish", "{\"Topic\": \"t\", ".to_owned(), "not JSON"),
        ("/publish", "[1, 2]".to_owned(), "JSON object"),
        (
            "/publish",
            r#"{"Topic": "t", "Payload": "%%%"}"#.to_owned(),
            "not base64",
        ),
        (
            "/publish",
            json!({"Topic": "t", "Payload": STANDARD.encode("[1, 2]")}).to_string(),
            "not an array",
        ),
        (
            "/publish",
            json!({"Topic": "t", "Payload": STANDARD.encode("{\"a\": ")}).to_string(),
            "Payload is not JSON",
        ),
        (
            "/publish",
            json!({"Payload": STANDARD.encode("{}")}).to_string(),
            "no Topic",
        ),
        (
            "/publish",
            json!({"Topic": "", "Payload": STANDARD.encode("{}")}).to_string(),
            "Topic is empty",
        ),
        (
            "/publish",
            json!({"Topic": ["t"], "Payload": STANDARD.encode("{}")}).to_string(),
            "Topic as a string",
        ),
        (
            "/publish",
            format!(
                r#"{{"Topic": "t", "topic": "u", "Payload": "{}"}}"#,
                STANDARD.encode("{}")
            ),
            "Topic twice",
        ),
        ("/v1/topics/t/events", "[1]".to_owned(), "not an array"),
        ("/v1/topics/t/events", "{".to_owned(), "not JSON"),
        ("/v1/topics/t/events", "7".to_owned(), "must be a JSON object"),
    ];
    for (path, body, reason) in cases {
        let answer = post(&client, addr, path, Some(&auth), body.clone()).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        let error = answer.json()["error"].as_str().map(str::to_owned).expect("an error");
        assert!(error.contains(reason), "{body}: {error}");
    }
    let empty = post(&client, addr, "/v1/topics//events", Some(&auth), "{}".into()).await;
    assert_eq!(empty.status, 400, "{}", empty.text);
    assert!(empty.text.contains("topic is empty"), "{}", empty.text);
    assert!(read(&source, "p0", &Position::Start).is_empty());
    drop(client);
}

#[tokio::test]
async fn health_needs_no_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    let response = reqwest::get(format!("http://{}/health", source.local_addr()))
        .await
        .expect("health");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("text"), "ok");
}

/// Reads an HTTP/1.1 response head (and whatever followed it in the same reads).
async fn response_head(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = async {
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("a response before the body was sent");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 64 * 1024;
    let source = start(sluice_connector_http_ingest::IngestConfig {
        max_body_bytes: limit,
        ..config(dir.path())
    });
    let mut stream = TcpStream::connect(source.local_addr()).await.expect("connect");
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token(),
        limit + (1 << 20)
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // A few KB of the declared 1 MiB and more; the rest is never sent.
    stream.write_all(&[b' '; 4096]).await.expect("some body");
    let response = response_head(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(read(&source, "p0", &Position::Start).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_refused_once_it_passes_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 64 * 1024;
    let source = start(sluice_connector_http_ingest::IngestConfig {
        max_body_bytes: limit,
        ..config(dir.path())
    });
    let stream = TcpStream::connect(source.local_addr()).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/topics/t/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        token()
    );
    writer.write_all(head.as_bytes()).await.expect("head");
    // Chunks without end: only a server that stops reading at the limit ever answers.
    let sending = tokio::spawn(async move {
        let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, " ".repeat(16 * 1024));
        let mut sent = 0usize;
        while sent < 256 << 20 && writer.write_all(chunk.as_bytes()).await.is_ok() {
            sent += 16 * 1024;
        }
        sent
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = async {
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("an answer");
    let response = String::from_utf8_lossy(&seen);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    drop(reader);
    let sent = sending.await.expect("sender");
    assert!(sent < 256 << 20, "the server read the whole endless body");
    assert!(read(&source, "p0", &Position::Start).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_get_distinct_line_numbers_and_are_all_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    let addr = source.local_addr();
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let answer = publish(&client, addr, "load", &json!({"n": n})).await;
                assert_eq!(answer.status, 200, "{}", answer.text);
                (n, answer.json()["offset"].as_u64().expect("an offset"))
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.push(task.await.expect("task"));
    }
    let offsets: BTreeSet<u64> = acknowledged.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, (1..=200).collect());
    let records = read(&source, "p0", &Position::Start);
    assert_eq!(records.len(), 200);
    for (n, offset) in acknowledged {
        let record = &records[offset as usize - 1];
        assert_eq!(record.offset, offset);
        assert_eq!(payload(record), json!({"topic": "load", "data": {"n": n}}));
    }
    drop(client);
}

#[tokio::test]
async fn topics_keep_to_their_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(sluice_connector_http_ingest::IngestConfig {
        partitions: 4,
        ..config(dir.path())
    });
    let ids: Vec<String> = source.discover().expect("discover").into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["p0", "p1", "p2", "p3"]);
    assert!(!source.bounded());
    assert_eq!(source.offset_label(), "line");
    let client = reqwest::Client::new();
    let topics: Vec<String> = (0..12).map(|t| format!("topic-{t}")).collect();
    for round in 0..3 {
        for topic in &topics {
            let answer = publish(&client, source.local_addr(), topic, &json!({"round": round})).await;
            let expected = format!("p{}", partition_of(topic, 4));
            assert_eq!(answer.json()["partition"], json!(expected));
        }
    }
    let mut total = 0;
    for p in 0..4 {
        let records = read(&source, &format!("p{p}"), &Position::Start);
        total += records.len();
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.offset, i as u64 + 1);
            let line = payload(record);
            let topic = line["topic"].as_str().expect("topic");
            assert_eq!(partition_of(topic, 4), p);
        }
        // Each topic's events in publish order.
        for topic in &topics {
            let rounds: Vec<_> = records
                .iter()
                .map(payload)
                .filter(|l| l["topic"] == json!(topic))
                .map(|l| l["data"]["round"].clone())
                .collect();
            assert!(
                rounds.is_empty() || rounds == [json!(0), json!(1), json!(2)],
                "{topic}: {rounds:?}"
            );
        }
    }
    assert_eq!(total, 36);
    drop(client);
}

#[tokio::test]
async fn a_readers_lag_is_the_bytes_published_and_not_yet_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    let client = reqwest::Client::new();
    let mut reader = source.open(&partition("p0"), &Position::Start).expect("open");
    assert_eq!(reader.lag(), Some(Lag::Bytes(0)), "an empty log");
    let mut bytes = 0;
    for n in 0..3 {
        let answer = publish(&client, source.local_addr(), "orders", &json!({"n": n})).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        // The line the log holds, with its newline.
        bytes += format!(r#"{{"topic":"orders","data":{{"n":{n}}}}}"#).len() as u64 + 1;
    }
    assert_eq!(reader.lag(), Some(Lag::Bytes(bytes)));
    let mut out = Vec::new();
    reader.poll(&mut out, 1).expect("poll");
    assert_eq!(out.len(), 1);
    assert_eq!(reader.lag(), Some(Lag::Bytes(bytes - text(&out[0]).len() as u64 - 1)));
    assert_eq!(drain(reader.as_mut(), 10).len(), 2);
    assert_eq!(reader.lag(), Some(Lag::Bytes(0)));
    drop(client);
}

/// A `/v1/topics/t/events` body of exactly `len` bytes: `{"pad":"xx…"}`.
fn padded(len: usize) -> String {
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(len - 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_past_the_in_flight_budget_get_503_until_it_frees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kib = 1024;
    let source = start(sluice_connector_http_ingest::IngestConfig {
        max_body_bytes: 32 * kib,
        max_in_flight_bytes: 48 * kib,
        ..config(dir.path())
    });
    let addr = source.local_addr();
    let auth = format!("Bearer {}", token());

    // A publisher that declares 32 KiB and sends 100 bytes of it holds 32 KiB of the budget.
    let slow_body = padded(32 * kib);
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/topics/t/events HTTP/1.1\r\nHost: test\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        slow_body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(&slow_body.as_bytes()[..100]).await.expect("some body");

    // 20 KiB more does not fit; until the slow one's headers are handled it still may.
    let client = reqwest::Client::new();
    let mut accepted_before = 0;
    let refused = loop {
        let response = client
            .post(format!("http://{addr}/v1/topics/t/events"))
            .header("Authorization", &auth)
            .body(padded(20 * kib))
            .send()
            .await
            .expect("send");
        match response.status().as_u16() {
            200 if accepted_before < 50 => accepted_before += 1,
            _ => break response,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let reason = refused.text().await.expect("body");
    assert!(reason.contains("max_in_flight_bytes"), "{reason}");

    // What fits in the 16 KiB left is taken.
    let small = post(&client, addr, "/v1/topics/t/events", Some(&auth), padded(100)).await;
    assert_eq!(small.status, 200, "{}", small.text);

    // A chunked body reserves as it arrives: 8 KiB fits, the 24th KiB does not, so it gets
    // 503 (not 413: it is under the body limit) before the rest is sent.
    let mut chunked = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/topics/t/events HTTP/1.1\r\nHost: test\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    chunked.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 8 * kib, " ".repeat(8 * kib));
    for _ in 0..3 {
        chunked.write_all(chunk.as_bytes()).await.expect("chunk");
    }
    let response = response_head(&mut chunked).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");

    // The slow publisher finishes: accepted, and its 32 KiB are free again.
    slow.write_all(&slow_body.as_bytes()[100..]).await.expect("the rest");
    let response = response_head(&mut slow).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let retried = post(&client, addr, "/v1/topics/t/events", Some(&auth), padded(20 * kib)).await;
    assert_eq!(retried.status, 200, "{}", retried.text);

    // The log holds what was acknowledged, in order, and nothing refused.
    let lengths: Vec<usize> = read(&source, "p0", &Position::Start)
        .iter()
        .map(|r| payload(r)["data"]["pad"].as_str().map_or(0, str::len) + 10)
        .collect();
    let mut expected = vec![20 * kib; accepted_before];
    expected.extend([100, 32 * kib, 20 * kib]);
    assert_eq!(lengths, expected);
    let accepted = accepted_before as u64 + 3;
    assert_eq!(
        source.stats().answers(),
        [(200, accepted), (400, 0), (401, 0), (408, 0), (413, 0), (503, 2)]
    );
    assert_eq!(source.stats().accept_seconds.count(), accepted);
    drop(client);
}

#[test]
fn a_budget_smaller_than_one_body_is_a_start_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sluice_connector_http_ingest::IngestConfig {
        max_body_bytes: 64 * 1024,
        max_in_flight_bytes: 1024,
        ..config(dir.path())
    };
    let error = sluice_connector_http_ingest::HttpIngestSource::start(config)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("max_in_flight_bytes"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_and_gives_its_budget_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kib = 1024;
    let source = start(sluice_connector_http_ingest::IngestConfig {
        max_body_bytes: 32 * kib,
        max_in_flight_bytes: 32 * kib,
        body_timeout: Duration::from_millis(300),
        ..config(dir.path())
    });
    let addr = source.local_addr();
    let auth = format!("Bearer {}", token());
    // Declares the whole budget and stops after 100 bytes.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/topics/t/events HTTP/1.1\r\nHost: test\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        32 * kib
    );
    stalled.write_all(head.as_bytes()).await.expect("head");
    stalled
        .write_all(&padded(32 * kib).as_bytes()[..100])
        .await
        .expect("some body");
    let started = std::time::Instant::now();
    let response = response_head(&mut stalled).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The budget is whole again: a publish of all of it is taken.
    let client = reqwest::Client::new();
    let answer = post(&client, addr, "/v1/topics/t/events", Some(&auth), padded(32 * kib)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(read(&source, "p0", &Position::Start).len(), 1);
    let answers = source.stats().answers();
    assert_eq!(answers[0], (200, 1));
    assert_eq!(answers[3], (408, 1));
}
