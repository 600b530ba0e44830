"""What a user sees after a run: monitors in metrics.json, the report page, the comet-ml archive, no network."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image

from rest.config import RunConfig
from rest.reporting.tracking import flatten, read_archive
from tests.conftest import netguard_env, rest

pytestmark = pytest.mark.integration
POLICIES = ["policy-0", "improve-1-1", "improve-1-2"]


def test_every_policy_has_monitors_and_its_valid_outputs(clean_run):
    for k, name in enumerate(POLICIES):
        metrics = json.loads((clean_run / name / "metrics.json").read_text())
        mon = metrics["monitors"]
        outputs = pd.read_parquet(clean_run / name / "valid_outputs.parquet")
        assert len(outputs) == metrics["valid"]["n"] == 40
        if name == "policy-0":
            assert mon["drift_chrf"] == 100.0 and mon["alarm"]["previous"] is None
        else:
            assert mon["alarm"]["previous"] == POLICIES[k - 1]
            prev = json.loads((clean_run / POLICIES[k - 1] / "metrics.json").read_text())["valid"]
            assert mon["alarm"]["reward_delta"] == pytest.approx(metrics["valid"]["reward"] - prev["reward"], abs=1e-4)
        refs = outputs["reference"].str.len().mean()
        assert mon["length_ratio"] == pytest.approx(outputs["output"].str.len().mean() / refs, abs=1e-3)
        assert set(mon["probes"]) == {"chrf", "exact_match", "reward"}  # configs/smoke.yaml's components + total


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))


def test_the_report_page_is_self_contained_with_every_image(clean_run):
    page = clean_run / "report" / "index.html"
    assert f"Report (plots, monitors, samples): {page}" in (clean_run / "stdout.txt").read_text()
    parser = _Page()
    text = page.read_text()
    parser.feed(text)
    assert len(parser.images) >= 5
    assert parser.links == []  # nothing to fetch: the page opens offline, alone
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()  # a truncated or corrupt PNG raises here, as a browser would show a broken image
        assert image.size[0] > 300 and image.size[1] > 200
    for words in ("Did each Grow step help?", "Monitors", "Reward probes", "Lineage", "Samples of grow-1"):
        assert words in text
    assert "grow-1</td><td>policy-0 -&gt; improve-1-" in text  # the verdict row of Grow 1
    # each reward's scale, as the Grow manifest has it (the smoke config: chrF and exact match)
    components = json.loads((clean_run / "grow-1" / "_manifest.json").read_text())["stats"]["components"]
    assert set(components) == {"chrf", "exact_match"} and components["chrf"]["applies"] == 1.0
    assert components["chrf"]["p10"] <= components["chrf"]["p50"] <= components["chrf"]["p90"]
    assert f"<td>grow-1</td><td>chrf</td><td>1.0</td><td>{components['chrf']['mean']}</td>" in text


def test_rest_report_json(clean_run):
    out = json.loads(rest("report", str(clean_run), "--json").stdout)
    assert out["report"].endswith("report/index.html")
    [verdict] = out["grow"]
    valid = {n: json.loads((clean_run / n / "metrics.json").read_text())["valid"] for n in POLICIES}
    best = max(POLICIES[1:], key=lambda n: valid[n]["reward"])
    assert verdict["after"] == best
    assert verdict["helped"] == (
        valid[best]["reward"] > valid["policy-0"]["reward"]
        and valid[best]["exact_match"] >= valid["policy-0"]["exact_match"]
    )
    assert out["monitors"]


def test_the_comet_archive_holds_the_config_and_every_prefix(clean_run):
    [archive] = list((clean_run / "comet").glob("*.zip"))
    content = read_archive(archive)
    config = RunConfig.model_validate(__import__("yaml").safe_load((clean_run / "config.yaml").read_text()))
    expected = {k: v for k, v in flatten(config.model_dump(mode="json")).items() if v is not None}
    assert {k: content["parameters"].get(k) for k in expected} == expected
    by_step: dict[int, set[str]] = {}
    for m in content["metrics"]:
        by_step.setdefault(m["step"], set()).add(m["name"].split("/")[0])
    assert {"eval", "bc", "grow"} <= by_step[0]  # policy-0: its evaluation, its BC training, the Grow step it sampled
    for step in (1, 2):  # improve-1-1, improve-1-2
        assert {"eval", "improve"} <= by_step[step]
    values = {(m["name"], m["step"]): m["value"] for m in content["metrics"]}
    metrics = json.loads((clean_run / "improve-1-2" / "metrics.json").read_text())
    assert values[("eval/exact_match", 2)] == metrics["valid"]["exact_match"]
    assert values[("eval/drift_chrf", 2)] == metrics["monitors"]["drift_chrf"]
    test = json.loads((clean_run / "run.json").read_text())["test"]
    assert values[("test/exact_match", 0)] == test["policy-0"]["exact_match"]  # the test split, at its policy's step
    assert "grow-1-sample.csv" in content["assets"] and "report.html" in content["assets"]


def test_a_run_with_comet_offline_opens_no_non_loopback_connection(clean_run):
    log = clean_run.with_suffix(".netguard.log")
    assert (clean_run / "comet").is_dir()
    assert not log.exists() or log.read_text() == "", log.read_text()[:3000]
    # The guard sees what comet-ml does with its defaults: cloud-metadata probes and remote error reporting.
    probe = log.with_name("comet-defaults.netguard.log")
    code = (
        "import comet_ml\n"
        "e = comet_ml.start(online=False, "
        f"experiment_config=comet_ml.ExperimentConfig(offline_directory={str(probe.parent / 'c')!r}))\n"
        "e.log_metric('a', 1)\ne.end()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMET_")}
    subprocess.run([sys.executable, "-c", code], env={**env, **netguard_env(probe)}, capture_output=True, timeout=300)
    assert "getaddrinfo '169.254.169.254'" in probe.read_text()


def test_tracking_online_without_a_key_is_refused_before_anything_is_written(tmp_path):
    proc = rest(
        "run",
        "--config",
        "configs/smoke.yaml",
        "--run",
        str(tmp_path / "r"),
        "tracking.comet=online",
        check=False,
        env={"COMET_API_KEY": ""},
    )
    assert proc.returncode == 2
    assert "tracking.comet=online needs COMET_API_KEY" in proc.stderr
    assert not (tmp_path / "r").exists()
