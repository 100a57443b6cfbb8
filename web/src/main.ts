// The storefront: one page on the code buf generates from the contracts (gen/ts) and
// Connect-Web's gRPC-Web transport, served by the gateway at its own origin (no CORS, no CDN).
// The shopper's session lives in sessionStorage (this tab only) and is renewed with
// RenewToken before its access token expires; every call after sign-in carries it as
// `authorization: Bearer`. Failed calls show their decoded details: the ErrorInfo reason, and
// BadRequest field violations beside the field they belong to.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { BadRequestSchema, ErrorInfoSchema } from "../../gen/ts/google/rpc/error_details_pb.js";
import type { Money } from "../../gen/ts/shop/common/v1/money_pb.js";
import { InventoryService, type Product } from "../../gen/ts/shop/inventory/v1/inventory_pb.js";
import {
  type Notification,
  NotificationsService,
} from "../../gen/ts/shop/notifications/v1/notifications_pb.js";
import { type Order, OrdersService, OrderStatus } from "../../gen/ts/shop/orders/v1/orders_pb.js";
import { type Session, UsersService } from "../../gen/ts/shop/users/v1/users_pb.js";

const SESSION_KEY = "shopmesh.session";
// Renew this long before the access token expires (it lives 15 minutes).
const RENEW_EARLY_MS = 60_000;
const CALL_TIMEOUT_MS = 15_000;

interface Saved {
  accessToken: string;
  refreshToken: string;
  accessExpireMs: number;
  userId: string;
  email: string;
}

let session: Saved | null = load();
let renewTimer: number | undefined;
let watching: AbortController | null = null;
/** Where WatchNotifications says its stream starts (services/notifications/servicer.py). */
const WATCH_CURSOR_HEADER = "shop-watch-cursor";
let products: Product[] = [];
const cart = new Map<string, bigint>();

const withToken: Interceptor = (next) => (request) => {
  if (session) request.header.set("authorization", `Bearer ${session.accessToken}`);
  return next(request);
};
const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  interceptors: [withToken],
  defaultTimeoutMs: CALL_TIMEOUT_MS,
});
const users = createClient(UsersService, transport);
const inventory = createClient(InventoryService, transport);
const orders = createClient(OrdersService, transport);
const notifications = createClient(NotificationsService, transport);

/** A random idempotency key. Not crypto.randomUUID: it exists only on https and localhost,
 * and the storefront may be served over plain http elsewhere (a kind cluster's node port). */
function randomKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function $(selector: string): HTMLElement {
  const found = document.querySelector<HTMLElement>(selector);
  if (!found) throw new Error(`no ${selector} on the page`);
  return found;
}

function element(tag: string, text = "", className = ""): HTMLElement {
  const made = document.createElement(tag);
  made.textContent = text;
  if (className) made.className = className;
  return made;
}

function money(amount: Money | undefined): string {
  if (!amount) return "";
  const value = Number(amount.minorUnits) / 100;
  return new Intl.NumberFormat("en-US", { style: "currency", currency: amount.currencyCode }).format(
    value,
  );
}

/** The reason (ErrorInfo) and message of a failed call, as one readable line. */
function explain(cause: unknown): string {
  if (!(cause instanceof ConnectError)) return String(cause);
  const reasons = cause.findDetails(ErrorInfoSchema).map((info) => info.reason);
  return reasons.length ? `${cause.rawMessage} (${reasons.join(", ")})` : cause.rawMessage;
}

function banner(text: string): void {
  const shown = $("#banner");
  shown.textContent = text;
  shown.hidden = !text;
}

// --- the session -------------------------------------------------------------------------

function load(): Saved | null {
  const raw = sessionStorage.getItem(SESSION_KEY);
  const saved = raw ? (JSON.parse(raw) as Saved) : null;
  return saved && saved.accessExpireMs > Date.now() ? saved : null;
}

