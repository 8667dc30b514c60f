//! Certificates and keys as rustls serves them, read from PEM, checked, and described.
//!
//! Every certificate switchback serves, from ACME or from files, goes through [`load_pair`]:
//! the chain must parse, the key must parse, and the key must belong to the first
//! certificate. A pair that fails any of this is refused with the reason, and whatever was
//! served before stays served.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// Why a certificate or key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Io(String),
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("no private key in the PEM data")]
    NoKey,
    #[error("the private key cannot be used: {0}")]
    BadKey(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
}

/// What `switchback certs` shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// DNS names the certificate is valid for (subject alternative names).
    pub names: Vec<String>,
    pub issuer: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// When a third of the certificate's lifetime is left: the time to renew.
    pub fn renew_at(&self) -> i64 {
        self.not_after - (self.not_after - self.not_before) / 3
    }
}

/// A chain and key ready to serve, with what it says about itself.
#[derive(Debug, Clone)]
pub struct CertMaterial {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Parses and checks a PEM chain (leaf first) and a PEM private key.
pub fn load_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertMaterial, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let info = describe(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey,
        e => CertError::BadKey(e.to_string()),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::BadKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::KeyMismatch)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(CertError::BadKey(e.to_string())),
    }
    Ok(CertMaterial {
        key: Arc::new(certified),
        info,
    })
}

/// Reads what a leaf certificate says: names, issuer, serial, validity.
pub fn describe(leaf: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| cert.issuer().to_string());
    Ok(CertInfo {
        names,
        issuer,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether a certificate name covers a host: exactly, or as `*.suffix` over one label.
pub fn name_covers(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed pair for `names`, as PEM (cert, key).
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_and_describes_itself() {
        let (cert, key) = self_signed(&["app.example.com", "www.example.com"]);
        let m = load_pair(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(m.info.names, vec!["app.example.com", "www.example.com"]);
        assert!(m.info.not_after > m.info.not_before);
        assert!(!m.info.serial.is_empty());
        assert!(m.info.renew_at() < m.info.not_after && m.info.renew_at() > m.info.not_before);
    }

    #[test]
    fn mismatched_missing_and_garbage_inputs_are_named() {
        let (cert, _) = self_signed(&["a.example.com"]);
        let (_, other_key) = self_signed(&["b.example.com"]);
        assert_eq!(
            load_pair(cert.as_bytes(), other_key.as_bytes()).unwrap_err(),
            CertError::KeyMismatch
        );
        assert_eq!(
            load_pair(b"", other_key.as_bytes()).unwrap_err(),
            CertError::NoCertificate
        );
        assert_eq!(
            load_pair(cert.as_bytes(), b"").unwrap_err(),
            CertError::NoKey
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            load_pair(garbage.as_bytes(), other_key.as_bytes()).unwrap_err(),
            CertError::BadCertificate(_)
        ));
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(name_covers("App.Example.com", "app.example.com"));
    }
}
