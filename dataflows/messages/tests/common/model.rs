//! A sequential model of the messages dataflow: random ops, decided one by one in (epoch,
//! position) order, and what every output must hold after each round.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sluice_messages::{Message, Op, decide, feed_value, message_value};

use super::{parse, ts};

const USERS: &[&str] = &["ann", "bob", "cat", "dan"];
const FILES: &[&str] = &[
    "aaaaaaaaaaaaaaaaaaaaaaaa",
    "bbbbbbbbbbbbbbbbbbbbbbbb",
    "cccccccccccccccccccccccc",
    "short",
];

/// What the outputs must hold after each round (key JSON → value JSON, or sorted values).
#[derive(Default)]
pub struct Expected {
    pub messages: Vec<BTreeMap<String, String>>,
    pub feed: Vec<BTreeMap<String, String>>,
    pub file_usage: Vec<BTreeMap<String, String>>,
    pub accepted: Vec<Vec<String>>,
    pub rejections: Vec<Vec<String>>,
    pub file_events: Vec<Vec<String>>,
}

/// `rounds` rounds of random ops from seed `seed`, and the outputs expected after each.
pub fn generate(seed: u64, rounds: usize) -> (Vec<Vec<String>>, Expected) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut state: HashMap<String, Message> = HashMap::new();
    let mut ids: Vec<String> = Vec::new();
    let mut expected = Expected::default();
    let mut input = Vec::new();
    let mut in_use_before: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..rounds {
        let n = rng.random_range(0..40);
        let mut round = Vec::new();
        let (mut accepted, mut rejections) = (Vec::new(), Vec::new());
        for j in 0..n {
            let user = USERS[rng.random_range(0..USERS.len())];
            let request_id = format!("r{i}-{j}");
            let known = (!ids.is_empty()).then(|| ids[rng.random_range(0..ids.len())].clone());
            let target = match known {
                Some(id) if rng.random_bool(0.9) => id,
                _ => "ffffffffffffffffffffffff".to_owned(),
            };
            let current_ts = state.get(&target).map_or(1, |m| m.timestamp);
            let if_match = if rng.random_bool(0.7) {
                current_ts
            } else {
                current_ts.saturating_sub(1)
            };
            // Bias the actor towards the message's own users, so most ops get past not-found.
            let actor = match state.get(&target) {
                Some(m) if rng.random_bool(0.8) => {
                    if rng.random_bool(0.5) {
                        m.from.to_string()
                    } else {
                        m.to.to_string()
                    }
                }
                _ => user.to_owned(),
            };
            let op = match rng.random_range(0..10) {
                0..4 => {
                    let files: Vec<&str> = (0..rng.random_range(0..3))
                        .map(|_| FILES[rng.random_range(0..FILES.len())])
                        .collect();
                    let text = if rng.random_bool(0.8) {
                        format!("t{}", rng.random_range(0..3))
                    } else {
                        String::new()
                    };
                    let to = USERS[rng.random_range(0..USERS.len())];
                    json!({"op": "send", "request_id": request_id, "user": user, "to": to, "text": text, "files": files})
                }
                4..6 => json!({"op": "edit", "request_id": request_id, "user": actor, "message_id": target,
                              "if_match": if_match, "text": format!("t{}", rng.random_range(0..3))}),
                6..8 => json!({"op": "mark_read", "request_id": request_id, "user": actor, "message_id": target,
                              "if_match": if_match, "read": rng.random_bool(0.6)}),
                _ => json!({"op": "delete", "request_id": request_id, "user": actor, "message_id": target,
                           "if_match": if_match}),
            };
            let text = op.to_string();
            let parsed = Op::from_record(&parse(&text)).expect("generated ops have a request id and user");
            let timestamp = ts(i, j);
            let key = parsed.target(timestamp).to_string();
            match decide(&parsed, timestamp, state.get(&key)) {
                Ok(next) => {
                    accepted.push(
                        json!({"request_id": request_id, "id": next.id.to_string(), "timestamp": timestamp})
                            .to_string(),
                    );
                    if !state.contains_key(&key) {
                        ids.push(key.clone());
                    }
                    state.insert(key, next);
                }
                Err(r) => {
                    let mut v = json!({"request_id": request_id, "code": r.code.as_str(), "reasons": r.reasons});
                    if parsed.names_target() && !key.is_empty() {
                        v["id"] = json!(key);
                    }
                    rejections.push(v.to_string());
                }
            }
            round.push(text);
        }
        input.push(round);
        accepted.sort();
        rejections.sort();
        expected.accepted.push(accepted);
        expected.rejections.push(rejections);

        let mut messages = BTreeMap::new();
        let mut feed = BTreeMap::new();
        let mut usage: BTreeMap<String, i64> = BTreeMap::new();
        for m in state.values() {
            messages.insert(
                json!({"id": m.id.to_string()}).to_string(),
                message_value(m).to_json_string(),
            );
            let entry = feed_value(m).to_json_string();
            for user in [&m.from, &m.to] {
                feed.insert(
                    json!({"user": user.to_string(), "id": m.id.to_string()}).to_string(),
                    entry.clone(),
                );
            }
            if !m.deleted {
                let mut files: Vec<_> = m.files.iter().map(|f| f.to_string()).collect();
                files.sort();
                files.dedup();
                for f in files {
                    *usage.entry(f).or_default() += 1;
                }
            }
        }
        let mut events = Vec::new();
        for f in in_use_before.keys().chain(usage.keys()) {
            let (was, is) = (in_use_before.contains_key(f), usage.contains_key(f));
            if was != is {
                events.push(json!({"fileId": f, "inUse": is}).to_string());
            }
        }
        events.sort();
        events.dedup();
        expected.file_events.push(events);
        expected.file_usage.push(
            usage
                .iter()
                .map(|(f, n)| {
                    (
                        json!({"file_id": f}).to_string(),
                        json!({"file_id": f, "count": n}).to_string(),
                    )
                })
                .collect(),
        );
        in_use_before = usage;
        expected.messages.push(messages);
        expected.feed.push(feed);
    }
    (input, expected)
}
