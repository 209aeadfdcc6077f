//! The project's own binaries as child processes, with their output captured for
//! assertions and kept in a log file.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wait::{keep_test_dirs, text_tail};

/// The path of a workspace binary (`rekey-reader`, `rekey-writer`, `rekeyctl`,
/// `rekey-workload`, ...): in `$REKEY_BIN_DIR` when set, else in the cargo profile dir of
/// the running test (`target/<profile>/`, the parent of `deps/`).
///
/// Tests don't build other packages' binaries: `make test` runs `cargo build --bins` first.
pub fn bin_path(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("REKEY_BIN_DIR") {
        candidates.push(PathBuf::from(dir).join(name));
    } else if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "binary {name} not built: run `cargo build --bins` (looked for {})",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A running child process whose stdout and stderr go, line by line, to memory (see
/// [`Service::output`]) and to a log file. Killed with SIGKILL on drop.
pub struct Service {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    log_path: PathBuf,
}

impl Service {
    /// Starts `name` (a workspace binary, see [`bin_path`]; or a path, if it contains `/`)
    /// with `args`, the test's environment plus `env`. `RUST_LOG=info` and `NO_COLOR=1`
    /// unless `env` sets them.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, String)]) -> Service {
        let program = if name.contains('/') {
            PathBuf::from(name)
        } else {
            bin_path(name)
        };
        let short = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string());
        let log_path = log_file_path(&short);
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log = Arc::new(Mutex::new(log));

        let mut cmd = Command::new(&program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        if !env.iter().any(|(k, _)| *k == "NO_COLOR") {
            cmd.env("NO_COLOR", "1");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));

        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(&short, out, output.clone(), log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(&short, err, output.clone(), log.clone()));
        }
        Service {
            name: short,
            child,
            status: None,
            output,
            readers,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
        self.drain_readers(Duration::from_secs(1));
    }

    /// Sends SIGTERM (a graceful shutdown request); see [`Service::wait_exit`].
    pub fn sigterm(&self) {
        if self.status.is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits for the process to exit; None if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_running() {
                if Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            self.drain_readers(Duration::from_secs(1));
            return self.status;
        }
    }

    /// Everything the process printed so far, stdout and stderr interleaved by line,
    /// ANSI colour codes removed.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the output contains `needle`; false if it doesn't within `timeout`.
    pub async fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(needle)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// The log file holding this process's output.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    /// Lets the reader threads take the last output after the process ended.
    fn drain_readers(&mut self, max: Duration) {
        let deadline = Instant::now() + max;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (done, pending): (Vec<_>, Vec<_>) =
            self.readers.drain(..).partition(|r| r.is_finished());
        for r in done {
            let _ = r.join();
        }
        self.readers = pending;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let was_running = self.is_running();
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}, {}; full log {}) ---\n{}",
                self.name,
                self.child.id(),
                match self.status {
                    Some(s) if !was_running => format!("exited: {s}"),
                    _ => "killed by the harness".to_string(),
                },
                self.log_path.display(),
                text_tail(&self.output(), 200)
            );
        } else if keep_test_dirs() {
            eprintln!("kept {} log {}", self.name, self.log_path.display());
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

fn log_file_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "rekey-{name}-{}-{n}-{nanos:08x}.log",
        std::process::id()
    ))
}

fn spawn_reader(
    name: &str,
    stream: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    log: Arc<Mutex<std::fs::File>>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("{name}-output"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&buf));
                        let line = line.trim_end_matches(['\n', '\r']);
                        if let Ok(mut f) = log.lock() {
                            let _ = writeln!(f, "{line}");
                        }
                        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        })
        .expect("spawn output reader thread")
}

/// Removes ANSI escape sequences (colours) so assertions can match plain text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn strip_ansi_removes_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x\u{1b}[2m=\u{1b}[0m1"),
            "2024  INFO x=1"
        );
    }
}
