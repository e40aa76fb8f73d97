//! [`Shared`]: the state every connection of a server shares, and the guards that count
//! connections and tasks for admission and the graceful shutdown.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
};

use bytes::Bytes;
use parking_lot::Mutex;
use roost::proto::AutoResponse;
use tokio::sync::{Notify, watch};

use crate::{
    AttachmentError, CLOSE_RESUMED, Metrics, ServerConfig,
    broker::Cluster,
    peer::Peer,
    resume::{ResumeKey, UsedTokens},
    room::Rooms,
    sleepers::Sleepers,
    store::{AttachmentStore, ConnectionId},
};

/// State every connection of a server shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) rooms: Rooms,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The shutdown has begun: set before every connection is woken to see it, and read
    /// once per batch (cheaper than the watch's lock).
    pub(crate) shutting_down: AtomicBool,
    pub(crate) peers: Mutex<HashMap<ConnectionId, Weak<Peer>>>,
    /// Hibernating connections: no task runs for them until [`Shared::wake`].
    pub(crate) sleepers: Sleepers,
    /// Where woken connections' tasks run.
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) store: Arc<dyn AttachmentStore>,
    pub(crate) resume_key: ResumeKey,
    pub(crate) used_tokens: UsedTokens,
    /// Held shared by attachment writes and exclusively by a resume's move: a write either
    /// ends before the move (which then takes its bytes) or starts after the token was spent
    /// (and is refused). Resumes are rare next to writes, and each waits only for the writes
    /// under way.
    pub(crate) attachment_moves: tokio::sync::RwLock<()>,
    /// WebSocket connections open now, for `max_connections`.
    pub(crate) open: AtomicUsize,
    /// Connection tasks running (handshakes included), for the graceful shutdown.
    pub(crate) tasks: AtomicUsize,
    pub(crate) tasks_done: Notify,
    /// The link to the other processes, when clustered.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// The auto-response made last ([`Shared::auto_response`]).
    pub(crate) last_auto_response: Mutex<Option<Arc<AutoResponse>>>,
}

