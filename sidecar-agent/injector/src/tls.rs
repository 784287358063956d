//! The serving certificate, reloaded when its files change: cert-manager (or a kubelet refreshing a Secret
//! volume) replaces them in place, and a webhook serving an expired certificate would stop all injection.
//!
//! Each TLS handshake compares the files' metadata (modification time, length, inode; symlinks followed, since
//! Secret volumes swap a `..data` symlink) with the pair in use and loads them again when it changed. A pair that
//! does not load (say the certificate was written but the key not yet) keeps the old one in service and is
//! retried on the next handshake.

use std::{
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {source}")]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read the private key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the key {key} does not fit the certificate {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

type Stamp = Option<(SystemTime, u64, u64)>;

struct Current {
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

/// A [`ResolvesServerCert`] serving the pair at two paths, reloaded when they change.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ReloadingCert {
    /// Loads the pair once; an error here is a startup error.
    pub fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let loaded = load(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: Mutex::new(Current { stamps, key: loaded }),
        })
    }

    /// The pair to serve now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock only means a panic elsewhere while holding it; the data is still a valid pair.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if stamps != current.stamps {
            match load(&self.cert, &self.key, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    *current = Current { stamps, key };
                }
                Err(e) => tracing::warn!(error = %e, "new certificate not usable yet; still serving the previous one"),
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: cert.to_owned() });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    Ok(Arc::new(certified))
}
