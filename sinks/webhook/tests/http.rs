//! The webhook sink against real HTTP receivers on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_runtime::Value;
use sluice_runtime::metrics::{Histogram, Metrics};
use sluice_runtime::sink::{Sink, SinkError};
use sluice_sink_webhook::{WebhookConfig, WebhookStats};
use support::{Receiver, Reply, config, delivery, int, open, text, wait_for, with};

/// Scheduling slack allowed past the nominal retry delay.
const SLACK: Duration = Duration::from_millis(200);

#[test]
fn a_2xx_is_one_attempt_with_method_headers_body_and_query_as_sent() {
    let receiver = Receiver::status(200);
    let (mut sink, letters, _stop) = open(config());
    let headers = Value::map([
        ("Content-Type", Value::from("application/json")),
        ("Idempotency-Key", Value::from("d-1")),
        ("X-Custom", Value::from("yes")),
    ]);
    let row = delivery("d-1", &receiver.url("/hooks/a?x=1&y=two"));
    let row = with(with(row, "method", Value::from("PUT")), "headers", headers);
    let row = with(row, "body", Value::from(r#"{"order":7}"#));
    sink.write(1, &[(row, 1)]).expect("write");
    sink.commit(None).expect("commit");

    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "PUT");
    assert_eq!(s.uri, "/hooks/a?x=1&y=two");
    assert_eq!(s.body, r#"{"order":7}"#);
    assert_eq!(s.header("idempotency-key").as_deref(), Some("d-1"));
    assert_eq!(s.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(s.header("x-custom").as_deref(), Some("yes"));
    assert_eq!(s.header("webhook-signature"), None, "no secret, no signature");
    assert!(letters.rows().is_empty());
    let stats = sink.stats();
    assert_eq!(stats.attempts.load(Ordering::Relaxed), 1);
    assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(sink.durable(), None, "input ended, nothing pending");
}

#[test]
fn an_event_cannot_set_the_headers_that_frame_the_request() {
    let receiver = Receiver::status(200);
    let (mut sink, letters, _stop) = open(config());
    let headers = Value::map([
        ("Content-Length", Value::from("1")),
        ("HOST", Value::from("admin.internal")),
        ("Transfer-Encoding", Value::from("chunked")),
        ("Connection", Value::from("upgrade")),
        ("Upgrade", Value::from("websocket")),
        ("Expect", Value::from("100-continue")),
        ("X-Kept", Value::from("yes")),
    ]);
    let row = with(delivery("d-1", &receiver.url("/hooks")), "headers", headers);
    let row = with(row, "body", Value::from(r#"{"order":7,"lines":[1,2,3]}"#));
    sink.write(1, &[(row, 1)]).expect("write");
    sink.commit(None).expect("commit");

    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    // The whole body, framed by its real length, to the URL's host.
    assert_eq!(s.body, r#"{"order":7,"lines":[1,2,3]}"#);
    assert_eq!(s.header("content-length").as_deref(), Some("27"));
    assert_eq!(s.header("transfer-encoding"), None);
    assert_eq!(s.header("host"), Some(receiver.addr.to_string()));
    assert_eq!(s.header("upgrade"), None);
    assert_eq!(s.header("expect"), None);
    assert_eq!(s.header("x-kept").as_deref(), Some("yes"));
    assert!(letters.rows().is_empty());
}

#[test]
fn a_path_that_climbs_out_of_the_subscribers_path_is_refused() {
    let receiver = Receiver::status(200);
    let (mut sink, letters, _stop) = open(config());
    // What a `:id` placeholder filled with `..` or `%2e%2E` gives.
    let rows = [
        (delivery("d-1", &receiver.url("/tenant-a/../admin")), 1),
        (delivery("d-2", &receiver.url("/tenant-a/%2e%2E")), 1),
        (delivery("d-3", &receiver.url("/tenant-a/..x/ok")), 1),
    ];
    sink.write(1, &rows).expect("write");
    sink.commit(None).expect("commit");
    let seen: Vec<String> = receiver.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/tenant-a/..x/ok"]);
    let rows = letters.rows();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(int(row, "attempts"), Some(0));
        assert!(text(row, "last_error").contains("path segment"), "{row:?}");
    }
}

#[test]
fn retractions_are_ignored_and_a_diff_of_two_sends_twice() {
    let receiver = Receiver::status(204);
    let (mut sink, letters, _stop) = open(config());
    let updates = [
        (delivery("a", &receiver.url("/a")), -1),
        (delivery("b", &receiver.url("/b")), 2),
    ];
    sink.write(1, &updates).expect("write");
    sink.commit(None).expect("commit");
    let uris: Vec<String> = receiver.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/b", "/b"]);
    assert!(letters.rows().is_empty());
}

#[test]
fn server_errors_are_retried_with_backoff_and_the_same_idempotency_key() {
    let receiver = Receiver::start(|n, _| Reply::Status(if n < 2 { 500 } else { 200 }));
    let backoff = Duration::from_millis(200);
    let (mut sink, letters, _stop) = open(WebhookConfig {
        initial_backoff: backoff,
        ..config()
    });
    sink.write(1, &[(delivery("d-r", &receiver.url("/r")), 1)])
        .expect("write");
    sink.commit(None).expect("commit");

    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.header("idempotency-key").as_deref() == Some("d-r"))
    );
    for (i, pair) in seen.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let d = backoff * 2u32.pow(i as u32);
        assert!(
            gap >= d / 2 && gap <= d + SLACK,
            "retry {i}: {gap:?} not within [{:?}, {d:?}]",
            d / 2
        );
    }
    assert!(letters.rows().is_empty());
    let stats = sink.stats();
    assert_eq!(stats.attempts.load(Ordering::Relaxed), 3);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
    assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    // Every request timed, and the one delivery over all three: at least the two waits.
    assert_eq!(stats.attempt_seconds.count(), stats.attempts.load(Ordering::Relaxed));
    assert_eq!(stats.delivery_seconds.count(), 1);
    let delivery = exposed(sink.stats(), |s| &s.delivery_seconds);
    let sum = delivery["h_sum{pipeline=\"p\"}"];
    assert!(sum >= (backoff / 2 + backoff).as_secs_f64(), "{sum}");
    assert_eq!(delivery["h_bucket{pipeline=\"p\",le=\"0.1\"}"], 0.0, "{delivery:?}");
    assert_eq!(delivery["h_bucket{pipeline=\"p\",le=\"+Inf\"}"], 1.0, "{delivery:?}");
}

/// One of a sink's latency histograms as `/metrics` writes it (named `h`, pipeline `p`):
/// series with labels → value.
fn exposed(stats: Arc<WebhookStats>, pick: fn(&WebhookStats) -> &Histogram) -> BTreeMap<String, f64> {
    let m = Metrics::new("p");
    m.register(Box::new(move |x| x.histogram("h", "Latency.", &[], pick(&stats))));
    m.render()
        .lines()
        .filter(|l| l.starts_with("h_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_4xx_and_a_redirect_fail_for_good_after_one_attempt() {
    let missing = Receiver::status(404);
    let moved = Receiver::start(|_, _| Reply::WithHeaders(302, vec![("location", "http://elsewhere.test/new".into())]));
    let (mut sink, letters, _stop) = open(config());
    let updates = [
        (delivery("d-404", &missing.url("/gone")), 1),
        (delivery("d-302", &moved.url("/old")), 1),
    ];
    sink.write(1, &updates).expect("write");
    sink.commit(None).expect("commit");

    assert_eq!(missing.count(), 1);
    assert_eq!(moved.count(), 1, "the redirect is not followed");
    let rows = letters.rows();
    assert_eq!(rows.len(), 2);
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| text(r, "delivery_id") == id)
            .cloned()
            .expect("dead letter")
    };
    let gone = by_id("d-404");
    assert_eq!(int(&gone, "attempts"), Some(1));
    assert_eq!(int(&gone, "last_status"), Some(404));
    assert!(
        text(&gone, "last_error").contains("404"),
        "{}",
        text(&gone, "last_error")
    );
    let redirect = by_id("d-302");
    assert_eq!(int(&redirect, "attempts"), Some(1));
    assert_eq!(int(&redirect, "last_status"), Some(302));
    assert_eq!(
        text(&redirect, "last_error"),
        "redirect to http://elsewhere.test/new not followed"
    );
    let stats = sink.stats();
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 2);
    // A permanent failure resolves its delivery as much as a success does.
    assert_eq!(stats.attempt_seconds.count(), 2);
    assert_eq!(stats.delivery_seconds.count(), 2);
}

#[test]
fn a_dead_letter_carries_the_delivery_and_the_attempts_but_not_the_secret_body_or_headers() {
    let receiver = Receiver::status(410);
    let (mut sink, letters, _stop) = open(config());
    let row = with(delivery("d-x", &receiver.url("/x")), "secret", Value::from("hush"));
    let before = now_ms();
    sink.write(1, &[(row, 1)]).expect("write");
    sink.commit(None).expect("commit");
    let rows = letters.rows();
    assert_eq!(rows.len(), 1);
    let dead = &rows[0];
    assert_eq!(dead.key, Value::map([("delivery_id", Value::from("d-x"))]));
    let mut names: Vec<&str> = dead.val.as_map().expect("map").keys().map(|k| &**k).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "attempts",
            "delivery_id",
            "first_attempt_ms",
            "last_attempt_ms",
            "last_error",
            "last_status",
            "method",
            "subscriber",
            "topic",
            "url"
        ]
    );
    assert_eq!(text(dead, "url"), receiver.url("/x"));
    assert_eq!(text(dead, "subscriber"), "sub-1");
    assert_eq!(text(dead, "topic"), "orders");
    assert_eq!(text(dead, "method"), "POST");
    let first = int(dead, "first_attempt_ms").expect("first") as u64;
    assert!(first >= before && first <= now_ms());
    assert!(!dead.val.to_json_string().contains("hush"));
    // The inner sink was committed past what it got.
    let got = letters.0.lock().expect("letters");
    assert!(got.commits.contains(&None));
}

