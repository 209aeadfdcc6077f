//! The stream side of backfill: watermark windows (DBLog).
//!
//! The backfill task ([`crate::backfill`]) announces a chunk ([`ChunkMsg::Open`]), writes
//! its low watermark into the WAL, selects the chunk's rows, hands them over
//! ([`ChunkMsg::Rows`]) and writes its high watermark. The stream loop reads the
//! watermarks in WAL order and keeps, between the two, the window: every key of the
//! chunk's table the stream changed meanwhile. At the high watermark the chunk's rows
//! are published, minus those the stream superseded:
//!
//! - an insert, a delete or a full update of a key inside the window drops the chunk's
//!   copy (the stream carries a newer image, or the row is gone and must stay gone);
//! - updates that carry only some columns (unchanged TOAST values left out) keep the
//!   chunk's copy, overlaid with the values they carry;
//! - a truncate of the table drops the whole chunk.
//!
//! Each announcement travels through a channel and each watermark through the WAL, so
//! the stream loop matches them by chunk name. A restarted reader re-streams WAL from its
//! confirmed position, including watermarks of the earlier session; chunk names start
//! with the session's run id, and watermarks of other sessions are ignored (acting on
//! one would close this session's window, or consume the announcement of its next chunk
//! whose rows would then never be published).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backfill::{BackfillTable, ChunkMsg};
use crate::error::Error;
use crate::event::{self, value::Kind};

/// A chunk's rows as the backfill task selected them: lines of `COPY`'s text format.
#[derive(Debug)]
pub struct ChunkRows {
    pub rows: Vec<Bytes>,
    /// The key of the chunk's last row: where the next chunk starts.
    pub last_key: Vec<String>,
    /// The table's last chunk.
    pub done: bool,
}

/// A backfill chunk's watermark window: the keys of its table the stream changed
/// between the low and the high watermark.
pub struct Window {
    chunk: String,
    pub table: Arc<BackfillTable>,
    changed: HashMap<String, Touched>,
    truncated: bool,
}

/// What the stream did to a key inside a window.
enum Touched {
    Superseded,
    Overlay(Vec<Option<event::Value>>),
}

/// What becomes of a chunk row at the high watermark.
#[derive(Debug, PartialEq)]
pub enum Fate<'a> {
    /// Published as selected.
    Copy,
    /// Dropped: the stream carries a newer full image or the row's delete, or the table
    /// was truncated.
    Superseded,
    /// Published with these newer values over the selected ones (`None`: not carried).
    Overlay(&'a [Option<event::Value>]),
}

impl Window {
    pub fn fate(&self, legacy_key: &str) -> Fate<'_> {
        if self.truncated {
            return Fate::Superseded;
        }
        match self.changed.get(legacy_key) {
            None => Fate::Copy,
            Some(Touched::Superseded) => Fate::Superseded,
            Some(Touched::Overlay(newer)) => Fate::Overlay(newer),
        }
    }
}

pub struct Watermarks {
    chunks: mpsc::Receiver<ChunkMsg>,
    /// `<run id>:`, the start of every chunk name of this session.
    prefix: String,
    window: Option<Window>,
    /// Rows taken from the channel while looking for something else, by chunk name.
    pending: HashMap<String, ChunkRows>,
}

impl Watermarks {
    pub fn new(chunks: mpsc::Receiver<ChunkMsg>, run_id: &str) -> Self {
        Self {
            chunks,
            prefix: format!("{run_id}:"),
            window: None,
            pending: HashMap::new(),
        }
    }

    fn ours(&self, chunk: &[u8]) -> bool {
        chunk.starts_with(self.prefix.as_bytes())
    }

    /// A low watermark: opens the window of its chunk (any other window ends unused).
    pub fn low(&mut self, chunk: &[u8]) {
        if !self.ours(chunk) {
            return;
        }
        let chunk = String::from_utf8_lossy(chunk);
        self.window = None;
        while let Ok(msg) = self.chunks.try_recv() {
            match msg {
                ChunkMsg::Open { chunk: c, table } if c == chunk => {
                    self.window = Some(Window {
                        chunk: c,
                        table,
                        changed: HashMap::new(),
                        truncated: false,
                    });
                    return;
                }
                ChunkMsg::Rows {
                    chunk: c,
                    rows,
                    last_key,
                    done,
                } => {
                    self.pending.insert(
                        c,
                        ChunkRows {
                            rows,
                            last_key,
                            done,
                        },
                    );
                }
                // A chunk announced before an earlier low watermark of this session
                // whose own was never read: it is abandoned.
                ChunkMsg::Open { .. } => {}
            }
        }
    }

