//! TLS certificate hot reload: serve a certificate from PEM files and switch
//! to a renewed one without restarting or dropping connections.
//!
//! Certificates from ACME (Let's Encrypt) live 90 days or less and are renewed
//! on disk by a separate client, so a long-running hub must pick up the new
//! files by itself. [`ReloadingCert`] is a rustls certificate resolver holding
//! the current certificate; the [`rustls::ServerConfig`] from
//! [`ReloadingCert::server_config`] asks it on every handshake, so a reload
//! affects the next handshake and never an established connection.
//!
//! Two ways to trigger a reload, both safe to combine:
//!
//! * [`ReloadingCert::reload`], e.g. from a `SIGHUP` handler (`systemctl
//!   reload`, or the ACME client's deploy hook).
//! * [`ReloadingCert::spawn_watcher`], which polls the two files' metadata
//!   (length, modification time and, on Unix, device and inode) and reloads
//!   when it changes. Polling needs no platform file-notification API, works
//!   through symlinks swapped by certbot and on network filesystems, and
//!   costs two `stat` calls per interval.
//!
//! A reload that fails (a half-written file, a key that does not match the
//! certificate, garbage) changes nothing: the previous certificate keeps
//! being served, and the error says what is wrong with which file.
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//! use wshub::cert_reload::ReloadingCert;
//! use wshub::tls::TlsAcceptor;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cert = ReloadingCert::load(Path::new("cert.pem"), Path::new("key.pem"))?;
//! let _watcher = cert.spawn_watcher(Duration::from_secs(60));
//! let acceptor = TlsAcceptor::from(cert.server_config());
//! // ... accept TCP connections and `acceptor.accept(tcp)` them as with
//! // `wshub::tls::load_server_config`.
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::{self, PemSource, TlsError, ALPN_HTTP_1_1};

/// What the watcher compares to notice that a file changed without reading
/// it. The inode catches replacement by rename (what ACME clients do) even
/// within the filesystem's timestamp granularity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        // `metadata` follows symlinks, so a swapped symlink target counts as
        // a change too.
        let meta = std::fs::metadata(path).ok()?;
        let (dev, ino) = dev_ino(&meta);
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev,
            ino,
        })
    }
}

