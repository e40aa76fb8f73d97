//! The benchmark app every stack in `bench/` runs: on any path each text and binary message
//! is echoed with the same opcode; on `/room/<name>` each message goes to every *other*
//! connection of that room.

use roost_server::{App, Data, Disconnect, Handler, Room, RouteError, Ws, WsRoute};

/// Echoes every message back.
pub(crate) struct Echo;

impl Handler for Echo {
    async fn on_message(&self, ws: &Ws, data: Data, _room: &Room) -> Result<(), Disconnect> {
        ws.send(data);
        Ok(())
    }
}

/// Sends every message to the other members of its room.
pub(crate) struct Fanout;

impl Handler for Fanout {
    async fn on_message(&self, ws: &Ws, data: Data, room: &Room) -> Result<(), Disconnect> {
        room.broadcast_except(ws, data);
        Ok(())
    }
}

/// The bench app's routes.
pub(crate) fn app() -> Result<App, RouteError> {
    App::new()
        .route("/room/:name", WsRoute::new(Fanout).room_from_path("name"))?
        .ws("/", Echo)?
        .ws("/{*path}", Echo)
}
