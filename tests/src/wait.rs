//! Waiting on conditions with a deadline, and picking free loopback ports.

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports handed out by this process, so two servers of one test never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that was free a moment ago (bound to `127.0.0.1:0`, then released).
///
/// The kernel hands out ephemeral ports in a scattered order, so concurrent test processes
/// rarely collide; within one process a port is never returned twice.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found after 100 tries")
}

/// Polls `f` every 100 ms until it returns true; panics
/// `timed out after Xs waiting for {what}` once `timeout` has passed.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {}s waiting for {what}", fmt_secs(timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}

/// The last `n` lines of a text file, or a note saying why it can't be read.
pub(crate) fn file_tail(path: &std::path::Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => text_tail(&String::from_utf8_lossy(&bytes), n),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

pub(crate) fn text_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// A fresh directory under the system temp dir, unique across parallel test processes.
pub(crate) fn unique_temp_dir(kind: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "rekey-{kind}-{}-{n}-{nanos:08x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// True when test directories should be kept (env `REKEY_KEEP_TEST_DIRS` is set).
pub(crate) fn keep_test_dirs() -> bool {
    std::env::var_os("REKEY_KEEP_TEST_DIRS").is_some()
}
