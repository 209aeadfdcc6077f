//! The Kafka side: client settings, broker reachability, the producer (the topic is
//! [`crate::topic`]'s).
//!
//! The producer is idempotent with `acks=all`: a retried send is never duplicated or
//! reordered by the broker within a producer session, so one partition holds batches in
//! source commit order. Settings those guarantees rest on are forced after the user's
//! pass-through options, so `[kafka.options]` cannot weaken them.

use std::time::Duration;

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;
use crate::error::Error;

/// The partition every batch goes to: one per migrated database keeps commit order.
pub const PARTITION: i32 = 0;

/// First and longest wait between attempts to reach the broker.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Which kind of librdkafka client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The reader's producer, and the admin client (librdkafka makes it a producer).
    Producer,
    /// The writer's consumer, and the broker probe.
    Consumer,
}

/// librdkafka's settings of one kind of client (scope `P` or `C` in its
/// CONFIGURATION.md). A client of the other kind logs a warning for each one at creation
/// ("… is a producer property and will be ignored by this consumer instance"), which
/// `[kafka.options]`, shared by every client, would cause at every start.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// Base client settings: the pass-through options of this kind of client (see
/// [`PRODUCER_ONLY`]), then the bootstrap servers.
pub fn client_config(kafka: &KafkaConfig, kind: Client) -> ClientConfig {
    let other = match kind {
        Client::Producer => CONSUMER_ONLY,
        Client::Consumer => PRODUCER_ONLY,
    };
    let mut c = ClientConfig::new();
    for (k, v) in &kafka.options {
        if !other.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c.set("bootstrap.servers", &kafka.brokers);
    c
}

/// Checks the pass-through options without connecting: librdkafka names an unknown or
/// invalid one, and the files they name must be readable. The services call it first,
/// so a typo is a configuration error (exit 2, not retried) and the reader leaves no
/// slot holding WAL behind.
pub fn check_settings(kafka: &KafkaConfig) -> Result<(), Error> {
    let mut all = ClientConfig::new();
    for (k, v) in &kafka.options {
        all.set(k, v);
    }
    all.create_native_config()
        .map(drop)
        .map_err(|e| Error::Config(format!("kafka.options: {e}")))?;
    // librdkafka reads the files it is given (`ssl.ca.location`, `ssl.key.location`, …)
    // only when a client is created, and says little more than "system lib": name the
    // setting and the file here.
    for (name, value) in &kafka.options {
        if name.ends_with(".location") && value != "probe" && !value.is_empty() {
            if let Err(e) = std::fs::File::open(value) {
                return Err(Error::Config(format!(
                    "kafka.options: {name}: cannot read {value}: {e}"
                )));
            }
        }
    }
    Ok(())
}

pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, Error> {
    producer_config(kafka)
        .create()
        .map_err(Error::kafka("creating the producer"))
}

fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(kafka, Client::Producer);
    set_default(&mut c, "linger.ms", "2");
    // Retry until delivered; the reader's in-flight window applies back-pressure.
    set_default(&mut c, "message.timeout.ms", "0");
    // A backstop only: the reader's `source.max_in_flight_bytes` keeps far less queued
    // (librdkafka's own default would allow 1 GiB); when this fills, the reader waits.
    set_default(&mut c, "queue.buffering.max.kbytes", "65536");
    c.set("enable.idempotence", "true");
    c.set("acks", "all");
    c.set("max.in.flight.requests.per.connection", "5");
    c
}

/// Has the producer connect and acquire its producer id now, not at its first message.
/// A new idempotent producer finds no broker connected, and librdkafka then retries
/// the id on a 500 ms timer; a message waited 1 s before its first produce request
/// (measured, `debug=eos`). A metadata answer runs that state machine again with the
/// broker connected: the id arrives in a few milliseconds. Runs beside the caller;
/// failure is harmless (the timer still runs).
pub fn warm_up(producer: &FutureProducer, topic: &str) {
    use rdkafka::producer::Producer as _;
    let (producer, topic) = (producer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let _ = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(5));
    });
}

/// Sets `key` unless the user's pass-through options already did.
pub fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

/// The probe's client context: keeps librdkafka's last connection failure (its `FAIL`
/// log line), which says why (a refused TLS handshake, say) where the request's own
/// error says only "transport failure". Logs as the default context does.
#[derive(Default)]
struct ProbeContext {
    last_failure: std::sync::Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" {
            if let Ok(mut last) = self.last_failure.lock() {
                *last = Some(log_message.to_string());
            }
        }
        DefaultClientContext.log(level, fac, log_message);
    }
}

impl ConsumerContext for ProbeContext {}

/// Waits until the broker answers a metadata request, retrying with exponential backoff
/// and saying so. Returns when the broker is reachable, on cancellation, or with a fatal
/// error when the broker's TLS certificate does not verify (waiting will not change
/// that: the line names `ssl.ca.location`).
pub async fn wait_for_broker(
    kafka: &KafkaConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    let consumer: BaseConsumer<ProbeContext> = client_config(kafka, Client::Consumer)
        .create_with_context(ProbeContext::default())
        .map_err(Error::kafka("creating a metadata client"))?;
    let mut backoff = BACKOFF_START;
    loop {
        let probe = {
            let c = &consumer;
            tokio::task::block_in_place(|| {
                c.fetch_metadata(None, Duration::from_secs(5)).map(|_| ())
            })
        };
        match probe {
            Ok(()) => return Ok(()),
            Err(e) => {
                // Serve the client's queued events (its log lines among them).
                let _ = tokio::task::block_in_place(|| consumer.poll(Duration::ZERO));
                let why = consumer
                    .context()
                    .last_failure
                    .lock()
                    .ok()
                    .and_then(|mut l| l.take())
                    .unwrap_or_default();
                if why.contains("certificate verify failed") {
                    return Err(Error::Setup(format!(
                        "kafka: the broker's TLS certificate does not verify ({why}): set \
                         ssl.ca.location in [kafka.options] to the CA that signed it, for \
                         the broker's host name"
                    )));
                }
                tracing::warn!(brokers = %kafka.brokers, error = %e, why, retry_in_ms = backoff.as_millis() as u64, "broker unreachable, retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::kafka("waiting for the broker")(e)),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_the_shared_options_of_its_kind() {
        let mut kafka = KafkaConfig::default();
        for (k, v) in [
            ("compression.type", "none"),
            ("fetch.wait.max.ms", "50"),
            ("security.protocol", "ssl"),
        ] {
            kafka.options.insert(k.into(), v.into());
        }
        let producer = client_config(&kafka, Client::Producer);
        assert_eq!(producer.get("compression.type"), Some("none"));
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("security.protocol"), Some("ssl"));
        let consumer = client_config(&kafka, Client::Consumer);
        assert_eq!(consumer.get("compression.type"), None);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(consumer.get("security.protocol"), Some("ssl"));
        // A typo is still named: the check sees every option.
        kafka
            .options
            .insert("fetch.wait.max.mss".into(), "1".into());
        let err = check_settings(&kafka).unwrap_err().to_string();
        assert!(err.contains("fetch.wait.max.mss"), "{err}");
    }
}
