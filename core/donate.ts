/**
 * Donation: a function that consumes a tensor may write its result into the tensor's own buffer,
 * so an optimizer step or an accumulation does not hold two copies of what it updates.
 * @module
 */
import { encodeCopy } from "./kernel.ts";
import { Tensor } from "./tensor.ts";

/**
 * Consumes `t` and returns a tensor with its contents that the caller owns alone and may overwrite
 * in place: `t`'s storage under a new handle when `t` was its only handle, otherwise (a view or a
 * tape still reads it, or it is a window of a larger storage) a copy. Either way `t` is disposed and must not be used again.
 */
export function donate(t: Tensor): Tensor {
  const handle = t.view(t.shape);
  t.dispose();
  // A pinned `t` defers its dispose and keeps its reference, so 1 means nobody else can see it.
  if (handle.storage.refs === 1 && handle.bytes === handle.storage.bytes) return handle;
  const copy = Tensor.empty(handle.shape, handle.dtype);
  encodeCopy(handle.storage.buffer, copy.storage.buffer, handle.bytes, 0, handle.offset);
  handle.dispose();
  return copy;
}
