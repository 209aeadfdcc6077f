//! The protobuf event types, generated from `proto/rekey/v1/events.proto` by the build
//! script. This is the only place generated code is included.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/rekey.v1.rs"));

/// The `Batch.schema_version` this build writes.
pub const SCHEMA_VERSION: u32 = 3;
/// The oldest `Batch.schema_version` this build understands (1: no shared tables; 2: no
/// `Transaction.copy`).
pub const MIN_SCHEMA_VERSION: u32 = 1;

impl Transaction {
    /// The tables this transaction's changes refer to: its own, or else its batch's.
    pub fn tables_in<'a>(&'a self, batch_tables: &'a [Table]) -> &'a [Table] {
        if self.tables.is_empty() {
            batch_tables
        } else {
            &self.tables
        }
    }

    /// The rows this transaction changes: its changes and its `COPY` lines.
    pub fn rows(&self) -> u64 {
        self.changes.len() as u64 + self.copy.as_ref().map_or(0, |c| u64::from(c.rows))
    }
}

/// The largest uncompressed batch a writer accepts (see [`decode_batch`]): a guard
/// against a corrupt size, far above any batch a reader writes.
const MAX_BATCH_BYTES: usize = 1 << 30;

/// Encodes batches for publishing, reusing its buffers: allocated afresh for every
/// message, their pages were the reader's largest cost in a backfill (the kernel zeroing
/// them).
#[derive(Default)]
pub struct Encoder {
    out: Vec<u8>,
    plain: Vec<u8>,
    packed: Vec<u8>,
}

impl Encoder {
    /// `batch` as published: its encoding, compressed with LZ4 into `Batch.lz4` when
    /// `compress` (LZ4 block format, the uncompressed size prepended).
    pub fn encode(&mut self, batch: &Batch, compress: bool) -> &[u8] {
        use prost::Message as _;
        self.out.clear();
        if !compress {
            self.out.reserve(batch.encoded_len());
            batch
                .encode(&mut self.out)
                .expect("a Vec grows to what the encoding needs");
            return &self.out;
        }
        self.plain.clear();
        self.plain.reserve(batch.encoded_len());
        batch
            .encode(&mut self.plain)
            .expect("a Vec grows to what the encoding needs");
        let mut packed = std::mem::take(&mut self.packed);
        packed.clear();
        packed.resize(
            4 + lz4_flex::block::get_maximum_output_size(self.plain.len()),
            0,
        );
        packed[..4].copy_from_slice(&(self.plain.len() as u32).to_le_bytes());
        let n = lz4_flex::block::compress_into(&self.plain, &mut packed[4..])
            .expect("the output is sized for the worst case");
        packed.truncate(4 + n);
        let outer = Batch {
            schema_version: batch.schema_version,
            lz4: packed,
            ..Default::default()
        };
        outer
            .encode(&mut self.out)
            .expect("a Vec grows to what the encoding needs");
        self.packed = outer.lz4;
        &self.out
    }
}

/// A published batch, decompressed if it was compressed; the error says what is wrong
/// with the payload.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, String> {
    use prost::Message as _;
    let batch = Batch::decode(payload).map_err(|e| format!("not a rekey batch: {e}"))?;
    if batch.lz4.is_empty() {
        return Ok(batch);
    }
    let size = batch
        .lz4
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    if size.is_none_or(|n| n > MAX_BATCH_BYTES) {
        return Err(format!(
            "a compressed rekey batch claims {} bytes (at most {MAX_BATCH_BYTES})",
            size.unwrap_or(0)
        ));
    }
    let plain = lz4_flex::block::decompress_size_prepended(&batch.lz4)
        .map_err(|e| format!("a compressed rekey batch does not decompress: {e}"))?;
    let inner = Batch::decode(&plain[..]).map_err(|e| format!("not a rekey batch: {e}"))?;
    if !inner.lz4.is_empty() {
        return Err("a compressed rekey batch inside another".into());
    }
    Ok(inner)
}

/// PostgreSQL timestamps count from 2000-01-01; events carry Unix microseconds.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn batch() -> Batch {
        Batch {
            schema_version: SCHEMA_VERSION,
            transactions: vec![Transaction {
                copy: Some(CopyRows {
                    table: 0,
                    lines: b"u1\t1\tsome text that repeats, some text that repeats\n".repeat(50),
                    rows: 50,
                }),
                ..Default::default()
            }],
            tables: vec![Table {
                target_table: "public.t".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_decodes_to_itself_compressed_or_not() {
        let b = batch();
        let mut encoder = Encoder::default();
        let plain = encoder.encode(&b, false).to_vec();
        let small = encoder.encode(&b, true).to_vec();
        // The buffers are reused, not carried over.
        assert_eq!(encoder.encode(&b, false), &plain[..]);
        assert_eq!(encoder.encode(&b, true), &small[..]);
        assert!(
            small.len() * 5 < plain.len(),
            "{} vs {}",
            small.len(),
            plain.len()
        );
        assert_eq!(decode_batch(&plain).unwrap(), b);
        assert_eq!(decode_batch(&small).unwrap(), b);
    }

    #[test]
    fn a_corrupt_compressed_batch_is_an_error_not_a_batch() {
        let encoded = Encoder::default().encode(&batch(), true).to_vec();
        let mut small = Batch::decode(&encoded[..]).unwrap();
        let n = small.lz4.len();
        small.lz4.truncate(n - 3);
        let err = decode_batch(&small.encode_to_vec()).unwrap_err();
        assert!(err.contains("does not decompress"), "{err}");
        small.lz4 = vec![0xff, 0xff, 0xff, 0x7f, 0];
        let err = decode_batch(&small.encode_to_vec()).unwrap_err();
        assert!(err.contains("claims"), "{err}");
    }
}
