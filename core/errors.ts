/**
 * Error types thrown by sltrain. Each names the offending op, shape or limit so a failure can be
 * traced without a debugger.
 * @module
 */

// Each class states its name: a minified bundle renames classes, and `name` is what users read.

/** Base class of every error sltrain throws on purpose. */
export class SLTrainError extends Error {
  /** Error class name. */
  override name: string = "SLTrainError";
}

/** Operands have incompatible shapes, or an axis/size argument is out of range. */
export class ShapeError extends SLTrainError {
  /** Error class name. */
  override name = "ShapeError";
}

/** An op received a tensor of a dtype it does not support. */
export class DTypeError extends SLTrainError {
  /** Error class name. */
  override name = "DTypeError";
}

/** A tensor or binding exceeds a limit of the GPU device (buffer size, binding size, dispatch size). */
export class DeviceLimitError extends SLTrainError {
  /** Error class name. */
  override name = "DeviceLimitError";
}

/** WebGPU is missing, the device was lost, or the GPU reported a validation/out-of-memory error. */
export class DeviceError extends SLTrainError {
  /** Error class name. */
  override name = "DeviceError";
}

/** Gradient requested for something that is not differentiable (non-scalar output, tensor off the tape). */
export class GradientError extends SLTrainError {
  /** Error class name. */
  override name = "GradientError";
}

/** A tensor was used after `dispose()`. */
export class DisposedError extends SLTrainError {
  /** Error class name. */
  override name = "DisposedError";
}

/** A value that must be finite (a loss, a gradient, a tensor about to be checkpointed) is NaN or ±Infinity. */
export class NonFiniteError extends SLTrainError {
  /** Error class name. */
  override name = "NonFiniteError";
}
