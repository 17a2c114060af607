"""Embed on Ray (infosift/scale/embed.py) against the local engine, on a local Ray cluster the tests start.

Server-marked tests share one cluster (ray.init(num_cpus=2), about 10 s to start) and shut it down after.
What they hold: the Ray engine writes the local engine's bytes (through the embed stage with a projection,
and without one in the resume test); it resumes shards a killed local run left; an actor killed half-way
through writing a shard leaves no half shard and its shard is redone; an actor that dies beyond its
retries ends in one error line that keeps the finished shards; an unreachable address ends the stage in
one error line, at once; a project_dim not below the model's width fails before any actor starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import infosift.embed as embed
from infosift.embed import embed_records
from stages._common import EXIT_BAD_INPUT, EXIT_TRANSIENT
from tests.tiny import gsm_rows, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(shard_size=8, batch_tokens=160, max_length=512)  # 40 records -> 5 shards


def _records(n: int = 40) -> list[dict]:
    return [{"id": f"r{i}", "prompt": r["question"], "response": r["answer"]} for i, r in enumerate(gsm_rows(n, 1))]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _workspace(tmp: Path, model_dir: Path, embed_params: dict) -> Path:
    """A repository-shaped directory the embed stage can run in: params.yaml and data/download/."""
    params = {"model": {"base_model": str(model_dir), "cache_dir": str(tmp / "cache")}, "embed": embed_params}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    write_jsonl(tmp / "data" / "download" / "pool.jsonl", _records())
    (tmp / "data" / "download" / "target.jsonl").write_text("")
    return tmp


def _stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "stages.embed"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def local_ref(tiny_model_dir, tmp_path_factory) -> Path:
    """The local engine's output on the tiny model: what every Ray run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "features"
    embed_records(tiny_model_dir, _records(), out, device="cpu", progress=False, **SMALL)
    return out


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


def dying_actor(marker: Path) -> type:
    """An EmbedActor that kills its own process half-way through writing a shard, once per ``marker`` file.

    Built in a function so that Ray pickles the class (and the marker path) by value.
    """
    from infosift.scale.embed import EmbedActor

    class DiesWhileWriting(EmbedActor):
        def __init__(self, partial: str, embedder: dict) -> None:
            super().__init__(partial, embedder)
            real = embed._write_shard

            def write_then_die(partial, name, key, feats, scores, *rest):
                try:  # the first writer to claim the marker dies; every later one writes normally
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return real(partial, name, key, feats, scores, *rest)
                marker.write_text(name)
                with embed.atomic_output(partial / name) as tmp:
                    feats.save(tmp)  # half a shard on disk, under its temporary name
                    os._exit(1)

            embed._write_shard = write_then_die

    return DiesWhileWriting


def _killed_local_run(model_dir: Path, out: Path, monkeypatch, shards_done: int = 2) -> None:
    """A local run killed after ``shards_done`` shards: their shards wait in <out>.partial."""
    real, calls = embed._embed_shard, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) > shards_done:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(embed, "_embed_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        embed_records(model_dir, _records(), out, device="cpu", progress=False, **SMALL)
    monkeypatch.undo()


# -- needs no cluster ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("embed_params", "message"),
    [
        ({"engine": "spark"}, "params.yaml embed.engine: must be one of local, ray"),
        ({"ray": {"actors": 0}}, "params.yaml embed.ray.actors: must be >= 1"),
        ({"ray": {"adress": "auto"}}, "params.yaml embed.ray.adress: unknown parameter"),
        ({"project_dim": 0}, "params.yaml embed.project_dim: must be >= 1"),
    ],
)
def test_bad_engine_params_are_one_error_line(tiny_model_dir, tmp_path, monkeypatch, capsys, embed_params, message):
    from stages._common import run
    from stages.embed import main

    _workspace(tmp_path, tiny_model_dir, embed_params)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run(main)
    assert e.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not (tmp_path / "data" / "features").exists()


