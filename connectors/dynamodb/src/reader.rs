//! Reading one scan segment: pages arrive from a background fetch, items are handed out in
//! order, and the position is always the key of the last item handed out.

use std::collections::VecDeque;
use std::sync::Arc;

use sluice_runtime::source::{
    PartitionReader, Position, Progress as ReadProgress, ProgressUnit, RawRecord, ReadState, SourceError,
};
use sluice_runtime::value::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::item::{Item, item_json, key_from_value, key_to_value};
use crate::progress::Progress;

/// One `Scan` response.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// The items, in the segment's order.
    pub(crate) items: VecDeque<Item>,
    /// `LastEvaluatedKey`: where the next page starts; `None` on the segment's last page.
    pub(crate) last_key: Option<Item>,
}

/// What a fetch delivers: pages, or the error that ended it.
pub(crate) type Fetched = Result<Page, SourceError>;

/// Starts fetching a segment's pages in the background.
pub(crate) trait Fetch: Send + Sync {
    /// Fetches the pages of `segment` after the key `after` (from its start when `None`).
    fn start(self: Arc<Self>, segment: u32, after: Option<Item>) -> Fetching;
}

/// A running fetch: its pages, and its task, stopped when this is dropped.
pub(crate) struct Fetching {
    /// Pages in order; an `Err` is the last message.
    pub(crate) pages: mpsc::Receiver<Fetched>,
    /// The task filling `pages`, if it is one that can be stopped.
    pub(crate) task: Option<tokio::task::AbortHandle>,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        // A task waiting in a backoff sleep would otherwise live on after its reader.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Where a segment's reader is: after which item.
#[derive(Clone, Debug, PartialEq)]
enum After {
    /// Nothing handed out yet, and no resume key: the segment's start.
    Start,
    /// After the item with this key (the key of the last item handed out, or a page's
    /// `LastEvaluatedKey`, which is the same thing at a page's end).
    Key(Item),
    /// The segment's last page has been handed out.
    End,
}

/// How a resume position is written: the key, and how many items of the segment were
/// handed out before it (so ordinals go on where they stopped).
const KEY_FIELD: &str = "key";
/// See [`KEY_FIELD`].
const ITEMS_FIELD: &str = "items";

/// A segment reader's starting point, from a checkpointed position.
pub(crate) fn resume_point(partition: &str, from: &Position) -> Result<(Option<Item>, u64, bool), SourceError> {
    match from {
        Position::Start => Ok((None, 0, false)),
        Position::End => Ok((None, 0, true)),
        Position::ScanKey(value) => {
            // `{"key": {…}, "items": n}` as written by `position`; a bare typed key (from an
            // older checkpoint or written by hand) resumes with ordinals from 0.
            let (key, items) = match (value.get(KEY_FIELD), value.get(ITEMS_FIELD).and_then(items_count)) {
                (Some(key), Some(items)) => (key, items),
                _ => (value, 0),
            };
            let key = key_from_value(key)
                .map_err(|e| SourceError::Config(format!("{partition} cannot resume from {value}: attribute {e}")))?;
            if key.is_empty() {
                return Err(SourceError::Config(format!(
                    "{partition} cannot resume from {value}: the key has no attributes"
                )));
            }
            Ok((Some(key), items, false))
        }
        other => Err(SourceError::Config(format!(
            "a DynamoDB scan segment cannot resume from {other}"
        ))),
    }
}

fn items_count(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::UInt(n) => Some(*n),
        _ => None,
    }
}

/// Reads one segment (see the crate documentation for the position it keeps).
pub(crate) struct ScanReader {
    fetch: Arc<dyn Fetch>,
    segment: u32,
    /// The `segment-N` id, for messages.
    partition: String,
    /// The table's key attributes (hash, then range): what a position is made of.
    keys: Arc<[String]>,
    /// Attributes fetched only to know items' keys, left out of their payloads.
    strip: Arc<[String]>,
    progress: Arc<Progress>,
    /// The running fetch; `None` before the first poll and after one failed.
    fetching: Option<Fetching>,
    /// The page being handed out.
    page: Option<Page>,
    after: After,
    /// The next item's ordinal in the segment.
    next_offset: u64,
    /// An error met after some items were handed out, reported by the next poll.
    pending: Option<SourceError>,
}

