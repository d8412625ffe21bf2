//! Signs an image the way cosign does, with a key file: the simple-signing payload over the
//! manifest digest, DSSE envelopes for attestations, and the OCI documents that store them.
//!
//! Signatures are ECDSA P-256 / SHA-256 with RFC 6979 deterministic nonces (what `p256`'s
//! `SigningKey` does), so the same key over the same image gives the same bytes: signed builds
//! stay byte-reproducible. Verifiers (cosign, openssl) accept any valid ECDSA signature, so
//! determinism costs no interoperability.

pub mod cosign;
pub mod dsse;
pub mod keys;

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};

use crate::digest::Sha256Digest;

pub use appliance_common::Secret;

/// A loaded private key.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// ASN.1 DER ECDSA-SHA256 signature over `message` (deterministic, RFC 6979).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: DerSignature = self.key.sign(message);
        signature.as_bytes().to_vec()
    }

    pub fn public_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    pub fn fingerprint(&self) -> Sha256Digest {
        keys::fingerprint(self.public_key())
    }
}

/// Checks a DER ECDSA-SHA256 `signature` over `message`.
pub fn verify(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    match DerSignature::from_bytes(signature) {
        Ok(sig) => key.verify(message, &sig).is_ok(),
        Err(_) => false,
    }
}

/// cosign's "simple signing" payload: compact JSON, this field order, `optional` null.
pub fn simple_signing_payload(docker_reference: &str, manifest: &Sha256Digest) -> Vec<u8> {
    // Built by hand rather than through serde_json::json!, whose key order depends on a feature
    // flag any dependency may turn on; cosign and the spec use exactly this order.
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":{}}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
        serde_json::Value::String(docker_reference.to_string()),
        manifest.prefixed()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_deterministic_and_verify() {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let signer = Signer::new(key);
        let payload = simple_signing_payload("registry.local/x", &Sha256Digest::of(b"m"));
        let a = signer.sign(&payload);
        assert_eq!(a, signer.sign(&payload));
        assert!(verify(signer.public_key(), &payload, &a));
        assert!(!verify(signer.public_key(), b"other", &a));
        let text = String::from_utf8(payload).unwrap();
        assert!(text.starts_with(r#"{"critical":{"identity":{"docker-reference":"registry.local/x"},"image":{"docker-manifest-digest":"sha256:"#));
        assert!(text.ends_with(r#""type":"cosign container image signature"},"optional":null}"#));
    }
}
