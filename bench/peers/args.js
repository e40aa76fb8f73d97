// Flags shared by the JavaScript peers, the same as the Rust peers':
//   --listen ADDR   HOST:PORT or [V6HOST]:PORT (default 127.0.0.1:9101, or $HOST:$PORT)
//   --threads N     accepted for a uniform command line; only 1 is possible here
// and the app rule: a request path `/room/<name>` (query excluded, name non-empty) joins a room;
// any other path echoes.
"use strict";

const DEFAULT_LISTEN = "127.0.0.1:9101";
const LISTEN_BACKLOG = 4096;

function usage(name) {
  return (
    `usage: ${name} [--listen ADDR] [--threads 1]\n` +
    `  --listen ADDR  address to listen on (default ${DEFAULT_LISTEN}, or $HOST:$PORT)\n` +
    `  --threads N    must be 1: this runtime serves from one thread`
  );
}

function fail(name, message) {
  console.error(`${name}: ${message}\n${usage(name)}`);
  process.exit(2);
}

function parseArgs(name, argv = process.argv.slice(2)) {
  let listen = process.env.PORT
    ? `${process.env.HOST || "127.0.0.1"}:${process.env.PORT}`
    : DEFAULT_LISTEN;
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s);
    const takeValue = () => value ?? argv[++i] ?? fail(name, `${flag} needs a value`);
    if (flag === "--listen") {
      listen = takeValue();
    } else if (flag === "--threads") {
      if (takeValue() !== "1") fail(name, "--threads must be 1");
    } else if (flag === "-h" || flag === "--help") {
      console.log(usage(name));
      process.exit(0);
    } else {
      fail(name, `unknown argument ${flag}`);
    }
  }
  const colon = listen.lastIndexOf(":");
  const host = listen.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
  const port = Number(listen.slice(colon + 1));
  if (colon < 0 || !host || !Number.isInteger(port) || port < 0 || port > 65535) {
    fail(name, `bad listen address ${listen}`);
  }
  return { host, port };
}

function roomName(url) {
  const path = url.split("?")[0];
  if (!path.startsWith("/room/")) return null;
  const name = path.slice("/room/".length);
  return name === "" ? null : name;
}

module.exports = { LISTEN_BACKLOG, parseArgs, roomName };
