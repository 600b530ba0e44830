from pathlib import Path

import pytest

from rest.config import load_config
from rest.errors import RestError
from rest.improve.objectives import objective_for


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_says_how_to_run_it(path):
    if path.name.startswith("reward-"):
        from rest.config import RewardModelConfig

        assert load_config(path, model=RewardModelConfig).objective in ("regression", "bradley_terry", "seq2seq")
    else:
        cfg = load_config(path)
        assert cfg.improve.thresholds == sorted(cfg.improve.thresholds)
    head = path.read_text().splitlines()[:3]
    assert any(line.startswith("#") and ("make " in line or "rest " in line) for line in head), path


def test_thresholds_must_rise():
    with pytest.raises(RestError, match=r"improve.thresholds.*rise strictly.*\[0.9, 0.8\]"):
        load_config(None, ["improve.thresholds=[0.9, 0.8]"])
    with pytest.raises(RestError, match=r"rise strictly"):
        load_config(None, ["improve.thresholds=[0.9, 0.9]"])


def test_thresholds_must_be_normalised():
    with pytest.raises(RestError, match=r"in \[0, 1\]"):
        load_config(None, ["improve.thresholds=[50, 100]"])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(RestError, match=r"unknown config key `grow.num_sample`; did you mean `grow.num_samples`"):
        load_config(None, ["grow.num_sample=4"])
    with pytest.raises(RestError, match=r"unknown config key `improv`; did you mean `improve`"):
        load_config(None, ["improv.steps=4"])


def test_overrides_are_yaml_values():
    cfg = load_config(
        "configs/numbers.yaml",
        ["grow.num_samples=4", "improve.thresholds=[0.5, 0.7, 1.0]", "data.pool=null", "data.grow_on=train"],
    )
    assert cfg.grow.num_samples == 4
    assert cfg.improve.thresholds == [0.5, 0.7, 1.0]
    assert cfg.data.pool is None


def test_missing_config_file_is_named():
    with pytest.raises(RestError, match="configs/nope.yaml does not exist"):
        load_config("configs/nope.yaml")


def test_unknown_reward_in_config():
    with pytest.raises(RestError, match=r"reward.components.*did you mean `chrf`"):
        load_config(None, ["reward.components={chrF: 1.0}"])


def test_cross_stage_rule_pool_needed():
    with pytest.raises(RestError, match="data.pool is null"):
        load_config(None, ["data.pool=null"])


def test_overrides_model_keeps_constraints_and_merges_only_what_was_set():
    from pydantic import ValidationError

    from rest.config import ConfigOverrides, load_config

    with pytest.raises(ValidationError):
        ConfigOverrides.model_validate({"grow": {"num_samples": 0}})  # ge=1 of GrowConfig survives
    with pytest.raises(ValidationError):
        ConfigOverrides.model_validate({"orchestration": {"task_runner": "ray"}})  # so does the Literal
    with pytest.raises(ValidationError):
        ConfigOverrides.model_validate({"grow": {"num_sampels": 4}})  # and extra="forbid"
    schema = ConfigOverrides.model_json_schema()
    assert "grow" in schema["properties"]
    cfg = load_config(
        "configs/smoke.yaml", updates={"grow": {"num_samples": 3}, "reward": {"components": {"ter": 1.0}}}
    )
    assert cfg.grow.num_samples == 3
    assert cfg.grow.shard_size == 5  # untouched keys keep the file's values
    assert cfg.reward.components == {"ter": 1.0}  # a mapping value replaces, not merges
    with pytest.raises(RestError, match="thresholds must rise"):
        load_config("configs/smoke.yaml", updates={"improve": {"thresholds": [0.5, 0.4]}})


def test_comet_off_as_yaml_writes_it(tmp_path):
    """YAML 1.1 reads a bare `off` as False: `comet: off` (the README's spelling) and `tracking.comet=off` work."""
    assert load_config(None, ["tracking.comet=off"]).tracking.comet == "off"
    path = tmp_path / "c.yaml"
    path.write_text("tracking:\n  comet: off\n")
    assert load_config(path).tracking.comet == "off"
    with pytest.raises(RestError, match="say offline .* or online"):
        load_config(None, ["tracking.comet=on"])


