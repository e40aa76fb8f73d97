//! Server-wide settings, with defaults safe for a public server.

use std::{path::PathBuf, time::Duration};

use roost::{
    CloseCode, Config,
    proto::{ConfigError, MAX_TIMEOUT},
};

/// What to do with a message for a connection whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Drop the message for that connection only; the send reports
    /// [`crate::SendOutcome::Dropped`].
    Drop,
    /// Close that connection with this code (1008 policy violation or 1013 try again later);
    /// what was queued for it is discarded.
    Close(CloseCode),
}

/// Settings of an [`crate::App`]. Every field documents its default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The protocol limits (message and frame size, handshake size and timeout, close
    /// timeout). Default: [`Config::default`] with permessage-deflate using
    /// `server_no_context_takeover`, so a broadcast is compressed once for every member and an
    /// idle connection can drop its compressor.
    pub protocol: Config,
    /// Most WebSocket connections at once; past it the handshake is answered 503. Default
    /// 20,000.
    pub max_connections: usize,
    /// Allowed `Origin` values (exact match, e.g. `https://example.com`); a request with
    /// another Origin is answered 403. Empty (the default) allows every origin.
    pub allowed_origins: Vec<String>,
    /// Bytes that may wait in one connection's outbound queue. Default 1 MiB: a reader that
    /// never reads costs at most this much plus one message. A message for a full queue meets
    /// the [`BackpressurePolicy`]. What the codec answers by itself (pongs, the
    /// auto-response) counts as messages of at most this size (or 128 KiB, if more): the
    /// server lowers the protocol's `max_queued_output` to it.
    pub max_outbound: usize,
    /// What happens past `max_outbound`. Default: close with 1013 (try again later).
    pub backpressure: BackpressurePolicy,
    /// Largest serialized attachment. Default 64 KiB.
    pub max_attachment_size: usize,
    /// Idle time after which a connection turns dormant and, with nothing in flight,
    /// hibernates: no buffers, no compression state, no task. Default 10 s.
    pub dormant_after: Duration,
    /// Idle time after which the server pings the peer. Default 30 s.
    pub ping_interval: Duration,
    /// Time without any frame from the peer after which the connection is dropped as dead:
    /// a close frame (1001, "idle timeout") is sent if it can leave within the close timeout,
    /// with no wait for the peer's answer (the handler sees 1006). Default 75 s (two missed
    /// pings and a margin).
    pub idle_timeout: Duration,
    /// How long a resume token stays valid, from its connection's last attachment write (or
    /// its handshake, before any). Default 24 hours. While the connection is open, the server
    /// dates its stored attachment anew once it is half this old (checked every 24th of it),
    /// so a token handed out late in a long connection lasts at least about half of it. It
    /// bounds the store too: an attachment not written for this long, whose connection is
    /// gone, is removed (within a 24th of it), since no token can reach it. Tokens carry
    /// their expiry in whole seconds, rounded down: one may lapse up to a second sooner.
    pub resume_ttl: Duration,
    /// Directory for durable attachments and the resume key (`--durable DIR`). Default none:
    /// attachments live in memory and resume tokens only work while the process lives.
    pub durable_dir: Option<PathBuf>,
    /// How long a graceful shutdown waits for the close handshakes (and the writes queued
    /// before them) once every connection was told to close; the rest are then dropped.
    /// Default 5 s.
    pub shutdown_timeout: Duration,
    /// A request/response pair every new connection answers in the codec (a heartbeat),
    /// until its handler sets another with [`crate::Ws::set_auto_response`]. Default none.
    pub auto_response: Option<(String, String)>,
    /// Share rooms, presence and attachments with other roost processes through Redis
    /// (`--cluster redis://HOST:PORT`). Default none: a single process, the fastest path.
    pub cluster: Option<crate::ClusterConfig>,
    /// Serve the server's own HTTP paths (`/metrics`, `/healthz`, `/readyz`, `/presence`) on
    /// this address instead of the public port (`--admin-listen ADDR`): bind it to a private
    /// interface so only operators and probes reach them. The public port then hands those
    /// paths to the app's [`HttpHandler`](crate::HttpHandler) like any other. Default none:
    /// they are served on the public port.
    pub admin_addr: Option<std::net::SocketAddr>,
}

