"""The `vitpose-batch` command line: annotate -> export-coco / render, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import vitpose_core as vc
from vitpose_batch.cli import DefaultsFormatter, build_parser, main as cli
from vitpose_batch.demo_checkpoint import write_demo_checkpoint
from tests import coco_data
from tests.conftest import ensure_shared_ray

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model = write_demo_checkpoint(tmp / "demo.pth")
    output = tmp / "out"
    ensure_shared_ray()
    assert cli(["annotate", str(coco_data.image_folder("coco-val-4")), str(output), "--model", str(model),
                "--boxes", str(coco_data.annotation_file("coco-val-4"))]) == 0
    return tmp, output


def test_demo_checkpoint_is_a_vitpose_s(tmp_path):
    model = vc.load_pose_model(write_demo_checkpoint(tmp_path / "s.pth"))
    assert (model.config.hidden_size, model.config.num_layers, model.config.num_heads) == (384, 12, 12)


def test_export_coco_both_formats(annotated):
    tmp, output = annotated
    assert cli(["export-coco", str(output), str(tmp / "results.json")]) == 0
    results = json.loads((tmp / "results.json").read_text())
    gts = coco_data.load("coco-val-4")
    assert len(results) == sum(len(g.boxes) for g in gts)
    assert {r["image_id"] for r in results} == {g.image_id for g in gts if len(g.boxes)}
    assert cli(["export-coco", str(output), str(tmp / "dataset.json"), "--format", "dataset",
                "--min-keypoint-score", "0.5"]) == 0
    dataset = json.loads((tmp / "dataset.json").read_text())
    assert len(dataset["images"]) == 4 and dataset["categories"][0]["name"] == "person"
    flags = [v for a in dataset["annotations"] for v in a["keypoints"][2::3]]
    assert set(flags) <= {0, 2}


def test_render_writes_overlays(annotated):
    tmp, output = annotated
    assert cli(["render", str(output), str(tmp / "render"), "--sample", "3"]) == 0
    written = sorted((tmp / "render").iterdir())
    assert len(written) == 3
    for path in written:
        with Image.open(path) as image:
            assert image.size[0] > 100


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitpose_batch.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))


@pytest.mark.parametrize("case", ["missing-input", "empty-input", "unknown-model", "unwritable-output"])
def test_bad_command_line_input_is_one_line(tmp_path, case, annotated):
    demo = str(annotated[0] / "demo.pth")
    images = str(coco_data.image_folder("coco-val-4"))
    (tmp_path / "empty").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = {
        "missing-input": [str(tmp_path / "nope"), str(tmp_path / "o"), "--model", demo, "--boxes", "x.json"],
        "empty-input": [str(tmp_path / "empty"), str(tmp_path / "o"), "--model", demo],
        "unknown-model": [images, str(tmp_path / "o"), "--model", str(tmp_path / "missing.pth")],
        "unwritable-output": [images, str(blocker / "out"), "--model", demo,
                              "--boxes", str(coco_data.annotation_file("coco-val-4"))],
    }[case]
    result = run_cli("annotate", *args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vitpose-batch annotate: error: "), result.stderr
    expected = {"missing-input": "not found", "empty-input": "no image files", "unknown-model": "not found",
                "unwritable-output": "not writable"}[case]
    assert expected in lines[0]
    assert not (tmp_path / "o").exists()  # refused before OUTPUT was touched: nothing a re-run could trust


def test_unknown_flag_is_refused():
    result = run_cli("annotate", "in", "out", "--no-such-flag")
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr


def test_parser_knows_the_interface_flags():
    parser = build_parser()
    args = parser.parse_args(["annotate", "in", "out", "--model", "m", "--boxes", "b.json", "--image-root", "r",
                              "--flip-test", "--dataset-index", "5", "--batch-size", "4", "--ray-address", "a:1",
                              "--coco-json", "c.json", "--retry-errors", "--rows-per-file", "1000", "--compile"])
    assert (args.flip_test, args.dataset_index, args.batch_size) == (True, 5, 4)
    assert (args.retry_errors, args.rows_per_file, args.compile) == (True, 1000, True)
    assert parser.parse_args(["export-coco", "p", "o.json", "--format", "dataset"]).format == "dataset"


def test_version_and_every_argument_explained():
    out = subprocess.run([sys.executable, "-m", "vitpose_batch.cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("vitpose-batch ") and out.stdout.split()[1][0].isdigit()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"
        formatter = DefaultsFormatter(name)
        for action in sub._actions:  # every default that is a value is stated
            if action.option_strings and action.default not in (None, False) and action.default != "==SUPPRESS==":
                assert "(default" in formatter._get_help_string(action), f"{name} {action.dest}: default not shown"
        assert "(default: 0.3)" in " ".join(sub.format_help().split()) or name != "render"
    annotate = " ".join(commands["annotate"].format_help().split())
    assert "hub" in annotate and "usyd-community/vitpose-base-simple" in annotate


def test_help_starts_without_heavy_imports():
    """`--help` must be instant: nothing of torch, Ray, pyarrow or the model is imported for it."""
    code = ("import sys; from vitpose_batch.cli import main\n"
            "try:\n    main(['annotate', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'pyarrow', 'numpy', 'vitpose_core', 'cv2') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-500:]


def test_both_export_commands_take_both_format_spellings():
    """export-coco names its formats results / dataset, export coco-results / coco-dataset: each takes the other's."""
    parser = build_parser()
    for command, given, meant in [("export-coco", "coco-dataset", "dataset"), ("export-coco", "coco-results", "results"),
                                  ("export-coco", "dataset", "dataset"), ("export", "dataset", "coco-dataset"),
                                  ("export", "results", "coco-results"), ("export", "label-studio", "label-studio")]:
        assert parser.parse_args([command, "out", "x.json", "--format", given]).format == meant
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "out", "x.json", "--format", "coco-labels"])
