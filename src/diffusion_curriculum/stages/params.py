"""Reading params.yaml: validation against the schema, and each stage's own sections."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import jsonschema
import yaml

# Shipped inside the package, so an installed (not only an editable) copy validates params files.
SCHEMA_PATH = Path(__file__).resolve().with_name("params.schema.yaml")


class ParamsError(ValueError):
    """A params file that does not match the schema; the message names the file and the key."""


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        keys = ", ".join(f"{where}.{k}" if where != "<top level>" else k for k in extra)
        return f"{source}: unknown key {keys} (allowed here: {allowed})"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        keys = ", ".join(f"{where}.{k}" if where != "<top level>" else k for k in missing)
        return f"{source}: missing required key {keys}"
    if error.validator in ("type", "oneOf") and isinstance(error.instance, float):
        if not math.isfinite(error.instance):
            return f"{source}: {where}: {error.instance!r} is not a finite number"
        types = [e.validator_value for e in (error.context or [error]) if e.validator == "type"]
        wanted = {t for value in types for t in ([value] if isinstance(value, str) else value)}
        if error.instance.is_integer() and "integer" in wanted:
            return f"{source}: {where}: {error.instance!r} must be an integer (write {int(error.instance)})"
    if error.validator == "oneOf":
        return f"{source}: {where}: {error.instance!r} is not valid here (see {SCHEMA_PATH.name})"
    return f"{source}: {where}: {error.message}"


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _is_integer(checker, instance) -> bool:
    # JSON Schema counts 20.0 as an integer; a YAML float where a count or a step is meant is a typo that
    # would reach Snakemake as "step20.0", so only true ints pass (bool is an int in Python, and is not).
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_finite_number(checker, instance) -> bool:
    # YAML's .nan and .inf are floats; no key of this schema means them.
    return _is_integer(checker, instance) or (isinstance(instance, float) and math.isfinite(instance))


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_finite_number}
    ),
)


def validate(params: dict, source: str = "params.yaml") -> dict:
    """Raise ParamsError naming the first offending key (sorted by position), else return params.

    Integers must be ints (not 20.0) and numbers finite (not .nan or .inf)."""
    validator = _Validator(load_schema())
    errors = sorted(
        validator.iter_errors(params), key=lambda e: (len(e.absolute_path), list(e.absolute_path))
    )
    if errors:
        deepest = max(errors, key=lambda e: len(e.absolute_path))
        raise ParamsError(_describe(deepest, source))
    check_consistency(params, source)
    return params


def check_strategies(params: dict, source: str = "params.yaml") -> None:
    """Every method of the study has a ``strategies`` entry, and a named variant of a registered strategy
    (``kind: dtd``) satisfies that strategy's schema.  A class's own arguments are checked where the
    class is imported (:func:`diffusion_curriculum.timesteps.check_strategy_entry`: the Snakefile and
    the train stage), so that no other stage depends on the strategies' code."""
    entries = params["strategies"]
    schema = load_schema()
    registered = schema["properties"]["strategies"]["properties"]
    for name in params["study"]["methods"]:
        if name not in entries:
            raise ParamsError(
                f"{source}: study.methods names {name!r}, which has no entry under strategies "
                f"(configured: {', '.join(sorted(entries))})"
            )
        entry = dict(entries[name])
        kind = entry.pop("kind", name)
        entry.pop("seed_offset", None)  # a run setting beside the strategy's arguments, not one of them
        if kind in registered and kind != name:
            own_schema = {"$defs": schema["$defs"], **registered[kind]}
            errors = list(_Validator(own_schema).iter_errors(entry))
            if errors:
                where, path = f"strategies.{name}", _key_path(errors[0])
                inside = where if path == "<top level>" else f"{where}.{path}"
                message = _describe(errors[0], source)
                raise ParamsError(message.replace(f"{source}: {path}", f"{source}: {inside}", 1))


