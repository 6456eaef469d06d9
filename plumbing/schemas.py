"""The config schemas (Hydra ConfigStore dataclasses), their choice lists, their value checks and the
config resolvers.

Importing this module registers
  - the schemas: conf/config.yaml and qa_conf/config.yaml start from `run_schema`/`qa_tune_schema`,
    conf/task/<task>.yaml from `schema/task/<task>`, conf/dataset/<name>.yaml and
    conf/model/<name>.yaml from `schema/dataset/<name>` and `schema/model/<name>`. Hydra itself
    rejects a value of the wrong type (lr=1e-3x) and an unknown key; `check_values` adds the
    ranges and choices declared beside each field (cross-field rules live with the code they guard);
  - the resolvers `${tiny_world:data|base_model}` (a path in the tiny world's folder: nothing is built,
    entry points call tiny_world.ensure_built), `${basename:path}`, `${method_name:model,qa_lt_final}`
    `${stream_name:split,test_path}`, and the run-folder labels `${base_label:base_model}`,
    `${weights_label:model,weight_model_path}` and `${source_name:documents,dataset,split,test_path,downsample_to}`.
Each field's value and its comment are in the YAML file; a schema says only what a value may be
(MISSING here: the YAML must set it). Every choice list has its home here; the method's modules import it.
"""

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from plumbing import errors
from plumbing.environment import DTYPES, REPO_ROOT, cache_dir
from plumbing.errors import UsageError

# Choice lists: the values an option may take
SPLITS = ("qa_train", "qa_val", "train", "val", "test")
ANSWER_MATCHES = ("all", "shortest")  # score against every gold alternative | the training target only
OPTIMIZERS = ("adam", "sgd", "adafactor", "adam8bit")
DECODINGS = ("beam", "greedy")
LT_METRICS = ("em", "f1", "max_f1", "nll")
INNER_BACKENDS = ("higher", "torch_func", "forward")
AUTOCAST_DTYPES = ("bfloat16", "float16")
BATCH_ORDERS = ("rows", "documents")
ACTIVATIONS = ("softplus", "sigmoid", "exp", "gelu", "none")


def key(check=None, choices=None):
    """A field the YAML must set; `check` (a rule of schemas.VALUE_RULES) and `choices` (the allowed
    values) are enforced by check_values."""
    return field(default=MISSING, metadata=dict(check=check, choices=choices))


# ---------------------------------------------------------------------------------------------
# Datasets (conf/dataset/): the loader registry of exp_datasets reads them


@dataclass
class DatasetConfig:
    name: str = key()
    files: Dict[str, str] = field(default_factory=dict)
    web_text_csv: Optional[str] = None  # web text of the locality term (meta-training)
    capitalize_answers: bool = key()
    max_text_len: int = key("document_length")
    max_question_len: int = key("positive_int")
    max_answer_len: int = key("positive_int")
    qa_eos: bool = key()


@dataclass
class CsvDatasetConfig(DatasetConfig):
    data_dir: Optional[str] = key()


@dataclass
class ArchivalQAConfig(CsvDatasetConfig):
    full_passage: bool = key()
    shuffle_seed: int = key()


@dataclass
class SquadConfig(DatasetConfig):
    hf_name: str = key()
    local_files: Optional[Dict[str, Optional[str]]] = key()
    ranges: Dict[str, List[int]] = key()
    test_split: str = key()
    shuffle_seed: int = key()


DATASET_SCHEMAS = {
    "streamingqa": CsvDatasetConfig,
    "tiny_world": CsvDatasetConfig,
    "archivalqa": ArchivalQAConfig,
    "squad": SquadConfig,
}


# ---------------------------------------------------------------------------------------------
# Weight models (conf/model/): weight_model.py's registry reads them


@dataclass
class WeightModelConfig:
    name: str = key()


@dataclass
class UniformConfig(WeightModelConfig):
    init_scalar: float = key()


@dataclass
class SalientSpansConfig(WeightModelConfig):
    spacy_models: List[str] = key()
    ignored_labels: List[str] = key()


@dataclass
class TfidfConfig(WeightModelConfig):
    min_threshold: Optional[float] = key()
    vectorizer: Dict[str, Any] = key()


@dataclass
class CamelsConfig(WeightModelConfig):
    pretrained_model: Optional[str] = key()
    head_width: int = key("positive_int")
    activation: str = key(choices=ACTIVATIONS)
    softplus_beta: float = key("positive")
    normalize: bool = key()
    freeze_base: bool = key()


