// The example browser client (examples/browser-client) in Chromium, served from a SECOND origin, as a
// frontend team would run it against the API:
//   (b) it signs up (phone -> code -> password) and signs in through the API end to end (CORS), and in
//       cookie mode a reload signs back in with no token in any script-readable storage; sign-out
//       clears the cookie; a password sign-in works;
//   (c) its page (served with default-src 'self' and connect-src naming the API) reports no CSP
//       violation and asks nothing of any other origin.
// Screenshot: target/browser/example.png.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';

import {
  PASSWORD,
  REPO,
  TEST_CODE,
  TEST_PHONE,
  closeBrowser,
  guardPage,
  launchBrowser,
  startServer,
  stopServer,
  watchdog,
  withTimeout,
} from './helpers.mjs';

const UI_MS = 15_000;
const SHOTS = path.join(REPO, 'target/browser');
const EXAMPLE = path.join(REPO, 'examples/browser-client');
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css' };

watchdog(150_000, 'the example client browser test');

/** Serves the example's three files on a free port, with the CSP a team would use. */
function serveExample(apiOrigin) {
  return new Promise((resolve) => {
    const srv = createServer(async (req, res) => {
      const name = new URL(req.url, 'http://x').pathname.replace(/^\/$/, '/index.html');
      const file = path.join(EXAMPLE, path.basename(name));
      try {
        const body = await readFile(file);
        res.writeHead(200, {
          'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
          'content-security-policy': `default-src 'self'; connect-src 'self' ${apiOrigin}; frame-ancestors 'none'`,
        });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
    });
    srv.listen({ host: '127.0.0.1', port: 0 }, () => resolve(srv));
  });
}

describe('the example browser client on another origin (cookie mode)', { timeout: 140_000 }, () => {
  let api;
  let site;
  let siteOrigin;
  let browser;
  let page;
  let guard;
  let startupError = null;

  before(
    async () => {
      try {
        site = await serveExample('http://127.0.0.1:*');
        siteOrigin = `http://127.0.0.1:${site.address().port}`;
        api = await startServer({
          env: { CORS_ALLOWED_ORIGINS: siteOrigin, REFRESH_TOKEN_COOKIE: 'true' },
        });
        browser = await launchBrowser();
      } catch (err) {
        startupError = err;
      }
    },
    { timeout: 90_000 },
  );

  after(
    async () => {
      await closeBrowser(browser);
      await stopServer(api);
      site?.close();
    },
    { timeout: 30_000 },
  );

  const visible = (selector) => page.waitForSelector(selector, { visible: true, timeout: UI_MS });
  const text = (selector) => page.$eval(selector, (el) => el.textContent);
  async function fill(selector, value) {
    await page.click(selector, { clickCount: 3 });
    await page.type(selector, value);
  }
  /** Everything a script on the page could read. */
  const scriptReadable = () =>
    page.evaluate(() => JSON.stringify({ local: { ...localStorage }, session: { ...sessionStorage }, cookie: document.cookie }));

  it('(b) signs up, survives a reload through the cookie, signs out, signs in with the password', async () => {
    if (startupError) throw startupError;
    page = await browser.newPage();
    await page.setViewport({ width: 900, height: 760 });
    guard = await guardPage(page, [siteOrigin, api.origin]);
    const url = `${siteOrigin}/?api=${encodeURIComponent(api.graphqlUrl)}`;
    try {
      await page.goto(url, { waitUntil: 'load', timeout: UI_MS });
      await visible('#phone-form');

      await fill('#phone', TEST_PHONE);
      await page.click('#phone-form button');
      await visible('#code-form');
      await fill('#code', TEST_CODE);
      await page.click('#code-form button');
      await visible('#register-form');
      await fill('#first-name', 'Ada');
      await fill('#new-password', PASSWORD);
      await page.click('#register-form button');
      await visible('#me');
      assert.equal(await text('#me-phone'), TEST_PHONE);
      assert.equal(await text('#me-name'), 'Ada');
      const id = await text('#me-id');
      assert.match(id, /^[0-9a-f-]{36}$/);
      await mkdir(SHOTS, { recursive: true });
      await page.screenshot({ path: path.join(SHOTS, 'example.png') });

      // No token anywhere a script can read: the refresh token is an HttpOnly cookie.
      assert.equal(await scriptReadable(), JSON.stringify({ local: {}, session: {}, cookie: '' }));
      const cookies = await page.browserContext().cookies(api.origin);
      const refresh = cookies.find((c) => c.name.startsWith('__Host-'));
      assert.ok(refresh, `a __Host- refresh cookie for the API: ${JSON.stringify(cookies.map((c) => c.name))}`);
      assert.ok(refresh.httpOnly && refresh.secure && refresh.sameSite === 'Strict' && refresh.path === '/');

      // A reload: the access token in memory is gone, the cookie buys a new one.
      await page.reload({ waitUntil: 'load', timeout: UI_MS });
      await visible('#me');
      assert.equal(await text('#me-id'), id);

      // Sign out: the cookie is cleared, a reload stays signed out.
      await page.click('#logout');
      await visible('#phone-form');
      await page.reload({ waitUntil: 'load', timeout: UI_MS });
      await visible('#phone-form');
      const after = await page.browserContext().cookies(api.origin);
      assert.ok(!after.some((c) => c.name.startsWith('__Host-')), 'the cookie is gone after sign-out');

      // Password sign-in: no code is sent for it.
      await fill('#phone', TEST_PHONE);
      await page.click('#use-password');
      await visible('#password-form');
      await fill('#login-password', PASSWORD);
      await page.click('#password-form button');
      await visible('#me');
      assert.equal(await text('#me-id'), id);
    } catch (err) {
      await mkdir(SHOTS, { recursive: true });
      await page.screenshot({ path: path.join(SHOTS, 'example-failure.png') }).catch(() => {});
      throw new Error(`${err.message}\nstatus line: ${await text('#status').catch(() => '?')}\nserver log:\n${api.tail(20)}`);
    }
  });

  it('(c) reports no CSP violation or console error, and asks nothing of another origin', async () => {
    if (startupError) throw startupError;
    assert.ok(guard, 'test (b) opened the page');
    const violations = await withTimeout(guard.violations(), 5_000, 'reading the page violations');
    assert.deepEqual(violations, [], 'securitypolicyviolation events');
    // The first load asks refreshToken() with no cookie yet: INVALID_TOKEN in the body, not a
    // console error. Anything else logged as an error fails.
    assert.deepEqual(guard.pageErrors, [], 'uncaught page errors');
    assert.deepEqual(guard.blocked, [], 'requests to other origins (aborted)');
    const origins = new Set(guard.requests.map((u) => new URL(u).origin));
    assert.deepEqual([...origins].sort(), [api.origin, siteOrigin].sort());
  });
});
