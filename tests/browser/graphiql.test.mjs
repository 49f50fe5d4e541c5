// GraphiQL in a real browser (Debian's Chromium through puppeteer-core), offline and under the page's
// Content-Security-Policy:
//   (a) with every request to anything but our server aborted, GraphiQL renders, and `{ me { id phone } }`
//       run with a real access token typed into the headers editor shows the user in the result pane;
//   (c) the page reported no CSP violation and no console error, and asked nothing of another origin.
// The screenshot a person would see is saved to target/browser/graphiql.png.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

import {
  REPO,
  TEST_PHONE,
  closeBrowser,
  guardPage,
  launchBrowser,
  signUp,
  startServer,
  stopServer,
  watchdog,
  withTimeout,
} from './helpers.mjs';

const UI_MS = 15_000; // any one wait on the page
const SHOTS = path.join(REPO, 'target/browser');

watchdog(120_000, 'the GraphiQL browser test');

const QUERY_EDITOR = '.graphiql-query-editor .CodeMirror';
const HEADERS_EDITOR = '.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror';
const RESULT = '.graphiql-response .result-window .CodeMirror';

/** The text of a CodeMirror editor, from its own API (what is rendered may be only the visible lines). */
const editorText = (page, selector) => page.$eval(selector, (el) => el.CodeMirror.getValue());

/** Replaces an editor's text by typing it, as a person would (select all, then type). */
async function typeInto(page, selector, text) {
  await page.click(selector);
  await page.keyboard.down('Control');
  await page.keyboard.press('KeyA');
  await page.keyboard.up('Control');
  await page.keyboard.press('Backspace');
  await page.keyboard.type(text);
  assert.equal(await editorText(page, selector), text, `the editor ${selector} holds what was typed`);
}

