// `npm run check -w @commerce/bff`: the BFF contract's gate. buf lint (STANDARD + COMMENTS, as the
// platform's contracts), regenerate into a temporary directory and compare with the committed
// src/gen (it must be current), then type-check the BFF with tsc --noEmit.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => resolve(root, "../../node_modules/.bin", name);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: "inherit" });

function files(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...files(path));
    else out.push(path);
  }
  return out;
}

console.log("check: buf lint");
run(bin("buf"), ["lint"]);

console.log("check: buf generate (fresh) vs src/gen");
const tmp = mkdtempSync(join(tmpdir(), "bff-gen-"));
try {
  run(bin("buf"), ["generate", "--output", tmp]);
  const fresh = join(tmp, "src/gen");
  const committed = join(root, "src/gen");
  const a = files(fresh).map((f) => relative(fresh, f)).sort();
  const b = files(committed).map((f) => relative(committed, f)).sort();
  const problems = [];
  for (const f of new Set([...a, ...b])) {
    if (!a.includes(f)) problems.push(`src/gen/${f}: committed but not generated (remove it)`);
    else if (!b.includes(f)) problems.push(`src/gen/${f}: generated but not committed`);
    else if (!readFileSync(join(fresh, f)).equals(readFileSync(join(committed, f)))) {
      problems.push(`src/gen/${f}: differs from what buf generate makes`);
    }
  }
  if (problems.length) {
    console.error(problems.join("\n"));
    console.error("check: run `npm run generate -w @commerce/bff` and commit src/gen");
    process.exit(1);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

console.log("check: tsc --noEmit");
// The BFF imports @commerce/api-client's dist/ (its package exports): build it when missing.
try {
  statSync(resolve(root, "../ts/dist/index.d.ts"));
} catch {
  run(bin("tsc"), ["-p", resolve(root, "../ts/tsconfig.json")]);
}
run(bin("tsc"), ["-p", "tsconfig.json", "--noEmit"]);
console.log("check: ok");