/// What a [`ScanReader`] needs besides its position.
pub(crate) struct ReaderParts {
    /// Starts the fetches.
    pub(crate) fetch: Arc<dyn Fetch>,
    /// The segment number.
    pub(crate) segment: u32,
    /// The table's key attribute names.
    pub(crate) keys: Arc<[String]>,
    /// Attributes to leave out of payloads.
    pub(crate) strip: Arc<[String]>,
    /// The source's counters.
    pub(crate) progress: Arc<Progress>,
}

impl ScanReader {
    /// A reader of `parts.segment` resuming at `from`.
    pub(crate) fn new(parts: ReaderParts, partition: &str, from: &Position) -> Result<Self, SourceError> {
        let (key, next_offset, ended) = resume_point(partition, from)?;
        if ended {
            parts.progress.segment_done(parts.segment);
        }
        let after = match (key, ended) {
            (_, true) => After::End,
            (Some(key), false) => After::Key(key),
            (None, false) => After::Start,
        };
        Ok(ScanReader {
            fetch: parts.fetch,
            segment: parts.segment,
            partition: partition.to_owned(),
            keys: parts.keys,
            strip: parts.strip,
            progress: parts.progress,
            fetching: None,
            page: None,
            after,
            next_offset,
            pending: None,
        })
    }

    /// Takes the next page into `self.page`; `Ok(false)` when none has arrived yet.
    fn next_page(&mut self) -> Result<bool, SourceError> {
        let fetching = match &mut self.fetching {
            Some(f) => f,
            None => {
                let after = match &self.after {
                    After::Key(key) => Some(key.clone()),
                    After::Start | After::End => None,
                };
                self.fetching.insert(Arc::clone(&self.fetch).start(self.segment, after))
            }
        };
        match fetching.pages.try_recv() {
            Ok(Ok(page)) => {
                self.page = Some(page);
                Ok(true)
            }
            Err(TryRecvError::Empty) => Ok(false),
            Ok(Err(e)) => {
                // The fetch ended with this error; a later poll starts a new one from the
                // position, which every page before the error has reached.
                self.fetching = None;
                Err(e)
            }
            Err(TryRecvError::Disconnected) => {
                self.fetching = None;
                Err(SourceError::Transient(format!(
                    "the scan of {} stopped without a result; restarting it",
                    self.partition
                )))
            }
        }
    }

    /// The key of `item`: its key attributes.
    fn key_of(&self, item: &Item) -> Result<Item, SourceError> {
        self.keys
            .iter()
            .map(|k| match item.get(k) {
                Some(v) => Ok((k.clone(), v.clone())),
                None => Err(SourceError::Config(format!(
                    "an item of {} has no key attribute `{k}`, so no position can follow it",
                    self.partition
                ))),
            })
            .collect()
    }

    /// Hands out up to `max` items; returns how many, and any error that stopped it.
    fn hand_out(&mut self, out: &mut Vec<RawRecord>, max: usize) -> (usize, Option<SourceError>) {
        let mut handed = 0;
        while handed < max && self.after != After::End {
            if self.page.is_none() {
                match self.next_page() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return (handed, Some(e)),
                }
            }
            let Some(page) = self.page.as_mut() else {
                break;
            };
            let mut last = None;
            let mut failed = None;
            while handed < max {
                let Some(item) = page.items.pop_front() else {
                    break;
                };
                // The key is checked before the item goes out: a position must follow it.
                if let Some(missing) = self.keys.iter().find(|k| !item.contains_key(*k)) {
                    failed = Some(SourceError::Config(format!(
                        "an item of {} has no key attribute `{missing}`, so no position can follow it",
                        self.partition
                    )));
                    break;
                }
                out.push(RawRecord {
                    offset: self.next_offset,
                    key: None,
                    payload: Some(item_json(&item, &self.strip)),
                });
                self.next_offset += 1;
                handed += 1;
                last = Some(item);
            }
            let page_done = page.items.is_empty() && failed.is_none();
            if page_done {
                // The page's `LastEvaluatedKey` is where the next page starts; without one,
                // the segment has ended.
                let last_key = self.page.take().and_then(|p| p.last_key);
                self.after = match last_key {
                    Some(key) => After::Key(key),
                    None => After::End,
                };
            } else if let Some(item) = last {
                match self.key_of(&item) {
                    Ok(key) => self.after = After::Key(key),
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                return (handed, Some(e));
            }
        }
        (handed, None)
    }
}

