"""kullback: entropy, cross-entropy, Kullback-Leibler and Jensen-Shannon
divergence, and the negative log-likelihood of class targets, for whole
batches of discrete distributions at once, computed by the Rust library
kullback (a vectorised CPU backend, or WGSL compute shaders on a GPU).

    >>> import numpy as np, kullback
    >>> p = np.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]], dtype=np.float32)
    >>> q = np.array([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]], dtype=np.float32)
    >>> kullback.kl(p, q)                      # one value per row, in nats
    array([0.6931472 , 0.43737882], dtype=float32)
    >>> kullback.kl(p, q, reduction="mean", base=2)
    0.8155...

The same calls over Dask arrays chunked along rows are in ``kullback.dask``.
For training, ``nll_grad`` and ``distill`` return a loss with its gradient
with respect to the logits.

Shapes
------
Rows are distributions: the outcomes run along the LAST axis. (This is unlike
``scipy.stats.entropy``, whose default axis is 0: ``kullback.entropy(p)`` is
``scipy.stats.entropy(p, axis=-1)``.) A 1-D input is one distribution, and a
call on 1-D inputs returns a float; 2-D inputs of shape (rows, n) give an array
of shape (rows,) under ``reduction='none'`` and a float under 'sum' and 'mean'.
A ``p`` or ``q`` with a single row (1-D, or shape (1, n)) is compared with every
row of the other.

Inputs
------
Any array-like. A C-contiguous float32 array is read where it lies, without a
copy; a C-contiguous float64 array too, each value converted to float32 where
it is read, with a check: a value that would change silently (a non-zero
probability that underflows to 0, a finite value that overflows) is a
``ValueError`` naming its row and column. C-contiguous float16 and bfloat16
(``ml_dtypes``) arrays are read where they lie too, by the library's half
kernels (half the bytes; the results of the same values widened to float32);
non-contiguous arrays, integers and lists are converted once (the table is in
``kullback._inputs``). Results are float32 values (Python floats for a single
value) within abs 2e-6 + rel 2e-5 of float64 computed from the same float32
inputs.

Threads
-------
The GIL is released while the library works, so calls from several Python
threads run at the same time (a ``Context`` may be shared between threads).
An array read without a copy must not be modified while a call on it runs.

Errors
------
``ValueError`` for bad values, shapes and options (the message names the
argument, row and column: ``p row 3, column 7: NaN``); ``TypeError`` for a
dtype that cannot be read as distributions or class indices; ``MemoryError``
when memory cannot be had (host or device); ``RuntimeError`` for the device
(``backend='gpu'`` with no adapter, a device error).

Conventions (identical on the GPU and the CPU; natural log, results divided by
ln(base))
---------------------------------------------------------------------------
======================  ==================================  =========  ===============
measure                 term for (p, q)                     p = 0      p > 0, q = 0
======================  ==================================  =========  ===============
entropy H(p)            -p ln p                             0          -
cross-entropy H(p, q)   -p ln q                             0          +inf
KL D(P||Q)              p (ln p - ln q)                     0          +inf
Jensen-Shannon          KL(P||M)/2 + KL(Q||M)/2, M=(P+Q)/2  KL rule    finite, <= ln 2
NLL of class t          -ln q_t                             -          +inf if q_t = 0
======================  ==================================  =========  ===============

No silent epsilon clamping: +inf is +inf. "p = 0" is a probability whose bits
are zero, a log-probability of -inf or a masked (-inf) logit; subnormal
probabilities are valid and their log is exact. A base below 1 turns +inf into
-inf. Zeros are +0.0.

Backends
--------
``backend='auto'`` (default) uses a hardware GPU when there is one and places
each call by a cost model (small calls stay on the CPU); software adapters
(lavapipe/llvmpipe) are never picked by 'auto'. ``'gpu'`` takes any adapter
and fails when there is none; ``'cpu'`` never touches the GPU. The environment
variable ``KULLBACK_BACKEND=auto|gpu|cpu`` replaces 'auto'. ``backends()`` says
what is available here.
"""

# annotations stay names (help() shows "ArrayLike", not its expansion)
from __future__ import annotations

