//! `wss://` support: a rustls server configuration built from PEM files.
//!
//! Operators usually have a certificate chain and a private key as PEM files
//! (from an ACME client or their own CA), so that is the input here. The
//! result is an `Arc<rustls::ServerConfig>` for a [`TlsAcceptor`]; the TLS
//! stream it yields is then served like a plain TCP stream. The config uses an
//! explicitly chosen crypto provider (*ring*) instead of rustls's
//! process-global default, so nothing has to be installed at startup and
//! other crates in the same process cannot change or conflict with it. ALPN
//! advertises only `http/1.1`, because the WebSocket handshake is an HTTP/1.1
//! upgrade. Errors say which file was being read and what was wrong with it,
//! since these mistakes are made when deploying and should be easy to fix.
//!
//! ```no_run
//! use std::path::Path;
//! use wshub::tls::{load_server_config, TlsAcceptor};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = load_server_config(Path::new("cert.pem"), Path::new("key.pem"))?;
//! let acceptor = TlsAcceptor::from(config);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! loop {
//!     let (tcp, peer) = listener.accept().await?;
//!     let acceptor = acceptor.clone();
//!     tokio::spawn(async move {
//!         match acceptor.accept(tcp).await {
//!             // `tls` is a `wshub::tls::TlsStream<TcpStream>`: serve the
//!             // HTTP upgrade and the WebSocket on it as on a plain TCP stream.
//!             Ok(tls) => drop(tls),
//!             Err(e) => eprintln!("TLS handshake with {peer} failed: {e}"),
//!         }
//!     });
//! }
//! # }
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use tokio_rustls::{server::TlsStream, TlsAcceptor};

/// The ALPN protocol identifier the server configuration advertises.
///
/// A client offering ALPN without `http/1.1` is rejected during the handshake;
/// clients that do not use ALPN are accepted.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Which of the two PEM inputs an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemKind {
    /// The certificate chain.
    Certificate,
    /// The private key.
    PrivateKey,
}

impl fmt::Display for PemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemKind::Certificate => "certificate",
            PemKind::PrivateKey => "private key",
        })
    }
}

/// Where PEM data came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemSource {
    /// A file, as passed to [`load_server_config`].
    File(PathBuf),
    /// Bytes passed to [`server_config_from_pem`].
    Memory,
}

impl fmt::Display for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => write!(f, "file {}", path.display()),
            PemSource::Memory => f.write_str("in-memory PEM"),
        }
    }
}

/// Errors from building a TLS server configuration.
///
/// The messages name the file (or say "in-memory PEM") and the problem.
/// The underlying error is part of the message rather than
/// [`source`](std::error::Error::source), so it is not printed twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, unreadable, a directory, ...).
    #[error("cannot read {kind} file {}: {error}", path.display())]
    Read {
        /// Which input the file was meant to hold.
        kind: PemKind,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The PEM data is malformed (for example broken base64 in a section).
    #[error("malformed PEM in {kind} {origin}: {error}")]
    MalformedPem {
        /// Which input was malformed.
        kind: PemKind,
        /// Where it came from.
        origin: PemSource,
        /// What the PEM parser reported.
        error: io::Error,
    },
    /// No `CERTIFICATE` section was found.
    #[error("no certificate found in {origin} (expected a PEM \"CERTIFICATE\" section)")]
    NoCertificate {
        /// Where the certificate chain was expected.
        origin: PemSource,
    },
    /// No supported private key section was found.
    #[error(
        "no private key found in {origin} (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" \
         or \"EC PRIVATE KEY\" section; encrypted keys are not supported)"
    )]
    NoPrivateKey {
        /// Where the key was expected.
        origin: PemSource,
    },
    /// The private key does not belong to the (first) certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// Where the certificate chain came from.
        cert: PemSource,
        /// Where the key came from.
        key: PemSource,
    },
    /// rustls rejected a client configuration.
    #[error("TLS client configuration rejected: {0}")]
    Config(rustls::Error),
    /// A CA certificate could not be added to the client's trust store.
    #[error("invalid CA certificate in {origin}: {error}")]
    InvalidCa {
        /// Where the CA certificates came from.
        origin: PemSource,
        /// The rustls error.
        error: rustls::Error,
    },
    /// rustls rejected the certificate or key (for example an unsupported key
    /// type or a certificate it cannot parse).
    #[error("TLS configuration rejected (certificate {cert}, private key {key}): {error}")]
    Rustls {
        /// Where the certificate chain came from.
        cert: PemSource,
        /// Where the key came from.
        key: PemSource,
        /// The rustls error.
        error: rustls::Error,
    },
}

