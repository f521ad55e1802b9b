//! The fan-out hub end to end (spec/fanout.md): events published over HTTP, subscribers
//! from a reloaded file or a Kafka topic, deliveries to real HTTP receivers on 127.0.0.1
//! with retries and dead letters, and a kill -9 in the middle.

mod common;
mod hub_support;
mod kafka_support;
mod serve_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hub_support::{
    Hub, HubOptions, PUBLISH_SECRET, Received, Receiver, publish_body, subscriber, token, write_subscribers,
};
use serde_json::json;
use serve_support::wait_for;

#[test]
fn filters_pick_the_subscribers_and_placeholders_are_filled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let b = &r.base;
    let subs = [
        subscriber("yes", "orders", "data.body.total > 10", &format!("{b}/ok/yes/:id/:idx")),
        subscriber("no", "orders", "data.body.total > 1000", &format!("{b}/ok/no")),
        subscriber(
            "missing",
            "orders",
            "data.body.nothing.here == 1",
            &format!("{b}/ok/missing"),
        ),
        {
            let mut s = subscriber("signed", "audit", "", &format!("{b}/ok/signed"));
            s["secret"] = json!("whsec_c2lnbmluZy1rZXktb2YtdGhlLWF1ZGl0LXN1Yg==");
            s
        },
    ];
    let hub = Hub::start(dir.path(), &subs, HubOptions::default());
    let data = json!({"body": {"total": 50}, "path_params": {"id": "1", "idx": 2},
                      "query_params": {"q": "a b"}, "headers": {"X-Trace": "t1"}, "http_method": "put"});
    assert_eq!(hub.publish(&r, "orders", &data), 200);
    // The plain-JSON endpoint for new publishers.
    let status = hub.post(
        &r,
        "/v1/topics/audit/events",
        &format!("bearer {}", hub.token()),
        json!({"body": {"who": "ann"}}).to_string(),
    );
    assert_eq!(status, 200);
    wait_for(20, "two deliveries", || r.count() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    let got = r.received();
    assert_eq!(got.len(), 2, "exactly one delivery per matching subscriber: {got:?}");
    let yes = r.to("/ok/yes");
    assert_eq!(yes.len(), 1);
    // `:id` and `:idx` are whole names, both replaced; the query string appended.
    assert_eq!(yes[0].path, "/ok/yes/1/2?q=a%20b");
    assert_eq!(yes[0].method, "PUT");
    assert_eq!(yes[0].header("x-trace"), "t1");
    assert_eq!(yes[0].header("content-type"), "application/json");
    assert_eq!(yes[0].key().len(), 32);
    assert_eq!(yes[0].body, r#"{"total":50}"#);
    let signed = r.to("/ok/signed");
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0].header("webhook-id"), signed[0].key());
    assert!(signed[0].header("webhook-signature").starts_with("v1,"));
    assert!(hub.failed().is_empty());
    hub.stop();
}

#[test]
fn a_subscriber_added_later_gets_only_the_events_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let first = subscriber("first", "t", "", &format!("{}/ok/first/:n", r.base));
    let hub = Hub::start(dir.path(), std::slice::from_ref(&first), HubOptions::default());
    assert_eq!(hub.publish(&r, "t", &json!({"path_params": {"n": 0}})), 200);
    wait_for(20, "the first delivery", || r.to("/ok/first/0").len() == 1);
    let later = subscriber("later", "t", "", &format!("{}/ok/later/:n", r.base));
    write_subscribers(&hub.dir, &[first.clone(), later]);
    // Publish until the new subscriber has been loaded and gets one.
    let mut n = 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.to("/ok/later/").is_empty() {
        assert!(Instant::now() < deadline, "the added subscriber never got an event");
        assert_eq!(hub.publish(&r, "t", &json!({"path_params": {"n": n}})), 200);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        r.to("/ok/later/0").is_empty(),
        "an event before the subscriber reached it"
    );
    // Removing a subscriber stops its deliveries.
    write_subscribers(&hub.dir, &[]);
    std::thread::sleep(Duration::from_millis(600));
    let before = r.count();
    assert_eq!(hub.publish(&r, "t", &json!({"path_params": {"n": 999}})), 200);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(r.count(), before, "a removed subscriber still got an event");
    hub.stop();
}

