//! What every rekey binary does around its loop: parse flags, load and validate the
//! config, set up logs and `/metrics`, turn SIGTERM/SIGINT into a cancellation, run,
//! and map the outcome to an exit code with one clear line on failure.
//!
//! Exit codes: 0 after a clean stop, 2 for a configuration or set-up problem (the line
//! names what to fix), 1 for any other fatal error.
//!
//! Allocator: `rekey-reader` and `rekey-writer` allocate with mimalloc (their
//! `#[global_allocator]`). Every value of every row is its own small allocation on both
//! sides, and glibc's malloc and free were a third of the reader's samples in a backfill.
//! Measured with `rekey-bench --scale 1 --only backfill`, three alternating pairs:
//! reader CPU per row 7.4 -> 6.9 µs, writer 6.2 -> 5.9 µs (with the writer's hash maps
//! moved off SipHash, see [`crate::apply`]), rows/s +8 %.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};
use crate::error::Error;
use crate::health;
use crate::telemetry::{self, LogFormat};

/// How long a service may drain after SIGTERM before it gives up (exit 1). Kubernetes'
/// terminationGracePeriodSeconds must be longer (the manifests use 60 s).
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(45);

/// Flags shared by the services.
#[derive(Debug, Clone)]
pub struct Flags {
    pub config: PathBuf,
    pub log_format: LogFormat,
}

/// Runs a service to completion and returns its exit code.
pub fn main<F, Fut>(name: &'static str, role: Role, flags: Flags, run: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    telemetry::init_logging(flags.log_format);
    let config = match Config::load(&flags.config, role) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: error: {}", e.one_line());
            return ExitCode::from(2);
        }
    };
    // One worker thread unless TOKIO_WORKER_THREADS says otherwise, and the service's
    // loop runs on it (spawned below), not on this thread. The loops are sequential and
    // wait mostly on I/O; with a second thread in play, every message handed from the
    // replication socket's task to the stream loop, or from a connection task to the
    // writer's loop, woke the other thread (an eventfd write, a futex, contended socket
    // locks). Measured in a catch-up: the reader's CPU per change went from 33 to 21 µs
    // with one worker, and to 12 µs with the loop on that worker; the writer's from 8 to
    // 6. Blocking calls still move off the worker (`block_in_place`), so the health
    // endpoints keep answering.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().thread_name(name).build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let handle = telemetry::init_metrics()?;
        let cancel = CancellationToken::new();
        let http_stop = CancellationToken::new();
        if !config.telemetry.metrics_addr.is_empty() {
            health::serve(&config.telemetry.metrics_addr, handle, http_stop.clone()).await?;
        }
        let _http_guard = http_stop.drop_guard();
        metrics::gauge!(telemetry::UP, "component" => name).set(1.0);
        tokio::spawn(stop_on_signal(cancel.clone()));
        tokio::spawn(drain_deadline(name, cancel.clone()));
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "{name} starting");
        // `block_on` polls its own future on this thread: spawn the loop onto the worker.
        tokio::spawn(run(config, cancel))
            .await
            .map_err(|e| Error::Invariant(format!("{name} task failed: {e}")))?
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e.one_line(), "{name} stopped");
            eprintln!("{name}: error: {}", e.one_line());
            match e {
                Error::Config(_) | Error::Setup(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// Once cancelled, the service has [`DRAIN_DEADLINE`] to finish; past it, exit 1 rather
/// than be killed mid-write (nothing is lost either way: positions are only confirmed
/// once durable).
async fn drain_deadline(name: &'static str, cancel: CancellationToken) {
    cancel.cancelled().await;
    tokio::time::sleep(DRAIN_DEADLINE).await;
    tracing::error!(
        "{name}: drain took longer than {}s; exiting",
        DRAIN_DEADLINE.as_secs()
    );
    std::process::exit(1);
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    cancel.cancel();
}
