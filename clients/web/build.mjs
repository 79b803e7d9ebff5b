// Bundles the page into dist/ (index.html + app.js). `npm run build -w @commerce/web`; needs
// `npm run build -w @commerce/api-client` first (the page imports its dist/).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const out = join(root, "dist");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(root, "src/main.ts")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  sourcemap: true,
  minify: process.env.MINIFY === "1",
  logLevel: "warning",
});
copyFileSync(join(root, "index.html"), join(out, "index.html"));
console.log(`web: built ${out}`);
