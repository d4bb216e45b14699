"""AR generation (spec §7, §12.3): KV-cached logits == full forward, batched CFG == separate
cond/uncond passes, left-padded batches == single prompts, answer parsing."""
import torch

from pure.generate import Decoder, decode_answer, generate, split_answer
from pure.model import ChameleonForCausalLM, chameleon_config
from pure.processors import ImageState, SamplingConfig, probs_from_scores, process_scores, sample
from pure.tokenizer import ImageCodeMap, SpecialIds as S

HEADER = [S.IMG_START, S.SIZE_BASE + 1, S.SIZE_BASE + 1]  # 4x4 latents: 21 tokens after <h><w>


def full_logits(model, seq, start=0):
    """Last-position logits of a cache-free forward over seq[start:], positions from 0."""
    ids = torch.tensor([seq[start:]])
    return model(ids)[0, -1]


def test_cached_generation_logits_equal_full_forward(model):
    prompt = [0, 9100, 9200, S.EOT, 9300] + HEADER
    out = generate(model, [prompt], SamplingConfig(temperature=1.0, cfg=1.0), max_new_tokens=12, seed=1, trace=True)
    seq = prompt + out.tokens[0]
    ref = model(torch.tensor([seq]))[0]
    for i, step in enumerate(out.trace):
        assert torch.allclose(step["cond"][0], ref[len(prompt) - 1 + i], atol=1e-4, rtol=1e-4)
    assert out.forwards == len(out.trace)  # one prefill + one forward per further token


def reference_cfg_generate(model, prompt, sampling, image_mask, n, seed):
    """Unbatched, cache-free CFG decoding: the uncond branch re-reads [8197, h, w, ...] from 0."""
    gen = torch.Generator().manual_seed(seed)
    seq, st, toks, logs = list(prompt), ImageState().advanced(prompt), [], []
    for _ in range(n):
        cond = full_logits(model, seq)[None]
        unc = None
        if st.in_grid:
            start = max(i for i, t in enumerate(seq) if t == S.IMG_START)
            unc = full_logits(model, seq, start)[None]
        logs.append((cond, unc))
        t = int(sample(probs_from_scores(process_scores(cond, [st], sampling, image_mask, unc), sampling), gen))
        if t == S.EOT:
            break
        seq.append(t)
        st.update(t)
        toks.append(t)
    return toks, logs


def test_batched_cfg_equals_separate_passes(model, image_mask):
    prompt = [0, 9100, 9200, S.EOT] + HEADER
    sampling = SamplingConfig(temperature=0.9, cfg=0.8)
    out = generate(model, [prompt], sampling, image_mask, max_new_tokens=10, seed=3, trace=True)
    ref_toks, ref_logs = reference_cfg_generate(model, prompt, sampling, image_mask, 10, seed=3)
    assert out.tokens[0] == ref_toks
    for step, (c, u) in zip(out.trace, ref_logs):
        assert torch.allclose(step["cond"], c, atol=1e-4, rtol=1e-4)
        assert step["rows"] == [0] and torch.allclose(step["uncond"], u, atol=1e-4, rtol=1e-4)
    # the structure held: row ends exactly every w_lat + 1 = 5 tokens
    assert [i for i, t in enumerate(out.tokens[0]) if t == S.ROW_END] == [4, 9]


def test_left_padded_batch_equals_single_prompts(model, image_mask):
    prompts = [[0, 9100, 9200, 9300, 9400, S.EOT] + HEADER, [0, 9500] + HEADER, [0, 9600, 9700]]
    sampling = SamplingConfig(temperature=0.0, cfg=0.8)  # greedy: no sampler coupling across rows
    batched = generate(model, prompts, sampling, image_mask, max_new_tokens=8, trace=True)
    for b, p in enumerate(prompts):
        single = generate(model, [p], sampling, image_mask, max_new_tokens=8, trace=True)
        assert batched.tokens[b] == single.tokens[0]
        for sb, ss in zip(batched.trace, single.trace):
            assert torch.allclose(sb["cond"][b], ss["cond"][0], atol=1e-4, rtol=1e-4)


