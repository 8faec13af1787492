"""firmware_examples/: build and run what a CI machine can — the C analyzer against ONNX Runtime, the
systemd units (systemd-analyze, the shell command, the edgereg flags), a UDP dry run of the
forwarder, and the Python embedding loop on a generated video."""

from __future__ import annotations

import json
import py_compile
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "firmware_examples"
FORWARDER = EXAMPLES / "forwarder" / "forward_readings.py"
UNITS = {"jetson": "model.fp16.onnx", "raspberry_pi": "model.int8.onnx"}


# --------------------------------------------------------------------------------------------------
# c_analyzer
# --------------------------------------------------------------------------------------------------

def _make(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.skip("make and a C compiler are needed to build the analyzer")
    return subprocess.run(["make", "-C", str(EXAMPLES / "c_analyzer"), *args], capture_output=True, text=True)


def test_c_analyzer_reads_ppm_and_pgm_like_onnxruntime(model_factory, tmp_path):
    pytest.importorskip("onnx")
    from edgereg.core.predictor import Predictor
    from edgereg.export.c.codegen import generate_c

    model = model_factory(kind="vector", targets=("level", "tint"), input_size=(16, 16), crop="circle")
    generate_c(model, tmp_path / "model")
    build = _make(f"MODEL_DIR={tmp_path / 'model'}", f"BUILD_DIR={tmp_path / 'build'}")
    assert build.returncode == 0, build.stderr
    rng = np.random.default_rng(0)
    images = {
        "square.ppm": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "wide.ppm": rng.integers(0, 256, (16, 28, 3), dtype=np.uint8),  # centre crop, no resize
        "large.ppm": rng.integers(0, 256, (37, 50, 3), dtype=np.uint8),  # INTER_AREA, non-integer factor
        "gray.pgm": rng.integers(0, 256, (20, 16), dtype=np.uint8),
    }
    for name, image in images.items():
        assert cv2.imwrite(str(tmp_path / name), image)
    (tmp_path / "truncated.ppm").write_bytes(b"P6\n16 16\n255\n" + bytes(100))
    paths = [str(tmp_path / n) for n in [*images, "truncated.ppm"]]
    result = subprocess.run([str(tmp_path / "build" / "analyzer"), *paths], capture_output=True, text=True)
    assert result.returncode == 3  # one image failed, as `edgereg infer` reports it
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == paths
    assert "truncated" in lines[-1]["error"]
    predictor = Predictor(model, tta=None)
    for line, path in zip(lines, paths):
        if "error" in line:
            continue
        expected = next(predictor.predict([cv2.imread(path, cv2.IMREAD_COLOR)]).rows())
        assert line.keys() == {"path", "level", "tint"}
        for name in ("level", "tint"):
            assert line[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-4), (path, name)


def test_c_analyzer_without_a_model_says_how_to_make_one(tmp_path):
    build = _make(f"MODEL_DIR={tmp_path / 'nothing'}", f"BUILD_DIR={tmp_path / 'build'}")
    assert build.returncode != 0
    assert "edgereg export RUN_DIR --c" in build.stderr


# --------------------------------------------------------------------------------------------------
# jetson / raspberry_pi: systemd units
# --------------------------------------------------------------------------------------------------

def _unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """[Section] -> [(key, value), ...] in file order (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"{path.name}: unparsable line {raw!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def _checked_unit(unit: Path) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str], str]:
    """(sections, the [Service] keys, the ExecStart script) of a unit that restarts always and runs
    its command with ``/bin/bash -c``; ``systemd-analyze verify`` passes where it is installed."""
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0 and unit.name not in verify.stderr + verify.stdout, verify.stderr
    sections = _unit_sections(unit)
    service = dict(sections["Service"])
    assert service["Restart"] == "always"
    shell, *options, command = shlex.split(service["ExecStart"])
    assert shell == "/bin/bash" and options[-1] == "-c"
    return sections, service, command


@pytest.mark.parametrize("device", list(UNITS))
def test_systemd_unit_is_valid_and_runs_the_readout(device):
    sections, _, command = _checked_unit(EXAMPLES / device / "edgereg-analyzer.service")
    assert {"Unit", "Service", "Install"} <= sections.keys()
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"
    syntax = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    readout, forwarder = (shlex.split(part) for part in command.split("|"))
    infer = readout[readout.index("infer") - 1:]
    assert Path(infer[0]).name == "edgereg" and infer[2] == f"/opt/edgereg/{UNITS[device]}"
    from edgereg.cli.main import build_parser

    args = build_parser().parse_args(infer[1:])  # the flags exist in today's CLI
    assert (args.camera, args.jsonl) == ("0", True)
    assert Path(forwarder[1]).name == FORWARDER.name and "--udp" in forwarder


@pytest.mark.parametrize("device", list(UNITS))
def test_serve_unit_is_valid_and_serves_the_network_with_a_token(device):
    sections, service, command = _checked_unit(EXAMPLES / device / "edgereg-serve.service")
    assert service["LoadCredential"] == "token:/etc/edgereg/token"
    assert dict(sections["Unit"])["Conflicts"] == "edgereg-analyzer.service"  # one owner of the camera
    command = command.replace("$$", "$")  # systemd's escape for a literal $
    assert subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode == 0
    words = shlex.split(command)
    assert words[0] == "exec" and "|" not in words  # systemd's SIGTERM reaches the server itself
    serve = words[words.index("serve") - 1:]
    assert Path(serve[0]).name == "edgereg" and serve[2] == f"/opt/edgereg/{UNITS[device]}"
    from edgereg.cli.main import build_parser
    from edgereg.cli.serve import is_loopback

    args = build_parser().parse_args(serve[1:])  # the flags exist in today's CLI
    assert args.camera == "0" and args.port == 8080 and not is_loopback(args.host)
    assert args.token_file == "${CREDENTIALS_DIRECTORY}/token" and not args.no_auth and args.token is None


# --------------------------------------------------------------------------------------------------
# forwarder
# --------------------------------------------------------------------------------------------------

READINGS = [
    {"timestamp": 1.0, "frame": 0, "value": {"conc": 181.5}, "stable": False},
    {"timestamp": 1.1, "frame": 1, "value": {"conc": 182.0}, "stable": True},
    {"timestamp": 1.2, "frame": 2, "value": {"conc": 182.1}, "stable": True},
]


def _forward(args: list[str], lines: list[str]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    port = receiver.getsockname()[1]
    try:
        result = subprocess.run([sys.executable, str(FORWARDER), "--udp", f"127.0.0.1:{port}", *args],
                                input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
        received = []
        while True:
            try:
                received.append(json.loads(receiver.recv(65536)))
            except TimeoutError:
                break
    finally:
        receiver.close()
    return result, received


def test_forwarder_sends_each_reading_as_a_udp_datagram():
    lines = [json.dumps(READINGS[0]), "edgereg: a log line", "[1, 2]", *map(json.dumps, READINGS[1:])]
    result, received = _forward(["--max-lines", "2"], lines)
    assert result.returncode == 0, result.stderr
    assert received == READINGS[:2]  # the log line and the array were skipped, then it stopped at 2
    assert "line 2 is not JSON" in result.stderr and "line 3 is not a JSON object" in result.stderr
    result, received = _forward(["--only-stable"], [json.dumps(r) for r in READINGS])
    assert result.returncode == 0 and received == READINGS[1:]


def test_forwarder_refuses_bad_targets():
    bad = subprocess.run([sys.executable, str(FORWARDER), "--udp", "no-port"], input="", capture_output=True, text=True)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    try:
        import serial  # noqa: F401
    except ImportError:
        serial_run = subprocess.run([sys.executable, str(FORWARDER), "--serial", "/dev/ttyUSB9"], input="",
                                    capture_output=True, text=True)
        assert serial_run.returncode == 2 and "pip install pyserial" in serial_run.stderr


def test_example_scripts_compile():
    scripts = sorted(EXAMPLES.rglob("*.py"))
    assert {p.name for p in scripts} >= {"forward_readings.py", "analyzer_loop.py"}
    for script in scripts:
        py_compile.compile(str(script), doraise=True)


# --------------------------------------------------------------------------------------------------
# python_embed
# --------------------------------------------------------------------------------------------------

def test_python_embed_loop_reads_a_video_like_the_predictor(model_factory, tmp_path):
    from edgereg.core.predictor import Predictor

    model = model_factory(kind="scalar", targets=("conc",), input_size=(16, 16), range=((80.0, 350.0),))
    video = tmp_path / "sample.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (40, 32))
    rng = np.random.default_rng(0)
    for level in (40, 120, 200, 90):
        writer.write(np.clip(rng.normal(level, 10, (32, 40, 3)), 0, 255).astype(np.uint8))
    writer.release()
    capture = cv2.VideoCapture(str(video))
    frames = [capture.read()[1] for _ in range(3)]
    capture.release()
    assert all(f is not None for f in frames), "OpenCV could not write/read an MJPG test video here"
    script = EXAMPLES / "python_embed" / "analyzer_loop.py"
    result = subprocess.run([sys.executable, str(script), str(model), "--source", str(video), "--frames", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    expected = Predictor(model).predict(frames).values[:, 0]
    assert [r["frame"] for r in readings] == [0, 1, 2]
    # one frame per call there, three per call here: float sums in another order (see test_scoring)
    np.testing.assert_allclose([r["conc"] for r in readings], expected, rtol=1e-5, atol=1e-5)
    missing = subprocess.run([sys.executable, str(script), str(model), "--source", str(tmp_path / "none.avi")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "cannot open video source" in missing.stderr
