//! Test harness: real PostgreSQL clusters, a real Kafka-protocol broker (`tansu`) and the
//! project's binaries, each started as local processes on free loopback ports, per test.
//!
//! Every test creates its own servers, so tests run in parallel (nextest runs each test
//! in its own process). Temp dirs live under `std::env::temp_dir()` and are removed on
//! drop; set `REKEY_KEEP_TEST_DIRS=1` to keep them (their paths are printed). When a test
//! panics, the tails of the server logs and of every [`Service`]'s output are printed.
//!
//! ```no_run
//! # async fn demo() {
//! use rekey_tests::{Broker, Pg, Service};
//! let pg = Pg::start().await;                 // wal_level = logical
//! pg.create_database("legacy").await;
//! let broker = Broker::start().await;
//! // pg.url("legacy") and broker.bootstrap() go into the service's configuration.
//! let mut reader = Service::spawn("rekey-reader", &["--config", "reader.toml"], &[]);
//! assert!(reader.wait_for_output("ready", std::time::Duration::from_secs(30)).await);
//! reader.sigterm();
//! assert!(reader.wait_exit(std::time::Duration::from_secs(10)).await.is_some());
//! # }
//! ```

pub mod broker;
pub mod certs;
pub mod pg;
pub mod process;
pub mod tls_proxy;
pub mod wait;

pub use broker::Broker;
pub use pg::{Pg, PgOptions};
pub use process::{bin_path, Service};
pub use wait::{free_port, wait_until};

pub mod bench;
pub mod compare;
pub mod pipeline;
pub mod scrape;

pub use pipeline::Pipeline;
