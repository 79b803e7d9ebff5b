// The ordering page. Sign-in, the start page and the demo kitchen go to the BFF (same origin,
// Connect); carts, quotes, orders and the live order stream go straight to the platform with the
// customer token, over Connect (GET for side-effect-free reads) or gRPC-web — the header switch.
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  CartService,
  OrderService,
  OrderStatus,
  errorInfo,
  type Cart,
  type Order,
  type Quote,
} from "@commerce/api-client";
import {
  StorefrontService,
  type MenuItem,
  type SignInResponse,
  type StartPageResponse,
} from "../../bff/src/gen/commerce/bff/v1/storefront_pb.js";
import { formatMoney } from "./money.js";
import { isAmbiguous, sentence } from "./errors.js";

const $ = <T extends HTMLElement = HTMLElement>(testid: string): T => {
  const el = document.querySelector<T>(`[data-testid="${testid}"]`);
  if (!el) throw new Error(`no element ${testid}`);
  return el;
};
/** An element with properties (`textContent`, `value`, …), an optional data-testid, and children. */
const h = <K extends keyof HTMLElementTagNameMap>(tag: K, props: Record<string, unknown> & { testid?: string } = {}, ...children: (Node | string)[]): HTMLElementTagNameMap[K] => {
  const { testid, ...rest } = props;
  const el: HTMLElementTagNameMap[K] = Object.assign(document.createElement(tag), rest);
  if (testid) el.dataset.testid = testid;
  el.append(...children);
  return el;
};

/** Unary calls' deadline (sent as connect-timeout-ms / grpc-timeout). */
const CALL = { timeoutMs: 10_000 };

// ---- state -------------------------------------------------------------------------------------
let session: SignInResponse | undefined;
let start: StartPageResponse | undefined;
let cart: Cart | undefined;
let quote: Quote | undefined;
let order: Order | undefined;
/** CreateCart's key, made once per cart to be and kept across retries. */
let cartKey: string | undefined;
/** PlaceOrder's keys: one per cart + quote + payment token, kept across retries of that placement. */
const placementKeys = new Map<string, string>();
let watch: AbortController | undefined;

// ---- clients -----------------------------------------------------------------------------------
const bff = createClient(StorefrontService, createConnectTransport({ baseUrl: window.location.origin }));
const withToken: Interceptor = (next) => (req) => {
  if (session) req.header.set("authorization", `Bearer ${session.customerToken}`);
  return next(req);
};
const transports = new Map<string, Transport>();
function transport(): Transport {
  const kind = document.querySelector<HTMLInputElement>('input[name="transport"]:checked')?.value ?? "connect";
  const key = `${kind} ${session?.apiUrl}`;
  let t = transports.get(key);
  if (!t) {
    const baseUrl = session?.apiUrl ?? "";
    t =
      kind === "grpc-web"
        ? createGrpcWebTransport({ baseUrl, interceptors: [withToken] })
        : createConnectTransport({ baseUrl, useHttpGet: true, interceptors: [withToken] });
    transports.set(key, t);
  }
  return t;
}
const carts = (): Client<typeof CartService> => createClient(CartService, transport());
const orders = (): Client<typeof OrderService> => createClient(OrderService, transport());
const bffAuth = () => ({ headers: { authorization: `Bearer ${session?.customerToken}` }, ...CALL });

// ---- errors and busy state ---------------------------------------------------------------------
function showError(err: unknown) {
  const box = $("error");
  box.textContent = sentence(err);
  box.hidden = false;
  console.warn("call failed", err, errorInfo(err));
}
function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}
async function guarded<T>(fn: () => Promise<T>): Promise<T | undefined> {
  try {
    const result = await fn();
    clearError();
    return result;
  } catch (err) {
    showError(err);
    return undefined;
  }
}

// ---- sign-in and start page -------------------------------------------------------------------
$("signin").addEventListener("click", () =>
  guarded(async () => {
    const customerId = $<HTMLSelectElement>("customer-select").value;
    session = await bff.signIn({ customerId }, CALL);
    $("signed-in-as").textContent = `Signed in as ${session.displayName}`;
    resetOrder();
    await loadStart("");
  }),
);

async function loadStart(locationId: string) {
  start = await bff.startPage({ locationId }, bffAuth());
  const select = $<HTMLSelectElement>("location-select");
  select.replaceChildren(
    ...start.locations.map((l) => h("option", { value: l.locationId, textContent: l.displayName, selected: l.locationId === start!.locationId })),
  );
  select.disabled = false;
  renderPoints();
  renderMenu(start.menuItems);
  renderRewards();
}

