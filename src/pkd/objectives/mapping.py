"""Layer maps I(j): which teacher layer teaches student layer j (Sun et al. 2019, Sec. 3.1).

Layers are numbered from 1; layer 0 is the embedding output. The patient loss covers student
layers 1..M-1 only: the top student layer is taught through the logits.

- PKD-Skip: every N/M-th teacher layer. 12->6: 2,4,6,8,10; 12->3: 4,8; 6->3: 2,4.
- PKD-Last: the M-1 teacher layers below the top. 12->6: 7..11; 12->3: 10,11; 6->3: 4,5.
"""

from __future__ import annotations

from pkd.config.choices import STRATEGIES
from pkd.errors import PkdError


def layer_map(
    strategy: str | None,
    teacher_layers: int,
    student_layers: int,
    explicit: list[int] | None = None,
) -> list[tuple[int, int]]:
    """Validated (teacher_layer, student_layer) pairs for student layers 1..M-1.

    Args:
        strategy: `skip` or `last`; ignored when `explicit` is given.
        teacher_layers: N, the teacher's depth.
        student_layers: M, the student's depth; 1 <= M < N.
        explicit: teacher layers for student layers 1..M-1, strictly increasing, in 1..N-1.

    Raises:
        PkdError: impossible depths, unknown strategy, or a bad explicit list.
    """
    n, m = teacher_layers, student_layers
    if not 1 <= m < n:
        raise PkdError(
            f"--student-layers: {m} is impossible for a {n}-layer teacher (need 1 <= M < {n})"
        )
    if explicit is not None:
        teacher = list(explicit)
        if len(teacher) != m - 1:
            raise PkdError(
                f"--layer-map: {m}-layer student needs {m - 1} teacher layers, got {len(teacher)}"
            )
        if any(not 1 <= t <= n - 1 for t in teacher):
            raise PkdError(f"--layer-map: layers must be in 1..{n - 1} for a {n}-layer teacher")
        if any(a >= b for a, b in zip(teacher, teacher[1:], strict=False)):
            raise PkdError(f"--layer-map: layers must be strictly increasing, got {teacher}")
    elif strategy == "skip":
        # floor(j*N/M) is strictly increasing and within 1..N-1 because N/M > 1.
        teacher = [j * n // m for j in range(1, m)]
    elif strategy == "last":
        teacher = list(range(n - m + 1, n))
    else:
        raise PkdError(f"--strategy: unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    return [(t, j) for j, t in enumerate(teacher, start=1)]
