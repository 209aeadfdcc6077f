//! Cutover drain time at a given load (issue #4).
//!
//! pgbench runs the mix against legacy at `rate` for one step; when it ends — the
//! application stops writing — `phase = "cutover"` is written into the live config file
//! (as a ConfigMap update would). Measured: the time from that write until `rekey.status`
//! says `cutover_ready` (the reader's 2 s config poll, the drain to the cutover point,
//! foreign-key validation and verify), and the drain part alone as the reader recorded
//! it. Then the phase goes back to `replicate`.

use std::time::{Duration, Instant};

use crate::{wait_until, Pipeline};

use super::pgbench::Mix;

#[derive(Debug, Clone)]
pub struct Drain {
    /// The load before the cutover, transactions per second requested and achieved.
    pub rate: f64,
    pub tps: f64,
    /// From `phase = "cutover"` written to `cutover_ready` (or `failed`).
    pub total: Duration,
    /// The drain to the cutover point, as recorded in `rekey.status`.
    pub drain_seconds: Option<f64>,
    pub state: String,
}

pub async fn measure(
    p: &Pipeline,
    mix: &Mix,
    rate: f64,
    load: Duration,
    conns: (u32, u32),
) -> Drain {
    let run = mix.run(&p.legacy, Some(rate), load, conns).await;
    p.set_phase("cutover");
    let began = Instant::now();
    wait_until(
        "cutover_ready after the load",
        Duration::from_secs(600),
        || async {
            matches!(
                p.cutover_state().await.as_deref(),
                Some("cutover_ready" | "failed")
            )
        },
    )
    .await;
    let total = began.elapsed();
    let target = p.target_client().await;
    let row = target
        .query_one("SELECT state, drain_seconds FROM rekey.status", &[])
        .await
        .expect("rekey.status");
    let drain = Drain {
        rate,
        tps: run.tps,
        total,
        drain_seconds: row.get(1),
        state: row.get(0),
    };
    p.set_phase("replicate");
    wait_until("replicating again", Duration::from_secs(60), || async {
        p.cutover_state().await.as_deref() == Some("replicating")
    })
    .await;
    drain
}
