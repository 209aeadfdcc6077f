//! `rekeyctl`: the control CLI. Wiring only; the work is in the `rekey` library.
//!
//! - `rekeyctl status` — the slot, the writer's consistent position and the lag.
//! - `rekeyctl resolve <entity> <legacy key>` — the UUID a legacy key maps to.
//! - `rekeyctl resolve <uuid>` — the table and legacy key of a UUID (looked up in the target).
//! - `rekeyctl verify [--json PATH|-] [--chunk-rows N] [--settle-timeout SECS]` — compare
//!   the legacy and the new store; exit 0 when they agree, 1 when they differ, 2 when
//!   verification could not run (configuration, usage, a database error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rekey::config::{Config, Role};
use rekey::error::Error;

#[derive(Parser, Debug)]
#[command(name = "rekeyctl", version, about = "rekey control CLI")]
struct Args {
    /// The rekey TOML config (REKEY_* environment variables override it).
    #[arg(long, env = "REKEY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the replication slot, the writer's consistent position and the lag.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Map a legacy key to its UUID (`resolve prompt_labs 42`) or a UUID back to its
    /// table and legacy key (`resolve 890a5f86-…`).
    Resolve {
        /// An entity (table) name, or a UUID.
        what: String,
        /// The legacy key, when `what` is an entity.
        key: Option<String>,
    },
    /// Compare the legacy and the new store, keys translated: live row counts, every
    /// row's content and foreign keys, soft deletes, foreign-key integrity. Exits 0 when
    /// they agree, 1 when they differ, 2 when verification could not run.
    Verify {
        /// Also write the report as JSON to PATH; `-` writes it to stdout (the text report
        /// then goes to stderr).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Rows read per statement and side (memory is bounded by about two chunks).
        #[arg(long, value_name = "N", default_value_t = rekey::verify::DEFAULT_CHUNK_ROWS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        chunk_rows: usize,
        /// How long to wait for the target to catch up before re-checking differences.
        #[arg(long, value_name = "SECS",
              default_value_t = rekey::verify::DEFAULT_SETTLE_TIMEOUT.as_secs())]
        settle_timeout: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(path) = args.config.clone() else {
        eprintln!("rekeyctl: error: --config PATH (or REKEY_CONFIG) is required");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path, Role::Control) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rekeyctl: error: {}", e.one_line());
            return ExitCode::from(2);
        }
    };
    // For verify, 1 means "the stores differ": any failure to verify is 2.
    let verifying = matches!(args.command, Command::Verify { .. });
    // verify merges pages on this thread while the connections read the next ones.
    let runtime = if verifying {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    match runtime.block_on(run(args.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rekeyctl: error: {}", e.one_line());
            ExitCode::from(
                if verifying || matches!(e, Error::Config(_) | Error::Setup(_)) {
                    2
                } else {
                    1
                },
            )
        }
    }
}

async fn run(command: Command, config: Config) -> Result<ExitCode, Error> {
    match command {
        Command::Verify {
            json,
            chunk_rows,
            settle_timeout,
        } => verify(&config, json, chunk_rows, settle_timeout).await,
        Command::Status { json } => {
            let status = rekey::status::read(&config).await?;
            if json {
                println!("{}", status.to_json());
            } else {
                print!("{status}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resolve { what, key } => {
            if let Ok(id) = what.parse::<uuid::Uuid>() {
                match rekey::status::resolve_uuid(&config, id).await? {
                    Some((table, legacy)) => println!("{table} {legacy}"),
                    None => {
                        return Err(Error::Setup(format!(
                            "{id} is not the id of any row in the target's [[tables]]"
                        )))
                    }
                }
            } else {
                let Some(key) = key else {
                    return Err(Error::Config(
                        "resolve: give `<entity> <legacy key>` or a UUID".into(),
                    ));
                };
                if config.rekey.secret.expose().is_empty() {
                    return Err(Error::Config(
                        "rekey.secret: missing: set REKEY_ID_SECRET".into(),
                    ));
                }
                println!("{}", config.rekeyer().uuid(&what, &key));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the comparison; progress to stderr, the report as text (stdout, or stderr when
/// the JSON goes to stdout) and optionally as JSON.
async fn verify(
    config: &Config,
    json: Option<PathBuf>,
    chunk_rows: usize,
    settle_timeout: u64,
) -> Result<ExitCode, Error> {
    let opts = rekey::verify::Options {
        chunk_rows,
        settle_timeout: std::time::Duration::from_secs(settle_timeout),
        ..Default::default()
    };
    let report = rekey::verify::run(config, &opts, &mut |p| eprintln!("{p}")).await?;
    let json_to_stdout = json.as_deref() == Some(std::path::Path::new("-"));
    if json_to_stdout {
        eprint!("{report}");
        println!("{}", report.to_json());
    } else {
        print!("{report}");
        if let Some(path) = &json {
            std::fs::write(path, report.to_json() + "\n").map_err(|e| {
                Error::Setup(format!(
                    "cannot write the JSON report to {}: {e}",
                    path.display()
                ))
            })?;
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
