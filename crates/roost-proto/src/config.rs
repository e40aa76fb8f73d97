//! Limits, timeouts and extension settings, with defaults safe for a public server.

use std::time::Duration;

use crate::error::ConfigError;

/// Everything a connection and its handshake are configured with.
///
/// Build one with [`Config::builder`]; [`Config::default`] is safe for a public server.
/// A `Config` is cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    limits: Limits,
    deflate: DeflateConfig,
    accept_no_masking: bool,
    assemble_messages: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            deflate: DeflateConfig::default(),
            accept_no_masking: false,
            assemble_messages: true,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// A builder starting from this configuration, to change some of it.
    pub fn to_builder(&self) -> ConfigBuilder {
        ConfigBuilder {
            config: self.clone(),
        }
    }

    /// The size limits and timeouts.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The permessage-deflate settings.
    pub fn deflate(&self) -> &DeflateConfig {
        &self.deflate
    }

    /// Whether the no-masking extension is offered (client) or accepted (server).
    pub fn no_masking(&self) -> bool {
        self.accept_no_masking
    }

    /// Whether fragments are assembled into messages (the default) or delivered one by one
    /// as [`crate::Message::Frame`].
    pub fn assemble_messages(&self) -> bool {
        self.assemble_messages
    }
}

/// Builds a [`Config`]; each setter documents its default.
#[derive(Debug, Clone)]
#[must_use = "call build() to get the Config"]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Replaces all limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Largest payload of one frame, in bytes. Default 16 MiB. A larger declared length
    /// closes the connection with 1009 before any of it is read.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_frame_size = bytes;
        self
    }

    /// Largest message, in bytes, after inflation when compressed. Default 16 MiB. Bounds the
    /// memory one connection can make the server hold: compressed bytes are inflated as they
    /// arrive, never held whole. Past it the connection closes with 1009, as soon as the
    /// inflated bytes pass it.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_message_size = bytes;
        self
    }

    /// Largest HTTP head of the opening handshake, in bytes. Default 16 KiB; past it the
    /// server answers 431.
    pub fn max_handshake_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_handshake_size = bytes;
        self
    }

    /// Most header lines in the opening handshake. Default 64; past it the server answers 431.
    pub fn max_headers(mut self, count: usize) -> Self {
        self.config.limits.max_headers = count;
        self
    }

    /// How long to wait for the peer's close frame after sending ours. Default 5 s; then the
    /// connection is dropped so a silent peer cannot hold it open. At most a year
    /// ([`MAX_TIMEOUT`]): the builder refuses longer ones.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.close_timeout = timeout;
        self
    }

    /// How long the opening handshake may take, enforced by the drivers. Default 10 s. At most
    /// a year ([`MAX_TIMEOUT`]): the builder refuses longer ones.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.handshake_timeout = timeout;
        self
    }

    /// Output bytes the connection may queue before [`crate::Connection::is_write_blocked`]
    /// reports back-pressure. Default 8 MiB.
    pub fn max_queued_output(mut self, bytes: usize) -> Self {
        self.config.limits.max_queued_output = bytes;
        self
    }

    /// Replaces the permessage-deflate settings.
    pub fn deflate(mut self, deflate: DeflateConfig) -> Self {
        self.config.deflate = deflate;
        self
    }

    /// Offers (client) or accepts (server) the no-masking extension
    /// (draft-damjanovic-websockets-nomasking-02). Default off. When both ends opt in, the
    /// client sends unmasked frames; only sensible where no intermediary can be confused by
    /// attacker-chosen bytes, such as TLS or a trusted network.
    pub fn dangerous_no_masking(mut self, enabled: bool) -> Self {
        self.config.accept_no_masking = enabled;
        self
    }

    /// Deliver each data frame as [`crate::Message::Frame`] instead of assembling messages.
    /// Default false. UTF-8 is still validated across the fragments of a text message.
    pub fn assemble_messages(mut self, assemble: bool) -> Self {
        self.config.assemble_messages = assemble;
        self
    }

    /// Checks the values and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let limits = &self.config.limits;
        for (name, value) in [
            ("max_frame_size", limits.max_frame_size),
            ("max_message_size", limits.max_message_size),
            ("max_handshake_size", limits.max_handshake_size),
            ("max_headers", limits.max_headers),
            ("max_queued_output", limits.max_queued_output),
        ] {
            if value == 0 {
                return Err(ConfigError::InvalidLimit {
                    name,
                    value: 0,
                    why: "must be at least 1",
                });
            }
        }
        if limits.max_handshake_size < 256 {
            return Err(ConfigError::InvalidLimit {
                name: "max_handshake_size",
                value: limits.max_handshake_size as u64,
                why: "must be at least 256 bytes to hold a minimal request",
            });
        }
        for (name, value) in [
            ("close_timeout", limits.close_timeout),
            ("handshake_timeout", limits.handshake_timeout),
        ] {
            if value > MAX_TIMEOUT {
                return Err(ConfigError::InvalidLimit {
                    name,
                    value: value.as_secs(),
                    why: "must be at most a year (365 days, in seconds)",
                });
            }
        }
        self.config.deflate.validate()?;
        Ok(self.config)
    }
}

