//! The server's background tasks: the sleepers' sweeper, the expiry and dating of stored
//! attachments, and the check for resumes a lost cluster subscription missed.

use std::{
    sync::{Arc, Weak, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    peer::{Due, Peer},
    shared::Shared,
    store::ConnectionId,
};

/// Closes the connections here whose sessions a resume on another process took while this
/// one was not listening for announcements (see [`crate::broker`]).
///
/// Redis often fails the first commands after it comes back, so this tries again (backing
/// off) for as long as the subscription stays up; if it drops, the next one starts over.
pub(crate) async fn displace_moved(shared: Weak<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // The server is not held across the query: a Redis that hangs must not keep it alive.
        let (cluster, ids) = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let Some(cluster) = shared.cluster.clone() else {
                return;
            };
            let ids: Vec<ConnectionId> = shared.peers.lock().keys().copied().collect();
            (cluster, ids)
        };
        if !cluster.ready() {
            return;
        }
        match cluster.moved_among(&ids).await {
            Ok(moved) => {
                if let Some(shared) = shared.upgrade() {
                    moved.into_iter().for_each(|id| shared.displace(id));
                }
                return;
            }
            Err(error) => tracing::warn!(%error, "could not look for resumed connections"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Keepalive pings and idle timeouts for hibernating connections, which have no task and no
/// timer of their own: one pass over them every tick, until the server is gone.
pub(crate) async fn sweep_sleepers(shared: Weak<Shared>) {
    let tick = match shared.upgrade() {
        Some(shared) => {
            let config = &shared.config;
            (config.ping_interval.min(config.idle_timeout) / 8)
                .clamp(Duration::from_millis(10), Duration::from_secs(1))
        }
        None => return,
    };
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (mut pings, mut wakes) = (Vec::new(), Vec::new());
        shared
            .sleepers
            .for_each(|key, sleeper| match sleeper.due(now) {
                Due::Nothing => {}
                Due::Ping(peer) => pings.push(peer),
                Due::Wake => wakes.push(key),
            });
        // Outside the table's lock: a ping that has to queue wakes its connection.
        for peer in pings {
            peer.ping();
        }
        for key in wakes {
            shared.wake(key);
        }
    }
}

/// Passes of [`expire_attachments`] per [`ServerConfig::resume_ttl`](crate::ServerConfig):
/// an attachment outlives its last token by at most this fraction of it (an hour of a day).
const EXPIRY_PASSES_PER_TTL: u32 = 24;

/// Removes the attachments no resume token can reach any more, until the server is gone.
///
/// A token expires `resume_ttl` after its connection's handshake or its attachment's last
/// write (or dating) before the token was signed, and the attachment it reaches was written
/// (or moved to that connection, or dated) no earlier; so an attachment not written for
/// `resume_ttl` has no valid token left. Those of this process's live connections stay: they
/// are still in use, and are dated anew once half the TTL old (see [`redate`]). The rest,
/// left by connections that ended without a clean 1000 (kept for a resume that never came),
/// by a crash or by another process of the cluster, are removed. Without this the store
/// would grow with every dropped connection.
pub(crate) async fn expire_attachments(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(shared) => (shared.config.resume_ttl / EXPIRY_PASSES_PER_TTL)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok(listed) = shared.blocking(|store| store.list()).await else {
            continue;
        };
        let now = SystemTime::now();
        let ttl = shared.config.resume_ttl;
        let mut expired = Vec::new();
        let mut aging = Vec::new();
        for stored in listed {
            match shared.peer(stored.id) {
                None if stored.modified + ttl <= now => expired.push(stored.id),
                Some(peer) if stored.modified + ttl / 2 <= now => aging.push(peer),
                _ => {}
            }
        }
        if !expired.is_empty() {
            remove_expired(&shared, expired).await;
        }
        redate(&shared, aging).await;
    }
}

/// Removes these attachments no token can reach, counting them.
async fn remove_expired(shared: &Shared, expired: Vec<ConnectionId>) {
    let removed = shared
        .blocking(move |store| {
            for (done, id) in expired.iter().enumerate() {
                if let Err(error) = store.remove(*id) {
                    tracing::warn!(%id, %error, "could not remove an expired attachment");
                    return Ok(done);
                }
            }
            Ok(expired.len())
        })
        .await
        .unwrap_or(0);
    shared
        .metrics
        .attachments_expired
        .fetch_add(removed as u64, Relaxed);
    tracing::debug!(removed, "expired attachments removed");
}

/// Dates the stored attachments of these open connections now, so the tokens they hand out
/// from here on last the TTL from now: an open connection's token lasts at least half the TTL
/// (less a pass) however long ago its attachment was written.
async fn redate(shared: &Arc<Shared>, peers: Vec<Arc<Peer>>) {
    for peer in peers {
        let (id, dated_from) = (peer.id, SystemTime::now());
        // A resume took it meanwhile: nothing here to keep.
        if shared.used_tokens.is_used(id) {
            continue;
        }
        match shared.blocking(move |store| store.touch(id)).await {
            Ok(true) => peer.extend_resume(dated_from),
            Ok(false) => {}
            Err(_) => return, // counted and logged; the next pass tries again
        }
    }
}
