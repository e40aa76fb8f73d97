//! [`Ws`]: a cheap, cloneable handle to one connection, usable from any task.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use bytes::Bytes;
use roost::{
    CloseCode, Utf8Bytes,
    proto::{UsageError, close::MAX_CLOSE_REASON},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{ConnState, Data, Room, SendOutcome, peer::Peer, store::ConnectionId};

/// The close code (4001, in the range RFC 6455 leaves to applications) of a connection
/// whose session was resumed on another connection with its resume token: the client that
/// gets it should not reconnect with that token, which is spent.
pub const CLOSE_RESUMED: CloseCode = CloseCode(4001);

/// One WebSocket connection of the server. Clone it freely and keep it anywhere: every method
/// is safe from any task; once the connection is gone, sends report
/// [`SendOutcome::Closed`].
#[derive(Clone)]
pub struct Ws {
    peer: Arc<Peer>,
}

/// An attachment could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The serialized value is larger than `ServerConfig::max_attachment_size`.
    #[error("attachment of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The serialized size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value could not be serialized, or the stored bytes are not that type.
    #[error("attachment is not valid for this type: {0}")]
    Serde(#[from] serde_json::Error),
    /// The durable write failed: it is not acknowledged, and this connection keeps its
    /// previous attachment. The store usually still holds the previous bytes too, though a
    /// failure after the new bytes were in place can leave those (see
    /// [`AttachmentStore::put`](crate::store::AttachmentStore::put)). The source says why
    /// (the operating system's error, such as a full disk).
    #[error("attachment could not be written durably")]
    Store(#[from] crate::store::StoreError),
    /// The connection's session was resumed on another connection (with its resume token),
    /// which took the attachment: this one writes no more, so that nothing it writes is left
    /// behind under its spent token. The server closes it with [`CLOSE_RESUMED`].
    #[error("the session was resumed on another connection, which holds the attachment now")]
    Resumed,
    /// The durable write could not run (the runtime is shutting down).
    #[error("attachment write was cancelled")]
    Cancelled,
}

impl fmt::Debug for Ws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ws")
            .field("id", &self.peer.id)
            .field("room", &self.peer.room)
            .field("state", &self.peer.state())
            .finish()
    }
}

impl PartialEq for Ws {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.peer, &other.peer)
    }
}

impl Eq for Ws {}

impl Ws {
    pub(crate) fn from_peer(peer: Arc<Peer>) -> Self {
        Ws { peer }
    }

    pub(crate) fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// The connection's id: unique, also across restarts.
    pub fn id(&self) -> ConnectionId {
        self.peer.id
    }

    /// The room this connection belongs to.
    pub fn room(&self) -> Room {
        Room::of_peer(&self.peer)
    }

    /// Live, parked or dormant.
    pub fn state(&self) -> ConnState {
        self.peer.state()
    }

    /// Sends a text message (compressed when negotiated and large enough).
    pub fn send_text(&self, text: impl Into<Utf8Bytes>) -> SendOutcome {
        self.send(Data::Text(text.into()))
    }

    /// Sends a binary message.
    pub fn send_binary(&self, bytes: impl Into<Bytes>) -> SendOutcome {
        self.send(Data::Binary(bytes.into()))
    }

    /// Sends a data message.
    pub fn send(&self, data: Data) -> SendOutcome {
        let (sent, outcome) = self.peer.send(data);
        match sent {
            Ok(()) => {
                self.peer.shared.metrics.messages_out.fetch_add(1, Relaxed);
                outcome
            }
            Err(_) => SendOutcome::Closed,
        }
    }

    /// Starts the close handshake with `code` and `reason`.
    ///
    /// The code must be one an endpoint may send (1000–1003, 1007–1014, 3000–4999) and the
    /// reason at most 123 bytes; closing twice is an error too.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), UsageError> {
        let code = CloseCode(code);
        if !code.is_sendable() {
            return Err(UsageError::InvalidCloseCode(code.0));
        }
        if reason.len() > MAX_CLOSE_REASON {
            return Err(UsageError::CloseReasonTooLong(reason.len()));
        }
        let frame = roost::CloseFrame::new(code, reason);
        let (result, _) = self
            .peer
            .with_core(|core| core.close(Some(frame), Instant::now()));
        result
    }

    /// The token a client passes as `?resume=TOKEN` to get this connection's attachment back
    /// on a new connection, once. Signed when asked for (the connection keeps only its
    /// expiry). It lasts `ServerConfig::resume_ttl` from the attachment's last write (or the
    /// server's last dating of it, which an open connection gets once the attachment is half
    /// the TTL old), or from the handshake before any: so a token asked for late in a long
    /// connection still lasts about half the TTL or more. Calls between two writes (or
    /// datings) return the same token.
    pub fn resume_token(&self) -> String {
        self.peer
            .shared
            .resume_key
            .issue(self.peer.id, self.peer.resume_expires())
    }

    /// Sets the text request answered inside the codec, without waking the handler or
    /// reading the attachment. An empty request and response clear it.
    pub fn set_auto_response(&self, request: &str, response: &str) {
        let auto = (!request.is_empty() || !response.is_empty())
            .then(|| self.peer.shared.auto_response(request, response));
        self.peer.set_auto_response(auto);
    }

    /// How many messages this connection's auto-response answered.
    pub fn auto_response_hits(&self) -> u64 {
        self.peer.auto_response_hits()
    }

    /// Stores `value` (any serde type; strings too) as this connection's attachment. With a
    /// durable directory the bytes are on disk (fsynced) when this returns.
    pub async fn serialize_attachment<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(), AttachmentError> {
        let bytes = serde_json::to_vec(value)?;
        self.set_attachment_bytes(Bytes::from(bytes)).await
    }

    /// Reads the attachment back as `T`; `Ok(None)` when none is set.
    pub fn deserialize_attachment<T: DeserializeOwned>(
        &self,
    ) -> Result<Option<T>, AttachmentError> {
        match self.attachment_bytes() {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores raw bytes as this connection's attachment (durably with a durable directory).
    pub async fn set_attachment_bytes(&self, bytes: Bytes) -> Result<(), AttachmentError> {
        let max = self.peer.shared.config.max_attachment_size;
        if bytes.len() > max {
            return Err(AttachmentError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        let written_from = std::time::SystemTime::now();
        let persisted = self
            .peer
            .shared
            .persist_attachment(self.peer.id, bytes.clone())
            .await;
        if let Err(AttachmentError::Resumed) = persisted {
            // Found out here when the resume happened on another process.
            self.peer.shared.displace(self.peer.id);
        }
        persisted?;
        self.peer.set_attachment(Some(bytes));
        self.peer.extend_resume(written_from);
        Ok(())
    }

    /// The raw attachment bytes, if any.
    pub fn attachment_bytes(&self) -> Option<Bytes> {
        self.peer.attachment()
    }

    /// Moves a persisted attachment (of a connection that is gone, e.g. before a crash) onto
    /// this connection: an operator's tool. Returns whether there was one to adopt.
    pub async fn adopt_attachment(&self, from: ConnectionId) -> Result<bool, AttachmentError> {
        let moved_from = std::time::SystemTime::now();
        match self.peer.shared.adopt(from, self.peer.id).await? {
            Some(bytes) => {
                self.peer.shared.took_session(from);
                self.peer.set_attachment(Some(bytes));
                self.peer.extend_resume(moved_from);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
