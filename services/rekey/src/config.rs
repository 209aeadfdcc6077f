//! Configuration: one TOML file (`--config PATH`) plus `REKEY_` environment overrides.
//!
//! Unknown fields are errors (`deny_unknown_fields`), defaults are named constants, and
//! [`Config::validate`] names the field and the rule it breaks. Secrets (the id secret,
//! passwords inside URLs) are never serialised, logged or exported as metrics.
//!
//! Environment overrides (each wins over the file):
//! `REKEY_SOURCE_URL`, `REKEY_TARGET_URL`, `REKEY_KAFKA_BROKERS`, `REKEY_KAFKA_TOPIC`,
//! `REKEY_KAFKA_GROUP_ID`, `REKEY_ID_SECRET`, `REKEY_SLOT`, `REKEY_PUBLICATION`,
//! `REKEY_METRICS_ADDR`; and `REKEY_KAFKA_OPTION_<NAME>` for any librdkafka setting
//! of `[kafka.options]` (`REKEY_KAFKA_OPTION_SASL_PASSWORD` sets `sasl.password`: the
//! name lower-cased, `_` read as `.`), so that Kafka credentials can come from a
//! Kubernetes Secret rather than the ConfigMap that holds the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::error::Error;

pub const DEFAULT_SLOT: &str = "rekey";
pub const DEFAULT_PUBLICATION: &str = "rekey";
pub const DEFAULT_TOPIC: &str = "rekey.changes";
pub const DEFAULT_GROUP_ID: &str = "rekey-writer";
pub const DEFAULT_HEARTBEAT_SECS: u64 = 10;
/// A chunk of a large transaction is cut at this many changes…
pub const DEFAULT_CHUNK_MAX_CHANGES: usize = 2_000;
/// …or at this many bytes of row images, whichever comes first (below Kafka's 1 MB default).
pub const DEFAULT_CHUNK_MAX_BYTES: usize = 512 * 1024;
/// Messages published but not yet acknowledged before the reader stops reading.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// …or bytes of them: what the idempotent producer's 5 in-flight produce requests carry
/// when every message is a full chunk. More than that waits in librdkafka's queue, where
/// its broker thread polls it in a busy loop until a request slot frees (measured: 40%
/// of a core during backfill, for no more throughput).
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 5 * DEFAULT_CHUNK_MAX_BYTES;
/// How long the reader holds small transactions to publish them together in one message
/// (whole transactions; a message also closes at `chunk_max_changes`/`chunk_max_bytes`).
/// Every message costs a produce request and the writer's handling of it: measured
/// with `rekey-bench --only streaming` at 4000–6000 tx/s, see the README.
pub const DEFAULT_PUBLISH_LINGER_MS: u64 = 20;
const MAX_PUBLISH_LINGER_MS: u64 = 10_000;
/// The writer commits a target transaction after this many changes (whole source
/// transactions only).
pub const DEFAULT_BATCH_MAX_CHANGES: usize = 5_000;
/// How long the writer waits for more messages before committing what it has.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 20;

/// Rows per backfill chunk.
pub const DEFAULT_BACKFILL_CHUNK_ROWS: usize = 5_000;
/// Backfill chunks read ahead of the stream and applied at once. Measured at scale 1 on
/// 2 vCPUs (rows/s): 2 → 28.8k–35.1k (5 runs), 4 → 29.0k–39.0k (3), 6 → 32.1k–43.4k (3):
/// chunks in flight hide the pipeline's latency; 4 costs 4 extra target connections.
pub const DEFAULT_BACKFILL_PARALLELISM: usize = 4;

/// An environment override: variable name and the field it sets, for the docs and errors.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("REKEY_SOURCE_URL", "source.url"),
    ("REKEY_TARGET_URL", "target.url"),
    ("REKEY_KAFKA_BROKERS", "kafka.brokers"),
    ("REKEY_KAFKA_TOPIC", "kafka.topic"),
    ("REKEY_KAFKA_GROUP_ID", "kafka.group_id"),
    ("REKEY_ID_SECRET", "rekey.secret"),
    ("REKEY_SLOT", "source.slot"),
    ("REKEY_PUBLICATION", "source.publication"),
    ("REKEY_METRICS_ADDR", "telemetry.metrics_addr"),
];

