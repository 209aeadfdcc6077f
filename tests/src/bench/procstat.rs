//! What the processes of a run cost: CPU time per component over an interval, and peak
//! resident memory, read from `/proc` (Linux only; elsewhere every figure is absent).
//!
//! A component is one process (reader, writer, broker), a whole PostgreSQL cluster (the
//! postmaster, its live children, and the children it has already reaped — a backend that
//! served a pgbench connection and exited is still counted, through the postmaster's
//! `cutime`), or the finished child processes of this program (pgbench, pg_dump, psql).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Where one component's CPU time is read.
#[derive(Debug, Clone)]
pub enum Source {
    /// One process (and nothing it spawns).
    Process(u32),
    /// The PostgreSQL cluster whose data directory is this (its `postmaster.pid` names the
    /// postmaster).
    Cluster(PathBuf),
    /// This program's own children that have exited and been reaped (pgbench runs).
    FinishedChildren,
    /// Every CPU of the machine, busy time (`/proc/stat`): set against the other probes,
    /// it shows how much of the machine went to processes outside the bench.
    Machine,
}

/// A named component to watch.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    pub source: Source,
}

impl Probe {
    pub fn process(name: &str, pid: u32) -> Probe {
        Probe {
            name: name.into(),
            source: Source::Process(pid),
        }
    }

    /// A cluster started by the harness ([`crate::Pg::dir`] holds `data/`).
    pub fn cluster(name: &str, pg_dir: &Path) -> Probe {
        Probe {
            name: name.into(),
            source: Source::Cluster(pg_dir.join("data")),
        }
    }

    pub fn machine() -> Probe {
        Probe {
            name: "machine".into(),
            source: Source::Machine,
        }
    }

    pub fn finished_children(name: &str) -> Probe {
        Probe {
            name: name.into(),
            source: Source::FinishedChildren,
        }
    }
}

/// Cumulative CPU ticks of each probe at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    ticks: Vec<Option<u64>>,
}

/// Reads every probe now.
pub fn snapshot(probes: &[Probe]) -> CpuSnapshot {
    let procs = all_processes();
    CpuSnapshot {
        at: Instant::now(),
        ticks: probes.iter().map(|p| ticks(&p.source, &procs)).collect(),
    }
}

/// CPU used by each probe between two snapshots, in percent of one core.
pub fn usage(probes: &[Probe], from: &CpuSnapshot, to: &CpuSnapshot) -> Vec<(String, f64)> {
    let secs = to.at.duration_since(from.at).as_secs_f64().max(1e-3);
    probes
        .iter()
        .zip(from.ticks.iter().zip(&to.ticks))
        .filter_map(|(p, (a, b))| {
            let (a, b) = ((*a)?, (*b)?);
            let cpu = b.saturating_sub(a) as f64 / TICKS_PER_SEC;
            Some((p.name.clone(), 100.0 * cpu / secs))
        })
        .collect()
}

/// CPU time per unit of work (a row copied, a change applied) in µs, per component and
/// (last) their `total`, from `cpu` (% of one core over `elapsed`): what the work costs
/// independently of how busy the machine was. `machine` is left out.
pub fn micros_per_unit(cpu: &[(String, f64)], elapsed: Duration, units: u64) -> Vec<(String, f64)> {
    let per_unit = |pct: f64| pct / 100.0 * elapsed.as_secs_f64() * 1e6 / units.max(1) as f64;
    let mut out: Vec<(String, f64)> = cpu
        .iter()
        .filter(|(n, _)| n != "machine")
        .map(|(n, pct)| (n.clone(), per_unit(*pct)))
        .collect();
    let total = out.iter().map(|(_, v)| v).sum();
    out.push(("total".into(), total));
    out
}

/// Peak resident set size (`VmHWM`) of a running process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size (`VmRSS`) of a running process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy)]
struct Stat {
    pid: u32,
    ppid: u32,
    /// utime + stime
    own: u64,
    /// cutime + cstime: reaped children
    children: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        pid,
        ppid: num(4)? as u32,
        own: num(14)? + num(15)?,
        children: num(16)? + num(17)?,
    })
}

fn read_stat(pid: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn all_processes() -> Vec<Stat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| read_stat(name))?
        })
        .collect()
}

/// user + nice + system + irq + softirq + steal of the `cpu` line of `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum())
}

fn ticks(source: &Source, procs: &[Stat]) -> Option<u64> {
    match source {
        Source::Process(pid) => procs.iter().find(|s| s.pid == *pid).map(|s| s.own),
        Source::FinishedChildren => read_stat("self").map(|s| s.children),
        Source::Machine => machine_busy_ticks(),
        Source::Cluster(data) => {
            let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
            let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
            let main = procs.iter().find(|s| s.pid == postmaster)?;
            let live: u64 = procs
                .iter()
                .filter(|s| s.ppid == postmaster)
                .map(|s| s.own)
                .sum();
            Some(main.own + main.children + live)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_command_name() {
        let line = "4242 (postgres: walsender (x)) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 100 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.pid, s.ppid, s.own, s.children), (4242, 17, 300, 10));
    }

    #[test]
    fn this_process_has_a_peak_rss() {
        assert!(peak_rss_bytes(std::process::id()).unwrap_or(0) > 0);
    }
}
