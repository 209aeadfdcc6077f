//! Connections to PostgreSQL, in plain text or TLS as the URL says, the way libpq reads it.
//!
//! Managed PostgreSQL usually insists on TLS (RDS for PostgreSQL 15 turns `rds.force_ssl`
//! on), so `source.url` and `target.url` take libpq's TLS parameters, in a URL's query
//! (`postgres://u@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/rekey/ca.pem`)
//! or as `key=value` words:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked; checked like `verify-ca` when `sslrootcert` is given (as libpq) |
//! | `verify-ca` | always | signed by a CA in `sslrootcert` |
//! | `verify-full` | always | that, and issued for the URL's host name |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the public web CAs
//! compiled into rekey (Mozilla's list); the checking modes need it, since the usual
//! database CA (RDS's, a company's own) is in no public list. `sslcert` and `sslkey`
//! (PEM) authenticate the client with a certificate. `allow`, the libpq mode that tries
//! plain text first, is refused rather than read as something else.
//!
//! The same settings apply to the SQL connections (tokio-postgres, with the connector
//! below) and to the reader's replication stream (pgwire-replication's own rustls
//! connector, given the same mode and files). A certificate that does not verify is a
//! fatal error naming the setting to change, not something to retry forever.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::error::Error;

/// `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err("sslmode=allow (plain text first) is not supported: \
                            use prefer, require, verify-ca or verify-full"
                    .into())
            }
            other => {
                return Err(format!(
                    "sslmode={other} is not a mode: use disable, prefer, require, \
                     verify-ca or verify-full"
                ))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the public web CAs compiled in.
    System,
}

/// The TLS part of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Tls {
    /// Whether the server's certificate chain is checked (libpq: `require` with a root
    /// certificate checks like `verify-ca`).
    fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        }
    }
}

/// A PostgreSQL URL read: what tokio-postgres understands, and the TLS settings.
#[derive(Debug, Clone)]
pub struct PgUrl {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
}

/// The TLS parameters this module reads out of a URL before tokio-postgres sees it
/// (tokio-postgres knows only three modes and no certificate files).
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PgUrl {
    /// Reads a URL (`postgres://…` or libpq `key=value` words). The error says which
    /// setting is wrong, without the URL (it can hold a password).
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let (rest, params) = split_tls_params(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        let mut tls = Tls {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            client_key: None,
        };
        for (key, value) in params {
            match key.as_str() {
                "sslmode" => tls.mode = SslMode::parse(&value)?,
                "sslrootcert" if value == "system" => tls.root_cert = Some(RootCert::System),
                "sslrootcert" => tls.root_cert = Some(RootCert::File(value.into())),
                "sslcert" => tls.client_cert = Some(value.into()),
                "sslkey" => tls.client_key = Some(value.into()),
                _ => unreachable!("split_tls_params returns only TLS_PARAMS"),
            }
        }
        if matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.root_cert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert: the PEM file of the CA that signed the \
                 server's certificate (or sslrootcert=system for the public web CAs)",
                tls.mode.as_str()
            ));
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err("sslcert and sslkey go together: give both or neither".into());
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgUrl { config, tls })
    }

    /// The host name TLS checks the certificate against (the first host).
    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }

    /// The rustls configuration for this URL's settings: reads the certificate files.
    /// `None` when the URL turns TLS off.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        if self.tls.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match &self.tls.root_cert {
            Some(RootCert::File(path)) => {
                let certs = read_certs(path, "sslrootcert")?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "sslrootcert {}: no usable CA certificate in it",
                        path.display()
                    ));
                }
            }
            Some(RootCert::System) | None => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
        let roots = Arc::new(roots);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.tls.verifies_chain() {
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
            if self.tls.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        } else {
            Arc::new(Unchecked(provider))
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.tls.client_cert, &self.tls.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(Arc::new(config)))
    }

    /// The same settings for the replication stream's client.
    pub fn replication_tls(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::SslMode as M;
        let mode = match self.tls.mode {
            SslMode::Disable => M::Disable,
            SslMode::Prefer => M::Prefer,
            SslMode::Require if self.tls.root_cert.is_some() => M::VerifyCa,
            SslMode::Require => M::Require,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyFull,
        };
        pgwire_replication::TlsConfig {
            mode,
            ca_pem_path: match &self.tls.root_cert {
                Some(RootCert::File(p)) => Some(p.clone()),
                Some(RootCert::System) | None => None,
            },
            // pgwire-replication refuses `verify-full` to an IP address unless told the
            // name to check; the address itself is that name (its IP SAN), as libpq.
            sni_hostname: (self.tls.mode == SslMode::VerifyFull
                && self.host().parse::<std::net::IpAddr>().is_ok())
            .then(|| self.host()),
            client_cert_pem_path: self.tls.client_cert.clone(),
            client_key_pem_path: self.tls.client_key.clone(),
        }
    }
}

