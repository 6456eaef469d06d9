"""The CaMeLS entry point (Hydra, configs in conf/): `task=train` meta-trains a weight model
(meta_train.py), `task=eval` adapts a base model on a stream of documents and scores its answers
(evaluation.py), `task=adapt` adapts a base model on documents and keeps it (adaptation.py).

    python run.py task=eval model=uniform|ssm|TFIDF|surprisal|excess_loss|CaMeLS|oracle|none dataset=... \
        [weight_model_path=...] base_model=... [base_model_state_dict=...] lr=... \
        [downsample_to=k seed=s qa_lt_final=true]
    python run.py task=adapt documents=notes.csv|folder/ base_model=... model=... [weight_model_path=...] lr=...
    python run.py task=train model=CaMeLS dataset=... base_model=... [base_model_state_dict=...]
    python run.py -m task=eval model=ssm lr=1e-4,2.5e-5 ...      (one run folder per job)
    python run.py -m ... hydra/launcher=joblib hydra.launcher.n_jobs=4   (jobs in parallel; also
        submitit_local, submitit_slurm, slurm_gpu: conf/hydra/launcher/)
    torchrun --nproc_per_node=N run.py task=train ...            (data-parallel meta-training)
"""

import sys

import hydra
from omegaconf import DictConfig

import adaptation
import evaluation
import meta_train
import tiny_world
from plumbing import checks, distributed, errors, files

TASKS = {"eval": evaluation.check_config, "train": meta_train.check_config, "adapt": adaptation.check_config}


def run_task(cfg: DictConfig, run_dir) -> dict:
    TASKS[cfg.task_name](cfg)  # options are checked before anything is built or loaded
    tiny_world.ensure_built_for(adaptation.read_inputs(cfg) if cfg.task_name == "adapt" else cfg)
    if cfg.task_name == "train":
        return meta_train.train(cfg)
    if cfg.task_name == "adapt":
        summary = adaptation.run_adapt(cfg, run_dir)
        print(
            files.strict_json(
                {
                    k: summary[k]
                    for k in ("method", "lr", "n_documents", "mean_loss_base", "mean_loss_after", "model", "run_dir")
                }
            )
        )
        return summary
    summary = evaluation.evaluate(cfg, run_dir)
    shown = evaluation.with_percents(summary)  # EM/F1 in %, also for a summary written by older code
    print(
        files.strict_json(
            {k: shown[k] for k in ("method", "lr", "em_percent", "f1_percent", "nll", "wall_time_s", "run_dir")}
        )
    )
    return summary


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig):
    return checks.run_job(run_task, cfg)


checks.register("eval", evaluation.check_config, evaluation.check_folder)
checks.register("train", meta_train.check_config, meta_train.check_folder)
checks.register("adapt", adaptation.check_config, adaptation.check_folder)

if __name__ == "__main__":
    sys.argv += distributed.follower_overrides()  # torchrun ranks > 0 leave Hydra's outputs to rank 0
    errors.run_cli(main)