import inspect as _inspect
import threading as _threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as _np
from numpy.typing import ArrayLike, NDArray

from . import _kullback as _native

#: What a call returns: a float (1-D inputs, or a reduction), or float32 per row.
Result = Union[float, NDArray[_np.float32]]

#: What a training call returns: the loss (as ``Result``), then the gradient(s),
#: new arrays of the logits' shape (float32, or the call's ``grad_dtype``).
Grads = Union[Tuple[Result, NDArray[Any]],
              Tuple[Result, NDArray[Any], NDArray[Any]]]

__version__ = _native.__version__

#: Default tolerance on |sum - 1| of each row under ``normalize='validate'``.
DEFAULT_TOLERANCE = _native.DEFAULT_TOLERANCE

__all__ = [
    "Context",
    "DEFAULT_TOLERANCE",
    "backends",
    "cross_entropy",
    "distill",
    "entropy",
    "hellinger",
    "js",
    "kl",
    "nll",
    "nll_grad",
    "total_variation",
]


class Context:
    """A device (or the CPU) kept for many calls.

    The module functions keep one context per backend name; make your own to
    choose options, or to free its buffers with ``trim()``. A context is safe
    to share between threads. Its methods are the module functions (without
    ``backend`` and ``context``)::

        ctx = kullback.Context("gpu")
        ctx.kl(p, q, reduction="mean")

    Parameters
    ----------
    backend : {'auto', 'gpu', 'cpu'}
        See the module docs. 'gpu' raises ``RuntimeError`` without an adapter.
    max_binding_bytes : int, optional
        Cap on the bytes of one GPU storage binding (inputs beyond it are split
        into chunks; at least 64 KiB). Default: the device's limit.
    pool_bytes : int, optional
        Bytes of GPU buffers kept between calls (default 256 MiB).
    """

    __slots__ = ("_native",)

    def __init__(self, backend: str = "auto", *, max_binding_bytes: Optional[int] = None,
                 pool_bytes: Optional[int] = None) -> None:
        self._native = _native.Context(backend, max_binding_bytes, pool_bytes)

    @property
    def backend(self) -> str:
        """'gpu' or 'cpu': where this context runs (under 'auto' with a
        hardware GPU, each call is still placed by the cost model)."""
        return self._native.backend

    @property
    def adapter(self) -> Optional[str]:
        """The GPU adapter's name, or None."""
        return self._native.adapter

    def trim(self) -> None:
        """Frees the buffers the context keeps between calls."""
        self._native.trim()

    def __repr__(self):
        return repr(self._native)

    if TYPE_CHECKING:  # the module's calls, bound to this context (set below)
        def entropy(self, p: ArrayLike, **options: Any) -> "Result": ...
        def cross_entropy(self, p: ArrayLike, q: ArrayLike, **options: Any) -> "Result": ...
        def kl(self, p: ArrayLike, q: ArrayLike, **options: Any) -> "Result": ...
        def js(self, p: ArrayLike, q: ArrayLike, **options: Any) -> "Result": ...
        def hellinger(self, p: ArrayLike, q: ArrayLike, **options: Any) -> "Result": ...
        def total_variation(self, p: ArrayLike, q: ArrayLike, **options: Any) -> "Result": ...
        def nll(self, q: ArrayLike, targets: ArrayLike, **options: Any) -> "Result": ...
        def nll_grad(self, logits: ArrayLike, targets: ArrayLike,
                     **options: Any) -> Tuple["Result", NDArray[Any]]: ...
        def distill(self, student: ArrayLike, teacher: Optional[ArrayLike] = None,
                    **options: Any) -> "Grads": ...


_defaults = {}
_defaults_lock = _threading.Lock()


def _default(backend):
    """The module's context for ``backend``, made on first use."""
    ctx = _defaults.get(backend)
    if ctx is None:
        with _defaults_lock:
            ctx = _defaults.get(backend)
            if ctx is None:
                ctx = _native.Context(backend)
                if isinstance(backend, str):
                    _defaults[backend] = ctx
    return ctx


def _context(backend, context):
    if context is None:
        return _default(backend)
    if not isinstance(context, Context):
        raise TypeError("context must be a kullback.Context, got %r" % type(context).__name__)
    if backend != "auto":
        raise ValueError("give backend or context, not both (a context has its backend)")
    return context._native


