"""A MooreModel in an unmodified transformers.Trainer: the same steps as moore's own trainer give
the same weights (task ids per sample, activation checkpointing on), and the adapter it saves loads."""

from __future__ import annotations


import pytest
import torch
from torch.utils.data import IterableDataset
from transformers import Trainer

from moore import MooreModel
from moore.integrations.hf_trainer import (
    ADAPTER_DIR,
    SaveAdapterCallback,
    TaskDataCollator,
    multitask_features,
    trainer_arguments,
)
from moore.hub import load_from_spec
from moore.multitask import MultiTaskModel
from moore.runconfig import load_run_config
from moore.training import Trainer as MooreTrainer
from moore.training.mixing import TaskMixer
from training_fixtures import make_tasks, run_config, save_tiny_decoder

STEPS, BATCH = 4, 4


class _InOrder(IterableDataset):
    """The rows in the given order: the Trainer's own sampler would shuffle them."""

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model_dir = save_tiny_decoder(root / "model")
    files = make_tasks(root / "data", n_train=32, n_test=8)
    config = run_config(model_dir, files, ["mood", "pick"], root / "moore-run", steps=STEPS, batch_size=BATCH,
                        lr=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                        gradient_checkpointing=True, eval_every=None, save_every=None)
    config["evaluation"] = {"batch_size": 8, "before": False}
    return root, load_run_config(data=config)


@pytest.mark.slow
def test_the_transformers_trainer_takes_the_same_steps_as_moores(decoder_run, tmp_path):
    root, config = decoder_run
    ours = MooreTrainer(config, progress=False, device="cpu")
    ours.run()
    expected = {k: v.detach().clone() for k, v in ours.model.adapted.adapter_state_dict().items()}

    # the same initial adapter (the seed), the same batches (the mixer's draws), in the same order
    again = MooreTrainer(config.model_copy(update={"output_dir": str(tmp_path / "unused")}), progress=False,
                         device="cpu")
    torch.manual_seed(config.training.seed)
    again._load_data()
    model = MultiTaskModel.build(config.model, config.adapter, again.tasks, task_specs=config.tasks)
    names = [t.name for t in again.tasks]
    mixer = TaskMixer([len(again.train_data[n]) for n in names], config.training.mixing,
                      config.training.temperature, seed=config.training.seed, stage=0)
    rows = [multitask_features(model, names[t], [again.train_data[names[t]][i]])[0]
            for step in range(STEPS) for t, i in mixer.draw(step, BATCH)]
    assert len({r["task_ids"] for r in rows}) == 2  # the batches mix the tasks

    adapted = model.adapted
    args = trainer_arguments(tmp_path / "hf-run", max_steps=STEPS, per_device_train_batch_size=BATCH,
                             learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                             max_grad_norm=1.0, gradient_checkpointing=True, optim="adamw_torch", report_to=[],
                             save_strategy="steps", save_steps=3, logging_steps=1, use_cpu=True,
                             dataloader_num_workers=0, seed=config.training.seed)
    trainer = Trainer(model=adapted, args=args, train_dataset=_InOrder(rows),
                      data_collator=TaskDataCollator(model.tokenizer),
                      callbacks=[SaveAdapterCallback(adapted, save_steps=2)])
    trainer.train()
    got = adapted.adapter_state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)

    # the adapter the callback saved loads into a fresh base model and gives the same outputs
    saved = tmp_path / "hf-run" / ADAPTER_DIR
    for step in (2, 3, 4):  # its own cadence, and each checkpoint the Trainer saved
        assert (tmp_path / "hf-run" / f"checkpoint-{step}" / ADAPTER_DIR / "adapter_config.json").is_file(), step
    base, _, _ = load_from_spec(config.model)
    loaded = MooreModel.from_pretrained(base, saved)
    batch = TaskDataCollator(model.tokenizer)(rows[:BATCH])
    adapted.eval()
    loaded.eval()
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        torch.testing.assert_close(loaded(**inputs, task_ids=batch["task_ids"]).logits,
                                   adapted(**inputs, task_ids=batch["task_ids"]).logits)


def test_the_collator_pads_and_keeps_task_ids():
    collate = TaskDataCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task_ids": 1},
                     {"input_ids": [8], "labels": [8], "task_ids": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["task_ids"].tolist() == [1, 0] and batch["task_ids"].dtype == torch.long
    with pytest.raises(ValueError, match="no 'task_ids'"):
        collate([{"input_ids": [1]}])


@pytest.mark.slow
def test_a_datasets_dataset_keeps_its_columns(decoder_run, tmp_path):
    """With a ``datasets.Dataset`` the Trainer drops the columns its model's forward does not name;
    ``trainer_arguments`` keeps them, and every step sees its task ids."""
    datasets = pytest.importorskip("datasets")
    _, config = decoder_run
    again = MooreTrainer(config.model_copy(update={"output_dir": str(tmp_path / "unused")}), progress=False,
                         device="cpu")
    again._load_data()
    model = MultiTaskModel.build(config.model, config.adapter, again.tasks, task_specs=config.tasks)
    rows = [r for t in ("mood", "pick") for r in multitask_features(model, t, again.train_data[t][:8])]
    seen = []
    model.adapted.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("task_ids")),
                                            with_kwargs=True)
    before = {k: v.detach().clone() for k, v in model.adapted.adapter_state_dict().items()}
    args = trainer_arguments(tmp_path / "hf", max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True)
    Trainer(model=model.adapted, args=args, train_dataset=datasets.Dataset.from_list(rows),
            data_collator=TaskDataCollator(model.tokenizer)).train()
    assert len(seen) == 2 and all(ids is not None and ids.shape == (4,) for ids in seen)
    assert any(not torch.equal(before[k], v) for k, v in model.adapted.adapter_state_dict().items())
