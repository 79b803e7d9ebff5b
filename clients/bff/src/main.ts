// The BFF: StorefrontService (Connect, gRPC-web; node:http) and the page's static files on one
// port. Seeds the demo tenant on start. Settings: src/config.ts, README.md.
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { extname, join, normalize, sep } from "node:path";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { config as loadConfig } from "./config.js";
import { StorefrontService } from "./gen/commerce/bff/v1/storefront_pb.js";
import { platform as connectPlatform } from "./platform.js";
import { seed } from "./seed.js";
import { staffToken, storefront } from "./storefront.js";

const config = loadConfig();
const platform = connectPlatform(config);
const log = (line: string) => console.log(line);

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
};

/** The page's files from WEB_DIST; `/` is index.html. Anything outside WEB_DIST is 404. */
async function serveStatic(req: IncomingMessage, res: ServerResponse) {
  const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
  const file = normalize(join(config.webDist, path === "/" ? "index.html" : path));
  if ((req.method !== "GET" && req.method !== "HEAD") || !file.startsWith(config.webDist + sep)) {
    res.writeHead(404).end();
    return;
  }
  try {
    if (!(await stat(file)).isFile()) throw new Error("not a file");
    const body = await readFile(file);
    res.writeHead(200, {
      "content-type": TYPES[extname(file)] ?? "application/octet-stream",
      "cache-control": "no-cache",
    });
    res.end(req.method === "HEAD" ? undefined : body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" }).end(`not found: ${path}\n`);
  }
}

const handler = connectNodeAdapter({
  routes: (router) => router.service(StorefrontService, storefront(config, platform)),
  fallback: (req, res) => void serveStatic(req as IncomingMessage, res as ServerResponse),
});

const server = createServer((req, res) => {
  const started = Date.now();
  res.on("finish", () => {
    if (req.url?.startsWith("/commerce.bff.v1.")) {
      const id = res.getHeader("x-request-id") ?? "-";
      log(`bff: ${req.method} ${req.url.split("?")[0]} ${res.statusCode} request_id=${id} ${Date.now() - started}ms`);
    }
  });
  handler(req, res);
});

if (config.seed) {
  try {
    await seed(platform, config.tenant, () => staffToken(config), log);
  } catch (err) {
    console.error(`bff: seeding tenant ${config.tenant} on ${config.commerceApi} failed: ${String(err)}`);
    process.exit(1);
  }
}
server.listen(config.port, config.host, () => {
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : config.port;
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  log(`bff: listening on http://${host}:${port} (platform ${config.commerceApi}, tenant ${config.tenant})`);
});

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
