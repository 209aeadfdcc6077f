//! `rekey-workload`: apply a PromptStudio schema, seed the legacy database, or run the
//! live legacy workload. Prints a one-line summary; exits non-zero with the error
//! chain on failure.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rekey_workload::{apply_schema, seed, RunOptions, Schema, Workload};
use tokio_postgres::NoTls;

#[derive(Debug, Parser)]
#[command(
    name = "rekey-workload",
    version,
    about = "PromptStudio schema, seed data and live workload"
)]
struct Cli {
    /// PostgreSQL connection string (URL or key=value form).
    #[arg(long, env = "REKEY_WORKLOAD_URL")]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the legacy or the target schema in an empty database.
    Schema {
        #[arg(value_enum)]
        which: SchemaArg,
    },
    /// Bulk-insert a PromptStudio history into the legacy schema (scale 1.0 ≈ 311k rows, ≈ 205 MB).
    Seed {
        #[arg(long)]
        scale: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run legacy transactions until a limit is reached (or Ctrl-C).
    Run {
        /// Stop after this many transactions.
        #[arg(long)]
        txns: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Transactions per second at most.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemaArg {
    Legacy,
    Target,
}

fn report(context: &str, err: &dyn std::error::Error) -> ExitCode {
    let mut line = format!("error: {context}: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{line}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mut client, connection) = match tokio_postgres::connect(&cli.url, NoTls).await {
        Ok(pair) => pair,
        Err(err) => return report("connecting to PostgreSQL (--url)", &err),
    };
    let conn_task = tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("error: PostgreSQL connection: {err}");
        }
    });

    let code = match cli.command {
        Command::Schema { which } => {
            let schema = match which {
                SchemaArg::Legacy => Schema::Legacy,
                SchemaArg::Target => Schema::Target,
            };
            match apply_schema(&client, schema).await {
                Ok(()) => {
                    println!("applied the {} schema", schema.name());
                    ExitCode::SUCCESS
                }
                Err(err) => report("schema", &err),
            }
        }
        Command::Seed { scale, seed: s } => match seed(&client, scale, s).await {
            Ok(stats) => {
                println!("{stats}");
                ExitCode::SUCCESS
            }
            Err(err) => report("seed", &err),
        },
        Command::Run {
            txns,
            duration,
            rate,
            seed: s,
        } => {
            let duration = match duration.map(Duration::try_from_secs_f64).transpose() {
                Ok(d) => d,
                Err(_) => {
                    eprintln!("error: --duration must be a non-negative number of seconds");
                    return ExitCode::from(2);
                }
            };
            let opts = RunOptions {
                txns,
                duration,
                rate_per_sec: rate,
            };
            let mut workload = Workload::new(s);
            tokio::select! {
                result = workload.run(&mut client, opts) => match result {
                    Ok(stats) => {
                        println!("{stats}");
                        ExitCode::SUCCESS
                    }
                    Err(err) => report("run", &err),
                },
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted");
                    ExitCode::from(130)
                }
            }
        }
    };
    drop(client);
    let _ = conn_task.await;
    code
}
