//! `rekeyctl`: the control CLI. Wiring only; the work is in the `rekey` library.
//!
//! - `rekeyctl status` — the slot, the writer's consistent position and the lag.
//! - `rekeyctl resolve <entity> <legacy key>` — the UUID a legacy key maps to.
//! - `rekeyctl resolve <uuid>` — the table and legacy key of a UUID (looked up in the target).

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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(args.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekeyctl: error: {}", e.one_line());
            ExitCode::from(if matches!(e, Error::Config(_) | Error::Setup(_)) {
                2
            } else {
                1
            })
        }
    }
}

async fn run(command: Command, config: Config) -> Result<(), Error> {
    match command {
        Command::Status { json } => {
            let status = rekey::status::read(&config).await?;
            if json {
                println!("{}", status.to_json());
            } else {
                print!("{status}");
            }
            Ok(())
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
            Ok(())
        }
    }
}