/// Which database a connection is for, so its errors say so.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Source,
    Target,
}

impl Side {
    /// This side's URL in the configuration.
    pub fn url(self, config: &Config) -> &str {
        match self {
            Side::Source => config.source.url.expose(),
            Side::Target => config.target.url.expose(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }

    /// The crate error for a failure on this side.
    pub fn error(self, context: &str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.to_string();
        move |source| match self {
            Side::Source => Error::Source { context, source },
            Side::Target => Error::Target { context, source },
        }
    }
}

/// Connects to one side's database with tokio-postgres, in TLS as its URL says, and
/// drives the connection in a task. `context` is what the error says was being done.
pub async fn connect(config: &Config, side: Side, context: &str) -> Result<Client, Error> {
    let field = format!("{}.url", side.name());
    let parsed =
        PgUrl::parse(side.url(config)).map_err(|e| Error::Config(format!("{field}: {e}")))?;
    let tls = parsed
        .client_config()
        .map_err(|e| Error::Config(format!("{field}: {e}")))?;
    let what = side.name();
    let client = match tls {
        None => {
            let (client, conn) = parsed
                .config
                .connect(NoTls)
                .await
                .map_err(side.error(context))?;
            tokio::spawn(drive(conn, what));
            client
        }
        Some(config) => {
            let connector = RustlsConnect {
                config,
                tls: parsed.tls.clone(),
            };
            let (client, conn) = parsed
                .config
                .connect(connector)
                .await
                .map_err(side.error(context))?;
            tokio::spawn(drive(conn, what));
            client
        }
    };
    Ok(client)
}

async fn drive<F: Future<Output = Result<(), tokio_postgres::Error>>>(conn: F, what: &str) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, connection = what, "connection closed");
    }
}

fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting} {}: no certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Takes the TLS parameters out of a URL or `key=value` string: the rest, for
/// tokio-postgres, and the parameters, percent-decoded.
fn split_tls_params(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut params = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            if TLS_PARAMS.contains(&key.as_str()) {
                params.push((key, percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    // libpq `key=value` words; values may be single-quoted with `\` escapes.
    let mut rest = String::new();
    let mut chars = url.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(format!(
                "not a valid PostgreSQL URL: `{key}` has no `=value`"
            ));
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|&(_, c)| c == '\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err("not a valid PostgreSQL URL: unclosed quote".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("not a valid PostgreSQL URL: unclosed quote".into()),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let end = chars.peek().map_or(url.len(), |&(i, _)| i);
        if TLS_PARAMS.contains(&key.as_str()) {
            params.push((key, value));
        } else {
            rest.push_str(&url[start..end]);
            rest.push(' ');
        }
    }
    Ok((rest.trim_end().to_string(), params))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "not a valid PostgreSQL URL: a bad %-escape".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not a valid PostgreSQL URL: not UTF-8".into())
}

/// Whether a connection error is a TLS set-up that the server or its certificate refuses
/// (a certificate that does not verify, no TLS where the URL requires it): waiting does
/// not change it.
pub fn is_tls_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let refused = c
            .downcast_ref::<Refused>()
            .and_then(|r| r.source.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if refused || c.to_string() == "server does not support TLS" {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A TLS handshake that failed, with the setting that decides it.
#[derive(Debug)]
struct Refused {
    hint: &'static str,
    source: io::Error,
}

impl Refused {
    /// What the server's certificate must be under `tls`, to say after a refusal.
    fn hint(tls: &Tls) -> &'static str {
        match tls.mode {
            SslMode::VerifyFull => {
                " (sslmode=verify-full: the certificate must be signed by a CA in sslrootcert \
                 and name the URL's host)"
            }
            _ if tls.verifies_chain() => " (the certificate must be signed by a CA in sslrootcert)",
            _ => "",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.source, self.hint)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

/// tokio-postgres's TLS connector over rustls.
#[derive(Clone)]
struct RustlsConnect {
    config: Arc<ClientConfig>,
    tls: Tls,
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, io::Error> {
        let name = ServerName::try_from(domain.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{domain}` is not a host name TLS can check"),
            )
        })?;
        Ok(RustlsConnectOne {
            config: self.config.clone(),
            hint: Refused::hint(&self.tls),
            name,
        })
    }
}

struct RustlsConnectOne {
    config: Arc<ClientConfig>,
    hint: &'static str,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = Refused;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, Refused>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
                .map_err(|source| Refused {
                    hint: self.hint,
                    source,
                })
        })
    }
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding, as libpq's default `channel_binding=prefer`
        // falls back to.
        ChannelBinding::none()
    }
}

/// `sslmode` `prefer` and `require` without a root certificate: encrypted, any
/// certificate accepted (libpq's meaning), its handshake signatures still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_come_out_of_a_url_and_the_rest_goes_to_tokio_postgres() {
        let u = PgUrl::parse(
            "postgres://app:pw@db.example.com:6543/shop?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(u.tls.mode, SslMode::VerifyFull);
        assert_eq!(u.tls.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(u.host(), "db.example.com");
        assert_eq!(u.config.get_ports(), &[6543]);
        assert_eq!(u.config.get_dbname(), Some("shop"));
        assert_eq!(u.config.get_application_name(), Some("x"));
        assert_eq!(
            u.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn tls_parameters_come_out_of_key_value_words() {
        let u = PgUrl::parse(
            "host=db.internal port=5433 password='a b\\'c' sslmode=require sslrootcert=system user=app",
        )
        .unwrap();
        assert_eq!(u.tls.mode, SslMode::Require);
        assert_eq!(u.tls.root_cert, Some(RootCert::System));
        assert!(
            u.tls.verifies_chain(),
            "require with a root certificate checks the chain"
        );
        assert_eq!(u.config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(u.config.get_user(), Some("app"));
        assert_eq!(u.config.get_ports(), &[5433]);
    }

    #[test]
    fn the_default_is_prefer_without_checking_as_libpq() {
        let u = PgUrl::parse("postgres://u@h/d").unwrap();
        assert_eq!(u.tls.mode, SslMode::Prefer);
        assert!(!u.tls.verifies_chain());
        assert_eq!(
            u.replication_tls().mode,
            pgwire_replication::SslMode::Prefer
        );
        assert!(u.client_config().unwrap().is_some());
        let off = PgUrl::parse("postgres://u@h/d?sslmode=disable").unwrap();
        assert!(off.client_config().unwrap().is_none());
        assert_eq!(
            off.replication_tls().mode,
            pgwire_replication::SslMode::Disable
        );
    }

    #[test]
    fn bad_tls_settings_are_named() {
        let err = |url: &str| PgUrl::parse(url).unwrap_err();
        assert!(err("postgres://u@h/d?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(err("postgres://u@h/d?sslmode=allow").contains("sslmode=allow"));
        assert!(err("postgres://u@h/d?sslmode=strict").contains("sslmode=strict is not a mode"));
        assert!(err("postgres://u@h/d?sslcert=/c.pem").contains("sslcert and sslkey"));
        let missing =
            PgUrl::parse("postgres://u:secret@h/d?sslmode=verify-ca&sslrootcert=/no/such.pem")
                .unwrap()
                .client_config()
                .unwrap_err();
        assert!(missing.starts_with("sslrootcert /no/such.pem"), "{missing}");
        assert!(!missing.contains("secret"));
    }
}