#[test]
fn a_hanging_target_times_out_and_is_retried_until_the_attempts_run_out() {
    let receiver = Receiver::start(|_, _| Reply::Hang);
    let timeout = Duration::from_millis(300);
    let (mut sink, letters, _stop) = open(WebhookConfig {
        timeout,
        max_attempts: 2,
        ..config()
    });
    let start = Instant::now();
    sink.write(1, &[(delivery("d-h", &receiver.url("/slow")), 1)])
        .expect("write");
    sink.commit(None).expect("commit");
    assert!(start.elapsed() >= timeout * 2);
    assert_eq!(receiver.count(), 2);
    let rows = letters.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(int(&rows[0], "attempts"), Some(2));
    assert_eq!(support::field(&rows[0], "last_status"), &Value::Null);
    assert!(
        text(&rows[0], "last_error").contains("timed out"),
        "{}",
        text(&rows[0], "last_error")
    );
    // A request without an answer is timed to its timeout; the delivery ends in the dead
    // letters after both.
    let stats = sink.stats();
    assert_eq!(stats.attempt_seconds.count(), stats.attempts.load(Ordering::Relaxed));
    let attempts = exposed(Arc::clone(&stats), |s| &s.attempt_seconds);
    assert_eq!(attempts["h_bucket{pipeline=\"p\",le=\"0.25\"}"], 0.0, "{attempts:?}");
    assert_eq!(attempts["h_bucket{pipeline=\"p\",le=\"+Inf\"}"], 2.0, "{attempts:?}");
    assert_eq!(attempts["h_count{pipeline=\"p\"}"], 2.0, "{attempts:?}");
    assert!(
        attempts["h_sum{pipeline=\"p\"}"] >= (timeout * 2).as_secs_f64(),
        "{attempts:?}"
    );
    assert_eq!(stats.delivery_seconds.count(), 1);
}

