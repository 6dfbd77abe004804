/**
 * WGSL math with an accuracy that does not depend on the platform. WGSL lets `sin` and `cos`
 * be off by 2⁻¹¹ (absolute, on [-π, π]; nothing is promised outside), and implementations use
 * that room: Chromium's SwiftShader is off by 1.9e-4 on [-π, π] and 3.7e-4 up to 4096, where Mesa's
 * lavapipe is off by ~1e-7. RoPE takes sin and cos of position × frequency, angles in the
 * thousands, so the kernels that rotate call {@link SINCOS_WGSL}'s `sincos` instead.
 * @module
 */

/**
 * `fn sincos(x: f32) -> vec2<f32>`: (sin x, cos x) to within a few f32 ulps for |x| up to about
 * 10⁴ (Cody–Waite reduction by π/2 with π/4 split in three, exact in f32, then Cephes' minimax
 * polynomials on [-π/4, π/4]). Beyond that the reduction loses bits gradually.
 */
export const SINCOS_WGSL = `fn sincos(x: f32) -> vec2<f32> {
  let ax = abs(x);
  // |x|·4/pi truncated, then rounded up to even: z = |x| - j·pi/4 lies in [-pi/4, pi/4].
  let j = (u32(ax * 1.2732395447351628) + 1u) & 0xfffffffeu;
  let y = f32(j);
  let z = ((ax - y * 0.78515625) - y * 2.4187564849853515625e-4) - y * 3.77489497744594108e-8;
  let zz = z * z;
  let s = ((-1.9515295891e-4 * zz + 8.3321608736e-3) * zz - 1.6666654611e-1) * zz * z + z;
  let c = ((2.443315711809948e-5 * zz - 1.388731625493765e-3) * zz + 4.166664568298827e-2) *
    zz * zz - 0.5 * zz + 1.0;
  var r: vec2<f32>;
  switch ((j >> 1u) & 3u) {
    case 0u: { r = vec2<f32>(s, c); }
    case 1u: { r = vec2<f32>(c, -s); }
    case 2u: { r = vec2<f32>(-s, -c); }
    default: { r = vec2<f32>(-c, s); }
  }
  return vec2<f32>(select(r.x, -r.x, x < 0.0), r.y);
}`;
