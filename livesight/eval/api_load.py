"""The load `livesight bench api` puts on a running `livesight serve`, over its HTTP API alone.

At each count N: N streams are added (POST /v1/streams; synthetic scenes, stream i scene i mod 4 as in
bench streams, each paced by the server in real time, as a camera; stream i started i/N into a chunk
period, so chunks arrive spread as bench streams' do), each stream's Server-Sent Events
are read (one connection a stream, reconnecting with Last-Event-ID), and after the warm-up a question
(POST .../questions) goes to a random stream every ask_every seconds. The figures and the rule for
real time are bench streams' own (streams.figures), over each stream's chunks in the measured window:
stream i's chunks first_i .. first_i + M - 1, first_i its first chunk not captioned when the window
opened. Then the streams are deleted.

With `disrupt` (a shell command, e.g. one that kills a replica's process), the command runs that
many seconds into the window; what is measured then is each stream's fate: moved (a `migrated`
event), the time from the command to its move and to its first caption after it, and lost streams.
"""

import asyncio
import dataclasses
import json
import time
from types import SimpleNamespace

import httpx
import numpy as np

from livesight.errors import InputError
from livesight.eval.config import ApiLoadConfig
from livesight.eval.streams import figures
from livesight.eval.streams_load import QUESTION, chunk_row
from livesight.vision.synthetic import SCENES

CALL_TIMEOUT_S = 60.0  # one API call (creating a stream opens its source)


class ApiError(InputError):
    """The server refused a call the load needs (the message names the call and quotes the server)."""


def _refused(call: str, response: httpx.Response) -> ApiError:
    try:
        detail = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = response.text[:300]
    return ApiError(f"{call}: the server answered {response.status_code}: {detail}")