#[test]
fn events_published_over_https_reach_their_subscriber() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let tls = common::root().join("connectors/http-ingest/tests/fixtures/tls");
    let options = HubOptions {
        tls: Some((tls.join("cert-a.pem"), tls.join("key-a.pem"))),
        ..HubOptions::default()
    };
    let sub = subscriber("s", "t", "", &format!("{}/ok/s/:n", r.base));
    let hub = Hub::start(dir.path(), &[sub], options);
    assert!(hub.url.starts_with("https://"), "{}", hub.url);
    assert_eq!(hub.publish(&r, "t", &json!({"path_params": {"n": 1}})), 200);
    wait_for(20, "the delivery", || r.to("/ok/s/1").len() == 1);

    // Plain HTTP on the HTTPS port gets no HTTP answer at all.
    let mut plain = TcpStream::connect(hub.url.trim_start_matches("https://")).expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
    hub.stop();
}

#[test]
fn retries_dead_letters_and_a_slow_target_that_delays_no_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let b = &r.base;
    let subs = [
        subscriber("fail2", "t", "", &format!("{b}/fail2/x")),
        subscriber("down", "t", "", &format!("{b}/down/x")),
        subscriber("gone", "t", "", &format!("{b}/gone/x")),
        subscriber("moved", "t", "", &format!("{b}/moved/x")),
        subscriber("hang", "t", "data.path_params.n < 16", &format!("{b}/hang/x")),
        subscriber("hang2", "t", "data.path_params.n < 2", &format!("{b}/hang/y")),
        subscriber("busy", "t", "", &format!("{b}/busy/x")),
        subscriber("fast", "t", "", &format!("{b}/ok/fast/:n")),
    ];
    let options = HubOptions {
        per_target_concurrency: 2,
        timeout_ms: 1000,
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), &subs, options);
    let started = Instant::now();
    for n in 0..20 {
        assert_eq!(hub.publish(&r, "t", &json!({"path_params": {"n": n}})), 200);
    }
    // The hanging subscriber holds its two slots for 1 s per attempt, 4 attempts for each of
    // its 16 deliveries (32 s); the fast one (same host, another path: the limit is per
    // subscriber) must not wait on it. Queued behind it, the 20th would wait about 8 s.
    wait_for(60, "the fast deliveries", || r.to("/ok/fast/").len() >= 20);
    let fast_done = started.elapsed();
    assert!(
        fast_done < Duration::from_secs(4),
        "fast deliveries took {fast_done:?} beside a hanging target"
    );
    let hanging = r.to("/hang/x").len();
    assert!(
        hanging <= 2 * (fast_done.as_secs() as usize + 1),
        "{hanging} requests to a 2-slot subscriber"
    );
    // 500, 500, 200: three attempts with one key each, spaced by the backoff (200 ms, then
    // 400 ms, each jittered down to half), nothing dead-lettered for them.
    wait_for(60, "the retried deliveries", || r.to("/fail2/").len() >= 60);
    let mut by_key: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for got in r.to("/fail2/") {
        by_key.entry(got.key().to_owned()).or_default().push(got.at);
    }
    assert_eq!(by_key.len(), 20);
    for (key, times) in &by_key {
        assert_eq!(times.len(), 3, "{key}: {times:?}");
        let gap1 = times[1] - times[0];
        let gap2 = times[2] - times[1];
        assert!(
            gap1 >= Duration::from_millis(100) && gap1 <= Duration::from_millis(900),
            "{gap1:?}"
        );
        assert!(
            gap2 >= Duration::from_millis(200) && gap2 <= Duration::from_millis(1100),
            "{gap2:?}"
        );
    }
    // Retry-After: 1 is honoured.
    wait_for(60, "the busy deliveries", || r.to("/busy/").len() >= 40);
    let mut busy: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for got in r.to("/busy/") {
        busy.entry(got.key().to_owned()).or_default().push(got.at);
    }
    for times in busy.values() {
        assert!(times[1] - times[0] >= Duration::from_millis(950), "Retry-After ignored");
    }
    // 404 and a redirect: one attempt each, then dead letters; a target always failing: the
    // attempt limit; the hanging one: timeouts, then the limit.
    let settled = |hub: &Hub| {
        let failed = hub.failed();
        ["gone", "moved", "down", "hang2"]
            .iter()
            .map(|s| failed.iter().filter(|f| f["subscriber"] == *s).count())
            .sum::<usize>()
    };
    wait_for(60, "the dead letters", || settled(&hub) >= 62);
    let failed = hub.failed();
    let of = |sub: &str| -> Vec<&serde_json::Value> { failed.iter().filter(|f| f["subscriber"] == sub).collect() };
    for f in of("gone") {
        assert_eq!(
            (f["attempts"].as_u64(), f["last_status"].as_u64()),
            (Some(1), Some(404))
        );
    }
    for f in of("moved") {
        assert_eq!(f["attempts"], 1);
        assert!(f["last_error"].as_str().is_some_and(|e| e.contains("/ok/moved")), "{f}");
        assert!(f.get("secret").is_none());
    }
    for f in of("down") {
        assert_eq!(
            (f["attempts"].as_u64(), f["last_status"].as_u64()),
            (Some(4), Some(500))
        );
    }
    for f in of("hang2") {
        assert_eq!(f["attempts"], 4);
        assert!(f["last_error"].as_str().is_some_and(|e| e.contains("time")), "{f}");
    }
    for sub in ["gone", "moved", "down"] {
        assert_eq!(of(sub).len(), 20, "{sub}");
    }
    assert_eq!(of("hang2").len(), 2);
    assert!(of("fail2").is_empty() && of("busy").is_empty() && of("fast").is_empty());
    assert!(r.to("/ok/moved").is_empty(), "a redirect was followed");
    assert_eq!(r.to("/gone/").len(), 20, "a 404 was retried");
    hub.stop();
}

