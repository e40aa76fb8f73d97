//! [`App`]: routes and handlers; [`Server`]: the accept loop, handshakes and shutdown.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{
            AtomicBool, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use roost::proto::{
    AutoResponse, Connection,
    handshake::{self, RequestReader},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};

use crate::{
    AttachmentError, Metrics, ServerConfig,
    broker::{Cluster, Incoming},
    handler::{DynHandler, DynHttpHandler, Handler, HttpHandler, not_found},
    peer::{Due, Peer},
    plain_http::{Answers, serve_http},
    resume::{ResumeKey, UsedTokens},
    room::{Room, Rooms},
    sleepers::{self, Sleepers},
    store::{
        AttachmentStore, ConnectionId, DirStore, MemoryStore,
        redis::{RedisStore, mask_url},
    },
};

/// A WebSocket route: its handler, how its rooms are keyed, the subprotocols it speaks.
pub struct WsRoute {
    handler: Arc<dyn DynHandler>,
    room_param: Option<String>,
    protocols: Vec<String>,
}

impl WsRoute {
    /// A route run by `handler`.
    pub fn new<H: Handler>(handler: H) -> Self {
        WsRoute {
            handler: Arc::new(handler),
            room_param: None,
            protocols: Vec::new(),
        }
    }

    /// Keys rooms by the path parameter `name` (`/chat/:room` with `"room"`) instead of the
    /// whole path.
    pub fn room_from_path(mut self, name: &str) -> Self {
        self.room_param = Some(name.to_owned());
        self
    }

    /// The subprotocols this route speaks, in order of preference; the first one the client
    /// also offers is selected. None by default (no subprotocol is ever echoed blindly).
    pub fn protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }
}

/// A route pattern could not be added.
#[derive(Debug, thiserror::Error)]
#[error("invalid route {pattern:?}: {reason}")]
pub struct RouteError {
    pattern: String,
    reason: String,
}

/// The application: WebSocket routes, the HTTP handler for everything else, and settings.
///
/// ```no_run
/// use roost_server::{App, Data, Disconnect, Handler, Room, Ws};
///
/// struct Echo;
/// impl Handler for Echo {
///     async fn on_message(&self, ws: &Ws, data: Data, _room: &Room) -> Result<(), Disconnect> {
///         ws.send(data);
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = App::new().ws("/echo", Echo)?.bind("127.0.0.1:9001".parse()?).await?;
/// server.run().await?; // until SIGTERM or SIGINT, then a graceful shutdown
/// # Ok(()) }
/// ```
pub struct App {
    config: ServerConfig,
    router: matchit::Router<usize>,
    routes: Vec<WsRoute>,
    http: Arc<dyn DynHttpHandler>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An application with the default [`ServerConfig`], no routes, and 404 for HTTP.
    pub fn new() -> Self {
        App {
            config: ServerConfig::default(),
            router: matchit::Router::new(),
            routes: Vec::new(),
            http: Arc::new(not_found),
        }
    }

    /// Replaces the settings.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a WebSocket route run by `handler`; rooms are keyed by the path.
    pub fn ws<H: Handler>(self, pattern: &str, handler: H) -> Result<Self, RouteError> {
        self.route(pattern, WsRoute::new(handler))
    }

    /// Adds a WebSocket route. Patterns are paths whose segments may be parameters:
    /// `/chat/:room` (or `/chat/{room}`).
    pub fn route(mut self, pattern: &str, route: WsRoute) -> Result<Self, RouteError> {
        let converted = pattern
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => segment.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        self.router
            .insert(converted, self.routes.len())
            .map_err(|e| RouteError {
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })?;
        self.routes.push(route);
        Ok(self)
    }

    /// Answers plain HTTP requests (every path that is not a WebSocket route, and non-upgrade
    /// requests on them) with `handler`. `/metrics`, `/healthz`, `/readyz` and `/presence`
    /// are the server's, unless [`ServerConfig::admin_addr`] moves them.
    pub fn http(mut self, handler: impl HttpHandler) -> Self {
        self.http = Arc::new(handler);
        self
    }

