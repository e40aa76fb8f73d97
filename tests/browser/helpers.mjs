// Shared helpers of the browser tests: child processes (roost, redis-server), Chromium,
// and the chat page's controls.
//
// Env: ROOST_BIN (default target/release/roost), CHROMIUM (default /usr/bin/chromium),
// REDIS_SERVER (default /usr/bin/redis-server).

import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ROOST_BIN = process.env.ROOST_BIN
  ? path.resolve(process.env.ROOST_BIN)
  : path.join(REPO, 'target', 'release', 'roost');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const REDIS_SERVER = process.env.REDIS_SERVER || '/usr/bin/redis-server';
export const ARTIFACTS = path.join(REPO, 'target', 'artifacts');

export const WAIT = 5_000;          // any single UI expectation
export const SERVER_START = 15_000; // a server must be listening within this

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A bound for Promise.race that does not keep the process alive once the race is decided.
export const timeLimit = (ms) => new Promise((r) => setTimeout(r, ms).unref());
const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

// A loopback port that was free a moment ago (bound to 0, then released).
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Polls `check` (an async predicate) every `every` ms until it holds; throws after `ms`.
export async function eventually(what, ms, check, every = 100) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (err) { last = err; }
    await sleep(every);
  }
  throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${last.message})` : ''}`);
}

// ---- child processes ----

// Every child still running; SIGKILLed if the test process exits without stopping them.
const running = new Set();
process.on('exit', () => { for (const proc of running) proc.kill9(); });

export class Proc {
  constructor(name, bin, args) {
    assert.ok(existsSync(bin), `${name} binary not found: ${bin}`);
    this.name = name;
    this.log = '';
    this.spawnError = null;
    this.child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((r) => this.child.once('exit', r));
    running.add(this);
    this.child.once('exit', () => running.delete(this));
    this.child.on('error', (err) => { this.spawnError = err; running.delete(this); });
    const keep = (chunk) => { this.log = (this.log + stripAnsi(String(chunk))).slice(-20_000); };
    this.child.stdout.on('data', keep);
    this.child.stderr.on('data', keep);
  }

  get alive() {
    return !this.spawnError && this.child.exitCode === null && this.child.signalCode === null;
  }

  // Throws if the process failed to start or has ended.
  checkAlive() {
    if (this.spawnError) throw this.spawnError;
    if (!this.alive) {
      throw new Error(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}):\n${this.log}`);
    }
  }

  // Waits until the output matches `re`; returns the match.
  async waitForLog(re, ms) {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = re.exec(this.log);
      if (m) return m;
      this.checkAlive();
      if (Date.now() > deadline) throw new Error(`${this.name}: no ${re} within ${ms} ms:\n${this.log}`);
      await sleep(50);
    }
  }

  kill9() {
    if (this.alive) {
      try { this.child.kill('SIGKILL'); } catch { /* already gone */ }
    }
  }

  // SIGKILL, and wait (bounded) for the process to be gone.
  async killHard() {
    if (!this.alive) return;
    this.kill9();
    await Promise.race([this.exited, timeLimit(5_000)]);
  }

  // SIGTERM, then SIGKILL if it is still there after 3 s.
  async stop() {
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const gone = await Promise.race([this.exited.then(() => true), timeLimit(3_000).then(() => false)]);
    if (!gone) await this.killHard();
  }
}

// `roost serve ARGS --listen 127.0.0.1:0`; the address comes from its `listening on` line.
export async function startRoost(args, name = 'roost') {
  const proc = new Proc(name, ROOST_BIN, ['serve', ...args, '--listen', '127.0.0.1:0']);
  try {
    const [, addr] = await proc.waitForLog(/listening on ws:\/\/(\S+)/, SERVER_START);
    return { proc, addr, base: `http://${addr}/` };
  } catch (err) {
    await proc.killHard();
    throw err;
  }
}

