import json

import pytest

from portrait3d.errors import ConfigError
from portrait3d.pipelines.config import Schedule, build_profile_config, help_of, lookup, parse_overrides


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
    json.dumps(cfg.to_dict())


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
    ],
)
def test_bad_overrides_raise_config_error(bad):
    with pytest.raises(ConfigError):
        build_profile_config("fast", [bad])


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


def test_every_field_has_help():
    cfg = build_profile_config("fast")
    for stage, impl in cfg.impls.items():
        for name, (_, _, help_) in help_of(lookup(stage, impl).Config).items():
            assert help_, f"{stage}.{name} has no help"
