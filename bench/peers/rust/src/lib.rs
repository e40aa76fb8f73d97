//! What the three peer servers share: flags, the listening socket, the runtime and the room
//! registry. The WebSocket code of each stack lives in its own binary under `src/bin/`.
//!
//! The app every peer runs: on any path, echo each text and binary message with the same
//! opcode; on `/room/<name>`, send each message to every other connection of that room instead.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedSender;

/// Address used when neither `--listen` nor `HOST`/`PORT` is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9101";

/// Pending-connection queue asked of the kernel (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Command-line settings common to every peer.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Runtime worker threads; 1 means tokio's current-thread runtime.
    pub threads: usize,
}

impl Args {
    /// Reads `--listen ADDR` and `--threads N` from the command line, falling back to the
    /// `HOST` and `PORT` environment variables, then to [`DEFAULT_LISTEN`] and one thread.
    /// Prints usage and exits on `--help` or a bad flag.
    pub fn parse(name: &str) -> Args {
        match Self::try_parse(std::env::args().skip(1)) {
            Ok(Some(args)) => args,
            Ok(None) => {
                println!("{}", usage(name));
                std::process::exit(0);
            }
            Err(message) => {
                eprintln!("{name}: {message}\n{}", usage(name));
                std::process::exit(2);
            }
        }
    }

    fn try_parse(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
        let mut listen = match std::env::var("PORT") {
            Ok(port) => format!("{host}:{port}"),
            Err(_) => DEFAULT_LISTEN.to_owned(),
        };
        let mut threads = 1;
        while let Some(flag) = argv.next() {
            let (flag, inline) = match flag.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (flag, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| argv.next())
                    .ok_or(format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--listen" => listen = value()?,
                "--threads" => {
                    threads = value()?
                        .parse()
                        .map_err(|_| "--threads needs a number".to_owned())?;
                    if threads == 0 {
                        return Err("--threads must be at least 1".to_owned());
                    }
                }
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let listen = listen
            .parse()
            .map_err(|_| format!("bad listen address {listen}"))?;
        Ok(Some(Args { listen, threads }))
    }

    /// Builds the runtime: current-thread for one thread, multi-thread otherwise.
    pub fn runtime(&self) -> io::Result<tokio::runtime::Runtime> {
        if self.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .enable_all()
                .build()
        }
    }
}

fn usage(name: &str) -> String {
    format!(
        "usage: {name} [--listen ADDR] [--threads N]\n  \
         --listen ADDR  address to listen on (default {DEFAULT_LISTEN}, or $HOST:$PORT)\n  \
         --threads N    runtime worker threads; 1 = current-thread runtime (default 1)"
    )
}

/// Binds `addr` with SO_REUSEADDR and a [`LISTEN_BACKLOG`]-deep accept queue.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The next connection. A failed accept (out of descriptors, most often) is printed and
/// retried, so the connections already open keep being served.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(err) => eprintln!("accept: {err}"),
        }
    }
}

/// The room named by a request path: `/room/<name>` with a non-empty name (the query string,
/// if any, is not part of it). Any other path is an echo path.
pub fn room_name(path: &str) -> Option<&str> {
    let path = path.split('?').next().unwrap_or(path);
    path.strip_prefix("/room/").filter(|name| !name.is_empty())
}

/// Every room's members, each reached through the sending side of its writer's queue.
///
/// Queues are unbounded, as in the usual tokio chat-server shape: a slow reader makes its own
/// queue grow rather than slowing the sender.
pub struct Rooms<T> {
    rooms: Mutex<HashMap<String, HashMap<u64, UnboundedSender<T>>>>,
    next_id: AtomicU64,
}

impl<T: Clone> Rooms<T> {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Rooms {
            rooms: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Adds a member to `room`; it leaves when the returned guard is dropped.
    pub fn join(self: &Arc<Self>, room: &str, queue: UnboundedSender<T>) -> Membership<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(room.to_owned())
            .or_default()
            .insert(id, queue);
        Membership {
            rooms: Arc::clone(self),
            room: room.to_owned(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, UnboundedSender<T>>>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's place in a room.
pub struct Membership<T: Clone> {
    rooms: Arc<Rooms<T>>,
    room: String,
    id: u64,
}

impl<T: Clone> Membership<T> {
    /// Queues `message` for every other member of this room.
    pub fn broadcast(&self, message: &T) {
        let rooms = self.rooms.lock();
        if let Some(members) = rooms.get(&self.room) {
            for (id, queue) in members {
                if *id != self.id {
                    // A send fails only when that member is leaving; it no longer wants data.
                    let _ = queue.send(message.clone());
                }
            }
        }
    }
}

impl<T: Clone> Drop for Membership<T> {
    fn drop(&mut self) {
        let mut rooms = self.rooms.lock();
        if let Some(members) = rooms.get_mut(&self.room) {
            members.remove(&self.id);
            if members.is_empty() {
                rooms.remove(&self.room);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_paths() {
        assert_eq!(room_name("/room/a"), Some("a"));
        assert_eq!(room_name("/room/a?x=1"), Some("a"));
        assert_eq!(room_name("/room/"), None);
        assert_eq!(room_name("/rooms/a"), None);
        assert_eq!(room_name("/"), None);
    }

    #[test]
    fn broadcast_skips_the_sender() {
        let rooms = Rooms::new();
        let (a_tx, mut a_rx) = tokio::sync::mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = tokio::sync::mpsc::unbounded_channel();
        let a = rooms.join("r", a_tx);
        let b = rooms.join("r", b_tx);
        a.broadcast(&1);
        assert_eq!(b_rx.try_recv().ok(), Some(1));
        assert!(a_rx.try_recv().is_err());
        drop(b);
        drop(a);
        assert!(rooms.lock().is_empty());
    }
}
