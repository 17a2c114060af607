"""DVC remotes: the committed .dvc/config, and push/pull through `python -m flows.remote` against a real S3 endpoint.

The server tests start moto's S3 server on 127.0.0.1 and push a tiny DVC project made here (a stage with a
directory out, a stage that reads it): they test the remote protocol and flows.remote, not the pipeline. A small
HTTP proxy in front of the endpoint refuses, or holds until the push is killed, the upload of one object, to show
that a half-done push is never taken as finished.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from flows.remote import reason, secrets, shown_url

ROOT = Path(__file__).resolve().parent.parent
KEY_ID, SECRET = "AKIAINFOSIFTTEST0001", "s3cr3t/Infosift+Test/DoNotPrint"  # moto accepts any key unless told not to
PARTS = (
    "import pathlib; d = pathlib.Path('data/parts'); d.mkdir(parents=True); "
    "[(d / f'p{i}.txt').write_text(f'part {i} ' * (i + 1)) for i in range(3)]"
)
TOTAL = (
    "import pathlib; t = sum(len(p.read_text()) for p in pathlib.Path('data/parts').iterdir()); "
    "pathlib.Path('data/total.txt').write_text(str(t))"
)
DVC_YAML = f"""stages:
  parts:
    cmd: python -c "{PARTS}"
    outs:
      - data/parts
  total:
    cmd: python -c "{TOTAL}"
    deps:
      - data/parts
    outs:
      - data/total.txt
"""


# --- the committed configuration (default tests: no server, no extra) ---


def test_committed_config_has_a_local_default_outside_the_repo_and_a_team_s3_remote_without_secrets():
    from dvc.config import Config

    repo_level = Config(dvc_dir=str(ROOT / ".dvc"), validate=False).load_one("repo")  # .dvc/config only
    remotes = repo_level["remote"]
    default = remotes[repo_level["core"]["remote"]]
    store = (ROOT / ".dvc" / default["url"]).resolve()  # DVC resolves a relative url against .dvc/
    assert "://" not in default["url"] and not store.is_relative_to(ROOT), store
    team = next(r for r in remotes.values() if r["url"].startswith("s3://"))
    assert team.get("endpointurl", "").startswith("http")
    assert not [k for r in remotes.values() for k in r if "secret" in k or "key" in k or "password" in k]
    assert "/config.local" in (ROOT / ".dvc" / ".gitignore").read_text().split()


def test_error_reason_is_one_line_and_shown_url_carries_no_password():
    out = (
        "ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject operation: "
        "Forbidden\n"
        "\nHaving any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n"
    )
    text = reason(out, "push", "team")
    assert text.startswith("access denied (403 on HeadObject)") and "\n" not in text
    missing = "ERROR: failed to connect to s3 (b/p) - Unable to locate credentials\nERROR: 3 files failed"
    assert reason(missing, "pull", "team").startswith("no credentials: set them (dvc remote modify --local team")
    assert shown_url({"url": "https://user:pw1234@host:8443/store?sig=abc"}) == "https://host:8443/store"
    assert shown_url({"url": "s3://b/p", "endpointurl": "http://127.0.0.1:9000"}) == "s3://b/p at http://127.0.0.1:9000"
    assert SECRET in secrets({"url": "s3://b/p", "secret_access_key": SECRET})


# --- helpers for the server tests ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert not ok or proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def flows_remote(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "flows.remote", *args], cwd, env, ok=False)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The whole output of a failed flows.remote: exactly one line, on stderr, starting with 'error:'."""
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stdout + proc.stderr
    return lines[0]


def add_remote(repo: Path, name: str, url: str, endpoint: str, **options: str) -> None:
    """Remote ``name`` in .dvc/config.local (git-ignored: this machine's endpoint and keys), as
    `dvc remote add --local -f` + `dvc remote modify --local` write it, without two more DVC processes per call."""
    from configobj import ConfigObj

    conf = ConfigObj(str(repo / ".dvc" / "config.local"))
    conf[f'remote "{name}"'] = {"url": url, "endpointurl": endpoint, **options}
    conf.write()


def object_key(path: Path) -> str:
    """Where DVC 3 stores a file's content on a remote: files/md5/<first 2 hex>/<rest>."""
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    return f"files/md5/{digest[:2]}/{digest[2:]}"


