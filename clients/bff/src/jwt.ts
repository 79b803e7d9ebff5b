// HS256 JWTs as the platform accepts them (docs/authentication.md): `sub`, `tenant`, `scope`
// (space separated), `exp`, `iat`; customer tokens add `customer_id` (and, for the BFF itself,
// `member_id`, which the platform ignores).
import { createHmac } from "node:crypto";

/** The scopes of a customer token: only what the customer-callable RPCs need. */
export const CUSTOMER_SCOPES = [
  "checkout.carts.read",
  "checkout.carts.write",
  "checkout.orders.read",
  "checkout.orders.write",
  "loyalty.members.read",
  "subscriptions.read",
  "subscriptions.write",
];

/** The scopes of the BFF's own staff token: seeding, enrolment, top-ups and the kitchen. */
export const STAFF_SCOPES = [
  "checkout.menu.write",
  "checkout.store.write",
  "checkout.orders.read",
  "loyalty.members.read",
  "loyalty.members.write",
  "loyalty.rewards.write",
  "loyalty.points.adjust",
];

export interface Claims {
  sub: string;
  tenant: string;
  scope: string;
  exp: number;
  iat?: number;
  customer_id?: string;
  member_id?: string;
}

const base64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** Signs `claims` with HS256. */
export function sign(claims: Claims, secret: string): string {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

/**
 * The claims of a token, decoded but NOT verified: the BFF forwards the token to the platform,
 * which verifies it on every call. The claims only pick what to ask for (tenant, member).
 */
export function decode(token: string): Claims | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8")) as Claims;
    return typeof claims === "object" && claims !== null ? claims : undefined;
  } catch {
    return undefined;
  }
}

/** A token for `subject` in `tenant` valid for `ttlSeconds`. */
export function mint(
  secret: string,
  tenant: string,
  subject: string,
  scopes: string[],
  ttlSeconds: number,
  extra: Partial<Claims> = {},
): { token: string; exp: number } {
  const iat = Math.floor(Date.now() / 1000);
  const exp = iat + ttlSeconds;
  return { token: sign({ sub: subject, tenant, scope: scopes.join(" "), exp, iat, ...extra }, secret), exp };
}
