//! A sans-IO core of the WebSocket protocol: RFC 6455 and RFC 7692 (permessage-deflate).
//!
//! This crate owns no socket, clock, task or random source. Bytes read from the network and
//! commands from the application go in; events, bytes to write and the next deadline come
//! out. That makes every behaviour deterministic and testable without a network; the `roost`
//! crate drives it over tokio and std::net.
//!
//! # Tour
//! - [`handshake`]: the opening handshake for both roles, as pure parsing and decisions.
//! - [`Connection`]: the state machine after the handshake: framing, fragmentation, UTF-8,
//!   control frames, the close handshake, limits and extensions.
//! - [`frame`], [`mask`], [`utf8`]: the building blocks, public for frame-level users.
//! - [`deflate`]: permessage-deflate negotiation and the compression codec.
//! - [`Config`]: every limit and timeout, with defaults safe for a public server.
//!
//! # Example: a server connection in memory
//! ```
//! use std::time::Instant;
//! use roost_proto::{Config, Connection, Event, Message, Negotiated};
//!
//! let mut server = Connection::server(Config::default(), Negotiated::default());
//! // A masked text frame "Hello" (RFC 6455 §5.7).
//! server.receive(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58], Instant::now());
//! let Some(Event::Message(Message::Text(text))) = server.next_event() else { panic!() };
//! assert_eq!(text, "Hello");
//! server.send_text("Hello").unwrap();
//! assert_eq!(server.pending_output(), &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
//! ```

pub mod close;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use config::{Config, ConfigBuilder, DeflateConfig, Limits, MAX_TIMEOUT};
pub use connection::{
    AutoResponse, CloseInitiator, CloseStatus, Connection, Event, IdleConnection, MaskSource, Role,
    SHARED_PAYLOAD_MIN,
};
pub use error::{ConfigError, HandshakeError, ProtocolError, UsageError};
pub use extension::{DeflateParams, Negotiated};
pub use frame::{Frame, OpCode};
pub use handshake::{Accepted, ClientAccepted, ClientHandshake, Rejected, RequestReader};
pub use message::{Message, Utf8Bytes};