def backends() -> Dict[str, Union[str, List[str], None]]:
    """What can run here.

    Returns a dict: ``available`` (the backend names that work here: 'cpu'
    always, 'gpu' when there is any adapter, software ones included), ``gpu``
    (the adapter ``backend='gpu'`` uses, or None), ``auto`` ('gpu' or 'cpu':
    where ``backend='auto'`` runs) and ``auto_adapter`` (its adapter, or None).

    >>> kullback.backends()        # a machine with only lavapipe  # doctest: +SKIP
    {'available': ['cpu', 'gpu'], 'gpu': 'llvmpipe (LLVM 19.1.7, 256 bits)', 'auto': 'cpu', 'auto_adapter': None}
    """
    try:
        gpu = _default("gpu").adapter
    except RuntimeError:
        gpu = None
    auto = _default("auto")
    return {
        "available": ["cpu", "gpu"] if gpu is not None else ["cpu"],
        "gpu": gpu,
        "auto": auto.backend,
        "auto_adapter": auto.adapter,
    }


# ---------------------------------------------------------------------------
# The calls. Their shared parameters are documented once, here.

_PARAMS = {
    "p": """p : array-like, shape (n,) or (rows, n)
        Distributions, one per row (the last axis holds the n outcomes). A
        single row is compared with every row of the other argument.""",
    "q": """q : array-like, shape (n,) or (rows, n)
        Distributions, same columns as p; same rows, or a single row.""",
    "reduction": """reduction : {'none', 'sum', 'mean'}, default 'none'
        'none': one value per row; 'sum'; 'mean': the mean of the per-row
        values (PyTorch's 'batchmean', accepted as a synonym; not PyTorch's
        element-wise 'mean').""",
    "base": """base : float, optional
        Base of the logarithm: None (default) for nats, 2 for bits, 10, or any
        base > 0 and != 1 (a base below 1 gives negative values and -inf).""",
    "normalize": """normalize : {'validate', 'renormalize', 'as_given'} or bool, default 'validate'
        'validate': each row must sum to 1 within ``tolerance`` (else
        ValueError naming the row); 'renormalize' (or True): divide each row by
        its sum first, as ``scipy.stats.entropy`` does (counts are fine; an
        all-zero row is an error); 'as_given': use the values as they are.
        For log-probabilities the sum is that of exp(values); logits are always
        normalised (a stable log-sum-exp).""",
    "tolerance": """tolerance : float, default 1e-3
        Allowed |sum - 1| of a row under 'validate'.""",
    "p_form": """p_form : {'probs', 'log_probs', 'logits'}, default 'probs'
        How p is given: probabilities, natural-log probabilities (-inf for
        0), or unnormalised logits (-inf masks a class).""",
    "q_form": """q_form : {'probs', 'log_probs', 'logits'}, default 'probs'
        How q is given (see p_form).""",
    "backend": """backend : {'auto', 'gpu', 'cpu'}, default 'auto'
        Where to run (see ``kullback.backends()``); not with ``context``.""",
    "context": """context : kullback.Context, optional
        A context to run on, instead of the module's one for ``backend``.""",
}

_RETURNS = """Returns
    -------
    float, or numpy.ndarray of float32 with shape (rows,)
        A float for 1-D inputs or a reduction; else one value per row."""


def _doc(summary, params, notes):
    body = "\n    ".join(_PARAMS[k] for k in params)
    return "%s\n\n    Parameters\n    ----------\n    %s\n\n    %s\n\n    %s\n" % (
        summary, body, _RETURNS, notes)


def entropy(p: ArrayLike, *, reduction: str = "none", base: Optional[float] = None,
            normalize: Union[str, bool] = "validate", tolerance: float = DEFAULT_TOLERANCE,
            p_form: str = "probs", backend: str = "auto",
            context: Optional["Context"] = None) -> Result:
    return _context(backend, context).evaluate(
        "entropy", p, None, reduction, base, normalize, tolerance, p_form, "probs").result()


