//! [`App`]: routes and handlers; [`Server`]: starting, the accept loop and the graceful
//! shutdown. A connection's own path is in `accept`, the background tasks in `maintenance`,
//! the state they share in `shared`.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::Instant,
};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};

use crate::{
    Metrics, ServerConfig,
    accept::handle_tcp,
    broker::Cluster,
    handler::{DynHandler, DynHttpHandler, Handler, HttpHandler, not_found},
    maintenance::{expire_attachments, sweep_sleepers},
    plain_http::{Answers, serve_http},
    resume::{ResumeKey, UsedTokens},
    room::Rooms,
    shared::{Shared, TaskGuard},
    sleepers::{self, Sleepers},
    store::{
        AttachmentStore, DirStore, MemoryStore,
        redis::{RedisStore, mask_url},
    },
};

/// A WebSocket route: its handler, how its rooms are keyed, the subprotocols it speaks.
pub struct WsRoute {
    pub(crate) handler: Arc<dyn DynHandler>,
    pub(crate) room_param: Option<String>,
    pub(crate) protocols: Vec<String>,
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
    /// of 4096. Fails like [`App::serve_on`] on unusable settings.
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
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if the settings are unusable
    /// ([`ServerConfig::validate`]).
    pub async fn serve_on(self, listener: TcpListener) -> io::Result<Server> {
        self.config.validate().map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid ServerConfig: {error}"),
            )
        })?;
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
        if let Some(incoming) = incoming {
            tokio::spawn(crate::broker::hear(Arc::downgrade(&shared), incoming));
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

pub(crate) struct AppRoutes {
    pub(crate) router: matchit::Router<usize>,
    pub(crate) routes: Vec<WsRoute>,
    pub(crate) http: Arc<dyn DynHttpHandler>,
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
        tokio::pin!(shutdown);
        // Out of descriptors, accepting fails: the server keeps serving and tries again.
        let mut accepting = roost::Accepting::default();
        let mut admin_accepting = roost::Accepting::default();
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
                (tcp, _) = async {
                    match &admin {
                        Some(admin) => admin_accepting.next(admin, |_| {}).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        serve_http(&shared, Answers::Admin, tcp, Bytes::new()).await;
                    });
                }
            }
        }
        drop((listener, admin));
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