@dataclass
class OracleConfig(WeightModelConfig):
    normalize: bool = key()


@dataclass
class SurprisalConfig(WeightModelConfig):
    top_k_percent: float = key("positive")
    temperature: float = key("positive")


@dataclass
class ExcessLossConfig(WeightModelConfig):
    top_k_percent: float = key("positive")
    reference_model: Optional[str] = key()


MODEL_SCHEMAS = {
    "uniform": UniformConfig,
    "ssm": SalientSpansConfig,
    "TFIDF": TfidfConfig,
    "CaMeLS": CamelsConfig,
    "oracle": OracleConfig,
    "none": WeightModelConfig,
    "surprisal": SurprisalConfig,
    "excess_loss": ExcessLossConfig,
}


# ---------------------------------------------------------------------------------------------
# run.py (conf/config.yaml, conf/task/eval.yaml, conf/task/train.yaml)


@dataclass
class RunConfig:
    task_name: str = key(choices=("eval", "train", "adapt"))
    dataset: Any = key()
    model: Any = key()
    base_model: str = key()
    tokenizer_name: Optional[str] = key()
    base_model_state_dict: Optional[str] = key()
    base_model_state_dict_path: Optional[str] = key()
    seed: int = key("seed")
    device: str = key("device")
    dtype: str = key(choices=tuple(DTYPES))
    cache_dir: Optional[str] = key()
    wandb: bool = key()
    wandb_project: str = key()
    overwrite: bool = key()
    torch_threads: Optional[int] = key("positive_int")
    progress: bool = key()


@dataclass
class AdaptationOptions(RunConfig):
    """What task=adapt and task=eval share (conf/adaptation.yaml): the weighting, the stream, the adaptation."""

    weight_model_path: Optional[str] = key()
    split: str = key(choices=SPLITS)
    test_path: Optional[str] = key()
    downsample_to: int = key("documents_or_all")
    lr: float = key("positive")
    optimizer: str = key(choices=OPTIMIZERS)
    n_epochs: int = key("positive_int")
    batch_size: int = key("positive_int")
    grad_acc_steps: int = key("positive_int")
    grad_clip_thresh: float = key("positive")
    grad_checkpointing: bool = key()
    save_state_every: Optional[int] = key("positive_int")


@dataclass
class AdaptConfig(AdaptationOptions):
    documents: Optional[str] = key()
    save_model: bool = key()
    render_documents: int = key("non_negative_int")


@dataclass
class EvalConfig(AdaptationOptions):
    method_label: Optional[str] = key()
    qa_lt_final: bool = key()
    lt_lr: float = key("positive")
    lt_batch_size: int = key("positive_int")
    lt_val_steps: int = key("positive_int")
    lt_patience: int = key("positive_int")
    lt_stopping_metric: str = key(choices=LT_METRICS)
    lt_epochs: Optional[int] = key("positive_int")
    lt_val_questions: Optional[int] = key("count_or_all")
    lt_optimizer: str = key(choices=OPTIMIZERS)
    lt_grad_acc_steps: int = key("positive_int")
    lt_grad_clip_thresh: float = key("positive")
    eval: List[str] = key("eval_modes")
    decoding: str = key(choices=DECODINGS)
    num_beams: int = key("positive_int")
    num_beam_groups: int = key("positive_int")
    diversity_penalty: float = key("non_negative")
    max_new_tokens: int = key("positive_int")
    answer_first_line: bool = key()
    answer_match: str = key(choices=ANSWER_MATCHES)
    eval_batch_size: int = key("positive_int")
    eval_init: bool = key()
    unrelated_qa_eval: bool = key()
    unrelated_split: str = key(choices=SPLITS)
    unrelated_questions: Optional[int] = key("count_or_all")
    eval_every_k: Optional[int] = key("positive_int")


