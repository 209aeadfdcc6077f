//! A throwaway PostgreSQL cluster per test: `initdb` into a temp dir, started on a free
//! loopback port with `pg_ctl`, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root: when the tests run as root (sessions, CI), `initdb`
//! and `pg_ctl` run as the `postgres` OS user through `runuser`, on directories it owns.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::wait::{file_tail, free_port, keep_test_dirs, unique_temp_dir};

/// The role rekey's services connect as to a [`PgOptions::tls`] cluster.
pub const TLS_ROLE: &str = "rekey_tls";

/// How to configure a cluster.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `wal_level`: "logical" (default), "replica" or "minimal".
    pub wal_level: &'static str,
    /// `shared_buffers`: "32MB" (default) keeps a test's dozen clusters small; the bench
    /// takes another size with `--shared-buffers`.
    pub shared_buffers: String,
    /// TLS only, for the role rekey's services connect as (see [`Pg::service_url`]): a
    /// certificate for `localhost` and `127.0.0.1` signed by a throwaway CA
    /// ([`Pg::ca_path`]); plain-text connections are refused but the harness's own (user
    /// `postgres`).
    pub tls: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_level: "logical",
            shared_buffers: "32MB".into(),
            tls: false,
        }
    }
}

/// A running PostgreSQL cluster on `127.0.0.1:port`, user `postgres`, trust auth.
pub struct Pg {
    pub port: u16,
    dir: PathBuf,
    bindir: PathBuf,
    running: AtomicBool,
    /// False until the first start succeeded: a failed start has already shown the log.
    started: bool,
    tls: bool,
}

impl Pg {
    /// `Pg::start_with(PgOptions::default())`: `wal_level = logical`.
    pub async fn start() -> Pg {
        Pg::start_with(PgOptions::default()).await
    }

    /// Creates a cluster with `initdb` and starts it; panics with the server log on failure.
    pub async fn start_with(opts: PgOptions) -> Pg {
        let began = Instant::now();
        let bindir = pg_bindir();
        let dir = unique_temp_dir("pg");
        prepare_dir_for_postgres(&dir);
        let mut pg = Pg {
            port: 0,
            dir,
            bindir,
            running: AtomicBool::new(false),
            started: false,
            tls: opts.tls,
        };

        let initdb = pg.bindir.join("initdb");
        let data = pg.data_dir();
        let out = run_async(pg.command(
            &initdb,
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale".as_ref(),
                "C".as_ref(),
            ],
        ))
        .await;
        if !out.status.success() {
            panic!(
                "initdb failed ({}) in {}:\n{}",
                out.status,
                pg.dir.display(),
                output_text(&out)
            );
        }

        let conf = format!(
            "\n# rekey test harness\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = {wal}\n\
             max_replication_slots = 16\n\
             max_wal_senders = 16\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             shared_buffers = {shared_buffers}\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%a@%d '\n",
            sock = pg.dir.display(),
            wal = opts.wal_level,
            shared_buffers = opts.shared_buffers,
        );
        pg.append_conf(&conf);
        if opts.tls {
            pg.set_up_tls().await;
        }

        // The port was free when picked; another process may take it before the server
        // binds. Pick another and retry when that happens.
        let mut last_failure = String::new();
        for _attempt in 0..5 {
            pg.port = free_port();
            pg.append_conf(&format!("port = {}\n", pg.port));
            let out = run_async(pg.pg_ctl(&["-w", "-t", "60", "start"])).await;
            if out.status.success() {
                pg.running.store(true, Ordering::SeqCst);
                pg.started = true;
                pg.spawn_watchdog();
                if pg.tls {
                    pg.connect("postgres")
                        .await
                        .batch_execute(&format!("CREATE ROLE {TLS_ROLE} SUPERUSER LOGIN"))
                        .await
                        .expect("create the TLS-only role");
                }
                if std::env::var_os("REKEY_HARNESS_VERBOSE").is_some() {
                    eprintln!(
                        "[harness] postgres on port {} in {:?} ({})",
                        pg.port,
                        began.elapsed(),
                        pg.dir.display()
                    );
                }
                return pg;
            }
            let log = file_tail(&pg.log_path(), 40);
            last_failure = format!(
                "pg_ctl start failed ({}):\n{}",
                out.status,
                output_text(&out)
            );
            if !log.contains("could not bind") && !log.contains("already in use") {
                break;
            }
        }
        panic!(
            "PostgreSQL did not start in {}: {last_failure}\n--- tail of {} ---\n{}",
            pg.dir.display(),
            pg.log_path().display(),
            file_tail(&pg.log_path(), 40)
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL rekey's services get: [`Pg::url`], or with [`PgOptions::tls`] the TLS-only
    /// role over `localhost`, `sslmode=verify-full` against [`Pg::ca_path`].
    pub fn service_url(&self, db: &str) -> String {
        if !self.tls {
            return self.url(db);
        }
        format!(
            "postgres://{TLS_ROLE}@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca_path().display()
        )
    }

    /// The CA that signed a TLS cluster's certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        crate::certs::Certs::in_dir(&self.dir).ca
    }

    /// Another CA, which signed nothing this cluster shows (PEM).
    pub fn other_ca_path(&self) -> PathBuf {
        crate::certs::Certs::in_dir(&self.dir).other_ca
    }

