//! ed25519 node keys: generation from caller-supplied entropy, signing, verification, and the
//! versioned text form of the key file. No file I/O here (the CLI owns the file and its mode).

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::id::NodeId;

/// First line of a key file; the version is part of it.
pub const KEY_FILE_HEADER: &str = "sitesync-ed25519-secret-key-v1";

/// Why a key file or signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key file does not start with {KEY_FILE_HEADER:?}")]
    Header,
    #[error("key file holds no 64-hex-character secret key on its second line")]
    Secret,
    #[error("node id {0} is not a valid ed25519 public key")]
    PublicKey(NodeId),
}

/// A node's signing key.
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// Builds a key from 32 bytes of secret entropy (from the OS RNG in production, fixed in
    /// tests and the simulator).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Keypair { signing: SigningKey::from_bytes(&secret) }
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// Signs a 32-byte digest (callers hash their message with blake3 first: ed25519 hashes the
    /// whole message with SHA-512 twice when signing, so a short input keeps signing cheap).
    pub fn sign(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.signing.sign(digest).to_bytes()
    }

    /// The secret key as PKCS#8 v1 DER (RFC 8410), for the TLS stack.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&self.signing.to_bytes());
        der
    }

    /// The key file text: a header line and the hex secret.
    pub fn to_file_text(&self) -> String {
        format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(self.signing.to_bytes()))
    }

    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(KEY_FILE_HEADER) {
            return Err(KeyError::Header);
        }
        let secret = lines.next().map(str::trim).ok_or(KeyError::Secret)?;
        let bytes = hex::decode(secret).map_err(|_| KeyError::Secret)?;
        let secret: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Secret)?;
        Ok(Keypair::from_secret(secret))
    }
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key follows.
pub const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The SubjectPublicKeyInfo DER of a node id (its raw public key for TLS, RFC 7250).
pub fn spki_der(node: &NodeId) -> Vec<u8> {
    let mut out = ED25519_SPKI_PREFIX.to_vec();
    out.extend_from_slice(&node.0);
    out
}

/// The node id in an Ed25519 SubjectPublicKeyInfo, if that is what the DER holds.
pub fn node_from_spki(der: &[u8]) -> Option<NodeId> {
    let key = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    Some(NodeId(key.try_into().ok()?))
}

/// Verifies `signature` over `digest` by `node` (strict: rejects malleable signatures and weak
/// keys). Returns false for any failure, including a node id that is not a curve point.
pub fn verify(node: &NodeId, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&node.0) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(digest, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = Keypair::from_secret([3; 32]);
        let digest = *blake3::hash(b"batch").as_bytes();
        let sig = key.sign(&digest);
        assert!(verify(&key.node_id(), &digest, &sig));
        let other = *blake3::hash(b"batch!").as_bytes();
        assert!(!verify(&key.node_id(), &other, &sig));
        let stranger = Keypair::from_secret([4; 32]);
        assert!(!verify(&stranger.node_id(), &digest, &sig));
    }

    #[test]
    fn key_file_round_trip_and_errors() {
        let key = Keypair::from_secret([9; 32]);
        let text = key.to_file_text();
        let back = Keypair::from_file_text(&text).map(|k| k.node_id());
        assert_eq!(back, Ok(key.node_id()));
        assert_eq!(Keypair::from_file_text("garbage").err(), Some(KeyError::Header));
        let short = format!("{KEY_FILE_HEADER}\nabcd\n");
        assert_eq!(Keypair::from_file_text(&short).err(), Some(KeyError::Secret));
    }
}