def test_errors_name_the_override_that_set_the_key_not_the_file(tmp_path):
    with pytest.raises(RestError, match=r"^override `improve.thresholds=\[1.0,0.9\]`: config key `improve.thresholds`"):
        load_config("configs/numbers.yaml", ["improve.thresholds=[1.0,0.9]"])
    with pytest.raises(RestError, match=r"^override `grow.num_sampels=4`: unknown config key"):
        load_config("configs/numbers.yaml", ["grow.num_sampels=4"])
    path = tmp_path / "bad.yaml"
    path.write_text("improve:\n  thresholds: [0.4, 0.3]\n")
    with pytest.raises(RestError, match=rf"^{path}: config key `improve.thresholds`"):
        load_config(path, ["grow.num_samples=4"])  # the bad key came from the file, not from the override


def test_the_yaml_advice_leads_to_a_valid_value():
    """The message for an unparsable value shows a form that parses (the old advice led to another error)."""
    import re

    with pytest.raises(RestError) as err:
        load_config(None, ["improve.thresholds=[0.9,"])
    assert "improve.thresholds=[0.9,1.0]" in str(err.value)
    suggested = re.search(r"'(improve\.thresholds=\"\[0\.9,\")'", str(err.value)).group(1)
    with pytest.raises(RestError, match="Input should be a valid list"):
        load_config(None, [suggested])  # text, as suggested: parses, and is then a type error of its own
    assert load_config(None, ["improve.thresholds=[0.9,1.0]"]).improve.thresholds == [0.9, 1.0]


def test_token_weights_name_a_reward_component_of_an_nll_loss():
    with pytest.raises(
        RestError, match=r"improve.token_weights is 'learnt', not a component of reward.components \(chrf"
    ):
        load_config("configs/numbers.yaml", ["improve.token_weights=learnt"])
    with pytest.raises(RestError, match=r"max_per_source and token_weights are for the NLL losses"):
        load_config("configs/numbers.yaml", ["improve.loss=dpo", "improve.token_weights=chrf"])
    cfg = load_config("configs/numbers-seq2seq.yaml", ["improve.token_weights=learned"])
    assert cfg.improve.token_weights == "learned"
    with pytest.raises(RestError, match=r"improve.unlikelihood needs per-token scores .* set improve.token_weights"):
        load_config("configs/numbers-seq2seq.yaml", ["improve.unlikelihood=0.5"])
    cfg = load_config("configs/numbers-seq2seq.yaml", ["improve.token_weights=learned", "improve.unlikelihood=0.5"])
    assert objective_for(cfg.improve).unlikelihood == 0.5


def test_validation_on_a_seeded_subset_of_valid_is_the_same_rows_for_every_policy():
    from rest.stages.common import valid_split
    from rest.stages.keys import config_slice

    cfg = load_config("configs/smoke.yaml", ["eval.valid_rows=12"])
    rows = valid_split(cfg)
    whole = valid_split(load_config("configs/smoke.yaml"))
    assert len(rows) == 12 and len(whole) == 40
    assert rows.equals(valid_split(cfg))  # the same rows each time (the run's seed), in the file's order
    assert rows["source_id"].tolist() == [s for s in whole["source_id"] if s in set(rows["source_id"])]
    assert rows["source_id"].tolist() != whole["source_id"].tolist()[:12]  # drawn, not the first 12
    assert not valid_split(load_config("configs/smoke.yaml", ["eval.valid_rows=12", "seed=1"])).equals(rows)
    # in a policy's key only when set: policies of runs made before the setting still match their manifests
    keys = ("eval.max_new_tokens", "eval.valid_rows")
    assert config_slice(cfg, *keys)["eval"] == {"max_new_tokens": 24, "valid_rows": 12}
    assert config_slice(load_config("configs/smoke.yaml"), *keys)["eval"] == {"max_new_tokens": 24}


