// hark.d.ts declares exactly what hark.js exports, and the SDK folder packs as an npm package.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const SDK = fileURLToPath(new URL("../../media/static/sdk/", import.meta.url));

test("the runtime exports of hark.js are the ones hark.d.ts declares", async () => {
  const module = await import(`${SDK}hark.js`);
  const declarations = readFileSync(`${SDK}hark.d.ts`, "utf8");
  const declared = [...declarations.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map(
    (match) => match[1],
  );
  assert.deepEqual(Object.keys(module).sort(), declared.sort());
});

test("HarkError carries the code and Hark's reason", async () => {
  const { HarkError } = await import(`${SDK}hark.js`);
  const error = new HarkError(401, "wrong bearer token");
  assert.ok(error instanceof Error);
  assert.equal(error.name, "HarkError");
  assert.equal(error.code, 401);
  assert.equal(error.reason, "wrong bearer token");
});

test("npm pack takes hark.js, core.js, the types and package.json, and nothing else", () => {
  const [packed] = JSON.parse(
    execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: SDK, encoding: "utf8" }),
  );
  assert.deepEqual(packed.files.map((file) => file.path).sort(), [
    "core.js",
    "hark.d.ts",
    "hark.js",
    "package.json",
  ]);
  const manifest = JSON.parse(readFileSync(`${SDK}package.json`, "utf8"));
  assert.equal(manifest.types, "./hark.d.ts");
  assert.equal(manifest.version, (/VERSION = "([^"]+)"/.exec(readFileSync(`${SDK}hark.js`, "utf8")) || [])[1]);
});