class Follower:
    """One stream's events as they come (SSE), each with the perf_counter() time it arrived."""

    def __init__(self, client: httpx.AsyncClient, stream_id: str):
        self.client, self.stream_id = client, stream_id
        self.events: list[tuple[float, dict]] = []
        self.last_chunk = -1  # the newest chunk captioned, by the server's index
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        last = None
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                async with self.client.stream("GET", f"/v1/streams/{self.stream_id}/events", headers=headers,
                                              timeout=httpx.Timeout(CALL_TIMEOUT_S, read=None)) as response:
                    if response.status_code != 200:
                        return
                    fields: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line:
                            if not line.startswith(":"):
                                name, _, value = line.partition(":")
                                fields[name] = value[1:] if value.startswith(" ") else value
                            continue
                        if "id" in fields:
                            last = int(fields["id"])
                        if "data" in fields:
                            self._take(json.loads(fields["data"]))
                        fields = {}
                return  # the server ended it: the stream was deleted
            except httpx.TransportError:
                await asyncio.sleep(0.5)

    def _take(self, event: dict) -> None:
        self.events.append((time.perf_counter(), event))
        if event.get("type") == "metrics":
            self.last_chunk = max(self.last_chunk, event["chunk"])
        self.changed.set()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class Load:
    def __init__(self, cfg: ApiLoadConfig):
        self.cfg = cfg
        headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        self.client = httpx.AsyncClient(base_url=cfg.url.rstrip("/"), headers=headers, timeout=CALL_TIMEOUT_S,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self.rng = np.random.default_rng(cfg.seed)

    async def close(self) -> None:
        await self.client.aclose()

    async def check(self) -> dict:
        """/readyz: the server is up and stepping -> its capacity."""
        try:
            response = await self.client.get("/readyz")
        except httpx.TransportError as err:
            raise ApiError(f"--url {self.cfg.url}: no server answers ({type(err).__name__}): start `livesight "
                           f"serve` first") from None
        if response.status_code != 200:
            raise _refused("GET /readyz", response)
        return response.json()

    async def run_count(self, num_streams: int) -> dict:
        cfg, ids, followers = self.cfg, [], []
        total_s = cfg.warmup_s + cfg.seconds + 120  # each source outlasts the run
        body = {"seconds": total_s, "realtime": True, "narrate": cfg.narrate_tokens > 0}
        if cfg.narrate_tokens:
            body["narrate_tokens"] = cfg.narrate_tokens
        try:
            begin = time.perf_counter()
            for i in range(num_streams):  # stream i starts i/N into a chunk period: cameras are not in step
                await asyncio.sleep(max(0.0, begin + i * cfg.chunk_s / num_streams - time.perf_counter()))
                try:
                    response = await self.client.post("/v1/streams", json={
                        "source": f"synthetic:{SCENES[i % len(SCENES)]}", **body})
                except httpx.TransportError as err:
                    raise ApiError(f"POST /v1/streams: the server at {cfg.url} stopped answering "
                                   f"({type(err).__name__})") from None
                if response.status_code != 201:
                    raise _refused(f"POST /v1/streams (stream {i + 1} of {num_streams})", response)
                ids.append(response.json()["id"])
                if i == 0:  # the server's chunk length paces the window
                    self.cfg = cfg = dataclasses.replace(cfg, chunk_s=response.json()["settings"]["chunk_seconds"])
                followers.append(Follower(self.client, ids[-1]))
            return await self._measure(followers)
        finally:
            for follower in followers:
                await follower.stop()
            for stream_id in ids:
                try:
                    await self.client.delete(f"/v1/streams/{stream_id}")
                except httpx.TransportError:
                    break  # the server is gone, and its streams with it

    async def _wait(self, followers: list[Follower], done, timeout_s: float) -> bool:
        """Wait until done(i, follower) holds for every follower -> whether it did in time."""
        end = time.perf_counter() + timeout_s
        for i, follower in enumerate(followers):
            while not done(i, follower):
                follower.changed.clear()
                left = end - time.perf_counter()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(follower.changed.wait(), left)
                except TimeoutError:
                    return False
        return True

    async def _measure(self, followers: list[Follower]) -> dict:
        cfg = self.cfg
        warm = max(1, round(cfg.warmup_s / cfg.chunk_s))
        errors = []
        if not await self._wait(followers, lambda i, f: f.last_chunk >= warm - 1, cfg.warmup_s + 60):
            errors.append(f"warm-up: not every stream captioned {warm} chunks within {cfg.warmup_s + 60:g} s")
        start = time.perf_counter()
        first = [f.last_chunk + 1 for f in followers]
        num_chunks = max(1, round(cfg.seconds / cfg.chunk_s))
        window_s = num_chunks * cfg.chunk_s
        asked = [asyncio.create_task(self._ask(followers, start + at))
                 for at in np.arange(cfg.ask_every_s / 2, window_s - cfg.chunk_s, cfg.ask_every_s)]
        disrupted = asyncio.create_task(self._disrupt(start + cfg.disrupt_after_s)) if cfg.disrupt else None
        wait_s = 5 * cfg.latency_bound_s + 10
        await asyncio.sleep(window_s)
        if not await self._wait(followers, lambda i, f: f.last_chunk >= first[i] + num_chunks - 1,
                                wait_s) and not cfg.disrupt:
            errors.append(f"not every chunk of the window was captioned {wait_s:g} s after it")
        answers = [a for a in await asyncio.gather(*asked) if a is not None]
        errors += [a["error"] for a in answers if "error" in a]
        answers = [a for a in answers if "error" not in a]
        if disrupted is not None:
            return {"disrupt": fates(followers, await disrupted, time.perf_counter()), "answers": len(answers),
                    "errors": errors[:5]}
        return window_figures(followers, first, num_chunks, start, answers, errors, cfg)

    async def _ask(self, followers: list[Follower], at: float) -> dict | None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        stream = int(self.rng.integers(len(followers)))
        sent = time.perf_counter()
        try:
            response = await self.client.post(f"/v1/streams/{followers[stream].stream_id}/questions",
                                              json={"text": QUESTION}, timeout=CALL_TIMEOUT_S + 300)
        except httpx.TransportError as err:
            return {"error": f"question to stream {stream}: {type(err).__name__}"}
        done = time.perf_counter()
        if response.status_code != 200:
            return {"error": f"question to stream {stream}: {response.status_code} {response.text[:200]}"}
        data = response.json()
        return {"stream": stream, "done": done, "ttft_ms": data.get("ttft_ms"), "latency_ms": data.get("latency_ms"),
                "tokens": data.get("tokens"), "round_trip_ms": 1000 * (done - sent)}

    async def _disrupt(self, at: float) -> dict:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        ran = time.perf_counter()
        process = await asyncio.create_subprocess_shell(self.cfg.disrupt, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        return {"at": ran, "command": self.cfg.disrupt, "exit": process.returncode,
                "output": output.decode(errors="replace")[-500:]}


def window_figures(followers: list[Follower], first: list[int], num_chunks: int, start: float, answers: list[dict],
                   errors: list[str], cfg: ApiLoadConfig) -> dict:
    """bench streams' figures over each stream's chunks first_i .. first_i + num_chunks - 1 (renumbered
    from 0, those before as warm-up), with the answers that came after `start`."""
    chunks = []
    for i, follower in enumerate(followers):
        for now, event in follower.events:
            if event.get("type") == "metrics" and event["chunk"] < first[i] + num_chunks:
                chunks.append(chunk_row(i, event, now) | {"chunk": event["chunk"] - first[i]})
            elif event.get("type") == "error":
                errors.append(f"stream {i}: {event.get('text', '')[:200]}")
    log = SimpleNamespace(chunks=chunks, answers=answers, errors=errors)
    run = figures(log, 0, len(followers), num_chunks, start, cfg)
    trip = np.array([a["round_trip_ms"] for a in answers] or [np.nan])
    measured = [r["mem_mb"] for r in chunks if r["chunk"] >= 0]
    return run | {"answer_round_trip_ms": {"p50": round(float(np.percentile(trip, 50)), 1),
                                           "p99": round(float(np.percentile(trip, 99)), 1)},
                  "memory_mb_max": max(measured, default=None)}


def fates(followers: list[Follower], disrupt: dict, end: float) -> dict:
    """What became of each stream after the disrupting command: moved or not, when, its first caption
    after the move, and whether it was captioned at all in the last seconds (else it counts as lost)."""
    at, streams = disrupt["at"], []
    for i, follower in enumerate(followers):
        after = [(now, e) for now, e in follower.events if now >= at]
        moved = next((now for now, e in after if e.get("type") == "migrated"), None)
        caption = next((now for now, e in after if e.get("type") == "metrics" and (moved is None or now > moved)),
                       None)
        last = max((now for now, e in after if e.get("type") == "metrics"), default=None)
        streams.append({"stream": i, "moved": moved is not None,
                        "to_migrated_s": None if moved is None else round(moved - at, 3),
                        "to_first_caption_s": None if moved is None or caption is None else round(caption - at, 3),
                        "captions_after": sum(e.get("type") == "metrics" for _, e in after),
                        "errors": [e.get("text", "")[:200] for _, e in after if e.get("type") == "error"],
                        "lost": last is None or end - last > 10.0})
    moved = [s for s in streams if s["moved"]]
    firsts = [s["to_first_caption_s"] for s in moved if s["to_first_caption_s"] is not None]
    return {"command": disrupt["command"], "exit": disrupt["exit"], "output": disrupt["output"],
            "streams": len(streams), "moved": len(moved), "lost": sum(s["lost"] for s in streams),
            "to_first_caption_s": {"min": min(firsts, default=None), "max": max(firsts, default=None),
                                   "p50": round(float(np.median(firsts)), 3) if firsts else None},
            "per_stream": streams}
