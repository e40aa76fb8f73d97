// Browser test of the chat demo page served by `roost serve --app chat`.
//
//   npm ci --prefix tests/browser && node --test tests/browser/
//
// Env: see helpers.mjs (ROOST_BIN, CHROMIUM).
// Screenshots of both pages go to target/artifacts/chat-alice.png and chat-bob.png.

import { describe, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT, startRoost, launchBrowser, closeBrowser, openPage, screenshots, stepper,
  message, seesMessage, waitState, join, say, storedToken,
} from './helpers.mjs';

let server = null; // { proc, addr, base }
let browser = null;
const pages = {}; // name -> Page

async function openPerson(name) {
  pages[name] = await openPage(browser, server.base);
  return pages[name];
}

describe('chat demo page', { timeout: 90_000 }, () => {
  const { step, failed } = stepper();

  after(async () => {
    try {
      await screenshots(pages, 'chat');
    } finally {
      await closeBrowser(browser);
      await server?.proc.stop();
      if (failed() && server) console.error(`server output (tail):\n${server.proc.log}`);
    }
  });

  step('the server starts and serves the page at /', async () => {
    server = await startRoost(['--app', 'chat']);
    browser = await launchBrowser();
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
