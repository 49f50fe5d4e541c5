// phone-auth behind a real Apollo Federation gateway.
//
// Starts three things on 127.0.0.1, all on free ports, and talks to them with fetch:
//   1. the phone-auth server binary (a child process, fresh database and Redis prefix),
//   2. "loyalty", a second subgraph built with @apollo/subgraph that extends `User` with
//      `loyaltyPoints` and verifies the forwarded bearer token with jose against our JWKS,
//   3. an @apollo/gateway (IntrospectAndCompose over both) served by @apollo/server, forwarding the
//      client's Authorization header to every subgraph.
// Then signs a phone up through the gateway and checks `me` resolves across both subgraphs.
//
// Settings: PHONE_AUTH_BIN (server binary), TEST_DATABASE_SERVER (default
// postgres://postgres@127.0.0.1:5432), TEST_REDIS_URL (default redis://127.0.0.1:6379).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { access, constants } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { ApolloGateway, IntrospectAndCompose, RemoteGraphQLDataSource } from '@apollo/gateway';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { GraphQLError, parse } from 'graphql';
import { createRemoteJWKSet, jwtVerify } from 'jose';

import { runAudit } from './audit.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.PHONE_AUTH_BIN
  ? path.resolve(process.env.PHONE_AUTH_BIN)
  : path.resolve(HERE, '../../target/debug/phone-auth');
const PG_SERVER = (process.env.TEST_DATABASE_SERVER ?? 'postgres://postgres@127.0.0.1:5432').replace(/\/+$/, '');
const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

const RUN_ID = randomBytes(6).toString('hex');
const DB_NAME = `phone_auth_gateway_${RUN_ID}`;
const REDIS_PREFIX = `gwtest:${RUN_ID}:`;
const AUDIENCE = 'phone-auth';
const PASSWORD = 'violet-anchor-1987';
// A valid US number (650-253 is a real Mountain View exchange) with random last 4 digits.
const PHONE = `+1650253${String(randomInt(0, 10_000)).padStart(4, '0')}`;
// A second user, the buyer of the other order (650-254 is another real exchange).
const OTHER_PHONE = `+1650254${String(randomInt(0, 10_000)).padStart(4, '0')}`;

const STEP_MS = 10_000; // any single request or wait for a code
const START_MS = 45_000; // any one part starting (the server creates its database first)
const WATCHDOG_MS = 120_000; // the whole file: kill everything and exit 1 after this

