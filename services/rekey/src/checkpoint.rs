//! The writer's position, stored in the target database.
//!
//! The row for (topic, partition) is written in the *same* target transaction that
//! applied the events it covers, so the target's data and the position that produced it
//! can never disagree: after any crash the writer resumes at `next_offset`, and the
//! target is a consistent image of the source at `commit_lsn` (the "consistent LSN").

use tokio_postgres::Client;

use crate::error::Error;

pub const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS rekey;
CREATE TABLE IF NOT EXISTS rekey.checkpoint (
    topic              text        NOT NULL,
    partition          integer     NOT NULL,
    next_offset        bigint      NOT NULL,
    commit_lsn         bigint      NOT NULL,
    end_lsn            bigint      NOT NULL,
    commit_time        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);";

/// Where the writer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next Kafka offset to read.
    pub next_offset: i64,
    /// Commit LSN of the last source transaction applied.
    pub commit_lsn: u64,
    pub end_lsn: u64,
    /// Its commit time, Unix microseconds.
    pub commit_time_micros: i64,
}

pub async fn ensure_schema(client: &Client) -> Result<(), Error> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(Error::target_db("creating the rekey.checkpoint table"))
}

pub async fn load(
    client: &Client,
    topic: &str,
    partition: i32,
) -> Result<Option<Checkpoint>, Error> {
    let row = client
        .query_opt(
            "SELECT next_offset, commit_lsn, end_lsn,
                    coalesce((extract(epoch FROM commit_time) * 1000000)::bigint, 0)
               FROM rekey.checkpoint WHERE topic = $1 AND partition = $2",
            &[&topic, &partition],
        )
        .await
        .map_err(Error::target_db("reading the checkpoint"))?;
    Ok(row.map(|r| Checkpoint {
        next_offset: r.get(0),
        commit_lsn: r.get::<_, i64>(1) as u64,
        end_lsn: r.get::<_, i64>(2) as u64,
        commit_time_micros: r.get(3),
    }))
}

/// Saves the position; call inside the transaction that applied the events.
pub async fn save(
    client: &Client,
    topic: &str,
    partition: i32,
    cp: &Checkpoint,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO rekey.checkpoint (topic, partition, next_offset, commit_lsn, end_lsn, commit_time, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'epoch'::timestamptz + $6::bigint * interval '1 microsecond', now())
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
                 commit_lsn = EXCLUDED.commit_lsn, end_lsn = EXCLUDED.end_lsn,
                 commit_time = EXCLUDED.commit_time, updated_at = now()",
            &[&topic, &partition, &cp.next_offset, &(cp.commit_lsn as i64), &(cp.end_lsn as i64), &cp.commit_time_micros],
        )
        .await
        .map_err(Error::target_db("saving the checkpoint"))?;
    Ok(())
}