/// Environment variables that set one of `[kafka.options]`: the rest of the name is the
/// librdkafka setting, upper-cased, `.` written as `_`.
pub const ENV_KAFKA_OPTION_PREFIX: &str = "REKEY_KAFKA_OPTION_";

/// A value that must never be printed.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The migration phase: `replicate` (default) or `cutover`; re-read live by the
    /// reader (see [`crate::cutover`]).
    #[serde(default)]
    pub phase: crate::cutover::Phase,
    /// Where the config was loaded from (not part of the file).
    #[serde(skip)]
    pub path: Option<std::path::PathBuf>,
    /// A hash of the text loaded: the live reload compares the file with what this
    /// process runs, so a change made while it was starting is not missed.
    #[serde(skip)]
    pub loaded: Option<u64>,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub rekey: RekeyConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub backfill: BackfillConfig,
    /// The migrated tables, parents before children.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq-style URL of the legacy database (a password inside is a secret).
    #[serde(default)]
    pub url: Secret,
    #[serde(default = "default_slot")]
    pub slot: String,
    #[serde(default = "default_publication")]
    pub publication: String,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_secs: u64,
    #[serde(default = "default_chunk_changes")]
    pub chunk_max_changes: usize,
    #[serde(default = "default_chunk_bytes")]
    pub chunk_max_bytes: usize,
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    #[serde(default = "default_publish_linger")]
    pub publish_linger_ms: u64,
    /// Which of the batches it publishes the reader compresses (see `Batch.lz4` in the
    /// event schema): `lz4-backfill` (those carrying backfill rows), `lz4` (all) or
    /// `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
}

