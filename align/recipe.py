"""Reading a recipe: YAML + ``--field value`` pairs -> checked values, and the help of a command (no torch
imported).

Before the heavy config import the command line reads the recipe YAML, rejects unknown fields (with "did you
mean"), converts and checks every value, and runs the same cross-field checks the config runs
(``preflight``), so a typo costs a fraction of a second. ``TrainingArguments``' own field names, types and
defaults are read from transformers' source without importing it (``training_args_fields``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import os
import types
from dataclasses import dataclass

from align.checks import check_model_data, resolve_and_check_grpo, resolve_eval
from align.fields import BUILTIN_REWARDS, GROUP_OF_HELP, GROUPS, check_dpo, check_sft


# ---- TrainingArguments' fields, read from transformers' source (importing it costs seconds) ------------
@dataclass(frozen=True)
class FieldInfo:
    name: str
    annotation: str  # e.g. "int | None", "list[str]"
    default: object
    help: str
    group: str


@functools.cache
def training_args_fields() -> dict[str, FieldInfo]:
    """``TrainingArguments``' fields (name, annotation, literal default or None, help), without importing it."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return {}
    with open(os.path.join(os.path.dirname(spec.origin), "training_args.py")) as f:
        tree = ast.parse(f.read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingArguments")
    out = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)) or node.value is None:
            continue
        default, text = None, ""
        if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "field":
            for kw in node.value.keywords:
                if kw.arg == "default":
                    default = _literal(kw.value)
                elif kw.arg == "metadata" and isinstance(kw.value, ast.Dict):
                    for k, v in zip(kw.value.keys, kw.value.values):
                        if _literal(k) == "help":
                            text = _literal(v) or ""
        else:
            default = _literal(node.value)
        name = node.target.id
        out[name] = FieldInfo(
            name, ast.unparse(node.annotation), default, " ".join(str(text).split()), "trainer"
        )
    if out and "activation_checkpointing" not in out:  # transformers before 5.2x: align.config adds it
        out["activation_checkpointing"] = FieldInfo(
            "activation_checkpointing", "bool", False, ACTIVATION_CHECKPOINTING_HELP, "trainer"
        )
    return out


ACTIVATION_CHECKPOINTING_HELP = "recompute activations in the backward pass (less memory, more time)"


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def our_fields(cls) -> dict[str, FieldInfo]:
    out = {}
    for f in dataclasses.fields(cls):
        group = GROUP_OF_HELP.get(f.metadata.get("help", ""))
        if group is None:  # TrainingArguments' own, when cls is a full config
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = FieldInfo(f.name, _annotation(cls, f.name), default, f.metadata["help"], group)
    return out


def _annotation(cls, name: str) -> str:
    """A field's annotation as written (``"float | None"``): from the class bodies, because transformers'
    HfArgumentParser rewrites ``Field.type`` in place (``float | None`` becomes ``float``) when it parses a
    config class that inherits the field, which would change how a later command in the process converts."""
    for klass in cls.__mro__:
        written = vars(klass).get("__annotations__", {})
        if name in written:
            return str(written[name])
    raise KeyError(name)


# ---- reading a recipe: YAML + --field value pairs -> checked values ------------------------------------
def convert(name: str, annotation: str, value):
    """``value`` (a command-line string or a YAML value) as the field's type; ValueError in one line."""
    kinds = {k.strip() for k in annotation.replace("Optional[", "").rstrip("]").split("|")}
    if value is None or (isinstance(value, str) and value == "None" and "None" in kinds):
        return None
    lists = [k for k in kinds if k.startswith("list[")]
    if lists and ("str" not in kinds or isinstance(value, list)):
        inner = lists[0][5:-1]
        items = value if isinstance(value, list) else [value]
        return [convert(name, inner, v) for v in items]
    if isinstance(value, list):
        if len(value) == 1:
            return convert(name, annotation, value[0])
        raise ValueError(f"--{name} takes one value, got {len(value)}: {value}.")
    for kind, parse in (("bool", _bool), ("int", _int), ("float", float)):
        if kind in kinds:
            try:
                return parse(value)
            except (TypeError, ValueError):
                if "str" in kinds:
                    break  # e.g. "str | bool": any other text is a string
                expected = {"bool": "true or false", "int": "an integer", "float": "a number"}[kind]
                raise ValueError(f"--{name} {value!r} is not {expected}.") from None
    return str(value) if "str" in kinds and isinstance(value, (int, float)) else value


def _int(value) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(value)


