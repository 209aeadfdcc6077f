//! `COPY … FROM STDIN` in its text format: rows of event values loaded in one statement.
//!
//! Used where the writer knows the new store has none of the rows yet (see
//! [`crate::chunk_copy`] and [`crate::apply`]): `COPY` inserts many rows per heap page and
//! WAL record and parses each value once, where an upsert from text arrays probes the
//! key, inserts speculatively and parses the arrays before the casts. Values are
//! PostgreSQL's text representations already (see the event schema), so each is
//! written as it is, with only backslash, tab, newline and carriage return escaped.
//!
//! Backfill rows arrive in this format already ([`event::CopyRows`]): the reader reads a
//! chunk with `COPY (SELECT …) TO STDOUT` and rewrites only the rekeyed fields of each
//! line ([`crate::mapping::TableMap::copy_line`]), so the values are neither decoded nor
//! escaped again on either side. [`fields`], [`unescape`] and [`values`] read such lines
//! where a row is needed as values after all (an overlay, a row the target has).

use std::borrow::Cow;
use std::io::Write as _;
use std::ops::Range;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use crate::config::quote_ident;
use crate::error::Error;
use crate::event::{self, value::Kind};

/// `COPY` of the event table's columns, then `row_version` (and `deleted_at`, NULL, for
/// soft-deleting tables: a copied row is live).
fn copy_sql(table: &event::Table, sql_name: &str, soft_delete: bool) -> String {
    let mut columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    columns.push("row_version".into());
    if soft_delete {
        columns.push("deleted_at".into());
    }
    format!("COPY {sql_name} ({}) FROM STDIN", columns.join(", "))
}

/// The rows in `COPY`'s text format, in the order of [`copy_sql`]'s columns.
/// `versions[i]` is row `i`'s `row_version`.
fn encode(
    table: &event::Table,
    soft_delete: bool,
    versions: &[i64],
    rows: &[&[event::Value]],
) -> Result<Vec<u8>, Error> {
    if versions.len() != rows.len() {
        return Err(Error::Invariant(format!(
            "{}: {} row versions for {} rows",
            table.target_table,
            versions.len(),
            rows.len()
        )));
    }
    let width: usize = rows.first().map_or(0, |r| {
        r.iter()
            .map(|v| match &v.kind {
                Some(Kind::Text(s)) => s.len() + 1,
                _ => 3,
            })
            .sum()
    });
    let mut out = Vec::with_capacity((width + 24) * rows.len());
    for (row, &v) in rows.iter().zip(versions) {
        if row.len() != table.columns.len() {
            return Err(Error::Invariant(format!(
                "{}: a row of {} values for {} columns",
                table.target_table,
                row.len(),
                table.columns.len()
            )));
        }
        for (i, v) in row.iter().enumerate() {
            match &v.kind {
                Some(Kind::Text(s)) => push_escaped(&mut out, s),
                Some(Kind::Null(_)) => out.extend_from_slice(b"\\N"),
                _ => {
                    return Err(Error::Invariant(format!(
                        "{}.{}: a row to copy without a text value",
                        table.target_table, table.columns[i].name
                    )))
                }
            }
            out.push(b'\t');
        }
        push_row_end(&mut out, v, soft_delete);
    }
    Ok(out)
}

/// Appends what ends every copied row after its event columns and a tab: its
/// `row_version`, a NULL `deleted_at` for soft-deleting tables (a copied row is live),
/// and the newline.
fn push_row_end(out: &mut Vec<u8>, version: i64, soft_delete: bool) {
    write!(out, "{version}").expect("writing to a Vec");
    if soft_delete {
        out.extend_from_slice(b"\t\\N");
    }
    out.push(b'\n');
}

/// Appends `s` as one field of `COPY`'s text format: backslash, tab, newline and
/// carriage return escaped; everything else as it is (the connection is UTF-8).
pub(crate) fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let s = s.as_bytes();
    if !may_need_escape(s) {
        out.extend_from_slice(s);
        return;
    }
    let mut plain = 0;
    for (i, &b) in s.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&s[plain..i]);
        out.extend_from_slice(escaped);
        plain = i + 1;
    }
    out.extend_from_slice(&s[plain..]);
}

/// Whether `s` has a backslash or a control character, eight bytes at a time (most
/// values have neither, and are copied as they are).
fn may_need_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // A byte below 0x20, or a zero byte of `backslash` (one equal to '\\').
        let below = x.wrapping_sub(ONES * 0x20) & !x;
        let equal = backslash.wrapping_sub(ONES) & !backslash;
        if (below | equal) & HIGH != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'\\')
}

