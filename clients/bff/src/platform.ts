// The BFF's clients of the platform: gRPC (HTTP/2) per service URL, so checkout and loyalty can
// be pointed at different places (CHECKOUT_URL, LOYALTY_URL).
import { createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  MemberService,
  MenuService,
  OrderService,
  PointsService,
  RewardService,
} from "@commerce/api-client";
import type { Config } from "./config.js";

export interface Platform {
  menu: Client<typeof MenuService>;
  orders: Client<typeof OrderService>;
  members: Client<typeof MemberService>;
  points: Client<typeof PointsService>;
  rewards: Client<typeof RewardService>;
}

export function platform(config: Config): Platform {
  const checkout = createGrpcTransport({ baseUrl: config.checkoutUrl });
  const loyalty =
    config.loyaltyUrl === config.checkoutUrl ? checkout : createGrpcTransport({ baseUrl: config.loyaltyUrl });
  return {
    menu: createClient(MenuService, checkout),
    orders: createClient(OrderService, checkout),
    members: createClient(MemberService, loyalty),
    points: createClient(PointsService, loyalty),
    rewards: createClient(RewardService, loyalty),
  };
}

/** What every platform call of one incoming request carries. */
export interface Outgoing {
  /** The incoming request's id (kept or generated), sent as `x-request-id`. */
  requestId: string;
  /** Milliseconds left of the incoming deadline. */
  timeoutMs: number;
  /** Aborts when the incoming call is canceled or its deadline passes. */
  signal?: AbortSignal;
}

/** Call options: the caller's deadline and cancellation, the request id, and optional headers. */
export function options(out: Outgoing, headers: Record<string, string> = {}): CallOptions {
  return {
    timeoutMs: Math.max(1, out.timeoutMs),
    signal: out.signal,
    headers: { "x-request-id": out.requestId, ...headers },
  };
}

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
