//! A whole rekey deployment on throwaway servers: legacy and new PostgreSQL, a broker,
//! the PromptStudio schemas and config, and the reader and writer as processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::Client;

use crate::{free_port, wait_until, Broker, Pg, Service};

/// The database name on both clusters.
pub const DB: &str = "promptstudio";
/// The id secret the tests and the demo use.
pub const SECRET: &str = "rekey-test-secret-please-change-0001";

pub struct Pipeline {
    pub legacy: Pg,
    pub target: Pg,
    pub broker: Broker,
    pub config_path: PathBuf,
    pub reader: Option<Service>,
    pub writer: Option<Service>,
    pub reader_metrics: u16,
    pub writer_metrics: u16,
    /// Variables that replace [`Pipeline::env`]'s own (e.g. another URL).
    pub env_overrides: Vec<(&'static str, String)>,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The PromptStudio mapping config shipped in `deploy/`.
pub fn promptstudio_config() -> &'static str {
    include_str!("../../deploy/promptstudio/rekey.toml")
}

impl Pipeline {
    /// Servers up, schemas applied, nothing of rekey running yet.
    pub async fn new() -> Pipeline {
        Self::with_config(promptstudio_config()).await
    }

    pub async fn with_config(config: &str) -> Pipeline {
        let (legacy, target, broker) = tokio::join!(Pg::start(), Pg::start(), Broker::start());
        Self::assemble(legacy, target, broker, config).await
    }

    /// With servers the caller started (e.g. a broker that is not up yet).
    pub async fn assemble(legacy: Pg, target: Pg, broker: Broker, config: &str) -> Pipeline {
        legacy.create_database(DB).await;
        target.create_database(DB).await;
        legacy
            .connect(DB)
            .await
            .batch_execute(rekey_workload::LEGACY_SQL)
            .await
            .expect("legacy schema");
        target
            .connect(DB)
            .await
            .batch_execute(rekey_workload::TARGET_SQL)
            .await
            .expect("target schema");
        let dir = std::env::temp_dir().join(format!(
            "rekey-pipeline-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("rekey.toml");
        // Tests want a quick heartbeat so idle positions advance fast.
        let config = config.replace(
            "heartbeat_interval_secs = 10",
            "heartbeat_interval_secs = 1",
        );
        std::fs::write(&config_path, config).unwrap();
        Pipeline {
            legacy,
            target,
            broker,
            config_path,
            reader: None,
            writer: None,
            reader_metrics: free_port(),
            writer_metrics: free_port(),
            env_overrides: Vec::new(),
            _dir: tempdir::Dir(dir),
        }
    }

    /// The environment every rekey process gets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("REKEY_SOURCE_URL", self.legacy.service_url(DB)),
            ("REKEY_TARGET_URL", self.target.service_url(DB)),
            ("REKEY_KAFKA_BROKERS", self.broker.bootstrap()),
            ("REKEY_ID_SECRET", SECRET.to_string()),
            // REKEY_TEST_LOG sets the services' RUST_LOG (e.g. "debug,rdkafka=warn").
            (
                "RUST_LOG",
                std::env::var("REKEY_TEST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()),
            ),
        ];
        env.extend(self.broker.client_env());
        for &(name, ref value) in &self.env_overrides {
            env.retain(|(k, _)| *k != name);
            env.push((name, value.clone()));
        }
        env
    }

    /// Runs `binary` with `env` to its exit and returns (exit code, its one `error:`
    /// line); panics unless it exits within a minute with exactly one such line.
    pub async fn service_error(
        &self,
        binary: &str,
        env: Vec<(&'static str, String)>,
    ) -> (i32, String) {
        let mut service = Service::spawn(binary, &["--config", &self.config_arg()], &env);
        let status = service
            .wait_exit(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("{binary} exits on bad input"));
        let out = service.output();
        let prefix = format!("{binary}: error: ");
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 1, "exactly one error line, got:\n{out}");
        (status.code().unwrap_or(-1), lines[0].to_string())
    }

    /// Runs `rekeyctl verify` and asserts that it finds the two stores equal.
    pub async fn assert_verify_clean(&self) {
        let mut verify = Service::spawn(
            "rekeyctl",
            &["--config", &self.config_arg(), "verify"],
            &self.env(),
        );
        let status = verify
            .wait_exit(Duration::from_secs(120))
            .await
            .expect("verify exits");
        assert!(
            status.success(),
            "verify found differences or failed:\n{}",
            verify.output()
        );
    }

    pub fn config_arg(&self) -> String {
        self.config_path.display().to_string()
    }

    pub fn spawn(&self, bin: &str, metrics_port: u16) -> Service {
        let mut env = self.env();
        env.push(("REKEY_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")));
        Service::spawn(bin, &["--config", &self.config_arg()], &env)
    }

