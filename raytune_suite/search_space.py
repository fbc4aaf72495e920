"""Search-space entries of the experiment file -> Ray Tune domains and PBT mutations.

An entry is a one-key mapping naming its domain::

    lr: {loguniform: [1.0e-4, 1.0e-1]}
    batch_size: {choice: [32, 64, 128]}
    optimizer:                      # a choice of mappings: a conditional space
      choice:
        - {name: sgd, momentum: {uniform: [0.8, 0.99]}}
        - {name: adam}

Any other mapping is a namespace holding further entries (``optim: {lr: {...}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from raytune_suite.errors import SpecError

# kind -> (argument names, short usage)
DOMAIN_KINDS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "qloguniform": ("low", "high", "q"),
    "randint": ("low", "high"),
    "normal": ("mean", "sd"),
    "choice": (),
    "grid": (),
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Domain:
    """One searched hyperparameter."""

    kind: str
    args: tuple  # numeric arguments, or the options of choice/grid

    @property
    def is_conditional(self) -> bool:
        """A choice between mappings (each may hold nested domains)."""
        return self.kind == "choice" and any(isinstance(o, Branch) for o in self.args)


@dataclass(frozen=True)
class Branch:
    """One option of a conditional choice: constants and nested domains."""

    items: tuple[tuple[str, Any], ...]  # (key, constant | Domain | Branch)


@dataclass(frozen=True)
class SearchSpace:
    """Parsed, validated search space: name -> Domain or nested SearchSpace."""

    entries: tuple[tuple[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def leaves(self, prefix: str = ""):
        """Yield (dotted path, Domain) for every searched entry."""
        for key, value in self.entries:
            path = f"{prefix}{key}"
            if isinstance(value, SearchSpace):
                yield from value.leaves(path + ".")
            else:
                yield path, value

    def to_tune(self) -> dict[str, Any]:
        """Ray Tune ``param_space`` fragment (grid entries become ``grid_search``)."""
        return {k: v.to_tune() if isinstance(v, SearchSpace) else _domain_to_tune(v)
                for k, v in self.entries}

    def to_grid(self) -> dict[str, Any]:
        """Like :meth:`to_tune`, with every ``choice`` enumerated as a grid."""
        out = {}
        for k, v in self.entries:
            if isinstance(v, SearchSpace):
                out[k] = v.to_grid()
            elif v.kind == "choice":
                from ray import tune

                out[k] = tune.grid_search([_constant(o) for o in v.args])
            else:
                out[k] = _domain_to_tune(v)
        return out

    def clip(self, config: dict[str, Any]) -> dict[str, Any]:
        """Bring PBT-perturbed values back inside their domains (in place; returned).

        Ray's PBT perturbs a continuous value by x0.8 or x1.2 without looking at its
        bounds, so momentum from uniform [0.5, 0.99] can become 1.19 and kill the trial.
        Used as PBT's ``custom_explore_fn``.
        """
        for path, domain in self.leaves():
            *parents, key = path.split(".")
            node = config
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            if not isinstance(node, dict) or key not in node:
                continue
            node[key] = _clip_value(domain, node[key])
        return config

    def pbt_mutations(self) -> dict[str, Any]:
        """PBT ``hyperparam_mutations`` derived from the same entries.

        Conditional choices are not mutable (a mutation cannot swap a whole branch
        while keeping its nested values consistent), so they are left out.
        """
        out: dict[str, Any] = {}
        for k, v in self.entries:
            if isinstance(v, SearchSpace):
                sub = v.pbt_mutations()
                if sub:
                    out[k] = sub
            elif v.is_conditional:
                continue
            elif v.kind in ("choice", "grid"):
                out[k] = [_constant(o) for o in v.args]
            else:
                out[k] = _domain_to_tune(v)
        return out


def _clip_value(domain: Domain, value: Any) -> Any:
    if domain.kind not in ("uniform", "loguniform", "quniform", "qloguniform", "randint") \
            or not _is_number(value):
        return value  # choices are resampled from their options; normal is unbounded
    low, high = domain.args[0], domain.args[1]
    if domain.kind == "randint":
        return int(min(max(round(value), low), high - 1))  # high is exclusive
    value = min(max(value, low), high)
    if domain.kind in ("quniform", "qloguniform"):
        q = domain.args[2]
        value = min(max(round(value / q) * q, low), high)
    return value


def _constant(option: Any) -> Any:
    if isinstance(option, Branch):
        return _branch_to_tune(option)
    return list(option) if isinstance(option, tuple) else option


def _branch_to_tune(branch: Branch) -> dict[str, Any]:
    out = {}
    for k, v in branch.items:
        if isinstance(v, Domain):
            out[k] = _domain_to_tune(v)
        elif isinstance(v, Branch):
            out[k] = _branch_to_tune(v)
        else:
            out[k] = v
    return out


def _domain_to_tune(d: Domain):
    from ray import tune

    a = d.args
    if d.kind == "uniform":
        return tune.uniform(a[0], a[1])
    if d.kind == "loguniform":
        return tune.loguniform(a[0], a[1])
    if d.kind == "quniform":
        return tune.quniform(a[0], a[1], a[2])
    if d.kind == "qloguniform":
        return tune.qloguniform(a[0], a[1], a[2])
    if d.kind == "randint":
        return tune.randint(a[0], a[1])
    if d.kind == "normal":
        return tune.randn(a[0], a[1])
    if d.kind == "choice":
        return tune.choice([_constant(o) for o in a])
    if d.kind == "grid":
        return tune.grid_search([_constant(o) for o in a])
    raise AssertionError(f"unhandled domain kind {d.kind}")  # parse() admits no other


# ---------------------------------------------------------------- parsing


def parse(raw: Any, path: str = "search_space") -> SearchSpace:
    """Validate the ``search_space`` mapping of an experiment file.

    Raises:
        SpecError: naming the entry, the rule and the value.
    """
    if raw is None:
        return SearchSpace()
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a mapping of name -> domain", raw)
    entries = []
    for key, value in raw.items():
        sub = f"{path}.{key}"
        if not isinstance(key, str) or not key:
            raise SpecError(path, "keys must be non-empty strings", key)
        if _looks_like_domain(value):
            entries.append((key, _parse_domain(value, sub)))
        elif isinstance(value, Mapping) and value:
            entries.append((key, parse(value, sub)))
        else:
            raise SpecError(
                sub,
                "must be a domain such as {uniform: [low, high]} or {choice: [...]} "
                "(fixed values belong under config)",
                value,
            )
    return SearchSpace(tuple(entries))


def _looks_like_domain(value: Any) -> bool:
    """A one-key mapping whose key is a domain kind, or whose value is a list."""
    if not isinstance(value, Mapping) or len(value) != 1:
        return False
    (key, arg), = value.items()
    return key in DOMAIN_KINDS or isinstance(arg, list)


def _parse_domain(value: Mapping, path: str) -> Domain:
    (kind, args), = value.items()
    if kind not in DOMAIN_KINDS:
        raise SpecError(path, f"unknown domain; valid domains are {', '.join(DOMAIN_KINDS)}", kind)
    where = f"{path}.{kind}"
    if not isinstance(args, list):
        raise SpecError(where, "must be a list", args)
    if kind in ("choice", "grid"):
        if not args:
            raise SpecError(where, "must list at least one option", args)
        options = tuple(_parse_option(o, f"{where}[{i}]", allow_branch=kind == "choice")
                        for i, o in enumerate(args))
        return Domain(kind, options)

    names = DOMAIN_KINDS[kind]
    if len(args) != len(names):
        raise SpecError(where, f"must be [{', '.join(names)}]", args)
    for name, x in zip(names, args):
        if not _is_number(x):
            raise SpecError(where, f"{name} must be a number", args)
    a = tuple(args)
    if kind == "randint" and not all(isinstance(x, int) for x in a):
        raise SpecError(where, "low and high must be integers", args)
    if kind == "normal":
        if a[1] <= 0:
            raise SpecError(where, "sd > 0 must hold", args)
        return Domain(kind, a)
    if not a[0] < a[1]:
        raise SpecError(where, "low < high must hold (the range is empty or reversed)", args)
    if kind in ("loguniform", "qloguniform") and a[0] <= 0:
        raise SpecError(where, "low > 0 must hold for a log scale", args)
    if kind in ("quniform", "qloguniform") and a[2] <= 0:
        raise SpecError(where, "q > 0 must hold", args)
    return Domain(kind, a)


def _parse_option(option: Any, path: str, allow_branch: bool) -> Any:
    if isinstance(option, Mapping):
        if not allow_branch:
            raise SpecError(path, "grid options must be plain values", option)
        return _parse_branch(option, path)
    if isinstance(option, list):
        return tuple(option)  # a constant list (e.g. hidden sizes [64, 64])
    return option


def _parse_branch(raw: Mapping, path: str) -> Branch:
    items = []
    for key, value in raw.items():
        sub = f"{path}.{key}"
        if _looks_like_domain(value):
            items.append((key, _parse_domain(value, sub)))
        elif isinstance(value, Mapping):
            items.append((key, _parse_branch(value, sub)))
        else:
            items.append((key, list(value) if isinstance(value, list) else value))
    return Branch(tuple(items))
