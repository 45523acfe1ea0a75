// End-to-end test of the debugger page in real headless Chromium (Debian's `chromium`), driven
// by playwright-core (which never downloads a browser). Usage: node e2e.mjs BASE_URL SCREENSHOT
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [base, screenshot] = process.argv.slice(2);
if (!base || !screenshot) {
  console.error("usage: node e2e.mjs BASE_URL SCREENSHOT");
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), "tidewater-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
  viewport: { width: 1280, height: 900 },
});
const failures = [];
let passed = 0;
function check(name, ok, detail = "") {
  if (ok) {
    passed += 1;
    console.log(`ok - ${name}`);
  } else {
    failures.push(name);
    console.log(`not ok - ${name} ${detail}`);
  }
}

let page;
try {
  page = context.pages()[0] || (await context.newPage());
  const external = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(base)) external.push(request.url());
  });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));

  await page.goto(base + "/");
  await page.waitForSelector("#workflows button[data-workflow='approval']");
  const names = await page.$$eval("#workflows button", (bs) => bs.map((b) => b.dataset.workflow));
  check("the workflows are listed", ["approval", "download", "joke"].every((n) => names.includes(n)), names.join(","));

  // Keyboard: the workflow buttons are reachable with Tab and chosen with Enter.
  await page.focus("#workflows button[data-workflow='approval']");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#graph svg g[data-step='decide']");
  const steps = await page.$$eval("#graph g.step", (gs) => gs.map((g) => g.dataset.step));
  check("the graph of the chosen workflow is drawn", steps.includes("draft") && steps.includes("decide"), steps.join(","));

  // The start form comes from the start event's schema: a `topic` text field.
  await page.waitForSelector("#start-fields input[name='topic']");
  await page.fill("#start-fields input[name='topic']", "browsers");
  await page.click("#start-button");

  // Events arrive over SSE: the request for a human shows the answer form.
  await page.waitForSelector("#answer-form:not([hidden])", { timeout: 15000 });
  const logged = await page.$$eval("#log li", (lis) => lis.map((li) => li.textContent));
  check("events arrive in the log", logged.some((l) => l.includes("Review asks a human")), logged.join(" | "));
  check("step activity is logged", logged.some((l) => l.includes("draft started")), logged.join(" | "));
  const seen = await page.$$eval("#graph g.seen", (gs) => gs.map((g) => g.dataset.step));
  check("the steps that ran are marked on the graph", seen.includes("draft"), seen.join(","));
  const runs = await page.$$eval("#runs tbody tr", (rows) => rows.length);
  check("the run is listed", runs >= 1);

  // Answer the human: approve.
  await page.waitForSelector("#answer-fields input[name='approved']");
  await page.check("#answer-fields input[name='approved']");
  await page.click("#answer-button");
  await page.waitForSelector("#log li[data-end]", { timeout: 15000 });
  const end = await page.$eval("#log li[data-end]", (li) => li.dataset.end + " " + li.textContent);
  check("the run completes", end.startsWith("completed") && end.includes("browsers"), end);
  await page.waitForSelector("#runs td[data-status='completed']", { timeout: 10000 });
  check("the run's status says completed", true);

  // A second run, cancelled from the page.
  await page.fill("#start-fields input[name='topic']", "cancel me");
  await page.click("#start-button");
  await page.waitForSelector("#answer-form:not([hidden])", { timeout: 15000 });
  await page.click("#cancel-button");
  await page.waitForSelector("#log li[data-end='cancelled']", { timeout: 15000 });
  check("a run can be cancelled", true);

  // Narrow window: one column, nothing wider than the viewport.
  await page.setViewportSize({ width: 420, height: 900 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check("readable in a narrow window (no horizontal scroll)", overflow <= 1, `overflow ${overflow}px`);
  await page.setViewportSize({ width: 1280, height: 900 });

  check("nothing is fetched from outside the server", external.length === 0, external.join(","));
  check("no script errors", errors.length === 0, errors.join(" | "));
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (error) {
  failures.push(String(error));
  console.log(`not ok - ${error}`);
  // What the page and the server saw, to tell a run that did not go on from a page that did
  // not show it.
  try {
    const logged = page ? await page.$$eval("#log li", (lis) => lis.map((li) => li.textContent)) : [];
    console.log(`# the page's log: ${logged.join(" | ")}`);
    const handlers = await fetch(base + "/handlers").then((r) => r.text());
    console.log(`# GET /handlers: ${handlers}`);
  } catch (dump) {
    console.log(`# could not dump the page's log or the handlers: ${dump}`);
  }
} finally {
  await context.close();
}
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
