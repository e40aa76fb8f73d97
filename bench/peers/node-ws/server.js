// The bench app on Node.js and the `ws` package: echo on any path, broadcast to the others on
// `/room/<name>`. ws answers pings (autoPong) and the close handshake itself.
"use strict";

const http = require("node:http");
const { WebSocketServer, WebSocket } = require("ws");
const { LISTEN_BACKLOG, parseArgs, roomName } = require("../args.js");

const NAME = "node-ws-server";
const { host, port } = parseArgs(NAME);

const server = http.createServer({ noDelay: true }, (_request, response) => {
  response.writeHead(426, { Connection: "close" }).end();
});
// permessage-deflate is off by default on a ws server: accept it, and compress messages from
// 64 bytes (roost's threshold; ws's default is 1,024) so the compressed echo compares alike.
const wss = new WebSocketServer({ server, perMessageDeflate: { threshold: 64 } });

/** @type {Map<string, Set<WebSocket>>} room name -> its open connections */
const rooms = new Map();

wss.on("connection", (ws, request) => {
  const room = roomName(request.url);
  ws.on("error", () => {}); // a peer's protocol error closes the socket; nothing to log
  if (room === null) {
    ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
    return;
  }
  let members = rooms.get(room);
  if (!members) rooms.set(room, (members = new Set()));
  members.add(ws);
  ws.on("message", (data, isBinary) => {
    for (const other of members) {
      if (other !== ws && other.readyState === WebSocket.OPEN) other.send(data, { binary: isBinary });
    }
  });
  ws.on("close", () => {
    members.delete(ws);
    if (members.size === 0 && rooms.get(room) === members) rooms.delete(room);
  });
});

server.listen({ host, port, backlog: LISTEN_BACKLOG }, () => {
  const address = server.address();
  console.log(`${NAME} listening on ${address.address}:${address.port}`);
});
