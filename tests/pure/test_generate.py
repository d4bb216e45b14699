"""AR generation (spec §7, §12.3): KV-cached logits == full forward, batched CFG == separate
cond/uncond passes, batches of different-length prompts == single prompts under per-row
seeds, teacher-forced windows (the SJD path) == full forwards, answer parsing."""

import torch

from pure.engine import SLOT, TOK, USLOT, get_engine
from pure.generate import decode_answer, generate, row_seeds, split_answer
from pure.model import ChameleonForCausalLM, chameleon_config
from pure.processors import (
    STATE_COLS,
    ImageState,
    SamplingConfig,
    counter_uniform,
    probs_from_scores,
    process_scores,
    sample_with_uniform,
    state_tensor,
)
from pure.tokenizer import ImageCodeMap
from pure.tokenizer import SpecialIds as S

HEADER = [S.IMG_START, S.SIZE_BASE + 1, S.SIZE_BASE + 1]  # 4x4 latents: 21 tokens after <h><w>


def full_logits(model, seq, start=0):
    """Last-position logits of a cache-free forward over seq[start:], positions from 0."""
    ids = torch.tensor([seq[start:]])
    return model(ids)[0, -1]


def test_cached_generation_logits_equal_full_forward(model, one_thread):
    prompt = [0, 9100, 9200, S.EOT, 9300] + HEADER
    out = generate(
        model, [prompt], SamplingConfig(temperature=1.0, cfg=1.0), max_new_tokens=12, seed=1, return_logits=True
    )
    seq = prompt + out.tokens[0]
    ref = model(torch.tensor([seq]))[0]
    assert out.logits.shape == (1, 12, 73728) and out.ids[0].tolist() == out.tokens[0]
    for i in range(12):
        assert torch.allclose(out.logits[0, i], ref[len(prompt) - 1 + i], atol=1e-4, rtol=1e-4)
    assert out.forwards == 12  # one prefill + one forward per further token


def reference_cfg_generate(model, prompt, sampling, image_mask, n, seed):
    """Unbatched, cache-free CFG decoding: the uncond branch re-reads [8197, h, w, ...] from 0;
    step i draws with the documented counter-based uniform u(seed, i)."""
    seq, st, toks, logs = list(prompt), ImageState().advanced(prompt), [], []
    for i in range(n):
        cond = full_logits(model, seq)[None]
        unc = None
        if st.in_grid:
            start = max(j for j, t in enumerate(seq) if t == S.IMG_START)
            unc = full_logits(model, seq, start)[None]
        logs.append((cond, unc))
        probs = probs_from_scores(process_scores(cond, [st], sampling, image_mask, unc), sampling)
        t = int(sample_with_uniform(probs, counter_uniform(torch.tensor([seed]), torch.tensor(i), 0)))
        if t == S.EOT:
            break
        seq.append(t)
        st.update(t)
        toks.append(t)
    return toks, logs


def test_batched_cfg_equals_separate_passes(model, image_mask, one_thread):
    prompt = [0, 9100, 9200, S.EOT] + HEADER
    sampling = SamplingConfig(temperature=0.9, cfg=0.8)
    out = generate(
        model, [prompt], sampling, image_mask, max_new_tokens=10, seed=3, return_logits=True, return_uncond_logits=True
    )
    ref_toks, ref_logs = reference_cfg_generate(model, prompt, sampling, image_mask, 10, seed=3)
    assert out.tokens[0] == ref_toks
    for i, (c, u) in enumerate(ref_logs):
        assert torch.allclose(out.logits[:, i], c, atol=1e-4, rtol=1e-4)
        assert torch.allclose(out.uncond_logits[:, i], u, atol=1e-4, rtol=1e-4)
    # the structure held: row ends exactly every w_lat + 1 = 5 tokens
    assert [i for i, t in enumerate(out.tokens[0]) if t == S.ROW_END] == [4, 9]


def test_different_length_batch_equals_single_prompts(model, image_mask, one_thread):
    prompts = [[0, 9100, 9200, 9300, 9400, S.EOT] + HEADER, [0, 9500] + HEADER, [0, 9600, 9700]]
    for sampling in (SamplingConfig(temperature=0.0, cfg=0.8), SamplingConfig(temperature=0.9, cfg=0.8)):
        batched = generate(
            model, prompts, sampling, image_mask, max_new_tokens=8, seed=[11, 12, 13], return_logits=True
        )
        for b, p in enumerate(prompts):
            single = generate(model, [p], sampling, image_mask, max_new_tokens=8, seed=11 + b, return_logits=True)
            assert batched.tokens[b] == single.tokens[0]
            n = len(single.tokens[0])
            assert torch.allclose(batched.logits[b, :n], single.logits[0, :n], atol=1e-4, rtol=1e-4)
    # an int seed s seeds the rows s, s + 1, ...
    assert row_seeds(3, 7) == [7, 8, 9] and row_seeds(2, [4, 1]) == [4, 1]


def _teacher_force(engine, S, seqs, windows):
    """Feed windows (lists, one per row) as if they were committed: the row state is rebuilt
    from the host sequences; returns cond/uncond logits and the state after the window."""
    w = torch.tensor(windows)
    S = S.clone()
    S[:, :STATE_COLS] = state_tensor([ImageState().advanced(s + win[:1]) for s, win in zip(seqs, windows, strict=True)])
    S[:, TOK] = w[:, 0]
    cond, unc, _, opens = engine.window_forward(w, S)
    n = torch.full((len(seqs),), w.shape[1] - 1)
    S2 = S.clone()
    S2[:, SLOT] += w.shape[1]
    S2[:, USLOT] = engine.next_uslot(S, opens, n)
    return cond, unc, S2


