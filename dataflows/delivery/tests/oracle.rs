//! The dataflow against a from-scratch computation of the rules, on seeded random reports
//! delivered in random order over many times, compared at every time.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{ALERTS, ERROR_STATS, REPLACEMENTS, UNSUBSCRIBES, Upserts, json, run};
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::json;
use sluice_delivery::{Category, DeliveryConfig, Outcome, Report, SENDER_ID_MISMATCH_CODES};
use sluice_runtime::Value;

/// A decoded report and its error's category.
type Classified = (Report, Option<Category>);
/// An app's latest sender-configuration error: `(ts, message_id, code, protocol)`.
type SenderProblem<'a> = (u64, Arc<str>, Arc<str>, &'a str);

/// What the four outputs should hold.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    unsubscribes: Upserts,
    replacements: Upserts,
    stats: Upserts,
    alerts: Upserts,
}

/// The rules of spec/delivery.md, computed directly over all reports so far.
fn oracle(config: &DeliveryConfig, reports: &[String]) -> Expected {
    let guard = config.guard;
    let classified: Vec<Classified> = reports
        .iter()
        .filter_map(|json| Report::decode(&Value::from_json_str(json).ok()?).ok())
        .map(|r| {
            let category = match &r.outcome {
                Outcome::Failed { code, facts } => Some(config.classification.classify(r.protocol, code, *facts)),
                Outcome::Delivered { .. } => None,
            };
            (r, category)
        })
        .collect();
    let is_mismatch = |r: &Report| r.code().is_some_and(|c| SENDER_ID_MISMATCH_CODES.contains(&&**c));
    let mut out = Expected::default();

    // The latest report per token.
    let mut latest: BTreeMap<(Arc<str>, Arc<str>), &Classified> = BTreeMap::new();
    let order = |r: &Report| {
        (
            r.ts,
            matches!(r.outcome, Outcome::Delivered { .. }),
            Arc::clone(&r.message_id),
        )
    };
    for c in &classified {
        let key = (Arc::clone(&c.0.app), Arc::clone(&c.0.push_token));
        if latest.get(&key).is_none_or(|l| order(&c.0) > order(&l.0)) {
            latest.insert(key, c);
        }
    }

    // Window tallies.
    let mut windows: BTreeMap<(Arc<str>, u64), (u64, u64)> = BTreeMap::new();
    for (r, _) in &classified {
        let tally = windows
            .entry((Arc::clone(&r.app), guard.window_start(r.ts)))
            .or_default();
        tally.0 += 1;
        tally.1 += u64::from(is_mismatch(r));
    }
    let tripped = |app: &Arc<str>, ts: u64| {
        windows
            .get(&(Arc::clone(app), guard.window_start(ts)))
            .is_some_and(|&(n, m)| guard.trips(n, m))
    };

    let mut held: BTreeMap<Arc<str>, Vec<u64>> = BTreeMap::new();
    for ((app, token), (r, category)) in &latest {
        let key = json(json!({"app": &**app, "push_token": &**token}));
        match (&r.outcome, category) {
            (Outcome::Failed { code, .. }, Some(Category::TokenDead)) => {
                if is_mismatch(r) && tripped(app, r.ts) {
                    held.entry(Arc::clone(app)).or_default().push(guard.window_start(r.ts));
                } else {
                    let val =
                        json!({"reason": "token-dead", "code": &**code, "protocol": r.protocol.as_str(), "ts": r.ts});
                    out.unsubscribes.insert(key, json(val));
                }
            }
            (Outcome::Delivered { replacement: Some(new) }, _) => {
                let val = json!({"reason": "replaced", "code": null, "protocol": r.protocol.as_str(), "ts": r.ts});
                out.unsubscribes.insert(key.clone(), json(val));
                out.replacements.insert(key, json(json!({"new_token": &**new})));
            }
            _ => {}
        }
    }
    for (app, starts) in held {
        let start = starts.iter().copied().max().unwrap_or_default();
        let (n, m) = windows[&(Arc::clone(&app), start)];
        // Built as a `Value`: a trip through JSON text may round the share's last digit.
        let val = Value::map([
            ("held", Value::from(starts.len() as u64)),
            ("window_start", Value::from(start)),
            ("window_end", Value::from(start + guard.window_ms)),
            ("reports", Value::from(n)),
            ("mismatches", Value::from(m)),
            ("share", Value::from(m as f64 / n as f64)),
        ]);
        out.alerts.insert(
            json(json!({"app": &*app, "kind": "sender-id-mismatch"})),
            val.to_json_string(),
        );
    }

    // Sender-configuration health per app.
    let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
    let mut problems: BTreeMap<Arc<str>, SenderProblem> = BTreeMap::new();
    for (r, category) in &classified {
        match (&r.outcome, category) {
            (Outcome::Delivered { .. }, _) => {
                let d = delivered.entry(Arc::clone(&r.app)).or_insert(r.ts);
                *d = (*d).max(r.ts);
            }
            (Outcome::Failed { code, .. }, Some(Category::SenderConfig)) => {
                let p = (r.ts, Arc::clone(&r.message_id), Arc::clone(code), r.protocol.as_str());
                if problems.get(&r.app).is_none_or(|q| p > *q) {
                    problems.insert(Arc::clone(&r.app), p);
                }
            }
            _ => {}
        }
    }
    for (app, (ts, _, code, protocol)) in problems {
        if delivered.get(&app).is_none_or(|&d| ts > d) {
            let val = json!({"code": &*code, "protocol": protocol, "ts": ts});
            out.alerts
                .insert(json(json!({"app": &*app, "kind": "sender-config"})), json(val));
        }
    }

    // Error counts.
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (r, category) in &classified {
        if let (Some(code), Some(category)) = (r.code(), category) {
            let key = json!({"app": &*r.app, "protocol": r.protocol.as_str(), "category": category.as_str(),
                             "code": &**code, "spam": r.spam});
            *counts.entry(json(key)).or_default() += 1;
        }
    }
    out.stats = counts
        .into_iter()
        .map(|(k, n)| (k, json(json!({"count": n}))))
        .collect();
    out
}

