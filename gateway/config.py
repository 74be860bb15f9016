"""Settings: one frozen dataclass, read once from GATEWAY_* environment variables and CLI flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the gateway can be told; units are in the names."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None  # a local directory; None serves the built-in demo model
    model_id: str | None = None  # the name clients see; defaults to the directory's name
    base_model: str | None = None  # overrides an adapter's base_model_name_or_path
    adapters: str = ""  # extra LoRA adapters, "NAME=DIR,NAME=DIR": each a model id of its own
    # Adapters at run time (POST/DELETE /v1/adapters, gateway/openai/adapters.py): at most this many served at once,
    # start-up ones included, and the weights of those loaded at run time at most this many bytes together.
    max_adapters: int = 8
    max_adapter_bytes: int = 1024 * MiB
    admin_key: str | None = None  # when set, loading and unloading adapters needs it instead of the API key
    device: str | None = None  # "cpu", "cuda", "cuda:1"; default: cuda when available
    dtype: str | None = None  # "float32", "float16", "bfloat16"; default by device
    trust_remote_code: bool = False
    log_level: str = "info"
    log_format: str = "text"  # "text", or "json": one object a line with structured fields (gateway/logs.py)

    # Limits on what one client may send.
    max_frame_bytes: int = 16 * MiB
    # A JSON text message costs the event loop about ten times a msgpack one per MB (every value is parsed
    # text; 15 MB took 333 ms before a single typed pass, about 20 ms a MB now): big frames go as msgpack.
    max_json_frame_bytes: int = 2 * MiB
    # A compressed (permessage-deflate) message is inflated in one event-loop callback, about 5 ms a MiB:
    # this bounds it, inflated, while letting a browser (which compresses every message) send a whole image.
    max_compressed_frame_bytes: int = 9 * MiB
    max_image_bytes: int = 8 * MiB
    max_image_pixels: int = 16_000_000
    max_images_per_turn: int = 8
    max_text_chars: int = 32_000
    max_history_turns: int = 256
    max_siblings: int = 8  # versions of one message or reply (regenerate, edit); past it the one seen longest ago goes
    max_stop_strings: int = 8

    # Images: what histories hold (the client's bytes) and what processing them may take.
    max_session_image_bytes: int = 32 * MiB  # one session's history; the oldest exchanges go first
    max_total_image_bytes: int = 1024 * MiB  # every session's history together
    image_cache_bytes: int = 256 * MiB  # processed images kept so a history is not processed again
    image_workers: int = 2  # threads that check attachments and process images ahead of their turn
    inbound_bytes_per_second: int = 8 * MiB  # per connection, inflated: reading pauses when exceeded

    # Live vision (issue 23): video attachments, decoded on the image workers under the image byte and pixel
    # limits, and each session's live window of camera or screen frames per source (never history).
    video_fps: float = 2.0  # frames sampled per second of video, while max_video_frames allows
    max_video_frames: int = 32  # frames kept per video; a longer one's spread evenly over all of it
    max_video_duration_s: float = 120.0  # a longer video is refused (`too_large`), from its header where it says
    max_videos_per_turn: int = 2  # video attachments per turn; their frames count as the turn's images do
    live_window_frames: int = 16  # distinct frames a live window keeps per source, the oldest going first
    live_window_bytes: int = 16 * MiB  # image bytes a live window keeps per source, the oldest going first
    max_frames_per_second: float = 2.0  # live frames taken per source (bursts of one second's), the rest dropped
    max_live_sources: int = 4  # live windows (cameras, screens) per session
    # Grey levels (of 255) within which every cell of a live frame's 32x32 thumbnail must stay, its overall
    # brightness shift aside, for it to merge into the window's latest frame (core/live_window.py says why 8).
    live_merge_distance: int = 8
    min_watch_every_s: float = 1.0  # the shortest interval a `watch` may ask for between its live turns
    live_history_last_frame: bool = False  # a live turn's exchange keeps its window's last frame, not only the summary
    # Frames a session remembers its live exchanges' prompts showed, so later prompts repeat them where they stood
    # and their KV stays warm (core/live_timeline.py); past it the oldest exchanges read as their summary, in bulk.
    live_history_frames: int = 64
    # Distinct frames a read window gathers before the session's next live turn is prefilled ahead (its history and
    # the window, without the question) while the engine has nothing else to do: the question then prefills only
    # its text (core/warm_ups.py). 0: never.
    live_warm_up_frames: int = 1
    # Warm-ups run only while the engine was busy at most this share of the last few seconds: they fill idle time,
    # and on a busy engine the turns arriving during them wait more than their questions save (docs/engine.md).
    live_warm_up_max_busy: float = 0.3
    # A session whose live questions come on a clock (a bot's, a `watch`'s: core/cadence.py) has its next one
    # prefilled ahead this long before it is due, however busy the engine (it still runs only while the engine idles
    # and gives way to every turn): one warm-up of the frames gathered, where a warm-up per frame would cost more
    # passes than it saves (docs/engine.md). 0: never.
    live_warm_up_lead_s: float = 1.0
    # A live window's new frame, once processed, is encoded on the vision tower while the engine has nothing else to
    # do (the local engine), so the live turn that shows it skips the tower (engine/local/encode_ahead.py).
    live_encode_ahead: bool = True

    # Sessions: how long they outlive their socket and where they are kept.
    session_grace_s: float = 300.0  # a detached session stays in memory (its turn running) this long
    session_ttl_s: float = 7 * 24 * 3600.0  # then it is resumable from the store until this long unused
    session_replay_bytes: int = 4 * MiB  # frames kept per session for replay after a reconnect
    session_store: str = "sqlite"  # "sqlite" (in data_dir), "memory", or a redis:// URL
    data_dir: str | None = None  # default: the user's data directory (~/.local/share/gateway)
    max_store_bytes: int = 4096 * MiB  # the store's size limit, enforced on write: least recently used sessions go first
    store_timeout_s: float = 2.0  # the longest a store call (and so a `done`) waits for a hung disk or Redis
    allow_volatile_sessions: bool = False  # serve without durable sessions when the store cannot open at start
    # Sessions in memory (attached or detached) per client address, and per API key when keys are in use:
    # past either, that client's oldest detached session is unloaded (it stays resumable from the store).
    max_sessions_per_client: int = 128
    max_sessions_per_key: int = 4096

    # Connections: admission, pacing and liveness.
    max_connections: int = 1024  # open WebSockets, all clients together
    max_connections_per_client: int = 64  # open WebSockets from one client address
    allowed_origins: str = ""  # comma-separated browser origins; "" = same origin only; "*" = any
    frames_per_second: float = 50.0  # sustained client frames per connection (bursts of twice that)
    turns_per_minute: float = 60.0  # turns per connection
    idle_timeout_s: float = 600.0  # close a connection with no frames and no turn for this long
    keepalive_interval_s: float = 20.0  # WebSocket pings; a peer silent past the timeout is dropped
    keepalive_timeout_s: float = 20.0
    send_timeout_s: float = 10.0  # a client that does not read for this long is closed, its turn stopped
    max_outbox_frames: int = 512  # frames waiting for a slow reader before it is closed
    max_inbound_queue: int = 4  # unread client messages the server buffers per connection
    # Image bytes `history` frames with include_images may send per connection (bursts of a full session's).
    history_image_bytes_per_second: int = 8 * MiB
    drain_timeout_s: float = 30.0  # on SIGTERM, how long running turns may finish

    # Generation defaults (a session's `configure` and a turn's `options` override them).
    default_temperature: float = 0.8
    default_top_p: float = 0.8
    default_top_k: int = 0
    default_repetition_penalty: float = 1.0
    default_max_tokens: int = 512
    max_tokens_limit: int = 4096
    context_tokens: int | None = None  # default: the model's max_position_embeddings
    # A turn that must drop old exchanges to fit drops enough to free this share of the window (or of its
    # image bytes, or of max_history_turns) too, at most half the history's room, so the next turns fit as
    # they are and reuse held KV instead of each dropping one exchange and prefilling all.
    trim_headroom: float = 0.25
    # Where a turn's end leaves the history so near the edge that the next turn would drop exchanges, drop them
    # now and re-prefill the prompt they leave while the engine idles (core/warm_ups.py): the next turn, live or
    # text, then prefills only its own message, where it would have prefilled all of it. Local engine only.
    trim_ahead: bool = True
    engine_queue_size: int = 64  # turns waiting for a free batch slot before `overloaded`
    max_batch: int = 16  # turns decoding together in one forward pass
    # Intra-op threads of the generation thread; 0: one fewer than the CPUs this process may use (at least
    # one), so the event loop and the image workers keep a core. More threads than free cores is ruinous:
    # the pool waits at every barrier for a thread the scheduler parked (12 against 448 tokens/s measured).
    engine_threads: int = 0
    # Turns arriving together at an idle local engine wait for each other, up to this long after the first
    # and while each comes within a quarter of it of the one before, so one prefill pass takes them all instead
    # of a second pass pausing the first ones' decoding for its whole length; 0: off.
    engine_gather_ms: float = 50.0
    # A text prompt joining a decoding batch is prefilled this many prompt tokens per step (shared among every
    # prompt being prefilled: one pass per step), each chunk followed by the batch's next decode step, so running
    # turns pause for one chunk at a time instead of a whole prompt; 0: a joiner is prefilled in one pass. Also
    # LocalEngine's default (engine/local/engine.py), so tests that build one run what `gateway serve` runs.
    engine_prefill_chunk_tokens: int = 256
    # A warm-up (a prompt prefilled ahead while the engine idles: core/warm_ups.py) is fed at most this many tokens
    # per pass, so a turn arriving during one waits for one such pass at most (about a third of a full chunk's time
    # on a CPU: a pass's fixed cost is about 25 ms); with chunking off, a longer warm-up is dropped unrun.
    engine_warm_up_chunk_tokens: int = 64
    # "decode": the local engine's decode step runs through torch.compile (inductor), rows padded up to power-of-two
    # buckets and the KV length dynamic; every bucket compiles at start-up, before the server is ready, so serving
    # never compiles; models with sliding windows, cross-attention or adapters stay eager. "off" (the default):
    # decode is 1.1-1.25x the tokens/s on this CPU, but start-up compiles for 25-41 s warm (inductor's cache) and
    # 3.5-4.5 min cold, against an 11 s start; not measured on CUDA (docs/engine.md, "Start-up, and the default").
    engine_compile: str = "off"
    engine: str = "real"  # "scripted": no model, instant replies (protocol tests, benchmarks)
    # Finished turns' KV held for prompts that start the same way; 0 disables. Default: a quarter of the
    # GPU's memory free after loading, or 256 MiB on the CPU (whose memory everything else shares).
    kv_cache_bytes: int | None = None
    kv_cache_idle_s: float = 300.0  # a held KV unused this long is dropped; 0: never
    # Vision-encoder outputs of images seen before, on the device: a prompt whose history's KV was trimmed
    # or evicted sends only its new images through the vision tower. 0: off.
    encoder_cache_bytes: int = 128 * MiB
    kv_spill_bytes: int = 1024 * MiB  # on a GPU, held KV evicted from the device waits in pinned host memory

    # Access and image URLs.
    api_key: str | None = None  # when set, /v1/* and /ws need it (Bearer header or `bearer.<key>` subprotocol)
    # Scoped tokens (gateway/edge/tokens.py): minted by POST /v1/realtime/tokens with the API key, accepted where it is.
    token_secret: str | None = None  # signs tokens; unset: no tokens are minted or accepted
    token_secret_previous: str | None = None  # the secret before a rotation, accepted for token_max_ttl_s after start
    token_ttl_s: float = 60.0  # how long a token may wait to open a connection, unless it asks less
    token_max_ttl_s: float = 600.0  # the longest a token may ask to wait
    token_session_s: float = 1800.0  # how long a connection a token opened may last, unless it asks less
    token_max_session_s: float = 14400.0  # the longest a token may ask its connection to last
    web_token_url: str = ""  # where the browser page asks (POST, same origin) for a scoped token; "": a typed key
    token_closing_grace_s: float = 10.0  # from the `closing` notice at a token's end to the close (4004)
    image_fetch_allow: str = ""  # comma-separated CIDRs / host names image URLs may reach despite the SSRF guard
    image_fetch_connect_timeout_s: float = 5.0
    image_fetch_read_timeout_s: float = 10.0
    image_fetch_total_timeout_s: float = 20.0
    image_fetch_max_redirects: int = 3
    image_fetch_concurrency: int = 8

    chat_template: str | None = None  # a Jinja chat template file, for checkpoints that ship none (PaliGemma)

    # Structured output: response_format and forced tool calls compile off the event loop (gateway/core/grammar_pool.py).
    grammar_workers: int = 1  # threads compiling grammars (each distinct schema once; repeats are a hash look-up)
    grammar_queue: int = 8  # compiles waiting for a worker; beyond it, `overloaded`
    grammar_cpu_s: float = 5.0  # CPU one compile may use; past it the schema is refused (`invalid_field`), its process killed
    max_grammar_bytes: int = 1024 * 1024  # a response_format's JSON (or a forced call's grammar); larger is refused
    grammar_lexer_fuel: int = 1_000_000  # llguidance's lexer budget per compile (CPU: about 50k a millisecond)
    grammar_max_lexer_states: int = 50_000  # llguidance's lexer states per grammar (memory: 1-2 kB each)
    grammar_compiles_per_minute: float = 30.0  # distinct grammars compiled for one connection (bursts of a sixth)
    grammar_compiles_per_minute_per_client: float = 60.0  # the same, for all of one client address's connections
    grammar_cache_bytes: int = 64 * MiB  # grammar text of the distinct grammars whose outcome is kept
    grammar_matchers_kept: int = 16  # compiled matchers kept for later turns (a huge grammar's is tens of MB)
    # Memory one compile's process may grow by (resident, read with its CPU); past it the schema is refused
    # (`invalid_field`), its process killed. A 9,000-property schema takes about 40 MiB; 50,000 lexer states 100 MiB.
    grammar_memory_bytes: int = 512 * MiB

    # Upstream engines: generation on OpenAI-compatible servers (vLLM) instead of a local model.
    upstreams: str = ""  # comma-separated base URLs ("http://10.0.0.5:8000"); set, they replace the local model
    upstream_api_key: str | None = None  # sent to the upstreams as a Bearer token
    tokenizer: str | None = None  # a local tokenizer directory for prompt lengths; default: the upstream's /tokenize
    upstream_connect_timeout_s: float = 2.0
    upstream_first_token_timeout_s: float = 60.0  # from submission to the first token
    upstream_token_gap_timeout_s: float = 30.0  # between two tokens
    upstream_health_interval_s: float = 2.0
    upstream_max_in_flight: int = 256  # turns streaming at once, all upstreams together

    # The door: sockets before their request is read, and who may ask at all (gateway/edge/door.py, hosts.py).
    header_timeout_s: float = 10.0  # a request line and headers must arrive within this long, else the socket is closed
    body_timeout_s: float = 30.0  # an HTTP request body must arrive within this long of its headers, else 408
    max_header_bytes: int = 8192  # request line and headers together; beyond it, 431 (the WebSocket parser's line cap)
    max_headers: int = 100  # header lines per request; beyond it, 431
    max_pending_handshakes: int = 256  # sockets still sending their first request; beyond it, the oldest is closed
    accept_error_log_interval_s: float = 10.0  # failed accept() calls (out of descriptors) logged at most this often
    allowed_hosts: str = ""  # comma-separated Host names; "" = localhost and the bound host; "*" = any; IPs always pass
    metrics_public: bool = False  # serve /metrics without the API key
    # OpenTelemetry traces (the `otel` extra): an OTLP/HTTP collector's traces URL, e.g. http://collector:4318/v1/traces
    otlp_traces_endpoint: str | None = None

    @property
    def serves_demo_model(self) -> bool:
        """The built-in demo model (random weights) is served when no model directory is configured."""
        return self.model is None and self.engine == "real" and not self.upstreams

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """Every configured secret, for the log redactor to hide wherever it appears."""
        return (self.api_key, self.upstream_api_key, self.token_secret, self.token_secret_previous, self.admin_key)

    def trim_headroom_tokens(self, context_tokens: int) -> int:
        """The most tokens a turn that must drop exchanges frees beyond its own need, in a window this long."""
        return int(context_tokens * self.trim_headroom)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings with each field overridden by GATEWAY_<FIELD> where that variable is set."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(f"GATEWAY_{field.name.upper()}")
            if raw is not None:
                values[field.name] = _parse(raw, field.type)
        return cls(**values)


def _parse(raw: str, type_name: Any) -> Any:
    text = str(type_name)
    if text.startswith("bool"):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if text.startswith("float"):
        return float(raw)
    if text.startswith("int"):
        return None if raw == "" and "None" in text else int(raw)
    return None if raw == "" and "None" in text else raw
