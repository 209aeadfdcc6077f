//! Decoder for PostgreSQL `pgoutput` logical replication messages
//! (protocol version 1, with `messages 'true'`).
//!
//! [`decode`] turns the payload of one `XLogData` message into a [`Message`]:
//! Begin `B`, Commit `C`, Origin `O`, Relation `R`, Type `Y`, Insert `I`,
//! Update `U`, Delete `D`, Truncate `T` and logical decoding Message `M`.
//! Streaming messages (`S`, `E`, `c`, `A`) and any other kind byte are
//! reported as [`DecodeError::Unsupported`].
//!
//! Layouts follow "Logical Replication Message Formats" in the PostgreSQL
//! protocol documentation. All integers are big-endian; strings are
//! NUL-terminated and must be UTF-8; protocol version 1 carries no xid in
//! row messages.
//!
//! The decoder is a single forward cursor over the input. Tuple values and
//! `M` message content are zero-copy [`Bytes::slice`]s of the input buffer.
//! It never panics on malformed input: every read is bounds-checked and
//! problems are reported as a [`DecodeError`]. A message followed by
//! trailing bytes is rejected as malformed, since that means the stream is
//! not what we think it is.

use bytes::Bytes;

/// A PostgreSQL object identifier.
pub type Oid = u32;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `B`: start of a transaction.
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time_micros: i64,
        xid: u32,
    },
    /// `C`: end of a transaction.
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time_micros: i64,
    },
    /// `O`: replication origin of the current transaction.
    Origin { commit_lsn: u64, name: String },
    /// `R`: describes a relation; precedes its first row message.
    Relation(Relation),
    /// `Y`: describes a non-builtin data type.
    Type {
        oid: Oid,
        namespace: String,
        name: String,
    },
    /// `I`: inserted row.
    Insert { relation: Oid, new: Tuple },
    /// `U`: updated row. At most one of `key` (`K`, replica identity
    /// columns, sent when they changed) and `old` (`O`, full old row under
    /// `REPLICA IDENTITY FULL`) is present.
    Update {
        relation: Oid,
        key: Option<Tuple>,
        old: Option<Tuple>,
        new: Tuple,
    },
    /// `D`: deleted row; exactly one of `key` (`K`) or `old` (`O`) is present.
    Delete {
        relation: Oid,
        key: Option<Tuple>,
        old: Option<Tuple>,
    },
    /// `T`: one or more relations truncated together.
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relations: Vec<Oid>,
    },
    /// `M`: logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
}

/// Relation (`R`) message body.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: Oid,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `relreplident`: `b'd'` default, `b'n'` nothing, `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Column is part of the replica identity key (flag bit 1).
    pub is_key: bool,
    pub name: String,
    pub type_oid: Oid,
    /// `atttypmod`; -1 when not applicable.
    pub type_modifier: i32,
}

/// A row image (TupleData): one [`Value`] per column, in relation order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuple(pub Vec<Value>);

/// One column of a [`Tuple`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `n`: SQL NULL.
    Null,
    /// `u`: unchanged TOAST-ed value; the actual value is not sent.
    UnchangedToast,
    /// `t`: value in text format (zero-copy slice of the input).
    Text(Bytes),
    /// `b`: value in binary format (zero-copy slice of the input).
    Binary(Bytes),
}

impl Value {
    /// The text value as UTF-8; `None` for non-text values or invalid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The input ended before the named field was complete.
    #[error("pgoutput message truncated: {0}")]
    Truncated(&'static str),
    /// A message kind this decoder does not handle (streaming or unknown).
    #[error("unsupported pgoutput message kind {0:?}")]
    Unsupported(char),
    /// The input is structurally invalid.
    #[error("malformed pgoutput message: {0}")]
    Malformed(String),
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Forward-only reader over a message; `rest` is the unread suffix of `data`.
struct Cursor<'a> {
    data: &'a Bytes,
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a Bytes) -> Self {
        Cursor {
            data,
            rest: data.as_ref(),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated(what))?;
        self.rest = tail;
        Ok(*head)
    }