/// Builds a server configuration from a PEM certificate chain file and a PEM
/// private key file.
///
/// The certificate file holds the end-entity certificate first, followed by
/// any intermediates; non-certificate sections are ignored, so a combined
/// certificate-and-key file can be passed as both arguments. The key file's
/// first key is used: PKCS#8 (`PRIVATE KEY`), PKCS#1 RSA (`RSA PRIVATE KEY`)
/// or SEC1 EC (`EC PRIVATE KEY`). The configuration uses the *ring* provider
/// with rustls's safe default protocol versions (TLS 1.2 and 1.3), requests no
/// client certificate and advertises ALPN `http/1.1` ([`ALPN_HTTP_1_1`]).
///
/// The files are read with blocking I/O; call this at startup (or via
/// `tokio::task::spawn_blocking` when reloading).
///
/// # Errors
///
/// [`TlsError::Read`] if a file cannot be read, [`TlsError::MalformedPem`],
/// [`TlsError::NoCertificate`] or [`TlsError::NoPrivateKey`] if its content is
/// not what is expected, [`TlsError::KeyMismatch`] if the key does not belong
/// to the certificate and [`TlsError::Rustls`] for anything else rustls
/// rejects.
pub fn load_server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read_file(PemKind::Certificate, cert_path)?;
    let key_pem = read_file(PemKind::PrivateKey, key_path)?;
    build(
        &cert_pem,
        PemSource::File(cert_path.to_owned()),
        &key_pem,
        PemSource::File(key_path.to_owned()),
    )
}

/// Builds a server configuration from PEM data in memory; otherwise the same
/// as [`load_server_config`].
///
/// # Errors
///
/// As [`load_server_config`], without [`TlsError::Read`].
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    build(cert_pem, PemSource::Memory, key_pem, PemSource::Memory)
}

fn read_file(kind: PemKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        kind,
        path: path.to_owned(),
        error,
    })
}

/// The certificates of a PEM file: at least one, or an error naming `origin`.
fn parse_certs(pem: &[u8], origin: &PemSource) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|error| TlsError::MalformedPem {
            kind: PemKind::Certificate,
            origin: origin.clone(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.clone(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file, or an error naming `origin`.
fn parse_key(pem: &[u8], origin: &PemSource) -> Result<PrivateKeyDer<'static>, TlsError> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsError::NoPrivateKey {
            origin: origin.clone(),
        }),
        Err(error) => Err(TlsError::MalformedPem {
            kind: PemKind::PrivateKey,
            origin: origin.clone(),
            error,
        }),
    }
}

/// Reads and parses the two PEM files as [`load_server_config`] does, without
/// building a configuration: the certificate chain and the private key (for
/// [`crate::cert_reload`], which builds a `CertifiedKey` from them).
pub(crate) fn load_pem_files(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_pem = read_file(PemKind::Certificate, cert_path)?;
    let key_pem = read_file(PemKind::PrivateKey, key_path)?;
    let certs = parse_certs(&cert_pem, &PemSource::File(cert_path.to_owned()))?;
    let key = parse_key(&key_pem, &PemSource::File(key_path.to_owned()))?;
    Ok((certs, key))
}

