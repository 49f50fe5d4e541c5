// Shared by the browser test files: the phone-auth server as a child process (its own database and
// Redis prefix), a signed-up user, Chromium through puppeteer-core, and a page guard that records what
// a page does beyond our server (requests, CSP violations, console errors).
//
// A test file calls startServer() in its `before` (with extra settings in `env` when it needs them)
// and stopServer() in its `after`, which also drops the database and deletes the Redis keys.
//
// Settings (environment): PHONE_AUTH_BIN (default target/debug/phone-auth), CHROMIUM_PATH (default
// /usr/bin/chromium), TEST_DATABASE_SERVER (default postgres://postgres@127.0.0.1:5432),
// TEST_REDIS_URL (default redis://127.0.0.1:6379).

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, constants } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import puppeteer from 'puppeteer-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../..');
const BIN = process.env.PHONE_AUTH_BIN
  ? path.resolve(process.env.PHONE_AUTH_BIN)
  : path.join(REPO, 'target/debug/phone-auth');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const PG_SERVER = (process.env.TEST_DATABASE_SERVER ?? 'postgres://postgres@127.0.0.1:5432').replace(/\/+$/, '');
const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** The server's SMS test number and its fixed code (SMS_TEST_NUMBERS): no log reading needed. */
export const TEST_PHONE = '+16502530999';
export const TEST_CODE = '424242';
export const PASSWORD = 'violet-anchor-1987';

export const STEP_MS = 10_000; // any single request
const START_MS = 45_000; // the server starting (it creates its database and migrates first)

// ---------------------------------------------------------------------------------------------
// Small bounded helpers

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen({ host: '127.0.0.1', port: 0 }, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function run(file, args, ms = 15_000) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: ms, env: { PATH: process.env.PATH, PGCONNECT_TIMEOUT: '5' } }, (err, stdout, stderr) =>
      err ? reject(Object.assign(err, { stderr })) : resolve(stdout),
    );
  });
}

/** POSTs a GraphQL request; returns { status, body }. */
export async function gql(url, query, { variables, token } = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) };
  } catch {
    throw new Error(`${url} answered ${res.status} with a body that is not JSON: ${text.slice(0, 500)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The phone-auth server

const ANSI = /\x1b\[[0-9;]*m/g;
const servers = new Set();

class PhoneAuth {
  constructor(port, env) {
    const id = randomBytes(6).toString('hex');
    this.port = port;
    this.origin = `http://127.0.0.1:${port}`;
    this.graphqlUrl = `${this.origin}/graphql`;
    this.dbName = `phone_auth_browser_${id}`;
    this.redisPrefix = `browsertest:${id}:`;
    this.log = '';
    this.exited = null;
    this.child = spawn(BIN, [], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // Only what we mean to set: a developer's .env in the environment must not change the run.
      env: {
        PATH: process.env.PATH,
        APP_ENV: 'development',
        LISTEN_ADDR: `127.0.0.1:${port}`,
        // Several servers may run at once: none takes the metrics port.
        METRICS_ADDR: 'off',
        DATABASE_URL: `${PG_SERVER}/${this.dbName}`,
        REDIS_URL,
        REDIS_KEY_PREFIX: this.redisPrefix,
        JWT_ISSUER: this.origin,
        SMS_PROVIDER: 'log',
        SMS_TEST_NUMBERS: `${TEST_PHONE}:${TEST_CODE}`,
        RUST_LOG: 'info',
        NO_COLOR: '1',
        ...env,
      },
    });
    const append = (chunk) => {
      this.log += chunk.toString('utf8').replace(ANSI, '');
    };
    this.child.stdout.on('data', append);
    this.child.stderr.on('data', append);
    this.exitPromise = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => resolve((this.exited = { code, signal })));
      this.child.on('error', (err) => resolve((this.exited = { error: err })));
    });
  }

  tail(lines = 30) {
    return this.log.split('\n').slice(-lines).join('\n');
  }

  async waitReady(ms) {
    const deadline = Date.now() + ms;
    let last = 'no answer yet';
    while (Date.now() < deadline) {
      if (this.exited) {
        const how = this.exited.error?.message ?? `code ${this.exited.code}, signal ${this.exited.signal}`;
        throw new Error(`phone-auth exited before it was ready (${how}):\n${this.tail()}`);
      }
      try {
        const res = await fetch(`${this.origin}/readyz`, { signal: AbortSignal.timeout(2_000) });
        last = `${res.status} ${await res.text()}`;
        if (res.status === 200) return;
      } catch (err) {
        last = String(err.cause?.code ?? err.message);
      }
      await sleep(200);
    }
    throw new Error(`phone-auth not ready after ${ms} ms (last: ${last}):\n${this.tail()}`);
  }

  async kill() {
    if (this.exited) return;
    this.child.kill('SIGTERM');
    try {
      await withTimeout(this.exitPromise, 5_000, 'phone-auth exit after SIGTERM');
    } catch {
      this.child.kill('SIGKILL');
      await withTimeout(this.exitPromise, 2_000, 'phone-auth exit after SIGKILL').catch(() => {});
    }
  }
}

/**
 * Starts phone-auth on a free port of 127.0.0.1 with a fresh database (which it creates) and Redis
 * prefix; `env` adds or overrides settings. Resolves once /readyz answers 200.
 */
