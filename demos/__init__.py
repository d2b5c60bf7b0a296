"""Demos and the tiny-task builders, apart from the library: ``make demo`` (``grpo``), ``make demo-dpo``
(``dpo``), ``make demo-rl-vs-sft`` (``rl_vs_sft``) and the embedded tasks and tokenizer (``tiny``). They use
``align`` only through its public commands and functions; nothing in ``align`` imports them."""
