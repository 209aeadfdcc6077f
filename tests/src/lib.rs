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
//! let reader = Service::spawn("rekey-reader", &[], &[
//!     ("REKEY_SOURCE_URL", pg.url("legacy")),
//!     ("REKEY_BROKERS", broker.bootstrap()),
//! ]);
//! assert!(reader.wait_for_output("started", std::time::Duration::from_secs(30)).await);
//! # }
//! ```

pub mod broker;
pub mod pg;
pub mod process;
pub mod wait;

pub use broker::Broker;
pub use pg::{Pg, PgOptions};
pub use process::{bin_path, Service};
pub use wait::{free_port, wait_until};

pub mod compare;
pub mod pipeline;
pub mod scrape;

pub use pipeline::Pipeline;