#[cfg(unix)]
fn dev_ino(meta: &Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn dev_ino(_meta: &Metadata) -> (u64, u64) {
    (0, 0)
}

/// The stamps of the certificate file and the key file (`None` for a file
/// that could not be inspected).
type Stamps = [Option<FileStamp>; 2];

/// A rustls certificate resolver serving the certificate from two PEM files,
/// reloadable at run time. Share it as an `Arc`.
///
/// Resolving (once per TLS handshake) takes a read lock and clones an `Arc`;
/// a reload builds the new certificate outside the lock and only swaps the
/// `Arc` under the write lock, so handshakes never wait for file I/O.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The part of the server configuration that does not depend on the
    /// certificate, validated once in [`ReloadingCert::load`] so that
    /// [`ReloadingCert::server_config`] cannot fail.
    builder: rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps as of the last successful (re)load, taken before
    /// reading them: a change racing with the read then shows up as a
    /// difference on the next poll instead of being missed. The lock also
    /// serializes reloads, so a slower, older read never overwrites a newer
    /// certificate.
    loaded: Mutex<Stamps>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.certificate();
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("chain_len", &current.cert.len())
            .field(
                "not_after",
                &current.cert.first().and_then(|c| not_after(c.as_ref())),
            )
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the certificate chain at `cert` and the private key at `key`
    /// (PEM, as for [`tls::load_server_config`]: end-entity certificate
    /// first, then intermediates; a PKCS#8, PKCS#1 or SEC1 key) and remembers
    /// the paths for later reloads. Uses the *ring* provider like
    /// [`tls::load_server_config`].
    ///
    /// Reads the files with blocking I/O; call it at startup.
    ///
    /// # Errors
    ///
    /// The same [`TlsError`]s as [`tls::load_server_config`].
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rustls {
                cert: PemSource::File(cert.to_owned()),
                key: PemSource::File(key.to_owned()),
                error,
            })?;
        let stamps = [FileStamp::of(cert), FileStamp::of(key)];
        let certified = read_certified_key(cert, key, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider,
            builder,
            current: RwLock::new(Arc::new(certified)),
            loaded: Mutex::new(stamps),
        }))
    }

    /// Re-reads both files and serves the certificate in them from the next
    /// handshake on.
    ///
    /// Returns `Ok(true)` when the certificate chain changed and `Ok(false)`
    /// when the files hold the chain already served (nothing is swapped
    /// then). Uses blocking I/O; from async code, call it through
    /// `tokio::task::spawn_blocking` if a few small file reads on the
    /// runtime thread matter.
    ///
    /// # Errors
    ///
    /// As [`ReloadingCert::load`]. On error the certificate served so far
    /// stays in place.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut loaded = self.lock_loaded();
        let stamps = self.stamps();
        let certified = read_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *loaded = stamps;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.cert == certified.cert {
            return Ok(false);
        }
        *current = Arc::new(certified);
        Ok(true)
    }

    /// The certificate chain and key currently served.
    pub fn certificate(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a complete `Arc` (the write is a single
        // assignment), so it is safe to keep using it.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A server configuration that takes its certificate from `self` on
    /// every handshake: the *ring* provider, TLS 1.2 and 1.3, no client
    /// certificates, ALPN `http/1.1` — the same as
    /// [`tls::load_server_config`], except that the certificate can change.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let resolver: Arc<dyn ResolvesServerCert> = Arc::clone(self) as _;
        let mut config = self
            .builder
            .clone()
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Arc::new(config)
    }

    /// Spawns a task that checks every `interval` whether the certificate or
    /// key file changed (length, modification time, or — on Unix — the file
    /// itself, when replaced by a rename) and then [`reload`](Self::reload)s.
    ///
    /// A successful reload is logged with `tracing::info!` (with the new
    /// certificate's expiry), a failure with `tracing::error!` and the
    /// reason; the old certificate keeps being served, and the files are
    /// tried again when they change again (so a broken file is reported
    /// once, not every interval). Renewal tools that write the two files one
    /// after the other may cause one logged mismatch between the writes,
    /// healed by the next poll.
    ///
    /// The task holds only a weak reference: it ends by itself once every
    /// other `Arc` to `self` (including server configurations) is dropped,
    /// or when the returned handle is aborted. An `interval` below 1 ms is
    /// treated as 1 ms. Files are inspected and read on tokio's blocking
    /// pool.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick completes at once; the files were just loaded.
            ticker.tick().await;
            let mut failed: Option<Stamps> = None;
            loop {
                ticker.tick().await;
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let previous = failed.clone();
                let check = tokio::task::spawn_blocking(move || this.check_files(previous));
                match check.await {
                    Ok(next) => failed = next,
                    // The check panicked or the runtime is shutting down.
                    Err(error) => {
                        tracing::error!(%error, "TLS certificate file check failed");
                    }
                }
            }
        })
    }

    /// One poll of the watcher: reloads if the files' stamps differ from the
    /// loaded ones and from the last failed attempt (`failed`). Returns the
    /// new value for `failed`.
    fn check_files(&self, failed: Option<Stamps>) -> Option<Stamps> {
        let stamps = self.stamps();
        if *self.lock_loaded() == stamps || failed.as_ref() == Some(&stamps) {
            return failed;
        }
        match self.reload() {
            Ok(true) => {
                let certificate = self.certificate();
                let expires = certificate
                    .cert
                    .first()
                    .and_then(|c| not_after(c.as_ref()))
                    .unwrap_or_else(|| "unknown".to_owned());
                tracing::info!(
                    cert = %self.cert_path.display(),
                    not_after = %expires,
                    "TLS certificate reloaded"
                );
                None
            }
            Ok(false) => {
                tracing::debug!(
                    cert = %self.cert_path.display(),
                    "TLS certificate files changed but hold the same certificate"
                );
                None
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    "TLS certificate reload failed; still serving the previous certificate"
                );
                Some(stamps)
            }
        }
    }

    fn stamps(&self) -> Stamps {
        [
            FileStamp::of(&self.cert_path),
            FileStamp::of(&self.key_path),
        ]
    }

    fn lock_loaded(&self) -> MutexGuard<'_, Stamps> {
        // The stamps are only ever replaced whole; a poisoned value is fine.
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certificate())
    }
}

/// Reads both files and builds a checked `CertifiedKey` (the key parses with
/// `provider` and matches the end-entity certificate).
fn read_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let (chain, private_key) = tls::load_pem_files(cert, key)?;
    let cert_origin = || PemSource::File(cert.to_owned());
    let key_origin = || PemSource::File(key.to_owned());
    CertifiedKey::from_der(chain, private_key, provider).map_err(|error| match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert_origin(),
                key: key_origin(),
            }
        }
        error => TlsError::Rustls {
            cert: cert_origin(),
            key: key_origin(),
            error,
        },
    })
}