def cross_entropy(p: ArrayLike, q: ArrayLike, *, reduction: str = "none",
                  base: Optional[float] = None, normalize: Union[str, bool] = "validate",
                  tolerance: float = DEFAULT_TOLERANCE, p_form: str = "probs",
                  q_form: str = "probs", backend: str = "auto",
                  context: Optional["Context"] = None) -> Result:
    return _context(backend, context).evaluate(
        "cross_entropy", p, q, reduction, base, normalize, tolerance, p_form, q_form).result()


def kl(p: ArrayLike, q: ArrayLike, *, reduction: str = "none", base: Optional[float] = None,
       normalize: Union[str, bool] = "validate", tolerance: float = DEFAULT_TOLERANCE,
       p_form: str = "probs", q_form: str = "probs", backend: str = "auto",
       context: Optional["Context"] = None) -> Result:
    return _context(backend, context).evaluate(
        "kl", p, q, reduction, base, normalize, tolerance, p_form, q_form).result()


def js(p: ArrayLike, q: ArrayLike, *, reduction: str = "none", base: Optional[float] = None,
       normalize: Union[str, bool] = "validate", tolerance: float = DEFAULT_TOLERANCE,
       p_form: str = "probs", q_form: str = "probs", backend: str = "auto",
       context: Optional["Context"] = None) -> Result:
    return _context(backend, context).evaluate(
        "js", p, q, reduction, base, normalize, tolerance, p_form, q_form).result()


def hellinger(p: ArrayLike, q: ArrayLike, *, reduction: str = "none",
              base: Optional[float] = None, normalize: Union[str, bool] = "validate",
              tolerance: float = DEFAULT_TOLERANCE, p_form: str = "probs",
              q_form: str = "probs", backend: str = "auto",
              context: Optional["Context"] = None) -> Result:
    return _context(backend, context).evaluate(
        "hellinger", p, q, reduction, base, normalize, tolerance, p_form, q_form).result()


def total_variation(p: ArrayLike, q: ArrayLike, *, reduction: str = "none",
                    base: Optional[float] = None, normalize: Union[str, bool] = "validate",
                    tolerance: float = DEFAULT_TOLERANCE, p_form: str = "probs",
                    q_form: str = "probs", backend: str = "auto",
                    context: Optional["Context"] = None) -> Result:
    return _context(backend, context).evaluate(
        "total_variation", p, q, reduction, base, normalize, tolerance, p_form,
        q_form).result()


def nll(q: ArrayLike, targets: ArrayLike, *, reduction: str = "none",
        base: Optional[float] = None, normalize: Union[str, bool] = "validate",
        tolerance: float = DEFAULT_TOLERANCE, q_form: str = "probs",
        ignore_index: Optional[int] = None, weight: Optional[ArrayLike] = None,
        label_smoothing: float = 0.0, backend: str = "auto",
        context: Optional["Context"] = None) -> Result:
    return _context(backend, context).nll(
        q, targets, reduction, base, normalize, tolerance, q_form, ignore_index, weight,
        label_smoothing).result()


_MEASURE_PARAMS = ("reduction", "base", "normalize", "tolerance", "p_form", "q_form",
                   "backend", "context")

entropy.__doc__ = _doc(
    "Entropy H(p) = -sum_i p_i ln p_i of each row.",
    ("p", "reduction", "base", "normalize", "tolerance", "p_form", "backend", "context"),
    """A term with p_i = 0 is 0 (0 ln 0 = 0). Equals
    ``scipy.stats.entropy(p, axis=-1)`` for normalised rows (SciPy always
    renormalises: pass ``normalize='renormalize'`` for the same on counts).

    >>> kullback.entropy([0.5, 0.5], base=2)
    1.0""")

cross_entropy.__doc__ = _doc(
    "Cross-entropy H(p, q) = -sum_i p_i ln q_i of each row pair.",
    ("p", "q") + _MEASURE_PARAMS,
    """A term with p_i = 0 is 0 whatever q_i is (even ln q_i = -inf); p_i > 0
    with q_i = 0 gives +inf. H(p, q) = H(p) + KL(p || q). With one-hot p this
    is PyTorch's ``F.cross_entropy`` per row; for integer targets use ``nll``.

    >>> kullback.cross_entropy([0.5, 0.5], [0.25, 0.75])
    0.8369...""")

