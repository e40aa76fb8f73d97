//! Scale-out: rooms shared by several roost processes through Redis.
//!
//! # Theory of operation
//!
//! Every process (a *node*) keeps its rooms as before and adds three Redis-backed duties:
//!
//! - **Fan-out.** A broadcast is delivered to the local members at once and handed to one
//!   publisher task, which `PUBLISH`es it on `roost:room:<room>`, in order, over one
//!   connection; Redis keeps one connection's order, so one publisher's messages arrive in
//!   the order sent. A node subscribes to a room's channel only while the room has local
//!   members, skips the messages it published itself, and delivers the others to its local
//!   members, encoding each frame once and writing what arrived together as one write per
//!   member ([`hear`]).
//! - **Presence.** Each connection is a field of the hash `roost:presence:<room>` naming its
//!   node, and each node refreshes `roost:node:<node>` with a time to live. A node that dies
//!   stops refreshing; once its key expires its members no longer count, so they disappear
//!   from presence within [`ClusterConfig::presence_ttl`].
//! - **Readiness.** Redis restarting or out of reach never stops a node: local rooms keep
//!   working, the subscription comes back by itself (resubscribing every room), `/readyz`
//!   answers 503 meanwhile, and what could not be published is counted
//!   (`roost_cluster_undelivered_total`) and reported by [`crate::BroadcastReport::remote`].
//!
//! Attachments and resume tokens work across nodes through the Redis attachment store
//! ([`crate::store::redis`]), whose atomic adopt keeps a token usable once cluster-wide.
//! The connection a resume displaced may live on another node, where it is closed: the node
//! that resumed the session publishes the old connection's id on `roost:resumed`, which every
//! node subscribes to, and the node holding that connection closes it with 4001. A node whose
//! subscription was down may have missed some: once it is back, it asks Redis which of its
//! connections' ids are marked moved, and closes those. Until then the store refuses the
//! displaced connection's attachment writes.

