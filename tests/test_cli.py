"""The command line: help on every option, --version, the README's commands and YAML accepted
as written, training output folders accepted as models, and clear errors before Ray starts."""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

import raygal
from raygal import cli, storage
from raygal.cli import build_parser, main, resolve_model_uri

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def _subparsers(parser: argparse.ArgumentParser):
    """(name, parser) of the top-level parser and of every sub-command, recursively."""
    yield "raygal", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for sub_name, p in _subparsers(sub):
                    yield f"{name} {sub_name}".replace(" raygal", ""), p


def test_every_option_of_every_command_has_help():
    seen = 0
    for name, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            seen += 1
            label = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
                f"raygal {name}: {label} has no help text"
    assert seen > 80


def test_version_matches_the_package(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert capsys.readouterr().out.strip() == f"raygal {project['version']}"
    assert raygal.__version__ == project["version"]


def test_license_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted" in text


# ----------------------------------------------------------------------------------------------
# The README's commands and YAML, as written
# ----------------------------------------------------------------------------------------------
def _readme_commands(path: Path, prefix: str) -> list[list[str]]:
    """Every shell command in ``path``'s bash blocks that starts with ``prefix``, with its
    continuation lines joined and comments dropped."""
    text = path.read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and " ".join(argv).startswith(prefix):
                cmds.append(argv)
    return cmds


def test_readme_raygal_commands_parse():
    cmds = _readme_commands(REPO / "README.md", "raygal ")
    assert len(cmds) >= 15
    parser = build_parser()
    for argv in cmds:
        try:
            parser.parse_args(argv[1:])
        except SystemExit as e:          # --version and --help exit 0 after printing
            if e.code != 0:
                pytest.fail(f"README command does not parse: {' '.join(argv)}")


@pytest.mark.parametrize("doc", ["README.md", "cluster/README.md"])
def test_documented_job_commands_parse(doc):
    """`ray job submit ... -- python jobs/X.py ARGS` as the docs show them."""
    cmds = [a for a in _readme_commands(REPO / doc, "ray job submit") if "--" in a]
    assert cmds
    parser = build_parser()
    for argv in cmds:
        entry = argv[argv.index("--") + 1:]
        assert entry[0] == "python" and entry[1].startswith("jobs/"), entry
        script = REPO / entry[1]
        assert script.is_file(), script
        command = {"extract_features": "features"}.get(script.stem, script.stem)
        try:
            parser.parse_args([command, *entry[2:]])
        except SystemExit:
            pytest.fail(f"{doc}: job command does not parse: {' '.join(entry)}")
        if script.stem == "train" and entry[2] == "nf":
            assert "--vae" in entry or "phot" in entry, f"{doc}: nf without a VAE: {entry}"


def _readme_yaml() -> str:
    text = (REPO / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
                if "search_space" in b]
    return block


def test_readme_yaml_loads_for_train_and_tune(tmp_path):
    from raygal.train import load_config
    from raygal.tune import load_search_space

    f = tmp_path / "nf.yaml"
    f.write_text(_readme_yaml())
    cfg = load_config(str(f))
    assert cfg.model == "nf" and cfg.vae and cfg.model_config["coupling_layers"] == 12
    space = load_search_space(str(f))
    assert space == {"coupling_layers": [4, 8, 12], "lr": {"loguniform": [3.0e-4, 3.0e-3]}}


@pytest.mark.parametrize("space, match", [
    ("[4, 8]", "must be a non-empty mapping"),
    ("{epochs: [1, 2]}", "'epochs' cannot be searched"),
    ("{lr: {logarithmic: [1, 2]}}", "must be a list or one of"),
    ("{lr: {loguniform: [1.0e-3]}}", r"loguniform takes \[low, high\]"),
    ("{lr: {uniform: [2, 1]}}", "low < high"),
    ("{lr: {loguniform: [0, 1]}}", "low > 0"),
    ("{hidden: []}", "empty list"),
])
def test_bad_search_space_is_refused_before_ray(tmp_path, space, match):
    from raygal.tune import load_search_space

    f = tmp_path / "t.yaml"
    f.write_text(f"model: cfm\ndata: d\nout: o\nsearch_space: {space}\n")
    with pytest.raises(ValueError, match=match):
        load_search_space(str(f))


# ----------------------------------------------------------------------------------------------
# Clear errors before Ray starts
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a command gets as far as starting Ray."""
    import raygal.runtime

    def refuse(*a, **k):
        raise AssertionError("Ray was started before the options were checked")

    monkeypatch.setattr(raygal.runtime, "init_ray", refuse)


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    from raygal.sim import simulate

    uri = str(tmp_path_factory.mktemp("img") / "mock")
    simulate(40, uri, image_size=64, seed=0, rows_per_shard=40)
    return uri


def test_train_nf_on_images_without_vae_says_what_to_do(no_ray, image_data, tmp_path,
                                                        capsys):
    out = tmp_path / "nf"
    rc = main(["train", "nf", "--data", image_data, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "raygal train vae" in err and "--vae" in err and "--inputs phot" in err
    assert not out.exists()


def test_train_nf_with_a_missing_or_wrong_vae(no_ray, image_data, tmp_path, capsys):
    rc = main(["train", "nf", "--data", image_data, "--out", str(tmp_path / "nf"),
               "--vae", str(tmp_path / "nothing")])
    assert rc == 2 and "--vae" in capsys.readouterr().err
    post = _save_gaussian(tmp_path / "gauss" / "model")
    rc = main(["train", "nf", "--data", image_data, "--out", str(tmp_path / "nf"),
               "--vae", str(post)])
    err = capsys.readouterr().err
    assert rc == 2 and "a gaussian model, where vae is needed" in err


@pytest.mark.parametrize("split, match", [
    ("[0.8, 0.1, 0.2]", "sum to 1"), ("[1.1, -0.05, -0.05]", ">= 0"),
    ("[0.0, 0.5, 0.5]", "positive training fraction"), ("[0.9, 0.1]", "three fractions")])
def test_bad_split_fractions_are_refused(no_ray, tmp_path, capsys, split, match):
    f = tmp_path / "c.yaml"
    f.write_text(f"split: {split}\n")
    rc = main(["train", "cfm", "--config", str(f), "--data", "d", "--out", "o"])
    assert rc == 2 and re.search(match, capsys.readouterr().err)


def test_wrong_option_types_name_the_option(no_ray, tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: ten\n")
    assert main(["train", "cfm", "--config", str(f), "--data", "d", "--out", "o"]) == 2
    assert "epochs must be a whole number" in capsys.readouterr().err
    f.write_text("model_config: [1, 2]\n")
    assert main(["train", "cfm", "--config", str(f), "--data", "d", "--out", "o"]) == 2
    assert "model_config must be a mapping" in capsys.readouterr().err


def test_infer_with_no_model_there_fails_before_ray(no_ray, tmp_path, capsys):
    rc = main(["infer", "--model", str(tmp_path / "runs" / "cfm"), "--data", "d", "--out",
               str(tmp_path / "post")])
    assert rc == 2 and "not a raygal model" in capsys.readouterr().err
    assert not (tmp_path / "post").exists()


# ----------------------------------------------------------------------------------------------
# Training output folders as models
# ----------------------------------------------------------------------------------------------
def _save_gaussian(uri: Path) -> Path:
    from raygal.inputs import NormStats
    from raygal.models.baseline import GaussianPosterior

    stats = NormStats(target_mean={"log_mstar": 10.0}, target_std={"log_mstar": 1.0})
    GaussianPosterior(["log_mstar"], "phot", stats, {"hidden": 8}).save(str(uri))
    return uri


def test_resolve_model_uri(tmp_path):
    model = _save_gaussian(tmp_path / "run" / "model")
    assert resolve_model_uri(str(model)) == str(model)
    assert resolve_model_uri(str(tmp_path / "run")) == str(model)
    # neither a model nor a training folder: unchanged, for the loader to name
    assert resolve_model_uri(str(tmp_path)) == str(tmp_path)
    assert resolve_model_uri(None) is None


def test_resolve_model_uri_on_s3(s3_bucket, tmp_path):
    _save_gaussian(tmp_path / "m")
    for name in ("model.json", "weights.pt"):
        storage.write_bytes(f"{s3_bucket}/runs/g/model/{name}",
                            (tmp_path / "m" / name).read_bytes())
    assert resolve_model_uri(f"{s3_bucket}/runs/g") == f"{s3_bucket}/runs/g/model"


# ----------------------------------------------------------------------------------------------
# End to end on a real local Ray: the README's YAML drives `raygal tune`, and `raygal infer`
# takes the sweep's output folder as its model.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phot_data(tmp_path_factory):
    from raygal.sim import simulate

    uri = str(tmp_path_factory.mktemp("phot") / "mock")
    simulate(300, uri, seed=1, rows_per_shard=150, with_images=False)
    return uri


def test_readme_yaml_runs_raygal_tune_and_infer_takes_the_folder(ray_local, phot_data,
                                                                 tmp_path, capsys):
    f = tmp_path / "nf.yaml"
    f.write_text(_readme_yaml())
    sweep = str(tmp_path / "sweep")
    # What the file says, except what a 2-core test machine cannot run (GPUs, 4 workers,
    # 30 epochs) and the paths.
    rc = main(["tune", "nf", "--config", str(f), "--data", phot_data, "--out", sweep,
               "--inputs", "phot", "--workers", "1", "--gpus-per-worker", "0",
               "--epochs", "1", "--trials", "1", "--batch-size", "64"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "1 trial(s)" in out and "coupling_layers" in out
    best = storage.join(sweep, "best")          # a folder whose model/ holds the model
    assert not storage.exists(storage.join(best, cli.MODEL_FILE))
    post = str(tmp_path / "post")
    rc = main(["infer", "--model", best, "--data", phot_data, "--out", post,
               "--samples", "20", "--batch-size", "100", "--actors", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    from raygal.infer import catalog_shards
    from raygal.shards import read_manifest

    import pyarrow.parquet as pq

    n = sum(pq.read_metadata(p).num_rows for p in catalog_shards(post))
    assert n == read_manifest(phot_data)["num_rows"]
    assert f"{n} rows for {n} inputs" in out


def test_cli_module_runs_as_a_script():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "raygal.cli", "--help"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and "simulate" in r.stdout and "--version" in r.stdout
