//! The acceptance scenarios of spec/delivery.md, one test each, and the other rules.

mod common;

use common::{ALERTS, ERROR_STATS, REPLACEMENTS, UNSUBSCRIBES, config, json, run};
use serde_json::json;
use sluice_delivery::DeliveryConfig;
use sluice_runtime::{Pos, Value};

fn legacy_error(token: &str, ts: u64, code: &str) -> String {
    json!({"message_id": format!("m{ts}-{token}"), "app": "app1", "push_token": token, "protocol": "fcm-legacy",
           "status": "error", "spam": false, "ts": ts, "error_code": code})
    .to_string()
}

fn v1_error(token: &str, ts: u64, error: serde_json::Value) -> String {
    json!({"message_id": format!("m{ts}-{token}"), "app": "app1", "push_token": token, "protocol": "fcm-v1",
           "status": "error", "spam": false, "ts": ts, "error": error})
    .to_string()
}

/// A v1 error object as the API returns it, with an FcmError detail.
fn fcm(status: &str, code: &str) -> serde_json::Value {
    json!({"code": 400, "message": "failed", "status": status, "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]})
}

fn ok(token: &str, ts: u64, protocol: &str) -> String {
    json!({"message_id": format!("m{ts}-{token}"), "app": "app1", "push_token": token, "protocol": protocol,
           "status": "ok", "spam": false, "ts": ts})
    .to_string()
}

fn token_key(token: &str) -> String {
    json(json!({"app": "app1", "push_token": token}))
}

#[test]
fn not_registered_and_unregistered_for_one_token_are_one_unsubscribe() {
    let batches = vec![
        vec![legacy_error("t1", 10, "NotRegistered")],
        vec![v1_error("t1", 20, fcm("NOT_FOUND", "UNREGISTERED"))],
    ];
    let out = run(&config(), &batches, 1);
    let unsubscribes = out.upserts(UNSUBSCRIBES);
    assert_eq!(unsubscribes.len(), 1, "{unsubscribes:?}");
    assert_eq!(
        unsubscribes[&token_key("t1")],
        json(json!({"reason": "token-dead", "code": "UNREGISTERED", "protocol": "fcm-v1", "ts": 20}))
    );
    // One unsubscribe at every time, never two rows for the token.
    assert_eq!(out.upserts_at(UNSUBSCRIBES, 1).len(), 1);
}

#[test]
fn invalid_argument_without_token_detail_never_unsubscribes_with_a_token_field_violation_it_does() {
    let plain = json!({"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid JSON payload", "details": [
        {"@type": "type.googleapis.com/google.rpc.BadRequest",
         "fieldViolations": [{"field": "message.data", "description": "bad"}]}]});
    let about_token = json!({"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid argument", "details": [
        {"@type": "type.googleapis.com/google.rpc.BadRequest",
         "fieldViolations": [{"field": "message.token", "description": "The registration token is not valid"}]}]});
    let by_message = json!({"code": 400, "status": "INVALID_ARGUMENT",
        "message": "The registration token is not a valid FCM registration token"});
    let batches = vec![vec![
        v1_error("t1", 10, plain),
        v1_error("t2", 10, about_token),
        v1_error("t3", 10, by_message),
    ]];
    let out = run(&config(), &batches, 1);
    let unsubscribed: Vec<String> = out.upserts(UNSUBSCRIBES).into_keys().collect();
    assert_eq!(unsubscribed, vec![token_key("t2"), token_key("t3")]);
    let stats = out.upserts(ERROR_STATS);
    let stat = |category: &str| {
        json(
            json!({"app": "app1", "protocol": "fcm-v1", "category": category, "code": "INVALID_ARGUMENT", "spam": false}),
        )
    };
    assert_eq!(stats[&stat("bad-message")], json(json!({"count": 1})));
    assert_eq!(stats[&stat("token-dead")], json(json!({"count": 2})));
}

#[test]
fn error_then_ok_is_not_unsubscribed_in_either_arrival_order() {
    let error = legacy_error("t1", 10, "NotRegistered");
    let success = ok("t1", 20, "fcm-legacy");
    let in_order = run(&config(), &[vec![error.clone()], vec![success.clone()]], 1);
    assert_eq!(
        in_order.upserts_at(UNSUBSCRIBES, 1).len(),
        1,
        "unsubscribed after the error"
    );
    assert!(
        in_order.upserts(UNSUBSCRIBES).is_empty(),
        "the later success withdraws it"
    );

    let reversed = run(&config(), &[vec![success], vec![error]], 1);
    assert!(
        reversed.outputs[UNSUBSCRIBES].is_empty(),
        "an older error changes nothing"
    );
}

#[test]
fn some_future_code_is_counted_under_unknown() {
    let batches = vec![vec![
        v1_error("t1", 10, fcm("INTERNAL", "SOME_FUTURE_CODE")),
        v1_error("t2", 11, fcm("INTERNAL", "SOME_FUTURE_CODE")),
        legacy_error("t3", 12, "SomeFutureLegacyCode"),
    ]];
    let out = run(&config(), &batches, 1);
    let stats = out.upserts(ERROR_STATS);
    let key = json(
        json!({"app": "app1", "protocol": "fcm-v1", "category": "unknown", "code": "SOME_FUTURE_CODE", "spam": false}),
    );
    assert_eq!(stats[&key], json(json!({"count": 2})));
    let legacy = json(
        json!({"app": "app1", "protocol": "fcm-legacy", "category": "unknown", "code": "SomeFutureLegacyCode", "spam": false}),
    );
    assert_eq!(stats[&legacy], json(json!({"count": 1})));
    assert!(out.upserts(UNSUBSCRIBES).is_empty());
    assert!(out.dead_letters().is_empty());
}

#[test]
fn thousand_tokens_all_reporting_sender_id_mismatch_raise_an_alert_not_a_mass_unsubscribe() {
    let mut batches: Vec<Vec<String>> = (0..10)
        .map(|b| {
            (0..100)
                .map(|i| {
                    v1_error(
                        &format!("t{}", b * 100 + i),
                        1_000 + b * 100 + i,
                        fcm("PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
                    )
                })
                .collect()
        })
        .collect();
    // Dead tokens of the same app in the same window are still unsubscribed.
    batches.push(
        (0..5)
            .map(|i| legacy_error(&format!("dead{i}"), 2_000 + i, "NotRegistered"))
            .collect(),
    );
    let out = run(&config(), &batches, 2);
    let unsubscribed: Vec<String> = out.upserts(UNSUBSCRIBES).into_keys().collect();
    assert_eq!(
        unsubscribed,
        (0..5).map(|i| token_key(&format!("dead{i}"))).collect::<Vec<_>>()
    );
    let alerts = out.upserts(ALERTS);
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[&json(json!({"app": "app1", "kind": "sender-id-mismatch"}))],
        // Built as a `Value`: a trip through JSON text may round the share's last digit.
        Value::map([
            ("held", Value::from(1000u64)),
            ("window_start", Value::from(0u64)),
            ("window_end", Value::from(600_000u64)),
            ("reports", Value::from(1005u64)),
            ("mismatches", Value::from(1000u64)),
            ("share", Value::from(1000.0 / 1005.0)),
        ])
        .to_json_string()
    );
    // Held from the start: at no time was a mismatched token unsubscribed.
    for time in 1..=11 {
        let unsubscribed = out.upserts_at(UNSUBSCRIBES, time);
        assert!(
            unsubscribed.keys().all(|k| k.contains("dead")),
            "time {time}: {unsubscribed:?}"
        );
    }
}

#[test]
fn a_lone_mismatch_in_a_quiet_window_unsubscribes() {
    let out = run(
        &config(),
        &[vec![v1_error("t1", 10, fcm("PERMISSION_DENIED", "SENDER_ID_MISMATCH"))]],
        1,
    );
    assert_eq!(out.upserts(UNSUBSCRIBES).len(), 1);
    assert!(out.upserts(ALERTS).is_empty());
}

#[test]
fn late_reports_that_untrip_a_window_release_held_unsubscribes() {
    let guard = DeliveryConfig::new(None, None, Some(1_000), Some(4)).expect("config");
    let mismatches: Vec<String> = (0..4)
        .map(|i| legacy_error(&format!("t{i}"), 100 + i, "MismatchSenderId"))
        .collect();
    let successes: Vec<String> = (0..4).map(|i| ok(&format!("other{i}"), 200 + i, "fcm-v1")).collect();
    let out = run(&guard, &[mismatches, successes], 1);
    assert!(
        out.upserts_at(UNSUBSCRIBES, 1).is_empty(),
        "held while 4 of 4 are mismatches"
    );
    assert_eq!(out.upserts_at(ALERTS, 1).len(), 1);
    assert_eq!(out.upserts(UNSUBSCRIBES).len(), 4, "released at 4 of 8");
    assert!(out.upserts(ALERTS).is_empty());
}

#[test]
fn legacy_registration_id_replaces_and_retires_the_token() {
    let mut replaced: serde_json::Value = serde_json::from_str(&ok("old", 10, "fcm-legacy")).expect("json");
    replaced["registration_id"] = json!("new");
    let out = run(&config(), &[vec![replaced.to_string()]], 1);
    assert_eq!(
        out.upserts(REPLACEMENTS)[&token_key("old")],
        json(json!({"new_token": "new"}))
    );
    assert_eq!(
        out.upserts(UNSUBSCRIBES)[&token_key("old")],
        json(json!({"reason": "replaced", "code": null, "protocol": "fcm-legacy", "ts": 10}))
    );
    // A later plain success of the old token means it came back.
    let out = run(
        &config(),
        &[vec![replaced.to_string()], vec![ok("old", 11, "fcm-legacy")]],
        1,
    );
    assert!(out.upserts(REPLACEMENTS).is_empty());
    assert!(out.upserts(UNSUBSCRIBES).is_empty());
}

#[test]
fn sender_config_errors_alert_until_a_later_success() {
    let auth = json!({"code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid credentials"});
    let out = run(
        &config(),
        &[vec![v1_error("t1", 10, auth)], vec![ok("t2", 20, "fcm-v1")]],
        1,
    );
    let key = json(json!({"app": "app1", "kind": "sender-config"}));
    assert_eq!(
        out.upserts_at(ALERTS, 1)[&key],
        json(json!({"code": "UNAUTHENTICATED", "protocol": "fcm-v1", "ts": 10}))
    );
    assert!(out.upserts(ALERTS).is_empty());
    assert!(out.upserts(UNSUBSCRIBES).is_empty(), "never the token's fault");
}

#[test]
fn bad_input_is_dead_lettered_with_position_and_reason_and_good_records_are_unaffected() {
    let batches = vec![vec![
        legacy_error("t1", 10, "NotRegistered"),
        json!({"app": "app1", "protocol": "fcm-v1", "status": "ok", "ts": 5}).to_string(),
        json!({"app": "app1", "push_token": "t2", "protocol": "apns", "status": "ok", "ts": 5}).to_string(),
        json!([1, 2]).to_string(),
        legacy_error("t3", 10, "NotRegistered"),
    ]];
    let out = run(&config(), &batches, 2);
    let dead: Vec<(Pos, String, String)> = out
        .dead_letters()
        .into_iter()
        .map(|d| {
            assert_eq!(&*d.stage, "node delivery");
            (d.pos, d.reason.to_string(), d.raw.to_string())
        })
        .collect();
    let pos = |offset| Pos {
        source: 0,
        partition: 0,
        offset,
    };
    assert_eq!(
        dead,
        vec![
            (
                pos(1),
                "missing field `push_token`".to_owned(),
                json(json!({"app": "app1", "protocol": "fcm-v1", "status": "ok", "ts": 5}))
            ),
            (
                pos(2),
                "unknown protocol `apns`; expected `fcm-legacy` or `fcm-v1`".to_owned(),
                json(json!({"app": "app1", "push_token": "t2", "protocol": "apns", "status": "ok", "ts": 5}))
            ),
            (
                pos(3),
                "a delivery report must be a JSON object, found list".to_owned(),
                "[1,2]".to_owned()
            ),
        ]
    );
    assert_eq!(out.upserts(UNSUBSCRIBES).len(), 2);
}

#[test]
fn state_is_per_token_never_per_report() {
    // 10k reports over 10 tokens, in 20 batches, all in one guard window.
    let batches: Vec<Vec<String>> = (0..20u64)
        .map(|b| {
            (0..500u64)
                .map(|i| {
                    let n = b * 500 + i;
                    let token = format!("t{}", n % 10);
                    if n % 3 == 0 {
                        ok(&token, n, "fcm-v1")
                    } else {
                        legacy_error(&token, n, "Unavailable")
                    }
                })
                .collect()
        })
        .collect();
    let out = run(&config(), &batches, 2);
    let [tokens, windows, apps, error_keys] = out.state;
    assert_eq!(tokens, 10);
    assert_eq!(windows, 1);
    assert_eq!(apps, 1);
    assert_eq!(error_keys, 1);
    let stats = out.upserts(ERROR_STATS);
    assert_eq!(stats.values().next(), Some(&json(json!({"count": 6_666}))));
}