#[test]
fn no_retry_is_scheduled_past_the_maximum_age() {
    let receiver = Receiver::status(500);
    let (mut sink, letters, _stop) = open(WebhookConfig {
        // The first retry would come at least 100 ms after the first attempt.
        initial_backoff: Duration::from_millis(200),
        max_age: Duration::from_millis(50),
        ..config()
    });
    sink.write(1, &[(delivery("d-old", &receiver.url("/old")), 1)])
        .expect("write");
    sink.commit(None).expect("commit");
    assert_eq!(receiver.count(), 1);
    let rows = letters.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(int(&rows[0], "attempts"), Some(1));
    assert_eq!(int(&rows[0], "last_status"), Some(500));
    assert_eq!(text(&rows[0], "last_error"), "HTTP 500 Internal Server Error");
}

#[test]
fn retry_after_replaces_the_backoff() {
    let receiver = Receiver::start(|n, _| {
        if n == 0 {
            Reply::WithHeaders(429, vec![("retry-after", "1".into())])
        } else {
            Reply::Status(200)
        }
    });
    let (mut sink, letters, _stop) = open(config());
    sink.write(1, &[(delivery("d-429", &receiver.url("/busy")), 1)])
        .expect("write");
    sink.commit(None).expect("commit");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(1), "{gap:?}");
    assert!(gap <= Duration::from_secs(1) + SLACK, "{gap:?}");
    assert!(letters.rows().is_empty());
}

