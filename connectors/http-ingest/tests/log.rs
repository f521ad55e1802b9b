//! The log under the endpoint: restarts, torn tails, segments, resuming and commits.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::*;
use serde_json::json;
use sluice_connector_http_ingest::{HttpIngestSource, IngestConfig, IngestError};
use sluice_runtime::source::{Position, Source, SourceError};

/// Publishes events `from..to` to topic `t`, checking each line number.
async fn publish_range(source: &HttpIngestSource, from: u64, to: u64) {
    let client = reqwest::Client::new();
    for n in from..to {
        let answer = publish(&client, source.local_addr(), "t", &json!({"n": n})).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.json()["offset"], json!(n + 1), "event {n}");
    }
}

/// The `n` of every event read from `from`, with its line number.
fn numbers(source: &HttpIngestSource, from: &Position) -> Vec<(u64, u64)> {
    read(source, "p0", from)
        .iter()
        .map(|r| (r.offset, payload(r)["data"]["n"].as_u64().expect("n")))
        .collect()
}

fn expected(from: u64, to: u64) -> Vec<(u64, u64)> {
    (from..to).map(|n| (n + 1, n)).collect()
}

/// Segment start offsets in the partition directory, oldest first.
fn segments(dir: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = fs::read_dir(dir.join("p0"))
        .expect("partition dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    starts.sort_unstable();
    starts
}

fn small_segments(dir: &Path) -> IngestConfig {
    IngestConfig {
        segment_bytes: 100,
        ..config(dir)
    }
}

#[tokio::test]
async fn acknowledged_events_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    publish_range(&source, 0, 10).await;
    drop(source);

    let source = start(config(dir.path()));
    assert_eq!(numbers(&source, &Position::Start), expected(0, 10));
    publish_range(&source, 10, 12).await;
    assert_eq!(numbers(&source, &Position::Start), expected(0, 12));
}

#[tokio::test]
async fn a_torn_tail_is_cut_at_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    publish_range(&source, 0, 3).await;
    let Some(Position::Line { byte, .. }) = source.durable_end("p0") else {
        panic!("no durable end");
    };
    drop(source);
    let segment = dir.path().join("p0").join(format!("{:020}.log", 0));
    let mut file = OpenOptions::new().append(true).open(&segment).expect("segment");
    file.write_all(br#"{"topic":"t","data":{"n":"#).expect("garbage");
    drop(file);

    let source = start(config(dir.path()));
    assert_eq!(fs::metadata(&segment).expect("segment").len(), byte);
    assert_eq!(source.durable_end("p0"), Some(Position::Line { byte, line: 3 }));
    publish_range(&source, 3, 5).await;
    assert_eq!(numbers(&source, &Position::Start), expected(0, 5));
}

#[tokio::test]
async fn nul_filled_space_after_a_crash_is_cut_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    publish_range(&source, 0, 2).await;
    drop(source);
    let segment = dir.path().join("p0").join(format!("{:020}.log", 0));
    let mut file = OpenOptions::new().append(true).open(&segment).expect("segment");
    file.write_all(b"{\"topic\":\"t\",\0\0\0\0\n").expect("garbage");
    drop(file);

    let source = start(config(dir.path()));
    publish_range(&source, 2, 3).await;
    assert_eq!(numbers(&source, &Position::Start), expected(0, 3));
}

#[tokio::test]
async fn segments_roll_and_readers_cross_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(small_segments(dir.path()));
    publish_range(&source, 0, 20).await;
    let starts = segments(dir.path());
    assert!(starts.len() >= 5, "{starts:?}");
    // Named by global offsets that continue across segments.
    for pair in starts.windows(2) {
        let len = fs::metadata(dir.path().join("p0").join(format!("{:020}.log", pair[0])))
            .expect("segment")
            .len();
        assert_eq!(pair[0] + len, pair[1]);
    }
    assert_eq!(numbers(&source, &Position::Start), expected(0, 20));
    drop(source);
    let source = start(small_segments(dir.path()));
    publish_range(&source, 20, 25).await;
    assert_eq!(numbers(&source, &Position::Start), expected(0, 25));
}

#[tokio::test]
async fn a_reader_resumes_exactly_after_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(small_segments(dir.path()));
    publish_range(&source, 0, 10).await;

    let mut reader = source.open(&partition("p0"), &Position::Start).expect("open");
    let mut first = Vec::new();
    reader.poll(&mut first, 4).expect("poll");
    assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let position = reader.position();
    let Position::Line { line, .. } = position else {
        panic!("{position:?}");
    };
    assert_eq!(line, 4);
    assert_eq!(numbers(&source, &position), expected(4, 10));

    // Caught up, then more arrives: the same reader goes on.
    let mut reader = source.open(&partition("p0"), &position).expect("open");
    assert_eq!(drain(reader.as_mut(), 3).len(), 6);
    publish_range(&source, 10, 13).await;
    let more = drain(reader.as_mut(), 3);
    assert_eq!(more.iter().map(|r| r.offset).collect::<Vec<_>>(), [11, 12, 13]);

    // And after a restart.
    drop(reader);
    drop(source);
    let source = start(small_segments(dir.path()));
    assert_eq!(numbers(&source, &position), expected(4, 13));
    let wrong = source.open(&partition("p0"), &Position::Offset(3)).err();
    assert!(matches!(wrong, Some(SourceError::Config(_))), "{wrong:?}");
    let past = source
        .open(&partition("p0"), &Position::Line { byte: 1 << 40, line: 0 })
        .err();
    assert!(matches!(past, Some(SourceError::Config(_))), "{past:?}");
    let unknown = source.open(&partition("p9"), &Position::Start).err();
    assert!(matches!(unknown, Some(SourceError::Config(_))), "{unknown:?}");
}

