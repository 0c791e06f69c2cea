// GraphiQL in a real browser: headless Chromium (Debian's `chromium`) opens
// GET /graphql like a person would, waits for the self-hosted GraphiQL to
// render, types a query into its editor, runs it with the execute button,
// and checks the result pane shows the server's answer. Fails on any page
// error or failed request (nothing may come from a CDN).
//
// Usage: node graphiql.mjs http://127.0.0.1:8080/graphql
import puppeteer from 'puppeteer-core';

const url = process.argv[2];
if (!url) {
  console.error('usage: node graphiql.mjs <graphql-url>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

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
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });

  await page.goto(url, { waitUntil: 'networkidle0' });
  const origin = new URL(url).origin;
  const foreign = await page.evaluate(
    (origin) => performance.getEntriesByType('resource').map((e) => e.name).filter((n) => !n.startsWith(origin) && !n.startsWith('ws')),
    origin,
  );
  if (foreign.length) problems.push(`loaded from elsewhere: ${foreign.join(', ')}`);

  // The query editor, then replace its text with ours and run it.
  await page.waitForSelector('.graphiql-query-editor .CodeMirror');
  await page.evaluate(() => {
    const cm = document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror;
    cm.setValue('query FromTheBrowser { listings(first: 1) { totalCount } }');
  });
  await page.click('.graphiql-execute-button');
  await page.waitForFunction(
    () => document.querySelector('.graphiql-response')?.innerText.includes('totalCount'),
  );
  const answer = await page.evaluate(() => document.querySelector('.graphiql-response').innerText);
  if (!/"listings"/.test(answer) || !/"totalCount":\s*\d+/.test(answer)) {
    problems.push(`unexpected result pane: ${answer.slice(0, 300)}`);
  } else {
    console.log(`ok    GraphiQL rendered, ran a query, and showed: ${answer.replace(/\s+/g, ' ').slice(0, 120)}`);
  }
} catch (e) {
  problems.push(`check failed: ${e.message}`);
} finally {
  await browser.close();
}
for (const p of problems) console.log(`error ${p}`);
process.exit(problems.length ? 1 : 0);
