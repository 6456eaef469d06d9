"""Tokenisation and batching. Pads each batch only to its own longest sequence; tensors stay on
the CPU (the training loop moves them)."""

import logging

import torch

from plumbing.errors import UsageError

log = logging.getLogger(__name__)


def pad(sequences, pad_id, side="right"):
    """Stack token lists into (ids, mask), padding on `side` to the longest list."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


class QACollator:
    """Turns `Example`s into the tensors of one batch:

    text_ids/text_mask   documents, truncated to max_text_len, right-padded
    qa_ids/qa_mask       question tokens + tokens of " " + answer (+ EOS if qa_eos)
    qa_labels            -100 except on the answer tokens (the QA loss target)
    gen_ids/gen_mask     the question alone, left-padded, as a generation prompt
    golds                per example, the answers a prediction is scored against

    `max_positions` (the fewest positions among the models that read the batches) lowers the
    lengths so that no sequence outruns a model: documents to max_positions tokens, questions so
    that question + answer (+ EOS) fit.
    """

    def __init__(
        self,
        tokenizer,
        max_text_len=1024,
        max_question_len=128,
        max_answer_len=24,
        qa_eos=False,
        max_positions=None,
        answer_match="all",
    ):
        self.tokenizer = tokenizer
        self.qa_eos = qa_eos
        self.answer_match = answer_match
        self.max_answer_len = max_answer_len
        self.max_text_len = max_text_len
        self.max_question_len = max_question_len
        if max_positions is not None:
            self.max_answer_len = min(max_answer_len, max_positions // 2)
            self.max_text_len = min(max_text_len, max_positions)
            self.max_question_len = min(max_question_len, max_positions - self.max_answer_len - int(qa_eos))
        if self.max_text_len < 2:  # the loss predicts each token from the ones before it
            raise UsageError(
                f"documents are cut to {self.max_text_len} token(s) (max_text_len={max_text_len}, "
                f"models' positions {max_positions}), but a document needs at least 2 tokens to have a "
                "loss: raise dataset.max_text_len"
            )

    @classmethod
    def from_config(cls, tokenizer, dataset_cfg, models=(), answer_match="all"):
        """The collator of a dataset config; `models` (any with a `config`) bound the lengths, and
        each language model among them must embed every token id of `tokenizer`."""
        for model in models:
            if hasattr(model, "get_input_embeddings"):
                check_embeds_vocabulary(
                    tokenizer,
                    model.get_input_embeddings().num_embeddings,
                    f"the model {getattr(model, 'name_or_path', '') or type(model).__name__}",
                )
        limit = min_positions(models)
        collator = cls(
            tokenizer,
            dataset_cfg.max_text_len,
            dataset_cfg.max_question_len,
            dataset_cfg.max_answer_len,
            dataset_cfg.get("qa_eos", True),
            limit,
            answer_match,
        )
        asked = (dataset_cfg.max_text_len, dataset_cfg.max_question_len, dataset_cfg.max_answer_len)
        if (collator.max_text_len, collator.max_question_len, collator.max_answer_len) != asked:
            log.info(
                f"lengths cut to the models' {limit} positions: documents {collator.max_text_len} tokens, "
                f"questions {collator.max_question_len}, answers {collator.max_answer_len} "
                f"(dataset asks {asked[0]}, {asked[1]}, {asked[2]})"
            )
        return collator

    def question_tokens(self, question):
        return self.tokenizer(question)["input_ids"][: self.max_question_len]

    def answer_tokens(self, answer):
        ids = self.tokenizer(" " + answer)["input_ids"][: self.max_answer_len]
        return ids + [self.tokenizer.eos_token_id] if self.qa_eos else ids

    def text_tokens(self, texts):
        return [self.tokenizer(t)["input_ids"][: self.max_text_len] for t in texts]

    def qa_tokens(self, question, answer):
        """(ids, labels) of one QA pair, labels -100 outside the answer."""
        q, a = self.question_tokens(question), self.answer_tokens(answer)
        return q + a, [-100] * len(q) + a

    def encode_texts(self, texts):
        return pad(self.text_tokens(texts), self.tokenizer.pad_token_id)

    def encode_qa(self, questions, answers):
        pairs = [self.qa_tokens(q, a) for q, a in zip(questions, answers)]
        ids, mask = pad([p[0] for p in pairs], self.tokenizer.pad_token_id)
        labels, _ = pad([p[1] for p in pairs], -100)
        return ids, mask, labels

    def encode_prompts(self, questions):
        return pad([self.question_tokens(q) for q in questions], self.tokenizer.pad_token_id, side="left")

    def __call__(self, examples):
        texts = [e.text for e in examples]
        questions = [e.question for e in examples]
        answers = [e.answer for e in examples]
        text_ids, text_mask = self.encode_texts(texts)
        qa_ids, qa_mask, qa_labels = self.encode_qa(questions, answers)
        gen_ids, gen_mask = self.encode_prompts(questions)
        return dict(
            text_ids=text_ids,
            text_mask=text_mask,
            qa_ids=qa_ids,
            qa_mask=qa_mask,
            qa_labels=qa_labels,
            gen_ids=gen_ids,
            gen_mask=gen_mask,
            texts=texts,
            questions=questions,
            answers=answers,
            golds=[e.golds(self.answer_match) for e in examples],
        )


def largest_token_id(tokenizer) -> int:
    """The largest id `tokenizer` can produce, added tokens (special or not) included."""
    return max(max(tokenizer.get_vocab().values()), len(tokenizer) - 1)


def check_embeds_vocabulary(
    tokenizer,
    n_embeddings: int,
    model_name: str,
    fix: str = "use the model's own tokenizer (tokenizer_name), or resize the model's "
    "embeddings to the tokenizer and save it",
) -> None:
    """A one-line UsageError ending in `fix` when a model with `n_embeddings` token embeddings cannot
    read every id of `tokenizer` (e.g. a tokenizer with added tokens the model was never resized for)."""
    largest = largest_token_id(tokenizer)
    if largest >= n_embeddings:
        added = len(tokenizer.get_added_vocab())
        raise UsageError(
            f"{model_name} embeds {n_embeddings} tokens but the tokenizer has ids up to {largest} "
            f"({added} added tokens included); {fix}"
        )


def model_positions(model):
    """How many positions a model (a transformers model, or a weight model with a `backbone`) can
    read; None if unbounded (heuristic weight models, and a weight model reading its own tokens)."""
    if hasattr(model, "base_position_limit"):
        return model.base_position_limit
    config = getattr(getattr(model, "backbone", model), "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def min_positions(models):
    limits = [p for p in (model_positions(m) for m in models) if p is not None]
    return min(limits) if limits else None
