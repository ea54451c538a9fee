"""OpenAI-compatible HTTP backend (`/v1/chat/completions`): async, bounded concurrency, retries, on-disk cache.

Every prompt of a call is one request (or `n` requests with `n=1` when the endpoint ignores `n`), sent concurrently
with at most `max_concurrency` in flight. Retries cover timeouts, connection errors, 429 and 5xx, with exponential
backoff and jitter (honouring `Retry-After`). Each finished request is stored in an SQLite cache keyed by the
request body (model, messages, sampling settings, seed), so a re-run of the same requests never pays twice, even
after a crash mid-call. Not protected against: endpoints that ignore `seed` (cached answers stay fixed, fresh
ones vary) or a cache folder shared by concurrent processes on a network file system.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
from pathlib import Path

from tqdm.auto import tqdm

from autoif_train.generation.base import GenerationConfig, GenerationError, Generator, Prompt, apply_stop, to_messages

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RequestCache:
    """An SQLite map from a request's canonical JSON (sha256) to its list of completions."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, completions TEXT NOT NULL)")
        self.db.commit()

    @staticmethod
    def key(body: dict) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> list[str] | None:
        row = self.db.execute("SELECT completions FROM requests WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, completions: list[str]) -> None:
        self.db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?)", (key, json.dumps(completions)))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class OpenAIGenerator(Generator):
    """Generate through an OpenAI-compatible server (vLLM `serve`, TGI, SGLang, hosted APIs).

    Parameters:
        model: the served model name.
        base_url: API root, e.g. `http://localhost:8000/v1` (default `$OPENAI_BASE_URL` or OpenAI's).
        api_key_env: environment variable holding the key (not needed by most local servers).
        max_concurrency: requests in flight at once.
        max_retries / backoff / max_backoff: retry policy for timeouts, connection errors, 429 and 5xx.
        timeout: seconds per request.
        cache_dir: folder of the request cache (`None` disables caching).
        n_in_request: send `n` in one request; set False for endpoints that ignore `n` (then `n` requests with
            seeds seed+0..seed+n-1 are sent).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 32,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 120.0,
        cache_dir: str | None = ".cache/autoif-requests",
        n_in_request: bool = True,
        progress: bool = True,
    ):
        import httpx  # noqa: F401  (fail early with a clear message if missing)

        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = os.environ.get(api_key_env, "")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.n_in_request = n_in_request
        self.progress = progress
        self.cache = RequestCache(Path(cache_dir) / "requests.sqlite") if cache_dir else None
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}

    def _bodies(self, messages: list[dict], config: GenerationConfig) -> list[dict]:
        body = {
            "model": self.model, "messages": messages, "temperature": config.temperature, "top_p": config.top_p,
            "max_tokens": config.max_new_tokens,
        }
        if config.stop:
            body["stop"] = list(config.stop)
        if self.n_in_request or config.n == 1:
            return [{**body, "n": config.n, **({"seed": config.seed} if config.seed is not None else {})}]
        seeds = [None if config.seed is None else config.seed + j for j in range(config.n)]
        return [{**body, "n": 1, **({"seed": s} if s is not None else {})} for s in seeds]

    async def _post(self, client, body: dict) -> list[str]:
        import httpx

        for attempt in range(self.max_retries + 1):
            delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())
            try:
                response = await client.post(f"{self.base_url}/chat/completions", json=body)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    try:
                        choices = sorted(response.json()["choices"], key=lambda c: c.get("index", 0))
                        return [(c.get("message") or {}).get("content") or "" for c in choices]
                    except (ValueError, KeyError, TypeError) as err:
                        raise GenerationError(f"{self.base_url}: malformed response {response.text[:300]!r}") from err
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUS:
                    raise GenerationError(f"{self.base_url}/chat/completions refused the request ({problem})")
                retry_after = response.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = min(self.max_backoff, float(retry_after))
            if attempt == self.max_retries:
                break
            self.stats["retries"] += 1
            await asyncio.sleep(delay)
        raise GenerationError(f"{self.base_url}: giving up after {self.max_retries + 1} attempts ({problem})")

    async def _run(self, jobs: list[tuple[int, dict]], n_prompts: int) -> list[list[str]]:
        import httpx

        results: list[list[list[str]]] = [[] for _ in range(n_prompts)]
        parts: dict[int, list[str]] = {}
        pending = []
        for j, (_, body) in enumerate(jobs):
            cached = self.cache.get(RequestCache.key(body)) if self.cache is not None else None
            if cached is not None:
                self.stats["cache_hits"] += 1
                parts[j] = cached
            else:
                pending.append(j)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        bar = tqdm(total=len(pending), desc="requests", unit="req", disable=not self.progress or not pending)
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers, limits=limits) as client:

            async def one(j: int) -> None:
                async with semaphore:
                    self.stats["requests"] += 1
                    completions = await self._post(client, jobs[j][1])
                if self.cache is not None:
                    self.cache.put(RequestCache.key(jobs[j][1]), completions)
                parts[j] = completions
                bar.update(1)

            try:
                await asyncio.gather(*(one(j) for j in pending))
            finally:
                bar.close()
        for j, (prompt_index, _) in enumerate(jobs):
            results[prompt_index].append(parts[j])
        return [[c for part in r for c in part] for r in results]

    def generate(self, prompts: list[Prompt], config: GenerationConfig | None = None) -> list[list[str]]:
        config = config or GenerationConfig()
        jobs = [(i, body) for i, p in enumerate(prompts) for body in self._bodies(to_messages(p), config)]
        out = asyncio.run(self._run(jobs, len(prompts)))
        for i, completions in enumerate(out):
            if len(completions) != config.n:
                raise GenerationError(
                    f"{self.base_url}: prompt {i} got {len(completions)} completions, expected n={config.n} "
                    "(set n_in_request: false if the endpoint ignores n)"
                )
        return [[apply_stop(c, config.stop) for c in completions] for completions in out]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
