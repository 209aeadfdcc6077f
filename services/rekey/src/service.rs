//! What every rekey binary does around its loop: parse flags, load and validate the
//! config, set up logs and `/metrics`, turn SIGTERM/SIGINT into a cancellation, run,
//! and map the outcome to an exit code with one clear line on failure.
//!
//! Exit codes: 0 after a clean stop, 2 for a configuration or set-up problem (the line
//! names what to fix), 1 for any other fatal error.

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
    Fut: Future<Output = Result<(), Error>>,
{
    telemetry::init_logging(flags.log_format);
    let config = match Config::load(&flags.config, role) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: error: {}", e.one_line());
            return ExitCode::from(2);
        }
    };
    let current = std::env::var("REKEY_EXPERIMENT_CURRENT_THREAD").is_ok();
    let mut builder = if current { tokio::runtime::Builder::new_current_thread() } else { tokio::runtime::Builder::new_multi_thread() };
    let runtime = match builder
        .enable_all()
        .thread_name(name)
        .build()
    {
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
        run(config, cancel).await
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

/// Runs blocking `f` from async code: off the worker (`block_in_place`) on a
/// multi-threaded runtime; in place on a current-thread one, which has no other worker.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
