//! TLS for the simulators' optional HTTPS listeners, with the committed test material in
//! `sandbox/tls/` (a test CA and a server certificate for 127.0.0.1–127.0.0.9 and localhost),
//! embedded so the binary works from any directory. Clients trust `sandbox/tls/ca.pem`.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pingora::listeners::tls::Acceptor;
use pingora::tls::{version, CertificateDer, PrivateKeyDer, ServerConfig};
use std::sync::Arc;

/// The test CA certificate (PEM) that signed the server certificate.
pub const CA_PEM: &str = include_str!("../../sandbox/tls/ca.pem");
const SERVER_CERT_PEM: &str = include_str!("../../sandbox/tls/server.pem");
const SERVER_KEY_PEM: &str = include_str!("../../sandbox/tls/server.key");

/// The DER bodies of every PEM block labelled `label`.
fn pem_blocks(text: &str, label: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&begin) {
        let after = &rest[i + begin.len()..];
        let j = after.find(&end).with_context(|| format!("unterminated PEM block {label}"))?;
        let b64: String = after[..j].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(B64.decode(b64).with_context(|| format!("bad base64 in PEM block {label}"))?);
        rest = &after[j + end.len()..];
    }
    Ok(out)
}

/// A TLS acceptor serving the sandbox server certificate (TLS 1.2 and 1.3, HTTP/1.1).
pub(crate) fn acceptor() -> anyhow::Result<Arc<Acceptor>> {
    pingora::tls::install_default_crypto_provider();
    let certs: Vec<CertificateDer<'static>> =
        pem_blocks(SERVER_CERT_PEM, "CERTIFICATE")?.into_iter().map(CertificateDer::from).collect();
    let key_der = pem_blocks(SERVER_KEY_PEM, "PRIVATE KEY")?.into_iter().next().context("no server key")?;
    let key = PrivateKeyDer::try_from(key_der).map_err(|e| anyhow::anyhow!("server key: {e}"))?;
    let mut cfg = ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("sandbox TLS certificate")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(Acceptor::from_server_config(Arc::new(cfg))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_material_loads() {
        assert_eq!(pem_blocks(CA_PEM, "CERTIFICATE").unwrap().len(), 1);
        assert!(pem_blocks("-----BEGIN X-----\nAAAA", "X").is_err());
        assert!(acceptor().is_ok());
    }
}
