//! A test harness for the messages dataflow: feeds ops in rounds (one time each) from several
//! partitions, captures every output's updates, and reads them back.

#![allow(dead_code)]

pub mod model;

use differential_dataflow::input::{Input, InputSession};
use sluice_messages::{OUTPUTS, messages, timestamp};
use sluice_runtime::testing::{self, Upserts};
use sluice_runtime::{DeadLetter, Diff, Pos, Row, Time, Value};
use timely::dataflow::ProbeHandle;

/// Output indexes, in the order of [`OUTPUTS`].
pub const MESSAGES: usize = 0;
/// See [`MESSAGES`].
pub const FEED: usize = 1;
/// See [`MESSAGES`].
pub const ACCEPTED: usize = 2;
/// See [`MESSAGES`].
pub const REJECTIONS: usize = 3;
/// See [`MESSAGES`].
pub const FILE_USAGE: usize = 4;
/// See [`MESSAGES`].
pub const FILE_USAGE_EVENTS: usize = 5;

/// Partitions the ops of a round are spread over.
pub const PARTITIONS: usize = 3;

/// The position of op `j` of `n` in round `i`: the round's ops fill the partitions in
/// contiguous blocks, so position order is `j` order and op `j` is ranked `j`.
pub fn op_pos(i: usize, j: usize, n: usize) -> Pos {
    Pos {
        source: 0,
        partition: (j * PARTITIONS / n.max(1)) as u32,
        offset: (i * 100_000 + j) as u64,
    }
}

/// The timestamp op `j` of round `i` gets.
pub fn ts(i: usize, j: usize) -> u64 {
    timestamp(i as Time + 1, j as u64).expect("small ranks have timestamps")
}

/// The id of the message the send at op `j` of round `i` creates.
pub fn id(i: usize, j: usize) -> String {
    sluice_messages::message_id(ts(i, j)).to_string()
}

/// Every update of every output.
#[derive(Debug, Default)]
pub struct Captured {
    /// Updates of each output, in the order of [`OUTPUTS`].
    pub outputs: Vec<Vec<(Row, Time, Diff)>>,
    /// Dead letters.
    pub errors: Vec<(DeadLetter, Time, Diff)>,
}

impl Captured {
    /// The contents of keyed output `index` at `at`.
    pub fn upserts_at(&self, index: usize, at: Time) -> Upserts {
        testing::upserts_at(&self.outputs[index], at, OUTPUTS[index])
    }

    /// The final contents of keyed output `index`.
    pub fn upserts(&self, index: usize) -> Upserts {
        self.upserts_at(index, Time::MAX)
    }

    /// The values of append output `index` inserted at exactly `at`, sorted.
    pub fn events_at(&self, index: usize, at: Time) -> Vec<String> {
        let mut out = Vec::new();
        let at_time: Vec<_> = self.outputs[index].iter().filter(|u| u.1 == at).cloned().collect();
        for (row, d) in testing::accumulate(&at_time, at) {
            for _ in 0..d {
                out.push(row.val.to_json_string());
            }
        }
        out.sort();
        out
    }

    /// Every value of append output `index`, sorted.
    pub fn events(&self, index: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (row, d) in testing::accumulate(&self.outputs[index], Time::MAX) {
            assert!(d > 0, "{} retracts {row:?}", OUTPUTS[index]);
            for _ in 0..d {
                out.push(row.val.to_json_string());
            }
        }
        out.sort();
        out
    }

    /// The final dead letters.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        testing::dead_letters_at(&self.errors, Time::MAX)
    }

    /// The outcome (`"accepted"` or the rejection code) of request `request_id`.
    pub fn outcome(&self, request_id: &str) -> String {
        let key = format!("{{\"request_id\":\"{request_id}\"}}");
        let accepted = self.events_by_key(ACCEPTED, &key);
        let rejected = self.events_by_key(REJECTIONS, &key);
        match (accepted.as_slice(), rejected.as_slice()) {
            ([_], []) => "accepted".to_owned(),
            ([], [r]) => r.get("code").and_then(|c| c.as_str()).unwrap_or("?").to_owned(),
            other => panic!("request {request_id} has outcomes {other:?}"),
        }
    }

    /// The values of append output `index` with key JSON `key`.
    pub fn events_by_key(&self, index: usize, key: &str) -> Vec<Value> {
        testing::accumulate(&self.outputs[index], Time::MAX)
            .into_iter()
            .filter(|(row, _)| row.key.to_json_string() == key)
            .map(|(row, _)| row.val)
            .collect()
    }
}

/// Parses JSON.
pub fn parse(json: &str) -> Value {
    Value::from_json_str(json).expect("test JSON")
}

/// Feeds round `i` at time `i + 1` (op `j` at [`op_pos`], from worker `j % peers`), closes
/// that time, and returns it.
pub fn feed_round(
    input: &mut InputSession<Time, Row, Diff>,
    i: usize,
    round: &[String],
    index: usize,
    peers: usize,
) -> Time {
    let time = i as Time + 1;
    input.advance_to(time);
    for (j, json) in round.iter().enumerate() {
        if j % peers == index {
            input.insert(Row {
                key: Value::Null,
                val: parse(json),
                pos: op_pos(i, j, round.len()),
            });
        }
    }
    input.advance_to(time + 1);
    input.flush();
    time
}

/// Runs the dataflow on `workers` workers; round `i` enters at time `i + 1`, op `j` of it at
/// [`op_pos`]. Worker `w` feeds ops `w, w + workers, …` (not by partition: the dataflow
/// must regroup them).
pub fn run(rounds: &[Vec<String>], workers: usize) -> Captured {
    let rounds = rounds.to_vec();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let (mut input, captured) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, ops) = scope.new_collection::<Row, Diff>();
            let (outputs, errors) = messages(
                ops,
                "messages",
                &mut sluice_runtime::recovery::StateRegistry::disabled(),
            )
            .split();
            (input, testing::capture(outputs, errors, &probe))
        });
        for (i, round) in rounds.iter().enumerate() {
            let time = feed_round(&mut input, i, round, index, peers);
            testing::step_past(worker, &probe, time);
        }
        drop(input);
        testing::step_to_end(worker, &probe);
        std::mem::take(&mut *captured.borrow_mut())
    })
    .expect("timely runs");
    let mut all = sluice_runtime::testing::Updates::default();
    for result in guards.join() {
        all.absorb(result.expect("worker finishes"));
    }
    Captured {
        outputs: all.outputs,
        errors: all.errors,
    }
}
