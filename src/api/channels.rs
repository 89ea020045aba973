//! The internal gRPC channels calls are forwarded over: one per owner
//! address, connected on first use and reused by every later forward (a
//! tonic `Channel` multiplexes calls over one HTTP/2 connection and
//! reconnects by itself). Over TLS when `cluster.tls_ca_file` is set, with
//! a client certificate when `cluster.tls_cert_file` is.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::proto::read_states_client::ReadStatesClient;
use super::status::ApiError;
use crate::auth::{AuthError, read_file};
use crate::config::ClusterConfig;

/// Addresses kept at most. Instances that come and go (new pod addresses)
/// leave channels behind; past this the pool starts over, and the live
/// owners' channels reconnect on their next forward.
const MAX_CHANNELS: usize = 1_024;

/// One lazily connected channel per owner address.
pub struct Channels {
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
    /// Held only to look up or insert: never across an await.
    pool: Mutex<HashMap<String, Channel>>,
}

impl Channels {
    /// Reads the `[cluster]` TLS files, if any. A missing or unusable
    /// file is refused here, at start-up, not at the first forward.
    pub async fn from_config(config: &ClusterConfig) -> Result<Self, AuthError> {
        let tls = match &config.tls_ca_file {
            None => None,
            Some(ca_file) => {
                let ca = read_file("cluster.tls_ca_file", ca_file).await?;
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let (Some(cert_file), Some(key_file)) =
                    (&config.tls_cert_file, &config.tls_key_file)
                {
                    let cert = read_file("cluster.tls_cert_file", cert_file).await?;
                    let key = read_file("cluster.tls_key_file", key_file).await?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                if let Some(name) = &config.tls_server_name {
                    tls = tls.domain_name(name.clone());
                }
                // tonic parses the certificates when an endpoint takes the
                // configuration: try one now.
                Endpoint::from_static("https://readstates.invalid")
                    .tls_config(tls.clone())
                    .map_err(|error| {
                        AuthError::Tls(format!("the [cluster] TLS files are unusable: {error}"))
                    })?;
                Some(tls)
            }
        };
        Ok(Self {
            tls,
            connect_timeout: config.forward_timeout(),
            pool: Mutex::new(HashMap::new()),
        })
    }

    /// Returns a client of the instance at `address` (`host:port`).
    pub fn client(&self, address: &str) -> Result<ReadStatesClient<Channel>, ApiError> {
        if let Some(channel) = self.pool.lock().get(address) {
            return Ok(ReadStatesClient::new(channel.clone()));
        }
        let channel = self.connect_lazy(address)?;
        let mut pool = self.pool.lock();
        if pool.len() >= MAX_CHANNELS {
            pool.clear();
        }
        // Another call may have inserted one meanwhile: keep the first.
        let channel = pool.entry(address.to_owned()).or_insert(channel).clone();
        Ok(ReadStatesClient::new(channel))
    }

    fn connect_lazy(&self, address: &str) -> Result<Channel, ApiError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let unusable = |error: tonic::transport::Error| ApiError::UnusableAddress {
            address: address.to_owned(),
            reason: error.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(unusable)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(unusable)?;
        }
        Ok(endpoint.connect_lazy())
    }
}
