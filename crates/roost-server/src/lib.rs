//! The roost application server: an application supplies handlers, the server owns the
//! connections.
//!
//! - [`App`]: WebSocket routes (`/chat/:room`) run by a [`Handler`], an [`HttpHandler`] for
//!   everything else on the same port, `/metrics` (Prometheus), `/healthz`, `/readyz` and
//!   `/presence?room=R` (or those on an admin address of their own,
//!   [`ServerConfig::admin_addr`]).
//! - [`Ws`]: a cheap, cloneable handle to one connection: send, close, attachment,
//!   auto-response, resume token.
//! - [`Room`]: the connections sharing a key; [`Room::broadcast`] encodes a message once and
//!   shares the bytes with every member, reporting what was sent, queued and dropped.
//! - Attachments: per-connection data ([`Ws::serialize_attachment`]), written atomically to
//!   a durable directory when one is configured, adopted by a reconnecting client that
//!   presents the connection's signed [`Ws::resume_token`] (`?resume=TOKEN`), once.
//! - Auto-responses ([`Ws::set_auto_response`]): a request/response pair answered inside the
//!   codec, without waking the handler.
//! - Hibernation: a connection in use is a task waiting on its socket, reading into a
//!   per-thread buffer; it is *live* while a handler runs, *parked* while idle (no receive
//!   buffer), and *dormant* once idle past [`ServerConfig::dormant_after`]. A dormant
//!   connection with nothing in flight hibernates: no buffers, no compression state, no task,
//!   and its protocol core reduced to a few dozen bytes ([`roost::proto::IdleConnection`]).
//!   Its socket leaves tokio's reactor for a poll of the server's own, whose thread answers
//!   pings, pongs to keepalive pings and the auto-response request itself; a message, a
//!   close, a send that has to wait or a timer wakes it (gives it a task again). Sends and
//!   broadcasts to it are written from the caller's thread; a sweeper sends its keepalive
//!   pings and enforces its idle timeout. [`Metrics`] counts each state, the hibernating
//!   connections and the wake-ups.
//! - Backpressure: each connection's outbound queue is bounded; past it the
//!   [`BackpressurePolicy`] drops the message or closes that connection, and a slow reader
//!   never slows anyone else.
//! - Graceful shutdown on SIGTERM and SIGINT: stop accepting, close every connection with
//!   1001, keep the attachments for resume.
//!
//! - Scale-out ([`ClusterConfig`]): rooms, presence and attachments shared by several
//!   processes through Redis; broadcasts reach every member on every process.
//!
//! What it does not do: TLS (terminate it in front, or use the `roost` crate directly) and
//! HTTP keep-alive for the plain HTTP handler (each plain request gets its own connection).

mod accept;
mod app;
mod broker;
mod config;
mod handler;
mod maintenance;
mod metrics;
mod peer;
mod plain_http;
pub mod resume;
mod room;
mod shared;
mod sleepers;
pub mod store;
mod ws;

pub use app::{App, RouteError, Server, ServerHandle, WsRoute};
pub use broker::{ClusterConfig, ClusterError, RemoteDelivery};
pub use config::{BackpressurePolicy, ServerConfig};
pub use handler::{Data, Disconnect, Handler, HttpHandler};
/// The `http` crate, whose `Uri`, `Request` and `Response` appear in this API.
pub use http;
pub use metrics::{ConnState, Metrics};
pub use peer::SendOutcome;
pub use room::{BroadcastReport, Room};
pub use ws::{AttachmentError, CLOSE_RESUMED, Ws};