describe('GraphiQL, served by us', { timeout: 110_000 }, () => {
  let server;
  let browser;
  let page;
  let guard;
  let user;
  let startupError = null;
  const timings = {};

  before(
    async () => {
      try {
        let t = Date.now();
        server = await startServer();
        timings.serverStartMs = Date.now() - t;
        t = Date.now();
        browser = await launchBrowser();
        timings.browserLaunchMs = Date.now() - t;
      } catch (err) {
        startupError = err;
      }
    },
    { timeout: 80_000 },
  );

  after(
    async () => {
      await closeBrowser(browser);
      await stopServer(server);
    },
    { timeout: 30_000 },
  );

  it('(a) renders offline, and runs { me { id phone } } with a token typed into the headers editor', async (t) => {
    if (startupError) throw startupError;
    try {
      await renderAndQuery(t);
    } catch (err) {
      // What the page looked like when it failed, for whoever reads the CI log.
      await mkdir(SHOTS, { recursive: true });
      await page?.screenshot({ path: path.join(SHOTS, 'graphiql-failure.png') }).catch(() => {});
      throw err;
    }
  });

  async function renderAndQuery(t) {
    page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    guard = await guardPage(page, server.origin);

    // GraphiQL asks for the schema (introspection) as it starts: the docs and completion need it.
    const introspection = page.waitForResponse(
      (r) => r.url() === server.graphqlUrl && r.request().postData()?.includes('__schema'),
      { timeout: UI_MS },
    );
    let t0 = Date.now();
    const response = await page.goto(server.graphqlUrl, { waitUntil: 'load', timeout: UI_MS });
    assert.equal(response.status(), 200);
    guard.csp = response.headers()['content-security-policy'];
    await page.waitForSelector(`${QUERY_EDITOR} .CodeMirror-code`, { visible: true, timeout: UI_MS });
    timings.pageRenderMs = Date.now() - t0;

    // GraphiQL's own DOM: the editors, the result pane and the execute button are on screen.
    for (const selector of [QUERY_EDITOR, HEADERS_EDITOR, RESULT, '.graphiql-execute-button']) {
      const box = await page.$eval(selector, (el) => {
        const r = el.getBoundingClientRect();
        return { width: r.width, height: r.height };
      });
      assert.ok(box.width > 0 && box.height > 0, `${selector} is visible: ${JSON.stringify(box)}`);
    }
    // The headers editor is open with the bearer header to fill in.
    assert.deepEqual(JSON.parse(await editorText(page, HEADERS_EDITOR)), { Authorization: 'Bearer <accessToken>' });
    // The schema came in, so GraphiQL talks to the server and is not only drawn.
    const schema = await (await introspection).json();
    assert.equal(schema.data?.__schema?.queryType?.name, 'Query', 'introspection answered');

    t0 = Date.now();
    user = await signUp(server);
    timings.signUpMs = Date.now() - t0;
    assert.equal(user.user.phone, TEST_PHONE);

    await typeInto(page, HEADERS_EDITOR, `{"Authorization": "Bearer ${user.accessToken}"}`);
    await typeInto(page, QUERY_EDITOR, '{ me { id phone } }');
    // Close any completion list before running, so the screenshot shows the result plainly.
    await page.keyboard.press('Escape');

    t0 = Date.now();
    await page.click('.graphiql-execute-button');
    await page.waitForFunction(
      (selector) => document.querySelector(selector)?.CodeMirror?.getValue().includes('"me"'),
      { timeout: UI_MS },
      RESULT,
    );
    timings.queryMs = Date.now() - t0;

    // The result pane, as rendered (its text on screen) and as its editor holds it.
    const shown = await page.$eval(RESULT, (el) => el.innerText);
    const result = JSON.parse(await editorText(page, RESULT));
    assert.deepEqual(result, { data: { me: { id: user.user.id, phone: TEST_PHONE } } });
    assert.ok(shown.includes(user.user.id) && shown.includes(TEST_PHONE), `the result pane shows the user: ${shown}`);

    await mkdir(SHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SHOTS, 'graphiql.png') });

    // GraphiQL's dialogs add a nonce'd <style> (see src/graphiql.rs): open and close one so test (c)
    // covers it.
    await page.click('button[aria-label="Open settings dialog"]');
    await page.waitForSelector('[role="dialog"]', { visible: true, timeout: UI_MS });
    const styles = await page.$$eval('head style', (els) => els.map((el) => ({ nonce: el.nonce, css: el.textContent })));
    assert.ok(
      styles.length > 0 && styles.every((st) => st.nonce),
      `the dialog added its <style> with the page's nonce: ${JSON.stringify(styles).slice(0, 300)}`,
    );
    await page.screenshot({ path: path.join(SHOTS, 'graphiql-settings.png') });
    await page.keyboard.press('Escape');
    await page.waitForSelector('[role="dialog"]', { hidden: true, timeout: UI_MS });

    t.diagnostic(`timings: ${JSON.stringify(timings)}`);
    t.diagnostic(`requests: ${guard.requests.filter((u) => !u.startsWith('data:')).length} to our server`);
  }

  it('(c) reports no CSP violation or console error, and asks nothing of another origin', async (t) => {
    if (startupError) throw startupError;
    assert.ok(guard, 'test (a) opened the page');
    t.diagnostic(`Content-Security-Policy: ${guard.csp}`);
    assert.match(guard.csp ?? '', /^default-src 'self';/);
    const violations = await withTimeout(guard.violations(), 5_000, 'reading the page violations');
    assert.deepEqual(violations, [], 'securitypolicyviolation events');
    assert.deepEqual(guard.consoleErrors, [], 'console errors');
    assert.deepEqual(guard.pageErrors, [], 'uncaught page errors');
    assert.deepEqual(guard.blocked, [], 'requests to other origins (aborted)');
    const elsewhere = guard.requests.filter((u) => !u.startsWith('data:') && new URL(u).origin !== server.origin);
    assert.deepEqual(elsewhere, []);
    // What the page did load: the page itself, its assets, and GraphQL requests.
    const paths = [...new Set(guard.requests.filter((u) => !u.startsWith('data:')).map((u) => new URL(u).pathname))];
    assert.ok(paths.every((p) => p === '/graphql' || p.startsWith('/graphiql/')), paths.join(', '));

    // And the listener does hear violations: an inline style and an inline script, added now, are
    // refused (the policy has no 'unsafe-inline') and reported.
    await page.evaluate(() => {
      document.head.append(Object.assign(document.createElement('style'), { textContent: 'body { color: red }' }));
      document.head.append(Object.assign(document.createElement('script'), { textContent: 'window.__ran = true' }));
    });
    await page.waitForFunction(() => window.__cspViolations.length >= 2, { timeout: 5_000 });
    const refused = (await guard.violations()).map((v) => v.directive).sort();
    assert.deepEqual(refused, ['script-src-elem', 'style-src-elem']);
    assert.equal(await page.evaluate(() => window.__ran), undefined, 'the inline script did not run');
  });
});