#[test]
fn a_refused_connection_is_retried_then_dead_lettered() {
    let url = format!("http://127.0.0.1:{}/nobody", support::closed_port());
    let (mut sink, letters, _stop) = open(WebhookConfig {
        max_attempts: 3,
        ..config()
    });
    sink.write(1, &[(delivery("d-c", &url), 1)]).expect("write");
    sink.commit(None).expect("commit");
    let rows = letters.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(int(&rows[0], "attempts"), Some(3));
    assert_eq!(support::field(&rows[0], "last_status"), &Value::Null);
    let error = text(&rows[0], "last_error");
    assert!(error.to_lowercase().contains("connect"), "{error}");
    assert_eq!(sink.stats().retries.load(Ordering::Relaxed), 2);
}

fn verify(seen: &support::Seen, key: &[u8]) {
    let id = seen.header("webhook-id").expect("webhook-id");
    let timestamp = seen.header("webhook-timestamp").expect("webhook-timestamp");
    let signature = seen.header("webhook-signature").expect("webhook-signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(format!("{id}.{timestamp}.{}", seen.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(signature, expected);
    let ts: u64 = timestamp.parse().expect("unix seconds");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    assert!(ts.abs_diff(now) <= 5, "timestamp {ts} is not now ({now})");
    assert_eq!(seen.header("idempotency-key"), Some(id));
}

#[test]
fn signed_deliveries_verify_with_whsec_and_plain_secrets() {
    let receiver = Receiver::status(200);
    let key_bytes = b"0123456789abcdef-key-bytes";
    let whsec = format!("whsec_{}", STANDARD.encode(key_bytes));
    let (mut sink, letters, _stop) = open(config());
    let updates = [
        (
            with(delivery("d-w", &receiver.url("/w")), "secret", Value::from(whsec)),
            1,
        ),
        (
            with(
                delivery("d-p", &receiver.url("/p")),
                "secret",
                Value::from("plain secret"),
            ),
            1,
        ),
    ];
    sink.write(1, &updates).expect("write");
    sink.commit(None).expect("commit");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        match s.uri.as_str() {
            "/w" => verify(s, key_bytes),
            "/p" => verify(s, b"plain secret"),
            other => panic!("unexpected request to {other}"),
        }
    }
    assert!(letters.rows().is_empty());
}

