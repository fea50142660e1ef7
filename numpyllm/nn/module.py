"""Module: a container of parameters and sub-modules, with a hand-written backward.

A module's ``forward`` computes its output and keeps, on the module itself,
what its ``backward`` will need; ``backward(dout)`` returns the gradient with
respect to the module's input and adds the gradients of its parameters into
their ``.grad``. One forward is followed by at most one backward: a module
called twice before its backward keeps only the last call's cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

import numpy as np

from numpyllm.nn.parameter import Parameter

CacheT = TypeVar("CacheT")


def forward_cache(cache: CacheT | None, module: Module) -> CacheT:
    """What ``module``'s forward kept for its backward; a RuntimeError when there is none
    (a backward without a forward, or a second backward after one forward)."""
    if cache is None:
        raise RuntimeError(f"{type(module).__name__}.backward needs a forward first")
    return cache


class Module:
    """Base class: registers ``Parameter`` and ``Module`` attributes by name."""

    training: bool
    _parameters: dict[str, Parameter]
    _modules: dict[str, Module]

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # ---- running -----------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, *args: Any, **kwargs: Any) -> Any:  # usually (dout) -> dx
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def release(self) -> None:
        """Drop what the forward kept for a backward that will not run (nothing below this
        module trains, and its own parameters are frozen)."""
        if "_cache" in self.__dict__:
            object.__setattr__(self, "_cache", None)

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    # ---- walking the tree ----------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> list[Module]:
        """This module and every module below it, parents before children: the order of
        ``named_modules``, without building the names (training walks the tree a few
        times a step)."""
        found, stack = [], [self]
        while stack:
            module = stack.pop()
            found.append(module)
            stack.extend(reversed(module._modules.values()))
        return found

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """Dotted names and parameters; a parameter shared by two modules is listed once,
        under the first name met."""
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for name, param in module._parameters.items():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self) -> list[Parameter]:
        """The parameters of ``named_parameters``, in its order, a shared one once."""
        seen: set[int] = set()
        found = []
        for module in self.modules():
            for p in module._parameters.values():
                if id(p) not in seen:
                    seen.add(id(p))
                    found.append(p)
        return found

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def trainable_parameters(self) -> list[Parameter]:
        """The parameters with ``requires_grad``: what an optimizer should be given."""
        return [p for p in self.parameters() if p.requires_grad]

    def requires_grad_(self, flag: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter of this module; returns self."""
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # ---- state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> array (the parameters' own arrays, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters in place (so views held by an optimizer stay valid).

        With ``strict`` a missing or unexpected key is an error; a shape mismatch
        always is. Values are cast to each parameter's dtype.
        """
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            where = type(self).__name__
            raise ValueError(f"state dict does not match {where}: " + "; ".join(parts))
        for name, param in params.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != param.data.shape:
                raise ValueError(
                    f"shape mismatch for {name}: checkpoint has {value.shape}, "
                    f"model has {param.data.shape}"
                )
            param.data[...] = value

    def astype(self, dtype: Any) -> Module:
        """Convert every parameter (and its gradient) to ``dtype``; returns self.

        Make the optimizer after converting: it holds views of the old arrays.
        """
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            if p.requires_grad:
                p.grad = np.zeros_like(p.data)
        return self

    @property
    def dtype(self) -> np.dtype:
        params = self.parameters()
        return params[0].data.dtype if params else np.dtype(np.float32)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for name, module in self._modules.items():
            body = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        for name, p in self._parameters.items():
            lines.append(f"  {name}: {tuple(p.shape)}")
        lines.append(")")
        return "\n".join(lines) if len(lines) > 2 else f"{type(self).__name__}()"


ModuleT = TypeVar("ModuleT", bound=Module)


class ModuleList(Module, Generic[ModuleT]):
    """An indexable list of modules, named "0", "1", ... in parameter names."""

    _modules: dict[str, ModuleT]  # type: ignore[assignment]  # only ModuleT are appended

    def __init__(self, modules: list[ModuleT] | None = None) -> None:
        super().__init__()
        for module in modules or []:
            self.append(module)

    def append(self, module: ModuleT) -> None:
        setattr(self, str(len(self._modules)), module)

    def __getitem__(self, index: int) -> ModuleT:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[ModuleT]:
        return iter(list(self._modules.values()))
