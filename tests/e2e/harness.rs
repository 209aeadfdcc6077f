//! The test harness itself: servers start, answer, restart on the same port and data,
//! and child processes' output is captured.

use std::time::Duration;

use rekey_tests::{bin_path, free_port, wait_until, Broker, Pg, PgOptions, Service};

#[tokio::test]
async fn pg_starts_with_logical_wal_level_and_creates_databases() {
    let pg = Pg::start().await;
    let client = pg.connect("postgres").await;
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
    let row = client.query_one("SHOW TimeZone", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "UTC");

    pg.create_database("legacy").await;
    let legacy = pg.connect("legacy").await;
    let row = legacy
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "legacy");
    assert!(pg.url("legacy").ends_with(&format!(":{}/legacy", pg.port)));
}

#[tokio::test]
async fn pg_honours_wal_level_option() {
    let pg = Pg::start_with(PgOptions {
        wal_level: "replica",
        ..PgOptions::default()
    })
    .await;
    let client = pg.connect("postgres").await;
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "replica");
}

#[tokio::test]
async fn pg_restart_keeps_port_and_data() {
    let pg = Pg::start().await;
    let client = pg.connect("postgres").await;
    client
        .batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();

    pg.stop();
    assert!(
        tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
            .await
            .is_err(),
        "server still answers after stop"
    );

    pg.start_again();
    let client = pg.connect("postgres").await;
    let row = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
}

#[tokio::test]
async fn broker_accepts_connections_and_restarts_on_the_same_port() {
    let mut broker = Broker::start().await;
    assert_eq!(broker.bootstrap(), format!("127.0.0.1:{}", broker.port));
    tokio::net::TcpStream::connect(broker.bootstrap())
        .await
        .expect("broker accepts TCP");

    broker.kill();
    assert!(tokio::net::TcpStream::connect(broker.bootstrap())
        .await
        .is_err());

    broker.restart().await;
    tokio::net::TcpStream::connect(broker.bootstrap())
        .await
        .expect("restarted broker accepts TCP");
}

#[tokio::test]
async fn broker_starts_on_a_given_port() {
    let port = free_port();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    let broker = Broker::start_on(port).await;
    assert_eq!(broker.port, port);
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("broker accepts TCP");
}

#[tokio::test]
async fn service_output_is_captured_and_sigterm_stops_it() {
    let mut svc = Service::spawn(
        "/bin/sh",
        &[
            "-c",
            "echo \"out $GREETING\"; echo \"err $RUST_LOG\" >&2; exec sleep 60",
        ],
        &[("GREETING", "hello".to_string())],
    );
    assert!(
        svc.wait_for_output("out hello", Duration::from_secs(10))
            .await
    );
    assert!(
        svc.wait_for_output("err info", Duration::from_secs(10))
            .await
    );
    assert!(svc.is_running());

    svc.sigterm();
    let status = svc
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits on SIGTERM");
    assert!(!status.success());
    assert!(!svc.is_running());
}

#[tokio::test]
async fn service_kill9_and_exit_status() {
    let mut svc = Service::spawn("/bin/sh", &["-c", "exec sleep 60"], &[]);
    assert!(svc.pid() > 0);
    svc.kill9();
    assert!(!svc.is_running());

    let mut svc = Service::spawn("/bin/sh", &["-c", "echo done; exit 3"], &[]);
    let status = svc.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert_eq!(status.code(), Some(3));
    assert_eq!(svc.output(), "done\n");
}

#[tokio::test]
async fn wait_until_returns_when_the_condition_holds() {
    let mut n = 0;
    wait_until("three polls", Duration::from_secs(5), || {
        n += 1;
        let done = n >= 3;
        async move { done }
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "timed out after 0.3s waiting for never")]
async fn wait_until_panics_after_the_timeout() {
    wait_until("never", Duration::from_millis(300), || async { false }).await;
}

#[test]
#[should_panic(expected = "binary no-such-binary not built: run `cargo build --bins`")]
fn bin_path_names_the_missing_binary() {
    bin_path("no-such-binary");
}