def test_a_field_added_later_joins_the_key_only_once_set():
    """The one lineage rule (IN_KEY_WHEN_SET): bc.valid_every, bc.patience and eval.valid_rows are out of every
    policy's key while they hold their defaults, so runs made before they existed keep their ids."""
    from rest.stages.keys import BC_KEYS, config_slice

    plain = config_slice(load_config("configs/smoke.yaml"), *BC_KEYS)
    assert not {"valid_every", "patience"} & set(plain["bc"]) and "valid_rows" not in plain["eval"]
    stopped = config_slice(load_config("configs/smoke.yaml", ["bc.valid_every=50"]), *BC_KEYS)
    assert stopped["bc"]["valid_every"] == 50 and stopped["bc"]["patience"] == 2  # patience follows valid_every
    idle = config_slice(load_config("configs/smoke.yaml", ["bc.patience=3"]), *BC_KEYS)  # no early stopping
    assert idle == plain
    assert {k: v for k, v in stopped["bc"].items() if k not in ("valid_every", "patience")} == plain["bc"]


def test_a_run_made_before_options_were_removed_still_opens(tmp_path):
    """A run's config.yaml lists every option: a removed one holding its "off" value is read without it; set to
    anything else, it is named."""
    from rest.config import dump_config

    text = dump_config(load_config("configs/smoke.yaml"))
    old = text.replace("grow:\n", "grow:\n  hard_samples: 0\n", 1).replace(
        "improve:\n", "improve:\n  accumulate: false\n", 1
    )
    assert old != text
    (tmp_path / "config.yaml").write_text(old)
    assert load_config(str(tmp_path / "config.yaml")) == load_config("configs/smoke.yaml")
    (tmp_path / "config.yaml").write_text(old.replace("hard_samples: 0", "hard_samples: 4"))
    with pytest.raises(RestError, match=r"config.yaml: `grow.hard_samples` was removed"):
        load_config(str(tmp_path / "config.yaml"))


@pytest.mark.parametrize("removed", ["improve.accumulate=true", "grow.hard_samples=4", "eval.correct_at=0.5"])
def test_removed_options_are_refused_by_name(removed):
    with pytest.raises(RestError, match=removed.split("=")[0].split(".")[1]):
        load_config("configs/smoke.yaml", [removed])


def test_more_training_processes_than_gpus_is_named_before_the_run(monkeypatch):
    """On GPUs each torchrun rank trains on cuda:rank: 2 processes on a 1-GPU machine name the key, not a rank's
    set_device traceback; on the CPU (gloo processes) any number is fine. The GPU count is patched: no GPU here."""
    import torch

    from rest.stages.preflight import check_processes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_processes(load_config("configs/smoke.yaml", ["device=cuda", "bc.processes=1", "improve.processes=1"]))
    with pytest.raises(RestError, match=r"^improve.processes: 2, but torch sees 1 GPU\(s\).*at most 1$"):
        check_processes(load_config("configs/smoke.yaml", ["device=cuda", "improve.processes=2"]))
    with pytest.raises(RestError, match=r"^bc.processes: 3"):
        check_processes(load_config("configs/smoke.yaml", ["device=auto", "bc.processes=3", "bc.batch_size=8"]))
    check_processes(load_config("configs/smoke.yaml", ["device=cpu", "bc.processes=3", "bc.batch_size=8"]))


def test_a_control_without_bc_before_it_is_warned_when_it_would_train_otherwise_than_improve():
    """bc.steps: 0 (a pretrained base) leaves bc's from-scratch defaults to the control: one warning line naming
    the keys, none once bc trains as improve does, none when BC ran (the control then continues it)."""
    from rest.stages.preflight import control_warnings

    base = ["bc.steps=0", "eval.control=true", "improve.lr=2e-4", "improve.lora={r: 16}", "improve.batch_size=8"]
    (line,) = control_warnings(load_config("configs/smoke.yaml", base))
    assert line.startswith("eval.control: policy-0 had no BC (bc.steps: 0)")
    assert "(lr 0.001, every weight, 32 rows a step)" in line and "with lr 0.0002, LoRA, 8 rows a step" in line
    same = ["bc.lr=2e-4", "bc.lora={r: 16}", "bc.batch_size=8"]
    assert control_warnings(load_config("configs/smoke.yaml", [*base, *same])) == []
    assert control_warnings(load_config("configs/smoke.yaml", ["eval.control=true"])) == []  # BC ran: it continues
    assert control_warnings(load_config("configs/examples/smollm2-arith.yaml")) == []
