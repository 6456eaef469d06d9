"""The configuration layer: the config schemas (Hydra ConfigStore dataclasses) and resolvers.

Importing this module, as every entry point and the tests do, registers
  - the schemas: conf/config.yaml and qa_conf/config.yaml start from `run_schema`/`qa_tune_schema`,
    conf/task/<task>.yaml from `schema/task/<task>`, conf/dataset/<name>.yaml and
    conf/model/<name>.yaml from `schema/dataset/<name>` and `schema/model/<name>`. Hydra itself
    rejects a value of the wrong type (lr=1e-3x) and an unknown key; util.check_values adds the
    ranges and choices declared beside each field (cross-field rules live with the code they guard);
  - the resolvers `${tiny_world:data|base_model}`, `${basename:path}`,
    `${method_name:model,qa_lt_final}` and `${stream_name:split,test_path}`. This is the one
    library-side place that reaches the tiny-world builder: `${tiny_world:...}` builds the default
    tiny world on first use.
Each field's value and its comment are in the YAML file; a schema says only what a value may be
(MISSING here: the YAML must set it).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from exp_datasets import ANSWER_MATCHES, SPLITS
from meta_objective import AUTOCAST_DTYPES, INNER_BACKENDS
from meta_train import BATCH_ORDERS
from subroutines import DECODINGS, LT_METRICS, OPTIMIZERS
from util import DTYPES


def key(check=None, choices=None):
    """A field the YAML must set; `check` (a rule of util.VALUE_RULES) and `choices` (the allowed
    values) are enforced by util.check_values."""
    return field(default=MISSING, metadata=dict(check=check, choices=choices))


# ---------------------------------------------------------------------------------------------
# Datasets (conf/dataset/): the loader registry of exp_datasets reads them


@dataclass
class DatasetConfig:
    name: str = key()
    files: Dict[str, str] = field(default_factory=dict)
    web_text_csv: Optional[str] = None          # web text of the locality term (meta-training)
    capitalize_answers: bool = key()
    max_text_len: int = key("positive_int")
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


DATASET_SCHEMAS = {"streamingqa": CsvDatasetConfig, "tiny_world": CsvDatasetConfig, "archivalqa": ArchivalQAConfig,
                   "squad": SquadConfig}


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
    activation: str = key(choices=("softplus", "sigmoid", "exp", "gelu", "none"))
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


MODEL_SCHEMAS = {"uniform": UniformConfig, "ssm": SalientSpansConfig, "TFIDF": TfidfConfig, "CaMeLS": CamelsConfig,
                 "oracle": OracleConfig, "none": WeightModelConfig, "surprisal": SurprisalConfig,
                 "excess_loss": ExcessLossConfig}


# ---------------------------------------------------------------------------------------------
# run.py (conf/config.yaml, conf/task/eval.yaml, conf/task/train.yaml)


@dataclass
class RunConfig:
    task_name: str = key(choices=("eval", "train"))
    dataset: Any = key()
    model: Any = key()
    base_model: str = key()
    tokenizer_name: Optional[str] = key()
    base_model_state_dict: Optional[str] = key()
    base_model_state_dict_path: Optional[str] = key()
    seed: int = key()
    device: str = key()
    dtype: str = key(choices=tuple(DTYPES))
    cache_dir: Optional[str] = key()
    wandb: bool = key()
    wandb_project: str = key()
    overwrite: bool = key()
    torch_threads: Optional[int] = key("positive_int")
    progress: bool = key()


@dataclass
class EvalConfig(RunConfig):
    weight_model_path: Optional[str] = key()
    method_label: Optional[str] = key()
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
    eval: List[str] = key()
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
    inner_autocast: Optional[str] = key(choices=tuple(AUTOCAST_DTYPES))
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
    seed: int = key()
    device: str = key()
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


def store_schemas():
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="schema/task", name="eval", node=EvalConfig)
    store.store(group="schema/task", name="train", node=TrainConfig)
    store.store(name="qa_tune_schema", node=QATuneConfig)
    for name, schema in DATASET_SCHEMAS.items():
        store.store(group="schema/dataset", name=name, node=schema)
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="schema/model", name=name, node=schema)


# ---------------------------------------------------------------------------------------------
# Resolvers


def tiny_world_path(name):
    """Folder of the default tiny world's `name` ("data" or "base_model"), built on first use."""
    from exp_datasets import tiny_world

    return tiny_world.artefact_path(name)


def planned_tiny_world_path(name):
    """Where ${tiny_world:name} points, without building the world: for checks made before the step
    that builds it (demo.py)."""
    return str(tiny_world_folder() / name)


def tiny_world_folder(overrides=()):
    """The folder the tiny world of conf/tiny_world.yaml with recipe `overrides` is built into
    (its own for every variant recipe); nothing is built."""
    from exp_datasets import tiny_world

    return tiny_world.output_root(tiny_world.load_recipe(overrides))


def basename(path):
    return Path(str(path)).name or str(path)


def method_name(model_name, qa_lt_final):
    """A method as the result tables name it: the weighting, with "+qa_tune" after light tuning."""
    return f"{model_name}+qa_tune" if qa_lt_final else str(model_name)


def stream_name(split, test_path):
    """The evaluation stream as run folders name it: the test_path file's stem, else the split."""
    return Path(str(test_path)).stem if test_path else str(split)


RESOLVERS = {"tiny_world": tiny_world_path, "basename": basename, "method_name": method_name,
             "stream_name": stream_name}


def register_resolvers():
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


store_schemas()
register_resolvers()
