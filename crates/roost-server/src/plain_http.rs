//! Plain HTTP on the WebSocket port: hyper serves it, from the bytes the server already read.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{Room, handler::DynHttpHandler, shared::Shared};

/// Largest HTTP request body the fallback handler reads.
const MAX_HTTP_BODY: usize = 1 << 20;

/// The value of the query parameter `name` in `uri`, as sent (not percent-decoded).
pub(crate) fn query_param<'a>(uri: &'a http::Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|pair| {
        pair.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// `/presence?room=R`: the room's members on every process, as JSON.
async fn presence(shared: &Arc<Shared>, uri: &http::Uri) -> Response<Bytes> {
    let room = query_param(uri, "room").unwrap_or_default();
    let room = Room::new(room.into(), shared.clone());
    match room.cluster_members().await {
        Ok(members) => {
            let ids: Vec<String> = members.iter().map(ToString::to_string).collect();
            let body =
                serde_json::json!({ "room": room.key(), "count": ids.len(), "members": ids });
            text(StatusCode::OK, body.to_string(), "application/json")
        }
        Err(error) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("presence unavailable: {error}\n"),
            "text/plain",
        ),
    }
}

/// Which requests a plain HTTP connection answers.
#[derive(Clone)]
pub(crate) enum Answers {
    /// The public port: the server's own paths unless they are on the admin address, the
    /// app's handler for the rest.
    Public {
        own_paths: bool,
        app: Arc<dyn DynHttpHandler>,
    },
    /// The admin address: the server's own paths, 404 for the rest.
    Admin,
}

/// The answer to one of the server's own paths, `None` for any other path.
async fn own_path(shared: &Arc<Shared>, request: &Request<Bytes>) -> Option<Response<Bytes>> {
    Some(match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            shared.render_metrics(),
            "text/plain; version=0.0.4",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/presence" => presence(shared, request.uri()).await,
        "/readyz" if shared.ready() => text(StatusCode::OK, "ready\n".to_owned(), "text/plain"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the cluster broker is unreachable\n".to_owned(),
            "text/plain",
        ),
        _ => return None,
    })
}

/// Plain HTTP: hyper serves the request, from the bytes already read on.
pub(crate) async fn serve_http(
    shared: &Arc<Shared>,
    answers: Answers,
    tcp: TcpStream,
    read: Bytes,
) {
    let shared = shared.clone();
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let (answers, shared) = (answers.clone(), shared.clone());
        async move {
            let (parts, body) = request.into_parts();
            let response = match Limited::new(body, MAX_HTTP_BODY).collect().await {
                Ok(body) => {
                    let request = Request::from_parts(parts, body.to_bytes());
                    match answers {
                        Answers::Public { own_paths, app } => {
                            let own = match own_paths {
                                true => own_path(&shared, &request).await,
                                false => None,
                            };
                            match own {
                                Some(response) => response,
                                None => app.call(request).await,
                            }
                        }
                        Answers::Admin => match own_path(&shared, &request).await {
                            Some(response) => response,
                            None => text(
                                StatusCode::NOT_FOUND,
                                "not found\n".to_owned(),
                                "text/plain",
                            ),
                        },
                    }
                }
                Err(_) => text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large\n".to_owned(),
                    "text/plain",
                ),
            };
            let (parts, body) = response.into_parts();
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, Full::new(body)))
        }
    });
    let io = TokioIo::new(Rewind { read, tcp });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service);
    let _ = tokio::time::timeout(HTTP_TIMEOUT, connection).await;
}

/// How long one plain HTTP exchange may take before its connection is dropped.
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// A TCP stream that first replays bytes already read from it.
struct Rewind {
    read: Bytes,
    tcp: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let head = self.read.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
