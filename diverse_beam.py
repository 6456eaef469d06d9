"""Diverse (group) beam search over a batch of left-padded prompts, giving the answers of
transformers' `generate(num_beams=N, num_beam_groups=G, diversity_penalty=p, early_stopping=True)`
(its _group_beam_search with BeamSearchScorer and the Hamming diversity penalty, transformers 4.56)
at a fraction of the cost: every step's beam bookkeeping is a few tensor operations over the whole
batch instead of Python loops over questions and candidates, each prompt is encoded once (not once
per beam), each step's attention mask is built directly from the padding, the beams of a finished
group leave the forward pass (its logits would change nothing) and a question leaves the batch once
all its groups are finished, and the beams' key/value cache is reordered and grown in one copy.

Per step, group after group (a group's diversity penalty counts the tokens the earlier groups chose
at this step, finished groups counting as `pad_token_id`): log-softmax of the next-token logits,
minus the penalty, plus the beam's score; the top (1 + number of EOS ids, at least 2) x group-size
candidates of the group's beams; an EOS candidate ranked within the group size finishes a
hypothesis (score: sum of log-probabilities / generated length ** length_penalty); the best
group-size other candidates continue. A group is finished once it holds group-size hypotheses;
open beams join them after the last step. The answers are the best hypotheses over all groups,
ties going to the later one in group order as in transformers.
"""

import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Attention implementations that accept the additive 4-D mask built here.
ATTENTIONS = ("eager", "sdpa")
# Generation-config keys that leave diverse beam search unchanged here: token ids, the knobs that the
# call sets itself and those only sampling reads. Any other key set on the model falls back to generate.
NEUTRAL_KEYS = {
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "transformers_version",
    "_from_model_config",
    "max_length",
    "max_new_tokens",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "early_stopping",
    "num_return_sequences",
    "length_penalty",
    "use_cache",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
}


def supports(model) -> bool:
    """Whether `search` gives this model's `generate` answers: a decoder-only model with eager or
    SDPA attention, no sliding-window layers (generate would cache them differently), a forward
    that takes positions and cache positions, and a generation config that adds no logits processor."""
    config = model.config.get_text_config()
    extra = set(model.generation_config.to_diff_dict()) - NEUTRAL_KEYS
    sliding = getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None)
    takes = set(inspect.signature(model.forward).parameters)
    return (
        not config.is_encoder_decoder
        and getattr(config, "_attn_implementation", None) in ATTENTIONS
        and not sliding
        and {"position_ids", "cache_position"} <= takes
        and not extra
    )


class BeamLayer(DynamicLayer):
    """A growing key/value cache layer whose beam reordering waits for the next step's keys: the
    beams' rows are gathered straight into the grown tensor, one copy of the cache per step where
    reorder-then-append makes two."""

    order = None  # pending: row i of the cache is the stored row order[i]

    def reorder_cache(self, beam_idx):
        self.order = beam_idx if self.order is None else self.order[beam_idx]

    def update(self, key_states, value_states, cache_kwargs=None):
        if self.keys is None or self.order is None:
            return super().update(key_states, value_states, cache_kwargs)
        self.keys = self.gather_and_append(self.keys, key_states)
        self.values = self.gather_and_append(self.values, value_states)
        self.order = None
        return self.keys, self.values

    def gather_and_append(self, old, new):
        length = old.shape[-2]
        grown = new.new_empty(len(self.order), old.shape[1], length + new.shape[-2], old.shape[-1])
        torch.index_select(old, 0, self.order.to(old.device), out=grown[:, :, :length])  # layers may sit on other GPUs
        grown[:, :, length:] = new
        return grown


class Hypotheses:
    """The best `size` finished sequences of one group. A new one enters while there is room or when
    it beats the worst; when over `size`, the worst leaves (the earliest of equal scores), and the
    threshold becomes the next worst (transformers' BeamHypotheses)."""

    def __init__(self, size):
        self.size, self.beams, self.worst = size, [], 1e9

    def add(self, score, tokens):
        if len(self.beams) < self.size or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)


