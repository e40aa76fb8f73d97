//! Counters and gauges, rendered in the Prometheus text format at `/metrics`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

use parking_lot::Mutex;

/// The three states of a WebSocket connection (see the crate docs on hibernation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// A handler call is running for it.
    Live,
    /// Idle: waiting for the next frame, holding no receive buffer.
    Parked,
    /// Idle past `dormant_after`: no send buffer and no compression state either, and
    /// (while hibernating, see [`Metrics::hibernating`]) no task.
    Dormant,
}

impl ConnState {
    fn index(self) -> usize {
        match self {
            ConnState::Live => 0,
            ConnState::Parked => 1,
            ConnState::Dormant => 2,
        }
    }
}

/// The server's metrics. Read them through [`crate::ServerHandle::metrics`] or `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    states: [AtomicI64; 3],
    pub(crate) hibernating: AtomicI64,
    pub(crate) wakeups: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) broadcasts: AtomicU64,
    pub(crate) deliveries_sent: AtomicU64,
    pub(crate) deliveries_queued: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) auto_response_hits: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) backpressure_closes: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) attachments_expired: AtomicU64,
    rejected: Mutex<BTreeMap<u16, u64>>,
    closes: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    /// Dormant connections with no task running for them now: their socket, a send or the
    /// server's sweeper starts one when needed.
    pub fn hibernating(&self) -> i64 {
        self.hibernating.load(Relaxed)
    }

    /// Times a hibernating connection got a task again: for a message, a close, a send that
    /// had to queue, a timer. Pings, pongs and auto-responses are answered without one.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Relaxed)
    }

    /// Connections now in `state`.
    pub fn connections(&self, state: ConnState) -> i64 {
        self.states[state.index()].load(Relaxed)
    }

    /// Open WebSocket connections in all states.
    pub fn open_connections(&self) -> i64 {
        self.states.iter().map(|s| s.load(Relaxed)).sum()
    }

    /// Messages answered by auto-responses.
    pub fn auto_response_hits(&self) -> u64 {
        self.auto_response_hits.load(Relaxed)
    }

    /// Messages dropped by the backpressure policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Data messages received (auto-responses excluded).
    pub fn messages_in(&self) -> u64 {
        self.messages_in.load(Relaxed)
    }

    /// How many connections ended with the peer's close code `code`.
    pub fn closes_with(&self, code: u16) -> u64 {
        self.closes.lock().get(&code).copied().unwrap_or(0)
    }

    pub(crate) fn enter(&self, state: ConnState) {
        self.states[state.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn leave(&self, state: ConnState) {
        self.states[state.index()].fetch_sub(1, Relaxed);
    }

    pub(crate) fn record_close(&self, code: u16) {
        *self.closes.lock().entry(code).or_default() += 1;
    }

    pub(crate) fn record_rejection(&self, status: u16) {
        *self.rejected.lock().entry(status).or_default() += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        gauge(
            &mut out,
            "roost_connections",
            "Open WebSocket connections by state.",
        );
        for (state, label) in [
            (ConnState::Live, "live"),
            (ConnState::Parked, "parked"),
            (ConnState::Dormant, "dormant"),
        ] {
            let _ = writeln!(
                out,
                "roost_connections{{state=\"{label}\"}} {}",
                self.connections(state)
            );
        }
        gauge(
            &mut out,
            "roost_connections_hibernating",
            "Dormant connections with no task running for them.",
        );
        let _ = writeln!(out, "roost_connections_hibernating {}", self.hibernating());
        let counters: [(&str, &str, &AtomicU64); 18] = [
            (
                "roost_connections_total",
                "WebSocket connections accepted.",
                &self.connections_total,
            ),
            (
                "roost_messages_in_total",
                "Data messages received.",
                &self.messages_in,
            ),
            (
                "roost_messages_out_total",
                "Data messages sent (each broadcast delivery counts).",
                &self.messages_out,
            ),
            (
                "roost_bytes_in_total",
                "Payload bytes received.",
                &self.bytes_in,
            ),
            (
                "roost_bytes_out_total",
                "Frame bytes handed to sockets or queues.",
                &self.bytes_out,
            ),
            ("roost_broadcasts_total", "Broadcasts.", &self.broadcasts),
            (
                "roost_broadcast_sent_total",
                "Broadcast deliveries written at once.",
                &self.deliveries_sent,
            ),
            (
                "roost_broadcast_queued_total",
                "Broadcast deliveries queued behind a slow reader.",
                &self.deliveries_queued,
            ),
            (
                "roost_dropped_total",
                "Messages dropped by the backpressure policy.",
                &self.dropped,
            ),
            (
                "roost_wakeups_total",
                "Times a hibernating connection got a task again.",
                &self.wakeups,
            ),
            (
                "roost_auto_response_hits_total",
                "Messages answered by auto-responses.",
                &self.auto_response_hits,
            ),
            (
                "roost_handler_errors_total",
                "Handler calls that returned a Disconnect.",
                &self.handler_errors,
            ),
            (
                "roost_handler_panics_total",
                "Handler calls that panicked (closed with 1011).",
                &self.handler_panics,
            ),
            (
                "roost_backpressure_closes_total",
                "Connections closed because their queue was full.",
                &self.backpressure_closes,
            ),
            (
                "roost_accept_errors_total",
                "Failed accept calls (fd exhaustion and the like).",
                &self.accept_errors,
            ),
            (
                "roost_attachment_store_errors_total",
                "Attachment store operations (writes, moves, removals, listings) that failed.",
                &self.store_errors,
            ),
            (
                "roost_resumes_total",
                "Connections that resumed a previous attachment.",
                &self.resumes,
            ),
            (
                "roost_attachments_expired_total",
                "Attachments removed because no resume token could reach them any more.",
                &self.attachments_expired,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        map: &Mutex<BTreeMap<u16, u64>>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (key, value) in map.lock().iter() {
                let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {value}");
            }
        };
        labelled(
            &mut out,
            "roost_closes_total",
            "Closed connections by the peer's close code.",
            "code",
            &self.closes,
        );
        labelled(
            &mut out,
            "roost_handshake_rejections_total",
            "Refused handshakes by HTTP status.",
            "status",
            &self.rejected,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.enter(ConnState::Parked);
        metrics.enter(ConnState::Parked);
        metrics.leave(ConnState::Parked);
        metrics.record_close(1000);
        metrics.record_close(1000);
        metrics.record_rejection(503);
        let text = metrics.render();
        assert!(
            text.contains("roost_connections{state=\"parked\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("roost_closes_total{code=\"1000\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("roost_handshake_rejections_total{status=\"503\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE roost_dropped_total counter\nroost_dropped_total 0\n"));
    }
}