#[test]
fn private_targets_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let subs = [
        subscriber("local", "t", "", &format!("{}/ok/local", r.base)),
        subscriber("metadata", "t", "", "http://169.254.169.254/latest/meta-data/"),
    ];
    let options = HubOptions {
        allow_private: false,
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), &subs, options);
    assert_eq!(hub.publish(&r, "t", &json!({})), 200);
    wait_for(20, "two dead letters", || hub.failed().len() >= 2);
    for f in hub.failed() {
        assert_eq!(f["attempts"], 1, "{f}");
        assert!(
            f["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("allow_private_targets")),
            "{f}"
        );
    }
    assert_eq!(r.count(), 0, "a refused target was reached");
    hub.stop();
}

#[test]
fn publishing_needs_a_valid_token_and_a_body_within_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let subs = [subscriber("all", "t", "", &format!("{}/ok/all", r.base))];
    let hub = Hub::start(dir.path(), &subs, HubOptions::default());
    let body = || publish_body("t", &json!({"body": {"x": 1}}));
    let exp = hub_support::now() + 600;
    let refused = [
        format!("Bearer {}", token(b"another-secret-0123456789", json!({"exp": exp}))),
        format!(
            "Bearer {}",
            token(PUBLISH_SECRET.as_bytes(), json!({"exp": hub_support::now() - 5}))
        ),
        format!("Bearer {}", token(PUBLISH_SECRET.as_bytes(), json!({"nbf": exp}))),
        format!(
            "Bearer {}",
            sluice_auth::jwt::sign_with_header(PUBLISH_SECRET.as_bytes(), r#"{"alg":"HS512"}"#, &json!({}))
        ),
        {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("Bearer {}.{}.", b64.encode(r#"{"alg":"none"}"#), b64.encode("{}"))
        },
        "Basic dXNlcjpwYXNz".to_owned(),
        String::new(),
    ];
    for auth in &refused {
        assert_eq!(hub.post(&r, "/publish", auth, body()), 401, "{auth}");
    }
    let good = format!("BEARER {}", hub.token());
    assert_eq!(hub.post(&r, "/publish", &good, "not json".into()), 400);
    assert_eq!(
        hub.post(
            &r,
            "/publish",
            &good,
            json!({"topic": "t", "payload": "%%%"}).to_string()
        ),
        400
    );
    // Keys are matched case-insensitively.
    assert_eq!(
        hub.post(
            &r,
            "/publish",
            &good,
            body().replace("Topic", "tOpIc").replace("Payload", "payload")
        ),
        200
    );
    wait_for(20, "the one accepted event", || r.count() == 1);

    // A body declared 1 MiB over the limit is refused before it is sent.
    let port = hub.url.rsplit(':').next().unwrap_or_default().to_owned();
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let declared = 65_536 + (1 << 20);
    write!(
        stream,
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n",
        hub.token()
    )
    .expect("send headers");
    stream.write_all(&[b' '; 4096]).expect("send a little");
    let mut answer = [0u8; 64];
    let n = stream.read(&mut answer).expect("an answer before the body is sent");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(r.count(), 1, "a refused publish was delivered");

    // Every answer is counted by status, and the accepted one timed.
    let m = hub.metrics();
    let answered = |status: u16| {
        m.get(&format!(
            "sluice_publish_requests_total{{pipeline=\"hub\",source=\"events\",status=\"{status}\"}}"
        ))
        .copied()
    };
    let by_status: Vec<_> = [200, 400, 401, 408, 413, 503].into_iter().map(answered).collect();
    assert_eq!(
        by_status,
        [
            Some(1.0),
            Some(2.0),
            Some(refused.len() as f64),
            Some(0.0),
            Some(1.0),
            Some(0.0)
        ],
        "{m:?}"
    );
    let accepted = "sluice_publish_accept_seconds_count{pipeline=\"hub\",source=\"events\"}";
    assert_eq!(m.get(accepted), Some(&1.0), "{m:?}");
    hub.stop();
}

/// spec/fanout.md: 1000 events × 200 subscribers, every matching delivery made once; then a
/// kill -9 mid-way and a restart: every delivery made at least once, each extra attempt
/// carrying the same idempotency key.
#[test]
fn a_thousand_events_to_two_hundred_subscribers_survive_a_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    // Subscriber s takes the events whose n has the same remainder mod 5: 200 × 1000 / 5.
    let subs: Vec<serde_json::Value> = (0..200)
        .map(|s| {
            subscriber(
                &format!("s{s}"),
                "load",
                &format!("data.body.n % 5 == {}", s % 5),
                &format!("{}/ok/s{s}/:n", r.base),
            )
        })
        .collect();
    // A loaded 2-core CI machine can answer slowly: a timeout would be a retry (a second
    // delivery), and the limit a dead letter, neither of which this test is about.
    let options = HubOptions {
        per_target_concurrency: 64,
        timeout_ms: 20_000,
        max_attempts: 100,
        ..HubOptions::default()
    };
    let mut hub = Hub::start(dir.path(), &subs, options);
    let no_dead_letters = |hub: &Hub| {
        let failed = hub.failed();
        assert!(failed.is_empty(), "dead letters: {:?}", &failed[..failed.len().min(3)]);
    };
    let expected = |events: std::ops::Range<u32>| -> BTreeSet<String> {
        events
            .flat_map(|n| {
                (0..200)
                    .filter(move |s| s % 5 == n % 5)
                    .map(move |s| format!("/ok/s{s}/{n}"))
            })
            .collect()
    };
    let publish = |hub: &Hub, events: std::ops::Range<u32>| {
        for n in events {
            assert_eq!(
                hub.publish(&r, "load", &json!({"body": {"n": n}, "path_params": {"n": n}})),
                200
            );
        }
    };

    // The first half with no failure: each delivery exactly once.
    publish(&hub, 0..500);
    let first = expected(0..500);
    wait_for(100, "the first 20 000 deliveries", || {
        no_dead_letters(&hub);
        r.count() >= first.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = r.received();
    let paths: Vec<&str> = got.iter().map(|g| g.path.as_str()).collect();
    assert_eq!(paths.len(), first.len(), "a delivery was made twice");
    assert_eq!(paths.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>(), first);

    // The second half, killed mid-way, restarted.
    publish(&hub, 500..1000);
    wait_for(60, "some of the second half", || r.count() >= first.len() + 5_000);
    hub.kill9();
    hub.launch();
    let all = expected(0..1000);
    wait_for(100, "every delivery after the restart", || {
        no_dead_letters(&hub);
        r.received()
            .iter()
            .map(|g| g.path.clone())
            .collect::<BTreeSet<_>>()
            .len()
            >= all.len()
    });
    let got = r.received();
    let mut keys: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for g in &got {
        keys.entry(g.path.as_str()).or_default().insert(g.key());
    }
    assert_eq!(keys.keys().map(|k| k.to_string()).collect::<BTreeSet<_>>(), all);
    for (path, k) in &keys {
        assert_eq!(k.len(), 1, "{path} was sent with different idempotency keys: {k:?}");
    }
    let distinct: BTreeSet<&str> = got.iter().map(Received::key).collect();
    assert_eq!(distinct.len(), all.len(), "two deliveries shared a key");
    assert!(hub.failed().is_empty());
    hub.stop();
}

/// spec/fanout.md: "an accepted event is never lost, even if the process dies right after".
#[test]
fn events_acknowledged_just_before_a_kill_9_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let subs = [subscriber("all", "t", "", &format!("{}/ok/all/:n", r.base))];
    let mut hub = Hub::start(dir.path(), &subs, HubOptions::default());
    for n in 0..200 {
        assert_eq!(hub.publish(&r, "t", &json!({"path_params": {"n": n}})), 200);
    }
    // Killed the moment the last 200 arrives: most events are still unread or undelivered.
    hub.kill9();
    let before = r.count();
    hub.launch();
    let all: BTreeSet<String> = (0..200).map(|n| format!("/ok/all/{n}")).collect();
    wait_for(60, "every acknowledged event delivered", || {
        r.received().into_iter().map(|g| g.path).collect::<BTreeSet<_>>() == all
    });
    assert!(
        before < 200,
        "all were delivered before the kill ({before}); the test proves nothing"
    );
    assert!(hub.failed().is_empty());
    hub.stop();
}

#[test]
fn pending_retries_survive_a_kill_9_with_their_idempotency_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let subs = [subscriber("flaky", "t", "", &format!("{}/flaky/:n", r.base))];
    let options = HubOptions {
        max_attempts: 1000,
        ..HubOptions::default()
    };
    let mut hub = Hub::start(dir.path(), &subs, options);
    for n in 0..5 {
        assert_eq!(hub.publish(&r, "t", &json!({"path_params": {"n": n}})), 200);
    }
    wait_for(20, "failing attempts", || r.to("/flaky/").len() >= 10);
    // Checkpoints go on while deliveries are pending: the pending ones are in them.
    let published = hub_support::now_ms();
    wait_for(20, "a checkpoint after the events", || {
        hub.newest_checkpoint().is_some_and(|t| t > published)
    });
    hub.kill9();
    let keys_before: BTreeMap<String, String> = r
        .to("/flaky/")
        .iter()
        .map(|g| (g.path.clone(), g.key().to_owned()))
        .collect();
    assert_eq!(keys_before.len(), 5);
    r.heal();
    hub.launch();
    wait_for(30, "the healed deliveries", || {
        let mut ok = BTreeSet::new();
        for g in r.to("/flaky/") {
            ok.insert(g.path);
        }
        ok.len() == 5 && r.to("/flaky/").iter().rev().take(5).count() == 5
    });
    std::thread::sleep(Duration::from_millis(1500));
    for g in r.to("/flaky/") {
        assert_eq!(
            keys_before.get(&g.path).map(String::as_str),
            Some(g.key()),
            "{}",
            g.path
        );
    }
    assert!(hub.failed().is_empty());
    hub.stop();
}

#[test]
fn subscribers_can_come_from_a_kafka_topic_with_the_upsert_envelope() {
    let broker = kafka_support::Broker::start();
    broker.create_topic("hub-subscribers", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let r = Receiver::start();
    let row = |id: &str| subscriber(id, "t", "", &format!("{}/ok/{id}/:n", r.base));
    let record = |id: &str| (0, Some(id.as_bytes().to_vec()), Some(row(id).to_string().into_bytes()));
    broker.produce("hub-subscribers", &[record("a"), record("b")]);
    let options = HubOptions {
        kafka_subscribers: Some((broker.brokers.clone(), "hub-subscribers".to_owned())),
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), &[], options);
    // Publish until both subscribers are loaded.
    let mut n = 0;
    wait_for(40, "both kafka subscribers", || {
        n += 1;
        hub.publish(&r, "t", &json!({"path_params": {"n": n}}));
        std::thread::sleep(Duration::from_millis(100));
        !r.to("/ok/a/").is_empty() && !r.to("/ok/b/").is_empty()
    });
    // A tombstone removes `a`: its key holds the key fields, as the envelope's `key` names them.
    broker.produce("hub-subscribers", &[(0, Some(br#"{"id":"a"}"#.to_vec()), None)]);
    wait_for(40, "a's removal", || {
        n += 1;
        hub.publish(&r, "t", &json!({"path_params": {"n": n}}));
        std::thread::sleep(Duration::from_millis(100));
        let b_last = r.to("/ok/b/").len();
        let a_before = r.to("/ok/a/").len();
        n += 1;
        hub.publish(&r, "t", &json!({"path_params": {"n": n}}));
        wait_for(10, "b's delivery", || r.to("/ok/b/").len() > b_last);
        r.to("/ok/a/").len() == a_before
    });
    hub.stop();
}
