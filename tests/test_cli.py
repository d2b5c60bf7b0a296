import json

from conftest import tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from align.cli import main

WORDS = ["<bos>", "<eos>"] + [f"w{i}" for i in range(37)] + ["<mask>"]  # ids match conftest (mask 39)


def save_tiny_checkpoint(path):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>", mask_token="<mask>"
    )
    fast.save_pretrained(path)
    tiny_model().save_pretrained(path)


def test_generate_command_decodes_prompts_as_json_lines(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "--prompt", "w3 w4 w5", "--prompt", "w7", "--gen_length", "8",
            "--steps", "8", "--block_length", "4", "--no-chat_template", "--dtype", "float32", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()  # library loggers may also write to stdout
    lines = [json.loads(line) for line in out if line.startswith('{"prompt"')]
    assert [line["prompt"] for line in lines] == ["w3 w4 w5", "w7"]
    assert all(line["nfe"] == 8 and "<mask>" not in line["completion"] for line in lines)


def test_train_without_data_says_what_to_set(capsys):
    assert main(["train"]) == 2
    assert "No training data: set dataset_name" in capsys.readouterr().err


def test_train_and_sft_help_list_every_config_field(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert (
        "Completions per prompt (the GRPO group size G)." in out and "--estimator" in out and "--beta" in out
    )
    assert main(["sft", "--help"]) == 0
    assert "--completion_column" in capsys.readouterr().out