def test_decoder_windows_match_full_forwards(model):
    """Teacher-forced windows (the SJD path): an image opened mid-stream gets its own
    unconditional context; rolling back past the image start leaves no stale mask."""
    prompt = [0, 9100, 9200, S.EOT]
    stream = [9300, 9400] + HEADER + [70000, 5000, 71000, 6000, S.ROW_END, 7000, 72000]
    dec = Decoder(model, [prompt], use_cfg=True)
    dec.prefill()
    seq, i = list(prompt), 0
    for size in (3, 4, 1, 2, 2):
        cond, unc = dec.forward([stream[i:i + size]])
        for j in range(size):
            seq.append(stream[i + j])
            assert torch.allclose(cond[0, j], full_logits(model, seq), atol=1e-4, rtol=1e-4)
            if S.IMG_START in seq[len(prompt):]:
                start = max(k for k, t in enumerate(seq) if t == S.IMG_START)
                assert torch.allclose(unc[0, j], full_logits(model, seq, start), atol=1e-4, rtol=1e-4)
        i += size
    # roll back to before the image start, then take a different text continuation
    dec.rollback(len(prompt) + 1)
    cond, unc = dec.forward([[9500, 9600]])
    seq = prompt + [9300, 9500, 9600]
    assert torch.allclose(cond[0, -1], full_logits(model, seq), atol=1e-4, rtol=1e-4)
    # and re-open an image: the uncond row again starts fresh at the new 8197
    cond, unc = dec.forward([HEADER + [70001]])
    seq += HEADER + [70001]
    start = len(seq) - 4
    assert torch.allclose(unc[0, -1], full_logits(model, seq, start), atol=1e-4, rtol=1e-4)


def test_stop_token_and_answer_parsing():
    cmap = ImageCodeMap.synthetic(shuffle=True)
    codes = torch.arange(16).view(4, 4) * 1000
    ids = cmap.to_ids(codes)
    block = HEADER + sum(([*row.tolist(), S.ROW_END] for row in ids), []) + [S.IMG_END]
    text, blocks = split_answer([9100, 9200] + block + [S.EOT, 9999])
    assert text == [9100, 9200] and blocks == [block]
    from pure.generate import GenerationOutput
    out = decode_answer(GenerationOutput(tokens=[[9100] + block, [9100, S.IMG_START]], finished=[True, False],
                                         forwards=0), cmap)
    assert torch.equal(out.images[0], codes) and out.images[1] is None
    # an image header left open by the prompt is taken into account
    from pure.generate import open_tail
    assert open_tail([0, 5] + block + [S.EOT] + HEADER) == HEADER and open_tail([0] + block) == []
    out = decode_answer(GenerationOutput(tokens=[block[3:]], finished=[True], forwards=0), cmap,
                        prompts=[[0, 9100] + HEADER])
    assert torch.equal(out.images[0], codes)


def test_generation_stops_on_eot(model, image_mask):
    class AlwaysEot(ChameleonForCausalLM):  # every prediction is 8710
        def logits(self, hidden):
            out = super().logits(hidden)
            out[..., S.EOT] += 1e4
            return out

    m = AlwaysEot(chameleon_config("tiny")).eval()
    out = generate(m, [[0, 9100]], SamplingConfig(temperature=0.9, cfg=0.8), image_mask, max_new_tokens=50, seed=0)
    assert out.tokens == [[]] and out.finished == [True] and out.forwards == 1


def test_batched_decoder_rows_open_images_at_different_steps(model):
    """Two left-padded samples whose images start at different steps: each unconditional row
    sees only its own [8197, h, w, ...] with positions from 0."""
    prompts = [[0, 9100, S.EOT], [0, 9100, 9200, 9300, S.EOT]]
    streams = [[9400] + HEADER + [70000, 5000, 71000], [9500, 9600, 9700] + HEADER + [6000]]
    dec = Decoder(model, prompts, use_cfg=True)
    dec.prefill()
    seqs = [list(p) for p in prompts]
    for step in range(len(streams[0])):
        cond, unc = dec.forward([[streams[0][step]], [streams[1][step]]])
        for b in range(2):
            seqs[b].append(streams[b][step])
            assert torch.allclose(cond[b, -1], full_logits(model, seqs[b]), atol=1e-4, rtol=1e-4)
            gen = seqs[b][len(prompts[b]):]
            if S.IMG_START in gen:
                start = len(prompts[b]) + gen.index(S.IMG_START)
                assert torch.allclose(unc[b, -1], full_logits(model, seqs[b], start), atol=1e-4, rtol=1e-4)
