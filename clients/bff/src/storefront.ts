// StorefrontService: sign-in, the aggregated start page, and the demo kitchen.
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { OrderStatus, type MenuItem as PlatformMenuItem, type Money } from "@commerce/api-client";
import {
  KitchenStatus,
  StorefrontService,
  type MenuItem,
  type Price,
  PriceSchema,
} from "./gen/commerce/bff/v1/storefront_pb.js";
import type { Config } from "./config.js";
import { CUSTOMER_SCOPES, STAFF_SCOPES, decode, mint } from "./jwt.js";
import { bearer, options, type Outgoing, type Platform } from "./platform.js";
import { DEMO_CUSTOMERS, enrol } from "./seed.js";

/** The deadline of platform calls when the page sends none. */
const DEFAULT_TIMEOUT_MS = 2_000;
/** Customer tokens live 15 minutes. */
const CUSTOMER_TOKEN_SECONDS = 15 * 60;

/** The request id of an incoming call: the caller's when well-formed (as the platform keeps it), else new. */
export function requestId(ctx: HandlerContext): string {
  const given = ctx.requestHeader.get("x-request-id");
  const id = given && /^[\x21-\x7e]{1,128}$/.test(given) ? given : randomUUID();
  ctx.responseHeader.set("x-request-id", id);
  return id;
}

/** What the platform calls made for `ctx` carry: its request id, remaining deadline and signal. */
function outgoing(ctx: HandlerContext): Outgoing {
  return { requestId: requestId(ctx), timeoutMs: ctx.timeoutMs() ?? DEFAULT_TIMEOUT_MS, signal: ctx.signal };
}

export function staffToken(config: Config): string {
  return mint(config.jwtSecret, config.tenant, "service:web-demo-bff", STAFF_SCOPES, 5 * 60).token;
}

export function storefront(config: Config, platform: Platform): ServiceImpl<typeof StorefrontService> {
  return {
    async signIn(req, ctx) {
      const out = outgoing(ctx);
      const displayName = DEMO_CUSTOMERS[req.customerId];
      if (!displayName) {
        throw new ConnectError(`no demo customer "${req.customerId}"`, Code.NotFound);
      }
      const { memberId } = await enrol(platform, config.tenant, staffToken(config), req.customerId, out);
      const { token, exp } = mint(
        config.jwtSecret,
        config.tenant,
        `customer:${req.customerId}`,
        CUSTOMER_SCOPES,
        CUSTOMER_TOKEN_SECONDS,
        { customer_id: req.customerId, member_id: memberId },
      );
      return {
        customerToken: token,
        memberId,
        tenant: config.tenant,
        apiUrl: config.publicApiUrl,
        customerId: req.customerId,
        displayName,
        expireTimeSeconds: BigInt(exp),
      };
    },

    async startPage(req, ctx) {
      const out = outgoing(ctx);
      const token = (ctx.requestHeader.get("authorization") ?? "").replace(/^Bearer\s+/i, "");
      const claims = token ? decode(token) : undefined;
      if (!claims?.tenant || !claims.member_id) {
        throw new ConnectError("sign in first: no customer token", Code.Unauthenticated);
      }
      // Public reads name their tenant; the member's own reads carry the customer's token (the
      // platform verifies it and, with customer scopes, shows only the customer's own member).
      const pub = options(out, { "commerce-tenant": claims.tenant });
      const own = options(out, bearer(token));
      const locations = platform.menu.listLocations({ pageSize: 50 }, pub).then((r) => r.locations);
      const locationId = req.locationId
        ? Promise.resolve(req.locationId)
        : locations.then((l) => l[0]?.locationId ?? "");
      const menu = locationId.then((id) =>
        id ? platform.menu.listMenuItems({ locationId: id, pageSize: 100 }, pub).then((r) => r.items) : [],
      );
      const balance = platform.members.getBalance({ memberId: claims.member_id }, own).then((r) => r.balance);
      const rewards = platform.rewards.listRewards({ pageSize: 50 }, own).then((r) => r.rewards);
      const [locs, id, items, bal, rews] = await Promise.all([locations, locationId, menu, balance, rewards]);
      const available = bal?.availablePoints ?? 0n;
      return {
        locations: locs.map((l) => ({
          locationId: l.locationId,
          displayName: l.displayName,
          currencyCode: l.currencyCode,
        })),
        locationId: id,
        menuItems: items.map(menuItem),
        balance: {
          memberId: claims.member_id,
          availablePoints: available,
          heldPoints: bal?.heldPoints ?? 0n,
        },
        rewards: rews
          .filter((r) => r.active)
          .map((r) => ({
            rewardId: r.rewardId,
            displayName: r.displayName,
            description: r.description,
            pointCost: r.pointCost,
            affordable: available >= r.pointCost,
          })),
      };
    },

    async advanceKitchenOrder(req, ctx) {
      if (!config.demoKitchen) {
        throw new ConnectError("the demo kitchen is off (BFF_DEMO_KITCHEN=1 turns it on)", Code.PermissionDenied);
      }
      const out = outgoing(ctx);
      const auth = bearer(staffToken(config));
      let target: OrderStatus;
      if (req.status === KitchenStatus.UNSPECIFIED) {
        const { order } = await platform.orders.getOrder({ orderId: req.orderId }, options(out, auth));
        const current = order?.status ?? OrderStatus.UNSPECIFIED;
        if (current < OrderStatus.PLACED || current >= OrderStatus.COMPLETED) {
          throw new ConnectError(`order is ${OrderStatus[current]}: nothing to advance`, Code.FailedPrecondition);
        }
        target = current + 1;
      } else {
        target = req.status + 1; // KitchenStatus.ACCEPTED (1) is OrderStatus.ACCEPTED (2), and so on
      }
      const { order } = await platform.orders.advanceOrderStatus(
        { orderId: req.orderId, status: target },
        options(out, auth),
      );
      return { orderId: req.orderId, orderStatus: `ORDER_STATUS_${OrderStatus[order?.status ?? 0]}` };
    },
  };
}

function price(money: Money | undefined, currency: string): Price {
  return create(PriceSchema, {
    currencyCode: money?.currencyCode || currency,
    amountMinor: money?.amountMinor ?? 0n,
  });
}

function menuItem(item: PlatformMenuItem): MenuItem {
  const currency = item.basePrice?.currencyCode ?? "USD";
  return {
    $typeName: "commerce.bff.v1.MenuItem",
    itemId: item.itemId,
    sku: item.sku,
    displayName: item.displayName,
    description: item.description,
    price: price(item.basePrice, currency),
    modifierGroups: item.modifierGroups.map((g) => ({
      $typeName: "commerce.bff.v1.ModifierGroup",
      groupId: g.groupId,
      displayName: g.displayName,
      minSelections: g.minSelections,
      maxSelections: g.maxSelections,
      options: g.options.map((o) => ({
        $typeName: "commerce.bff.v1.ModifierOption",
        optionId: o.optionId,
        displayName: o.displayName,
        price: price(o.price, currency),
        defaultSelected: o.defaultSelected,
        available: o.available,
      })),
    })),
  };
}