    #[inline]
    fn u8(&mut self, what: &'static str) -> Result<u8> {
        let (&b, tail) = self
            .rest
            .split_first()
            .ok_or(DecodeError::Truncated(what))?;
        self.rest = tail;
        Ok(b)
    }

    #[inline]
    fn i16(&mut self, what: &'static str) -> Result<i16> {
        self.array(what).map(i16::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self, what: &'static str) -> Result<i32> {
        self.array(what).map(i32::from_be_bytes)
    }

    #[inline]
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array(what).map(u32::from_be_bytes)
    }

    #[inline]
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.array(what).map(u64::from_be_bytes)
    }

    #[inline]
    fn i64(&mut self, what: &'static str) -> Result<i64> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// A non-negative Int32 count/length; negative values are malformed.
    #[inline]
    fn len32(&mut self, what: &'static str) -> Result<usize> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| DecodeError::Malformed(format!("negative {what} {n}")))
    }

    /// A non-negative Int16 count; negative values are malformed.
    #[inline]
    fn len16(&mut self, what: &'static str) -> Result<usize> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| DecodeError::Malformed(format!("negative {what} {n}")))
    }

    /// The next `n` bytes as a zero-copy slice of the input buffer.
    #[inline]
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated(what));
        }
        let start = self.data.len() - self.rest.len();
        let (_, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(self.data.slice(start..start + n))
    }

    /// A NUL-terminated UTF-8 string, borrowed from the input.
    #[inline]
    fn cstr(&mut self, what: &'static str) -> Result<&'a str> {
        let nul = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated(what))?;
        let (s, tail) = self.rest.split_at(nul);
        self.rest = tail.get(1..).unwrap_or_default();
        std::str::from_utf8(s)
            .map_err(|e| DecodeError::Malformed(format!("{what} is not valid UTF-8: {e}")))
    }

    #[inline]
    fn string(&mut self, what: &'static str) -> Result<String> {
        self.cstr(what).map(str::to_owned)
    }

    /// `TupleData`: Int16 column count, then per column a kind byte and,
    /// for `t`/`b`, an Int32 length and that many bytes.
    fn tuple(&mut self) -> Result<Tuple> {
        let n = self.len16("tuple column count")?;
        // Every column takes at least one byte: never trust the count for capacity.
        let mut values = Vec::with_capacity(n.min(self.rest.len()));
        for _ in 0..n {
            let value = match self.u8("tuple column kind")? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.len32("text value length")?;
                    Value::Text(self.bytes(len, "text value")?)
                }
                b'b' => {
                    let len = self.len32("binary value length")?;
                    Value::Binary(self.bytes(len, "binary value")?)
                }
                other => {
                    return Err(DecodeError::Malformed(format!(
                        "unknown tuple column kind {:?}",
                        other as char
                    )))
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn relation(&mut self) -> Result<Relation> {
        let oid = self.u32("relation oid")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = self.u8("relation replica identity")?;
        let n = self.len16("relation column count")?;
        // Each column needs at least 10 bytes (flags, NUL, oid, typmod).
        let mut columns = Vec::with_capacity(n.min(self.rest.len() / 10));
        for _ in 0..n {
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                is_key: flags & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type oid")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn update(&mut self) -> Result<Message> {
        let relation = self.u32("update relation oid")?;
        let (mut key, mut old) = (None, None);
        let mut tag = self.u8("update tuple tag")?;
        if tag == b'K' || tag == b'O' {
            let tuple = self.tuple()?;
            if tag == b'K' {
                key = Some(tuple);
            } else {
                old = Some(tuple);
            }
            tag = self.u8("update new tuple tag")?;
        }
        if tag != b'N' {
            return Err(DecodeError::Malformed(format!(
                "update: expected 'N' tuple, found {:?}",
                tag as char
            )));
        }
        let new = self.tuple()?;
        Ok(Message::Update {
            relation,
            key,
            old,
            new,
        })
    }

    fn delete(&mut self) -> Result<Message> {
        let relation = self.u32("delete relation oid")?;
        let (key, old) = match self.u8("delete tuple tag")? {
            b'K' => (Some(self.tuple()?), None),
            b'O' => (None, Some(self.tuple()?)),
            other => {
                return Err(DecodeError::Malformed(format!(
                    "delete: expected 'K' or 'O' tuple, found {:?}",
                    other as char
                )))
            }
        };
        Ok(Message::Delete { relation, key, old })
    }

    fn truncate(&mut self) -> Result<Message> {
        let n = self.len32("truncate relation count")?;
        let options = self.u8("truncate options")?;
        let mut relations = Vec::with_capacity(n.min(self.rest.len() / 4));
        for _ in 0..n {
            relations.push(self.u32("truncate relation oid")?);
        }
        Ok(Message::Truncate {
            cascade: options & 1 != 0,
            restart_identity: options & 2 != 0,
            relations,
        })
    }
}

/// Decodes one pgoutput message (the payload of an `XLogData` message).
///
/// Text/binary tuple values and `M` content are zero-copy slices of `data`.
/// Never panics on any input.
///
/// # Errors
///
/// [`DecodeError::Truncated`] if the input ends early (including empty input),
/// [`DecodeError::Unsupported`] for streaming (`S`, `E`, `c`, `A`) and unknown
/// message kinds, [`DecodeError::Malformed`] for invalid UTF-8 names, negative
/// lengths, unknown tuple tags or column kinds, and trailing bytes.
pub fn decode(data: &Bytes) -> std::result::Result<Message, DecodeError> {
    let mut c = Cursor::new(data);
    let kind = c.u8("message kind")?;
    let msg = match kind {
        b'B' => Message::Begin {
            final_lsn: c.u64("begin final lsn")?,
            commit_time_micros: c.i64("begin commit time")?,
            xid: c.u32("begin xid")?,
        },
        b'C' => Message::Commit {
            flags: c.u8("commit flags")?,
            commit_lsn: c.u64("commit lsn")?,
            end_lsn: c.u64("commit end lsn")?,
            commit_time_micros: c.i64("commit time")?,
        },
        b'O' => Message::Origin {
            commit_lsn: c.u64("origin commit lsn")?,
            name: c.string("origin name")?,
        },
        b'R' => Message::Relation(c.relation()?),
        b'Y' => Message::Type {
            oid: c.u32("type oid")?,
            namespace: c.string("type namespace")?,
            name: c.string("type name")?,
        },
        b'I' => {
            let relation = c.u32("insert relation oid")?;
            let tag = c.u8("insert tuple tag")?;
            if tag != b'N' {
                return Err(DecodeError::Malformed(format!(
                    "insert: expected 'N' tuple, found {:?}",
                    tag as char
                )));
            }
            Message::Insert {
                relation,
                new: c.tuple()?,
            }
        }
        b'U' => c.update()?,
        b'D' => c.delete()?,
        b'T' => c.truncate()?,
        b'M' => {
            let flags = c.u8("message flags")?;
            let lsn = c.u64("message lsn")?;
            let prefix = c.string("message prefix")?;
            let len = c.len32("message content length")?;
            Message::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: c.bytes(len, "message content")?,
            }
        }
        // Streaming ('S', 'E', 'c', 'A'), two-phase and anything unknown.
        other => return Err(DecodeError::Unsupported(other as char)),
    };
    if !c.rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after {:?} message",
            c.rest.len(),
            kind as char
        )));
    }
    Ok(msg)
}