$("location-select").addEventListener("change", () =>
  guarded(async () => {
    resetOrder();
    await loadStart($<HTMLSelectElement>("location-select").value);
  }),
);

function renderPoints() {
  $("points").textContent = start?.balance ? `${start.balance.availablePoints} points` : "";
}

function renderRewards() {
  const select = $<HTMLSelectElement>("reward-select");
  select.replaceChildren(
    h("option", { value: "", textContent: "No reward" }),
    ...(start?.rewards ?? []).map((r) =>
      h("option", {
        value: r.rewardId,
        textContent: `${r.displayName} — ${r.pointCost} points${r.affordable ? "" : " (not enough points)"}`,
        disabled: !r.affordable,
      }),
    ),
  );
  updateButtons();
}

// ---- menu with modifier groups (min/max enforced here; the server checks again) ----------------
function renderMenu(items: MenuItem[]) {
  $("menu").replaceChildren(...items.map(renderItem));
}

function renderItem(item: MenuItem): HTMLElement {
  const currency = item.price?.currencyCode ?? "USD";
  const inputs: { group: string; option: string; input: HTMLInputElement }[] = [];
  const add = h("button", { testid: `add-${item.sku}`, textContent: "Add to order" });
  const qty = document.createElement("input");
  Object.assign(qty, { type: "number", min: "1", max: "99", value: "1" });
  qty.style.width = "4em";
  qty.dataset.testid = `qty-${item.sku}`;
  const hint = h("div", { className: "hint", testid: `hint-${item.sku}` });
  const groups = item.modifierGroups.map((g) => {
    const single = g.maxSelections === 1;
    const fieldset = h("fieldset", {}, h("legend", { textContent: `${g.displayName}${g.minSelections > 0 ? " (required)" : ` (up to ${g.maxSelections})`}` }));
    for (const o of g.options) {
      const input = h("input", { type: single ? "radio" : "checkbox", name: `${item.itemId}-${g.groupId}`, checked: o.defaultSelected, disabled: !o.available });
      input.dataset.testid = `opt-${item.sku}-${g.groupId}-${o.optionId}`;
      inputs.push({ group: g.groupId, option: o.optionId, input });
      const extra = o.price && o.price.amountMinor > 0n ? ` +${formatMoney(o.price, currency)}` : "";
      const label = h("label", {}, input, ` ${o.displayName}${extra}`);
      label.style.display = "block";
      fieldset.append(label);
    }
    return fieldset;
  });
  const validate = () => {
    const problems: string[] = [];
    for (const g of item.modifierGroups) {
      const chosen = inputs.filter((i) => i.group === g.groupId && i.input.checked).length;
      if (chosen < g.minSelections) problems.push(`Choose ${g.minSelections === 1 ? "a" : g.minSelections} ${g.displayName.toLowerCase()}`);
      if (g.maxSelections > 0 && chosen > g.maxSelections) problems.push(`At most ${g.maxSelections} ${g.displayName.toLowerCase()}`);
      // At the maximum, the other checkboxes of the group are disabled.
      for (const i of inputs.filter((i) => i.group === g.groupId && i.input.type === "checkbox")) {
        const option = g.options.find((o) => o.optionId === i.option);
        i.input.disabled = !option?.available || (!i.input.checked && g.maxSelections > 0 && chosen >= g.maxSelections);
      }
    }
    const q = Number(qty.value);
    if (!Number.isInteger(q) || q < 1 || q > 99) problems.push("Quantity 1–99");
    hint.textContent = problems.join(" · ");
    add.disabled = problems.length > 0 || !session;
  };
  for (const i of inputs) i.input.addEventListener("change", validate);
  qty.addEventListener("input", validate);
  add.addEventListener("click", () =>
    guarded(async () => {
      add.disabled = true;
      try {
        const modifiers = inputs.filter((i) => i.input.checked).map((i) => ({ groupId: i.group, optionId: i.option, quantity: 1 }));
        await addLine(item.itemId, Number(qty.value), modifiers);
      } finally {
        validate();
      }
    }),
  );
  validate();
  return h(
    "div",
    { className: "item", testid: `item-${item.sku}` },
    h("strong", { textContent: item.displayName }),
    ` ${formatMoney(item.price, currency)}`,
    h("div", { className: "muted", textContent: item.description }),
    ...groups,
    h("label", {}, "Qty ", qty),
    " ",
    add,
    hint,
  );
}

