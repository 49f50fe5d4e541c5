// The GraphQL over HTTP audit of the `graphql-http` package (its `serverAudits`: the spec's MUST,
// SHOULD and MAY items) against a running server.
//
//   node audit.mjs http://127.0.0.1:8080/graphql
//
// Prints one line per audit that is not `ok`, then the counts; exits 1 on any error, warning or
// notice. gateway.test.mjs runs the same audit through `runAudit`.

import { serverAudits } from 'graphql-http';

/** Runs every audit against `url`; returns { counts, findings }. */
export async function runAudit(url, { timeoutMs = 10_000 } = {}) {
  const fetchFn = (input, init) => fetch(input, { ...init, signal: AbortSignal.timeout(timeoutMs) });
  const counts = { ok: 0, notice: 0, warn: 0, error: 0 };
  const findings = [];
  for (const audit of serverAudits({ url, fetchFn })) {
    const result = await audit.fn();
    counts[result.status] += 1;
    if (result.status !== 'ok') findings.push({ status: result.status, id: audit.id, name: audit.name, reason: result.reason });
  }
  return { counts, findings };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const url = process.argv[2];
  if (!url) {
    console.error('usage: node audit.mjs <graphql url>');
    process.exit(2);
  }
  const { counts, findings } = await runAudit(url);
  for (const f of findings) console.log(`${f.status.padEnd(6)} ${f.id} ${f.name}: ${f.reason}`);
  console.log(`ok ${counts.ok}, notice ${counts.notice}, warn ${counts.warn}, error ${counts.error}`);
  process.exit(counts.error + counts.warn + counts.notice > 0 ? 1 : 0);
}
