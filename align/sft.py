"""Masked-diffusion SFT (LLaDA's supervised objective), on ``transformers.Trainer`` + accelerate.

For a prompt x and a response y (ended by the end-of-turn token when the family has one) padded with EOS to ``max_completion_length`` tokens (the model learns to
emit those EOS, which is how a fixed canvas yields variable-length answers), draw t ~ U(0, 1) per
sample, mask each response token with probability p = (1 - eps) t + eps, keep the prompt clean, and
minimise

    L = - E[ (1 / |y|) * sum_{i masked} log p(y_i | x, y_t) / p ]

(the LLaDA SFT loss: cross-entropy on masked tokens weighted 1/p, normalised by the response length
including its EOS padding). Rows are laid out as generation sees them: left-padded prompt, then the
response canvas.

``growing_fraction`` > 0 trains that fraction of the rows on the growing canvas instead (what
``variable_length`` decoding runs, iLLaDA's process): the ``growing`` estimator's masking with one sample,
one block b of ``block_length`` among those up to the block holding the response's first stop token, the
earlier blocks clean, every key after b cut, a uniform l ~ U{1..L_b} of b's tokens masked with weight
nB * L_b / l, normalised by the tokens up to that stop token. Its expectation is the sum of the blocks'
ELBOs given the clean earlier blocks, per real token.

    align sft --config recipes/tiny/sft.yaml [--field value ...]
"""

from __future__ import annotations

import torch
from transformers import Trainer

from align.checkpoints import SafeCheckpointMixin
from align.config import SFTConfig
from align.data import encode_rows, load_rows
from align.logprob.estimators import gather_logprobs, growing_plan
from align.models import family_spec
from align.models.family import noised_logits
from align.sampling import truncate_at_stop

EPS = 1e-3


class DiffusionSFTTrainer(SafeCheckpointMixin, Trainer):
    def __init__(self, model, args: SFTConfig, train_dataset, processing_class, callbacks=None):
        args.remove_unused_columns = False
        self.spec = family_spec(model, processing_class, args.mask_token_id)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=self._collate,
            callbacks=callbacks,
        )

    def _collate(self, rows: list[dict]) -> dict:
        """Left-padded prompts + EOS-padded responses -> ids [B, P+L], attention [B, P+L], response mask."""
        args, tok = self.args, self.processing_class
        _, enc = encode_rows(tok, rows, args)
        length = args.max_completion_length
        response = torch.full((len(rows), length), self.spec.eos_token_id, dtype=torch.long)
        end_of_turn = (
            [] if self.spec.eot_token_id is None else [self.spec.eot_token_id]
        )  # chat models: <|eot_id|>
        targets = tok([str(r[args.completion_column]) for r in rows], add_special_tokens=False)["input_ids"]
        for i, target in enumerate(targets):
            ids = (target + end_of_turn)[: length - 1]  # at least one EOS remains to be learned
            response[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        ids = torch.cat([enc["input_ids"], response], 1)
        attn = torch.cat([enc["attention_mask"], torch.ones_like(response)], 1)
        target = torch.cat([torch.zeros_like(enc["input_ids"]), torch.ones_like(response)], 1)
        return {"input_ids": ids, "attention_mask": attn, "response_mask": target}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, attn, response = inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"].bool()
        t = torch.rand(ids.shape[0], 1, device=ids.device)
        p_mask = (1 - EPS) * t + EPS
        masked = response & (torch.rand(ids.shape, device=ids.device) < p_mask)
        weights, scored = None, response.sum(1)
        if self.args.growing_fraction > 0:  # some rows on the growing canvas: one block, no later canvas
            masked, weights, scored, attn = self._growing_rows(ids, attn, response, masked, p_mask, scored)
        noisy = torch.where(masked, self.spec.mask_token_id, ids)
        start = ids.shape[1] - self.args.max_completion_length  # the response canvas: logits only there
        logits = noised_logits(model, ids, noisy, attn, self.spec, logits_range=(start, ids.shape[1])).logits
        window, targets = masked[:, start:], ids[:, start:]
        nll = torch.zeros(window.shape, dtype=torch.float32, device=ids.device)
        nll = nll.masked_scatter(window, -gather_logprobs(logits[window], targets[window]))
        per_row = (nll / p_mask if weights is None else nll * weights[:, start:]).sum(1) / scored
        return per_row.mean()

    def _growing_rows(self, ids, attn, response, masked, p_mask, scored):
        """Replace a ``growing_fraction`` of the rows by the ``growing`` estimator's masking (one sample):
        one block up to the one holding the first stop token, its weights nB * L_b / l, keys after it cut;
        normalised by the tokens up to that stop token (the row's real length)."""
        start = ids.shape[1] - self.args.max_completion_length
        _, kept = truncate_at_stop(ids[:, start:], self.spec.stop_token_ids, self.spec.eos_token_id)
        real = torch.zeros_like(response)
        real[:, start:] = kept.bool()  # the response up to and including its first stop token
        plan = growing_plan(response, 1, score_mask=real, block_length=self.args.block_length)
        rows = torch.rand(ids.shape[0], device=ids.device) < self.args.growing_fraction
        col = rows[:, None]
        masked = torch.where(col, plan.masked[0], masked)
        weights = torch.where(col, plan.weights[0], masked.float() / p_mask)
        attn = torch.where(col, attn * plan.visible[0].long(), attn)
        return masked, weights, torch.where(rows, real.sum(1), scored), attn


def build_trainer(config: SFTConfig) -> DiffusionSFTTrainer:
    from align.models import load_model, load_tokenizer
    from align.models.family import new_model
    from align.sampling.family_checks import check_checkpoint_settings

    tokenizer = load_tokenizer(
        config.model_name_or_path,
        trust_remote_code=config.trust_remote_code,
        chat_off="use_chat_template false" if config.use_chat_template else None,
    )
    if config.init_config:
        torch.manual_seed(config.seed)
        model = new_model(config.init_config)
    else:
        check_checkpoint_settings(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
        model = load_model(
            config.model_name_or_path, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )
    rows = load_rows(config)
    batch = config.per_device_train_batch_size * config.world_size
    if config.dataloader_drop_last and len(rows) < batch:
        raise ValueError(
            f"the dataset has {len(rows)} rows, fewer than one batch ({batch}): with dataloader_drop_last every "
            "batch is dropped and training would stop at step 0. Lower per_device_train_batch_size or set "
            "dataloader_drop_last false."
        )
    return DiffusionSFTTrainer(model, config, rows, tokenizer)


def main(argv: list[str] | None = None) -> int:
    from align.runner import recipe_command

    return recipe_command("sft", argv)


if __name__ == "__main__":
    from align.runner import exit_process

    exit_process(main())
