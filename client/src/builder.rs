//! Building a client: the tier's addresses, credentials, deadline and
//! retry policy, checked once; then the slot map is read, and kept current
//! by a background refresh.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::call::Shared;
use crate::client::{ReadStatesClient, Refresher};
use crate::error::ConnectError;
use crate::pool::Pool;
use crate::retry::{Jitter, RetryPolicy};
use crate::router::Router;

impl ReadStatesClient {
    /// Returns a builder: give it the tier's addresses, then `connect`.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

/// The TLS settings: the CA that signed the instances' certificates, and
/// optionally a client certificate (mutual TLS) and the name the instances'
/// certificates carry.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain_name: Option<String>,
}

impl Tls {
    /// Trusts the CA certificates in `ca_pem` (PEM).
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            identity: None,
            domain_name: None,
        }
    }

    /// Presents this client certificate and its key (both PEM), for a
    /// service with `tls.client_ca_file`.
    #[must_use]
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Checks the instances' certificates for `name` rather than for the
    /// host of each address (instances advertised by IP address, say).
    #[must_use]
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    fn config(&self) -> Result<ClientTlsConfig, ConnectError> {
        // tonic skips what is not a certificate: a CA file of none would
        // fail every handshake, far from its cause.
        if !String::from_utf8_lossy(&self.ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConnectError::Tls(
                "the CA PEM holds no certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem.clone()));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert.clone(), key.clone()));
        }
        if let Some(name) = &self.domain_name {
            tls = tls.domain_name(name.clone());
        }
        // tonic reads the certificates when an endpoint takes the
        // configuration: try one now, not at the first call.
        Endpoint::from_static("https://readstates.invalid")
            .tls_config(tls.clone())
            .map_err(|error| ConnectError::Tls(error.to_string()))?;
        Ok(tls)
    }
}

impl std::fmt::Debug for Tls {
    /// Shows no key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Tls")
            .field("client_identity", &self.identity.is_some())
            .field("domain_name", &self.domain_name)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ReadStatesClient`]; see [`ReadStatesClient::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    addresses: Vec<String>,
    bearer_token: Option<String>,
    tls: Option<Tls>,
    deadline: Duration,
    retry: RetryPolicy,
    refresh_interval: Duration,
    connect_timeout: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            bearer_token: None,
            tls: None,
            deadline: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            refresh_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl std::fmt::Debug for ClientBuilder {
    /// Shows no token.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClientBuilder")
            .field("addresses", &self.addresses)
            .field("bearer_token", &self.bearer_token.is_some())
            .field("tls", &self.tls)
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("refresh_interval", &self.refresh_interval)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientBuilder {
    /// Adds instances to reach the tier at (`host:port`, or with a scheme
    /// matching the TLS setting): where the slot map is read, and where
    /// calls go in turn when no owner is known or the cluster is off.
    #[must_use]
    pub fn addresses<I, S>(mut self, addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.addresses.extend(addresses.into_iter().map(Into::into));
        self
    }

    /// Sends `Bearer <token>` as every call's `authorization` (for a
    /// service with `auth.tokens_file`).
    #[must_use]
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Calls over TLS (for a service with `[tls]`).
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the deadline of each attempt of a call, sent as its
    /// `grpc-timeout` (default 2 s); [`ReadStatesClient::with_deadline`]
    /// changes it per call.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets the retry policy (default [`RetryPolicy::default`]).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets how often the slot map is read again in the background
    /// (default 10 s; zero: never, only when a call says it moved).
    #[must_use]
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Sets how long connecting to an instance may take (default 2 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks the settings, reads the slot map (round-robin when the
    /// cluster is off), and starts its background refresh. Fails when no
    /// address answers `GetRouting`, or the map cannot be routed by.
    pub async fn connect(self) -> Result<ReadStatesClient, ConnectError> {
        if self.addresses.is_empty() {
            return Err(ConnectError::NoAddresses);
        }
        let tls = self.tls.as_ref().map(Tls::config).transpose()?;
        let pool = Pool::new(tls, self.connect_timeout);
        let mut seeds = Vec::with_capacity(self.addresses.len());
        for address in &self.addresses {
            let invalid = |reason: String| ConnectError::InvalidAddress {
                address: address.clone(),
                reason,
            };
            let bare = pool.normalize(address).map_err(invalid)?;
            let channel = pool
                .channel(&bare)
                .map_err(|error| invalid(error.to_string()))?;
            seeds.push((bare, channel));
        }
        let authorization = self
            .bearer_token
            .map(|token| {
                AsciiMetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| ConnectError::InvalidToken)
            })
            .transpose()?;
        let shared = Arc::new(Shared {
            router: Router::new(seeds, pool),
            budget: self.retry.new_budget(),
            policy: self.retry,
            jitter: Jitter::new(),
            authorization,
            deadline: self.deadline,
        });
        let map = shared.fetch_map().await?;
        shared.router.install(map);
        let refresher = Refresher(
            (!self.refresh_interval.is_zero())
                .then(|| spawn_refresher(Arc::downgrade(&shared), self.refresh_interval)),
        );
        Ok(ReadStatesClient::new(shared, refresher))
    }
}

/// Reads the slot map every `interval` while a client lives.
fn spawn_refresher(
    shared: std::sync::Weak<Shared>,
    interval: Duration,
) -> tokio::task::AbortHandle {
    let task = tokio::spawn(async move {
        let start = tokio::time::Instant::now() + interval;
        let mut ticks = tokio::time::interval_at(start, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            // A failure is logged, and the map in use kept.
            let _ = shared.refresh(None).await;
        }
    });
    task.abort_handle()
}
