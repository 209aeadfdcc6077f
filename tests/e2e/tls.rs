//! TLS, as managed databases and Kafka services require. PostgreSQL: both clusters
//! refuse rekey's role in plain text, and rekey checks their certificates
//! (`sslmode=verify-full` against the test CA). A migration with backfill, streaming and
//! `rekeyctl verify` works that way, and a certificate from another CA, or no TLS, stops
//! a service with one line naming the setting. Kafka: the broker is reachable only
//! through a TLS front (`security.protocol=ssl`, the test CA in `ssl.ca.location`), or
//! only with SASL/SCRAM.

use std::time::Duration;

use rekey_tests::pg::TLS_ROLE;
use rekey_tests::{Broker, Pg, PgOptions, Pipeline};
use tokio::net::TcpStream;

/// A pipeline whose PostgreSQL clusters (`pg`) or broker (`kafka`) take only TLS.
async fn tls_pipeline(pg: bool, kafka: bool) -> Pipeline {
    let cluster = || {
        Pg::start_with(PgOptions {
            tls: pg,
            ..PgOptions::default()
        })
    };
    let broker = async {
        if kafka {
            Broker::start_tls().await
        } else {
            Broker::start().await
        }
    };
    let (legacy, target, broker) = tokio::join!(cluster(), cluster(), broker);
    Pipeline::assemble(
        legacy,
        target,
        broker,
        rekey_tests::pipeline::promptstudio_config(),
    )
    .await
}

