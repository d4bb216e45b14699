"""Train-then-sample agreement (PURE): a tiny decoder overfits one training example built by
`build_training_example` until greedy decoding from `build_inference_prompt` (the static-KV
engine) returns the whole answer: the degradation sentence and caption, then the HQ image block
exactly as trained. Training and inference build their token layouts separately; a prompt or
label shift, a misplaced image header or a cache position error leaves tokens wrong."""

import pytest
import torch

from pure.engine import release_engines
from pure.generate import generate
from pure.losses import PureLoss
from pure.model import ChameleonForCausalLM, chameleon_config
from pure.processors import SamplingConfig
from pure.sequence import build_inference_prompt, build_training_example
from pure.tokenizer import SpecialIds


@pytest.mark.slow
def test_overfit_one_example_then_greedy_decoding_returns_the_answer(test_tokenizer, one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    lq = torch.randint(16384, (4, 4), generator=g)
    hq = torch.randint(16384, (8, 8), generator=g)  # a 2 x 2 grid of 32-px cells
    # a short instruction keeps the run fast; the layout is the same for any text
    tokens, labels = build_training_example(lq, hq, "Heavy blur.", "a kite", test_tokenizer, instruction="Restore. ")
    prompt = build_inference_prompt(lq, test_tokenizer, instruction="Restore. ")
    answer = tokens[len(prompt) :]
    assert tokens[: len(prompt)] == prompt and answer[-1] == SpecialIds.EOT
    model = ChameleonForCausalLM(chameleon_config("tiny"))  # shipped dropout: train() keeps it on
    root = PureLoss(model)
    ids, lab = torch.tensor([tokens]), torch.tensor([labels])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    model.train()
    for step in range(600):
        loss, _ = root(ids, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 and float(loss.detach()) < 0.01:
            break
    model.eval()
    release_engines()
    with torch.no_grad():
        out = generate(model, [prompt], SamplingConfig(temperature=0.0, cfg=1.0), max_new_tokens=len(answer) + 4)
    release_engines()
    assert out.finished == [True]
    assert out.tokens[0] == answer[:-1], (float(loss), step)  # everything up to the end-of-turn id
