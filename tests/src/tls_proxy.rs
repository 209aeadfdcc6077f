//! A TLS front for the test broker. tansu 0.6.0 cannot serve TLS itself, so the harness
//! terminates TLS here (rustls, the test CA's certificate for `localhost`) and forwards
//! each connection to tansu's plain port; tansu advertises this proxy's address, so every
//! connection a Kafka client makes, bootstrap and broker alike, goes through TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Accepts TLS on `port` until dropped.
pub struct TlsProxy {
    pub port: u16,
    task: JoinHandle<()>,
}

impl TlsProxy {
    /// Listens on `127.0.0.1:listener.port` and forwards to `127.0.0.1:upstream`.
    pub fn start(
        listener: std::net::TcpListener,
        cert: &Path,
        key: &Path,
        upstream: u16,
    ) -> TlsProxy {
        let port = listener.local_addr().expect("proxy address").port();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|c| c.collect())
            .expect("read the server certificate");
        let key = PrivateKeyDer::from_pem_file(key).expect("read the server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return; // a client that does not trust us: its error is the test's
                    };
                    let Ok(mut broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        TlsProxy { port, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