@dataclass
class TrainConfig(RunConfig):
    update_batch_size: int = key("positive_int")
    batch_order: str = key(choices=BATCH_ORDERS)
    meta_dropout: bool = key()
    sequential_update: bool = key()
    num_inner_steps: int = key("positive_int")
    inner_lr: float = key("positive")
    inner_backend: str = key(choices=INNER_BACKENDS)
    reset_base_freq: int = key("positive_int")
    grad_checkpointing: bool = key()
    checkpoint_every: int = key("positive_int")
    forward_probes: int = key("positive_int")
    forward_mix: bool = key()
    inner_autocast: Optional[str] = key(choices=AUTOCAST_DTYPES)
    c_kl: float = key("non_negative")
    web_text_loc: bool = key()
    web_text_csv: Optional[str] = key()
    web_text_val_csv: Optional[str] = key()
    loc_batch_size: int = key("positive_int")
    c_norm: float = key("non_negative")
    outer_lr: float = key("positive")
    grad_acc_steps: int = key("positive_int")
    grad_clip_thresh: float = key("positive")
    n_epochs: int = key("positive_int")
    max_outer_steps: Optional[int] = key("non_negative_int")
    val_steps: int = key("positive_int")
    val_batches: Optional[int] = key("positive_int")
    save_epoch_checkpoints: bool = key()
    sample_steps: int = key("positive_int")
    sample_docs: int = key("positive_int")
    output_dir: Optional[str] = key()
    resume_from: Optional[str] = key()
    dist_timeout_min: int = key("positive_int")


# ---------------------------------------------------------------------------------------------
# train_qa.py (qa_conf/config.yaml)


@dataclass
class QATuneConfig:
    dataset: Any = key()
    model: str = key()
    tokenizer_name: Optional[str] = key()
    load_state_dict_path: Optional[str] = key()
    seed: int = key("seed")
    device: str = key("device")
    dtype: str = key(choices=tuple(DTYPES))
    torch_threads: Optional[int] = key("positive_int")
    grad_checkpointing: bool = key()
    optimizer: str = key(choices=OPTIMIZERS)
    lr: float = key("positive")
    batch_size: int = key("positive_int")
    grad_acc_steps: int = key("positive_int")
    grad_clip_thresh: float = key("positive")
    n_epochs: int = key("positive_int")
    max_steps: Optional[int] = key("positive_int")
    val_steps: int = key("positive_int")
    stop_k: Optional[int] = key("positive_int")
    max_val_questions: Optional[int] = key("positive_int")
    eval_batch_size: int = key("positive_int")
    max_new_tokens: int = key("positive_int")
    save_resume_state: bool = key()
    overwrite: bool = key()
    wandb: bool = key()
    wandb_project: str = key()


# ---------------------------------------------------------------------------------------------
# demo.py (conf/demo.yaml)

QA_CHECKPOINTS = ("lowest_nll", "highest_f1", "highest_em")
SELECTION_METRICS = ("f1", "em", "nll")


@dataclass
class TransferExperimentConfig:
    bases: List[str] = key()
    proxy_demo_dir: str = key()
    target_meta_train: List[str] = key()
    target_meta_train_seeds: List[int] = key()


@dataclass
class DemoConfig:
    out_dir: str = key()
    dataset: str = key()
    tiny_world_overrides: List[str] = key("overrides")
    parallel_jobs: int = key("positive_int")
    base_model_source: Optional[str] = key()
    qa_tune_overrides: List[str] = key("overrides")
    qa_checkpoint: str = key(choices=QA_CHECKPOINTS)
    meta_train_seeds: List[int] = key("seed_list")  # may be empty: weight_models gives the weight models
    meta_train_overrides: List[str] = key("overrides")
    weight_checkpoint: str = key("checkpoint_name")
    weight_models: Dict[str, str] = key()
    methods: Dict[str, List[str]] = key()
    meta_trained_methods: List[str] = key()
    unswept_methods: List[str] = key()
    lrs: List[float] = key("positive_numbers")
    max_lr_extensions: int = key("non_negative_int")
    val_downsample_to: int = key("documents_or_all")
    val_seed: int = key("seed")
    test_downsample_to: int = key("documents_or_all")
    test_seeds: List[int] = key("seeds")
    eval_overrides: List[str] = key("overrides")
    selection_metric: str = key(choices=SELECTION_METRICS)
    baselines: List[str] = key()
    bootstrap_resamples: int = key("at_least_100")
    heatmap_documents: int = key("non_negative_int")
    transfer: TransferExperimentConfig = field(default_factory=TransferExperimentConfig)


@dataclass
class WorldsConfig:
    out_dir: str = key()
    world_seeds: List[int] = key("not_empty")
    demo_overrides: List[str] = key("overrides")
    dry_run: bool = key()
    bootstrap_resamples: int = key("at_least_100")


# ---------------------------------------------------------------------------------------------
# The tiny world's recipe (conf/tiny_world.yaml; python -m tiny_world)


@dataclass
class TokenizerRecipe:
    vocab_size: int = key("positive_int")