function keep(received: Session | undefined, email: string): void {
  if (!received) throw new Error("the gateway answered without a session");
  const expire = received.accessTokenExpireTime;
  session = {
    accessToken: received.accessToken,
    refreshToken: received.refreshToken,
    accessExpireMs: expire ? timestampMs(expire) : Date.now() + RENEW_EARLY_MS,
    userId: received.userId,
    email,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  scheduleRenewal();
}

function scheduleRenewal(): void {
  window.clearTimeout(renewTimer);
  if (!session) return;
  const delay = Math.max(1_000, session.accessExpireMs - Date.now() - RENEW_EARLY_MS);
  renewTimer = window.setTimeout(() => void renew(), delay);
}

async function renew(): Promise<void> {
  if (!session) return;
  try {
    const { email, refreshToken } = session;
    keep((await users.renewToken({ refreshToken })).session, email);
  } catch (cause) {
    signOut();
    banner(`Your session ended: ${explain(cause)}. Please sign in again.`);
  }
}

function signOut(): void {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  window.clearTimeout(renewTimer);
  watching?.abort();
  watching = null;
  showAccount();
}

// --- forms ---------------------------------------------------------------------------------

function clearErrors(form: HTMLFormElement): void {
  for (const small of form.querySelectorAll<HTMLElement>(".field-error")) small.textContent = "";
  for (const input of form.querySelectorAll("input")) input.removeAttribute("aria-invalid");
  $(`#${form.id} .form-error`).textContent = "";
}

/** Field violations beside their fields; anything else below the form. */
function showErrors(form: HTMLFormElement, cause: unknown): void {
  let placed = false;
  if (cause instanceof ConnectError) {
    for (const bad of cause.findDetails(BadRequestSchema)) {
      for (const violation of bad.fieldViolations) {
        const beside = form.querySelector<HTMLElement>(
          `.field-error[data-field="${violation.field}"]`,
        );
        if (!beside) continue;
        beside.textContent = violation.description;
        form.querySelector(`input[name="${violation.field}"]`)?.setAttribute("aria-invalid", "true");
        placed = true;
      }
    }
  }
  if (!placed) $(`#${form.id} .form-error`).textContent = explain(cause);
}

function field(form: HTMLFormElement, name: string): string {
  const input = form.elements.namedItem(name);
  return input instanceof HTMLInputElement ? input.value.trim() : "";
}

async function submit(form: HTMLFormElement, action: () => Promise<void>): Promise<void> {
  clearErrors(form);
  const button = form.querySelector("button");
  if (button) button.disabled = true;
  try {
    await action();
    form.reset();
  } catch (cause) {
    showErrors(form, cause);
  } finally {
    if (button) button.disabled = false;
  }
}

async function signIn(email: string, password: string): Promise<void> {
  keep((await users.signIn({ email, password })).session, email);
  banner("");
  showAccount();
}

function wireForms(): void {
  const up = $("#sign-up") as HTMLFormElement;
  up.addEventListener("submit", (event) => {
    event.preventDefault();
    void submit(up, async () => {
      const email = field(up, "email");
      const password = field(up, "password");
      await users.createUser({
        requestId: randomKey(),
        email,
        displayName: field(up, "display_name"),
        password,
      });
      await signIn(email, password);
    });
  });
  const inForm = $("#sign-in") as HTMLFormElement;
  inForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void submit(inForm, () => signIn(field(inForm, "email"), field(inForm, "password")));
  });
  $("#sign-out").addEventListener("click", signOut);
}

function showAccount(): void {
  $("#auth").hidden = session !== null;
  $("#signed-in").hidden = session === null;
  $("#who").textContent = session?.email ?? "";
  renderCart();
  if (session) {
    void refreshOrders();
    watch();
  } else {
    $("#orders").replaceChildren(row([element("td", "Sign in to see your orders", "muted")]));
    $("#notifications").replaceChildren(element("li", "Sign in to follow your orders", "muted"));
    $("#live").textContent = "";
  }
}

// --- products and cart ---------------------------------------------------------------------