impl SourceConfig {
    /// Whether a batch is compressed; `backfill`: it carries backfill rows.
    pub fn compresses(&self, backfill: bool) -> bool {
        match self.compression.as_str() {
            "lz4" => true,
            "lz4-backfill" => backfill,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    #[serde(default)]
    pub url: Secret,
    #[serde(default = "default_batch_changes")]
    pub batch_max_changes: usize,
    #[serde(default = "default_linger")]
    pub batch_linger_ms: u64,
    /// How the writer compresses large values (TOAST) in the new store: `lz4`, `pglz`
    /// or `server` (the server's `default_toast_compression`). Unset: `lz4` where the
    /// server supports it — about 3x cheaper to write than PostgreSQL's default `pglz`
    /// (measured on the PromptStudio templates), the values read back the same.
    #[serde(default)]
    pub toast_compression: Option<String>,
    /// What the writer's rows are held to once backfill is done (during backfill the
    /// writer applies in `session_replication_role = replica`). `origin`: foreign keys
    /// are checked at each commit (by the writer, a batch at a time, where it can: see
    /// [`crate::fk_check`]) and the new store's ordinary triggers fire on the rows the
    /// writer applies. `replica`:
    /// as PostgreSQL's own logical replication apply, neither (only `ENABLE REPLICA` and
    /// `ENABLE ALWAYS` triggers fire); the cutover's validating step and `rekeyctl
    /// verify` still check every foreign key.
    #[serde(default = "default_replication_role")]
    pub replication_role: String,
}

/// The options' values can be credentials (`sasl.password`, `ssl.key.pem`): their
/// names only.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TargetConfig {
    /// Whether the writer applies with `session_replication_role = replica` after backfill.
    pub fn applies_as_replica(&self) -> bool {
        self.replication_role == "replica"
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    #[serde(default)]
    pub brokers: String,
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Raw librdkafka settings passed through to producer and consumer (SASL, TLS,
    /// compression, …). The settings rekey's guarantees rest on cannot be overridden.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The replication factor of the topic when rekey creates it; -1 (the default): the
    /// broker's `default.replication.factor` (see [`crate::topic`]).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Topic settings when rekey creates it, e.g. `min.insync.replicas`; not the
    /// retention or cleanup policy, which rekey owns.
    #[serde(default)]
    pub topic_options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyConfig {
    /// The id secret; set it through `REKEY_ID_SECRET`, not in the file.
    #[serde(default)]
    pub secret: Secret,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where `/metrics` is served, e.g. `0.0.0.0:9187`; off when empty.
    #[serde(default)]
    pub metrics_addr: String,
}

/// Copying the rows that existed before streaming began (see [`crate::backfill`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// Copy pre-existing rows (needs `target.url` in the reader to resume).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Rows per chunk: one short SELECT each on the legacy database.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Chunks in flight: read ahead of the replication stream by the reader (memory:
    /// about this many chunks), applied at once by the writer on as many extra target
    /// connections (see `chunk_apply`).
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Pause between chunks, to spare a busy legacy database.
    #[serde(default)]
    pub pause_ms: u64,
    /// Drop a table's non-unique secondary indexes while its backfill runs and build
    /// them once it is in (see `deferred_index`).
    #[serde(default = "default_true")]
    pub defer_indexes: bool,
    /// Testing aid: hold each chunk's watermark window open this long after its SELECT.
    #[serde(default)]
    pub window_delay_ms: u64,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// How one legacy table maps to the new schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Legacy table, `name` or `schema.name` (default schema `public`).
    pub name: String,
    /// Target table (default: the legacy table name, schema `public`).
    #[serde(default)]
    pub target: Option<String>,
    /// UUID namespace (default: the target table name).
    #[serde(default)]
    pub entity: Option<String>,
    /// The legacy integer primary-key column that becomes `id uuid` + `legacy_id`.
    /// Leave out for tables whose key is composite: their key columns are carried over,
    /// rekeyed where they are references.
    #[serde(default)]
    pub id: Option<String>,
    /// Foreign-key columns and the entity they point at: the value becomes that
    /// entity's UUID (the column keeps its name).
    #[serde(default)]
    pub references: BTreeMap<String, String>,
    /// Extra target columns computed by rekeying a legacy column into a namespace.
    #[serde(default)]
    pub derive: Vec<DeriveConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveConfig {
    pub column: String,
    pub from: String,
    pub entity: String,
}

fn default_true() -> bool {
    true
}
fn default_chunk_rows() -> usize {
    DEFAULT_BACKFILL_CHUNK_ROWS
}
fn default_parallelism() -> usize {
    DEFAULT_BACKFILL_PARALLELISM
}
fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_SECS
}
fn default_chunk_changes() -> usize {
    DEFAULT_CHUNK_MAX_CHANGES
}
fn default_chunk_bytes() -> usize {
    DEFAULT_CHUNK_MAX_BYTES
}
fn default_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_publish_linger() -> u64 {
    DEFAULT_PUBLISH_LINGER_MS
}
fn default_compression() -> String {
    "lz4-backfill".into()
}
fn default_in_flight_bytes() -> usize {
    DEFAULT_MAX_IN_FLIGHT_BYTES
}
fn default_batch_changes() -> usize {
    DEFAULT_BATCH_MAX_CHANGES
}
fn default_replication_role() -> String {
    "origin".into()
}
fn default_linger() -> u64 {
    DEFAULT_BATCH_LINGER_MS
}
fn default_topic() -> String {
    DEFAULT_TOPIC.into()
}
fn default_replication_factor() -> i32 {
    -1
}
fn default_group() -> String {
    DEFAULT_GROUP_ID.into()
}

impl Default for SourceConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}
impl Default for TargetConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}
impl Default for KafkaConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// Which service is asking: each needs a different subset of the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    Writer,
    Control,
}