def parse_overrides(argv: list[str], known: dict[str, FieldInfo]) -> dict[str, object]:
    """``--field value [value ...]`` pairs (exact names: no prefixes) -> {field: raw value(s)}."""
    out: dict[str, object] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r}; fields are given as --field value.")
        name, eq, inline = token[2:].partition("=")
        name = name.replace("-", "_")  # --num-generations and --num_generations alike
        negated = name.startswith("no_") and name not in known and name[3:] in known
        field_name = name[3:] if negated else name
        if field_name not in known:
            raise ValueError(f"unknown field --{name}{suggest(name, known)}")
        values = [inline] if eq else []
        i += 1
        while not eq and i < len(argv) and not (argv[i].startswith("--") and len(argv[i]) > 2):
            values.append(argv[i])
            i += 1
        if negated:
            if values:
                raise ValueError(f"--{name} takes no value.")
            out[field_name] = False
        elif not values:
            if "bool" not in known[field_name].annotation:
                raise ValueError(f"--{name} needs a value.")
            out[field_name] = True
        else:
            out[field_name] = (
                values if len(values) > 1 or known[field_name].annotation.startswith("list") else values[0]
            )
    return out


_YAML11_BOOLS = ("yes", "no", "on", "off", "y", "n")


def _check_yaml_traps(path: str, root, known) -> None:
    """A recipe's YAML read strictly: a field given twice is refused (YAML keeps the last silently), and a bare
    yes / no / on / off for a field that is not a boolean (YAML 1.1 reads ``save_strategy: no`` as false) is
    refused with the quoted form to write."""
    if root is None or not hasattr(root, "value") or not isinstance(root.value, list):
        return
    seen: dict[str, int] = {}
    for key, value in root.value:
        name = getattr(key, "value", None)
        if not isinstance(name, str):
            continue
        line = key.start_mark.line + 1
        if name in seen:
            raise ValueError(
                f"{path}: field {name!r} is given twice (lines {seen[name]} and {line}); keep one."
            )
        seen[name] = line
        info = known.get(name)
        is_bool = info is not None and str(info.annotation).startswith("bool")
        if (
            getattr(value, "tag", "").endswith(":bool")
            and value.style is None
            and str(value.value).lower() in _YAML11_BOOLS
            and not is_bool
        ):
            raise ValueError(
                f"{path}: line {line}: YAML reads {name}: {value.value} as a boolean; quote it: "
                f'{name}: "{value.value}".'
            )


def suggest(name: str, known, prefix: str = "--") -> str:
    """'; did you mean --x?' for the closest known names, else '.'."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else "."


def recipe_values(cls, path: str | None, overrides: list[str], prog: str) -> dict[str, object]:
    """The recipe's fields (YAML, then the command line), names and values checked, not yet defaulted."""
    import yaml

    known = {**training_args_fields(), **our_fields(cls)}
    values: dict[str, object] = {}
    if path is not None:
        if os.path.isdir(path):
            raise ValueError(
                f"--config {path} is a folder; give a recipe YAML file (e.g. {path.rstrip('/')}/grpo.yaml)."
            )
        try:
            with open(path) as f:
                text = f.read()
            if not text.strip():
                raise ValueError(
                    f"--config {path} is empty; give a recipe with fields, or leave --config out and "
                    "give every field on the command line."
                )
            values = yaml.safe_load(text) or {}
            _check_yaml_traps(path, yaml.compose(text, Loader=yaml.SafeLoader), known)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())}).") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(values).__name__}.")
        for name in values:
            if name not in known:
                hint = suggest(name, known, prefix="")
                raise ValueError(
                    f"{path}: unknown config field {name!r}{hint[:-1] if hint == '.' else hint} "
                    f"`{prog} --help` lists the fields."
                )
            if isinstance(values[name], dict):
                raise ValueError(f"{path}: field {name!r} is a nested mapping; flatten it.")
    values.update(parse_overrides(overrides, known))
    return {name: convert(name, known[name].annotation, value) for name, value in values.items()}


