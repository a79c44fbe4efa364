import dataclasses
import json
import typing

import pytest
from typer.testing import CliRunner

from portrait3d.cli import app
from portrait3d.errors import ConfigError
from portrait3d.pipelines.config import build_profile_config
from portrait3d.pipelines.overrides import parse_overrides
from portrait3d.pipelines.profiles import PROFILES
from portrait3d.pipelines.registry import STAGES, lookup, register, registered
from portrait3d.pipelines.schedule import Schedule
from portrait3d.pipelines.settings import help_of, is_numeric
from portrait3d.pipelines.stage import INTERFACES


def test_schedule_piecewise_linear():
    s = Schedule.parse([[0, 1.0], [100, 0.0], [200, 0.5]])
    assert s(-5) == 1.0 and s(50) == 0.5 and s(150) == 0.25 and s(1000) == 0.5
    assert Schedule.parse(3)(77) == 3.0
    assert Schedule.parse("[[0, 2], [10, 4]]")(5) == 3.0
    with pytest.raises(ConfigError):
        Schedule.parse([[10, 1], [0, 2]])
    with pytest.raises(ConfigError):
        Schedule.parse("fast")


def test_profile_overrides_are_typed():
    cfg = build_profile_config(
        "fast",
        ["sculpt.steps=12", "sculpt.w_mask=[[0, 1], [10, 2]]", "texture.mirror=false", "analysis.crop_size=256"],
        seed=7,
    )
    assert cfg.stages["sculpt"].steps == 12
    assert cfg.stages["sculpt"].w_mask(5) == 1.5
    assert cfg.stages["texture"].mirror is False
    assert cfg.seed == 7
    record = json.loads(json.dumps(cfg.to_dict()))
    assert record["stages"]["sculpt"]["w_mask"] == [[0, 1.0], [10, 2.0]] and record["stages"]["sculpt"]["steps"] == 12
    assert record["impls"]["export"] == "glb"


@pytest.mark.parametrize(
    "bad",
    [
        "sculpt.nope=1",
        "nostage.steps=1",
        "sculpt.steps=abc",
        "steps=3",
        "analysis.crop_size=64",
        "texture.mirror=maybe",
        "missing.json",
        "sculpt.steps=2.5",
        "analysis.identity=insightface",
    ],
)
def test_bad_overrides_raise_config_error(bad):
    with pytest.raises(ConfigError):
        build_profile_config("fast", [bad])


@pytest.mark.parametrize(
    "bad, says",
    [
        ("sculpt.steps=-5", "sculpt.steps = -5: must be >= 1"),
        ("sculpt.steps=0", "must be >= 1"),
        ("sculpt.w_mask=-1", "sculpt.w_mask = -1.0: must be >= 0"),
        ("sculpt.w_depth=[[0, 1], [10, -2]]", "must be >= 0"),
        ("analysis.detection_confidence=1.5", "must be <= 1"),
        ("texture.texture_size=16", "must be >= 64"),
        ("sculpt.resolution=100000", "must be <= 2048"),
        ("sculpt.lr=0", "must be > 0"),
        ("sculpt.lr=nan", "not a number"),
        ("analysis.canny_low=200", "canny_low must not exceed"),
    ],
)
def test_numbers_out_of_range_are_config_errors(bad, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[")):
        build_profile_config("fast", [bad])


def test_paper_ranges_and_cross_stage_checks():
    for bad in (
        "sculpt.normal_fit_steps=20",
        "texture.refine_t=[200, 100]",
        "sculpt.elevation_range=[40, -10]",
        "sculpt.t_max=1.5",
        "texture.view_size=100",
    ):
        with pytest.raises(ConfigError):
            build_profile_config("tiny", [bad], models="/no/root/needed/yet")
    # The ID adapter needs an ArcFace identity: caught when the config is built, before any model loads.
    with pytest.raises(ConfigError, match="ArcFace"):
        build_profile_config("tiny", ["analysis.identity=dlib"], models="/no/root/needed/yet")
    with pytest.raises(ConfigError, match="model root"):
        build_profile_config("fast", ["analysis.identity=arcface"])
    with pytest.raises(ConfigError, match="seed"):
        build_profile_config("fast", seed=-1)


def test_cli_rejects_a_bad_setting_before_any_work(tmp_path, astronaut_png):
    res = CliRunner().invoke(app, ["generate", str(astronaut_png), "-o", str(tmp_path / "o"), "-c", "sculpt.steps=-5"])
    assert res.exit_code == 2 and "ConfigError" in res.output and "must be >= 1" in res.output
    assert not (tmp_path / "o").exists()


def test_unknown_profile_and_impl():
    with pytest.raises(ConfigError, match="profiles: fast"):
        build_profile_config("slow")
    with pytest.raises(ConfigError, match="choices"):
        lookup("sculpt", "dmtet-but-misspelt")


def test_config_file_overrides(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"sculpt": {"steps": 5}}))
    assert parse_overrides([str(p)]) == {"sculpt": {"steps": 5}}
    assert build_profile_config("fast", [str(p)]).stages["sculpt"].steps == 5
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold"):
        parse_overrides([str(p)])


