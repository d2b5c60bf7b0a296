"""Datasets and prompts: one home for reading rows (hub or local files) and for formatting prompts.

The GRPO trainer, the SFT trainer and the evaluator all build prompt text with ``prompt_text`` and
left-padded prompt ids with ``encode_prompts``, so a checkpoint is evaluated with the prompts it was
trained on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile

logger = logging.getLogger(__name__)


def read_jsonl(path: str) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line; a line that is not one is a one-line error
    naming the file and the line number."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object."
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path} line {number}: a JSON {type(row).__name__}, not an object; each line must "
                    "be one JSON object with the dataset's columns."
                )
            rows.append(row)
    return rows


def load_rows(config):
    """The configured split as a ``datasets.Dataset`` (hub id or local files), columns renamed and checked."""
    from datasets import load_dataset

    if config.dataset_files:
        ext = config.dataset_files[0].rsplit(".", 1)[-1]
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
        if builder is None:
            raise ValueError(f"dataset_files: cannot read .{ext} files; use .jsonl, .json, .csv or .parquet.")
        try:
            dataset = load_dataset(
                builder, data_files=list(config.dataset_files), split="train", cache_dir=_writable_cache()
            )
        except Exception:
            for path in config.dataset_files:  # name the file and line instead of datasets' parser traceback
                if path.endswith(".jsonl"):
                    read_jsonl(path)
            raise
    else:
        try:
            dataset = load_dataset(config.dataset_name, config.dataset_config, split=config.dataset_split)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise ValueError(
                f"the datasets cache is not writable ({exc.strerror}: {exc.filename}); set "
                "HF_DATASETS_CACHE (or HF_HOME) to a writable folder, or give the data as "
                "dataset_files."
            ) from None
    for item in config.rename_columns or []:
        old, new = item.split(":")
        if old not in dataset.column_names:
            raise ValueError(
                f"rename_columns: no column {old!r} to rename; the data has {dataset.column_names}."
            )
        dataset = dataset.rename_column(old, new)
    named = {"prompt_column": config.prompt_column}
    for field in ("completion_column", "chosen_column", "rejected_column"):  # SFT's target, DPO's pair
        if hasattr(config, field):
            named[field] = getattr(config, field)
    require_columns(dataset.column_names, named)
    empty = [i for i, value in enumerate(dataset[config.prompt_column]) if _is_empty(value)]
    if empty and getattr(config, "drop_empty_prompts", False):
        logger.warning(
            "dropped %d rows with an empty prompt (drop_empty_prompts): rows %s", len(empty), _rows(empty)
        )
        keep = set(empty)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in keep])
    elif empty:
        raise ValueError(
            f"{len(empty)} rows have an empty {config.prompt_column!r} (rows {_rows(empty)}, counting from 0); "
            "fix the data or set drop_empty_prompts true."
        )
    return dataset


def _writable_cache() -> str | None:
    """None (datasets' own cache) when that cache can be written; else a private temporary folder, so that
    local files still load from a read-only shared cache (a cluster's HF_HOME mounted read-only)."""
    import datasets.config

    root = str(datasets.config.HF_DATASETS_CACHE)
    try:
        os.makedirs(root, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
        return None
    except OSError as exc:
        private = tempfile.mkdtemp(prefix="align-datasets-")
        import atexit
        import shutil

        atexit.register(shutil.rmtree, private, ignore_errors=True)
        logger.warning(
            "the datasets cache %s is not writable (%s); local data files are read through %s instead.",
            root,
            exc.strerror,
            private,
        )
        return private


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):  # chat messages
        return not value or all(
            not str(m.get("content", "") if isinstance(m, dict) else m).strip() for m in value
        )
    return False


def _rows(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:10]))
    return shown + (f", ... {len(indices) - 10} more" if len(indices) > 10 else "")


def require_columns(columns: list[str], named: dict[str, str]) -> None:
    """Raise naming the config field when a configured column (``{field: column}``) is missing."""
    for field, column in named.items():
        if column not in columns:
            raise ValueError(
                f"{field} {column!r} is not a column of the data; it has {columns}. Set --{field} to the "
                "column that holds it (or rename with --rename_columns old:new)."
            )


def prompt_text(
    tokenizer,
    question,
    *,
    system_prompt: str | None = None,
    use_chat_template: bool = True,
    system_in_user: bool = False,
) -> str:
    """The prompt string for one question (a string, or a list of chat messages). ``system_in_user`` puts
    the system prompt at the start of the first user turn (for chat templates without a system role)."""
    if not use_chat_template:
        if isinstance(question, list):  # str() of chat messages would be their Python repr
            raise ValueError(
                "the prompts are chat messages (lists of role / content), but use_chat_template is "
                "false; set use_chat_template true, or give plain-text prompts."
            )
        return (system_prompt + "\n" if system_prompt else "") + str(question)
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else list(question)
    if system_prompt and system_in_user:
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            raise ValueError("system_in_user needs a user turn to put the system prompt in.")
        messages[first] = {**messages[first], "content": f"{system_prompt}\n\n{messages[first]['content']}"}
    elif system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    tokenizer,
    prompts: list[str],
    *,
    max_length: int,
    use_chat_template: bool,
    add_special_tokens: bool | None = None,
) -> dict:
    """Left-padded, left-truncated ``input_ids`` / ``attention_mask`` [B, P] (chat text carries its own BOS,
    so the tokenizer's special tokens are added only to plain text, unless ``add_special_tokens`` says)."""
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    special = (not use_chat_template) if add_special_tokens is None else add_special_tokens
    return tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_length,
        add_special_tokens=special,
    )


def row_prompt(tokenizer, row: dict, args) -> str:
    """A recipe row's prompt text: its ``prompt_column`` with the recipe's ``system_prompt`` and
    ``use_chat_template`` (GRPO rollouts, SFT and DPO alike)."""
    return prompt_text(
        tokenizer,
        row[args.prompt_column],
        system_prompt=args.system_prompt,
        use_chat_template=args.use_chat_template,
    )


def encode_rows(tokenizer, rows: list[dict], args) -> tuple[list[str], dict]:
    """The prompt texts of ``rows`` (``row_prompt``) and their left-padded encoding (``encode_prompts`` at the
    recipe's ``max_prompt_length``)."""
    texts = [row_prompt(tokenizer, row, args) for row in rows]
    enc = encode_prompts(
        tokenizer, texts, max_length=args.max_prompt_length, use_chat_template=args.use_chat_template
    )
    return texts, enc
