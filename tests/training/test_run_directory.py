"""The run directory: a run with other settings is never resumed."""

import json

import pytest

from unet_keras import cli
from unet_keras.training.training_settings import TrainConfig

# A tiny model on small images: depth 2 valid padding takes 60 px tiles to 20 px outputs.
TINY = ["--depth", "2", "--filters", "4", "--padding", "valid", "--tile", "60"]
TINY += ["--validation", "2"]


def test_a_run_directory_refuses_other_settings(synthetic_data, tmp_path, capsys):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({**TrainConfig().to_dict(), "seed": 99}))
    code = cli.main(["train", "--data", str(synthetic_data), "--run-dir", str(run), *TINY])
    assert code == 2
    error = capsys.readouterr().err
    assert "holds a run with other settings (" in error and "seed: 99 there, 0 here" in error


def test_the_refusal_names_a_nested_setting_and_both_values(tmp_path):
    """A default changed since the run began (rotations, off since) shows as the old value."""
    from unet_keras.training.run_directory import RunDirectory

    defaults = TrainConfig().to_dict()
    old = {**defaults, "augment": {**defaults["augment"], "rotations": True}}
    run = RunDirectory(tmp_path)
    run.write_json("config.json", {**old, "max_time": 60.0})
    with pytest.raises(ValueError, match=r"\(augment\.rotations: true there, false here\);"):
        run.check_resumable({**defaults, "max_time": 900.0}, defaults)


def test_each_worker_writes_its_own_copy_and_the_chief_the_run(tmp_path, monkeypatch):
    from unet_keras.training.run_directory import RunDirectory

    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for index, expected in ((0, tmp_path), (1, tmp_path / "worker-1")):
        task = {"type": "worker", "index": index}
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert RunDirectory.for_this_worker(tmp_path).path == expected


def test_a_new_run_starts_from_epoch_0_and_json_files_are_written_whole(tmp_path):
    from unet_keras.training.run_directory import RunDirectory

    run = RunDirectory(tmp_path / "run")
    assert run.state(batch_size=4) == {
        "epoch": 0, "best": None, "best_epoch": None, "best_logs": {},
        "seconds": 0.0, "images": 0, "batch_size": 4,
    }  # fmt: skip
    run.write_json("state.json", {"epoch": 3})
    assert run.state(batch_size=4) == {"epoch": 3}
    assert [p.name for p in run.path.iterdir()] == ["state.json"]
    run.check_resumable({"seed": 1})  # no config.json yet: nothing to compare


def test_a_setting_added_since_a_run_began_resumes_at_its_default(tmp_path):
    from unet_keras.training.run_directory import RunDirectory

    defaults = TrainConfig().to_dict()
    old = {key: value for key, value in defaults.items() if key != "gradient_exchange"}
    old["augment"] = {k: v for k, v in defaults["augment"].items() if k != "gamma"}
    run = RunDirectory(tmp_path)
    run.write_json("config.json", old)
    run.check_resumable(defaults, defaults)  # what the old version did, under new names
    for changed, named in (
        ({"gradient_exchange": "float32"}, 'gradient_exchange: "auto" there, "float32" here'),
        ({"augment": {**old["augment"], "gamma": 0.2}}, "augment.gamma: 0.3 there, 0.2 here"),
    ):
        with pytest.raises(ValueError, match=f"other settings \\({named}\\)"):
            run.check_resumable({**defaults, **changed}, defaults)
