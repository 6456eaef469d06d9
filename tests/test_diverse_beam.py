"""diverse_beam.search against transformers' generate called one question at a time with the
reference's arguments (12 beams in 4 groups, diversity penalty 10, early stopping, 16 new tokens,
top-K returned): the same token sequences, best first, on a trained tiny-world model, on random
GPT-2s built so that beams end at EOS at different steps and candidates tie exactly, and on random
GPT-Neo, GPT-J, Llama and OPT models; evaluate_qa's rows, and the cases left to generate."""

import pytest
import torch
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

import diverse_beam
from exp_datasets import QACollator, load_split
from plumbing import loading
from subroutines import Decoding, evaluate_qa, generate_answers

EOS = 0


def reference_sequences(model, prompt, top_k, num_beams=12, pad_token_id=EOS):
    """The reference's generate call on one unpadded prompt: its continuations, the EOS that ends a
    finished one and the padding after it removed."""
    ids = torch.tensor([prompt])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        use_cache=True,
        max_length=ids.shape[1] + 16,
        num_return_sequences=top_k,
        num_beam_groups=4,
        num_beams=num_beams,
        diversity_penalty=10.0,
        early_stopping=True,
        pad_token_id=pad_token_id,
    )
    sequences = []
    for row in out[:, ids.shape[1] :].tolist():
        while row and row[-1] in (EOS, pad_token_id):
            row.pop()
        sequences.append(row)
    return sequences


def left_padded(prompts, pad=EOS):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def search(model, prompts, top_k, num_beams=12):
    ids, mask = left_padded(prompts)
    return diverse_beam.search(model, ids, mask, num_beams, 4, 10.0, 16, top_k, EOS)


def eos_and_tie_model(attn_implementation, seed):
    """A random GPT-2 over 24 tokens whose EOS (token 0) is likely after some prefixes and not after
    others, and whose tokens 5 and 6 always have the same logit (untied output rows made equal)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=24,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=EOS,
        eos_token_id=EOS,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
        model.lm_head.weight[EOS] *= 1.5
        model.lm_head.weight[6] = model.lm_head.weight[5]
    return model


PROMPTS = [[3, 9, 4], [7], [11, 2, 8, 15, 1, 20, 13], [5, 5, 6], [19, 18, 17, 16, 3], [12, 1], [6, 22, 10, 2]]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_equals_generate_with_early_eos_and_ties(attn, seed):
    model = eos_and_tie_model(attn, seed)
    assert diverse_beam.supports(model)
    lengths, tied = set(), False
    for top_k in (1, 3, 5):
        ours = search(model, PROMPTS, top_k)
        for prompt, answers in zip(PROMPTS, ours):
            reference = reference_sequences(model, prompt, top_k)
            assert answers == reference, (prompt, top_k)
            lengths |= {len(a) for a in answers}
            tied |= any(5 in a or 6 in a for a in answers)
    # The cases this test is about happened: answers that ended at EOS early and late, or ran to the
    # 16-token limit, and tokens whose logits tie with another token's.
    assert {16} < lengths and min(lengths) < 8 and tied


def other_architecture(kind, attn_implementation):
    """Random small models of the other architectures (their own mask and position code), EOS-prone."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=24,
        bos_token_id=EOS,
        eos_token_id=EOS,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    if kind == "gpt_neo":  # a global and a local (windowed) attention layer
        model = GPTNeoForCausalLM(
            GPTNeoConfig(
                max_position_embeddings=64,
                hidden_size=32,
                num_layers=2,
                num_heads=2,
                attention_types=[[["global", "local"], 1]],
                window_size=8,
                **common,
            )
        )
    elif kind == "gptj":
        model = GPTJForCausalLM(GPTJConfig(n_positions=64, n_embd=32, n_layer=2, n_head=2, rotary_dim=8, **common))
    elif kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                max_position_embeddings=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                **common,
            )
        )
    else:
        model = OPTForCausalLM(
            OPTConfig(
                max_position_embeddings=64,
                hidden_size=32,
                ffn_dim=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                word_embed_proj_dim=32,
                pad_token_id=1,
                **common,
            )
        )
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
        model.lm_head.weight[EOS] *= 1.5
    return model.eval()


@pytest.mark.parametrize(
    "kind, attn", [("gpt_neo", "eager"), ("gptj", "eager"), ("llama", "eager"), ("llama", "sdpa"), ("opt", "sdpa")]
)
@torch.no_grad()
def test_equals_generate_on_other_architectures(kind, attn):
    model = other_architecture(kind, attn)
    assert diverse_beam.supports(model)
    for top_k in (1, 3):
        for prompt, answers in zip(PROMPTS, search(model, PROMPTS, top_k)):
            assert answers == reference_sequences(model, prompt, top_k), (prompt, top_k)


def test_a_model_without_position_inputs_is_left_to_generate():
    """BLOOM's forward takes neither position_ids nor cache_position (ALiBi positions)."""
    bloom = BloomForCausalLM(BloomConfig(vocab_size=24, hidden_size=32, n_layer=1, n_head=2))
    assert not diverse_beam.supports(bloom) and diverse_beam.supports(other_architecture("llama", "sdpa"))


@torch.no_grad()
def test_more_beams_for_a_large_k():
    model = eos_and_tie_model("sdpa", 3)
    beams = Decoding().beams_for(13)
    assert beams == 16
    for prompt, answers in zip(PROMPTS[:3], search(model, PROMPTS[:3], 13, num_beams=beams)):
        assert answers == reference_sequences(model, prompt, 13, num_beams=beams)


