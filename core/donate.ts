/**
 * Donation: a function that consumes a tensor may write its result into the tensor's own buffer,
 * so an optimizer step or an accumulation does not hold two copies of what it updates.
 * @module
 */
import { SLTrainError } from "./errors.ts";
import { encodeCopy } from "./kernel.ts";
import { Tensor } from "./tensor.ts";

// Windows whose owner lets in-place kernels write into them (see inPlaceWindow).
const inPlace = new WeakSet<Tensor>();

/** True when `t` is the only handle to its whole storage: writing into it changes nothing else. */
export function ownedAlone(t: Tensor): boolean {
  return t.storage.refs === 1 && t.bytes === t.storage.bytes;
}

/**
 * Consumes `t` and returns a tensor with its contents that the caller owns alone and may overwrite
 * in place: `t`'s storage under a new handle when `t` was its only handle (or an
 * {@link inPlaceWindow}), otherwise (a view or a tape still reads it, or it is a window of a
 * larger storage) a copy. Either way `t` is disposed and must not be used again.
 */
export function donate(t: Tensor): Tensor {
  const handle = t.view(t.shape);
  const window = inPlace.has(t);
  t.dispose();
  if (window) {
    inPlace.add(handle);
    return handle;
  }
  // A pinned `t` defers its dispose and keeps its reference, so 1 means nobody else can see it.
  if (ownedAlone(handle)) return handle;
  const copy = Tensor.empty(handle.shape, handle.dtype);
  encodeCopy(handle.storage.buffer, copy.storage.buffer, handle.bytes, 0, handle.offset);
  handle.dispose();
  return copy;
}

/**
 * Elements `[start, start + count)` of `t` (flattened) as a window that {@link donate} hands back
 * as it is instead of copying, so in-place kernels write straight into `t`'s buffer: how the sole
 * owner of `t` (e.g. an optimizer updating a parameter and its moments block of rows by block of
 * rows) updates it a window at a time. Throws when `t` is not {@link ownedAlone} (dispose every
 * earlier window first). The start must be aligned for kernels (see `core/windows.ts`).
 */
export function inPlaceWindow(t: Tensor, start: number, count: number): Tensor {
  if (!ownedAlone(t)) {
    throw new SLTrainError(
      `inPlaceWindow: the tensor [${t.shape}] ${t.dtype} has other handles or is a window itself`,
    );
  }
  const flat = t.view([t.size]);
  const window = flat.rows(start, count);
  flat.dispose();
  inPlace.add(window);
  return window;
}