// ---------------------------------------------------------------------------------------------
// Small bounded helpers

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
async function gql(url, query, { variables, token, headers } = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...headers,
    },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${url} answered ${res.status} with a body that is not JSON: ${text.slice(0, 500)}`);
  }
  return { status: res.status, body };
}

const show = (v) => JSON.stringify(v, null, 1);

// ---------------------------------------------------------------------------------------------
// 1. The phone-auth server, as a child process

const ANSI = /\x1b\[[0-9;]*m/g;

class PhoneAuth {
  constructor(port) {
    this.port = port;
    this.origin = `http://127.0.0.1:${port}`;
    this.graphqlUrl = `${this.origin}/graphql`;
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
        DATABASE_URL: `${PG_SERVER}/${DB_NAME}`,
        REDIS_URL,
        REDIS_KEY_PREFIX: REDIS_PREFIX,
        // No JWT_ISSUER: its default is the address the server listens on, which is this.origin.
        JWT_AUDIENCE: AUDIENCE,
        SMS_PROVIDER: 'log',
        RUST_LOG: 'info',
        NO_COLOR: '1',
      },
    });
    const append = (chunk) => {
      this.log += chunk.toString('utf8').replace(ANSI, '');
    };
    this.child.stdout.on('data', append);
    this.child.stderr.on('data', append);
    this.exitPromise = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
      });
      this.child.on('error', (err) => {
        this.exited = { error: err };
        resolve(this.exited);
      });
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

  /** The code of the newest development SMS to `e164`, from the server's WARN log line. */
  async waitForCode(e164, { after: skip = 0 } = {}) {
    const deadline = Date.now() + STEP_MS;
    while (Date.now() < deadline) {
      // e.g. `WARN generate_code{phone=PhoneNumber(..34)}: phone_auth::dev_sms: development SMS sender:
      //   this message would be sent by SMS to="+16502531234" body=phone-auth: your code is 572058. ...`
      const codes = this.log
        .split('\n')
        .filter((l) => l.includes('dev_sms') && l.includes(`to="${e164}"`))
        .map((l) => /your code is (\d{6})\b/.exec(l)?.[1])
        .filter(Boolean);
      if (codes.length > skip) return codes.at(-1);
      await sleep(100);
    }
    throw new Error(`no development SMS for ${e164} in the server log:\n${this.tail()}`);
  }

  async stop() {
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

async function startPhoneAuth() {
  await access(BIN, constants.X_OK).catch(() => {
    throw new Error(`no phone-auth binary at ${BIN}: run \`cargo build\` first (or set PHONE_AUTH_BIN)`);
  });
  // The port is chosen before the server binds it (LISTEN_ADDR names it), so another process may take
  // it in between: then try another one.
  for (let attempt = 1; ; attempt++) {
    const server = new PhoneAuth(await freePort());
    children.add(server);
    try {
      await server.waitReady(START_MS);
      return server;
    } catch (err) {
      await server.stop();
      children.delete(server);
      if (attempt >= 3 || !/cannot listen|address already in use/i.test(server.log)) throw err;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 2. The loyalty subgraph: extends User, trusts only tokens that jose verifies against our JWKS

/** The points loyalty gives a user: any deterministic number will do, so the test can predict it. */
function pointsFor(id) {
  let n = 0;
  for (const ch of id) n = (n * 31 + ch.charCodeAt(0)) % 10_000;
  return 100 + n;
}

async function startLoyalty({ jwksUrl, issuer }) {
  const jwks = createRemoteJWKSet(new URL(jwksUrl), { timeoutDuration: 5_000 });
  const seen = []; // { sub, via } of every request that carried a verified token
  const orders = []; // { id, buyerId }: filled by the test once its users exist
  const typeDefs = parse(`
    extend schema @link(url: "https://specs.apollo.dev/federation/v2.5", import: ["@key"])

    type User @key(fields: "id") {
      id: ID!
      "Only for the user the bearer token belongs to; null for anyone else."
      loyaltyPoints: Int
    }

    "An order of some user: a list of users from another subgraph, as a shop would have."
    type Order {
      id: ID!
      buyer: User!
    }

    type Query {
      orders: [Order!]!
    }
  `);
  const resolvers = {
    Query: {
      orders: () => orders,
    },
    Order: {
      buyer: (order) => ({ __typename: 'User', id: order.buyerId }),
    },
    User: {
      __resolveReference: (ref) => ({ id: ref.id }),
      loyaltyPoints: (user, _args, ctx) => (ctx.sub !== null && ctx.sub === user.id ? pointsFor(user.id) : null),
    },
  };
  const server = new ApolloServer({
    schema: buildSubgraphSchema([{ typeDefs, resolvers }]),
    stopOnTerminationSignals: false,
    logger: quietLogger('loyalty'),
  });
  const { url } = await startStandaloneServer(server, {
    listen: { host: '127.0.0.1', port: 0 },
    context: async ({ req }) => {
      const header = req.headers.authorization;
      if (!header) return { sub: null };
      const match = /^Bearer\s+(\S+)$/i.exec(header);
      try {
        if (!match) throw Object.assign(new Error('not a Bearer authorization'), { code: 'NOT_BEARER' });
        const { payload } = await jwtVerify(match[1], jwks, {
          issuer,
          audience: AUDIENCE,
          algorithms: ['EdDSA'],
        });
        seen.push({ sub: payload.sub, via: req.headers['x-test-client'] ?? 'gateway' });
        return { sub: payload.sub };
      } catch (err) {
        throw new GraphQLError(`invalid access token: ${err.message}`, {
          extensions: { code: 'UNAUTHENTICATED', jose: err.code, http: { status: 401 } },
        });
      }
    },
  });
  return { server, url, seen, orders };
}

// ---------------------------------------------------------------------------------------------
// 3. The gateway

function quietLogger(name, sink = null) {
  const out = (level) => (msg) => {
    if (sink) sink.push(`${level}: ${msg}`);
    else if (level === 'warn' || level === 'error') console.error(`[${name}] ${level}: ${msg}`);
  };
  return { debug: out('debug'), info: out('info'), warn: out('warn'), error: out('error') };
}

/** Builds an ApolloServer over a gateway; start() rejects when the subgraphs do not compose. */
function makeGateway(subgraphs, logger) {
  const gateway = new ApolloGateway({
    supergraphSdl: new IntrospectAndCompose({ subgraphs }),
    logger,
    buildService: ({ url }) =>
      new RemoteGraphQLDataSource({
        url,
        willSendRequest({ request, context }) {
          // The client's Authorization header goes to every subgraph (introspection has no context).
          if (context?.authorization) request.http?.headers.set('authorization', context.authorization);
        },
      }),
  });
  const server = new ApolloServer({ gateway, stopOnTerminationSignals: false, logger });
  return { gateway, server };
}

async function startGateway(subgraphs) {
  const { server } = makeGateway(subgraphs, quietLogger('gateway'));
  const { url } = await withTimeout(
    startStandaloneServer(server, {
      listen: { host: '127.0.0.1', port: 0 },
      context: async ({ req }) => ({ authorization: req.headers.authorization }),
    }),
    START_MS,
    'gateway start (introspection and composition)',
  );
  return { server, url };
}

// ---------------------------------------------------------------------------------------------
// Process hygiene: whatever happens, the server child does not outlive this file.

const children = new Set();
function killChildrenNow() {
  for (const c of children) if (!c.exited) c.child.kill('SIGKILL');
}
process.on('exit', killChildrenNow);
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
  process.on(sig, () => {
    killChildrenNow();
    process.exit(code);
  });
}
setTimeout(() => {
  console.error(`watchdog: the gateway test did not finish in ${WATCHDOG_MS} ms; killing everything`);
  killChildrenNow();
  process.exit(1);
}, WATCHDOG_MS).unref();

async function dropDatabase() {
  // Best effort: the server is stopped first; `with (force)` ends any connection it left behind.
  try {
    await run('psql', [`${PG_SERVER}/postgres`, '-v', 'ON_ERROR_STOP=1', '-qc', `drop database if exists "${DB_NAME}" with (force)`]);
  } catch (err) {
    console.error(`could not drop database ${DB_NAME}: ${err.stderr || err.message}`);
  }
}

async function deleteRedisKeys() {
  // Best effort, and only when redis-cli is installed: the keys expire on their own anyway.
  try {
    const keys = (await run('redis-cli', ['-u', REDIS_URL, '--scan', '--pattern', `${REDIS_PREFIX}*`]))
      .split('\n')
      .filter(Boolean);
    if (keys.length) await run('redis-cli', ['-u', REDIS_URL, 'del', ...keys]);
  } catch {
    // redis-cli missing or Redis unreachable: nothing to clean that will not expire.
  }
}

// ---------------------------------------------------------------------------------------------
// The test

const ME = '{ me { id firstName phone loyaltyPoints } }';
const ENTITIES = 'query($r: [_Any!]!) { _entities(representations: $r) { ... on User { id loyaltyPoints } } }';

function tamperSignature(jwt) {
  const [h, p, s] = jwt.split('.');
  const i = 10; // well inside the signature: changes real bits, not base64 padding
  return `${h}.${p}.${s.slice(0, i)}${s[i] === 'A' ? 'B' : 'A'}${s.slice(i + 1)}`;
}

function withSub(jwt, sub) {
  const [h, p, s] = jwt.split('.');
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
  return `${h}.${Buffer.from(JSON.stringify({ ...claims, sub })).toString('base64url')}.${s}`;
}

describe('phone-auth behind @apollo/gateway', { timeout: 110_000 }, () => {
  let phoneAuth;
  let loyalty;
  let gw;
  const state = {};

  // A failing `before` hook only shows as "cancelled" in the summary (with `# fail 0`), so startup
  // errors are kept here and reported by the first test, and every other test fails on them too.
  let startupError = null;
  const started = () => {
    if (startupError) throw new Error(`startup failed (see the first test): ${startupError.message.split('\n')[0]}`);
  };

  before(
    async () => {
      try {
        phoneAuth = await startPhoneAuth();
        // As a verifier given only the issuer would: the keys' address from the discovery document.
        const discovery = await fetch(`${phoneAuth.origin}/.well-known/openid-configuration`, {
          signal: AbortSignal.timeout(STEP_MS),
        }).then((r) => r.json());
        assert.deepEqual(discovery, {
          issuer: phoneAuth.origin,
          jwks_uri: `${phoneAuth.origin}/.well-known/jwks.json`,
        });
        loyalty = await withTimeout(
          startLoyalty({ jwksUrl: discovery.jwks_uri, issuer: discovery.issuer }),
          START_MS,
          'loyalty subgraph start',
        );
        // Rejects (and so fails the test) when the two subgraphs do not compose.
        gw = await startGateway([
          { name: 'phone-auth', url: phoneAuth.graphqlUrl },
          { name: 'loyalty', url: loyalty.url },
        ]);
      } catch (err) {
        startupError = err;
      }
    },
    { timeout: 100_000 },
  );

  after(
    async () => {
      await gw?.server.stop().catch((e) => console.error(`gateway stop: ${e.message}`));
      await loyalty?.server.stop().catch((e) => console.error(`loyalty stop: ${e.message}`));
      for (const c of children) await c.stop();
      await dropDatabase();
      await deleteRedisKeys();
    },
    { timeout: 40_000 },
  );

  it('starts phone-auth, the loyalty subgraph and the gateway (the subgraphs compose)', () => {
    if (startupError) throw startupError;
  });

  it('composes a supergraph in which User has fields from both subgraphs', async () => {
    started();
    const { status, body } = await gql(gw.url, '{ __type(name: "User") { fields { name } } }');
    assert.equal(status, 200, show(body));
    const fields = body.data.__type.fields.map((f) => f.name).sort();
    assert.deepEqual(fields, ['createdAt', 'firstName', 'id', 'lastName', 'loyaltyPoints', 'phone']);
  });

  it('signs a phone up through the gateway: generateCode, verifyUser, register', async () => {
    started();
    const sent = await gql(gw.url, 'mutation($p: String!) { generateCode(phone: $p) { phone expiresInSeconds } }', {
      variables: { p: PHONE },
    });
    assert.equal(sent.body.errors, undefined, show(sent.body));
    assert.equal(sent.body.data.generateCode.phone, PHONE);

    const code = await phoneAuth.waitForCode(PHONE);
    const verified = await gql(
      gw.url,
      'mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { phone registered registrationToken } }',
      { variables: { p: PHONE, c: code } },
    );
    assert.equal(verified.body.errors, undefined, show(verified.body));
    const v = verified.body.data.verifyUser;
    assert.equal(v.registered, false, show(v));
    assert.ok(v.registrationToken, show(v));

    const registered = await gql(
      gw.url,
      `mutation($i: RegisterInput!) { register(input: $i) {
         accessToken tokenType user { id phone firstName loyaltyPoints } } }`,
      {
        variables: {
          i: { registrationToken: v.registrationToken, password: PASSWORD, firstName: 'Ada', lastName: 'Lovelace' },
        },
      },
    );
    assert.equal(registered.body.errors, undefined, show(registered.body));
    const r = registered.body.data.register;
    assert.equal(r.tokenType, 'Bearer');
    assert.equal(r.user.phone, PHONE);
    // The client that registered had no token yet: loyalty cannot tell who it is.
    assert.equal(r.user.loyaltyPoints, null);
    state.token = r.accessToken;
    state.userId = r.user.id;
  });

  it('resolves `me` across both subgraphs with the access token', async () => {
    started();
    assert.ok(state.token, 'sign-up must have succeeded');
    const before = loyalty.seen.length;
    const { status, body } = await gql(gw.url, ME, { token: state.token });
    assert.equal(status, 200, show(body));
    assert.equal(body.errors, undefined, show(body));
    assert.deepEqual(body.data.me, {
      id: state.userId,
      firstName: 'Ada',
      phone: PHONE,
      loyaltyPoints: pointsFor(state.userId),
    });
    // The gateway forwarded the token and loyalty verified it with jose.
    assert.deepEqual(loyalty.seen.slice(before), [{ sub: state.userId, via: 'gateway' }]);
  });

  it('a list of users from the other subgraph degrades per field: only the viewer\'s phone, names of both', async () => {
    started();
    assert.ok(state.token, 'sign-up must have succeeded');
    // A second user, signed up directly (the gateway path is the test above).
    await gql(phoneAuth.graphqlUrl, 'mutation($p: String!) { generateCode(phone: $p) { phone } }', {
      variables: { p: OTHER_PHONE },
    });
    const code = await phoneAuth.waitForCode(OTHER_PHONE);
    const verified = await gql(
      phoneAuth.graphqlUrl,
      'mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { registrationToken } }',
      { variables: { p: OTHER_PHONE, c: code } },
    );
    const registered = await gql(
      phoneAuth.graphqlUrl,
      'mutation($i: RegisterInput!) { register(input: $i) { user { id } } }',
      {
        variables: {
          i: {
            registrationToken: verified.body.data.verifyUser.registrationToken,
            password: PASSWORD,
            firstName: 'Grace',
          },
        },
      },
    );
    assert.equal(registered.body.errors, undefined, show(registered.body));
    const otherId = registered.body.data.register.user.id;
    loyalty.orders.splice(0, loyalty.orders.length, { id: 'o1', buyerId: state.userId }, { id: 'o2', buyerId: otherId });

    const ORDERS = '{ orders { id buyer { id firstName phone } } }';
    const mine = await gql(gw.url, ORDERS, { token: state.token });
    assert.equal(mine.status, 200, show(mine.body));
    assert.equal(mine.body.errors, undefined, show(mine.body));
    assert.deepEqual(mine.body.data, {
      orders: [
        { id: 'o1', buyer: { id: state.userId, firstName: 'Ada', phone: PHONE } },
        { id: 'o2', buyer: { id: otherId, firstName: 'Grace', phone: null } },
      ],
    });

    const anonymous = await gql(gw.url, ORDERS);
    assert.equal(anonymous.body.errors, undefined, show(anonymous.body));
    assert.deepEqual(anonymous.body.data, {
      orders: [
        { id: 'o1', buyer: { id: state.userId, firstName: 'Ada', phone: null } },
        { id: 'o2', buyer: { id: otherId, firstName: 'Grace', phone: null } },
      ],
    });
  });

  it('passes the GraphQL over HTTP audit of graphql-http: no error, warning or notice', async () => {
    started();
    const { counts, findings } = await withTimeout(runAudit(phoneAuth.graphqlUrl), 60_000, 'graphql-http audit');
    assert.deepEqual(findings, [], show(findings));
    assert.equal(counts.error + counts.warn + counts.notice, 0, show(counts));
    assert.ok(counts.ok > 50, show(counts));
  });

  it('`me` is null without a token, and with a tampered one', async () => {
    started();
    for (const token of [undefined, tamperSignature(state.token)]) {
      const { status, body } = await gql(gw.url, ME, { token });
      assert.equal(status, 200, show(body));
      assert.equal(body.errors, undefined, show(body));
      assert.equal(body.data.me, null, show(body));
    }
  });

  it('the loyalty subgraph verifies tokens with jose: a tampered signature or a forged sub is refused', async () => {
    started();
    const reps = { r: [{ __typename: 'User', id: state.userId }] };
    const direct = { 'x-test-client': 'direct' };

    // The genuine token: points for its own user, null for anyone else.
    let res = await gql(loyalty.url, ENTITIES, { variables: reps, token: state.token, headers: direct });
    assert.equal(res.body.errors, undefined, show(res.body));
    assert.deepEqual(res.body.data._entities, [{ id: state.userId, loyaltyPoints: pointsFor(state.userId) }]);
    const other = '00000000-0000-4000-8000-000000000000';
    res = await gql(loyalty.url, ENTITIES, {
      variables: { r: [{ __typename: 'User', id: other }] },
      token: state.token,
      headers: direct,
    });
    assert.deepEqual(res.body.data._entities, [{ id: other, loyaltyPoints: null }], show(res.body));

    // A flipped signature bit, and the genuine signature under a payload claiming another user.
    for (const [what, token] of [
      ['tampered signature', tamperSignature(state.token)],
      ['forged sub', withSub(state.token, other)],
    ]) {
      res = await gql(loyalty.url, ENTITIES, { variables: reps, token, headers: direct });
      assert.equal(res.status, 401, `${what}: ${show(res.body)}`);
      assert.equal(res.body.data, undefined, `${what}: ${show(res.body)}`);
      const ext = res.body.errors?.[0]?.extensions;
      assert.equal(ext?.code, 'UNAUTHENTICATED', `${what}: ${show(res.body)}`);
      assert.equal(ext?.jose, 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED', `${what}: ${show(res.body)}`);
    }
  });

  it('logout through the gateway revokes the session: `me` is null again', async () => {
    started();
    const out = await gql(gw.url, 'mutation { logout { revokedSessions } }', { token: state.token });
    assert.equal(out.body.errors, undefined, show(out.body));
    assert.equal(out.body.data.logout.revokedSessions, 1);

    const before = loyalty.seen.length;
    const { body } = await gql(gw.url, ME, { token: state.token });
    assert.equal(body.errors, undefined, show(body));
    assert.equal(body.data.me, null, show(body));
    // phone-auth answered null, so the gateway had no User to ask loyalty about.
    assert.equal(loyalty.seen.length, before);
  });

  it('a composition error makes the gateway fail to start (no hang)', async () => {
    started();
    // A subgraph that redefines User.phone with another type, and without @shareable.
    const conflicting = new ApolloServer({
      schema: buildSubgraphSchema([
        {
          typeDefs: parse(`
            extend schema @link(url: "https://specs.apollo.dev/federation/v2.5", import: ["@key"])
            type User @key(fields: "id") { id: ID! phone: Int }
          `),
          resolvers: { User: { __resolveReference: (ref) => ref } },
        },
      ]),
      stopOnTerminationSignals: false,
      logger: quietLogger('conflicting', []),
    });
    const { url } = await startStandaloneServer(conflicting, { listen: { host: '127.0.0.1', port: 0 } });
    const messages = [];
    const { gateway, server } = makeGateway(
      [
        { name: 'phone-auth', url: phoneAuth.graphqlUrl },
        { name: 'conflicting', url },
      ],
      quietLogger('bad-gateway', messages),
    );
    try {
      await assert.rejects(withTimeout(server.start(), 20_000, 'gateway start'), (err) => {
        assert.doesNotMatch(err.message, /timed out/, 'start must reject, not hang');
        assert.match(err.message, /couldn't be composed/i);
        assert.match(err.message, /User\.phone/);
        return true;
      });
    } finally {
      await server.stop().catch(() => {});
      await gateway.stop().catch(() => {});
      await conflicting.stop();
    }
  });
});