impl PartitionReader for ScanReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<ReadState, SourceError> {
        if self.after == After::End {
            return Ok(ReadState::Finished);
        }
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        let (handed, error) = self.hand_out(out, max);
        self.progress.add_items(handed as u64);
        if let Some(e) = error {
            if handed == 0 {
                return Err(e);
            }
            // The items already handed out must reach the caller with their position.
            self.pending = Some(e);
            return Ok(ReadState::More);
        }
        if self.after == After::End {
            self.fetching = None;
            self.progress.segment_done(self.segment);
            return Ok(ReadState::Finished);
        }
        // A segment not read to its end has more on the way: never caught up before it ends.
        Ok(if handed == max {
            ReadState::More
        } else {
            ReadState::Waiting
        })
    }

    fn position(&self) -> Position {
        match &self.after {
            After::Start => Position::Start,
            After::End => Position::End,
            After::Key(key) => Position::ScanKey(Value::map([
                (KEY_FIELD, key_to_value(key)),
                (ITEMS_FIELD, Value::from(self.next_offset)),
            ])),
        }
    }

    /// Items handed out against the segment's share of the table's item count; 0 or 1
    /// segment while that count is not known. Reads only counters.
    fn progress(&self) -> Option<ReadProgress> {
        let finished = self.after == After::End;
        let Some(expected) = self.progress.items_per_segment() else {
            return Some(ReadProgress {
                done: u64::from(finished),
                total: 1,
                unit: ProgressUnit::Segments,
            });
        };
        let done = self.next_offset;
        // The count is an estimate: a segment with more items stays just short of done until
        // it ends, and a finished one weighs its estimate even when it held fewer, so the
        // source's total does not shrink under the display.
        let total = if finished {
            expected.max(done)
        } else {
            expected.max(done.saturating_add(1))
        };
        Some(ReadProgress {
            done: if finished { total } else { done },
            total,
            unit: ProgressUnit::Items,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_sdk_dynamodb::types::AttributeValue;

    use super::*;

    /// An in-process table: per segment, items sorted by key `K`, served in pages the way
    /// `Scan` serves them (`ExclusiveStartKey` is the key of any item of the segment).
    struct FakeTable {
        segments: Vec<Vec<Item>>,
        page_size: usize,
        /// Errors to deliver, in order, instead of the page after this many pages of a fetch.
        failures: Mutex<Vec<(usize, SourceError)>>,
        fetches: Mutex<Vec<(u32, Option<Item>)>>,
    }

    fn item(k: u32) -> Item {
        [
            ("K".to_owned(), AttributeValue::N(k.to_string())),
            ("V".to_owned(), AttributeValue::S(format!("v{k}"))),
        ]
        .into_iter()
        .collect()
    }

    fn key(k: u32) -> Item {
        [("K".to_owned(), AttributeValue::N(k.to_string()))]
            .into_iter()
            .collect()
    }

    impl FakeTable {
        fn new(segments: &[u32], page_size: usize) -> Arc<FakeTable> {
            Arc::new(FakeTable {
                segments: segments.iter().map(|&n| (0..n).map(item).collect()).collect(),
                page_size,
                failures: Mutex::default(),
                fetches: Mutex::default(),
            })
        }
    }

    impl Fetch for FakeTable {
        fn start(self: Arc<Self>, segment: u32, after: Option<Item>) -> Fetching {
            self.fetches.lock().expect("lock").push((segment, after.clone()));
            let items = &self.segments[segment as usize];
            let from = match &after {
                None => 0,
                Some(k) => {
                    items
                        .iter()
                        .position(|i| i["K"] == k["K"])
                        .expect("a key of the segment")
                        + 1
                }
            };
            let rest = &items[from..];
            let chunks: Vec<&[Item]> = rest.chunks(self.page_size).collect();
            let (tx, rx) = mpsc::channel(chunks.len() + 2);
            let mut failure = {
                let mut f = self.failures.lock().expect("lock");
                (!f.is_empty()).then(|| f.remove(0))
            };
            let mut failed = false;
            for (n, chunk) in chunks.iter().enumerate() {
                if let Some((at, _)) = &failure
                    && *at == n
                    && let Some((_, e)) = failure.take()
                {
                    tx.try_send(Err(e)).expect("room");
                    failed = true;
                    break;
                }
                // Like DynamoDB, the last page may still carry a key when it is exactly full.
                let last = n + 1 == chunks.len();
                let last_key = (!last || chunk.len() == self.page_size)
                    .then(|| {
                        chunk
                            .last()
                            .map(|i| key(i["K"].as_n().expect("n").parse().expect("u32")))
                    })
                    .flatten();
                tx.try_send(Ok(Page {
                    items: chunk.iter().cloned().collect(),
                    last_key,
                }))
                .expect("room");
            }
            if let Some((_, e)) = failure.take() {
                // A failure planned after the last page comes in place of the end.
                tx.try_send(Err(e)).expect("room");
            } else if rest.len().is_multiple_of(self.page_size) && !failed {
                // A full last page is followed by an empty one without a key.
                tx.try_send(Ok(Page::default())).expect("room");
            }
            Fetching { pages: rx, task: None }
        }
    }

    fn reader(table: &Arc<FakeTable>, segment: u32, from: &Position) -> ScanReader {
        let parts = ReaderParts {
            fetch: table.clone(),
            segment,
            keys: Arc::from(vec!["K".to_owned()]),
            strip: Arc::from(Vec::new()),
            progress: Arc::new(Progress::new("T", "t", table.segments.len() as u32)),
        };
        ScanReader::new(parts, &format!("segment-{segment}"), from).expect("reader")
    }

    fn ks(records: &[RawRecord]) -> Vec<u32> {
        records
            .iter()
            .map(|r| {
                let v = sluice_formats::decode_item(r.payload.as_deref().expect("payload")).expect("item");
                v.get("K").and_then(Value::as_i64).expect("K") as u32
            })
            .collect()
    }

    /// Polls until the reader finishes; `stop_after`: end after this many polls instead.
    fn drain(r: &mut ScanReader, max: usize, stop_after: Option<usize>) -> (Vec<RawRecord>, bool) {
        let mut all = Vec::new();
        for n in 0.. {
            if stop_after == Some(n) {
                return (all, false);
            }
            let mut out = Vec::new();
            match r.poll(&mut out, max) {
                Ok(ReadState::Finished) => {
                    all.extend(out);
                    return (all, true);
                }
                Ok(_) => all.extend(out),
                Err(SourceError::Transient(_)) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(n < 100_000, "the reader never finished");
        }
        unreachable!()
    }

    #[test]
    fn a_segment_is_read_in_order_whatever_the_batch_size() {
        for max in [1, 2, 3, 4, 7, 10, 1000] {
            let table = FakeTable::new(&[23], 4);
            let mut r = reader(&table, 0, &Position::Start);
            assert_eq!(r.position(), Position::Start);
            let (records, finished) = drain(&mut r, max, None);
            assert!(finished);
            assert_eq!(ks(&records), (0..23).collect::<Vec<_>>(), "max {max}");
            assert_eq!(
                records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                (0..23).collect::<Vec<u64>>()
            );
            assert!(records.iter().all(|r| r.key.is_none()));
            assert_eq!(r.position(), Position::End);
            assert_eq!(r.poll(&mut Vec::new(), max).ok(), Some(ReadState::Finished));
            assert_eq!(r.progress.snapshot().items, 23);
            assert_eq!(r.progress.snapshot().segments_done, 1);
        }
    }

    #[test]
    fn progress_is_items_against_the_segments_share_of_the_table_count() {
        let items = |done, total| {
            Some(ReadProgress {
                done,
                total,
                unit: ProgressUnit::Items,
            })
        };
        // Two segments of 6 and 3 items; the table's count says 10, so 5 a segment.
        let table = FakeTable::new(&[6, 3], 4);
        let mut r = reader(&table, 0, &Position::Start);
        assert_eq!(
            r.progress(),
            Some(ReadProgress {
                done: 0,
                total: 1,
                unit: ProgressUnit::Segments
            }),
            "without a count, a segment is 0 of 1 until it ends"
        );
        r.progress.set_table_items(10);
        assert_eq!(r.progress(), items(0, 5));
        r.poll(&mut Vec::new(), 2).expect("poll");
        assert_eq!(r.progress(), items(2, 5));
        r.poll(&mut Vec::new(), 3).expect("poll");
        assert_eq!(
            r.progress(),
            items(5, 6),
            "more than estimated: short of done until the end"
        );
        let (_, finished) = drain(&mut r, 10, None);
        assert!(finished);
        assert_eq!(r.progress(), items(6, 6));

        let mut small = reader(&table, 1, &Position::Start);
        small.progress.set_table_items(10);
        let (_, finished) = drain(&mut small, 10, None);
        assert!(finished);
        assert_eq!(
            small.progress(),
            items(5, 5),
            "fewer than estimated: done weighs the estimate"
        );
        let resumed = reader(&table, 1, &Position::End);
        resumed.progress.set_table_items(10);
        assert_eq!(
            resumed.progress(),
            items(5, 5),
            "a segment finished before a restart is done"
        );
    }

    #[test]
    fn position_is_the_key_of_the_last_item_handed_out() {
        let table = FakeTable::new(&[10], 4);
        let mut r = reader(&table, 0, &Position::Start);
        let mut out = Vec::new();
        // Mid-page: after item 2.
        assert_eq!(r.poll(&mut out, 3).ok(), Some(ReadState::More));
        let expected = |k: u32, items: u64| {
            Position::ScanKey(Value::map([
                ("key", key_to_value(&key(k))),
                ("items", Value::from(items)),
            ]))
        };
        assert_eq!(r.position(), expected(2, 3));
        // The page's end: its LastEvaluatedKey, item 3.
        assert_eq!(r.poll(&mut out, 1).ok(), Some(ReadState::More));
        assert_eq!(r.position(), expected(3, 4));
        assert_eq!(
            r.position().to_string(),
            r#"after key {"items":4,"key":{"K":{"N":"3"}}}"#
        );
    }

    /// Stopping after any poll and resuming from the position reads each item exactly once,
    /// with ordinals that go on where they stopped.
    #[test]
    fn interrupting_anywhere_loses_and_repeats_nothing() {
        for (n, page, max) in [
            (10, 4, 3),
            (10, 4, 4),
            (12, 4, 5),
            (9, 1, 2),
            (30, 7, 1),
            (0, 3, 2),
            (5, 5, 5),
        ] {
            let table = FakeTable::new(&[n], page);
            let mut position = Position::Start;
            let mut seen = Vec::new();
            let mut offsets = Vec::new();
            loop {
                let mut r = reader(&table, 0, &position);
                let (records, finished) = drain(&mut r, max, Some(1));
                seen.extend(ks(&records));
                offsets.extend(records.iter().map(|r| r.offset));
                position = r.position();
                if finished || position == Position::End {
                    break;
                }
                // Everything polled so far may also have arrived in the channel; dropping the
                // reader throws it away, as a crash would.
            }
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n {n} page {page} max {max}");
            assert_eq!(offsets, (0..u64::from(n)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_bare_typed_key_resumes_with_ordinals_from_zero() {
        let table = FakeTable::new(&[6], 4);
        let mut r = reader(&table, 0, &Position::ScanKey(key_to_value(&key(2))));
        let (records, finished) = drain(&mut r, 100, None);
        assert!(finished);
        assert_eq!(ks(&records), vec![3, 4, 5]);
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(table.fetches.lock().expect("lock")[0], (0, Some(key(2))));
    }

    #[test]
    fn a_finished_segment_stays_finished() {
        let table = FakeTable::new(&[6], 4);
        let mut r = reader(&table, 0, &Position::End);
        assert_eq!(r.poll(&mut Vec::new(), 10).ok(), Some(ReadState::Finished));
        assert_eq!(r.position(), Position::End);
        assert!(
            table.fetches.lock().expect("lock").is_empty(),
            "no request for a finished segment"
        );
        assert_eq!(r.progress.snapshot().segments_done, 1);
    }

    #[test]
    fn bad_resume_positions_are_configuration_errors() {
        let table = FakeTable::new(&[1], 4);
        let parts = |table: &Arc<FakeTable>| ReaderParts {
            fetch: table.clone(),
            segment: 0,
            keys: Arc::from(vec!["K".to_owned()]),
            strip: Arc::from(Vec::new()),
            progress: Arc::new(Progress::new("T", "t", 1)),
        };
        for bad in [
            Position::Offset(3),
            Position::ScanKey(Value::str("x")),
            Position::ScanKey(Value::map(Vec::<(&str, Value)>::new())),
            Position::ScanKey(Value::map([("K", Value::map([("N", Value::Int(1))]))])),
        ] {
            let r = ScanReader::new(parts(&table), "segment-0", &bad);
            assert!(matches!(r, Err(SourceError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn a_failed_fetch_is_reported_then_restarted_from_the_position() {
        let table = FakeTable::new(&[10], 3);
        table
            .failures
            .lock()
            .expect("lock")
            .push((2, SourceError::Transient("connection reset".to_owned())));
        let mut r = reader(&table, 0, &Position::Start);
        let mut out = Vec::new();
        // Two pages, then the error: the items come first, the error with the next poll.
        assert_eq!(r.poll(&mut out, 100).ok(), Some(ReadState::More));
        assert_eq!(ks(&out), vec![0, 1, 2, 3, 4, 5]);
        assert!(matches!(r.poll(&mut out, 100), Err(SourceError::Transient(_))));
        let (rest, finished) = drain(&mut r, 100, None);
        assert!(finished);
        assert_eq!(ks(&rest), vec![6, 7, 8, 9]);
        assert_eq!(table.fetches.lock().expect("lock")[1], (0, Some(key(5))));

        let table = FakeTable::new(&[10], 3);
        table
            .failures
            .lock()
            .expect("lock")
            .push((0, SourceError::Config("bad projection".to_owned())));
        let mut r = reader(&table, 0, &Position::Start);
        assert!(matches!(r.poll(&mut Vec::new(), 100), Err(SourceError::Config(_))));
        assert_eq!(r.position(), Position::Start);
    }

    #[test]
    fn an_item_without_its_key_is_refused() {
        let table = FakeTable::new(&[3], 2);
        let parts = ReaderParts {
            fetch: table.clone(),
            segment: 0,
            keys: Arc::from(vec!["K".to_owned(), "R".to_owned()]),
            strip: Arc::from(Vec::new()),
            progress: Arc::new(Progress::new("T", "t", 1)),
        };
        let mut r = ScanReader::new(parts, "segment-0", &Position::Start).expect("reader");
        let mut out = Vec::new();
        assert!(matches!(r.poll(&mut out, 10), Err(SourceError::Config(_))));
        assert!(out.is_empty());
    }

    #[test]
    fn stripped_attributes_leave_the_payload() {
        let table = FakeTable::new(&[1], 2);
        let parts = ReaderParts {
            fetch: table.clone(),
            segment: 0,
            keys: Arc::from(vec!["K".to_owned()]),
            strip: Arc::from(vec!["K".to_owned()]),
            progress: Arc::new(Progress::new("T", "t", 1)),
        };
        let mut r = ScanReader::new(parts, "segment-0", &Position::Start).expect("reader");
        let mut out = Vec::new();
        assert_eq!(r.poll(&mut out, 10).ok(), Some(ReadState::Finished));
        assert_eq!(out[0].payload.as_deref(), Some(&br#"{"V":{"S":"v0"}}"#[..]));
    }

    #[test]
    fn an_empty_channel_is_idle() {
        let (tx, rx) = mpsc::channel(4);
        struct Manual(Mutex<Option<mpsc::Receiver<Fetched>>>);
        impl Fetch for Manual {
            fn start(self: Arc<Self>, _segment: u32, _after: Option<Item>) -> Fetching {
                let pages = self.0.lock().expect("lock").take().expect("one fetch");
                Fetching { pages, task: None }
            }
        }
        let parts = ReaderParts {
            fetch: Arc::new(Manual(Mutex::new(Some(rx)))),
            segment: 0,
            keys: Arc::from(vec!["K".to_owned()]),
            strip: Arc::from(Vec::new()),
            progress: Arc::new(Progress::new("T", "t", 1)),
        };
        let mut r = ScanReader::new(parts, "segment-0", &Position::Start).expect("reader");
        let mut out = Vec::new();
        assert_eq!(r.poll(&mut out, 10).ok(), Some(ReadState::Waiting));
        tx.try_send(Ok(Page {
            items: [item(0), item(1)].into_iter().collect(),
            last_key: Some(key(1)),
        }))
        .expect("room");
        assert_eq!(r.poll(&mut out, 10).ok(), Some(ReadState::Waiting));
        assert_eq!(ks(&out), vec![0, 1]);
        tx.try_send(Ok(Page::default())).expect("room");
        assert_eq!(r.poll(&mut out, 10).ok(), Some(ReadState::Finished));
    }
}
