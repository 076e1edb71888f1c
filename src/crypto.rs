//! Every hash, HMAC and signature paymux computes, on top of `ring`. No hand-rolled crypto:
//! this module only frames keys (PEM / base64 / SPKI) and calls ring.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, rand, signature};

/// A key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not PEM or base64 DER")]
    Encoding,
    #[error("not an RSA private key in PKCS#8 or PKCS#1 form")]
    PrivateKey,
    #[error("not an RSA public key (2048 to 8192 bits) in SubjectPublicKeyInfo or PKCS#1 form")]
    PublicKey,
    #[error("a private key, where the provider's public key belongs")]
    PrivateForPublic,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// Decodes hex (either case).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// HMAC-SHA256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg).as_ref().to_vec()
}

/// Constant-time HMAC-SHA256 check.
pub fn hmac_sha256_verify(key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), msg, tag).is_ok()
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads PEM (any label) or bare base64 into DER bytes. Returns the PEM label if there was one.
pub fn decode_key_text(text: &str) -> Result<(Option<String>, Vec<u8>), KeyError> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("-----BEGIN ") {
        let label = rest.split("-----").next().unwrap_or("").to_string();
        let body: String = t
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = B64.decode(body).map_err(|_| KeyError::Encoding)?;
        return Ok((Some(label), der));
    }
    let body: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(body).map(|d| (None, d)).map_err(|_| KeyError::Encoding)
}

/// An RSA private key for SHA256withRSA (PKCS#1 v1.5) signatures.
pub struct RsaSigner {
    key: signature::RsaKeyPair,
    rng: rand::SystemRandom,
}

impl RsaSigner {
    /// From PEM (`PRIVATE KEY` / `RSA PRIVATE KEY`) or bare base64 PKCS#8 / PKCS#1 DER.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let (_, der) = decode_key_text(text)?;
        let key = signature::RsaKeyPair::from_pkcs8(&der)
            .or_else(|_| signature::RsaKeyPair::from_der(&der))
            .map_err(|_| KeyError::PrivateKey)?;
        Ok(RsaSigner { key, rng: rand::SystemRandom::new() })
    }

    /// SHA256withRSA over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        // Signing only fails if the output buffer has the wrong size (sized above) or the RNG
        // fails; neither is recoverable.
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
            .expect("RSA signing with a correctly sized buffer");
        sig
    }

    /// The matching public key as PKCS#1 `RSAPublicKey` DER.
    pub fn public_pkcs1(&self) -> Vec<u8> {
        use signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }
}

/// An RSA public key for SHA256withRSA verification.
#[derive(Clone)]
pub struct RsaVerifier {
    pkcs1: Vec<u8>,
}

impl RsaVerifier {
    /// From PEM (`PUBLIC KEY` / `RSA PUBLIC KEY`) or bare base64 SPKI / PKCS#1 DER.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let (label, der) = decode_key_text(text)?;
        if label.as_deref().is_some_and(|l| l.ends_with("PRIVATE KEY")) {
            return Err(KeyError::PrivateForPublic);
        }
        if label.as_deref() == Some("RSA PUBLIC KEY") {
            return Self::from_pkcs1(der);
        }
        match spki::SubjectPublicKeyInfoRef::try_from(der.as_slice()) {
            Ok(info) => {
                // rsaEncryption
                if info.algorithm.oid.to_string() != "1.2.840.113549.1.1.1" {
                    return Err(KeyError::PublicKey);
                }
                let bits = info.subject_public_key.as_bytes().ok_or(KeyError::PublicKey)?;
                Self::from_pkcs1(bits.to_vec())
            }
            Err(_) => Self::from_pkcs1(der),
        }
    }

    /// From PKCS#1 `RSAPublicKey` DER.
    pub fn from_pkcs1(der: Vec<u8>) -> Result<Self, KeyError> {
        // Parsed here, as ring parses only when it verifies: a key that is not one (another
        // DER structure, a private key) would otherwise show only on the first answer or
        // notify, each then refused as badly signed.
        use spki::der::{asn1::UintRef, Decode, Reader, SliceReader};
        let parsed = SliceReader::new(&der).and_then(|mut r| {
            let (n, e) = r.sequence(|s| Ok((UintRef::decode(s)?, UintRef::decode(s)?)))?;
            r.finish((n.as_bytes().len(), e.as_bytes().to_vec()))
        });
        // What ring verifies with: a 2048- to 8192-bit modulus, an odd exponent above 1.
        match parsed {
            Ok((n, e)) if (256..=1024).contains(&n) && e.last().is_some_and(|b| b & 1 == 1) && e != [1] => {
                Ok(RsaVerifier { pkcs1: der })
            }
            _ => Err(KeyError::PublicKey),
        }
    }

    /// Verifies SHA256withRSA `sig` over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.pkcs1).verify(msg, sig).is_ok()
    }
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSigner(***)")
    }
}

impl std::fmt::Debug for RsaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaVerifier")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIV: &str = include_str!("../sandbox/keys/antom_merchant_private.pem");
    const PUB: &str = include_str!("../sandbox/keys/antom_merchant_public.pem");

    #[test]
    fn rsa_round_trip_pem_and_bare_base64() {
        let s = RsaSigner::from_text(PRIV).unwrap();
        let v = RsaVerifier::from_text(PUB).unwrap();
        let sig = s.sign(b"hello");
        assert!(v.verify(b"hello", &sig));
        assert!(!v.verify(b"hellO", &sig));
        let bare: String = PUB.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(RsaVerifier::from_text(&bare).unwrap().verify(b"hello", &sig));
        assert!(RsaVerifier::from_pkcs1(s.public_pkcs1()).unwrap().verify(b"hello", &sig));
        assert_eq!(RsaSigner::from_text("bm90IGEga2V5").unwrap_err(), KeyError::PrivateKey);
    }

    #[test]
    fn a_public_key_that_is_not_one_is_refused_when_loaded() {
        assert!(matches!(RsaVerifier::from_text(PRIV), Err(KeyError::PrivateForPublic)));
        // A private key's DER given bare, any DER SEQUENCE, a PKCS#1 key too short for ring.
        let (_, der) = decode_key_text(PRIV).unwrap();
        assert!(matches!(RsaVerifier::from_text(&B64.encode(&der)), Err(KeyError::PublicKey)));
        assert!(matches!(RsaVerifier::from_pkcs1(vec![0x30, 0x03, 0x02, 0x01, 0x05]), Err(KeyError::PublicKey)));
        let short = [&[0x30, 0x0a, 0x02, 0x05, 0x00, 0xc1][..], &[0x11; 3], &[0x02, 0x01, 0x03]].concat();
        assert!(matches!(RsaVerifier::from_pkcs1(short), Err(KeyError::PublicKey)));
    }

    #[test]
    fn hmac_and_hex() {
        let tag = hmac_sha256(b"k", b"m");
        assert!(hmac_sha256_verify(b"k", b"m", &tag));
        assert!(!hmac_sha256_verify(b"k", b"n", &tag));
        assert_eq!(unhex(&hex(&tag)).unwrap(), tag);
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(ct_eq(b"ab", b"ab") && !ct_eq(b"ab", b"ac") && !ct_eq(b"a", b"ab"));
    }
}