@dataclass
class ModelRecipe:
    n_positions: int = key("positive_int")
    n_embd: int = key("positive_int")
    n_layer: int = key("positive_int")
    n_head: int = key("positive_int")
    dropout: float = key("fraction")
    activation: str = key()


@dataclass
class PretrainRecipe:
    epochs: int = key("positive_int")
    doc_batch_size: int = key("positive_int")
    lr: float = key("positive")
    betas: List[float] = key()
    weight_decay: float = key("non_negative")
    warmup_fraction: float = key("fraction")
    final_lr_fraction: float = key("fraction")
    grad_clip: float = key("positive")
    qa_loss_weight: float = key("non_negative")
    max_question_len: int = key("positive_int")
    max_answer_len: int = key("positive_int")
    qa_eos: bool = key()


@dataclass
class OneStepReport:
    n_docs: int = key("non_negative_int")
    n_unrelated: int = key("positive_int")
    lrs: List[float] = key("positive_numbers")


@dataclass
class StreamReport:
    n_docs: int = key("non_negative_int")
    n_streams: int = key("positive_int")
    schemes: List[str] = key()
    lrs: List[float] = key("positive_numbers")
    grad_clip: float = key("positive")


@dataclass
class ReportRecipe:
    n_qa: int = key("positive_int")
    one_step: OneStepReport = field(default_factory=OneStepReport)
    stream: StreamReport = field(default_factory=StreamReport)


@dataclass
class TinyWorldRecipe:
    cache_dir: Optional[str] = key()
    out_dir: Optional[str] = key()
    device: str = key()
    num_threads: Optional[int] = key("positive_int")
    progress: bool = key()
    seed: int = key("seed")
    n_value_people: int = key("positive_int")
    n_value_towns: int = key("positive_int")
    n_value_rivers: int = key("positive_int")
    n_pretrain_entities: int = key("positive_int")
    n_qa_entities: int = key("positive_int")
    qa_val_fraction: float = key("fraction")
    docs_per_pretrain_entity: int = key("positive_int")
    n_train_docs: int = key("positive_int")
    n_val_docs: int = key("positive_int")
    n_test_docs: int = key("positive_int")
    n_web_texts: int = key("positive_int")
    doc_words: List[int] = key("range")
    pretrain_doc_words: Optional[List[int]] = key("range")
    facts_per_doc: List[int] = key("range")
    fact_mentions: List[int] = key("range")
    questions_per_fact: List[int] = key("range")
    web_text_words: List[int] = key("range")
    tokenizer: TokenizerRecipe = field(default_factory=TokenizerRecipe)
    model: ModelRecipe = field(default_factory=ModelRecipe)
    pretrain: PretrainRecipe = field(default_factory=PretrainRecipe)
    report: ReportRecipe = field(default_factory=ReportRecipe)


# ---------------------------------------------------------------------------------------------
# Transfer bases: more base models on a tiny world's data (conf/transfer_bases.yaml;
# python -m tiny_world.transfer_bases)

TRANSFER_ARCHITECTURES = ("gpt2", "llama")
TRANSFER_TOKENIZERS = ("world", "byte_bpe", "unigram")


@dataclass
class TransferBaseRecipe:
    architecture: str = key(choices=TRANSFER_ARCHITECTURES)
    tokenizer: str = key(choices=TRANSFER_TOKENIZERS)
    vocab_size: Optional[int] = key("positive_int")
    intermediate_size: Optional[int] = key("positive_int")


@dataclass
class TransferBasesConfig:
    world_overrides: List[str] = key("overrides")
    device: str = key()
    num_threads: Optional[int] = key("positive_int")
    progress: bool = key()
    build: List[str] = key()
    bases: Dict[str, TransferBaseRecipe] = key()


def store_schemas():
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="schema/task", name="eval", node=EvalConfig)
    store.store(group="schema/task", name="adapt", node=AdaptConfig)
    store.store(group="schema/task", name="train", node=TrainConfig)
    store.store(name="qa_tune_schema", node=QATuneConfig)
    store.store(name="demo_schema", node=DemoConfig)
    store.store(name="worlds_schema", node=WorldsConfig)
    store.store(name="tiny_world_schema", node=TinyWorldRecipe)
    store.store(name="transfer_bases_schema", node=TransferBasesConfig)
    for name, schema in DATASET_SCHEMAS.items():
        store.store(group="schema/dataset", name=name, node=schema)
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="schema/model", name=name, node=schema)


# ---------------------------------------------------------------------------------------------
# Resolvers


