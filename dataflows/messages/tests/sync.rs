//! Simulated clients sync with `changes(user, after, limit)` and small limits while ops stream
//! in; each must end with exactly its user's messages, never seeing a timestamp go backwards.
//! The feed is served as the engine serves it: a [`ServedView`] partitioned by `user` and
//! versioned by `timestamp`, fed through the engine's sink path, which hands it final times
//! only. A view fed unfinished times would let a client's cursor pass a timestamp of the
//! epoch still being computed, and the client would never get that epoch's lower ones.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::model::generate;
use common::*;
use differential_dataflow::input::Input;
use sluice_messages::messages;
use sluice_runtime::exec::RunStatus;
use sluice_runtime::sink::{Sink, sink_rows};
use sluice_runtime::{Diff, Row, Time, Value};
use sluice_served::{Cursor, ServedView, ViewConfig};
use timely::dataflow::ProbeHandle;

/// One client of a user: the last timestamp it processed and the messages it holds.
struct Client {
    user: String,
    limit: usize,
    after: u64,
    seen: BTreeMap<String, String>,
    pages: usize,
}

impl Client {
    /// Asks for one page and applies it; returns whether it was empty.
    fn poll(&mut self, view: &ServedView) -> bool {
        // As the server asks: every entry of a version above the last timestamp processed.
        let after = Cursor::After {
            version: self.after,
            key: None,
        };
        let page = view.changes(&Value::str(self.user.as_str()), &after, self.limit);
        assert!(page.entries.len() <= self.limit);
        for entry in &page.entries {
            assert!(
                entry.version > self.after,
                "{} saw timestamp {} after {}",
                self.user,
                entry.version,
                self.after
            );
            assert_eq!(
                entry.key.get("user").and_then(Value::as_str),
                Some(self.user.as_str()),
                "{} was given another user's entry",
                self.user
            );
            let value = entry.value.as_ref().expect("feed rows always have a value");
            let timestamp = value.get("timestamp").and_then(|t| match t {
                Value::Int(n) => u64::try_from(*n).ok(),
                Value::UInt(n) => Some(*n),
                _ => None,
            });
            assert_eq!(timestamp, Some(entry.version), "the version is the entry's timestamp");
            self.after = entry.version;
            let id = entry
                .key
                .get("id")
                .and_then(Value::as_str)
                .expect("feed keys have an id");
            self.seen.insert(id.to_owned(), value.to_json_string());
        }
        self.pages += 1;
        page.entries.is_empty()
    }
}

fn sync(seed: u64, workers: usize) {
    let (input, expected) = generate(seed, 12);
    let view = ServedView::new(ViewConfig {
        name: "feed".to_owned(),
        partition_by: Some("user".to_owned()),
        version_field: Some("timestamp".to_owned()),
        retention_ms: None,
    });
    let worker_view = view.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let view = worker_view.clone();
        let mut ops = worker.dataflow::<Time, _, _>(|scope| {
            let (handle, ops) = scope.new_collection::<Row, Diff>();
            let feed = messages(
                ops,
                "messages",
                &mut sluice_runtime::recovery::StateRegistry::disabled(),
            )
            .feed
            .probe_with(&probe);
            let sink = (index == 0).then(|| Box::new(view.sink(None).expect("a fresh view")) as Box<dyn Sink>);
            sink_rows(feed, "feed", sink, Arc::new(RunStatus::new(1)), (false, 0), None);
            handle
        });
        let mut clients: Vec<Client> = if index == 0 {
            ["ann", "bob", "cat", "dan"]
                .iter()
                .flat_map(|u| {
                    // The spec's two clients with limit 2, and one that takes a change at a time.
                    [2, 2, 1].map(|limit| Client {
                        user: (*u).to_owned(),
                        limit,
                        after: 0,
                        seen: BTreeMap::new(),
                        pages: 0,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        for (i, round) in input.iter().enumerate() {
            let time = feed_round(&mut ops, i, round, index, peers);
            // Clients poll between steps, while the round is still being computed.
            while probe.less_equal(&time) {
                worker.step();
                for c in clients.iter_mut() {
                    c.poll(&view);
                }
            }
        }
        drop(ops);
        if index == 0 {
            while !view.progress().ended {
                worker.step();
                for c in clients.iter_mut() {
                    c.poll(&view);
                }
            }
            // Up to date: poll until an empty page.
            for c in clients.iter_mut() {
                while !c.poll(&view) {}
            }
        }
        while worker.step() {}
        clients
            .into_iter()
            .map(|c| (c.user, c.seen, c.pages))
            .collect::<Vec<_>>()
    })
    .expect("timely runs");

    let last = expected.feed.last().cloned().unwrap_or_default();
    let mut clients = 0;
    for result in guards.join() {
        for (user, seen, pages) in result.expect("worker finishes") {
            let mine: BTreeMap<String, String> = last
                .iter()
                .filter_map(|(k, v)| {
                    let key = parse(k);
                    (key.get("user").and_then(Value::as_str) == Some(&user)).then(|| {
                        (
                            key.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                            v.clone(),
                        )
                    })
                })
                .collect();
            assert_eq!(
                seen, mine,
                "seed {seed}, {workers} workers: {user}'s client after {pages} pages"
            );
            clients += 1;
        }
    }
    assert_eq!(clients, 12);
}

#[test]
fn clients_syncing_with_small_limits_end_with_their_users_messages() {
    for seed in 0..4 {
        sync(seed, 1);
    }
}

#[test]
fn clients_syncing_against_two_workers_end_with_their_users_messages() {
    for seed in 0..4 {
        sync(seed, 2);
    }
}