@torch.no_grad()
def search(
    model,
    gen_ids: torch.Tensor,
    gen_mask: torch.Tensor,
    num_beams: int,
    num_beam_groups: int,
    diversity_penalty: float,
    max_new_tokens: int,
    num_return_sequences: int,
    pad_token_id: int,
) -> list:
    """The `num_return_sequences` best continuations (lists of generated token ids, EOS excluded,
    best first) of each left-padded prompt in `gen_ids` (mask `gen_mask`)."""
    n_prompts, prompt_len = gen_ids.shape
    beams, group = num_beams, num_beams // num_beam_groups
    device = gen_ids.device
    eos = model.generation_config.eos_token_id
    eos_ids = torch.tensor(
        [] if eos is None else [eos] if isinstance(eos, int) else list(eos), device=device, dtype=torch.long
    )
    n_candidates = max(2, 1 + len(eos_ids)) * group
    if pad_token_id is None and len(eos_ids):  # generate's default: finished groups feed EOS
        pad_token_id = int(eos_ids[0])
    length_penalty = model.generation_config.length_penalty
    lengths = gen_mask.long().sum(1)

    # The whole prompt once per question (positions from the mask, as generate derives them).
    positions = (gen_mask.long().cumsum(-1) - 1).masked_fill(gen_mask == 0, 1)
    cache = Cache(layer_class_to_replicate=BeamLayer)
    out = model(
        input_ids=gen_ids,
        attention_mask=gen_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        cache_position=torch.arange(prompt_len, device=device),
        **_last_logits_only(model),
    )
    logprobs = torch.log_softmax(out.logits[:, -1, :].to(device=device, dtype=torch.float32), dim=-1)
    vocab = logprobs.shape[-1]
    logprobs = logprobs.unsqueeze(1).expand(n_prompts, beams, vocab)
    del out
    # Additive mask over prompt and answer positions, per question: 0 attends, the dtype's min does not.
    floor = torch.finfo(model.dtype).min
    mask = torch.zeros(n_prompts, 1, 1, prompt_len + max_new_tokens, dtype=model.dtype, device=device)
    mask[:, 0, 0, :prompt_len].masked_fill_(gen_mask == 0, floor)
    # The cache holds the beams of unfinished groups only; in_cache: a beam's row there (-1: none).
    # Every beam starts from its question's prompt row.
    in_cache = torch.arange(n_prompts * beams, device=device) // beams

    live = torch.arange(n_prompts, device=device)  # the questions still in the batch
    scores = torch.full((n_prompts, beams), -1e9, dtype=torch.float, device=device)
    scores[:, ::group] = 0  # one live beam per group at the start, so a group's beams differ
    tokens = torch.zeros(n_prompts * beams, 0, dtype=torch.long, device=device)
    done = torch.zeros(n_prompts, num_beam_groups, dtype=torch.bool, device=device)
    finished = [[Hypotheses(group) for _ in range(num_beam_groups)] for _ in range(n_prompts)]
    ones = torch.ones(n_prompts, beams, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        n_live = len(live)
        chosen = torch.empty(n_live, beams, dtype=torch.long, device=device)
        source = torch.empty(n_live, beams, dtype=torch.long, device=device)
        new_scores = torch.empty(n_live, beams, dtype=torch.float, device=device)
        for g in range(num_beam_groups):
            part = slice(g * group, (g + 1) * group)
            group_scores = logprobs[:, part]
            if g:
                counts = torch.zeros(n_live, vocab, dtype=torch.long, device=device)
                counts.scatter_add_(1, chosen[:, : g * group], ones[:n_live, : g * group])
                group_scores = group_scores - (diversity_penalty * counts).unsqueeze(1)
            group_scores = group_scores + scores[:, part].unsqueeze(-1)
            top, index = torch.topk(group_scores.reshape(n_live, group * vocab), n_candidates, dim=1)
            token, beam = index % vocab, index // vocab
            is_eos = torch.isin(token, eos_ids)
            was_done = done[:, g : g + 1].clone()  # finishing at this step still picks this step's beams
            ending = is_eos[:, :group] & ~was_done
            if ending.any():
                rows = (torch.arange(n_live, device=device) * beams + g * group).unsqueeze(1) + beam
                for i, rank in ending.nonzero().tolist():
                    hyps = finished[live[i]][g]
                    hyps.add(top[i, rank].item() / ((step + 1) ** length_penalty), tokens[rows[i, rank]].tolist())
                    done[i, g] = len(hyps.beams) >= hyps.size
            keep = torch.sort(is_eos.to(torch.uint8), dim=1, stable=True).indices[:, :group]
            new_scores[:, part] = top.gather(1, keep).masked_fill(was_done, 0.0)
            chosen[:, part] = token.gather(1, keep).masked_fill(was_done, pad_token_id)
            source[:, part] = g * group + beam.gather(1, keep)
        rows = (torch.arange(n_live, device=device) * beams).unsqueeze(1) + source
        tokens = torch.cat([tokens[rows.view(-1)], chosen.view(-1, 1)], dim=1)
        scores = new_scores
        open_questions = ~done.all(1)
        if step == max_new_tokens - 1 or not open_questions.any():
            break
        if not open_questions.all():  # finished questions leave the batch
            stay = open_questions.nonzero().squeeze(1)
            rows, chosen, live, scores, done = rows[stay], chosen[stay], live[stay], scores[stay], done[stay]
            tokens = tokens[(stay.unsqueeze(1) * beams + torch.arange(beams, device=device)).view(-1)]
        # Only the beams of unfinished groups go on: a finished group's logits change nothing.
        active = (~done).repeat_interleave(group, dim=1).view(-1).nonzero().squeeze(1)
        cache.reorder_cache(in_cache[rows.view(-1)[active]])
        in_cache = torch.full((len(live) * beams,), -1, dtype=torch.long, device=device)
        in_cache[active] = torch.arange(len(active), device=device)
        question = live[active // beams]
        width = prompt_len + step + 1
        out = model(
            input_ids=chosen.view(-1)[active].unsqueeze(1),
            attention_mask=mask[question, ..., :width],
            position_ids=(lengths[question] + step).unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
            cache_position=torch.tensor([width - 1], device=device),
        )
        logprobs = torch.log_softmax(out.logits[:, -1, :].to(device=device, dtype=torch.float32), dim=-1)
        if len(active) < len(live) * beams:  # finished groups' rows: any value, their results are dropped
            logprobs = logprobs.new_zeros(len(live) * beams, vocab).index_copy_(0, active, logprobs)
        logprobs = logprobs.view(len(live), beams, vocab)
        del out

    # Open beams of unfinished groups join their group's hypotheses after the last step.
    n_steps = tokens.shape[1]
    open_scores, open_tokens = scores.tolist(), tokens.view(len(live), beams, n_steps).tolist()
    for i, question in enumerate(live.tolist()):
        for g in range(num_beam_groups):
            if not done[i, g]:
                for b in range(g * group, (g + 1) * group):
                    finished[question][g].add(open_scores[i][b] / (n_steps**length_penalty), open_tokens[i][b])
    answers = []
    for groups in finished:
        candidates = [beam for hyps in groups for beam in hyps.beams]
        best = sorted(range(len(candidates)), key=lambda i: (candidates[i][0], i), reverse=True)
        answers.append([candidates[i][1] for i in best[:num_return_sequences]])
    return answers


def _last_logits_only(model):
    """logits_to_keep=1 where the model takes it (generate does the same): no vocabulary projection
    of the prompt's other positions."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
