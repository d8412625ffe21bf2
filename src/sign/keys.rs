//! Reads and writes cosign's key files: `ENCRYPTED SIGSTORE PRIVATE KEY` (scrypt + NaCl
//! secretbox around PKCS#8 DER) and the PKIX `PUBLIC KEY` PEM.
//!
//! The format follows cosign's `pkg/cosign/keys.go` and go-securesystemslib's `encrypted`
//! package: the PEM body is the JSON `{"kdf":{"name":"scrypt","params":{"N","r","p"},"salt"},
//! "cipher":{"name":"nacl/secretbox","nonce"},"ciphertext"}` with standard base64 byte fields,
//! the secretbox key is `scrypt(password, salt, N, r, p, 32)` and the ciphertext is NaCl's
//! (Poly1305 tag first). Keys written here load in cosign, and cosign's load here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::sign::Secret;

/// The PEM label cosign writes since v2; the older label is still read.
pub const PRIVATE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const LEGACY_PRIVATE_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// cosign and sigstore-rs both accept this work factor; it is what securesystemslib writes.
const SCRYPT_LOG_N: u8 = 15;
/// Refuse work factors past 2^20: a hostile key file must not pin a CPU for minutes.
const MAX_SCRYPT_LOG_N: u8 = 20;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("`{what}` is not a PEM file with a `{expected}` block")]
    NotPem { what: String, expected: String },
    #[error("`{what}` is not a cosign encrypted private key: {message}")]
    Malformed { what: String, message: String },
    #[error("Wrong password for `{what}` (the key could not be decrypted)")]
    WrongPassword { what: String },
    #[error("`{what}` does not hold an ECDSA P-256 key: {message}")]
    NotP256 { what: String, message: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// A freshly generated key pair, as the two files `appliance keygen` writes.
pub struct GeneratedKey {
    pub private_pem: String,
    pub public_pem: String,
    pub fingerprint: Sha256Digest,
}

/// Generates a P-256 key and encrypts it under `password`.
pub fn generate(password: &Secret) -> Result<GeneratedKey, KeyError> {
    let key = loop {
        let bytes: [u8; 32] = rand::random();
        // Fails only for the zero scalar or one >= the group order (probability ~2^-32).
        if let Ok(key) = SigningKey::from_bytes(&bytes.into()) {
            break key;
        }
    };
    let private_pem = encrypt(&key, password)?;
    let public = *key.verifying_key();
    Ok(GeneratedKey {
        private_pem,
        public_pem: public_pem(&public)?,
        fingerprint: fingerprint(&public),
    })
}

/// Encrypts `key` in cosign's format.
pub fn encrypt(key: &SigningKey, password: &Secret) -> Result<String, KeyError> {
    let malformed = |message: String| KeyError::Malformed {
        what: "generated key".into(),
        message,
    };
    let der = key.to_pkcs8_der().map_err(|e| malformed(e.to_string()))?;
    let salt: [u8; 32] = rand::random();
    let nonce: [u8; 24] = rand::random();
    let secret = derive(password, &salt, SCRYPT_LOG_N, 8, 1).map_err(malformed)?;
    let ciphertext = XSalsa20Poly1305::new(&secret.into())
        .encrypt(Nonce::from_slice(&nonce), der.as_bytes())
        .map_err(|e| malformed(e.to_string()))?;
    let envelope = Envelope {
        kdf: Kdf {
            name: "scrypt".into(),
            params: ScryptParams {
                n: 1 << SCRYPT_LOG_N,
                r: 8,
                p: 1,
            },
            salt: salt.to_vec(),
        },
        cipher: Cipher {
            name: "nacl/secretbox".into(),
            nonce: nonce.to_vec(),
        },
        ciphertext,
    };
    let json = serde_json::to_vec(&envelope).map_err(|e| malformed(e.to_string()))?;
    Ok(pem(PRIVATE_KEY_LABEL, &json))
}

/// Decrypts a cosign private key file's text; `what` names it in errors.
pub fn decrypt(what: &str, text: &str, password: &Secret) -> Result<SigningKey, KeyError> {
    let body = unpem(text, &[PRIVATE_KEY_LABEL, LEGACY_PRIVATE_KEY_LABEL]).ok_or_else(|| {
        KeyError::NotPem {
            what: what.into(),
            expected: PRIVATE_KEY_LABEL.into(),
        }
    })?;
    let malformed = |message: String| KeyError::Malformed {
        what: what.into(),
        message,
    };
    let envelope: Envelope = serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
    if envelope.kdf.name != "scrypt" || envelope.cipher.name != "nacl/secretbox" {
        return Err(malformed(format!(
            "unsupported kdf `{}` / cipher `{}` (expected scrypt and nacl/secretbox)",
            envelope.kdf.name, envelope.cipher.name
        )));
    }
    let ScryptParams { n, r, p } = envelope.kdf.params;
    if !n.is_power_of_two()
        || n < 2
        || n.trailing_zeros() > MAX_SCRYPT_LOG_N as u32
        || r > 32
        || p > 16
    {
        return Err(malformed(format!(
            "unsupported scrypt parameters N={n}, r={r}, p={p}"
        )));
    }
    if envelope.cipher.nonce.len() != 24 {
        return Err(malformed("the nonce is not 24 bytes".into()));
    }
    let secret =
        derive(password, &envelope.kdf.salt, n.trailing_zeros() as u8, r, p).map_err(malformed)?;
    let der = XSalsa20Poly1305::new(&secret.into())
        .decrypt(
            Nonce::from_slice(&envelope.cipher.nonce),
            envelope.ciphertext.as_slice(),
        )
        .map_err(|_| KeyError::WrongPassword { what: what.into() })?;
    SigningKey::from_pkcs8_der(&der).map_err(|e| KeyError::NotP256 {
        what: what.into(),
        message: e.to_string(),
    })
}

/// Parses a PKIX `PUBLIC KEY` PEM.
pub fn parse_public(what: &str, text: &str) -> Result<VerifyingKey, KeyError> {
    if !text.contains("-----BEGIN PUBLIC KEY-----") {
        return Err(KeyError::NotPem {
            what: what.into(),
            expected: "PUBLIC KEY".into(),
        });
    }
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| KeyError::NotP256 {
        what: what.into(),
        message: e.to_string(),
    })
}