def check_output_dir(path: str) -> None:
    """output_dir is, or can be created as, a folder this process can write; nothing is created here."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output_dir {path} is a file; give a folder (it is created when missing).")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"output_dir {path} cannot be created: {existing} is a file.")
    try:
        probe = os.path.join(existing, f".align-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ValueError(
            f"output_dir {path} is not writable ({exc.strerror} in {existing}); give a folder you can write."
        ) from None


def check_hub_push(view) -> None:
    """push_to_hub needs a token and a reachable hub: checked before training, not after it."""
    if not getattr(view, "push_to_hub", False):
        return
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ValueError("push_to_hub true, but HF_HUB_OFFLINE is set; unset it or set push_to_hub false.")
    if not get_token():
        raise ValueError("push_to_hub true needs a hub token: run `hf auth login` or set HF_TOKEN.")
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=10).close()
    except OSError as exc:
        raise ValueError(
            f"push_to_hub true, but the hub ({host}) is unreachable ({exc}); set push_to_hub false "
            "and upload the output folder later."
        ) from None


def preflight(cls, values: dict[str, object]) -> None:
    """Run the config's own checks on a plain view (TrainingArguments' literal defaults, the fields'
    defaults, the recipe's values) and the local paths it names, before anything heavy is imported."""
    from align.errors import check_model_path

    view = types.SimpleNamespace(
        **{n: f.default for n, f in training_args_fields().items()},
        **{n: f.default for n, f in our_fields(cls).items()},
    )
    for name, value in values.items():
        setattr(view, name, value)
    view.eval_strategy = view.eval_strategy or "no"
    if view.per_device_train_batch_size is None or view.gradient_accumulation_steps is None:
        return  # transformers' source did not give its defaults; the config checks everything later
    if hasattr(view, "reward_funcs"):
        resolve_eval(view)
    check_model_data(view)
    if hasattr(view, "reward_funcs"):
        resolve_and_check_grpo(view)
        check_reward_specs(view.reward_funcs)
    if hasattr(view, "chosen_column"):
        check_dpo(view)
    if hasattr(view, "growing_fraction"):
        check_sft(view)
    if not getattr(view, "init_config", None):
        check_model_path(view.model_name_or_path, "model_name_or_path")
    for path in view.dataset_files or []:
        if not os.path.exists(path):
            raise ValueError(f"dataset_files: {path} does not exist (paths are relative to {os.getcwd()}).")
        if os.path.isfile(path) and _blank_file(path):
            raise ValueError(
                f"dataset_files: {path} is empty (no rows); give a file with one row per line "
                "(JSONL), or the file this recipe meant."
            )
    from align.machine import check_report_to

    check_report_to(getattr(view, "report_to", None))
    if view.output_dir:
        check_output_dir(view.output_dir)
    check_hub_push(view)


def _blank_file(path: str) -> bool:
    """True when the file holds nothing but whitespace (read until the first other byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def check_reward_specs(specs: list[str]) -> None:
    """Built-in names (with their parameters) and file paths are checked here; modules are imported when the
    trainer starts."""
    for full in specs:
        spec, params = full, {}
        if "(" in full:
            from rewards import split_params

            spec, params = split_params(full)
        if params and spec in BUILTIN_REWARDS:
            from rewards import get

            get(full)  # its parameters: names and values
        target = spec.rsplit(":", 1)[0] if ":" in spec else None
        if target is None and spec not in BUILTIN_REWARDS:
            hint = suggest(spec, BUILTIN_REWARDS, prefix="")
            raise ValueError(
                f"unknown reward {spec!r}{'.' if hint == '.' else hint} Built-ins are "
                f"{', '.join(BUILTIN_REWARDS)}, or give package.module:function or path/to/file.py:function."
            )
        if target is not None and target.endswith(".py") and not os.path.isfile(target):
            raise ValueError(
                f"reward {spec!r}: file {target} does not exist (paths are relative to {os.getcwd()})."
            )
        if target is not None and target.endswith(".py"):
            with open(target, "rb") as f:
                source = f.read()
            try:
                compile(source, target, "exec")
            except SyntaxError as exc:
                raise ValueError(
                    f"reward file {target} line {exc.lineno}: {exc.msg}; fix the file."
                ) from None


# ---- help: the project's fields first, grouped; TrainingArguments' after them --------------------------
def render_help(cls, prog: str, description: str) -> str:
    lines = [
        f"usage: {prog} [--config RECIPE.yaml] [--field value ...]",
        "",
        description + ". A recipe YAML "
        "sets fields; --field value overrides it (the command line wins). Booleans: --flag true|false.",
        "",
    ]
    ours = our_fields(cls)
    for group in GROUPS:
        members = [f for f in ours.values() if f.group == group]
        if members:
            lines.append(f"{group}:")
            lines += [_help_line(f) for f in members]
            lines.append("")
    lines.append(
        "training (transformers.TrainingArguments: output_dir, batch sizes, optimizer, saving, logging):"
    )
    lines += [_help_line(f, short=True) for f in training_args_fields().values() if f.name not in ours]
    return "\n".join(lines) + "\n"


def _help_line(f: FieldInfo, short: bool = False) -> str:
    text = f.help.split(". ")[0].rstrip(".") + "." if short and f.help else f.help
    default = "" if f.default in (None, "", []) else f" (default: {f.default})"
    return f"  --{f.name} {f.annotation.upper().replace(' | NONE', '')}\n      {text}{default}"
