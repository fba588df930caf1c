//! HTTPS on zlh's own listener: the certificate and key from `tls.cert` / `tls.key`,
//! read again on SIGHUP. A pair that does not load is refused and the one in use keeps
//! serving, so a renewal gone wrong never takes the panel off the air.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate in use, swapped whole by [`Tls::reload`]; each new connection takes
/// the one current at its accept.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the pair; an error says which file and why.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, String> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(config),
        })
    }

    /// Reads the files again; on success the new pair serves every new connection, on
    /// failure the old one stays and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        let mut current = self
            .current
            .write()
            .map_err(|_| "the certificate lock is poisoned".to_string())?;
        *current = config;
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let config = self.current.read().ok()?.clone();
        Some(tokio_rustls::TlsAcceptor::from(config))
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        // Also checks that the key belongs to the certificate.
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "tls.cert {} and tls.key {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            )
        })?;
    // The listener speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