#[tokio::test]
async fn commits_delete_old_segments_but_one_and_line_numbers_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(small_segments(dir.path()));
    publish_range(&source, 0, 30).await;
    let before = segments(dir.path());

    let mut reader = source.open(&partition("p0"), &Position::Start).expect("open");
    let mut records = Vec::new();
    reader.poll(&mut records, 20).expect("poll");
    let committed = reader.position();
    let Position::Line { byte, line } = committed else {
        panic!("{committed:?}");
    };
    reader.commit(&committed, true).expect("commit");

    let after = segments(dir.path());
    let passed: Vec<u64> = before.windows(2).filter(|w| w[1] <= byte).map(|w| w[0]).collect();
    assert!(passed.len() >= 2, "{before:?} {byte}");
    // Every passed segment but the newest is gone; the newest passed one and later stay.
    let kept: Vec<u64> = before
        .iter()
        .copied()
        .filter(|s| *s >= passed[passed.len() - 1])
        .collect();
    assert_eq!(after, kept);
    assert!(after.contains(before.last().expect("active")));

    // The margin segment is still readable: a restart from an older checkpoint inside it.
    let margin = after[0];
    let margin_line = fs::read_to_string(dir.path().join("p0").join(format!("{margin:020}.base")))
        .expect("base")
        .trim()
        .parse::<u64>()
        .expect("a line count");
    let from_margin = numbers(
        &source,
        &Position::Line {
            byte: margin,
            line: margin_line,
        },
    );
    assert_eq!(from_margin, expected(margin_line, 30));
    // Before it, the segments are gone: a clear configuration error.
    let gone = source
        .open(&partition("p0"), &Position::Line { byte: 0, line: 0 })
        .err();
    match gone {
        Some(SourceError::Config(message)) => assert!(message.contains("deleted"), "{message}"),
        other => panic!("{other:?}"),
    }
    // `Start` resumes at the committed position.
    assert_eq!(numbers(&source, &Position::Start), expected(line, 30));
    drop(reader);
    drop(source);

    let source = start(small_segments(dir.path()));
    assert_eq!(numbers(&source, &Position::Start), expected(line, 30));
    publish_range(&source, 30, 32).await;
    assert_eq!(numbers(&source, &Position::Start), expected(line, 32));
    // Committing everything keeps the active segment.
    let mut reader = source.open(&partition("p0"), &Position::Start).expect("open");
    drain(reader.as_mut(), 100);
    let end = reader.position();
    reader.commit(&end, true).expect("commit");
    let left = segments(dir.path());
    assert!(!left.is_empty() && left.len() <= 2, "{left:?}");
    assert!(numbers(&source, &Position::Start).is_empty());
    drop(reader);
    drop(source);
    let source = start(small_segments(dir.path()));
    publish_range(&source, 32, 33).await;
    assert_eq!(numbers(&source, &Position::Start), expected(32, 33));
}

#[tokio::test]
async fn unbindable_addresses_and_used_directories_are_start_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start(config(dir.path()));
    let taken = source.local_addr().to_string();

    let other = tempfile::tempdir().expect("tempdir");
    let error = HttpIngestSource::start(IngestConfig::new("e", taken.clone(), other.path(), SECRET)).err();
    match error {
        Some(e @ IngestError::Bind { .. }) => assert!(e.to_string().contains(&taken), "{e}"),
        other => panic!("{other:?}"),
    }
    let error = HttpIngestSource::start(config(dir.path())).err();
    assert!(matches!(error, Some(IngestError::Locked { .. })), "{error:?}");

    let file = dir.path().join("a-file");
    fs::write(&file, "").expect("file");
    let error = HttpIngestSource::start(config(&file.join("log"))).err();
    match error {
        Some(e @ IngestError::LogDir { .. }) => assert!(e.to_string().contains("a-file"), "{e}"),
        other => panic!("{other:?}"),
    }
    let error = HttpIngestSource::start(IngestConfig::new("e", "127.0.0.1:0", other.path(), Vec::new())).err();
    assert!(matches!(error, Some(IngestError::Config(_))), "{error:?}");
    drop(source);
    // Released with the source.
    drop(start(config(dir.path())));
}
