"""Hugging Face Trainer SpectrumCallback: a real few-step training of a tiny random BERT on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from collapse_probe.integrations.transformers import SpectrumCallback  # noqa: E402


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 60, (n, 12), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def test_trainer_callback_lands_in_log_history_and_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))  # transformers >= 5
    monkeypatch.setenv("WANDB_DISABLED", "true")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                                          max_steps=4, eval_strategy="steps", eval_steps=2, logging_steps=2,
                                          report_to=["tensorboard"],
                                          use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(32, 0), eval_dataset=Pairs(16, 1))
    probe = DataLoader(Pairs(40, 2), batch_size=8)
    callback = SpectrumCallback(probe, module="bert", layers={"block1": "encoder.layer.1"}).attach(trainer)
    trainer.train()

    records = [r for r in trainer.state.log_history if "eval_collapse/block1/effective_rank" in r]
    assert [r["step"] for r in records] == [2, 4]
    # reference: masked mean of the hooked block's hidden states after training, in numpy
    with torch.no_grad():
        ids = Pairs(40, 2).ids
        hidden = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    z = hidden.mean(1).double().numpy()
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False, ddof=1))[::-1], 0, None)
    p = np.sqrt(eig)[np.sqrt(eig) > 0] / np.sqrt(eig).sum()
    assert records[-1]["eval_collapse/block1/effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
    assert records[-1]["eval_collapse/block1/dim"] == 16 and callback.evaluations == 2

    (event_file,) = tmp_path.glob("**/events.out.tfevents*")  # the reporter's, wherever this version puts it
    events = EventAccumulator(str(event_file.parent)).Reload()
    tags = events.Tags()["scalars"]
    assert "eval/collapse/block1/effective_rank" in tags  # the reporter's eval_ -> eval/ rewrite
    values = [e.value for e in events.Scalars("eval/collapse/block1/effective_rank")]
    assert values == pytest.approx([r["eval_collapse/block1/effective_rank"] for r in records], rel=1e-6)


def test_unattached_callback_still_fills_log_history(tmp_path):
    config = transformers.BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2,
                                          eval_strategy="steps", eval_steps=2, report_to=[], use_cpu=True,
                                          save_strategy="no", disable_tqdm=True)
    callback = SpectrumCallback(DataLoader(Pairs(24, 2), batch_size=8), module="bert", every_n_evals=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(16, 0), eval_dataset=Pairs(8, 1),
                                   callbacks=[callback])
    with pytest.warns(UserWarning, match="attach"):
        trainer.train()
    (record,) = [r for r in trainer.state.log_history if "eval_collapse/output/effective_rank" in r]
    assert record["step"] == 2 and record["eval_collapse/output/dim"] == 8
    metrics = trainer.evaluate()  # the returned dict carries them too
    assert metrics["eval_collapse/output/n_samples"] == 24