/// Loads `rows` (full images of `table`'s columns, `versions[i]` the `row_version` of
/// row `i`) into the target table `sql_name` with one `COPY`; fails unless every row
/// was loaded. Returns the number of rows.
pub async fn load(
    client: &Client,
    table: &event::Table,
    sql_name: &str,
    soft_delete: bool,
    versions: &[i64],
    rows: &[&[event::Value]],
) -> Result<u64, Error> {
    let data = encode(table, soft_delete, versions, rows)?;
    copy_rows(
        client,
        table,
        sql_name,
        soft_delete,
        vec![Bytes::from(data)],
        rows.len() as u64,
    )
    .await
}

/// The integer legacy keys of `rows`, from their column `at`; `None` if one is not an
/// integer in text.
pub fn legacy_ids<'a>(
    rows: impl Iterator<Item = &'a [event::Value]>,
    at: usize,
) -> Option<Vec<i64>> {
    rows.map(|r| match r.get(at).and_then(|v| v.kind.as_ref()) {
        Some(Kind::Text(s)) => s.parse().ok(),
        _ => None,
    })
    .collect()
}

/// A NULL field.
pub const NULL: &[u8] = b"\\N";

/// The byte ranges of the tab-separated fields of `line` (without its newline), into
/// `out` (cleared first).
pub fn fields(line: &[u8], out: &mut Vec<Range<usize>>) {
    out.clear();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\t', line) {
        out.push(start..i);
        start = i + 1;
    }
    out.push(start..line.len());
}

/// The lines of a block of `COPY` text, each without its newline.
pub fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', block)
        .chain((!block.ends_with(b"\n") && !block.is_empty()).then_some(block.len()))
        .map(move |end| {
            let line = &block[start..end];
            start = end + 1;
            line
        })
}

