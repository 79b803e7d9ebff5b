// End-to-end test of the ordering page, its BFF and a running platform, in Chromium.
//
//   COMMERCE_API=http://127.0.0.1:8080 WEB_PORT=8787 SCREENSHOT_DIR=clients/web/screenshots \
//     node clients/web/test/e2e.mjs
//
// The platform must run with `--cors-origins http://127.0.0.1:<WEB_PORT>` (and NOT allow
// http://localhost:<WEB_PORT>: the disallowed-origin case relies on it). The script builds the
// api client, the BFF and the page, starts the BFF on WEB_PORT (it seeds DEMO_TENANT), and runs:
// the whole flow on Connect and on gRPC-web; a reward; a double-clicked "Place order" (one
// order); a placement retried after a network error (same idempotency key, one order); the live
// status via WatchOrder while the kitchen panel advances it to COMPLETED; a declined card shown
// as a sentence; a page on a disallowed origin; the BFF's deadline against a callee that never
// answers; and x-request-id propagation. Last line: `E2E_SUMMARY {json}`. Exit 1 on any failure.
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";

const began = Date.now();
const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(web, "../..");
const COMMERCE_API = process.env.COMMERCE_API;
const WEB_PORT = Number(process.env.WEB_PORT || 8787);
const SCREENSHOT_DIR = resolve(process.env.SCREENSHOT_DIR || join(web, "screenshots"));
const DEMO_TENANT = process.env.DEMO_TENANT || "web-demo";
if (!COMMERCE_API) fail("set COMMERCE_API to a running platform (commerce serve --cors-origins http://127.0.0.1:<WEB_PORT>)");

const children = [];
const servers = [];
let browser;
const summary = {
  orders: {},
  request_id: "",
  tenant: DEMO_TENANT,
  customer_id: "ada",
  customers: { connect: "ada", "grpc-web": "ben" },
  screenshots: [],
  checks: [],
};

function log(line) {
  console.log(`e2e [${((Date.now() - began) / 1000).toFixed(1)}s] ${line}`);
}
function fail(message) {
  const error = new Error(message);
  error.e2e = true;
  throw error;
}
function check(condition, message) {
  if (!condition) fail(`assertion failed: ${message}`);
  summary.checks.push(message);
}

// ---- build and start -------------------------------------------------------------------------
function build() {
  const tsc = join(repo, "node_modules/.bin/tsc");
  execFileSync(tsc, ["-p", join(repo, "clients/ts/tsconfig.json")], { stdio: "inherit" });
  execFileSync(tsc, ["-p", join(repo, "clients/bff/tsconfig.json")], { stdio: "inherit" });
  execFileSync(process.execPath, [join(web, "build.mjs")], { stdio: "inherit" });
}

/** Starts a BFF; resolves with its URL once it prints that it listens. */
function startBff(env, name) {
  return new Promise((resolveUrl, reject) => {
    const child = spawn(process.execPath, [join(repo, "clients/bff/dist/main.js")], {
      env: { ...process.env, COMMERCE_API, DEMO_TENANT, WEB_DIST: join(web, "dist"), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(child);
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 60 s`)), 60_000);
    let out = "";
    const onData = (chunk) => {
      out += chunk;
      process.stderr.write(String(chunk).replace(/^(?=.)/gm, `[${name}] `));
      const match = /listening on (http:\/\/\S+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolveUrl(match[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before listening:\n${out}`));
    });
  });
}

/** A TCP server that accepts connections and never answers (a hung callee). */
function blackHole() {
  return new Promise((res) => {
    const sockets = [];
    const server = createServer((socket) => sockets.push(socket));
    server.listen(0, "127.0.0.1", () => {
      servers.push({ close: () => { sockets.forEach((s) => s.destroy()); server.close(); } });
      res(server.address().port);
    });
  });
}

