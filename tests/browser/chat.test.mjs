// Browser test of the chat demo page served by `roost serve --app chat`.
//
//   npm ci --prefix tests/browser && node --test tests/browser/
//
// Env: ROOST_BIN (default target/release/roost), CHROMIUM (default /usr/bin/chromium).
// Screenshots of both pages go to target/artifacts/chat-alice.png and chat-bob.png.

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const ROOST_BIN = process.env.ROOST_BIN
  ? path.resolve(process.env.ROOST_BIN)
  : path.join(REPO, 'target', 'release', 'roost');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO, 'target', 'artifacts');

const WAIT = 5_000;          // any single UI expectation
const SERVER_START = 15_000; // the server's port must accept connections within this

function freePort() {
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

function canConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    const done = (ok) => { sock.destroy(); resolve(ok); };
    sock.setTimeout(500, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A bound for Promise.race that does not keep the process alive once the race is decided.
const timeLimit = (ms) => new Promise((r) => setTimeout(r, ms).unref());
const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

let server = null;
let serverLog = '';
let browser = null;
let base = null;
const pages = {}; // name -> Page

function killServer() {
  if (server && server.exitCode === null && server.signalCode === null) {
    try { server.kill('SIGKILL'); } catch { /* already gone */ }
  }
}
process.on('exit', killServer); // last resort if the hooks never run

async function startServer() {
  assert.ok(existsSync(ROOST_BIN), `server binary not found: ${ROOST_BIN} (set ROOST_BIN or build it)`);
  const port = await freePort();
  server = spawn(ROOST_BIN, ['serve', '--app', 'chat', '--listen', `127.0.0.1:${port}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (chunk) => { serverLog = (serverLog + chunk).slice(-20_000); };
  server.stdout.on('data', keep);
  server.stderr.on('data', keep);
  let spawnError = null;
  server.on('error', (err) => { spawnError = err; });

  const deadline = Date.now() + SERVER_START;
  while (Date.now() < deadline) {
    if (spawnError) throw spawnError;
    if (server.exitCode !== null || server.signalCode !== null) {
      throw new Error(`server exited early (${server.exitCode ?? server.signalCode}):\n${serverLog}`);
    }
    if (await canConnect(port)) return `http://127.0.0.1:${port}/`;
    await sleep(100);
  }
  throw new Error(`server did not listen on 127.0.0.1:${port} within ${SERVER_START} ms:\n${serverLog}`);
}

async function stopServer() {
  if (!server || server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGTERM');
  const gone = await Promise.race([exited.then(() => true), timeLimit(3_000).then(() => false)]);
  if (!gone) {
    server.kill('SIGKILL');
    await Promise.race([exited, timeLimit(2_000)]);
  }
}

async function openPerson(name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.setDefaultNavigationTimeout(10_000);
  page.on('pageerror', (err) => { page.errors.push(String(err)); });
  page.errors = [];
  await page.goto(base);
  pages[name] = page;
  return page;
}

// Wait for a message <li> whose whole text is exactly `text`.
function message(page, text) {
  return page.locator('#messages li', { hasText: new RegExp(`^${escapeRe(text)}$`) });
}
async function seesMessage(page, text) {
  try {
    await message(page, text).first().waitFor({ state: 'visible', timeout: WAIT });
  } catch (err) {
    const shown = await page.locator('#messages li').allTextContents().catch(() => []);
    const state = await page.locator('#state').textContent().catch(() => '?');
    throw new Error(`no message "${text}" within ${WAIT} ms; #state is "${state}" and ` +
      `#messages holds ${JSON.stringify(shown)}`, { cause: err });
  }
}
async function waitState(page, state) {
  try {
    await page.waitForFunction(
      (s) => document.querySelector('#state')?.dataset.state === s, state, { timeout: WAIT });
  } catch (err) {
    const now = await page.locator('#state').textContent().catch(() => '?');
    throw new Error(`#state never became "${state}" (it shows "${now}"): ${err.message}`);
  }
}
async function join(page, room, name) {
  await page.fill('#room', room);
  await page.fill('#name', name);
  await page.click('#join');
  await waitState(page, 'open');
  await seesMessage(page, `hello ${name}`);
}
async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}
function storedToken(page, room) {
  return page.evaluate((r) => sessionStorage.getItem(`roost-chat:token:${r}`), room);
}

describe('chat demo page', { timeout: 90_000 }, () => {
  let broken = false; // the steps build on each other: after a failure, skip the rest
  const step = (title, fn) => it(title, async (t) => {
    if (broken) { t.skip('an earlier step failed'); return; }
    try { await fn(); } catch (err) { broken = true; throw err; }
  });

  after(async () => {
    try {
      if (Object.keys(pages).length) {
        mkdirSync(ARTIFACTS, { recursive: true });
        for (const [name, page] of Object.entries(pages)) {
          await page.screenshot({ path: path.join(ARTIFACTS, `chat-${name}.png`), timeout: WAIT })
            .catch((err) => console.error(`screenshot of ${name} failed: ${err.message}`));
        }
      }
    } finally {
      await Promise.race([browser?.close().catch(() => {}), timeLimit(10_000)]);
      await stopServer();
      killServer();
      if (broken && serverLog) console.error(`server output (tail):\n${serverLog}`);
    }
  });

  step('the server starts and serves the page at /', async () => {
    base = await startServer();
    // launch() starts Chromium on a fresh temporary user-data directory of its own
    // (it refuses --user-data-dir in args) and deletes it when the browser closes.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
      timeout: 30_000,
    });
    const alice = await openPerson('alice');
    const bob = await openPerson('bob');
    for (const page of [alice, bob]) {
      assert.equal(await page.title(), 'roost chat');
      for (const id of ['room', 'name', 'join', 'state', 'messages', 'text', 'send', 'leave', 'resume']) {
        assert.equal(await page.locator(`#${id}`).count(), 1, `#${id} on the page`);
      }
      // Every form control has an accessible name.
      for (const id of ['room', 'name', 'text']) {
        assert.equal(await page.locator(`label[for="${id}"]`).count(), 1, `label for #${id}`);
      }
    }
  });

  step('alice and bob join lobby', async () => {
    await join(pages.alice, 'lobby', 'alice');
    await join(pages.bob, 'lobby', 'bob');
    for (const page of [pages.alice, pages.bob]) {
      assert.match(await page.locator('#state').textContent(), /open/);
      assert.ok(await page.isEnabled('#send'), 'send is enabled once joined');
      // The page sends a heartbeat right after joining; the server's `alive` shows up.
      await page.waitForFunction(
        () => /\d/.test(document.querySelector('#heartbeat')?.textContent ?? ''), null, { timeout: WAIT });
    }
  });

  step('alice says hi and both see it', async () => {
    await say(pages.alice, 'hi bob');
    await seesMessage(pages.alice, 'alice: hi bob');
    await seesMessage(pages.bob, 'alice: hi bob');
  });

  step('bob answers and both see it', async () => {
    await say(pages.bob, 'hello alice, welcome to the lobby');
    await seesMessage(pages.bob, 'bob: hello alice, welcome to the lobby');
    await seesMessage(pages.alice, 'bob: hello alice, welcome to the lobby');
  });

  step('alice reloads and the page resumes her session', async () => {
    const alice = pages.alice;
    assert.ok(await storedToken(alice, 'lobby'), 'a resume token is kept in sessionStorage');
    await alice.reload();
    await seesMessage(alice, 'welcome back alice');
    await waitState(alice, 'resumed');
    assert.match(await alice.locator('#state').textContent(), /resumed/);
    assert.equal(await alice.inputValue('#room'), 'lobby');
    assert.equal(await alice.inputValue('#name'), 'alice');
  });

  step('alice speaks again under her name and bob sees it', async () => {
    await say(pages.alice, 'back again after a reload');
    await seesMessage(pages.bob, 'alice: back again after a reload');
    await seesMessage(pages.alice, 'alice: back again after a reload');
    // The resumed page did not send its name as a message.
    assert.equal(await message(pages.bob, 'alice: alice').count(), 0);
  });

  step('bob disconnects, sees the close, and reconnects with resume', async () => {
    const bob = pages.bob;
    await bob.click('#leave');
    await waitState(bob, 'closed');
    assert.match(await bob.locator('#state').textContent(), /code \d+/);
    assert.ok(await bob.isDisabled('#send'), 'send is disabled while closed');
    await bob.click('#resume');
    await seesMessage(bob, 'welcome back bob');
    await waitState(bob, 'resumed');
    await say(bob, 'me again');
    await seesMessage(pages.alice, 'bob: me again');
    await seesMessage(bob, 'bob: me again');
  });

  step('a refused resume falls back to joining with the name', async () => {
    const bob = pages.bob;
    await bob.click('#leave');
    await waitState(bob, 'closed');
    await bob.evaluate(() => sessionStorage.setItem('roost-chat:token:lobby', 'not-a-real-token'));
    await bob.click('#resume');
    await seesMessage(bob, 'hello bob');
    await waitState(bob, 'open');
    await say(bob, 'still here');
    await seesMessage(pages.alice, 'bob: still here');
    for (const page of [pages.alice, pages.bob]) assert.deepEqual(page.errors, [], 'no page errors');
  });
});