/// One field's value: `None` for NULL, else its bytes with the backslash escapes of
/// `COPY`'s text format resolved (`\t`, `\n`, octal `\123`, hex `\x41`, and a
/// backslash before any other byte standing for that byte).
pub fn unescape(field: &[u8]) -> Option<Cow<'_, [u8]>> {
    if field == NULL {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(Cow::Borrowed(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' || i == field.len() {
            out.push(b);
            continue;
        }
        let c = field[i];
        i += 1;
        let digits = |i: &mut usize, max: usize, radix: u32| -> u8 {
            let mut v: u32 = 0;
            let mut n = 0;
            while n < max && *i < field.len() {
                match (field[*i] as char).to_digit(radix) {
                    Some(d) => v = v * radix + d,
                    None => break,
                }
                *i += 1;
                n += 1;
            }
            v as u8
        };
        out.push(match c {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            b'0'..=b'7' => {
                i -= 1;
                digits(&mut i, 3, 8)
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => digits(&mut i, 2, 16),
            other => other,
        });
    }
    Some(Cow::Owned(out))
}

/// The event values of one line: text (or binary, where the bytes are not UTF-8) and
/// NULL.
pub fn values(line: &[u8], ranges: &mut Vec<Range<usize>>) -> Vec<event::Value> {
    fields(line, ranges);
    ranges
        .iter()
        .map(|r| {
            let kind = match unescape(&line[r.clone()]) {
                None => Kind::Null(true),
                Some(b) => match String::from_utf8(b.into_owned()) {
                    Ok(s) => Kind::Text(s),
                    Err(e) => Kind::Binary(e.into_bytes()),
                },
            };
            event::Value { kind: Some(kind) }
        })
        .collect()
}

/// Turns `txn`'s `COPY` lines, if any, into ordinary backfill changes after its own:
/// for every path that applies rows one by one rather than loading the lines.
pub fn expand(txn: &mut event::Transaction) {
    let Some(copy) = txn.copy.take() else {
        return;
    };
    let mut ranges = Vec::new();
    txn.changes.reserve(copy.rows as usize);
    for line in lines(&copy.lines) {
        txn.changes
            .push(backfill_change(copy.table, line, &mut ranges));
    }
}

/// The backfill change of one line of a `CopyRows` of the table at index `table`.
pub fn backfill_change(table: u32, line: &[u8], ranges: &mut Vec<Range<usize>>) -> event::Change {
    event::Change {
        table,
        op: event::Op::Backfill as i32,
        row: values(line, ranges),
        ..Default::default()
    }
}

/// The integer in field `at` of every line of `block`, in order; `None` if a line has
/// no such field or it is not an integer.
pub fn field_ids(block: &[u8], at: usize) -> Option<Vec<i64>> {
    let mut ranges = Vec::new();
    lines(block)
        .map(|line| {
            fields(line, &mut ranges);
            let field = &line[ranges.get(at)?.clone()];
            std::str::from_utf8(field).ok()?.parse().ok()
        })
        .collect()
}

/// Loads the lines of `block` whose index is not in `skip` (sorted) into `sql_name`
/// with one `COPY`, each followed by `version` as its `row_version` (and a NULL
/// `deleted_at` for soft-deleting tables); fails unless every one was loaded. Returns
/// the number of rows.
pub async fn load_lines(
    client: &Client,
    table: &event::Table,
    sql_name: &str,
    soft_delete: bool,
    version: i64,
    block: &[u8],
    skip: &[usize],
) -> Result<u64, Error> {
    let mut suffix = vec![b'\t'];
    push_row_end(&mut suffix, version, soft_delete);
    let mut skip = skip.iter().peekable();
    let mut rows = 0u64;
    let mut pieces = Vec::new();
    let mut data = Vec::new();
    for (i, line) in lines(block).enumerate() {
        if skip.next_if(|&&s| s == i).is_some() {
            continue;
        }
        if data.len() + line.len() + suffix.len() > COPY_PIECE && !data.is_empty() {
            pieces.push(Bytes::from(std::mem::take(&mut data)));
        }
        if data.is_empty() {
            data.reserve(COPY_PIECE);
        }
        data.extend_from_slice(line);
        data.extend_from_slice(&suffix);
        rows += 1;
    }
    if rows == 0 {
        return Ok(0);
    }
    pieces.push(Bytes::from(data));
    copy_rows(client, table, sql_name, soft_delete, pieces, rows).await
}

/// How much `COPY` data [`load_lines`] gathers per message to the server: pieces of
/// this size come from the allocator's free lists, where one buffer the size of a
/// whole part (hundreds of KiB) is fresh memory for the kernel to zero every time.
const COPY_PIECE: usize = 64 * 1024;

/// The query that finds which of the `legacy_id`s in its parameter (`int8[]`) the
/// target table `sql_name` has already: the probe before a `COPY` of new rows.
pub fn probe_sql(sql_name: &str) -> String {
    format!(
        "SELECT {id}::int8 FROM {sql_name} WHERE {id} = ANY($1::int8[])",
        id = quote_ident(crate::mapping::LEGACY_ID)
    )
}

/// Loads `rows` rows, the data in `pieces` in the order of [`copy_sql`]'s columns, into
/// `sql_name` with one `COPY`; fails unless every one was loaded.
async fn copy_rows(
    client: &Client,
    table: &event::Table,
    sql_name: &str,
    soft_delete: bool,
    pieces: Vec<Bytes>,
    rows: u64,
) -> Result<u64, Error> {
    let context = || format!("copying rows into {}", table.target_table);
    let sink = client
        .copy_in::<_, Bytes>(&copy_sql(table, sql_name, soft_delete))
        .await
        .map_err(Error::target_db(context()))?;
    futures::pin_mut!(sink);
    for piece in pieces {
        sink.feed(piece)
            .await
            .map_err(Error::target_db(context()))?;
    }
    let loaded = sink.finish().await.map_err(Error::target_db(context()))?;
    if loaded != rows {
        return Err(Error::Invariant(format!(
            "COPY into {} loaded {loaded} rows of {rows}",
            table.target_table
        )));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str) -> event::Column {
        event::Column {
            name: name.into(),
            type_name: "text".into(),
            is_key: name == "id",
        }
    }

    fn text(s: &str) -> event::Value {
        event::Value {
            kind: Some(Kind::Text(s.into())),
        }
    }

    fn null() -> event::Value {
        event::Value {
            kind: Some(Kind::Null(true)),
        }
    }

    fn table() -> event::Table {
        event::Table {
            entity: "t".into(),
            source_table: "public.t".into(),
            target_table: "public.t".into(),
            columns: vec![column("id"), column("legacy_id"), column("note")],
        }
    }

    #[test]
    fn special_bytes_are_escaped_and_the_rest_is_kept() {
        let mut out = Vec::new();
        push_escaped(&mut out, "a\tb\nc\rd\\e \\. é\u{1F600}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\nc\\rd\\\\e \\\\. é\u{1F600}"
        );
        let mut plain = Vec::new();
        push_escaped(&mut plain, "plain, with 'quotes' and \"more\"");
        assert_eq!(plain, b"plain, with 'quotes' and \"more\"");
    }

    #[test]
    fn every_byte_is_escaped_as_copy_reads_it_whatever_its_place() {
        fn naive(s: &str) -> Vec<u8> {
            let mut out = Vec::new();
            for &b in s.as_bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
            out
        }
        for b in 0u8..0x80 {
            for len in [1, 7, 8, 9, 16, 23] {
                for at in 0..len {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    let s = String::from_utf8(v).unwrap();
                    let mut out = Vec::new();
                    push_escaped(&mut out, &s);
                    assert_eq!(out, naive(&s), "byte {b:#x} at {at} of {len}");
                }
            }
        }
        let s = "ünïcödé 日本語 🚀 and more than eight bytes, no specials";
        assert!(!may_need_escape(s.as_bytes()));
    }

    #[test]
    fn unescape_reverses_escaping_and_reads_what_postgres_writes() {
        for s in [
            "",
            "plain",
            "a\tb\nc\rd\\e",
            "\\N",
            "\\.",
            "trailing\\",
            "ünïcödé 日本語 🚀",
        ] {
            let mut out = Vec::new();
            push_escaped(&mut out, s);
            assert_eq!(
                unescape(&out).as_deref(),
                Some(s.as_bytes()),
                "{s:?} escaped as {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        assert_eq!(unescape(b"\\N"), None, "NULL");
        // PostgreSQL's COPY TO also escapes backspace, form feed and vertical tab;
        // COPY FROM reads octal and hex escapes and drops the backslash elsewhere.
        assert_eq!(
            unescape(b"\\b\\f\\v\\101\\x41\\x4G\\7z\\q").as_deref(),
            Some(&b"\x08\x0c\x0bAA\x04G\x07zq"[..])
        );
    }

    #[test]
    fn lines_split_into_fields_and_values() {
        let block = b"u1\t1\tline\\nbreak\nu2\t2\t\\N\n";
        let split: Vec<&[u8]> = lines(block).collect();
        assert_eq!(split, [&b"u1\t1\tline\\nbreak"[..], b"u2\t2\t\\N"]);
        assert_eq!(lines(b"").count(), 0);
        let mut ranges = Vec::new();
        assert_eq!(
            values(split[0], &mut ranges),
            [text("u1"), text("1"), text("line\nbreak")]
        );
        assert_eq!(
            values(split[1], &mut ranges),
            [text("u2"), text("2"), null()]
        );
        assert_eq!(field_ids(block, 1), Some(vec![1, 2]));
        assert_eq!(field_ids(block, 0), None, "not integers");
        assert_eq!(field_ids(block, 5), None, "no such field");
    }

    #[test]
    fn expanded_lines_are_backfill_changes_after_the_others() {
        let mut txn = event::Transaction {
            changes: vec![event::Change {
                op: event::Op::Backfill as i32,
                row: vec![text("u0"), text("0"), null()],
                ..Default::default()
            }],
            copy: Some(event::CopyRows {
                table: 0,
                lines: b"u1\t1\ta\\tb\nu2\t2\t\\N\n".to_vec(),
                rows: 2,
            }),
            ..Default::default()
        };
        assert_eq!(txn.rows(), 3);
        expand(&mut txn);
        assert!(txn.copy.is_none());
        let rows: Vec<_> = txn.changes.iter().map(|c| (c.op, c.row.clone())).collect();
        let b = event::Op::Backfill as i32;
        assert_eq!(
            rows,
            [
                (b, vec![text("u0"), text("0"), null()]),
                (b, vec![text("u1"), text("1"), text("a\tb")]),
                (b, vec![text("u2"), text("2"), null()]),
            ]
        );
        assert_eq!(txn.rows(), 3);
    }

    #[test]
    fn rows_are_encoded_with_version_and_live_deleted_at() {
        let t = table();
        let a = [text("u1"), text("1"), text("line\nbreak")];
        let b = [text("u2"), text("2"), null()];
        let rows: Vec<&[event::Value]> = vec![&a, &b];
        let out = encode(&t, true, &[42, 42], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "u1\t1\tline\\nbreak\t42\t\\N\nu2\t2\t\\N\t42\t\\N\n"
        );
        let out = encode(&t, false, &[7], &rows[1..]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "u2\t2\t\\N\t7\n");
        assert_eq!(
            copy_sql(&t, "\"public\".\"t\"", true),
            "COPY \"public\".\"t\" (\"id\", \"legacy_id\", \"note\", row_version, deleted_at) FROM STDIN"
        );
    }

    #[test]
    fn a_marker_or_a_short_row_is_refused_not_copied() {
        let t = table();
        let unchanged = [
            text("u1"),
            text("1"),
            event::Value {
                kind: Some(Kind::Unchanged(true)),
            },
        ];
        let short = [text("u1"), text("1")];
        for row in [&unchanged[..], &short[..]] {
            let err = encode(&t, false, &[1], &[row]).unwrap_err().to_string();
            assert!(err.contains("public.t"), "{err}");
        }
    }
}