    /// Certificates made with `openssl` (as the server's user), `ssl = on`, and a
    /// `pg_hba.conf` that takes the TLS role only over TLS.
    async fn set_up_tls(&self) {
        let certs =
            crate::certs::make(&self.dir, |program, args| self.command(program, args)).await;
        self.append_conf(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            certs.cert.display(),
            certs.key.display()
        ));
        std::fs::write(
            self.data_dir().join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostssl replication all 127.0.0.1/32 trust\n\
                 host all postgres 127.0.0.1/32 trust\n\
                 host replication postgres 127.0.0.1/32 trust\n\
                 host all {TLS_ROLE} 127.0.0.1/32 reject\n\
                 host replication {TLS_ROLE} 127.0.0.1/32 reject\n"
            ),
        )
        .expect("write pg_hba.conf");
    }

    /// A client connected to `db`; its connection runs on a spawned task.
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let url = self.url(db);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        tokio::spawn(async move {
            // Ends with an error when the server stops; tests see that on the client.
            let _ = connection.await;
        });
        client
    }

    /// `CREATE DATABASE name`.
    pub async fn create_database(&self, name: &str) {
        let client = self.connect("postgres").await;
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} failed: {e}"));
    }

    /// Stops the server (`pg_ctl stop -m fast`), keeping its data and port.
    pub fn stop(&self) {
        let out = run_sync(self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"]));
        if !out.status.success() {
            panic!(
                "pg_ctl stop failed ({}):\n{}\n--- tail of {} ---\n{}",
                out.status,
                output_text(&out),
                self.log_path().display(),
                file_tail(&self.log_path(), 40)
            );
        }
        self.running.store(false, Ordering::SeqCst);
    }

    /// Starts the server again on the same port and data after [`Pg::stop`].
    pub fn start_again(&self) {
        let out = run_sync(self.pg_ctl(&["-w", "-t", "60", "start"]));
        if !out.status.success() {
            panic!(
                "pg_ctl start (again) failed ({}):\n{}\n--- tail of {} ---\n{}",
                out.status,
                output_text(&out),
                self.log_path().display(),
                file_tail(&self.log_path(), 40)
            );
        }
        self.running.store(true, Ordering::SeqCst);
    }

    /// The cluster's directory (data in `data/`, server log in `postgres.log`, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the PostgreSQL programs this cluster runs with (`pg_dump`,
    /// `psql`, `pgbench` are there too).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn append_conf(&self, text: &str) {
        let path = self.data_dir().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// PostgreSQL outlives a test process that is killed before its `Drop` runs (`pg_ctl`
    /// puts the server in its own session, out of reach of nextest's timeout kill). A
    /// detached shell waits for this process to end and then stops the server and removes
    /// the directory, unless `Drop` has already done so.
    fn spawn_watchdog(&self) {
        const SCRIPT: &str = r#"pid=$1; data=$2; dir=$3; keep=$4; shift 4
while kill -0 "$pid" 2>/dev/null && [ -d "$data" ]; do sleep 1; done
if [ -d "$data" ]; then "$@"; [ "$keep" = 1 ] || rm -rf "$dir"; fi"#;
        let stop = self.pg_ctl(&["-w", "-t", "30", "-m", "immediate", "stop"]);
        let keep = if keep_test_dirs() { "1" } else { "0" };
        let _ = Command::new("setsid")
            .args(["-f", "sh", "-c", SCRIPT, "rekey-pg-watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.data_dir())
            .arg(&self.dir)
            .arg(keep)
            .arg(stop.get_program())
            .args(stop.get_args())
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.data_dir();
        let log = self.log_path();
        let mut all: Vec<&std::ffi::OsStr> = vec![
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
        ];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.command(&pg_ctl, &all)
    }

    /// A command for a PostgreSQL program, run as `postgres` when we are root.
    pub(crate) fn command(&self, program: &Path, args: &[&std::ffi::OsStr]) -> Command {
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null());
        for var in [
            "PGDATA",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst) {
            let _ = run_sync(self.pg_ctl(&["-w", "-t", "30", "-m", "immediate", "stop"]));
        }
        if std::thread::panicking() && self.started {
            eprintln!(
                "--- tail of {} (port {}) ---\n{}",
                self.log_path().display(),
                self.port,
                file_tail(&self.log_path(), 30)
            );
        }
        if keep_test_dirs() {
            eprintln!("kept PostgreSQL test dir {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The directory with `initdb` and `pg_ctl`: `$PG_BINDIR`, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/*/bin`.
fn pg_bindir() -> PathBuf {
    let has_initdb = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_initdb(&dir) {
            return dir;
        }
        panic!("PG_BINDIR={} has no initdb/pg_ctl", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&dir) {
            return dir;
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: run `make tools` \
             or set PG_BINDIR"
        ),
    }
}

/// Whether this process runs as root (its `/proc/self` belongs to uid 0).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Makes `dir` usable by the `postgres` user: owned by it when we are root, and every
/// parent directory traversable.
fn prepare_dir_for_postgres(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    if !running_as_root() {
        return;
    }
    for parent in dir.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(parent) {
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(
                    parent,
                    std::fs::Permissions::from_mode((mode & 0o7777) | 0o001),
                );
            }
        }
    }
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
    if !out.status.success() {
        panic!(
            "chown postgres {} failed (is there a `postgres` OS user?): {}",
            dir.display(),
            output_text(&out)
        );
    }
}

pub(crate) async fn run_async(cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    tokio::process::Command::from(cmd)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"))
}

fn run_sync(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