// ---- browser helpers ---------------------------------------------------------------------------
const tid = (id) => `[data-testid="${id}"]`;
let shot = 0;
async function screenshot(page, name) {
  const file = join(SCREENSHOT_DIR, `${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  summary.screenshots.push(file);
}
const cents = (text) => {
  const m = /^(-?)\$([\d,]+)\.(\d\d)$/.exec(text.trim());
  if (!m) fail(`not a dollar amount to the cent: "${text}"`);
  return (m[1] ? -1 : 1) * (Number(m[2].replace(/,/g, "")) * 100 + Number(m[3]));
};
async function text(page, id) {
  return (await page.locator(tid(id)).textContent())?.trim() ?? "";
}

async function openPage(context, origin, transport, customer) {
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") process.stderr.write(`[browser ${transport}] ${msg.text()}\n`);
  });
  page.on("pageerror", (err) => process.stderr.write(`[browser ${transport}] page error: ${err}\n`));
  await page.goto(origin + "/");
  await page.check(tid(`transport-${transport}`));
  await page.selectOption(tid("customer-select"), customer);
  await page.click(tid("signin"));
  await page.waitForSelector(`${tid("signed-in-as")}:has-text("Signed in")`);
  await page.waitForSelector(tid("item-LATTE"));
  return page;
}

/** Adds `sku` with the given option test ids checked. */
async function addItem(page, sku, options = [], quantity = 1) {
  for (const option of options) await page.check(tid(`opt-${sku}-${option}`));
  await page.fill(tid(`qty-${sku}`), String(quantity));
  const lines = await page.locator(tid("cart-line")).count();
  await page.click(tid(`add-${sku}`));
  await page.waitForFunction(
    ([sel, n]) => document.querySelectorAll(sel).length > n,
    [tid("cart-line"), lines],
    { timeout: 10_000 },
  );
}

async function quoteCents(page) {
  const q = {};
  for (const k of ["subtotal", "discount", "reward", "fees", "tax", "tip", "total"]) q[k] = cents(await text(page, `quote-${k}`));
  check(q.subtotal + q.discount + q.reward + q.fees + q.tax + q.tip === q.total, `quote adds up to the cent (${JSON.stringify(q)})`);
  return q;
}

/** Advances the order through the kitchen panel; the status shown comes from WatchOrder. */
async function kitchenToCompleted(page, label) {
  await page.waitForSelector(`${tid("order-status")}[data-status="PLACED"]`, { timeout: 10_000 });
  for (const status of ["ACCEPTED", "IN_PREPARATION", "READY", "COMPLETED"]) {
    await page.click(tid("kitchen-advance"));
    await page.waitForSelector(`${tid("order-status")}[data-status="${status}"]`, { timeout: 10_000 });
  }
  check(true, `${label}: live status reached COMPLETED via WatchOrder while the kitchen advanced it`);
}

/** The error shown once it matches `pattern` (or the one shown after 15 s, for the message). */
async function errorText(page, pattern) {
  await page
    .waitForFunction(
      ([sel, source]) => {
        const el = document.querySelector(sel);
        return el && !el.hidden && new RegExp(source).test(el.textContent);
      },
      [tid("error"), pattern.source],
      { timeout: 15_000 },
    )
    .catch(() => undefined);
  return text(page, "error");
}

function assertNoRawCode(body, label) {
  const raw = /\b(PAYMENT_DECLINED|ERROR_REASON_\w+|[A-Z]+_[A-Z_]{3,})\b/.exec(body);
  check(!raw, `${label}: no raw reason code on the page${raw ? ` (found ${raw[0]})` : ""}`);
}

// ---- the test ---------------------------------------------------------------------------------
async function main() {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  log("building api client, BFF and page");
  build();
  const origin = await startBff({ BFF_PORT: String(WEB_PORT), BFF_DEMO_KITCHEN: "1" }, "bff");
  check(origin === `http://127.0.0.1:${WEB_PORT}`, `BFF listens on ${origin}`);
  log(`BFF at ${origin}`);

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });

  // -- 1. Connect: modifiers, quote to the cent, reward, double-clicked Place order, live status --
  {
    const context = await browser.newContext();
    const page = await openPage(context, origin, "connect", "ada");
    const gets = [];
    page.on("request", (r) => { if (r.method() === "GET" && r.url().includes("/commerce.checkout.v1.CartService/QuoteCart")) gets.push(r.url()); });
    await screenshot(page, "connect-signed-in");
    // Pick the second location.
    const second = await page.locator(`${tid("location-select")} option`).nth(1).getAttribute("value");
    await page.selectOption(tid("location-select"), second);
    await page.waitForFunction((v) => window.commerceDemo().session && document.querySelector('[data-testid="location-select"]').value === v, second);
    await page.waitForSelector(tid("add-LATTE"));
    // Latte has no default size: Add stays disabled until one is chosen; Extras allow two.
    check(await page.isDisabled(tid("add-LATTE")), "Latte: Add is disabled until a size is chosen");
    await page.check(tid("opt-LATTE-size-large"));
    check(await page.isEnabled(tid("add-LATTE")), "Latte: Add is enabled once a size is chosen");
    await page.check(tid("opt-LATTE-extras-oat-milk"));
    await page.check(tid("opt-LATTE-extras-extra-shot"));
    check(await page.isDisabled(tid("opt-LATTE-extras-vanilla")), "Extras: a third option is disabled at the max of 2");
    await addItem(page, "LATTE", [], 2);
    await addItem(page, "COFFEE");
    const q = await quoteCents(page);
    // (495 + 100 + 60 + 90) × 2 + 350 = 1840; tax 8.875 % per line, half up: 132 + 31 = 163.
    check(q.subtotal === 1840 && q.tax === 163 && q.total === 2003, `quote is $18.40 + $1.63 tax = $20.03 (got ${JSON.stringify(q)})`);
    check(gets.length > 0, "QuoteCart went out as a Connect GET");
    await screenshot(page, "connect-cart-quoted");
    // Reward: $2.00 off.
    const reward = await page.$eval(tid("reward-select"), (s) => [...s.options].find((o) => o.textContent.startsWith("$2.00 off"))?.value);
    check(!!reward, "the $2.00 reward is offered and affordable");
    await page.selectOption(tid("reward-select"), reward);
    await page.click(tid("apply-reward"));
    await page.waitForSelector(`${tid("quote-reward")}:has-text("-$2.00")`);
    const withReward = await quoteCents(page);
    check(withReward.reward === -200 && withReward.total < q.total, `reward applied: ${JSON.stringify(withReward)}`);
    await screenshot(page, "connect-reward-applied");
    // Double click: two clicks dispatched in the same task.
    const placeRequests = [];
    page.on("request", (r) => {
      if (r.url().includes(".OrderService/PlaceOrder")) placeRequests.push(r.headers()["idempotency-key"]);
    });
    const cartId = await page.evaluate(() => window.commerceDemo().cartId);
    await page.$eval(tid("place-order"), (b) => {
      b.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      b.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    });
    await page.waitForSelector(`${tid("order-id")}:not(:empty)`, { timeout: 30_000 });
    const orderId = await text(page, "order-id");
    await page.waitForTimeout(300);
    log(`double click: PlaceOrder requests ${JSON.stringify(placeRequests)}`);
    check(placeRequests.length >= 1 && new Set(placeRequests).size === 1, `double click: every PlaceOrder sent (${placeRequests.length}) carries the same idempotency key`);
    check((await text(page, "order-id")) === orderId, "double click: one order shown");
    summary.orders.connect = orderId;
    summary.orders.double_click_cart = cartId;
    summary.orders.double_click_order = orderId;
    summary.double_click_place_requests = placeRequests.length;
    await screenshot(page, "connect-order-placed");
    await kitchenToCompleted(page, "connect");
    await screenshot(page, "connect-order-completed");
    assertNoRawCode(await page.locator("body").innerText(), "connect page");
    await context.close();
  }

  // -- 2. gRPC-web: declined card, retry after a network error, live status ----------------------
  {
    const context = await browser.newContext();
    const page = await openPage(context, origin, "grpc-web", "ben");
    await addItem(page, "TEA", ["size-large", "extras-honey"]);
    await addItem(page, "CROISSANT", ["extras-warmed", "extras-jam"]);
    await quoteCents(page);
    await page.selectOption(tid("tip-select"), "1500");
    await page.waitForFunction(() => document.querySelector('[data-testid="quote-tip"]').textContent !== "$0.00");
    const tipped = await quoteCents(page);
    check(tipped.tip > 0, `a 15% tip is in the quote (${tipped.tip} cents)`);
    await page.selectOption(tid("payment-token"), "tok_decline_insufficient_funds");
    await page.click(tid("place-order"));
    const declined = await errorText(page, /declined/);
    check(/Your card was declined/.test(declined), `declined card shown as a sentence: "${declined}"`);
    assertNoRawCode(await page.locator("body").innerText(), "declined page");
    await screenshot(page, "grpc-web-declined");

    // A network error after the server placed the order: the retry (same key) gets the same order.
    const keys = [];
    const replayed = [];
    page.on("request", (r) => { if (r.url().includes(".OrderService/PlaceOrder") && r.method() === "POST") keys.push(r.headers()["idempotency-key"]); });
    page.on("response", async (r) => { if (r.url().includes(".OrderService/PlaceOrder")) replayed.push((await r.allHeaders())["idempotent-replayed"] ?? ""); });
    let cut = false;
    await page.route("**/commerce.checkout.v1.OrderService/PlaceOrder", async (route) => {
      if (cut) return route.continue();
      cut = true;
      await route.fetch(); // the server places the order …
      await route.abort("connectionreset"); // … and the browser never sees the answer
    });
    await page.selectOption(tid("payment-token"), "tok_ok");
    const retryCart = await page.evaluate(() => window.commerceDemo().cartId);
    await page.click(tid("place-order"));
    const lost = await errorText(page, /reach/);
    check(/couldn't reach/.test(lost), `lost answer shown as a sentence: "${lost}"`);
    await screenshot(page, "grpc-web-network-error");
    await page.click(tid("place-order"));
    await page.waitForSelector(`${tid("order-id")}:not(:empty)`, { timeout: 30_000 });
    check(keys.length === 2 && keys[0] === keys[1], `retry after a network error reuses the idempotency key (${keys.join(", ")})`);
    // The response listener reads headers asynchronously: give it a moment to have run.
    for (let i = 0; i < 50 && !replayed.includes("true"); i++) await page.waitForTimeout(100);
    check(replayed.includes("true"), "the retry's answer is a replay (idempotent-replayed: true), not a second placement");
    summary.orders["grpc-web"] = await text(page, "order-id");
    summary.orders.retry_cart = retryCart;
    await screenshot(page, "grpc-web-order-placed");
    await kitchenToCompleted(page, "grpc-web");
    await screenshot(page, "grpc-web-order-completed");
    await context.close();
  }

  // -- 3. A page on an origin the platform does not allow ----------------------------------------
  {
    const context = await browser.newContext();
    const page = await openPage(context, `http://localhost:${WEB_PORT}`, "connect", "ada");
    await page.click(tid("add-COFFEE"));
    const blocked = await errorText(page, /reach/);
    check(/couldn't reach the ordering service/.test(blocked), `disallowed origin: platform unreachable, shown as "${blocked}"`);
    await screenshot(page, "disallowed-origin");
    await context.close();
  }

  // -- 4. BFF: deadline against a callee that never answers, request id propagation --------------
  const signIn = await fetch(`${origin}/commerce.bff.v1.StorefrontService/SignIn`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ customerId: "ada" }),
  }).then((r) => r.json());
  const hole = await blackHole();
  const slow = await startBff({ BFF_PORT: "0", BFF_SEED: "0", LOYALTY_URL: `http://127.0.0.1:${hole}` }, "bff-slow-loyalty");
  {
    const started = Date.now();
    const res = await fetch(`${slow}/commerce.bff.v1.StorefrontService/StartPage`, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-timeout-ms": "300", authorization: `Bearer ${signIn.customerToken}` },
      body: "{}",
    });
    const elapsed = Date.now() - started;
    const body = await res.json();
    check(body.code === "deadline_exceeded", `StartPage with a 300 ms deadline and a hung loyalty: ${body.code} (${res.status})`);
    check(elapsed < 800, `StartPage gave up in ${elapsed} ms (< 800 ms)`);
    summary.deadline_ms = elapsed;
  }
  {
    // The kitchen RPC moves orders with the BFF's staff token: off unless the demo turns it on.
    const res = await fetch(`${slow}/commerce.bff.v1.StorefrontService/AdvanceKitchenOrder`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ orderId: summary.orders.connect }),
    });
    const body = await res.json();
    check(body.code === "permission_denied", `a BFF without BFF_DEMO_KITCHEN=1 refuses the kitchen RPC (${body.code})`);
  }
  {
    const requestId = `e2e-${randomUUID()}`;
    const res = await fetch(`${origin}/commerce.bff.v1.StorefrontService/StartPage`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": requestId, authorization: `Bearer ${signIn.customerToken}` },
      body: "{}",
    });
    const body = await res.json();
    check(res.ok && body.menuItems?.length > 0, `StartPage with x-request-id answered (${res.status})`);
    check(res.headers.get("x-request-id") === requestId, "the BFF echoes the x-request-id");
    summary.request_id = requestId;
  }
}

let exitCode = 0;
try {
  await main();
  summary.elapsed_ms = Date.now() - began;
  log(`passed ${summary.checks.length} checks`);
} catch (err) {
  exitCode = 1;
  console.error(`E2E FAILED: ${err?.e2e ? err.message : err?.stack ?? err}`);
  summary.error = String(err?.message ?? err);
  try {
    for (const context of browser?.contexts() ?? []) for (const page of context.pages()) await screenshot(page, "failure");
  } catch {}
} finally {
  await browser?.close().catch(() => undefined);
  for (const child of children) child.kill("SIGTERM");
  for (const server of servers) server.close();
}
console.log(`E2E_SUMMARY ${JSON.stringify(summary)}`);
process.exit(exitCode);
