//! QUIC transport: TLS 1.3 identities made from node keys (RFC 7250 raw public keys, no CA),
//! peers pinned by node id in both directions, and reading protocol frames from a QUIC stream.
//! The driver that moves frames between a stream and a session is the node's
//! (`node/serve/driver.rs`); this module knows nothing of sessions.
//!
//! A connection from a key that is not configured, or to a server whose key is not the one
//! dialled, fails inside the TLS handshake, before any application frame is read. 0-RTT is off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::id::NodeId;
use crate::identity::{self, Keypair};
use crate::protocol::message::{self, CodecError, Decoder, Message};

/// ALPN protocol id: names the wire protocol version.
pub const ALPN: &[u8] = b"sitesync/1";
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT_MS: u32 = 15_000;
/// Keep-alive interval while a session is open.
pub const KEEP_ALIVE_MS: u64 = 5_000;
/// The server name sent in the TLS handshake (identity is the pinned key, not a name).
pub const SERVER_NAME: &str = "sitesync";

/// Why a transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("tls setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("quic setup: {0}")]
    Quic(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    key: &Keypair,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TransportError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der()));
    let signing = provider.key_provider.load_private_key(der)?;
    let spki = CertificateDer::from(identity::spki_der(&key.node_id()));
    Ok(Arc::new(CertifiedKey::new(vec![spki], signing)))
}

/// Accepts exactly the raw public keys of the given nodes.
#[derive(Debug)]
struct Pinned {
    allowed: Vec<NodeId>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match identity::node_from_spki(cert.as_ref()) {
            Some(node) if self.allowed.contains(&node) => Ok(()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify13(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = SubjectPublicKeyInfoDer::from(cert.as_ref());
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature_with_raw_key(msg, &spki, dss, algs)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(msg, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Pinned {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(msg, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    t.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    Arc::new(t)
}

/// Server side: accept clients whose keys are in `allowed`.
pub fn server_config(
    key: &Keypair,
    allowed: Vec<NodeId>,
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(Pinned { allowed, provider: provider.clone() });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(
            certified_key(key, &provider)?,
        )));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Client side: talk only to a server holding `server`'s key.
pub fn client_config(
    key: &Keypair,
    server: NodeId,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(Pinned { allowed: vec![server], provider: provider.clone() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(key, &provider)?),
        ));
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = false;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The node id the peer proved in the handshake.
pub fn peer_node(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    identity::node_from_spki(certs.first()?.as_ref())
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("stream: {0}")]
    Stream(String),
    #[error("the peer closed the stream")]
    Finished,
}

/// Reads one frame and decodes it with the session's `decoder`. Returns the message and the
/// bytes read.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    decoder: &mut Decoder,
) -> Result<(Message, usize), ReadError> {
    read_message_with(recv, decoder, &mut || {}).await
}

/// As [`read_message`], calling `progress` after every piece of the frame that arrives.
pub async fn read_message_with(
    recv: &mut quinn::RecvStream,
    decoder: &mut Decoder,
    progress: &mut (dyn FnMut() + Send),
) -> Result<(Message, usize), ReadError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(ReadError::Finished),
        Err(e) => return Err(ReadError::Stream(e.to_string())),
    }
    progress();
    let len = message::frame_len(prefix)?;
    let mut frame = Vec::with_capacity(len.min(1 << 20));
    let mut piece = vec![0u8; 64 * 1024];
    while frame.len() < len {
        let want = (len - frame.len()).min(piece.len());
        match recv.read(&mut piece[..want]).await {
            Ok(Some(n)) => {
                frame.extend_from_slice(&piece[..n]);
                progress();
            }
            Ok(None) => {
                return Err(ReadError::Stream(format!("stream ended inside a {len}-byte frame")));
            }
            Err(e) => return Err(ReadError::Stream(e.to_string())),
        }
    }
    Ok((decoder.decode(&frame)?, len + 4))
}

/// Milliseconds since `origin`: the sessions' clock.
pub fn millis_since(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}
