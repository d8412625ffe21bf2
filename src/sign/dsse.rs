//! DSSE envelopes (in-toto attestations as cosign stores them): the signature covers the PAE
//! encoding `DSSEv1 <len(type)> <type> <len(body)> <body>`, never the JSON around it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::Signer;

pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    /// base64 of the statement.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    /// base64 of the DER ECDSA signature.
    pub sig: String,
}

/// Pre-authentication encoding, the bytes a DSSE signature covers.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Signs `statement` (in-toto JSON) into an envelope.
pub fn sign(signer: &Signer, statement: &[u8]) -> Envelope {
    let sig = signer.sign(&pae(IN_TOTO_PAYLOAD_TYPE, statement));
    Envelope {
        payload_type: IN_TOTO_PAYLOAD_TYPE.to_string(),
        payload: B64.encode(statement),
        signatures: vec![EnvelopeSignature {
            keyid: String::new(),
            sig: B64.encode(sig),
        }],
    }
}

impl Envelope {
    /// The statement bytes, if the envelope's payload is valid base64.
    pub fn statement(&self) -> Option<Vec<u8>> {
        B64.decode(&self.payload).ok()
    }

    /// True if any signature verifies under `key`.
    pub fn verify(&self, key: &p256::ecdsa::VerifyingKey) -> bool {
        let Some(body) = self.statement() else {
            return false;
        };
        let message = pae(&self.payload_type, &body);
        self.signatures.iter().any(|s| match B64.decode(&s.sig) {
            Ok(sig) => super::verify(key, &message, &sig),
            Err(_) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_spec_example_and_envelopes_verify() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        let signer = Signer::new(p256::ecdsa::SigningKey::from_bytes(&[9u8; 32].into()).unwrap());
        let env = sign(&signer, br#"{"a":1}"#);
        assert!(env.verify(signer.public_key()));
        let mut bad = env.clone();
        bad.payload = B64.encode(br#"{"a":2}"#);
        assert!(!bad.verify(signer.public_key()));
    }
}