def test_configs_are_frozen_and_fingerprinted():
    cfg = build_profile_config("fast")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.stages["sculpt"].steps = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 2
    changed = dataclasses.replace(cfg.stages["sculpt"], steps=3)
    assert changed.steps == 3 and cfg.stages["sculpt"].steps == 80
    assert build_profile_config("fast").fingerprint() == cfg.fingerprint()
    assert build_profile_config("fast", ["sculpt.steps=81"]).fingerprint() != cfg.fingerprint()
    assert build_profile_config("fast", seed=1).fingerprint() != cfg.fingerprint()


def _implementations():
    return [(stage, name, lookup(stage, name)) for stage in STAGES for name in registered(stage)]


def test_every_setting_has_help_and_every_number_a_range():
    from portrait3d.engine.config import BatchSettings, PoolConfig
    from portrait3d.serve_app.settings import ServeSettings

    classes = [(f"{s}.{n}", cls.Config) for s, n, cls in _implementations()] + [
        ("pool", PoolConfig),
        ("batch", BatchSettings),
        ("serve", ServeSettings),
    ]
    for where, cfg_cls in classes:
        hints = typing.get_type_hints(cfg_cls)
        for f in dataclasses.fields(cfg_cls):
            assert f.metadata.get("help"), f"{where}.{f.name} has no help"
            numeric = is_numeric(hints[f.name]) or typing.get_origin(hints[f.name]) is dict
            if numeric:
                assert f.metadata.get("bounds"), f"{where}.{f.name} declares no range"
        assert all(text for _, _, text in help_of(cfg_cls).values())


def test_every_stage_implements_its_typed_interface():
    assert {s for s, _, _ in _implementations()} == set(STAGES)
    for stage, name, cls in _implementations():
        _, want_in, want_out = INTERFACES[stage]
        hints = typing.get_type_hints(cls.__call__)
        assert hints["inputs"] is want_in and hints["report"].__name__ == "Reporter", (stage, name)
        assert hints["return"] is want_out, (stage, name)
        assert dataclasses.fields(cls.Config) is not None and callable(cls.close)
        assert cls.Config.__dataclass_params__.frozen, f"{stage}.{name}: Config must be frozen"
    for profile in PROFILES.values():
        assert set(profile.impls) == set(STAGES)


def test_register_checks_the_shape_of_a_stage():
    with pytest.raises(TypeError, match="Config"):
        register("sculpt", "x")(type("NoConfig", (), {"close": lambda self: None}))

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    with pytest.raises(TypeError, match="close"):
        register("sculpt", "x")(type("NoClose", (), {"Config": Config}))
    assert "x" not in registered("sculpt")