// ---- cart and quote ----------------------------------------------------------------------------
async function ensureCart(): Promise<Cart> {
  if (cart) return cart;
  cartKey ??= crypto.randomUUID(); // kept across retries: a retried CreateCart makes one cart
  const { cart: created } = await carts().createCart(
    { locationId: start!.locationId, customerId: session!.customerId },
    { ...CALL, headers: { "idempotency-key": cartKey } },
  );
  cart = created!;
  $("cart-id").textContent = `Cart ${cart.cartId}`;
  return cart;
}

async function addLine(itemId: string, quantity: number, modifiers: { groupId: string; optionId: string; quantity: number }[]) {
  const c = await ensureCart();
  const key = crypto.randomUUID(); // one per "Add" click
  const { cart: updated } = await carts().addCartLine(
    { cartId: c.cartId, itemId, quantity, modifiers },
    { ...CALL, headers: { "idempotency-key": key } },
  );
  cart = updated!;
  await requote();
}

async function requote() {
  if (!cart) return;
  const { quote: q } = await carts().quoteCart({ cartId: cart.cartId }, CALL);
  quote = q;
  renderQuote();
}

function renderQuote() {
  const q = quote;
  const currency = cart?.currencyCode || "USD";
  const neg = (m: Quote["discountTotal"]) => (m && m.amountMinor !== 0n ? { ...m, amountMinor: -m.amountMinor } : m);
  $("cart-lines").replaceChildren(
    ...(q?.lines ?? []).map((l) =>
      h("li", { testid: "cart-line", textContent: `${l.quantity} × ${l.displayName} — ${formatMoney(l.lineSubtotal, currency)}` }),
    ),
  );
  $("quote-subtotal").textContent = q ? formatMoney(q.itemsSubtotal, currency) : "";
  $("quote-discount").textContent = q ? formatMoney(neg(q.discountTotal), currency) : "";
  $("quote-reward").textContent = q ? formatMoney(neg(q.rewardDiscount), currency) : "";
  $("quote-fees").textContent = q ? formatMoney(q.feesTotal, currency) : "";
  $("quote-tax").textContent = q ? formatMoney(q.taxTotal, currency) : "";
  $("quote-tip").textContent = q ? formatMoney(q.tip, currency) : "";
  $("quote-total").textContent = q ? formatMoney(q.total, currency) : "";
  updateButtons();
}

let placing = false;
function updateButtons() {
  const open = !!quote && !order;
  $<HTMLButtonElement>("place-order").disabled = !open || placing;
  $<HTMLButtonElement>("apply-reward").disabled = !open || placing;
  $<HTMLSelectElement>("tip-select").disabled = !open || placing;
}

$("tip-select").addEventListener("change", () =>
  guarded(async () => {
    const bps = Number($<HTMLSelectElement>("tip-select").value);
    await carts().setTip({ cartId: cart!.cartId, tip: { kind: { case: "percentBps", value: bps } } }, CALL);
    await requote();
  }),
);

$("apply-reward").addEventListener("click", () =>
  guarded(async () => {
    const rewardId = $<HTMLSelectElement>("reward-select").value;
    await carts().setLoyaltyReward(
      { cartId: cart!.cartId, memberId: session!.memberId, reward: rewardId ? { rewardId } : undefined },
      CALL,
    );
    await requote();
  }),
);

// ---- placing the order: one idempotency key per cart + quote (+ card), kept across retries --------
$("place-order").addEventListener("click", () => void placeOrder());

async function placeOrder() {
  if (!cart || !quote) return;
  const button = $<HTMLButtonElement>("place-order");
  placing = true;
  button.disabled = true;
  clearError(); // a second click while in flight is ignored; the key is what guarantees one order
  const paymentToken = $<HTMLSelectElement>("payment-token").value;
  const intent = `${cart.cartId}:${quote.quoteId}:${paymentToken}`;
  let key = placementKeys.get(intent);
  if (!key) {
    key = crypto.randomUUID();
    placementKeys.set(intent, key);
  }
  button.dataset.idempotencyKey = key;
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        const { order: placed } = await orders().placeOrder(
          { cartId: cart.cartId, quoteId: quote.quoteId, expectedTotal: quote.total, paymentToken },
          { timeoutMs: 30_000, headers: { "idempotency-key": key } },
        );
        clearError();
        showOrder(placed!);
        return;
      } catch (err) {
        // The same placement still running (a concurrent duplicate): wait for it, same key.
        if (errorInfo(err)?.reason === "IDEMPOTENCY_KEY_IN_USE" && attempt < 20) {
          await new Promise((r) => setTimeout(r, 250));
          continue;
        }
        // A definite refusal (declined card, stale quote, …): the next attempt is a new placement.
        if (!isAmbiguous(err)) placementKeys.delete(intent);
        if (errorInfo(err)?.reason === "QUOTE_STALE") await requote().catch(() => undefined);
        showError(err);
        return;
      }
    }
  } finally {
    placing = false;
    updateButtons();
  }
}