impl Shared {
    /// The Prometheus text of the server's metrics and, when clustered, the cluster's.
    pub(crate) fn render_metrics(&self) -> String {
        let mut text = self.metrics.render();
        if let Some(cluster) = &self.cluster {
            let m = &cluster.metrics;
            for (name, help, value) in [
                (
                    "roost_cluster_published_total",
                    "Broadcasts published to the cluster.",
                    m.published.load(Relaxed),
                ),
                (
                    "roost_cluster_received_total",
                    "Broadcasts received from other processes.",
                    m.received.load(Relaxed),
                ),
                (
                    "roost_cluster_undelivered_total",
                    "Broadcasts that could not reach the cluster.",
                    m.undelivered.load(Relaxed),
                ),
            ] {
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
                ));
            }
            let ready = u8::from(cluster.ready());
            text.push_str(&format!(
                "# HELP roost_cluster_ready Whether the cluster broker is reachable.\n# TYPE roost_cluster_ready gauge\nroost_cluster_ready {ready}\n"
            ));
        }
        text
    }

    /// The auto-response `request` → `response`, shared with the connections that have the
    /// same: the server keeps the last one made, which in the usual case (one heartbeat for
    /// every connection) is everyone's, so a hibernating connection holds a pointer to it.
    pub(crate) fn auto_response(&self, request: &str, response: &str) -> Arc<AutoResponse> {
        let mut last = self.last_auto_response.lock();
        if let Some(auto) = &*last
            && auto.request.as_str() == request
            && auto.response.as_str() == response
        {
            return auto.clone();
        }
        let auto = Arc::new(AutoResponse {
            request: request.into(),
            response: response.into(),
        });
        *last = Some(auto.clone());
        auto
    }

    pub(crate) fn ready(&self) -> bool {
        self.cluster.as_ref().is_none_or(|cluster| cluster.ready())
    }

    /// Starts a task for the hibernating connection under `key` (a no-op if it is no longer
    /// there: another wake-up came first).
    pub(crate) fn wake(&self, key: usize) {
        let sleeper = self.sleepers.remove(key);
        if let Some(sleeper) = sleeper {
            self.metrics.hibernating.fetch_sub(1, Relaxed);
            sleeper.resume(&self.runtime, Bytes::new());
        }
    }

    /// Input arrived for the hibernating connection under `key`: answered without a task
    /// when its idle core can, else the connection wakes with it.
    pub(crate) fn hear(&self, key: usize, scratch: &mut [u8]) {
        if let Some((sleeper, input)) = self.sleepers.hear(key, scratch) {
            self.metrics.hibernating.fetch_sub(1, Relaxed);
            sleeper.resume(&self.runtime, input);
        }
    }

    /// Wakes every hibernating connection (the shutdown closes each from its task).
    pub(crate) fn wake_all(&self) {
        for sleeper in self.sleepers.drain() {
            self.metrics.hibernating.fetch_sub(1, Relaxed);
            sleeper.resume(&self.runtime, Bytes::new());
        }
    }

    /// Wakes every connection's task (each sees the shutdown flag, already up, and closes).
    pub(crate) fn notify_all(&self) {
        let peers: Vec<Arc<Peer>> = {
            let peers = self.peers.lock();
            peers.values().filter_map(Weak::upgrade).collect()
        };
        for peer in peers {
            peer.notify();
        }
    }

    pub(crate) fn forget(&self, id: ConnectionId) {
        self.peers.lock().remove(&id);
    }

    /// A resume here took the session of connection `old`: it ends, here or on whichever
    /// process of the cluster holds it.
    pub(crate) fn took_session(&self, old: ConnectionId) {
        self.displace(old);
        if let Some(cluster) = &self.cluster {
            cluster.announce_resumed(old);
        }
    }

    /// Ends connection `id`, if it is here, because a resume took its session and its
    /// attachment.
    pub(crate) fn displace(&self, id: ConnectionId) {
        if let Some(peer) = self.peer(id) {
            peer.set_attachment(None);
            peer.close(CLOSE_RESUMED, "resumed on another connection");
        }
    }

    pub(crate) fn peer(&self, id: ConnectionId) -> Option<Arc<Peer>> {
        self.peers.lock().get(&id).and_then(Weak::upgrade)
    }

    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn AttachmentStore) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, AttachmentError> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|_| AttachmentError::Cancelled)?;
        result.map_err(|error| {
            if let crate::store::StoreError::Moved { .. } = error {
                return AttachmentError::Resumed;
            }
            self.metrics.store_errors.fetch_add(1, Relaxed);
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "attachment store operation failed"
            );
            AttachmentError::Store(error)
        })
    }

    /// Stores the attachment of connection `id`, unless a resume took its session: a spent
    /// token means another connection holds the attachment now.
    pub(crate) async fn persist_attachment(
        &self,
        id: ConnectionId,
        bytes: Bytes,
    ) -> Result<(), AttachmentError> {
        let _no_move = self.attachment_moves.read().await;
        // The token is spent before the attachment moves: a write refused here leaves nothing
        // under the spent token for a restart (which forgets spent tokens) to hand out.
        if self.used_tokens.is_used(id) {
            return Err(AttachmentError::Resumed);
        }
        self.blocking(move |store| store.put(id, &bytes)).await
    }

    pub(crate) async fn discard_attachment(&self, id: ConnectionId) {
        let _ = self.blocking(move |store| store.remove(id)).await;
    }

    /// Moves the attachment of `from` to `to` once the attachment writes under way ended
    /// (see `attachment_moves`).
    pub(crate) async fn adopt(
        &self,
        from: ConnectionId,
        to: ConnectionId,
    ) -> Result<Option<Bytes>, AttachmentError> {
        let _writes_done = self.attachment_moves.write().await;
        Ok(self
            .blocking(move |store| store.adopt(from, to))
            .await?
            .map(Bytes::from))
    }
}

/// What keeps a connection counted while it runs or sleeps: the open-connection slot and the
/// running-task count the graceful shutdown waits for. Inline, not boxed: a hibernating
/// connection keeps it in the table of sleepers.
pub(crate) struct Guards {
    pub(crate) _open: OpenGuard,
    pub(crate) _task: TaskGuard,
}

/// Decrements the open-connection count when the connection ends, however it ends.
pub(crate) struct OpenGuard(pub(crate) Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Counts a running connection task (handshake or connection) for the graceful shutdown.
pub(crate) struct TaskGuard(pub(crate) Arc<Shared>);

impl TaskGuard {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.tasks.fetch_add(1, Relaxed);
        TaskGuard(shared.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Relaxed);
        self.0.tasks_done.notify_waiters();
    }
}