    /// Opens the durable directory (if configured) and binds the listener, with a backlog
    /// of 4096.
    pub async fn bind(self, addr: SocketAddr) -> io::Result<Server> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        self.serve_on(socket.listen(4096)?).await
    }

    /// Uses a listener the caller bound. With a cluster configured, joins it first; with an
    /// admin address, binds it.
    pub async fn serve_on(self, listener: TcpListener) -> io::Result<Server> {
        let admin = match self.config.admin_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on the admin address {addr}: {error}"),
                )
            })?),
            None => None,
        };
        let (cluster, incoming) = match &self.config.cluster {
            Some(config) => {
                let (cluster, incoming) =
                    Cluster::start(config.clone()).await.map_err(|error| {
                        io::Error::other(format!(
                            "cannot join the cluster at {}: {error}",
                            mask_url(&config.redis_url)
                        ))
                    })?;
                (Some(cluster), Some(incoming))
            }
            None => (None, None),
        };
        let mut config = self.config;
        // What the codec queues by itself (pongs, auto-responses) for a peer that does not
        // read stays near the outbound limit too. Not below twice what a batch holds back in
        // the codec, or a reader that reads would see pongs skipped within a batch.
        let codec_limit = config.max_outbound.max(2 * crate::peer::CORK_LIMIT);
        if config.protocol.limits().max_queued_output > codec_limit {
            config.protocol = config
                .protocol
                .to_builder()
                .max_queued_output(codec_limit)
                .build()
                .map_err(io::Error::other)?;
        }
        let (store, resume_key) = open_store(&config)?;
        let (trigger, shutdown) = watch::channel(false);
        let (sleepers, sleeper_poll) = Sleepers::new()?;
        let shared = Arc::new(Shared {
            config,
            rooms: Rooms::default(),
            metrics: Metrics::default(),
            shutdown,
            shutting_down: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
            sleepers,
            runtime: tokio::runtime::Handle::current(),
            store,
            resume_key,
            used_tokens: UsedTokens::new(),
            attachment_moves: tokio::sync::RwLock::new(()),
            open: AtomicUsize::new(0),
            tasks: AtomicUsize::new(0),
            tasks_done: Notify::new(),
            cluster,
            last_auto_response: Mutex::new(None),
        });
        tokio::spawn(sweep_sleepers(Arc::downgrade(&shared)));
        tokio::spawn(expire_attachments(Arc::downgrade(&shared)));
        sleepers::spawn_waker_thread(Arc::downgrade(&shared), sleeper_poll)?;
        if let Some(mut incoming) = incoming {
            // What the other processes say: messages for this one's members, and resumes
            // that displaced a connection of this one.
            let shared = Arc::downgrade(&shared);
            tokio::spawn(async move {
                while let Some(incoming) = incoming.recv().await {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    match incoming {
                        Incoming::Message { room, data } => {
                            Room::new(room, shared).deliver_local(data);
                        }
                        Incoming::Resumed(id) => shared.displace(id),
                        Incoming::Subscribed => {
                            tokio::spawn(displace_moved(Arc::downgrade(&shared)));
                        }
                    }
                }
            });
        }
        let app = Arc::new(AppRoutes {
            router: self.router,
            routes: self.routes,
            http: self.http,
        });
        Ok(Server {
            listener,
            admin,
            shared,
            app,
            trigger: Arc::new(trigger),
        })
    }
}

/// The attachment store and resume key: shared through Redis in a cluster, in the durable
/// directory when there is one, in memory otherwise.
fn open_store(config: &ServerConfig) -> io::Result<(Arc<dyn AttachmentStore>, ResumeKey)> {
    if let Some(cluster) = &config.cluster {
        let store = RedisStore::open(&cluster.redis_url)
            .map_err(io::Error::other)?
            .with_moved_ttl(config.resume_ttl);
        let key = store.shared_resume_key().map_err(io::Error::other)?;
        return Ok((Arc::new(store), key));
    }
    match &config.durable_dir {
        Some(dir) => {
            let store = DirStore::open(dir).map_err(io::Error::other)?;
            let recovery = store.recovery();
            tracing::info!(dir = %dir.display(), ?recovery, "durable attachments opened");
            let key = ResumeKey::load_or_create(dir).map_err(io::Error::other)?;
            Ok((Arc::new(store), key))
        }
        None => Ok((Arc::new(MemoryStore::new()), ResumeKey::random())),
    }
}

struct AppRoutes {
    router: matchit::Router<usize>,
    routes: Vec<WsRoute>,
    http: Arc<dyn DynHttpHandler>,
}