def test_engine_windows_match_full_forwards(model, image_mask, one_thread):
    """Teacher-forced windows (the SJD path): an image opened mid-stream gets its own
    unconditional context; rolling back past the image start leaves nothing stale."""
    prompt = [0, 9100, 9200, S.EOT]
    stream = [9300, 9400] + HEADER + [70000, 5000, 71000, 6000, S.ROW_END, 7000, 72000]
    engine = get_engine(model, [prompt], SamplingConfig(cfg=0.8), image_mask, 40, S.EOT, window=4)
    St, _, _ = engine.start([prompt], [0])
    seq, i = list(prompt), 0
    for size in (3, 4, 1, 2, 2):
        cond, unc, St = _teacher_force(engine, St, [seq], [stream[i : i + size]])
        for j in range(size):
            seq.append(stream[i + j])
            assert torch.allclose(cond[0, j], full_logits(model, seq), atol=1e-4, rtol=1e-4)
            if S.IMG_START in seq[len(prompt) :]:
                start = max(k for k, t in enumerate(seq) if t == S.IMG_START)
                assert torch.allclose(unc[0, j], full_logits(model, seq, start), atol=1e-4, rtol=1e-4)
        i += size
    # roll back to before the image start (only the slot counter moves), take another text
    St[:, SLOT] = len(prompt) + 1
    seq = prompt + [9300]
    cond, unc, St = _teacher_force(engine, St, [seq], [[9500, 9600]])
    seq += [9500, 9600]
    assert torch.allclose(cond[0, -1], full_logits(model, seq), atol=1e-4, rtol=1e-4)
    # and re-open an image: the uncond row again starts fresh at the new 8197
    cond, unc, St = _teacher_force(engine, St, [seq], [HEADER + [70001]])
    seq += HEADER + [70001]
    assert torch.allclose(cond[0, -1], full_logits(model, seq), atol=1e-4, rtol=1e-4)
    assert torch.allclose(unc[0, -1], full_logits(model, seq, len(seq) - 4), atol=1e-4, rtol=1e-4)


def test_stop_token_and_answer_parsing():
    cmap = ImageCodeMap.synthetic(shuffle=True)
    codes = torch.arange(16).view(4, 4) * 1000
    ids = cmap.to_ids(codes)
    block = HEADER + sum(([*row.tolist(), S.ROW_END] for row in ids), []) + [S.IMG_END]
    text, blocks = split_answer([9100, 9200] + block + [S.EOT, 9999])
    assert text == [9100, 9200] and blocks == [block]
    from pure.generate import GenerationOutput

    out = decode_answer(
        GenerationOutput(tokens=[[9100] + block, [9100, S.IMG_START]], finished=[True, False], forwards=0), cmap
    )
    assert torch.equal(out.images[0], codes) and out.images[1] is None
    # an image header left open by the prompt is taken into account
    from pure.generate import open_tail

    assert open_tail([0, 5] + block + [S.EOT] + HEADER) == HEADER and open_tail([0] + block) == []
    out = decode_answer(
        GenerationOutput(tokens=[block[3:]], finished=[True], forwards=0), cmap, prompts=[[0, 9100] + HEADER]
    )
    assert torch.equal(out.images[0], codes)


def test_generation_stops_on_eot(model, image_mask, one_thread):
    class AlwaysEot(ChameleonForCausalLM):  # every prediction is 8710
        def logits(self, hidden):
            out = super().logits(hidden)
            out[..., S.EOT] += 1e4
            return out

    m = AlwaysEot(chameleon_config("tiny")).eval()
    out = generate(
        m, [[0, 9100]], SamplingConfig(temperature=0.9, cfg=0.8), image_mask, max_new_tokens=50, seed=0, poll_every=1
    )
    assert out.tokens == [[]] and out.finished == [True] and out.forwards == 1
    # without polling every step the finished row idles on 8710 until the next poll
    out = generate(
        m, [[0, 9100]], SamplingConfig(temperature=0.9, cfg=0.8), image_mask, max_new_tokens=50, seed=0, poll_every=8
    )
    assert out.tokens == [[]] and out.finished == [True] and out.forwards == 1
    assert out.ids.shape == (1, 8) and set(out.ids[0].tolist()) == {S.EOT}


def test_batched_rows_open_images_at_different_steps(model, image_mask, one_thread):
    """Two samples of different lengths whose images start at different steps: each
    unconditional row sees only its own [8197, h, w, ...] with positions from 0."""
    prompts = [[0, 9100, S.EOT], [0, 9100, 9200, 9300, S.EOT]]
    streams = [[9400] + HEADER + [70000, 5000, 71000], [9500, 9600, 9700] + HEADER + [6000]]
    engine = get_engine(model, prompts, SamplingConfig(cfg=0.8), image_mask, 20, S.EOT)
    St, _, _ = engine.start(prompts, [0, 1])
    seqs = [list(p) for p in prompts]
    for step in range(len(streams[0])):
        cond, unc, St = _teacher_force(engine, St, seqs, [[streams[0][step]], [streams[1][step]]])
        for b in range(2):
            seqs[b].append(streams[b][step])
            assert torch.allclose(cond[b, -1], full_logits(model, seqs[b]), atol=1e-4, rtol=1e-4)
            gen = seqs[b][len(prompts[b]) :]
            if S.IMG_START in gen:
                start = len(prompts[b]) + gen.index(S.IMG_START)
                assert torch.allclose(unc[b, -1], full_logits(model, seqs[b], start), atol=1e-4, rtol=1e-4)
