// The bench app on Bun (`Bun.serve`, uWebSockets inside): echo on any path, broadcast to the
// others on `/room/<name>` through Bun's pub/sub (`ws.publish` skips the sender). uWebSockets
// answers pings and the close handshake itself.
//
// Settings changed from Bun's defaults, so that Bun runs the same app as the other peers:
//   idleTimeout 0, sendPings false   no server-side idle timeout or keepalive pings (default 120 s)
//   backpressureLimit 0               never drop a message for a slow reader (default: drop past 16 MiB)
//   perMessageDeflate true            accept permessage-deflate (off by default), and compress
//                                     each echo (`ws.send(message, true)`), as roost and ws do
//   listen backlog 4096               Bun.serve listens with 512 and has no option for it; we call
//                                     listen(2) again on its socket, which Linux allows to resize
//                                     the queue (--bun-backlog keeps Bun's own)
"use strict";

const fs = require("node:fs");
const { LISTEN_BACKLOG, parseArgs, roomName } = require("../args.js");

const NAME = "bun-server";
const keepBunBacklog = process.argv.includes("--bun-backlog");
const { host, port } = parseArgs(NAME, process.argv.slice(2).filter((a) => a !== "--bun-backlog"));

const server = Bun.serve({
  hostname: host,
  port,
  fetch(request, server) {
    const room = roomName(new URL(request.url).pathname);
    if (server.upgrade(request, { data: { room } })) return undefined;
    return new Response(null, { status: 426 });
  },
  websocket: {
    idleTimeout: 0,
    sendPings: false,
    backpressureLimit: 0,
    perMessageDeflate: true,
    open(ws) {
      if (ws.data.room !== null) ws.subscribe(ws.data.room);
    },
    // A string arrives for a text message and a Buffer for a binary one; sending either back
    // keeps the opcode.
    message(ws, message) {
      if (ws.data.room === null) ws.send(message, true);
      else ws.publish(ws.data.room, message, true);
    },
  },
});

if (!keepBunBacklog) raiseBacklog(server.port, LISTEN_BACKLOG);
console.log(`${NAME} listening on ${host}:${server.port}`);

/** Calls listen(fd, backlog) again on this process's listening socket for `port` (Linux only). */
function raiseBacklog(port, backlog) {
  try {
    const inodes = listeningSocketInodes(port);
    const { dlopen, FFIType } = require("bun:ffi");
    const libc = dlopen("libc.so.6", { listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
    let raised = 0;
    for (const fd of fs.readdirSync("/proc/self/fd")) {
      let target;
      try {
        target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        continue; // the descriptor readdir itself used, now closed
      }
      const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
      if (inode && inodes.has(inode) && libc.symbols.listen(Number(fd), backlog) === 0) raised++;
    }
    libc.close();
    if (raised === 0) throw new Error("listening socket not found");
  } catch (error) {
    console.error(`${NAME}: keeping Bun's listen backlog (512): ${error.message}`);
  }
}

/** Inodes of the sockets in LISTEN state on `port`, from /proc/self/net/tcp{,6}. */
function listeningSocketInodes(port) {
  const inodes = new Set();
  for (const table of ["/proc/self/net/tcp", "/proc/self/net/tcp6"]) {
    let text;
    try {
      text = fs.readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      const LISTEN = "0A";
      if (fields.length > 9 && fields[3] === LISTEN && parseInt(fields[1].split(":")[1], 16) === port) {
        inodes.add(fields[9]);
      }
    }
  }
  return inodes;
}