#[test]
fn private_targets_are_refused_before_any_connection() {
    let receiver = Receiver::status(200);
    let port = receiver.addr.port();
    let (mut sink, letters, _stop) = open(WebhookConfig {
        allow_private_targets: false,
        ..config()
    });
    let targets = [
        ("loopback", format!("http://127.0.0.1:{port}/")),
        ("metadata", "http://169.254.169.254/latest/meta-data/".to_owned()),
        ("private", "http://10.0.0.1/hook".to_owned()),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/")),
        ("name", format!("http://localhost:{port}/")),
    ];
    let updates: Vec<_> = targets.iter().map(|(id, url)| (delivery(id, url), 1)).collect();
    sink.write(1, &updates).expect("write");
    sink.commit(None).expect("commit");

    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    let rows = letters.rows();
    assert_eq!(rows.len(), targets.len());
    let error = |id: &str| {
        let row = rows.iter().find(|r| text(r, "delivery_id") == id).expect("dead letter");
        assert_eq!(int(row, "attempts"), Some(1));
        text(row, "last_error")
    };
    assert_eq!(
        error("loopback"),
        "target 127.0.0.1 is a refused address: 127.0.0.1 (loopback); set allow_private_targets to allow"
    );
    assert!(error("metadata").contains("169.254.169.254 (metadata)"));
    assert!(error("private").contains("10.0.0.1 (private)"));
    assert!(error("mapped").contains("127.0.0.1 (loopback)"), "{}", error("mapped"));
    let name = error("name");
    assert!(
        name.starts_with("target localhost resolves only to refused addresses: ") && name.contains("(loopback)"),
        "{name}"
    );
    assert!(name.ends_with("set allow_private_targets to allow"));
    assert_eq!(
        sink.stats().retries.load(Ordering::Relaxed),
        0,
        "refusals are permanent"
    );
}

#[test]
fn a_hanging_target_does_not_hold_back_another() {
    // Two subscribers on two receivers; the limit is per subscriber.
    let hanging = Receiver::start(|_, _| Reply::Hang);
    let fast = Receiver::status(200);
    let timeout = Duration::from_secs(5);
    let (mut sink, letters, stop) = open(WebhookConfig {
        timeout,
        per_target_concurrency: 2,
        max_attempts: 1,
        ..config()
    });
    let start = Instant::now();
    let slow: Vec<_> = (0..10)
        .map(|i| {
            (
                with(
                    delivery(&format!("h{i}"), &hanging.url("/h")),
                    "subscriber",
                    "slow".into(),
                ),
                1,
            )
        })
        .collect();
    sink.write(1, &slow).expect("write");
    let quick: Vec<_> = (0..50)
        .map(|i| {
            (
                with(
                    delivery(&format!("f{i}"), &fast.url("/f")),
                    "subscriber",
                    "quick".into(),
                ),
                1,
            )
        })
        .collect();
    sink.write(2, &quick).expect("write");
    assert!(
        wait_for(Duration::from_secs(3), || fast.count() == 50),
        "{} of 50",
        fast.count()
    );
    assert!(start.elapsed() < timeout / 2, "{:?}", start.elapsed());
    assert_eq!(hanging.count(), 2, "the hanging target has its two slots, no more");
    // The receiver has the requests a moment before the sink has the answers.
    assert!(
        wait_for(Duration::from_secs(1), || sink.pending() == 10),
        "{}",
        sink.pending()
    );
    // Dropping the sink abandons the hanging requests (and stops the receiver's wait).
    stop.store(true, Ordering::Relaxed);
    drop(sink);
    assert!(letters.rows().is_empty());
}

