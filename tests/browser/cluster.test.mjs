// Browser test of the chat demo across processes: two `roost serve --app chat --cluster`
// processes sharing one redis-server, alice on the page of process A, bob on process B's.
// After A is killed (SIGKILL), alice's page goes to B and resumes her session there with
// the token A gave her.
//
//   npm ci --prefix tests/browser && node --test tests/browser/
//
// Env: see helpers.mjs (ROOST_BIN, CHROMIUM, REDIS_SERVER).
// Screenshots go to target/artifacts/cluster-alice.png and cluster-bob.png.

import { describe, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT, startRedis, startRoost, httpGet, eventually, launchBrowser, closeBrowser, openPage,
  screenshots, stepper, message, seesMessage, waitState, join, say, storedToken,
} from './helpers.mjs';

let redis = null;  // { proc, port, url }
const nodes = {};  // 'A' | 'B' -> { proc, addr, base }
let browser = null;
const pages = {};  // name -> Page
let aliceToken = null;

// The number of members of `room` on every process, as process `node` reports it.
async function presenceCount(node, room) {
  const { status, body } = await httpGet(`${node.base}presence?room=${room}`);
  return status === 200 ? JSON.parse(body).count : -1;
}

describe('the chat demo works across processes (two browsers on two processes, one room)',
  { timeout: 120_000 }, () => {
    const { step, failed } = stepper();

    after(async () => {
      try {
        await screenshots(pages, 'cluster');
      } finally {
        await closeBrowser(browser);
        for (const node of Object.values(nodes)) await node.proc.stop();
        await redis?.proc.stop();
        if (failed()) {
          for (const [name, node] of Object.entries(nodes)) {
            console.error(`process ${name} output (tail):\n${node.proc.log}`);
          }
        }
      }
    });

    step('redis-server and two clustered roost processes start', async () => {
      redis = await startRedis();
      const args = ['--app', 'chat', '--cluster', redis.url];
      nodes.A = await startRoost(args, 'roost A');
      nodes.B = await startRoost(args, 'roost B');
      assert.notEqual(nodes.A.addr, nodes.B.addr);
      for (const node of Object.values(nodes)) {
        await eventually(`${node.proc.name} ready`, WAIT,
          async () => (await httpGet(`${node.base}readyz`)).status === 200);
      }
      browser = await launchBrowser();
    });

    step('alice on process A and bob on process B join lobby', async () => {
      pages.alice = await openPage(browser, nodes.A.base);
      pages.bob = await openPage(browser, nodes.B.base);
      for (const page of Object.values(pages)) assert.equal(await page.title(), 'roost chat');
      await join(pages.alice, 'lobby', 'alice');
      await join(pages.bob, 'lobby', 'bob');
      // Both processes count both members: each sees the other's connection through Redis.
      for (const node of Object.values(nodes)) {
        await eventually(`both in presence on ${node.proc.name}`, WAIT,
          async () => (await presenceCount(node, 'lobby')) === 2);
      }
    });

    step('alice says hi on A and bob sees it on B', async () => {
      await say(pages.alice, 'hi bob, from process A');
      await seesMessage(pages.alice, 'alice: hi bob, from process A');
      await seesMessage(pages.bob, 'alice: hi bob, from process A');
    });

    step('bob answers on B and alice sees it on A', async () => {
      await say(pages.bob, 'hello alice, from process B');
      await seesMessage(pages.bob, 'bob: hello alice, from process B');
      await seesMessage(pages.alice, 'bob: hello alice, from process B');
    });

    step('process A is killed (SIGKILL) and alice\'s page notices', async () => {
      aliceToken = await storedToken(pages.alice, 'lobby');
      assert.ok(aliceToken, 'alice has a resume token from process A');
      await nodes.A.proc.killHard();
      assert.equal(nodes.A.proc.child.signalCode, 'SIGKILL', 'process A died of SIGKILL');
      await waitState(pages.alice, 'closed');
      assert.ok(await pages.alice.isDisabled('#send'), 'send is disabled while closed');
      // Bob, on B, is not affected.
      assert.equal(await pages.bob.locator('#state').getAttribute('data-state'), 'open');
    });

    step('alice opens process B\'s page and resumes her session with A\'s token', async () => {
      const alice = pages.alice;
      await alice.goto(nodes.B.base);
      // Another port is another origin: nothing of A's sessionStorage is here.
      assert.equal(await storedToken(alice, 'lobby'), null);
      assert.equal(await alice.locator('#state').getAttribute('data-state'), 'idle');
      // Put the token where the page keeps it, as if this tab had joined lobby here, and
      // reload: the page picks the session up again with ?resume=<token>.
      await alice.evaluate((token) => {
        sessionStorage.setItem('roost-chat:token:lobby', token);
        sessionStorage.setItem('roost-chat:last',
          JSON.stringify({ room: 'lobby', name: 'alice', active: true }));
      }, aliceToken);
      await alice.reload();
      await seesMessage(alice, 'welcome back alice');
      await waitState(alice, 'resumed');
      assert.equal(await alice.inputValue('#room'), 'lobby');
      assert.equal(await alice.inputValue('#name'), 'alice');
      // B gave her a fresh token in place of the spent one.
      await eventually('a fresh token from B', WAIT, async () => {
        const now = await storedToken(alice, 'lobby');
        return now && now !== aliceToken;
      });
      // Alice's page never showed the fallback of a refused resume.
      assert.equal(await alice.locator('#messages li', { hasText: 'could not resume' }).count(), 0);
    });

    step('alice speaks from B under her name, bob sees it and answers', async () => {
      await say(pages.alice, 'back, now on process B');
      await seesMessage(pages.bob, 'alice: back, now on process B');
      await seesMessage(pages.alice, 'alice: back, now on process B');
      // The resumed page did not send her name as a message.
      assert.equal(await message(pages.bob, 'alice: alice').count(), 0);
      await say(pages.bob, 'welcome back, alice');
      await seesMessage(pages.alice, 'bob: welcome back, alice');
      await seesMessage(pages.bob, 'bob: welcome back, alice');
      for (const page of Object.values(pages)) assert.deepEqual(page.errors, [], 'no page errors');
    });
  });
