//! The streaming load: a PromptStudio mix of small transactions, driven by `pgbench` at a
//! target rate against the legacy database.
//!
//! The mix (one pgbench script per kind, weights in percent of transactions):
//!
//! | kind | weight | transaction | rows changed |
//! |---|---|---|---|
//! | execution | 60 | insert two `prompt_executions` of one template | 2 |
//! | template | 20 | update a template's metadata (`version`, `parameters`, `updated_at`; the TOASTed `content` is left alone) | 1 |
//! | flow | 10 | move a `flow_executions` row to another status | 1 |
//! | delete | 10 | delete a `prompt_executions` row (one of the seeded ids: 0 rows when already gone) | 0–1 |
//!
//! Ids are drawn uniformly from the seeded id ranges, read before the first run. The rows
//! changed are not estimated from the mix: the caller measures them (see
//! [`changes`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::pg::Pg;
use crate::pipeline::DB;

/// The tables the mix writes to (and whose counters [`changes`] sums).
pub const TABLES: [&str; 3] = ["prompt_executions", "prompt_templates", "flow_executions"];

const SCRIPTS: [(&str, u32, &str); 4] = [
    (
        "execution",
        60,
        r"\set tid random(:tmin, :tmax)
\set tokens random(50, 4000)
INSERT INTO prompt_executions (prompt_template_id, model, input_tokens, output_tokens, cost_usd, latency_ms, response)
VALUES (:tid, 'gpt-4o-mini', :tokens, :tokens / 3, :tokens * 0.0000015, random() * 2000, 'bench answer ' || :tokens),
       (:tid, 'claude-3-haiku', :tokens, :tokens / 2, :tokens * 0.0000025, random() * 2000, 'bench answer ' || :tokens);
",
    ),
    (
        "template",
        20,
        r"\set tid random(:tmin, :tmax)
UPDATE prompt_templates
   SET version = version + 1, parameters = jsonb_build_object('temperature', round(random()::numeric, 2)), updated_at = now()
 WHERE id = :tid;
",
    ),
    (
        "flow",
        10,
        r"\set fid random(:fmin, :fmax)
\set s random(0, 2)
UPDATE flow_executions
   SET status = (ARRAY['running', 'succeeded', 'failed']::execution_status[])[:s + 1],
       finished_at = CASE WHEN :s = 0 THEN NULL ELSE now() END
 WHERE id = :fid;
",
    ),
    (
        "delete",
        10,
        r"\set eid random(:emin, :emax)
DELETE FROM prompt_executions WHERE id = :eid;
",
    ),
];

/// The scripts on disk and the id ranges they draw from.
pub struct Mix {
    dir: PathBuf,
    defines: Vec<(&'static str, i64)>,
}

/// One pgbench run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Requested transactions per second (None: as fast as it goes).
    pub rate: Option<f64>,
    /// Transactions per second pgbench reports (without connection time).
    pub tps: f64,
    pub transactions: u64,
    pub elapsed: Duration,
}

impl Mix {
    /// Reads the seeded id ranges from the legacy database and writes the scripts into a
    /// fresh temp dir (removed on drop).
    pub async fn prepare(legacy: &Client) -> Mix {
        let mut defines = Vec::new();
        for (table, min, max) in [
            ("prompt_templates", "tmin", "tmax"),
            ("flow_executions", "fmin", "fmax"),
            ("prompt_executions", "emin", "emax"),
        ] {
            let row = legacy
                .query_one(
                    &format!("SELECT min(id)::bigint, max(id)::bigint FROM {table}"),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("id range of {table}: {e}"));
            let (lo, hi): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
            let (Some(lo), Some(hi)) = (lo, hi) else {
                panic!("{table} is empty: seed the legacy database first");
            };
            defines.push((min, lo));
            defines.push((max, hi));
        }
        let dir = std::env::temp_dir().join(format!(
            "rekey-bench-pgbench-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        for (name, _, text) in SCRIPTS {
            let path = dir.join(format!("{name}.sql"));
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        Mix { dir, defines }
    }

    /// The mix as `(kind, weight in percent)`.
    pub fn weights() -> Vec<(&'static str, u32)> {
        SCRIPTS.iter().map(|(n, w, _)| (*n, *w)).collect()
    }

    /// Runs pgbench against `legacy`'s PromptStudio database for `duration` at `rate`
    /// transactions per second (all clients together; None: unthrottled) with
    /// `clients` connections on `jobs` threads. Panics on any error: a failed
    /// transaction means the mix is wrong, not slow.
    pub async fn run(
        &self,
        legacy: &Pg,
        rate: Option<f64>,
        duration: Duration,
        (clients, jobs): (u32, u32),
    ) -> Run {
        let bindir = legacy.bindir();
        let port = legacy.port;
        let mut cmd = tokio::process::Command::new(bindir.join("pgbench"));
        cmd.args(["-n", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &port.to_string()])
            .args(["-c", &clients.to_string(), "-j", &jobs.to_string()])
            .args(["-T", &duration.as_secs().max(1).to_string()]);
        if let Some(r) = rate {
            cmd.args(["-R", &format!("{r:.0}")]);
        }
        for (name, value) in &self.defines {
            cmd.args(["-D", &format!("{name}={value}")]);
        }
        for (name, weight, _) in SCRIPTS {
            let script = self.dir.join(format!("{name}.sql"));
            cmd.arg("-f").arg(format!("{}@{weight}", script.display()));
        }
        cmd.arg(DB)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"] {
            cmd.env_remove(var);
        }
        let began = Instant::now();
        let out = cmd
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run pgbench from {}: {e}", bindir.display()));
        let elapsed = began.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            panic!("pgbench failed ({}):\n{stdout}\n{stderr}", out.status);
        }
        let find = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        if find("number of failed transactions:").is_some_and(|n| n > 0.0) {
            panic!("pgbench: some transactions failed:\n{stdout}\n{stderr}");
        }
        Run {
            rate,
            tps: find("tps =").unwrap_or_else(|| panic!("pgbench printed no tps:\n{stdout}")),
            transactions: find("number of transactions actually processed:").unwrap_or(0.0) as u64,
            elapsed,
        }
    }
}

impl Drop for Mix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Rows inserted, updated and deleted so far in the mix's tables, from the legacy
/// database's statistics. A backend reports its counts at least once a second and when
/// it exits: after pgbench exits, read until two reads 300 ms apart agree.
pub async fn changes(legacy: &Client) -> u64 {
    let read = || async {
        legacy
            .query_one(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
                   FROM pg_stat_user_tables
                  WHERE schemaname = 'public' AND relname::text = ANY($1::text[])",
                &[&TABLES.to_vec()],
            )
            .await
            .map(|r| r.get::<_, i64>(0) as u64)
            .unwrap_or_else(|e| panic!("reading pg_stat_user_tables: {e}"))
    };
    let mut last = read().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = read().await;
        if now == last {
            break;
        }
        last = now;
    }
    last
}