fn build(
    cert_pem: &[u8],
    cert_origin: PemSource,
    key_pem: &[u8],
    key_origin: PemSource,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = parse_certs(cert_pem, &cert_origin)?;
    let key = parse_key(key_pem, &key_origin)?;

    let rustls_error = |error: rustls::Error| match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert_origin.clone(),
                key: key_origin.clone(),
            }
        }
        error => TlsError::Rustls {
            cert: cert_origin.clone(),
            key: key_origin.clone(),
            error,
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls_error)?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration (for `wss://` with [`crate::client`]) that trusts the
/// CA certificates in the PEM file at `ca_path` — and nothing else: wshub does
/// not bundle public roots, because its clients (the CLI, the load generator,
/// tests) talk to servers whose certificate the operator has at hand.
pub fn client_config_with_ca(ca_path: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let pem = read_file(PemKind::Certificate, ca_path)?;
    client_config_from_ca_pem(&pem, PemSource::File(ca_path.to_owned()))
}

/// [`client_config_with_ca`] from PEM bytes in memory.
pub fn client_config_from_ca_pem(
    ca_pem: &[u8],
    origin: PemSource,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let certs = parse_certs(ca_pem, &origin)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|error| TlsError::InvalidCa {
            origin: origin.clone(),
            error,
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::InvalidCa { origin, error })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that accepts ANY server certificate (signatures are
/// still checked, identities are not). Only for testing against self-signed
/// servers, e.g. `wshub connect --insecure`; it offers no protection against an
/// active attacker.
pub fn insecure_client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyCert(Arc::clone(&provider)));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Certificate verifier for [`insecure_client_config`].
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "wshub-tls-{name}-{}-{n}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, file: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(file);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed() -> rcgen::CertifiedKey {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
    }

    fn ring() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn client_config(trusted: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Runs a TLS server on 127.0.0.1 with `server`, connects with a client
    /// trusting `trusted` for `name`, and exchanges a few bytes both ways.
    async fn handshake_and_echo(
        server: Arc<rustls::ServerConfig>,
        trusted: &CertificateDer<'static>,
        name: rustls::pki_types::ServerName<'static>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls: TlsStream<tokio::net::TcpStream> = acceptor.accept(tcp).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_HTTP_1_1));
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            tls.write_all(b"pong").await.unwrap();
            tls.shutdown().await.unwrap();
        });

        let connector = tokio_rustls::TlsConnector::from(client_config(trusted));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"pong");
        server_task.await.unwrap();
    }

    #[tokio::test]
    async fn loads_pem_files_and_serves_tls() {
        let ck = self_signed();
        let dir = TempDir::new("ok");
        let cert = dir.write("cert.pem", ck.cert.pem().as_bytes());
        let key = dir.write("key.pem", ck.key_pair.serialize_pem().as_bytes());
        let config = load_server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let der = ck.cert.der().clone();
        let localhost = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        handshake_and_echo(config.clone(), &der, localhost).await;
        let ip =
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        handshake_and_echo(config, &der, ip).await;
    }

    #[tokio::test]
    async fn sec1_ec_key_and_combined_pem_from_memory() {
        let ck = self_signed();
        let sec1 = pem(
            "EC PRIVATE KEY",
            pkcs8_inner_key(&ck.key_pair.serialize_der()),
        );
        let config = server_config_from_pem(ck.cert.pem().as_bytes(), sec1.as_bytes()).unwrap();
        let localhost = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        handshake_and_echo(config, ck.cert.der(), localhost).await;

        // One file holding both the key and the certificate.
        let combined = format!("{}\n{}", ck.key_pair.serialize_pem(), ck.cert.pem());
        server_config_from_pem(combined.as_bytes(), combined.as_bytes()).unwrap();
    }

    #[test]
    fn pkcs1_rsa_section_is_recognised_as_a_key() {
        // No RSA key generation is available here (ring), so only check that
        // an `RSA PRIVATE KEY` section reaches rustls (which then rejects the
        // bogus key) instead of being reported as missing.
        let ck = self_signed();
        let bogus = pem("RSA PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        let err = server_config_from_pem(ck.cert.pem().as_bytes(), bogus.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::Rustls { .. }), "{err:?}");
    }

    #[test]
    fn missing_files() {
        let ck = self_signed();
        let dir = TempDir::new("missing");
        let cert = dir.write("cert.pem", ck.cert.pem().as_bytes());
        let key = dir.write("key.pem", ck.key_pair.serialize_pem().as_bytes());
        let nowhere = dir.0.join("nope.pem");

        let err = load_server_config(&nowhere, &key).unwrap_err();
        match &err {
            TlsError::Read { kind, path, error } => {
                assert_eq!(*kind, PemKind::Certificate);
                assert_eq!(path, &nowhere);
                assert_eq!(error.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("certificate") && msg.contains("nope.pem"),
            "{msg}"
        );

        let err = load_server_config(&cert, &nowhere).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Read {
                    kind: PemKind::PrivateKey,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("private key"), "{err}");
    }

    #[test]
    fn empty_files() {
        let ck = self_signed();
        let dir = TempDir::new("empty");
        let cert = dir.write("cert.pem", ck.cert.pem().as_bytes());
        let key = dir.write("key.pem", ck.key_pair.serialize_pem().as_bytes());
        let empty = dir.write("empty.pem", b"");

        let err = load_server_config(&empty, &key).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCertificate { origin: PemSource::File(p) } if *p == empty),
            "{err:?}"
        );
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let err = load_server_config(&cert, &empty).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoPrivateKey { origin: PemSource::File(p) } if *p == empty),
            "{err:?}"
        );
        assert!(err.to_string().contains("empty.pem"), "{err}");

        // A key file that only holds a certificate has no key either, and a
        // certificate file that only holds a key has no certificate.
        let err = load_server_config(&cert, &cert).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
        let err = load_server_config(&key, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");

        let err = server_config_from_pem(b"not pem at all", b"").unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NoCertificate {
                    origin: PemSource::Memory
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("in-memory PEM"), "{err}");
    }

    #[test]
    fn malformed_pem() {
        let ck = self_signed();
        let broken = "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        let err = server_config_from_pem(broken.as_bytes(), ck.key_pair.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::MalformedPem {
                    kind: PemKind::Certificate,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn key_does_not_match_certificate() {
        let a = self_signed();
        let b = self_signed();
        let dir = TempDir::new("mismatch");
        let cert = dir.write("a-cert.pem", a.cert.pem().as_bytes());
        let key = dir.write("b-key.pem", b.key_pair.serialize_pem().as_bytes());
        let err = load_server_config(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("a-cert.pem")
                && msg.contains("b-key.pem")
                && msg.contains("does not match"),
            "{msg}"
        );
    }

    /// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo`, i.e. the
    /// algorithm-specific key (SEC1 `ECPrivateKey` for EC keys).
    fn pkcs8_inner_key(pkcs8: &[u8]) -> &[u8] {
        fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
            let tag = input[0];
            let (len, header) = match input[1] {
                n if n < 0x80 => (usize::from(n), 2),
                0x81 => (usize::from(input[2]), 3),
                0x82 => ((usize::from(input[2]) << 8) | usize::from(input[3]), 4),
                n => panic!("unsupported DER length byte {n:#x}"),
            };
            (tag, &input[header..header + len], &input[header + len..])
        }
        let (tag, info, _) = tlv(pkcs8);
        assert_eq!(tag, 0x30, "PrivateKeyInfo SEQUENCE");
        let (tag, _version, rest) = tlv(info);
        assert_eq!(tag, 0x02, "version INTEGER");
        let (tag, _algorithm, rest) = tlv(rest);
        assert_eq!(tag, 0x30, "AlgorithmIdentifier SEQUENCE");
        let (tag, key, _) = tlv(rest);
        assert_eq!(tag, 0x04, "privateKey OCTET STRING");
        key
    }

    /// PEM-encodes `der` under `label`.
    fn pem(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
