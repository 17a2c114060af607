"""The API judge against a real OpenAI-compatible HTTP server on 127.0.0.1, started in the test.

These test the protocol (request shape, retries, caching, errors, the key kept secret), not any
judge's quality: the server returns fixed replies such as 'Rating: [[7]]'.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from infosift.errors import JudgeError
from infosift.evaluate import ApiJudge, get_judge, mt_bench_judged
from stages._common import EXIT_BAD_INPUT
from tests.tiny import write_jsonl

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "INFOSIFT_TEST_JUDGE_KEY"
SECRET = "sk-test-Zq9XvT3pL0ngS3cr3t"
NO_WAIT = (0.0, 0.0, 0.0)

Reply = tuple[int, bytes]


def completion(content: str) -> bytes:
    return json.dumps(
        {"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": content}}]}
    ).encode()


class FakeOpenAI:
    """POST /v1/chat/completions: queued (status, body) replies first, then ``default(request body)``."""

    def __init__(self, default: Callable[[dict], Reply] = lambda body: (200, completion("Rating: [[7]]"))):
        self.requests: list[dict] = []  # {"path", "headers", "body"} per request, in order
        self.queue: list[Reply] = []
        self.default = default
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = fake.queue.pop(0) if fake.queue else fake.default(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """127.0.0.1 is reached directly even where the environment sets a proxy."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