pub fn public_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Malformed {
            what: "public key".into(),
            message: e.to_string(),
        })
}

/// sha256 of the DER SubjectPublicKeyInfo: what `openssl pkey -pubin -outform DER | sha256sum`
/// prints, so auditors can recompute it from the `.pub` file.
pub fn fingerprint(key: &VerifyingKey) -> Sha256Digest {
    match key.to_public_key_der() {
        Ok(der) => Sha256Digest::of(der.as_bytes()),
        // Encoding a valid P-256 point cannot fail; hash the SEC1 point as a fallback anyway.
        Err(_) => Sha256Digest::of(&key.to_encoded_point(false).to_bytes()),
    }
}

fn derive(password: &Secret, salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32], String> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| e.to_string())?;
    let mut out = [0u8; 32];
    scrypt::scrypt(password.expose().as_bytes(), salt, &params, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn pem(label: &str, body: &[u8]) -> String {
    let encoded = B64.encode(body);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The body of the first PEM block with one of `labels`.
fn unpem(text: &str, labels: &[&str]) -> Option<Vec<u8>> {
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = text.find(&begin) {
            let rest = &text[start + begin.len()..];
            let stop = rest.find(&end)?;
            let b64: String = rest[..stop].split_whitespace().collect();
            return B64.decode(b64).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_wrong_password_is_named() {
        let password = Secret::new("correct horse".to_string());
        let generated = generate(&password).unwrap();
        assert!(
            generated
                .private_pem
                .starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
        );
        let key = decrypt("k.key", &generated.private_pem, &password).unwrap();
        let public = parse_public("k.pub", &generated.public_pem).unwrap();
        assert_eq!(key.verifying_key(), &public);
        assert_eq!(fingerprint(&public), generated.fingerprint);
        let err = decrypt("k.key", &generated.private_pem, &Secret::new("nope")).unwrap_err();
        assert!(matches!(err, KeyError::WrongPassword { .. }), "{err}");
        assert!(!err.to_string().contains("nope"));
        // The JSON envelope carries exactly cosign's fields.
        let body = unpem(&generated.private_pem, &[PRIVATE_KEY_LABEL]).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["kdf"]["params"],
            serde_json::json!({"N": 32768, "r": 8, "p": 1})
        );
        assert_eq!(json["cipher"]["name"], "nacl/secretbox");
    }
}