impl Config {
    /// Reads the file, applies the environment, validates for `role`.
    pub fn load(path: &Path, role: Role) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut config =
            Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.apply_env(|k| std::env::var(k).ok());
        config.apply_kafka_option_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )?;
        config.validate(role)?;
        config.path = Some(path.to_path_buf());
        config.loaded = Some(text_hash(&text));
        Ok(config)
    }

    /// Parses TOML; the message names the offending field and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            // toml's message is multi-line with a source excerpt; keep one line.
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        for (var, _) in ENV_OVERRIDES {
            let Some(v) = get(var) else { continue };
            match *var {
                "REKEY_SOURCE_URL" => self.source.url = Secret(v),
                "REKEY_TARGET_URL" => self.target.url = Secret(v),
                "REKEY_KAFKA_BROKERS" => self.kafka.brokers = v,
                "REKEY_KAFKA_TOPIC" => self.kafka.topic = v,
                "REKEY_KAFKA_GROUP_ID" => self.kafka.group_id = v,
                "REKEY_ID_SECRET" => self.rekey.secret = Secret(v),
                "REKEY_SLOT" => self.source.slot = v,
                "REKEY_PUBLICATION" => self.source.publication = v,
                "REKEY_METRICS_ADDR" => self.telemetry.metrics_addr = v,
                _ => unreachable!("every ENV_OVERRIDES entry is handled"),
            }
        }
    }

    /// Applies the `REKEY_KAFKA_OPTION_<NAME>` variables among `vars` to
    /// `[kafka.options]`, each winning over the file; an empty one is ignored.
    pub fn apply_kafka_option_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), Error> {
        for (var, value) in vars {
            let Some(name) = var.strip_prefix(ENV_KAFKA_OPTION_PREFIX) else {
                continue;
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(Error::Config(format!(
                    "{var}: not a librdkafka setting: write it as {ENV_KAFKA_OPTION_PREFIX} and the setting's name upper-cased with `_` for `.`, e.g. {ENV_KAFKA_OPTION_PREFIX}SASL_PASSWORD"
                )));
            }
            // Empty is unset: an optional Secret key may be present but blank.
            if value.is_empty() {
                continue;
            }
            let key = name.to_ascii_lowercase().replace('_', ".");
            self.kafka.options.insert(key, value);
        }
        Ok(())
    }

    pub fn validate(&self, role: Role) -> Result<(), Error> {
        let bad = |field: &str, rule: &str| Err(Error::Config(format!("{field}: {rule}")));
        let needs_source = matches!(role, Role::Reader);
        let needs_target = matches!(role, Role::Writer);
        if needs_source && self.source.url.0.is_empty() {
            return bad(
                "source.url",
                "missing: set it in the file or REKEY_SOURCE_URL",
            );
        }
        if needs_target && self.target.url.0.is_empty() {
            return bad(
                "target.url",
                "missing: set it in the file or REKEY_TARGET_URL",
            );
        }
        for (field, url) in [
            ("source.url", &self.source.url),
            ("target.url", &self.target.url),
        ] {
            if url.0.is_empty() {
                continue;
            }
            if let Err(e) = crate::pg_connect::PgUrl::parse(&url.0) {
                return bad(field, &e);
            }
        }
        if role != Role::Control && self.kafka.brokers.trim().is_empty() {
            return bad(
                "kafka.brokers",
                "missing: set it in the file or REKEY_KAFKA_BROKERS",
            );
        }
        if needs_source {
            if self.rekey.secret.0.is_empty() {
                return bad("rekey.secret", "missing: set REKEY_ID_SECRET (at least 16 bytes, keep it forever: it defines every UUID)");
            }
            if self.rekey.secret.0.len() < crate::rekey::MIN_SECRET_BYTES {
                return bad(
                    "rekey.secret",
                    "too short: REKEY_ID_SECRET must be at least 16 bytes",
                );
            }
        }
        if !is_identifier(&self.source.slot) {
            return bad(
                "source.slot",
                "must be lower-case letters, digits and underscores",
            );
        }
        if !is_identifier(&self.source.publication) {
            return bad(
                "source.publication",
                "must be lower-case letters, digits and underscores",
            );
        }
        if self.kafka.topic.is_empty() {
            return bad("kafka.topic", "must not be empty");
        }
        if !(self.kafka.replication_factor == -1
            || (1..=i32::from(i16::MAX)).contains(&self.kafka.replication_factor))
        {
            return bad(
                "kafka.replication_factor",
                "must be -1 (the broker's default.replication.factor) or from 1 to the number of brokers",
            );
        }
        if let Some(owned) = crate::topic::OWNED_SETTINGS
            .iter()
            .find(|s| self.kafka.topic_options.contains_key(**s))
        {
            return bad(
                &format!("kafka.topic_options.{owned}"),
                "rekey sets it: the topic keeps every change until the writer has applied it (create the topic yourself to choose otherwise)",
            );
        }
        if self.source.chunk_max_changes == 0 || self.source.chunk_max_bytes < 1024 {
            return bad(
                "source.chunk_max_changes/chunk_max_bytes",
                "must be at least 1 change / 1024 bytes",
            );
        }
        if self.source.max_in_flight == 0
            || self.source.max_in_flight_bytes < self.source.chunk_max_bytes
        {
            return bad(
                "source.max_in_flight/max_in_flight_bytes",
                "must be at least 1 message / source.chunk_max_bytes",
            );
        }
        if self.source.publish_linger_ms > MAX_PUBLISH_LINGER_MS {
            return bad(
                "source.publish_linger_ms",
                &format!("must be at most {MAX_PUBLISH_LINGER_MS} (a message waiting longer delays every change in it)"),
            );
        }
        if !matches!(
            self.source.compression.as_str(),
            "lz4-backfill" | "lz4" | "none"
        ) {
            return bad("source.compression", "must be lz4-backfill, lz4 or none");
        }
        if needs_source && self.target.url.0.is_empty() {
            return bad(
                "target.url",
                "missing: the reader resumes backfill and records the cutover state in the target; set REKEY_TARGET_URL",
            );
        }
        if self.backfill.chunk_rows == 0 || self.backfill.parallelism == 0 {
            return bad("backfill.chunk_rows/parallelism", "must be at least 1");
        }
        if self.target.batch_max_changes == 0 {
            return bad("target.batch_max_changes", "must be at least 1");
        }
        if let Some(c) = &self.target.toast_compression {
            if !matches!(c.as_str(), "lz4" | "pglz" | "server") {
                return bad("target.toast_compression", "must be lz4, pglz or server");
            }
        }
        if !matches!(self.target.replication_role.as_str(), "origin" | "replica") {
            return bad("target.replication_role", "must be origin or replica");
        }
        if self.tables.is_empty() {
            return bad(
                "tables",
                "no [[tables]] configured: list the legacy tables to migrate",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let field = format!("tables[{i}] ({})", t.name);
            if !seen.insert(t.source_name()) {
                return bad(&field, "listed twice");
            }
            if t.name.is_empty() {
                return bad(&field, "name must not be empty");
            }
            for d in &t.derive {
                if t.references.contains_key(&d.column) || Some(&d.column) == t.id.as_ref() {
                    return bad(
                        &field,
                        &format!("derived column {} clashes with a key column", d.column),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn rekeyer(&self) -> crate::rekey::Rekeyer {
        crate::rekey::Rekeyer::new(self.rekey.secret.0.as_bytes())
    }

    /// The foreign keys of `child`: each reference column with the parent table it
    /// points at (references to namespaces without a table, e.g. organizations, are left
    /// out).
    pub fn references<'a>(
        &'a self,
        child: &'a TableConfig,
    ) -> impl Iterator<Item = (&'a String, &'a TableConfig)> + 'a {
        child.references.iter().filter_map(move |(column, entity)| {
            self.tables
                .iter()
                .find(|p| p.entity() == entity && p.id.is_some())
                .map(|p| (column, p))
        })
    }

    /// The configured table for a legacy `schema.name`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableConfig> {
        self.tables
            .iter()
            .find(|t| t.source_parts() == (schema, name))
    }
}

impl TableConfig {
    /// `(schema, name)` of the legacy table.
    pub fn source_parts(&self) -> (&str, &str) {
        split_qualified(&self.name)
    }
    pub fn source_name(&self) -> String {
        let (s, n) = self.source_parts();
        format!("{s}.{n}")
    }
    /// `(schema, name)` of the target table.
    pub fn target_parts(&self) -> (&str, &str) {
        match &self.target {
            Some(t) => split_qualified(t),
            None => ("public", self.source_parts().1),
        }
    }
    pub fn target_name(&self) -> String {
        let (s, n) = self.target_parts();
        format!("{s}.{n}")
    }
    pub fn entity(&self) -> &str {
        self.entity.as_deref().unwrap_or(self.target_parts().1)
    }
}

fn split_qualified(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("public", name))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// How often the config file is checked for a new `phase`.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-reads the config file when it changes (checked every [`RELOAD_INTERVAL`]; a
/// Kubernetes ConfigMap update swaps the file's symlink, so its content is compared, not
/// its inode) or on SIGHUP, and publishes a changed `phase`. A file that no longer parses
/// is reported and ignored: the running phase stays.
pub async fn watch_phase(
    path: std::path::PathBuf,
    role: Role,
    loaded: Option<u64>,
    tx: tokio::sync::watch::Sender<crate::cutover::Phase>,
    cancel: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut last = loaded;
    loop {
        let forced = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = async { match &mut hup { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(RELOAD_INTERVAL) => false,
        };
        let text = std::fs::read_to_string(&path).ok().map(|t| text_hash(&t));
        if text == last && !forced {
            continue;
        }
        last = text;
        match Config::load(&path, role) {
            Ok(c) => {
                let old = *tx.borrow();
                if c.phase != old {
                    tracing::info!(from = old.label(), to = c.phase.label(), "phase changed");
                    tx.send_replace(c.phase);
                }
            }
            Err(e) => {
                tracing::error!(error = %e.one_line(), phase = tx.borrow().label(), "config reload failed; keeping the running phase")
            }
        }
    }
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a possibly schema-qualified name (`schema.table`).
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        [[tables]]
        name = "prompt_labs"
        id = "id"
    "#;

    #[test]
    fn a_database_url_with_bad_tls_settings_is_named_without_its_password() {
        let mut c = Config::parse(MINIMAL).unwrap();
        c.apply_env(|k| match k {
            "REKEY_SOURCE_URL" => Some("postgres://app:hunter2@db/legacy".to_string()),
            "REKEY_TARGET_URL" => {
                Some("postgres://app:hunter2@db/new?sslmode=verify-full".to_string())
            }
            "REKEY_ID_SECRET" => Some("0123456789abcdef0123".to_string()),
            _ => None,
        });
        let err = c.validate(Role::Writer).unwrap_err().to_string();
        assert!(
            err.contains("target.url") && err.contains("needs sslrootcert"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn batches_are_compressed_only_when_asked_and_an_unknown_codec_is_named() {
        let compresses = |setting: &str| {
            let c = Config::parse(&format!("{MINIMAL}\n[source]\n{setting}\n")).unwrap();
            (c.source.compresses(true), c.source.compresses(false))
        };
        assert_eq!(compresses(""), (true, false), "default: backfill batches");
        assert_eq!(compresses("compression = \"lz4-backfill\""), (true, false));
        assert_eq!(compresses("compression = \"lz4\""), (true, true));
        assert_eq!(compresses("compression = \"none\""), (false, false));
        let mut c =
            Config::parse(&format!("{MINIMAL}\n[source]\ncompression = \"zstd\"\n")).unwrap();
        c.apply_env(|k| match k {
            "REKEY_SOURCE_URL" | "REKEY_TARGET_URL" => Some("postgres://x/y".to_string()),
            "REKEY_ID_SECRET" => Some("0123456789abcdef0123".to_string()),
            _ => None,
        });
        let err = c.validate(Role::Reader).unwrap_err().to_string();
        assert!(
            err.contains("source.compression") && err.contains("lz4-backfill, lz4 or none"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_toast_compression_is_named() {
        let mut c = Config::parse(&format!(
            "{MINIMAL}\n[target]\ntoast_compression = \"zstd\"\n"
        ))
        .unwrap();
        c.apply_env(|k| match k {
            "REKEY_TARGET_URL" => Some("postgres://x/y".to_string()),
            "REKEY_ID_SECRET" => Some("0123456789abcdef0123".to_string()),
            _ => None,
        });
        let err = c.validate(Role::Writer).unwrap_err().to_string();
        assert!(
            err.contains("target.toast_compression") && err.contains("lz4, pglz or server"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_replication_role_is_named() {
        let writer = |extra: &str| {
            let mut c = Config::parse(&format!("{MINIMAL}\n[target]\n{extra}\n")).unwrap();
            c.apply_env(|k| match k {
                "REKEY_TARGET_URL" => Some("postgres://x/y".to_string()),
                "REKEY_ID_SECRET" => Some("0123456789abcdef0123".to_string()),
                _ => None,
            });
            c.validate(Role::Writer).map(|()| c)
        };
        assert!(!writer("").unwrap().target.applies_as_replica());
        assert!(writer("replication_role = \"replica\"")
            .unwrap()
            .target
            .applies_as_replica());
        let err = writer("replication_role = \"local\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("target.replication_role") && err.contains("origin or replica"),
            "{err}"
        );
    }

    #[test]
    fn an_in_flight_window_smaller_than_a_chunk_is_named() {
        let mut c = Config::parse(&format!(
            "{MINIMAL}\n[source]\nchunk_max_bytes = 65536\nmax_in_flight_bytes = 4096\n"
        ))
        .unwrap();
        c.apply_env(|k| match k {
            "REKEY_SOURCE_URL" => Some("postgres://x/y".to_string()),
            "REKEY_TARGET_URL" => Some("postgres://x/z".to_string()),
            "REKEY_ID_SECRET" => Some("0123456789abcdef0123".to_string()),
            _ => None,
        });
        let err = c.validate(Role::Reader).unwrap_err().to_string();
        assert!(
            err.contains("source.max_in_flight/max_in_flight_bytes")
                && err.contains("source.chunk_max_bytes"),
            "{err}"
        );
        c.source.max_in_flight_bytes = 65536;
        c.validate(Role::Reader).unwrap();
    }

    #[test]
    fn a_publish_linger_beyond_ten_seconds_is_named() {
        let mut c =
            Config::parse(&format!("{MINIMAL}\n[source]\npublish_linger_ms = 60000\n")).unwrap();
        c.apply_env(|k| match k {
            "REKEY_SOURCE_URL" => Some("postgres://x/y".to_string()),
            "REKEY_TARGET_URL" => Some("postgres://x/z".to_string()),
            "REKEY_ID_SECRET" => Some("0123456789abcdef0123".to_string()),
            _ => None,
        });
        let err = c.validate(Role::Reader).unwrap_err().to_string();
        assert!(err.contains("source.publish_linger_ms"), "{err}");
        c.source.publish_linger_ms = 0;
        c.validate(Role::Reader).unwrap();
    }

    #[test]
    fn the_topics_replication_and_settings_are_checked_and_named() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.kafka.replication_factor, -1, "default: the broker's");
        let c = Config::parse(&MINIMAL.replace(
            "[kafka]",
            "[kafka]\nreplication_factor = 3\ntopic_options = { \"min.insync.replicas\" = \"2\" }",
        ))
        .unwrap();
        assert_eq!(c.kafka.replication_factor, 3);
        assert_eq!(c.kafka.topic_options["min.insync.replicas"], "2");
        c.validate(Role::Control).unwrap();
        for rf in [0, -2, 40_000] {
            let mut c = c.clone();
            c.kafka.replication_factor = rf;
            let err = c.validate(Role::Control).unwrap_err().to_string();
            assert!(err.contains("kafka.replication_factor"), "{rf}: {err}");
        }
        for owned in ["retention.ms", "cleanup.policy", "retention.bytes"] {
            let mut c = c.clone();
            c.kafka.topic_options.insert(owned.into(), "1000".into());
            let err = c.validate(Role::Control).unwrap_err().to_string();
            assert!(
                err.contains(&format!("kafka.topic_options.{owned}")),
                "{owned}: {err}"
            );
        }
    }

    #[test]
    fn kafka_options_from_the_environment_win_over_the_file_and_are_not_printed() {
        let mut c = Config::parse(&format!(
            "{MINIMAL}\n[kafka.options]\n\"sasl.mechanism\" = \"PLAIN\"\n\"sasl.password\" = \"from-file\"\n"
        ))
        .unwrap();
        let vars = [
            ("REKEY_KAFKA_OPTION_SASL_PASSWORD", "s3cret-from-env"),
            ("REKEY_KAFKA_OPTION_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("REKEY_SOURCE_URL", "not a kafka option"),
            ("REKEY_KAFKA_OPTION_CLIENT_ID", ""),
        ];
        c.apply_kafka_option_env(vars.map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap();
        assert_eq!(c.kafka.options["sasl.password"], "s3cret-from-env");
        assert_eq!(c.kafka.options["security.protocol"], "SASL_PLAINTEXT");
        assert_eq!(c.kafka.options["sasl.mechanism"], "PLAIN");
        assert_eq!(c.kafka.options.len(), 3);
        let shown = format!("{c:?}");
        assert!(
            shown.contains("sasl.password") && !shown.contains("s3cret-from-env"),
            "{shown}"
        );

        for bad in ["REKEY_KAFKA_OPTION_", "REKEY_KAFKA_OPTION_SASL-PASSWORD"] {
            let err = c
                .apply_kafka_option_env([(bad.to_string(), "x".to_string())])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(bad) && err.contains("REKEY_KAFKA_OPTION_SASL_PASSWORD"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn a_phase_change_written_while_the_service_starts_is_not_missed() {
        let dir = std::env::temp_dir().join(format!("rekey-config-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rekey.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = Config::load(&path, Role::Control).unwrap();
        // The file changes after the service loaded it, before its watcher first looks.
        std::fs::write(&path, format!("phase = \"cutover\"\n{MINIMAL}")).unwrap();
        let (tx, mut rx) = tokio::sync::watch::channel(config.phase);
        let cancel = tokio_util::sync::CancellationToken::new();
        let watcher = tokio::spawn(watch_phase(
            path,
            Role::Control,
            config.loaded,
            tx,
            cancel.clone(),
        ));
        tokio::time::timeout(RELOAD_INTERVAL * 3, rx.changed())
            .await
            .expect("the watcher sees the change made before it started")
            .unwrap();
        assert_eq!(*rx.borrow(), crate::cutover::Phase::Cutover);
        cancel.cancel();
        watcher.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse("[kafka]\nbrokers = \"x\"\nbrokr = \"y\"\n").unwrap_err();
        assert!(err.contains("unknown field `brokr`"), "{err}");
        assert!(err.starts_with("line 3"), "{err}");
    }

    #[test]
    fn env_overrides_win_and_missing_secret_is_named() {
        let mut c = Config::parse(MINIMAL).unwrap();
        c.apply_env(|k| (k == "REKEY_SOURCE_URL").then(|| "postgres://x/y".to_string()));
        let err = c.validate(Role::Reader).unwrap_err().to_string();
        assert!(
            err.contains("rekey.secret") && err.contains("REKEY_ID_SECRET"),
            "{err}"
        );
        c.apply_env(|k| (k == "REKEY_ID_SECRET").then(|| "0123456789abcdef0123".to_string()));
        let err = c.validate(Role::Reader).unwrap_err().to_string();
        assert!(
            err.contains("REKEY_TARGET_URL"),
            "backfill resumes from the target: {err}"
        );
        c.apply_env(|k| (k == "REKEY_TARGET_URL").then(|| "postgres://x/z".to_string()));
        c.validate(Role::Reader).unwrap();
        assert_eq!(c.source.url.expose(), "postgres://x/y");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let mut c = Config::parse(MINIMAL).unwrap();
        c.rekey.secret = Secret::new("very-secret-value-123");
        assert!(!format!("{c:?}").contains("very-secret-value-123"));
    }

    #[test]
    fn defaults_are_the_named_constants() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.source.slot, DEFAULT_SLOT);
        assert_eq!(c.target.batch_max_changes, DEFAULT_BATCH_MAX_CHANGES);
        assert_eq!(c.source.max_in_flight_bytes, DEFAULT_MAX_IN_FLIGHT_BYTES);
        assert_eq!(c.source.publish_linger_ms, DEFAULT_PUBLISH_LINGER_MS);
        assert_eq!(c.tables[0].entity(), "prompt_labs");
        assert_eq!(c.tables[0].target_name(), "public.prompt_labs");
    }

    #[test]
    fn the_promptstudio_config_is_valid() {
        let text = include_str!("../../../deploy/promptstudio/rekey.toml");
        let mut c = Config::parse(text).unwrap();
        c.apply_env(|k| match k {
            "REKEY_SOURCE_URL" => Some("postgres://a/b".into()),
            "REKEY_TARGET_URL" => Some("postgres://a/c".into()),
            "REKEY_ID_SECRET" => Some("0123456789abcdef0123".into()),
            "REKEY_KAFKA_BROKERS" => Some("127.0.0.1:9092".into()),
            _ => None,
        });
        c.validate(Role::Reader).unwrap();
        c.validate(Role::Writer).unwrap();
        assert_eq!(c.tables.len(), 9);
    }
}