/// Random reports over 2 apps × 12 tokens and 4 guard windows; some (app, window) pairs are
/// mismatch storms. Returns the reports and how many of them are malformed.
fn random_reports(rng: &mut SmallRng, count: usize, config: &DeliveryConfig) -> (Vec<String>, usize) {
    let apps = ["app1", "app2"];
    let window = config.guard.window_ms;
    let storms: Vec<(usize, u64)> = (0..apps.len())
        .flat_map(|a| (0..4).map(move |w| (a, w)))
        .filter(|_| rng.random_bool(0.35))
        .collect();
    let legacy_codes = [
        "NotRegistered",
        "InvalidRegistration",
        "MismatchSenderId",
        "InvalidPackageName",
        "Unavailable",
        "InvalidApnsCredential",
        "SomeFutureLegacyCode",
    ];
    let fcm = |code: &str| {
        json!({"code": 400, "status": "FAILED_PRECONDITION", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]})
    };
    let v1_errors = [
        fcm("UNREGISTERED"),
        fcm("SENDER_ID_MISMATCH"),
        fcm("QUOTA_EXCEEDED"),
        fcm("SOME_FUTURE_CODE"),
        json!({"code": 400, "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
               "fieldViolations": [{"field": "message.token"}]}]}),
        json!({"code": 400, "status": "INVALID_ARGUMENT", "message": "bad payload"}),
        json!({"code": 403, "status": "PERMISSION_DENIED"}),
        json!({"code": 401}),
    ];
    let mut reports: Vec<String> = Vec::new();
    for n in 0..count {
        if n > 0 && rng.random_bool(0.05) {
            // The same report delivered twice.
            let again = reports[rng.random_range(0..reports.len())].clone();
            reports.push(again);
            continue;
        }
        let a = rng.random_range(0..apps.len());
        let ts = rng.random_range(0..(4 * window / 10)) * 10;
        let mut report = json!({
            "message_id": format!("m{n}"), "app": apps[a], "push_token": format!("t{}", rng.random_range(0..12)),
            "ts": ts, "spam": rng.random_bool(0.2),
        });
        let storm = storms.contains(&(a, ts / window)) && rng.random_bool(0.8);
        let legacy = rng.random_bool(0.5);
        report["protocol"] = json!(if legacy { "fcm-legacy" } else { "fcm-v1" });
        if storm {
            report["status"] = json!("error");
            if legacy {
                report["error_code"] = json!("MismatchSenderId");
            } else {
                report["error"] = fcm("SENDER_ID_MISMATCH");
            }
        } else if rng.random_bool(0.35) {
            report["status"] = json!("ok");
            if legacy && rng.random_bool(0.3) {
                report["registration_id"] = json!(format!("new{n}"));
            }
        } else {
            report["status"] = json!("error");
            if legacy {
                report["error_code"] = json!(legacy_codes.choose(rng));
            } else {
                report["error"] = v1_errors.choose(rng).cloned().unwrap_or_default();
            }
        }
        if rng.random_bool(0.03) {
            report.as_object_mut().map(|o| o.remove("push_token"));
        }
        reports.push(report.to_string());
    }
    let bad = reports.iter().filter(|r| !r.contains("push_token")).count();
    (reports, bad)
}

