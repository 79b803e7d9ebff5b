// The BFF's settings, from the environment (see README.md).
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface Config {
  host: string;
  port: number;
  /** The platform for the BFF's own gRPC calls. */
  commerceApi: string;
  /** The checkout service (menu, orders); defaults to `commerceApi`. */
  checkoutUrl: string;
  /** The loyalty service (members, points, rewards); defaults to `commerceApi`. */
  loyaltyUrl: string;
  /** The platform URL the browser calls (returned by SignIn); defaults to `commerceApi`. */
  publicApiUrl: string;
  jwtSecret: string;
  tenant: string;
  webDist: string;
  /** Seed the demo tenant on start (`BFF_SEED=0` skips it, e.g. for a second instance). */
  seed: boolean;
  /**
   * Serve `AdvanceKitchenOrder` (`BFF_DEMO_KITCHEN=1`): it moves any order of the tenant on with
   * the BFF's staff token and checks no caller, so it exists for the demo's kitchen panel only.
   */
  demoKitchen: boolean;
}

const here = dirname(fileURLToPath(import.meta.url));

export function config(env: NodeJS.ProcessEnv = process.env): Config {
  const commerceApi = trim(env.COMMERCE_API ?? "http://127.0.0.1:8080");
  return {
    host: env.BFF_HOST ?? "127.0.0.1",
    port: Number(env.BFF_PORT ?? 8787),
    commerceApi,
    checkoutUrl: trim(env.CHECKOUT_URL || commerceApi),
    loyaltyUrl: trim(env.LOYALTY_URL || commerceApi),
    publicApiUrl: trim(env.PUBLIC_API_URL || commerceApi),
    jwtSecret: env.COMMERCE_JWT_HS256_SECRET || "commerce-dev-secret-not-for-production",
    tenant: env.DEMO_TENANT || "web-demo",
    webDist: resolve(env.WEB_DIST || resolve(here, "../../web/dist")),
    seed: env.BFF_SEED !== "0",
    demoKitchen: env.BFF_DEMO_KITCHEN === "1",
  };
}

function trim(url: string): string {
  return url.replace(/\/+$/, "");
}
