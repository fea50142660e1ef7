"""The base optimizer: parameter groups packed into flat buffers and stepped block by block.

Every optimizer here updates each parameter with the same elementwise rule, so
the rule can run over all parameters at once. On construction the parameters of
each group are copied end to end into one contiguous 1-D buffer per dtype (a
*segment*) and every ``p.data`` / ``p.grad`` is rebound to a reshaped view of its
slice. A step is then a few in-place NumPy calls per segment, never one call per
parameter.

Those calls run block by block (``block_size`` elements at a time) rather than
over the whole buffer: an update reads and writes its buffers about a dozen
times, and a block that stays in the CPU cache between those passes makes the
step about three times faster than sweeping main memory a dozen times. NumPy
releases the GIL inside ufuncs, so large segments are split between a few
threads as well.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from numpyllm.nn.parameter import Parameter

_STATE_KEY = re.compile(r"state\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)")


class _Segment:
    """The parameters of one group that share a dtype, packed end to end into flat buffers.

    ``data`` and ``grad`` are 1-D arrays and parameter ``k`` owns the slice
    ``[offsets[k], offsets[k + 1])`` of each; ``p.data`` / ``p.grad`` are reshaped
    views of those slices. ``state`` maps a name ("exp_avg", ...) to a flat
    array in the same layout. ``indices`` are the parameters' positions in the
    optimizer (the order they were given in, across groups).
    """

    __slots__ = (
        "group_index",
        "params",
        "indices",
        "shapes",
        "offsets",
        "data",
        "grad",
        "data_views",
        "grad_views",
        "state",
    )

    def __init__(
        self, group_index: int, params: list[Parameter], indices: list[int], dtype: np.dtype
    ):
        self.group_index = group_index
        self.params = params
        self.indices = indices
        self.shapes = [p.data.shape for p in params]
        self.offsets = np.cumsum([0] + [p.data.size for p in params]).tolist()
        self.data = np.empty(self.offsets[-1], dtype=dtype)
        self.grad = np.empty(self.offsets[-1], dtype=dtype)
        self.data_views = [self.view(self.data, k) for k in range(len(params))]
        self.grad_views = [self.view(self.grad, k) for k in range(len(params))]
        for p, data_view, grad_view in zip(params, self.data_views, self.grad_views):
            data_view[...] = p.data
            grad_view[...] = p.grad
            p.data = data_view
            p.grad = grad_view
        self.state: dict[str, np.ndarray] = {}

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def view(self, flat: np.ndarray, k: int) -> np.ndarray:
        """Parameter ``k``'s slice of a flat buffer, in the parameter's shape (no copy)."""
        return flat[self.offsets[k] : self.offsets[k + 1]].reshape(self.shapes[k])


class Optimizer:
    """Base class: parameter groups, flat buffers, ``zero_grad``, ``step``, state dicts.

    ``params`` is an iterable of :class:`Parameter` (one group, every parameter
    treated alike) or a list of dicts, each ``{"params": [...], **overrides}``
    (for example ``{"params": biases, "weight_decay": 0.0}``). Keys a group does
    not set are taken from ``defaults``. ``param_groups`` is that list of dicts;
    change ``group["lr"]`` (an LR schedule does) and the next ``step`` uses it.

    After construction every parameter's ``data`` and ``grad`` are views into the
    optimizer's flat buffers. Layers read ``p.data`` afresh and accumulate into
    ``p.grad`` in place, so nothing else changes for them. If some code rebinds
    ``p.data`` or ``p.grad`` to a new array anyway (loading a checkpoint, say),
    the next ``step`` / ``zero_grad`` copies the new values into the buffer and
    rebinds the view; a new shape or dtype raises ``ValueError`` (build a new
    optimizer after ``model.astype``).

    Frozen parameters (``requires_grad = False``) are left out when the optimizer is
    built: no buffer slot, no state, never stepped; parameter numbers in
    ``state_dict`` count the trainable ones only.

    Every parameter is stepped on every ``step`` (a gradient that is all zeros
    still moves momentum, moments and weight decay), because gradients here are
    arrays, never absent.

    Subclasses set ``_required_state`` / ``_optional_state`` (names of their
    per-element buffers) and implement ``_validate_group``, ``_prepare`` (the
    step's scalars for one segment) and ``_update_block`` (the update rule on
    elements ``[lo, hi)`` of a segment).
    """

    #: Elements updated per block: a block of every buffer an update touches
    #: (parameters, gradients, state, two scratch arrays) fits in a core's L2 cache.
    block_size: int = 1 << 16
    #: Threads for large segments; None means one per available core, at most 4.
    num_threads: int | None = None

    _required_state: tuple[str, ...] = ()
    _optional_state: tuple[str, ...] = ()
    _num_scratch: int = 2

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self._segments: list[_Segment] = []
        self._params: list[Parameter] = []
        self._step_count = 0
        self._scratch: dict[tuple[int, np.dtype, int], list[np.ndarray]] = {}
        self._pool: ThreadPoolExecutor | None = None

        where: dict[int, int] = {}  # id(parameter) -> group it was put in
        for group_index, group in enumerate(_as_groups(params)):
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            self._validate_group(group)
            by_dtype: dict[np.dtype, tuple[list[Parameter], list[int]]] = {}
            for p in group["params"]:
                if id(p) in where:
                    first = where[id(p)]
                    raise ValueError(
                        f"a parameter of shape {p.shape} appears twice: in group {first} and in "
                        f"group {group_index}; each parameter may belong to one group only"
                    )
                where[id(p)] = group_index
                plist, indices = by_dtype.setdefault(p.data.dtype, ([], []))
                plist.append(p)
                indices.append(len(self._params))
                self._params.append(p)
            self.param_groups.append(group)
            for dtype, (plist, indices) in by_dtype.items():
                self._segments.append(_Segment(group_index, plist, indices, dtype))
        if not self._params:
            frozen = sum(g.pop("frozen") for g in self.param_groups)
            why = f" ({frozen} given, all with requires_grad=False)" if frozen else ""
            raise ValueError(f"optimizer got an empty parameter list{why}")
        for group in self.param_groups:
            group.pop("frozen")
        for segment in self._segments:
            for name in self._required_state:
                segment.state[name] = np.zeros_like(segment.data)

    # ------------------------------------------------------------------ hooks

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError if a group's hyperparameters are out of range."""

    def _prepare(self, segment: _Segment, group: dict[str, Any]) -> tuple:
        """The scalars one step needs for one segment (Python floats, so dtypes are kept)."""
        raise NotImplementedError

    def _update_block(
        self, segment: _Segment, lo: int, hi: int, scratch: list[np.ndarray], hyper: tuple
    ) -> None:
        """Apply the update rule to elements ``[lo, hi)`` of a segment, in place."""
        raise NotImplementedError

    # ------------------------------------------------------------- public API

    @property
    def step_count(self) -> int:
        """How many times ``step`` has run (the ``t`` of Adam's bias correction)."""
        return self._step_count

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (one fill per flat buffer)."""
        for segment in self._segments:
            self._sync_views(segment)
            segment.grad.fill(0)

    def gradient_buffers(self) -> list[np.ndarray]:
        """The flat gradient buffers (one per group and dtype) that every trainable
        parameter's ``grad`` is a view into: what a distributed run all-reduces."""
        for segment in self._segments:
            self._sync_views(segment)
        return [segment.grad for segment in self._segments]

    def parameter_buffers(self) -> list[np.ndarray]:
        """The flat parameter buffers, in the same layout as ``gradient_buffers``."""
        for segment in self._segments:
            self._sync_views(segment)
        return [segment.data for segment in self._segments]

    def step(self) -> None:
        """Update every parameter from its gradient, in place."""
        for segment in self._segments:
            self._sync_views(segment)
        self._step_count += 1
        for segment in self._segments:
            hyper = self._prepare(segment, self.param_groups[segment.group_index])
            self._run_blocks(segment, hyper)

    def state_dict(self) -> dict[str, Any]:
        """A copy of the optimizer's state as plain Python values and NumPy arrays.

        Format (arrays go to safetensors, the rest to JSON)::

            {
              "step": 12,                    # int: how many steps have been taken
              "param_groups": [              # one dict per group, JSON-ready
                {"lr": 0.0003, "betas": [0.9, 0.999], "eps": 1e-08,
                 "weight_decay": 0.1, "params": [0, 1, 2]},
                ...
              ],
              "state": {                     # per-parameter buffers, copies
                "state.0.exp_avg": ndarray,  # shape and dtype of parameter 0
                "state.0.exp_avg_sq": ndarray,
                ...
              },
            }

        Parameters are numbered in the order they were given, across groups
        (group 0's first, then group 1's, ...); ``"params"`` lists each group's
        numbers. A buffer that does not exist yet (SGD's momentum buffer before
        the first step) has no key.
        """
        groups = []
        for group in self.param_groups:
            plain = {key: _to_plain(value) for key, value in group.items() if key != "params"}
            plain["params"] = []
            groups.append(plain)
        state: dict[str, np.ndarray] = {}
        for segment in self._segments:
            for k, index in enumerate(segment.indices):
                groups[segment.group_index]["params"].append(index)
                for name, flat in segment.state.items():
                    state[f"state.{index}.{name}"] = segment.view(flat, k).copy()
        for plain in groups:
            plain["params"].sort()
        return {"step": self._step_count, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; validate everything before changing anything.

        Raises ValueError when the groups, parameter numbers, buffer names or
        shapes do not match this optimizer's parameters. Arrays are copied into
        the flat buffers (cast to each parameter's dtype). Group hyperparameters
        (including ``lr``) are restored too, as torch does.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"step", "param_groups", "state"} - state_dict.keys()
        if missing:
            raise ValueError(f"optimizer state_dict is missing {sorted(missing)}")
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict['step'] must be an integer >= 0, got {step!r}")
        new_groups = self._check_groups(state_dict["param_groups"])
        arrays = self._check_state(state_dict["state"])

        self._step_count = int(step)
        for group, new in zip(self.param_groups, new_groups):
            group.update(new)
        for segment in self._segments:
            self._sync_views(segment)
            segment.state = {}
            for name, per_param in arrays.get(id(segment), {}).items():
                flat = np.empty_like(segment.data)
                for k, value in enumerate(per_param):
                    segment.view(flat, k)[...] = value
                segment.state[name] = flat

    # ---------------------------------------------------------------- helpers

    def _check_groups(self, saved_groups: Any) -> list[dict[str, Any]]:
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(
            self.param_groups
        ):
            got = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else saved_groups
            raise ValueError(
                f"state_dict has {got} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        expected_indices: list[list[int]] = [[] for _ in self.param_groups]
        for segment in self._segments:
            expected_indices[segment.group_index].extend(segment.indices)
        new_groups = []
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, dict):
                raise ValueError(f"param_groups[{g}] must be a dict, got {type(saved).__name__}")
            indices = saved.get("params")
            if indices is None or sorted(indices) != sorted(expected_indices[g]):
                raise ValueError(
                    f"param_groups[{g}] lists parameters {indices}, but group {g} of this "
                    f"optimizer holds parameters {sorted(expected_indices[g])}"
                )
            new = {key: value for key, value in group.items() if key != "params"}
            for key, value in saved.items():
                if key == "params":
                    continue
                if isinstance(new.get(key), tuple) and isinstance(value, list):
                    value = tuple(value)  # JSON turned the tuple (betas) into a list
                new[key] = value
            self._validate_group({**new, "params": group["params"]})
            new_groups.append(new)
        return new_groups

    def _check_state(self, state: Any) -> dict[int, dict[str, list[np.ndarray]]]:
        """Check every key and shape; return {id(segment): {name: [array per parameter]}}."""
        if not isinstance(state, dict):
            raise ValueError(f"state_dict['state'] must be a dict, got {type(state).__name__}")
        allowed = set(self._required_state) | set(self._optional_state)
        place = {}  # parameter index -> (segment, position in segment)
        for segment in self._segments:
            for k, index in enumerate(segment.indices):
                place[index] = (segment, k)
        found: dict[int, dict[str, list]] = {}
        for key, value in state.items():
            match = _STATE_KEY.fullmatch(key) if isinstance(key, str) else None
            if match is None or match.group(2) not in allowed or int(match.group(1)) not in place:
                raise ValueError(
                    f"unexpected key {key!r} in optimizer state: expected 'state.<i>.<name>' with "
                    f"i < {len(self._params)} and name in {sorted(allowed)}"
                )
            index, name = int(match.group(1)), match.group(2)
            segment, k = place[index]
            value = np.asarray(value)
            if value.shape != segment.shapes[k]:
                raise ValueError(
                    f"optimizer state {key!r} has shape {value.shape}, but parameter {index} "
                    f"has shape {segment.shapes[k]}"
                )
            if not np.issubdtype(value.dtype, np.floating):
                raise ValueError(
                    f"optimizer state {key!r} must be floating point, got {value.dtype}"
                )
            per_param = found.setdefault(id(segment), {}).setdefault(
                name, [None] * len(segment.indices)
            )
            per_param[k] = value
        for segment in self._segments:
            names = found.get(id(segment), {})
            for name in self._required_state:
                if name not in names:
                    names[name] = [None] * len(segment.indices)
            for name, per_param in names.items():
                absent = [i for i, v in zip(segment.indices, per_param) if v is None]
                if absent:
                    raise ValueError(
                        f"optimizer state is missing {[f'state.{i}.{name}' for i in absent]}"
                    )
        return found

    def _sync_views(self, segment: _Segment) -> None:
        """Re-adopt any p.data / p.grad that was rebound to a new array since the last call."""
        for attr, views in (("data", segment.data_views), ("grad", segment.grad_views)):
            current = list(map(operator.attrgetter(attr), segment.params))
            if all(map(operator.is_, current, views)):
                continue  # the usual case: one identity check per parameter, no copies
            for p, array, view in zip(segment.params, current, views):
                if array is view:
                    continue
                if array is None:
                    raise ValueError(
                        f"a parameter of shape {view.shape} was frozen (requires_grad=False) "
                        "after the optimizer was built; build a new optimizer after freezing"
                    )
                array = np.asarray(array)
                if array.shape != view.shape or array.dtype != view.dtype:
                    raise ValueError(
                        f"a parameter's {attr} was replaced by an array of shape {array.shape} "
                        f"and dtype {array.dtype}, but the optimizer holds it as shape "
                        f"{view.shape}, dtype {view.dtype}; build a new optimizer after changing "
                        f"a model's shapes or dtype"
                    )
                view[...] = array
                setattr(p, attr, view)

    def _run_blocks(self, segment: _Segment, hyper: tuple) -> None:
        n, block = segment.size, self.block_size
        workers = min(self._max_threads(), n // (4 * block))
        if workers <= 1:
            self._run_range(segment, 0, n, self._scratch_for(0, segment.data.dtype), hyper)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._max_threads())
        blocks = -(-n // block)
        per_worker = -(-blocks // workers) * block  # whole blocks per worker
        futures = [
            self._pool.submit(
                self._run_range,
                segment,
                lo,
                min(lo + per_worker, n),
                self._scratch_for(w, segment.data.dtype),
                hyper,
            )
            for w, lo in enumerate(range(0, n, per_worker))
        ]
        for future in futures:
            future.result()  # re-raises a worker's exception here

    def _run_range(
        self, segment: _Segment, start: int, stop: int, scratch: list[np.ndarray], hyper: tuple
    ) -> None:
        for lo in range(start, stop, self.block_size):
            hi = min(lo + self.block_size, stop)
            self._update_block(segment, lo, hi, [s[: hi - lo] for s in scratch], hyper)

    def _scratch_for(self, worker: int, dtype: np.dtype) -> list[np.ndarray]:
        key = (worker, dtype, self.block_size)  # block_size may be changed between steps
        if key not in self._scratch:
            self._scratch[key] = [
                np.empty(self.block_size, dtype=dtype) for _ in range(self._num_scratch)
            ]
        return self._scratch[key]

    def _max_threads(self) -> int:
        if self.num_threads is not None:
            return max(1, self.num_threads)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, min(cores, 4))

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for g, group in enumerate(self.param_groups):
            options = ", ".join(f"{k}={v!r}" for k, v in group.items() if k != "params")
            lines.append(f"  group {g}: {len(group['params'])} parameters, {options}")
        return "\n".join(lines) + "\n)"


def _as_groups(params: Any) -> list[dict[str, Any]]:
    """Normalise ``params`` to a list of group dicts, each with a list of Parameters."""
    if isinstance(params, Parameter):
        raise TypeError(
            "params must be an iterable of Parameter or a list of dicts, got a single "
            "Parameter; wrap it in a list"
        )
    if isinstance(params, dict):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(
            f"params must be an iterable of Parameter or a list of dicts, got "
            f"{type(params).__name__}"
        ) from None
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    is_dict = [isinstance(item, dict) for item in items]
    if any(is_dict) and not all(is_dict):
        raise TypeError("params must be all Parameters or all group dicts, not a mixture")
    raw_groups = items if all(is_dict) else [{"params": items}]
    groups = []
    for g, raw in enumerate(raw_groups):
        if "params" not in raw:
            raise ValueError(f"parameter group {g} has no 'params' entry: {sorted(raw)}")
        group = dict(raw)  # the caller's dict is left as it was
        plist = group["params"]
        plist = [plist] if isinstance(plist, Parameter) else list(plist)
        seen: set[int] = set()
        for i, p in enumerate(plist):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"group {g}, item {i}: expected a Parameter, got {type(p).__name__}"
                )
            if id(p) in seen:
                raise ValueError(
                    f"group {g} lists the same parameter (shape {p.shape}) twice; "
                    f"each parameter may appear once"
                )
            seen.add(id(p))
            if not p.requires_grad:
                continue  # frozen: left out, so it gets no buffer slot and no state
            grad = np.asarray(p.grad)
            if grad.shape != p.data.shape or grad.dtype != p.data.dtype:
                raise ValueError(
                    f"group {g}, item {i}: grad has shape {grad.shape} and dtype {grad.dtype}, "
                    f"expected the data's shape {p.data.shape} and dtype {p.data.dtype}"
                )
        group["params"] = [p for p in plist if p.requires_grad]
        group["frozen"] = len(plist) - len(group["params"])  # counted for the error message
        groups.append(group)
    return groups


def _to_plain(value: Any) -> Any:
    """A JSON-ready copy of a hyperparameter: NumPy scalars to Python, tuples to lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value
