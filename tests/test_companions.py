"""A model folder's companions (layout and segmentation checkpoints, classifier, CLIP image tower) are
registered in its latentdiff.json and found through latentdiff.checkpoint.companion, by every front end;
folders written before the map are found under the names training writes."""
import json
import shutil

import pytest

from latentdiff.checkpoint import (
    COMPANION_FOLDERS,
    DEFAULT_MODEL_DIR,
    companion,
    companion_folders,
    companion_map,
    install_companion,
    register_companions,
)
from latentdiff.errors import UserError


def _model(tmp_path, spatial_model_dir, name="model"):
    folder = tmp_path / name
    shutil.copytree(spatial_model_dir, folder)
    return folder


def _renamed(tmp_path, spatial_model_dir):
    """The spatial model with its companions under other names, registered in its map."""
    folder = _model(tmp_path, spatial_model_dir)
    (folder / "layout_controlnet").rename(folder / "boxes_net")
    (folder / "controlnet").rename(folder / "map_net")
    (folder / "my_classifier").mkdir()
    (folder / "tower").mkdir()
    register_companions(folder, {"layout": "boxes_net", "segmap": "map_net", "classifier": "my_classifier",
                                 "clip": "tower"})
    return folder


def test_a_registered_map_names_the_companions(tmp_path, spatial_model_dir):
    folder = _renamed(tmp_path, spatial_model_dir)
    assert {role: companion(folder, role) for role in COMPANION_FOLDERS} == {
        "layout": folder / "boxes_net", "segmap": folder / "map_net", "classifier": folder / "my_classifier",
        "clip": folder / "tower"}


def test_registering_keeps_the_files_other_settings(tmp_path):
    (tmp_path / "latentdiff.json").write_text(json.dumps({"generate_defaults": {"steps": 7}}))
    register_companions(tmp_path, {"clip": "clip"})
    register_companions(tmp_path, {"layout": "gligen"})
    assert json.loads((tmp_path / "latentdiff.json").read_text()) == {
        "generate_defaults": {"steps": 7}, "companions": {"clip": "clip", "layout": "gligen"}}


def test_without_a_map_the_folders_training_writes_are_found(tmp_path, spatial_model_dir):
    folder = _model(tmp_path, spatial_model_dir)
    assert companion_map(folder) == {}
    assert companion(folder, "layout") == folder / "layout_controlnet"  # before gligen/, as always
    assert companion(folder, "segmap") == folder / "controlnet"
    assert companion(folder, "classifier") is None and companion(folder, "clip") is None
    shutil.rmtree(folder / "layout_controlnet")
    assert companion(folder, "layout") == folder / "gligen"
    register_companions(folder, {"segmap": "controlnet"})  # a map without the role: the same names are looked at
    assert companion(folder, "layout") == folder / "gligen"


def test_a_registered_folder_wins_over_the_usual_names(tmp_path, spatial_model_dir):
    folder = _model(tmp_path, spatial_model_dir)
    register_companions(folder, {"layout": "gligen"})
    assert companion(folder, "layout") == folder / "gligen"
    assert companion(None, "layout") is None and companion(tmp_path / "absent", "layout") is None


@pytest.mark.parametrize("companions, message", [
    ([], "companions: expected an object"),
    ({"vae": "vae"}, "unknown role 'vae'"),
    ({"layout": "../elsewhere"}, "companions.layout: '../elsewhere': expected a subfolder"),
    ({"layout": "/abs"}, "expected a subfolder"),
])
def test_a_bad_map_is_a_one_line_error_naming_the_file(tmp_path, companions, message):
    (tmp_path / "latentdiff.json").write_text(json.dumps({"companions": companions}))
    with pytest.raises(UserError, match=message) as info:
        companion(tmp_path, "layout")
    assert str(tmp_path / "latentdiff.json") in str(info.value)


def test_the_shipped_model_registers_what_the_names_found():
    assert companion_map(DEFAULT_MODEL_DIR) == {"layout": "layout_controlnet", "segmap": "controlnet",
                                                "classifier": "classifier", "clip": "clip"}
    for role, names in COMPANION_FOLDERS.items():  # the same folders as before the map
        assert companion(DEFAULT_MODEL_DIR, role) == next(DEFAULT_MODEL_DIR / n for n in names
                                                          if (DEFAULT_MODEL_DIR / n).is_dir())