TINY_WORLD_ARTEFACTS = ("data", "base_model")


def tiny_world_root(configured_cache_dir=None) -> Path:
    """The default tiny world's folder: <cache>/tiny_world (cache_dir, else $CAMELS_CACHE_DIR, else <repo>/.cache)."""
    return cache_dir(configured_cache_dir) / "tiny_world"


def tiny_world_path(name, *, _root_=None):
    """${tiny_world:data|base_model}: where that part of the default tiny world lives, honouring the
    run's cache_dir. Only a path: tiny_world.ensure_built builds it."""
    if name not in TINY_WORLD_ARTEFACTS:
        raise UsageError(f"${{tiny_world:{name}}} is unknown; use ${{tiny_world:data}} or ${{tiny_world:base_model}}")
    configured = _root_.get("cache_dir") if isinstance(_root_, DictConfig) else None
    return str(tiny_world_root(configured) / name)


def config_groups(config_dir, *groups):
    """${config_groups:conf,task,model}: "group: option, option" lines of the public config groups of a
    --help (Hydra's own list also shows the schemas and the groups other groups pull in)."""
    root = REPO_ROOT / str(config_dir)
    return "\n".join(f"{group}: {', '.join(sorted(p.stem for p in (root / group).glob('*.yaml')))}" for group in groups)


def basename(path):
    return Path(str(path)).name or str(path)


def method_name(model_name, qa_lt_final):
    """A method as the result tables name it: the weighting, with "+qa_tune" after light tuning."""
    return f"{model_name}+qa_tune" if qa_lt_final else str(model_name)


def stream_name(split, test_path):
    """The evaluation stream as run folders name it: the test_path file's stem, else the split."""
    return Path(str(test_path)).stem if test_path else str(split)


def path_label(path, parts=2, local_only=False):
    """A model or file as run folders name it: a name that is no local path (a hub name) as it is, '/'
    turned into '_'; a local path (always, with `local_only`) as its last `parts` path parts and a short
    hash of its absolute path, so that two worlds' base_model folders, or two runs' checkpoints/best,
    name different folders."""
    text = str(path)
    local = Path(text).expanduser()
    if not local_only and not local.exists() and not text.startswith(("/", ".", "~")):
        return text.replace("/", "_")
    absolute = Path(os.path.abspath(local))
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:6]
    return "_".join(absolute.parts[-parts:]) + "-" + digest


def base_label(base_model, *, _root_=None):
    """${base_label:${base_model}}: the base model as run folders name it (path_label), followed by its
    state dict's (base_model_state_dict, or base_model_state_dict_path, of the same config) when one is given."""
    state_dict = None
    if isinstance(_root_, DictConfig):
        state_dict = _root_.get("base_model_state_dict") or _root_.get("base_model_state_dict_path")
    return path_label(base_model) + (f"+{path_label(state_dict, local_only=True)}" if state_dict else "")


# the weightings whose parameters come from weight_model_path (weight_model.WEIGHT_MODELS[name].learned)
LEARNED_WEIGHTINGS = ("CaMeLS",)


def weights_label(model_name, weight_model_path):
    """${weights_label:${model.name},${weight_model_path}}: "@<path_label>" of the checkpoint a learned
    weighting reads (two checkpoints are two methods), "" for every other weighting."""
    if model_name not in LEARNED_WEIGHTINGS or not weight_model_path:
        return ""
    return "@" + path_label(weight_model_path)


def source_name(documents, dataset_name, split, test_path, downsample_to):
    """${source_name:...}: task=adapt's documents as run folders name them: the file or folder
    (path_label), else the dataset, its stream and how many documents were sampled."""
    if documents:
        return path_label(documents, parts=1, local_only=True)
    return f"{dataset_name}-{stream_name(split, test_path)}-ds{downsample_to}"


RESOLVERS = {
    "tiny_world": tiny_world_path,
    "basename": basename,
    "config_groups": config_groups,
    "method_name": method_name,
    "stream_name": stream_name,
    "base_label": base_label,
    "weights_label": weights_label,
    "source_name": source_name,
}


def register_resolvers():
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


SEED_RANGE = (0, 2**32 - 1)  # what numpy's seeding accepts
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def is_seed(value) -> bool:
    return isinstance(value, int) and SEED_RANGE[0] <= value <= SEED_RANGE[1]