@pytest.fixture(scope="module")
def world(tiny_world_small):
    tokenizer = loading.load_tokenizer(tiny_world_small.base_model)
    collator = QACollator.from_config(tokenizer, tiny_world_small.dataset_cfg)
    return dict(
        tokenizer=tokenizer,
        collator=collator,
        test=load_split(tiny_world_small.dataset_cfg, "test"),
        path=tiny_world_small.base_model,
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@torch.no_grad()
def test_trained_tiny_world_model_answers_equal_generate(world, attn):
    model = loading.load_causal_lm(world["path"], attn_implementation=attn).eval()
    assert diverse_beam.supports(model) and model.generation_config.eos_token_id == world["tokenizer"].eos_token_id
    examples = world["test"][:10]
    batch = world["collator"](examples)
    for top_k in (1, 4):
        ours = diverse_beam.search(
            model,
            batch["gen_ids"],
            batch["gen_mask"],
            Decoding().beams_for(top_k),
            4,
            10.0,
            16,
            top_k,
            world["tokenizer"].pad_token_id,
        )
        for example, answers in zip(examples, ours):
            prompt = world["tokenizer"](example.question)["input_ids"]
            assert answers == reference_sequences(model, prompt, top_k, pad_token_id=world["tokenizer"].eos_token_id)


@torch.no_grad()
def test_evaluate_qa_predictions_are_the_reference_answers_in_question_order(world):
    """Batches of 3 over 7 questions (the last one partial, batched by length): each row holds its
    own question's top-2 answers of the reference's one-question generate call, in the questions'
    order."""
    model = loading.load_causal_lm(world["path"]).eval()
    tokenizer, examples = world["tokenizer"], world["test"][:7]
    lengths = [len(tokenizer(e.question)["input_ids"]) for e in examples]
    assert lengths != sorted(lengths)  # evaluate_qa batches them in another order
    rows, _ = evaluate_qa(
        model,
        tokenizer,
        examples,
        world["collator"],
        "cpu",
        ("em2",),
        batch_size=3,
        decoding=Decoding(),
        progress=False,
    )
    assert [r["question"] for r in rows] == [e.question for e in examples]
    for row, example in zip(rows, examples):
        reference = reference_sequences(
            model, tokenizer(example.question)["input_ids"], 2, pad_token_id=tokenizer.eos_token_id
        )
        assert row["predictions"] == " || ".join(
            tokenizer.decode(s, skip_special_tokens=True).strip() for s in reference
        )


@torch.no_grad()
def test_one_beam_group_is_generate_beam_search(world):
    """One group is transformers' plain beam search, another algorithm: generate runs it."""
    model = loading.load_causal_lm(world["path"]).eval()
    batch = world["collator"](world["test"][:4])
    ours = generate_answers(
        model,
        world["tokenizer"],
        batch["gen_ids"],
        batch["gen_mask"],
        Decoding(num_beam_groups=1, diversity_penalty=0.0),
        2,
    )
    assert ours == direct_generate_answers(model, world["tokenizer"], batch, num_beams=12, num_beam_groups=1, top_k=2)


def direct_generate_answers(model, tokenizer, batch, num_beams, num_beam_groups, top_k, **kwargs):
    """generate on the whole left-padded batch, its texts grouped per question."""
    out = model.generate(
        input_ids=batch["gen_ids"],
        attention_mask=batch["gen_mask"],
        max_new_tokens=16,
        num_beams=num_beams,
        num_beam_groups=num_beam_groups,
        early_stopping=True,
        num_return_sequences=top_k,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    texts = [t.strip() for t in tokenizer.batch_decode(out[:, batch["gen_ids"].shape[1] :], skip_special_tokens=True)]
    return [texts[i : i + top_k] for i in range(0, len(texts), top_k)]


@torch.no_grad()
def test_a_generation_config_with_other_processors_falls_back_to_generate(world):
    model = loading.load_causal_lm(world["path"]).eval()
    batch = world["collator"](world["test"][:4])
    plain = generate_answers(model, world["tokenizer"], batch["gen_ids"], batch["gen_mask"], Decoding(), 2)
    model.generation_config.repetition_penalty = 3.0
    assert not diverse_beam.supports(model)
    penalised = generate_answers(model, world["tokenizer"], batch["gen_ids"], batch["gen_mask"], Decoding(), 2)
    assert penalised != plain
    assert penalised == direct_generate_answers(
        model, world["tokenizer"], batch, num_beams=12, num_beam_groups=4, top_k=2, diversity_penalty=10.0
    )


def test_hypotheses_keep_what_transformers_beam_hypotheses_keep():
    """Scripted scores with many exact ties: the same kept set, in the same order, as transformers'
    BeamHypotheses (the finished list both searches rank at the end)."""
    from transformers.generation.beam_search import BeamHypotheses

    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        ours, theirs = diverse_beam.Hypotheses(3), BeamHypotheses(3, length_penalty=1.0, early_stopping=True)
        for n in range(12):
            score = -float(torch.randint(1, 5, (), generator=generator))
            ours.add(score, [n])
            theirs.add(torch.tensor([n]), score, generated_len=1)
        assert ours.beams == [(s, h.tolist()) for s, h, _ in theirs.beams] and ours.worst == theirs.worst_score