@pytest.mark.server
def test_scores_parsed_and_request_carries_model_prompt_and_key(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = ApiJudge(server.base_url + "/", "judge-model", api_key_env=KEY_ENV, delays=NO_WAIT)
    assert judge.judge_many(["first prompt", "second prompt"]) == [7.0, 7.0]
    assert judge.replies == ["Rating: [[7]]"] * 2 and judge.n_requests == 2
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["body"]["model"] == "judge-model" and first["body"]["temperature"] == 0
    assert first["body"]["messages"] == [{"role": "user", "content": "first prompt"}]
    assert first["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(judge) and SECRET not in judge.name


@pytest.mark.server
def test_no_key_means_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.default = lambda body: (200, completion("no verdict here"))
    assert ApiJudge(server.base_url, "m", api_key_env=KEY_ENV, delays=NO_WAIT)("p") is None  # unparseable: unscored
    assert "Authorization" not in server.requests[0]["headers"]


@pytest.mark.server
def test_mt_bench_with_api_judge_caches_and_never_leaks_the_key(
    server, tiny_model_dir, mt_files, tmp_path, monkeypatch, caplog, capsys
):
    """Scores per category through mt_bench_judged; a rerun is served from the cache; the key is nowhere."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.default = lambda body: (200, completion("Rating: [[8]]" if "[R]" in body["messages"][0]["content"] else
                                                   "Rating: [[4]]"))  # fmt: skip
    server.queue = [(500, b'{"error": "overloaded"}')]  # one retry on the way, so a warning is logged
    caplog.set_level(logging.DEBUG)
    cache, out = tmp_path / "cache", tmp_path / "out"
    options = {"base_url": server.base_url, "model": "judge-model", "api_key_env": KEY_ENV, "cache_dir": str(cache),
               "delays": NO_WAIT}  # fmt: skip

    def run() -> dict:
        files = (str(tiny_model_dir), mt_files["q"], mt_files["r"], mt_files["p"])
        return mt_bench_judged(*files, judge="api", judge_options=options, limit=2, max_new_tokens=3, device="cpu",
                               out_dir=str(out))  # fmt: skip

    res = run()
    assert res["per_category"] == {"math": 8.0, "writing": 4.0} and res["n_scored"] == 2
    assert res["judge"] == f"api:judge-model@{server.base_url}"
    assert len(server.requests) == 3  # two prompts, one retried
    assert len(list(cache.glob("*.json"))) == 2
    log = [json.loads(line) for line in (out / "mt_bench_judged.jsonl").read_text().splitlines()]
    assert [r["judge_reply"] for r in log] == ["Rating: [[4]]", "Rating: [[8]]"]

    again = run()
    assert again == res and len(server.requests) == 3  # the server saw nothing new: all from the cache

    captured = capsys.readouterr()
    assert "retry 1 of 3" in caplog.text
    for text in (json.dumps(res), caplog.text, captured.out, captured.err):
        assert SECRET not in text
    for f in [*cache.rglob("*"), *out.rglob("*")]:
        assert not f.is_file() or SECRET not in f.read_text()


@pytest.mark.server
@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried_with_backoff(server, status):
    server.queue = [(status, b"busy"), (status, b"busy")]
    waited: list[float] = []
    judge = ApiJudge(server.base_url, "m", api_key_env=KEY_ENV, delays=(1.0, 2.0, 4.0), sleep=waited.append)
    assert judge("p") == 7.0
    assert len(server.requests) == 3 and waited == [1.0, 2.0]


@pytest.mark.server
def test_always_500_ends_in_one_clear_error(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.default = lambda body: (500, f"internal error for key {SECRET}".encode())  # a server that echoes it
    judge = ApiJudge(server.base_url, "m", api_key_env=KEY_ENV, delays=NO_WAIT)
    with pytest.raises(JudgeError) as err:
        judge("p")
    message = str(err.value)
    assert f"{server.base_url}/chat/completions" in message and "4 attempts" in message and "HTTP 500" in message
    assert SECRET not in message and "\n" not in message
    assert len(server.requests) == 4


@pytest.mark.server
def test_client_error_is_not_retried_and_names_the_key_variable_not_the_key(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.default = lambda body: (401, f'{{"error": "Incorrect API key provided: {SECRET}"}}'.encode())
    with pytest.raises(JudgeError, match=rf"HTTP 401 \(is \${KEY_ENV} a valid key\?\)") as err:
        ApiJudge(server.base_url, "m", api_key_env=KEY_ENV, delays=NO_WAIT)("p")
    assert SECRET not in str(err.value) and server.base_url in str(err.value)
    assert len(server.requests) == 1


@pytest.mark.server
@pytest.mark.parametrize(
    "payload", [b"<html>Bad Gateway</html>", b'{"choices": []}', b'{"object": "chat.completion"}', b"", b"[1, 2]"]
)
def test_garbage_reply_ends_in_one_clear_error(server, payload):
    server.default = lambda body: (200, payload)
    with pytest.raises(JudgeError, match="not a chat completion") as err:
        ApiJudge(server.base_url, "m", api_key_env=KEY_ENV, delays=NO_WAIT)("p")
    assert server.base_url in str(err.value)


def test_unreachable_url_ends_in_one_clear_error_naming_it(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    url = closed_port_url()
    waited: list[float] = []
    with pytest.raises(JudgeError) as err:
        ApiJudge(url, "m", api_key_env=KEY_ENV, sleep=waited.append)("p")
    assert f"judge at {url}/chat/completions: no answer after 4 attempts" in str(err.value)
    assert SECRET not in str(err.value) and waited == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": "ftp://host/v1", "model": "m"}, "expected http(s)://host[:port]/v1"),
        ({"base_url": "http://host:port/v1", "model": "m"}, "expected http(s)://host[:port]/v1"),
        ({"base_url": "http://127.0.0.1:1/v1", "model": ""}, "needs a model name"),
    ],
)
def test_bad_settings_fail_before_any_request(options, message):
    with pytest.raises(JudgeError, match=re.escape(message)):
        get_judge("api", **options)


class Redirector:
    """Answers every POST with ``code`` and Location: ``location``, counting what it was sent."""

    def __init__(self, code: int, location: str):
        self.requests: list[dict] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                me.requests.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(code)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.server
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_second_server_never_sees_the_key(server, monkeypatch, code):
    """urllib follows a 30x by default and resends Authorization; the judge stops at the first server."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    first = Redirector(code, f"{server.base_url}/chat/completions?leak=1")
    try:
        with pytest.raises(JudgeError) as err:
            ApiJudge(first.base_url, "m", api_key_env=KEY_ENV, delays=NO_WAIT)("p")
    finally:
        first.close()
    assert len(first.requests) == 1 and first.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert server.requests == []  # the second server saw nothing at all, so certainly no Authorization
    message = str(err.value)
    assert f"HTTP {code} redirect to {server.base_url}/chat/completions not followed" in message
    assert "leak" not in message and SECRET not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://user:Pa55w0rdZ@127.0.0.1/v1",  # no port: urllib's own error would carry the password
        "https://user:Pa55w0rdZ@judge.example:8443/v1",
        "http://Pa55w0rdZ@127.0.0.1:8000/v1",
        "http://user:Pa/55w0rdZ@127.0.0.1/v1",  # a '/' in the password moves the '@' out of the netloc
    ],
)
def test_userinfo_in_the_url_is_refused_without_echoing_it(url):
    with pytest.raises(JudgeError, match="user:password@ in the URL is refused") as err:
        get_judge("api", base_url=url, model="m")
    assert "Pa55w0rdZ" not in str(err.value) and "55w0rdZ" not in str(err.value) and "\n" not in str(err.value)


def test_a_query_in_the_url_is_refused_without_echoing_it():
    with pytest.raises(JudgeError, match="query or #fragment is refused") as err:
        get_judge("api", base_url="https://judge.example/v1?api_key=Pa55w0rdZ", model="m")
    assert "Pa55w0rdZ" not in str(err.value)


