//! `rekey-writer`: wiring only; the loop is [`rekey::writer`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rekey::config::Role;
use rekey::telemetry::LogFormat;

/// mimalloc instead of the system allocator: see [`rekey::service`] ("Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "rekey-writer",
    version,
    about = "rekey writer: Kafka -> new PostgreSQL, exactly-once in effect"
)]
struct Args {
    /// The rekey TOML config (REKEY_* environment variables override it).
    #[arg(long, env = "REKEY_CONFIG")]
    config: PathBuf,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let flags = rekey::service::Flags {
        config: args.config,
        log_format: args.log_format,
    };
    rekey::service::main("rekey-writer", Role::Writer, flags, rekey::writer::run)
}