export async function startServer({ env = {} } = {}) {
  await access(BIN, constants.X_OK).catch(() => {
    throw new Error(`no phone-auth binary at ${BIN}: run \`cargo build\` first (or set PHONE_AUTH_BIN)`);
  });
  // The port is chosen before the server binds it (JWT_ISSUER names it), so another process may take
  // it in between: then try another one.
  for (let attempt = 1; ; attempt++) {
    const server = new PhoneAuth(await freePort(), env);
    servers.add(server);
    try {
      await server.waitReady(START_MS);
      return server;
    } catch (err) {
      await stopServer(server);
      if (attempt >= 3 || !/cannot listen|address already in use/i.test(server.log)) throw err;
    }
  }
}

/** Stops the server, then drops its database and deletes its Redis keys (best effort). */
export async function stopServer(server) {
  if (!server) return;
  await server.kill();
  servers.delete(server);
  try {
    // `with (force)` ends any connection the server left behind.
    await run('psql', [`${PG_SERVER}/postgres`, '-v', 'ON_ERROR_STOP=1', '-qc', `drop database if exists "${server.dbName}" with (force)`]);
  } catch (err) {
    console.error(`could not drop database ${server.dbName}: ${err.stderr || err.message}`);
  }
  try {
    const keys = (await run('redis-cli', ['-u', REDIS_URL, '--scan', '--pattern', `${server.redisPrefix}*`]))
      .split('\n')
      .filter(Boolean);
    if (keys.length) await run('redis-cli', ['-u', REDIS_URL, 'del', ...keys]);
  } catch {
    // redis-cli missing or Redis unreachable: the keys expire on their own.
  }
}

/**
 * Signs a phone up through the API: generateCode, verifyUser with the test number's fixed code,
 * register. Returns register's payload: { accessToken, refreshToken, user: { id, phone, firstName } }.
 */
export async function signUp(server, { phone = TEST_PHONE, code = TEST_CODE, firstName = 'Ada' } = {}) {
  const step = async (name, query, variables) => {
    const { status, body } = await gql(server.graphqlUrl, query, { variables });
    if (status !== 200 || body.errors || !body.data?.[name]) {
      throw new Error(`${name} failed (${status}): ${JSON.stringify(body)}`);
    }
    return body.data[name];
  };
  await step('generateCode', 'mutation($p: String!) { generateCode(phone: $p) { phone } }', { p: phone });
  const verified = await step(
    'verifyUser',
    'mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { registered registrationToken } }',
    { p: phone, c: code },
  );
  if (verified.registered) throw new Error(`${phone} is already registered on this server`);
  return step(
    'register',
    `mutation($t: String!, $pw: String!, $f: String!) {
       register(input: { registrationToken: $t, password: $pw, firstName: $f, lastName: "Lovelace" }) {
         accessToken refreshToken user { id phone firstName } } }`,
    { t: verified.registrationToken, pw: PASSWORD, f: firstName },
  );
}

// ---------------------------------------------------------------------------------------------
// The browser

const browsers = new Set();

/** Debian's Chromium, headless (nothing is downloaded: puppeteer-core brings no browser). */
export async function launchBrowser() {
  await access(CHROMIUM, constants.X_OK).catch(() => {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  });
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. The tests load only
    // our own pages. --disable-dev-shm-usage: containers often have a 64 MB /dev/shm.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    timeout: 30_000,
  });
  browsers.add(browser);
  return browser;
}

export async function closeBrowser(browser) {
  if (!browser) return;
  browsers.delete(browser);
  await withTimeout(browser.close(), 10_000, 'closing Chromium').catch(() => browser.process()?.kill('SIGKILL'));
}

/**
 * Lets `page` reach only `allowed` origins (every other request is aborted) and records, from the
 * first document on: `requests` (every URL asked for), `blocked` (those aborted), `violations` (the
 * page's `securitypolicyviolation` events), `consoleErrors` and `pageErrors`. Call before goto().
 */
export async function guardPage(page, allowed) {
  const origins = new Set([allowed].flat().map((o) => new URL(o).origin));
  const record = { requests: [], blocked: [], consoleErrors: [], pageErrors: [] };
  await page.setRequestInterception(true);
  page.on('request', (req) => {
    const url = req.url();
    record.requests.push(url);
    // data: URLs never leave the page (graphiql.min.css embeds its fonts); CSP governs them.
    if (url.startsWith('data:') || origins.has(new URL(url).origin)) {
      req.continue();
    } else {
      record.blocked.push(url);
      req.abort('blockedbyclient');
    }
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error') record.consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => record.pageErrors.push(String(err?.message ?? err)));
  await page.evaluateOnNewDocument(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push({
        directive: e.violatedDirective,
        blocked: e.blockedURI,
        source: `${e.sourceFile}:${e.lineNumber}`,
        sample: e.sample,
      });
    });
  });
  record.violations = () => page.evaluate(() => window.__cspViolations ?? []);
  return record;
}

// ---------------------------------------------------------------------------------------------
// Process hygiene: whatever happens, no server or browser outlives the test file.

function killNow() {
  for (const s of servers) if (!s.exited) s.child.kill('SIGKILL');
  for (const b of browsers) b.process()?.kill('SIGKILL');
}
process.on('exit', killNow);
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
  process.on(sig, () => {
    killNow();
    process.exit(code);
  });
}

/** Ends the test file (killing its server and browser) if it runs longer than `ms`. */
export function watchdog(ms, what) {
  setTimeout(() => {
    console.error(`watchdog: ${what} did not finish in ${ms} ms; killing everything`);
    killNow();
    process.exit(1);
  }, ms).unref();
}