@pytest.mark.parametrize("url", ["http://judge.example/v1", "http://10.0.0.7:8000/v1", "http://127.0.0.1.nip.io/v1"])
def test_a_key_over_plain_http_goes_only_to_loopback(url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with pytest.raises(JudgeError, match=re.escape("a key goes over plain http only to a loopback host")) as err:
        ApiJudge(url, "m", api_key_env=KEY_ENV)
    assert SECRET not in str(err.value) and KEY_ENV in str(err.value)
    monkeypatch.delenv(KEY_ENV)
    assert ApiJudge(url, "m", api_key_env=KEY_ENV).name == f"api:m@{url}"  # no key: nothing to leak


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://127.3.2.1/v1", "http://[::1]:8000/v1",
                                 "http://localhost:8000/v1", "https://judge.example/v1"])  # fmt: skip
def test_a_key_is_accepted_over_https_or_to_loopback(url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert ApiJudge(url, "m", api_key_env=KEY_ENV).where == f"{url}/chat/completions"


@pytest.mark.server
def test_an_endless_reply_is_cut_off_with_one_error(server, monkeypatch):
    import infosift.evaluate.judge_api as judge_api

    monkeypatch.setattr(judge_api, "MAX_REPLY_BYTES", 1000)
    server.default = lambda body: (200, completion("x" * 2000))
    with pytest.raises(JudgeError, match="reply longer than 1000 bytes") as err:
        ApiJudge(server.base_url, "m", api_key_env=KEY_ENV, delays=NO_WAIT)("p")
    assert server.base_url in str(err.value) and len(server.requests) == 1


# ---------------------------------------------------------------- the stage


def run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(PYTHONPATH=str(ROOT), **{KEY_ENV: SECRET})
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def stage_workspace(tmp_path: Path, tiny_model_dir, gsm_records, mt_files, mt_bench: dict) -> Path:
    cwd = tmp_path / "ws"
    shutil.copytree(tiny_model_dir, cwd / "models" / "m")
    write_jsonl(cwd / "data/download/test.jsonl", gsm_records[:2])
    evaluate = {"n_test": 1, "max_length": 64, "batch_size": 1, "device": "cpu", "gsm8k": {"limit": 0},
                "mt_bench": {"limit": 1, "max_new_tokens": 2, "batch_size": 1, **mt_bench}}  # fmt: skip
    # as fetch_mt_bench copies it
    shutil.copytree(Path(mt_files["mirror"]) / "mt_bench", cwd / "data/mt_bench/evaluate")
    (cwd / "params.yaml").write_text(yaml.safe_dump({"evaluate": evaluate}))
    return cwd


def test_stage_with_unreachable_judge_prints_one_error_line(tmp_path, tiny_model_dir, gsm_records, mt_files):
    """About 7 s: the default backoff (1 + 2 + 4 s) runs before the stage gives up."""
    url = closed_port_url()
    mt = {"judge": "api", "judge_base_url": url, "judge_model": "judge-model", "judge_api_key_env": KEY_ENV}
    cwd = stage_workspace(tmp_path, tiny_model_dir, gsm_records, mt_files, mt)
    proc = run_stage(cwd, "stages.evaluate", "m")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]  # above it: retry warnings
    assert len(lines) == 1 and f"judge at {url}/chat/completions" in lines[0], proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == lines[0] and "no answer after 4 attempts" in lines[0]
    assert SECRET not in proc.stderr + proc.stdout
    assert not (cwd / "results/evaluate/m").exists()


@pytest.mark.parametrize(
    ("mt_bench", "message"),
    [
        ({"judge": "api", "judge_model": "gpt-4"}, "evaluate.mt_bench.judge_base_url: required"),
        ({"judge": "api", "judge_base_url": "http://x/v1", "judge_model": "base"}, "needs the server's model name"),
        ({"judge": "overlap", "judge_base_ur": "x"}, "evaluate.mt_bench.judge_base_ur: unknown parameter"),
    ],
)
def test_stage_rejects_incomplete_api_judge_settings(
    tmp_path, tiny_model_dir, gsm_records, mt_files, mt_bench, message
):
    cwd = stage_workspace(tmp_path, tiny_model_dir, gsm_records, mt_files, mt_bench)
    proc = run_stage(cwd, "stages.evaluate", "m")
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert (
        proc.returncode == EXIT_BAD_INPUT and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    ), proc.stderr


def test_stage_with_a_password_in_the_judge_url_says_so_once_and_never_echoes_it(
    tmp_path, tiny_model_dir, gsm_records, mt_files
):
    """urllib's own error for user:password@host with no port quotes the password; the stage never reaches it."""
    url = "http://user:Pa55w0rdZ@127.0.0.1/v1"
    mt = {"judge": "api", "judge_base_url": url, "judge_model": "judge-model", "judge_api_key_env": KEY_ENV}
    cwd = stage_workspace(tmp_path, tiny_model_dir, gsm_records, mt_files, mt)
    proc = run_stage(cwd, "stages.evaluate", "m")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "user:password@ in the URL is refused" in lines[0], proc.stderr
    assert "Pa55w0rdZ" not in proc.stderr + proc.stdout and SECRET not in proc.stderr + proc.stdout
    assert not (cwd / "results/evaluate/m").exists() and not (cwd / ".cache/judge").exists()