/// State every connection of a server shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) rooms: Rooms,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The shutdown has begun: set before every connection is woken to see it, and read
    /// once per batch (cheaper than the watch's lock).
    pub(crate) shutting_down: AtomicBool,
    peers: Mutex<HashMap<ConnectionId, Weak<Peer>>>,
    /// Hibernating connections: no task runs for them until [`Shared::wake`].
    pub(crate) sleepers: Sleepers,
    /// Where woken connections' tasks run.
    runtime: tokio::runtime::Handle,
    store: Arc<dyn AttachmentStore>,
    pub(crate) resume_key: ResumeKey,
    used_tokens: UsedTokens,
    /// Held shared by attachment writes and exclusively by a resume's move: a write either
    /// ends before the move (which then takes its bytes) or starts after the token was spent
    /// (and is refused). Resumes are rare next to writes, and each waits only for the writes
    /// under way.
    attachment_moves: tokio::sync::RwLock<()>,
    /// WebSocket connections open now, for `max_connections`.
    open: AtomicUsize,
    /// Connection tasks running (handshakes included), for the graceful shutdown.
    tasks: AtomicUsize,
    tasks_done: Notify,
    /// The link to the other processes, when clustered.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// The auto-response made last ([`Shared::auto_response`]).
    last_auto_response: Mutex<Option<Arc<AutoResponse>>>,
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
        let mut last = self
            .last_auto_response
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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
    fn wake_all(&self) {
        for sleeper in self.sleepers.drain() {
            self.metrics.hibernating.fetch_sub(1, Relaxed);
            sleeper.resume(&self.runtime, Bytes::new());
        }
    }

    /// Wakes every connection's task (each sees the shutdown flag, already up, and closes).
    fn notify_all(&self) {
        let peers: Vec<Arc<Peer>> = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers.values().filter_map(Weak::upgrade).collect()
        };
        for peer in peers {
            peer.notify();
        }
    }

    pub(crate) fn forget(&self, id: ConnectionId) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
            peer.close(roost::CloseCode(4001), "resumed on another connection");
        }
    }

    fn peer(&self, id: ConnectionId) -> Option<Arc<Peer>> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .and_then(Weak::upgrade)
    }

    async fn blocking<T: Send + 'static>(
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

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    /// Where the server's own HTTP paths are served, if not on `listener`.
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    app: Arc<AppRoutes>,
    trigger: Arc<watch::Sender<bool>>,
}

/// Observes and stops a running [`Server`] from elsewhere.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    trigger: Arc<watch::Sender<bool>>,
}

impl ServerHandle {
    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Starts the graceful shutdown: stop accepting, close every connection with 1001.
    pub fn shutdown(&self) {
        let _ = self.trigger.send(true);
    }

    /// How many rooms have members.
    pub fn rooms(&self) -> usize {
        self.shared.rooms.count()
    }
}

impl Server {
    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the server's own HTTP paths, when they have one of their own
    /// ([`ServerConfig::admin_addr`]).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// A handle to watch and stop the server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
            trigger: self.trigger.clone(),
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run(self) -> io::Result<()> {
        self.run_until(roost::shutdown_signal()).await
    }

    /// Serves until `shutdown` completes (or [`ServerHandle::shutdown`] is called), then stops
    /// accepting, closes every connection with 1001 (attachments stay on disk for resume),
    /// and waits for the close handshakes, at most `shutdown_timeout`.
    pub async fn run_until(self, shutdown: impl Future<Output = io::Result<()>>) -> io::Result<()> {
        let Server {
            listener,
            admin,
            shared,
            app,
            trigger,
        } = self;
        let mut stop = shared.shutdown.clone();
        if let Some(admin) = admin {
            tokio::spawn(serve_admin(admin, shared.clone()));
        }
        tokio::pin!(shutdown);
        // Out of descriptors, accepting fails: the server keeps serving and tries again.
        let mut accepting = roost::Accepting::default();
        loop {
            tokio::select! {
                result = &mut shutdown => {
                    result?;
                    break;
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow_and_update() {
                        break;
                    }
                }
                (tcp, peer) = accepting.next(&listener, |_| {
                    shared.metrics.accept_errors.fetch_add(1, Relaxed);
                }) => {
                    let task = TaskGuard::new(&shared);
                    let app = app.clone();
                    tokio::spawn(async move {
                        handle_tcp(task, &app, tcp, peer).await;
                    });
                }
            }
        }
        drop(listener);
        let _ = trigger.send(true);
        shared.shutting_down.store(true, SeqCst);
        shared.wake_all();
        shared.notify_all();
        if let Some(cluster) = &shared.cluster {
            cluster.depart().await;
        }
        tracing::info!(
            open = shared.open.load(Relaxed),
            "shutting down: closing every connection with 1001"
        );
        let deadline = Instant::now() + shared.config.shutdown_timeout;
        while shared.tasks.load(Relaxed) > 0 {
            let waiting = shared.tasks_done.notified();
            if shared.tasks.load(Relaxed) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), waiting)
                .await
                .is_err()
            {
                tracing::warn!(
                    left = shared.tasks.load(Relaxed),
                    "shutdown timeout: dropping the rest"
                );
                break;
            }
        }
        Ok(())
    }
}

