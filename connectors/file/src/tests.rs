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
