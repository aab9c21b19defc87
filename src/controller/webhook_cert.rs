//! The admission webhook's TLS: where its serving certificate comes from, and the HTTPS
//! server that answers with it.
//!
//! Two sources, as well-run operators offer them:
//! - **a mounted Secret in cert-manager's format** (`--webhook-cert-dir`: `tls.crt`,
//!   `tls.key`), read again every [`RELOAD_EVERY`] so a certificate cert-manager renews is
//!   served without a restart; cert-manager's CA injector fills the configuration's
//!   `caBundle`;
//! - **a CA of the operator's own** (`--webhook-secret`): the first replica to start makes
//!   a CA and a serving certificate for the `--webhook-dns-name`s (rcgen, ECDSA P-256, 10
//!   years), stores them in the Secret (cert-manager's keys `ca.crt`, `tls.crt`,
//!   `tls.key`; an update with the resourceVersion read, so two replicas starting together
//!   cannot both win) and every replica serves what the Secret holds; each sets the CA as
//!   the `caBundle` of the webhooks of `--webhook-configuration` (a strategic merge patch
//!   by webhook name). The CA's key is not kept: nothing else is ever signed with it. A
//!   Secret whose certificate was made for other names is made again. Not rotated: the
//!   certificate outlives any release; clear the Secret's data and restart the operator to
//!   make a new one.
//!
//! The operator needs `get` and `update` on that one Secret and `patch` on that one
//! configuration (RBAC `resourceNames`); the chart creates the Secret empty.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio_rustls::rustls;

/// The names of the webhooks in the ValidatingWebhookConfiguration (the chart's), whose
/// `caBundle` the operator sets when it makes its own CA.
pub const WEBHOOK_NAMES: [&str; 2] = ["llmworkloads.llmos.dev", "llmpolicytrainings.llmos.dev"];

/// How often a mounted certificate is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The annotation on the Secret naming what its certificate was made for.
pub const NAMES_ANNOTATION: &str = "llmos.dev/webhook-dns-names";

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// `tls.crt` and `tls.key` in this directory (a mounted cert-manager Secret).
    Dir(PathBuf),
    /// A CA and certificate of the operator's own, kept in this Secret.
    SelfSigned {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        secret: String,
        /// The ValidatingWebhookConfiguration whose webhooks get the CA as `caBundle`.
        configuration: Option<String>,
        /// DNS names (or IP addresses) the certificate is for.
        names: Vec<String>,
    },
}

/// A certificate and key in PEM, and the CA that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertBundle {
    /// The CA certificate (PEM): the `caBundle`.
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// Makes a CA and a serving certificate for `names` signed by it.
pub fn generate(names: &[String]) -> anyhow::Result<CertBundle> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    anyhow::ensure!(!names.is_empty(), "the webhook certificate needs at least one DNS name (--webhook-dns-name)");
    let now = time::OffsetDateTime::now_utc();
    let ten_years = time::Duration::days(3650);
    let ca_key = KeyPair::generate().context("making the webhook CA's key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("the webhook CA")?;
    ca.distinguished_name.push(DnType::CommonName, "llmos admission webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + ten_years;
    let ca_cert = ca.self_signed(&ca_key).context("signing the webhook CA")?;
    let key = KeyPair::generate().context("making the webhook certificate's key")?;
    let mut leaf = CertificateParams::new(names.to_vec()).context("the webhook certificate's names")?;
    leaf.distinguished_name.push(DnType::CommonName, names[0].clone());
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = ca.not_before;
    leaf.not_after = ca.not_after;
    let cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).context("signing the webhook certificate")?;
    Ok(CertBundle { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A certificate and key in PEM as rustls serves them.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("tls.crt is not PEM certificates: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "tls.crt holds no certificate");
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| anyhow::anyhow!("tls.key is not a PEM private key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("tls.key is not a key rustls can sign with: {e}"))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, signer)))
}

/// The certificate served now; replaced when a mounted one changes.
#[derive(Debug)]
pub struct ServedCert(RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ServedCert {
    /// Serves `key` until replaced.
    pub fn new(key: Arc<rustls::sign::CertifiedKey>) -> Arc<Self> {
        Arc::new(ServedCert(RwLock::new(key)))
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: Arc<rustls::sign::CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl rustls::server::ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Reads `dir/tls.crt` and `dir/tls.key` (their bytes, then the key).
fn read_dir(dir: &Path) -> anyhow::Result<(Vec<u8>, Arc<rustls::sign::CertifiedKey>)> {
    let read = |f: &str| std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()));
    let (cert, key) = (read("tls.crt")?, read("tls.key")?);
    let ck = certified_key(&cert, &key)?;
    Ok(([cert, key].concat(), ck))
}

/// The certificate of `source` to serve first; for a directory, a task that reads it
/// again every [`RELOAD_EVERY`] is spawned too.
pub async fn load(source: &CertSource, client: &kube::Client) -> anyhow::Result<Arc<ServedCert>> {
    match source {
        CertSource::Dir(dir) => {
            let (mut seen, ck) = read_dir(dir)?;
            let served = ServedCert::new(ck);
            let (s, dir) = (served.clone(), dir.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RELOAD_EVERY).await;
                    match read_dir(&dir) {
                        Ok((bytes, _)) if bytes == seen => {}
                        Ok((bytes, ck)) => {
                            s.replace(ck);
                            seen = bytes;
                            tracing::info!(dir = %dir.display(), "serving the renewed webhook certificate");
                        }
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "keeping the webhook certificate served"),
                    }
                }
            });
            Ok(served)
        }
        CertSource::SelfSigned { namespace, secret, configuration, names } => {
            let bundle = ensure_secret(client, namespace, secret, names).await?;
            if let Some(c) = configuration {
                patch_ca_bundle(client, c, &bundle.ca_pem).await?;
            }
            Ok(ServedCert::new(certified_key(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())?))
        }
    }
}

/// The bundle the Secret holds, made and stored first when it holds none (or one for
/// other names). Another replica's write between the read and the update makes the
/// update fail with a conflict; the Secret is then read again.
pub async fn ensure_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> anyhow::Result<CertBundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let wanted = names.join(",");
    for _ in 0..5 {
        let mut s = api.get(name).await.with_context(|| {
            format!("reading Secret {namespace}/{name} (the chart creates it empty; the operator fills it)")
        })?;
        let made_for = s.metadata.annotations.as_ref().and_then(|a| a.get(NAMES_ANNOTATION)).cloned();
        if let (Some(b), true) = (bundle_of(&s), made_for.as_deref() == Some(wanted.as_str())) {
            return Ok(b);
        }
        let b = generate(names)?;
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in [("ca.crt", &b.ca_pem), ("tls.crt", &b.cert_pem), ("tls.key", &b.key_pem)] {
            data.insert(k.into(), ByteString(v.clone().into_bytes()));
        }
        s.metadata.annotations.get_or_insert_with(Default::default).insert(NAMES_ANNOTATION.into(), wanted.clone());
        match api.replace(name, &PostParams::default(), &s).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), names = %wanted, "made the webhook's CA and certificate");
                return Ok(b);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("storing the webhook certificate in Secret {namespace}/{name}"))
            }
        }
    }
    anyhow::bail!("Secret {namespace}/{name} kept changing while the webhook certificate was stored")
}

