/**
 * The browser suite's own parts, checked in Deno: the `node:assert/strict` stand-in agrees with
 * Node's on random values (deep equality, throws/rejects matching), and every Deno-only test file
 * it skips exists, with a reason.
 */
import fc from "fast-check";
import nodeAssert from "node:assert/strict";
import shim, { difference } from "./browser/assert.ts";
import { browserTestFiles, DENO_ONLY } from "./browser/run.ts";
import { bundleForBrowser } from "./browser/page.ts";

const nodeDeepEqual = (a: unknown, b: unknown) => {
  try {
    nodeAssert.deepEqual(a, b);
    return true;
  } catch {
    return false;
  }
};

// Values the tests compare: JSON-like trees, typed arrays, Maps, Sets, NaN and -0.
const valueArb = fc.letrec((tie) => ({
  leaf: fc.oneof(
    fc.integer({ min: -3, max: 3 }),
    fc.constantFrom(0, -0, NaN, Infinity, 0.5, "a", "b", "", true, false, null, undefined),
    fc.float32Array({ maxLength: 3 }),
    fc.int32Array({ maxLength: 3 }),
  ),
  node: fc.oneof(
    { depthSize: "small" },
    tie("leaf"),
    fc.array(tie("node"), { maxLength: 3 }),
    fc.dictionary(fc.constantFrom("x", "y", "z"), tie("node"), { maxKeys: 3 }),
    fc.array(fc.tuple(fc.constantFrom("k", "l"), tie("leaf")), { maxLength: 2 }).map((e) =>
      new Map(e)
    ),
    fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }).map((e) => new Set(e)),
  ),
})).node;

Deno.test("browser assert: deepEqual agrees with node:assert/strict on random values and their near copies", () => {
  fc.assert(
    fc.property(valueArb, valueArb, (a, b) => {
      const copy = structuredClone(a);
      for (const [x, y] of [[a, b], [a, copy], [copy, a]]) {
        nodeAssert.equal(
          difference(x, y) === null,
          nodeDeepEqual(x, y),
          `${fc.stringify(x)} vs ${fc.stringify(y)}`,
        );
      }
    }),
    { numRuns: 2000, seed: 42 },
  );
});

Deno.test("browser assert: throws and rejects match like Node's (RegExp on String(error), class, properties, function)", async () => {
  const boom = () => {
    throw new RangeError("out of range: 7");
  };
  for (const impl of [nodeAssert, shim]) {
    impl.throws(boom, /RangeError: out of range/);
    impl.throws(boom, RangeError);
    impl.throws(boom, { message: /range: 7/ });
    impl.throws(boom, (e: unknown) => e instanceof RangeError);
    nodeAssert.throws(() => impl.throws(boom, /nothing like it/));
    nodeAssert.throws(() => impl.throws(boom, TypeError));
    nodeAssert.throws(() => impl.throws(() => {}));
    await impl.rejects(Promise.reject(new Error("no")), /no/);
    await nodeAssert.rejects(impl.rejects(Promise.resolve(1)));
    nodeAssert.throws(() => impl.equal(-0, 0));
    nodeAssert.throws(() => impl.ok(0, "zero"), /zero/);
    impl.match("abc", /b/);
    nodeAssert.throws(() => impl.match("abc", /d/));
  }
});

Deno.test("browser suite: every Deno-only test file exists and says why; the rest all run in Chromium", () => {
  const all = [...Deno.readDirSync(new URL(".", import.meta.url))]
    .filter((e) => e.isFile && e.name.endsWith("_test.ts")).map((e) => e.name).sort();
  for (const [file, why] of Object.entries(DENO_ONLY)) {
    nodeAssert.ok(all.includes(file), `DENO_ONLY names ${file}, which is not a test file`);
    nodeAssert.ok(why.length > 10, `${file} needs a reason`);
  }
  nodeAssert.deepEqual(browserTestFiles(), all.filter((f) => !(f in DENO_ONLY)));
});

Deno.test("the library's import path (mod.ts, io/mod.ts) uses no Deno API: its browser bundle never names Deno", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sltrain-bundle-" });
  try {
    const root = new URL("../", import.meta.url);
    await Deno.writeTextFile(
      `${dir}/entry.ts`,
      `export * from "${new URL("mod.ts", root).href}";\nexport * as io from "${
        new URL("io/mod.ts", root).href
      }";\n`,
    );
    await bundleForBrowser(`${dir}/entry.ts`, `${dir}/bundle.js`, dir);
    const code = await Deno.readTextFile(`${dir}/bundle.js`);
    const uses = [...code.matchAll(/\bDeno\.\w+/g)].map((m) => m[0]);
    nodeAssert.deepEqual([...new Set(uses)], [], "Deno APIs in the browser bundle");
    nodeAssert.ok(code.includes("navigator.gpu"), "the bundle is the library");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