def test_engine_ray_without_the_extra_is_one_error_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from stages._common import run
    from stages.embed import main

    _workspace(tmp_path, tiny_model_dir, {"engine": "ray"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(SystemExit):
        run(main)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: params.yaml embed.engine: ray needs the ray extra"), err


@pytest.mark.server
def test_unreachable_address_is_one_error_line_at_once(tiny_model_dir, tmp_path):
    pytest.importorskip("ray")
    params = {"engine": "ray", "ray": {"address": "127.0.0.1:1", "actors": 1, "num_gpus_per_actor": 0}}
    proc = _stage(_workspace(tmp_path, tiny_model_dir, params))
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == EXIT_TRANSIENT and len(lines) == 1, proc.stderr  # a rerun may find it up
    assert lines[0].startswith("error: embed.ray.address: cannot reach Ray at 127.0.0.1:1: "), lines[0]
    assert not (tmp_path / "data" / "features").exists()


@pytest.mark.server
def test_project_dim_not_below_the_width_fails_before_any_actor(tiny_model_dir, tmp_path):
    pytest.importorskip("ray")
    from infosift.scale.embed import embed_records_ray

    with pytest.raises(ValueError, match="below the model's hidden size 32, got 32"):
        embed_records_ray(tiny_model_dir, _records(8), tmp_path / "x", project_dim=32, progress=False)
    assert list(tmp_path.iterdir()) == []


# -- on the local cluster -----------------------------------------------------------------------
@pytest.mark.server
def test_stage_on_ray_writes_the_local_bytes(cluster, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The embed stage with engine ray (two CPU actors) and a projection, against embed_records here.
    (Unprojected Ray output against the local engine: the resume test below.)"""
    from stages.embed import main

    params = {**SMALL, "part": "response", "dtype": "float16", "project_dim": 8, "project_seed": 3, "engine": "ray"}
    params["ray"] = {"address": None, "actors": 2, "num_gpus_per_actor": 0}
    _workspace(tmp_path, tiny_model_dir, params)
    ref = tmp_path / "ref"
    embed_records(tiny_model_dir, _records(), ref, device="cpu", progress=False, project_dim=8, project_seed=3, **SMALL)
    monkeypatch.chdir(tmp_path)
    main([])  # this process is connected already: the stage uses the test's cluster
    out = capsys.readouterr().out
    assert "embed: pool: ray: computed 5 shards, reused 0" in out, out
    assert _files(tmp_path / "data" / "features" / "pool") == _files(ref)
    assert json.loads((ref / "meta.json").read_text())["projection"]["k"] == 8
    assert sorted(p.name for p in (tmp_path / "data" / "features").iterdir()) == ["pool", "quality.npz", "target"]


@pytest.mark.server
def test_resumes_a_killed_run_and_redoes_a_killed_actors_shard(
    cluster, tiny_model_dir, local_ref, tmp_path, monkeypatch
):
    """A local run killed after 2 shards; Ray computes only the other 3, and the actor that dies half-way
    through writing one of them is restarted and writes it again: complete, identical output."""
    from infosift.scale.embed import embed_records_ray

    out, marker = tmp_path / "features", tmp_path / "died-writing"
    _killed_local_run(tiny_model_dir, out, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "features.partial").iterdir()) == ["shard-00000", "shard-00001"]
    _, report = embed_records_ray(
        tiny_model_dir, _records(), out, actors=1, progress=False, actor_cls=dying_actor(marker), **SMALL
    )
    assert marker.read_text() in {"shard-00002", "shard-00003", "shard-00004"}  # an actor died writing it
    assert (report.reused, report.computed) == ([0, 1], [2, 3, 4])
    assert _files(out) == _files(local_ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["died-writing", "features"]  # no half shard left


@pytest.mark.server
def test_actor_dying_beyond_its_retries_is_one_error_and_keeps_finished_shards(
    cluster, tiny_model_dir, tmp_path, capsys
):
    from infosift.errors import ClusterError
    from infosift.scale.embed import embed_records_ray

    out, marker = tmp_path / "features", tmp_path / "died-writing"
    with pytest.raises(ClusterError, match="finished shards are kept in .*features.partial: rerun to resume") as e:
        embed_records_ray(
            tiny_model_dir, _records(), out, actors=1, retries=0, progress=False, actor_cls=dying_actor(marker), **SMALL
        )
    assert "\n" not in str(e.value)
    assert not out.exists()
    partial = tmp_path / "features.partial"
    shards = sorted(p.name for p in partial.iterdir() if p.name.startswith("shard-"))
    assert marker.read_text() not in shards  # the shard being written when the actor died is not there
    for s in shards:  # the finished ones are whole, with the key a rerun checks
        assert json.loads((partial / s / "shard.json").read_text())["format"] == embed.FORMAT
