"""lm-eval-harness's model ``dllm_align``: any checkpoint of the project's families decoded by its sampler under
one of ``align eval``'s protocols, registered through lm-eval's public registry (``register_model``).

    python -m align.lm_eval run --model dllm_align --model_args pretrained=DIR,protocol=illada \\
        --tasks gsm8k_cot_reasoning --apply_chat_template --batch_size 8 --device cuda
    # or in Python: import align.lm_eval, then lm_eval.simple_evaluate(model="dllm_align", ...)

``python -m align.lm_eval`` is lm-eval's own command line (``lm_eval.__main__.cli_evaluate``) with this module
imported first: lm-eval 0.4.10 finds models only in its registry and offers no plug-in route (no entry-point
group) for a package's model, so the registration has to run in its process. Install with
``pip install 'dllm-align[lmeval]'``.

* ``generate_until``: each request's context as lm-eval rendered it (its chat template applied when
  ``--apply_chat_template``), tokenized as the protocol says, decoded in batches by the protocol's sampler
  settings (variable length, budget, end-of-thinking boost); the request's ``until`` strings and the EOS text
  stop a row after a block and cut its text, as iLLaDA's ``generate_until`` does. ``max_gen_toks`` is not read
  (the protocol's budget is), as in iLLaDA's evaluation.
* ``loglikelihood``: the continuation's log-probability given the context by the masked-diffusion ELBO
  (LLaDA's estimator: ``mc_num`` stratified mask sizes, ``align.logprob``'s ``elbo`` plan), with the greedy check
  off (``False``), as LLaDA's ``eval_llada.py`` does by default.

Not covered: ``loglikelihood_rolling`` (perplexity tasks) and the authors' ``confidence`` likelihood.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


@register_model("dllm_align")
class DllmAlignLM(LM):
    def __init__(
        self,
        pretrained: str,
        protocol: str = "illada",
        dtype: str = "bfloat16",
        device: str | None = None,
        batch_size: int | str = 8,
        mc_num: int = 128,
        seed: int = 1234,
        trust_remote_code: bool = False,
        max_batch_size: int | None = None,
        **overrides,
    ):
        """``overrides``: protocol fields (``gen_length=512,boost=0``); ``batch_size``, ``max_batch_size`` and
        ``device`` as lm-eval's command line passes them (``auto`` batch sizes mean 8)."""
        super().__init__()
        batch_size = 8 if str(batch_size).startswith("auto") else batch_size
        from align.eval.runner import DiffusionSource, process_state
        from align.eval.tasks import PROTOCOLS

        if protocol not in PROTOCOLS:
            raise ValueError(f"dllm_align: unknown protocol {protocol!r}; one of {sorted(PROTOCOLS)}.")
        self.protocol = PROTOCOLS[protocol].with_overrides(**overrides)
        self.source = DiffusionSource.load(
            pretrained,
            dtype=dtype,
            device=device,
            batch_size=int(batch_size),
            seed=seed,
            trust_remote_code=trust_remote_code,
            state=process_state(device),
        )
        self.pretrained, self.mc_num, self.seed = pretrained, int(mc_num), seed
        self._rank, self._world_size = 0, 1

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.source.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template; a system turn merged into the first user turn when the template has no
        system role (as iLLaDA's evaluation does)."""
        from align.data import prompt_text

        system = "\n\n".join(m["content"].strip() for m in chat_history if m["role"] == "system") or None
        chat = [m for m in chat_history if m["role"] != "system"]
        return prompt_text(
            self.source.tokenizer, chat, system_prompt=system, system_in_user=self.protocol.system_in_user
        )

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):  # one protocol per stop list
            until = request.args[1].get("until") or []
            groups.setdefault(tuple([until] if isinstance(until, str) else until), []).append(i)
        for until, indices in groups.items():
            protocol = self.protocol.with_overrides(
                use_chat_template=False,
                instruction=None,
                system_prompt=None,
                stop_strings=until,
                whole_canvas=False,
            )  # (lm-eval's own prompts, cut at its stop strings)
            texts = self.source.complete([requests[i].args[0] for i in indices], protocol)
            for i, text in zip(indices, texts):  # (already cut before each stop string and the EOS text)
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        import torch

        from align.logprob.estimators import make_plan, pass_logprobs, sample_sums

        tok, spec = self.source.tokenizer, self.source.spec
        model = self.source.model
        device = next(model.parameters()).device
        out = []
        for request in requests:
            context, continuation = request.args
            whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
            prompt = tok(context, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([whole], device=device)
            completion = torch.zeros_like(ids, dtype=torch.bool)
            completion[:, len(prompt) :] = True
            generator = torch.Generator(device).manual_seed(self.seed)
            plan = make_plan("elbo", completion, num_samples=self.mc_num, generator=generator)
            with torch.no_grad():
                per_pass = pass_logprobs(
                    model, ids, plan, mask_token_id=spec.mask_token_id, spec=spec, chunk_size=8
                )
            value = float(sample_sums(plan, per_pass).mean())
            out.append((value, False))
            self.cache_hook.add_partial("loglikelihood", request.args, (value, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("dllm_align: loglikelihood_rolling (perplexity tasks) is not implemented.")
