//! The service's HTTP endpoint: `/metrics` (Prometheus), `/healthz` and `/readyz`.
//!
//! - `/healthz` answers 200 while the process and its runtime are alive. It does not
//!   depend on the databases or the broker: their outages are retried inside the
//!   process, and restarting the pod would not help.
//! - `/readyz` answers 200 while the service does its job (the reader streams its slot,
//!   the writer consumes and applies), 503 with the reason otherwise.
//!
//! A deliberately tiny HTTP/1.1 server (one request per connection, bounded request
//! size): enough for kubelet probes and Prometheus scrapes, no framework needed.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Why the service is not ready (`None` = ready).
static NOT_READY: Mutex<Option<String>> = Mutex::new(Some(String::new()));

/// Marks the service ready.
pub fn set_ready() {
    *NOT_READY.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Marks the service not ready, saying why.
pub fn set_not_ready(reason: impl Into<String>) {
    *NOT_READY.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
}

fn readiness() -> Result<(), String> {
    match &*NOT_READY.lock().unwrap_or_else(|e| e.into_inner()) {
        None => Ok(()),
        Some(r) if r.is_empty() => Err("starting".into()),
        Some(r) => Err(r.clone()),
    }
}

/// Binds `addr` and serves until `cancel` fires.
pub async fn serve(
    addr: &str,
    metrics: PrometheusHandle,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        Error::Config(format!(
            "telemetry.metrics_addr: {addr:?} is not host:port ({e})"
        ))
    })?;
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::Config(format!(
            "telemetry.metrics_addr: cannot listen on {addr}: {e}"
        ))
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let metrics = metrics.clone();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream, &metrics)).await;
                        });
                    }
                }
            }
        }
    });
    Ok(())
}

async fn respond(mut stream: TcpStream, metrics: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (status, content_type, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => match readiness() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(reason) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
