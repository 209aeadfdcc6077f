//! Reads a service's Prometheus `/metrics` over plain HTTP/1.0 (no client library).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Samples by full series text (`name{labels}`) → value. Empty when unreachable.
pub async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return out;
    };
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return out;
    }
    let mut body = String::new();
    if tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .is_err()
    {
        return out;
    }
    for line in body.lines() {
        if line.starts_with('#')
            || line.is_empty()
            || line.starts_with("HTTP/")
            || !line.starts_with("rekey_")
        {
            continue;
        }
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(series.to_string(), v);
            }
        }
    }
    out
}

/// The sum of every series of `name` (all label sets).
pub fn sum(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}
