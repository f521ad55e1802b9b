use std::io::Write;

use super::*;

fn read_all(reader: &mut dyn PartitionReader) -> (Vec<(u64, String)>, ReadState) {
    let mut out = Vec::new();
    let state = loop {
        let mut buf = Vec::new();
        let state = reader.poll(&mut buf, 2).expect("poll");
        out.extend(buf.into_iter().map(|r| {
            (
                r.offset,
                String::from_utf8(r.payload.unwrap_or_default()).unwrap_or_default(),
            )
        }));
        if state != ReadState::More {
            break state;
        }
    };
    (out, state)
}

#[test]
fn reads_lines_with_numbers_skipping_blanks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "{\"a\":1}\n\n  \n{\"a\":2}\r\n{\"a\":3}").expect("write");
    let source = FileSource::new(path.to_string_lossy(), false);
    let parts = source.discover().expect("discover");
    assert_eq!(parts.len(), 1);
    let mut reader = source.open(&parts[0], &Position::Start).expect("open");
    let (lines, state) = read_all(reader.as_mut());
    assert_eq!(state, ReadState::Finished);
    assert_eq!(
        lines,
        vec![
            (1, "{\"a\":1}".into()),
            (4, "{\"a\":2}".into()),
            (5, "{\"a\":3}".into())
        ]
    );
}

#[test]
fn resumes_from_a_position_without_loss_or_repeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "1\n2\n3\n4\n").expect("write");
    let source = FileSource::new(path.to_string_lossy(), false);
    let parts = source.discover().expect("discover");
    let mut reader = source.open(&parts[0], &Position::Start).expect("open");
    let mut buf = Vec::new();
    reader.poll(&mut buf, 2).expect("poll");
    let pos = reader.position();
    assert_eq!(pos, Position::Line { byte: 4, line: 2 });
    let mut resumed = source.open(&parts[0], &pos).expect("open");
    let (rest, _) = read_all(resumed.as_mut());
    assert_eq!(rest, vec![(3, "3".into()), (4, "4".into())]);
}

#[test]
fn follow_holds_partial_lines_and_sees_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "1\n2").expect("write");
    let source = FileSource::new(path.to_string_lossy(), true);
    let parts = source.discover().expect("discover");
    let mut reader = source.open(&parts[0], &Position::Start).expect("open");
    let (lines, state) = read_all(reader.as_mut());
    assert_eq!(state, ReadState::Idle);
    assert_eq!(lines, vec![(1, "1".into())]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
    f.write_all(b"2\n3\n").expect("append");
    let (lines, _) = read_all(reader.as_mut());
    assert_eq!(lines, vec![(2, "22".into()), (3, "3".into())]);
}

#[test]
fn glob_partitions_are_sorted_and_missing_files_are_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["b.jsonl", "a.jsonl", "c.txt"] {
        std::fs::write(dir.path().join(name), "{}\n").expect("write");
    }
    let pattern = dir.path().join("*.jsonl");
    let parts = FileSource::new(pattern.to_string_lossy(), false)
        .discover()
        .expect("discover");
    let names: Vec<_> = parts
        .iter()
        .map(|p| Path::new(&p.id).file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names, vec![Some("a.jsonl".to_owned()), Some("b.jsonl".to_owned())]);
    let missing = FileSource::new(dir.path().join("nope.jsonl").to_string_lossy(), false).discover();
    assert!(matches!(missing, Err(SourceError::Config(m)) if m.contains("does not exist")));
    let empty_glob = FileSource::new(dir.path().join("*.csv").to_string_lossy(), false).discover();
    assert!(matches!(empty_glob, Err(SourceError::Config(_))));
}

#[test]
fn chunks_split_on_line_boundaries_and_keep_file_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.jsonl");
    // Lines of varying length, a blank line and no final newline: chunk edges fall everywhere.
    let lines: Vec<String> = (1..=200)
        .map(|i| if i == 50 { String::new() } else { "x".repeat(i % 13 + 1) })
        .collect();
    std::fs::write(&path, lines.join("\n")).expect("write");
    let expected: Vec<(u64, String)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| (i as u64 + 1, l.clone()))
        .collect();
    for chunk in [1, 7, 16, 64, 500, 5000] {
        let source = FileSource::new(path.to_string_lossy(), false).with_chunks(chunk);
        let parts = source.discover().expect("discover");
        let mut all = Vec::new();
        for p in &parts {
            let mut reader = source.open(p, &Position::Start).expect("open");
            let (lines, state) = read_all(reader.as_mut());
            assert_eq!(state, ReadState::Finished);
            all.extend(lines);
        }
        assert_eq!(all, expected, "chunk size {chunk}, {} partitions", parts.len());
    }
}

