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
//!   by webhook name). A Secret whose certificate was made for other names is made again.
//!
//! **Rotation** (the self-made certificate): the CA is valid 10 years, the serving
//! certificate [`LEAF_VALIDITY`] (one year). At start and every [`RELOAD_EVERY`] each
//! replica reads the Secret; once the serving certificate ends within [`RENEW_BEFORE`]
//! (or has ended), the replica that sees it first signs a new one with the CA's key, kept
//! in the Secret as `ca.key` (the practice of cert-manager's CA issuer and of the
//! controller-runtime cert rotators), and stores it with the resourceVersion it read, so
//! replicas that race agree on one; every replica serves what the Secret holds from its
//! next read on. The CA, and so the `caBundle`, stays. A Secret from before `ca.key` was
//! kept gets a new CA: its `ca.crt` then holds the new CA and the old one, and the
//! `caBundle` both, so the API server trusts replicas still serving the old certificate
//! until they read the Secret again; the old CA is dropped at the next renewal.
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
    /// The CA certificate (PEM): the `caBundle`. After a change of CA, the new CA first
    /// and the old one after it.
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The CA's private key (PKCS#8 PEM), to sign the next serving certificate; `None`
    /// in a Secret made before it was kept.
    pub ca_key_pem: Option<String>,
}

/// How long a serving certificate the operator makes is valid.
pub const LEAF_VALIDITY: time::Duration = time::Duration::days(365);
/// How long before its end a serving certificate is made again (a third of its life).
pub const RENEW_BEFORE: time::Duration = time::Duration::days(120);
/// How long the operator's CA is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// Makes a CA and a serving certificate for `names` signed by it, valid from `now`.
pub fn generate_at(names: &[String], now: time::OffsetDateTime) -> anyhow::Result<CertBundle> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    anyhow::ensure!(!names.is_empty(), "the webhook certificate needs at least one DNS name (--webhook-dns-name)");
    let ca_key = KeyPair::generate().context("making the webhook CA's key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("the webhook CA")?;
    ca.distinguished_name.push(DnType::CommonName, "llmos admission webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + CA_VALIDITY;
    let ca_cert = ca.self_signed(&ca_key).context("signing the webhook CA")?;
    let (cert_pem, key_pem) = sign_leaf(names, &Issuer::new(ca, &ca_key), now)?;
    Ok(CertBundle { ca_pem: ca_cert.pem(), cert_pem, key_pem, ca_key_pem: Some(ca_key.serialize_pem()) })
}

/// [`generate_at`] now.
pub fn generate(names: &[String]) -> anyhow::Result<CertBundle> {
    generate_at(names, time::OffsetDateTime::now_utc())
}

/// A serving certificate for `names` signed by `issuer`, valid [`LEAF_VALIDITY`] from
/// `now`: its PEM and its key's.
fn sign_leaf<S: rcgen::SigningKey>(
    names: &[String],
    issuer: &rcgen::Issuer<'_, S>,
    now: time::OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().context("making the webhook certificate's key")?;
    let mut leaf = CertificateParams::new(names.to_vec()).context("the webhook certificate's names")?;
    leaf.distinguished_name.push(DnType::CommonName, names[0].clone());
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::minutes(5);
    leaf.not_after = now + LEAF_VALIDITY;
    let cert = leaf.signed_by(&key, issuer).context("signing the webhook certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// When the first certificate of `pem` ends.
pub fn not_after(pem: &str) -> anyhow::Result<time::OffsetDateTime> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = block.parse_x509().map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// The bundle to store instead of `b` at `now`, or `None` while its serving certificate
/// ends more than [`RENEW_BEFORE`] from `now`. With the CA's key, a new serving
/// certificate from the same CA (the CA that signs first in `ca_pem`; an older one after
/// it is dropped: every replica serves a certificate of the first by then); without it,
/// a new CA and certificate, the old CA kept after the new one.
pub fn renewed(b: &CertBundle, names: &[String], now: time::OffsetDateTime) -> anyhow::Result<Option<CertBundle>> {
    let ends = not_after(&b.cert_pem).context("the webhook certificate in the Secret")?;
    if ends - now > RENEW_BEFORE {
        return Ok(None);
    }
    let Some(ca_key_pem) = &b.ca_key_pem else {
        let mut fresh = generate_at(names, now)?;
        let old_ca = first_pem(&b.ca_pem)?;
        fresh.ca_pem = format!("{}{}", fresh.ca_pem, old_ca);
        return Ok(Some(fresh));
    };
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).context("ca.key in the Secret")?;
    let ca_pem = first_pem(&b.ca_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("ca.crt in the Secret")?;
    let (cert_pem, key_pem) = sign_leaf(names, &issuer, now)?;
    Ok(Some(CertBundle { ca_pem, cert_pem, key_pem, ca_key_pem: b.ca_key_pem.clone() }))
}

/// The first certificate of a PEM bundle, as PEM.
fn first_pem(pem: &str) -> anyhow::Result<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = pem.find(END).ok_or_else(|| anyhow::anyhow!("ca.crt holds no PEM certificate"))? + END.len();
    Ok(format!("{}\n", pem[..end].trim_start()))
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
            let served = ServedCert::new(certified_key(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())?);
            let (names, secret) = (names.clone(), (namespace.clone(), secret.clone()));
            tokio::spawn(keep_renewed(client.clone(), secret, configuration.clone(), names, served.clone(), bundle));
            Ok(served)
        }
    }
}

