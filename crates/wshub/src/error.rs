//! [`Error`]: failures of setting up or running a server.

/// A server-level failure.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or accepting failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// An invalid setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Loading TLS certificates or keys failed.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}
