//! The chat app: rooms at `/chat/<room>`, a demo page at `/`.
//!
//! Protocol (text frames): the first message is the sender's name, answered `hello <name>`
//! then `resume <token>`; every later message is broadcast to the room as `<name>: <text>`,
//! the sender included, except `/nick <new name>`, which renames the sender (stored before
//! the room hears `<old> is now <new>`). `heartbeat` is answered `alive` by an auto-response
//! and never reaches the handler. A client reconnecting with `?resume=<token>` gets `welcome back
//! <name>` and a fresh `resume <token>`, and keeps its name. Closing with 1000 ends the
//! session (the name is forgotten); any other end (a reload's 1001, a lost connection, a
//! server restart) keeps it for resume.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use roost_server::{
    App, AttachmentError, Data, Disconnect, Handler, Room, RouteError, Ws, WsRoute,
};

/// The demo page, embedded in the binary.
const PAGE: &str = include_str!("../../../../web/index.html");

/// Longest accepted name, in characters.
const MAX_NAME: usize = 64;

/// The chat application's handler.
pub(crate) struct Chat;

impl Handler for Chat {
    async fn on_open(&self, ws: &Ws, _url: &http::Uri) -> Result<(), Disconnect> {
        ws.set_auto_response("heartbeat", "alive");
        // A resumed connection already carries the name it had.
        if let Ok(Some(name)) = ws.deserialize_attachment::<String>() {
            ws.send_text(format!("welcome back {name}"));
            // The old token is spent; this one resumes the new connection.
            ws.send_text(format!("resume {}", ws.resume_token()));
        }
        Ok(())
    }

    async fn on_message(&self, ws: &Ws, data: Data, room: &Room) -> Result<(), Disconnect> {
        let Data::Text(text) = data else {
            return Err(Disconnect::new(1003, "the chat speaks text only"));
        };
        let name = ws
            .deserialize_attachment::<String>()
            .map_err(|_| Disconnect::new(1011, "stored name is unreadable"))?;
        match name {
            Some(old) => match text.strip_prefix("/nick ") {
                Some(new) => {
                    let new = valid_name(new)?;
                    if store_name(ws, new).await? {
                        room.broadcast(format!("{old} is now {new}"));
                    }
                }
                None => {
                    room.broadcast(format!("{old}: {text}"));
                }
            },
            None => {
                let name = valid_name(&text)?;
                if store_name(ws, name).await? {
                    ws.send_text(format!("hello {name}"));
                    ws.send_text(format!("resume {}", ws.resume_token()));
                }
            }
        }
        Ok(())
    }
}

/// `text` trimmed, if it is a name.
fn valid_name(text: &str) -> Result<&str, Disconnect> {
    let name = text.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(Disconnect::policy(format!(
            "a name is 1 to {MAX_NAME} characters"
        )));
    }
    Ok(name)
}

/// Stores `name` as the connection's attachment, durably. False when the session was
/// resumed elsewhere: the server closes this connection (4001) and it says nothing more.
async fn store_name(ws: &Ws, name: &str) -> Result<bool, Disconnect> {
    match ws.serialize_attachment(name).await {
        Ok(()) => Ok(true),
        Err(AttachmentError::Resumed) => Ok(false),
        Err(AttachmentError::TooLarge { max, .. }) => Err(Disconnect::policy(format!(
            "this server stores names of at most {max} bytes"
        ))),
        Err(error) => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "cannot store the name"
            );
            Err(Disconnect::new(1011, "cannot store your name right now"))
        }
    }
}

/// The chat app with its page.
pub(crate) fn app() -> Result<App, RouteError> {
    Ok(App::new()
        .route("/chat/:room", WsRoute::new(Chat).room_from_path("room"))?
        .http(page))
}

async fn page(request: Request<Bytes>) -> Response<Bytes> {
    let (status, body, kind) = match request.uri().path() {
        "/" | "/index.html" => (
            StatusCode::OK,
            Bytes::from_static(PAGE.as_bytes()),
            "text/html; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found\n"),
            "text/plain",
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    response
}