/// The `notAfter` time of a DER X.509 certificate as `YYYY-MM-DDTHH:MM:SSZ`,
/// for the reload log line; `None` if the DER is not shaped as expected.
///
/// No X.509 parser is among the dependencies (rustls's verifier does not
/// expose validity times), and this needs only five DER elements:
/// `Certificate → tbsCertificate → [version] serial signature issuer →
/// validity → notAfter`.
fn not_after(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // The explicit `[0] version` is optional (absent for v1 certificates).
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs = der_element(tbs)?.2;
    }
    let (tag, validity, _) = der_element(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, rest) = der_element(validity)?;
    let (tag, time, _) = der_element(rest)?;
    format_der_time(tag, time)
}

/// Splits one DER element off `input`: (tag, contents, rest). Only
/// single-byte tags and lengths up to four bytes, which covers certificates.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Formats an X.509 `UTCTime` (tag 0x17, `YYMMDDHHMMSSZ`, years 1950–2049 per
/// RFC 5280) or `GeneralizedTime` (tag 0x18, `YYYYMMDDHHMMSSZ`).
fn format_der_time(tag: u8, value: &[u8]) -> Option<String> {
    let digits = value.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut full = Vec::with_capacity(14);
    match (tag, digits.len()) {
        (0x17, 12) => {
            let century: &[u8] = if digits[0] >= b'5' { b"19" } else { b"20" };
            full.extend_from_slice(century);
        }
        (0x18, 14) => {}
        _ => return None,
    }
    full.extend_from_slice(digits);
    let s = String::from_utf8(full).ok()?;
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[8..10],
        &s[10..12],
        &s[12..14]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "wshub-cert-reload-{name}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }

        /// Replaces `file` the way renewal tools do: write a temporary file,
        /// then rename it over the old one.
        fn replace(&self, file: &str, contents: &[u8]) {
            let tmp = self.0.join(format!("{file}.tmp"));
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, self.path(file)).unwrap();
        }

        fn install(&self, leaf: &Leaf) {
            self.replace("cert.pem", leaf.cert_pem.as_bytes());
            self.replace("key.pem", leaf.key_pem.as_bytes());
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A test CA.
    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("wshub test CA {name}"));
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self { cert, key }
        }

        fn der(&self) -> CertificateDer<'static> {
            self.cert.der().clone()
        }

        /// A `localhost` certificate issued by this CA.
        fn issue(&self) -> Leaf {
            let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            Leaf {
                der: cert.der().clone(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }
    }

    /// An end-entity certificate and its key.
    struct Leaf {
        der: CertificateDer<'static>,
        cert_pem: String,
        key_pem: String,
    }

    /// Accepts TLS connections on 127.0.0.1 forever, answering `ok` to each.
    async fn serve(config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(tcp).await {
                        let _ = stream.write_all(b"ok").await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    /// Connects to `addr` as `localhost` trusting only `roots`; returns the
    /// end-entity certificate the server presented.
    async fn connect(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
    ) -> std::io::Result<CertificateDer<'static>> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await?;
        let (_, session) = stream.get_ref();
        assert_eq!(session.alpn_protocol(), Some(ALPN_HTTP_1_1));
        let presented = session.peer_certificates().unwrap()[0].clone();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        assert_eq!(reply, b"ok");
        Ok(presented)
    }

    #[tokio::test]
    async fn reload_switches_certificate_and_keeps_it_on_errors() {
        let (ca_a, ca_b) = (Ca::new("A"), Ca::new("B"));
        let (leaf_a, leaf_b) = (ca_a.issue(), ca_b.issue());
        let dir = TempDir::new("reload");
        dir.install(&leaf_a);
        let cert_path = dir.path("cert.pem");
        let key_path = dir.path("key.pem");

        let cert = ReloadingCert::load(&cert_path, &key_path).unwrap();
        let config = cert.server_config();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let addr = serve(config).await;
        assert_eq!(connect(addr, &[ca_a.der()]).await.unwrap(), leaf_a.der);
        assert!(connect(addr, &[ca_b.der()]).await.is_err());

        // Same files: nothing to do.
        assert!(!cert.reload().unwrap());

        dir.install(&leaf_b);
        assert!(cert.reload().unwrap());
        assert_eq!(connect(addr, &[ca_b.der()]).await.unwrap(), leaf_b.der);
        assert!(
            connect(addr, &[ca_a.der()]).await.is_err(),
            "a client trusting only CA A must reject certificate B"
        );
        assert!(!cert.reload().unwrap());

        // Garbage: an error, and B is still served.
        std::fs::write(&cert_path, b"this is not a certificate").unwrap();
        let err = cert.reload().unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCertificate { origin: PemSource::File(p) } if *p == cert_path),
            "{err:?}"
        );
        assert_eq!(connect(addr, &[ca_b.der()]).await.unwrap(), leaf_b.der);

        // Certificate A with key B: a mismatch, B still served.
        dir.replace("cert.pem", leaf_a.cert_pem.as_bytes());
        let err = cert.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert_eq!(connect(addr, &[ca_b.der()]).await.unwrap(), leaf_b.der);

        // A missing key file.
        std::fs::remove_file(&key_path).unwrap();
        let err = cert.reload().unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert_eq!(cert.certificate().cert[0], leaf_b.der);

        // Back to A.
        dir.install(&leaf_a);
        assert!(cert.reload().unwrap());
        assert_eq!(connect(addr, &[ca_a.der()]).await.unwrap(), leaf_a.der);
    }

    #[test]
    fn load_errors_are_the_tls_errors() {
        let ca = Ca::new("L");
        let (leaf, other) = (ca.issue(), ca.issue());
        let dir = TempDir::new("load");
        std::fs::write(dir.path("cert.pem"), leaf.cert_pem.as_bytes()).unwrap();
        std::fs::write(dir.path("other-key.pem"), other.key_pem.as_bytes()).unwrap();
        let err = ReloadingCert::load(&dir.path("cert.pem"), &dir.path("nope.pem")).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        let err =
            ReloadingCert::load(&dir.path("cert.pem"), &dir.path("other-key.pem")).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("other-key.pem"), "{err}");
    }

    /// Polls `connect` until the server presents `expected`, for at most 10 s.
    async fn wait_for_certificate(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
        expected: &CertificateDer<'static>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(presented) = connect(addr, roots).await {
                if presented == *expected {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the watcher did not switch certificates within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn watcher_reloads_changed_files() {
        let (ca_a, ca_b) = (Ca::new("WA"), Ca::new("WB"));
        let (leaf_a, leaf_b, leaf_c) = (ca_a.issue(), ca_b.issue(), ca_a.issue());
        let dir = TempDir::new("watch");
        dir.install(&leaf_a);
        let cert = ReloadingCert::load(&dir.path("cert.pem"), &dir.path("key.pem")).unwrap();
        let addr = serve(cert.server_config()).await;
        let watcher = cert.spawn_watcher(Duration::from_millis(10));
        let both = [ca_a.der(), ca_b.der()];
        assert_eq!(connect(addr, &both).await.unwrap(), leaf_a.der);

        dir.install(&leaf_b);
        wait_for_certificate(addr, &both, &leaf_b.der).await;

        // A broken certificate file is reported and B stays; the watcher
        // keeps running and picks up the next good files.
        dir.replace("cert.pem", b"garbage");
        assert_eq!(connect(addr, &both).await.unwrap(), leaf_b.der);
        dir.install(&leaf_c);
        wait_for_certificate(addr, &both, &leaf_c.der).await;
        assert!(!watcher.is_finished());
        watcher.abort();
    }

    #[tokio::test]
    async fn watcher_ends_when_the_certificate_is_dropped() {
        let ca = Ca::new("D");
        let dir = TempDir::new("drop");
        dir.install(&ca.issue());
        let cert = ReloadingCert::load(&dir.path("cert.pem"), &dir.path("key.pem")).unwrap();
        let watcher = cert.spawn_watcher(Duration::from_millis(5));
        drop(cert);
        tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("the watcher should end")
            .unwrap();
    }

    #[test]
    fn not_after_of_generated_certificates() {
        for (year, expected) in [
            (2031, "2031-05-17T00:00:00Z"), // UTCTime
            (2051, "2051-05-17T00:00:00Z"), // GeneralizedTime
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 5, 17);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()).as_deref(), Some(expected));
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        assert_eq!(
            format_der_time(0x17, b"990101000000Z").as_deref(),
            Some("1999-01-01T00:00:00Z")
        );
        assert_eq!(format_der_time(0x17, b"99010100000Z"), None);
        assert_eq!(format_der_time(0x18, b"2000010100000xZ"), None);
    }
}
