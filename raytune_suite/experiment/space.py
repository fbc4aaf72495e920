"""Search-space entries of the experiment file -> Ray Tune domains and PBT mutations.

An entry is a one-key mapping naming its domain, in Ray Tune's vocabulary::

    lr: {loguniform: [1.0e-4, 1.0e-1]}
    layers: {qrandint: [2, 8, 2]}
    batch_size: {choice: [32, 64, 128]}
    optimizer:                      # a choice of mappings: a conditional space
      choice:
        - {name: sgd, momentum: {uniform: [0.8, 0.99]}}
        - {name: adam}

Any other mapping is a namespace holding further entries (``optim: {lr: {...}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from raytune_suite.errors import SpecError

# kind -> argument names. Integer bounds follow Ray Tune: randint and lograndint exclude
# `high`, qrandint and qlograndint include it.
DOMAIN_KINDS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "loguniform": ("low", "high"),
    "qloguniform": ("low", "high", "q"),
    "randint": ("low", "high"),
    "qrandint": ("low", "high", "q"),
    "lograndint": ("low", "high"),
    "qlograndint": ("low", "high", "q"),
    "normal": ("mean", "sd"),
    "qnormal": ("mean", "sd", "q"),
    "choice": (),
    "grid": (),
}
# Ray Tune's own names for the same domains.
ALIASES = {"randn": "normal", "qrandn": "qnormal", "grid_search": "grid"}
KNOWN = (*DOMAIN_KINDS, *ALIASES)
INTEGER_KINDS = ("randint", "qrandint", "lograndint", "qlograndint")
LOG_KINDS = ("loguniform", "qloguniform", "lograndint", "qlograndint")
# Ray Tune domains the suite does not offer, with what to use instead.
UNSUPPORTED = {
    "sample_from": "a Python function cannot be written in YAML; use choice or a range",
    "func": "a Python function cannot be written in YAML; use choice or a range",
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Domain:
    """One searched hyperparameter (``kind`` is canonical: aliases are resolved)."""

    kind: str
    args: tuple  # numeric arguments, or the options of choice/grid

    @property
    def is_conditional(self) -> bool:
        """A choice between mappings (each may hold nested domains)."""
        return self.kind == "choice" and any(isinstance(o, Branch) for o in self.args)

    @property
    def bounds(self) -> tuple[float, float] | None:
        """Inclusive (low, high) of a bounded numeric domain, else None."""
        if self.kind in ("normal", "qnormal", "choice", "grid"):
            return None
        low, high = self.args[0], self.args[1]
        if self.kind in ("randint", "lograndint"):
            high -= 1  # Ray excludes high
        return low, high


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

    def leaves(self, prefix: str = "") -> Iterator[tuple[str, Domain]]:
        """Yield (dotted path, Domain) for every searched entry (not inside branches)."""
        for keys, domain in self.keyed_leaves():
            yield prefix + ".".join(keys), domain

    def keyed_leaves(self, keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Domain]]:
        """Like :meth:`leaves`, each path as its tuple of keys (a key may hold a dot)."""
        for key, value in self.entries:
            if isinstance(value, SearchSpace):
                yield from value.keyed_leaves(keys + (key,))
            else:
                yield keys + (key,), value

    def all_domains(self, prefix: str = "") -> Iterator[tuple[str, Domain]]:
        """Like :meth:`leaves`, also descending into the branches of conditional choices
        (paths such as ``optimizer.choice[1].momentum``)."""
        for path, domain in self.leaves(prefix):
            yield path, domain
            yield from _branch_domains(domain, path)

    def to_tune(self) -> dict[str, Any]:
        """Ray Tune ``param_space`` fragment (grid entries become ``grid_search``)."""
        return {k: v.to_tune() if isinstance(v, SearchSpace) else _domain_to_tune(v)
                for k, v in self.entries}

    def to_grid(self) -> dict[str, Any]:
        """Like :meth:`to_tune`, with every ``choice`` enumerated as Ray Tune's
        ``grid_search`` (which nests by name; see :meth:`grid_points`)."""
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

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the ``grid``/``choice`` entries, as nested loops in the
        order the file writes them: the first entry is the outermost loop, the last varies
        fastest, and each entry's values come in the order written (``itertools.product``).

        Ray Tune's own ``grid_search`` nests by name instead (the name first in
        alphabetical order varies fastest), whatever order the file writes.
        """
        import itertools

        leaves = list(self.keyed_leaves())
        points = []
        for values in itertools.product(*([_constant(o) for o in d.args] for _, d in leaves)):
            point: dict[str, Any] = {}
            for (keys, _), value in zip(leaves, values):
                node = point
                for parent in keys[:-1]:
                    node = node.setdefault(parent, {})
                node[keys[-1]] = value
            points.append(point)
        return points

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
        """PBT ``hyperparam_mutations`` of these entries: a list for choice/grid (PBT
        shifts to a neighbour or resamples), a Ray domain otherwise.

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


def _branch_domains(domain: Domain, path: str) -> Iterator[tuple[str, Domain]]:
    if domain.kind not in ("choice", "grid"):
        return
    for i, option in enumerate(domain.args):
        if isinstance(option, Branch):
            yield from _walk_branch(option, f"{path}.choice[{i}]")


def _walk_branch(branch: Branch, path: str) -> Iterator[tuple[str, Domain]]:
    for key, value in branch.items:
        if isinstance(value, Domain):
            yield f"{path}.{key}", value
            yield from _branch_domains(value, f"{path}.{key}")
        elif isinstance(value, Branch):
            yield from _walk_branch(value, f"{path}.{key}")


def _clip_value(domain: Domain, value: Any) -> Any:
    if not _is_number(value):
        return value  # choices are resampled from their options
    if domain.kind == "qnormal":
        return round(value / domain.args[2]) * domain.args[2]
    bounds = domain.bounds
    if bounds is None:
        return value  # normal is unbounded
    low, high = bounds
    value = min(max(value, low), high)
    if domain.kind in ("quniform", "qloguniform", "qrandint", "qlograndint"):
        q = domain.args[2]
        value = min(max(round(value / q) * q, low), high)
    if domain.kind in INTEGER_KINDS:
        value = int(round(value))
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
    factories = {
        "uniform": tune.uniform, "quniform": tune.quniform,
        "loguniform": tune.loguniform, "qloguniform": tune.qloguniform,
        "randint": tune.randint, "qrandint": tune.qrandint,
        "lograndint": tune.lograndint, "qlograndint": tune.qlograndint,
        "normal": tune.randn, "qnormal": tune.qrandn,
    }
    if d.kind in factories:
        return factories[d.kind](*a)
    if d.kind == "choice":
        return tune.choice([_constant(o) for o in a])
    if d.kind == "grid":
        return tune.grid_search([_constant(o) for o in a])
    raise AssertionError(f"unhandled domain kind {d.kind}")  # parse() admits no other


# ---------------------------------------------------------------- parsing


def parse(raw: Any, path: str = "search_space", lists_are_choices: bool = False
          ) -> SearchSpace:
    """Validate a mapping of name -> domain (``search_space``, or PBT's
    ``hyperparam_mutations`` where, as in Ray, a plain list is a categorical domain).

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
        if lists_are_choices and isinstance(value, list):
            value = {"choice": value}
        try:
            is_domain = looks_like_domain(value)
        except SpecError as e:
            raise _with_path(e, sub) from None
        if is_domain:
            entries.append((key, _parse_domain(value, sub)))
        elif isinstance(value, Mapping) and value:
            entries.append((key, parse(value, sub, lists_are_choices)))
        else:
            raise SpecError(
                sub,
                "must be a domain such as {uniform: [low, high]} or {choice: [...]} "
                "(fixed values belong under config)",
                value,
            )
    return SearchSpace(tuple(entries))