/// Deals `reports` in random order into 1..=12 batches.
fn deal(rng: &mut SmallRng, mut reports: Vec<String>) -> Vec<Vec<String>> {
    reports.shuffle(rng);
    let batches = rng.random_range(1..=12);
    let mut out = vec![Vec::new(); batches];
    for r in reports {
        out[rng.random_range(0..batches)].push(r);
    }
    out
}

fn check(seed: u64, workers: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let config = DeliveryConfig::new(None, None, Some(1_000), Some(6)).expect("config");
    let (reports, bad) = random_reports(&mut rng, 400, &config);
    let batches = deal(&mut rng, reports);
    let out = run(&config, &batches, workers);
    for time in 1..=batches.len() {
        let so_far: Vec<String> = batches[..time].concat();
        let expected = oracle(&config, &so_far);
        let t = time as u64;
        let got = Expected {
            unsubscribes: out.upserts_at(UNSUBSCRIBES, t),
            replacements: out.upserts_at(REPLACEMENTS, t),
            stats: out.upserts_at(ERROR_STATS, t),
            alerts: out.upserts_at(ALERTS, t),
        };
        assert_eq!(
            got.unsubscribes, expected.unsubscribes,
            "seed {seed}, time {time}: unsubscribes"
        );
        assert_eq!(
            got.replacements, expected.replacements,
            "seed {seed}, time {time}: replacements"
        );
        assert_eq!(got.stats, expected.stats, "seed {seed}, time {time}: error_stats");
        assert_eq!(got.alerts, expected.alerts, "seed {seed}, time {time}: alerts");
    }
    assert_eq!(out.dead_letters().len(), bad, "seed {seed}: dead letters");
}

#[test]
fn random_reports_match_the_oracle_at_every_time() {
    for seed in 0..8 {
        check(seed, 1);
    }
}

#[test]
fn random_reports_match_the_oracle_on_several_workers() {
    check(100, 2);
    check(101, 4);
}

#[test]
fn the_oracle_sees_every_kind_of_outcome() {
    // Guards the generator: the comparison above means little if storms never trip.
    let mut seen = [0usize; 4];
    for seed in 0..8 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let config = DeliveryConfig::new(None, None, Some(1_000), Some(6)).expect("config");
        let (reports, _) = random_reports(&mut rng, 400, &config);
        let e = oracle(&config, &reports);
        seen[0] += e.unsubscribes.len();
        seen[1] += e.replacements.len();
        seen[2] += e.alerts.keys().filter(|k| k.contains("sender-id-mismatch")).count();
        seen[3] += e.alerts.keys().filter(|k| k.contains("sender-config")).count();
    }
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}
