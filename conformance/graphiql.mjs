// GraphiQL in a real browser: headless Chromium (Debian's `chromium`) opens
// GET /graphql like a person would and waits for the self-hosted GraphiQL to
// render and load the schema (its introspection query). Then:
//
// 1. before any query runs, the result pane is empty (GraphiQL shows a
//    failed schema fetch there, e.g. a refused introspection);
// 2. the documentation explorer opens on the schema's root types (not
//    "Error fetching schema"), goes to Query and finds the `listings`
//    field, and its page shows the field's type;
// 3. a query typed into the editor runs with the execute button, and the
//    result pane shows the server's answer.
//
// Fails on any of these, on any page error or failed request, and on
// anything loaded from elsewhere (nothing may come from a CDN).
//
// Usage: node graphiql.mjs http://127.0.0.1:8080/graphql
import puppeteer from 'puppeteer-core';

const url = process.argv[2];
if (!url) {
  console.error('usage: node graphiql.mjs <graphql-url>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

// The result pane's text without the blank a pane shows when empty.
const paneText = () => (document.querySelector('.graphiql-response')?.innerText ?? '').replace(/[\s\u200b]+/g, ' ').trim();

// Clicks the first element matching `selector` (within `within`, if given)
// whose text is exactly `text`; waits for it to be there.
async function clickByText(page, selector, text, within = '') {
  const found = await page.waitForFunction(
    (selector, text, within) => {
      const scope = within ? document.querySelector(within) : document;
      return [...(scope?.querySelectorAll(selector) ?? [])].find((e) => e.textContent.trim() === text);
    },
    {},
    selector,
    text,
    within,
  );
  await found.asElement().click();
}

const browser = await puppeteer.launch({
  executablePath,
  headless: true,
  // Running as root (CI here) needs --no-sandbox.
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const problems = [];
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  let introspection;
  const introspected = new Promise((resolve) => {
    page.on('response', async (r) => {
      if (r.request().method() === 'POST' && r.request().postData()?.includes('__schema')) {
        introspection = { status: r.status(), body: await r.text().catch(() => '') };
        resolve();
      }
    });
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
  });

  await page.goto(url, { waitUntil: 'networkidle0' });
  const origin = new URL(url).origin;
  const foreign = await page.evaluate(
    (origin) => performance.getEntriesByType('resource').map((e) => e.name).filter((n) => !n.startsWith(origin) && !n.startsWith('ws')),
    origin,
  );
  if (foreign.length) problems.push(`loaded from elsewhere: ${foreign.join(', ')}`);

  // The schema: GraphiQL introspects on load.
  await page.waitForSelector('.graphiql-query-editor .CodeMirror');
  await Promise.race([
    introspected,
    new Promise((_, reject) => setTimeout(() => reject(new Error('GraphiQL sent no introspection query within 30 s')), 30000)),
  ]);
  let schemaError = '';
  try {
    const body = JSON.parse(introspection.body);
    if (body.errors?.length || !body.data?.__schema) schemaError = JSON.stringify(body.errors ?? body).slice(0, 300);
  } catch {
    schemaError = `not JSON: ${introspection.body.slice(0, 300)}`;
  }
  if (schemaError) problems.push(`the schema did not load: introspection answered HTTP ${introspection.status}: ${schemaError}`);

  // 1. Nothing in the result pane before a query is run.
  await new Promise((resolve) => setTimeout(resolve, 300)); // let GraphiQL render the outcome
  const before = await page.evaluate(paneText);
  if (before) problems.push(`the result pane shows something before any query ran: ${before.slice(0, 300)}`);
  else console.log('ok    the result pane is empty before any query ran');

  // 2. The documentation explorer: root types, then Query, then `listings`.
  await page.click('button[aria-label="Show Documentation Explorer"]');
  const explorer = '.graphiql-doc-explorer';
  const docs = await page.waitForFunction(
    (explorer) => {
      const e = document.querySelector(explorer);
      if (e?.querySelector('.graphiql-doc-explorer-error')) return e.querySelector('.graphiql-doc-explorer-error').innerText;
      return e?.querySelector('.graphiql-doc-explorer-root-type') ? 'ok' : false;
    },
    {},
    explorer,
  );
  const state = await docs.jsonValue();
  if (state !== 'ok') throw new Error(`the documentation explorer shows "${state}" instead of the schema`);
  await clickByText(page, 'a.graphiql-doc-explorer-type-name', 'Query', explorer);
  await page.waitForFunction(
    (explorer) => document.querySelector(`${explorer} .graphiql-doc-explorer-title`)?.innerText.trim() === 'Query',
    {},
    explorer,
  );
  await clickByText(page, 'a.graphiql-doc-explorer-field-name', 'listings', explorer);
  await page.waitForFunction(
    (explorer) => document.querySelector(`${explorer} .graphiql-doc-explorer-title`)?.innerText.trim() === 'listings',
    {},
    explorer,
  );
  const fieldPage = await page.evaluate((explorer) => document.querySelector(explorer).innerText, explorer);
  if (!/ListingConnection!/.test(fieldPage)) {
    problems.push(`the documentation of Query.listings does not show its type: ${fieldPage.replace(/\s+/g, ' ').slice(0, 300)}`);
  } else {
    console.log(`ok    the documentation explorer shows Query.listings: ${fieldPage.replace(/\s+/g, ' ').slice(0, 120)}`);
  }

  // 3. The query editor: replace its text with ours and run it.
  await page.evaluate(() => {
    const cm = document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror;
    cm.setValue('query FromTheBrowser { listings(first: 1) { totalCount } }');
  });
  await page.click('.graphiql-execute-button');
  await page.waitForFunction(
    () => document.querySelector('.graphiql-response')?.innerText.includes('totalCount'),
  );
  const answer = await page.evaluate(() => document.querySelector('.graphiql-response').innerText);
  if (!/"listings"/.test(answer) || !/"totalCount":\s*\d+/.test(answer) || /"errors"/.test(answer)) {
    problems.push(`unexpected result pane: ${answer.slice(0, 300)}`);
  } else {
    console.log(`ok    GraphiQL ran a query and showed: ${answer.replace(/\s+/g, ' ').slice(0, 120)}`);
  }
} catch (e) {
  problems.push(`check failed: ${e.message}`);
} finally {
  await browser.close();
}
for (const p of problems) console.log(`error ${p}`);
process.exit(problems.length ? 1 : 0);