use std::{
    collections::HashSet,
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::{AsyncCommands, aio::ConnectionManager};
use tokio::sync::mpsc;

use crate::{
    Data, Room,
    maintenance::displace_moved,
    shared::Shared,
    store::{ConnectionId, redis::mask_url},
};

/// How a server joins a cluster.
///
/// Its `Debug` form masks any password in [`redis_url`](Self::redis_url).
#[derive(Clone)]
pub struct ClusterConfig {
    /// The Redis server every node uses, `redis://HOST:PORT`.
    pub redis_url: String,
    /// How long a node's presence outlives its last heartbeat (heartbeats go out three times
    /// per period). Default 6 s: the members of a crashed process vanish within it.
    pub presence_ttl: Duration,
    /// Broadcasts waiting for Redis before new ones are counted undelivered. Default 100,000.
    pub max_pending: usize,
}

impl ClusterConfig {
    /// A cluster on `redis_url` with the default timings.
    pub fn new(redis_url: impl Into<String>) -> Self {
        ClusterConfig {
            redis_url: redis_url.into(),
            presence_ttl: Duration::from_secs(6),
            max_pending: 100_000,
        }
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ClusterConfig")
            .field("redis_url", &mask_url(&self.redis_url))
            .field("presence_ttl", &self.presence_ttl)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

/// The cluster could not be reached or answered wrongly.
#[derive(Debug, thiserror::Error)]
#[error("cluster broker error: {0}")]
pub struct ClusterError(#[from] redis::RedisError);

/// What happened to the copy of a broadcast meant for the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteDelivery {
    /// Queued for publishing, in order.
    Queued,
    /// Not sent: too many broadcasts are waiting for Redis. Counted as undelivered.
    Dropped,
}

/// The channel on which a node announces the id of the connection a resume displaced.
const RESUMED_CHANNEL: &str = "roost:resumed";

/// Ids asked about per round trip when looking for displaced connections.
const MOVED_QUERY_CHUNK: usize = 1024;

enum Control {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

/// What the other nodes tell this one.
pub(crate) enum Incoming {
    /// A message for the local members of `room`.
    Message { room: Arc<str>, data: Data },
    /// A resume on another node took the session of connection `0`; if it is here, it ends.
    Resumed(ConnectionId),
    /// The subscription is (again) up: announcements made while it was down were missed, so
    /// the local connections are to be checked with [`Cluster::moved_among`].
    Subscribed,
}

/// Counters of the cluster's work.
#[derive(Debug, Default)]
pub(crate) struct ClusterMetrics {
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) undelivered: AtomicU64,
}

/// This node's link to the cluster.
pub(crate) struct Cluster {
    node: String,
    config: ClusterConfig,
    commands: ConnectionManager,
    publish: mpsc::Sender<(Arc<str>, Bytes)>,
    control: mpsc::UnboundedSender<Control>,
    subscribed: Mutex<HashSet<Arc<str>>>,
    ready: AtomicBool,
    pub(crate) metrics: ClusterMetrics,
}

fn channel(room: &str) -> String {
    format!("roost:room:{room}")
}

fn presence_key(room: &str) -> String {
    format!("roost:presence:{room}")
}

fn node_key(node: &str) -> String {
    format!("roost:node:{node}")
}

impl Cluster {
    /// Connects to Redis and starts the publisher, subscriber and heartbeat tasks. Messages
    /// from other nodes come out of the returned receiver.
    pub(crate) async fn start(
        config: ClusterConfig,
    ) -> Result<(Arc<Cluster>, mpsc::UnboundedReceiver<Incoming>), ClusterError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let commands = ConnectionManager::new(client.clone()).await?;
        let node = ConnectionId::random().to_string();
        let (publish, publish_rx) = mpsc::channel(config.max_pending.max(1));
        let (control, control_rx) = mpsc::unbounded_channel();
        let (incoming, incoming_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            node,
            config,
            commands,
            publish,
            control,
            subscribed: Mutex::new(HashSet::new()),
            ready: AtomicBool::new(false),
            metrics: ClusterMetrics::default(),
        });
        cluster.heartbeat_once().await?;
        tokio::spawn(publisher(Arc::downgrade(&cluster), publish_rx));
        tokio::spawn(subscriber(
            Arc::downgrade(&cluster),
            client,
            control_rx,
            incoming,
        ));
        tokio::spawn(heartbeat(Arc::downgrade(&cluster)));
        tracing::info!(node = %cluster.node, url = %mask_url(&cluster.config.redis_url), "joined the cluster");
        Ok((cluster, incoming_rx))
    }

    /// Whether the subscription to Redis is up.
    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// Hands a broadcast to the publisher for the other nodes.
    pub(crate) fn forward(&self, room: &Arc<str>, data: &Data) -> RemoteDelivery {
        let mut wire = Vec::with_capacity(self.node.len() + 2 + data.as_bytes().len());
        wire.extend_from_slice(self.node.as_bytes());
        wire.push(b'\n');
        wire.push(if matches!(data, Data::Text(_)) {
            b't'
        } else {
            b'b'
        });
        wire.extend_from_slice(data.as_bytes());
        match self.publish.try_send((room.clone(), Bytes::from(wire))) {
            Ok(()) => RemoteDelivery::Queued,
            Err(_) => {
                self.metrics.undelivered.fetch_add(1, Relaxed);
                RemoteDelivery::Dropped
            }
        }
    }

    /// The room got its first local member: receive its messages from other nodes. Called
    /// under the rooms' lock, so the subscriptions and unsubscriptions of one room come in
    /// the order its members joined and left.
    pub(crate) fn subscribe(&self, room: &Arc<str>) {
        self.subscribed.lock().insert(room.clone());
        let _ = self.control.send(Control::Subscribe(room.clone()));
    }

    /// The room lost its last local member (under the rooms' lock, as [`subscribe`]).
    ///
    /// [`subscribe`]: Self::subscribe
    pub(crate) fn unsubscribe(&self, room: &Arc<str>) {
        self.subscribed.lock().remove(room);
        let _ = self.control.send(Control::Unsubscribe(room.clone()));
    }

    /// Tells the other nodes that a resume here took the session of connection `id`, so the
    /// node holding it closes it (in the background; retried for a short while, like a
    /// broadcast).
    pub(crate) fn announce_resumed(&self, id: ConnectionId) {
        let commands = self.commands.clone();
        tokio::spawn(async move {
            if !publish_retrying(commands, RESUMED_CHANNEL, id.to_string().as_bytes()).await {
                tracing::warn!(%id, "could not announce a resume to the cluster");
            }
        });
    }

    /// Which of `ids` a resume (on any node) has moved away: those connections' sessions
    /// continue elsewhere.
    pub(crate) async fn moved_among(
        &self,
        ids: &[ConnectionId],
    ) -> Result<Vec<ConnectionId>, ClusterError> {
        let mut commands = self.commands.clone();
        let mut moved = Vec::new();
        for chunk in ids.chunks(MOVED_QUERY_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.exists(crate::store::redis::moved_key(*id));
            }
            let marked: Vec<bool> = pipe.query_async(&mut commands).await?;
            moved.extend(
                chunk
                    .iter()
                    .zip(marked)
                    .filter_map(|(id, marked)| marked.then_some(*id)),
            );
        }
        Ok(moved)
    }

    /// Records a connection in the room's cluster-wide presence (in the background).
    pub(crate) fn join(&self, room: &str, id: ConnectionId) {
        let (mut commands, key, node) =
            (self.commands.clone(), presence_key(room), self.node.clone());
        tokio::spawn(async move {
            let _: Result<(), _> = commands.hset(key, id.to_string(), node).await;
        });
    }

    /// Removes a connection from the room's presence (in the background).
    pub(crate) fn leave(&self, room: &str, id: ConnectionId) {
        let (mut commands, key) = (self.commands.clone(), presence_key(room));
        tokio::spawn(async move {
            let _: Result<(), _> = commands.hdel(key, id.to_string()).await;
        });
    }

    /// The room's members on every live node; entries of dead nodes are removed.
    pub(crate) async fn members(&self, room: &str) -> Result<Vec<ConnectionId>, ClusterError> {
        let mut commands = self.commands.clone();
        let key = presence_key(room);
        let entries: Vec<(String, String)> = commands.hgetall(&key).await?;
        let nodes: HashSet<&str> = entries.iter().map(|(_, node)| node.as_str()).collect();
        let mut alive = HashSet::new();
        for node in nodes {
            let exists: bool = commands.exists(node_key(node)).await?;
            if exists {
                alive.insert(node.to_owned());
            }
        }
        let mut members = Vec::new();
        for (id, node) in entries {
            if alive.contains(&node) {
                if let Ok(id) = id.parse() {
                    members.push(id);
                }
            } else {
                let _: Result<(), _> = commands.hdel(&key, &id).await;
            }
        }
        Ok(members)
    }

    async fn heartbeat_once(&self) -> Result<(), ClusterError> {
        let mut commands = self.commands.clone();
        let ttl = self.config.presence_ttl.as_millis().max(1) as u64;
        let () = redis::cmd("SET")
            .arg(node_key(&self.node))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .query_async(&mut commands)
            .await?;
        Ok(())
    }

    /// Leaves the cluster at a graceful shutdown: this node's presence ends at once.
    pub(crate) async fn depart(&self) {
        let mut commands = self.commands.clone();
        let _: Result<(), _> = commands.del(node_key(&self.node)).await;
    }
}

