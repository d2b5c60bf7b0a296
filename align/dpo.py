"""Preference optimisation for masked diffusion LMs: DPO with Monte Carlo log-likelihoods, VRPO by default.

    align dpo --config RECIPE.yaml [--field value ...]        (also: accelerate launch -m align.dpo ...)

Data: TRL's preference columns, ``prompt`` / ``chosen`` / ``rejected`` (renamable), each plain text or chat
messages (a response given as messages is the text of its messages). A row is laid out as generation
sees it: the left-padded prompt, then the response and its end token padded with EOS to
``max_completion_length``. The estimator noises that whole canvas and scores the response and its end
token (as ``align train`` scores a rollout up to its first EOS).

Log-likelihoods: a response's sequence log-likelihood is an ``align.logprob`` estimate (default ``elbo``
with n = ``num_mc_samples`` = 8 stratified timesteps, one mask each). VRPO (Zhu et al. 2025, LLaDA 1.5)
cuts the variance of the DPO loss estimate by drawing each response's (timestep, mask) once and using it
for the policy *and* the reference (``share_masks``, default true): the noise common to both estimates
cancels in the log-ratio. ``masks_per_timestep`` spends the budget on fewer timesteps with several masks
each (VRPO recommends 1). Masks come from a generator seeded by (seed, row, step), so a resumed run draws
what the interrupted one drew; with ``precompute_ref_log_probs`` they are fixed per row and the reference
is estimated once before training.

Loss: ``align.losses.dpo_loss`` (TRL's sigmoid / hinge / ipo, label smoothing). DPO's loss is not linear
in the estimates, so with ``mc_backward: chunked`` (default) the gradient flows through a detached loss,
pass chunk by pass chunk (``align.mc_backward``): n = 8 costs the memory of ``mc_chunk_size`` passes.
Reference: a frozen copy of the model, or under LoRA the same model with the adapter disabled. Metrics use
TRL's DPO keys (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected).

Bad rows stop the run before training with the row named (an empty or missing response, chosen equal to
rejected); pairs with a response longer than ``max_completion_length`` are dropped, counted and named in
the log. Not covered: TRL's other DPO loss types, reference-model syncing, padding-free packing.
"""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

from align.checkpoints import SafeCheckpointMixin
from align.config import DPOConfig
from align.data import encode_prompts, row_prompt
from align.logprob import combine, make_plan, pass_logprobs
from align.logprob.estimators import MaskPlan
from align.losses import dpo_loss
from align.mc_backward import ChunkedBackwardMixin
from align.models import family_spec
from align.policy_trainer import PolicyTrainerMixin

logger = logging.getLogger(__name__)


def response_text(value) -> str:
    """A response as text: a string, or the assistant turns of a list of chat messages (datasets such as
    UltraFeedback repeat the user turn inside chosen / rejected; it belongs to the prompt)."""
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"] or value
        return "".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in turns)
    return "" if value is None else str(value)


def prepare_pairs(rows, tokenizer, args: DPOConfig, spec) -> list[dict]:
    """Tokenized pairs ``{index, prompt, chosen, rejected}``; raises on a bad row, drops (and logs) over-long
    ones. ``index`` is the row's position in the data (it seeds the row's masks)."""
    end = [spec.eot_token_id] if spec.eot_token_id is not None else [spec.eos_token_id]
    pairs, too_long = [], []
    for i, row in enumerate(rows):
        texts = {}
        for side in ("chosen", "rejected"):
            column = getattr(args, f"{side}_column")
            texts[side] = response_text(row.get(column))
            if not texts[side].strip():
                raise ValueError(
                    f"row {i}: the {side} response (column {column!r}) is empty; fix or remove the row."
                )
        if texts["chosen"] == texts["rejected"]:
            raise ValueError(
                f"row {i}: chosen and rejected are the same text ({texts['chosen'][:60]!r}); a pair must differ."
            )
        ids = {s: tokenizer(t, add_special_tokens=False)["input_ids"] + end for s, t in texts.items()}
        if max(len(v) for v in ids.values()) > args.max_completion_length:
            too_long.append(i)
            continue
        prompt = row_prompt(tokenizer, row, args)
        pairs.append({"index": i, "prompt": prompt, "chosen": ids["chosen"], "rejected": ids["rejected"]})
    if too_long:
        shown = ", ".join(map(str, too_long[:10])) + (", ..." if len(too_long) > 10 else "")
        logger.warning(
            "%d of %d pairs dropped: a response (with its end token) is longer than max_completion_length %d "
            "(rows %s); raise max_completion_length to keep them.",
            len(too_long),
            len(too_long) + len(pairs),
            args.max_completion_length,
            shown,
        )
    if not pairs:
        raise ValueError("no preference pair is left to train on (see the rows named above).")
    return pairs