kl.__doc__ = _doc(
    "Kullback-Leibler divergence D(P||Q) = sum_i p_i (ln p_i - ln q_i) of each row pair.",
    ("p", "q") + _MEASURE_PARAMS,
    """A term with p_i = 0 is 0 whatever q_i is; p_i > 0 with q_i = 0 gives
    +inf. Equals ``scipy.special.rel_entr(p, q).sum(-1)`` and
    ``scipy.stats.entropy(p, q, axis=-1)`` (for normalised rows), and
    PyTorch's ``F.kl_div(log_q, p, reduction='batchmean')`` with
    ``reduction='mean'``, ``q_form='log_probs'``.

    >>> kullback.kl([0.5, 0.5], [0.9, 0.1])
    0.5108...""")

js.__doc__ = _doc(
    "Jensen-Shannon divergence KL(P||M)/2 + KL(Q||M)/2, M = (P + Q)/2, of each row pair.",
    ("p", "q") + _MEASURE_PARAMS,
    """Terms follow the KL rule (p_i = 0 gives 0); the value is finite and at
    most ln 2 nats (1 bit). It is the square of
    ``scipy.spatial.distance.jensenshannon(p, q, axis=-1)``.

    >>> kullback.js([1.0, 0.0], [0.0, 1.0], base=2)
    1.0""")

hellinger.__doc__ = _doc(
    "Squared Hellinger distance H^2 = sum_i (sqrt(p_i) - sqrt(q_i))^2 / 2 of each row pair.",
    ("p", "q") + _MEASURE_PARAMS,
    """Computed in this form, which is 1 - sum_i sqrt(p_i q_i) for rows that
    sum to 1 but does not cancel for close rows. A term with p_i = 0 is q_i / 2
    (and with q_i = 0, p_i / 2); the value is finite, between 0 and 1. Not
    logarithmic: a ``base`` other than e raises ``ValueError``.

    >>> kullback.hellinger([1.0, 0.0], [0.0, 1.0])
    1.0""")

total_variation.__doc__ = _doc(
    "Total variation distance sum_i |p_i - q_i| / 2 of each row pair.",
    ("p", "q") + _MEASURE_PARAMS,
    """A term with p_i = 0 is q_i / 2 (and with q_i = 0, p_i / 2); the value is
    finite, between 0 and 1. Not logarithmic: a ``base`` other than e raises
    ``ValueError``.

    >>> kullback.total_variation([0.5, 0.5], [0.75, 0.25])
    0.25""")

nll.__doc__ = """Negative log-likelihood -ln q[t] of class targets: one per row of q.

    Cross-entropy against one-hot targets, with PyTorch's options: with
    ``q_form='logits'`` this is ``F.cross_entropy(logits, targets, ...)``; with
    ``q_form='log_probs'``, ``F.nll_loss``.

    Parameters
    ----------
    q : array-like, shape (classes,) or (rows, classes)
        Distributions over the classes, one per target (a single row is shared
        by every target).
    targets : int or array-like of int, shape (rows,)
        Class indices in [0, classes) (int32, int64 and uint32 arrays are read
        without a copy), or ``ignore_index``.
    %s
    %s
    %s
    %s
    q_form : {'probs', 'log_probs', 'logits'}, default 'probs'
        How q is given.
    ignore_index : int, optional
        A target equal to it is ignored: its value is 0 and it is not counted
        by the mean (PyTorch's default is -100; here there is none unless
        given).
    weight : array-like, shape (classes,), optional
        Class weights (finite, >= 0): row i's loss is scaled by weight[t_i],
        and the mean is sum_i w[t_i] l_i / sum_i w[t_i] (PyTorch's).
    label_smoothing : float in [0, 1], default 0
        The target distribution is (1 - e) onehot(t) + e / classes.
    %s
    %s

    %s

    +inf when q[t] = 0. A mean over no counted weight (every target ignored)
    is NaN, as in PyTorch. Perplexity is exp(mean in nats).

    >>> kullback.nll([[2.0, 0.5, -1.0]], [0], q_form="logits", reduction="mean")
    0.2413...
""" % (_PARAMS["reduction"], _PARAMS["base"], _PARAMS["normalize"], _PARAMS["tolerance"],
       _PARAMS["backend"], _PARAMS["context"], _RETURNS)


