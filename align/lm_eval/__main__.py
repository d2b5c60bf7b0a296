"""``python -m align.lm_eval``: lm-eval's own command line with the ``dllm_align`` model registered."""

from lm_eval.__main__ import cli_evaluate  # noqa: E402

import align.lm_eval  # noqa: F401 - registers dllm_align in lm-eval's registry

cli_evaluate()
