//! Ordering certificates from an ACME CA (Let's Encrypt, or any other) with HTTP-01.
//!
//! The account is created once and its credentials kept in the state dir; every later order
//! reuses it. An order publishes each challenge answer in the [`ChallengeStore`] (the plain
//! HTTP listener serves it), tells the CA to validate, waits for the order to be ready,
//! finalizes it with a fresh key, and downloads the chain. Only one process orders at a time
//! per state dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use switchback_config::AcmeConfig;
use tokio::sync::Mutex;
use tracing::info;

use crate::challenge::ChallengeStore;
use crate::shared::{OrderLock, SharedStore};
use crate::store::{CertStore, SavedAccount};

/// How long one order may take, from new-order to the downloaded chain.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// A newly issued key and chain, as PEM.
pub struct Issued {
    pub key_pem: String,
    pub chain_pem: String,
}

pub struct AcmeClient {
    config: AcmeConfig,
    store: CertStore,
    challenges: Arc<ChallengeStore>,
    account: Mutex<Option<Account>>,
    /// Fleet mode: the account, the answers and the right to order are the fleet's.
    shared: std::sync::OnceLock<Arc<dyn SharedStore>>,
}

/// Why an order (or the account it needs) failed. The certificate served before stays
/// served.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA or the way to it refused a step: `context` says which.
    #[error("{context}: {source}")]
    Ca {
        context: String,
        source: instant_acme::Error,
    },
    /// Reading or writing the state dir.
    #[error("{context}: {source}")]
    Store {
        context: &'static str,
        source: std::io::Error,
    },
    #[error("the saved ACME account: {0}")]
    SavedAccount(serde_json::Error),
    #[error("acme.eab_hmac_key is not base64url")]
    EabKey,
    #[error("acme.ca_root {}: {reason}", path.display())]
    CaRoot { path: PathBuf, reason: String },
    #[error("TLS for the ACME client: {0}")]
    Tls(rustls::Error),
    #[error("another switchback process is ordering a certificate with this state dir")]
    Locked,
    #[error(
        "fleet node {node} is ordering {host}; this node serves its certificate when it comes"
    )]
    OrderedElsewhere { host: String, node: String },
    #[error("the fleet's certificate store: {0}")]
    Shared(String),
    #[error("the order for {host} took more than {}s", timeout.as_secs())]
    Timeout { host: String, timeout: Duration },
    #[error("authorization for {host} is {status}")]
    Authorization { host: String, status: String },
    #[error("the CA offers no HTTP-01 challenge for {host}")]
    NoHttp01 { host: String },
    #[error("validation of {host} failed: {detail}")]
    Validation { host: String, detail: String },
}

fn ca(context: impl Into<String>) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    let context = context.into();
    move |source| AcmeError::Ca { context, source }
}

fn store(context: &'static str) -> impl FnOnce(std::io::Error) -> AcmeError {
    move |source| AcmeError::Store { context, source }
}

