// Conformance of a running marketplace with real third-party GraphQL clients:
//
// 1. the `graphql-http` package's server audits (GraphQL over HTTP): every
//    MUST audit has to pass; SHOULD/MAY results are printed and, with
//    --strict, fail the run too;
// 2. the `graphql-ws` reference client over the `graphql-transport-ws`
//    protocol: it connects, is acknowledged, runs a subscription whose
//    refusal (no token) comes back as a coded GraphQL error, and completes.
//
// Usage: node audit.mjs http://127.0.0.1:8080/graphql [--strict]
import { serverAudits } from 'graphql-http';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const url = process.argv[2];
const strict = process.argv.includes('--strict');
if (!url || url.startsWith('--')) {
  console.error('usage: node audit.mjs <graphql-url> [--strict]');
  process.exit(2);
}

let failures = 0;
let warnings = 0;

console.log(`== graphql-http server audits against ${url}`);
for (const audit of serverAudits({ url, fetchFn: fetch })) {
  const result = await audit.fn();
  if (result.status === 'ok') {
    console.log(`ok    ${audit.name}`);
    continue;
  }
  const must = audit.name.startsWith('MUST');
  let body = '';
  try {
    body = await result.response.clone().text();
  } catch {
    // The body was already read by the audit.
  }
  console.log(`${result.status.padEnd(5)} ${audit.name}\n      ${result.reason}${body ? `\n      body: ${body.slice(0, 300)}` : ''}`);
  if (must || result.status === 'error') failures += 1;
  else warnings += 1;
}

console.log(`== graphql-ws reference client against ${url.replace(/^http/, 'ws')}`);
const wsResult = await new Promise((resolve) => {
  let refusal;
  const client = createClient({
    url: url.replace(/^http/, 'ws'),
    webSocketImpl: WebSocket,
    lazy: false,
    retryAttempts: 0,
    on: { error: (e) => resolve({ ok: false, reason: `connection error: ${e?.message ?? e}` }) },
  });
  const timer = setTimeout(() => resolve({ ok: false, reason: 'no answer within 20 s' }), 20000);
  client.subscribe(
    { query: 'subscription { notificationAdded { id kind } }' },
    {
      // A refused subscription answers like graphql-js's `subscribe`: one
      // `next` with the field error, then `complete`.
      next: (m) => {
        refusal = m?.errors?.[0]?.extensions?.code;
      },
      error: (errors) => {
        clearTimeout(timer);
        resolve({ ok: false, reason: `unexpected protocol error ${JSON.stringify(errors)}` });
      },
      complete: () => {
        clearTimeout(timer);
        client.dispose();
        resolve(
          refusal === 'UNAUTHENTICATED'
            ? { ok: true }
            : { ok: false, reason: `expected an UNAUTHENTICATED error before completion, got ${refusal}` },
        );
      },
    },
  );
});
if (wsResult.ok) {
  console.log('ok    graphql-transport-ws: acknowledged; a refused subscription answers a coded error, then completes');
} else {
  console.log(`error graphql-transport-ws: ${wsResult.reason}`);
  failures += 1;
}

console.log(`== ${failures} failure(s), ${warnings} warning(s)`);
process.exit(failures > 0 || (strict && warnings > 0) ? 1 : 0);