_GRAD_DTYPE = """grad_dtype : {'float32', 'float16', 'bfloat16'}, default 'float32'
        The gradients' dtype: float16 and bfloat16 (``ml_dtypes``, needed for
        it) are the float32 gradient rounded to nearest even, written by the
        library as halves (no float32 copy).
    grad_scale : float, default 1
        A factor of the gradients (not of the loss), finite: with
        reduction='sum' and 1 / N, the gradient of a mean over N counted rows
        split over several calls, bit for bit (``kullback.dask`` uses it), or
        a loss scale."""


def nll_grad(logits: ArrayLike, targets: ArrayLike, *, reduction: str = "none",
             base: Optional[float] = None, ignore_index: Optional[int] = None,
             weight: Optional[ArrayLike] = None, label_smoothing: float = 0.0,
             grad_dtype: str = "float32", grad_scale: float = 1.0, backend: str = "auto",
             context: Optional["Context"] = None) -> Tuple[Result, NDArray[Any]]:
    out, grad = _context(backend, context).nll_grad(
        logits, targets, reduction, base, ignore_index, weight, label_smoothing, grad_dtype,
        float(grad_scale))
    return out.result(), grad


nll_grad.__doc__ = """Cross-entropy of class targets from logits, and its gradient.

    The loss of ``nll(logits, targets, q_form='logits', ...)`` (PyTorch's
    ``F.cross_entropy``) and its gradient with respect to the logits, in one
    call (the Rust ``Context::nll_grad``).

    Parameters
    ----------
    logits : array-like, shape (classes,) or (rows, classes)
        Unnormalised logits, one row per target (-inf masks a class).
    targets : int or array-like of int, shape (rows,)
        Class indices in [0, classes), or ``ignore_index``.
    %s
    %s
    ignore_index : int, optional
        A target equal to it is ignored: loss 0, gradient 0, not counted.
    weight : array-like, shape (classes,), optional
        Class weights (finite, >= 0); the mean is sum_i w[t_i] l_i / sum_i w[t_i].
    label_smoothing : float in [0, 1], default 0
        The target distribution is p_c = (1 - e) w_t [c = t] + e w_c / classes.
    %s
    %s
    %s

    Returns
    -------
    (loss, grad)
        ``loss`` as ``nll`` gives it (a float for a reduction or one target,
        else float32 per row); ``grad`` a new array of the logits' shape
        (``grad_dtype``): (sum_c p_c) softmax(z) - p per row, of the per-row
        losses' sum ('none', 'sum') or of the mean; divided by ln(base).

    >>> loss, grad = kullback.nll_grad([[2.0, 0.5, -1.0]], [0], reduction="mean")
    >>> round(loss, 4), grad.shape
    (0.2413, (1, 3))
""" % (_PARAMS["reduction"], _PARAMS["base"], _GRAD_DTYPE, _PARAMS["backend"],
       _PARAMS["context"])


def distill(student: ArrayLike, teacher: Optional[ArrayLike] = None, *,
            teacher_form: str = "logits", teacher_indices: Optional[ArrayLike] = None,
            teacher_logprobs: Optional[ArrayLike] = None, divergence: str = "forward-kl",
            beta: float = 0.5, temperature: float = 1.0, tail: str = "bucket",
            tolerance: float = DEFAULT_TOLERANCE, mask: Optional[ArrayLike] = None,
            reduction: str = "none", teacher_grad: bool = False, grad_dtype: str = "float32",
            grad_scale: float = 1.0, backend: str = "auto",
            context: Optional["Context"] = None) -> Grads:
    out, grad, tgrad = _context(backend, context).distill(
        student, teacher, teacher_form, teacher_indices, teacher_logprobs, divergence, beta,
        temperature, tail, tolerance, mask, reduction, bool(teacher_grad), grad_dtype,
        float(grad_scale))
    if teacher_grad:
        return out.result(), grad, tgrad
    return out.result(), grad