def bucket_keys(s3, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def clone(repo: Path, dest: Path, env: dict) -> Path:
    run(["git", "clone", "-q", str(repo), str(dest)], repo.parent, env)
    return dest


class FaultProxy(ThreadingHTTPServer):
    """An HTTP proxy in front of the S3 endpoint that refuses the PUT of one object, or holds it until released."""

    daemon_threads = True

    def __init__(self, upstream: str, key_suffix: str, hold: bool = False):
        self.upstream, self.key_suffix, self.hold = urlsplit(upstream), key_suffix, hold
        self.hit, self.release = threading.Event(), threading.Event()
        super().__init__(("127.0.0.1", 0), _Relay)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.shutdown()
        super().__exit__(*exc)


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy
    REFUSED = b"<Error><Code>AccessDenied</Code><Message>refused by the test proxy</Message></Error>"

    def log_message(self, *args) -> None:
        pass

    def relay(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size) if size else None
        proxy = self.server
        if self.command == "PUT" and urlsplit(self.path).path.endswith(proxy.key_suffix):
            proxy.hit.set()
            if proxy.hold:  # the push is killed meanwhile; the upload never reaches the store, as on a cut line
                proxy.release.wait(60)
                self.close_connection = True
                return
            status, headers, data = 403, [("Content-Type", "application/xml")], self.REFUSED
        else:
            conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            resp = conn.getresponse()
            status, headers, data = resp.status, resp.getheaders(), resp.read()
            conn.close()
        self.send_response(status)
        length = str(len(data))
        for k, v in headers:
            if k.lower() == "content-length":
                length = v if self.command == "HEAD" else length
            elif k.lower() not in ("connection", "transfer-encoding", "keep-alive", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay


# --- fixtures: one S3 endpoint and one finished workspace per module ---


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port, with a bucket `infosift`; stopped after the module."""
    pytest.importorskip("moto.server")
    pytest.importorskip("dvc_s3")
    boto3 = pytest.importorskip("boto3")
    log = tmp_path_factory.mktemp("moto") / "server.log"
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
    client = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    client.create_bucket(Bucket="infosift")
    try:
        yield SimpleNamespace(url=url, client=client)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A git + DVC repo whose pipeline has run (a directory out and a file out in the cache), committed.

    Its .dvc/config names the remote `team` (s3://infosift/dvc) and no endpoint: each test points the remote it
    uses at its endpoint in .dvc/config.local. DVC's global, system and site dirs are kept inside tmp.
    """
    tmp = tmp_path_factory.mktemp("dvc_remote")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # python -m flows.remote from inside the workspace
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(tmp / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(tmp / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site"),
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    repo = tmp / "repo"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        run(cmd, repo, env)
    run(["dvc", "init", "-q"], repo, env)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    run(["dvc", "remote", "add", "team", "s3://infosift/dvc"], repo, env)
    run(["dvc", "repro", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "pipeline run"], repo, env)
    assert "up to date" in run(["dvc", "status"], repo, env).stdout
    return repo, env


def with_keys(env: dict) -> dict:
    return env | {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


# --- server tests ---


@pytest.mark.server
def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_rerun(s3, workspace, tmp_path):
    repo, env = workspace
    env = with_keys(env)
    add_remote(repo, "team", "s3://infosift/dvc", s3.url)
    pushed = flows_remote(["push", "-r", "team"], repo, env)
    assert pushed.returncode == 0 and "pushed" in pushed.stdout, pushed.stdout + pushed.stderr
    keys = bucket_keys(s3, "infosift")
    assert f"dvc/{object_key(repo / 'data/parts/p1.txt')}" in keys and any(k.endswith(".dir") for k in keys)
    assert "in sync" in run(["dvc", "status", "-c", "-r", "team"], repo, env).stdout

    other = clone(repo, tmp_path / "clone", env)
    assert not (other / "data/parts").exists()
    add_remote(other, "team", "s3://infosift/dvc", s3.url)
    pulled = flows_remote(["pull", "-r", "team"], other, env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "Data and pipelines are up to date." in run(["dvc", "status"], other, env).stdout
    assert "No changes." in run(["dvc", "data", "status"], other, env).stdout
    for f in ("data/parts/p0.txt", "data/parts/p1.txt", "data/parts/p2.txt", "data/total.txt"):
        assert (other / f).read_bytes() == (repo / f).read_bytes()


@pytest.mark.server
def test_wrong_credential_ends_in_one_error_line_naming_the_url_not_the_key(s3, workspace):
    repo, env = workspace
    wrong_secret = "wR0ng/Secret+Value/NeverPrinted"
    keys = {"access_key_id": "AKIAUNKNOWNKEY000001", "secret_access_key": wrong_secret}
    add_remote(repo, "wrongkey", "s3://infosift/dvc", s3.url, **keys)

    def auth(count: str) -> None:  # moto checks keys (unknown key -> 403) once its no-auth allowance is 0
        req = urllib.request.Request(f"{s3.url}/moto-api/reset-auth", data=count.encode(), method="POST")
        req.add_header("Content-Type", "text/plain")
        urllib.request.urlopen(req, timeout=5).close()

    auth("0")
    try:
        proc = flows_remote(["push", "-r", "wrongkey"], repo, env)
    finally:
        auth("inf")
    line = error_line(proc)
    assert line.startswith(f"error: dvc remote wrongkey (s3://infosift/dvc at {s3.url}): access denied"), line
    assert wrong_secret not in line and "AKIAUNKNOWNKEY000001" not in line


@pytest.mark.server
def test_unreachable_remote_ends_in_one_error_line_naming_the_url(workspace):
    pytest.importorskip("dvc_s3")
    repo, env = workspace
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    add_remote(repo, "gone", "s3://infosift/dvc", dead)
    proc = flows_remote(["push", "-r", "gone"], repo, with_keys(env))
    line = error_line(proc)
    assert line.startswith(f"error: dvc remote gone (s3://infosift/dvc at {dead}): cannot connect"), line
    assert SECRET not in line


@pytest.mark.server
def test_push_with_a_refused_object_is_not_taken_as_finished(s3, workspace, tmp_path):
    repo, env = workspace
    env = with_keys(env)
    s3.client.create_bucket(Bucket="refused")
    with FaultProxy(s3.url, object_key(repo / "data/parts/p1.txt")) as proxy:
        add_remote(repo, "refused", "s3://refused/dvc", proxy.url)
        line = error_line(flows_remote(["push", "-r", "refused"], repo, env))
    assert proxy.hit.is_set()
    assert line.startswith(f"error: dvc remote refused (s3://refused/dvc at {proxy.url}): "), line
    assert "failed to upload" in line and "incomplete" in line and SECRET not in line
    keys = bucket_keys(s3, "refused")
    assert keys and not any(k.endswith(".dir") for k in keys), keys  # half pushed, and no directory listing

    add_remote(repo, "refused", "s3://refused/dvc", s3.url)  # the same bucket, without the fault
    assert "data/parts" in run(["dvc", "status", "-c", "-r", "refused"], repo, env).stdout
    other = clone(repo, tmp_path / "clone", env)
    add_remote(other, "refused", "s3://refused/dvc", s3.url)
    line = error_line(flows_remote(["pull", "-r", "refused"], other, env))
    assert "missing on the remote: data/parts" in line, line
    assert not (other / "data/parts").exists()
    assert "up to date" not in run(["dvc", "status"], other, env).stdout


@pytest.mark.server
def test_push_killed_midway_is_not_taken_as_finished(s3, workspace):
    repo, env = workspace
    env = with_keys(env)
    s3.client.create_bucket(Bucket="killed")
    with FaultProxy(s3.url, object_key(repo / "data/parts/p1.txt"), hold=True) as proxy:
        add_remote(repo, "killed", "s3://killed/dvc", proxy.url)
        push = subprocess.Popen(
            [sys.executable, "-m", "dvc", "push", "-r", "killed"],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            assert proxy.hit.wait(60), "the push never reached the held object"
        finally:
            os.killpg(push.pid, signal.SIGKILL)
            push.wait(timeout=30)
    assert not any(k.endswith(".dir") for k in bucket_keys(s3, "killed"))

    add_remote(repo, "killed", "s3://killed/dvc", s3.url)
    assert "data/parts" in run(["dvc", "status", "-c", "-r", "killed"], repo, env).stdout
    assert flows_remote(["push", "-r", "killed"], repo, env).returncode == 0
    assert "in sync" in run(["dvc", "status", "-c", "-r", "killed"], repo, env).stdout
