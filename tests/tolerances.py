"""Float tolerances derived from the computation, not fitted to one machine's output.

float32 results differ in their last bits between x86-64 CPUs: the SIMD width (AVX2 against
AVX-512) changes the order in which XLA's reductions and matrix products add, and whether a
multiply and an add are fused. A tolerance read off one machine's error (atol=2e-6 because
this CPU gave 1.8e-6) fails on the next one. Derive it instead, with `float32_tolerance`.

Import it as `from tolerances import float32_tolerance`: tests/ is not a package, and pytest's
default (prepend) import mode puts tests/ on sys.path for conftest.py and the test modules,
in every xdist worker alike.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)   # 1.19e-7: the spacing of float32 numbers at 1.0


def float32_tolerance(magnitude, operations):
  """An absolute tolerance for a float32 result: eps32 * magnitude * operations.

  The rule: every float32 operation (an add, a multiply, one term of a sum) rounds its result,
  with an error of at most eps32/2 relative to the values it handles, and these errors add up.
  A result that `operations` roundings produced from values of at most `magnitude` in absolute
  value (the inputs and the intermediates, not the result: a sum can cancel to ~0, its error
  does not) is within eps32 * magnitude * operations of the exact value, whatever the order
  of the operations. Count the operations that accumulate: n for a sum or mean of n terms (a
  4^3 block mean: 64), the fan-in for a convolution or matrix product (k^3 * channels), one per
  elementwise step, times the number of steps for an iterated map (a sampler's walk); when both
  sides of a comparison are float32 computations, add the two counts.

  For a sum of n terms the bound is eps32 * (n - 1) * sum|x_i|, so for a mean the magnitude
  may be the mean |term| rather than the largest one: the tighter of the two keeps the test
  sensitive when a few values are large.

  For a relative tolerance (rtol) pass magnitude=1 and make sure the result cannot cancel
  (a sum of terms of one sign, a product).

  The tolerance must stay far below the effect the test measures, so that a wrong formula
  still fails: check that whenever you raise `operations`.
  """
  return EPS32 * float(magnitude) * operations


def max_abs(*arrays):
  """The largest |value| over all `arrays`: the `magnitude` for `float32_tolerance`."""
  return max(float(np.max(np.abs(np.asarray(a)))) for a in arrays)