impl ServerConfig {
    /// Checks the values [`App::serve_on`](crate::App::serve_on) refuses to run with:
    /// `max_connections` and `max_outbound` of 0 (no connection could ever be accepted, or
    /// every send would meet the backpressure policy), a backpressure close code that may
    /// not be sent (1005, 1006, 1015, …), a `resume_ttl` under a second (tokens
    /// carry whole seconds, so each would be born expired), and a duration over a year
    /// ([`MAX_TIMEOUT`]; a year is "never" in practice, and a deadline further ahead may
    /// not be a time the clock can hold). The protocol limits were checked when
    /// [`Config`] was built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max_connections", self.max_connections),
            ("max_outbound", self.max_outbound),
        ] {
            if value == 0 {
                return Err(ConfigError::InvalidLimit {
                    name,
                    value: 0,
                    why: "must be at least 1",
                });
            }
        }
        if let BackpressurePolicy::Close(code) = self.backpressure
            && !code.is_sendable()
        {
            return Err(ConfigError::InvalidLimit {
                name: "backpressure",
                value: u64::from(code.0),
                why: "is a close code no endpoint may send (RFC 6455 §7.4): use 1008 or 1013",
            });
        }
        if self.resume_ttl < Duration::from_secs(1) {
            return Err(ConfigError::InvalidLimit {
                name: "resume_ttl",
                value: self.resume_ttl.as_millis() as u64,
                why: "milliseconds: must be at least a second (tokens expire on a whole second)",
            });
        }
        for (name, value) in [
            ("dormant_after", self.dormant_after),
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("resume_ttl", self.resume_ttl),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            if value > MAX_TIMEOUT {
                return Err(ConfigError::InvalidLimit {
                    name,
                    value: value.as_secs(),
                    why: "seconds: must be at most a year (use a year to mean never)",
                });
            }
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let deflate = roost::DeflateConfig {
            server_no_context_takeover: true,
            ..Default::default()
        };
        let protocol = match Config::builder().deflate(deflate).build() {
            Ok(config) => config,
            Err(_) => unreachable!("the default limits are valid"),
        };
        ServerConfig {
            protocol,
            max_connections: 20_000,
            allowed_origins: Vec::new(),
            max_outbound: 1 << 20,
            backpressure: BackpressurePolicy::Close(CloseCode::TRY_AGAIN_LATER),
            max_attachment_size: 64 << 10,
            dormant_after: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            resume_ttl: Duration::from_secs(24 * 3600),
            durable_dir: None,
            shutdown_timeout: Duration::from_secs(5),
            auto_response: None,
            cluster: None,
            admin_addr: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn each_unusable_value_is_refused_by_name() {
        type Spoil = fn(&mut ServerConfig);
        let cases: [(&str, Spoil); 9] = [
            ("backpressure", |c| {
                c.backpressure = BackpressurePolicy::Close(CloseCode::ABNORMAL)
            }),
            ("max_connections", |c| c.max_connections = 0),
            ("max_outbound", |c| c.max_outbound = 0),
            ("resume_ttl", |c| c.resume_ttl = Duration::from_millis(999)),
            ("resume_ttl", |c| c.resume_ttl = MAX_TIMEOUT * 2),
            ("dormant_after", |c| c.dormant_after = Duration::MAX),
            ("ping_interval", |c| {
                c.ping_interval = MAX_TIMEOUT + Duration::from_secs(1)
            }),
            ("idle_timeout", |c| c.idle_timeout = Duration::MAX),
            ("shutdown_timeout", |c| c.shutdown_timeout = Duration::MAX),
        ];
        for (field, spoil) in cases {
            let mut config = ServerConfig::default();
            spoil(&mut config);
            match config.validate() {
                Err(ConfigError::InvalidLimit { name, .. }) => assert_eq!(name, field),
                other => panic!("{field}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_edges_are_allowed() {
        let config = ServerConfig {
            max_connections: 1,
            max_outbound: 1,
            resume_ttl: Duration::from_secs(1),
            idle_timeout: MAX_TIMEOUT,
            ping_interval: MAX_TIMEOUT,
            dormant_after: Duration::ZERO,
            shutdown_timeout: Duration::ZERO,
            ..ServerConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