def test_generate_finds_the_registered_checkpoints(tmp_path, spatial_model_dir, capsys):
    from latentdiff.cli import main
    from latentdiff.provenance import read_record

    folder = _renamed(tmp_path, spatial_model_dir)
    (tmp_path / "layout.json").write_text('[{"phrase": "a red circle", "box": [2, 2, 14, 14]}]')
    assert main(["generate", "a red circle", "--model", str(folder), "--device", "cpu", "--steps", "2",
                 "--out", str(tmp_path / "out"), "--layout", str(tmp_path / "layout.json")]) == 0, \
        capsys.readouterr().err
    record = read_record(next((tmp_path / "out").glob("*.png")))
    assert record.extra["spatial_checkpoints"]["layout"] == str((folder / "boxes_net").resolve())


def test_serve_attaches_the_registered_checkpoints(tmp_path, spatial_model_dir):
    from latentdiff.commands.serve import attach_spatial
    from latentdiff.pipeline import Pipeline

    folder = _renamed(tmp_path, spatial_model_dir)
    pipe = Pipeline.load(folder, device="cpu")
    attach_spatial(pipe, None, None)
    assert pipe.spatial_paths == {"layout": str((folder / "boxes_net").resolve()),
                                  "segmap": str((folder / "map_net").resolve())}


def test_export_copies_and_registers_the_companions(tmp_path, spatial_model_dir, capsys):
    from latentdiff.cli import main

    folder = _renamed(tmp_path, spatial_model_dir)
    assert main(["export", "--model", str(folder), "--format", "diffusers", "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert companion_map(out) == companion_map(folder)
    assert {p.name for p in companion_folders(out)} == {"boxes_net", "map_net", "my_classifier", "tower", "gligen"}
    plain = _model(tmp_path, spatial_model_dir, "plain")  # no map: the folders found by name are registered
    assert main(["export", "--model", str(plain), "--format", "diffusers", "--out", str(tmp_path / "out2")]) == 0
    assert companion_map(tmp_path / "out2") == {"layout": "layout_controlnet", "segmap": "controlnet"}
    assert (tmp_path / "out2" / "gligen").is_dir()  # copied, as before, though not the registered layout


def test_saving_the_components_does_not_register_companions_it_does_not_copy(tmp_path, spatial_model_dir):
    from latentdiff.pipeline import Pipeline

    folder = _renamed(tmp_path, spatial_model_dir)
    Pipeline.load(folder, device="cpu").save(tmp_path / "saved")
    assert companion_map(tmp_path / "saved") == {}


def test_install_registers(tmp_path, spatial_model_dir):
    from latentdiff.train.spatial import install

    folder = _model(tmp_path, spatial_model_dir)
    result = tmp_path / "run" / "layout" / "final" / "gligen"
    shutil.copytree(spatial_model_dir / "gligen", result)
    assert install(result, folder) == folder / "gligen"
    assert companion(folder, "layout") == folder / "gligen"  # the installed one is used from now on
    assert companion_map(folder) == {"layout": "gligen"}
    shutil.copytree(spatial_model_dir / "controlnet", tmp_path / "seg" / "controlnet")
    install(tmp_path / "seg" / "controlnet", folder)
    assert companion_map(folder) == {"layout": "gligen", "segmap": "controlnet"}
    (tmp_path / "clf" / "final").mkdir(parents=True)
    (tmp_path / "clf" / "final" / "classifier.json").write_text("{}")
    assert install_companion(tmp_path / "clf" / "final", folder, "classifier", "classifier") == folder / "classifier"
    assert companion(folder, "classifier") == folder / "classifier"


def test_train_classifier_install_registers(tmp_path, spatial_model_dir, monkeypatch, capsys):
    import latentdiff.train.classifier as classifier
    from latentdiff.cli import main

    folder = _model(tmp_path, spatial_model_dir)
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "classifier.json").write_text("{}")
    monkeypatch.setattr(classifier, "train_classifier", lambda cfg, resume=False: tmp_path / "run" / "final")
    assert main(["train-classifier", "configs/classifier.yaml", "--model", str(folder), "--out",
                 str(tmp_path / "run"), "--install"]) == 0
    assert (folder / "classifier" / "classifier.json").is_file()
    assert companion_map(folder) == {"classifier": "classifier"}