#[test]
fn a_chunk_resumes_from_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.jsonl");
    std::fs::write(&path, "aaaa\nbbbb\ncccc\ndddd\neeee\nffff\n").expect("write");
    let source = FileSource::new(path.to_string_lossy(), false).with_chunks(12);
    let parts = source.discover().expect("discover");
    assert!(parts.len() > 1);
    let second = &parts[1];
    let mut reader = source.open(second, &Position::Start).expect("open");
    let mut buf = Vec::new();
    reader.poll(&mut buf, 1).expect("poll");
    let pos = reader.position();
    let (rest_fresh, _) = read_all(reader.as_mut());
    let mut resumed = source.open(second, &pos).expect("open");
    let (rest, _) = read_all(resumed.as_mut());
    assert_eq!(rest, rest_fresh);
}

#[test]
fn lag_is_the_bytes_after_the_position_up_to_the_file_or_chunk_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "1\n2").expect("write");
    let source = FileSource::new(path.to_string_lossy(), true);
    let parts = source.discover().expect("discover");
    let mut reader = source.open(&parts[0], &Position::Start).expect("open");
    assert_eq!(reader.lag(), Some(Lag::Bytes(3)));
    read_all(reader.as_mut());
    assert_eq!(reader.lag(), Some(Lag::Bytes(1)), "the partial line is not read yet");
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
    f.write_all(b"2\n3\n").expect("append");
    assert_eq!(reader.lag(), Some(Lag::Bytes(5)));
    read_all(reader.as_mut());
    assert_eq!(reader.lag(), Some(Lag::Bytes(0)));

    let path = dir.path().join("big.jsonl");
    std::fs::write(&path, "aaaa\nbbbb\ncccc\ndddd\neeee\nffff\n").expect("write");
    let source = FileSource::new(path.to_string_lossy(), false).with_chunks(12);
    let parts = source.discover().expect("discover");
    let mut first = source.open(&parts[0], &Position::Start).expect("open");
    assert_eq!(
        first.lag(),
        Some(Lag::Bytes(12)),
        "up to the chunk's end, not the file's"
    );
    let (_, state) = read_all(first.as_mut());
    assert_eq!(state, ReadState::Finished);
    assert_eq!(first.lag(), Some(Lag::Bytes(0)), "its last line ends past the chunk");
}

fn bytes(done: u64, total: u64) -> Option<Progress> {
    Some(Progress {
        done,
        total,
        unit: ProgressUnit::Bytes,
    })
}

#[test]
fn progress_is_the_bytes_read_of_the_size_at_open_and_resumes_where_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.jsonl");
    // 4 + 4 + 2 bytes, the last line without a newline.
    std::fs::write(&path, "111\n222\n33").expect("write");
    let source = FileSource::new(path.to_string_lossy(), false);
    let parts = source.discover().expect("discover");
    let mut reader = source.open(&parts[0], &Position::Start).expect("open");
    assert_eq!(reader.progress(), bytes(0, 10));
    let mut buf = Vec::new();
    reader.poll(&mut buf, 1).expect("poll");
    assert_eq!(reader.progress(), bytes(4, 10));
    let pos = reader.position();
    // Appended after the open: not part of what this read set out to do.
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
    f.write_all(b"\n444\n").expect("append");
    assert_eq!(reader.progress(), bytes(4, 10));
    let resumed = source.open(&parts[0], &pos).expect("open");
    assert_eq!(
        resumed.progress(),
        bytes(4, 15),
        "a resumed reader has the bytes before it done"
    );

    let followed = FileSource::new(path.to_string_lossy(), true);
    let parts = followed.discover().expect("discover");
    let reader = followed.open(&parts[0], &Position::Start).expect("open");
    assert_eq!(reader.progress(), None, "a followed file has no end to be a share of");
}

#[test]
fn a_chunk_counts_its_own_bytes_and_is_done_at_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.jsonl");
    std::fs::write(&path, "aaaa\nbbbb\ncccc\ndddd\neeee\nffff\n").expect("write");
    let source = FileSource::new(path.to_string_lossy(), false).with_chunks(12);
    let parts = source.discover().expect("discover");
    assert_eq!(parts.len(), 3);
    let mut second = source.open(&parts[1], &Position::Start).expect("open");
    // Bytes 12..24; its first line starts at byte 15 (the line crossing 12 is the first
    // chunk's).
    assert_eq!(second.progress(), bytes(3, 12));
    let (_, state) = read_all(second.as_mut());
    assert_eq!(state, ReadState::Finished);
    assert_eq!(second.progress(), bytes(12, 12), "its last line ends past the chunk");
    let last = source.open(&parts[2], &Position::Start).expect("open");
    assert_eq!(last.progress(), bytes(1, 6), "the last chunk ends with the file");
}