/// Encodes a [`Message`] in pgoutput v1 wire format (test-only helper,
/// the inverse of [`decode`]).
#[cfg(test)]
pub(crate) fn encode(msg: &Message) -> Vec<u8> {
    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    fn tuple(out: &mut Vec<u8>, t: &Tuple) {
        out.extend_from_slice(&(t.0.len() as i16).to_be_bytes());
        for v in &t.0 {
            let (kind, bytes) = match v {
                Value::Null => (b'n', None),
                Value::UnchangedToast => (b'u', None),
                Value::Text(b) => (b't', Some(b)),
                Value::Binary(b) => (b'b', Some(b)),
            };
            out.push(kind);
            if let Some(b) = bytes {
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    let mut out = Vec::new();
    match msg {
        Message::Begin {
            final_lsn,
            commit_time_micros,
            xid,
        } => {
            out.push(b'B');
            out.extend_from_slice(&final_lsn.to_be_bytes());
            out.extend_from_slice(&commit_time_micros.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
        }
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time_micros,
        } => {
            out.push(b'C');
            out.push(*flags);
            out.extend_from_slice(&commit_lsn.to_be_bytes());
            out.extend_from_slice(&end_lsn.to_be_bytes());
            out.extend_from_slice(&commit_time_micros.to_be_bytes());
        }
        Message::Origin { commit_lsn, name } => {
            out.push(b'O');
            out.extend_from_slice(&commit_lsn.to_be_bytes());
            cstr(&mut out, name);
        }
        Message::Relation(r) => {
            out.push(b'R');
            out.extend_from_slice(&r.oid.to_be_bytes());
            cstr(&mut out, &r.namespace);
            cstr(&mut out, &r.name);
            out.push(r.replica_identity);
            out.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
            for col in &r.columns {
                out.push(u8::from(col.is_key));
                cstr(&mut out, &col.name);
                out.extend_from_slice(&col.type_oid.to_be_bytes());
                out.extend_from_slice(&col.type_modifier.to_be_bytes());
            }
        }
        Message::Type {
            oid,
            namespace,
            name,
        } => {
            out.push(b'Y');
            out.extend_from_slice(&oid.to_be_bytes());
            cstr(&mut out, namespace);
            cstr(&mut out, name);
        }
        Message::Insert { relation, new } => {
            out.push(b'I');
            out.extend_from_slice(&relation.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Update {
            relation,
            key,
            old,
            new,
        } => {
            out.push(b'U');
            out.extend_from_slice(&relation.to_be_bytes());
            if let Some(k) = key {
                out.push(b'K');
                tuple(&mut out, k);
            }
            if let Some(o) = old {
                out.push(b'O');
                tuple(&mut out, o);
            }
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Delete { relation, key, old } => {
            out.push(b'D');
            out.extend_from_slice(&relation.to_be_bytes());
            if let Some(k) = key {
                out.push(b'K');
                tuple(&mut out, k);
            }
            if let Some(o) = old {
                out.push(b'O');
                tuple(&mut out, o);
            }
        }
        Message::Truncate {
            cascade,
            restart_identity,
            relations,
        } => {
            out.push(b'T');
            out.extend_from_slice(&(relations.len() as i32).to_be_bytes());
            out.push(u8::from(*cascade) | (u8::from(*restart_identity) << 1));
            for oid in relations {
                out.extend_from_slice(&oid.to_be_bytes());
            }
        }
        Message::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            out.push(b'M');
            out.push(u8::from(*transactional));
            out.extend_from_slice(&lsn.to_be_bytes());
            cstr(&mut out, prefix);
            out.extend_from_slice(&(content.len() as i32).to_be_bytes());
            out.extend_from_slice(content);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn row(values: Vec<Value>) -> Tuple {
        Tuple(values)
    }

    fn all_kinds_row() -> Tuple {
        row(vec![
            text("42"),
            Value::Null,
            Value::UnchangedToast,
            Value::Binary(Bytes::from_static(&[0, 1, 0xff, 0])),
            text(""),
            text("héllo wörld ✓ 日本語 🦀"),
        ])
    }

    fn samples() -> Vec<Message> {
        let key = row(vec![text("7")]);
        let mut v = vec![
            Message::Begin {
                final_lsn: 0x16B3748,
                commit_time_micros: 775_000_000_123_456,
                xid: 734,
            },
            Message::Begin {
                final_lsn: u64::MAX,
                commit_time_micros: -1,
                xid: u32::MAX,
            },
            Message::Commit {
                flags: 0,
                commit_lsn: 0x16B3748,
                end_lsn: 0x16B3778,
                commit_time_micros: 775_000_000_123_456,
            },
            Message::Origin {
                commit_lsn: 99,
                name: "pg_16385".into(),
            },
            Message::Origin {
                commit_lsn: 0,
                name: String::new(),
            },
            Message::Relation(Relation {
                oid: 16385,
                namespace: "public".into(),
                name: "accounts".into(),
                replica_identity: b'd',
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "name".into(),
                        type_oid: 1043,
                        type_modifier: 68,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "straße".into(),
                        type_oid: 25,
                        type_modifier: -1,
                    },
                ],
            }),
            Message::Relation(Relation {
                oid: 1,
                namespace: String::new(),
                name: "empty".into(),
                replica_identity: b'n',
                columns: vec![],
            }),
            Message::Type {
                oid: 16400,
                namespace: "public".into(),
                name: "mood".into(),
            },
            Message::Insert {
                relation: 16385,
                new: all_kinds_row(),
            },
            Message::Insert {
                relation: 16385,
                new: row(vec![]),
            },
            Message::Update {
                relation: 16385,
                key: None,
                old: None,
                new: all_kinds_row(),
            },
            Message::Update {
                relation: 16385,
                key: Some(key.clone()),
                old: None,
                new: all_kinds_row(),
            },
            Message::Update {
                relation: 16385,
                key: None,
                old: Some(all_kinds_row()),
                new: all_kinds_row(),
            },
            Message::Delete {
                relation: 16385,
                key: Some(key),
                old: None,
            },
            Message::Delete {
                relation: 16385,
                key: None,
                old: Some(all_kinds_row()),
            },
            Message::Message {
                transactional: true,
                lsn: 5,
                prefix: "rekey".into(),
                content: Bytes::from_static(b"{\"op\":\"x\"}"),
            },
            Message::Message {
                transactional: false,
                lsn: 6,
                prefix: "ñ".into(),
                content: Bytes::new(),
            },
        ];
        for (cascade, restart_identity) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            v.push(Message::Truncate {
                cascade,
                restart_identity,
                relations: vec![16385, 16390],
            });
        }
        v.push(Message::Truncate {
            cascade: false,
            restart_identity: false,
            relations: vec![],
        });
        v
    }

    #[test]
    fn round_trip_every_sample() {
        for msg in samples() {
            let data = Bytes::from(encode(&msg));
            assert_eq!(decode(&data), Ok(msg));
        }
    }

    #[test]
    fn begin_exact_wire_layout() {
        let mut raw = vec![b'B'];
        raw.extend_from_slice(&[0, 0, 0, 0, 0x01, 0x6B, 0x37, 0x48]);
        raw.extend_from_slice(&(-2i64).to_be_bytes());
        raw.extend_from_slice(&[0, 0, 0x02, 0xDE]);
        let msg = decode(&Bytes::from(raw)).unwrap();
        assert_eq!(
            msg,
            Message::Begin {
                final_lsn: 0x016B_3748,
                commit_time_micros: -2,
                xid: 734
            }
        );
    }

    #[test]
    fn relation_and_insert_exact_wire_layout() {
        let mut raw = vec![b'R', 0, 0, 0x40, 0x01];
        raw.extend_from_slice(b"public\0t\0f\0\x02");
        raw.extend_from_slice(b"\x01id\0\0\0\0\x17\xff\xff\xff\xff");
        raw.extend_from_slice(b"\x00v\0\0\0\x04\x13\0\0\0\x44");
        let Message::Relation(rel) = decode(&Bytes::from(raw)).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(
            (
                rel.oid,
                rel.namespace.as_str(),
                rel.name.as_str(),
                rel.replica_identity
            ),
            (0x4001, "public", "t", b'f')
        );
        assert_eq!(
            rel.columns[0],
            RelationColumn {
                is_key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1
            }
        );
        assert_eq!(
            rel.columns[1],
            RelationColumn {
                is_key: false,
                name: "v".into(),
                type_oid: 1043,
                type_modifier: 68
            }
        );

        let raw = Bytes::from_static(b"I\0\0\x40\x01N\0\x04t\0\0\0\x0212nub\0\0\0\x01\xaa");
        let msg = decode(&raw).unwrap();
        assert_eq!(
            msg,
            Message::Insert {
                relation: 0x4001,
                new: row(vec![
                    text("12"),
                    Value::Null,
                    Value::UnchangedToast,
                    Value::Binary(Bytes::from_static(&[0xaa]))
                ]),
            }
        );
    }

    #[test]
    fn truncate_and_message_wire_layout() {
        let raw = Bytes::from_static(b"T\0\0\0\x02\x03\0\0\0\x01\0\0\0\x02");
        assert_eq!(
            decode(&raw),
            Ok(Message::Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![1, 2]
            })
        );
        let raw = Bytes::from_static(b"M\x01\0\0\0\0\0\0\0\x09p\0\0\0\0\x03abc");
        assert_eq!(
            decode(&raw),
            Ok(Message::Message {
                transactional: true,
                lsn: 9,
                prefix: "p".into(),
                content: Bytes::from_static(b"abc")
            })
        );
    }

    #[test]
    fn values_are_zero_copy_slices() {
        let data = Bytes::from(encode(&Message::Insert {
            relation: 1,
            new: all_kinds_row(),
        }));
        let range = data.as_ptr_range();
        let Ok(Message::Insert { new, .. }) = decode(&data) else {
            panic!("decode failed")
        };
        for v in &new.0 {
            if let Value::Text(b) | Value::Binary(b) = v {
                if !b.is_empty() {
                    assert!(range.contains(&b.as_ptr()), "value {v:?} was copied");
                }
            }
        }
        assert_eq!(new.0[5].as_str(), Some("héllo wörld ✓ 日本語 🦀"));
    }

    #[test]
    fn value_as_str() {
        assert_eq!(text("abc").as_str(), Some("abc"));
        assert_eq!(text("").as_str(), Some(""));
        assert_eq!(
            Value::Text(Bytes::from_static(&[0xff, 0xfe])).as_str(),
            None
        );
        assert_eq!(Value::Binary(Bytes::from_static(b"abc")).as_str(), None);
        assert_eq!(Value::Null.as_str(), None);
        assert_eq!(Value::UnchangedToast.as_str(), None);
    }

    #[test]
    fn unsupported_kinds() {
        for kind in [b'S', b'E', b'c', b'A', b'P', b'K', b'Z', b'i', 0, 0x7f] {
            assert_eq!(
                decode(&Bytes::from(vec![kind, 0, 0, 0, 0])),
                Err(DecodeError::Unsupported(kind as char))
            );
        }
        assert_eq!(
            decode(&Bytes::from_static(&[0xff])),
            Err(DecodeError::Unsupported('\u{ff}'))
        );
    }

    #[test]
    fn empty_input_is_truncated() {
        assert_eq!(
            decode(&Bytes::new()),
            Err(DecodeError::Truncated("message kind"))
        );
    }

    fn malformed(raw: &'static [u8]) -> bool {
        matches!(
            decode(&Bytes::from_static(raw)),
            Err(DecodeError::Malformed(_))
        )
    }

    #[test]
    fn malformed_inputs() {
        // Invalid UTF-8 in names.
        assert!(malformed(b"Y\0\0\0\x01public\0\xff\xfe\0"));
        assert!(malformed(b"O\0\0\0\0\0\0\0\x01\xc3\0"));
        assert!(malformed(
            b"R\0\0\0\x01\0t\0d\0\x01\x01\xe2\x82\0\0\0\0\x17\xff\xff\xff\xff"
        ));
        // Negative lengths and counts.
        assert!(malformed(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff"));
        assert!(malformed(b"I\0\0\0\x01N\0\x01b\x80\0\0\0"));
        assert!(malformed(b"I\0\0\0\x01N\xff\xff"));
        assert!(malformed(b"R\0\0\0\x01\0t\0d\xff\xff"));
        assert!(malformed(b"T\xff\xff\xff\xff\0"));
        assert!(malformed(b"M\0\0\0\0\0\0\0\0\0p\0\xff\xff\xff\xff"));
        // Unknown tuple column kind.
        assert!(malformed(b"I\0\0\0\x01N\0\x01x"));
        // Wrong tuple tags.
        assert!(malformed(b"I\0\0\0\x01K\0\0"));
        assert!(malformed(b"U\0\0\0\x01X\0\0"));
        assert!(malformed(b"U\0\0\0\x01K\0\0K\0\0"));
        assert!(malformed(b"U\0\0\0\x01K\0\0O\0\0N\0\0"));
        assert!(malformed(b"D\0\0\0\x01N\0\0"));
        // Trailing bytes.
        assert!(malformed(b"I\0\0\0\x01N\0\0\0"));
        assert!(malformed(b"D\0\0\0\x01K\0\0N\0\0"));
        assert!(malformed(b"T\0\0\0\x01\0\0\0\0\x01\0\0\0\x02"));
    }

    #[test]
    fn huge_claimed_counts_fail_fast() {
        assert_eq!(
            decode(&Bytes::from_static(b"T\x7f\xff\xff\xff\0")),
            Err(DecodeError::Truncated("truncate relation oid"))
        );
        assert_eq!(
            decode(&Bytes::from_static(b"I\0\0\0\x01N\x7f\xff")),
            Err(DecodeError::Truncated("tuple column kind"))
        );
        assert_eq!(
            decode(&Bytes::from_static(b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xff")),
            Err(DecodeError::Truncated("text value"))
        );
        assert_eq!(
            decode(&Bytes::from_static(b"R\0\0\0\x01\0t\0d\x7f\xff")),
            Err(DecodeError::Truncated("column flags"))
        );
        assert_eq!(
            decode(&Bytes::from_static(b"Y\0\0\0\x01public")),
            Err(DecodeError::Truncated("type namespace"))
        );
    }

    #[test]
    fn every_strict_prefix_is_truncated() {
        for msg in samples() {
            let full = encode(&msg);
            for len in 0..full.len() {
                let prefix = Bytes::copy_from_slice(&full[..len]);
                match decode(&prefix) {
                    Err(DecodeError::Truncated(_)) => {}
                    other => panic!("prefix {len}/{} of {msg:?} gave {other:?}", full.len()),
                }
            }
        }
    }

    /// xorshift64*: deterministic, dependency-free pseudo-randomness.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Decoding must never panic; whatever does decode must re-encode to an
    /// equivalent message.
    fn check_no_panic(raw: Vec<u8>) {
        if let Ok(msg) = decode(&Bytes::from(raw)) {
            assert_eq!(decode(&Bytes::from(encode(&msg))), Ok(msg));
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        const KINDS: &[u8] = b"BCORYIUDTMSEcA";
        for _ in 0..20_000 {
            let len = rng.below(48);
            let mut raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = raw.first_mut() {
                *first = KINDS[rng.below(KINDS.len())];
            }
            // Bias towards small structural bytes so parsing gets deeper.
            for b in raw.iter_mut().skip(1) {
                if rng.below(3) == 0 {
                    *b = b"\0\x01\x02ntubKNO"[rng.below(10)];
                }
            }
            check_no_panic(raw);
        }
        let samples: Vec<Vec<u8>> = samples().iter().map(encode).collect();
        for _ in 0..20_000 {
            let mut raw = samples[rng.below(samples.len())].clone();
            for _ in 0..=rng.below(3) {
                let i = rng.below(raw.len());
                raw[i] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => raw[i] ^ (1 << rng.below(8)),
                    _ => rng.next() as u8,
                };
            }
            if rng.below(4) == 0 {
                raw.truncate(rng.below(raw.len() + 1));
            }
            check_no_panic(raw);
        }
    }
}
