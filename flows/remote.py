"""Push or pull DVC's cache to a remote; a failure ends in one line that names the remote and its URL.

    python -m flows.remote push              # the default remote (.dvc/config: `local`, a folder beside the repo)
    python -m flows.remote pull -r team      # the team's S3 / MinIO bucket (needs pip install -e ".[s3]")

DVC prints its own errors over several lines (botocore's too), mixed with warnings. This command runs
`dvc push|pull`, prints DVC's summary on success, and on failure prints exactly one line
``error: dvc remote <name> (<url>): <reason>`` with no credential in it, and exits 1.

Nothing half-pushed is taken as finished, by DVC's design (dvc-data's transfer): every object is stored under
its content hash; a local remote writes each one to a temporary name and renames it, an S3 PUT is all or nothing;
and a directory's `.dir` listing, the only thing that makes its files a finished output, is uploaded after every
file in it, and not at all when one failed. An interrupted push leaves objects nothing refers to yet, so
`dvc status -c` and a `dvc pull` elsewhere report the output as missing; pushing again uploads only what is missing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from infosift.errors import RemoteError

# Remote options and environment variables whose values must never be printed.
SECRET_OPTION = re.compile(r"secret|password|token|key(?!file)|credential|sas", re.IGNORECASE)
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

# What DVC's (and botocore's, s3fs's, the OS's) messages say, mapped to what the user should do.
DENIED = re.compile(
    r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\(403\)|InvalidClientTokenId|ExpiredToken"
    r"|Permission denied"
)
NO_CREDENTIALS = re.compile(r"Unable to locate credentials|NoCredentialsError|Partial credentials found")
UNREACHABLE = re.compile(
    r"Could not connect|Connection refused|Cannot connect to host|Name or service not known|nodename nor servname"
    r"|Temporary failure in name resolution|timed out|ConnectTimeout|EndpointConnectionError|Network is unreachable"
)
NO_BUCKET = re.compile(r"NoSuchBucket|bucket does not exist", re.IGNORECASE)
NO_PLUGIN = re.compile(r"requires '(dvc-\w+)' to be installed")
S3_CODE = re.compile(r"An error occurred \((\w+)\) when calling the (\w+) operation")
FAILED_FILES = re.compile(r"(\d+) files? failed to (upload|download)")
MISSING_TARGETS = re.compile(r"Checkout failed for following targets:\s*(.*?)\s*(?:Is your cache up to date\?|$)")


def repo_root(start: Path | None = None) -> Path:
    """The DVC repository around ``start`` (default: the working directory), as DVC itself would find it."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise RemoteError(f"dvc remote: {start} is not inside a DVC repository (no .dvc/ here or above)")


def remote_config(name: str | None, root: Path) -> tuple[str, dict]:
    """(name, options) of remote ``name``, or of the default remote, from .dvc/config merged with config.local."""
    from dvc.config import Config, ConfigError

    try:
        conf = Config(dvc_dir=str(root / ".dvc"))
    except ConfigError as e:
        raise RemoteError(f"dvc config {root / '.dvc' / 'config'}: {one_line(str(e))}") from None
    name = name or conf["core"].get("remote")
    remotes = conf.get("remote", {})
    if not name:
        raise RemoteError("dvc remote: no default remote; pass -r NAME or set one with `dvc remote default NAME`")
    if name not in remotes:
        raise RemoteError(f"dvc remote {name}: not defined in .dvc/config (defined: {', '.join(remotes) or 'none'})")
    return name, dict(remotes[name])


def shown_url(options: dict) -> str:
    """The remote's URL as it may be printed: no user:password, no query; an S3 remote with its endpoint."""
    url = _public(str(options.get("url", "")))
    endpoint = options.get("endpointurl")
    if not endpoint and url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f"{url} at {_public(endpoint)}" if endpoint else url


def _public(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive letter)
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def secrets(options: dict) -> list[str]:
    """Every credential this run may use: the remote's secret options, its URL's password, the AWS_* variables."""
    found = [str(v) for k, v in options.items() if SECRET_OPTION.search(k) and isinstance(v, str)]
    found += [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
    password = urlsplit(str(options.get("url", ""))).password
    return [s for s in found + [password or ""] if len(s) >= 4]


def one_line(text: str) -> str:
    return " ".join(text.split())


def reason(output: str, verb: str, name: str) -> str:
    """What went wrong, in one line, from DVC's output of a failed push or pull."""
    errors = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("ERROR:")]
    text = one_line(" ".join(errors) or output) or "dvc exited with an error and no message"
    code = S3_CODE.search(text)
    where = f" ({code[1]} on {code[2]})" if code else ""
    failed = FAILED_FILES.search(text)
    if plugin := NO_PLUGIN.search(text):
        install = 'pip install -e ".[s3]"' if plugin[1] == "dvc-s3" else f"pip install {plugin[1]}"
        return f"{plugin[1]} is not installed: {install}"
    keys = (
        f"dvc remote modify --local {name} access_key_id / secret_access_key, "
        "or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    )
    if NO_CREDENTIALS.search(text):
        what, hint = "no credentials", f": set them ({keys})"
    elif DENIED.search(text):
        what, hint = f"access denied{where}", f": check the credentials ({keys}) and the bucket's permissions"
    elif UNREACHABLE.search(text):
        what, hint = "cannot connect", ": is the server running, and is the URL right?"
    elif NO_BUCKET.search(text):
        what, hint = f"the bucket does not exist{where}", ": create it first"
    elif verb == "pull" and (targets := MISSING_TARGETS.search(one_line(output))):
        return (
            f"missing on the remote: {', '.join(targets[1].split()) or 'some outputs'}; push them from a workspace "
            f"that has them (python -m flows.remote push -r {name}), then pull again"
        )
    else:
        what = errors[-1] if errors else text
        what = one_line(re.sub(r"^(unexpected error|failed to (push|pull) data (to|from) the cloud) - ", "", what))
        what, hint = what[:300], ""
    if failed and verb == "push":
        return (
            f"{failed[1]} files failed to upload ({what}); the push is incomplete: `dvc status -c -r {name}` lists "
            "what the remote lacks, push again to finish"
        )
    return what + hint


def transfer(
    verb: str,
    name: str | None = None,
    targets: list[str] | None = None,
    jobs: int | None = None,
    cwd: Path | None = None,
) -> str:
    """Run `dvc push|pull` against one remote; DVC's summary on success, a RemoteError with one line otherwise."""
    root = repo_root(cwd)
    name, options = remote_config(name, root)
    cmd = [sys.executable, "-m", "dvc", verb, "-r", name, *(["-j", str(jobs)] if jobs else []), *(targets or [])]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout.strip()
    text = reason(proc.stdout + "\n" + proc.stderr, verb, name)
    for secret in secrets(options):
        text = text.replace(secret, "***")
    raise RemoteError(f"dvc remote {name} ({shown_url(options)}): {text}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other bad input
        print(f"error: python -m flows.remote: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m flows.remote", description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=["push", "pull"])
    parser.add_argument("targets", nargs="*", help="stages or outputs (default: everything in dvc.lock)")
    parser.add_argument("-r", "--remote", help="remote name (default: core.remote in .dvc/config)")
    parser.add_argument("-j", "--jobs", type=int, help="parallel transfers (DVC's default when omitted)")
    args = parser.parse_args(argv)
    try:
        summary = transfer(args.verb, args.remote, args.targets, args.jobs)
    except RemoteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