// Resolves whether a RESP PING on `port` is answered +PONG (false on any error or after 1 s).
function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let got = '';
    const done = (ok) => { sock.destroy(); resolve(ok); };
    sock.setTimeout(1_000, () => done(false));
    sock.once('connect', () => sock.write('*1\r\n$4\r\nPING\r\n'));
    sock.on('data', (d) => { got += d; if (got.includes('\r\n')) done(got.startsWith('+PONG')); });
    sock.once('error', () => done(false));
    sock.once('close', () => done(false));
  });
}

// A redis-server on a free loopback port, without persistence; ready once it answers PING.
export async function startRedis() {
  const port = await freePort();
  const proc = new Proc('redis-server', REDIS_SERVER,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  try {
    await eventually(`redis-server answering PING on ${port}`, SERVER_START, async () => {
      proc.checkAlive();
      return redisPing(port);
    });
    return { proc, port, url: `redis://127.0.0.1:${port}` };
  } catch (err) {
    await proc.killHard();
    throw new Error(`${err.message}\n${proc.log}`);
  }
}

// GET `url` with a time limit; returns { status, body }.
export async function httpGet(url, ms = 2_000) {
  const res = await fetch(url, { signal: AbortSignal.timeout(ms) });
  return { status: res.status, body: await res.text() };
}

// ---- Chromium ----

export function launchBrowser() {
  // launch() starts Chromium on a fresh temporary user-data directory of its own
  // (it refuses --user-data-dir in args) and deletes it when the browser closes.
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
    timeout: 30_000,
  });
}

export async function closeBrowser(browser) {
  await Promise.race([browser?.close().catch(() => {}), timeLimit(10_000)]);
}

// A page in a fresh context (its own cookies and storage) at `url`; `page.errors` collects
// uncaught page errors.
export async function openPage(browser, url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.setDefaultNavigationTimeout(10_000);
  page.errors = [];
  page.on('pageerror', (err) => { page.errors.push(String(err)); });
  await page.goto(url);
  return page;
}

// Screenshots of `pages` (name -> Page) to target/artifacts/<prefix>-<name>.png; never throws.
export async function screenshots(pages, prefix) {
  if (!Object.keys(pages).length) return;
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    await page.screenshot({ path: path.join(ARTIFACTS, `${prefix}-${name}.png`), timeout: WAIT })
      .catch((err) => console.error(`screenshot of ${name} failed: ${err.message}`));
  }
}

// Steps that build on each other: after one fails, the later ones are skipped.
export function stepper() {
  let broken = false;
  const step = (title, fn) => it(title, async (t) => {
    if (broken) { t.skip('an earlier step failed'); return; }
    try { await fn(); } catch (err) { broken = true; throw err; }
  });
  return { step, failed: () => broken };
}

// ---- the chat page ----

// The message <li>s whose whole text is exactly `text`.
export function message(page, text) {
  return page.locator('#messages li', { hasText: new RegExp(`^${escapeRe(text)}$`) });
}

export async function seesMessage(page, text) {
  try {
    await message(page, text).first().waitFor({ state: 'visible', timeout: WAIT });
  } catch (err) {
    const shown = await page.locator('#messages li').allTextContents().catch(() => []);
    const state = await page.locator('#state').textContent().catch(() => '?');
    throw new Error(`no message "${text}" within ${WAIT} ms; #state is "${state}" and ` +
      `#messages holds ${JSON.stringify(shown)}`, { cause: err });
  }
}

export async function waitState(page, state) {
  try {
    await page.waitForFunction(
      (s) => document.querySelector('#state')?.dataset.state === s, state, { timeout: WAIT });
  } catch (err) {
    const now = await page.locator('#state').textContent().catch(() => '?');
    throw new Error(`#state never became "${state}" (it shows "${now}"): ${err.message}`);
  }
}

export async function join(page, room, name) {
  await page.fill('#room', room);
  await page.fill('#name', name);
  await page.click('#join');
  await waitState(page, 'open');
  await seesMessage(page, `hello ${name}`);
}

export async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

// The page's resume token for `room`, from its sessionStorage (its origin's).
export function storedToken(page, room) {
  return page.evaluate((r) => sessionStorage.getItem(`roost-chat:token:${r}`), room);
}
