use std::sync::Arc;

use sluice_runtime::ingest::{Ingested, Ingester, JsonDecoder};
use sluice_runtime::record::Pos;
use sluice_runtime::spec::{Envelope, KeyFields, Loc};

use super::*;

/// What a test sees of a record: `(offset, key, payload)` as text.
type Rec = (u64, Option<String>, Option<String>);

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Polls until the reader is idle, `max` records at a time.
fn poll_all(reader: &mut dyn PartitionReader, max: usize) -> Vec<Rec> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let mut buf = Vec::new();
        let state = reader.poll(&mut buf, max).expect("poll");
        assert!(buf.len() <= max, "{} records for max {max}", buf.len());
        out.extend(buf.into_iter().map(|r| (r.offset, text(r.key), text(r.payload))));
        if state == ReadState::Idle {
            return out;
        }
        assert_eq!(state, ReadState::More);
    }
    panic!("reader never went idle");
}

/// The payloads and tombstone keys of `recs`, as `+payload` / `-key`.
fn changes(recs: &[Rec]) -> Vec<String> {
    recs.iter()
        .map(|(_, key, payload)| match payload {
            Some(p) => format!("+{p}"),
            None => format!("-{}", key.as_deref().unwrap_or("?")),
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    source: TableFileSource,
}

impl Fixture {
    fn new(name: &str, content: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let source = TableFileSource::new(&path, TableFormat::from_path(&path), vec!["id".into()], 0);
        Fixture {
            _dir: dir,
            path,
            source,
        }
    }

    fn open(&self, from: &Position) -> Box<dyn PartitionReader> {
        let parts = self.source.discover().expect("discover");
        assert_eq!(parts.len(), 1);
        self.source.open(&parts[0], from).expect("open")
    }

    fn write(&self, content: &str) {
        std::fs::write(&self.path, content).expect("write");
    }

    /// Moves the file's modification time into the past, as if it was saved a while ago.
    fn settle(&self) {
        let file = std::fs::File::options().write(true).open(&self.path).expect("open");
        file.set_modified(SystemTime::now() - Duration::from_secs(10))
            .expect("set_modified");
    }
}

const THREE: &str = r#"{"id":"a","n":1}
{"id":"b","n":2}
{ "n": 3, "id": "c" }
"#;

#[test]
fn source_shape() {
    let f = Fixture::new("subs.jsonl", THREE);
    let parts = f.source.discover().expect("discover");
    assert_eq!(parts[0].id, f.path.to_string_lossy());
    assert!(parts[0].parents.is_empty());
    assert!(!f.source.bounded());
    assert_eq!(f.source.offset_label(), "line");
    assert_eq!(TableFormat::from_path("x/subs.TOML"), TableFormat::Toml);
    assert_eq!(TableFormat::from_path("subs.jsonl"), TableFormat::JsonLines);
    assert_eq!(TableFormat::from_path("subs"), TableFormat::JsonLines);
    let missing = TableFileSource::new(
        f.path.with_extension("nope"),
        TableFormat::JsonLines,
        vec!["id".into()],
        0,
    );
    assert!(matches!(missing.discover(), Err(SourceError::Config(m)) if m.contains("does not exist")));
    let keyless = TableFileSource::new(&f.path, TableFormat::JsonLines, Vec::new(), 0);
    assert!(matches!(keyless.discover(), Err(SourceError::Config(_))));
    let wrong = PartitionInfo {
        id: "other".into(),
        parents: Vec::new(),
    };
    assert!(matches!(
        f.source.open(&wrong, &Position::Start),
        Err(SourceError::Config(_))
    ));
}

#[test]
fn initial_load_emits_every_row_in_canonical_json() {
    let f = Fixture::new("subs.jsonl", THREE);
    let mut r = f.open(&Position::Start);
    let recs = poll_all(r.as_mut(), 100);
    assert_eq!(
        recs,
        vec![
            (1, Some(r#"{"id":"a"}"#.into()), Some(r#"{"id":"a","n":1}"#.into())),
            (2, Some(r#"{"id":"b"}"#.into()), Some(r#"{"id":"b","n":2}"#.into())),
            (3, Some(r#"{"id":"c"}"#.into()), Some(r#"{"id":"c","n":3}"#.into())),
        ]
    );
    // Nothing changed: nothing more, however often it is polled.
    assert!(poll_all(r.as_mut(), 100).is_empty());
    assert!(matches!(r.position(), Position::Table(ref v) if v.as_list().map(<[Value]>::len) == Some(3)));
    assert_eq!(r.position().to_string(), "table of 3 rows");
}

#[test]
fn an_edit_emits_only_the_changed_row_and_a_removal_a_tombstone() {
    let f = Fixture::new("subs.jsonl", THREE);
    let mut r = f.open(&Position::Start);
    poll_all(r.as_mut(), 100);
    // Same length, so only the stamp's time tells (or the racy-window re-read).
    f.write(&THREE.replace(r#""n":2"#, r#""n":7"#));
    assert_eq!(changes(&poll_all(r.as_mut(), 100)), vec![r#"+{"id":"b","n":7}"#]);
    // Reformatting and reordering rows is not a change.
    f.write("{\"id\":\"c\",\"n\":3}\n\n{\"n\":7,\"id\":\"b\"}\r\n{\"id\": \"a\", \"n\": 1}\n");
    assert!(poll_all(r.as_mut(), 100).is_empty());
    f.write("{\"id\":\"a\",\"n\":1}\n{\"id\":\"c\",\"n\":3}\n");
    let recs = poll_all(r.as_mut(), 100);
    assert_eq!(changes(&recs), vec![r#"-{"id":"b"}"#]);
    // Offsets keep increasing across reloads (the upsert envelope orders by them).
    assert_eq!(recs[0].0, 5);
}

#[test]
fn the_last_row_of_a_key_wins() {
    let f = Fixture::new("subs.jsonl", "{\"id\":\"a\",\"n\":1}\n{\"id\":\"a\",\"n\":2}\n");
    let mut r = f.open(&Position::Start);
    assert_eq!(changes(&poll_all(r.as_mut(), 100)), vec![r#"+{"id":"a","n":2}"#]);
}

#[test]
fn bad_lines_pass_through_once_with_their_line_numbers() {
    let f = Fixture::new(
        "subs.jsonl",
        "{\"id\":\"a\"}\n{oops\n[1,2]\n\n{\"name\":\"no id\"}\n{\"id\":\"b\"}\n",
    );
    let mut r = f.open(&Position::Start);
    let recs = poll_all(r.as_mut(), 100);
    let expected: Vec<Rec> = vec![
        (1, Some(r#"{"id":"a"}"#.into()), Some(r#"{"id":"a"}"#.into())),
        (2, None, Some("{oops".into())),
        (3, None, Some("[1,2]".into())),
        (5, None, Some(r#"{"name":"no id"}"#.into())),
        (2, Some(r#"{"id":"b"}"#.into()), Some(r#"{"id":"b"}"#.into())),
    ];
    assert_eq!(recs, expected);
    // Bad rows are not part of the table.
    assert_eq!(r.position().to_string(), "table of 2 rows");
    // Another edit: the bad lines still there are not passed on again; a new one is.
    f.write("{\"id\":\"a\",\"x\":1}\n{oops\n[1,2]\n\n{\"name\":\"no id\"}\n{\"id\":\"b\"}\n{bad\n");
    assert_eq!(
        changes(&poll_all(r.as_mut(), 100)),
        vec![r#"+{"id":"a","x":1}"#, "+{bad"]
    );
}

#[test]
fn records_decode_as_upserts_tombstones_and_dead_letters() {
    // The contract with the runtime: what this source emits, the upsert envelope keyed by
    // the same fields turns into upserts, deletions and dead letters.
    let f = Fixture::new(
        "subs.jsonl",
        "{\"id\":\"x\",\"n\":1}\n{\"id\":\"y\"}\n{oops\n{\"n\":2}\n",
    );
    let ingester = Ingester::new(
        "subscribers",
        Arc::new(JsonDecoder),
        Envelope::Upsert {
            key: Some(KeyFields {
                fields: vec![vec!["id".to_owned()]],
                loc: Loc::default(),
                path: String::new(),
            }),
            deleted_field: None,
        },
    );
    let ingest = |reader: &mut dyn PartitionReader| {
        let mut buf = Vec::new();
        reader.poll(&mut buf, 100).expect("poll");
        buf.iter()
            .map(|rec| {
                let pos = Pos {
                    source: 0,
                    partition: 0,
                    offset: rec.offset,
                };
                ingester.ingest(pos, rec.key.as_deref(), rec.payload.as_deref())
            })
            .collect::<Vec<_>>()
    };
    let mut r = f.open(&Position::Start);
    let first = ingest(r.as_mut());
    assert_eq!(first.len(), 4);
    assert_eq!(
        first[0],
        Ingested::Upsert {
            key: Value::map([("id", Value::str("x"))]),
            val: Some(Value::map([("id", Value::str("x")), ("n", Value::Int(1))])),
        }
    );
    assert!(matches!(&first[2], Ingested::Dead(d) if d.pos.offset == 3));
    assert!(matches!(&first[3], Ingested::Dead(d) if d.pos.offset == 4 && &*d.reason == "missing key field `id`"));
    f.write("{\"id\":\"y\"}\n{oops\n{\"n\":2}\n");
    assert_eq!(
        ingest(r.as_mut()),
        vec![Ingested::Upsert {
            key: Value::map([("id", Value::str("x"))]),
            val: None,
        }]
    );
}

const SUBSCRIBERS_TOML: &str = r#"# The hub's subscribers.
[[subscriber]]
id = "billing"
topic = "orders"
headers = { region = "eu", retries = 3, nested = { deep = true } }
tags = ["a", "b"]
since = 2024-01-02T03:04:05Z
weight = 0.5

[[subscriber]]
id = "lights"
enabled = true

[subscriber.target]
url = "http://x"

[[subscriber]]
topic = "no id"

[settings]
x = 1
"#;

#[test]
fn toml_arrays_of_tables_are_rows() {
    let f = Fixture::new("subs.toml", SUBSCRIBERS_TOML);
    let mut r = f.open(&Position::Start);
    let recs = poll_all(r.as_mut(), 100);
    let expected: Vec<Rec> = vec![
        (
            1,
            Some(r#"{"id":"billing"}"#.into()),
            Some(
                r#"{"headers":{"nested":{"deep":true},"region":"eu","retries":3},"id":"billing","since":"2024-01-02T03:04:05Z","tags":["a","b"],"topic":"orders","weight":0.5}"#
                    .into(),
            ),
        ),
        (
            2,
            Some(r#"{"id":"lights"}"#.into()),
            Some(r#"{"enabled":true,"id":"lights","target":{"url":"http://x"}}"#.into()),
        ),
        // The keyless row, at its header's line, for the runtime to dead-letter.
        (17, None, Some(r#"{"topic":"no id"}"#.into())),
    ];
    assert_eq!(recs, expected);
    // A comment or a reordering is not a change; an edit is.
    f.write(&format!(
        "# edited\n{}",
        SUBSCRIBERS_TOML.replace("weight = 0.5", "weight = 0.75")
    ));
    assert_eq!(
        changes(&poll_all(r.as_mut(), 100)),
        vec![
            r#"+{"headers":{"nested":{"deep":true},"region":"eu","retries":3},"id":"billing","since":"2024-01-02T03:04:05Z","tags":["a","b"],"topic":"orders","weight":0.75}"#
        ]
    );
}

#[test]
fn invalid_toml_keeps_the_previous_table() {
    let f = Fixture::new("subs.toml", SUBSCRIBERS_TOML);
    let mut r = f.open(&Position::Start);
    poll_all(r.as_mut(), 100);
    let before = r.position();
    // A half-written save: recent, so read again at the next poll; then settled, so it is
    // reported and kept out. Either way nothing is emitted, least of all tombstones.
    let half = &SUBSCRIBERS_TOML[..SUBSCRIBERS_TOML.find("[subscriber.tar").expect("header") + 5];
    f.write(half);
    assert!(poll_all(r.as_mut(), 100).is_empty());
    f.settle();
    assert!(poll_all(r.as_mut(), 100).is_empty());
    assert_eq!(r.position(), before);
    // Fixed: the differences from the table before the bad save.
    f.write(&SUBSCRIBERS_TOML.replace("enabled = true", "enabled = false"));
    assert_eq!(
        changes(&poll_all(r.as_mut(), 100)),
        vec![r#"+{"enabled":false,"id":"lights","target":{"url":"http://x"}}"#]
    );
}

#[test]
fn a_half_written_last_line_waits_for_the_rest() {
    let f = Fixture::new("subs.jsonl", "{\"id\":\"a\"}\n{\"id\":\"b\",\"n");
    let mut r = f.open(&Position::Start);
    assert!(poll_all(r.as_mut(), 100).is_empty());
    f.write("{\"id\":\"a\"}\n{\"id\":\"b\",\"n\":1}");
    assert_eq!(
        changes(&poll_all(r.as_mut(), 100)),
        vec![r#"+{"id":"a"}"#, r#"+{"id":"b","n":1}"#]
    );
    // A malformed last line that stays is a bad row once the file has settled.
    f.write("{\"id\":\"a\"}\n{\"id\":\"b\",\"n\":1}\n{oops");
    assert!(poll_all(r.as_mut(), 100).is_empty());
    f.settle();
    assert_eq!(changes(&poll_all(r.as_mut(), 100)), vec!["+{oops"]);
}

#[test]
fn resuming_from_a_position_emits_what_changed_while_down() {
    let f = Fixture::new("subs.jsonl", THREE);
    let mut r = f.open(&Position::Start);
    poll_all(r.as_mut(), 100);
    let checkpoint = r.position();
    drop(r);
    // While down: b changed, c deleted, d added; a untouched.
    f.write("{\"id\":\"a\",\"n\":1}\n{\"id\":\"d\",\"n\":4}\n{\"id\":\"b\",\"n\":20}\n");
    let mut resumed = f.open(&checkpoint);
    assert_eq!(
        changes(&poll_all(resumed.as_mut(), 100)),
        vec![r#"+{"id":"d","n":4}"#, r#"+{"id":"b","n":20}"#, r#"-{"id":"c"}"#]
    );
    // The position survives the checkpoint's JSON encoding.
    let json = serde_json::to_string(&resumed.position()).expect("encode");
    let decoded: Position = serde_json::from_str(&json).expect("decode");
    let mut again = f.open(&decoded);
    assert!(poll_all(again.as_mut(), 100).is_empty());
    // From the start, everything is new.
    let mut fresh = f.open(&Position::Start);
    assert_eq!(poll_all(fresh.as_mut(), 100).len(), 3);
}

#[test]
fn a_malformed_position_is_a_config_error() {
    let f = Fixture::new("subs.jsonl", THREE);
    let part = &f.source.discover().expect("discover")[0];
    let pair = |k: Value, h: Value| Value::list([Value::list([k, h])]);
    for bad in [
        Position::Offset(3),
        Position::Table(Value::str("x")),
        Position::Table(Value::list([Value::str("x")])),
        Position::Table(pair(Value::str(r#"{"id":"a"}"#), Value::str("-1"))),
        Position::Table(pair(Value::str(r#"{"id":"a"}"#), Value::Bool(true))),
        Position::Table(pair(Value::str("not json"), Value::str("1"))),
    ] {
        assert!(
            matches!(f.source.open(part, &bad), Err(SourceError::Config(_))),
            "{bad}"
        );
    }
    let good = pair(Value::str(r#"{"id":"a"}"#), Value::Int(7));
    assert!(f.source.open(part, &Position::Table(good)).is_ok());
}

#[test]
fn a_file_replaced_by_rename_is_seen_and_a_missing_one_keeps_the_table() {
    let f = Fixture::new("subs.jsonl", THREE);
    let mut r = f.open(&Position::Start);
    poll_all(r.as_mut(), 100);
    let before = r.position();
    // Gone for a moment (between an editor's unlink and rename): nothing changes.
    let tmp = f.path.with_extension("tmp");
    std::fs::rename(&f.path, &tmp).expect("rename away");
    assert!(poll_all(r.as_mut(), 100).is_empty());
    assert_eq!(r.position(), before);
    // A new file renamed over the old one, same length and (as far as the test can make
    // it) the same time: the inode tells.
    std::fs::write(&tmp, THREE.replace(r#""n":1"#, r#""n":9"#)).expect("write");
    std::fs::rename(&tmp, &f.path).expect("rename over");
    f.settle();
    assert_eq!(changes(&poll_all(r.as_mut(), 100)), vec![r#"+{"id":"a","n":9}"#]);
}

#[test]
fn max_is_respected_and_the_position_follows_what_was_returned() {
    let rows: String = (0..5).map(|i| format!("{{\"id\":\"r{i}\"}}\n")).collect();
    let f = Fixture::new("subs.jsonl", &rows);
    let mut r = f.open(&Position::Start);
    let mut buf = Vec::new();
    assert_eq!(r.poll(&mut buf, 2).expect("poll"), ReadState::More);
    assert_eq!(buf.len(), 2);
    assert_eq!(r.position().to_string(), "table of 2 rows");
    // Resuming here emits the other three, not all five.
    let mut resumed = f.open(&r.position());
    assert_eq!(poll_all(resumed.as_mut(), 100).len(), 3);
    let rest = poll_all(r.as_mut(), 2);
    assert_eq!(rest.len(), 3);
    assert_eq!(r.position().to_string(), "table of 5 rows");
    let mut buf = Vec::new();
    assert_eq!(r.poll(&mut buf, 2).expect("poll"), ReadState::Idle);
    assert!(buf.is_empty());
}

#[test]
fn the_file_is_checked_at_most_every_poll_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("subs.jsonl");
    std::fs::write(&path, THREE).expect("write");
    let source = TableFileSource::new(&path, TableFormat::JsonLines, vec!["id".into()], 60_000);
    let part = &source.discover().expect("discover")[0];
    let mut r = source.open(part, &Position::Start).expect("open");
    assert_eq!(poll_all(r.as_mut(), 100).len(), 3);
    std::fs::write(&path, "").expect("write");
    assert!(poll_all(r.as_mut(), 100).is_empty());
}

#[test]
fn toml_values_convert_to_json() {
    let keys = vec![vec!["id".to_owned()]];
    let doc = "[[t]]\nid = 1\nf = inf\ng = -inf\nh = nan\nd = 1979-05-27\nlt = 07:32:00\n[[t.sub]]\nx = 1\n[[t.sub]]\nx = 2\n";
    let table = parse::toml(doc.as_bytes(), &keys).expect("parse");
    let row = table.rows.get(r#"{"id":1}"#).expect("row");
    assert_eq!(
        String::from_utf8_lossy(&row.json),
        r#"{"d":"1979-05-27","f":"inf","g":"-inf","h":"nan","id":1,"lt":"07:32:00","sub":[{"x":1},{"x":2}]}"#
    );
    assert_eq!(row.line, 1);
    match parse::toml(b"[[t]]\nid = \n", &keys) {
        Err(parse::ParseError::Toml { line, .. }) => assert_eq!(line, 2),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(parse::toml(&[0xff], &keys), Err(parse::ParseError::Utf8(_))));
    // A byte order mark is not part of the first row.
    let bom = parse::json_lines(b"\xef\xbb\xbf{\"id\":1}\n", &keys);
    assert!(bom.rejected.is_empty() && bom.rows.contains_key(r#"{"id":1}"#));
    assert!(parse::toml(b"\xef\xbb\xbf[[t]]\nid = 1\n", &keys).is_ok_and(|t| t.rows.len() == 1));
    // The hash is a fixed function: positions written by one build are read by the next.
    assert_eq!(sluice_runtime::source::stable_hash(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(sluice_runtime::source::stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
}