def looks_like_domain(value: Any) -> bool:
    """A one-key mapping whose key names a domain, or whose value is a list.

    Raises:
        SpecError: for a mapping that names a domain beside other keys
            (``{uniform: [0, 20], q: 2}``), which would otherwise pass as a namespace.
    """
    if not isinstance(value, Mapping):
        return False
    named = [k for k in value if k in KNOWN or k in UNSUPPORTED]
    if named and len(value) > 1:
        raise _extra_keys_error(value, named[0])
    if len(value) != 1:
        return False
    (key, arg), = value.items()
    return key in KNOWN or key in UNSUPPORTED or isinstance(arg, list)


def _extra_keys_error(value: Mapping, kind: str) -> SpecError:
    others = [str(k) for k in value if k != kind]
    hint = ""
    if "q" in others and kind in ("uniform", "loguniform", "randint", "lograndint",
                                  "normal", "randn"):
        q_kind = {"normal": "qnormal", "randn": "qrandn"}.get(kind, "q" + kind)
        args = list(value[kind]) if isinstance(value[kind], list) else value[kind]
        hint = f" (for steps of q write {{{q_kind}: {args + [value['q']]}}})" \
            if isinstance(args, list) else ""
    return SpecError(_PATH_PLACEHOLDER, f"a domain is a mapping with one key, its name; "
                                        f"{', '.join(others)} cannot stand beside {kind}"
                                        f"{hint}", dict(value))


