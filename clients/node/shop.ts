// A shopper's whole visit through the gateway, in TypeScript on the code buf generates from the
// contracts (gen/ts) and Connect for Node (gRPC over HTTP/2): sign up, sign in, list products,
// watch notifications, place an order, and wait for the order's notification. A failed call
// prints its status and decoded error details and ends the run. Usage: clients/node/README.md.
import { randomBytes, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import type { Money } from "../../gen/ts/shop/common/v1/money_pb.js";
import { InventoryService, type Product } from "../../gen/ts/shop/inventory/v1/inventory_pb.js";
import {
  type Notification,
  NotificationsService,
} from "../../gen/ts/shop/notifications/v1/notifications_pb.js";
import { OrdersService, OrderStatus } from "../../gen/ts/shop/orders/v1/orders_pb.js";
import { UsersService } from "../../gen/ts/shop/users/v1/users_pb.js";
import { describeFailure } from "./errors.ts";
import { Watch } from "./watch.ts";

const USAGE = `usage: node clients/node/shop.ts [GATEWAY] [options]

  GATEWAY                 host:port of the mesh's gateway (default 127.0.0.1:8080)
  --email EMAIL           the account to sign up (default: a new shopper-<random>@example.com)
  --password PASSWORD     its password (default: a random one)
  --sku SKU               the product to buy (default: the first one in stock)
  --quantity N            how many (default 1)
  --payment-token TOKEN   a test card token (default tok_visa; tok_chargeDeclined declines)
  --wait SECONDS          how long to wait for the order's notification (default 30)`;

// Every unary call's deadline; PlaceOrder's route budget at the gateway is 10 s.
const CALL_TIMEOUT_MS = 15_000;

/** Adds `authorization: Bearer <token>` to every call once the shopper has signed in. */
class Credentials {
  accessToken = "";

  readonly interceptor: Interceptor = (next) => (request) => {
    if (this.accessToken) request.header.set("authorization", `Bearer ${this.accessToken}`);
    return next(request);
  };
}

/** Thrown by a step that could not finish: what to print, and the exit status. */
class Failure extends Error {
  readonly lines: string[];
  readonly exitCode: number;

  constructor(lines: string[], exitCode: number) {
    super(lines[0]);
    this.lines = lines;
    this.exitCode = exitCode;
  }
}

/** Runs `call` as `step`; a failed call becomes a Failure carrying its decoded details. */
async function step<T>(name: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (cause) {
    throw new Failure(describeFailure(name, cause), 1);
  }
}

/** "USD 12.99", with as many decimals as the currency has minor units (JPY none). */
function money(amount: Money | undefined): string {
  if (!amount) return "-";
  const digits = new Intl.NumberFormat("en", { style: "currency", currency: amount.currencyCode })
    .resolvedOptions().maximumFractionDigits ?? 2;
  return `${amount.currencyCode} ${(Number(amount.minorUnits) / 10 ** digits).toFixed(digits)}`;
}

function parseArguments(argv: string[]) {
  try {
    return readArguments(argv);
  } catch (error) {
    if (error instanceof Failure) throw error;
    throw new Failure([String(error instanceof Error ? error.message : error), USAGE], 2);
  }
}

function readArguments(argv: string[]) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      email: { type: "string", default: `shopper-${randomBytes(4).toString("hex")}@example.com` },
      password: { type: "string", default: randomBytes(18).toString("base64url") },
      sku: { type: "string" },
      quantity: { type: "string", default: "1" },
      "payment-token": { type: "string", default: "tok_visa" },
      wait: { type: "string", default: "30" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help || positionals.length > 1) throw new Failure([USAGE], values.help ? 0 : 2);
  const quantity = Number.parseInt(values.quantity, 10);
  const wait = Number.parseFloat(values.wait);
  if (!(quantity > 0) || !(wait > 0)) throw new Failure([USAGE], 2);
  return { ...values, quantity, wait, gateway: positionals[0] ?? "127.0.0.1:8080" };
}

async function visit(argv: string[]): Promise<void> {
  const options = parseArguments(argv);
  const baseUrl = `http://${options.gateway}`;
  const credentials = new Credentials();
  // Our own session manager, so the connection is closed when the visit ends (else Node would
  // wait for it to idle out).
  const sessions = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager: sessions,
    interceptors: [credentials.interceptor],
    defaultTimeoutMs: CALL_TIMEOUT_MS,
  });
  const users = createClient(UsersService, transport);
  const inventory = createClient(InventoryService, transport);
  const orders = createClient(OrdersService, transport);
  const notifications = createClient(NotificationsService, transport);
  let watch: Watch | undefined;
  try {
    console.log(`gateway ${options.gateway}`);
    const { user } = await step("CreateUser", () =>
      users.createUser({
        requestId: randomUUID(),
        email: options.email,
        displayName: "Node client",
        password: options.password,
      }),
    );
    console.log(`signed up ${user?.email} as ${user?.userId}`);
    const { session } = await step("SignIn", () =>
      users.signIn({ email: options.email, password: options.password }),
    );
    credentials.accessToken = session?.accessToken ?? "";
    const expiry = session?.accessTokenExpireTime;
    const until = expiry ? timestampDate(expiry).toISOString() : "?";
    console.log(`signed in (access token until ${until})`);

    const { products } = await step("ListProducts", () => inventory.listProducts({ pageSize: 50 }));
    for (const product of products) {
      const { sku, name, price, availableQuantity } = product;
      console.log(`  ${sku}  ${name}  ${money(price)}  stock ${availableQuantity}`);
    }
    const product = pick(products, options.sku, options.quantity);

    // Watch first: every notification created after the stream's headers arrive is delivered.
    // Its deadline covers placing the order and the wait for its notification.
    const timeoutMs = CALL_TIMEOUT_MS + options.wait * 1000;
    watch = new Watch((signal, onHeader) =>
      notifications.watchNotifications({}, { signal, onHeader, timeoutMs }),
    );
    await step("WatchNotifications", () => watch!.subscribed);
    console.log("watching notifications");

    const { order } = await step("PlaceOrder", () =>
      orders.placeOrder({
        idempotencyKey: randomUUID(),
        userId: session?.userId ?? "",
        items: [{ sku: product.sku, quantity: BigInt(options.quantity) }],
        paymentToken: options["payment-token"],
        currencyCode: product.price?.currencyCode ?? "USD",
      }),
    );
    if (!order) throw new Failure(["PlaceOrder answered without an order"], 1);
    const outcome = order.rejectionReason ? ` (${order.rejectionReason})` : "";
    const status = OrderStatus[order.status];
    console.log(`order ${order.orderId} ${status}${outcome}, total ${money(order.total)}`);

    const notification = await step("WatchNotifications", () =>
      watch!.notificationFor(order.orderId, options.wait * 1000),
    );
    console.log(`notification ${show(notification)}`);
  } finally {
    watch?.stop();
    sessions.abort();
  }
}

function pick(products: Product[], sku: string | undefined, quantity: number): Product {
  const found = sku
    ? products.find((product) => product.sku === sku)
    : products.find((product) => product.availableQuantity >= BigInt(quantity));
  if (!found) {
    throw new Failure([sku ? `no product ${sku} in the catalog` : "nothing is in stock"], 1);
  }
  return found;
}

function show(notification: Notification): string {
  const { notificationId, orderId, title, body } = notification;
  return `${notificationId} for ${orderId}: ${title}: ${body}`;
}

try {
  await visit(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof Failure)) throw error;
  (error.exitCode === 0 ? console.log : console.error)(error.lines.join("\n"));
  process.exitCode = error.exitCode;
}