/// The rekey sessions on a cluster: (backend type, TLS in use).
async fn rekey_sessions(client: &tokio_postgres::Client) -> Vec<(String, bool)> {
    client
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = $1 ORDER BY 1",
            &[&TLS_ROLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_runs_over_tls_with_the_servers_certificates_checked() {
    let mut p = tls_pipeline(true, false).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 5).await.expect("seed");
    // The legacy side by address, the target by name: verify-full checks the
    // certificate's IP entry for the one, its DNS entry for the other, on the SQL
    // connections and on the replication stream alike.
    let by_address = p
        .legacy
        .service_url(rekey_tests::pipeline::DB)
        .replace("@localhost:", "@127.0.0.1:");
    p.env_overrides.push(("REKEY_SOURCE_URL", by_address));
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let mut w = rekey_workload::Workload::new(6);
    for _ in 0..200 {
        w.step(&mut legacy).await.expect("workload step");
    }
    p.wait_backfilled().await;
    p.assert_converged().await;

    let sessions = rekey_sessions(&legacy).await;
    assert!(
        sessions.iter().any(|(kind, _)| kind == "walsender"),
        "the reader streams as {TLS_ROLE}: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "every rekey session on the legacy database uses TLS: {sessions:?}"
    );
    let target_sessions = rekey_sessions(&p.target_client().await).await;
    assert!(
        !target_sessions.is_empty() && target_sessions.iter().all(|(_, ssl)| *ssl),
        "the writer's sessions use TLS: {target_sessions:?}"
    );

    p.assert_verify_clean().await;
}

/// Runs `binary` with the environment variable `var` set to `value`; its exit code and
/// its one error line.
async fn error_with_env(
    p: &Pipeline,
    binary: &str,
    var: &'static str,
    value: String,
) -> (i32, String) {
    let mut env = p.env();
    env.retain(|(k, _)| *k != var);
    env.push((var, value));
    p.service_error(binary, env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_another_ca_or_no_tls_stops_the_service_with_one_line() {
    let p = tls_pipeline(true, false).await;
    let legacy_url = p.legacy.service_url(rekey_tests::pipeline::DB);
    let target_url = p.target.service_url(rekey_tests::pipeline::DB);
    let other_ca = |url: &str, pg: &Pg| {
        url.replace(
            &pg.ca_path().display().to_string(),
            &pg.other_ca_path().display().to_string(),
        )
    };

    let (code, line) = error_with_env(
        &p,
        "rekey-reader",
        "REKEY_SOURCE_URL",
        other_ca(&legacy_url, &p.legacy),
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        line.contains("source database")
            && line.contains("certificate")
            && line.contains("sslrootcert"),
        "{line}"
    );

    let (code, line) = error_with_env(
        &p,
        "rekey-writer",
        "REKEY_TARGET_URL",
        other_ca(&target_url, &p.target),
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        line.contains("target database")
            && line.contains("certificate")
            && line.contains("sslrootcert"),
        "{line}"
    );

    // Without TLS the server refuses the role: named, not retried.
    let plain = legacy_url.replace("sslmode=verify-full", "sslmode=disable");
    let (code, line) = error_with_env(&p, "rekey-reader", "REKEY_SOURCE_URL", plain).await;
    assert_ne!(code, 0);
    assert!(line.contains("no encryption"), "{line}");

    // A checking mode without a CA to check against is a configuration error.
    let no_ca = format!(
        "{}?sslmode=verify-full",
        legacy_url.split('?').next().unwrap()
    );
    let (code, line) = error_with_env(&p, "rekey-reader", "REKEY_SOURCE_URL", no_ca).await;
    assert_eq!(code, 2);
    assert!(
        line.contains("source.url") && line.contains("needs sslrootcert"),
        "{line}"
    );

    let slots: i64 = p
        .legacy_client()
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot is left holding WAL");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_through_a_broker_reachable_only_over_tls() {
    let mut p = tls_pipeline(false, true).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 7).await.expect("seed");
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let mut w = rekey_workload::Workload::new(8);
    for _ in 0..200 {
        w.step(&mut legacy).await.expect("workload step");
    }
    p.wait_backfilled().await;
    p.assert_converged().await;

    // What the services reached is a TLS endpoint: plain Kafka there gets no answer.
    let mut plain = TcpStream::connect(p.broker.bootstrap().replace("localhost", "127.0.0.1"))
        .await
        .expect("connect to the TLS front");
    let api_versions = [0u8, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0];
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(&api_versions).await.unwrap();
    let mut answer = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_exact(&mut answer)).await;
    // Either the front hangs up or it answers with a TLS alert record (0x15), not Kafka.
    assert!(
        !matches!(read, Ok(Ok(_))) || answer[0] == 0x15,
        "a plain-text Kafka request to the TLS front got an answer: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_ca_file_that_is_not_there_is_named() {
    let p = tls_pipeline(false, true).await;
    for binary in ["rekey-reader", "rekey-writer"] {
        let (code, line) = error_with_env(
            &p,
            binary,
            "REKEY_KAFKA_OPTION_SSL_CA_LOCATION",
            "/nonexistent/kafka-ca.pem".into(),
        )
        .await;
        assert_eq!(code, 2, "{line}");
        assert!(
            line.contains("ssl.ca.location") && line.contains("/nonexistent/kafka-ca.pem"),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_certificate_from_another_ca_stops_the_service_with_one_line() {
    let p = tls_pipeline(false, true).await;
    let other_ca = p.broker.certs().unwrap().other_ca.display().to_string();
    for binary in ["rekey-reader", "rekey-writer"] {
        let (code, line) = error_with_env(
            &p,
            binary,
            "REKEY_KAFKA_OPTION_SSL_CA_LOCATION",
            other_ca.clone(),
        )
        .await;
        assert_eq!(code, 2, "{line}");
        assert!(
            line.contains("certificate verify failed") && line.contains("ssl.ca.location"),
            "{line}"
        );
    }
    let slots: i64 = p
        .legacy_client()
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slots, 1,
        "the reader made its slot before it met the broker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_through_a_broker_that_requires_scram() {
    let (legacy, target, broker) = tokio::join!(Pg::start(), Pg::start(), Broker::start_scram());
    let mut p = Pipeline::assemble(
        legacy,
        target,
        broker,
        rekey_tests::pipeline::promptstudio_config(),
    )
    .await;
    // The password reaches the services as REKEY_KAFKA_OPTION_SASL_PASSWORD (from the
    // Secret in Kubernetes), never in the file.
    assert!(!std::fs::read_to_string(p.config_arg())
        .unwrap()
        .contains("scram-test-password"));
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 7).await.expect("seed");
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let mut w = rekey_workload::Workload::new(9);
    for _ in 0..100 {
        w.step(&mut legacy).await.expect("workload step");
    }
    p.wait_backfilled().await;
    p.assert_converged().await;

    // The broker refuses a client that does not authenticate.
    let admin: rdkafka::admin::AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", p.broker.bootstrap())
        .create()
        .expect("admin");
    let plain = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.brokers().len())
    })
    .await
    .unwrap();
    assert!(
        plain.is_err(),
        "an unauthenticated client got metadata: {plain:?}"
    );
}