#[test]
fn a_full_target_that_never_succeeds_gets_dead_letters_and_holds_no_one_back() {
    let hanging = Receiver::start(|_, _| Reply::Hang);
    let failing = Receiver::status(503);
    let fast = Receiver::status(200);
    let timeout = Duration::from_secs(1);
    // `max_queued` is smaller than the slow targets' rows: without the per-target limit the
    // hanging one's queued deliveries fill it and `write` blocks for everyone.
    let (mut sink, letters, stop) = open(WebhookConfig {
        timeout,
        per_target_concurrency: 1,
        max_queued: 6,
        max_pending_per_target: 3,
        max_attempts: 1000,
        initial_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(60),
        ..config()
    });
    let rows = |prefix: &str, receiver: &Receiver, subscriber: &str, n: usize| {
        (0..n)
            .map(|i| {
                let row = delivery(&format!("{prefix}{i}"), &receiver.url("/x"));
                (with(row, "subscriber", subscriber.into()), 1)
            })
            .collect::<Vec<_>>()
    };
    let start = Instant::now();
    sink.write(1, &rows("h", &hanging, "hanging", 20)).expect("write");
    sink.write(2, &rows("r", &failing, "retrying", 20)).expect("write");
    // Fifty to a target that works: more than its backlog limit, so `write` waits for room
    // (it succeeds), and none is dead-lettered.
    sink.write(3, &rows("f", &fast, "fast", 50)).expect("write");
    assert!(
        wait_for(Duration::from_secs(3), || fast.count() == 50),
        "{} of 50",
        fast.count()
    );
    // The hanging and the failing target each held `write` back for at most a request
    // timeout after their first delivery, not for as long as they fail.
    assert!(start.elapsed() < 4 * timeout, "{:?}", start.elapsed());
    sink.commit(Some(4)).expect("commit");
    // Each keeps three deliveries (in flight, queued, or waiting to retry); the other
    // seventeen are dead letters, unattempted, with the reason.
    let letters_of = |prefix: &str| -> Vec<sluice_runtime::Row> {
        letters
            .rows()
            .into_iter()
            .filter(|r| text(r, "delivery_id").starts_with(prefix))
            .collect()
    };
    for prefix in ["h", "r"] {
        let dead = letters_of(prefix);
        assert_eq!(dead.len(), 17, "{prefix}: {dead:?}");
        for row in &dead {
            assert_eq!(int(row, "attempts"), Some(0));
            assert!(text(row, "last_error").contains("max_pending_per_target"), "{row:?}");
        }
    }
    assert!(letters_of("f").is_empty());
    assert_eq!(sink.pending(), 6);
    assert_eq!(
        failing.count(),
        3,
        "each of the three tried once, the retries wait 30-60 s"
    );
    stop.store(true, Ordering::Relaxed);
    drop(sink);
}

#[test]
fn a_checkpoint_of_another_format_is_refused() {
    let stop = Arc::new(AtomicBool::new(false));
    let opened = sluice_sink_webhook::open(config(), support::Letters::default().boxed(), Some(&[7, 1, 2]), stop);
    match opened {
        Err(SinkError::Config(message)) => assert!(message.contains("version 7"), "{message}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened from garbage"),
    }
    assert!(sluice_sink_webhook::inner_resume(&[]).is_err());
}

#[test]
fn rows_that_are_not_deliveries_go_straight_to_the_dead_letters() {
    let (mut sink, letters, _stop) = open(config());
    let no_url = sluice_runtime::Row::derived(Value::Null, Value::map([("delivery_id", Value::from("d-nourl"))]));
    let ftp = delivery("d-ftp", "ftp://example.test/file");
    sink.write(3, &[(no_url, 1), (ftp, 1)]).expect("write");
    assert_eq!(sink.durable(), Some(0));
    sink.commit(Some(4)).expect("commit");
    assert_eq!(sink.durable(), Some(4), "dead letters written: resolved");
    let rows = letters.rows();
    assert_eq!(rows.len(), 2);
    let errors: Vec<String> = rows.iter().map(|r| text(r, "last_error")).collect();
    assert!(
        errors.iter().any(|e| e.contains("field `url` is missing")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("not http or https")), "{errors:?}");
    assert!(rows.iter().all(|r| int(r, "attempts") == Some(0)));
}