/// The bundle in a Secret, when all three keys hold UTF-8.
fn bundle_of(s: &Secret) -> Option<CertBundle> {
    let data = s.data.as_ref()?;
    let get = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok()).filter(|v| !v.is_empty());
    Some(CertBundle { ca_pem: get("ca.crt")?, cert_pem: get("tls.crt")?, key_pem: get("tls.key")? })
}

/// Sets `ca_pem` as the `caBundle` of the webhooks [`WEBHOOK_NAMES`] of
/// the ValidatingWebhookConfiguration `name`.
pub async fn patch_ca_bundle(client: &kube::Client, name: &str, ca_pem: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let ca = serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec()))?;
    let webhooks: Vec<_> =
        WEBHOOK_NAMES.iter().map(|w| serde_json::json!({"name": w, "clientConfig": {"caBundle": ca}})).collect();
    let patch = serde_json::json!({"webhooks": webhooks});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .with_context(|| format!("setting the caBundle of ValidatingWebhookConfiguration {name}"))?;
    tracing::info!(configuration = %name, "set the webhook's caBundle");
    Ok(())
}

/// A TLS listener for `axum::serve`: TCP connections are accepted and their handshakes
/// run in tasks of their own, so a slow client holds up nobody else.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Listens on `listener`, serving `cert` (HTTP/1.1 over TLS 1.2 or 1.3).
    pub fn new(listener: tokio::net::TcpListener, cert: Arc<ServedCert>) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(cert);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "webhook TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %peer, "webhook TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_bundle_is_served_and_verifies_against_its_ca() {
        let b = generate(&["svc.ns.svc".into(), "127.0.0.1".into()]).expect("generated");
        assert!(b.ca_pem.contains("BEGIN CERTIFICATE") && b.key_pem.contains("PRIVATE KEY"));
        certified_key(b.cert_pem.as_bytes(), b.key_pem.as_bytes()).expect("rustls takes it");
        let Err(err) = certified_key(b"garbage", b.key_pem.as_bytes()) else { panic!("garbage certificate taken") };
        assert!(err.to_string().contains("tls.crt"), "{err}");
        let Err(err) = certified_key(b.cert_pem.as_bytes(), b"") else { panic!("empty key taken") };
        assert!(err.to_string().contains("tls.key"), "{err}");
        assert!(generate(&[]).is_err());
    }

    #[test]
    fn a_secret_with_all_three_keys_holds_a_bundle() {
        let mut s = Secret::default();
        assert_eq!(bundle_of(&s), None);
        let data = s.data.get_or_insert_with(Default::default);
        for k in ["ca.crt", "tls.crt"] {
            data.insert(k.into(), ByteString(b"x".to_vec()));
        }
        assert_eq!(bundle_of(&s), None, "tls.key missing");
        s.data.as_mut().expect("data").insert("tls.key".into(), ByteString(b"k".to_vec()));
        assert!(bundle_of(&s).is_some());
    }
}