/// The longest timeout [`ConfigBuilder::build`] takes: longer ones are no timeout in
/// practice, and a deadline this far ahead is still a time the clock can represent
/// (`Duration::MAX` is not).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Size limits and timeouts. Every default is safe for a server on the open internet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload in bytes (default 16 MiB).
    pub max_frame_size: usize,
    /// Largest message in bytes, after inflation (default 16 MiB).
    pub max_message_size: usize,
    /// Largest handshake head in bytes (default 16 KiB).
    pub max_handshake_size: usize,
    /// Most handshake header lines (default 64).
    pub max_headers: usize,
    /// Wait for the peer's close frame after ours (default 5 s).
    pub close_timeout: Duration,
    /// Deadline for the whole opening handshake, enforced by drivers (default 10 s).
    pub handshake_timeout: Duration,
    /// Queued output bytes before back-pressure is reported (default 8 MiB).
    pub max_queued_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_handshake_size: 16 << 10,
            max_headers: 64,
            close_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_queued_output: 8 << 20,
        }
    }
}

/// RFC 7692 permessage-deflate settings, for both roles.
///
/// Window bits are 8..=15. zlib (and zlib-rs) cannot compress with an 8-bit window; where 8
/// is negotiated for our compressor, roost compresses with 9 only when the peer's inflater is
/// known to accept it, and otherwise declines that offer (see [`crate::deflate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Offer (client) or accept (server) permessage-deflate. Default true.
    pub enabled: bool,
    /// Server: reset our compression context after each message even if the client did not
    /// ask; client: ask the server to. Default false (context takeover compresses better).
    pub server_no_context_takeover: bool,
    /// Client: reset our context after each message and say so; server: ask the client to.
    /// Default false.
    pub client_no_context_takeover: bool,
    /// The largest LZ77 window the server's compressor may use (8..=15). Default 15. A server
    /// with a smaller value uses less memory per connection.
    pub server_max_window_bits: u8,
    /// The largest window the client's compressor may use (8..=15). Default 15.
    pub client_max_window_bits: u8,
    /// Messages shorter than this many bytes are sent uncompressed. Default 64: tiny
    /// messages grow when compressed.
    pub compression_threshold: usize,
    /// zlib compression level 0..=9. Default 1: nearly the ratio of level 6 at a fraction of
    /// the CPU.
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            compression_threshold: 64,
            level: 1,
        }
    }
}

impl DeflateConfig {
    /// Permessage-deflate switched off.
    pub fn disabled() -> Self {
        DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("server_max_window_bits", self.server_max_window_bits),
            ("client_max_window_bits", self.client_max_window_bits),
        ] {
            if !(8..=15).contains(&value) {
                return Err(ConfigError::InvalidWindowBits { name, value });
            }
        }
        if self.level > 9 {
            return Err(ConfigError::InvalidLimit {
                name: "deflate level",
                value: u64::from(self.level),
                why: "must be between 0 and 9",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build() {
        assert_eq!(Config::builder().build(), Ok(Config::default()));
    }

    #[test]
    fn to_builder_changes_only_what_is_set() {
        let config = Config::builder()
            .max_message_size(1000)
            .assemble_messages(false)
            .build()
            .unwrap();
        let changed = config.to_builder().max_queued_output(64).build().unwrap();
        assert_eq!(changed.limits().max_queued_output, 64);
        assert_eq!(changed.limits().max_message_size, 1000);
        assert!(!changed.assemble_messages());
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_name() {
        let err = Config::builder().max_message_size(0).build().unwrap_err();
        assert!(err.to_string().contains("max_message_size"), "{err}");
        // A deadline that far ahead would overflow the clock when the close starts.
        let err = Config::builder()
            .close_timeout(Duration::MAX)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("close_timeout"), "{err}");
        let err = Config::builder()
            .handshake_timeout(MAX_TIMEOUT + Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("handshake_timeout"), "{err}");
        let longest = Config::builder()
            .close_timeout(MAX_TIMEOUT)
            .build()
            .unwrap();
        let mut connection = crate::Connection::server(longest, Default::default());
        let now = std::time::Instant::now();
        connection.close(None, now).unwrap();
        assert_eq!(connection.next_deadline(), Some(now + MAX_TIMEOUT));
        let deflate = DeflateConfig {
            server_max_window_bits: 16,
            ..DeflateConfig::default()
        };
        let err = Config::builder().deflate(deflate).build().unwrap_err();
        assert_eq!(
            err,
            ConfigError::InvalidWindowBits {
                name: "server_max_window_bits",
                value: 16
            }
        );
    }
}