def check_consistency(params: dict, source: str = "params.yaml") -> None:
    """Rules that tie keys together, which the schema cannot express."""
    check_strategies(params, source)
    train = params["train"]
    late = [s for s in train["snapshots"] if s > train["iterations"]]
    if late:
        raise ParamsError(
            f"{source}: train.snapshots {late} lie beyond train.iterations = {train['iterations']}"
        )
    if train["iterations"] not in train["snapshots"]:
        raise ParamsError(
            f"{source}: train.snapshots must include the final step train.iterations = "
            f"{train['iterations']} (the final FID is read there)"
        )
    num = params["curriculum"]["num_clusters"]
    # The list exists only because DVC's matrix needs one; the convergence table needs every interval.
    if params["experts"]["intervals"] != list(range(1, num + 1)):
        raise ParamsError(
            f"{source}: experts.intervals must list 1..curriculum.num_clusters = {num} in order "
            f"(got {params['experts']['intervals']})"
        )
    extra = sorted(set(params["experts"]["stitch_intervals"]) - set(params["experts"]["intervals"]))
    if extra:
        raise ParamsError(f"{source}: experts.stitch_intervals {extra} have no expert (experts.intervals)")
    base = params["experts"]["stitch_base"]
    if base["method"] not in params["study"]["methods"] or base["seed"] not in params["study"]["seeds"]:
        raise ParamsError(
            f"{source}: experts.stitch_base {base} is not a run of the study (study.methods "
            f"{params['study']['methods']}, study.seeds {params['study']['seeds']})"
        )
    _check_convergence_rows(params, source)
    data = params["data"]
    if params["model"]["condition"] == "text" and data["captions_path"] is None:
        raise ParamsError(f"{source}: model.condition is text but data.captions_path is null")
    if data["captions_path"] is not None and data["max_images"] is not None:
        # Caption rows name images by their row in the full data set, which a subset renumbers.
        raise ParamsError(
            f"{source}: data.captions_path needs data.max_images: null (captions index the full data set)"
        )
    if params["kl"]["estimator"] == "score" and params["kl"]["score"]["source"] == "none":
        raise ParamsError(
            f"{source}: kl.estimator is 'score', but kl.score.source is 'none': the score estimator needs a "
            "trained model in the graph (source: experts) or kl.estimator: mixture"
        )
    baseline = params["report"]["baseline"]
    if baseline not in params["study"]["methods"]:
        raise ParamsError(
            f"{source}: report.baseline {baseline!r} is not one of study.methods "
            f"{params['study']['methods']} (differences are paired against it)"
        )


# difficulty.FIT_MIN_ROWS (a test keeps them equal): importing difficulty here would make every stage,
# which all read their params through this module, depend on the convergence code.
FIT_MIN_ROWS = 8


def _check_convergence_rows(params: dict, source: str) -> None:
    experts, convergence = params["experts"], params["convergence"]
    rows = (experts["iterations"] - convergence["start"]) // experts["log_every"]
    if convergence["band"] == "fit" and rows < FIT_MIN_ROWS:
        raise ParamsError(
            f"{source}: convergence.band 'fit' needs {FIT_MIN_ROWS} log rows after convergence.start, but "
            f"experts.iterations = {experts['iterations']}, convergence.start = {convergence['start']} and "
            f"experts.log_every = {experts['log_every']} leave {max(rows, 0)}"
        )


EXTENDS = "extends"
# First line of a file written by `compose`: such a file is a composition, never a base to compose on.
COMPOSED_HEADER = "# Composed by diffusion-curriculum from "


def _read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    text = path.read_text()
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    if text.startswith(COMPOSED_HEADER):
        params["__composed__"] = True
    return params


