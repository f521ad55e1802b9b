use super::*;

fn config(name: &str) -> ViewConfig {
    ViewConfig {
        name: name.to_owned(),
        partition_by: None,
        version_field: None,
        retention_ms: None,
    }
}

fn key(k: i64) -> Value {
    Value::map([("k", Value::Int(k))])
}

fn row(k: i64, v: &str) -> Row {
    Row::derived(key(k), Value::map([("k", Value::Int(k)), ("v", Value::str(v))]))
}

/// Writes one time's updates, sorted as the engine gives them, and advances past it.
fn step(sink: &mut ServedSink, time: Time, mut updates: Vec<(Row, Diff)>) {
    updates.sort();
    sink.write(time, &updates).expect("write");
    sink.commit(Some(time + 1)).expect("commit");
}

/// Every entry of a partition after `after`, read in pages of `limit`.
fn read_all(view: &ServedView, partition: &Value, after: Cursor, limit: usize) -> (Vec<Entry>, Page) {
    let mut cursor = after;
    let mut all = Vec::new();
    loop {
        let page = view.changes(partition, &cursor, limit);
        all.extend(page.entries.iter().cloned());
        cursor = page.next.clone();
        if page.caught_up {
            return (all, page);
        }
    }
}

fn values(entries: &[Entry]) -> Vec<(i64, Option<String>)> {
    entries
        .iter()
        .map(|e| {
            let k = match e.key.get("k") {
                Some(Value::Int(k)) => *k,
                _ => -1,
            };
            (
                k,
                e.value
                    .as_ref()
                    .map(|v| v.get("v").map(|v| v.to_json_string()).unwrap_or_default()),
            )
        })
        .collect()
}

#[test]
fn a_key_keeps_its_latest_change_and_a_deletion_stays_as_a_tombstone() {
    let view = ServedView::new(config("t"));
    let mut sink = view.sink(None).expect("sink");
    step(
        &mut sink,
        10,
        vec![(row(1, "a"), 1), (row(2, "b"), 1), (row(3, "c"), 1)],
    );
    step(
        &mut sink,
        20,
        vec![(row(1, "a"), -1), (row(1, "a2"), 1), (row(2, "b"), -1)],
    );
    let (all, page) = read_all(&view, &Value::Null, Cursor::Start, 100);
    assert_eq!(
        values(&all),
        vec![(3, Some("\"c\"".into())), (1, Some("\"a2\"".into())), (2, None)]
    );
    assert_eq!(all.iter().map(|e| e.version).collect::<Vec<_>>(), vec![10, 20, 20]);
    assert_eq!(page.frontier, 21);
    let progress = view.progress();
    assert_eq!((progress.live, progress.tombstones), (2, 1));
    // After time 10, only what changed since.
    let (since, _) = read_all(&view, &Value::Null, Cursor::through(11), 100);
    assert_eq!(values(&since), vec![(1, Some("\"a2\"".into())), (2, None)]);
    assert!(view.get(&Value::Null, &key(2)).is_some_and(|e| e.value.is_none()));
}

#[test]
fn paging_through_a_view_that_changes_meanwhile_ends_with_its_state() {
    let view = ServedView::new(config("t"));
    let mut sink = view.sink(None).expect("sink");
    step(&mut sink, 1, (0..10).map(|k| (row(k, "x"), 1)).collect());
    let first = view.changes(&Value::Null, &Cursor::Start, 4);
    assert_eq!(first.entries.len(), 4);
    assert!(!first.caught_up);
    // Key 0 (read) and key 9 (not yet read) change: both come again, at their new version.
    step(
        &mut sink,
        2,
        vec![(row(0, "x"), -1), (row(0, "y"), 1), (row(9, "x"), -1), (row(9, "y"), 1)],
    );
    let (rest, page) = read_all(&view, &Value::Null, first.next.clone(), 4);
    let mut state: std::collections::BTreeMap<i64, Option<String>> = Default::default();
    for (k, v) in values(&first.entries).into_iter().chain(values(&rest)) {
        state.insert(k, v);
    }
    assert_eq!(state.len(), 10);
    assert_eq!(state[&0], Some("\"y\"".into()));
    assert_eq!(state[&9], Some("\"y\"".into()));
    assert_eq!(page.frontier, 3);
    assert_eq!(values(&rest).iter().filter(|(k, _)| *k == 9).count(), 1, "9 read once");
}

#[test]
fn partitions_are_read_separately_and_a_key_that_moves_leaves_a_deletion() {
    let view = ServedView::new(ViewConfig {
        partition_by: Some("user".into()),
        ..config("feed")
    });
    let mut sink = view.sink(None).expect("sink");
    let r = |k: i64, user: &str| {
        Row::derived(
            key(k),
            Value::map([("user", Value::str(user)), ("v", Value::str(user))]),
        )
    };
    step(&mut sink, 5, vec![(r(1, "ann"), 1), (r(2, "bob"), 1)]);
    step(&mut sink, 6, vec![(r(1, "ann"), -1), (r(1, "bob"), 1)]);
    let ann = read_all(&view, &Value::str("ann"), Cursor::Start, 10).0;
    let bob = read_all(&view, &Value::str("bob"), Cursor::Start, 10).0;
    assert_eq!(values(&ann), vec![(1, None)]);
    assert_eq!(
        values(&bob),
        vec![(2, Some("\"bob\"".into())), (1, Some("\"bob\"".into()))]
    );
    assert!(read_all(&view, &Value::str("cat"), Cursor::Start, 10).1.caught_up);
}