distill.__doc__ = """Distillation loss of student logits against a teacher, and its gradient.

    With q_S = softmax(student / T) and p_T = softmax(teacher / T) (teacher
    logits and log-probabilities alike), per row (natural log):

    ==========  ===========================================  ==============================
    divergence  loss                                         gradient w.r.t. the student
    ==========  ===========================================  ==============================
    forward-kl  T^2 KL(p_T || q_S)                           T (q_S - p_T)
    reverse-kl  T^2 KL(q_S || p_T)                           T q_S (ln q_S - ln p_T - KL)
    jsd         T^2 (b KL(p_T || M) + (1-b) KL(q_S || M)),   T (1-b) q_S (ln q_S - ln M -
                M = b p_T + (1-b) q_S                        KL(q_S || M))
    ==========  ===========================================  ==============================

    The Rust ``Context::distill`` (``distill_with_teacher_grad`` with
    ``teacher_grad=True``); the CLI's ``kullback distill``.

    Parameters
    ----------
    student : array-like, shape (cols,) or (rows, cols)
        Student logits (-inf masks a column).
    teacher : array-like, shape of the student, optional
        A dense teacher: logits or log-probabilities (``teacher_form``).
    teacher_form : {'logits', 'log_probs'}, default 'logits'
        How the dense teacher is given (the temperature applies to both).
    teacher_indices : array-like of int, shape (k,) or (rows, k), optional
        A sparse teacher instead: its top-k column indices per row (distinct,
        in [0, cols); int32, int64 and uint32 are read without a copy).
    teacher_logprobs : array-like, shape of teacher_indices, optional
        ln p_T at those columns, the temperature already applied (<= 0).
    divergence : {'forward-kl', 'reverse-kl', 'jsd'}, default 'forward-kl'
    beta : float in (0, 1), default 0.5
        b of the generalized JSD (0.5: the ordinary JSD). 0 and 1 are errors
        ("use forward-kl", "use reverse-kl").
    temperature : float > 0, default 1
    tail : {'bucket', 'renormalize'}, default 'bucket'
        A sparse teacher's remaining mass 1 - sum_k p_k: one more bucket
        (against the student's mass outside the indices), or both
        distributions renormalised over the k columns.
    tolerance : float, default 1e-3
        How far above 1 a sparse row's sum_k exp(l_k) may be.
    mask : array-like of bool or int, shape (rows,), optional
        0/False ignores a row: loss 0, gradient 0, not counted by the mean.
    %s
    teacher_grad : bool, default False
        Also return the gradient with respect to the dense teacher's values
        (forward-kl: T p_T (ln p_T - ln q_S - KL); reverse-kl: T (p_T - q_S);
        jsd: T b p_T (ln p_T - ln M - KL(p_T || M))). A sparse teacher has
        none (ValueError).
    %s
    %s
    %s

    Returns
    -------
    (loss, grad) or, with ``teacher_grad``, (loss, grad, teacher_grad)
        ``loss``: a float for a reduction or a 1-D student, else float32 per
        row; the gradients are new arrays of the student's shape
        (``grad_dtype``), of the per-row losses' sum ('none', 'sum') or of
        the mean over the rows that count.

    >>> loss, grad = kullback.distill([1.0, 0.0, -1.0], [0.0, 1.0, 0.5],
    ...                               divergence="jsd", temperature=2.0)
    >>> round(loss, 4), grad.shape
    (0.1414, (3,))
""" % (_PARAMS["reduction"], _GRAD_DTYPE, _PARAMS["backend"], _PARAMS["context"])


def _method(fn):
    """The module function ``fn`` as a ``Context`` method (no backend, no context)."""
    def method(self, *args, **kwargs):
        return fn(*args, context=self, **kwargs)

    sig = _inspect.signature(fn)
    params = [_inspect.Parameter("self", _inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [v for k, v in sig.parameters.items() if k not in ("backend", "context")]
    method.__signature__ = sig.replace(parameters=params)
    method.__name__ = method.__qualname__ = fn.__name__
    method.__qualname__ = "Context." + fn.__name__
    method.__doc__ = fn.__doc__
    return method


for _fn in (entropy, cross_entropy, kl, js, hellinger, total_variation, nll, nll_grad,
            distill):
    setattr(Context, _fn.__name__, _method(_fn))
del _fn