VALUE_RULES = {
    "seed": (is_seed, f"a seed must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}"),
    "seeds": (
        lambda v: len(v) > 0 and all(is_seed(x) for x in v),
        f"give a list of at least one seed, each an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}",
    ),
    "seed_list": (
        lambda v: all(is_seed(x) for x in v),
        f"give a list of seeds, each an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}",
    ),
    "device": (lambda v: re.fullmatch(DEVICE_PATTERN, v) is not None, "use auto, cpu, cuda, cuda:<index> or mps"),
    # the loss of a document predicts each token from the ones before it: one token has none to predict
    "document_length": (
        lambda v: isinstance(v, int) and v >= 2,
        "a document needs at least 2 tokens to have a loss: use 2 or more",
    ),
    "positive_int": (lambda v: isinstance(v, int) and v > 0, "it must be a positive integer"),
    "non_negative_int": (lambda v: isinstance(v, int) and v >= 0, "it must be an integer >= 0"),
    "positive": (lambda v: v > 0, "it must be a positive number"),
    "non_negative": (lambda v: v >= 0, "it must be a number >= 0"),
    "documents_or_all": (lambda v: v == -1 or v > 0, "use a number of documents, or -1 for all"),
    "count_or_all": (lambda v: v == -1 or v > 0, "use a number, or -1 for all"),
    "at_least_100": (lambda v: v >= 100, "use at least 100"),
    "fraction": (lambda v: 0 <= v <= 1, "it must be a number between 0 and 1"),
    "range": (lambda v: len(v) == 2 and 1 <= v[0] <= v[1], "it must be [low, high] with 1 <= low <= high"),
    "positive_numbers": (
        lambda v: len(v) > 0 and all(x > 0 for x in v),
        "give a list of positive numbers, e.g. [1e-4,1e-3]",
    ),
    "not_empty": (lambda v: len(v) > 0, "give a list of at least one value"),
    "eval_modes": (
        lambda v: len(v) > 0,
        "nothing would be scored: give at least one mode, e.g. eval=[em] or eval=[em,ppl]",
    ),
    "overrides": (lambda v: all("=" in x for x in v), "give a list of key=value overrides"),
    "checkpoint_name": (
        lambda v: re.fullmatch(r"best|last|epoch_[1-9]\d*", v) is not None,
        "use best, last or epoch_<k>",
    ),
}


def check_values(cfg, prefix: str = "") -> None:
    """One-line UsageError for the first value of a structured config (and of its nested configs)
    outside the range (metadata "check") or the choices (metadata "choices") its schema declares.
    Hydra has checked the types already; null passes where the schema allows it."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    for spec in dataclasses.fields(schema):
        check, choices = spec.metadata.get("check"), spec.metadata.get("choices")
        # only values with a rule, and nested configs, are read
        if not (check or choices or spec.type is Any) or OmegaConf.is_missing(cfg, spec.name):
            continue
        value = cfg[spec.name]
        if isinstance(value, DictConfig):
            check_values(value, f"{prefix}{spec.name}.")
        if value is None or not (check or choices):
            continue
        if choices and value not in choices:
            raise UsageError(f"{prefix}{spec.name}={value} is unknown; use one of {', '.join(choices)}")
        if check and not VALUE_RULES[check][0](value):
            optional = " (or null)" if type(None) in getattr(spec.type, "__args__", ()) else ""
            raise UsageError(f"{prefix}{spec.name}={value} is invalid; {VALUE_RULES[check][1]}{optional}")


def option_names(key):
    """The option names a config may hold at `key`'s level (for errors.composition_error's suggestions): for a
    top-level key, every field of the running entry point's schemas (all entry points' when it is another
    program) and `task`; for dataset.<x> and model.<x>, the fields of every dataset and weight-model schema."""
    import sys

    prefix, _, _ = key.rpartition(".")
    by_script = {
        "run.py": [EvalConfig, AdaptConfig, TrainConfig],
        "train_qa.py": [QATuneConfig],
        "demo.py": [DemoConfig],
    }
    if prefix:
        groups = {"dataset": DATASET_SCHEMAS.values(), "model": MODEL_SCHEMAS.values()}.get(prefix, ())
    else:
        script = Path(sys.argv[0]).name
        groups = by_script.get(script, [schema for entry in by_script.values() for schema in entry])
    names = {spec.name for schema in groups for spec in dataclasses.fields(schema)} | (set() if prefix else {"task"})
    return sorted(f"{prefix}.{name}" if prefix else name for name in names)


store_schemas()
register_resolvers()
errors.option_names = option_names
