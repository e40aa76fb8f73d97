//! Rooms: which connections belong together, and broadcast to them.
//!
//! # Theory of operation
//!
//! A room is a key (by default the request path without its query) and the connections that
//! opened with it. A connection joins when it opens and leaves when it ends; a room with no
//! members does not exist.
//!
//! A broadcast encodes the message into frame bytes once, shares them (reference-counted)
//! with every member, and writes them to each socket without waking that member's task when
//! its queue is empty. A broadcast made by a handler while its connection works through a
//! batch of received messages only queues the frames; the batch's end writes each member's
//! share with one system call, so a burst of messages costs a write per member, not a write
//! per member per message. Under permessage-deflate with `server_no_context_takeover` (the
//! server's default), a compressed frame is self-contained, so it too is made once per
//! window size and shared; members with context takeover get the uncompressed frame, which
//! the protocol always allows. The result counts what was written at once, queued behind a
//! slow reader, dropped by the backpressure policy, or not sent because the member is
//! closing: one slow member never slows the broadcaster or the others.

use std::{
    collections::HashMap,
    sync::{Arc, Weak, atomic::Ordering::Relaxed},
};

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use roost::{
    OpCode,
    proto::{DeflateParams, deflate::DeflateCodec, frame::encode_frame},
};

use crate::{
    ClusterError, Data, RemoteDelivery, SendOutcome, Ws, peer::Peer, shared::Shared,
    store::ConnectionId,
};

/// The registry of rooms and their members.
#[derive(Default)]
pub(crate) struct Rooms {
    rooms: RwLock<HashMap<Arc<str>, Vec<Arc<Peer>>>>,
}

impl Rooms {
    /// The name of room `name` as the table keeps it, if the room exists: its connections
    /// share one copy instead of each keeping its own.
    pub(crate) fn intern(&self, name: &str) -> Arc<str> {
        let rooms = self.rooms.read();
        match rooms.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => name.into(),
        }
    }

    /// Adds `peer` to its room. `created` runs when the room is new, under the table's lock:
    /// what it starts for the room (a cluster subscription) is then ordered with what
    /// `leave`'s `gone` ends for it, even when a join and a leave race.
    pub(crate) fn join(&self, peer: &Arc<Peer>, created: impl FnOnce()) {
        let mut rooms = self.rooms.write();
        let members = rooms.entry(peer.room.clone()).or_default();
        // Past u32::MAX members the slot is wrong, and `leave` searches instead.
        let slot = u32::try_from(members.len()).unwrap_or(u32::MAX);
        peer.room_slot.store(slot, Relaxed);
        members.push(peer.clone());
        if members.len() == 1 {
            created();
        }
    }

    /// Removes `peer` from its room. `gone` runs when that was the room's last member, under
    /// the table's lock (see [`join`](Self::join)). The last member takes the leaver's place:
    /// one swap, whatever the room's size.
    pub(crate) fn leave(&self, peer: &Arc<Peer>, gone: impl FnOnce()) {
        let mut rooms = self.rooms.write();
        let Some(members) = rooms.get_mut(&peer.room) else {
            return;
        };
        let slot = peer.room_slot.load(Relaxed) as usize;
        let found = match members.get(slot) {
            Some(member) if Arc::ptr_eq(member, peer) => Some(slot),
            _ => members.iter().position(|member| Arc::ptr_eq(member, peer)),
        };
        if let Some(slot) = found {
            members.swap_remove(slot);
            if let Some(moved) = members.get(slot) {
                moved.room_slot.store(slot as u32, Relaxed);
            }
        }
        if members.is_empty() {
            rooms.remove(&peer.room);
            gone();
        }
    }

    pub(crate) fn members(&self, key: &str) -> Vec<Arc<Peer>> {
        let rooms = self.rooms.read();
        rooms.get(key).cloned().unwrap_or_default()
    }

    pub(crate) fn count(&self) -> usize {
        self.rooms.read().len()
    }

    /// Writes what deferred broadcasts left for the members of room `key`.
    pub(crate) fn flush_deferred(&self, key: &str) {
        for member in self.members(key) {
            member.flush_deferred();
        }
    }
}

