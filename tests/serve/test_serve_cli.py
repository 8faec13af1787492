"""`edgereg serve` as a command: safe defaults, clear refusals, a real process that serves and
stops cleanly, and a runtime that imports without the `serve` extra."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from serve_helpers import sample_frame, wait_for

from edgereg.cli.main import main
from edgereg.cli.serve import connection_limit, host_policy, is_loopback


def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "analyzer.lab"))


def test_host_policy_answers_the_bound_address_loopback_and_allowed_names():
    pytest.importorskip("starlette")
    names, any_ip = host_policy("127.0.0.1", [])
    assert set(names) >= {"127.0.0.1", "localhost", "::1"} and not any_ip
    names, any_ip = host_policy("192.168.1.20", ["Analyzer.lab", "analyzer"])
    assert {"192.168.1.20", "analyzer.lab", "analyzer", "localhost"} <= set(names) and not any_ip
    assert "evil.example" not in names
    assert host_policy("0.0.0.0", [])[1] and host_policy("::", [])[1] and host_policy("[::]", [])[1]


def test_uvicorn_admits_every_stream_slot_and_room_for_the_api():
    assert connection_limit(16) > 16 and connection_limit(1) > 1


def test_serve_refuses_unsafe_and_contradictory_options(assay_model, tmp_path, capsys):
    def refused(*argv) -> str:
        assert main(["serve", str(assay_model), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err  # one line
        return err

    assert "give --token TOKEN (or --token-file FILE), or --no-auth" in refused("--host", "0.0.0.0")
    assert "choose one" in refused("--token", "abc", "--no-auth")
    assert "not both" in refused("--token", "abc", "--token-file", str(tmp_path / "t"))
    assert "cannot read --token-file" in refused("--token-file", str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    assert "is empty" in refused("--token-file", str(tmp_path / "empty"))
    assert "letters, digits" in refused("--token", "two words;")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        assert "is in use" in refused("--port", str(busy.getsockname()[1]))
    finally:
        busy.close()
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(assay_model), "--port", "70000"])
    assert exit_info.value.code == 2 and "0..65535" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "none.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_runtime_imports_and_serve_explains_without_the_extra(assay_model):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("starlette", "uvicorn", "prometheus_client", "python_multipart", "multipart"):
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, Block())
        import edgereg.live.loop, edgereg.serve.hub, edgereg.serve.frames, edgereg.serve.batcher, edgereg.serve.uploads
        from edgereg.cli.main import main
        sys.exit(main(["serve", {str(assay_model)!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pip install 'edgereg[serve]'" in result.stderr and "Traceback" not in result.stderr


def _start(argv: list[str]) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "edgereg", "serve", *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        process.kill()
        raise AssertionError(f"no serving line: {line!r} {process.stderr.read()}")
    return process, int(match.group(1))


def _request(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.slow
def test_serve_process_serves_with_a_token_and_stops_cleanly_on_sigterm(assay_model, sample_video):
    import cv2

    process, port = _start([str(assay_model), "--camera", str(sample_video), "--port", "0", "--token", "tok3n"])
    try:
        auth = {"Authorization": "Bearer tok3n"}
        assert wait_for(lambda: _request(port, "GET", "/healthz")[0] == 200, 60)
        assert _request(port, "GET", "/api/card")[0] == 401
        assert _request(port, "GET", "/healthz", headers={"Host": "evil.example"})[0] == 421  # DNS rebinding
        status, body = _request(port, "GET", "/api/card", headers=auth)
        assert status == 200 and json.loads(body)["units"] == ["mg/L"]
        image = cv2.imencode(".jpg", sample_frame(4))[1].tobytes()
        status, body = _request(port, "POST", "/api/predict", body=image,
                                headers={**auth, "Content-Type": "image/jpeg"})
        assert status == 200 and 80 < json.loads(body)["readings"][0]["value"]["conc"] < 350
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/events?token=tok3n")
        events = connection.getresponse()
        assert events.status == 200 and events.getheader("content-type").startswith("text/event-stream")
        data = next(line for line in events if line.startswith(b"data: "))
        assert json.loads(data[6:])["quality"] == "ok"
        process.send_signal(signal.SIGTERM)  # with a stream still open: it ends (within the graceful timeout)
        _, err = process.communicate(timeout=60)
        connection.close()
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in err and re.search(r"\d+ frames: \d+ readings", err), err