/// Most messages from other processes delivered as one burst: each member of a room gets
/// one write for the whole burst, as for a burst from a local publisher.
const MAX_BURST: usize = 256;

/// Acts on what the other processes say, until the server is gone: messages for this one's
/// members, and resumes that displaced a connection of this one.
pub(crate) async fn hear(shared: Weak<Shared>, mut incoming: mpsc::UnboundedReceiver<Incoming>) {
    let mut rooms: Vec<Room> = Vec::new();
    while let Some(first) = incoming.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut next = Some(first);
        let mut heard = 0;
        while let Some(message) = next.take() {
            match message {
                Incoming::Message { room, data } => {
                    let room = match rooms.iter().find(|known| known.key() == &*room) {
                        Some(known) => known,
                        None => {
                            rooms.push(Room::new(room, shared.clone()));
                            &rooms[rooms.len() - 1]
                        }
                    };
                    room.deliver_local_deferred(data);
                }
                Incoming::Resumed(id) => shared.displace(id),
                Incoming::Subscribed => {
                    tokio::spawn(displace_moved(Arc::downgrade(&shared)));
                }
            }
            heard += 1;
            if heard < MAX_BURST {
                next = incoming.try_recv().ok();
            }
        }
        for room in rooms.drain(..) {
            room.flush_deferred();
        }
        drop(shared);
        if heard == MAX_BURST {
            // More may be waiting: `try_recv` does not count against the task's budget, so
            // the connections' tasks get their turn here.
            tokio::task::yield_now().await;
        }
    }
}

