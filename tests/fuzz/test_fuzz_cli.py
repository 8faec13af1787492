"""Fuzz: argument vectors for every command, run in-process through ``edgereg.cli.main.main``.

The options come from the commands' own parsers (so a new option is fuzzed without editing this
file); their values from pools of numbers, words and paths that include the hostile ones (zero,
negative, huge, NaN, empty, a FIFO, a folder where a file is expected, a file where a folder is).
Commands whose valid runs train or export get a suffix that keeps a valid run to seconds (it comes
last, so it wins over a fuzzed value of the same option); ``demo`` always gets an invalid value
(a valid demo runs for minutes) so only its refusals are fuzzed.
"""

from __future__ import annotations

import contextlib
import io
import os

import cv2
import numpy as np
import pytest
from fuzz_helpers import bounded, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from edgereg.cli.main import build_parser, main
from edgereg.core.card import ModelCard

INTS = ["-1", "0", "1", "2", "3", "x", "", "1.5", "100000", "1e3"]
FLOATS = ["-1", "0", "0.5", "1e-3", "nan", "inf", "1e308", "abc"]
WORDS = ["none", "d4", "rot:4", "rot:0", "cpu", "cuda", "auto", "x,y", "a=b", "8x8", "0x0", "100000x100000",
         "1/2", "0/3", "3/2", "16", "mlp", "scalar", "rgb", "circle", "5M", "-", "--", "ñ", "1,2", "8,0"]
INPUTS = ["MODEL", "BARE_MODEL", "GARBAGE", "MISSING", "DATASET", "PHOTOS", "IMAGE", "VIDEO", "LIST", "FIFO",
          "RUN", "CARD"]
OUTPUTS = ["OUT", "OUT.csv", "OUT.jsonl", "NOPARENT/OUT.csv", "FILE_IN_THE_WAY/x", "PHOTOS", "IMAGE"]
SUFFIX = {
    "train": ["--epochs", "1", "--batch-size", "8", "--threads", "1", "--size", "16"],
    "lr-find": ["--steps", "10", "--threads", "1", "--size", "16"],
    "export": ["--no-speed", "--calib-images", "4", "--calib-method", "minmax"],
    "demo": [],
}
EXAMPLES = {"info": 25, "infer": 60, "bench": 15, "eval": 15, "models": 6, "synth": 15, "train": 10,
            "lr-find": 6, "export": 6, "demo": 8, "calibrate": 6, "validate": 6}
SLOW = {"train", "lr-find", "export", "calibrate", "validate"}
TIME_LIMIT = {"train": 60.0, "lr-find": 40.0, "export": 60.0, "calibrate": 40.0, "validate": 40.0}

SUBPARSERS = build_parser()._subparsers._group_actions[0].choices


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real files for the path tokens: models, a dataset, photos, a video, a list, a FIFO, a run."""
    import importlib.util

    import onnx

    # tests/conftest.py's model builder (loaded by path: "conftest" names several modules in a session)
    spec = importlib.util.spec_from_file_location("edgereg_tests_root_conftest",
                                                  os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                                               "conftest.py"))
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)
    make_onnx_model = shared.make_onnx_model

    root = tmp_path_factory.mktemp("cli_fuzz")
    card = ModelCard(kind="scalar", targets=("conc",), input_size=(16, 16), range=((-3.0, 3.0),))
    model = make_onnx_model(root / "model.onnx", card)
    bare = onnx.load(str(model))
    del bare.metadata_props[:]
    onnx.save(bare, str(root / "bare.onnx"))
    (root / "card.json").write_text(card.to_json())
    (root / "garbage.onnx").write_text("not a model")
    rng = np.random.default_rng(0)
    dataset = root / "dataset"
    dataset.mkdir()
    rows = ["path,conc"]
    for i in range(24):
        value = float(rng.uniform(0, 10))
        cv2.imwrite(str(dataset / f"i{i}.png"), np.full((16, 16, 3), int(40 + 15 * value), np.uint8))
        rows.append(f"i{i}.png,{value:.3f}")
    (dataset / "labels.csv").write_text("\n".join(rows) + "\n")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        cv2.imwrite(str(photos / f"p{i}.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for _ in range(3):
        writer.write(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    writer.release()
    (root / "list.txt").write_text(f"{photos / 'p0.png'}\nmissing.png\n")
    os.mkfifo(root / "fifo.png")
    (root / "file").write_text("a file where a folder is expected")
    run = None
    try:
        import torch  # noqa: F401

        run = root / "run"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", str(dataset), "--out", str(run), "--epochs", "1", "--model", "mlp", "--size", "16",
                         "--batch-size", "8", "--threads", "1", "--quiet"]) == 0
    except ImportError:
        pass
    return {"MODEL": model, "BARE_MODEL": root / "bare.onnx", "GARBAGE": root / "garbage.onnx",
            "MISSING": root / "missing.onnx", "DATASET": dataset, "PHOTOS": photos, "IMAGE": photos / "p0.png",
            "VIDEO": root / "clip.avi", "LIST": root / "list.txt", "FIFO": root / "fifo.png",
            "RUN": run or root / "no-run", "CARD": root / "card.json", "FILE_IN_THE_WAY": root / "file",
            "root": root}


def _is_output(action) -> bool:
    return action.dest in ("out",) or (action.metavar or "") in ("OUT", "DIR", "FILE")


RIGHT_INPUT = {"model": ["MODEL"], "path": ["PHOTOS", "IMAGE", "VIDEO", "LIST"], "dataset": ["DATASET"],
               "standards": ["DATASET"],
               "run_dir": ["RUN"], "task": ["assay", "gravel", "box", "pixelstats", "angle"]}


def _plausible(action) -> list[str]:
    """Values of the option's own type (from its default), so that many cases get past parsing."""
    default = action.default
    if isinstance(default, bool) or action.nargs == 0:
        return []
    if isinstance(default, int):
        return ["1", "2", "3", str(default)]
    if isinstance(default, float):
        return ["0.5", "0.1", str(default)]
    if isinstance(default, tuple):
        return [",".join(map(str, default))]
    if action.dest in ("card",):
        return ["CARD"]
    return [str(default)] if default is not None else ["none", "cpu", "1"]


