"""An OpenAI-compatible chat-completions server as MT-Bench judge (FastChat's llm_judge asks GPT-4 this way).

Each judge prompt goes as one user message to POST {base_url}/chat/completions at temperature 0; the
rating is the last '[[x]]' of the reply. Connection errors, timeouts, 429 and 5xx are transient and
retried with exponential backoff; anything else, or the last failed attempt, is one JudgeError naming
the URL.

The API key comes from an environment variable (none at all for a local server) and goes only into the
Authorization header: it is in no cache key, name, log line or error text (scrubbed, should a server echo
it). The header goes only where the key was meant to go: a redirect is never followed (it is an error naming
where it pointed, so the user can set that address); plain http carries a key only to a loopback host; a URL
with user:password@ is refused without echoing it, since the URL is the judge's name in metrics, dvc.lock and
MLflow. Replies are cached on disk by a hash of what determines them, so a rerun pays nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from infosift.atomic import atomic_write_text
from infosift.errors import JudgeError
from infosift.evaluate.rating import parse_rating

log = logging.getLogger(__name__)

DELAYS = (1.0, 2.0, 4.0)  # seconds before retries 1..3: four attempts in all
MAX_RETRY_AFTER = 60.0  # a server's Retry-After is honoured up to this
MAX_REPLY_BYTES = 16 * 2**20  # a chat completion is kilobytes; past this the server is not one (memory bound)


class ReplyCache:
    """Judge replies on disk, one JSON file per request hash; an unreadable entry is a miss, not an error."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def get(self, key: str) -> str | None:
        try:
            reply = json.loads((self.root / f"{key}.json").read_text())["reply"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return reply if isinstance(reply, str) else None

    def put(self, key: str, record: dict) -> None:
        atomic_write_text(self.root / f"{key}.json", json.dumps(record) + "\n")


class ApiJudge:
    """Judge prompt in, '[[rating]]' parsed out of an OpenAI-compatible server's reply; retried, cached.

    ``delays`` are the pauses before each retry (len + 1 attempts); ``sleep`` is injectable so tests
    need not wait.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int | None = 2048,
        timeout: float = 120.0,
        delays: Sequence[float] = DELAYS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        check_url(base_url)
        if not model:
            raise JudgeError(f"judge at {base_url}: needs a model name")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.url = self.base_url + "/chat/completions"
        self.where = self.url  # no secret in it: check_url refused userinfo, query and fragment
        self.name = f"api:{model}@{self.base_url}"
        self.max_tokens, self.timeout, self.delays, self.sleep = max_tokens, timeout, tuple(delays), sleep
        self.cache = ReplyCache(cache_dir) if cache_dir is not None else None
        self._key = os.environ.get(api_key_env) or None  # unset or empty: no Authorization header
        if self._key and urlsplit(self.base_url).scheme == "http" and not _is_loopback(urlsplit(self.base_url)):
            raise JudgeError(
                f"judge at {self.where}: ${api_key_env} is set, and a key goes over plain http only to a loopback "
                "host (127.0.0.1, ::1, localhost); use https, or unset the variable for a server without a key"
            )
        self._opener = _opener(self.base_url)
        self.replies: list[str] = []  # kept so a person can read why a score came out as it did
        self.n_requests = 0  # replies that came from the server, not the cache

    def __repr__(self) -> str:
        return f"ApiJudge({self.name!r})"  # never the key

    def judge_many(self, prompts: list[str]) -> list[float | None]:
        self.replies = [self.reply(p) for p in prompts]
        return [parse_rating(r) for r in self.replies]

    def __call__(self, prompt: str) -> float | None:
        return self.judge_many([prompt])[0]

    def reply(self, prompt: str) -> str:
        """The server's reply to one judge prompt, from the cache when this exact request was answered before."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        key = hashlib.sha256(json.dumps({"base_url": self.base_url, **body}, sort_keys=True).encode()).hexdigest()
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        reply = self._post(json.dumps(body).encode())
        self.n_requests += 1
        if self.cache is not None:
            self.cache.put(key, {"base_url": self.base_url, "model": self.model, "reply": reply})
        return reply

    def _post(self, data: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(len(self.delays) + 1):
            retry_after = None
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return self._content(self._read_capped(response))
            except urllib.error.HTTPError as e:
                if 300 <= e.code < 400:  # never followed: urllib would resend Authorization to wherever it points
                    to = _where_to(e.headers.get("Location"))
                    raise self._error(f"HTTP {e.code} redirect to {to} not followed; set the judge's URL to where "
                                      "it should go") from None  # fmt: skip
                text = _snippet(_read(e))
                if e.code != 429 and e.code < 500:
                    hint = f" (is ${self.api_key_env} a valid key?)" if e.code in (401, 403) else ""
                    raise self._error(f"HTTP {e.code}{hint}: {text}") from None
                last, retry_after = f"HTTP {e.code}: {text}", _retry_after(e.headers)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, cut short
                last = str(getattr(e, "reason", None) or e) or type(e).__name__
            if attempt == len(self.delays):
                break
            pause = max(self.delays[attempt], retry_after or 0.0)
            log.warning("judge at %s: %s; retry %d of %d in %.1f s", self.where, self._scrub(last), attempt + 1,
                        len(self.delays), pause)  # fmt: skip
            self.sleep(pause)
        raise self._error(f"no answer after {len(self.delays) + 1} attempts; last: {last}") from None

    def _read_capped(self, response) -> bytes:
        raw = response.read(MAX_REPLY_BYTES + 1)
        if len(raw) > MAX_REPLY_BYTES:
            raise self._error(f"reply longer than {MAX_REPLY_BYTES} bytes: not a chat completion")
        return raw

    def _content(self, raw: bytes) -> str:
        """choices[0].message.content of a chat completion, or a JudgeError quoting the start of what came."""
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise self._error(f"reply is not a chat completion (no choices[0].message.content): {_snippet(raw)}")
        return content

    def _error(self, what: str) -> JudgeError:
        return JudgeError(self._scrub(f"judge at {self.where}: {what}"))

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def check_url(url: str) -> None:
    """http(s)://host[:port]/path and nothing that could hold a secret: no user:password@, no ?query, no #fragment.

    The URL becomes the judge's name (metrics, dvc.lock, MLflow), so a URL that could carry a secret is refused
    without being echoed; the error quotes only what cannot hold one.
    """
    parts = urlsplit(url)
    if "@" in url:  # anywhere: a '/' or '#' in a password moves its '@' out of what urlsplit calls the netloc
        raise JudgeError(
            "judge base_url: user:password@ in the URL is refused (the URL is logged and tracked); "
            "give the key in the environment variable judge_api_key_env names"
        )
    if "?" in url or "#" in url:
        raise JudgeError("judge base_url: a ?query or #fragment is refused (it may carry a key); expected "
                         "http(s)://host[:port]/v1")  # fmt: skip
    try:
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise JudgeError(f"judge base_url {url!r}: expected http(s)://host[:port]/v1")


def _is_loopback(parts) -> bool:
    """Whether a URL's host is this machine by its very name (no DNS asked: a name that resolves to 127.0.0.1
    today may not tomorrow)."""
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Every 3xx comes back as an HTTPError: urllib would resend all headers, Authorization too, to any host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None


def _opener(base_url: str) -> urllib.request.OpenerDirector:
    """An opener that follows no redirect; plain http to loopback goes direct, never through an http proxy that
    would read the key in the clear."""
    parts = urlsplit(base_url)
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if parts.scheme == "http" and _is_loopback(parts):
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _where_to(location: str | None) -> str:
    """A redirect target fit for an error line: scheme, host, port and path only (no userinfo, no query)."""
    if not location:
        return "(no Location)"
    try:
        parts = urlsplit(location)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparseable Location)"
    if not parts.scheme:
        return parts.path or "(a relative Location)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _read(e: urllib.error.HTTPError) -> bytes:
    try:
        return e.read()
    except (OSError, http.client.HTTPException):
        return b""


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")


def _retry_after(headers) -> float | None:
    try:
        return min(float(headers.get("Retry-After")), MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return None