/// The bundle the Secret holds, made and stored first when it holds none (or one for
/// other names, or one that cannot be read), and renewed first when its serving
/// certificate is due ([`renewed`]). Another replica's write between the read and the
/// update makes the update fail with a conflict; the Secret is then read again.
pub async fn ensure_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> anyhow::Result<CertBundle> {
    ensure_secret_at(client, namespace, name, names, time::OffsetDateTime::now_utc()).await
}

/// [`ensure_secret`] at the time `now`.
pub async fn ensure_secret_at(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    names: &[String],
    now: time::OffsetDateTime,
) -> anyhow::Result<CertBundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let wanted = names.join(",");
    for _ in 0..5 {
        let mut s = api.get(name).await.with_context(|| {
            format!("reading Secret {namespace}/{name} (the chart creates it empty; the operator fills it)")
        })?;
        let made_for = s.metadata.annotations.as_ref().and_then(|a| a.get(NAMES_ANNOTATION)).cloned();
        let current = bundle_of(&s).filter(|_| made_for.as_deref() == Some(wanted.as_str()));
        let (b, what) = match current.as_ref().map(|b| renewed(b, names, now)) {
            Some(Ok(None)) => return current.context("a bundle was read"),
            Some(Ok(Some(next))) => (next, "renewed the webhook's serving certificate"),
            Some(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "the webhook certificate in the Secret cannot be read; making a new one");
                (generate_at(names, now)?, "made the webhook's CA and certificate")
            }
            None => (generate_at(names, now)?, "made the webhook's CA and certificate"),
        };
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in [("ca.crt", &b.ca_pem), ("tls.crt", &b.cert_pem), ("tls.key", &b.key_pem)] {
            data.insert(k.into(), ByteString(v.clone().into_bytes()));
        }
        if let Some(k) = &b.ca_key_pem {
            data.insert("ca.key".into(), ByteString(k.clone().into_bytes()));
        }
        s.metadata.annotations.get_or_insert_with(Default::default).insert(NAMES_ANNOTATION.into(), wanted.clone());
        match api.replace(name, &PostParams::default(), &s).await {
            Ok(_) => {
                let until = not_after(&b.cert_pem).map(|t| t.to_string()).unwrap_or_default();
                tracing::info!(secret = %format!("{namespace}/{name}"), names = %wanted, until = %until, "{what}");
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

/// The bundle in a Secret, when its three certificate keys hold UTF-8 (`ca.key` is
/// optional).
fn bundle_of(s: &Secret) -> Option<CertBundle> {
    let data = s.data.as_ref()?;
    let get = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok()).filter(|v| !v.is_empty());
    Some(CertBundle {
        ca_pem: get("ca.crt")?,
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
        ca_key_pem: get("ca.key"),
    })
}

/// Every [`RELOAD_EVERY`], reads the Secret `namespace/secret` of a self-made certificate
/// for `names`, renews it when due ([`ensure_secret`]), serves what it holds from the
/// next handshake on when it changed (this replica's renewal or another's), and sets the
/// `caBundle` of `configuration` again when the CA changed.
async fn keep_renewed(
    client: kube::Client,
    (namespace, secret): (String, String),
    configuration: Option<String>,
    names: Vec<String>,
    served: Arc<ServedCert>,
    mut now: CertBundle,
) {
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let next = match ensure_secret(&client, &namespace, &secret, &names).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "keeping the webhook certificate served");
                continue;
            }
        };
        if next.ca_pem != now.ca_pem {
            if let Some(c) = &configuration {
                if let Err(e) = patch_ca_bundle(&client, c, &next.ca_pem).await {
                    tracing::warn!(error = %format!("{e:#}"), "the caBundle is not set yet; trying again in a minute");
                    continue;
                }
            }
        }
        if next.cert_pem != now.cert_pem {
            match certified_key(next.cert_pem.as_bytes(), next.key_pem.as_bytes()) {
                Ok(ck) => {
                    served.replace(ck);
                    tracing::info!(secret = %format!("{namespace}/{secret}"), "serving the renewed webhook certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "keeping the webhook certificate served");
                    continue;
                }
            }
        }
        now = next;
    }
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

    /// Whether `cert_pem` verifies for `name` at `at` against the CAs of `ca_pem`, as a
    /// TLS client (the API server) checks it.
    fn verifies(ca_pem: &str, cert_pem: &str, name: &str, at: time::OffsetDateTime) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("a CA certificate")).expect("a root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("a certificate");
        let name = ServerName::try_from(name.to_string()).expect("a name");
        let when = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp() as u64));
        verifier.verify_server_cert(&leaf, &[], &name, &[], when).is_ok()
    }

    #[test]
    fn a_serving_certificate_is_renewed_by_its_ca_a_third_of_its_life_before_it_ends() {
        let names = vec!["svc.ns.svc".to_string()];
        let t0 = time::OffsetDateTime::now_utc();
        let b = generate_at(&names, t0).expect("generated");
        let ends = not_after(&b.cert_pem).expect("readable");
        assert!((ends - (t0 + LEAF_VALIDITY)).abs() < time::Duration::seconds(2), "valid a year: {ends}");
        assert!(verifies(&b.ca_pem, &b.cert_pem, "svc.ns.svc", t0 + time::Duration::days(1)));
        assert!(renewed(&b, &names, t0 + time::Duration::days(240)).expect("checked").is_none(), "not due yet");
        let due = t0 + time::Duration::days(250);
        let n = renewed(&b, &names, due).expect("renewed").expect("due 115 days before its end");
        assert_ne!(n.cert_pem, b.cert_pem);
        assert_eq!(n.ca_key_pem, b.ca_key_pem, "the same CA signs it");
        assert!(verifies(&b.ca_pem, &n.cert_pem, "svc.ns.svc", due), "the caBundle already trusts the new certificate");
        assert!(!verifies(&b.ca_pem, &b.cert_pem, "svc.ns.svc", t0 + time::Duration::days(366)), "the old one ends");
        assert!(verifies(&n.ca_pem, &n.cert_pem, "svc.ns.svc", t0 + time::Duration::days(366)), "the new one goes on");
        let over = renewed(&b, &names, t0 + time::Duration::days(400)).expect("renewed").expect("ended: renewed");
        assert!(verifies(&over.ca_pem, &over.cert_pem, "svc.ns.svc", t0 + time::Duration::days(400)));
    }

    #[test]
    fn a_bundle_without_the_cas_key_gets_a_new_ca_trusted_next_to_the_old() {
        let names = vec!["127.0.0.1".to_string()];
        let t0 = time::OffsetDateTime::now_utc() - time::Duration::days(300);
        let mut old = generate_at(&names, t0).expect("generated");
        old.ca_key_pem = None;
        let now = time::OffsetDateTime::now_utc();
        let n = renewed(&old, &names, now).expect("renewed").expect("due");
        assert!(n.ca_key_pem.is_some(), "the new CA's key is kept");
        assert_eq!(n.ca_pem.matches("BEGIN CERTIFICATE").count(), 2, "new CA, then the old");
        assert!(verifies(&n.ca_pem, &n.cert_pem, "127.0.0.1", now), "the new certificate is trusted");
        assert!(verifies(&n.ca_pem, &old.cert_pem, "127.0.0.1", now), "a replica still serving the old one too");
        let later = now + time::Duration::days(250);
        let m = renewed(&n, &names, later).expect("renewed").expect("due");
        assert_eq!(m.ca_pem.matches("BEGIN CERTIFICATE").count(), 1, "the old CA is dropped at the next renewal");
        assert!(verifies(&m.ca_pem, &m.cert_pem, "127.0.0.1", later));
        let garbage = CertBundle { cert_pem: "garbage".into(), ..n };
        assert!(renewed(&garbage, &names, now).is_err(), "an unreadable certificate is an error, not a panic");
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