#[test]
fn the_durable_frontier_waits_for_unresolved_deliveries_unless_a_checkpoint_holds_them() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&failing);
    let receiver = Receiver::start(move |_, _| Reply::Status(if flag.load(Ordering::Relaxed) { 503 } else { 200 }));
    let ok = Receiver::status(200);
    let (mut sink, letters, _stop) = open(WebhookConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
        ..config()
    });
    assert_eq!(sink.durable(), Some(0), "nothing committed");
    sink.write(5, &[(delivery("d-5", &receiver.url("/5")), 1)])
        .expect("write");
    sink.write(7, &[(delivery("d-7", &ok.url("/7")), 1)]).expect("write");
    sink.commit(Some(10)).expect("commit");
    assert!(wait_for(Duration::from_secs(2), || ok.count() == 1));
    assert!(wait_for(Duration::from_secs(2), || receiver.count() >= 2));
    assert_eq!(sink.durable(), Some(5), "held at the failing delivery's time");

    let bytes = sink.checkpoint(0).expect("checkpoint").expect("bytes");
    assert_eq!(sink.durable(), Some(10), "the checkpoint holds the pending delivery");
    assert_eq!(
        sluice_sink_webhook::inner_resume(&bytes).expect("inner").as_deref(),
        Some(&b"inner:0"[..])
    );

    failing.store(false, Ordering::Relaxed);
    sink.commit(Some(20)).expect("commit");
    assert!(wait_for(Duration::from_secs(2), || sink.pending() == 0));
    sink.commit(Some(30)).expect("commit");
    assert_eq!(sink.durable(), Some(30));
    sink.commit(None).expect("commit");
    assert_eq!(sink.durable(), None);
    assert!(letters.rows().is_empty());
}