impl AcmeClient {
    pub fn new(
        config: AcmeConfig,
        store: CertStore,
        challenges: Arc<ChallengeStore>,
    ) -> AcmeClient {
        AcmeClient {
            config,
            store,
            challenges,
            account: Mutex::new(None),
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Fleet mode: orders go through `shared` (see [`crate::shared`]).
    pub fn set_shared(&self, shared: Arc<dyn SharedStore>) {
        let _ = self.shared.set(shared);
    }

    async fn load_account(&self) -> Result<Option<SavedAccount>, AcmeError> {
        match self.shared.get() {
            Some(shared) => shared.load_account().await.map_err(AcmeError::Shared),
            None => self
                .store
                .load_account()
                .map_err(store("reading the ACME account")),
        }
    }

    async fn save_account(&self, account: &SavedAccount) -> Result<(), AcmeError> {
        match self.shared.get() {
            Some(shared) => shared
                .save_account(account)
                .await
                .map_err(AcmeError::Shared),
            None => self
                .store
                .save_account(account)
                .map_err(store("saving the ACME account")),
        }
    }

    /// An account builder whose every call to the CA ends within `acme.timeout`.
    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        let client = https_client(self.config.ca_root.as_deref())?;
        Ok(Account::builder_with_http(Box::new(WithDeadline {
            inner: Box::new(client),
            timeout: self.config.timeout,
        })))
    }

    /// The account: from the state dir when it was made for this directory, else a new one
    /// (saved before it is used, so a crash never orphans it).
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let saved = self.load_account().await?;
        let account = match saved {
            Some(saved) if saved.directory == self.config.directory => {
                let creds: AccountCredentials =
                    serde_json::from_value(saved.credentials).map_err(AcmeError::SavedAccount)?;
                self.builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(ca("restoring the ACME account"))?
            }
            _ => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = match &self.config.eab {
                    Some((kid, key)) => {
                        let bytes =
                            switchback_config::decode_base64url(key).ok_or(AcmeError::EabKey)?;
                        Some(ExternalAccountKey::new(kid.clone(), &bytes))
                    }
                    None => None,
                };
                let (account, creds) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(ca(format!(
                        "creating an ACME account at {}",
                        self.config.directory
                    )))?;
                let credentials = serde_json::to_value(&creds).map_err(AcmeError::SavedAccount)?;
                self.save_account(&SavedAccount {
                    directory: self.config.directory.clone(),
                    credentials,
                })
                .await?;
                info!(directory = %self.config.directory, id = %account.id(), "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for one host. Fails if another process is ordering with the same
    /// state dir, or, in fleet mode, if another node is ordering this host.
    pub async fn order(&self, host: &str) -> Result<Issued, AcmeError> {
        let _lock = self
            .store
            .try_lock_issuance()
            .map_err(store("the ACME lock"))?
            .ok_or(AcmeError::Locked)?;
        let shared = self.shared.get().cloned();
        if let Some(shared) = &shared {
            match shared.lock_order(host).await.map_err(AcmeError::Shared)? {
                OrderLock::Acquired => {}
                OrderLock::HeldBy(node) => {
                    return Err(AcmeError::OrderedElsewhere {
                        host: host.to_string(),
                        node,
                    })
                }
            }
        }
        let result = self.order_locked(host).await;
        if let Some(shared) = &shared {
            shared.unlock_order(host).await;
        }
        result
    }

    async fn order_locked(&self, host: &str) -> Result<Issued, AcmeError> {
        let mut tokens = Vec::new();
        // The account (created or restored on first use) is part of the order's time.
        let result = tokio::time::timeout(ORDER_TIMEOUT, async {
            let account = self.account().await?;
            self.order_inner(&account, host, &mut tokens).await
        })
        .await;
        for token in &tokens {
            self.challenges.remove(token);
            if let Some(shared) = self.shared.get() {
                shared.remove_challenge(token).await;
            }
        }
        match result {
            Ok(r) => r,
            Err(_) => Err(AcmeError::Timeout {
                host: host.to_string(),
                timeout: ORDER_TIMEOUT,
            }),
        }
    }

    async fn order_inner(
        &self,
        account: &Account,
        host: &str,
        tokens: &mut Vec<String>,
    ) -> Result<Issued, AcmeError> {
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(ca("new order"))?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(ca("authorization"))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Authorization {
                        host: host.to_string(),
                        status: format!("{other:?}"),
                    })
                }
            }
            let mut challenge =
                authz
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| AcmeError::NoHttp01 {
                        host: host.to_string(),
                    })?;
            let token = challenge.token.clone();
            let key_auth = challenge.key_authorization();
            self.challenges
                .put(&token, key_auth.as_str())
                .map_err(store("publishing the challenge answer"))?;
            tokens.push(token.clone());
            if let Some(shared) = self.shared.get() {
                // Every node answers it: the CA's validation may reach any of them.
                shared
                    .put_challenge(&token, key_auth.as_str())
                    .await
                    .map_err(AcmeError::Shared)?;
            }
            challenge.set_ready().await.map_err(ca("challenge"))?;
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(ca("waiting for validation"))?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| format!("{status:?}"));
            return Err(AcmeError::Validation {
                host: host.to_string(),
                detail,
            });
        }
        let key_pem = order.finalize().await.map_err(ca("finalize"))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(ca("downloading the certificate"))?;
        Ok(Issued { key_pem, chain_pem })
    }
}

/// Wraps the CA's HTTP client so that every call (connect, TLS, answer and the whole body)
/// ends within `timeout`: a CA that accepts connections and never answers fails the call
/// instead of hanging certificate work for good.
struct WithDeadline {
    inner: Box<dyn instant_acme::HttpClient>,
    timeout: Duration,
}

impl instant_acme::HttpClient for WithDeadline {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        let call = self.inner.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            let whole = async {
                let mut response = call.await?;
                let body = response
                    .body
                    .into_bytes()
                    .await
                    .map_err(instant_acme::Error::Other)?;
                Ok(instant_acme::BytesResponse {
                    parts: response.parts,
                    body: Box::new(body),
                })
            };
            match tokio::time::timeout(timeout, whole).await {
                Ok(result) => result,
                Err(_) => Err(instant_acme::Error::Other(
                    format!(
                        "no answer from the CA in {}s (acme.timeout)",
                        timeout.as_secs_f64()
                    )
                    .into(),
                )),
            }
        })
    }
}

/// An HTTPS client for the ACME directory that trusts the Mozilla roots, plus `root` when
/// given (a test CA).
fn https_client(root: Option<&Path>) -> Result<impl instant_acme::HttpClient, AcmeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    if let Some(root) = root {
        let bad_root = |reason: String| AcmeError::CaRoot {
            path: root.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(root).map_err(|e| bad_root(e.to_string()))?;
        let extra: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad_root(e.to_string()))?;
        if extra.is_empty() {
            return Err(bad_root("no certificate in it".into()));
        }
        for cert in extra {
            roots.add(cert).map_err(|e| bad_root(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(AcmeError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}
