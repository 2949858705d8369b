"""Stubs of the native module ``kullback._kullback`` (PyO3). The public API is
``kullback`` (``__init__.py``, annotated there); this module is its engine."""

from typing import Any, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
DEFAULT_TOLERANCE: float

ArrayLike = npt.ArrayLike
Base = Optional[float]
Normalize = Union[str, bool]

class Output:
    """What a call gave."""

    values: npt.NDArray[np.float32]
    """One float32 value per row (reduction 'none'), or one value (sum, mean)."""
    counted: float
    """Rows counted by the reduction (nll: sum of w[t] over the targets not ignored)."""
    perplexity: Optional[float]
    """exp(mean in nats), for nll with reduction 'mean'."""
    backend: str
    """'gpu' or 'cpu': the backend that ran."""
    adapter: Optional[str]
    """The GPU adapter's name when the GPU ran."""
    scalar: bool
    """Whether the call's result is one float."""
    def result(self) -> Union[float, npt.NDArray[np.float32]]:
        """The call's result: a float, or the per-row values."""

class Context:
    """A device (or the CPU) to run calls on; safe to share between threads."""

    def __init__(
        self,
        backend: str,
        max_binding_bytes: Optional[int] = None,
        pool_bytes: Optional[int] = None,
    ) -> None: ...
    @property
    def backend(self) -> str: ...
    @property
    def adapter(self) -> Optional[str]: ...
    @property
    def kept_bytes(self) -> int: ...
    def trim(self) -> None: ...
    def evaluate(
        self,
        measure: str,
        p: ArrayLike,
        q: Optional[ArrayLike],
        reduction: str,
        base: Base,
        normalize: Normalize,
        tolerance: float,
        p_form: str,
        q_form: str,
        row_offset: int = 0,
        offset_args: str = "",
    ) -> Output:
        """entropy, cross_entropy, kl, js, hellinger or total_variation; rows of the arguments named in
        ``offset_args`` ('p', 'q') are reported ``row_offset`` further down."""
    def nll(
        self,
        q: ArrayLike,
        targets: Any,
        reduction: str,
        base: Base,
        normalize: Normalize,
        tolerance: float,
        q_form: str,
        ignore_index: Optional[int],
        weight: Optional[ArrayLike],
        label_smoothing: float,
        row_offset: int = 0,
        offset_args: str = "",
    ) -> Output:
        """The negative log-likelihood; ``offset_args`` may name 'q' and 't' (targets)."""
    def nll_grad(
        self,
        logits: ArrayLike,
        targets: Any,
        reduction: str,
        base: Base,
        ignore_index: Optional[int],
        weight: Optional[ArrayLike],
        label_smoothing: float,
        grad_dtype: str,
        grad_scale: float = 1.0,
        offset: int = 0,
    ) -> Tuple[Output, npt.NDArray[Any]]:
        """The NLL of class targets under logits and its gradient with respect to
        the logits (a new array of their shape, of dtype ``grad_dtype``: 'float32',
        'float16' or 'bfloat16'); errors name the keyword."""
    def distill(
        self,
        student: ArrayLike,
        teacher: Optional[ArrayLike],
        teacher_form: str,
        teacher_indices: Optional[ArrayLike],
        teacher_logprobs: Optional[ArrayLike],
        divergence: str,
        beta: float,
        temperature: float,
        tail: str,
        tolerance: float,
        mask: Optional[ArrayLike],
        reduction: str,
        teacher_grad: bool,
        grad_dtype: str,
        grad_scale: float = 1.0,
        offset: int = 0,
    ) -> Tuple[Output, npt.NDArray[Any], Optional[npt.NDArray[Any]]]:
        """A distillation loss, its gradient with respect to the student's logits
        and, with ``teacher_grad``, the dense teacher's (None otherwise): new
        arrays of the student's shape and dtype ``grad_dtype``; errors name the
        keyword."""

def _address(obj: ArrayLike) -> int:
    """The address of the first value the binding hands to the library for ``obj``."""

def _canonical(kind: str, value: Any) -> str:
    """'reduction' -> 'none' | 'sum' | 'mean'; 'backend' -> 'auto' | 'gpu' | 'cpu'."""