// ---- the order, live ---------------------------------------------------------------------------
const STATUS_TEXT: Record<number, string> = {
  [OrderStatus.PLACED]: "Placed",
  [OrderStatus.ACCEPTED]: "Accepted",
  [OrderStatus.IN_PREPARATION]: "In preparation",
  [OrderStatus.READY]: "Ready for pickup",
  [OrderStatus.COMPLETED]: "Completed",
  [OrderStatus.CANCELED]: "Canceled",
};

function showOrder(o: Order) {
  if (order?.orderId === o.orderId) return; // a duplicate click's replayed answer: already shown
  order = o;
  $("order").hidden = false;
  $("kitchen").hidden = false;
  $("order-id").textContent = o.orderId;
  renderOrder(o);
  updateButtons();
  void watchOrder(o.orderId);
}

function renderOrder(o: Order) {
  const status = $("order-status");
  status.textContent = STATUS_TEXT[o.status] ?? "Unknown";
  status.dataset.status = OrderStatus[o.status];
  $("order-total").textContent = formatMoney(o.totals?.total);
  $("order-history").replaceChildren(
    ...o.statusHistory.map((c) => h("li", { textContent: `${STATUS_TEXT[c.status] ?? c.status} ${c.changeTime ? new Date(Number(c.changeTime.seconds) * 1000).toLocaleTimeString() : ""}` })),
  );
  const next = STATUS_TEXT[o.status + 1];
  const advance = $<HTMLButtonElement>("kitchen-advance");
  advance.disabled = o.status >= OrderStatus.COMPLETED;
  advance.textContent = o.status < OrderStatus.COMPLETED && next ? `Mark ${next.toLowerCase()}` : "Done";
}

/** WatchOrder (server stream): the order now and after every change, until completed or canceled. */
async function watchOrder(orderId: string) {
  watch?.abort();
  const controller = new AbortController();
  watch = controller;
  for (let attempt = 0; attempt < 5 && !controller.signal.aborted; attempt++) {
    try {
      for await (const { order: o } of orders().watchOrder({ orderId }, { signal: controller.signal })) {
        if (o && order?.orderId === o.orderId) renderOrder(o);
        attempt = 0;
      }
      return; // the stream ends when the order is completed or canceled
    } catch (err) {
      if (controller.signal.aborted || ConnectError.from(err).code === Code.Canceled) return;
      if (!isAmbiguous(err)) return showError(err);
      await new Promise((r) => setTimeout(r, 500)); // reconnect
    }
  }
}

$("kitchen-advance").addEventListener("click", () =>
  guarded(async () => {
    const button = $<HTMLButtonElement>("kitchen-advance");
    button.disabled = true;
    try {
      const res = await bff.advanceKitchenOrder({ orderId: order!.orderId }, CALL);
      $("kitchen-status").textContent = `Kitchen: ${res.orderStatus.replace("ORDER_STATUS_", "").toLowerCase().replace("_", " ")}`;
    } finally {
      button.disabled = false;
    }
  }),
);

$("new-order").addEventListener("click", () =>
  guarded(async () => {
    resetOrder();
    if (session) await loadStart(start?.locationId ?? "");
  }),
);

function resetOrder() {
  watch?.abort();
  cart = undefined;
  quote = undefined;
  order = undefined;
  cartKey = undefined;
  $("order").hidden = true;
  $("kitchen").hidden = true;
  $("kitchen-status").textContent = "";
  $("cart-id").textContent = "";
  $<HTMLSelectElement>("tip-select").value = "0";
  renderQuote();
}

// For the e2e test and curious readers: the page's state without reaching into the DOM.
Object.assign(window, {
  commerceDemo: () => ({ cartId: cart?.cartId, quoteId: quote?.quoteId, orderId: order?.orderId, session }),
});