async fn handle_tcp(task: TaskGuard, app: &AppRoutes, mut tcp: TcpStream, addr: SocketAddr) {
    let shared = &task.0.clone();
    let _ = tcp.set_nodelay(true);
    let config = &shared.config.protocol;
    let deadline = tokio::time::Instant::now() + config.limits().handshake_timeout;
    let mut reader = RequestReader::new(config);
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 4096];
    let (request, leftover) = loop {
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                tracing::debug!(%addr, "handshake timed out");
                shared.metrics.record_rejection(408);
                return;
            }
        };
        raw.extend_from_slice(&buf[..n]);
        match reader.feed(&buf[..n]) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(error) => {
                shared.metrics.record_rejection(error.status());
                let _ = write_and_close(&mut tcp, &handshake::reject_response(&error)).await;
                return;
            }
        }
    };
    let route = app.router.at(request.uri().path()).ok().map(|matched| {
        let route = &app.routes[*matched.value];
        let room = match &route.room_param {
            Some(name) => matched.params.get(name).unwrap_or_default().to_owned(),
            None => request.uri().path().to_owned(),
        };
        (route, room)
    });
    match route {
        Some((route, room)) if roost::upgrade::is_upgrade_request(&request) => {
            drop((raw, buf, reader));
            accept_ws(task, route, room, tcp, request, leftover).await;
        }
        _ => {
            let answers = Answers::Public {
                own_paths: shared.config.admin_addr.is_none(),
                app: app.http.clone(),
            };
            serve_http(shared, answers, tcp, Bytes::from(raw)).await;
        }
    }
}

/// Serves the server's own HTTP paths on the admin address until the shutdown starts.
async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.clone();
    let mut accepting = roost::Accepting::default();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            (tcp, _) = accepting.next(&listener, |_| {}) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_http(&shared, Answers::Admin, tcp, Bytes::new()).await;
                });
            }
        }
    }
}

/// Admission, origin, resume and the handshake itself; then the connection runs in a task of
/// its own, sized for the connection alone: nothing of the handshake stays in its memory.
async fn accept_ws(
    task: TaskGuard,
    route: &WsRoute,
    room: String,
    mut tcp: TcpStream,
    request: Request<()>,
    leftover: Bytes,
) {
    let shared = &task.0.clone();
    let refuse = |status: StatusCode, why: &str| {
        shared.metrics.record_rejection(status.as_u16());
        simple_response(status, why)
    };
    if shared.open.fetch_add(1, Relaxed) >= shared.config.max_connections {
        shared.open.fetch_sub(1, Relaxed);
        let response = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections, try again later",
        );
        let _ = write_and_close(&mut tcp, &response).await;
        return;
    }
    let open = OpenGuard(shared.clone());
    if !shared.config.allowed_origins.is_empty() {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if !origin.is_some_and(|o| shared.config.allowed_origins.iter().any(|a| a == o)) {
            let response = refuse(StatusCode::FORBIDDEN, "origin not allowed");
            let _ = write_and_close(&mut tcp, &response).await;
            return;
        }
    }
    let protocols = &route.protocols;
    let accepted = handshake::accept(
        &shared.config.protocol,
        &request,
        |request, mut response| {
            let offered = request.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL);
            let offered: Vec<&str> = offered
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            if let Some(chosen) = protocols.iter().find(|p| offered.contains(&p.as_str()))
                && let Ok(value) = http::HeaderValue::from_str(chosen)
            {
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
            Ok(response)
        },
    );
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(rejected) => {
            shared.metrics.record_rejection(rejected.error.status());
            let _ = write_and_close(&mut tcp, &rejected.to_bytes()).await;
            return;
        }
    };
    // The token is spent only on a handshake that is otherwise accepted.
    let resume_from = match resume_param(request.uri()) {
        None => None,
        Some(token) => match check_resume(shared, &token) {
            Ok(id) => Some(id),
            Err(why) => {
                let response = refuse(StatusCode::UNAUTHORIZED, &why);
                let _ = write_and_close(&mut tcp, &response).await;
                return;
            }
        },
    };
    let id = ConnectionId::random();
    // Before the attachment moves: an attachment is written (or moved) no earlier than the
    // handshake of the token that reaches it, which `expire_attachments` relies on.
    let expires = SystemTime::now() + shared.config.resume_ttl;
    let mut attachment = None;
    if let Some(old) = resume_from {
        match shared.adopt(old, id).await {
            Ok(Some(bytes)) => attachment = Some(bytes),
            Ok(None) => {
                // Nothing moved: a connection of that id still open (one that had written no
                // attachment yet) keeps writing as before.
                shared.used_tokens.release(old);
                let response = refuse(
                    StatusCode::GONE,
                    "nothing to resume: the session ended (closed with 1000) or was already resumed",
                );
                let _ = write_and_close(&mut tcp, &response).await;
                return;
            }
            Err(error) => {
                // Try again later, with the same token: it is not spent by this attempt. The
                // store's error (logged) stays here: it may name paths of the server's.
                shared.used_tokens.release(old);
                let response = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    match error {
                        AttachmentError::Cancelled => "cannot resume now: the server is stopping",
                        _ => {
                            "cannot resume now: the attachment store failed; try again with the same token"
                        }
                    },
                );
                let _ = write_and_close(&mut tcp, &response).await;
                return;
            }
        }
    }
    if tcp.write_all(&accepted.to_bytes()).await.is_err() {
        // The client is gone before its new connection began: the attachment goes back where
        // its token points, so a retry with that token resumes.
        if let Some(old) = resume_from
            && let Ok(Some(_)) = shared.adopt(id, old).await
        {
            shared.used_tokens.release(old);
        }
        return;
    }
    if let Some(old) = resume_from {
        // Only now that the resume stands: the old connection's writes were refused since the
        // token was spent, and it is still open if the attachment had to go back.
        shared.took_session(old);
        shared.metrics.resumes.fetch_add(1, Relaxed);
    }
    let mut core = Connection::server(shared.config.protocol.clone(), accepted.negotiated);
    if let Some((request, response)) = &shared.config.auto_response {
        core.set_auto_response(Some(shared.auto_response(request, response)));
    }
    let peer = Arc::new(Peer::new(
        id,
        shared.rooms.intern(&room),
        shared.clone(),
        tcp,
        core,
        expires,
    ));
    peer.set_attachment(attachment);
    shared
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Arc::downgrade(&peer));
    let (handler, url) = (route.handler.clone(), request.uri().clone());
    drop(request);
    handler.spawn_open(
        peer,
        url,
        leftover,
        Guards {
            _open: open,
            _task: task,
        },
    );
}

