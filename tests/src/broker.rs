//! A real Kafka-protocol broker per test: `tansu` on a loopback port, with durable
//! sqlite storage in its own temp dir (survives `kill -9` and a restart), or in memory
//! (the bench, see [`Storage`]).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::Certs;
use crate::tls_proxy::TlsProxy;
use crate::wait::{file_tail, fmt_secs, free_port, keep_test_dirs, unique_temp_dir};

/// How long a (re)start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `tansu` broker on `127.0.0.1:port`.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    tansu: PathBuf,
    storage: Storage,
    child: Option<Child>,
    /// False until the first start succeeded: a failed start has already shown the log.
    started: bool,
    /// [`Broker::start_tls`]: the TLS front clients connect to, and its certificates.
    tls: Option<(TlsProxy, Certs)>,
    /// [`Broker::start_scram`]: the user and password clients must authenticate with.
    scram: Option<(String, String)>,
}

/// Where tansu keeps the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// sqlite in the broker's directory: survives `kill -9` and a restart (the tests).
    Sqlite,
    /// In memory: gone with the process. Closest to what Kafka costs (an append to the
    /// page cache); tansu's sqlite engine spends CPU per message that Kafka does not.
    Memory,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::Sqlite => "sqlite",
            Storage::Memory => "memory",
        }
    }

    fn engine(self) -> &'static str {
        match self {
            // Relative: tansu 0.6.0 resolves an absolute sqlite path wrongly.
            Storage::Sqlite => "sqlite://data/tansu.db",
            Storage::Memory => "memory://tansu/",
        }
    }
}

impl Broker {
    /// Starts a broker with durable storage on a free port; returns once it answers a
    /// Kafka ApiVersions request.
    pub async fn start() -> Broker {
        Broker::start_with(Storage::Sqlite).await
    }

    /// Starts a broker keeping its log in `storage` on a free port.
    pub async fn start_with(storage: Storage) -> Broker {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut broker = Broker::new(port, storage);
            match broker.launch().await {
                Ok(()) => return broker,
                Err(e) if e.contains("in use") => last = e, // port taken meanwhile: retry
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}")
    }

    /// Starts a broker on the given port (e.g. one a service was already told to use).
    pub async fn start_on(port: u16) -> Broker {
        let mut broker = Broker::new(port, Storage::Sqlite);
        if let Err(e) = broker.launch().await {
            panic!("{e}");
        }
        broker
    }

    /// A broker clients reach only over TLS: tansu behind a [`TlsProxy`] whose
    /// certificate (for `localhost`) the test CA signed; see [`Broker::client_env`].
    pub async fn start_tls() -> Broker {
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
        let mut broker = Broker::new(free_port(), Storage::Sqlite);
        let certs = crate::certs::make(&broker.dir, |program, args| {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        })
        .await;
        let proxy = TlsProxy::start(front, &certs.cert, &certs.key, broker.port);
        broker.tls = Some((proxy, certs));
        if let Err(e) = broker.launch().await {
            panic!("{e}");
        }
        broker
    }

    /// A broker that requires SASL/SCRAM-SHA-512 (tansu's `--authentication`): started
    /// once without it to create the user (`tansu user create`), then again with it on
    /// the same storage; see [`Broker::client_env`].
    pub async fn start_scram() -> Broker {
        let mut broker = Broker::start().await;
        let (user, password) = ("rekey".to_string(), "scram-test-password".to_string());
        let out = Command::new(&broker.tansu)
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", broker.port))
            .args([&user, &password])
            .output()
            .expect("run tansu user create");
        assert!(
            out.status.success(),
            "tansu user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        broker.scram = Some((user, password));
        broker.restart().await;
        broker
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` (`localhost:PORT` of the TLS front).
    pub fn bootstrap(&self) -> String {
        match &self.tls {
            Some((proxy, _)) => format!("localhost:{}", proxy.port),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// The librdkafka settings rekey's services need for this broker, as environment
    /// variables: TLS against the test CA for [`Broker::start_tls`], the SCRAM user for
    /// [`Broker::start_scram`], none otherwise.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        if let Some((user, password)) = &self.scram {
            return vec![
                (
                    "REKEY_KAFKA_OPTION_SECURITY_PROTOCOL",
                    "sasl_plaintext".into(),
                ),
                ("REKEY_KAFKA_OPTION_SASL_MECHANISM", "SCRAM-SHA-512".into()),
                ("REKEY_KAFKA_OPTION_SASL_USERNAME", user.clone()),
                ("REKEY_KAFKA_OPTION_SASL_PASSWORD", password.clone()),
            ];
        }
        let Some((_, certs)) = &self.tls else {
            return Vec::new();
        };
        vec![
            ("REKEY_KAFKA_OPTION_SECURITY_PROTOCOL", "ssl".into()),
            (
                "REKEY_KAFKA_OPTION_SSL_CA_LOCATION",
                certs.ca.display().to_string(),
            ),
            // The front listens on 127.0.0.1 only; `localhost` may resolve to ::1 first.
            ("REKEY_KAFKA_OPTION_BROKER_ADDRESS_FAMILY", "v4".into()),
        ]
    }

    /// The test CA that signed the TLS front's certificate and a CA that did not.
    pub fn certs(&self) -> Option<&Certs> {
        self.tls.as_ref().map(|(_, certs)| certs)
    }

    /// Kills the broker with SIGKILL; its data stays for [`Broker::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again (killing it first if it runs) on the same port and data.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch().await {
                Ok(()) => return,
                // The old socket may linger for a moment after a kill.
                Err(e) if e.contains("in use") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The broker's directory (data in `data/`, its output in `tansu.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("tansu.log")
    }

    /// The `tansu` binary: `$TANSU`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
    pub fn tansu_path() -> PathBuf {
        if let Some(p) = std::env::var_os("TANSU") {
            let p = PathBuf::from(p);
            if p.is_file() {
                return p;
            }
            panic!("TANSU={} does not exist: run `make tools`", p.display());
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("tansu"))
                    .find(|p| p.is_file())
            })
            .unwrap_or(None);
        if let Some(p) = on_path {
            return p;
        }
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        if let Some(p) = cargo_home.map(|c| c.join("bin").join("tansu")) {
            if p.is_file() {
                return p;
            }
        }
        panic!("tansu not found: run `make tools`")
    }

