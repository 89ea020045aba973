//! The gRPC channels calls go over: one per instance address, connected on
//! first use and reused by every later call (a tonic `Channel` multiplexes
//! calls over one HTTP/2 connection and reconnects by itself). Over TLS
//! when the client was built with [`Tls`](crate::Tls).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How often a connection with a call open (a change stream, above all)
/// is pinged, and how long a ping may go unanswered before the connection
/// counts as lost: a peer that vanished without closing it (a dead host,
/// a partition) would otherwise hold a stream open, and silent, for as
/// long as TCP takes to notice.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses kept at most. Instances that come and go (new pod addresses)
/// leave channels behind; past this the pool starts over, and the live
/// instances' channels reconnect on their next call.
const MAX_CHANNELS: usize = 1_024;

/// One lazily connected channel per instance address.
pub(crate) struct Pool {
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
    /// Held only to look up or insert: never across an await.
    channels: Mutex<HashMap<String, Channel>>,
}

impl Pool {
    pub(crate) fn new(tls: Option<ClientTlsConfig>, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Returns `address` without its scheme, checked against the TLS
    /// setting: `host:port`, `http://host:port` without TLS, or
    /// `https://host:port` with it.
    pub(crate) fn normalize(&self, address: &str) -> Result<String, String> {
        let (scheme, bare) = match address.split_once("://") {
            Some((scheme, bare)) => (Some(scheme), bare),
            None => (None, address),
        };
        match (scheme, self.tls.is_some()) {
            (None, _) | (Some("http"), false) | (Some("https"), true) => {}
            (Some("https"), false) => return Err("https:// needs tls(..) on the builder".into()),
            (Some("http"), true) => return Err("http:// with TLS configured".into()),
            (Some(other), _) => return Err(format!("unknown scheme {other:?}")),
        }
        if bare.is_empty() {
            return Err("no host:port".into());
        }
        Ok(bare.to_owned())
    }

    /// Returns the channel to the instance at `address` (`host:port`),
    /// creating it (unconnected) on first use.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        if let Some(channel) = self.channels.lock().get(address) {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(address)?.connect_lazy();
        let mut channels = self.channels.lock();
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        // Another call may have inserted one meanwhile: keep the first.
        Ok(channels
            .entry(address.to_owned())
            .or_insert(channel)
            .clone())
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(false);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_their_scheme_and_must_match_the_tls_setting() {
        let plain = Pool::new(None, Duration::from_secs(1));
        assert_eq!(plain.normalize("10.0.0.1:50051").unwrap(), "10.0.0.1:50051");
        assert_eq!(plain.normalize("http://a:1").unwrap(), "a:1");
        assert!(plain.normalize("https://a:1").is_err());
        assert!(plain.normalize("ftp://a:1").is_err());
        assert!(plain.normalize("http://").is_err());
        let tls = Pool::new(Some(ClientTlsConfig::new()), Duration::from_secs(1));
        assert_eq!(tls.normalize("https://a:1").unwrap(), "a:1");
        assert!(tls.normalize("http://a:1").is_err());
    }
}