/// What a broadcast did, member by member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Written to the member's socket at once.
    pub sent: usize,
    /// Queued behind earlier bytes of a slow member.
    pub queued: usize,
    /// Dropped by the backpressure policy (or the member was closed by it).
    pub dropped: usize,
    /// Not sent: the member was closing.
    pub closed: usize,
    /// In a cluster, what happened to the copy for the other processes; `None` alone.
    pub remote: Option<RemoteDelivery>,
}

/// How [`Room::broadcast_filtered`] delivers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// To the local members now (or at the end of the origin's batch), and to the other
    /// processes of a cluster.
    AndForward,
    /// A message from another process: to the local members only, written at
    /// [`Room::flush_deferred`].
    Deferred,
}

/// A room: a key and the connections that share it.
#[derive(Clone)]
pub struct Room {
    key: Arc<str>,
    shared: Arc<Shared>,
    /// The connection whose handler was given this room: its broadcasts made while it works
    /// through a batch of messages are written to each member once, at the batch's end.
    /// Weak: a room kept by the application must not keep a closed connection's socket.
    origin: Option<Weak<Peer>>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Room {
    pub(crate) fn new(key: Arc<str>, shared: Arc<Shared>) -> Self {
        Room {
            key,
            shared,
            origin: None,
        }
    }

    /// The room of `peer`, as its handler sees it.
    pub(crate) fn of_peer(peer: &Arc<Peer>) -> Self {
        Room {
            key: peer.room.clone(),
            shared: peer.shared.clone(),
            origin: Some(Arc::downgrade(peer)),
        }
    }

    /// The room's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The room's connections, the caller's included.
    pub fn websockets(&self) -> Vec<Ws> {
        self.shared
            .rooms
            .members(&self.key)
            .into_iter()
            .map(Ws::from_peer)
            .collect()
    }

    /// How many connections the room has.
    pub fn len(&self) -> usize {
        self.shared.rooms.members(&self.key).len()
    }

    /// Whether the room has no connections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `data` to every member, encoding (and compressing) it once; in a cluster, to the
    /// members on every other process too.
    ///
    /// Called from a handler of this room's connection, the frames are queued and written
    /// when that connection is done with the batch of messages it received together (one
    /// write per member for the whole batch): a handler that must know a broadcast left
    /// before it waits on something else should return first.
    pub fn broadcast(&self, data: impl Into<Data>) -> BroadcastReport {
        self.broadcast_filtered(data.into(), None, Delivery::AndForward)
    }

    /// Sends `data` to every member except `except`.
    pub fn broadcast_except(&self, except: &Ws, data: impl Into<Data>) -> BroadcastReport {
        self.broadcast_filtered(data.into(), Some(except), Delivery::AndForward)
    }

    /// The room's members on every process of the cluster (the local ones alone without a
    /// cluster). Members of a process that died vanish within the presence period.
    pub async fn cluster_members(&self) -> Result<Vec<ConnectionId>, ClusterError> {
        match &self.shared.cluster {
            Some(cluster) => cluster.members(&self.key).await,
            None => Ok(self.websockets().iter().map(Ws::id).collect()),
        }
    }

    /// Delivers a message from another process to the local members only. The writes wait
    /// for [`Room::flush_deferred`]: a burst of messages leaves as one write per member.
    pub(crate) fn deliver_local_deferred(&self, data: Data) -> BroadcastReport {
        self.broadcast_filtered(data, None, Delivery::Deferred)
    }

    /// Writes what [`Room::deliver_local_deferred`] left for the members.
    pub(crate) fn flush_deferred(&self) {
        self.shared.rooms.flush_deferred(&self.key);
    }

    fn broadcast_filtered(
        &self,
        data: Data,
        except: Option<&Ws>,
        delivery: Delivery,
    ) -> BroadcastReport {
        let members = self.shared.rooms.members(&self.key);
        let (opcode, payload) = match &data {
            Data::Text(text) => (OpCode::Text, text.as_bytes().clone()),
            Data::Binary(bytes) => (OpCode::Binary, bytes.clone()),
        };
        let mut plain = BytesMut::new();
        encode_frame(&mut plain, opcode, true, false, None, &payload);
        let plain = plain.freeze();
        let mut compressed = Compressed::new(&self.shared, opcode, &payload);
        let mut report = BroadcastReport::default();
        // Made by a connection's own task in the middle of its batch: the members' writes
        // wait for the batch's end, so that each member gets one write per batch, not one
        // per message.
        let batch = self
            .origin
            .as_ref()
            .and_then(Weak::upgrade)
            .filter(|origin| origin.is_batching());
        if let Some(origin) = &batch {
            origin.defer_broadcast();
        }
        for member in &members {
            if except.is_some_and(|ws| Arc::ptr_eq(ws.peer(), member)) {
                continue;
            }
            let frame = member
                .compress_class
                .and_then(|bits| compressed.frame(bits))
                .unwrap_or_else(|| plain.clone());
            let outcome = match &batch {
                // The origin's own writes are batched already; this one goes behind them.
                Some(origin) if Arc::ptr_eq(origin, member) => member.push_own(frame),
                Some(_) => member.push_deferred(frame),
                None if delivery == Delivery::Deferred => member.push_deferred(frame),
                None => member.push(frame, false),
            };
            match outcome {
                SendOutcome::Sent => report.sent += 1,
                SendOutcome::Queued => report.queued += 1,
                SendOutcome::Dropped => report.dropped += 1,
                SendOutcome::Closed => report.closed += 1,
            }
        }
        if delivery == Delivery::AndForward
            && let Some(cluster) = &self.shared.cluster
        {
            report.remote = Some(cluster.forward(&self.key, &data));
        }
        let metrics = &self.shared.metrics;
        metrics.broadcasts.fetch_add(1, Relaxed);
        metrics
            .deliveries_sent
            .fetch_add(report.sent as u64, Relaxed);
        metrics
            .deliveries_queued
            .fetch_add(report.queued as u64, Relaxed);
        metrics
            .messages_out
            .fetch_add((report.sent + report.queued) as u64, Relaxed);
        report
    }
}

/// Compressed frames of one broadcast, made on first need, one per window size.
struct Compressed<'a> {
    shared: &'a Shared,
    opcode: OpCode,
    payload: &'a Bytes,
    frames: Vec<(u8, Option<Bytes>)>,
}

impl<'a> Compressed<'a> {
    fn new(shared: &'a Shared, opcode: OpCode, payload: &'a Bytes) -> Self {
        Compressed {
            shared,
            opcode,
            payload,
            frames: Vec::new(),
        }
    }

    /// The shared compressed frame for members compressing with `bits`, or `None` when the
    /// message is too small to be worth compressing.
    fn frame(&mut self, bits: u8) -> Option<Bytes> {
        if let Some((_, frame)) = self.frames.iter().find(|(b, _)| *b == bits) {
            return frame.clone();
        }
        let config = self.shared.config.protocol.deflate();
        let params = DeflateParams {
            server_no_context_takeover: true,
            server_max_window_bits: bits,
            ..DeflateParams::default()
        };
        let mut codec = DeflateCodec::new(true, params, config);
        let frame = codec.should_compress(self.payload.len()).then(|| {
            let mut body = Vec::new();
            codec.compress(self.payload, &mut body);
            let mut frame = BytesMut::new();
            encode_frame(&mut frame, self.opcode, true, true, None, &body);
            frame.freeze()
        });
        self.frames.push((bits, frame.clone()));
        frame
    }
}
