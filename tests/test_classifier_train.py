"""Training the latent classifier through the shared loop: labels from captions, checkpoints, resume, and
a folder that generation can load."""
import json

import pytest
import torch

from latentdiff.config import load_config
from latentdiff.errors import UserError
from latentdiff.train.classifier import ClassifierTrainConfig, label_tensors, record_objects


def _recipe(tmp_path, model_dir, steps=3):
    text = f"""
out: {tmp_path / 'clf'}
device: cpu
model: {model_dir}
data: {{folder: {tmp_path / 'data'}, shapes_num: 40, holdout: 8}}
classifier:
  model: {{block_out_channels: [8, 16], norm_num_groups: 4}}
  loop: {{steps: {steps}, batch_size: 8, lr: 1.0e-3, warmup_steps: 1, checkpoint_every: 2, log_every: 1}}
"""
    path = tmp_path / "clf.yaml"
    path.write_text(text)
    return path


def test_labels_from_captions(tmp_path):
    from latentdiff.data.folder import Record

    recs = [Record(tmp_path / "a.png", "a red circle left of a blue square", line=1),
            Record(tmp_path / "b.png", "a large green triangle in the top left", line=2)]
    labels = label_tensors(record_objects(recs), ("circle", "square", "triangle"))
    torch.testing.assert_close(labels["shape"], torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    assert labels["colour"][0].tolist()[:3] == [0.5, 0.0, 0.5] and labels["colour"][1, 1] == 1.0
    with pytest.raises(UserError, match="line 3: caption 'a photo of a cat' is not a shapes-world caption"):
        record_objects([Record(tmp_path / "c.png", "a photo of a cat", line=3)])


def test_train_classifier_cli_trains_resumes_and_loads(tmp_path, tiny_model_dir):
    from latentdiff.cli import main
    from latentdiff.models.classifier import load_classifier

    recipe = _recipe(tmp_path, tiny_model_dir)
    assert main(["train-classifier", str(recipe)]) == 0
    final = tmp_path / "clf" / "final"
    clf = load_classifier(final)
    assert clf.config.in_channels == 4 and clf.config.sample_size == 8  # the tiny model's latents
    assert clf.classes("shape") == ("circle", "square", "triangle")
    metrics = json.loads((tmp_path / "clf" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0.0 <= metrics["shape_top1_t0-249"] <= 1.0 and metrics["holdout_n"] == 4
    info = json.loads((final / "classifier.json").read_text())
    assert info["train_images"] == 36 and len(info["model_sha256"]) == 64
    # A second run without --resume is refused; with --resume and more steps it continues from step 3.
    assert main(["train-classifier", str(recipe)]) == 2
    cfg = load_config(_recipe(tmp_path, tiny_model_dir, steps=5), ClassifierTrainConfig)
    assert cfg.classifier.loop.steps == 5
    assert main(["train-classifier", str(_recipe(tmp_path, tiny_model_dir, steps=5)), "--resume"]) == 0
    log = [json.loads(line)["step"] for line in (tmp_path / "clf" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5]


def test_recipe_in_configs_is_valid():
    cfg = load_config("configs/classifier.yaml", ClassifierTrainConfig)
    assert cfg.classifier.loop.batch_size == 128 and cfg.model == "runs/default/model"