    /// A high watermark: closes its chunk's window and returns it with the chunk's rows;
    /// `None` when no window of that chunk is open (not ours, or its low watermark was
    /// read before this session announced it).
    pub fn high(&mut self, chunk: &[u8]) -> Result<Option<(Window, ChunkRows)>, Error> {
        if !self.ours(chunk) {
            return Ok(None);
        }
        let chunk = String::from_utf8_lossy(chunk);
        let Some(window) = self.window.take_if(|w| w.chunk == chunk) else {
            return Ok(None);
        };
        let mut found = self.pending.remove(chunk.as_ref());
        while found.is_none() {
            match self.chunks.try_recv() {
                Ok(ChunkMsg::Rows {
                    chunk: c,
                    rows,
                    last_key,
                    done,
                }) => {
                    let rows = ChunkRows {
                        rows,
                        last_key,
                        done,
                    };
                    if c == chunk {
                        found = Some(rows);
                    } else {
                        self.pending.insert(c, rows);
                    }
                }
                Ok(ChunkMsg::Open { .. }) => {}
                Err(_) => break,
            }
        }
        match found {
            Some(rows) => Ok(Some((window, rows))),
            None => Err(Error::Invariant(format!(
                "backfill chunk {chunk}: rows missing at its high watermark"
            ))),
        }
    }

    /// Records what the stream did to `key` of `source_table` while a window on that
    /// table is open. `update` is the new image of an update (None for inserts and
    /// deletes, and for the old key of an update that changes it).
    pub fn touch(&mut self, source_table: &str, key: &str, update: Option<&[event::Value]>) {
        let Some(w) = &mut self.window else { return };
        if w.table.map.source_table != source_table {
            return;
        }
        let partial =
            update.filter(|v| v.iter().any(|x| matches!(x.kind, Some(Kind::Unchanged(_)))));
        let carried = |v: &[event::Value]| -> Vec<Option<event::Value>> {
            v.iter()
                .map(|x| (!matches!(x.kind, Some(Kind::Unchanged(_)))).then(|| x.clone()))
                .collect()
        };
        match (w.changed.get_mut(key), partial) {
            (Some(Touched::Superseded), _) => {}
            (Some(Touched::Overlay(overlay)), Some(values)) => {
                for (o, n) in overlay.iter_mut().zip(carried(values)) {
                    if n.is_some() {
                        *o = n;
                    }
                }
            }
            (None, Some(values)) => {
                w.changed
                    .insert(key.to_string(), Touched::Overlay(carried(values)));
            }
            (_, None) => {
                w.changed.insert(key.to_string(), Touched::Superseded);
            }
        }
    }

