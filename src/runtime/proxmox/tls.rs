//! Certificate pinning for the Proxmox API.
//!
//! A PVE node serves a self-signed certificate by default, so system roots cannot
//! verify it. Instead of "accept invalid certs", the operator pins the SHA-256 of the
//! node's certificate (`tls_fingerprint`) and the client accepts exactly that
//! certificate: any other one — even a publicly trusted one — is refused. The
//! handshake signature is still verified against the pinned certificate's key, so a
//! peer that merely replays the certificate without its private key cannot pass.
//!
//! Validity dates and the name in the certificate are deliberately not checked: the pin
//! *is* the identity (the control plane addresses nodes by IP, which PVE's certificate
//! does not name). When the node's certificate is renewed, the pin must be updated.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Parses 64 hex digits, with or without colons (`AB:CD:…` as PVE's GUI and
    /// `openssl x509 -fingerprint -sha256` print it, including their
    /// `sha256 Fingerprint=` prefix).
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let t = text.trim();
        let t = match t.split_once('=') {
            Some((label, rest)) if label.to_ascii_lowercase().contains("fingerprint") => rest,
            _ => t,
        };
        let hex: String = t
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        // Checked before slicing by byte offsets: a non-ASCII character would split.
        if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(format!(
                "'{}' is not a hex digit; expected a SHA-256 fingerprint (64 hex digits, colons allowed)",
                bad.escape_default()
            ));
        }
        if hex.len() != 64 {
            return Err(format!(
                "expected a SHA-256 fingerprint (64 hex digits, colons allowed), got {} hex digits",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = &hex[2 * i..2 * i + 2];
            *byte = u8::from_str_radix(pair, 16)
                .map_err(|_| format!("'{pair}' is not a hex byte in the fingerprint"))?;
        }
        Ok(Fingerprint(out))
    }

    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(cert_der).into())
    }
}

impl std::fmt::Display for Fingerprint {
    /// `AB:CD:…`, the form PVE shows (a fingerprint is public, not a secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Accepts exactly the server certificate with the pinned fingerprint.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    pub fn new(pin: Fingerprint) -> PinnedCertVerifier {
        PinnedCertVerifier {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

/// Why a certificate was refused; shown in the connection error so the operator sees
/// which certificate the node actually presented.
struct PinMismatch {
    seen: Fingerprint,
}

/// rustls renders custom certificate errors with `Debug`: make that the plain sentence.
impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate (SHA-256 {}) does not match the pinned tls_fingerprint",
            self.seen
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity.as_ref());
        // A fingerprint is public; plain comparison is fine.
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch { seen }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that trusts only the pinned certificate.
pub fn pinned_client_config(pin: Fingerprint) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier::new(pin)))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_fingerprints_in_the_usual_spellings() {
        let plain = Fingerprint::parse(HEX).unwrap();
        let colons = Fingerprint::parse(&plain.to_string()).unwrap();
        assert_eq!(plain, colons);
        let openssl = format!("sha256 Fingerprint={plain}");
        assert_eq!(Fingerprint::parse(&openssl).unwrap(), plain);
        let openssl_upper = format!("SHA256 Fingerprint={plain}\n");
        assert_eq!(Fingerprint::parse(&openssl_upper).unwrap(), plain);
        assert!(Fingerprint::parse("abcd").unwrap_err().contains("64 hex"));
        assert!(
            Fingerprint::parse(&HEX.replace('0', "g"))
                .unwrap_err()
                .contains("not a hex digit")
        );
    }

    #[test]
    fn the_verifier_accepts_only_the_pinned_certificate() {
        let cert = CertificateDer::from(vec![1u8, 2, 3, 4]);
        let other = CertificateDer::from(vec![1u8, 2, 3, 5]);
        let v = PinnedCertVerifier::new(Fingerprint::of(&[1, 2, 3, 4]));
        let name = ServerName::try_from("10.0.0.2").unwrap();
        assert!(
            v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let err = v
            .verify_server_cert(&other, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not match the pinned tls_fingerprint"),
            "{err}"
        );
        assert!(!v.supported_verify_schemes().is_empty());
    }
}