    fn new(port: u16, storage: Storage) -> Broker {
        let tansu = Broker::tansu_path();
        let dir = unique_temp_dir("broker");
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("cannot create {}/data: {e}", dir.display()));
        Broker {
            port,
            dir,
            tansu,
            storage,
            child: None,
            started: false,
            tls: None,
            scram: None,
        }
    }

    /// Spawns tansu and waits until it answers; Err(message with log tail) if it exits
    /// or does not answer in time.
    async fn launch(&mut self) -> Result<(), String> {
        let began = Instant::now();
        let tansu = self.tansu.clone();
        let log = self.open_log();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.bootstrap());
        let mut cmd = Command::new(&tansu);
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", self.storage.engine()])
            .args(self.scram.as_ref().map(|_| "--authentication"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log);
        // tansu also reads its settings from these; keep the test's environment out.
        for var in [
            "CLUSTER_ID",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
            "SCHEMA_REGISTRY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            cmd.env_remove(var);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("REKEY_TANSU_LOG").unwrap_or_else(|_| "warn".to_string()),
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tansu.display()));
        self.child = Some(child);

        let deadline = began + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let tail = file_tail(&self.log_path(), 30);
                let why = if tail.contains("in use") {
                    "address in use"
                } else {
                    "exited"
                };
                return Err(format!(
                    "tansu on port {} {why} ({status}) in {}\n--- tail of {} ---\n{tail}",
                    self.port,
                    self.dir.display(),
                    self.log_path().display()
                ));
            }
            if api_versions_answered(self.port).await {
                self.started = true;
                if std::env::var_os("REKEY_HARNESS_VERBOSE").is_some() {
                    eprintln!(
                        "[harness] tansu on port {} in {:?} ({})",
                        self.port,
                        began.elapsed(),
                        self.dir.display()
                    );
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "tansu on port {} did not answer within {}s\n--- tail of {} ---\n{}",
                    self.port,
                    fmt_secs(START_TIMEOUT),
                    self.log_path().display(),
                    file_tail(&self.log_path(), 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn open_log(&self) -> File {
        let path = self.log_path();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && self.started {
            eprintln!(
                "--- tail of {} (port {}) ---\n{}",
                self.log_path().display(),
                self.port,
                file_tail(&self.log_path(), 30)
            );
        }
        if keep_test_dirs() {
            eprintln!("kept broker test dir {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends a Kafka ApiVersions v0 request and checks that a response with our correlation
/// id comes back: the broker accepts connections and serves requests.
async fn api_versions_answered(port: u16) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        const CORRELATION_ID: i32 = 0x5245_4b59; // "REKY"
        let client_id = b"rekey-harness";
        let mut body = Vec::new();
        body.extend_from_slice(&18i16.to_be_bytes()); // api_key: ApiVersions
        body.extend_from_slice(&0i16.to_be_bytes()); // api_version 0
        body.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
        body.extend_from_slice(client_id);
        let mut req = (body.len() as i32).to_be_bytes().to_vec();
        req.extend_from_slice(&body);
        stream.write_all(&req).await?;
        let size = stream.read_i32().await?;
        let correlation = stream.read_i32().await?;
        Ok::<bool, std::io::Error>(size >= 4 && correlation == CORRELATION_ID)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}