    pub fn start_reader(&mut self) {
        self.reader = Some(self.spawn("rekey-reader", self.reader_metrics));
    }

    pub fn start_writer(&mut self) {
        self.writer = Some(self.spawn("rekey-writer", self.writer_metrics));
    }

    /// Starts reader and writer and waits until the slot streams.
    pub async fn start(&mut self) {
        self.start_reader();
        self.start_writer();
        self.wait_streaming().await;
    }

    /// Waits until the reader holds the slot.
    pub async fn wait_streaming(&self) {
        let legacy = self.legacy.connect(DB).await;
        wait_until("the reader to stream the slot", Duration::from_secs(60), || {
            let legacy = &legacy;
            async move {
                legacy
                    .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'rekey_promptstudio' AND active", &[])
                    .await
                    .map(|r| r.is_some())
                    .unwrap_or(false)
            }
        })
        .await;
    }

    pub async fn legacy_client(&self) -> Client {
        self.legacy.connect(DB).await
    }

    pub async fn target_client(&self) -> Client {
        self.target.connect(DB).await
    }

    /// Waits until the target holds everything the legacy database committed so far:
    /// the writer's consistent position passes the legacy's current WAL position (the
    /// reader's heartbeats carry it past idle stretches).
    pub async fn wait_caught_up(&self, timeout: Duration) {
        let legacy = self.legacy_client().await;
        let target = self.target_client().await;
        let lsn: i64 = legacy
            .query_one(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        wait_until(
            "the target to catch up with the legacy database",
            timeout,
            || {
                let target = &target;
                async move {
                    match target
                        .query_opt("SELECT max(end_lsn) FROM rekey.checkpoint", &[])
                        .await
                    {
                        Ok(Some(row)) => row
                            .get::<_, Option<i64>>(0)
                            .is_some_and(|applied| applied >= lsn),
                        _ => false,
                    }
                }
            },
        )
        .await;
    }

    pub fn dir(&self) -> &Path {
        &self._dir.0
    }
}

impl Pipeline {
    /// The UUID rekey must give `key` in `entity` (the documented F, with the test secret).
    pub fn uuid(&self, entity: &str, key: impl ToString) -> String {
        rekey::rekey::Rekeyer::new(SECRET.as_bytes())
            .uuid(entity, &key.to_string())
            .to_string()
    }

    /// The config the services run with, parsed (with the test secret).
    pub fn config(&self) -> rekey::config::Config {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let mut c = rekey::config::Config::parse(&text).unwrap();
        c.rekey.secret = rekey::config::Secret::new(SECRET);
        c
    }

    /// Waits until caught up, then asserts the target equals the transformed legacy store.
    /// Waits until every configured table's backfill is recorded as done in the new
    /// store: before that, the stream can have caught up while chunks are still to come.
    pub async fn wait_backfilled(&self) {
        let target = self.target_client().await;
        let tables = self.config().tables.len();
        wait_until("every table backfilled", Duration::from_secs(180), || {
            let target = &target;
            async move {
                match target
                    .query_one(
                        "SELECT count(*) FILTER (WHERE done) FROM rekey.backfill",
                        &[],
                    )
                    .await
                {
                    Ok(row) => row.get::<_, i64>(0) as usize == tables,
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    pub async fn assert_converged(&self) {
        self.wait_caught_up(Duration::from_secs(90)).await;
        let (legacy, target) = (self.legacy_client().await, self.target_client().await);
        let diffs = crate::compare::compare(&legacy, &target, &self.config(), SECRET).await;
        crate::compare::assert_equal(&diffs);
    }

    /// One value of the target, as text (`None` for SQL NULL or no row).
    pub async fn target_value(&self, sql: &str) -> Option<String> {
        let t = self.target_client().await;
        t.query_opt(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .and_then(|r| r.get(0))
    }

    /// Runs SQL on the legacy database.
    pub async fn legacy_sql(&self, sql: &str) {
        self.legacy_client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The cutover state recorded in `rekey.status` (None before any).
    pub async fn cutover_state(&self) -> Option<String> {
        let t = self.target_client().await;
        t.query_opt("SELECT state FROM rekey.status", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0))
    }

    /// Sets `phase` at the top of the live config file, as a ConfigMap update would.
    pub fn set_phase(&self, phase: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with("phase =")).collect();
        std::fs::write(
            &self.config_path,
            format!("phase = \"{phase}\"\n{}\n", body.join("\n")),
        )
        .unwrap();
    }
}
