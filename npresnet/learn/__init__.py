"""``python -m npresnet.learn``: learn backpropagation by writing every backward pass yourself.

A path of exercises, each one file the learner completes (``start NAME`` writes its skeleton):
Linear, ReLU, softmax cross-entropy, average and max pooling, a loop convolution, im2col/col2im,
the GEMM convolution, BatchNorm in training mode, the residual BasicBlock and the Bottleneck with a
projection shortcut. ``check NAME`` grades the file and explains a failure (the array, the worst
element, the classic mistake or the pattern of the error); ``hint NAME`` gives one more hint each
time; ``solution NAME`` shows npresnet's own once the file passes; ``train`` trains ResNet-20 on the
digits with every completed layer swapped in. docs/learn.md walks through a session.

One concept per module:

* ``catalogue``: the exercises (signatures, cases, npresnet's reference, classic mistakes, hints);
* ``skeletons/`` and ``solutions/``: the files ``start`` writes and npresnet's own solutions;
* ``grader``: the checks, in order, and the messages (the pattern diagnosis is
  ``npresnet.gradcheck.diagnosis``, shared with ``gradcheck`` and ``npresnet.testing``);
* ``progress``: the learner's folder and what the commands remember there;
* ``cli``: the commands; ``train``: the payoff; ``layout``: im2col in the exercises' 2-D layout.
"""

from .catalogue import EXERCISES, Exercise, get
from .grader import Result, grade

__all__ = ["EXERCISES", "Exercise", "Result", "get", "grade"]