@st.composite
def argv_for(draw, command: str):
    """Tokens: positionals (usually of the right kind), then a few options with drawn values
    (usually of the option's own type, otherwise anything from the hostile pools)."""
    parser = SUBPARSERS[command]
    tokens: list[str] = [command]
    for action in parser._actions:
        if action.option_strings or draw(st.integers(0, 14)) == 0:  # now and then a positional is left out
            continue
        if action.choices:
            tokens.append(draw(st.sampled_from(sorted(action.choices) + ["nope"])))
        elif _is_output(action):
            tokens.append(draw(st.sampled_from(OUTPUTS)))
        elif action.dest in RIGHT_INPUT and draw(st.integers(0, 3)):
            tokens.append(draw(st.sampled_from(RIGHT_INPUT[action.dest])))
        else:
            tokens.append(draw(st.sampled_from(INPUTS)))
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    required = [a for a in options if a.required]
    for action in required:  # usually given: an output (train --out) or a small count (synth --n)
        if draw(st.integers(0, 5)):
            pool = OUTPUTS if _is_output(action) else ["1", "2", "3", "0", "x"]
            tokens += [action.option_strings[0], draw(st.sampled_from(pool))]
    for action in draw(st.lists(st.sampled_from(options), max_size=4)):
        tokens.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs == 0:
            continue
        if action.choices:
            pool = sorted(map(str, action.choices)) + ["nope"]
        elif _is_output(action):
            pool = OUTPUTS
        elif _plausible(action) and draw(st.integers(0, 2)):
            pool = _plausible(action)
        else:
            pool = INTS + FLOATS + WORDS + INPUTS
        tokens.append(draw(st.sampled_from(pool)))
    if draw(st.integers(0, 19)) == 0:
        tokens.insert(draw(st.integers(1, len(tokens))), draw(st.sampled_from(["--bogus", "-x", "--help"])))
    if command == "demo":  # a valid demo runs for minutes: always one bad value, last
        tokens += draw(st.sampled_from([["--n", "0"], ["--n", "x"], ["--minutes", "0"], ["--minutes", "nan"],
                                        ["--minutes", "-1"], ["--out", "FILE_IN_THE_WAY/x", "--n", "20"]]))
    tokens += SUFFIX.get(command, [])
    if "--camera" in tokens:  # a missing camera is retried forever by design: give up after one retry
        tokens += ["--max-retries", "1"]
    if any(a == "--engine" and b == "ray" for a, b in zip(tokens, tokens[1:])):
        # a valid --engine ray run starts Ray (seconds, past a case's limit; tests/cluster runs them):
        # a local-engine-only option, last, makes it one of the refusals
        tokens += ["--gate"]
    return tokens


def resolve(tokens: list[str], world: dict, out_dir) -> list[str]:
    """Path tokens -> real paths (outputs in a folder of their own per case)."""
    resolved = []
    for token in tokens:
        head, _, tail = token.partition("/")
        if token.startswith("OUT"):
            resolved.append(str(out_dir / token.lower()))
        elif head == "NOPARENT":
            resolved.append(str(out_dir / "no" / "such" / tail))
        elif head in world and tail:
            resolved.append(str(world[head] / tail))
        elif token in world and token != "root":
            resolved.append(str(world[token]))
        else:
            resolved.append(token)
    return resolved


def run_main(argv: list[str], limit: float, cwd) -> tuple[int, str]:
    """main(argv) in ``cwd`` (outputs with default or relative names land there), with stdout and
    stderr captured (byte-capable, as the row writers need), bounded."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    stderr = io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with bounded(limit), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
                code = exc.code
    finally:
        os.chdir(previous)
    return code, stderr.getvalue()


def check(code, err: str) -> None:
    """The property: an exit code of the documented set, no traceback, at most one error line."""
    assert code in (0, 1, 2, 3, 141), (code, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line and line.startswith("edgereg")]
    assert len(errors) <= 1, err[-2000:]
    if code == 2:
        assert errors, f"exit 2 without saying why: {err[-1000:]}"


def _property(command: str):
    @fuzz_settings(max_examples=EXAMPLES[command])
    @given(tokens=argv_for(command))
    def test(world, tmp_path_factory, tokens):
        if tokens[tokens.index(command) + 1:tokens.index(command) + 2] == ["RUN"] and not world["RUN"].exists():
            pytest.skip("no torch: no run directory to export")
        case = tmp_path_factory.mktemp("case")
        code, err = run_main(resolve(tokens, world, case), TIME_LIMIT.get(command, 15.0), case)
        check(code, err)

    test.__name__ = f"test_any_{command.replace('-', '_')}_command_line_exits_cleanly"
    return pytest.mark.slow(test) if command in SLOW else test


for _command in EXAMPLES:
    _test = _property(_command)
    globals()[_test.__name__] = _test