_PATH_PLACEHOLDER = "\0"  # replaced by the caller's path (see _with_path)


def _with_path(error: SpecError, path: str) -> SpecError:
    if error.field == _PATH_PLACEHOLDER:
        return SpecError(path, error.rule, error.value)
    return error


def _parse_domain(value: Mapping, path: str) -> Domain:
    (kind, args), = value.items()
    if kind in UNSUPPORTED:
        raise SpecError(path, f"{kind} is not supported: {UNSUPPORTED[kind]}", kind)
    if kind not in KNOWN:
        raise SpecError(path, f"unknown domain; valid domains are {', '.join(KNOWN)}", kind)
    where = f"{path}.{kind}"
    canonical = ALIASES.get(kind, kind)
    if not isinstance(args, list):
        raise SpecError(where, "must be a list", args)
    if canonical in ("choice", "grid"):
        if not args:
            raise SpecError(where, "must list at least one option", args)
        options = tuple(_parse_option(o, f"{where}[{i}]", allow_branch=canonical == "choice")
                        for i, o in enumerate(args))
        return Domain(canonical, options)
    return Domain(canonical, _check_numeric(canonical, args, where))


def _check_numeric(kind: str, args: list, where: str) -> tuple:
    names = DOMAIN_KINDS[kind]
    if len(args) != len(names):
        raise SpecError(where, f"must be [{', '.join(names)}]", args)
    for name, x in zip(names, args):
        if not _is_number(x):
            raise SpecError(where, f"{name} must be a number", args)
    a = tuple(args)
    if kind in INTEGER_KINDS and not all(isinstance(x, int) for x in a):
        raise SpecError(where, f"{', '.join(names)} must be integers", args)
    if kind in ("normal", "qnormal"):
        if a[1] <= 0:
            raise SpecError(where, "sd > 0 must hold", args)
    else:
        if not a[0] < a[1]:
            raise SpecError(where, "low < high must hold (the range is empty or reversed)",
                            args)
        if kind in LOG_KINDS and a[0] <= 0:
            raise SpecError(where, "low > 0 must hold for a log scale", args)
    if len(a) == 3 and a[2] <= 0:
        raise SpecError(where, "q > 0 must hold", args)
    return a


def _parse_option(option: Any, path: str, allow_branch: bool) -> Any:
    if isinstance(option, Mapping):
        if not allow_branch:
            raise SpecError(path, "grid options must be plain values", option)
        try:
            is_domain = looks_like_domain(option)
        except SpecError as e:
            raise _with_path(e, path) from None
        if is_domain:
            raise SpecError(path, "a choice option cannot be a domain (the trainable would "
                                  "get the mapping itself); name it inside a mapping option, "
                                  "e.g. {name: a, x: {uniform: [0, 1]}}", dict(option))
        return _parse_branch(option, path)
    if isinstance(option, list):
        return tuple(option)  # a constant list (e.g. hidden sizes [64, 64])
    return option


def _parse_branch(raw: Mapping, path: str) -> Branch:
    items = []
    for key, value in raw.items():
        sub = f"{path}.{key}"
        try:
            is_domain = looks_like_domain(value)
        except SpecError as e:
            raise _with_path(e, sub) from None
        if is_domain:
            domain = _parse_domain(value, sub)
            if domain.kind == "grid":
                raise SpecError(sub, "grid cannot sit inside a conditional choice (no "
                                     "searcher enumerates it there); use choice", value)
            items.append((key, domain))
        elif isinstance(value, Mapping):
            items.append((key, _parse_branch(value, sub)))
        else:
            items.append((key, list(value) if isinstance(value, list) else value))
    return Branch(tuple(items))


def find_domain_literal(value: Any, path: str) -> str | None:
    """The path of the first mapping under ``value`` that is written like a domain
    (``{uniform: [0, 1]}``), or None. Fixed config values must not look like one: Ray
    would hand the trainable the mapping itself."""
    if isinstance(value, Mapping):
        if len(value) == 1 and next(iter(value)) in KNOWN:
            return path
        for k, v in value.items():
            found = find_domain_literal(v, f"{path}.{k}")
            if found:
                return found
    return None