#[test]
fn a_restored_checkpoint_sends_pending_deliveries_again_with_their_ids_and_attempts() {
    // `a` recovers after the restart; `b` keeps failing and runs out of attempts.
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let a = Receiver::start(move |_, _| Reply::Status(if flag.load(Ordering::Relaxed) { 200 } else { 500 }));
    let b = Receiver::status(500);
    let settings = WebhookConfig {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        ..config()
    };
    let (mut sink, letters, _stop) = open(WebhookConfig {
        // The third attempt would come long after the checkpoint.
        initial_backoff: Duration::from_secs(4),
        ..settings.clone()
    });
    sink.write(
        1,
        &[(delivery("d-a", &a.url("/a")), 1), (delivery("d-b", &b.url("/b")), 1)],
    )
    .expect("write");
    sink.commit(Some(2)).expect("commit");
    // Two attempts each: the first, and one retry 2-4 s later.
    assert!(wait_for(Duration::from_secs(6), || a.count() == 2 && b.count() == 2));
    let saved_at = now_ms();
    let bytes = sink.checkpoint(0).expect("checkpoint").expect("bytes");
    drop(sink);
    assert!(letters.rows().is_empty());

    healthy.store(true, Ordering::Relaxed);
    let inner = sluice_sink_webhook::inner_resume(&bytes).expect("inner part");
    assert_eq!(inner.as_deref(), Some(&b"inner:0"[..]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sink = sluice_sink_webhook::open(settings, letters.boxed(), Some(&bytes), stop).expect("open");
    // Not `pending() == 2`: the restored deliveries are sent at once, and `a` may already
    // have accepted its one.
    assert!(sink.pending() <= 2);
    assert_eq!(sink.durable(), Some(2), "the restored checkpoint's frontier");
    sink.commit(None).expect("commit");

    let (seen_a, seen_b) = (a.seen(), b.seen());
    assert_eq!(seen_a.len(), 3, "sent again once, and accepted");
    assert_eq!(seen_b.len(), 3, "sent again once: attempts continue from 2");
    assert!(
        seen_a
            .iter()
            .all(|s| s.header("idempotency-key").as_deref() == Some("d-a"))
    );
    assert!(
        seen_b
            .iter()
            .all(|s| s.header("idempotency-key").as_deref() == Some("d-b"))
    );
    let rows = letters.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(text(&rows[0], "delivery_id"), "d-b");
    assert_eq!(int(&rows[0], "attempts"), Some(3));
    assert_eq!(int(&rows[0], "last_status"), Some(500));
    let first = int(&rows[0], "first_attempt_ms").expect("first") as u64;
    assert!(first < saved_at, "the first attempt was before the checkpoint");
    let stats = sink.stats();
    assert_eq!(stats.attempts.load(Ordering::Relaxed), 2);
    assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
}

#[test]
fn the_end_of_input_waits_for_pending_deliveries() {
    let receiver = Receiver::start(|_, _| Reply::Delayed(Duration::from_millis(300), 200));
    let (mut sink, letters, _stop) = open(config());
    let updates: Vec<_> = (0..5)
        .map(|i| (delivery(&format!("d{i}"), &receiver.url("/slow")), 1))
        .collect();
    sink.write(1, &updates).expect("write");
    let start = Instant::now();
    sink.commit(None).expect("commit");
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(receiver.count(), 5);
    assert_eq!(sink.pending(), 0);
    assert_eq!(sink.stats().successes.load(Ordering::Relaxed), 5);
    assert!(letters.rows().is_empty());
}

#[test]
fn a_stopping_pipeline_does_not_wait_for_retries() {
    let receiver = Receiver::status(503);
    let (mut sink, letters, stop) = open(WebhookConfig {
        initial_backoff: Duration::from_secs(20),
        ..config()
    });
    let updates: Vec<_> = (0..3)
        .map(|i| (delivery(&format!("d{i}"), &receiver.url("/down")), 1))
        .collect();
    sink.write(1, &updates).expect("write");
    assert!(wait_for(Duration::from_secs(2), || receiver.count() == 3));
    stop.store(true, Ordering::Relaxed);
    let start = Instant::now();
    sink.commit(None).expect("commit");
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    assert_eq!(sink.pending(), 3, "left for the checkpoint");
    assert_ne!(sink.durable(), None, "not everything is resolved");
    let bytes = sink.checkpoint(0).expect("checkpoint").expect("bytes");
    assert!(!bytes.is_empty());
    assert!(letters.rows().is_empty());
}

#[test]
fn write_blocks_while_too_many_deliveries_wait_and_not_once_stopping() {
    let receiver = Receiver::start(|_, _| Reply::Delayed(Duration::from_millis(200), 200));
    let (mut sink, _letters, stop) = open(WebhookConfig {
        per_target_concurrency: 1,
        max_queued: 1,
        ..config()
    });
    let row = |i: usize| (delivery(&format!("d{i}"), &receiver.url("/q")), 1);
    let start = Instant::now();
    // The first starts at once, the second waits; the third can only be taken once the
    // second has started, after the first's 200 ms.
    sink.write(1, &[row(0), row(1), row(2)]).expect("write");
    assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
    stop.store(true, Ordering::Relaxed);
    let start = Instant::now();
    sink.write(2, &(3..8).map(row).collect::<Vec<_>>()).expect("write");
    assert!(start.elapsed() < Duration::from_millis(150), "{:?}", start.elapsed());
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn subscribers_sharing_a_host_do_not_share_a_limit() {
    // One receiver, paths per subscriber: the hanging subscriber's slots are its own.
    let receiver = Receiver::start(|_, seen| {
        if seen.uri.starts_with("/slow") {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    });
    let (mut sink, _letters, _stop) = open(WebhookConfig {
        timeout: Duration::from_secs(5),
        per_target_concurrency: 1,
        max_attempts: 1,
        ..config()
    });
    let slow: Vec<_> = (0..5)
        .map(|i| {
            (
                with(
                    delivery(&format!("s{i}"), &receiver.url("/slow")),
                    "subscriber",
                    "slow".into(),
                ),
                1,
            )
        })
        .collect();
    sink.write(1, &slow).expect("write");
    let quick: Vec<_> = (0..20)
        .map(|i| {
            (
                with(
                    delivery(&format!("q{i}"), &receiver.url("/quick")),
                    "subscriber",
                    "quick".into(),
                ),
                1,
            )
        })
        .collect();
    sink.write(2, &quick).expect("write");
    assert!(
        wait_for(Duration::from_secs(3), || receiver.count() == 21),
        "{} of 21 (20 quick, 1 slow in its one slot)",
        receiver.count()
    );
}