/// Closes the connections here whose sessions a resume on another process took while this
/// one was not listening for announcements (see [`crate::broker`]).
///
/// Redis often fails the first commands after it comes back, so this tries again (backing
/// off) for as long as the subscription stays up; if it drops, the next one starts over.
async fn displace_moved(shared: Weak<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(cluster) = &shared.cluster else {
            return;
        };
        if !cluster.ready() {
            return;
        }
        let ids: Vec<ConnectionId> = shared
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        match cluster.moved_among(&ids).await {
            Ok(moved) => return moved.into_iter().for_each(|id| shared.displace(id)),
            Err(error) => tracing::warn!(%error, "could not look for resumed connections"),
        }
        drop(shared);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Keepalive pings and idle timeouts for hibernating connections, which have no task and no
/// timer of their own: one pass over them every tick, until the server is gone.
async fn sweep_sleepers(shared: Weak<Shared>) {
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
async fn expire_attachments(shared: Weak<Shared>) {
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

/// What keeps a connection counted while it runs or sleeps: the open-connection slot and the
/// running-task count the graceful shutdown waits for. Inline, not boxed: a hibernating
/// connection keeps it in the table of sleepers.
pub(crate) struct Guards {
    _open: OpenGuard,
    _task: TaskGuard,
}

/// Decrements the open-connection count when the connection ends, however it ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Counts a running connection task (handshake or connection) for the graceful shutdown.
struct TaskGuard(Arc<Shared>);

impl TaskGuard {
    fn new(shared: &Arc<Shared>) -> Self {
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

fn resume_param(uri: &http::Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("resume="))
        .map(str::to_owned)
}

fn check_resume(shared: &Shared, token: &str) -> Result<ConnectionId, String> {
    let now = SystemTime::now();
    let claims = shared
        .resume_key
        .verify_claims(token, now)
        .map_err(|error| format!("resume refused: {error}"))?;
    if !shared
        .used_tokens
        .consume(claims.id, claims.expires_at, now)
    {
        return Err("resume refused: the token was already used".to_owned());
    }
    Ok(claims.id)
}

fn simple_response(status: StatusCode, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n{body}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len() + 1,
    )
    .into_bytes()
}

async fn write_and_close(tcp: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    tcp.write_all(bytes).await?;
    tcp.shutdown().await
}
