//! Simulated clients sync with `changes(user, after, limit)` and small limits while ops stream
//! in; each must end with exactly its user's messages, never seeing a timestamp go backwards.
//! The view is fed through the engine's sink path, which hands it final times only.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::model::generate;
use common::*;
use differential_dataflow::input::Input;
use sluice_messages::{FeedView, messages};
use sluice_runtime::exec::RunStatus;
use sluice_runtime::sink::sink_rows;
use sluice_runtime::{Diff, Row, Time, Value};
use timely::dataflow::ProbeHandle;

/// One client of a user: the last timestamp it processed and the messages it holds.
struct Client {
    user: String,
    limit: i64,
    after: u64,
    seen: BTreeMap<String, String>,
    pages: usize,
}

impl Client {
    /// Asks for one page and applies it; returns whether it was empty.
    fn poll(&mut self, view: &FeedView) -> bool {
        let page = view
            .changes(&self.user, self.after, Some(self.limit))
            .expect("a valid limit");
        assert!(page.entries.len() <= self.limit as usize);
        for entry in &page.entries {
            assert!(
                entry.timestamp > self.after,
                "{} saw timestamp {} after {}",
                self.user,
                entry.timestamp,
                self.after
            );
            self.after = entry.timestamp;
            self.seen.insert(entry.id.to_string(), entry.data.to_json_string());
        }
        self.pages += 1;
        page.entries.is_empty()
    }
}

fn sync(seed: u64, workers: usize) {
    let (input, expected) = generate(seed, 12);
    let view = FeedView::new();
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
            let sink = (index == 0).then(|| view.sink());
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
            while view.frontier() != Some(None) {
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
