import assert from "node:assert/strict";
import fc from "fast-check";
import { Sha256, sha256, toHex } from "../core/sha256.ts";

Deno.test("sha256 equals WebCrypto's SHA-256 for any bytes fed in any pieces", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ maxLength: 700 }),
      fc.array(fc.nat(700), { maxLength: 6 }),
      async (bytes, cuts) => {
        const want = toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
        const h = new Sha256();
        let at = 0;
        for (const c of [...cuts].sort((a, b) => a - b)) {
          const end = Math.min(c, bytes.length);
          if (end < at) continue;
          h.update(bytes.subarray(at, end));
          at = end;
        }
        h.update(bytes.subarray(at));
        assert.equal(h.digest(), want);
      },
    ),
    { numRuns: 300, seed: 7 },
  );
  assert.equal(
    sha256("abc"),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
});