    /// A truncate of `source_table`: an open window on it drops its whole chunk.
    pub fn truncate(&mut self, source_table: &str) {
        if let Some(w) = &mut self.window {
            if w.table.map.source_table == source_table {
                w.truncated = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> event::Value {
        event::Value {
            kind: Some(Kind::Text(s.into())),
        }
    }

    fn unchanged() -> event::Value {
        event::Value {
            kind: Some(Kind::Unchanged(true)),
        }
    }

    fn open(chunk: &str, table: &Arc<BackfillTable>) -> ChunkMsg {
        ChunkMsg::Open {
            chunk: chunk.into(),
            table: table.clone(),
        }
    }

    fn rows(chunk: &str, last: &str) -> ChunkMsg {
        ChunkMsg::Rows {
            chunk: chunk.into(),
            rows: Vec::new(),
            last_key: vec![last.into()],
            done: false,
        }
    }

    fn setup(run_id: &str) -> (mpsc::Sender<ChunkMsg>, Watermarks, Arc<BackfillTable>) {
        let (tx, rx) = mpsc::channel(16);
        let table = crate::backfill::test_table("prompt_labs", &["id", "name", "content"]);
        (tx, Watermarks::new(rx, run_id), table)
    }

    #[test]
    fn watermarks_of_an_earlier_session_neither_close_the_window_nor_take_the_next_chunk() {
        // The restart race: the new session announced its first chunk, then the stream,
        // re-reading WAL the earlier session wrote, meets that session's watermarks.
        let (tx, mut w, table) = setup("new");
        tx.try_send(open("new:1", &table)).unwrap();
        w.low(b"old:7");
        w.high(b"old:7").unwrap();
        w.low(b"new:1");
        tx.try_send(rows("new:1", "500")).unwrap();
        w.low(b"old:8"); // an earlier session's next chunk, still being re-read
        w.high(b"old:8").unwrap();
        let (window, rows) = w
            .high(b"new:1")
            .unwrap()
            .expect("this session's chunk is published");
        assert_eq!(window.chunk, "new:1");
        assert_eq!(rows.last_key, vec!["500".to_string()]);
    }

    #[test]
    fn a_stream_lagging_behind_the_backfill_matches_each_chunk_with_its_own_rows() {
        // The backfill task ran two chunks ahead before the stream read the first low
        // watermark: both announcements and both row sets wait in the channel.
        let (tx, mut w, table) = setup("r");
        for (chunk, last) in [("r:1", "10"), ("r:2", "20")] {
            tx.try_send(open(chunk, &table)).unwrap();
            tx.try_send(rows(chunk, last)).unwrap();
        }
        for (chunk, last) in [("r:1", "10"), ("r:2", "20")] {
            w.low(chunk.as_bytes());
            let (window, got) = w.high(chunk.as_bytes()).unwrap().unwrap();
            assert_eq!(
                (window.chunk.as_str(), got.last_key),
                (chunk, vec![last.to_string()])
            );
        }
        assert!(w.pending.is_empty());
    }

    #[test]
    fn a_high_watermark_without_its_rows_is_an_error_not_a_silent_skip() {
        let (tx, mut w, table) = setup("r");
        tx.try_send(open("r:1", &table)).unwrap();
        w.low(b"r:1");
        let err = w.high(b"r:1").err().expect("rows missing");
        assert!(err.to_string().contains("r:1"), "{err}");
    }

    #[test]
    fn the_stream_supersedes_or_overlays_chunk_rows_inside_the_window() {
        let (tx, mut w, table) = setup("r");
        // Outside a window nothing is recorded.
        w.touch("public.prompt_labs", "9", None);
        tx.try_send(open("r:1", &table)).unwrap();
        w.low(b"r:1");
        w.touch("public.prompt_labs", "1", None); // insert or delete
        w.touch(
            "public.prompt_labs",
            "2",
            Some(&[text("2"), text("n"), text("c")]),
        ); // full update
        w.touch(
            "public.prompt_labs",
            "3",
            Some(&[text("3"), text("a"), unchanged()]),
        );
        w.touch(
            "public.prompt_labs",
            "3",
            Some(&[text("3"), unchanged(), unchanged()]),
        ); // a later partial update keeps what the earlier one carried
        w.touch(
            "public.prompt_labs",
            "4",
            Some(&[text("4"), text("a"), unchanged()]),
        );
        w.touch("public.prompt_labs", "4", None); // then deleted
        w.touch("public.prompt_templates", "5", None); // another table
        tx.try_send(rows("r:1", "9")).unwrap();
        let (window, _) = w.high(b"r:1").unwrap().unwrap();
        assert_eq!(window.fate("1"), Fate::Superseded);
        assert_eq!(window.fate("2"), Fate::Superseded);
        assert_eq!(
            window.fate("3"),
            Fate::Overlay(&[Some(text("3")), Some(text("a")), None])
        );
        assert_eq!(window.fate("4"), Fate::Superseded);
        assert_eq!(window.fate("5"), Fate::Copy);
        assert_eq!(window.fate("9"), Fate::Copy);
    }

    #[test]
    fn a_truncate_inside_the_window_drops_the_whole_chunk() {
        let (tx, mut w, table) = setup("r");
        tx.try_send(open("r:1", &table)).unwrap();
        w.low(b"r:1");
        w.truncate("public.prompt_templates");
        tx.try_send(rows("r:1", "9")).unwrap();
        tx.try_send(open("r:2", &table)).unwrap();
        let (window, _) = w.high(b"r:1").unwrap().unwrap();
        assert_eq!(window.fate("1"), Fate::Copy, "another table's truncate");
        w.low(b"r:2");
        w.truncate("public.prompt_labs");
        tx.try_send(rows("r:2", "19")).unwrap();
        let (window, _) = w.high(b"r:2").unwrap().unwrap();
        assert_eq!(window.fate("11"), Fate::Superseded);
    }
}