async function refreshProducts(): Promise<void> {
  try {
    products = (await inventory.listProducts({ pageSize: 50 })).products;
  } catch (cause) {
    $("#products").replaceChildren(element("p", `Could not load products: ${explain(cause)}`, "bad"));
    return;
  }
  $("#products").replaceChildren(...products.map(productCard));
}

function productCard(product: Product): HTMLElement {
  const card = element("article", "", "product");
  card.dataset.sku = product.sku;
  const stock = product.availableQuantity;
  const add = element("button", "Add to cart") as HTMLButtonElement;
  add.disabled = stock <= 0n;
  add.addEventListener("click", () => {
    cart.set(product.sku, (cart.get(product.sku) ?? 0n) + 1n);
    renderCart();
  });
  card.append(
    element("h3", product.name),
    element("p", product.description),
    element("span", money(product.price), "price"),
    element("span", stock > 0n ? `${stock} in stock` : "Sold out", stock < 5n ? "stock low" : "stock"),
    add,
  );
  return card;
}

function renderCart(): void {
  const list = $("#cart-items");
  if (cart.size === 0) {
    list.replaceChildren(element("li", "Empty", "muted"));
  } else {
    list.replaceChildren(
      ...[...cart].map(([sku, quantity]) => {
        const product = products.find((p) => p.sku === sku);
        const item = element("li");
        const remove = element("button", "Remove", "small");
        remove.addEventListener("click", () => {
          cart.delete(sku);
          renderCart();
        });
        item.append(element("span", `${quantity} × ${product?.name ?? sku}`), remove);
        return item;
      }),
    );
  }
  let cents = 0n;
  let currency = "USD";
  for (const [sku, quantity] of cart) {
    const price = products.find((p) => p.sku === sku)?.price;
    if (price) {
      cents += price.minorUnits * quantity;
      currency = price.currencyCode;
    }
  }
  $("#cart-total").textContent = cart.size ? `Total ${money({ currencyCode: currency, minorUnits: cents } as Money)}` : "";
  const checkout = $("#checkout") as HTMLButtonElement;
  checkout.disabled = cart.size === 0 || session === null;
  checkout.title = session === null ? "Sign in to check out" : "";
}

/** Why an order was REJECTED, in words (the shortage names what is left). */
function rejection(order: Order): string {
  if (order.rejectionReason === "INSUFFICIENT_STOCK") {
    const short = order.items
      .map((item) => ({ item, product: products.find((p) => p.sku === item.sku) }))
      .filter(({ item, product }) => product && product.availableQuantity < item.quantity)
      .map(({ item, product }) => `${product?.name}: ${product?.availableQuantity} left, ${item.quantity} ordered`);
    return `Not enough stock${short.length ? ` (${short.join("; ")})` : ""}`;
  }
  const words: Record<string, string> = {
    CARD_DECLINED: "The card was declined",
    PAYMENT_TOKEN_INVALID: "The card is not valid",
    PRODUCT_NOT_FOUND: "A product is no longer sold",
  };
  return `${words[order.rejectionReason] ?? "Rejected"} (${order.rejectionReason})`;
}

async function checkout(): Promise<void> {
  if (!session) return;
  const result = $("#checkout-result");
  const button = $("#checkout") as HTMLButtonElement;
  button.disabled = true;
  result.className = "";
  result.textContent = "Placing your order…";
  try {
    const { order } = await orders.placeOrder({
      idempotencyKey: randomKey(),
      userId: session.userId,
      items: [...cart].map(([sku, quantity]) => ({ sku, quantity })),
      paymentToken: ($("#payment-token") as HTMLSelectElement).value,
    });
    if (!order) throw new Error("the gateway answered without an order");
    await refreshProducts();
    if (order.status === OrderStatus.REJECTED) {
      result.className = "bad";
      result.textContent = rejection(order);
    } else {
      result.className = "good";
      result.textContent = `Order ${order.orderId} ${OrderStatus[order.status]} · ${money(order.total)}`;
      cart.clear();
    }
  } catch (cause) {
    result.className = "bad";
    result.textContent = explain(cause);
  }
  renderCart();
  await refreshOrders();
}