#[test]
fn a_version_field_orders_entries_and_sets_the_frontier() {
    let view = ServedView::new(ViewConfig {
        version_field: Some("timestamp".into()),
        ..config("feed")
    });
    let mut sink = view.sink(None).expect("sink");
    let r = |k: i64, ts: i64| {
        Row::derived(
            key(k),
            Value::map([("timestamp", Value::Int(ts)), ("v", Value::Int(ts))]),
        )
    };
    step(&mut sink, 100, vec![(r(1, 7), 1), (r(2, 5), 1)]);
    step(&mut sink, 200, vec![(r(2, 5), -1), (r(2, 9), 1)]);
    let (all, page) = read_all(&view, &Value::Null, Cursor::Start, 10);
    assert_eq!(all.iter().map(|e| e.version).collect::<Vec<_>>(), vec![7, 9]);
    assert_eq!(page.frontier, 10);
    let after7 = view.changes(&Value::Null, &Cursor::After { version: 7, key: None }, 10);
    assert_eq!(after7.entries.len(), 1);
    // A row without the field is a configuration error, not a silent skip.
    let bad = Row::derived(key(3), Value::map([("v", Value::Int(1))]));
    assert!(sink.write(300, &[(bad, 1)]).is_err());
}

#[test]
fn tombstones_past_their_retention_go_and_raise_the_horizon() {
    let view = ServedView::new(ViewConfig {
        retention_ms: Some(100),
        ..config("t")
    });
    let mut sink = view
        .sink(Some(&ServedView::new(config("t")).save().expect("save").0))
        .expect("restore");
    assert_eq!(view.progress().horizon, 0);
    step(&mut sink, 1000, vec![(row(1, "a"), 1), (row(2, "b"), 1)]);
    step(&mut sink, 1010, vec![(row(1, "a"), -1)]);
    assert_eq!(view.progress().tombstones, 1);
    step(&mut sink, 1100, vec![(row(2, "b"), -1), (row(2, "c"), 1)]);
    assert_eq!(view.progress().tombstones, 1, "not yet: 1010 + 100 > 1101");
    sink.commit(Some(1111)).expect("commit");
    let progress = view.progress();
    assert_eq!((progress.tombstones, progress.live, progress.horizon), (0, 1, 1011));
    assert!(view.get(&Value::Null, &key(1)).is_none());
}

#[test]
fn a_view_started_without_a_checkpoint_refuses_older_cursors() {
    let view = ServedView::new(config("t"));
    let _sink = view.sink(None).expect("sink");
    assert!(view.progress().horizon >= 1_700_000_000_000, "the start time");
}

#[test]
fn a_checkpointed_view_restores_entries_tombstones_and_progress() {
    let view = ServedView::new(ViewConfig {
        retention_ms: Some(50),
        ..config("t")
    });
    let mut sink = view.sink(None).expect("sink");
    step(&mut sink, 10, vec![(row(1, "a"), 1), (row(2, "b"), 1)]);
    step(&mut sink, 20, vec![(row(2, "b"), -1)]);
    let saved = sink.checkpoint(0).expect("checkpoint").expect("a view");
    let before = read_all(&view, &Value::Null, Cursor::Start, 10).0;
    let progress = view.progress();

    let restored = ServedView::new(ViewConfig {
        retention_ms: Some(50),
        ..config("t")
    });
    let mut sink = restored.sink(Some(&saved)).expect("restore");
    assert_eq!(read_all(&restored, &Value::Null, Cursor::Start, 10).0, before);
    assert_eq!(restored.progress(), progress);
    // The restored tombstone still expires.
    sink.commit(Some(100)).expect("commit");
    assert_eq!(restored.progress().tombstones, 0);
    assert!(restored.sink(Some(b"not a view")).is_err());
}

#[test]
fn the_view_is_durable_only_through_its_last_checkpoint() {
    let view = ServedView::new(config("t"));
    let mut sink = view.sink(None).expect("sink");
    step(&mut sink, 10, vec![(row(1, "a"), 1)]);
    assert_eq!(sink.durable(), Some(0), "nothing saved yet");
    sink.checkpoint(0).expect("checkpoint");
    step(&mut sink, 20, vec![(row(2, "b"), 1)]);
    assert_eq!(sink.durable(), Some(11));
    sink.commit(None).expect("end");
    assert_eq!(sink.durable(), None, "an ended output holds back nothing");
}

#[test]
fn readers_are_woken_when_the_frontier_moves() {
    let view = ServedView::new(config("t"));
    let mut sink = view.sink(None).expect("sink");
    let mut watch = view.watch();
    watch.mark_unchanged();
    sink.commit(Some(5)).expect("commit");
    assert!(watch.has_changed().expect("open"));
    watch.mark_unchanged();
    sink.commit(Some(5)).expect("commit");
    assert!(!watch.has_changed().expect("open"), "no wake-up without progress");
    sink.commit(None).expect("end");
    assert!(watch.has_changed().expect("open"));
    assert!(view.progress().ended);
}
