//! `make bench`: rekey against native logical replication and `pg_dump | psql` on
//! throwaway local servers; prints a table and writes JSON (see [`rekey_tests::bench`]).
//!
//! Usage: `rekey-bench [--scale F] [--only backfill|streaming] [--steps "500,1000,max"]
//! [--step-secs N] [--out PATH] …` (`--help` lists every flag).

use std::process::ExitCode;

use rekey_tests::bench::{self, report, Options};

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{}", bench::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rekey-bench: error: {e}\n{}", bench::USAGE);
            return ExitCode::from(2);
        }
    };
    let out = options.out.clone();
    let r = bench::run(options).await;
    print!("{}", report::table(&r));
    let json = serde_json::to_string_pretty(&report::json(&r)).expect("JSON");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("rekey-bench: error: cannot create {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    }
    if let Err(e) = std::fs::write(&out, json + "\n") {
        eprintln!("rekey-bench: error: cannot write {}: {e}", out.display());
        return ExitCode::from(1);
    }
    println!("JSON: {}", out.display());
    if r.all_correct() {
        ExitCode::SUCCESS
    } else {
        eprintln!("rekey-bench: a copy differs from the legacy database (see \"check\" above)");
        ExitCode::from(1)
    }
}