// --- orders and notifications -------------------------------------------------------------

function row(cells: HTMLElement[]): HTMLElement {
  const made = element("tr");
  made.append(...cells);
  return made;
}

async function refreshOrders(): Promise<void> {
  if (!session) return;
  let listed: Order[];
  try {
    listed = (await orders.listOrders({ userId: session.userId, pageSize: 20 })).orders;
  } catch (cause) {
    $("#orders").replaceChildren(row([element("td", explain(cause), "bad")]));
    return;
  }
  if (!listed.length) {
    $("#orders").replaceChildren(row([element("td", "No orders yet", "muted")]));
    return;
  }
  $("#orders").replaceChildren(
    ...listed.map((order) => {
      const status = OrderStatus[order.status];
      const action = element("td");
      // Only a CONFIRMED order can be cancelled (orders refuses the rest ORDER_NOT_CANCELLABLE).
      if (order.status === OrderStatus.CONFIRMED) {
        const cancel = element("button", "Cancel", "small");
        cancel.addEventListener("click", () => void cancelOrder(order.orderId));
        action.append(cancel);
      }
      const made = row([
        element("td", order.orderId),
        element("td", order.items.map((i) => `${i.quantity} × ${i.sku}`).join(", ")),
        element("td", money(order.total)),
        element("td", status, `status ${status}`),
        element("td", order.status === OrderStatus.REJECTED ? rejection(order) : order.cancelReason, "muted"),
        action,
      ]);
      made.dataset.orderId = order.orderId;
      return made;
    }),
  );
}

async function cancelOrder(orderId: string): Promise<void> {
  try {
    await orders.cancelOrder({ orderId, reason: "cancelled by the shopper" });
  } catch (cause) {
    banner(`Could not cancel ${orderId}: ${explain(cause)}`);
  }
  await Promise.all([refreshOrders(), refreshProducts()]);
}

function showNotification(notification: Notification): void {
  const list = $("#notifications");
  list.querySelector(".muted")?.remove();
  const item = element("li");
  item.dataset.orderId = notification.orderId;
  item.append(element("strong", notification.title), element("small", notification.body));
  list.prepend(item);
}

/** Follow the shopper's notifications for as long as they are signed in, reconnecting with
 * backoff when the stream ends (a restart of the mesh, a network change). A reconnect resumes
 * from the last cursor the stream gave (its first one comes in the shop-watch-cursor header),
 * so nothing stored meanwhile is missed and nothing is shown twice, whichever replica answers. */
function watch(): void {
  if (watching || !session) return;
  const abort = new AbortController();
  watching = abort;
  void (async () => {
    let backoff = 500;
    let cursor = "";
    while (!abort.signal.aborted && session) {
      try {
        $("#live").textContent = "· live";
        for await (const message of notifications.watchNotifications(
          { userId: session.userId, resumeCursor: cursor },
          {
            signal: abort.signal,
            timeoutMs: 0,
            onHeader: (headers) => {
              cursor ||= headers.get(WATCH_CURSOR_HEADER) ?? "";
            },
          },
        )) {
          backoff = 500;
          cursor = message.cursor || cursor;
          if (message.notification) showNotification(message.notification);
          void refreshOrders();
        }
      } catch (cause) {
        if (abort.signal.aborted) return;
        if (cause instanceof ConnectError && cause.code === Code.Unauthenticated) await renew();
        // A cursor this database does not know (it was reset): start from now instead.
        if (cause instanceof ConnectError && cause.code === Code.InvalidArgument) cursor = "";
      }
      $("#live").textContent = "· reconnecting";
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10_000);
    }
  })();
}

wireForms();
$("#checkout").addEventListener("click", () => void checkout());
scheduleRenewal();
void refreshProducts().then(showAccount);