/// Publishes broadcasts in order; a message Redis cannot take is retried for a short while,
/// then counted undelivered so later ones are not held up forever.
async fn publisher(
    cluster: std::sync::Weak<Cluster>,
    mut queue: mpsc::Receiver<(Arc<str>, Bytes)>,
) {
    while let Some((room, wire)) = queue.recv().await {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let delivered = publish_retrying(cluster.commands.clone(), &channel(&room), &wire).await;
        let counter = if delivered {
            &cluster.metrics.published
        } else {
            &cluster.metrics.undelivered
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// Publishes `payload` on `channel`; a message Redis cannot take is retried for about ten
/// seconds. Returns whether it was published.
async fn publish_retrying(mut commands: ConnectionManager, channel: &str, payload: &[u8]) -> bool {
    for attempt in 0..20u64 {
        let result: Result<i64, _> = commands.publish(channel, payload).await;
        if result.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50 + attempt * 50)).await;
    }
    false
}

/// Keeps one pub/sub connection subscribed to the rooms with local members, reconnecting
/// and resubscribing whenever Redis goes away.
async fn subscriber(
    cluster: std::sync::Weak<Cluster>,
    client: redis::Client,
    mut control: mpsc::UnboundedReceiver<Control>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(node) = cluster.upgrade().map(|c| c.node.clone()) else {
            return;
        };
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                tracing::warn!(%error, "cluster subscription lost; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let rooms: Vec<Arc<str>> = match cluster.upgrade() {
            Some(c) => c.subscribed.lock().iter().cloned().collect(),
            None => return,
        };
        let mut healthy = sink.subscribe(RESUMED_CHANNEL).await.is_ok();
        for room in &rooms {
            healthy &= sink.subscribe(channel(room)).await.is_ok();
        }
        if !healthy {
            tracing::warn!("cluster subscription refused; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        if let Some(c) = cluster.upgrade() {
            c.ready.store(true, Relaxed);
            tracing::info!(rooms = rooms.len(), "cluster subscription up");
        }
        if incoming.send(Incoming::Subscribed).is_err() {
            return;
        }
        backoff = Duration::from_millis(50);
        loop {
            tokio::select! {
                command = control.recv() => {
                    let result = match command {
                        Some(Control::Subscribe(room)) => sink.subscribe(channel(&room)).await,
                        Some(Control::Unsubscribe(room)) => sink.unsubscribe(channel(&room)).await,
                        None => return,
                    };
                    if result.is_err() {
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel_name = message.get_channel_name();
                    if channel_name == RESUMED_CHANNEL {
                        let id = std::str::from_utf8(message.get_payload_bytes())
                            .ok()
                            .and_then(|id| id.parse().ok());
                        if let Some(id) = id
                            && incoming.send(Incoming::Resumed(id)).is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    let Some(room) = channel_name.strip_prefix("roost:room:") else {
                        continue;
                    };
                    let payload = message.get_payload_bytes();
                    let Some(newline) = payload.iter().position(|b| *b == b'\n') else { continue };
                    if &payload[..newline] == node.as_bytes() {
                        continue; // our own broadcast, already delivered locally
                    }
                    let (kind, body) = match payload.get(newline + 1..) {
                        Some([kind, body @ ..]) => (*kind, body),
                        _ => continue,
                    };
                    let data = match kind {
                        b't' => match roost::Utf8Bytes::try_from(Bytes::copy_from_slice(body)) {
                            Ok(text) => Data::Text(text),
                            Err(_) => continue,
                        },
                        _ => Data::Binary(Bytes::copy_from_slice(body)),
                    };
                    if let Some(c) = cluster.upgrade() {
                        c.metrics.received.fetch_add(1, Relaxed);
                    }
                    if incoming.send(Incoming::Message { room: room.into(), data }).is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(c) = cluster.upgrade() {
            c.ready.store(false, Relaxed);
        }
        tracing::warn!("cluster subscription lost; reconnecting");
    }
}

/// Refreshes this node's liveness key three times per presence period.
async fn heartbeat(cluster: std::sync::Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let period = c.config.presence_ttl / 3;
        if let Err(error) = c.heartbeat_once().await {
            tracing::warn!(%error, "cluster heartbeat failed");
        }
        drop(c);
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_config_debug_print_hides_the_redis_password() {
        let config = ClusterConfig::new("redis://:hunter2@10.0.0.5:6379/0");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("10.0.0.5:6379"), "{printed}");
        let server = crate::ServerConfig {
            cluster: Some(config),
            ..crate::ServerConfig::default()
        };
        assert!(!format!("{server:?}").contains("hunter2"));
    }
}