class DiffusionDPOTrainer(SafeCheckpointMixin, ChunkedBackwardMixin, PolicyTrainerMixin, Trainer):
    """DPO / VRPO on a diffusion policy (module docstring); the loss is divided by the accumulation steps here."""

    def __init__(
        self, model, args: DPOConfig, train_dataset, processing_class, ref_model=None, callbacks=None
    ):
        from datasets import Dataset

        args.remove_unused_columns = False
        self.spec = family_spec(model, processing_class, args.mask_token_id)
        pairs = Dataset.from_list(prepare_pairs(train_dataset, processing_class, args, self.spec))
        super().__init__(
            model=model,
            args=args,
            train_dataset=pairs,
            processing_class=processing_class,
            data_collator=self._collate,
            callbacks=callbacks,
        )
        self._setup_reference(
            ref_model, True, "DPO under full fine-tuning needs ref_model (a frozen copy of the policy)."
        )
        self._ref_cache: dict[int, torch.Tensor] | None = None
        if args.precompute_ref_log_probs:
            self._ref_cache = self._precompute_reference(pairs)

    # ---- batches ----------------------------------------------------------------------------------
    def _collate(self, rows: list[dict]) -> dict:
        """Prompts left-padded, then chosen responses, then rejected ones: ids/attn [2N, P + L]."""
        args, tok, spec = self.args, self.processing_class, self.spec
        enc = encode_prompts(
            tok,
            [r["prompt"] for r in rows],
            max_length=args.max_prompt_length,
            use_chat_template=args.use_chat_template,
        )
        n, length = len(rows), args.max_completion_length
        canvas = torch.full((2 * n, length), spec.eos_token_id, dtype=torch.long)
        scored = torch.zeros(2 * n, length, dtype=torch.long)
        for j, ids in enumerate([r["chosen"] for r in rows] + [r["rejected"] for r in rows]):
            canvas[j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            scored[j, : len(ids)] = 1
        prompt_ids, prompt_attn = enc["input_ids"].repeat(2, 1), enc["attention_mask"].repeat(2, 1)
        zeros = torch.zeros_like(prompt_ids)
        return {
            "ids": torch.cat([prompt_ids, canvas], 1),
            "attn": torch.cat([prompt_attn, torch.ones_like(canvas)], 1),
            "canvas": torch.cat([zeros, torch.ones_like(canvas)], 1),
            "scored": torch.cat([zeros, scored], 1),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }

    def _plan(self, batch: dict, stream: int, fixed: bool = False) -> MaskPlan:
        """Each response's masks from its own generator: (seed, row, side, stream, step); ``fixed`` drops
        the step (precomputed reference: the same masks every epoch)."""
        args, step = self.args, self.state.global_step
        rows = batch["index"].tolist()  # one host read for the batch, not one per response
        n = len(rows)
        plans = []
        for j in range(2 * n):
            key = (args.seed, rows[j % n], j // n, stream) + (() if fixed else (step,))
            generator = torch.Generator(batch["ids"].device).manual_seed(hash(key) % 2**63)
            plans.append(
                make_plan(
                    args.estimator,
                    batch["canvas"][j : j + 1],
                    num_samples=args.num_mc_samples,
                    generator=generator,
                    score_mask=batch["scored"][j : j + 1],
                    masks_per_timestep=args.masks_per_timestep,
                )
            )
        return MaskPlan.cat_rows(plans)

    def _passes(self, model, ids, attn, plan: MaskPlan) -> torch.Tensor:
        return pass_logprobs(
            model,
            ids,
            plan,
            mask_token_id=self.spec.mask_token_id,
            attention_mask=attn,
            spec=self.spec,
            chunk_size=self.args.mc_chunk_size,
        )

    @torch.no_grad()
    def _reference(self, batch: dict, plan: MaskPlan) -> torch.Tensor:
        """Reference sequence estimates [2N]: from the precomputed table or under ``plan`` now."""
        if self._ref_cache is not None:
            rows = batch["index"].tolist()
            return torch.stack(
                [self._ref_cache[i][0] for i in rows] + [self._ref_cache[i][1] for i in rows]
            ).to(batch["ids"].device)
        with self._reference_model(self.model) as ref:
            return self._estimate(ref, batch["ids"], batch["attn"], plan).sum(-1)

    def _precompute_reference(self, pairs) -> dict[int, torch.Tensor]:
        """One pass over this process's data before training: {row: tensor([chosen, rejected])}."""
        table = {}
        loader = self.get_train_dataloader()
        logger.info("estimating the reference log-likelihoods of %d pairs before training", len(pairs))
        for batch in loader:
            batch = self._prepare_inputs(batch)
            values = self._reference(batch, self._plan(batch, 0, fixed=True)).float().cpu()
            n = len(batch["index"])
            for k, i in enumerate(batch["index"].tolist()):
                table[i] = torch.stack([values[k], values[n + k]])
        if self.accelerator.num_processes > 1:  # each process saw its shard; later epochs reshuffle
            from accelerate.utils import gather_object

            table = {i: v for part in gather_object([table]) for i, v in part.items()}
        return table

    # ---- loss -------------------------------------------------------------------------------------
    def _pair_inputs(self, batch: dict) -> tuple[MaskPlan, torch.Tensor]:
        """The policy's plan and the reference estimates (under the same masks unless share_masks false)."""
        args = self.args
        plan = self._plan(batch, 0, fixed=args.precompute_ref_log_probs)
        ref_plan = plan if args.share_masks else self._plan(batch, 1)
        return plan, self._reference(batch, ref_plan)

    def _loss(self, logps: torch.Tensor, ref: torch.Tensor, batch: dict) -> torch.Tensor:
        args = self.args
        loss, metrics = dpo_loss(
            logps.sum(-1),
            ref,
            batch["scored"].sum(-1),
            beta=args.beta,
            loss_type=args.loss_type,
            label_smoothing=args.label_smoothing,
        )
        self._record(metrics)
        return loss / self.current_gradient_accumulation_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plan, ref = self._pair_inputs(inputs)
        return self._for_training_step(
            self._loss(self._estimate(model, inputs["ids"], inputs["attn"], plan), ref, inputs)
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.mc_backward != "chunked":
            return super().training_step(model, inputs, num_items_in_batch)
        self._train_mode(model)
        batch = self._prepare_inputs(inputs)
        plan, ref = self._pair_inputs(batch)
        return self._backward_in_chunks(
            model,
            batch["ids"],
            batch["attn"],
            plan,
            lambda passes: self._loss(combine(plan, passes), ref, batch),
        )


def build_trainer(config: DPOConfig) -> DiffusionDPOTrainer:
    from align.data import load_rows
    from align.models import load_tokenizer
    from align.runner import load_policy
    from align.sampling.family_checks import check_checkpoint_settings

    check_checkpoint_settings(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    dataset = load_rows(config)
    tokenizer = load_tokenizer(
        config.model_name_or_path,
        trust_remote_code=config.trust_remote_code,
        chat_off="use_chat_template false" if config.use_chat_template else None,
    )
    model, ref_model = load_policy(config)
    return DiffusionDPOTrainer(model, config, dataset, tokenizer, ref_model=ref_model)


def main(argv: list[str] | None = None) -> int:
    from align.runner import recipe_command

    return recipe_command("dpo", argv)


if __name__ == "__main__":
    from align.runner import exit_process

    exit_process(main())
