//! The topic keeps every change: rekey creates it with unlimited retention and the
//! replication and settings of the config, and refuses one that compacts.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rekey_tests::pipeline::promptstudio_config;
use rekey_tests::Pipeline;

fn admin(p: &Pipeline) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", p.broker.bootstrap())
        .create()
        .expect("admin")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_topic_rekey_creates_keeps_every_change_with_the_configured_replication() {
    let config = promptstudio_config().replace(
        "[kafka]\n",
        "[kafka]\nreplication_factor = 2\ntopic_options = { \"min.insync.replicas\" = \"2\" }\n",
    );
    let mut p = Pipeline::with_config(&config).await;
    p.start().await;
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'through it')")
        .await;
    p.assert_converged().await;
    // `[kafka.options]` is shared: each client takes the settings of its kind, so the
    // example's producer setting (`compression.type`) draws no warning from the writer.
    for service in [&p.reader, &p.writer] {
        let out = service.as_ref().unwrap().output();
        assert!(!out.contains("CONFWARN"), "{out}");
    }

    let topic = p.config().kafka.topic.clone();
    let admin = admin(&p);
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .expect("describe the topic");
    let config = described[0].as_ref().expect("the topic's configuration");
    let value = |name: &str| config.get(name).and_then(|e| e.value.clone());
    assert_eq!(
        value("retention.ms").as_deref(),
        Some("-1"),
        "{:?}",
        config.entries
    );
    assert_eq!(
        value("min.insync.replicas").as_deref(),
        Some("2"),
        "{:?}",
        config.entries
    );
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&topic), std::time::Duration::from_secs(5))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions();
    assert_eq!(partitions.len(), 1);
    assert_eq!(partitions[0].replicas().len(), 2, "replication factor");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_topic_stops_reader_and_writer_with_one_line() {
    let p = Pipeline::new().await;
    let topic = p.config().kafka.topic.clone();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let created = admin(&p)
        .create_topics([&new], &AdminOptions::new())
        .await
        .expect("create topic");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    for service in ["rekey-reader", "rekey-writer"] {
        let (code, line) = p.service_error(service, p.env()).await;
        assert_eq!(code, 2, "{line}");
        assert!(
            line.contains("cleanup.policy = compact") && line.contains(&topic),
            "{line}"
        );
    }
    let (_, high) = admin(&p)
        .inner()
        .fetch_watermarks(&topic, 0, std::time::Duration::from_secs(5))
        .expect("watermarks");
    assert_eq!(high, 0, "nothing was published into the compacted topic");
}