def _merge(base: dict, override: dict) -> dict:
    # Mappings merge key by key; anything else (lists included) replaces the base's value.
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def compose(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The parameters a params file stands for: its own keys over those of the file it names in
    ``extends:`` (a path relative to it), recursively.  A file without ``extends`` stands for itself.

    A preset can thus hold only what differs from ``params.yaml`` (``extends: ../params.yaml``).  Not
    validated here (:func:`load` does that).
    """
    path = Path(path)
    chain = (*_chain, path.resolve())
    params = _read_mapping(path)
    base_name = params.pop(EXTENDS, None)
    composed_file = params.pop("__composed__", False)
    if base_name is None:
        if composed_file and _chain:
            raise ParamsError(
                f"{path} holds a composed preset, not the defaults {_chain[-1].name} extends; restore it "
                f"(e.g. git checkout {path.name}) before composing another preset on it"
            )
        return params
    if not isinstance(base_name, str):
        raise ParamsError(f"{path}: {EXTENDS} must name a params file, got {base_name!r}")
    base_path = path.parent / base_name
    if base_path.resolve() in chain:
        loop = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise ParamsError(f"{path}: {EXTENDS} loops back ({loop})")
    return _merge(compose(base_path, chain), params)


def load(path: str | Path) -> dict:
    """Read (following ``extends:``) and validate a params file."""
    return validate(compose(path), str(path))


def write_composed(preset: str | Path, out: str | Path) -> Path:
    """Write the complete, validated parameters ``preset`` stands for to ``out`` (for DVC, which reads
    ``params.yaml`` key by key), headed by a line that names the preset."""
    from diffusion_curriculum.io import atomic_write_text

    params = load(preset)
    check_consistency(params, str(preset))
    header = f"{COMPOSED_HEADER}{preset}; restore the defaults with: git checkout {Path(out).name}\n"
    return atomic_write_text(out, header + yaml.safe_dump(params, sort_keys=False))


def sections(path: str | Path, *names: str) -> dict:
    """Validate the whole file, then return only the named sections (a stage reads nothing else)."""
    params = load(path)
    return {name: params[name] for name in names}


def metric_options(features: dict, evaluation: dict) -> dict:
    """The keyword arguments of ``metrics.compute_metrics`` that the ``features`` and ``evaluate`` sections
    set: one mapping for every stage that scores images (evaluate, evaluate_floor)."""
    return {
        "k": evaluation["precision_recall_k"],
        "batch_size": features["batch_size"],
        "is_splits": evaluation["is_splits"],
        "kid_subsets": evaluation["kid_subsets"],
        "kid_subset_size": evaluation["kid_subset_size"],
        "seed": evaluation["seed"],
    }


def fingerprint(*parts) -> str:
    """Stable short hash of JSON-serialisable values (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return name


def resolve_bf16(precision: str, device: str) -> bool:
    """Whether a stage runs its network under bf16 autocast: ``precision`` bf16 / fp32 as given; ``auto``
    on CUDA and on CPUs with bf16 arithmetic in hardware -- AMX tiles (Intel Sapphire Rapids on) or
    AVX512-BF16 dot products (AMD Zen 4 on, Intel Cooper Lake) -- where oneDNN's bf16 kernels beat fp32
    by 1.5x (BENCHMARKS.md); on other CPUs bf16 is emulated and slower than fp32."""
    if precision != "auto":
        return precision == "bf16"
    if device.startswith("cuda"):
        return True
    import torch

    # Private probes (torch.cpu has no public one); a torch without them gets the safe answer, fp32.
    names = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    probes = [getattr(torch.cpu, name, None) for name in names]
    return any(bool(probe()) for probe in probes if probe is not None)


def compose_main(argv: list[str] | None = None) -> None:
    """``diffusion-curriculum compose PRESET [-o OUT]``: the complete parameters a preset stands for."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="diffusion-curriculum compose",
        description="Write the complete, validated parameters a params file stands for (following its "
        "`extends:` chain): for DVC, which reads params.yaml key by key.",
    )
    ap.add_argument("preset", help="a params file, e.g. configs/smoke.yaml")
    ap.add_argument("-o", "--out", default=None, help="file to write (default: print to stdout)")
    args = ap.parse_args(argv)
    if args.out is None:
        params = load(args.preset)
        sys.stdout.write(yaml.safe_dump(params, sort_keys=False))
        return
    print(f"compose: {args.preset} -> {write_composed(args.preset, args.out)}")
