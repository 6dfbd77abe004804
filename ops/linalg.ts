/**
 * Float64 linear algebra on the CPU, for the small matrices of projector refreshes and weight
 * refactorization (read back once, decomposed here): symmetric eigendecomposition, Gram matrices,
 * top singular subspaces, QR and one-sided Jacobi SVD.
 * @module
 */
export {
  gram,
  qr,
  subspaceFromGram,
  svdJacobi,
  type SymEig,
  symEig,
  type TopSubspace,
  topSubspace,
} from "./svd.ts";
